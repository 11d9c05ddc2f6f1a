"""The fidelity protocol: generated frames against twin-world renders along the same camera poses.

Held-out data
    Scenes: only the reserved ``EVAL_SEEDS`` (0..99; training datasets draw from ``TRAIN_SEEDS``). Main episode
    ``e`` of a family uses scene seed ``EVAL_SEEDS[e]``, revisit episodes ``EVAL_SEEDS[50 + e]``, the stability
    rollout ``EVAL_SEEDS[99]`` (the next seed is tried if a scene is too cramped for a path).
    Trajectories: seeded with ``[EVAL_TRAJ_STREAM, kind, family, episode, scene try, path try]`` where
    ``EVAL_TRAJ_STREAM = 0xE7A15EED >= 2**31``. ``sana-wm dataset make`` (``datasets/writer.py``) seeds its paths
    with ``[traj_seed, k]`` where ``traj_seed = rng.integers(2**31) < 2**31``: the first 32-bit word of every
    evaluation seed differs from that of every training seed, so the seed sequences (and the paths) differ
    even for the eval split of a dataset.

Per main episode (``frames`` poses, frame 0 = the twin render given to the model):
    - PSNR / SSIM of generated frame ``i`` against the render at pose ``i`` (i >= 1), pooled in horizon bins
      (default 1-8, 9-32, 33-128); PSNR is capped at ``PSNR_CAP_DB`` (identical frames);
    - action following at frames 1, 1+k, 1+2k, ... (k = ``action_stride``): the generated frame is "correct" when
      the render at the commanded pose has a strictly higher PSNR against it than each of ``action_distractors``
      renders at perturbed poses (chance 1 / (distractors + 1)). A perturbation is, with equal probability,
      a translation of ``[1, perturb_max_factor] x min_shift_m`` along a uniformly random direction (redrawn
      until the camera stays ``perturb_clearance`` metres from every surface and inside the scene; rotation if
      20 draws fail) or a rotation of ``[1, perturb_max_factor] x min_rot_deg`` about a uniformly random axis.
      A distractor whose render is pixel-identical to the commanded one is redrawn (up to 10 times); a frame
      still without distinguishable distractors is not scored (counted in ``skipped_indistinguishable_frames``).
    - the same PSNR restricted to the pixels frame 0's content covers at pose ``i`` (its points, with the twin's
      frame-0 depth, splatted into pose ``i``: ``psnr_covered``) and to the rest (``psnr_holes``); the share of
      covered pixels per horizon is ``coverage``;
    - Genie's controllability measure ``delta_psnr`` (with ``delta_psnr`` on): PSNR against the renders of
      frames generated along the commanded poses minus that of frames generated from the same first frame and
      seed along a random path (the relative motion of another path of the same kind, seeded with
      ``KIND_RANDOM``, started at the commanded first pose). A model that ignores the camera scores 0.
    Generators that declare ``takes_depth`` also get the twin's depth of frame 0 (``depth=``), as the envs give
    a geometry-guided model.
Per revisit episode (a closed-loop path, period P frames; frame i and i - P share a pose):
    - PSNR of each revisit frame against the render there, against the earlier generated frame at the same
      pose, and (reference) of the first visit against its render.
Stability (one streaming rollout of ``stability_frames`` frames through ``start``/``step``; the poses cycle a
closed loop so the camera stays in the scene; only per-frame statistics are kept, so memory is constant):
    - finiteness of every frame; per-frame std (contrast, [0, 1] units); mean std of the first and last
      ``STABILITY_WINDOW`` frames and their ratio; pass = all finite and ratio >= ``stability_min_std_ratio``
      (default 0.5: the contrast must not fall to less than half of what the rollout started with);
    - PSNR against the renders over the same windows (drift), and the generator state size at both windows.

Models whose clip lengths are constrained (``valid_num_frames``) get the path padded by holding the last pose;
the padded frames are generated and discarded. Everything is seeded: the same config gives the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sana_wm_env.evaluation.candidates import Candidate, clip_frames, pad_poses
from sana_wm_env.evaluation.config import REVISIT_SEED_OFFSET, STABILITY_WINDOW, EvalConfig
from sana_wm_env.evaluation.metrics import PSNR_CAP_DB, frame_std, masked_psnr, psnr, ssim
from sana_wm_env.evaluation.perturbations import distractor_renders, same_pose
from sana_wm_env.evaluation.scores import Records, horizon_table, stability_stats, summarise
from sana_wm_env.scenes import EVAL_SEEDS, FAMILIES, make_scene
from sana_wm_env.trajectories.camera_paths import generate, min_revisit_seconds
from world_model.video import to_uint8

EVAL_TRAJ_STREAM = 0xE7A15EED  # first seed word of every evaluation path; training paths use words < 2**31
KIND_MAIN, KIND_REVISIT, KIND_STABILITY, KIND_PERTURB, KIND_RANDOM = 0, 1, 2, 3, 4


@dataclass
class Episode:
    """One held-out path in one held-out scene."""

    kind: str  # "main", "revisit" or "stability"
    family: str
    scene_seed: int
    motion: str
    traj_seed: list[int]
    poses: np.ndarray  # (F, 4, 4) OpenCV c2w
    index: int  # position within its kind (generation seed offset)
    loop_period: int | None = None

    def describe(self) -> dict[str, Any]:
        return dict(kind=self.kind, family=self.family, scene_seed=self.scene_seed, motion=self.motion,
                    traj_seed=self.traj_seed, frames=int(len(self.poses)), loop_period=self.loop_period)


def trajectory_seed(kind: int, family: str, episode: int, scene_try: int, path_try: int) -> list[int]:
    """The seed words of an evaluation path (first word ``EVAL_TRAJ_STREAM``; see the module docstring)."""
    return [EVAL_TRAJ_STREAM, kind, FAMILIES.index(family), episode, scene_try, path_try]


def _plan(kind: str, kind_id: int, family: str, motion: str, episode: int, first_seed: int, frames: int | None,
          fps: float, clearance: float) -> Episode:
    revisit = kind != "main"
    for scene_try in range(8):
        seed = EVAL_SEEDS[(first_seed + scene_try) % len(EVAL_SEEDS)]
        scene = make_scene(family, seed)
        n = frames
        if revisit:
            n = int(math.ceil(min_revisit_seconds(scene, motion) * fps)) + 2
        for path_try in range(3):
            words = trajectory_seed(kind_id, family, episode, scene_try, path_try)
            try:
                traj = generate(scene, motion, n, fps, seed=words, revisit=revisit, clearance=clearance)
            except RuntimeError:
                continue
            return Episode(kind, family, seed, motion, words, traj.poses, episode,
                           traj.metadata.get("loop_period_frames"))
    raise RuntimeError(f"no {kind} path for {family}/{motion} in eval scenes from seed {first_seed} on")


def plan_episodes(cfg: EvalConfig) -> dict[str, list[Episode]]:
    """The main, revisit and stability episodes of ``cfg`` (deterministic)."""
    main, revisit, stability = [], [], []
    for e in range(cfg.episodes_per_family):
        for fam in cfg.families:
            motion = cfg.motions[e % len(cfg.motions)]
            main.append(_plan("main", KIND_MAIN, fam, motion, e, e, cfg.frames, cfg.fps, cfg.path_clearance))
    for e in range(cfg.revisit_episodes):
        fam = cfg.families[e % len(cfg.families)]
        motion = cfg.motions[e % len(cfg.motions)]
        revisit.append(_plan("revisit", KIND_REVISIT, fam, motion, e, REVISIT_SEED_OFFSET + e, None, cfg.fps,
                             cfg.path_clearance))
    if cfg.stability_frames:
        fam, motion = cfg.families[0], cfg.motions[0]
        stability.append(_plan("stability", KIND_STABILITY, fam, motion, 0, len(EVAL_SEEDS) - 1, None, cfg.fps,
                               cfg.path_clearance))
    return {"main": main, "revisit": revisit, "stability": stability}


def random_action_poses(ep: Episode, cfg: EvalConfig) -> np.ndarray | None:
    """The poses of ``ep``'s random-action rollout: the relative motion of another path of the same motion kind
    (in the same scene, seeded with ``KIND_RANDOM``) started at ``ep``'s first pose; None if no such path.

    The path is not checked against the scene from the new start: it only drives the generators (and the
    oracle's renders), it is never the ground truth."""
    scene = make_scene(ep.family, ep.scene_seed)
    for path_try in range(3):
        words = trajectory_seed(KIND_RANDOM, ep.family, ep.index, 0, path_try)
        try:
            traj = generate(scene, ep.motion, len(ep.poses), cfg.fps, seed=words, clearance=cfg.path_clearance)
        except RuntimeError:
            continue
        relative = np.linalg.inv(traj.poses[0]) @ traj.poses
        return ep.poses[0] @ relative
    return None


# ------------------------------------------------------------------------------------------ rendering helpers
def _unit_frames(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float64 (..., 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).movedim(-1, -3).double() / 255.0


def _intrinsics(cfg: EvalConfig) -> np.ndarray:
    from world_model.camera import fov_to_intrinsics

    return fov_to_intrinsics(cfg.fov_deg, *cfg.image_hw).double().numpy()


def _render_all(renderer, poses: np.ndarray, k4: np.ndarray) -> np.ndarray:
    return np.stack([renderer.render(p, k4)[0] for p in poses])


def _depth_kwargs(gen, first_depth: np.ndarray | None) -> dict[str, Any]:
    """``{"depth": (1, H, W)}`` for generators that take frame 0's depth, else nothing."""
    if not getattr(gen, "takes_depth", False):
        return {}
    if first_depth is None:
        raise ValueError("this generator takes frame 0's depth, but none was rendered")
    return {"depth": torch.from_numpy(np.asarray(first_depth, dtype=np.float32))[None]}


def _generate(gen, first_rgb: np.ndarray, k4: np.ndarray, poses: np.ndarray, seed: int,
              first_depth: np.ndarray | None = None) -> torch.Tensor:
    """Run ``gen`` on one episode; frames (F, 3, H, W) in [0, 1] float64 (padding removed)."""
    from world_model.video import from_uint8

    n = clip_frames(gen, len(poses))
    c2w = torch.from_numpy(pad_poses(poses, n)).float()[None]
    image = from_uint8(first_rgb)[None]
    out = gen.generate(image, torch.from_numpy(k4).float(), c2w, seed=seed, **_depth_kwargs(gen, first_depth))
    if tuple(out.shape[:2]) != (1, n):
        raise ValueError(f"generator returned {tuple(out.shape)}; expected (1, {n}, 3, H, W)")
    return (out[0, : len(poses)].detach().cpu().double() + 1.0) / 2.0


def _coverage(first_rgb: np.ndarray, first_depth: np.ndarray, k4: np.ndarray, poses: np.ndarray) -> torch.Tensor:
    """``(F - 1, H, W)`` bool: the pixels of frames 1.. that frame 0's points (twin depth) reach."""
    from world_model.point_cache import PointCache
    from world_model.video import from_uint8

    k = torch.from_numpy(k4).float()
    c2w = torch.from_numpy(poses).float()
    cache = PointCache.from_frame(from_uint8(first_rgb)[None], torch.from_numpy(first_depth).float()[None],
                                  c2w[:1], k)
    return cache.render(c2w[None, 1:], k, first_rgb.shape[:2]).mask[0]


# ------------------------------------------------------------------------------------------ stability
def run_stability(gen, first_rgb: np.ndarray, k4: np.ndarray, pose_at: Callable[[int], np.ndarray],
                  num_frames: int, *, seed: int = 0, reference: Callable[[int], torch.Tensor] | None = None,
                  min_std_ratio: float = 0.5, progress: Callable[[int], None] | None = None,
                  first_depth: np.ndarray | None = None) -> dict[str, Any]:
    """Stream ``num_frames`` frames (frame 0 = ``first_rgb``) through ``gen.start``/``gen.step`` along
    ``pose_at(i)`` and return :func:`stability_stats` plus drift PSNR against ``reference(i)`` (frames in
    [0, 1], optional), the frame rate and the generator state size. Keeps only per-frame numbers."""
    from world_model.video import from_uint8

    image = from_uint8(first_rgb)[None]
    k = torch.from_numpy(k4).float()
    state = gen.start(image, k, c2w=torch.from_numpy(pose_at(0)).float()[None], seed=seed,
                      **_depth_kwargs(gen, first_depth))
    stds, finite, psnrs = [float(frame_std(_unit_frames(first_rgb)))], [True], []
    nbytes: list[int] = []
    done, t0 = 1, time.perf_counter()
    while done < num_frames:
        n = gen.frames_per_step(state)
        poses = np.stack([pose_at(i) for i in range(done, done + n)])
        frames, state = gen.step(state, torch.from_numpy(poses).float()[None])
        frames = (frames[0].detach().cpu().double() + 1.0) / 2.0
        for j in range(min(n, num_frames - done)):
            f = frames[j]
            ok = bool(torch.isfinite(f).all())
            finite.append(ok)
            stds.append(float(frame_std(f)) if ok else float("nan"))
            if reference is not None:
                psnrs.append(float(psnr(f, reference(done + j), max_db=PSNR_CAP_DB)) if ok else float("nan"))
        done += n
        if hasattr(state, "nbytes") and (len(nbytes) == 0 and done >= STABILITY_WINDOW or done >= num_frames):
            nbytes.append(int(state.nbytes()))
        if progress is not None:
            progress(min(done, num_frames))
    dt = time.perf_counter() - t0
    out = stability_stats(stds, finite, min_std_ratio=min_std_ratio)
    if psnrs:
        p = np.asarray(psnrs)  # frames 1..N-1
        w = STABILITY_WINDOW
        out["psnr_first"] = float(np.nanmean(p[:w])) if np.isfinite(p[:w]).any() else None
        out["psnr_last"] = float(np.nanmean(p[-w:])) if np.isfinite(p[-w:]).any() else None
    out["frames_per_second"] = (num_frames - 1) / dt if dt > 0 else None
    out["seconds"] = dt
    if nbytes:
        out["state_bytes_at_window"], out["state_bytes_at_end"] = nbytes[0], nbytes[-1]
    return out


# ------------------------------------------------------------------------------------------ the protocol
@dataclass
class EpisodeScores:
    """What one main or revisit episode adds to the results: records per candidate and the shared numbers.

    Scores of separate episodes are independent (everything is seeded per episode), so episodes can be scored
    in any process and merged in plan order (:func:`merge_scores`) with the numbers of one sequential run.
    """

    records: dict[str, Records]  # candidate name -> this episode's records
    key: str  # "family/motion/kindN"
    family: str
    coverage: np.ndarray | None = None  # main episodes: covered share per frame 1..
    ground_truth_contact: np.ndarray | None = None  # main episodes: the twin frames of the contact sheet
    af_skipped: int = 0
    delta_skipped: int = 0
    render_seconds: float = 0.0


def score_episode(candidates: Sequence[Candidate], cfg: EvalConfig, ep: Episode) -> EpisodeScores:
    """Render ``ep`` in its twin world, run every candidate on it and score the frames (see the module
    docstring)."""
    from sana_wm_env.scenes import SceneRenderer

    k4 = _intrinsics(cfg)
    contact_idx = [i for i in cfg.contact_frames if i < cfg.frames]
    af_skipped = 0
    scene = make_scene(ep.family, ep.scene_seed)
    t0 = time.perf_counter()
    with SceneRenderer(scene, *cfg.image_hw, depth=True) as renderer:
        gt_rgb = _render_all(renderer, ep.poses, k4)
        first_depth = renderer.render(ep.poses[0], k4)[1]
        af: list[tuple[int, torch.Tensor]] = []
        if ep.kind == "main":
            for i in range(1, len(ep.poses), cfg.action_stride):
                rng = np.random.default_rng(trajectory_seed(KIND_PERTURB, ep.family, ep.index, i, 0))
                others = distractor_renders(renderer, scene, ep.poses[i], gt_rgb[i], rng, cfg, k4)
                if others is None:
                    af_skipped += 1
                    continue
                af.append((i, _unit_frames(np.concatenate([gt_rgb[i : i + 1], others]))))
    out_scores = EpisodeScores(records={}, key=f"{ep.family}/{ep.motion}/{ep.kind}{ep.index}", family=ep.family,
                               af_skipped=af_skipped, render_seconds=time.perf_counter() - t0)
    gt = _unit_frames(gt_rgb)
    key = out_scores.key
    random_poses = None
    if ep.kind == "main":
        covered = _coverage(gt_rgb[0], first_depth, k4, ep.poses)
        out_scores.coverage = covered.double().mean((-2, -1)).numpy()
        out_scores.ground_truth_contact = gt_rgb[[0, *contact_idx]]
        if cfg.delta_psnr:
            random_poses = random_action_poses(ep, cfg)
            out_scores.delta_skipped = int(random_poses is None)
    for cand in candidates:
        acc = out_scores.records[cand.name] = Records()
        gen = cand.generator_for(scene)
        t0 = time.perf_counter()
        out = _generate(gen, gt_rgb[0], k4, ep.poses, seed=_episode_seed(cfg, ep), first_depth=first_depth)
        acc.seconds += time.perf_counter() - t0
        acc.frames += len(ep.poses) - 1
        if ep.kind == "main":
            frame_psnr = psnr(out[1:], gt[1:], max_db=PSNR_CAP_DB).numpy()
            acc.psnr[key] = [frame_psnr]
            acc.ssim[key] = [ssim(out[1:], gt[1:]).numpy()]
            acc.psnr_covered[key] = [masked_psnr(out[1:], gt[1:], covered, max_db=PSNR_CAP_DB).numpy()]
            acc.psnr_holes[key] = [masked_psnr(out[1:], gt[1:], ~covered, max_db=PSNR_CAP_DB).numpy()]
            if random_poses is not None:
                t0 = time.perf_counter()
                wandering = _generate(gen, gt_rgb[0], k4, random_poses, seed=_episode_seed(cfg, ep),
                                      first_depth=first_depth)
                acc.seconds += time.perf_counter() - t0
                acc.frames += len(ep.poses) - 1
                acc.delta_psnr[key] = [frame_psnr - psnr(wandering[1:], gt[1:], max_db=PSNR_CAP_DB).numpy()]
            for i, renders in af:
                scores = psnr(out[i].expand_as(renders), renders, max_db=PSNR_CAP_DB)
                acc.action.append((ep.family, ep.motion, i, bool((scores[0] > scores[1:]).all())))
            acc.contact[ep.family] = to_uint8(out[[0, *contact_idx]], low=0.0)
        else:
            p = ep.loop_period
            idx = [i for i in range(p, len(ep.poses)) if same_pose(ep.poses[i], ep.poses[i - p])]
            if idx:
                ii, jj = torch.tensor(idx), torch.tensor(idx) - p
                acc.revisit.append({
                    "family": ep.family, "motion": ep.motion, "loop_period": p, "frames": len(idx),
                    "first_revisit_frame": idx[0],
                    "psnr_vs_render": float(psnr(out[ii], gt[ii], max_db=PSNR_CAP_DB).mean()),
                    "psnr_vs_earlier_generated": float(psnr(out[ii], out[jj], max_db=PSNR_CAP_DB).mean()),
                    "psnr_first_visit_vs_render": float(psnr(out[jj], gt[jj], max_db=PSNR_CAP_DB).mean()),
                })
    return out_scores


def merge_scores(names: Sequence[str], scores: Sequence[EpisodeScores]) -> dict[str, Any]:
    """Pool the episodes' scores, in the given order, into one :class:`Records` per candidate and the shared
    numbers: ``{"records", "coverage", "ground_truth_contact", "af_skipped", "delta_skipped", "render_seconds"}``
    (a contact sheet shows the first main episode of each family)."""
    accs = {n: Records() for n in names}
    coverage: dict[str, list[np.ndarray]] = {}
    gt_contact: dict[str, np.ndarray] = {}
    for sc in scores:
        if sc.coverage is not None:
            coverage.setdefault(sc.key, []).append(sc.coverage)
        if sc.ground_truth_contact is not None:
            gt_contact.setdefault(sc.family, sc.ground_truth_contact)
        for name in names:
            acc, rec = accs[name], sc.records[name]
            for table in ("psnr", "ssim", "psnr_covered", "psnr_holes", "delta_psnr"):
                for k, values in getattr(rec, table).items():
                    getattr(acc, table).setdefault(k, []).extend(values)
            acc.action.extend(rec.action)
            acc.revisit.extend(rec.revisit)
            for family, frames in rec.contact.items():
                acc.contact.setdefault(family, frames)
            acc.seconds += rec.seconds
            acc.frames += rec.frames
    return {"records": accs, "coverage": coverage, "ground_truth_contact": gt_contact,
            "af_skipped": sum(sc.af_skipped for sc in scores), "delta_skipped": sum(sc.delta_skipped for sc in scores),
            "render_seconds": sum(sc.render_seconds for sc in scores)}


def score_stability(gen, cfg: EvalConfig, ep: Episode, *, progress: bool = False, desc: str = "stability"
                    ) -> dict[str, Any]:
    """The stability rollout of one generator along the stability episode ``ep`` (see the module docstring)."""
    from tqdm import tqdm

    from sana_wm_env.scenes import SceneRenderer

    if getattr(gen, "streaming", True) is False:  # offline (e.g. refined) generators do not stream
        return {"skipped": "offline generator (no streaming rollout)"}
    k4 = _intrinsics(cfg)
    scene = make_scene(ep.family, ep.scene_seed)
    period = ep.loop_period
    with SceneRenderer(scene, *cfg.image_hw, depth=True) as renderer:
        loop_rgb = _render_all(renderer, ep.poses[:period], k4)
        loop_depth = renderer.render(ep.poses[0], k4)[1]
    loop_gt = _unit_frames(loop_rgb)
    with tqdm(total=cfg.stability_frames, initial=1, unit="frame", disable=not progress, desc=desc) as sbar:
        st = run_stability(gen, loop_rgb[0], k4, lambda i: ep.poses[i % period], cfg.stability_frames,
                           seed=cfg.seed, reference=lambda i: loop_gt[i % period],
                           min_std_ratio=cfg.stability_min_std_ratio,
                           progress=lambda d: sbar.update(d - sbar.n), first_depth=loop_depth)
    st["path"] = f"{ep.family} scene {ep.scene_seed}, {ep.motion} loop of {period} frames, cycled"
    return st


def evaluate(candidates: Sequence[Candidate], cfg: EvalConfig, *, progress: bool = True,
             episodes: dict[str, list[Episode]] | None = None, ray: str | None = None,
             make_candidates: Callable[[], Sequence[Candidate]] | None = None, threads: int = 1,
             device: str = "cpu") -> dict[str, Any]:
    """Run the protocol for every candidate; returns the results dict (see the module docstring).

    ``episodes`` (from :func:`plan_episodes`) can be passed to reuse a plan; by default it is planned here.
    Frames kept for the contact sheet are returned under ``"_contact"`` (uint8 arrays, not JSON).

    With ``ray`` (an address, see :mod:`sana_wm_env.distributed`) every main and revisit episode, and each
    candidate's stability rollout, is a Ray task: ``make_candidates()`` (picklable; it builds candidates equal
    to ``candidates`` in the task's process) and torch on ``threads`` threads; tasks ask for a GPU when
    ``device`` is a CUDA device and the cluster has GPUs. The results are those of a local run on as many
    threads, timing aside.
    """
    from tqdm import tqdm

    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidates must have distinct names, got {names}")
    if ray is not None and make_candidates is None:
        raise ValueError("evaluate with ray needs make_candidates (the candidates are built in each task)")
    t_start = time.perf_counter()
    plan = plan_episodes(cfg) if episodes is None else episodes
    t_plan = time.perf_counter() - t_start
    scored = plan["main"] + plan["revisit"]
    stabilities: dict[str, dict[str, Any]] = {}
    if ray is not None:
        from sana_wm_env.distributed import connect, run_tasks, scheduling_gpus

        # one submission, so the long stability rollouts run beside the episodes
        jobs = [(make_candidates, cfg, ep, None) for ep in scored]
        jobs += [(make_candidates, cfg, ep, n) for ep in plan["stability"] for n in names]
        with connect(ray):
            done = run_tasks(_eval_task, jobs, desc="fidelity tasks", progress=progress, threads=threads,
                             num_gpus=scheduling_gpus(device))
        scores = done[: len(scored)]
        stabilities = {job[3]: d for job, d in zip(jobs[len(scored) :], done[len(scored) :])}
    else:
        scores = []
        for ep in tqdm(scored, unit="episode", desc="fidelity episodes", disable=not progress):
            scores.append(score_episode(candidates, cfg, ep))
        for ep in plan["stability"]:
            scene = make_scene(ep.family, ep.scene_seed)
            for cand in candidates:
                stabilities[cand.name] = score_stability(cand.generator_for(scene), cfg, ep, progress=progress,
                                                         desc=f"stability {cand.name}")
    merged = merge_scores(names, scores)
    results: dict[str, Any] = {}
    for cand in candidates:
        acc = merged["records"][cand.name]
        r = summarise(acc, cfg)
        r["kind"], r["description"], r["info"] = cand.kind, cand.description, cand.info
        r["action_following"]["skipped_indistinguishable_frames"] = merged["af_skipped"]
        if r["fidelity"]["delta_psnr"] is not None:
            r["fidelity"]["delta_psnr"]["skipped_episodes_without_random_path"] = merged["delta_skipped"]
        r["timing"] = {"generate_seconds": acc.seconds, "frames_generated": acc.frames,
                       "frames_per_second": acc.frames / acc.seconds if acc.seconds > 0 else None}
        if cand.name in stabilities:
            r["stability"] = stabilities[cand.name]
        results[cand.name] = r
    contact_idx = [i for i in cfg.contact_frames if i < cfg.frames]
    return {
        "protocol": __doc__,
        "config": cfg.to_json(),
        "episodes": {k: [e.describe() for e in v] for k, v in plan.items()},
        "coverage": horizon_table(merged["coverage"], lambda k: True, cfg),
        "candidates": results,
        "timing": {"seconds": time.perf_counter() - t_start, "planning_seconds": t_plan,
                   "render_seconds": merged["render_seconds"]},
        "_contact": {"ground_truth": merged["ground_truth_contact"],
                     **{n: a.contact for n, a in merged["records"].items()}, "frame_indices": [0, *contact_idx]},
    }


# ------------------------------------------------------------------------------------------ Ray tasks
_TASK_CANDIDATES: dict[bytes, Sequence[Candidate]] = {}  # one set per worker process, built on its first task


def _task_candidates(make_candidates: Callable[[], Sequence[Candidate]]) -> Sequence[Candidate]:
    """``make_candidates()``, built once per worker process (a task loads the model only on a fresh worker)."""
    from ray import cloudpickle  # these tasks run on Ray workers only

    key = cloudpickle.dumps(make_candidates)
    if key not in _TASK_CANDIDATES:
        _TASK_CANDIDATES.clear()
        _TASK_CANDIDATES[key] = make_candidates()
    return _TASK_CANDIDATES[key]


def _eval_task(make_candidates: Callable[[], Sequence[Candidate]], cfg: EvalConfig, ep: Episode,
               stability_of: str | None) -> EpisodeScores | dict[str, Any]:
    """A Ray task: score episode ``ep`` (``stability_of`` None) or run candidate ``stability_of``'s stability
    rollout along it, with the worker's candidates."""
    candidates = _task_candidates(make_candidates)
    ep = dataclasses.replace(ep, poses=np.array(ep.poses))  # Ray hands NumPy arguments over read-only
    with torch.inference_mode():  # as sana-wm eval runs the local path
        if stability_of is None:
            return score_episode(candidates, cfg, ep)
        cand = next(c for c in candidates if c.name == stability_of)
        return score_stability(cand.generator_for(make_scene(ep.family, ep.scene_seed)), cfg, ep)


def _episode_seed(cfg: EvalConfig, ep: Episode) -> int:
    """Generation seed of an episode: unique per (kind, episode, family), offset by ``cfg.seed``."""
    kind = {"main": KIND_MAIN, "revisit": KIND_REVISIT, "stability": KIND_STABILITY}[ep.kind]
    return cfg.seed + 1000 * kind + len(FAMILIES) * ep.index + FAMILIES.index(ep.family)


