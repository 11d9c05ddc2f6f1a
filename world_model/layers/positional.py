"""Positional encodings: 3-D RoPE (numerator / softmax q,k) and UCPE relative-ray transforms (camera branch).

RoPE ("wan_rope"): head dim D is split into [t | h | w] complex-pair bands of ``D/2 - 2*(D//6)``,
``D//6`` and ``D//6`` frequencies, theta 1e4, interleaved pairs (x0 + i x1, x2 + i x3, ...). Positions
are integer latent (frame, row, column) indices; streaming passes absolute frame offsets, and the
table is computed on the fly (no maximum length).

UCPE (docs/architecture.md#camera-conditioning): every token gets a world->ray-local SE(3) matrix P built
from its pixel ray.
The first half of each head is transformed as 4-vectors (q by P^T, k and v by P^-1, the output by P),
the second half gets RoPE with a re-sliced table; attention scores then depend on P_i P_j^-1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.features import apply_rope  # the one RoPE implementation (also used by the ops)


def rope_band_sizes(head_dim: int) -> tuple[int, int, int]:
    """Complex frequencies per (t, h, w) band for a head dim."""
    hw = head_dim // 6
    return head_dim // 2 - 2 * hw, hw, hw


def _axis_freqs(positions: torch.Tensor, real_dim: int, theta: float) -> torch.Tensor:
    inv = 1.0 / (theta ** (torch.arange(0, real_dim, 2, dtype=torch.float32, device=positions.device) / real_dim))
    angles = torch.outer(positions.to(torch.float32), inv)
    return torch.polar(torch.ones_like(angles), angles)


def rope_freqs(
    head_dim: int,
    num_frames: int,
    height: int,
    width: int,
    *,
    frame_offset: int = 0,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Complex RoPE table ``(T*H*W, head_dim // 2)`` for tokens in (t, h, w) order."""
    nt, nh, nw = rope_band_sizes(head_dim)
    f = _axis_freqs(torch.arange(frame_offset, frame_offset + num_frames, device=device), 2 * nt, theta)
    h = _axis_freqs(torch.arange(height, device=device), 2 * nh, theta)
    w = _axis_freqs(torch.arange(width, device=device), 2 * nw, theta)
    table = torch.cat(
        [
            f[:, None, None, :].expand(num_frames, height, width, nt),
            h[None, :, None, :].expand(num_frames, height, width, nh),
            w[None, None, :, :].expand(num_frames, height, width, nw),
        ],
        dim=-1,
    )
    return table.reshape(num_frames * height * width, nt + nh + nw)


def slice_rope_for_camera(freqs: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Re-slice a head-dim RoPE table for the camera branch's RoPE half (``head_dim // 2`` real dims)."""
    nt, nh, _ = rope_band_sizes(head_dim)
    ct, ch, cw = rope_band_sizes(head_dim // 2)
    return torch.cat([freqs[..., :ct], freqs[..., nt : nt + ch], freqs[..., nt + nh : nt + nh + cw]], dim=-1)


def ucpe_ray_matrices(
    conditions: torch.Tensor, grid_hw: tuple[int, int], patch_hw: tuple[int, int] = (1, 1)
) -> torch.Tensor:
    """World->ray-local SE(3) per token from camera conditions.

    Args:
        conditions: ``(B, T, 20)`` = flattened 4x4 camera-to-world (row-major) + fx, fy, cx, cy at latent-pixel scale.
        grid_hw: token grid (h, w); ``patch_hw``: latent pixels per token.

    Returns:
        ``(B, T, h*w, 4, 4)``.
    """
    b, t, _ = conditions.shape
    h, w = grid_hw
    c2w = conditions[..., :16].reshape(b, t, 4, 4)
    fx, fy, cx, cy = (conditions[..., 16 + i].reshape(b, t, 1, 1) for i in range(4))
    ph, pw = patch_hw
    v, u = torch.meshgrid(
        torch.arange(h, dtype=conditions.dtype, device=conditions.device),
        torch.arange(w, dtype=conditions.dtype, device=conditions.device),
        indexing="ij",
    )
    x = (u - cx / pw) / (fx / pw)
    y = (v - cy / ph) / (fy / ph)
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (B, T, h, w, 3)
    rot, origin = c2w[..., :3, :3], c2w[..., :3, 3]
    z_ray = F.normalize(torch.einsum("btij,bthwj->bthwi", rot, d_cam), dim=-1, eps=1e-6)
    cam_y = rot[..., :, 1][:, :, None, None, :].expand_as(z_ray)
    x_ray = F.normalize(torch.cross(cam_y, z_ray, dim=-1), dim=-1, eps=1e-6)
    y_ray = F.normalize(torch.cross(z_ray, x_ray, dim=-1), dim=-1, eps=1e-6)
    w2l = torch.stack([x_ray, y_ray, z_ray], dim=-2)  # rows = ray axes in world coordinates
    trans = -torch.einsum("bthwij,btj->bthwi", w2l, origin)
    mats = torch.zeros(b, t, h, w, 4, 4, dtype=conditions.dtype, device=conditions.device)
    mats[..., :3, :3] = w2l
    mats[..., :3, 3] = trans
    mats[..., 3, 3] = 1.0
    return mats.reshape(b, t, h * w, 4, 4)


def ucpe_apply(
    x: torch.Tensor, mats: torch.Tensor, freqs: torch.Tensor | None, *, inverse_rope: bool = False
) -> torch.Tensor:
    """Apply the block-diagonal UCPE transform to ``x (B, H, T, S, D)``.

    ``mats (B, T, S, 4, 4)`` acts on the first D/2 channels as 4-vectors; ``freqs (T*S, D/4)`` rotates the rest.
    """
    b, nh, t, s, d = x.shape
    projected, rotated = x.split(d // 2, dim=-1)
    projected = torch.einsum("btsij,bhtskj->bhtski", mats.to(x.dtype), projected.reshape(b, nh, t, s, -1, 4))
    projected = projected.reshape(b, nh, t, s, d // 2)
    if freqs is not None:
        rotated = apply_rope(rotated, freqs.reshape(t, s, -1), inverse=inverse_rope)
    return torch.cat([projected, rotated], dim=-1)


def downscale_to_reference_rms(reference: torch.Tensor, transformed: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale each token of ``transformed`` down so its channel RMS does not exceed ``reference``'s (never up)."""
    ref = reference.square().mean(-1, keepdim=True).add(eps).sqrt()
    new = transformed.square().mean(-1, keepdim=True).add(eps).sqrt()
    return transformed * (ref / new.clamp_min(eps)).clamp(max=1.0)
