"""Image-fidelity metrics: PSNR and SSIM on batches of RGB frames in [0, 1].

Frames are ``(..., 3, H, W)`` float tensors or arrays with values in [0, 1] (use :func:`to_unit` for model
frames in [-1, 1]). Both metrics return one value per image (shape ``(...)``), float64.

- PSNR: ``10 log10(1 / MSE)`` over all pixels and channels. Identical images have infinite PSNR; pass
  ``max_db`` to cap it (the evaluation caps at :data:`PSNR_CAP_DB` so means stay finite and JSON-safe).
- SSIM: the standard Gaussian-window SSIM of Wang et al. (2004): 11x11 window, sigma 1.5, K1 = 0.01,
  K2 = 0.03, data range 1, population (not sample) covariances, averaged over the valid region (windows
  fully inside the image) and over channels. This equals ``skimage.metrics.structural_similarity(a, b,
  channel_axis=..., data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from world_model.video import psnr

__all__ = ["PSNR_CAP_DB", "frame_std", "masked_psnr", "mse", "psnr", "ssim", "to_unit"]

PSNR_CAP_DB = 100.0  # PSNR of identical frames in the evaluation (MSE 1e-10)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _as_frames(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if not t.is_floating_point():
        raise ValueError(f"{name} must be float frames (..., 3, H, W) in [0, 1], got dtype {t.dtype}")
    if t.ndim < 3 or t.shape[-3] != 3:
        raise ValueError(f"{name} must have shape (..., 3, H, W), got {tuple(t.shape)}")
    return t.detach().to("cpu", torch.float64)


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    ta, tb = _as_frames(a, "a"), _as_frames(b, "b")
    if ta.shape != tb.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    return ta, tb


def to_unit(frames) -> torch.Tensor:
    """Model frames in [-1, 1] -> [0, 1] (float64, CPU). Values are not clipped."""
    return (_as_frames(frames, "frames") + 1.0) / 2.0


def mse(a, b) -> torch.Tensor:
    """Mean squared error per image over (3, H, W)."""
    ta, tb = _pair(a, b)
    return ((ta - tb) ** 2).mean(dim=(-3, -2, -1))


def masked_psnr(a, b, mask, *, max_db: float | None = None) -> torch.Tensor:
    """PSNR (dB, data range 1) per image over the pixels where ``mask (..., H, W)`` is True, all channels; NaN
    for an image whose mask selects no pixel (e.g. a frame without holes, scored on holes)."""
    ta, tb = _pair(a, b)
    m = torch.as_tensor(mask).to("cpu", torch.bool)
    if m.shape != ta.shape[:-3] + ta.shape[-2:]:
        raise ValueError(f"mask must have shape {tuple(ta.shape[:-3] + ta.shape[-2:])} (..., H, W), got "
                         f"{tuple(m.shape)}")
    w = m[..., None, :, :].to(torch.float64)
    count = w.sum(dim=(-3, -2, -1)) * ta.shape[-3]
    err = (((ta - tb) ** 2) * w).sum(dim=(-3, -2, -1)) / count
    out = torch.where(count > 0, 10.0 * torch.log10(1.0 / err), torch.full_like(err, float("nan")))
    if max_db is not None:
        out = out.clamp(max=float(max_db))
    return out


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 2-D Gaussian window (size, size), float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a, b) -> torch.Tensor:
    """Structural similarity per image (mean over channels and the valid region), data range 1."""
    ta, tb = _pair(a, b)
    h, w = ta.shape[-2:]
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"frames must be at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels for SSIM, got {h}x{w}")
    batch = ta.shape[:-3]
    x = ta.reshape(-1, 1, h, w)
    y = tb.reshape(-1, 1, h, w)
    win = gaussian_window()[None, None]

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, win)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    per_channel = s.mean(dim=(-3, -2, -1))
    return per_channel.reshape(*batch, 3).mean(dim=-1)


def frame_std(frames) -> torch.Tensor:
    """Per-frame contrast: standard deviation over (3, H, W) of each frame (same units as the input)."""
    t = _as_frames(frames, "frames")
    return t.flatten(-3).std(dim=-1, correction=0)
