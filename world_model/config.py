"""Model configuration for the SANA-WM transformer, as data.

A :class:`ModelConfig` fully determines the architecture (and therefore the checkpoint layout).
Presets cover the official 1.6B release and small models for tests and the bundled CPU model.
Configs round-trip through JSON (``to_json`` / ``from_json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

AttentionMode = Literal["bidirectional", "chunk_causal"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a SANA-WM stage-1 transformer.

    Field names follow the upstream YAML where one exists. Defaults describe ``sana-wm-1.6b``.
    """

    # Backbone
    depth: int = 20
    hidden_size: int = 2240
    head_dim: int = 112  # GDN / softmax self-attention head dim ("linear_head_dim")
    cross_attn_heads: int = 20  # heads of the text cross-attention ("num_heads")
    softmax_every_n: int = 4  # block i is softmax iff (i + 1) % n == 0; 0 = no softmax blocks
    mlp_ratio: float = 3.0
    t_kernel_size: int = 3  # FFN temporal conv kernel
    conv_kernel_size: int = 4  # K short conv kernel (GDN blocks only)
    in_channels: int = 128  # latent channels of the codec
    patch_size: tuple[int, int, int] = (1, 1, 1)
    # Camera
    plucker_channels: int = 48  # 6 * codec temporal stride
    plucker_blocks: int = 20  # blocks with the post-attention Plücker residual (-1 = all)
    # Geometry: channels of the encoded geometry-cache render added to the input tokens through a zero-initialised
    # patch embedding (0 = none, as the official models; see world_model.geometry)
    geometry_channels: int = 0
    # Text: caption_channels == 0 builds a model without text cross-attention.
    caption_channels: int = 2304
    text_max_length: int = 300
    # Numerics
    attn_eps: float = 1e-8  # GDN denominator epsilon
    rope_theta: float = 10000.0
    # Causal structure
    chunk_size: int = 3  # latent frames per chunk (chunk-causal / streaming)
    first_chunk_size: int = 4  # first chunk: clean image latent + 3
    stream_sink_chunks: int = 1  # softmax KV cache: chunks kept from the start
    stream_window_chunks: int = 1  # softmax KV cache: most recent chunks kept (besides the sink)
    # Variants of published implementations (docs/world_model.md#numerical-variants).
    # diffusers 0.42 rescales UCPE-transformed camera q/k/v back to their pre-UCPE RMS; the upstream fused
    # inference kernels do not.
    ucpe_rms_renorm: bool = False
    # Softmax scale of the camera branch in softmax blocks: "head_dim" = head_dim**-0.5 (upstream, newest);
    # "padded" = scale of the head dim padded for flash attention (diffusers 0.42 on head dims not in 32/64/128/256).
    cam_softmax_scale: Literal["head_dim", "padded"] = "head_dim"
    # Free-form provenance (name, training data, ...) — not architecture.
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        errors = []
        if self.hidden_size % self.head_dim:
            errors.append(f"hidden_size ({self.hidden_size}) must be a multiple of head_dim ({self.head_dim})")
        if self.head_dim % 8:
            errors.append(f"head_dim ({self.head_dim}) must be a multiple of 8 (UCPE uses 4-vectors on half of it)")
        if self.caption_channels and self.hidden_size % self.cross_attn_heads:
            errors.append(
                f"hidden_size ({self.hidden_size}) must be a multiple of cross_attn_heads ({self.cross_attn_heads})"
            )
        if self.depth < 1:
            errors.append(f"depth must be >= 1, got {self.depth}")
        if tuple(self.patch_size)[0] != 1:
            errors.append(f"patch_size must be (1, p, p), got {self.patch_size}")
        if self.plucker_channels % 6:
            errors.append(f"plucker_channels must be 6 * temporal stride, got {self.plucker_channels}")
        if self.geometry_channels < 0:
            errors.append(f"geometry_channels must be >= 0, got {self.geometry_channels}")
        if self.chunk_size < 1 or self.first_chunk_size < 1:
            errors.append("chunk_size and first_chunk_size must be >= 1")
        if self.stream_sink_chunks < 0 or self.stream_window_chunks < 0:
            errors.append("stream_sink_chunks and stream_window_chunks must be >= 0")
        if self.cam_softmax_scale not in ("head_dim", "padded"):
            errors.append(f"cam_softmax_scale must be 'head_dim' or 'padded', got {self.cam_softmax_scale!r}")
        if errors:
            raise ValueError("invalid ModelConfig: " + "; ".join(errors))
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    # Derived ---------------------------------------------------------------------------------
    @property
    def num_heads(self) -> int:
        return self.hidden_size // self.head_dim

    @property
    def has_text(self) -> bool:
        return self.caption_channels > 0

    @property
    def ffn_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def temporal_stride(self) -> int:
        """Codec temporal stride implied by the Plücker packing (pixel frames per latent frame)."""
        return self.plucker_channels // 6

    def is_softmax_block(self, index: int) -> bool:
        return self.softmax_every_n > 0 and (index + 1) % self.softmax_every_n == 0

    def has_plucker(self, index: int) -> bool:
        return self.plucker_blocks < 0 or index < self.plucker_blocks

    def chunk_bounds(self, num_frames: int, start_frame: int = 0) -> list[tuple[int, int]]:
        """Chunk boundaries ``[(c0, c1), ...]`` of latent frames ``[start_frame, start_frame + num_frames)``.

        Chunks are aligned to the global grid [0, first, first + chunk, ...] ("first chunk plus one").
        """
        end = start_frame + num_frames
        bounds, c0 = [], 0
        c1 = self.first_chunk_size
        while c0 < end:
            lo, hi = max(c0, start_frame), min(c1, end)
            if hi > lo:
                bounds.append((lo, hi))
            c0, c1 = c1, c1 + self.chunk_size
        return bounds

    # Serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> ModelConfig:
        p = Path(text_or_path)
        if not str(text_or_path).lstrip().startswith("{") and p.exists():
            text_or_path = p.read_text()
        return cls.from_dict(json.loads(str(text_or_path)))

    def with_chunk_size(self, chunk_size: int) -> ModelConfig:
        """This config on a chunk grid of ``chunk_size`` latent frames (first chunk: the clean image + one chunk),
        with a streaming softmax window at least as long in frames as before (the sink stays the first chunk).
        The parameters do not depend on the grid, so a model's weights load into either (a new grid needs
        training: see ``sana-wm distill --student-chunk-size``)."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        window = math.ceil(self.stream_window_chunks * self.chunk_size / chunk_size)
        return self.replace(chunk_size=chunk_size, first_chunk_size=1 + chunk_size, stream_window_chunks=window)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # The official release (Efficient-Large-Model/SANA-WM_*), ~2.66e9 parameters.
    "sana-wm-1.6b": ModelConfig(meta={"name": "sana-wm-1.6b"}),
    # Tiny configs for tests: text / no text, different head dims.
    "tiny-text": ModelConfig(
        depth=4, hidden_size=96, head_dim=48, cross_attn_heads=2, softmax_every_n=2, in_channels=16,
        plucker_channels=48, plucker_blocks=4, caption_channels=32, text_max_length=8, meta={"name": "tiny-text"},
    ),
    "tiny-notext": ModelConfig(
        depth=4, hidden_size=64, head_dim=32, cross_attn_heads=2, softmax_every_n=4, in_channels=12,
        plucker_channels=6, plucker_blocks=-1, caption_channels=0, mlp_ratio=2.0, meta={"name": "tiny-notext"},
    ),
    # tiny-notext with geometry: RGB-D PatchCodec(2, 2, 24 colour + 8 depth channels) and the cache's render
    "tiny-geo": ModelConfig(
        depth=4, hidden_size=64, head_dim=32, cross_attn_heads=2, softmax_every_n=4, in_channels=32,
        plucker_channels=12, plucker_blocks=-1, caption_channels=0, mlp_ratio=2.0, geometry_channels=34,
        chunk_size=1, first_chunk_size=2, stream_window_chunks=3, meta={"name": "tiny-geo"},
    ),
    # The bundled twin-world model: 64x64 frames through PatchCodec(8, temporal stride 2, 96 channels) -> 8x8 tokens.
    "twin-s": ModelConfig(
        depth=6, hidden_size=192, head_dim=48, cross_attn_heads=4, softmax_every_n=4, in_channels=96,
        plucker_channels=12, plucker_blocks=-1, caption_channels=0, mlp_ratio=2.0, meta={"name": "twin-s"},
    ),
    # The geometry-guided twin-world model: twin-s's backbone on RGB-D latents (PatchCodec(8, 2, 96 colour + 16
    # depth channels)) with the geometry cache's render as input (112 codec channels + 2 coverage), one latent
    # frame (2 video frames) per streaming step, a 3-chunk softmax window.
    "twin-g": ModelConfig(
        depth=6, hidden_size=192, head_dim=48, cross_attn_heads=4, softmax_every_n=4, in_channels=112,
        plucker_channels=12, plucker_blocks=-1, caption_channels=0, mlp_ratio=2.0, geometry_channels=114,
        chunk_size=1, first_chunk_size=2, stream_window_chunks=3, meta={"name": "twin-g"},
    ),
    # Size class of the bundled CPU model (no text, light patch codec with temporal stride 1).
    "small-cpu": ModelConfig(
        depth=8, hidden_size=256, head_dim=64, cross_attn_heads=4, softmax_every_n=4, in_channels=48,
        plucker_channels=6, plucker_blocks=-1, caption_channels=0, mlp_ratio=2.0, meta={"name": "small-cpu"},
    ),
}


def get_config(name_or_config: str | ModelConfig | dict[str, Any]) -> ModelConfig:
    """Resolve a preset name, a dict or a config into a :class:`ModelConfig`."""
    if isinstance(name_or_config, ModelConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return ModelConfig.from_dict(name_or_config)
    if name_or_config in PRESETS:
        return PRESETS[name_or_config]
    raise ValueError(f"unknown model config {name_or_config!r}; presets: {sorted(PRESETS)}")
