"""The Triton kernels (delta-rule scans, feature prep, short conv) against the plain-PyTorch references.

Without a GPU the kernels run on CPU tensors in the Triton interpreter. ``TRITON_INTERPRET=1`` has to be in the
environment before ``triton`` is first imported (``triton.language``'s own ``@jit`` helpers are decorated at
import, and ``import world_model`` already imports triton through ``torch._dynamo``), so ``tests/conftest.py``
sets it at the very start of the session when CUDA is unavailable; the ``kernels`` fixture imports the kernel
modules (``world_model`` itself only imports them lazily, on the first CUDA call) and skips with a reason if
interpreter mode is not in force. On a CUDA machine the same tests run the compiled kernels on the GPU, and
the ``gpu`` tests add 704x1280-sized shapes (D=112, S=880, T=13) and a model-level comparison.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import SimpleNamespace

import pytest
import torch

from world_model.ops import (
    fast_path,
    frame_delta_numerator,
    frame_gdn,
    gdn_features,
    short_conv,
)

pytestmark = [pytest.mark.slow,  # the Triton interpreter on CPU: the slow tier
              pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                 reason='triton is not installed (pip install -e ".[kernels]")')]

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
KERNEL_MODULES = {"gdn": "world_model.ops.triton_gdn", "conv": "world_model.ops.triton_conv"}
gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")


@pytest.fixture(scope="module")
def kernels() -> SimpleNamespace:
    """The kernel modules: compiled on a GPU, interpreted on CPU (see the module docstring)."""
    if not ON_GPU:
        import triton.language as tl

        if type(tl.zeros).__name__ != "InterpretedFunction":
            pytest.skip("no GPU and triton was imported without TRITON_INTERPRET=1 (tests/conftest.py sets it "
                        "unless TRITON_INTERPRET is already in the environment)")
    mods = SimpleNamespace(**{key: importlib.import_module(name) for key, name in KERNEL_MODULES.items()})
    if not ON_GPU:
        assert mods.gdn.INTERPRETED, "the kernel module was decorated outside interpreter mode"
    return mods


@pytest.fixture(autouse=True)
def public_ops_are_the_references(monkeypatch):
    """The public ops (``frame_gdn``, ...) are the references these tests compare the kernels with. On a GPU their
    dispatch would pick the very kernels under test (a kernel compared with itself), so every test here runs with
    the fast paths off; the tests of the dispatch itself turn them back on (``fast_paths_on``)."""
    monkeypatch.setenv("SANA_WM_REFERENCE_OPS", "1")


@pytest.fixture
def fast_paths_on(monkeypatch):
    monkeypatch.delenv("SANA_WM_REFERENCE_OPS")


def scan_inputs(seed=0, b=2, h=2, t=7, s=10, d=16, device=DEVICE):
    """Post-ReLU-like queries/keys (keys small, as after the key scale), gates in their real ranges."""
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(b, h, t, s, d, generator=g)
    k = torch.rand(b, h, t, s, d, generator=g) * 0.3
    v = torch.randn(b, h, t, s, d, generator=g)
    q_rot = torch.randn(b, h, t, s, d, generator=g)
    k_rot = torch.randn(b, h, t, s, d, generator=g) * 0.3
    beta = torch.rand(b, h, t, s, generator=g)
    decay = 0.5 + 0.5 * torch.rand(b, h, t, generator=g)
    return [x.to(device) for x in (q, k, v, q_rot, k_rot, beta, decay)]


def carried_state(seed=1, b=2, h=2, d=16, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, d, d, generator=g).to(device) * 0.1, torch.rand(b, h, 1, d, generator=g).to(device))


def close(actual, expected, tol=1e-4):
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)


# -- scans ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [16, 12])  # 12: the head dim is padded to a 16-wide tile
@pytest.mark.parametrize("bounds", [[(0, 7)], [(0, 4), (4, 7)], []], ids=["bidirectional", "chunk_causal", "forward"])
def test_frame_gdn_kernel_matches_reference(kernels, d, bounds):
    args = scan_inputs(d=d)
    out, (kv, z) = kernels.gdn.triton_frame_gdn(*args, bounds=bounds, eps=1e-6)
    ref, (kv_ref, z_ref) = frame_gdn(*args, bounds=bounds, eps=1e-6)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    close(out, ref)
    close(kv, kv_ref)
    close(z, z_ref)


@pytest.mark.parametrize("bounds", [[], [(0, 3)]], ids=["forward", "streaming_chunk"])
def test_frame_gdn_kernel_carries_state(kernels, bounds):
    args = [a[:, :, :3] for a in scan_inputs(seed=2)]
    state = carried_state()
    out, (kv, z) = kernels.gdn.triton_frame_gdn(*args, bounds=bounds, state=state)
    ref, (kv_ref, z_ref) = frame_gdn(*args, bounds=bounds, state=state)
    close(out, ref)
    close(kv, kv_ref)
    close(z, z_ref)


def test_streaming_halves_equal_one_forward_scan(kernels):
    args = scan_inputs(seed=3, t=6)
    full, (kv, z) = kernels.gdn.triton_frame_gdn(*args, bounds=[])
    first, state = kernels.gdn.triton_frame_gdn(*(a[:, :, :4] for a in args), bounds=[])
    second, (kv2, z2) = kernels.gdn.triton_frame_gdn(*(a[:, :, 4:] for a in args), bounds=[], state=state)
    close(torch.cat([first, second], 2), full, tol=1e-5)
    close(kv2, kv, tol=1e-5)
    close(z2, z, tol=1e-5)


def test_scan_tiles_tokens_beyond_one_tile(kernels):
    args = scan_inputs(seed=4, b=1, h=1, t=3, s=70, d=12)  # S = 64 + 6: two token tiles, the second masked
    out, _ = kernels.gdn.triton_frame_gdn(*args, bounds=[(0, 2), (2, 3)])
    ref, _ = frame_gdn(*args, bounds=[(0, 2), (2, 3)])
    close(out, ref)


@pytest.mark.parametrize("bounds", [[(0, 4), (4, 7)], []])
def test_numerator_kernel_matches_reference(kernels, bounds):
    _, _, v, q_rot, k_rot, beta, decay = scan_inputs(seed=5)
    state = carried_state()[0]
    out, kv = kernels.gdn.triton_frame_delta_numerator(q_rot, k_rot, v, beta, decay, bounds=bounds, state=state)
    ref, kv_ref = frame_delta_numerator(q_rot, k_rot, v, beta, decay, bounds=bounds, state=state)
    close(out, ref)
    close(kv, kv_ref)


def test_scan_kernel_takes_strided_half_precision_inputs(kernels):
    """bf16 (B, T, S, H, D) tensors seen as (B, H, T, S, D) views, as the layer passes them: fp32 inside."""
    args = scan_inputs(seed=6)
    args = [a.bfloat16() for a in args]
    args[2] = args[2].permute(0, 2, 3, 1, 4).contiguous().permute(0, 3, 1, 2, 4)  # v: a non-contiguous view
    out, (kv, _) = kernels.gdn.triton_frame_gdn(*args, bounds=[(0, 4), (4, 7)], precision="ieee")
    ref, (kv_ref, _) = frame_gdn(*args, bounds=[(0, 4), (4, 7)])
    assert out.dtype == torch.bfloat16 and kv.dtype == torch.float32
    close(out, ref, tol=2e-2)  # one bf16 rounding of the output (toward zero in the interpreter)
    close(kv, kv_ref)


def test_default_scan_precision_follows_the_input_dtype(kernels, monkeypatch):
    """No precision given: bf16 dots for bf16 inputs, tf32 for fp16, and for fp32 what torch's float32 matmul
    precision allows; $SANA_WM_SCAN_PRECISION overrides."""
    monkeypatch.delenv("SANA_WM_SCAN_PRECISION", raising=False)
    args = scan_inputs(seed=8)
    scan = kernels.gdn.triton_frame_gdn

    def same(inputs, precision):
        out, (kv, _) = scan(*inputs, bounds=[(0, 7)])
        want, (kv_want, _) = scan(*inputs, bounds=[(0, 7)], precision=precision)
        return torch.equal(out, want) and torch.equal(kv, kv_want)

    assert [kernels.gdn.default_precision(d) for d in (torch.bfloat16, torch.float16)] == ["bf16", "tf32"]
    assert same([a.bfloat16() for a in args], "bf16")
    assert same([a.half() for a in args], "tf32")
    old = torch.get_float32_matmul_precision()
    try:
        assert kernels.gdn.default_precision(torch.float32) == "ieee" and same(args, "ieee")
        torch.set_float32_matmul_precision("high")
        assert kernels.gdn.default_precision(torch.float32) == "tf32" and same(args, "tf32")
    finally:
        torch.set_float32_matmul_precision(old)
    monkeypatch.setenv("SANA_WM_SCAN_PRECISION", "ieee")
    assert same([a.bfloat16() for a in args], "ieee")


def test_scan_precision_modes(kernels):
    """The reduced-precision dot modes run and stay near the fp32 result."""
    _, _, v, q_rot, k_rot, beta, decay = scan_inputs(seed=7)
    ref, _ = frame_delta_numerator(q_rot, k_rot, v, beta, decay, bounds=[(0, 7)])
    for precision, tol in (("tf32", 5e-3), ("bf16", 5e-2)):
        out, _ = kernels.gdn.triton_frame_delta_numerator(q_rot, k_rot, v, beta, decay, bounds=[(0, 7)],
                                                          precision=precision)
        assert (out - ref).abs().max() <= tol * ref.abs().max(), precision
    with pytest.raises(ValueError, match="precision"):
        kernels.gdn.triton_frame_delta_numerator(q_rot, k_rot, v, beta, decay, bounds=[], precision="fp8")


def test_scan_kernel_rejects_bad_input(kernels):
    args = scan_inputs(seed=8)
    with pytest.raises(ValueError, match="bounds must tile"):
        kernels.gdn.triton_frame_gdn(*args, bounds=[(0, 3), (4, 7)])
    with pytest.raises(ValueError, match="beta"):
        kernels.gdn.triton_frame_gdn(*args[:5], args[5][:, :, :3], args[6], bounds=[])
    with pytest.raises(ValueError, match="state"):
        kernels.gdn.triton_frame_delta_numerator(*args[3:5], args[2], *args[5:], bounds=[],
                                                 state=torch.zeros(2, 2, 16, 12, device=DEVICE))


# -- feature prep ----------------------------------------------------------------------------------
def feature_inputs(dtype, head_dim, heads=2, t=3, hw=(2, 3), seed=9):
    from world_model.layers.positional import rope_freqs

    g = torch.Generator().manual_seed(seed)
    c = heads * head_dim
    qkv = torch.randn(2, t, hw[0] * hw[1], 3 * c, generator=g)
    weights = [1 + 0.2 * torch.randn(c, generator=g) for _ in range(2)]
    q, k = qkv[..., :c], qkv[..., c : 2 * c]  # strided views of one qkv projection, as in the layer
    rope = rope_freqs(head_dim, t, *hw)
    return [x.to(DEVICE, dtype) for x in (q, k, *weights)] + [rope.to(DEVICE)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 12])
@pytest.mark.parametrize("with_rope", [True, False], ids=["rope", "camera"])
def test_features_kernel_matches_reference(kernels, dtype, head_dim, with_rope):
    q, k, qw, kw, rope = feature_inputs(dtype, head_dim)
    kwargs = dict(num_heads=2, key_scale=0.3, eps=1e-5, rope=rope if with_rope else None)
    out = kernels.gdn.triton_gdn_features(q, k, qw, kw, **kwargs)
    ref = gdn_features(q, k, qw, kw, **kwargs)
    assert (out[2] is None) == (not with_rope)
    for a, b in zip(out, ref):
        if b is None:
            continue
        assert a.shape == b.shape and a.dtype == b.dtype
        # fp32: summation order only. bf16: the kernel rounds at the same points, but the interpreter (triton
        # 3.9) rounds fp32 -> bf16 toward zero where torch rounds to nearest: one step per rounding, two for
        # the rotated copies (2 * 2^-8 relative)
        atol, rtol = (1e-6, 1e-6) if dtype == torch.float32 else (1e-2, 2**-6)
        torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol)


# -- short conv ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bounds", [[(0, 7)], [(0, 4), (4, 7)], []], ids=["bidirectional", "chunk_causal", "causal"])
@pytest.mark.parametrize("tail_len", [None, 3, 1, 5])  # 1: zero-padded short tail; 5: longer than k-1
def test_short_conv_kernel_matches_reference(kernels, bounds, tail_len):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 7, 10, 24, generator=g).to(DEVICE)
    w = torch.randn(24, 1, 4, generator=g).to(DEVICE)
    tail = None if tail_len is None else torch.randn(2, tail_len, 10, 24, generator=g).to(DEVICE)
    y, new_tail = kernels.conv.triton_short_conv(x, w, bounds=bounds, tail=tail)
    ref, ref_tail = short_conv(x, w, bounds=bounds, tail=tail)
    close(y, ref, tol=1e-5)
    assert torch.equal(new_tail, ref_tail)


def test_short_conv_kernel_short_chunk_and_half_precision(kernels):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 2, 5, 20, generator=g).to(DEVICE)  # fewer frames than k-1: the new tail mixes the old
    w = torch.randn(20, 1, 4, generator=g).to(DEVICE)
    tail = torch.randn(1, 3, 5, 20, generator=g).to(DEVICE)
    y, new_tail = kernels.conv.triton_short_conv(x, w, bounds=[(0, 2)], tail=tail)
    ref, ref_tail = short_conv(x, w, bounds=[(0, 2)], tail=tail)
    close(y, ref, tol=1e-5)
    assert torch.equal(new_tail, ref_tail)
    # bf16: accumulated in fp32, so within one bf16 rounding of the fp32 result on the same bf16 inputs
    xb, wb, tb = x.bfloat16(), w.bfloat16(), tail.bfloat16()
    yb, _ = kernels.conv.triton_short_conv(xb, wb, bounds=[(0, 2)], tail=tb)
    exact, _ = short_conv(xb.float(), wb.float(), bounds=[(0, 2)], tail=tb.float())
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), exact, atol=1e-2, rtol=8e-3)


# -- dispatch ------------------------------------------------------------------------------------
def test_dispatcher_keeps_the_references_for_cpu_tensors(fast_paths_on):
    args = scan_inputs(device="cpu")
    q, k, v, q_rot, k_rot, beta, decay = args
    assert fast_path("frame_gdn", *args, bounds=[(0, 7)], state=None, eps=1e-8) is None
    assert fast_path("frame_delta_numerator", q_rot, k_rot, v, beta, decay, bounds=[], state=None) is None
    fq, fk, qw, kw, rope = (x.cpu() for x in feature_inputs(torch.float32, 16))
    assert fast_path("gdn_features", fq, fk, qw, kw, num_heads=2, key_scale=0.3, eps=1e-5, rope=rope) is None
    x = torch.randn(1, 4, 3, 8)
    assert fast_path("short_conv", x, torch.randn(8, 1, 4), bounds=[(0, 4)], tail=None) is None


@gpu
def test_dispatcher_picks_the_kernels_for_cuda_tensors_without_grad(fast_paths_on):
    args = scan_inputs(device="cuda")
    with torch.no_grad():
        assert fast_path("frame_gdn", *args, bounds=[(0, 7)], state=None, eps=1e-8) is not None
        x, w = torch.randn(1, 4, 3, 8, device="cuda"), torch.randn(8, 1, 4, device="cuda")
        assert fast_path("short_conv", x, w, bounds=[(0, 4)], tail=None) is not None
    w.requires_grad_(True)
    assert fast_path("short_conv", x, w, bounds=[(0, 4)], tail=None) is None  # training keeps the reference


# -- torch.library custom ops (what the fast paths call) ------------------------------------------------------
def _op_cases():
    q, k, v, q_rot, k_rot, beta, decay = scan_inputs(seed=13, b=1, h=2, t=3, s=5, d=16)
    kv0, z0 = carried_state(b=1, h=2, d=16)
    fq, fk, qw, kw, rope = feature_inputs(torch.float32, 16, t=3, hw=(1, 5))
    x, w = torch.randn(1, 3, 5, 8, device=DEVICE), torch.randn(8, 1, 4, device=DEVICE)
    ops = torch.ops.sana_wm
    return [
        (ops.frame_gdn.default, (q, k, v, q_rot, k_rot, beta, decay, [0, 2, 2, 3], kv0, z0, 1e-8)),
        (ops.frame_delta_numerator.default, (q_rot, k_rot, v, beta, decay, [], kv0)),
        (ops.gdn_features.default, (fq, fk, qw, kw, 2, 0.3, 1e-5, rope)),
        (ops.short_conv.default, (x, w, [0, 3], torch.randn(1, 2, 5, 8, device=DEVICE))),
    ]


@pytest.mark.parametrize("case", range(4), ids=["frame_gdn", "numerator", "gdn_features", "short_conv"])
def test_custom_ops_pass_opcheck(kernels, case):
    """Schemas, fake (shape-only) implementations and aot tracing agree with the real kernels."""
    op, args = _op_cases()[case]
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_fast_paths_trace_as_one_graph(kernels):
    """torch.compile sees each fast path as one node: a GDN-like chain of all four traces without a graph break."""
    from world_model.layers.positional import rope_freqs
    from world_model.ops import triton_paths as tp

    _, _, v, _, _, beta, decay = scan_inputs(seed=14, b=1, h=2, t=3, s=5, d=16)
    g = torch.Generator().manual_seed(14)
    q, k = (torch.randn(1, 3, 5, 32, generator=g).to(DEVICE) for _ in range(2))  # 2 heads of 16
    w, ones = torch.randn(32, 1, 4, generator=g).to(DEVICE), torch.ones(32, device=DEVICE)
    rope = rope_freqs(16, 3, 1, 5, device=DEVICE)

    def step(q, k, v, beta, decay, w):
        k, _ = tp._short_conv_fast(k, w, bounds=[(0, 2), (2, 3)])
        fq, fk, fqr, fkr = tp._features_fast(q, k, ones, ones, num_heads=2, key_scale=0.3, eps=1e-5, rope=rope)
        out, (kv, _) = tp._frame_gdn_fast(fq, fk, v, fqr, fkr, beta, decay, bounds=[(0, 2), (2, 3)])
        cam, _ = tp._numerator_fast(fqr, fkr, v, beta, decay, bounds=[], state=kv)
        return out + cam

    args = (q, k, v, beta, decay, w)
    explanation = torch._dynamo.explain(step)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch.testing.assert_close(torch.compile(step, backend="eager", fullgraph=True)(*args), step(*args))


# -- GPU: 704x1280-like shapes (D=112, S=22*40=880, T=13) ----------------------------------------
@gpu
@pytest.mark.parametrize("bounds", [[(0, 13)], [(0, 4), (4, 7), (7, 10), (10, 13)], []])
def test_gpu_scans_at_full_resolution_shapes(kernels, bounds):
    b, h, t, s, d = 1, 2, 13, 880, 112
    args = scan_inputs(seed=12, b=b, h=h, t=t, s=s, d=d)
    args[1] = args[1] * (d * s) ** -0.5 / 0.3  # keys at the real key scale
    args[4] = args[4] * (d * s) ** -0.5 / 0.3
    state = carried_state(b=b, h=h, d=d) if not bounds else None
    out, (kv, z) = kernels.gdn.triton_frame_gdn(*args, bounds=bounds, state=state)
    ref, (kv_ref, z_ref) = frame_gdn(*args, bounds=bounds, state=state)
    close(out, ref, tol=1e-3)
    close(kv, kv_ref, tol=1e-3)
    close(z, z_ref, tol=1e-3)
    cam, cam_kv = kernels.gdn.triton_frame_delta_numerator(*args[3:5], args[2], *args[5:], bounds=bounds)
    cam_ref, cam_kv_ref = frame_delta_numerator(*args[3:5], args[2], *args[5:], bounds=bounds)
    close(cam, cam_ref, tol=1e-3)
    close(cam_kv, cam_kv_ref, tol=1e-3)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_features_and_conv_at_full_resolution_shapes(kernels, dtype):
    q, k, qw, kw, rope = feature_inputs(dtype, 112, heads=2, t=13, hw=(22, 40))
    out = kernels.gdn.triton_gdn_features(q, k, qw, kw, num_heads=2, key_scale=(112 * 880) ** -0.5, eps=1e-5,
                                          rope=rope)
    ref = gdn_features(q, k, qw, kw, num_heads=2, key_scale=(112 * 880) ** -0.5, eps=1e-5, rope=rope)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for a, r in zip(out, ref):
        torch.testing.assert_close(a.float(), r.float(), atol=tol * r.abs().max().item(), rtol=tol)
    x = torch.randn(1, 13, 880, 224, device="cuda", dtype=dtype)
    w = torch.randn(224, 1, 4, device="cuda", dtype=dtype)
    y, tail = kernels.conv.triton_short_conv(x, w, bounds=[(0, 4), (4, 7), (7, 10), (10, 13)])
    exact, exact_tail = short_conv(x.float(), w.float(), bounds=[(0, 4), (4, 7), (7, 10), (10, 13)])
    torch.testing.assert_close(y.float(), exact, atol=tol * 4, rtol=tol)
    assert torch.equal(tail.float(), exact_tail)


@gpu
def test_gpu_model_with_kernels_matches_reference_ops(fast_paths_on, monkeypatch):
    """A whole tiny model on CUDA: fast paths on vs ``SANA_WM_REFERENCE_OPS=1``."""
    from world_model.camera import CameraInputs
    from world_model.config import PRESETS
    from world_model.transformer import SanaWMTransformer

    torch.manual_seed(0)
    model = SanaWMTransformer(PRESETS["tiny-text"]).eval()
    with torch.no_grad():
        for p in model.parameters():  # move every gate and zero-initialised camera path off its init
            p.add_(0.05 * torch.randn_like(p))
    model = model.cuda()
    frames = 7
    cond = torch.zeros(1, frames, 20)
    cond[:, :, :16] = torch.eye(4).flatten()
    cond[:, :, 11] = torch.arange(frames) * 0.2  # move forward along +z
    cond[:, :, 16:] = torch.tensor([4.0, 4.0, 2.0, 2.0])
    camera = CameraInputs(cond.cuda(), torch.randn(1, 48, frames, 4, 4, device="cuda"))
    x = torch.randn(1, 16, frames, 4, 4, device="cuda")
    t = torch.full((1, frames), 500.0, device="cuda")
    with torch.no_grad():
        fast = model(x, t, camera=camera, mode="chunk_causal")
        monkeypatch.setenv("SANA_WM_REFERENCE_OPS", "1")
        ref = model(x, t, camera=camera, mode="chunk_causal")
    torch.testing.assert_close(fast, ref, atol=1e-3, rtol=1e-3)
