"""The lean CPU streaming path (world_model/layers/stream_cpu.py, dispatched through world_model.ops.dispatch)
against the reference layers.

Every parameter is randomised (the zero-initialised camera residual, temporal conv and gates included) and the
cameras rotate and translate, so every branch of both paths contributes to the outputs being compared.
"""

from __future__ import annotations

import ast
import collections
import copy
import dataclasses
import inspect

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from world_model.camera import CameraInputs
from world_model.config import PRESETS
from world_model.ops import dispatch
from world_model.transformer import SanaWMTransformer

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int = 0, **changes) -> SanaWMTransformer:
    model = SanaWMTransformer(PRESETS["tiny-notext"].replace(**changes)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "norm" in name else 0.0
            p.copy_(base + 0.15 * torch.randn(p.shape, generator=gen))
    return model


def _camera(b: int, t: int, hw: tuple[int, int], channels: int, seed: int = 5) -> CameraInputs:
    rng = np.random.default_rng(seed)
    cond = torch.zeros(b, t, 20)
    for i in range(b):
        rot = Rotation.from_rotvec(rng.normal(scale=0.3, size=(t, 3))).as_matrix()
        pose = np.tile(np.eye(4), (t, 1, 1))
        pose[:, :3, :3] = rot
        pose[:, :3, 3] = rng.normal(scale=0.5, size=(t, 3))
        cond[i, :, :16] = torch.as_tensor(pose.reshape(t, 16), dtype=torch.float32)
    cond[:, :, 16:] = torch.tensor([3.0, 3.5, hw[1] / 2, hw[0] / 2])
    gen = torch.Generator().manual_seed(seed)
    return CameraInputs(cond, torch.randn(b, channels, t, *hw, generator=gen))


def _one_frame_chunks(seed: int, frames: int, timestep: float):
    """A one-frame-chunk model (first chunk 2 frames) with a clip of ``frames`` latent frames and its camera."""
    model = _model(seed=seed, chunk_size=1, first_chunk_size=2)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, model.config.in_channels, frames, 3, 3, generator=gen)
    return model, x, torch.full((1, frames), timestep), _camera(1, frames, (3, 3), model.config.plucker_channels)


def _wrap_lean(monkeypatch, wrap) -> None:
    """Replace the lean attention and FFN functions registered with the dispatch by ``wrap(key, fn)``."""
    for op, key in (("stream_attention", "attention"), ("stream_temporal_residual", "ffn")):
        entry = dispatch._FAST_PATHS[op]
        monkeypatch.setitem(dispatch._FAST_PATHS, op, dataclasses.replace(entry, fn=wrap(key, entry.fn)))


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if obj is None or isinstance(obj, (int, float, bool, str)):
        return []
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name))]


def _stream(model, x, t, cam, *, reference: bool, monkeypatch, cache=None, chunks=None):
    """Run ``x`` chunk by chunk (two denoising-style calls and one cache write per chunk); return every output
    and the caches written."""
    monkeypatch.setenv("SANA_WM_REFERENCE_OPS", "1" if reference else "0")
    cache = model.new_cache() if cache is None else cache
    outs, caches = [], []
    bounds = chunks or model.config.chunk_bounds(x.shape[2])
    with torch.no_grad():
        for c0, c1 in bounds:
            args = dict(camera=cam.slice_frames(c0, c1))
            for _ in range(2):
                out, _ = model.forward_stream(x[:, :, c0:c1], t[:, c0:c1], cache=cache, **args)
                outs.append(out)
            out, cache = model.forward_stream(x[:, :, c0:c1], torch.zeros_like(t[:, c0:c1]), cache=cache,
                                              write_cache=True, **args)
            outs.append(out)
            caches.append(cache)
    return outs, caches


@pytest.mark.parametrize("chunk_size, renorm", [(1, False), (3, False), (2, True)])
def test_lean_streaming_matches_the_reference_layers(chunk_size, renorm, monkeypatch):
    model = _model(chunk_size=chunk_size, first_chunk_size=chunk_size + 1, ucpe_rms_renorm=renorm,
                   stream_window_chunks=2)
    cfg = model.config
    frames = cfg.first_chunk_size + 4 * chunk_size  # 5 chunks: the softmax window fills and rolls
    b, hw = 2, (3, 4)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b, cfg.in_channels, frames, *hw, generator=gen)
    t = torch.randint(0, 1000, (b, frames), generator=gen).float()
    cam = _camera(b, frames, hw, cfg.plucker_channels)

    calls = {"attention": 0, "ffn": 0}

    def count(key, fn):
        return lambda *args, **kwargs: calls.update({key: calls[key] + 1}) or fn(*args, **kwargs)

    _wrap_lean(monkeypatch, count)
    ref, ref_caches = _stream(model, x, t, cam, reference=True, monkeypatch=monkeypatch)
    assert calls == {"attention": 0, "ffn": 0}
    lean, lean_caches = _stream(model, x, t, cam, reference=False, monkeypatch=monkeypatch)
    assert calls["attention"] == calls["ffn"] == cfg.depth * len(ref)  # the lean path really ran, every block

    assert min(o.abs().max() for o in ref) > 0.5
    for a, r in zip(lean, ref, strict=True):
        torch.testing.assert_close(a, r, atol=2e-5, rtol=2e-5)
    for lc, rc in zip(lean_caches, ref_caches, strict=True):  # same state: GDN, conv tails, softmax K/V
        lt, rt = _tensors(lc.blocks), _tensors(rc.blocks)
        assert len(lt) == len(rt) > 0
        for a, r in zip(lt, rt, strict=True):
            assert a.shape == r.shape
            torch.testing.assert_close(a, r, atol=2e-5, rtol=2e-5)
    # the camera branch matters: a different camera changes the lean outputs
    moved, _ = _stream(model, x, t, _camera(b, frames, hw, cfg.plucker_channels, seed=9), reference=False,
                       monkeypatch=monkeypatch)
    assert (moved[-1] - lean[-1]).abs().max() > 1e-3


def test_caches_are_interchangeable_between_the_paths(monkeypatch):
    model, x, t, cam = _one_frame_chunks(2, 4, 400.0)
    first = [(0, 2), (2, 3)]
    _, lean_caches = _stream(model, x, t, cam, reference=False, monkeypatch=monkeypatch, chunks=first)
    _, ref_caches = _stream(model, x, t, cam, reference=True, monkeypatch=monkeypatch, chunks=first)
    tail = [(3, 4)]
    a, _ = _stream(model, x, t, cam, reference=True, monkeypatch=monkeypatch, cache=lean_caches[-1], chunks=tail)
    b, _ = _stream(model, x, t, cam, reference=False, monkeypatch=monkeypatch, cache=ref_caches[-1], chunks=tail)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, atol=2e-5, rtol=2e-5)


def test_fused_weights_follow_parameter_updates(monkeypatch):
    model, x, t, cam = _one_frame_chunks(4, 2, 700.0)
    before, _ = _stream(model, x, t, cam, reference=False, monkeypatch=monkeypatch)
    with torch.no_grad():  # in place, as an optimizer step or load_state_dict would
        model.blocks[0].attn.k_proj_cam.weight.mul_(-1.5)
        model.blocks[1].mlp.t_conv.weight.add_(0.2)
    after, _ = _stream(model, x, t, cam, reference=False, monkeypatch=monkeypatch)
    ref, _ = _stream(model, x, t, cam, reference=True, monkeypatch=monkeypatch)
    assert (after[-1] - before[-1]).abs().max() > 1e-3
    torch.testing.assert_close(after[-1], ref[-1], atol=2e-5, rtol=2e-5)


def test_lean_path_stays_out_of_training_and_other_dtypes(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the lean path ran")

    _wrap_lean(monkeypatch, lambda key, fn: fail)
    monkeypatch.setenv("SANA_WM_REFERENCE_OPS", "0")
    model, x, t, cam = _one_frame_chunks(6, 2, 500.0)
    out, _ = model.forward_stream(x, t, cache=model.new_cache(), camera=cam)  # autograd on
    out.sum().backward()
    assert model.blocks[0].attn.k_proj_cam.weight.grad is not None
    with torch.no_grad():
        model.double()
        model.forward_stream(x.double(), t.double(), cache=model.new_cache(),
                             camera=CameraInputs(cam.conditions.double(), cam.plucker.double()))


def test_positional_context_is_shared_within_a_chunk_and_recomputed_when_inputs_change(monkeypatch):
    import world_model.transformer as transformer_module

    model, x, t, cam = _one_frame_chunks(7, 2, 600.0)
    calls = []
    original = transformer_module.ucpe_ray_matrices
    monkeypatch.setattr(transformer_module, "ucpe_ray_matrices", lambda *a, **k: calls.append(1) or original(*a, **k))
    cache = model.new_cache()
    with torch.no_grad():
        a, _ = model.forward_stream(x, t, cache=cache, camera=cam)
        b, _ = model.forward_stream(x, t, cache=cache, camera=cam)  # same chunk, same camera object: reused
        assert len(calls) == 1
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        cam.conditions[:, :, 3] += 0.5  # moved in place: recomputed
        c, _ = model.forward_stream(x, t, cache=cache, camera=cam)
        assert len(calls) == 2 and (c - a).abs().max() > 1e-4
        fresh = CameraInputs(cam.conditions.clone(), cam.plucker.clone())
        d, _ = model.forward_stream(x, t, cache=cache, camera=fresh)
        assert len(calls) == 3
        torch.testing.assert_close(c, d, atol=0, rtol=0)
    model.forward_stream(x, t, cache=cache, camera=fresh)  # autograd on: never reused
    assert len(calls) == 4


def test_tail_parts_are_computed_once_per_chunk_and_follow_edited_tails(monkeypatch):
    import world_model.layers.stream_cpu as stream_cpu

    model, x, t, cam = _one_frame_chunks(10, 3, 500.0)
    first, second = model.config.chunk_bounds(3)  # 2 frames, then a one-frame chunk reading cached tails
    _, (cache,) = _stream(model, x, t, cam, reference=False, monkeypatch=monkeypatch, chunks=[first])
    builds = collections.Counter()
    original = stream_cpu._per_chunk

    def counted(owner, name, sources, build):
        return original(owner, name, sources, lambda: builds.update([name]) or build())

    monkeypatch.setattr(stream_cpu, "_per_chunk", counted)
    args = dict(camera=cam.slice_frames(*second))
    xs, ts = x[:, :, second[0] : second[1]], t[:, second[0] : second[1]]
    with torch.no_grad():
        outs = [model.forward_stream(xs, ts, cache=cache, **args)[0] for _ in range(3)]
    gdn = sum(not block.attn.softmax for block in model.blocks)
    plucker = sum(block.plucker_proj is not None for block in model.blocks)
    assert gdn > 0 and plucker > 0
    # three passes over one chunk: every tail part and the Plücker projection built once, not three times
    assert builds == {"short_conv": gdn, "t_conv_past": model.config.depth, "output": plucker}
    torch.testing.assert_close(outs[0], outs[2], atol=0, rtol=0)

    with torch.no_grad():  # edited cached tails (caches are values: a new cache): rebuilt, the result follows
        edited = copy.deepcopy(cache)
        edited.blocks[0].ffn_tail.add_(0.5)
        next(b.attn for b in edited.blocks if hasattr(b.attn, "conv_tail")).conv_tail.mul_(-1.0)
        lean, _ = model.forward_stream(xs, ts, cache=copy.deepcopy(edited), **args)
    assert builds["t_conv_past"] == 2 * model.config.depth and builds["short_conv"] == 2 * gdn  # once more each
    monkeypatch.setenv("SANA_WM_REFERENCE_OPS", "1")
    with torch.no_grad():
        ref, _ = model.forward_stream(xs, ts, cache=edited, **args)
    assert (lean - outs[0]).abs().max() > 1e-3
    torch.testing.assert_close(lean, ref, atol=2e-5, rtol=2e-5)

def test_lean_path_and_context_reuse_under_inference_mode(monkeypatch):
    model, x, t, cam = _one_frame_chunks(8, 2, 300.0)
    ref, _ = _stream(model, x, t, cam, reference=True, monkeypatch=monkeypatch)
    with torch.inference_mode():
        inference_cam = CameraInputs(cam.conditions.clone(), cam.plucker.clone())  # inference tensors
        out, _ = _stream(model, x, t, inference_cam, reference=False, monkeypatch=monkeypatch)
        inference_model = _model(seed=8, chunk_size=1, first_chunk_size=2)  # inference-tensor parameters
        out2, _ = _stream(inference_model, x, t, inference_cam, reference=False, monkeypatch=monkeypatch)
    for a, b, r in zip(out, out2, ref, strict=True):
        torch.testing.assert_close(a, r, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(b, r, atol=2e-5, rtol=2e-5)


def test_lean_cache_holds_no_more_memory_than_the_reference(monkeypatch):
    model = _model(seed=9, chunk_size=1, first_chunk_size=2)
    x = torch.randn(1, model.config.in_channels, 6, 3, 3)
    cam = _camera(1, 6, (3, 3), model.config.plucker_channels)
    t = torch.full((1, 6), 200.0)
    _, lean = _stream(model, x, t, cam, reference=False, monkeypatch=monkeypatch)
    _, ref = _stream(model, x, t, cam, reference=True, monkeypatch=monkeypatch)
    assert lean[-1].nbytes() == ref[-1].nbytes() > 0


@pytest.mark.slow
def test_compiled_lean_step_sees_in_place_weight_updates(monkeypatch):
    """compile_streaming on a CPU traces the lean path, whose fused weights are rebuilt eagerly at every chunk."""
    model, x, t, cam = _one_frame_chunks(10, 4, 500.0)
    eager = _model(seed=10, chunk_size=1, first_chunk_size=2)
    calls = []
    _wrap_lean(monkeypatch, lambda key, fn: (lambda *a, **k: calls.append(torch.compiler.is_compiling()) or fn(*a, **k))
               if key == "attention" else fn)
    model.compile_streaming("default", backend="eager")
    first, _ = _stream(model, x, t, cam, reference=False, monkeypatch=monkeypatch)
    assert any(calls)  # traced under torch.compile
    expected, _ = _stream(eager, x, t, cam, reference=False, monkeypatch=monkeypatch)
    for a, b in zip(first, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        for m in (model, eager):
            m.blocks[0].attn.q_proj_cam.weight.mul_(0.5)
            m.blocks[2].mlp.t_conv.weight.add_(0.1)
    second, _ = _stream(model, x, t, cam, reference=False, monkeypatch=monkeypatch)
    expected, _ = _stream(eager, x, t, cam, reference=False, monkeypatch=monkeypatch)
    assert (second[-1] - first[-1]).abs().max() > 1e-3
    for a, b in zip(second, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_env_compile_option_is_checked_and_reaches_the_transformer():
    import gymnasium as gym

    import sana_wm_env  # noqa: F401  (registers the envs)

    env = gym.make("SanaWM-Explore-v0", compile="default")  # torch.compile is lazy: nothing compiles here
    assert env.unwrapped.sim.model.student.stream_compile["mode"] == "default"
    env.close()
    with pytest.raises(ValueError, match="streaming generator only"):
        gym.make("SanaWM-Explore-v0", compile="default", generator="chunk_causal")
    with pytest.raises(ValueError, match="source='world_model'"):
        gym.make("SanaWM-TwinExplore-v0", compile="default")
    with pytest.raises(ValueError, match="mode must be one of"):
        gym.make("SanaWM-Explore-v0", compile="fastest")


def test_the_layers_reach_the_lean_path_only_through_the_dispatch():
    """No import cycle: the reference layers do not import stream_cpu (it imports them and registers its fast
    paths with world_model.ops.dispatch, on import by the transformer)."""
    import world_model.layers.attention as attention
    import world_model.layers.block as block
    import world_model.layers.ffn as ffn

    for module in (attention, block, ffn):
        imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(module)))
                    if isinstance(node, ast.ImportFrom)}
        assert not any(name and name.endswith("stream_cpu") for name in imported), module.__name__
    assert {op for op in dispatch._FAST_PATHS if op.startswith("stream_")} == {
        "stream_attention", "stream_begin_chunk", "stream_chunk_constant_linear", "stream_temporal_residual"}
