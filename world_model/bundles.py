"""World-model bundles: a transformer, its codec and what a generator needs to run them, in one folder.

Environments, the ROS node and the CLI load a bundle by name or path with :func:`load_world_model`.
Layout (format ``sana-wm-env/world-model``, version 1)::

    bundle.json            {"format", "version", "name", "fps", "image_hw", "fov_deg", "streaming": {...},
                            "teacher": {...} | null, "notes": ...}
    student/               the streaming (distilled) transformer, written by save_transformer
    teacher/               optional: the chunk-causal teacher, same format
    codec.json             the codec config (``LatentCodec.to_config()``)
    MODEL_CARD.md          data, steps, compute, metrics (free text)

``streaming`` / ``teacher`` hold sampler settings: ``{"timesteps": [1000, 960, 889, 727]}`` or
``{"num_steps": 20, "shift": 8.0}``, plus generator options such as ``"show_cache": true`` (geometry-guided
models: frames show the 3D cache where it covers them). Models shipped inside the package live in
``world_model/bundled/<name>``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoints import CheckpointNotFoundError, load_transformer, save_transformer
from .codecs import LatentCodec, build_codec
from .generators import ChunkCausalGenerator, StreamingGenerator
from .sampling import DISTILLED_TIMESTEPS, sigmas_from_timesteps
from .transformer import SanaWMTransformer

FORMAT = "sana-wm-env/world-model"
BUNDLED_DIR = Path(__file__).parent / "bundled"
DEFAULT_NAME = "sana-wm-twin-g"


@dataclass
class WorldModel:
    """A loaded bundle: the streaming student, an optional teacher, the codec and run settings."""

    student: SanaWMTransformer
    codec: LatentCodec
    name: str = "unnamed"
    fps: float = 16.0
    image_hw: tuple[int, int] = (64, 64)
    fov_deg: float = 70.0
    streaming: dict[str, Any] = field(default_factory=lambda: {"timesteps": list(DISTILLED_TIMESTEPS)})
    teacher: SanaWMTransformer | None = None
    teacher_sampler: dict[str, Any] = field(default_factory=lambda: {"num_steps": 20, "shift": 8.0})
    notes: str = ""
    path: Path | None = None

    def streaming_generator(self, **kwargs) -> StreamingGenerator:
        """The student's generator with the bundle's ``streaming`` settings (``kwargs`` override them)."""
        settings = {k: v for k, v in self.streaming.items() if k != "timesteps"}
        settings.update(kwargs)
        sigmas = settings.pop("sigmas", None)
        if sigmas is None and "timesteps" in self.streaming:
            sigmas = sigmas_from_timesteps(self.streaming["timesteps"])
        return StreamingGenerator(self.student, self.codec, sigmas=sigmas, **settings)

    def teacher_generator(self, **kwargs) -> ChunkCausalGenerator:
        if self.teacher is None:
            raise ValueError(f"world model {self.name!r} ships no teacher; use streaming_generator()")
        settings = {**self.teacher_sampler, **kwargs}
        return ChunkCausalGenerator(self.teacher, self.codec, **settings)

    def to(self, device: str | torch.device) -> WorldModel:
        self.student.to(device)
        self.codec.to(device)
        if self.teacher is not None:
            self.teacher.to(device)
        return self


def bundled_names() -> list[str]:
    """Names of the bundles shipped inside the package."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "bundle.json").is_file())


def save_world_model(
    model: WorldModel, folder: str | Path, *, card: str | None = None, weights_dtype: torch.dtype | None = None
) -> Path:
    """Write ``model`` as a bundle folder (overwrites files of the same names).

    ``weights_dtype`` stores the transformers' weights in that dtype (``torch.float16`` for a shipped bundle:
    half the size; :func:`load_world_model` computes in float32 unless asked otherwise).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_transformer(model.student, folder / "student", dtype=weights_dtype)
    if model.teacher is not None:
        save_transformer(model.teacher, folder / "teacher", dtype=weights_dtype)
    (folder / "codec.json").write_text(json.dumps(model.codec.to_config(), indent=2) + "\n")
    meta = {
        "format": FORMAT, "version": 1, "name": model.name, "fps": model.fps, "image_hw": list(model.image_hw),
        "fov_deg": model.fov_deg, "streaming": model.streaming,
        "teacher": model.teacher_sampler if model.teacher is not None else None, "notes": model.notes,
    }
    (folder / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
    if card is not None:
        (folder / "MODEL_CARD.md").write_text(card)
    return folder


def resolve_bundle(name_or_path: str | Path) -> Path:
    """The folder of a bundle given a shipped name, ``"default"`` or a path."""
    if str(name_or_path) == "default":
        name_or_path = DEFAULT_NAME
    path = Path(name_or_path)
    if (path / "bundle.json").is_file():
        return path
    if (BUNDLED_DIR / str(name_or_path) / "bundle.json").is_file():
        return BUNDLED_DIR / str(name_or_path)
    shipped = bundled_names()
    raise CheckpointNotFoundError(
        f"no world-model bundle at {str(name_or_path)!r}: expected a folder with bundle.json or one of the shipped "
        f"names {shipped or '(none shipped in this install)'}. Build one with world_model.bundles.save_world_model "
        "or train one with `sana-wm train`."
    )


def load_world_model(
    name_or_path: str | Path = "default", *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> WorldModel:
    """Load a bundle (a shipped name, ``"default"``, or a folder path).

    ``dtype`` is the compute dtype of the transformers; ``None`` means float32 whatever the stored dtype (shipped
    bundles store float16 weights to stay small; half precision on a CPU is slow and less accurate). On a CPU any
    other dtype warns: the lean streaming path is float32-only, so bfloat16 runs the reference layers, about 20 %
    slower than float32 for the bundled model (docs/design-decisions.md).
    """
    dtype = torch.float32 if dtype is None else dtype
    if torch.device(device).type == "cpu" and dtype != torch.float32:
        warnings.warn(
            f"dtype={dtype} on a CPU runs the reference layers (the lean CPU streaming path is float32-only) and is "
            "slower than float32 there; pass dtype=None (float32) on a CPU unless memory is what you need to save",
            stacklevel=2,
        )
    folder = resolve_bundle(name_or_path)
    meta = json.loads((folder / "bundle.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / 'bundle.json'}: format must be {FORMAT!r}, got {meta.get('format')!r}")
    if meta.get("version") != 1:
        raise ValueError(f"{folder / 'bundle.json'}: unsupported version {meta.get('version')!r} (this build reads 1)")
    codec = build_codec(json.loads((folder / "codec.json").read_text())).to(device)
    student = load_transformer(folder / "student", device=device, dtype=dtype)
    teacher = load_transformer(folder / "teacher", device=device, dtype=dtype) if meta.get("teacher") else None
    return WorldModel(
        student=student, codec=codec, name=meta["name"], fps=float(meta["fps"]), image_hw=tuple(meta["image_hw"]),
        fov_deg=float(meta["fov_deg"]), streaming=meta["streaming"], teacher=teacher,
        teacher_sampler=meta.get("teacher") or {"num_steps": 20, "shift": 8.0}, notes=meta.get("notes", ""),
        path=folder,
    )


def untrained_world_model(
    preset: str = "small-cpu", *, patch_size: int | None = None, seed: int = 0, image_hw: tuple[int, int] = (64, 64),
    depth_channels: int | None = None,
) -> WorldModel:
    """A random-weight world model of a preset with a matching patch codec (for plumbing and tests).

    Its frames are noise; the untrained model is also a baseline of the fidelity evaluation. Geometry-guided
    presets get an RGB-D codec whose depth takes ``depth_channels`` of the latent channels (default: the
    geometry input's coverage channels tell the stride; the colour channels fill whole patches).
    """
    from .checkpoints import build_transformer
    from .codecs import PatchCodec

    student = build_transformer(preset, seed=seed)
    cfg = student.config
    s = cfg.temporal_stride
    if depth_channels is None:
        depth_channels = 0
        if cfg.geometry_channels:  # colour fills 3*s*p*p channels of whole patches; the rest is depth
            p = 1
            while 3 * s * (p + 1) ** 2 < cfg.in_channels:
                p += 1
            depth_channels = cfg.in_channels - 3 * s * p * p
    if patch_size is None:
        per_frame = (cfg.in_channels - depth_channels) // (3 * s)
        patch_size = int(round(per_frame**0.5))
    codec = PatchCodec(patch_size=patch_size, temporal_stride=s,
                       latent_channels=cfg.in_channels if depth_channels else None, depth_channels=depth_channels)
    if codec.latent_channels != cfg.in_channels:
        raise ValueError(
            f"preset {preset!r} expects {cfg.in_channels} latent channels; PatchCodec(patch_size={patch_size}) "
            f"gives {codec.latent_channels}"
        )
    return WorldModel(student=student, codec=codec, name=f"{preset}-untrained", image_hw=image_hw)
