"""Frames <-> files: float frames to uint8 and back, their PSNR, and mp4/gif writing through imageio (mp4 also
streamed). The one place for these conversions: the model, its trainers, the envs and the CLI all use it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_uint8(frames: torch.Tensor | np.ndarray, *, low: float = -1.0) -> np.ndarray:
    """``(..., 3, H, W)`` floats in ``[low, 1]`` (model frames: [-1, 1]; ``low=0``: [0, 1]) -> ``(..., H, W, 3)``
    uint8. Values outside are clipped; NaN shows as 0."""
    if low not in (-1.0, 0.0):
        raise ValueError(f"low must be -1 (frames in [-1, 1]) or 0 (frames in [0, 1]), got {low!r}")
    x = torch.as_tensor(frames).detach().float().cpu()
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"frames must have shape (..., 3, H, W), got {tuple(x.shape)}")
    x = torch.nan_to_num(x, nan=low).clamp(low, 1)
    x = ((x + 1) * 127.5 if low == -1.0 else x * 255.0).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def psnr(a, b, *, data_range: float = 1.0, max_db: float | None = None, pooled: bool = False) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``, of float frames ``(..., 3, H, W)``.

    One value per image (shape ``(...)``, float64), or with ``pooled=True`` one value for the MSE of all of
    them. Identical images give ``inf`` unless ``max_db`` caps it. ``data_range`` is 1 for frames in [0, 1]
    and 2 for model frames in [-1, 1].
    """
    ta, tb = (torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x) for x in (a, b))
    for name, t in (("a", ta), ("b", tb)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be float frames (..., 3, H, W), got dtype {t.dtype}")
        if t.ndim < 3 or t.shape[-3] != 3:
            raise ValueError(f"{name} must have shape (..., 3, H, W), got {tuple(t.shape)}")
    if ta.shape != tb.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    diff = ta.detach().to("cpu", torch.float64) - tb.detach().to("cpu", torch.float64)
    err = (diff**2).mean() if pooled else (diff**2).mean(dim=(-3, -2, -1))
    out = 10.0 * torch.log10(float(data_range) ** 2 / err)  # 1 / 0 = inf in torch: identical images give +inf
    if max_db is not None:
        out = out.clamp(max=float(max_db))
    return out


def from_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(..., H, W, 3)`` uint8 -> ``(..., 3, H, W)`` float32 in [-1, 1]."""
    x = torch.as_tensor(np.array(images, copy=True))
    if x.dtype != torch.uint8 or x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"images must be uint8 with shape (..., H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return x.movedim(-1, -3).float() / 127.5 - 1.0


class VideoWriter:
    """Append uint8 ``(n, H, W, 3)`` frames to an mp4 (libx264, yuv420p) as they come: memory is one chunk.

    Odd sizes are padded by one edge-replicated row/column (yuv420p needs even sizes). Use as a context manager
    or call :meth:`close`; ``frames`` counts what was written.
    """

    def __init__(self, path: str | Path, fps: float) -> None:
        path = Path(path)
        if path.suffix.lower() != ".mp4":
            raise ValueError(f"path must end in .mp4 for streamed writing, got {str(path)!r}")
        if not np.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.frames = path, float(fps), 0
        self._hw: tuple[int, int] | None = None
        self._gen = None

    def write(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (n, H, W, 3), got {frames.dtype} {frames.shape}")
        if self._hw is None:
            import imageio_ffmpeg

            self._hw = frames.shape[1:3]
            h, w = self._hw[0] + self._hw[0] % 2, self._hw[1] + self._hw[1] % 2
            self._gen = imageio_ffmpeg.write_frames(str(self.path), (w, h), fps=self.fps, codec="libx264",
                                                    macro_block_size=1)
            self._gen.send(None)
        elif frames.shape[1:3] != self._hw:
            raise ValueError(f"frames must keep the size {self._hw} of the first frames, got {frames.shape[1:3]}")
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        for f in frames:
            self._gen.send(np.ascontiguousarray(f).tobytes())
        self.frames += len(frames)

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_video(frames: np.ndarray, path: str | Path, fps: float) -> Path:
    """Write ``(F, H, W, 3)`` uint8 frames as mp4 (libx264) or gif, chosen by the suffix."""
    import imageio.v3 as iio

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        iio.imwrite(path, frames, duration=1000.0 / fps, loop=0)
    elif path.suffix.lower() == ".mp4":
        with VideoWriter(path, fps) as writer:
            writer.write(frames)
    else:
        raise ValueError(f"unsupported video suffix {path.suffix!r}; use .mp4 or .gif")
    return path
