"""The reference ops against literal, loop-by-loop transcriptions of the recurrences in the spec (§3),
and the fast-path dispatch."""

from __future__ import annotations

import pytest
import torch

from world_model.layers.positional import rope_freqs
from world_model.ops import (
    chunked_temporal_conv,
    fast_path,
    frame_delta_numerator,
    frame_gdn,
    gdn_features,
    register_fast_path,
    short_conv,
    unregister_fast_path,
)


def naive_gdn(q, k, v, q_rot, k_rot, beta, decay, bounds, eps, normaliser=True):
    """Per head, per frame: S <- g S; S <- S + (V - S K~) diag(b) K~^T; z <- g z; z <- z + K diag(b)(1 - K^T z).

    Forward inclusive over all frames; backward exclusive, confined to each chunk of ``bounds``.
    Tensors are (B, H, T, S, D); the spec's (D x S) matrices are their transposes.
    """
    b, h, t, s, d = q.shape
    out = torch.zeros_like(v, dtype=torch.float64)
    q, k, v, q_rot, k_rot, beta, decay = (x.double() for x in (q, k, v, q_rot, k_rot, beta, decay))

    def run(frames):
        state = torch.zeros(d, d, dtype=torch.float64)
        z = torch.zeros(d, dtype=torch.float64)
        seen = []
        for f in frames:
            g, bb = decay[bi, hi, f], beta[bi, hi, f]
            kt, kk, vv = k_rot[bi, hi, f].T, k[bi, hi, f].T, v[bi, hi, f].T  # (D, S)
            state = g * state
            z = g * z
            state = state + (vv - state @ kt) @ torch.diag(bb) @ kt.T
            z = z + kk @ torch.diag(bb) @ (1 - kk.T @ z)
            seen.append((state.clone(), z.clone()))
        return seen

    for bi in range(b):
        for hi in range(h):
            fwd = run(range(t))
            for c0, c1 in bounds:
                for f in range(c0, c1):
                    num = fwd[f][0] @ q_rot[bi, hi, f].T
                    den = fwd[f][1] @ q[bi, hi, f].T
                    later = run(range(f + 1, c1))  # frames after f inside its chunk, walked backwards
                    if later:
                        later_rev = run(range(c1 - 1, f, -1))
                        num = num + later_rev[-1][0] @ q_rot[bi, hi, f].T
                        den = den + later_rev[-1][1] @ q[bi, hi, f].T
                    out[bi, hi, f] = (num / (den + eps)).T if normaliser else num.T
    return out


def random_inputs(seed=0, b=1, h=2, t=5, s=3, d=4):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(b, h, t, s, d, generator=g)
    k = torch.rand(b, h, t, s, d, generator=g) * 0.3
    v = torch.randn(b, h, t, s, d, generator=g)
    q_rot = torch.randn(b, h, t, s, d, generator=g)
    k_rot = torch.randn(b, h, t, s, d, generator=g) * 0.3
    beta = torch.rand(b, h, t, s, generator=g)
    decay = 0.5 + 0.5 * torch.rand(b, h, t, generator=g)
    return q, k, v, q_rot, k_rot, beta, decay


@pytest.mark.parametrize("bounds", [[(0, 5)], [(0, 2), (2, 4), (4, 5)], [(0, 1), (1, 5)]])
def test_frame_gdn_matches_literal_recurrence(bounds):
    args = random_inputs()
    out, _ = frame_gdn(*args, bounds=bounds, eps=1e-6)
    ref = naive_gdn(*args, bounds, 1e-6)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_frame_gdn_state_carry_equals_one_long_forward():
    args = random_inputs(seed=1, t=6)
    full, (kv, z) = frame_gdn(*args, bounds=[], eps=1e-6)
    first = [a[:, :, :4] if a.ndim >= 3 else a for a in args]
    second = [a[:, :, 4:] for a in args]
    a, state = frame_gdn(*first, bounds=[], eps=1e-6)
    bpart, (kv2, z2) = frame_gdn(*second, bounds=[], state=state, eps=1e-6)
    torch.testing.assert_close(torch.cat([a, bpart], 2), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kv2, kv)
    torch.testing.assert_close(z2, z)


def test_camera_numerator_matches_literal_recurrence():
    q, k, v, q_rot, k_rot, beta, decay = random_inputs(seed=2)
    out, _ = frame_delta_numerator(q_rot, k_rot, v, beta, decay, bounds=[(0, 3), (3, 5)])
    ref = naive_gdn(q, k, v, q_rot, k_rot, beta, decay, [(0, 3), (3, 5)], 0.0, normaliser=False)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_short_conv_symmetric_window_and_chunk_edges():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 7, 2, 3, generator=g)
    w = torch.randn(3, 1, 4, generator=g)
    bounds = [(0, 4), (4, 7)]
    y, tail = short_conv(x, w, bounds=bounds)
    ref = torch.zeros_like(x)
    for t in range(7):
        c1 = 4 if t < 4 else 7
        for j in range(4):  # causal taps: w_j * x[t - 3 + j]
            if t - 3 + j >= 0:
                ref[:, t] += w[:, 0, j] * x[:, t - 3 + j]
        for j in range(3):  # future taps inside the chunk: w_j * x[t + 3 - j]
            if t + 3 - j < c1:
                ref[:, t] += w[:, 0, j] * x[:, t + 3 - j]
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(tail, x[:, 4:])
    # streaming: chunk 2 with the tail of chunk 1 equals the whole-clip result
    y2, _ = short_conv(x[:, 4:], w, bounds=[(0, 3)], tail=short_conv(x[:, :4], w, bounds=[(0, 4)])[1])
    torch.testing.assert_close(y2, y[:, 4:])


def test_chunked_temporal_conv_matches_conv2d_per_chunk_with_left_context():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(1, 3, 7, 5, generator=g)
    w = torch.randn(3, 3, 3, 1, generator=g)
    y, tail = chunked_temporal_conv(h, w, bounds=[(0, 7)])
    torch.testing.assert_close(y, torch.nn.functional.conv2d(h, w, padding=(1, 0)))
    y_chunks, _ = chunked_temporal_conv(h, w, bounds=[(0, 4), (4, 7)])
    right_cut = torch.nn.functional.conv2d(torch.nn.functional.pad(h[:, :, :4], (0, 0, 1, 1)), w)
    torch.testing.assert_close(y_chunks[:, :, :4], right_cut)  # chunk 0 does not see frame 4
    torch.testing.assert_close(y_chunks[:, :, 4:], y[:, :, 4:])  # chunk 1 sees frame 3 on its left
    torch.testing.assert_close(tail, h[:, :, -1:])


def test_gdn_features_norm_relu_scale_and_interleaved_rope():
    """Reference §3 steps 3-6, written out: full-channel RMSNorm, heads, ReLU, key scale, RoPE on channel pairs."""
    g = torch.Generator().manual_seed(9)
    qkv = torch.randn(2, 3, 6, 96, generator=g)
    q, k = qkv[..., :32], qkv[..., 32:64]  # strided views of one projection, as in the layer
    qw, kw = 1 + 0.2 * torch.randn(32, generator=g), 1 + 0.2 * torch.randn(32, generator=g)
    rope = rope_freqs(16, 3, 2, 3)  # (T*S, D/2) complex
    fq, fk, fqr, fkr = gdn_features(q, k, qw, kw, num_heads=2, key_scale=0.3, eps=1e-5, rope=rope)

    def literal(x, w):
        normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w
        return normed.reshape(2, 3, 6, 2, 16).permute(0, 3, 1, 2, 4).clamp_min(0)  # (B, H, T, S, D)

    def rotate(x):
        angle = rope.angle().reshape(3, 6, 8)
        cos, sin = angle.cos(), angle.sin()
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)

    torch.testing.assert_close(fq, literal(q, qw))
    torch.testing.assert_close(fk, literal(k, kw) * 0.3)
    torch.testing.assert_close(fqr, rotate(literal(q, qw)))
    torch.testing.assert_close(fkr, rotate(literal(k, kw) * 0.3))
    assert gdn_features(q, k, qw, kw, num_heads=2, key_scale=0.3, eps=1e-5)[2:] == (None, None)
    with pytest.raises(ValueError, match="num_heads"):
        gdn_features(q, k, qw, kw, num_heads=3, key_scale=0.3, eps=1e-5)
    with pytest.raises(ValueError, match="rope"):
        gdn_features(q, k, qw, kw, num_heads=2, key_scale=0.3, eps=1e-5, rope=rope[:5])


def test_bounds_must_tile_the_frames():
    with pytest.raises(ValueError, match="bounds must tile"):
        frame_gdn(*random_inputs(), bounds=[(0, 2), (3, 5)])


def test_fast_path_dispatch_and_reference_override(monkeypatch):
    calls = []

    def fake(*args, **kwargs):
        calls.append(True)
        return "fast"

    register_fast_path("frame_gdn", fake, applies=lambda q, *a, **k: q.dtype == torch.float64)
    try:
        args = random_inputs()
        assert frame_gdn(*args, bounds=[(0, 5)])[0].dtype == torch.float32  # float32: reference
        assert frame_gdn(*(a.double() for a in args), bounds=[(0, 5)]) == "fast"
        monkeypatch.setenv("SANA_WM_REFERENCE_OPS", "1")
        assert fast_path("frame_gdn", args[0].double()) is None
        assert calls == [True]
    finally:
        unregister_fast_path("frame_gdn")
