"""GPU fast paths that can be checked on CPU: head-dim padding for flash attention, chunk-causal attention without
an (N, N) mask, and torch.compile of the streaming step (traced with the "eager" backend: same ops, no inductor)."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from world_model.codecs.patch import PatchCodec
from world_model.config import PRESETS
from world_model.generators import StreamingGenerator
from world_model.ops.attention import (
    _padding_applies,
    chunk_causal_attention,
    chunk_causal_mask,
    padded_head_dim,
    sdpa_padded_head_dim,
    softmax_attention,
)
from world_model.ops.dispatch import fast_path
from world_model.transformer import SanaWMTransformer


def qkv(d: int, n: int = 30, m: int | None = None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    m = n if m is None else m
    return (torch.randn(2, 3, n, d, generator=gen), torch.randn(2, 3, m, d, generator=gen),
            torch.randn(2, 3, m, d, generator=gen))


def test_padded_head_dim():
    assert [padded_head_dim(d) for d in (20, 32, 48, 64, 112, 128, 200, 256, 320)] == [
        32, 32, 64, 64, 128, 128, 256, 256, 320]
    with pytest.raises(ValueError, match="head_dim"):
        padded_head_dim(0)


@pytest.mark.parametrize("d", [112, 48, 20])
@pytest.mark.parametrize("mask_kind", ["none", "chunk_causal", "random"])
def test_padded_sdpa_equals_unpadded_with_the_unpadded_scale(d, mask_kind):
    q, k, v = qkv(d)
    mask = None
    if mask_kind == "chunk_causal":
        mask = chunk_causal_mask([(0, 4), (4, 7), (7, 10)], 3)
    elif mask_kind == "random":
        mask = torch.rand(30, 30, generator=torch.Generator().manual_seed(3)) > 0.5
        mask[:, 0] = True  # every query sees at least one key
    out = sdpa_padded_head_dim(q, k, v, mask=mask, scale=d**-0.5)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=d**-0.5)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    # no scale given: the unpadded head dim's, as SDPA's default on the unpadded inputs
    torch.testing.assert_close(sdpa_padded_head_dim(q, k, v, mask=mask), ref, atol=2e-6, rtol=1e-5)
    # what the explicit scale prevents: SDPA's default on padded inputs uses the padded dim
    padded = [F.pad(a, (0, padded_head_dim(d) - d)) for a in (q, k, v)]
    wrong = F.scaled_dot_product_attention(*padded, attn_mask=mask)[..., :d]
    assert (wrong - ref).abs().max() > 1e-3


def test_padding_fast_path_applies_only_to_cuda_half_precision_non_flash_dims():
    def fake(d, dtype=torch.bfloat16, cuda=True):
        return types.SimpleNamespace(is_cuda=cuda, dtype=dtype, shape=(1, 20, 880, d))

    assert _padding_applies(fake(112), fake(112), fake(112))
    assert not _padding_applies(fake(128), fake(128), fake(128))  # already a flash size
    assert not _padding_applies(fake(112, torch.float32), fake(112), fake(112))
    assert not _padding_applies(fake(112, cuda=False), fake(112), fake(112))
    q, k, v = qkv(112)
    assert fast_path("softmax_attention", q, k, v) is None  # CPU: the plain SDPA reference runs


def test_chunk_causal_attention_equals_the_masked_reference():
    bounds, s = [(0, 4), (4, 7), (7, 10)], 3
    q, k, v = qkv(48)
    out = chunk_causal_attention(q, k, v, bounds=bounds, tokens_per_frame=s, scale=0.2)
    ref = softmax_attention(q, k, v, mask=chunk_causal_mask(bounds, s), scale=0.2)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="bounds must tile"):
        chunk_causal_attention(q, k, v, bounds=[(0, 4), (4, 9)], tokens_per_frame=s)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_softmax_attention_pads_112_and_matches_fp32():
    q, k, v = (a.cuda() for a in qkv(112, n=256))
    ref = F.scaled_dot_product_attention(q, k, v, scale=112**-0.5)
    qb, kb, vb = (a.bfloat16() for a in (q, k, v))
    assert fast_path("softmax_attention", qb, kb, vb, scale=112**-0.5) is sdpa_padded_head_dim
    out = softmax_attention(qb, kb, vb, scale=112**-0.5)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


# -- torch.compile of the streaming step -------------------------------------------------------------------------
def _model() -> SanaWMTransformer:
    torch.manual_seed(0)
    model = SanaWMTransformer(PRESETS["tiny-notext"].replace(depth=2, softmax_every_n=2)).eval()  # GDN + softmax
    with torch.no_grad():  # wake up the zero-initialised camera / temporal paths
        for name, p in model.named_parameters():
            if "cam" in name or "plucker" in name or "t_conv" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model


def _path(n: int, start: int) -> torch.Tensor:
    poses = torch.eye(4).repeat(1, n, 1, 1)
    poses[:, :, 2, 3] = torch.arange(start, start + n).float() * 0.1
    poses[:, :, 0, 3] = torch.arange(start, start + n).float() * 0.03
    return poses


@pytest.mark.parametrize("reference_ops", ["0", "1"])  # on CPU: the lean streaming path, then the reference layers
def test_compiled_streaming_generator_equals_eager_over_several_chunks(one_thread, monkeypatch, reference_ops):
    monkeypatch.setenv("SANA_WM_REFERENCE_OPS", reference_ops)
    codec = PatchCodec(patch_size=2, temporal_stride=1)
    eager = StreamingGenerator(_model(), codec)
    compiled = StreamingGenerator(_model(), codec, compile="reduce-overhead", compile_backend="eager")
    assert compiled.transformer.stream_compile == {"mode": "reduce-overhead", "backend": "eager",
                                                   "fullgraph": False, "dynamic": False}
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    k = torch.tensor([16.0, 16.0, 8.0, 8.0])
    sa, sb = eager.start(image, k, seed=3), compiled.start(image, k, seed=3)
    done = 1
    for _ in range(4):  # chunk 0 (4 frames), chunk 1 (cache filling), then the fixed-shape steady state
        n = eager.frames_per_step(sa)
        a, sa = eager.step(sa, _path(n, done))
        b, sb = compiled.step(sb, _path(n, done))
        assert torch.equal(a, b)
        done += n
    for x, y in zip(sa.cache.tensors(), sb.cache.tensors(), strict=True):
        assert torch.equal(x, y)
    assert sa.cache.nbytes() == sb.cache.nbytes()
    compiled.transformer.compile_streaming(None)
    assert compiled.transformer.stream_compile is None
    with pytest.raises(ValueError, match="mode must be one of"):
        compiled.transformer.compile_streaming("fast")


def test_streaming_block_stack_traces_as_one_graph(one_thread):
    model = _model()
    cache = model.new_cache()
    cam_t = 4
    from world_model.camera import CameraInputs

    cond = torch.zeros(1, cam_t, 20)
    cond[:, :, :16] = torch.eye(4).flatten()
    cond[:, :, 16:] = torch.tensor([8.0, 8.0, 4.0, 4.0])
    camera = CameraInputs(cond, torch.randn(1, 6, cam_t, 8, 8))
    calls = []
    original = model._block_stack

    def spy(*args):
        calls.append(args)
        return original(*args)

    model._block_stack = spy
    with torch.no_grad():
        model.forward_stream(torch.randn(1, 12, cam_t, 8, 8), torch.zeros(1, cam_t), cache=cache, camera=camera)
    explanation = torch._dynamo.explain(original)(*calls[0])
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_compiled_streaming_matches_eager_and_forks_safely():
    """Inductor + CUDA graphs on the GPU: frames match eager, and a forked state replays to the same frames.

    CUDA-graph replays reuse their output memory, so a state kept from an earlier step (``imagine()``, vector-env
    resets) must not be overwritten by later replays."""
    codec = PatchCodec(patch_size=2, temporal_stride=1)
    eager = StreamingGenerator(_model().cuda(), codec)
    compiled = StreamingGenerator(_model().cuda(), codec, compile="reduce-overhead")
    assert compiled.transformer.stream_compile["backend"] == "inductor"
    image = (torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1).cuda()
    k = torch.tensor([16.0, 16.0, 8.0, 8.0])
    sa, sb = eager.start(image, k, seed=3), compiled.start(image, k, seed=3)
    done, fork, fork_done = 1, None, None
    for i in range(7):  # chunk 0, the filling chunks, then CUDA-graph replays of the fixed-shape steps
        if i == 4:
            fork, fork_done = sb, done
        n = eager.frames_per_step(sa)
        a, sa = eager.step(sa, _path(n, done))
        b, sb = compiled.step(sb, _path(n, done))
        torch.testing.assert_close(b, a, atol=2e-3, rtol=2e-3)
        done += n
    last = b.clone()
    state, done = fork, fork_done
    for _ in range(3):  # the forked state replays the last three steps exactly
        n = compiled.frames_per_step(state)
        frames, state = compiled.step(state, _path(n, done))
        done += n
    assert torch.equal(frames, last)
