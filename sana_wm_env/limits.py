"""Bounds on what one request may produce, checked before any work so that an absurd request fails at once.

A slip such as ``--fps 100000``, ``--time-scale 1e8`` or ``--scale 1000`` would otherwise resample millions of
poses, or try to allocate hundreds of GiB, before failing or being killed. The checks here estimate the output
(frames, pixels, bytes) from the arguments alone and refuse a request over a limit with the estimate, the limit
and what to change. The library raises ValueError naming the argument; the CLI passes its flag names as ``what``.
"""

from __future__ import annotations

import math
import os

MAX_FRAMES = 100_000  # frames of one video, replay path or dataset clip (~1.7 h at 16 fps)
MAX_FPS = 1000.0  # frames per second of a camera path or video
MAX_VIDEO_SIDE = 8192  # pixels a side of a written video frame (H.264 encoders stop near here)
MAX_MEMORY_BYTES = 16 * 2**30  # frames one command holds in memory at once


def human_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable size (``"217 GiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" or abs(n) >= 100 else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_positive(value: float, what: str, *, limit: float | None = None) -> float:
    """``value`` as a float if it is a finite number > 0 (and <= ``limit``); else ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    if limit is not None and value > limit:
        raise ValueError(f"{what} {value:g} is more than the limit of {limit:g}; pass a value up to {limit:g}")
    return float(value)


def check_fps(value: float, what: str = "fps") -> float:
    """A frame rate: a finite number in (0, :data:`MAX_FPS`]."""
    return check_positive(value, what, limit=MAX_FPS)


def check_frames(frames: int, what: str, fix: str, *, limit: int = MAX_FRAMES) -> int:
    """Refuse ``frames`` over ``limit``: ``"<what>: N frames, more than the limit of L; <fix>"``."""
    if frames > limit:
        raise ValueError(f"{what}: {frames:,} frames, more than the limit of {limit:,}; {fix}")
    return int(frames)


def check_frame_size(height: int, width: int, what: str, fix: str, *, limit: int = MAX_VIDEO_SIDE) -> None:
    """Refuse video frames with a side over ``limit`` pixels."""
    if max(height, width) > limit:
        raise ValueError(f"{what}: {height:,}x{width:,}-pixel frames, more than the limit of {limit:,} pixels "
                         f"a side; {fix}")


def check_memory(nbytes: float, what: str, fix: str, *, limit: int = MAX_MEMORY_BYTES) -> None:
    """Refuse a request that would hold more than ``limit`` bytes of frames in memory."""
    if nbytes > limit:
        raise ValueError(f"{what}: about {human_bytes(nbytes)} of frames in memory, more than the limit of "
                         f"{human_bytes(limit)}; {fix}")


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)
