"""Self-attention of a SANA-WM block: frame-wise GDN or softmax, each with its UCPE camera branch.

Both variants share one parameter layout (so one checkpoint format covers them); softmax blocks have
no short convolutions and keep the unused GDN gate parameters (docs/architecture.md#backbone). The block output is
``proj(silu(output_gate(x)) * (main + out_proj_cam(camera)))``.

Structure of a call (:class:`AttentionContext`): ``bounds`` are the chunks of the frames in this call
(``[(0, T)]`` bidirectional, the chunk grid for chunk-causal, one chunk when streaming). A streaming call
also receives the state carried from earlier chunks and may return the updated state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import (
    fast_path,
    frame_delta_numerator,
    frame_gdn,
    gdn_features,
    short_conv,
    softmax_attention,
)
from ..ops.attention import chunk_causal_attention
from .common import RMSNorm
from .positional import apply_rope, downscale_to_reference_rms, ucpe_apply

OUTPUT_GATE_BIAS = 1.278464542761074  # silu(b) == 1: the gate starts as identity


@dataclass(frozen=True)
class CameraTransforms:
    """Per-token UCPE matrices ``P``, ``P^T``, ``P^-1`` ``(B, T, S, 4, 4)`` and the camera RoPE table."""

    P: torch.Tensor
    P_T: torch.Tensor
    P_inv: torch.Tensor
    freqs: torch.Tensor


@dataclass(frozen=True)
class AttentionContext:
    """What a block call needs besides its input. Only tensors and call-invariant structure: no chunk counters,
    so a compiled streaming step sees the same context for every chunk of the same shape."""

    bounds: Sequence[tuple[int, int]]
    rope: torch.Tensor  # (T*S, D/2) complex
    camera: CameraTransforms | None
    causal: bool  # chunk-causal mask in softmax blocks (ignored when streaming)
    streaming: bool


@dataclass(frozen=True)
class GDNState:
    kv: torch.Tensor
    z: torch.Tensor
    conv_tail: torch.Tensor
    cam_kv: torch.Tensor | None = None
    cam_conv_tail: torch.Tensor | None = None


@dataclass(frozen=True)
class SoftmaxChunk:
    """The K/V one streaming call adds to a softmax block's cache (``(B, H, N, D)`` each; camera ones or None).

    Blocks return this; :func:`retain_softmax_cache` merges it into the block's :class:`SoftmaxState`."""

    keys: torch.Tensor
    values: torch.Tensor
    cam_keys: torch.Tensor | None = None
    cam_values: torch.Tensor | None = None


@dataclass(frozen=True)
class SoftmaxState:
    """Cached post-RoPE K/V and post-UCPE camera K/V of the retained chunks (each ``(B, H, N_c, D)``)."""

    chunk_ids: tuple[int, ...]
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    cam_keys: tuple[torch.Tensor, ...] = ()
    cam_values: tuple[torch.Tensor, ...] = ()


class TemporalShortConv(nn.Module):
    """Depthwise temporal conv (weight ``(C, 1, k)``, identity init) with the chunk structure of :func:`short_conv`."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        weight = torch.zeros(channels, 1, kernel_size)
        weight[:, 0, -1] = 1.0
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor, bounds, tail: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return short_conv(x, self.weight, bounds=bounds, tail=tail)


class SelfAttention(nn.Module):
    """Shared parameters of the GDN and softmax self-attention with the UCPE camera branch."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        *,
        softmax: bool,
        conv_kernel_size: int = 4,
        eps: float = 1e-8,
        ucpe_rms_renorm: bool = False,
        cam_softmax_scale: str = "head_dim",
    ) -> None:
        super().__init__()
        c = hidden_size
        self.softmax = softmax
        self.num_heads = c // head_dim
        self.head_dim = head_dim
        self.eps = eps
        self.ucpe_rms_renorm = ucpe_rms_renorm
        self.cam_softmax_scale = cam_softmax_scale
        self.qkv = nn.Linear(c, 3 * c, bias=False)
        self.proj = nn.Linear(c, c)
        self.q_norm = RMSNorm(c, eps=1e-5)
        self.k_norm = RMSNorm(c, eps=1e-5)
        self.beta_proj = nn.Linear(c, self.num_heads)
        self.gate_proj = nn.Linear(c, self.num_heads)
        self.A_log = nn.Parameter(torch.zeros(self.num_heads))
        self.dt_bias = nn.Parameter(torch.full((self.num_heads,), -5.0))
        self.register_buffer("recall_gate", torch.zeros(1))
        self.output_gate = nn.Linear(c, c)
        self.conv_k = None if softmax or conv_kernel_size == 0 else TemporalShortConv(c, conv_kernel_size)
        self.q_proj_cam = nn.Linear(c, c)
        self.k_proj_cam = nn.Linear(c, c)
        self.v_proj_cam = nn.Linear(c, c)
        self.out_proj_cam = nn.Linear(c, c)
        self.q_norm_cam = RMSNorm(c, eps=1e-5)
        self.k_norm_cam = RMSNorm(c, eps=1e-5)
        self.conv_k_cam = None if softmax or conv_kernel_size == 0 else TemporalShortConv(c, conv_kernel_size)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Upstream init: linear-attention-equivalent gates, identity output gate, zero camera residual."""
        nn.init.zeros_(self.beta_proj.weight)
        nn.init.constant_(self.beta_proj.bias, 5.0)
        nn.init.zeros_(self.gate_proj.weight)
        nn.init.zeros_(self.gate_proj.bias)
        self.A_log.zero_()
        self.dt_bias.fill_(-5.0)
        nn.init.zeros_(self.output_gate.weight)
        nn.init.constant_(self.output_gate.bias, OUTPUT_GATE_BIAS)
        nn.init.zeros_(self.out_proj_cam.weight)
        nn.init.zeros_(self.out_proj_cam.bias)
        c = self.qkv.in_features
        for i, lin in enumerate((self.q_proj_cam, self.k_proj_cam, self.v_proj_cam)):  # init_cam_from_base
            lin.weight.copy_(self.qkv.weight[i * c : (i + 1) * c])
            nn.init.zeros_(lin.bias)

    # -- helpers -----------------------------------------------------------------------------
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, S, C) -> (B, H, T, S, D)``."""
        b, t, s, _ = x.shape
        return x.reshape(b, t, s, self.num_heads, self.head_dim).permute(0, 3, 1, 2, 4)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, T, S, D) -> (B, T, S, C)``."""
        b, h, t, s, d = x.shape
        return x.permute(0, 2, 3, 1, 4).reshape(b, t, s, h * d)

    def _ucpe_inputs(self, q, k, v, cam: CameraTransforms):
        qu = ucpe_apply(q, cam.P_T, cam.freqs)
        ku = ucpe_apply(k, cam.P_inv, cam.freqs)
        vu = ucpe_apply(v, cam.P_inv, cam.freqs)
        if self.ucpe_rms_renorm:
            qu, ku, vu = (downscale_to_reference_rms(a, b) for a, b in ((q, qu), (k, ku), (v, vu)))
        return qu, ku, vu

    def _cam_qkv(self, x: torch.Tensor):
        return self.q_proj_cam(x), self.k_proj_cam(x), self.v_proj_cam(x)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, state=None, write_state: bool = False):
        """``x (B, T, S, C)`` -> ``(out (B, T, S, C), new_state or None)``.

        Streaming inference on a CPU runs the ``stream_attention`` fast path when registered
        (:func:`.stream_cpu.attention_forward`: same maths, fewer ops)."""
        lean = fast_path("stream_attention", self, x, ctx)
        if lean is not None:
            return lean(self, x, ctx, state, write_state)
        if self.softmax:
            main, cam, new_state = self._softmax_forward(x, ctx, state, write_state)
        else:
            main, cam, new_state = self._gdn_forward(x, ctx, state, write_state)
        if cam is not None:
            main = main + self.out_proj_cam(cam)
        gated = main.float() * F.silu(self.output_gate(x).float())
        return self.proj(gated.to(x.dtype)), new_state

    # -- GDN ------------------------------------------------------------------------------------
    def _gdn_forward(self, x, ctx: AttentionContext, state: GDNState | None, write_state: bool):
        b, t, s, c = x.shape
        beta = torch.sigmoid(self.beta_proj(x)).permute(0, 3, 1, 2)  # (B, H, T, S)
        gate = self.gate_proj(x.mean(dim=2)).float()  # (B, T, H)
        decay = torch.exp(-self.A_log.float().exp() * F.softplus(gate + self.dt_bias.float())).transpose(1, 2)
        key_scale = (self.head_dim * s) ** -0.5

        q, k, v = self.qkv(x).chunk(3, dim=-1)
        k_tail = None
        if self.conv_k is not None:
            k, k_tail = self.conv_k(k, ctx.bounds, None if state is None else state.conv_tail)
        q, k, q_rot, k_rot = gdn_features(
            q, k, self.q_norm.weight, self.k_norm.weight, num_heads=self.num_heads, key_scale=key_scale,
            eps=self.q_norm.eps, rope=ctx.rope,
        )
        v = self._heads(v)
        bounds = ctx.bounds
        main, (kv, z) = frame_gdn(
            q, k, v, q_rot, k_rot, beta, decay, bounds=bounds,
            state=None if state is None else (state.kv, state.z), eps=self.eps,
        )
        main = self._merge(main)

        cam_out, cam_kv, kc_tail = None, None, None
        if ctx.camera is not None:
            qc, kc, vc = self._cam_qkv(x)
            if self.conv_k_cam is not None:
                kc, kc_tail = self.conv_k_cam(kc, ctx.bounds, None if state is None else state.cam_conv_tail)
            qc, kc, _, _ = gdn_features(
                qc, kc, self.q_norm_cam.weight, self.k_norm_cam.weight, num_heads=self.num_heads,
                key_scale=key_scale, eps=self.q_norm_cam.eps,
            )
            vc = self._heads(vc)
            pre_norm = torch.linalg.vector_norm(kc, dim=-1).clamp_min(1e-6)
            qu, ku, vu = self._ucpe_inputs(qc, kc, vc, ctx.camera)
            # Dynamic beta discount: UCPE inflates key norms; shrink beta by the frame's mean inflation.
            inflation = (torch.linalg.vector_norm(ku, dim=-1).clamp_min(1e-6) / pre_norm).square().mean(-1)
            beta_cam = beta / inflation.clamp_min(1.0).unsqueeze(-1)
            cam_out, cam_kv = frame_delta_numerator(
                qu, ku, vu, beta_cam, decay, bounds=bounds, state=None if state is None else state.cam_kv
            )
            cam_out = self._merge(ucpe_apply(cam_out, ctx.camera.P, ctx.camera.freqs, inverse_rope=True))

        new_state = GDNState(kv, z, k_tail, cam_kv, kc_tail) if write_state else None
        return main, cam_out, new_state

    # -- softmax --------------------------------------------------------------------------------
    def _softmax_forward(self, x, ctx: AttentionContext, state: SoftmaxState | None, write_state: bool):
        b, t, s, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        rope = ctx.rope.reshape(t, s, -1)
        q = apply_rope(self._heads(self.q_norm(q)), rope).flatten(2, 3)  # (B, H, N, D)
        k = apply_rope(self._heads(self.k_norm(k)), rope).flatten(2, 3)
        v = self._heads(v).flatten(2, 3).contiguous()  # cached: a view would keep the whole qkv output alive
        chunked = not ctx.streaming and ctx.causal and len(ctx.bounds) > 1
        if ctx.streaming:
            keys, values = self._with_cache(k, v, state, "keys", "values")
        else:
            keys, values = k, v
        main = self._attend(q, keys, values, ctx, s, chunked, self.head_dim**-0.5)
        main = main.transpose(1, 2).reshape(b, t, s, c)

        cam_out, kc_u, vc_u = None, None, None
        if ctx.camera is not None:
            qc, kc, vc = self._cam_qkv(x)
            qc, kc, vc = self._heads(self.q_norm_cam(qc)), self._heads(self.k_norm_cam(kc)), self._heads(vc)
            qu, ku, vu = (a.flatten(2, 3) for a in self._ucpe_inputs(qc, kc, vc, ctx.camera))
            kc_u, vc_u = ku, vu
            if ctx.streaming:
                ku, vu = self._with_cache(ku, vu, state, "cam_keys", "cam_values")
            cam = self._attend(qu, ku, vu, ctx, s, chunked, self._cam_scale())
            cam = cam.reshape(b, self.num_heads, t, s, self.head_dim)
            cam_out = self._merge(ucpe_apply(cam, ctx.camera.P, ctx.camera.freqs, inverse_rope=True))

        new_state = SoftmaxChunk(k, v, kc_u, vc_u) if write_state else None
        return main, cam_out, new_state

    @staticmethod
    def _attend(q, k, v, ctx: AttentionContext, tokens_per_frame: int, chunked: bool, scale: float) -> torch.Tensor:
        if chunked:  # chunk-causal over several chunks: per-chunk calls, no (N, N) mask
            return chunk_causal_attention(q, k, v, bounds=ctx.bounds, tokens_per_frame=tokens_per_frame, scale=scale)
        return softmax_attention(q, k, v, scale=scale)

    def _cam_scale(self) -> float:
        d = self.head_dim
        if self.cam_softmax_scale == "padded" and d not in (32, 64, 128, 256) and d < 256:
            return (128 if d <= 128 else 256) ** -0.5
        return d**-0.5

    @staticmethod
    def _with_cache(k, v, state: SoftmaxState | None, key_field: str, value_field: str):
        if state is None or not getattr(state, key_field):
            return k, v
        keys = torch.cat([*getattr(state, key_field), k], dim=2)
        values = torch.cat([*getattr(state, value_field), v], dim=2)
        return keys, values


def retain_softmax_cache(
    state: SoftmaxState | None, chunk: SoftmaxChunk, chunk_index: int, sink_chunks: int, window_chunks: int | None
) -> SoftmaxState:
    """Append chunk ``chunk_index``'s K/V to the cache; keep the sink chunks plus the most recent window.

    Chunks with index ``< sink_chunks`` are kept for ever, others while among the last ``window_chunks`` (``None``:
    keep all). The retained size is therefore bounded by sink + window, whatever the video length.
    """
    old = state or SoftmaxState(chunk_ids=(), keys=(), values=())
    ids = (*old.chunk_ids, chunk_index)
    entries = [
        (*old.keys, chunk.keys),
        (*old.values, chunk.values),
        (*old.cam_keys, chunk.cam_keys) if chunk.cam_keys is not None else old.cam_keys,
        (*old.cam_values, chunk.cam_values) if chunk.cam_values is not None else old.cam_values,
    ]
    keep = [
        i for i, cid in enumerate(ids)
        if cid < sink_chunks or window_chunks is None or cid >= chunk_index + 1 - window_chunks
    ]
    pick = lambda seq: tuple(seq[i] for i in keep) if len(seq) == len(ids) else tuple(seq)  # noqa: E731
    return SoftmaxState(tuple(ids[i] for i in keep), *(pick(e) for e in entries))
