"""Triton kernel of :func:`world_model.ops.short_conv` (imports triton; loaded lazily like ``triton_gdn``).

Why not FLA's ``ShortConvolution``: it is a causal depthwise conv over ``(B, T, C)`` with a cached tail. Our
conv also has future taps that stop at the end of every chunk of ``bounds`` (the bidirectional / chunk-causal
symmetric window). With FLA that takes a flip of every chunk, a varlen (``cu_seqlens``) causal pass per chunk,
a flip back, a separate causal pass with the tail, and a permute of ``(B, T, S, C)`` to ``(B*S, T, C)`` on
both sides -- several full copies of K. Here one program reads each input frame it needs once per tap
straight from the ``(B, T, S, C)`` layout, takes the past from the streaming tail, and masks future taps
by a per-frame chunk end.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .conv import left_context
from .gdn import _check_bounds

Bounds = Sequence[tuple[int, int]]


@triton.jit
def _short_conv_kernel(
    x_ptr, w_ptr, tail_ptr, end_ptr, y_ptr,
    T, S, C, L,
    sx_b, sx_t, sx_s, sx_c, sw_c, sw_j, st_b, st_t, st_s, st_c,
    K: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, HAS_TAIL: tl.constexpr,
):
    """``y[t] = sum_j w_j x[t-K+1+j] + sum_{j<K-1} w_j x[t+K-1-j] (only before the chunk end)`` on one tile."""
    pid_bt = tl.program_id(0)
    b = (pid_bt // T).to(tl.int64)
    t = pid_bt % T
    offs_s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    ms = offs_s < S
    mc = offs_c < C
    m2 = ms[:, None] & mc[None, :]
    plane = offs_s[:, None] * sx_s + offs_c[None, :] * sx_c
    x_base = x_ptr + b * sx_b
    acc = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    frame = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.int32) + t  # t as a block: the interpreter rejects
    # masks that combine a block with a scalar condition
    for j in tl.static_range(K):  # causal taps: frame t - (K-1) + j
        src = frame - (K - 1) + j
        w = tl.load(w_ptr + offs_c * sw_c + j * sw_j, mask=mc, other=0.0).to(y_ptr.dtype.element_ty)
        xv = tl.load(x_base + src * sx_t + plane, mask=m2 & (src >= 0), other=0.0).to(tl.float32)
        if HAS_TAIL:  # frames before this call come from the tail (its last L frames; zeros before them)
            tail_idx = L + src
            tv = tl.load(tail_ptr + b * st_b + tail_idx * st_t + offs_s[:, None] * st_s + offs_c[None, :] * st_c,
                         mask=m2 & (src < 0) & (tail_idx >= 0), other=0.0).to(tl.float32)
            xv += tv
        acc += w.to(tl.float32)[None, :] * xv
    end = tl.load(end_ptr + t)  # first frame after t's chunk (t + 1 when there are no future taps)
    fut = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    for j in tl.static_range(K - 1):  # future taps: frame t + (K-1) - j, inside the chunk only
        src = frame + (K - 1) - j
        w = tl.load(w_ptr + offs_c * sw_c + j * sw_j, mask=mc, other=0.0).to(y_ptr.dtype.element_ty)
        xv = tl.load(x_base + src * sx_t + plane, mask=m2 & (src < end), other=0.0).to(tl.float32)
        fut += w.to(tl.float32)[None, :] * xv
    y = acc + fut
    y_off = ((b * T + t) * S + offs_s[:, None]) * C + offs_c[None, :]
    tl.store(y_ptr + y_off, y.to(y_ptr.dtype.element_ty), mask=m2)


@functools.lru_cache(maxsize=256)
def _chunk_ends(bounds: tuple[tuple[int, int], ...], num_frames: int, device: torch.device) -> torch.Tensor:
    """``int32 (T,)``: the end of each frame's chunk, or ``t + 1`` (no future taps) without bounds; cached."""
    ends = torch.arange(1, num_frames + 1, dtype=torch.int32)
    for c0, c1 in bounds:
        ends[c0:c1] = c1
    return ends.to(device)


def triton_short_conv(
    x: torch.Tensor, weight: torch.Tensor, *, bounds: Bounds, tail: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton :func:`world_model.ops.short_conv`: same arguments and results (``y`` contiguous, fp32 accumulation)."""
    if x.ndim != 4:
        raise ValueError(f"x must be (B, T, S, C), got {tuple(x.shape)}")
    b, t, s, c = x.shape
    if weight.ndim != 3 or weight.shape[:2] != (c, 1) or weight.shape[2] < 1:
        raise ValueError(f"weight must be ({c}, 1, k), got {tuple(weight.shape)}")
    k = weight.shape[2]
    if tail is not None and (tail.ndim != 4 or tail.shape[0] != b or tail.shape[2:] != (s, c)):
        raise ValueError(f"tail must be ({b}, L, {s}, {c}), got {tuple(tail.shape)}")
    if bounds:
        _check_bounds(bounds, t)
    has_tail = tail is not None and tail.shape[1] > 0 and k > 1
    tail_t = tail.to(x.dtype) if has_tail else x  # any valid pointer when there is no tail
    ends = _chunk_ends(tuple((int(c0), int(c1)) for c0, c1 in bounds), t, x.device)
    y = torch.empty(b, t, s, c, device=x.device, dtype=x.dtype)
    block_c = min(128, max(16, triton.next_power_of_2(c)))
    block_s = min(16, max(1, triton.next_power_of_2(s)))
    grid = (b * t, triton.cdiv(s, block_s), triton.cdiv(c, block_c))
    _short_conv_kernel[grid](
        x, weight, tail_t, ends, y,
        t, s, c, tail_t.shape[1] if has_tail else 0,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3), weight.stride(0), weight.stride(2),
        tail_t.stride(0), tail_t.stride(1), tail_t.stride(2), tail_t.stride(3),
        K=k, BLOCK_S=block_s, BLOCK_C=block_c, HAS_TAIL=has_tail,
    )
    # the next call's tail: the last k-1 frames of [tail | x] (zero-padded), as the reference returns it
    keep = k - 1
    recent = x[:, max(0, t - keep):]
    new_tail = left_context(recent, tail, max(0, keep - t), dim=1).clone()
    return y, new_tail
