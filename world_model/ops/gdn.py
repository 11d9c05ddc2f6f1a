"""Frame-wise Gated DeltaNet scans (plain-PyTorch reference).

SANA-WM's GDN treats one latent frame as one recurrence step: the S tokens of frame t enter together
as a rank-S "block delta" update of a D x D state. Per head (docs/architecture.md#frame-wise-gated-deltanet)::

    W_t = g_t (I - K_t^T diag(b_t) K_t)        # (D x D), symmetric; K_t is (S x D)
    U_t = V_t^T diag(b_t) K_t                  # (D x D)
    S_t = S_{t-1} W_t + U_t                    # state: values x keys
    num_t = Q_t S_t^T                          # (S x D)

The normaliser stream is the same recurrence on a 1 x D row state with un-rotated keys and target 1
(U^z_t = b_t^T K_t); ``den_t = Q_t z_t^T``. The bidirectional form adds an *exclusive* backward scan
(frames > t); the chunk-causal form confines that backward scan to the query's chunk; streaming runs
the forward scan over one chunk from a carried state.

Layouts: tokens ``(B, H, T, S, D)``, per-token gates ``beta (B, H, T, S)``, per-frame decay
``decay (B, H, T)``. All scans run in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .dispatch import fast_path

Bounds = Sequence[tuple[int, int]]


def delta_transitions(keys: torch.Tensor, beta: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """``W_t = decay_t (I - K_t^T diag(beta_t) K_t)`` for every frame: ``(B, H, T, D, D)``."""
    d = keys.shape[-1]
    kbk = torch.einsum("bhtsd,bhts,bhtse->bhtde", keys, beta, keys)
    eye = torch.eye(d, device=keys.device, dtype=keys.dtype)
    return decay[..., None, None] * (eye - kbk)


def delta_inputs(values: torch.Tensor, beta: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``U_t = V_t^T diag(beta_t) K_t``: ``(B, H, T, Dv, Dk)``."""
    return torch.einsum("bhtsv,bhts,bhtsd->bhtvd", values, beta, keys)


def delta_scan(
    transitions: torch.Tensor, inputs: torch.Tensor, initial: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive forward scan ``state_t = state_{t-1} W_t + U_t``.

    Args:
        transitions: ``(B, H, T, D, D)``.
        inputs: ``(B, H, T, R, D)``.
        initial: ``(B, H, R, D)`` state before frame 0 (zeros if ``None``).

    Returns:
        ``(states (B, H, T, R, D), final (B, H, R, D))``.
    """
    b, h, t, r, d = inputs.shape
    state = inputs.new_zeros(b, h, r, d) if initial is None else initial.to(inputs.dtype)
    states = []
    for i in range(t):
        state = torch.matmul(state, transitions[:, :, i]) + inputs[:, :, i]
        states.append(state)
    return torch.stack(states, dim=2), state


def delta_scan_reverse_exclusive(transitions: torch.Tensor, inputs: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """Exclusive backward scan confined to each ``(c0, c1)`` of ``bounds``.

    The state for frame t holds frames t+1 .. c1-1 of t's chunk: ``state_t = state_{t+1} W_{t+1} + U_{t+1}``
    with ``state_{c1-1} = 0``. Frames outside every bound get zeros.
    """
    b, h, t, r, d = inputs.shape
    zero = inputs.new_zeros(b, h, r, d)
    per_frame = [zero] * t  # built functionally: no in-place writes for autograd to replay
    for c0, c1 in bounds:
        state = zero
        for i in range(c1 - 2, c0 - 1, -1):
            state = torch.matmul(state, transitions[:, :, i + 1]) + inputs[:, :, i + 1]
            per_frame[i] = state
    return torch.stack(per_frame, dim=2)


def _check_bounds(bounds: Bounds, num_frames: int) -> None:
    expected = 0
    for c0, c1 in bounds:
        if c0 != expected or c1 <= c0:
            raise ValueError(f"bounds must tile [0, {num_frames}) in order, got {list(bounds)}")
        expected = c1
    if expected != num_frames:
        raise ValueError(f"bounds must tile [0, {num_frames}) in order, got {list(bounds)}")


def frame_gdn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_rot: torch.Tensor,
    k_rot: torch.Tensor,
    beta: torch.Tensor,
    decay: torch.Tensor,
    *,
    bounds: Bounds,
    state: tuple[torch.Tensor, torch.Tensor] | None = None,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Frame-wise GDN attention: forward (inclusive, from ``state``) + backward (exclusive, within bounds).

    Args:
        q, k: ``(B, H, T, S, D)`` post-ReLU queries/keys (keys already scaled); used by the normaliser.
        v: ``(B, H, T, S, D)`` values.
        q_rot, k_rot: RoPE-rotated copies used by the numerator.
        beta: ``(B, H, T, S)``; decay: ``(B, H, T)``.
        bounds: chunks ``[(c0, c1), ...]`` tiling ``[0, T)`` that confine the backward scan
            (``[(0, T)]`` = bidirectional; ``[]`` = forward only).
        state: ``(kv (B, H, D, D), z (B, H, 1, D))`` carried from earlier frames, or ``None``.

    Returns:
        ``(out (B, H, T, S, D) in v's dtype, (kv, z) after the last frame)``.
    """
    fast = fast_path("frame_gdn", q, k, v, q_rot, k_rot, beta, decay, bounds=bounds, state=state, eps=eps)
    if fast is not None:
        return fast(q, k, v, q_rot, k_rot, beta, decay, bounds=bounds, state=state, eps=eps)
    if bounds:
        _check_bounds(bounds, q.shape[2])
    dtype = v.dtype
    q, k, v, q_rot, k_rot, beta, decay = (x.float() for x in (q, k, v, q_rot, k_rot, beta, decay))
    w_kv = delta_transitions(k_rot, beta, decay)
    u_kv = delta_inputs(v, beta, k_rot)
    w_z = delta_transitions(k, beta, decay)
    u_z = torch.einsum("bhts,bhtsd->bhtd", beta, k).unsqueeze(3)
    kv0, z0 = (None, None) if state is None else state
    kv_states, kv_final = delta_scan(w_kv, u_kv, kv0)
    z_states, z_final = delta_scan(w_z, u_z, z0)
    if bounds:
        kv_states = kv_states + delta_scan_reverse_exclusive(w_kv, u_kv, bounds)
        z_states = z_states + delta_scan_reverse_exclusive(w_z, u_z, bounds)
    num = torch.einsum("bhtvd,bhtsd->bhtsv", kv_states, q_rot)
    den = torch.einsum("bhtrd,bhtsd->bhtsr", z_states, q)
    return (num / (den + eps)).to(dtype), (kv_final, z_final)


def frame_delta_numerator(
    q_rot: torch.Tensor,
    k_rot: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    decay: torch.Tensor,
    *,
    bounds: Bounds,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator-only ("single path") delta rule of the UCPE camera branch; same scans as :func:`frame_gdn`.

    Returns ``(out (B, H, T, S, D), kv state after the last frame (B, H, D, D))``.
    """
    fast = fast_path("frame_delta_numerator", q_rot, k_rot, v, beta, decay, bounds=bounds, state=state)
    if fast is not None:
        return fast(q_rot, k_rot, v, beta, decay, bounds=bounds, state=state)
    if bounds:
        _check_bounds(bounds, q_rot.shape[2])
    dtype = v.dtype
    q_rot, k_rot, v, beta, decay = (x.float() for x in (q_rot, k_rot, v, beta, decay))
    w = delta_transitions(k_rot, beta, decay)
    u = delta_inputs(v, beta, k_rot)
    states, final = delta_scan(w, u, state)
    if bounds:
        states = states + delta_scan_reverse_exclusive(w, u, bounds)
    out = torch.einsum("bhtvd,bhtsd->bhtsv", states, q_rot)
    return out.to(dtype), final
