"""Flow-matching training of the SANA-WM transformer: :class:`TrainConfig` and :class:`Trainer`.

A run lives in one folder::

    RUN_DIR/config.json            the TrainConfig (JSON)
    RUN_DIR/metrics.jsonl          one JSON line per log: step, loss, loss_avg, lr, grad_norm, it_per_s,
                                   samples_per_s, latent_frames (and sample lines: step, sample, sample_psnr)
    RUN_DIR/checkpoints/step_XXXXXXXX/   model.safetensors (raw weights), ema.safetensors, optimizer.pt,
                                   rng.pt + rng.json (global RNG states), state.json (step, config)
    RUN_DIR/checkpoints/latest     name of the newest complete checkpoint
    RUN_DIR/model/                 the EMA weights (what the run produces), a ``save_transformer`` folder
    RUN_DIR/samples/step_XXXXXXXX.mp4   generated | ground truth, side by side

Checkpoints are written to a temporary folder and renamed into place, so an interrupted write never leaves
a half checkpoint as ``latest``. ``Trainer(..., resume=True)`` restores model, EMA, optimizer, step, RNG
states and drops metric lines past the checkpoint; since every batch, noise and timestep draw is seeded by
``(seed, step)`` (see :mod:`.data`), a resumed run reproduces the uninterrupted loss curve exactly on CPU.

Recipe (docs/architecture.md#generation-modes-and-training): AdamW, constant LR after an optional linear
warm-up, gradient clipping, EMA,
bf16 autocast on CUDA (fp32 master weights), fp32 on CPU; per-frame logit-normal timesteps with shift and
the clean first-frame condition (bidirectional), or the chunk-causal diffusion-forcing mixture.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..checkpoints import build_transformer, grow_transformer, load_transformer, save_transformer
from ..codecs import LatentCodec, build_codec
from ..config import ModelConfig, get_config
from ..transformer import GRID_FIELDS, SanaWMTransformer
from .data import SeededItems, StepBatchSampler, collate_clips, item_info, latent_batch, mix_seed
from .flow_matching import (
    DEFAULT_CHUNK_MIXTURE,
    apply_first_frame_condition,
    check_mixture,
    flow_matching_loss,
    noise_latents,
    noisy_mask,
    sample_chunk_sigmas,
    sample_frame_sigmas,
)
from .geometry import CacheCorruption, clip_geometry, unknown_depth_geometry
from .utils import atomic_write_text, ema_decay_at, ema_update, psnr, rng_states, set_rng_states, write_side_by_side

MODES = ("bidirectional", "chunk_causal")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    """Everything that defines a training run (JSON round-trip: :meth:`to_json` / :meth:`from_json`).

    ``model``: a preset name or a ``ModelConfig`` dict. ``codec``: a codec config (``build_codec``).
    ``frames_schedule``: progressive clip length as ``[[start_step, latent_frames], ...]`` (first start 0,
    increasing starts): from ``start_step`` on, clips have ``latent_frames`` latent frames.
    ``init_from``: optional transformer folder/file to start from (fine-tuning; a different architecture, e.g.
    RGB-D latents or a geometry input, starts from the weights that carry over: ``grow_transformer``).
    """

    model: str | dict[str, Any] = "small-cpu"
    codec: dict[str, Any] = field(default_factory=lambda: {"type": "patch", "patch_size": 4, "temporal_stride": 1})
    mode: str = "chunk_causal"
    steps: int = 1000
    batch_size: int = 4
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    seed: int = 0
    # timesteps
    flow_shift: float = 3.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    first_frame_prob: float = 0.9
    chunk_mixture: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CHUNK_MIXTURE))
    frames_schedule: tuple[tuple[int, int], ...] = ((0, 7),)
    # numerics
    precision: str = "auto"
    gradient_checkpointing: bool = False
    # bookkeeping
    log_every: int = 10
    sample_every: int = 0  # 0: only at the end
    sample_steps: int = 20
    sample_shift: float = 8.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    num_workers: int = 0
    fps: float = 16.0
    init_from: str | None = None
    # geometry-guided models (geometry_channels > 0): how imperfect training caches are (CacheCorruption fields),
    # and the share of clips that teach frame 0's depth from its colours (colours clean, depth noisy)
    cache_corruption: dict[str, float] = field(default_factory=lambda: CacheCorruption().to_dict())
    depth_first_prob: float = 0.1

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        self.frames_schedule = tuple((int(s), int(t)) for s, t in self.frames_schedule)
        errors = []
        if self.mode not in MODES:
            errors.append(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            errors.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("steps", "batch_size", "log_every", "sample_steps", "checkpoint_every", "keep_checkpoints"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                errors.append(f"{name} must be a positive int, got {v!r}")
        for name in ("warmup_steps", "sample_every", "num_workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                errors.append(f"{name} must be an int >= 0, got {v!r}")
        if not self.lr > 0:
            errors.append(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            errors.append(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.ema_decay < 1:
            errors.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.first_frame_prob <= 1:
            errors.append(f"first_frame_prob must be in [0, 1], got {self.first_frame_prob}")
        if not 0 <= self.depth_first_prob <= 1:
            errors.append(f"depth_first_prob must be in [0, 1], got {self.depth_first_prob}")
        try:
            CacheCorruption(**self.cache_corruption)
        except (TypeError, ValueError) as exc:
            errors.append(f"cache_corruption: {exc}")
        if self.grad_clip < 0 or self.weight_decay < 0 or not self.adam_eps > 0:
            errors.append("grad_clip and weight_decay must be >= 0 and adam_eps > 0")
        if not self.flow_shift > 0 or not self.sample_shift > 0 or not self.logit_std > 0:
            errors.append("flow_shift, sample_shift and logit_std must be > 0")
        sched = self.frames_schedule
        if not sched or sched[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(sched, sched[1:])) or any(
            t < 2 for _, t in sched
        ):
            errors.append(f"frames_schedule must be [[0, T0], [s1, T1], ...] with increasing starts and T >= 2, "
                          f"got {[list(x) for x in sched]}")
        try:
            self.chunk_mixture = check_mixture(self.chunk_mixture)
        except ValueError as exc:
            errors.append(str(exc))
        try:
            get_config(self.model)
        except (ValueError, TypeError) as exc:
            errors.append(f"model: {exc}")
        if not isinstance(self.codec, dict) or "type" not in self.codec:
            errors.append(f"codec must be a codec config dict with 'type', got {self.codec!r}")
        if errors:
            raise ValueError(f"invalid {type(self).__name__}: " + "; ".join(errors))

    # -- derived -------------------------------------------------------------------------------
    @property
    def model_config(self) -> ModelConfig:
        return get_config(self.model)

    def latent_frames(self, step: int) -> int:
        """Latent clip length at ``step`` (progressive schedule)."""
        t = self.frames_schedule[0][1]
        for start, frames in self.frames_schedule:
            if step >= start:
                t = frames
        return t

    @property
    def max_latent_frames(self) -> int:
        return max(t for _, t in self.frames_schedule)

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["frames_schedule"] = [list(x) for x in self.frames_schedule]
        if isinstance(self.model, ModelConfig):
            d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> TrainConfig:
        s = str(text_or_path)
        text = s if s.lstrip().startswith("{") else Path(s).read_text()
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------
class Trainer:
    """Trains a transformer on a clip dataset (item format: :mod:`world_model.training.data`).

    ``Trainer(config, dataset, run_dir, device=None, model=None, resume=False, progress=True)``:
    ``model`` overrides the initial weights (else ``config.init_from`` or a fresh ``config.model`` seeded by
    ``config.seed``). A run folder that already holds checkpoints needs ``resume=True``. :meth:`train` runs to
    ``config.steps`` (or ``until``); :meth:`export` writes a world-model bundle of the EMA weights.
    """

    kind = "train"
    collate_fn = staticmethod(collate_clips)  # how items become a batch (subclasses may carry more keys)

    def __init__(
        self,
        config: TrainConfig,
        dataset: Dataset,
        run_dir: str | Path,
        *,
        device: str | torch.device | None = None,
        model: SanaWMTransformer | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.dataset = dataset
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if len(dataset) < 1:  # type: ignore[arg-type]
            raise ValueError("dataset is empty")
        self.codec: LatentCodec = build_codec(dict(config.codec)).to(self.device)
        self.model = self._initial_model(model).to(device=self.device, dtype=torch.float32).train()
        self.model.gradient_checkpointing = config.gradient_checkpointing
        cfg = self.model.config
        if self.codec.latent_channels != cfg.in_channels or self.codec.temporal_stride != cfg.temporal_stride:
            raise ValueError(
                f"codec ({self.codec.latent_channels} channels, temporal stride {self.codec.temporal_stride}) does "
                f"not fit the model ({cfg.in_channels} latent channels, Plücker stride {cfg.temporal_stride})"
            )
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=config.lr, betas=config.betas,
            eps=config.adam_eps, weight_decay=config.weight_decay,
        )
        self.step = 0
        self.use_bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        if self.use_bf16 and self.device.type != "cuda":
            raise ValueError("precision='bf16' needs a CUDA device (CPU training runs in fp32)")
        first = item_info(SeededItems(dataset)[(0, config.seed)])
        self.image_hw, self.fov_deg, self.item_frames = first["image_hw"], first["fov_deg"], first["frames"]
        need = self.codec.num_pixel_frames(config.max_latent_frames)
        if self.item_frames < need:
            raise ValueError(f"dataset items have {self.item_frames} frames; frames_schedule needs up to {need}")
        self.codec.latent_hw(self.image_hw)  # raises if the frame size does not fit the codec
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        existing = self.latest_checkpoint()
        if resume:
            if existing is None:
                raise ValueError(f"resume: {self.run_dir} has no checkpoint to resume from")
            self.load_checkpoint(existing)
        elif existing is not None:
            raise ValueError(f"{self.run_dir} already holds checkpoints (latest {existing.name}); pass resume=True "
                             "(--resume) to continue it or choose a new run folder")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config.to_json(self.run_dir / "config.json")

    # -- construction hooks ----------------------------------------------------------------------
    def _initial_model(self, model: SanaWMTransformer | None) -> SanaWMTransformer:
        if model is not None:
            if not isinstance(model, SanaWMTransformer):
                raise ValueError(f"model must be a SanaWMTransformer, got {type(model).__name__}")
            return copy.deepcopy(model).requires_grad_(True)
        if self.config.init_from:
            source = load_transformer(self.config.init_from, dtype=torch.float32)
            target = get_config(self.config.model)
            if source.config.replace(**{k: getattr(target, k) for k in GRID_FIELDS}) == target:
                return source.regridded(target)
            # another architecture (e.g. RGB-D latents, a geometry input): start from what carries over
            return grow_transformer(source, target, seed=self.config.seed)[0]
        return build_transformer(self.config.model, seed=self.config.seed, dtype=torch.float32)

    # -- schedule --------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        w = self.config.warmup_steps
        return self.config.lr * min(1.0, (step + 1) / w) if w else self.config.lr

    def _autocast(self):
        if self.use_bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step_generator(self, step: int, stream: int = 0) -> torch.Generator:
        """The generator of all random draws of ``step`` (noise, timesteps, conditions)."""
        return torch.Generator(device=self.device).manual_seed(mix_seed(self.config.seed, 3, step, stream))

    # -- the objective ---------------------------------------------------------------------------
    def sample_sigmas(self, batch: int, num_frames: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame sigmas ``(B, T)`` for the run's mode and the loss mask (noisy frames)."""
        c = self.config
        if c.mode == "chunk_causal":
            bounds = self.model.config.chunk_bounds(num_frames)
            sig, _ = sample_chunk_sigmas(batch, bounds, mixture=c.chunk_mixture, shift=c.flow_shift,
                                         mean=c.logit_mean, std=c.logit_std, generator=gen, device=self.device)
        else:
            sig = sample_frame_sigmas(batch, num_frames, shift=c.flow_shift, mean=c.logit_mean, std=c.logit_std,
                                      generator=gen, device=self.device)
        sig, _ = apply_first_frame_condition(sig, c.first_frame_prob, generator=gen)
        mask = noisy_mask(sig)
        if not bool(mask.any()):  # degenerate draw (everything clean): noise the last frame of clip 0
            sig[0, -1] = 1.0
            mask = noisy_mask(sig)
        return sig, mask

    def compute_loss(self, x0: torch.Tensor, camera, gen: torch.Generator, depth_rows: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow-matching loss of one latent batch (``x0 (B, C, T, h, w)``).

        ``depth_rows (B,)`` bool (RGB-D codecs): clips that learn frame 0's depth from its colours: frame 0's
        colour channels stay clean while its depth channels are noised, later frames are pure noise, and only
        frame 0's depth is scored (what ``generate_depth`` asks of the model)."""
        b, _, t = x0.shape[:3]
        sig, mask = self.sample_sigmas(b, t, gen)
        noise = torch.randn(x0.shape, generator=gen, device=self.device, dtype=x0.dtype)
        rgb = x0.shape[1] - self.codec.depth_channels
        if depth_rows is not None:
            sig0 = sample_frame_sigmas(b, 1, shift=self.config.flow_shift, mean=self.config.logit_mean,
                                       std=self.config.logit_std, generator=gen, device=self.device)[:, 0]
            sig, mask = sig.clone(), mask.clone()
            sig[depth_rows, 0] = sig0[depth_rows]
            sig[depth_rows, 1:] = 1.0
            mask[depth_rows, 0] = True
            mask[depth_rows, 1:] = False
        x_t = noise_latents(x0, noise, sig)
        if depth_rows is not None:
            x_t[depth_rows, :rgb, 0] = x0[depth_rows, :rgb, 0]
        with self._autocast():
            v = self.model(x_t, sig * 1000.0, camera=camera, mode=self.config.mode)
        target = noise - x0
        v = v.float()
        if depth_rows is not None and bool(depth_rows.any()):  # frame 0's given colours are not scored
            v = v.clone()
            v[depth_rows, :rgb, 0] = target[depth_rows, :rgb, 0].float()
        loss = flow_matching_loss(v, target, mask)
        extra = {"noisy_fraction": float(mask.float().mean())}
        if depth_rows is not None:
            extra["depth_first_rows"] = int(depth_rows.sum())
        return loss, extra

    def batch_loss(self, batch: dict[str, torch.Tensor], latent_frames: int,
                   gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one collated batch: encode ``latent_frames`` latent frames (with the geometry cache's render
        for geometry-guided models), then :meth:`compute_loss`."""
        x0, camera, clip = latent_batch(batch, self.codec, latent_frames, self.device)
        depth_rows = None
        if self.model.config.geometry_channels:
            camera, depth_rows = self.geometry_camera(camera, clip, latent_frames, gen)
        return self.compute_loss(x0, camera, gen, depth_rows)

    def geometry_camera(self, camera, clip: dict[str, torch.Tensor], latent_frames: int, gen: torch.Generator):
        """``camera`` with the training cache's render attached (:func:`clip_geometry`), and the rows that learn
        frame 0's depth instead (:func:`unknown_depth_geometry`)."""
        bounds = (self.model.config.chunk_bounds(latent_frames) if self.config.mode == "chunk_causal"
                  else [(0, latent_frames)])
        dev = self.device
        frames = clip["frames"].to(dev).clamp(-1, 1)
        draw = torch.rand(frames.shape[0], generator=gen, device=gen.device).to(dev)
        depth_rows = draw < self.config.depth_first_prob
        geometry = clip_geometry(frames, clip["depth"].to(dev), clip["c2w"].to(dev), clip["intrinsics"].to(dev),
                                 self.codec, bounds, CacheCorruption(**self.config.cache_corruption), gen)
        if bool(depth_rows.any()):
            unknown = unknown_depth_geometry(frames[:, 0], self.codec, latent_frames)
            geometry = torch.where(depth_rows[:, None, None, None, None], unknown, geometry)
        return camera.with_geometry(geometry.to(camera.plucker.dtype)), depth_rows

    # -- one step --------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimiser step on a collated batch; returns its metrics."""
        step = self.step
        t = self.config.latent_frames(step)
        gen = self.step_generator(step)
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, extra = self.batch_loss(batch, t, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        self.optimizer.step()
        ema_update(self.ema, self.model, ema_decay_at(self.config.ema_decay, step, self.config.ema_warmup))
        self.step = step + 1
        return {"loss": float(loss.item()), "lr": lr, "grad_norm": float(grad_norm), "latent_frames": t, **extra}

    # -- loop ------------------------------------------------------------------------------------
    def batches(self, start: int, end: int):
        sampler = StepBatchSampler(len(self.dataset), self.config.batch_size, self.config.seed, start, end)
        loader = DataLoader(SeededItems(self.dataset), batch_sampler=sampler, collate_fn=self.collate_fn,
                            num_workers=self.config.num_workers,
                            persistent_workers=False, pin_memory=self.device.type == "cuda")
        return iter(loader)

    def train(self, until: int | None = None, callback: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Train from the current step to ``until`` (default ``config.steps``); returns a summary.

        A checkpoint is written every ``checkpoint_every`` steps and at the end; a sample video every
        ``sample_every`` steps (if > 0) and at the end.
        """
        from tqdm import tqdm

        c = self.config
        end = c.steps if until is None else int(until)
        if end > c.steps:
            raise ValueError(f"until={end} is past config.steps={c.steps}")
        start = self.step
        window_losses: list[float] = []
        t_window, n_window = time.perf_counter(), 0
        t_start = time.perf_counter()
        last = {}
        bar = tqdm(total=c.steps, initial=start, disable=not self.progress, unit="step", desc=self.kind,
                   dynamic_ncols=True)
        try:
            for batch in self.batches(start, end):
                m = self.train_step(batch)
                last = m
                window_losses.append(m["loss"])
                n_window += 1
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.4f}", T=m["latent_frames"])
                if self.step % c.log_every == 0 or self.step == end:
                    dt = time.perf_counter() - t_window
                    rec = {"step": self.step, "loss": m["loss"], "loss_avg": sum(window_losses) / len(window_losses),
                           "lr": m["lr"], "grad_norm": m["grad_norm"], "it_per_s": n_window / dt if dt > 0 else 0.0,
                           "samples_per_s": n_window * c.batch_size / dt if dt > 0 else 0.0,
                           "latent_frames": m["latent_frames"],
                           **{k: v for k, v in m.items() if k not in ("loss", "lr", "grad_norm", "latent_frames")}}
                    self.log(rec)
                    if callback is not None:
                        callback(rec)
                    window_losses, t_window, n_window = [], time.perf_counter(), 0
                if c.sample_every and self.step % c.sample_every == 0 and self.step != end:
                    self.write_sample()
                if self.step % c.checkpoint_every == 0 and self.step != end:
                    self.save_checkpoint()
        finally:
            bar.close()
        if self.step > start or self.latest_checkpoint() is None:
            self.write_sample()
            self.save_checkpoint()
        elapsed = time.perf_counter() - t_start
        return {"step": self.step, "steps_run": self.step - start, "seconds": elapsed,
                "s_per_step": elapsed / max(1, self.step - start), "last": last}

    def log(self, record: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    # -- samples ---------------------------------------------------------------------------------
    def sample_clip(self) -> dict[str, torch.Tensor]:
        """The fixed clip samples are drawn for (dataset item 0, fetched with the run seed), batch of one."""
        return collate_clips([SeededItems(self.dataset)[(0, mix_seed(self.config.seed, 4))]])

    def sample_generators(self) -> list[tuple[str, Any]]:
        """``[(label, generator)]`` whose rollouts a sample video shows (EMA weights)."""
        from ..generators import BidirectionalGenerator, ChunkCausalGenerator

        c = self.config
        cls = ChunkCausalGenerator if c.mode == "chunk_causal" else BidirectionalGenerator
        return [("ema", cls(self.ema, self.codec, num_steps=c.sample_steps, shift=c.sample_shift))]

    @torch.no_grad()
    def write_sample(self) -> dict[str, Any]:
        """Roll out from the sample clip's first frame along its poses; write ``samples/step_N.mp4``."""
        batch = self.sample_clip()
        gens = self.sample_generators()
        n_avail = min(batch["frames"].shape[1], self.codec.num_pixel_frames(self.config.latent_frames(self.step)))
        g0 = gens[0][1]
        n, k = 1, 1
        while g0.valid_num_frames(k) <= n_avail:
            n, k = g0.valid_num_frames(k), k + 1
        if n < 2:
            return {}
        frames = batch["frames"][0, :n]
        poses = batch["c2w"][:, :n]
        columns, record = [], {"step": self.step}
        image = frames[:1].to(self.device)
        depth = {"depth": batch["depth"][:, 0].to(self.device)} if "depth" in batch else {}
        for label, gen in gens:
            video = gen.generate(image, batch["intrinsics"][0, 0], poses, seed=self.config.seed,
                                 **(depth if gen.takes_depth else {}))[0]
            columns.append(video.cpu())
            record[f"sample_psnr_{label}"] = psnr(video[1:].cpu(), frames[1:])
        columns.append(frames)
        path = write_side_by_side(columns, self.run_dir / "samples" / f"step_{self.step:08d}.mp4", self.config.fps)
        record["sample"] = str(path.relative_to(self.run_dir))
        self.log(record)
        return record

    # -- checkpoints -----------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        marker = self.ckpt_dir / "latest"
        if not marker.is_file():
            return None
        path = self.ckpt_dir / marker.read_text().strip()
        return path if (path / "state.json").is_file() else None

    def checkpoint_state(self) -> dict[str, Any]:
        """Extra JSON state a subclass wants in ``state.json``."""
        return {}

    def save_checkpoint(self) -> Path:
        """Write a complete checkpoint atomically and point ``latest`` at it; prune old ones; refresh ``model/``."""
        from safetensors.torch import save_file

        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        name = f"step_{self.step:08d}"
        final = self.ckpt_dir / name
        tmp = self.ckpt_dir / f".tmp_{name}_{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.ema.state_dict().items()},
                  str(tmp / "ema.safetensors"))
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        rng_t, rng_doc = rng_states()
        torch.save(rng_t, tmp / "rng.pt")
        (tmp / "rng.json").write_text(json.dumps(rng_doc))
        state = {"step": self.step, "kind": self.kind, "config": self.config.to_dict(),
                 "model_config": self.model.config.to_dict(), **self.checkpoint_state()}
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(self.ckpt_dir / "latest", name + "\n")
        done = sorted(p for p in self.ckpt_dir.glob("step_*") if p.is_dir())
        for old in done[: max(0, len(done) - self.config.keep_checkpoints)]:
            if old != final:
                shutil.rmtree(old)
        self._export_model(self.run_dir / "model")
        return final

    def _export_model(self, folder: Path) -> None:
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        save_transformer(self.ema, tmp, metadata={"step": self.step, "kind": self.kind, "weights": "ema",
                                                  "mode": self.config.mode})
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, EMA, optimizer, step and RNG states from a checkpoint folder."""
        from safetensors.torch import load_file

        path = Path(path)
        state = json.loads((path / "state.json").read_text())
        if state["model_config"] != self.model.config.to_dict():
            raise ValueError(f"{path}: checkpoint model config differs from this run's model")
        self.model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(self.device)))
        self.ema.load_state_dict(load_file(str(path / "ema.safetensors"), device=str(self.device)))
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=self.device, weights_only=True))
        set_rng_states(torch.load(path / "rng.pt", weights_only=True), json.loads((path / "rng.json").read_text()))
        self.step = int(state["step"])
        self.load_checkpoint_state(state)
        if self.metrics_path.exists():  # drop records written after this checkpoint (an interrupted tail)
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= self.step]
            atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Hook: restore what :meth:`checkpoint_state` saved."""

    # -- export ----------------------------------------------------------------------------------
    def world_model(self, name: str = "trained"):
        """A :class:`~world_model.bundles.WorldModel` of the EMA weights (student = teacher until distilled)."""
        from ..bundles import WorldModel

        chunk = self.config.mode == "chunk_causal"
        notes = (f"sana-wm train, {self.step} steps, mode {self.config.mode}, EMA weights. The student is the "
                 "undistilled model itself (run `sana-wm distill` for the few-step streaming student)")
        return WorldModel(student=self.ema, codec=self.codec, name=name, fps=self.config.fps,
                          image_hw=self.image_hw, fov_deg=self.fov_deg, teacher=self.ema if chunk else None,
                          teacher_sampler={"num_steps": self.config.sample_steps, "shift": self.config.sample_shift},
                          notes=notes)

    def export(self, folder: str | Path, *, name: str | None = None, card: str | None = None,
               weights_dtype: torch.dtype | None = None, fov_deg: float | None = None) -> Path:
        """Write the run's world-model bundle (``save_world_model``, weights stored as ``weights_dtype``).

        ``fov_deg``: the bundle's default horizontal field of view (what envs render first frames with); ``None``
        takes the first training clip's, which for a dataset with a FoV range is one draw from it.
        """
        from ..bundles import save_world_model

        wm = self.world_model(name or Path(folder).name)
        if fov_deg is not None:
            if not 1.0 <= float(fov_deg) <= 179.0:
                raise ValueError(f"fov_deg must be a horizontal field of view in degrees in [1, 179], got {fov_deg}")
            wm.fov_deg = float(fov_deg)
        card = card or model_card(self, wm)
        return save_world_model(wm, folder, card=card, weights_dtype=weights_dtype)


def model_card(trainer: Trainer, wm) -> str:
    """A short MODEL_CARD.md from the run's config and last metrics."""
    metrics = trainer.read_metrics()
    losses = [m for m in metrics if "loss" in m]
    samples = [m for m in metrics if "sample" in m]
    c = trainer.config
    lines = [
        f"# {wm.name}", "", wm.notes, "",
        f"- architecture: {json.dumps(trainer.model.config.meta.get('name') or 'custom')}, "
        f"{trainer.model.num_parameters() / 1e6:.2f}M parameters; codec {json.dumps(trainer.codec.to_config())}",
        f"- data: {len(trainer.dataset)} clips of {trainer.item_frames} frames at {trainer.image_hw[0]}x"
        f"{trainer.image_hw[1]}",
        f"- training: {trainer.step} steps, batch {c.batch_size}, lr {c.lr}, mode {c.mode}, frames schedule "
        f"{[list(x) for x in c.frames_schedule]}, device {trainer.device.type}",
    ]
    if losses:
        lines.append(f"- last loss {losses[-1]['loss']:.4f} (avg {losses[-1]['loss_avg']:.4f}), "
                     f"{losses[-1]['samples_per_s']:.2f} samples/s")
    if samples:
        lines.append(f"- last sample: {json.dumps({k: v for k, v in samples[-1].items() if k != 'sample'})}")
    lines += ["", "Full training config:", "", "```json", c.to_json(), "```", ""]
    return "\n".join(lines)
