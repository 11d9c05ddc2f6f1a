"""Training a :class:`~world_model.refiner.WorldModelRefiner`: stage-1 rollouts re-noised in, ground truth out.

Data (:func:`write_stage1_pairs`, format ``sana-wm-refiner-pairs/1``, a folder)::

    pairs.json                 {"format", "model", "codec", "frames", "latent_frames", "image_hw", "fps",
                                "seed", "source": {...}, "clips": N}
    pairs/<i:06d>.npz          stage1 float32 (C, T, h, w)   the stage-1 generator's latents along the clip's poses
                               rgb uint8 (F, H, W, 3)        ground-truth frames (frame 0 = the stage-1 input image)
                               c2w float32 (F, 4, 4)         OpenCV camera-to-world, relative to frame 0
                               intrinsics float32 (F, 4)     [fx, fy, cx, cy] pixels
                               seed int64 ()                 the stage-1 generation seed
                               depth float16 (F, H, W)       ground-truth depth in metres, 0 = sky (RGB-D
                                                             models only: "depth": true in pairs.json)

Each clip of a source dataset (any dataset of the :mod:`.data` item format) is rolled out by the streaming
generator from its first frame along its own poses (seed = the clip's position), so a pair is the same camera
path twice: what stage 1 made of it and what the twin world renders. Geometry-guided models (``takes_depth``)
also get the clip's frame-0 depth, as the envs give it; RGB-D models' pairs keep the clip's depth: the training
target is then the RGB-D latents, so the refiner refines colour and depth jointly. Files are written atomically and
skipped when present, so an interrupted run resumes.

The refiner's transformer reads no geometry cache (:func:`refiner_model_config`): it refines finished latents
jointly, where the cache has done its work already.

Objective (:class:`RefinerTrainer`, a :class:`~.trainer.Trainer` in bidirectional mode): per clip a strength
``s`` is drawn from ``config.strengths`` and a level ``sigma`` among the refiner's Euler points
``schedule_from(s)`` (without the final 0); with ``x_s = (1 - s) z1 + s n`` (``z1`` the stage-1 latents, ``n``
Gaussian) and ``g`` the ground-truth latents, the input is the point ``g + (sigma / s)(x_s - g)`` of the straight
path from ``x_s`` to ``g`` and the target velocity ``(x_s - g) / s`` (that is flow matching with the "noise"
``n' = (x_s - (1 - s) g) / s``: :func:`~.flow_matching.noise_latents` and the usual loss apply unchanged). Euler
steps along ``schedule_from(s)`` then land on ``g`` when the velocity is exact. Latent frame 0 (the sink, the
given image) stays clean and carries no loss.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..camera import camera_inputs_from_world
from ..config import ModelConfig
from ..refiner import DISTILLED_SIGMAS, LatentLayout, WorldModelRefiner, schedule_from
from ..video import to_uint8
from .data import collate_clips, item_to_tensors
from .flow_matching import flow_matching_loss, noise_latents
from .trainer import TrainConfig, Trainer
from .utils import psnr, write_side_by_side

PAIRS_FORMAT = "sana-wm-refiner-pairs/1"


def pair_path(folder: str | Path, index: int) -> Path:
    return Path(folder) / "pairs" / f"{index:06d}.npz"


def refiner_model_config(student: ModelConfig) -> dict[str, Any]:
    """The refiner's architecture for a stage-1 ``student``: the same, without the geometry input (a refiner
    refines finished latents jointly; ``init_from`` the student then carries over everything else)."""
    return student.replace(geometry_channels=0).to_dict()


@torch.no_grad()
def stage1_rollout(gen, image: torch.Tensor, intrinsics: torch.Tensor, c2w: torch.Tensor,
                   seeds: Sequence[int], depth: torch.Tensor | None = None) -> torch.Tensor:
    """Stage-1 latents ``(B, C, T, h, w)`` of a causal generator along ``c2w (B, F, 4, 4)`` from ``image (B, 3, H, W)``.

    ``F`` must be a valid clip length of the generator (``gen.valid_num_frames(k)``); latent frame 0 is the
    encoded image. ``depth``: frame 0's depth ``(B, H, W)`` metres for generators that take it (``takes_depth``)."""
    b, f = c2w.shape[:2]
    extra = {} if depth is None else {"depth": depth}
    state = gen.start(image, intrinsics, c2w=c2w[:, 0], seed=list(seeds), **extra)
    chunks, done = [], 1
    while done < f:
        n = gen.frames_per_step(state)
        if done + n > f:
            raise ValueError(f"c2w has {f} frames, not a valid clip length of the generator "
                             f"({[gen.valid_num_frames(k) for k in range(1, 5)]}...)")
        _, state = gen.step(state, c2w[:, done : done + n])
        chunks.append(state.latents.float().cpu())
        done += n
    return torch.cat(chunks, dim=2)


def write_stage1_pairs(dataset: Dataset, model, folder: str | Path, *, clips: int, frames: int, batch_size: int = 8,
                       seed: int = 0, source: dict[str, Any] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Roll out the first ``clips`` items of ``dataset`` (first ``frames`` frames each) with ``model``'s streaming
    generator and write the pairs folder (see the module docstring). Returns the ``pairs.json`` document.

    For generators that take frame 0's depth or RGB-D codecs the items must carry ``depth`` (a twin dataset
    loaded with depth); the pairs then keep it."""
    folder = Path(folder)
    gen = model.streaming_generator()
    takes_depth = bool(getattr(gen, "takes_depth", False))
    with_depth = takes_depth or bool(model.codec.depth_channels)
    valid = [gen.valid_num_frames(k) for k in range(1, 64)]
    if frames not in valid:
        raise ValueError(f"frames must be a clip length of the generator ({valid[:6]}...), got {frames}")
    if isinstance(clips, bool) or not isinstance(clips, int) or not 1 <= clips <= len(dataset):
        raise ValueError(f"clips must be an int in [1, {len(dataset)}] (the dataset's items), got {clips!r}")
    doc = {"format": PAIRS_FORMAT, "model": model.name, "model_path": str(model.path) if model.path else None,
           "codec": model.codec.to_config(), "frames": frames,
           "latent_frames": model.codec.num_latent_frames(frames), "fps": model.fps, "seed": seed,
           "source": source or {}, "clips": clips}
    if with_depth:
        doc["depth"] = True
    meta_path = folder / "pairs.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        keep = {k: v for k, v in old.items() if k not in ("clips", "image_hw")}
        if keep != {k: v for k, v in doc.items() if k != "clips"}:
            raise ValueError(f"{meta_path} was written with other settings ({keep}); use another folder")
    (folder / "pairs").mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(clips) if not pair_path(folder, i).is_file()]
    done = clips - len(todo)
    image_hw = None
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        items = [item_to_tensors(dataset[i], f"dataset[{i}]") for i in idx]
        if any(it["frames"].shape[0] < frames for it in items):
            raise ValueError(f"dataset items have fewer than frames={frames} frames")
        if with_depth and any("depth" not in it for it in items):
            raise ValueError(f"model {model.name!r} has RGB-D latents (its refiner learns depth too): the dataset's "
                             "items must carry 'depth' (a twin dataset made with depth, loaded with it)")
        video = torch.stack([it["frames"][:frames] for it in items])
        c2w = torch.stack([it["c2w"][:frames] for it in items]).float()
        k = torch.stack([it["intrinsics"][0] for it in items]).float()
        image_hw = tuple(video.shape[-2:])
        depth = torch.stack([it["depth"][:frames] for it in items]) if with_depth else None
        z1 = stage1_rollout(gen, video[:, 0].to(gen.device), k, c2w, [seed + i for i in idx],
                            depth[:, 0].to(gen.device) if takes_depth else None)
        for j, i in enumerate(idx):
            rel = torch.linalg.inv(c2w[j, :1].double()) @ c2w[j].double()
            rgb = to_uint8(video[j])
            path = pair_path(folder, i)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
            extra = {} if depth is None else {"depth": depth[j].to(torch.float16).numpy()}
            np.savez(tmp, stage1=z1[j].numpy(), rgb=rgb, c2w=rel.float().numpy(),
                     intrinsics=items[j]["intrinsics"][:frames].numpy(), seed=np.int64(seed + i), **extra)
            os.replace(tmp, path)
        done += len(idx)
        if progress is not None:
            progress(done, clips)
    if image_hw is None:
        with np.load(pair_path(folder, 0)) as z:
            image_hw = tuple(z["rgb"].shape[1:3])
    doc["image_hw"] = list(image_hw)
    meta_path.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


class Stage1Pairs(Dataset):
    """The pairs of a ``sana-wm-refiner-pairs/1`` folder; items: ``rgb``, ``c2w``, ``intrinsics`` (the :mod:`.data`
    item format, ground truth; ``depth`` float32 metres where the pair holds it) plus ``stage1`` float32
    ``(C, T, h, w)``. ``indices`` selects pairs (default all)."""

    def __init__(self, folder: str | Path, indices: Sequence[int] | None = None) -> None:
        self.folder = Path(folder)
        meta = self.folder / "pairs.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{self.folder} holds no refiner pairs (no pairs.json); write them with "
                                    "`sana-wm train-refiner` or write_stage1_pairs")
        self.meta = json.loads(meta.read_text())
        if self.meta.get("format") != PAIRS_FORMAT:
            raise ValueError(f"{meta}: format must be {PAIRS_FORMAT!r}, got {self.meta.get('format')!r}")
        n = int(self.meta["clips"])
        self.indices = list(range(n)) if indices is None else [int(i) for i in indices]
        bad = [i for i in self.indices if not 0 <= i < n]
        if bad:
            raise ValueError(f"indices must be in [0, {n}), got {bad[:5]}")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict:
        with np.load(pair_path(self.folder, self.indices[item]), allow_pickle=False) as z:
            out = {"rgb": torch.from_numpy(z["rgb"]), "c2w": torch.from_numpy(z["c2w"]),
                   "intrinsics": torch.from_numpy(z["intrinsics"]), "stage1": torch.from_numpy(z["stage1"]),
                   "seed": int(z["seed"])}
            if "depth" in z.files:
                out["depth"] = torch.from_numpy(z["depth"].astype(np.float32))
            return out


def collate_pairs(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """:func:`~.data.collate_clips` plus the stacked ``stage1`` latents."""
    out = collate_clips(items)
    out["stage1"] = torch.stack([torch.as_tensor(it["stage1"]).float() for it in items])
    return out


@dataclass
class RefinerTrainConfig(TrainConfig):
    """A :class:`TrainConfig` for refiners (mode bidirectional; ``init_from``: usually the stage-1 student).

    ``strengths``: re-noising levels drawn per clip in training (each refines along ``schedule_from(s)``);
    ``strength``: the one written into the exported refiner (pick it by the validation PSNR the run logs);
    ``window``: latent frames per refinement window (after the sink): training crops windows of
    ``[ceil(window / 2), window]`` frames and the exported refiner refines in windows of at most ``window``
    (0 = the training clip length - 1, no crop).
    """

    mode: str = "bidirectional"
    strengths: tuple[float, ...] = (0.909375, 0.725, 0.421875)
    strength: float = 0.725
    window: int = 8
    lr: float = 1e-4
    ema_decay: float = 0.995
    first_frame_prob: float = 1.0
    validation_clips: int = 0  # the last N pairs are held out for the validation log (not trained on)

    def __post_init__(self) -> None:
        self.strengths = tuple(float(s) for s in self.strengths)
        super().__post_init__()
        errors = []
        if self.mode != "bidirectional":
            errors.append(f"mode must be 'bidirectional' for a refiner, got {self.mode!r}")
        if not self.strengths or any(not 0 < s <= 1 for s in self.strengths):
            errors.append(f"strengths must be numbers in (0, 1], got {self.strengths}")
        if not 0 < self.strength <= 1:
            errors.append(f"strength must be in (0, 1], got {self.strength}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            errors.append(f"window must be an int >= 0 (0 = training clip length - 1), got {self.window!r}")
        if isinstance(self.validation_clips, bool) or not isinstance(self.validation_clips, int) or \
                self.validation_clips < 0:
            errors.append(f"validation_clips must be an int >= 0, got {self.validation_clips!r}")
        if self.model_config.geometry_channels:
            errors.append("model: a refiner reads no geometry cache; use geometry_channels=0 "
                          "(refiner_model_config of the student's config)")
        if errors:
            raise ValueError("invalid RefinerTrainConfig: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["strengths"] = list(self.strengths)
        return d


class RefinerTrainer(Trainer):
    """Trains a refiner on stage-1 pairs (see the module docstring). Checkpoints, EMA, resume, logs: as Trainer.

    ``RefinerTrainer(config, pairs, run_dir, validation=None, ...)``: ``pairs`` is a :class:`Stage1Pairs` (or any
    dataset of its item format); ``validation`` optional pairs whose mean PSNR (stage 1 vs refined, per strength)
    is logged at every sample point.
    """

    kind = "train-refiner"
    collate_fn = staticmethod(collate_pairs)

    def __init__(self, config: RefinerTrainConfig, dataset, run_dir, *, validation: Dataset | None = None,
                 **kwargs) -> None:
        if not isinstance(config, RefinerTrainConfig):
            raise ValueError(f"config must be a RefinerTrainConfig, got {type(config).__name__}")
        super().__init__(config, dataset, run_dir, **kwargs)
        self.validation = validation
        self.layout = LatentLayout.of_codec(self.codec)
        self.schedules = [schedule_from(s) for s in config.strengths]
        self.window = config.window or config.max_latent_frames - 1

    def batch_loss(self, batch, latent_frames: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        z1 = batch["stage1"].to(self.device)
        t = z1.shape[2]
        if latent_frames != t:
            raise ValueError(f"frames_schedule asks for {latent_frames} latent frames; the pairs hold {t}")
        n = self.codec.num_pixel_frames(t)
        video = batch["frames"][:, :n].permute(0, 2, 1, 3, 4).to(self.device, torch.float32).clamp(-1, 1)
        depth = None
        if self.codec.depth_channels:
            if "depth" not in batch:
                raise ValueError("this RGB-D codec needs depth: the refiner pairs hold none (write them with a model "
                                 "that takes depth, from a twin dataset with depth)")
            depth = batch["depth"][:, :n].to(self.device, torch.float32)
        with torch.no_grad():
            g = self.codec.encode(video, depth).float()
        h, w = batch["frames"].shape[-2:]
        camera = camera_inputs_from_world(batch["c2w"][:, :n].double(), batch["intrinsics"][:, :n].double(), (h, w),
                                          g.shape[-2:], self.codec.temporal_stride).to(self.device, torch.float32)
        b = g.shape[0]
        g, z1, camera = self.crop_window(g, z1, camera, gen)
        t = g.shape[2]
        which = torch.randint(0, len(self.schedules), (b,), generator=gen, device=self.device).tolist()
        s = torch.tensor([self.schedules[k][0] for k in which], device=self.device)
        pick = torch.rand(b, generator=gen, device=self.device)
        sigma = torch.tensor([self.schedules[k][int(p * (len(self.schedules[k]) - 1))] for k, p in
                              zip(which, pick.tolist())], device=self.device)
        noise = torch.randn(g.shape, generator=gen, device=self.device)
        sv = s[:, None, None, None, None]
        x_s = (1 - sv) * z1 + sv * noise
        n_eff = (x_s - (1 - sv) * g) / sv
        sig = sigma[:, None].expand(b, t).clone()
        sig[:, 0] = 0.0
        x_t = noise_latents(g, n_eff, sig)
        x_t[:, :, :1] = g[:, :, :1]
        with self._autocast():
            v = self.model(x_t, sig * 1000.0, camera=camera, mode="bidirectional")
        mask = sig > 0
        loss = flow_matching_loss(v.float(), n_eff - g, mask)
        return loss, {"sigma_mean": float(sigma.mean())}

    def crop_window(self, g: torch.Tensor, z1: torch.Tensor, camera, gen: torch.Generator):
        """The sink plus a random window of ``L`` consecutive latent frames per clip (``L`` drawn per batch from
        ``[ceil(window / 2), window]``), as the exported refiner sees them (``refine_windows``)."""
        from ..camera import CameraInputs

        t, w = g.shape[2], self.window
        if t - 1 <= w // 2:
            return g, z1, camera
        lo, hi = max(1, (w + 1) // 2), min(w, t - 1)
        n = int(torch.randint(lo, hi + 1, (1,), generator=gen, device=self.device).item())
        starts = torch.randint(1, t - n + 1, (g.shape[0],), generator=gen, device=self.device)
        idx = torch.cat([torch.zeros_like(starts)[:, None], starts[:, None] + torch.arange(n, device=self.device)],
                        dim=1)  # (B, n + 1)
        rows = torch.arange(g.shape[0], device=self.device)[:, None]

        def take(x: torch.Tensor) -> torch.Tensor:  # (B, C, T, ...) -> (B, C, n + 1, ...)
            return x.movedim(2, 1)[rows, idx].movedim(1, 2)

        cam = CameraInputs(camera.conditions[rows, idx], take(camera.plucker))
        return take(g), take(z1), cam

    # -- exported refiner and validation -------------------------------------------------------------
    def refiner(self, strength: float | None = None) -> WorldModelRefiner:
        c = self.config
        return WorldModelRefiner(self.ema, self.layout, sigmas=schedule_from(c.strength if strength is None
                                                                             else strength),
                                 window=self.window, fps=c.fps, image_hw=self.image_hw,
                                 codec=dict(c.codec), device=self.device)

    @torch.no_grad()
    def validate(self, dataset: Dataset, strengths: Sequence[float] | None = None,
                 limit: int | None = None) -> dict[str, float]:
        """Mean PSNR (frames 1.., pixel space, [-1, 1] peak 2) of decoded stage-1 and refined latents vs ground
        truth over ``dataset`` (first ``limit`` items), for each strength."""
        strengths = list(self.config.strengths if strengths is None else strengths)
        sums = {"stage1": 0.0, **{f"refined@{s:g}": 0.0 for s in strengths}}
        n = len(dataset) if limit is None else min(limit, len(dataset))
        refs = {s: self.refiner(s) for s in strengths}
        for i in range(n):
            it = collate_pairs([dataset[i]])
            z1 = it["stage1"].to(self.device)
            f = self.codec.num_pixel_frames(z1.shape[2])
            gt = it["frames"][0, 1:f]
            sums["stage1"] += psnr(self.codec.decode(z1)[0].permute(1, 0, 2, 3)[1:].cpu(), gt)
            for s, ref in refs.items():
                z = ref.refine(z1, fps=self.config.fps, seed=int(dataset[i].get("seed", i)),
                               c2w=it["c2w"][:, :f], intrinsics=it["intrinsics"][:, 0])
                sums[f"refined@{s:g}"] += psnr(self.codec.decode(z)[0].permute(1, 0, 2, 3)[1:].cpu(), gt)
        return {k: v / max(1, n) for k, v in sums.items()}

    @torch.no_grad()
    def write_sample(self) -> dict[str, Any]:
        """Stage 1 | refined | ground truth of pair 0 as ``samples/step_N.mp4``; validation PSNRs in the log."""
        it = collate_pairs([self.dataset[0]])
        z1 = it["stage1"].to(self.device)
        f = self.codec.num_pixel_frames(z1.shape[2])
        z = self.refiner().refine(z1, fps=self.config.fps, seed=0, c2w=it["c2w"][:, :f],
                                  intrinsics=it["intrinsics"][:, 0])
        cols = [self.codec.decode(x)[0].permute(1, 0, 2, 3).cpu() for x in (z1, z)]
        gt = it["frames"][0, :f]
        record: dict[str, Any] = {"step": self.step, "sample_psnr_stage1": psnr(cols[0][1:], gt[1:]),
                                  "sample_psnr_refined": psnr(cols[1][1:], gt[1:])}
        path = write_side_by_side([*cols, gt], self.run_dir / "samples" / f"step_{self.step:08d}.mp4",
                                  self.config.fps)
        record["sample"] = str(path.relative_to(self.run_dir))
        if self.validation is not None and len(self.validation):
            record.update({f"val_psnr_{k}": v for k, v in self.validate(self.validation).items()})
        self.log(record)
        return record

    def export(self, folder, *, name: str | None = None, card: str | None = None) -> Path:
        """Write the refiner folder (EMA weights, float16 on disk) with a model card."""
        ref = self.refiner()
        meta = {"step": self.step, "kind": self.kind, "weights": "ema", "strength": self.config.strength,
                "name": name or Path(folder).name}
        return ref.save(folder, card=card or refiner_card(self, name or Path(folder).name), metadata=meta)


def refiner_card(trainer: RefinerTrainer, name: str) -> str:
    """A short MODEL_CARD.md from the run's config and last metrics."""
    c = trainer.config
    metrics = trainer.read_metrics()
    val = [m for m in metrics if any(k.startswith("val_psnr") for k in m)]
    lines = [f"# {name}", "", "SANA-WM stage-2 refiner (WorldModelRefiner): stage-1 latents re-noised to the "
             f"strength {c.strength}, then {len(schedule_from(c.strength)) - 1} Euler steps back, camera-conditioned, "
             "bidirectional over a window with the first frame as clean sink.", "",
             f"- transformer: {trainer.model.num_parameters() / 1e6:.2f}M parameters, init from {c.init_from}",
             f"- layout: {vars(trainer.layout)}",
             f"- training: {trainer.step} steps, batch {c.batch_size}, lr {c.lr}, strengths {list(c.strengths)}, "
             f"{len(trainer.dataset)} pairs of {trainer.item_frames} frames",
             ]
    if val:
        lines.append(f"- last validation: {json.dumps({k: round(v, 3) for k, v in val[-1].items() if k != 'sample'})}")
    lines += ["", "Full training config:", "", "```json", c.to_json(), "```", ""]
    return "\n".join(lines)


__all__ = ["DISTILLED_SIGMAS", "PAIRS_FORMAT", "RefinerTrainConfig", "RefinerTrainer", "Stage1Pairs",
           "collate_pairs", "pair_path", "refiner_card", "refiner_model_config", "stage1_rollout", "write_stage1_pairs"]
