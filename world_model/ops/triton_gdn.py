"""Triton kernels of the frame-wise GDN: the delta-rule scans and the fused feature preparation.

This module imports ``triton`` and is only imported lazily (see :mod:`world_model.ops.triton_paths`), so
machines without triton never load it. The kernels mirror the plain-PyTorch references in
:mod:`world_model.ops.gdn` and :mod:`world_model.ops.features`; on CPU they run only under the Triton
interpreter (``TRITON_INTERPRET=1`` set before this module is imported), which the tests use.

Scan design (docs/architecture.md#frame-wise-gated-deltanet). The state is ``S (Dv x Dk)``,
``S_t = g_t S_{t-1} + (V_t - g_t S_{t-1} K_t^T)
diag(b_t) K_t``. Every value row of ``S`` evolves independently, so one program owns a ``(BV x Dk)`` tile of
rows of one (batch, head), keeps it in registers in fp32 and walks the frames. Per frame it decays the
tile, accumulates the rank-S update from the pre-update state over the frame's tokens in tiles of ``BS``
(``pred = K S^T``, ``acc += K^T diag(b) (V - pred)``), applies it, and emits ``Q S^T`` for the frame.
The exclusive backward scan is the same kernel walking frames in reverse: emit first, then absorb the
frame, resetting the state at the last frame of every chunk of ``bounds``; it adds to the forward output.
The normaliser z-stream is the same kernel with a 1-row state, un-rotated keys and an implicit all-ones
"value"; its result (the denominator) is read by the last numerator pass, which writes ``num / (den + eps)``
in v's dtype. D is padded to a power of two (>= 16) with masks; S is tiled with masks.

Launches per call: forward-only (streaming) = 2 (z, num); with ``bounds`` = 4 (z fwd/bwd, num fwd/bwd);
the camera branch's numerator-only scan = 1 or 2.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .gdn import _check_bounds
from .triton_paths import MAX_HEAD_DIM

Bounds = Sequence[tuple[int, int]]

#: ``tl.dot`` precision of the scans: "ieee" (exact fp32, matches the reference), "tf32", or "bf16"
#: (bf16 operands, fp32 accumulation and state; the upstream default precision). With no precision passed the
#: wrappers use ``$SANA_WM_SCAN_PRECISION``, else the mode that matches the inputs (:func:`default_precision`).
SCAN_PRECISIONS = ("ieee", "tf32", "bf16")


# ------------------------------------------------------------------------------------------------
# delta-rule scan
# ------------------------------------------------------------------------------------------------
#: True when this module's kernels were decorated under ``TRITON_INTERPRET=1`` (they then run on CPU tensors).
INTERPRETED = (bool(triton.knobs.runtime.interpret) if hasattr(triton, "knobs")  # triton >= 3.4
               else os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes"))


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    if PRECISION == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif PRECISION == "bf16_emulated":
        # the interpreter's bf16 dot is wrong (triton 3.9); bf16 products are exact in fp32, so rounding the
        # operands and doing an fp32 dot gives the same numbers
        return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _absorb_frame(state, k_base, v_base, beta_base, t, S, DK, DV, g,
                  sk_t, sk_s, sk_d, sv_t, sv_s, sv_d, sb_t, sb_s,
                  offs_s, offs_k, offs_v, mask_k, mask_v,
                  BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                  ONES_VALUE: tl.constexpr, PRECISION: tl.constexpr):
    """``state^T (BK, BV)`` after frame ``t``: decay by ``g``, then the rank-S delta update from the decayed state."""
    state = state * g
    acc = tl.zeros((BK, BV), dtype=tl.float32)
    for s0 in range(0, S, BS):
        s_idx = s0 + offs_s
        ms = s_idx < S
        kt = tl.load(k_base + t * sk_t + s_idx[:, None] * sk_s + offs_k[None, :] * sk_d,
                     mask=ms[:, None] & mask_k[None, :], other=0.0).to(tl.float32)  # (BS, BK)
        bt = tl.load(beta_base + t * sb_t + s_idx * sb_s, mask=ms, other=0.0).to(tl.float32)  # (BS,)
        if ONES_VALUE:
            vt = tl.where(ms[:, None] & mask_v[None, :], 1.0, 0.0)
        else:
            vt = tl.load(v_base + t * sv_t + s_idx[:, None] * sv_s + offs_v[None, :] * sv_d,
                         mask=ms[:, None] & mask_v[None, :], other=0.0).to(tl.float32)  # (BS, BV)
        pred = _dot(kt, state, PRECISION)  # (BS, BV): k_s . S_v
        resid = (vt - pred) * bt[:, None]
        acc += _dot(tl.trans(kt), resid, PRECISION)  # (BK, BV)
    return state + acc


@triton.jit
def _emit_frame(state, q_base, acc_ptr, den_ptr, out_ptr, row0, t, S, DV, eps,
                sq_t, sq_s, sq_d, offs_s, offs_k, offs_v, mask_k, mask_v,
                BS: tl.constexpr, ACCUMULATE: tl.constexpr, FINALIZE: tl.constexpr, HAS_DEN: tl.constexpr,
                PRECISION: tl.constexpr):
    """Write ``Q_t S^T`` for frame ``t`` (added to the earlier pass if ACCUMULATE; divided and cast if FINALIZE)."""
    frame_row = row0 + t * S  # row of token (t, 0) in the (B*H*T*S, DV) output buffers
    for s0 in range(0, S, BS):
        s_idx = s0 + offs_s
        ms = s_idx < S
        qt = tl.load(q_base + t * sq_t + s_idx[:, None] * sq_s + offs_k[None, :] * sq_d,
                     mask=ms[:, None] & mask_k[None, :], other=0.0).to(tl.float32)  # (BS, BK)
        o = _dot(qt, state, PRECISION)  # (BS, BV)
        o_off = (frame_row + s_idx[:, None]) * DV + offs_v[None, :]
        om = ms[:, None] & mask_v[None, :]
        if ACCUMULATE:
            o += tl.load(acc_ptr + o_off, mask=om, other=0.0)
        if FINALIZE:
            if HAS_DEN:
                den = tl.load(den_ptr + frame_row + s_idx, mask=ms, other=0.0)
                o = o / (den[:, None] + eps)
            tl.store(out_ptr + o_off, o.to(out_ptr.dtype.element_ty), mask=om)
        else:
            tl.store(acc_ptr + o_off, o, mask=om)


@triton.jit
def _delta_scan_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, decay_ptr, reset_ptr, init_ptr, final_ptr, acc_ptr, den_ptr, out_ptr,
    H, T, S, DK, DV,
    sq_b, sq_h, sq_t, sq_s, sq_d,
    sk_b, sk_h, sk_t, sk_s, sk_d,
    sv_b, sv_h, sv_t, sv_s, sv_d,
    sb_b, sb_h, sb_t, sb_s,
    sg_b, sg_h, sg_t,
    eps,
    BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    REVERSE: tl.constexpr, HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, ONES_VALUE: tl.constexpr,
    ACCUMULATE: tl.constexpr, FINALIZE: tl.constexpr, HAS_DEN: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program: value rows ``[pid_v*BV, pid_v*BV + BV)`` of the state of one (batch, head), all frames."""
    pid_bh = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_s = tl.arange(0, BS)
    offs_k = tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_k = offs_k < DK
    mask_v = offs_v < DV
    q_base = q_ptr + b * sq_b + h * sq_h
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h
    beta_base = beta_ptr + b * sb_b + h * sb_h
    decay_base = decay_ptr + b * sg_b + h * sg_h
    row0 = pid_bh.to(tl.int64) * T * S
    state_off = pid_bh.to(tl.int64) * DV * DK + offs_v[None, :] * DK + offs_k[:, None]  # state^T (BK, BV)
    state_mask = mask_k[:, None] & mask_v[None, :]
    if HAS_INIT:
        state = tl.load(init_ptr + state_off, mask=state_mask, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BK, BV), dtype=tl.float32)
    for i in range(0, T):
        if REVERSE:
            t = T - 1 - i
            keep = (tl.load(reset_ptr + t) == 0).to(tl.float32)  # 0 at the last frame of a chunk
            state = state * keep
            _emit_frame(state, q_base, acc_ptr, den_ptr, out_ptr, row0, t, S, DV, eps,
                        sq_t, sq_s, sq_d, offs_s, offs_k, offs_v, mask_k, mask_v,
                        BS, ACCUMULATE, FINALIZE, HAS_DEN, PRECISION)
            g = tl.load(decay_base + t * sg_t).to(tl.float32)
            state = _absorb_frame(state, k_base, v_base, beta_base, t, S, DK, DV, g,
                                  sk_t, sk_s, sk_d, sv_t, sv_s, sv_d, sb_t, sb_s,
                                  offs_s, offs_k, offs_v, mask_k, mask_v, BS, BK, BV, ONES_VALUE, PRECISION)
        else:
            g = tl.load(decay_base + i * sg_t).to(tl.float32)
            state = _absorb_frame(state, k_base, v_base, beta_base, i, S, DK, DV, g,
                                  sk_t, sk_s, sk_d, sv_t, sv_s, sv_d, sb_t, sb_s,
                                  offs_s, offs_k, offs_v, mask_k, mask_v, BS, BK, BV, ONES_VALUE, PRECISION)
            _emit_frame(state, q_base, acc_ptr, den_ptr, out_ptr, row0, i, S, DV, eps,
                        sq_t, sq_s, sq_d, offs_s, offs_k, offs_v, mask_k, mask_v,
                        BS, ACCUMULATE, FINALIZE, HAS_DEN, PRECISION)
    if STORE_FINAL:
        tl.store(final_ptr + state_off, state, mask=state_mask)


@functools.lru_cache(maxsize=256)
def _chunk_end_flags(bounds: tuple[tuple[int, int], ...], num_frames: int, device: torch.device) -> torch.Tensor:
    """``int32 (T,)``: 1 at the last frame of every chunk (cached per bounds, so graph capture sees no copies)."""
    flags = torch.zeros(num_frames, dtype=torch.int32)
    for _, c1 in bounds:
        flags[c1 - 1] = 1
    return flags.to(device)


def _tiles(s: int, dk: int, dv: int, programs_bh: int) -> tuple[int, int, int]:
    """``(BS, BK, BV)``: D padded to a power of two >= 16; the S tile shrinks for tiny S and wide heads."""
    bk = max(16, triton.next_power_of_2(dk))
    if dv == 1:
        bv = 16
    else:
        # enough programs to fill an H100's 132 SMs when possible; wider tiles re-read keys less often
        bv = 32 if programs_bh * triton.cdiv(dv, 32) >= 132 and dv >= 32 else 16
    bs = 64 if bk <= 128 else 32
    bs = min(bs, max(16, triton.next_power_of_2(s)))
    return bs, bk, bv


def _scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    beta: torch.Tensor,
    decay: torch.Tensor,
    bounds: Bounds,
    initial: torch.Tensor | None,
    *,
    den: torch.Tensor | None,
    out_dtype: torch.dtype | None,
    eps: float,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (+ backward within ``bounds``) scan; returns ``(out or fp32 sum, final state (B, H, DV, DK))``.

    ``v=None`` runs the normaliser stream (all-ones value, DV=1) and returns its fp32 output ``(B, H, T, S)``.
    Otherwise the output is finalised: ``num / (den + eps)`` (or ``num`` if ``den`` is None) in ``out_dtype``.
    """
    b, h, t, s, dk = k.shape
    dv = 1 if v is None else v.shape[-1]
    device = k.device
    bs, bk, bv = _tiles(s, dk, dv, b * h)
    grid = (b * h, triton.cdiv(dv, bv))
    final = torch.empty(b, h, dv, dk, device=device, dtype=torch.float32)
    init = None
    if initial is not None:
        init = initial.to(device=device, dtype=torch.float32).contiguous()
        if init.shape != (b, h, dv, dk):
            raise ValueError(f"state must be ({b}, {h}, {dv}, {dk}), got {tuple(initial.shape)}")
    finalize = v is not None
    out = torch.empty(b, h, t, s, dv, device=device, dtype=out_dtype) if finalize else None
    acc = None
    if bounds or not finalize:
        acc = torch.empty(b, h, t, s, dv, device=device, dtype=torch.float32)
    reset = _chunk_end_flags(tuple((int(c0), int(c1)) for c0, c1 in bounds), t, device) if bounds else None
    vv = k if v is None else v  # any valid pointer when the value is implicit
    dummy = final  # placeholder for pointers a launch does not touch (never dereferenced)
    common = dict(
        H=h, T=t, S=s, DK=dk, DV=dv,
        sq_b=q.stride(0), sq_h=q.stride(1), sq_t=q.stride(2), sq_s=q.stride(3), sq_d=q.stride(4),
        sk_b=k.stride(0), sk_h=k.stride(1), sk_t=k.stride(2), sk_s=k.stride(3), sk_d=k.stride(4),
        sv_b=vv.stride(0), sv_h=vv.stride(1), sv_t=vv.stride(2), sv_s=vv.stride(3), sv_d=vv.stride(4),
        sb_b=beta.stride(0), sb_h=beta.stride(1), sb_t=beta.stride(2), sb_s=beta.stride(3),
        sg_b=decay.stride(0), sg_h=decay.stride(1), sg_t=decay.stride(2),
        eps=eps, BS=bs, BK=bk, BV=bv, ONES_VALUE=v is None, HAS_DEN=den is not None, PRECISION=precision,
    )
    fwd_final = finalize and not bounds
    _delta_scan_kernel[grid](
        q, k, vv, beta, decay, dummy, dummy if init is None else init, final,
        acc if acc is not None else dummy, dummy if den is None else den, out if fwd_final else dummy,
        REVERSE=False, HAS_INIT=init is not None, STORE_FINAL=True, ACCUMULATE=False, FINALIZE=fwd_final,
        **common,
    )
    if bounds:
        _delta_scan_kernel[grid](
            q, k, vv, beta, decay, reset, dummy, dummy, acc, dummy if den is None else den,
            out if finalize else dummy,
            REVERSE=True, HAS_INIT=False, STORE_FINAL=False, ACCUMULATE=True, FINALIZE=finalize,
            **common,
        )
    if finalize:
        return out, final
    return acc.view(b, h, t, s), final


def _check_scan_args(names: Sequence[str], tensors: Sequence[torch.Tensor], beta: torch.Tensor,
                     decay: torch.Tensor) -> None:
    ref = tensors[0]
    for name, x in zip(names, tensors):
        if x.ndim != 5 or x.shape[:4] != ref.shape[:4] or x.device != ref.device:
            raise ValueError(f"{name} must be (B, H, T, S, D) like {names[0]} {tuple(ref.shape)} on {ref.device}, "
                             f"got {tuple(x.shape)} on {x.device}")
    b, h, t, s, _ = ref.shape
    if beta.shape != (b, h, t, s):
        raise ValueError(f"beta must be ({b}, {h}, {t}, {s}), got {tuple(beta.shape)}")
    if decay.shape != (b, h, t):
        raise ValueError(f"decay must be ({b}, {h}, {t}), got {tuple(decay.shape)}")
    if t < 1 or s < 1:
        raise ValueError(f"need at least one frame and one token, got T={t}, S={s}")
    if max(ref.shape[-1], tensors[2].shape[-1]) > MAX_HEAD_DIM:
        raise ValueError(f"head dims above {MAX_HEAD_DIM} are not supported by the scan kernel, got {ref.shape[-1]}")


def default_precision(dtype: torch.dtype) -> str:
    """The dot mode for inputs of ``dtype``: no more exact than the inputs, no less exact than PyTorch's matmuls.

    bfloat16 inputs get "bf16" dots (their operands carry 8 mantissa bits already; on an H200 at 704x1280
    shapes the scan then differs from the fp32 reference by 4.4e-3 of its largest output, about one bf16
    rounding of the output, and runs 27x faster than "ieee"); float16 gets "tf32" (10 mantissa bits, as fp16);
    float32 follows ``torch.get_float32_matmul_precision()``: "ieee" at "highest" (PyTorch's default), "tf32"
    when TF32 matmuls are allowed ("high" / "medium").
    """
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "tf32"
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _precision(precision: str | None, dtype: torch.dtype) -> str:
    if precision is None:
        precision = os.environ.get("SANA_WM_SCAN_PRECISION") or default_precision(dtype)
    if precision not in SCAN_PRECISIONS:
        raise ValueError(f"precision must be one of {SCAN_PRECISIONS}, got {precision!r}")
    return "bf16_emulated" if precision == "bf16" and INTERPRETED else precision


def triton_frame_gdn(
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
    precision: str | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Triton :func:`world_model.ops.frame_gdn` (same arguments and results; ``precision`` picks the dot mode,
    see :data:`SCAN_PRECISIONS` and :func:`default_precision`)."""
    _check_scan_args(("q", "k", "v", "q_rot", "k_rot"), (q, k, v, q_rot, k_rot), beta, decay)
    if bounds:
        _check_bounds(bounds, q.shape[2])
    precision = _precision(precision, v.dtype)
    kv0, z0 = (None, None) if state is None else state
    den, z_final = _scan(q, k, None, beta, decay, bounds, z0, den=None, out_dtype=None, eps=eps,
                         precision=precision)
    out, kv_final = _scan(q_rot, k_rot, v, beta, decay, bounds, kv0, den=den, out_dtype=v.dtype, eps=eps,
                          precision=precision)
    return out, (kv_final, z_final)


def triton_frame_delta_numerator(
    q_rot: torch.Tensor,
    k_rot: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    decay: torch.Tensor,
    *,
    bounds: Bounds,
    state: torch.Tensor | None = None,
    precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton :func:`world_model.ops.frame_delta_numerator` (same arguments and results)."""
    _check_scan_args(("q_rot", "k_rot", "v"), (q_rot, k_rot, v), beta, decay)
    if bounds:
        _check_bounds(bounds, q_rot.shape[2])
    return _scan(q_rot, k_rot, v, beta, decay, bounds, state, den=None, out_dtype=v.dtype, eps=0.0,
                 precision=_precision(precision, v.dtype))


# ------------------------------------------------------------------------------------------------
# fused feature preparation
# ------------------------------------------------------------------------------------------------
@triton.jit
def _norm_relu_pairs(row_ptr, stride_c, w_ptr, ce, co, mask, C, eps, scale,
                     HAS_SCALE: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """Even/odd channels of ``relu(rms_norm(x)) [* scale]`` with the reference's roundings to the output dtype."""
    xe = tl.load(row_ptr + ce * stride_c, mask=mask, other=0.0).to(tl.float32)
    xo = tl.load(row_ptr + co * stride_c, mask=mask, other=0.0).to(tl.float32)
    variance = (tl.sum(xe * xe, axis=0) + tl.sum(xo * xo, axis=0)) / C
    r = tl.rsqrt(variance + eps)
    we = tl.load(w_ptr + ce, mask=mask, other=0.0).to(tl.float32)
    wo = tl.load(w_ptr + co, mask=mask, other=0.0).to(tl.float32)
    ye = tl.maximum((xe * r * we).to(OUT_DTYPE).to(tl.float32), 0.0)
    yo = tl.maximum((xo * r * wo).to(OUT_DTYPE).to(tl.float32), 0.0)
    if HAS_SCALE:
        ye = (ye * scale).to(OUT_DTYPE).to(tl.float32)
        yo = (yo * scale).to(OUT_DTYPE).to(tl.float32)
    return ye, yo


@triton.jit
def _gdn_features_kernel(
    q_ptr, k_ptr, qw_ptr, kw_ptr, rope_ptr, qo_ptr, ko_ptr, qr_ptr, kr_ptr,
    T, S, C, H, D,
    sq_b, sq_t, sq_s, sq_c, sk_b, sk_t, sk_s, sk_c, sr_n, sr_f,
    eps, key_scale,
    BLOCK_P: tl.constexpr, HAS_ROPE: tl.constexpr,
):
    """One program per token: RMSNorm over C, ReLU, key scale, RoPE on channel pairs; writes (B, H, T, S, D)."""
    n = tl.program_id(0).to(tl.int64)
    ts = n % (T * S)
    bi = n // (T * S)
    ti = ts // S
    si = ts % S
    j = tl.arange(0, BLOCK_P)
    mask = j < C // 2
    ce = 2 * j
    co = ce + 1
    out_dtype = qo_ptr.dtype.element_ty
    q_row = q_ptr + bi * sq_b + ti * sq_t + si * sq_s
    k_row = k_ptr + bi * sk_b + ti * sk_t + si * sk_s
    qe, qo = _norm_relu_pairs(q_row, sq_c, qw_ptr, ce, co, mask, C, eps, key_scale, False, out_dtype)
    ke, ko = _norm_relu_pairs(k_row, sk_c, kw_ptr, ce, co, mask, C, eps, key_scale, True, out_dtype)
    head = ce // D
    d = ce % D
    dst = ((bi * H + head) * (T * S) + ts) * D + d  # even channel of the pair in (B, H, T, S, D)
    tl.store(qo_ptr + dst, qe.to(out_dtype), mask=mask)
    tl.store(qo_ptr + dst + 1, qo.to(out_dtype), mask=mask)
    tl.store(ko_ptr + dst, ke.to(out_dtype), mask=mask)
    tl.store(ko_ptr + dst + 1, ko.to(out_dtype), mask=mask)
    if HAS_ROPE:
        f = d // 2
        cos = tl.load(rope_ptr + ts * sr_n + f * sr_f, mask=mask, other=1.0)
        sin = tl.load(rope_ptr + ts * sr_n + f * sr_f + 1, mask=mask, other=0.0)
        tl.store(qr_ptr + dst, (qe * cos - qo * sin).to(out_dtype), mask=mask)
        tl.store(qr_ptr + dst + 1, (qe * sin + qo * cos).to(out_dtype), mask=mask)
        tl.store(kr_ptr + dst, (ke * cos - ko * sin).to(out_dtype), mask=mask)
        tl.store(kr_ptr + dst + 1, (ke * sin + ko * cos).to(out_dtype), mask=mask)


def triton_gdn_features(
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
    """Triton :func:`world_model.ops.gdn_features` (same arguments; contiguous ``(B, H, T, S, D)`` results)."""
    from .features import _check_features_args

    _check_features_args(q, k, q_weight, k_weight, num_heads, rope)
    if q.dtype != k.dtype:
        raise ValueError(f"q and k must share a dtype, got {q.dtype} and {k.dtype}")
    b, t, s, c = q.shape
    d = c // num_heads
    outs = [torch.empty(b, num_heads, t, s, d, device=q.device, dtype=q.dtype) for _ in range(4 if rope is not None
                                                                                            else 2)]
    if rope is not None:
        table = torch.view_as_real(rope.reshape(t * s, d // 2).to(torch.complex64))  # (T*S, D/2, 2) fp32 view
        sr_n, sr_f = table.stride(0), table.stride(1)
    else:
        table, sr_n, sr_f = q_weight, 0, 0
    qw, kw = q_weight.contiguous(), k_weight.contiguous()
    _gdn_features_kernel[(b * t * s,)](
        q, k, qw, kw, table, outs[0], outs[1], outs[2 % len(outs)], outs[3 % len(outs)],
        t, s, c, num_heads, d,
        q.stride(0), q.stride(1), q.stride(2), q.stride(3), k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        sr_n, sr_f, eps, key_scale,
        BLOCK_P=triton.next_power_of_2(c // 2), HAS_ROPE=rope is not None,
        num_warps=4 if c <= 2048 else 8,
    )
    if rope is None:
        return outs[0], outs[1], None, None
    return outs[0], outs[1], outs[2], outs[3]
