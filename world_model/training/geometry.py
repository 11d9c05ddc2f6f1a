"""Geometry conditioning for training: the cache a generator would hold before each chunk, made imperfect.

At inference a geometry-guided model sees, before each chunk, its cache of frame 0 (exact twin depth, or depth it
generated) and of what every frame it generated so far showed of the cache's holes, rendered at the chunk's poses
(:mod:`world_model.geometry`). Training builds the same thing from a clip's ground truth, chunk by chunk (frames
before a chunk only, each filling the holes of the render it was generated from), and
corrupts what goes into the cache the way a generator's own frames are corrupt, so that the model learns to
correct the cache instead of copying its artefacts (RL policies exploit warp artefacts):

- depth scale jitter per clip and smooth plus per-pixel relative depth noise;
- dropped points (random blobs of each cached frame);
- for frames standing in for generated ones: blurred colours, colour noise, and depth blurred across edges
  (ramps of "flying pixels", which the cache's ``ramps`` filter partly removes, as it does at inference);
- frame 0 exact with probability ``frame0_exact_prob`` (twin depth at env resets), else corrupted like the rest.

Everything is drawn from one ``torch.Generator``: the same step gives the same conditioning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..codecs.base import LatentCodec
from ..geometry import geometry_inputs
from ..point_cache import PointCache

__all__ = ["CacheCorruption", "clip_geometry", "corrupt_frames", "unknown_depth_geometry"]


@dataclass(frozen=True)
class CacheCorruption:
    """How imperfect training caches are (see the module docstring); ``CacheCorruption.none()`` is exact."""

    depth_scale_std: float = 0.05  # log-normal scale of a clip's cached depth
    depth_noise_std: float = 0.03  # relative depth noise: half smooth (8x8 blocks), half per pixel
    drop_max: float = 0.3  # share of a cached frame dropped, uniform in [0, drop_max] (blobs)
    colour_blur_prob: float = 0.5  # generated stand-ins: colours blurred (a 2x down-up sample)
    colour_noise_std: float = 0.03  # generated stand-ins: colour noise (pixel units of [-1, 1])
    depth_blur_prob: float = 0.5  # generated stand-ins: depth blurred across edges (3x3 box)
    frame0_exact_prob: float = 0.5  # frame 0 goes in exact with this probability

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ValueError(f"{f.name} must be a number >= 0, got {v!r}")
        for name in ("drop_max", "colour_blur_prob", "depth_blur_prob", "frame0_exact_prob"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @classmethod
    def none(cls) -> CacheCorruption:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _uniform(shape, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def _normal(shape, gen: torch.Generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=gen.device).to(device)


def corrupt_frames(rgb: torch.Tensor, depth: torch.Tensor, scale: torch.Tensor, c: CacheCorruption,
                   gen: torch.Generator, *, generated: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frame per element, as it enters the cache: ``(rgb (B, 3, H, W), depth (B, H, W), keep (B, H, W))``.

    ``scale (B,)``: the clip's depth scale. ``generated``: corrupt like a generator's output (colours and
    edges), not only like an imperfect depth sensor."""
    b, _, h, w = rgb.shape
    dev = rgb.device
    sky = depth <= 0
    noise = _normal((b, 1, (h + 7) // 8, (w + 7) // 8), gen, dev)
    smooth = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    factor = scale[:, None, None] * torch.exp(c.depth_noise_std * (smooth + _normal((b, h, w), gen, dev)) / 2 ** 0.5)
    out_depth = depth * factor
    out_rgb = rgb
    if generated:
        blur = _uniform((b,), gen, dev) < c.colour_blur_prob
        if bool(blur.any()):
            soft = F.interpolate(F.avg_pool2d(rgb, 2, ceil_mode=True), size=(h, w), mode="bilinear",
                                 align_corners=False)
            out_rgb = torch.where(blur[:, None, None, None], soft, rgb)
        out_rgb = (out_rgb + c.colour_noise_std * _normal(rgb.shape, gen, dev)).clamp(-1, 1)
        ramp = _uniform((b,), gen, dev) < c.depth_blur_prob
        if bool(ramp.any()):  # box-blurred inverse depth: blends foreground and background at edges
            inv = torch.where(sky, torch.zeros_like(out_depth), 1 / out_depth.clamp_min(1e-6))
            soft = F.avg_pool2d(inv[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
            soft_depth = torch.where(soft > 1e-4, 1 / soft.clamp_min(1e-4), torch.zeros_like(soft))
            out_depth = torch.where(ramp[:, None, None], soft_depth, out_depth)
    out_depth = torch.where(sky, torch.zeros_like(out_depth), out_depth)
    share = c.drop_max * _uniform((b, 1, 1, 1), gen, dev)
    blobs = F.interpolate(_uniform((b, 1, (h + 3) // 4, (w + 3) // 4), gen, dev), size=(h, w), mode="nearest")
    keep = (blobs >= share)[:, 0]
    return out_rgb, out_depth, keep


def clip_geometry(frames: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor, intrinsics: torch.Tensor,
                  codec: LatentCodec, bounds: list[tuple[int, int]], corruption: CacheCorruption,
                  gen: torch.Generator) -> torch.Tensor:
    """Geometry inputs ``(B, G, T, h, w)`` of a training clip, chunk by chunk, from caches of earlier frames.

    ``frames (B, F, 3, H, W)`` in [-1, 1], ``depth (B, F, H, W)`` metres, ``c2w (B, F, 4, 4)``, ``intrinsics
    (B, F, 4)`` or ``(B, 4)``; ``bounds``: the model's latent chunk bounds covering ``T`` latent frames
    (``F = 1 + s * (T - 1)``). The cache before chunk ``[c0, c1)`` holds frame 0 and every frame of earlier
    chunks, as a causal generator's does."""
    b, f, _, h, w = frames.shape
    s = codec.temporal_stride
    k = intrinsics[:, 0] if intrinsics.ndim == 3 else intrinsics
    dev = frames.device
    scale = torch.exp(corruption.depth_scale_std * _normal((b,), gen, dev))
    exact = _uniform((b,), gen, dev) < corruption.frame0_exact_prob
    rgb0, depth0, keep0 = corrupt_frames(frames[:, 0], depth[:, 0], scale, corruption, gen, generated=False)
    rgb0 = torch.where(exact[:, None, None, None], frames[:, 0], rgb0)
    depth0 = torch.where(exact[:, None, None], depth[:, 0], depth0)
    keep0 = keep0 | exact[:, None, None]
    cache = PointCache.empty(b, device=dev).add(rgb0, depth0, c2w[:, 0], k, valid=keep0)
    parts, added, covered = [], 1, {}
    for c0, c1 in bounds:
        first = c0 == 0
        lo = 0 if first else 1 + s * (c0 - 1)
        hi = 1 + s * (c1 - 1)
        if hi > f:
            raise ValueError(f"bounds {bounds} need {hi} frames, the clip has {f}")
        while added < lo:  # frames of earlier chunks fill the holes their render had, as generated ones would
            rgb_i, depth_i, keep_i = corrupt_frames(frames[:, added], depth[:, added], scale, corruption, gen,
                                                    generated=True)
            cache = cache.add(rgb_i, depth_i, c2w[:, added], k, valid=keep_i & ~covered.pop(added),
                              edge_filter="ramps", supersede=False)
            added += 1
        render = cache.render(c2w[:, lo:hi], k, (h, w))
        covered.update({lo + j: render.mask[:, j] for j in range(hi - lo)})
        parts.append(geometry_inputs(render, codec, first=first))
    return torch.cat(parts, dim=2)


def unknown_depth_geometry(frame0: torch.Tensor, codec: LatentCodec, latent_frames: int) -> torch.Tensor:
    """Geometry inputs ``(B, G, T, h, w)`` when frame 0's depth is unknown and nothing else is cached: frame 0's
    latent frame shows the image itself, fully covered, with depth 0 (what ``generate_depth`` gives the model);
    later frames show an empty cache (no colour, no depth, no coverage)."""
    from ..point_cache import CacheRender

    b, _, h, w = frame0.shape
    unknown = torch.zeros(b, 1, h, w, device=frame0.device)
    covered = torch.ones(b, 1, h, w, dtype=torch.bool, device=frame0.device)
    first = geometry_inputs(CacheRender(frame0[:, None], unknown, covered, covered), codec, first=True)
    if latent_frames == 1:
        return first
    n = codec.temporal_stride * (latent_frames - 1)
    empty = torch.zeros(b, n, h, w, device=frame0.device)
    rest = geometry_inputs(CacheRender(torch.zeros(b, n, 3, h, w, device=frame0.device), empty, empty.bool(),
                                       empty.bool()), codec, first=False)
    return torch.cat([first, rest], dim=2)
