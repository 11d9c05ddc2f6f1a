"""Geometry conditioning: what the 3D cache shows at a chunk's poses, as extra input channels of the transformer.

A geometry-guided model (``ModelConfig.geometry_channels > 0``) generates RGB-D frames and keeps them in a
:class:`world_model.point_cache.PointCache`. Before each chunk the cache is rendered at the chunk's frame poses;
:func:`geometry_inputs` encodes that render with the model's codec (colour and, for RGB-D codecs, depth, exactly
as generated frames are encoded) and appends, per latent token and frame of its temporal group, the share of the
patch's pixels the cache covers (mapped to [-1, 1]). The transformer adds these channels to its input tokens
through a zero-initialised patch embedding (GEN3C-style), so a model starts as if the cache did not exist and
learns how far to trust it; the UCPE and Plücker camera signals stay.

Layout: ``geometry (B, G, T, h, w)`` with ``G = codec.latent_channels + codec.temporal_stride``, aligned with the
chunk's latent frames: a first chunk (``first=True``) renders ``1 + s * (T - 1)`` frames, frame 0 included; a
continuation chunk renders ``s * T`` frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .codecs.base import LatentCodec
from .point_cache import CacheRender

__all__ = ["geometry_channels", "geometry_inputs"]


def geometry_channels(codec: LatentCodec) -> int:
    """``G``: the codec's latent channels plus one coverage channel per frame of a temporal group."""
    return int(codec.latent_channels) + int(codec.temporal_stride)


def geometry_inputs(render: CacheRender, codec: LatentCodec, *, first: bool) -> torch.Tensor:
    """Encode a cache render of one chunk's frames ``(B, n, ...)`` into ``geometry (B, G, T, h, w)``.

    Holes carry zeros in colour and depth 0 (read as sky by the depth channel); the coverage channels tell them
    apart. ``first``: the frames start with frame 0 (``n = 1 + s * (T - 1)``), else ``n = s * T``.
    """
    rgb, depth, mask = render.rgb, render.depth, render.mask
    if rgb.ndim != 5 or rgb.shape[2] != 3:
        raise ValueError(f"render.rgb must be (B, n, 3, H, W) (a render of n poses per element), got "
                         f"{tuple(rgb.shape)}")
    b, n, _, h, w = rgb.shape
    s = codec.temporal_stride
    if (first and (n - 1) % s) or (not first and (n % s or n == 0)):
        want = "1 + s*k frames (frame 0 first)" if first else "s*k frames"
        raise ValueError(f"a {'first' if first else 'continuation'} chunk's render must hold {want} with "
                         f"s = {s}, got {n}")
    video = rgb.clamp(-1, 1).permute(0, 2, 1, 3, 4)
    depth = depth.clamp_min(0)
    covered = mask.to(rgb.dtype)
    depth = depth if codec.depth_channels else None
    with torch.no_grad():
        latents = codec.encode(video, depth) if first else codec.encode_continuation(video, depth)
    t = latents.shape[2]
    hh, ww = latents.shape[-2:]
    # coverage per token and frame of the group; frame 0 of a first chunk fills its whole group, as in the codec
    groups = covered if not first else torch.cat([covered[:, :1].expand(-1, s, -1, -1), covered[:, 1:]], dim=1)
    share = F.adaptive_avg_pool2d(groups.reshape(b * t * s, 1, h, w), (hh, ww)).reshape(b, t, s, hh, ww)
    coverage = share.permute(0, 2, 1, 3, 4) * 2 - 1
    return torch.cat([latents.to(coverage.dtype), coverage], dim=1)
