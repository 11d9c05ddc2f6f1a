"""Lean CPU forward of one streaming chunk: the same maths as the reference layers, in fewer and larger ops.

Why: a streaming step of a small model on a CPU is bound by per-op overhead, not arithmetic. The reference
layers (:mod:`.attention`, :mod:`.ffn`) run ~1,200 ATen calls per GDN block for a one-frame chunk of 64 tokens;
this path runs about a fifth of that:

- one matmul for every projection that reads the block input (``qkv``, ``output_gate``, ``beta_proj``,
  ``gate_proj`` and the camera ``q/k/v``; ``gate_proj`` of the frame mean is the frame mean of the projection);
- activations stay channels-last ``(B, T, S, H, D)``; UCPE 4-vector transforms are one ``bmm`` per tensor over
  tokens; RMSNorm is ``F.rms_norm``;
- the delta-rule update ``S W + U`` is applied without forming ``W``:
  ``S_new = g S + ((V - g K S^T) * beta)^T K`` (identical algebra, (S x D) products instead of (D x D));
- the FFN's temporal conv is one matmul over a ``k``-frame window;
- what depends only on a chunk's cached tails (the short conv's and, for one-frame chunks, the temporal conv's
  taps on earlier frames) and the Plücker residual are computed once per chunk, not once per pass: a chunk's
  denoising passes and its cache pass read the same cache (:func:`_per_chunk`).

It applies only to streaming calls (one chunk, ``ctx.streaming``) of float32 CPU modules with plain
``nn.Linear`` projections, outside autograd; ``compile_streaming`` on a CPU compiles this path. Everything else
(training, bidirectional and chunk-causal forwards, CUDA with its Triton kernels, quantized models) uses the
reference layers. The layers reach this path only through :mod:`world_model.ops.dispatch` (the fast paths
registered at the end of this module, on import by the transformer), so ``SANA_WM_REFERENCE_OPS=1`` turns it off
like every other fast path. Caches written by either path are interchangeable; ``tests/test_stream_cpu.py``
compares the two. Measured against the reference layers, eager and compiled: docs/benchmarks.md.

What it keeps between calls lives in one store per module, scoped to one chunk: the fused weights and the parts
that depend only on a chunk's cached tails. :func:`begin_chunk` (the transformer calls it before every streaming
call) starts a new store whenever the call's :class:`~world_model.cache.StreamCache` is another object than the
previous call's, i.e. at every new chunk: a chunk's passes all read the cache they were given, and a new chunk
reads the weights and tails as they are then. So weight updates (optimizer steps, ``load_state_dict``, ``.to()``,
in-place edits) take effect from the next chunk on; caches are values: edit a copy, not a cache being streamed.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cache import StreamCache
from ..ops.conv import left_context
from ..ops.dispatch import register_fast_path
from ..ops.features import apply_rope
from .attention import AttentionContext, GDNState, SelfAttention, SoftmaxChunk
from .positional import downscale_to_reference_rms

_STORE = "_stream_cpu_store"  # module attribute: {"cache": weakref, "fused": {name: tensors}, "memo": {...}}


def lean_applies(x: torch.Tensor, streaming: bool = True) -> bool:
    """Whether this path may replace the reference layers for a call on ``x`` (``SANA_WM_REFERENCE_OPS=1`` is
    checked by the dispatch)."""
    return streaming and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()


def _owners(blocks: nn.ModuleList):
    for block in blocks:
        yield block.attn
        yield block.mlp
        if getattr(block, "plucker_proj", None) is not None:
            yield block.plucker_proj


def begin_chunk(blocks: nn.ModuleList, cache: StreamCache, camera: bool, *, compiled: bool) -> None:
    """Before a streaming call on ``cache``: keep the stores of ``blocks`` if the previous call had the very same
    cache object (another pass over the same chunk), else start new ones. A ``compiled`` step reads its fused
    weights without checks: they are rebuilt here, eagerly, into the same tensors (so the graph is not
    retraced), for the call ``camera`` or not. With classifier-free guidance the conditional and unconditional
    caches alternate: each switch starts a new store, which is correct but forgoes the per-chunk reuse."""
    new_chunk = False
    for owner in _owners(blocks):
        store = owner.__dict__.get(_STORE)
        if store is None or store["cache"]() is not cache:
            fused = {} if store is None else store["fused"]
            owner.__dict__[_STORE] = {"cache": weakref.ref(cache), "fused": fused if compiled else {}, "memo": {},
                                      "stale": set(fused) if compiled else set()}
            new_chunk = True
    if compiled and new_chunk:
        prepare(blocks, camera)


def prepare(blocks: nn.ModuleList, camera: bool) -> None:
    """Build (eagerly) every fused weight the lean path of ``blocks`` will read with or without a ``camera``."""
    for block in blocks:
        attn = block.attn
        if attention_lean_ok(attn):
            _projection(attn, (_SOFTMAX_ROWS if attn.softmax else _GDN_ROWS)[camera])
            if not attn.softmax:
                _pair_weights(attn, 2 if camera else 1)
        _temporal_weight(block.mlp.t_conv.weight, block.mlp)


def _fused(module: nn.Module, name: str, build) -> tuple[torch.Tensor, ...]:
    """``build()`` (contiguous, no autograd), kept in ``module``'s store for the rest of the chunk.

    A compiled step reads the store without checks (checks would break the graph); :func:`begin_chunk` has
    refreshed it. Entries carried over from an earlier chunk of a compiled model are rebuilt into the same tensors
    when first read eagerly in a new chunk (``stale``). Without a store (the layers called on their own) nothing is
    kept."""
    store = module.__dict__.get(_STORE)
    if torch.compiler.is_compiling():
        hit = None if store is None else store["fused"].get(name)
        return hit if hit is not None else tuple(t.contiguous() for t in build())
    hit = None if store is None else store["fused"].get(name)
    if hit is not None and name not in store["stale"]:
        return hit
    with torch.no_grad():
        value = tuple(t.contiguous() for t in build())
    if store is None:
        return value
    if hit is not None and _refreshable(hit, value):
        for old, new in zip(hit, value, strict=True):
            old.copy_(new)
        value = hit
    store["fused"][name] = value
    store["stale"].discard(name)
    return value


def _refreshable(old: tuple[torch.Tensor, ...], new: tuple[torch.Tensor, ...]) -> bool:
    """Whether ``new`` can be copied into ``old`` (same layout; inference tensors only inside inference mode)."""
    return len(old) == len(new) and all(
        o.shape == n.shape and o.dtype == n.dtype and o.device == n.device
        and (not o.is_inference() or torch.is_inference_mode_enabled())
        for o, n in zip(old, new, strict=True))


def _per_chunk(owner: nn.Module, name: str, sources: tuple[torch.Tensor, ...], build) -> torch.Tensor:
    """``build()`` memoised in ``owner``'s store (so for one chunk) while ``sources`` are the very same tensors.

    Why: a chunk's denoising passes and its cache pass all read the same cached tails, so what depends on a tail
    and the weights only is computed once per chunk instead of once per pass. Not memoised under
    ``torch.compile`` or without a store."""
    store = owner.__dict__.get(_STORE)
    if torch.compiler.is_compiling() or store is None:
        return build()
    memo = store["memo"].get(name)
    if memo is not None and len(memo[0]) == len(sources) and all(
            ref() is src for ref, src in zip(memo[0], sources, strict=True)):
        return memo[1]
    value = build()
    store["memo"][name] = (tuple(weakref.ref(src) for src in sources), value)
    return value


def chunk_constant_linear(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` for an input that stays the same object through a chunk's passes (the per-chunk Plücker
    embedding, :meth:`SanaWMTransformer._positional_context`): computed once per chunk for a plain ``nn.Linear``."""
    if type(linear) is not nn.Linear:
        return linear(x)
    return _per_chunk(linear, "output", (x,), lambda: linear(x))


# -- attention --------------------------------------------------------------------------------------------
# Row order of the fused input projection. GDN blocks keep each main/camera pair adjacent (q|qc, v|vc, k|kc) so
# the pair is normalised, convolved and transformed by single ops; softmax blocks need q, k, v and the gate only.
_GDN_ROWS = {True: ("q", "qc", "v", "vc", "og", "beta", "gate", "k", "kc"),
             False: ("q", "v", "og", "beta", "gate", "k")}
_SOFTMAX_ROWS = {True: ("q", "k", "v", "og", "qc", "kc", "vc"), False: ("q", "k", "v", "og")}


def _projection(attn: SelfAttention, rows: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """One ``(weight, bias)`` for the named projections, and each name's first output column."""
    c = attn.qkv.in_features
    linears = {"og": attn.output_gate, "beta": attn.beta_proj, "gate": attn.gate_proj, "qc": attn.q_proj_cam,
               "kc": attn.k_proj_cam, "vc": attn.v_proj_cam}
    qkv = {"q": 0, "k": 1, "v": 2}

    def piece(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name in qkv:
            w = attn.qkv.weight[qkv[name] * c : (qkv[name] + 1) * c]
            return w, w.new_zeros(c)
        return linears[name].weight, linears[name].bias

    weight, bias = _fused(attn, "proj:" + ",".join(rows),
                          lambda: [torch.cat(parts) for parts in zip(*(piece(n) for n in rows), strict=True)])
    offsets, at = {}, 0
    for n in rows:
        offsets[n] = at
        at += attn.num_heads if n in ("beta", "gate") else c
    return weight, bias, offsets


def _short_conv(x: torch.Tensor, kernel: torch.Tensor, tails: tuple[torch.Tensor, ...], owner: nn.Module,
                need_tail: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`world_model.ops.short_conv` for one chunk: ``x (B, T, S, C)``, kernel ``(C, 1, k)`` (the fused one,
    :func:`_pair_weights`), ``tails``: the cached tails ``(B, <=k-1, S, C_i)`` of earlier frames whose channels
    concatenate to ``C`` (empty: none). The future taps (offset ``o`` reads ``x[f + o]`` with weight ``w[k-1-o]``)
    stop at the chunk end, so a one-frame chunk has none. The tails' part of the sum is computed once per chunk
    (:func:`_per_chunk`). Accumulates in place: short reductions over a tap axis are far slower on CPU than a few
    multiply-adds. Returns ``(y, new tail or None unless need_tail)``."""
    t = x.shape[1]
    k = kernel.shape[-1]
    w = kernel[:, 0, :]
    y = x * w[:, k - 1]
    for o in range(1, min(k, t)):
        y[:, o:].addcmul_(x[:, : t - o], w[:, k - 1 - o])  # past frames inside the chunk
        y[:, : t - o].addcmul_(x[:, o:], w[:, k - 1 - o])  # future frames inside the chunk
    if tails:
        m = min(t, k - 1)

        def tail_part() -> torch.Tensor:  # (B, m, S, C): sum over the taps that read cached frames
            past = left_context(x[:, :0], _joined(tails), k - 1, dim=1)  # (B, k-1, S, C), zero-padded if short
            return torch.stack([sum(past[:, f + j] * w[:, j] for j in range(k - 1 - f)) for f in range(m)], dim=1)

        y[:, :m].add_(_per_chunk(owner, "short_conv", (*tails, kernel), tail_part))
    if not need_tail:
        return y, None
    new_tail = left_context(x, _joined(tails) if tails else None, k - 1, dim=1)[:, t:]
    return y, new_tail.clone(memory_format=torch.contiguous_format)  # same strides whatever T (no recompiles)


def _joined(tails: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return tails[0] if len(tails) == 1 else torch.cat(tails, dim=-1)


def _ucpe(x: torch.Tensor, mats: torch.Tensor, freqs: torch.Tensor | None, *, inverse_rope: bool = False):
    """:func:`~.positional.ucpe_apply` channels-last: ``x (B, T, S, H, D)``; every 4-vector ``u`` of the first D/2
    channels becomes ``M u`` with its token's ``mats (B*T*S, 4, 4)``; ``freqs (T, S, 1, D/4)`` rotate the rest."""
    b, t, s, h, d = x.shape
    half = d // 2
    projected = torch.bmm(x[..., :half].reshape(b * t * s, h * half // 4, 4), mats.transpose(1, 2))
    projected = projected.view(b, t, s, h, half)
    rotated = x[..., half:]
    if freqs is not None:
        rotated = apply_rope(rotated, freqs, inverse=inverse_rope)
    return torch.cat([projected, rotated], dim=-1)


def _per_head(x: torch.Tensor) -> torch.Tensor:
    """``(B, T, S, H, D) -> (B*H, T, S, D)`` contiguous."""
    b, t, s, h, d = x.shape
    return x.permute(0, 3, 1, 2, 4).reshape(b * h, t, s, d)


def _delta_update(state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor | None, beta: torch.Tensor,
                  decay: torch.Tensor) -> torch.Tensor:
    """``state W + U`` of one frame without forming ``W``: ``state (N, R, Dk)``, ``keys (N, S, Dk)``, ``values
    (N, S, R)`` (``None``: all ones, the normaliser row), ``beta (N, S, 1)``, ``decay (N, 1, 1)``."""
    predicted = torch.bmm(keys, state.transpose(1, 2)) * decay  # (N, S, R)
    residual = (1.0 - predicted if values is None else values - predicted) * beta
    return torch.baddbmm(state * decay, residual.transpose(1, 2), keys)


def _scan_chunk(keys, values, beta, decay, state: torch.Tensor):
    """Forward (inclusive, from ``state``) plus exclusive backward scan inside one chunk.

    ``keys (N, T, S, Dk)``, ``values (N, T, S, R)`` or ``None``, ``beta (N, T, S)``, ``decay (N, T)``,
    ``state (N, R, Dk)``. Returns ``(per-frame effective states [T x (N, R, Dk)], final forward state)``.
    """
    t = keys.shape[1]
    frame = [(keys[:, i], None if values is None else values[:, i], beta[:, i, :, None], decay[:, i, None, None])
             for i in range(t)]
    forward = []
    for i in range(t):
        state = _delta_update(state, *frame[i])
        forward.append(state)
    effective = list(forward)
    back = torch.zeros_like(state) if t > 1 else None
    for i in range(t - 2, -1, -1):
        back = _delta_update(back, *frame[i + 1])
        effective[i] = effective[i] + back
    return effective, state


def _read(queries: torch.Tensor, states: list[torch.Tensor]) -> torch.Tensor:
    """``queries (N, T, S, Dk)`` against per-frame ``states [T x (N, R, Dk)]`` -> ``(N, T, S, R)``."""
    if len(states) == 1:
        return torch.bmm(queries[:, 0], states[0].transpose(1, 2)).unsqueeze(1)
    return torch.stack([torch.bmm(queries[:, i], st.transpose(1, 2)) for i, st in enumerate(states)], dim=1)


def attention_forward(attn: SelfAttention, x: torch.Tensor, ctx: AttentionContext, state, write_state: bool):
    """Lean equivalent of ``SelfAttention.forward`` for one streaming chunk; same return values."""
    b, t, s, c = x.shape
    cam = ctx.camera
    rows = (_SOFTMAX_ROWS if attn.softmax else _GDN_ROWS)[cam is not None]
    weight, bias, at = _projection(attn, rows)
    y = F.linear(x, weight, bias)
    branch = _softmax_branch if attn.softmax else _gdn_branch
    main, cam_out, new_state = branch(attn, y, at, (b, t, s, c), ctx, state, write_state)
    if cam_out is not None:
        main = torch.addmm(attn.out_proj_cam.bias, cam_out.reshape(-1, c), attn.out_proj_cam.weight.t(),
                           ).view(b, t, s, c).add_(main)
    gated = main * F.silu(y[..., at["og"] : at["og"] + c])
    return attn.proj(gated), new_state


def _camera_matrices(cam, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """UCPE per token (``(n, 4, 4)`` each): q by ``P^T``, k and v by ``P^-1``, the output by ``P``."""
    m_out = cam.P.reshape(n, 4, 4)
    return m_out.transpose(1, 2), cam.P_inv.reshape(n, 4, 4), m_out


def _softmax_branch(attn: SelfAttention, y, at, shape, ctx: AttentionContext, state, write_state: bool):
    b, t, s, c = shape
    h, d = attn.num_heads, attn.head_dim
    cam = ctx.camera
    rope = ctx.rope.reshape(t, s, 1, d // 2)

    def norm(name: str, rms: nn.Module) -> torch.Tensor:
        return F.rms_norm(y[..., at[name] : at[name] + c], (c,), rms.weight, rms.eps).view(b, t, s, h, d)

    def heads(a: torch.Tensor) -> torch.Tensor:
        """``(B, T, S, H, D) -> (B, H, N, D)``, a compact copy: K/V are cached, and a view would keep the whole
        fused projection output alive with them."""
        return a.permute(0, 3, 1, 2, 4).reshape(b, h, t * s, d).contiguous()

    q, k = heads(apply_rope(norm("q", attn.q_norm), rope)), heads(apply_rope(norm("k", attn.k_norm), rope))
    v = heads(y[..., at["v"] : at["v"] + c].reshape(b, t, s, h, d))
    keys, values = attn._with_cache(k, v, state, "keys", "values")
    main = F.scaled_dot_product_attention(q, keys, values, scale=d**-0.5).transpose(1, 2).reshape(b, t, s, c)
    cam_out = kc_u = vc_u = None
    if cam is not None:
        m_q, m_kv, m_out = _camera_matrices(cam, b * t * s)
        freqs = cam.freqs.reshape(t, s, 1, d // 4)
        qc, kc = norm("qc", attn.q_norm_cam), norm("kc", attn.k_norm_cam)
        vc = y[..., at["vc"] : at["vc"] + c].reshape(b, t, s, h, d)
        qu, kc_u, vc_u = _ucpe(qc, m_q, freqs), _ucpe(kc, m_kv, freqs), _ucpe(vc, m_kv, freqs)
        if attn.ucpe_rms_renorm:
            qu, kc_u, vc_u = (downscale_to_reference_rms(a, u) for a, u in ((qc, qu), (kc, kc_u), (vc, vc_u)))
        qu, kc_u, vc_u = heads(qu), heads(kc_u), heads(vc_u)
        ku, vu = attn._with_cache(kc_u, vc_u, state, "cam_keys", "cam_values")
        out = F.scaled_dot_product_attention(qu, ku, vu, scale=attn._cam_scale())
        out = out.view(b, h, t, s, d).permute(0, 2, 3, 1, 4)
        cam_out = _ucpe(out, m_out, freqs, inverse_rope=True).reshape(b, t, s, c)
    return main, cam_out, SoftmaxChunk(k, v, kc_u, vc_u) if write_state else None


def _pair_weights(attn: SelfAttention, pair: int) -> tuple[torch.Tensor, ...]:
    """Short-conv kernel ``(pair*C, 1, k)`` (or an empty tensor without convs) and RMSNorm weights ``(pair, C)``
    of q and k: main first, then the camera branch."""
    convs = [] if attn.conv_k is None else [attn.conv_k.weight, attn.conv_k_cam.weight][:pair]
    q_w = [attn.q_norm.weight, attn.q_norm_cam.weight][:pair]
    k_w = [attn.k_norm.weight, attn.k_norm_cam.weight][:pair]
    return _fused(attn, f"pair{pair}", lambda: (
        torch.cat(convs) if convs else q_w[0].new_zeros(0), torch.stack(q_w), torch.stack(k_w)))


def _gdn_branch(attn: SelfAttention, y, at, shape, ctx: AttentionContext, state, write_state: bool):
    b, t, s, c = shape
    h, d = attn.num_heads, attn.head_dim
    cam = ctx.camera
    pair = 1 if cam is None else 2
    kernel, q_weight, k_weight = _pair_weights(attn, pair)
    beta = torch.sigmoid(y[..., at["beta"] : at["beta"] + h])  # (B, T, S, H)
    gate = y[..., at["gate"] : at["gate"] + h].mean(dim=2)  # (B, T, H)
    decay = torch.exp(-attn.A_log.exp() * F.softplus(gate + attn.dt_bias))
    beta_h = beta.permute(0, 3, 1, 2).reshape(b * h, t, s)
    decay_h = decay.transpose(1, 2).reshape(b * h, t)

    keys, tails = y[..., at["k"] : at["k"] + pair * c], None
    if attn.conv_k is not None:
        cached = () if state is None else (state.conv_tail, state.cam_conv_tail)[:pair]
        keys, tails = _short_conv(keys, kernel, cached, attn, need_tail=write_state)
    # q = relu(rms_norm(q) w), k = relu(rms_norm(k) w) * (D S)^-1/2, main and camera halves in one pass each
    queries = F.rms_norm(y[..., at["q"] : at["q"] + pair * c].reshape(b, t, s, pair, c), (c,), None,
                         attn.q_norm.eps).mul_(q_weight).relu_()
    keys = F.rms_norm(keys.reshape(b, t, s, pair, c), (c,), None, attn.q_norm.eps).mul_(
        k_weight * (d * s) ** -0.5).relu_()
    values = y[..., at["v"] : at["v"] + pair * c].reshape(b, t, s, pair, c)

    rope = ctx.rope.reshape(t, s, 1, d // 2)
    qn, kn = queries[..., 0, :].reshape(b, t, s, h, d), keys[..., 0, :].reshape(b, t, s, h, d)
    kv0 = y.new_zeros(b * h, d, d) if state is None else state.kv.reshape(b * h, d, d)
    z0 = y.new_zeros(b * h, 1, d) if state is None else state.z.reshape(b * h, 1, d)
    kv_states, kv = _scan_chunk(_per_head(apply_rope(kn, rope)),
                                _per_head(values[..., 0, :].reshape(b, t, s, h, d)), beta_h, decay_h, kv0)
    z_states, z = _scan_chunk(_per_head(kn), None, beta_h, decay_h, z0)
    out = _read(_per_head(apply_rope(qn, rope)), kv_states) / (_read(_per_head(qn), z_states) + attn.eps)
    main = out.view(b, h, t, s, d).permute(0, 2, 3, 1, 4).reshape(b, t, s, c)

    cam_out = cam_kv = None
    if cam is not None:
        n = b * t * s
        m_q, m_kv, m_out = _camera_matrices(cam, n)
        freqs = cam.freqs.reshape(t, s, 1, d // 4)
        pre_norm = torch.linalg.vector_norm(keys[..., 1, :].reshape(b, t, s, h, d), dim=-1).clamp_min(1e-6)
        raw = torch.stack([queries[..., 1, :], keys[..., 1, :], values[..., 1, :]]).view(3 * b, t, s, h, d)
        u = _ucpe(raw, torch.stack([m_q, m_kv, m_kv]).view(3 * n, 4, 4), freqs)  # q | k | v as 3B "batches"
        if attn.ucpe_rms_renorm:
            u = downscale_to_reference_rms(raw, u)
        u = u.view(3, b, t, s, h, d)
        # dynamic beta discount: UCPE inflates key norms; shrink beta by the frame's mean inflation
        inflation = (torch.linalg.vector_norm(u[1], dim=-1).clamp_min(1e-6) / pre_norm).square().mean(2)  # (B,T,H)
        beta_cam = beta_h / inflation.clamp_min(1.0).transpose(1, 2).reshape(b * h, t, 1)
        u = u.permute(0, 1, 4, 2, 3, 5).reshape(3, b * h, t, s, d)
        ck0 = y.new_zeros(b * h, d, d) if state is None or state.cam_kv is None else state.cam_kv.reshape(
            b * h, d, d)
        cam_states, cam_kv = _scan_chunk(u[1], u[2], beta_cam, decay_h, ck0)
        out = _read(u[0], cam_states).view(b, h, t, s, d).permute(0, 2, 3, 1, 4)
        cam_out = _ucpe(out, m_out, freqs, inverse_rope=True).reshape(b, t, s, c)
        cam_kv = cam_kv.view(b, h, d, d)
    new_state = None
    if write_state:
        k_tail = kc_tail = None
        if tails is not None:
            k_tail = tails[..., :c].clone(memory_format=torch.contiguous_format) if pair == 2 else tails
            kc_tail = tails[..., c:].clone(memory_format=torch.contiguous_format) if pair == 2 else None
        new_state = GDNState(kv.view(b, h, d, d), z.view(b, h, 1, d), k_tail, cam_kv, kc_tail)
    return main, cam_out, new_state


def attention_lean_ok(attn: SelfAttention) -> bool:
    """Structural check: plain linears only (quantizers swap in other classes), one RMSNorm eps for both branches
    (the lean GDN path normalises them together)."""
    lins = [attn.qkv, attn.proj, attn.output_gate, attn.beta_proj, attn.gate_proj, attn.q_proj_cam, attn.k_proj_cam,
            attn.v_proj_cam, attn.out_proj_cam]
    return all(type(m) is nn.Linear for m in lins) and attn.q_norm.eps == attn.q_norm_cam.eps


# -- FFN --------------------------------------------------------------------------------------------------
def _temporal_weight(weight: torch.Tensor, owner: nn.Module) -> torch.Tensor:
    """``t_conv.weight (C, C, k, 1)`` as ``(C, k*C)``, taps frame-major, cached on ``owner``."""
    return _fused(owner, "t_conv", lambda: (weight[..., 0].permute(0, 2, 1).reshape(weight.shape[0], -1),))[0]


def temporal_residual(y: torch.Tensor, weight: torch.Tensor, tail: torch.Tensor | None, owner: nn.Module):
    """``y + chunked_temporal_conv(y)`` for one streaming chunk, channels-last: ``y (B, T, S, C)``, ``weight
    (C, C, k, 1)`` (cached as ``(C, k*C)`` on ``owner``), ``tail`` in the reference layout ``(B, C, pad, S)``.

    One matmul over each frame's k-frame window replaces the per-chunk ``conv2d`` (and its permutes). A one-frame
    chunk has no future taps and its past taps read only the cached tail: their part is computed once per chunk
    (:func:`_per_chunk`) and the pass multiplies by the centre tap alone. Returns ``(y + conv, new tail (B, C,
    pad, S))`` like the FFN's reference path."""
    b, t, s, c = y.shape
    k = weight.shape[2]
    pad = (k - 1) // 2
    frame_major = _temporal_weight(weight, owner)
    tail_cl = None if tail is None else tail.permute(0, 2, 3, 1)  # (B, pad, S, C)
    if t == 1:
        rows = y.reshape(-1, c)
        base = rows
        if tail is not None and pad > 0:

            def past_part() -> torch.Tensor:
                past = left_context(y[:, :0], tail_cl, pad, dim=1)  # (B, pad, S, C)
                window = past.permute(0, 2, 1, 3).reshape(b * s, pad * c)  # taps frame-major
                return torch.mm(window, frame_major[:, : pad * c].t())

            base = rows + _per_chunk(owner, "t_conv_past", (tail, frame_major), past_part)
        out = torch.addmm(base, rows, frame_major[:, pad * c : (pad + 1) * c].t()).view(b, t, s, c)
        new_tail = y if pad == 1 else left_context(y, tail_cl, pad, dim=1)[:, t:]
        return out, new_tail.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
    past = left_context(y, tail_cl, pad, dim=1)  # (B, pad + T, S, C)
    full = F.pad(past, (0, 0, 0, 0, 0, pad))  # future frames past the chunk end are zeros
    window = full.unfold(1, k, 1).transpose(-1, -2).reshape(b * t * s, k * c)  # taps frame-major
    out = torch.addmm(y.reshape(-1, c), window, frame_major.t()).view(b, t, s, c)
    return out, full[:, t : t + pad].permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


# -- dispatch ---------------------------------------------------------------------------------------------
def _attention_applies(attn: SelfAttention, x: torch.Tensor, ctx: AttentionContext, *args) -> bool:
    return lean_applies(x, ctx.streaming) and attention_lean_ok(attn)


register_fast_path("stream_attention", attention_forward, _attention_applies)
register_fast_path("stream_temporal_residual", temporal_residual, lambda y, *args: lean_applies(y))
register_fast_path("stream_chunk_constant_linear", chunk_constant_linear, lambda linear, x: lean_applies(x))
register_fast_path("stream_begin_chunk", begin_chunk, lambda x: lean_applies(x))
