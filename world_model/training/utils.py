"""What the trainers share besides the training step: atomic file writes, snapshots of the global RNG states
(checkpoint/resume), the EMA update, and sample videos with their PSNR."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def ema_decay_at(decay: float, num_updates: int, warmup: bool) -> float:
    """EMA decay for update number ``num_updates`` (0-based): ``min(decay, (1 + n) / (10 + n))`` with warm-up."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates)) if warmup else decay


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
    e_params = [p for p in ema.parameters()]
    m_params = [p.detach().to(p.dtype) for p in model.parameters()]
    torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos ``(F, 3, H, W)`` in [-1, 1] (clipped), pooled over the whole clip."""
    from ..video import psnr as frames_psnr

    return float(frames_psnr(a.float().clamp(-1, 1), b.float().clamp(-1, 1), data_range=2.0, pooled=True))


def write_side_by_side(columns: list[torch.Tensor], path: Path, fps: float) -> Path:
    """Write videos ``(F, 3, H, W)`` in [-1, 1] side by side as an mp4 (imageio + ffmpeg, libx264)."""
    from ..video import to_uint8, write_video

    frames = torch.cat([c.float() for c in columns], dim=-1)  # along width
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    write_video(to_uint8(frames), tmp, fps)
    os.replace(tmp, path)
    return path


def rng_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The global RNG states (torch, CUDA devices, numpy, random): tensors for ``rng.pt``, the rest as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    doc = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, doc


def set_rng_states(tensors: dict[str, torch.Tensor], doc: dict[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`rng_states` (CUDA only with the same device count)."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = doc["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = doc["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
