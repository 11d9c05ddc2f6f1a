"""ODE-regression distillation of the chunk-causal teacher into the few-step streaming student.

Upstream first distilled SANA-WM by ODE regression (docs/architecture.md#generation-modes-and-training:
student initialised from the chunk-causal
checkpoint, schedule of 4 timesteps, lr 2e-5, wd 0.01, clip 1.0), then by self-forcing DMD. This module does
the ODE-regression stage:

1. For each training clip (first frame + poses), the **teacher** samples chunk by chunk like
   :class:`~world_model.generators.ChunkCausalGenerator` (full causal context, each chunk denoised from
   noise, clean cache pass after it), on a sigma grid that **contains the student's sigmas**
   (:func:`teacher_grid`: each student segment ``[sigma_i, sigma_{i+1}]`` is split into
   ``steps_per_segment`` steps, uniform in the unshifted domain of ``teacher_shift``). The latents at the
   student sigmas ``x_{sigma_0..3}`` (``sigma_0 = 1``: the chunk's noise) and the final clean chunk ``x_0``
   are recorded (:func:`teacher_rollout`).
2. The **student** (initialised as a copy of the teacher) sees, for one chunk ``c`` per step (uniform over
   the clip's chunks), the teacher's final clean chunks ``< c`` as context (timestep 0) followed by chunk
   ``c`` at each recorded ``x_{sigma_i}`` (timestep ``1000 sigma_i``; the 4 steps are stacked on the batch
   axis) in one chunk-causal forward. With an unbounded window this is exactly the streaming forward on the
   teacher's cache.
3. Target (``target="next"``, the default): one Euler step from ``x_{sigma_i}`` must land on the teacher's
   ``x_{sigma_{i+1}}``, i.e. the student velocity regresses the secant
   ``(x_{sigma_{i+1}} - x_{sigma_i}) / (sigma_{i+1} - sigma_i)`` (MSE in velocity units, so all four steps
   weigh alike). Why not regress ``x0`` from every point (``target="x0"``, also available)? The student
   samples with exactly these four Euler steps; matching each step's end point keeps the student's inputs on
   the teacher's trajectory, whereas an ``x0`` target implies straight-line steps that leave the curved
   teacher path after the first step, so later steps see inputs they were not trained on. The last step
   (to sigma 0) has the same target under both choices.

Geometry-guided models: the teacher samples each chunk with the geometry cache a generator would hold then,
built from the clip's first frame (its exact depth) and the teacher's own earlier chunks (decoded RGB-D, filling
the holes of the render each was sampled from: :class:`RolloutGeometry`), not from ground truth; the student sees
the same per-chunk geometry inputs. Caches are thus made of model outputs, with their artefacts.

Classifier-free guidance is not used: the twin-world datasets carry no text, so the teacher is
unconditional (its learned null caption if it is a text model).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..camera import CameraInputs
from ..checkpoints import load_transformer
from ..codecs.base import DecodeStreamState
from ..sampling import DISTILLED_TIMESTEPS, euler_step, shift_sigmas, sigmas_from_timesteps
from ..transformer import SanaWMTransformer
from .data import latent_batch
from .flow_matching import flow_matching_loss
from .trainer import TrainConfig, Trainer

TARGETS = ("next", "x0")


def unshift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Inverse of :func:`~world_model.sampling.shift_sigmas`: ``u = sigma / (shift - (shift - 1) sigma)``."""
    return sigmas / (shift - (shift - 1) * sigmas)


class RolloutGeometry:
    """Per-chunk geometry inputs from a cache of a clip's first frame and a rollout's own earlier chunks.

    ``clip``: the batch's ``frames (B, F, 3, H, W)``, ``depth (B, F, H, W)``, ``c2w``, ``intrinsics`` (as
    :func:`~world_model.training.data.latent_batch` returns it); ``bounds``: the rollout's latent chunks. Called
    as ``geometry(k, finals)`` before chunk ``k``: the chunks before it are decoded (colour and depth) and fill the
    holes of the render they were sampled from (generated depth: ``ramps`` edge filter), then the cache is
    rendered at chunk ``k``'s frames. ``inputs()`` is every chunk's geometry so far, along the latent frames.
    """

    def __init__(self, clip: dict[str, torch.Tensor], codec, bounds: Sequence[tuple[int, int]], device) -> None:
        from ..point_cache import PointCache

        self.codec, self.bounds, self.device = codec, list(bounds), device
        self.frames = clip["frames"].to(device).clamp(-1, 1)
        self.c2w = clip["c2w"].to(device).float()
        k = clip["intrinsics"].to(device).float()
        self.k = k[:, 0] if k.ndim == 3 else k
        self.hw = tuple(self.frames.shape[-2:])
        self.cache = PointCache.from_frame(self.frames[:, 0], clip["depth"][:, 0].to(device).float(), self.c2w[:, 0],
                                           self.k)
        self.masks: dict[int, torch.Tensor] = {}
        self.parts: list[torch.Tensor] = []

    def _frame_range(self, k: int) -> tuple[int, int]:
        a, b = self.bounds[k]
        s = self.codec.temporal_stride
        return (0 if a == 0 else 1 + s * (a - 1)), 1 + s * (b - 1)

    def __call__(self, k: int, finals: list[torch.Tensor]) -> torch.Tensor:
        from ..geometry import geometry_inputs

        if k != len(self.parts):
            raise ValueError(f"chunks must be asked for in order: expected chunk {len(self.parts)}, got {k}")
        if k:  # the previous chunk's frames join the cache where its render had holes
            lo, hi = self._frame_range(k - 1)
            with torch.no_grad():  # a continuation chunk decodes to whole groups of frames (no lone frame 0)
                (video, depth), _ = self.codec.decode_chunk(
                    finals[k - 1].float(), DecodeStreamState(latent_frames=self.bounds[k - 1][0]), with_depth=True)
            first = lo == 0
            for j in range(1 if first else 0, hi - lo):
                i = lo + j
                self.cache = self.cache.add(video[:, :, j], depth[:, j], self.c2w[:, i], self.k,
                                            valid=~self.masks.pop(i), edge_filter="ramps", supersede=False)
        lo, hi = self._frame_range(k)
        render = self.cache.render(self.c2w[:, lo:hi], self.k, self.hw)
        self.masks.update({lo + j: render.mask[:, j] for j in range(hi - lo)})
        self.parts.append(geometry_inputs(render, self.codec, first=lo == 0))
        return self.parts[-1]

    def inputs(self) -> torch.Tensor:
        return torch.cat(self.parts, dim=2)


def teacher_grid(student_sigmas: torch.Tensor, steps_per_segment: int, shift: float) -> tuple[torch.Tensor, list[int]]:
    """Teacher sigmas (descending to 0) containing ``student_sigmas`` exactly, and their indices in the grid.

    ``student_sigmas`` is the student schedule with its final 0 (e.g. ``[1, .96, .889, .727, 0]``). Each
    segment is split into ``steps_per_segment`` Euler steps, uniform in ``u = unshift(sigma)``, so the grid is
    the teacher's usual shifted schedule locally. Returns ``(grid (K * n + 1,), [0, n, 2n, ..., K * n])``.
    """
    s = torch.as_tensor(student_sigmas, dtype=torch.float64)
    if s.ndim != 1 or len(s) < 2 or s[-1] != 0 or bool((s[1:] >= s[:-1]).any()) or s[0] > 1:
        raise ValueError(f"student_sigmas must descend from <= 1 to a final 0, got {s.tolist()}")
    if isinstance(steps_per_segment, bool) or not isinstance(steps_per_segment, int) or steps_per_segment < 1:
        raise ValueError(f"steps_per_segment must be a positive int, got {steps_per_segment!r}")
    u = unshift_sigmas(s, shift)
    parts = []
    for i in range(len(s) - 1):
        seg = shift_sigmas(torch.linspace(float(u[i]), float(u[i + 1]), steps_per_segment + 1, dtype=torch.float64),
                           shift)
        seg[0], seg[-1] = s[i], s[i + 1]
        parts.append(seg[:-1] if i < len(s) - 2 else seg)
    grid = torch.cat(parts).float()
    return grid, [i * steps_per_segment for i in range(len(s))]


@torch.no_grad()
def teacher_rollout(
    model: SanaWMTransformer,
    first_latent: torch.Tensor,
    camera: CameraInputs,
    bounds: Sequence[tuple[int, int]],
    sigmas: torch.Tensor,
    noises: Sequence[torch.Tensor],
    *,
    record: Sequence[int] = (),
    autocast: Callable[[], Any] = contextlib.nullcontext,
    geometry: Callable[[int, list[torch.Tensor]], torch.Tensor] | None = None,
) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    """Chunk-by-chunk Euler sampling in latent space with full causal context, recording intermediate latents.

    ``first_latent (B, C, 1, h, w)``: the clean first frame (kept at timestep 0). ``camera``: inputs of the whole
    clip (at least ``bounds[-1][1]`` latent frames). ``noises[k]``: the starting noise of chunk ``k``.
    ``record``: grid indices whose latents are kept (index ``len(sigmas) - 1`` = the final chunk).
    ``geometry(k, finals)``: the geometry input of chunk ``k`` given the earlier chunks' final latents
    (geometry-guided models; it replaces ``camera.geometry`` for that chunk).
    Returns ``(records[k][j] = x at sigmas[record[j]] for chunk k, finals[k])``.
    """
    cache = model.new_cache(window_chunks=None)
    sig = [float(s) for s in sigmas]
    records, finals = [], []
    dtype = model.dtype
    for k, (a, b) in enumerate(bounds):
        cam = camera.slice_frames(a, b)
        if geometry is not None:
            cam = cam.with_geometry(geometry(k, finals).to(cam.plucker.dtype))
        x = noises[k].to(dtype).clone()
        bsz, t = x.shape[0], b - a
        if k == 0:
            x[:, :, :1] = first_latent
        rec = []
        for i in range(len(sig) - 1):
            if i in record:
                rec.append(x.float().clone())
            ts = torch.full((bsz, t), sig[i] * 1000.0, device=x.device)
            if k == 0:
                ts[:, 0] = 0.0
            with autocast():
                v, _ = model.forward_stream(x, ts, cache=cache, camera=cam)
            x = euler_step(x, v.to(dtype), sig[i], sig[i + 1])
            if k == 0:
                x[:, :, :1] = first_latent
        if len(sig) - 1 in record:
            rec.append(x.float().clone())
        records.append(rec)
        finals.append(x.float())
        if k < len(bounds) - 1:
            with autocast():
                _, cache = model.forward_stream(x, torch.zeros(bsz, t, device=x.device), cache=cache, camera=cam,
                                                write_cache=True)
    return records, finals


@dataclass
class DistillConfig(TrainConfig):
    """A :class:`TrainConfig` plus the distillation settings (mode is always ``chunk_causal``).

    ``teacher``: the teacher transformer (a ``save_transformer`` folder, e.g. ``RUN_DIR/model`` or
    ``BUNDLE/teacher``). ``student_timesteps``: the student's schedule (default ``[1000, 960, 889, 727]``).
    ``teacher_steps_per_segment`` x 4 = teacher Euler steps. ``student_chunk_size``: latent frames per student
    chunk (0 = the teacher's; see :class:`Distiller`). Defaults follow upstream ODE regression
    (lr 2e-5, weight decay 0.01, clip 1.0).
    """

    teacher: str = ""
    student_chunk_size: int = 0
    student_timesteps: tuple[int, ...] = DISTILLED_TIMESTEPS
    teacher_steps_per_segment: int = 8
    teacher_shift: float = 8.0
    target: str = "next"
    depth_first_prob: float = 0.0  # the student keeps the teacher's frame-0 depth generation
    lr: float = 2e-5
    weight_decay: float = 0.01
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        self.student_timesteps = tuple(int(t) for t in self.student_timesteps)
        super().__post_init__()
        errors = []
        if self.mode != "chunk_causal":
            errors.append(f"mode must be 'chunk_causal' for distillation, got {self.mode!r}")
        if self.target not in TARGETS:
            errors.append(f"target must be one of {TARGETS}, got {self.target!r}")
        try:
            sigmas_from_timesteps(self.student_timesteps)
        except ValueError as exc:
            errors.append(str(exc))
        if (isinstance(self.teacher_steps_per_segment, bool) or not isinstance(self.teacher_steps_per_segment, int)
                or self.teacher_steps_per_segment < 1):
            errors.append(f"teacher_steps_per_segment must be a positive int, got {self.teacher_steps_per_segment!r}")
        if (isinstance(self.student_chunk_size, bool) or not isinstance(self.student_chunk_size, int)
                or self.student_chunk_size < 0):
            errors.append(f"student_chunk_size must be an int >= 0 (0: the teacher's), got {self.student_chunk_size!r}")
        if not self.teacher_shift > 0:
            errors.append(f"teacher_shift must be > 0, got {self.teacher_shift}")
        if errors:
            raise ValueError("invalid DistillConfig: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["student_timesteps"] = list(self.student_timesteps)
        return d


class Distiller(Trainer):
    """ODE-regression distillation run (see module doc). Checkpoints, EMA, resume, logs: as :class:`Trainer`.

    ``Distiller(config, dataset, run_dir, teacher=None, ...)``: ``teacher`` defaults to
    ``load_transformer(config.teacher)``; the student starts as a copy of it (or of ``model=``, or of
    ``config.init_from``, a transformer folder of the same architecture such as an earlier student).

    A **smaller student chunk** (``config.student_chunk_size``, e.g. 1 from a chunk-3 teacher: a streaming step
    of 2 frames instead of 6, so an env step or a ROS reply comes 3x sooner) keeps the teacher's weights and
    changes only the chunk grid (:meth:`~world_model.config.ModelConfig.with_chunk_size`: chunk sizes, and a
    streaming window as long in frames). The teacher still samples on its own grid; the student regresses, one
    student chunk at a time, the teacher's trajectory of those frames, with the teacher's final frames before
    them as context. A student chunk cannot see the later frames of the teacher chunk it sits in, so it learns
    their average effect.
    """

    kind = "distill"

    def __init__(self, config: DistillConfig, dataset, run_dir: str | Path, *, teacher: SanaWMTransformer | None = None,
                 **kwargs) -> None:
        if not isinstance(config, DistillConfig):
            raise ValueError(f"config must be a DistillConfig, got {type(config).__name__}")
        if teacher is None:
            if not config.teacher:
                raise ValueError("config.teacher (a transformer folder) or teacher= is required")
            teacher = load_transformer(config.teacher, dtype=torch.float32)
        if not isinstance(teacher, SanaWMTransformer):
            raise ValueError(f"teacher must be a SanaWMTransformer, got {type(teacher).__name__}")
        student_cfg = teacher.config
        if config.student_chunk_size:
            student_cfg = teacher.config.with_chunk_size(config.student_chunk_size)
        if student_cfg.to_dict() != config.model_config.to_dict():
            config.model = student_cfg.to_dict()
        self._teacher_init = teacher
        if "model" not in kwargs:  # the teacher's weights, or config.init_from's (e.g. an earlier student)
            source = load_transformer(config.init_from, dtype=torch.float32) if config.init_from else teacher
            try:
                kwargs["model"] = source.regridded(student_cfg)  # same parameters, maybe another chunk grid
            except ValueError as exc:
                raise ValueError(f"init_from {config.init_from!r} is not the teacher's architecture ({exc})") from None
        super().__init__(config, dataset, run_dir, **kwargs)
        self.teacher = copy.deepcopy(teacher).to(device=self.device, dtype=torch.float32).eval().requires_grad_(False)
        del self._teacher_init
        self.student_sigmas = sigmas_from_timesteps(config.student_timesteps)
        self.grid, self.record_idx = teacher_grid(self.student_sigmas, config.teacher_steps_per_segment,
                                                  config.teacher_shift)

    @staticmethod
    def _split_noise(noise: torch.Tensor, bounds) -> list[torch.Tensor]:
        """Per-chunk views of one clip-long noise tensor (so two chunk grids can start from the same noise)."""
        return [noise[:, :, lo:hi] for lo, hi in bounds]

    def _teacher_bounds_through(self, frame_end: int, num_frames: int) -> list[tuple[int, int]]:
        """The teacher's chunks, up to the one that contains latent frame ``frame_end - 1``."""
        bounds = self.teacher.config.chunk_bounds(num_frames)
        n = next(i for i, (_, hi) in enumerate(bounds) if hi >= frame_end)
        return bounds[: n + 1]

    def batch_loss(self, batch: dict[str, torch.Tensor], latent_frames: int,
                   gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """As :meth:`Trainer.batch_loss`; geometry-guided models take their caches from the teacher's rollout."""
        x0, camera, clip = latent_batch(batch, self.codec, latent_frames, self.device)
        self._clip = clip if self.model.config.geometry_channels else None
        return self.compute_loss(x0, camera, gen)

    def compute_loss(self, x0: torch.Tensor, camera, gen: torch.Generator, depth_rows: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        if depth_rows is not None and bool(depth_rows.any()):
            raise ValueError("distillation does not teach frame 0's depth (the student keeps the teacher's); "
                             "depth_first_prob must be 0")
        cfg = self.model.config
        bounds_all = cfg.chunk_bounds(x0.shape[2])
        c = int(torch.randint(0, len(bounds_all), (1,), generator=gen, device=self.device).item())
        lo, hi = bounds_all[c]  # the student chunk this step trains
        t_bounds = self._teacher_bounds_through(hi, x0.shape[2])
        b, ch, _, h, w = x0.shape
        noise = torch.randn((b, ch, t_bounds[-1][1], h, w), generator=gen, device=self.device)
        rollout_geometry = None
        if cfg.geometry_channels:
            clip = getattr(self, "_clip", None)
            if clip is None:
                raise ValueError("a geometry-guided student needs the clip's frames and depth: use batch_loss")
            rollout_geometry = RolloutGeometry(clip, self.codec, t_bounds, self.device)
        records, finals = teacher_rollout(self.teacher, x0[:, :, :1], camera, t_bounds, self.grid,
                                          self._split_noise(noise, t_bounds), record=self.record_idx,
                                          autocast=self._autocast, geometry=rollout_geometry)
        if rollout_geometry is not None:  # the student sees the caches the teacher sampled with
            camera = camera.slice_frames(0, t_bounds[-1][1]).with_geometry(rollout_geometry.inputs())
        # the teacher's trajectory of frames lo:hi at the student sigmas (then final), and its clean past
        rec = [torch.cat([r[j] for r in records], dim=2)[:, :, lo:hi] for j in range(len(self.record_idx))]
        past = torch.cat(finals, dim=2)[:, :, :lo]
        sig = self.student_sigmas.tolist()
        k_steps = len(sig) - 1
        inputs = torch.cat([torch.cat([past, rec[i]], dim=2) for i in range(k_steps)], dim=0)
        ts = torch.zeros(k_steps * b, hi, device=self.device)
        for i in range(k_steps):
            ts[i * b:(i + 1) * b, lo:hi] = sig[i] * 1000.0
        mask = torch.ones(k_steps * b, hi - lo, dtype=torch.bool, device=self.device)
        if c == 0:
            ts[:, 0] = 0.0
            mask[:, 0] = False
        cam = CameraInputs.cat([camera.slice_frames(0, hi)] * k_steps, dim="batch")
        with self._autocast():
            v = self.model(inputs, ts, camera=cam, mode="chunk_causal")[:, :, lo:hi]
        final = rec[k_steps]
        if self.config.target == "next":
            target = torch.cat([(rec[i + 1] - rec[i]) / (sig[i + 1] - sig[i]) for i in range(k_steps)], dim=0)
        else:
            target = torch.cat([(rec[i] - final) / sig[i] for i in range(k_steps)], dim=0)
        loss = flow_matching_loss(v.float(), target, mask)
        return loss, {"chunk": c}

    @torch.no_grad()
    def student_teacher_gap(self, x0: torch.Tensor, camera, seed: int = 0,
                            clip: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Latent MSE between the student's few-step streaming rollout (on its own context) and the teacher's,
        from the same first frame, poses and noise (frame 0 excluded); plus each one's MSE to ``x0``.
        Geometry-guided models need the ``clip`` (each rollout then caches its own frames)."""
        t = x0.shape[2]
        s_bounds, t_bounds = self.model.config.chunk_bounds(t), self.teacher.config.chunk_bounds(t)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        noise = torch.randn(x0.shape, generator=gen, device=self.device)
        geometric = bool(self.model.config.geometry_channels)
        if geometric and clip is None:
            raise ValueError("a geometry-guided model needs the clip (frames, depth, poses) for its caches")
        _, t_fin = teacher_rollout(self.teacher, x0[:, :, :1], camera, t_bounds, self.grid,
                                   self._split_noise(noise, t_bounds), autocast=self._autocast,
                                   geometry=RolloutGeometry(clip, self.codec, t_bounds, self.device) if geometric
                                   else None)
        _, s_fin = teacher_rollout(self.ema, x0[:, :, :1], camera, s_bounds, self.student_sigmas,
                                   self._split_noise(noise, s_bounds), autocast=self._autocast,
                                   geometry=RolloutGeometry(clip, self.codec, s_bounds, self.device) if geometric
                                   else None)
        t_all, s_all = torch.cat(t_fin, 2)[:, :, 1:], torch.cat(s_fin, 2)[:, :, 1:]
        gt = x0[:, :, 1:]
        return {"gap_mse": float((s_all - t_all).pow(2).mean()), "student_mse": float((s_all - gt).pow(2).mean()),
                "teacher_mse": float((t_all - gt).pow(2).mean())}

    def sample_generators(self) -> list[tuple[str, Any]]:
        from ..generators import ChunkCausalGenerator, StreamingGenerator

        n = len(self.grid) - 1
        return [("student", StreamingGenerator(self.ema, self.codec, sigmas=self.student_sigmas)),
                ("teacher", ChunkCausalGenerator(self.teacher, self.codec, num_steps=n,
                                                 shift=self.config.teacher_shift))]

    @torch.no_grad()
    def write_sample(self) -> dict[str, Any]:
        record = super().write_sample()
        x0, camera, clip = latent_batch(self.sample_clip(), self.codec, self.config.latent_frames(self.step),
                                        self.device)
        gap = {"step": self.step, **self.student_teacher_gap(x0, camera, seed=self.config.seed, clip=clip)}
        self.log(gap)
        return {**record, **gap}

    def checkpoint_state(self) -> dict[str, Any]:
        return {"teacher": self.config.teacher}

    def world_model(self, name: str = "distilled"):
        from ..bundles import WorldModel

        notes = (f"sana-wm distill, {self.step} steps of ODE regression ({self.config.target} target) from the "
                 f"chunk-causal teacher; student = {len(self.config.student_timesteps)}-step streaming model "
                 f"{list(self.config.student_timesteps)} (EMA weights)")
        return WorldModel(student=self.ema, codec=self.codec, name=name, fps=self.config.fps,
                          image_hw=self.image_hw, fov_deg=self.fov_deg,
                          streaming={"timesteps": list(self.config.student_timesteps)}, teacher=self.teacher,
                          teacher_sampler={"num_steps": len(self.grid) - 1, "shift": self.config.teacher_shift},
                          notes=notes)
