"""Softmax attention (SDPA), chunk-causal attention, and the head-dim padding fast path for CUDA.

Chunk-causal attention (a query sees keys of its own and earlier chunks) runs as one SDPA per query chunk
over the key prefix, never as an ``(N, N)`` mask: at 60 s of 704x1280 video (106,480 tokens) such a mask
alone is 11 GB, and unmasked calls can use flash attention. :func:`chunk_causal_mask` remains as the
reference definition (tests).

Flash attention kernels are built for a few head dims; SANA-WM's is 112. The CUDA fast path of
:func:`softmax_attention` zero-pads q, k, v from 112 to 128 (generally: to the next of
:data:`FLASH_HEAD_DIMS`) and calls SDPA with the caller's explicit scale, so the result is the unpadded
attention exactly: the zero channels add nothing to ``q k^T`` and produce zero output channels, which are
sliced off. The scale must be the *unpadded* ``head_dim**-0.5`` (SDPA's default would use the padded dim;
docs/architecture.md#softmax-attention), so the fast path always passes one. The padding itself is plain PyTorch
(:func:`sdpa_padded_head_dim`) and is tested on CPU; only the dispatch to it is CUDA-only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .dispatch import fast_path, register_fast_path

FLASH_HEAD_DIMS = (32, 64, 128, 256)


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


def chunk_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    bounds: Sequence[tuple[int, int]],
    tokens_per_frame: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention over ``(B, H, N, D)`` where query chunk i sees keys of chunks ``<= i`` (frame ``bounds``).

    Equals ``softmax_attention(q, k, v, mask=chunk_causal_mask(bounds, tokens_per_frame))`` without building the
    mask: one unmasked call per chunk on the key prefix (about half the work of the masked call).
    """
    n = q.shape[2]
    if not bounds or bounds[0][0] != 0 or bounds[-1][1] * tokens_per_frame != n:
        raise ValueError(f"bounds must tile the {n // max(tokens_per_frame, 1)} frames of q, got {list(bounds)}")
    outs = []
    for c0, c1 in bounds:
        q0, q1 = c0 * tokens_per_frame, c1 * tokens_per_frame
        outs.append(softmax_attention(q[:, :, q0:q1], k[:, :, :q1], v[:, :, :q1], scale=scale))
    return torch.cat(outs, dim=2)


def padded_head_dim(head_dim: int) -> int:
    """The smallest of :data:`FLASH_HEAD_DIMS` that holds ``head_dim`` (``head_dim`` itself above 256)."""
    if head_dim < 1:
        raise ValueError(f"head_dim must be >= 1, got {head_dim}")
    return next((d for d in FLASH_HEAD_DIMS if d >= head_dim), head_dim)


def sdpa_padded_head_dim(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA with the head dim zero-padded to a flash size; equals unpadded SDPA (up to kernel rounding).

    ``scale`` defaults to the *unpadded* ``q.shape[-1] ** -0.5`` and is always passed to SDPA explicitly.
    """
    d = q.shape[-1]
    if k.shape[-1] != d or v.shape[-1] != d:
        raise ValueError(f"q, k, v must share the head dim, got {q.shape[-1]}, {k.shape[-1]}, {v.shape[-1]}")
    scale = d**-0.5 if scale is None else float(scale)
    padded = padded_head_dim(d)
    if padded == d:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    q, k, v = (F.pad(a, (0, padded - d)) for a in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out[..., :d]


def _padding_applies(q, k, v, *, mask=None, scale=None) -> bool:
    """CUDA half-precision inputs whose (shared) head dim is not already a flash size."""
    d = q.shape[-1]
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and k.shape[-1] == d
        and v.shape[-1] == d
        and padded_head_dim(d) != d
    )


register_fast_path("softmax_attention", sdpa_padded_head_dim, _padding_applies)
