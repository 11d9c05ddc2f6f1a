"""Temporal convolutions with bidirectional, chunk-causal and streaming structure (plain PyTorch).

Both convs see the past freely (across chunk boundaries, or through a cached tail in streaming) and
the future only inside the current chunk — which is what makes chunk-by-chunk streaming exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .dispatch import fast_path

Bounds = Sequence[tuple[int, int]]


def left_context(x: torch.Tensor, tail: torch.Tensor | None, size: int, dim: int) -> torch.Tensor:
    """Prepend ``size`` frames of past context along ``dim`` (the cached tail, zero-padded if short)."""
    if size == 0:
        return x
    if tail is None:
        shape = list(x.shape)
        shape[dim] = size
        return torch.cat([x.new_zeros(shape), x], dim=dim)
    tail = tail.to(x.dtype)
    if tail.shape[dim] < size:
        shape = list(x.shape)
        shape[dim] = size - tail.shape[dim]
        tail = torch.cat([x.new_zeros(shape), tail], dim=dim)
    return torch.cat([tail.narrow(dim, tail.shape[dim] - size, size), x], dim=dim)


def short_conv(
    x: torch.Tensor, weight: torch.Tensor, *, bounds: Bounds, tail: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise temporal short conv on ``x (B, T, S, C)`` with a causal kernel ``weight (C, 1, k)``.

    ``y = causal(x) + anticausal_within_chunk(x) - w[k-1] * x``: a symmetric window of 2k-1 taps sharing the
    centre tap, whose future half stops at the end of each chunk in ``bounds``.

    Returns ``(y, new_tail)`` where ``new_tail`` is the last ``k-1`` input frames (for the next streaming call).
    """
    fast = fast_path("short_conv", x, weight, bounds=bounds, tail=tail)
    if fast is not None:
        return fast(x, weight, bounds=bounds, tail=tail)
    t = x.shape[1]
    kernel = weight[:, 0, :].to(x.dtype)  # (C, k)
    k = kernel.shape[-1]
    past = left_context(x, tail, k - 1, dim=1)  # (B, T + k - 1, S, C)
    y = sum(kernel[:, j] * past[:, j : j + t] for j in range(k))
    if bounds:
        # future taps, zero-padded at the end of every chunk: tap j looks (k - 1 - j) frames ahead
        future = torch.cat([F.pad(x[:, c0:c1], (0, 0, 0, 0, 0, k - 1)) for c0, c1 in bounds], dim=1)
        # frame f of chunk i sits at f + i * (k - 1) in ``future`` (built from Python ints: no data-dependent
        # shapes, so torch.compile keeps the streaming step in one graph)
        base = torch.tensor([f + i * (k - 1) for i, (c0, c1) in enumerate(bounds) for f in range(c0, c1)],
                            device=x.device)
        y = y + sum(kernel[:, j] * future.index_select(1, base + (k - 1 - j)) for j in range(k - 1))
    new_tail = past[:, past.shape[1] - (k - 1) :].clone(memory_format=torch.contiguous_format)  # T-independent strides
    return y, new_tail


def chunked_temporal_conv(
    h: torch.Tensor, weight: torch.Tensor, *, bounds: Bounds, tail: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full temporal conv ``weight (C, C, k, 1)`` (k odd, centred) on ``h (B, C, T, S)``.

    The past half reads earlier frames (or the cached ``tail``); the future half is zero-padded at the end
    of every chunk. Returns ``(conv(h), new_tail)`` with the last ``(k-1)//2`` frames of ``h``.
    """
    fast = fast_path("chunked_temporal_conv", h, weight, bounds=bounds, tail=tail)
    if fast is not None:
        return fast(h, weight, bounds=bounds, tail=tail)
    pad = (weight.shape[2] - 1) // 2
    past = left_context(h, tail, pad, dim=2)  # (B, C, T + pad, S)
    w = weight.to(h.dtype)
    outs = []
    for c0, c1 in bounds:
        window = F.pad(past[:, :, c0 : c1 + pad], (0, 0, 0, pad))
        outs.append(F.conv2d(window, w))
    new_tail = past[:, :, past.shape[2] - pad :].clone(memory_format=torch.contiguous_format)
    return torch.cat(outs, dim=2), new_tail
