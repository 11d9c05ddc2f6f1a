"""Feature preparation of the frame-wise GDN (plain PyTorch): RMSNorm, heads, ReLU, key scale, RoPE.

Reference §3 (steps 3-6): q and k are RMS-normalised over all channels, split into heads, passed through
the ReLU kernel feature map; k is scaled by ``(D*S)^-1/2``; the numerator uses RoPE-rotated copies
(interleaved channel pairs) while the normaliser uses the un-rotated q, k. The camera branch runs the
same steps without RoPE (UCPE transforms follow). :func:`gdn_features` is one op so that a fused kernel
(one read of q, k; four writes) can replace the chain of elementwise passes on GPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import fast_path


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim with statistics in float32; returns ``x``'s dtype."""
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(variance + eps) * weight.float()).to(x.dtype)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor, *, inverse: bool = False) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x (..., N, D)`` by the complex ``freqs (N, D/2)`` (computed in fp32)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    rotated = pairs * (freqs.conj() if inverse else freqs)
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)


def _check_features_args(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                         num_heads: int, rope: torch.Tensor | None) -> None:
    if q.ndim != 4 or q.shape != k.shape:
        raise ValueError(f"q and k must be (B, T, S, C) of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    c = q.shape[-1]
    if num_heads < 1 or c % num_heads or (c // num_heads) % 2:
        raise ValueError(f"num_heads must divide C={c} into heads of even size, got {num_heads}")
    if q_weight.shape != (c,) or k_weight.shape != (c,):
        raise ValueError(f"q_weight and k_weight must be ({c},), got {tuple(q_weight.shape)}, {tuple(k_weight.shape)}")
    if rope is not None:
        t, s = q.shape[1], q.shape[2]
        if not rope.is_complex() or rope.numel() != t * s * (c // num_heads // 2):
            raise ValueError(f"rope must be a complex (T*S, D/2) = ({t * s}, {c // num_heads // 2}) table, "
                             f"got {rope.dtype} {tuple(rope.shape)}")


def gdn_features(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    *,
    num_heads: int,
    key_scale: float,
    eps: float,
    rope: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``q, k (B, T, S, C)`` -> ``(q, k, q_rot, k_rot)``, each ``(B, H, T, S, D)`` in the input dtype.

    ``q = relu(heads(rms_norm(q)))``, ``k = relu(heads(rms_norm(k))) * key_scale``; with a complex
    ``rope (T*S, D/2)`` table the rotated copies are ``apply_rope(q)``, ``apply_rope(k)``, else ``None``.
    Both norms use the same ``eps``.
    """
    fast = fast_path("gdn_features", q, k, q_weight, k_weight, num_heads=num_heads, key_scale=key_scale, eps=eps,
                     rope=rope)
    if fast is not None:
        return fast(q, k, q_weight, k_weight, num_heads=num_heads, key_scale=key_scale, eps=eps, rope=rope)
    _check_features_args(q, k, q_weight, k_weight, num_heads, rope)
    b, t, s, c = q.shape

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b, t, s, num_heads, c // num_heads).permute(0, 3, 1, 2, 4)

    qh = F.relu(heads(rms_norm(q, q_weight, eps)))
    kh = F.relu(heads(rms_norm(k, k_weight, eps))) * key_scale
    if rope is None:
        return qh, kh, None, None
    table = rope.reshape(t, s, -1)
    return qh, kh, apply_rope(qh, table), apply_rope(kh, table)
