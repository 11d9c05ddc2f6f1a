"""Softmax attention (SDPA) and the chunk-causal mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .dispatch import fast_path


def chunk_causal_mask(bounds: Sequence[tuple[int, int]], tokens_per_frame: int, device=None) -> torch.Tensor:
    """Boolean ``(N, N)`` mask: a token attends to a key iff ``chunk(key) <= chunk(query)``."""
    chunk_of_frame = torch.cat(
        [torch.full((c1 - c0,), i, dtype=torch.long) for i, (c0, c1) in enumerate(bounds)]
    ).to(device)
    chunk_of_token = chunk_of_frame.repeat_interleave(tokens_per_frame)
    return chunk_of_token[None, :] <= chunk_of_token[:, None]


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` over ``(B, H, N, D)`` tensors (boolean mask: True = attend)."""
    fast = fast_path("softmax_attention", q, k, v, mask=mask, scale=scale)
    if fast is not None:
        return fast(q, k, v, mask=mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
