"""Fidelity evaluation: metrics, the protocol (oracle vs baseline), stability detection, `sana-wm eval` / `demo`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sana_wm_cli.main import main
from sana_wm_env.evaluation import (
    EvalConfig,
    evaluate,
    oracle_candidate,
    plan_episodes,
    repeat_first_frame_candidate,
    stability_stats,
    world_model_candidates,
)
from sana_wm_env.evaluation.candidates import RepeatFirstFrame, WarpFirstFrame, clip_frames, pad_poses, warp_candidate
from sana_wm_env.evaluation.fidelity import EVAL_TRAJ_STREAM, run_stability
from sana_wm_env.evaluation.metrics import PSNR_CAP_DB, frame_std, masked_psnr, psnr, ssim
from sana_wm_env.evaluation.perturbations import perturbed_poses, pose_distance
from sana_wm_env.evaluation.report import contact_sheet, psnr_plot, write_json
from sana_wm_env.scenes import EVAL_SEEDS, make_scene
from sana_wm_env.trajectories.camera_paths import generate


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from world_model.bundles import save_world_model, untrained_world_model

    folder = tmp_path_factory.mktemp("bundle") / "tiny"
    save_world_model(untrained_world_model("tiny-notext", image_hw=(16, 16), seed=3), folder)
    return folder


# ------------------------------------------------------------------------------------------ metrics
def test_psnr_of_known_mse():
    a = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    b = torch.full((2, 3, 8, 8), 0.1, dtype=torch.float64)  # mse 1e-2 -> 20 dB
    b[1] = 0.01  # mse 1e-4 -> 40 dB
    out = psnr(a, b)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(20.0, abs=1e-9)
    assert out[1].item() == pytest.approx(40.0, abs=1e-9)
    assert math.isinf(psnr(a, a)[0].item())
    assert psnr(a, a, max_db=PSNR_CAP_DB)[0].item() == PSNR_CAP_DB
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, b[:1])
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        psnr(torch.zeros(4, 8, 8), torch.zeros(4, 8, 8))


def test_masked_psnr_scores_only_the_selected_pixels():
    a = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    b = a.clone()
    b[:, :, :2] = 0.1  # top half off by 0.1 (mse 1e-2), bottom half exact
    top = torch.zeros(2, 4, 4, dtype=torch.bool)
    top[:, :2] = True
    assert masked_psnr(a, b, top).tolist() == pytest.approx([20.0, 20.0])
    assert masked_psnr(a, b, ~top, max_db=PSNR_CAP_DB).tolist() == [PSNR_CAP_DB] * 2
    empty = torch.zeros(2, 4, 4, dtype=torch.bool)
    assert torch.isnan(masked_psnr(a, b, empty)).all()
    with pytest.raises(ValueError, match="mask must have shape"):
        masked_psnr(a, b, top[0])


def test_ssim_matches_skimage_and_its_properties():
    rng = np.random.default_rng(0)
    a = rng.random((3, 24, 20))
    yy, xx = np.mgrid[:24, :20]
    smooth = np.stack([np.sin(xx / 3.0 + c) * 0.4 + 0.5 for c in range(3)])
    noisy = [np.clip(a + s * rng.standard_normal(a.shape), 0, 1) for s in (0.05, 0.2, 0.5)]
    values = [ssim(torch.tensor(a), torch.tensor(n)).item() for n in noisy]
    assert ssim(torch.tensor(a), torch.tensor(a)).item() == pytest.approx(1.0, abs=1e-12)
    assert values[0] > values[1] > values[2]  # more noise, less similar
    assert ssim(torch.tensor(a), torch.tensor(noisy[1])).item() == pytest.approx(
        ssim(torch.tensor(noisy[1]), torch.tensor(a)).item(), abs=1e-12)  # symmetric
    batch = ssim(torch.tensor(np.stack([a, smooth])), torch.tensor(np.stack([noisy[1], smooth * 0.9])))
    assert batch.shape == (2,)
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.zeros(3, 10, 16), torch.zeros(3, 10, 16))
    from skimage import metrics  # test-only dependency (the "test" extra)
    for x, y in ((a, noisy[1]), (smooth, smooth * 0.9 + 0.05), (a, smooth)):
        ref = metrics.structural_similarity(x, y, channel_axis=0, data_range=1.0, gaussian_weights=True,
                                            sigma=1.5, use_sample_covariance=False)
        assert ssim(torch.tensor(x), torch.tensor(y)).item() == pytest.approx(ref, abs=1e-9)


def test_frame_std():
    f = torch.zeros(2, 3, 4, 4)
    f[1, :, :2] = 1.0
    assert frame_std(f).tolist() == pytest.approx([0.0, 0.5])


# ------------------------------------------------------------------------------------------ protocol
def test_eval_trajectories_are_disjoint_from_training_seeds():
    from sana_wm_env.datasets.writer import DatasetSpec, clip_plan

    assert EVAL_TRAJ_STREAM >= 2**31 and EVAL_TRAJ_STREAM < 2**32
    spec = DatasetSpec(clips=50, frames=17, height=16, width=16)
    assert all(clip_plan(spec, i)["traj_seed"] < 2**31 for i in range(50))
    cfg = EvalConfig(episodes_per_family=1, frames=17, revisit_episodes=1, stability_frames=200)
    plan = plan_episodes(cfg)
    eps = plan["main"] + plan["revisit"] + plan["stability"]
    assert all(e.traj_seed[0] == EVAL_TRAJ_STREAM and e.scene_seed in EVAL_SEEDS for e in eps)
    again = plan_episodes(cfg)  # deterministic
    assert all(np.array_equal(a.poses, b.poses) for a, b in zip(eps, again["main"] + again["revisit"]
                                                                 + again["stability"]))


def test_perturbations_are_big_enough_and_stay_clear():
    scene = make_scene("rooms", 1)
    cfg = EvalConfig()
    traj = generate(scene, "drone", 40, 16.0, seed=[EVAL_TRAJ_STREAM, 9])
    rng = np.random.default_rng(0)
    for pose in traj.poses[::8]:
        others = perturbed_poses(scene, pose, rng, cfg)
        assert others.shape == (cfg.action_distractors, 4, 4)
        for o in others:
            dt, dr = pose_distance(pose, o)
            assert dt >= cfg.min_shift_m - 1e-9 or dr >= cfg.min_rot_deg - 1e-6
            assert dt <= cfg.min_shift_m * cfg.perturb_max_factor + 1e-9
            assert dr <= cfg.min_rot_deg * cfg.perturb_max_factor + 1e-6
            assert np.allclose(o[:3, :3] @ o[:3, :3].T, np.eye(3), atol=1e-9)
        moved = [o for o in others if pose_distance(pose, o)[0] > 1e-9]
        if moved:
            assert scene.free(np.stack([o[:3, 3] for o in moved]), cfg.perturb_clearance).all()


def test_oracle_follows_actions_and_repeat_first_frame_does_not(tmp_path):
    cfg = EvalConfig(families=("rooms", "city"), episodes_per_family=1, frames=33, revisit_episodes=1,
                     stability_frames=0, image_hw=(24, 24), action_stride=4, contact_frames=(1, 8, 32))
    res = evaluate([oracle_candidate(), repeat_first_frame_candidate()], cfg, progress=False)
    oracle, still = res["candidates"]["oracle"], res["candidates"]["repeat_first_frame"]
    # action following: the oracle's frame is the commanded render itself
    skipped = oracle["action_following"]["skipped_indistinguishable_frames"]
    assert oracle["action_following"]["frames"] == 2 * 8 - skipped and skipped <= 2
    assert oracle["action_following"]["accuracy"] == 1.0
    assert still["action_following"]["accuracy"] <= 0.4
    assert oracle["action_following"]["chance"] == pytest.approx(1 / 8)
    for h in ("1-8", "9-32"):
        assert oracle["fidelity"]["psnr"][h]["mean"] > 60.0
        assert oracle["fidelity"]["ssim"][h]["mean"] > 0.99
        assert still["fidelity"]["psnr"][h]["mean"] < 40.0
    assert oracle["fidelity"]["psnr"]["33-128"] == {"mean": None, "frames": 0}  # clip ends at frame 32
    assert len(oracle["fidelity"]["psnr_per_frame"]) == 32
    # revisit: frames i >= period share the pose of frame i - period
    rv_o, rv_s = oracle["revisit"], still["revisit"]
    ep = res["episodes"]["revisit"][0]
    assert rv_o["episodes"] == 1 and rv_o["frames"] == ep["frames"] - ep["loop_period"]
    assert rv_o["psnr_vs_render"] > 60.0 and rv_o["psnr_vs_earlier_generated"] > 60.0
    assert rv_s["psnr_vs_earlier_generated"] == PSNR_CAP_DB  # a still image is trivially self-consistent...
    assert rv_s["psnr_vs_render"] < 40.0  # ...but not like the world
    # figures + strict JSON
    sheet = contact_sheet(res["_contact"], tmp_path / "sheet.png")
    plot = psnr_plot(res, tmp_path / "plot.png")
    from PIL import Image

    for p in (sheet, plot):
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    write_json(res, tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())
    assert "_contact" not in back and back["candidates"]["oracle"]["action_following"]["accuracy"] == 1.0


def test_warp_baseline_delta_psnr_and_masked_psnr_against_the_oracle_and_a_still_image():
    cfg = EvalConfig(families=("rooms",), episodes_per_family=1, frames=17, revisit_episodes=0,
                     stability_frames=0, image_hw=(32, 32), action_stride=4, contact_frames=(1, 8))
    res = evaluate([oracle_candidate(), repeat_first_frame_candidate(), warp_candidate()], cfg, progress=False)
    oracle, still, warp = (res["candidates"][n] for n in ("oracle", "repeat_first_frame", "warp"))
    cover = res["coverage"]["1-8"]["mean"]
    assert 0.5 < cover <= 1.0 and res["coverage"]["1-8"]["frames"] == 8
    for h in ("1-8", "9-32"):
        # a model that ignores the camera gains nothing from the commanded path; the oracle and the warp do
        assert still["fidelity"]["delta_psnr"][h]["mean"] == 0.0
        assert oracle["fidelity"]["delta_psnr"][h]["mean"] > 5.0
        assert warp["fidelity"]["delta_psnr"][h]["mean"] > 1.0
        # frame 0's content is where the warp is right: covered pixels score above holes, and above the still image
        assert warp["fidelity"]["psnr_covered"][h]["mean"] > warp["fidelity"]["psnr_holes"][h]["mean"]
        assert warp["fidelity"]["psnr_covered"][h]["mean"] > still["fidelity"]["psnr_covered"][h]["mean"]
        assert oracle["fidelity"]["psnr_covered"][h]["mean"] > 60.0
    assert warp["fidelity"]["psnr"]["1-8"]["mean"] > still["fidelity"]["psnr"]["1-8"]["mean"] + 1.0
    assert warp["action_following"]["accuracy"] > still["action_following"]["accuracy"]


def test_warp_generator_moves_frame_zero_with_its_depth():
    gen = WarpFirstFrame(frames_per_chunk=2)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    k4 = torch.tensor([8.0, 8.0, 8.0, 8.0])
    c2w = torch.eye(4).repeat(1, 3, 1, 1)
    c2w[0, 1:, 0, 3] = torch.tensor([0.25, 0.5])  # 0.25 m right at 2 m: 1 px, then 2 px to the left
    frames = gen.generate(image, k4, c2w, depth=torch.full((1, 16, 16), 2.0))
    assert frames.shape == (1, 3, 3, 16, 16) and torch.equal(frames[0, 0], image[0])
    assert torch.allclose(frames[0, 1, :, :, :15], image[0, :, :, 1:])
    assert torch.allclose(frames[0, 2, :, :, :14], image[0, :, :, 2:])
    lo, hi = image.amin(dim=(-2, -1)), image.amax(dim=(-2, -1))  # holes are filled from neighbouring colours
    assert ((frames[0, 2, :, :, 14:] >= lo[0, :, None, None]) & (frames[0, 2, :, :, 14:] <= hi[0, :, None, None])).all()
    with pytest.raises(ValueError, match="needs frame 0's depth"):
        gen.generate(image, k4, c2w)


# ------------------------------------------------------------------------------------------ stability
def test_stability_stats_detects_collapse_and_nan():
    ok = stability_stats([0.2] * 300, [True] * 300)
    assert ok["pass"] and ok["std_ratio"] == pytest.approx(1.0) and ok["nonfinite_frames"] == 0
    fading = stability_stats(list(np.linspace(0.2, 0.02, 300)), [True] * 300)
    assert not fading["pass"] and fading["std_ratio"] < 0.5
    finite = [True] * 300
    finite[150] = False
    std = [0.2] * 300
    std[150] = float("nan")
    nan = stability_stats(std, finite)
    assert not nan["pass"] and nan["nonfinite_frames"] == 1 and nan["first_nonfinite_frame"] == 150
    with pytest.raises(ValueError, match="at least 200"):
        stability_stats([0.2] * 150, [True] * 150)


class _SyntheticStream(RepeatFirstFrame):
    """Streams the first frame with contrast scaled by ``decay**i``, NaN from frame ``nan_from`` on."""

    def __init__(self, decay: float = 1.0, nan_from: int | None = None) -> None:
        super().__init__(frames_per_chunk=3)
        self.decay, self.nan_from, self.done = decay, nan_from, 1

    def start(self, image, intrinsics, **kwargs):
        self.done = 1
        return super().start(image, intrinsics, **kwargs)

    def step(self, state, c2w):
        frames, state = super().step(state, c2w)
        idx = torch.arange(self.done, self.done + frames.shape[1], dtype=torch.float64)
        mean = frames.mean()
        frames = (mean + (frames - mean) * (self.decay**idx)[None, :, None, None, None]).float()
        if self.nan_from is not None:
            frames[:, idx >= self.nan_from] = float("nan")
        self.done += frames.shape[1]
        return frames, state


def test_run_stability_on_synthetic_streams():
    rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    k4 = np.array([16.0, 16.0, 8.0, 8.0])

    def pose(i):
        return np.eye(4)

    steady = run_stability(_SyntheticStream(), rgb, k4, pose, 240)
    assert steady["pass"] and steady["frames"] == 240
    faded = run_stability(_SyntheticStream(decay=0.99), rgb, k4, pose, 240)
    assert not faded["pass"] and faded["std_ratio"] < 0.5 and faded["nonfinite_frames"] == 0
    broken = run_stability(_SyntheticStream(nan_from=130), rgb, k4, pose, 240)
    assert not broken["pass"] and broken["first_nonfinite_frame"] == 130 and broken["nonfinite_frames"] == 110


# ------------------------------------------------------------------------------------------ candidates
def test_candidates_and_clip_lengths():
    from world_model.bundles import untrained_world_model

    wm = untrained_world_model("tiny-notext", image_hw=(16, 16), seed=3)
    cands = world_model_candidates(wm)
    assert [c.name for c in cands] == ["model", "repeat_first_frame", "warp", "untrained"]
    gen, base = cands[0].generator_for(None), cands[3].generator_for(None)
    assert base.transformer.config == gen.transformer.config and base.codec is gen.codec
    w0, w1 = next(gen.transformer.parameters()), next(base.transformer.parameters())
    assert not torch.equal(w0, w1)  # random weights, not the model's
    assert clip_frames(gen, 129) == 130 and gen.valid_num_frames(43) == 130 and clip_frames(gen, 127) == 127
    assert pad_poses(np.eye(4)[None].repeat(3, 0), 5).shape == (5, 4, 4)
    with pytest.raises(ValueError, match="ships no teacher"):
        world_model_candidates(wm, teacher=True)


# ------------------------------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_eval_cli_quick_writes_json_and_figures(tmp_path, tiny_bundle, one_thread, capsys):
    from PIL import Image

    out = tmp_path / "res" / "eval.json"
    code = main(["eval", "--model", str(tiny_bundle), "--json", str(out), "--quick", "--frames", "17",
                 "--no-untrained", "--no-progress"])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["quick"] and res["config"]["frames"] == 17 and res["config"]["image_hw"] == [16, 16]
    assert set(res["candidates"]) == {"model", "repeat_first_frame", "warp"}
    model = res["candidates"]["model"]
    assert model["fidelity"]["psnr"]["1-8"]["frames"] == 3 * 8 and model["fidelity"]["psnr"]["9-32"]["frames"] == 24
    assert model["revisit"]["frames"] > 0 and model["stability"]["frames"] == 200
    assert model["stability"]["state_bytes_at_window"] == model["stability"]["state_bytes_at_end"]  # flat memory
    assert res["versions"]["torch"] and res["timing"]["total_seconds"] > 0
    assert "action_following_accuracy>=0.8" in res["targets"]
    for key in ("contact_sheet", "psnr_plot"):
        with Image.open(res["figures"][key]) as im:
            assert im.format == "PNG" and im.width > 100
    printed = capsys.readouterr().out
    assert "action-acc" in printed and str(out) in printed and "delta-PSNR" in printed
    assert "psnr_1-8_gain_over_warp>=0dB" in res["targets"] and res["coverage"]["1-8"]["mean"] > 0


def test_eval_cli_without_a_model_says_what_to_do(tmp_path, capsys):
    code = main(["eval", "--model", str(tmp_path / "missing"), "--json", str(tmp_path / "x.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no world-model bundle" in err and "--model" in err and "sana-wm train" in err


def test_demo_path_is_6dof_and_inside_every_family():
    from sana_wm_cli.demo import PATH_CLEARANCE, scripted_path

    for family in ("rooms", "city", "outdoor"):
        scene = make_scene(family, 0)
        poses = scripted_path(scene, 130, 16.0)
        assert scene.free(poses[:, :3, 3], PATH_CLEARANCE).all()
        fwd = poses[:, :3, 2]
        yaw = np.degrees(np.unwrap(np.arctan2(fwd[:, 1], fwd[:, 0])))
        assert yaw.max() - yaw.min() > 45.0  # turns
        assert poses[-1, 2, 3] - poses[0, 2, 3] > 0.1 * scene.speed_scale  # climbs
        right = poses[:, :3, 0]
        assert np.abs(np.degrees(np.arcsin(right[:, 2]))).max() > 3.0  # rolls a little
        assert np.linalg.norm(poses[-1, :3, 3] - poses[0, :3, 3]) > 1.0 * scene.speed_scale  # moves


def test_demo_writes_side_by_side_video(tmp_path, tiny_bundle, one_thread, capsys):
    import imageio.v3 as iio

    out = tmp_path / "demo.mp4"
    assert main(["demo", "--model", str(tiny_bundle), "--out", str(out), "--seconds", "1"]) == 0
    frames = iio.imread(out)
    assert frames.shape == (19, 18 + 16 * 16, 2 * 16 * 16 + 4, 3)  # 17 frames rounded up to the model's 19
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == 19 and summary["out"] == str(out) and "1-8" in summary["psnr_db_by_horizon"]
