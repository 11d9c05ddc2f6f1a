"""The SANA-WM transformer against diffusers (the numerical oracle) and its causal structure."""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import SanaWMTransformer3DModel
from diffusers.pipelines.sana_wm.cam_utils import prepare_camera as diffusers_prepare_camera

from world_model.camera import camera_inputs_from_world
from world_model.checkpoints import load_transformer
from world_model.config import PRESETS, ModelConfig
from world_model.transformer import SanaWMTransformer


@contextlib.contextmanager
def fp32_softmax_in_diffusers():
    """diffusers 0.42 casts fp32 softmax-attention inputs to bf16; keep them fp32 for a 1e-4 comparison."""
    with mock.patch.object(torch.Tensor, "bfloat16", lambda self, *a, **k: self):
        yield


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> None:
    """Give every parameter (zero-initialised ones included) a random value, so every path is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            base = 1.0 if "norm" in name else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=gen))


def smooth_trajectory(num_frames: int) -> np.ndarray:
    c2w = np.tile(np.eye(4, dtype=np.float32), (num_frames, 1, 1))
    for i in range(num_frames):
        a, r = 0.03 * i, 0.02 * i
        yaw = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        roll = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
        c2w[i, :3, :3] = yaw @ roll
        c2w[i, :3, 3] = [0.05 * i, -0.01 * i, 0.1 * i]
    return c2w


pytestmark = pytest.mark.usefixtures("one_thread")
DIFFUSERS_TINY = {
    # head dim 48 (not a flash size: exercises the padded camera softmax scale), text on
    "text": dict(
        ours=PRESETS["tiny-text"],
        theirs=dict(in_channels=16, num_layers=4, hidden_size=96, num_attention_heads=2, linear_head_dim=48,
                    softmax_every_n=2, caption_channels=32, chunk_plucker_post_attn_blocks=4),
    ),
    # head dim 32, no text (diffusers' cross-attention is zeroed out), 3 GDN blocks + 1 softmax
    "notext": dict(
        ours=ModelConfig(depth=4, hidden_size=64, head_dim=32, cross_attn_heads=2, softmax_every_n=4,
                         in_channels=8, plucker_channels=48, plucker_blocks=4, caption_channels=0, mlp_ratio=2.0),
        theirs=dict(in_channels=8, num_layers=4, hidden_size=64, num_attention_heads=2, linear_head_dim=32,
                    softmax_every_n=4, caption_channels=16, chunk_plucker_post_attn_blocks=4, mlp_ratio=2.0),
    ),
}


def diffusers_to_ours(state: dict[str, torch.Tensor], has_text: bool) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if not has_text and (k.startswith(("y_embedder.", "attention_y_norm.")) or ".cross_attn." in k):
            continue
        out[k.replace("t_embedder.linear_1", "t_embedder.mlp.0").replace("t_embedder.linear_2", "t_embedder.mlp.2")] = v
    return out


@pytest.mark.parametrize("variant", sorted(DIFFUSERS_TINY))
def test_bidirectional_forward_matches_diffusers(variant, tmp_path):
    spec = DIFFUSERS_TINY[variant]
    config = spec["ours"].replace(ucpe_rms_renorm=True, cam_softmax_scale="padded")  # diffusers' numerics
    theirs = SanaWMTransformer3DModel(**spec["theirs"]).eval()
    randomize_(theirs)
    if not config.has_text:  # a text-free model == diffusers with its cross-attention output zeroed
        with torch.no_grad():
            for blk in theirs.blocks:
                blk.cross_attn.proj.weight.zero_()
                blk.cross_attn.proj.bias.zero_()
    if config.has_text:  # the diffusers folder loads through load_transformer
        theirs.save_pretrained(tmp_path)
        with pytest.warns(UserWarning, match="y_embedding"):
            ours = load_transformer(tmp_path)
        assert ours.config.ucpe_rms_renorm and ours.config.cam_softmax_scale == "padded"
    else:  # our text-free architecture takes every other weight
        ours = SanaWMTransformer(config).eval()
        result = ours.load_state_dict(diffusers_to_ours(theirs.state_dict(), False), strict=False)
        assert result.unexpected_keys == [] and result.missing_keys == []

    b, t, h, w = 2, 3, 4, 6
    c2w = smooth_trajectory((t - 1) * 8 + 1)
    k4 = np.tile(np.array([[60.0, 62.0, 64.0, 48.0]], dtype=np.float32), (c2w.shape[0], 1))
    cam = diffusers_prepare_camera(c2w, k4, target_size=(h * 32, w * 32), vae_stride=(8, 32, 32))
    cond = cam["raymap"][None].repeat(b, 1, 1)
    plucker = cam["chunk_plucker"][None].repeat(b, 1, 1, 1, 1)
    camera = camera_inputs_from_world(
        torch.from_numpy(c2w)[None].repeat(b, 1, 1, 1), torch.from_numpy(k4[0]), (h * 32, w * 32), (h, w), 8
    )
    torch.testing.assert_close(camera.conditions, cond, atol=1e-5, rtol=0)
    torch.testing.assert_close(camera.plucker, plucker, atol=1e-5, rtol=0)

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b, config.in_channels, t, h, w, generator=gen)
    timestep = torch.tensor([[0.0, 500.0, 900.0], [10.0, 999.0, 300.0]])
    caption = spec["theirs"]["caption_channels"]
    y = torch.randn(b, 1, 8, caption, generator=gen)
    mask = torch.ones(b, 8)
    mask[1, 5:] = 0
    with torch.no_grad(), fp32_softmax_in_diffusers():
        ref = theirs(x, timestep[:, None], y, encoder_attention_mask=mask, camera_conditions=cond,
                     chunk_plucker=plucker).sample
    with torch.no_grad():
        text = dict(text=y[:, 0], text_mask=mask.bool()) if config.has_text else {}
        out = ours(x, timestep, camera=camera, **text)
    assert ref.abs().max() > 1.0  # a non-trivial output
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def _tiny_model(seed=0, **changes) -> SanaWMTransformer:
    torch.manual_seed(seed)
    model = SanaWMTransformer(PRESETS["tiny-text"].replace(**changes)).eval()
    randomize_(model, seed, scale=0.1)
    return model


def _camera(b, t, hw, channels=48):
    from world_model.camera import CameraInputs

    gen = torch.Generator().manual_seed(5)
    cond = torch.zeros(b, t, 20)
    for i in range(t):
        pose = torch.eye(4)
        pose[:3, 3] = torch.tensor([0.1 * i, 0.0, 0.2 * i])
        cond[:, i, :16] = pose.flatten()
    cond[:, :, 16:] = torch.tensor([4.0, 4.0, hw[1] / 2, hw[0] / 2])
    return CameraInputs(cond, torch.randn(b, channels, t, *hw, generator=gen))


def test_chunk_causal_with_one_chunk_equals_bidirectional():
    model = _tiny_model(first_chunk_size=6)
    x, t = torch.randn(1, 16, 6, 4, 4), torch.randint(0, 1000, (1, 6)).float()
    cam = _camera(1, 6, (4, 4))
    with torch.no_grad():
        a = model(x, t, camera=cam, mode="chunk_causal")
        b = model(x, t, camera=cam, mode="bidirectional")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_streaming_chunk_by_chunk_equals_chunk_causal_and_is_causal():
    model = _tiny_model(chunk_size=2, first_chunk_size=3)
    frames = 9  # chunks [0,3) [3,5) [5,7) [7,9)
    x, t = torch.randn(2, 16, frames, 4, 4), torch.randint(0, 1000, (2, frames)).float()
    cam = _camera(2, frames, (4, 4))
    text = torch.randn(2, 5, 32)
    with torch.no_grad():
        full = model(x, t, camera=cam, text=text, mode="chunk_causal")
        bidir = model(x, t, camera=cam, text=text, mode="bidirectional")
        cache, outs = model.new_cache(window_chunks=None), []
        for c0, c1 in model.config.chunk_bounds(frames):
            out, cache = model.forward_stream(x[:, :, c0:c1], t[:, c0:c1], cache=cache,
                                              camera=cam.slice_frames(c0, c1), text=text, write_cache=True)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 2), full, atol=1e-4, rtol=1e-4)
    assert (bidir - full).abs().max() > 1e-2  # the causal structure really differs from bidirectional

    x2 = x.clone()
    x2[:, :, 5:] += 1.0  # perturb frames after chunk 1 (which ends at frame 5)
    with torch.no_grad():
        perturbed = model(x2, t, camera=cam, text=text, mode="chunk_causal")
    torch.testing.assert_close(perturbed[:, :, :5], full[:, :, :5], atol=0, rtol=0)
    assert (perturbed[:, :, 5:] - full[:, :, 5:]).abs().max() > 1e-3


def test_stream_cache_size_is_constant_in_video_length():
    model = _tiny_model()
    cache = model.new_cache()
    sizes = {}
    with torch.no_grad():
        for chunk in range(50):
            t = model.config.first_chunk_size if chunk == 0 else model.config.chunk_size
            x = torch.randn(1, 16, t, 2, 2)
            _, cache = model.forward_stream(x, torch.zeros(1, t), cache=cache, camera=_camera(1, t, (2, 2)),
                                            write_cache=True)
            if chunk + 1 in (5, 50):
                sizes[chunk + 1] = cache.nbytes()
    assert sizes[5] == sizes[50] > 0
    assert cache.num_chunks == 50 and cache.next_frame == 4 + 49 * 3


def test_cache_fork_leaves_original_untouched():
    model = _tiny_model()
    cam = _camera(1, 4, (2, 2))
    with torch.no_grad():
        _, cache = model.forward_stream(torch.randn(1, 16, 4, 2, 2), torch.zeros(1, 4), cache=model.new_cache(),
                                        camera=cam, write_cache=True)
        snapshot = [t.clone() for t in cache.tensors()]
        fork = cache.fork()
        cam3 = _camera(1, 3, (2, 2))
        _, rolled = model.forward_stream(torch.randn(1, 16, 3, 2, 2), torch.zeros(1, 3), cache=fork,
                                         camera=cam3, write_cache=True)
    assert rolled.num_chunks == 2 and cache.num_chunks == 1
    for before, after in zip(snapshot, cache.tensors(), strict=True):
        assert torch.equal(before, after)


def test_same_seed_same_output_on_cpu():
    a, b = _tiny_model(seed=3), _tiny_model(seed=3)
    x, t = torch.randn(1, 16, 4, 2, 2), torch.full((1, 4), 500.0)
    with torch.no_grad():
        assert torch.equal(a(x, t, camera=_camera(1, 4, (2, 2))), b(x, t, camera=_camera(1, 4, (2, 2))))


def test_1p6b_preset_parameter_count_on_meta_device():
    with torch.device("meta"):
        model = SanaWMTransformer("sana-wm-1.6b")
    assert abs(model.num_parameters() - 2.66e9) <= 0.02e9
    softmax = [i for i, blk in enumerate(model.blocks) if blk.attn.softmax]
    assert softmax == [3, 7, 11, 15, 19]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(latents=torch.randn(1, 15, 4, 2, 2)), "latents must have shape"),
        (dict(timestep=torch.zeros(1, 3)), "timestep must have shape"),
        (dict(timestep=torch.full((1, 4), 1500.0)), r"timestep values must be finite and in \[0, 1000\]"),
        (dict(timestep=torch.full((1, 4), float("nan"))), "timestep values"),
        (dict(camera="wrong-frames"), r"camera.conditions must have shape \(1, 4, 20\)"),
        (dict(text=torch.randn(1, 5, 31)), r"text must have shape \(1, L, 32\)"),
        (dict(text=torch.randn(1, 5, 32), text_mask=torch.ones(1, 4, dtype=torch.bool)), "text_mask must have shape"),
        (dict(mode="causal"), "mode must be"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(kwargs, match):
    model = _tiny_model()
    args = dict(latents=torch.randn(1, 16, 4, 2, 2), timestep=torch.zeros(1, 4), camera=_camera(1, 4, (2, 2)))
    if kwargs.get("camera") == "wrong-frames":
        kwargs = dict(camera=_camera(1, 3, (2, 2)))
    args.update(kwargs)
    latents, timestep = args.pop("latents"), args.pop("timestep")
    with pytest.raises(ValueError, match=match):
        model(latents, timestep, **args)


def test_streaming_rejects_wrong_chunk_length_and_text_on_textless_model():
    model = _tiny_model()
    with pytest.raises(ValueError, match="chunk 0 takes 4"):
        model.forward_stream(torch.randn(1, 16, 5, 2, 2), torch.zeros(1, 5), cache=model.new_cache())
    notext = SanaWMTransformer(PRESETS["tiny-notext"])
    with pytest.raises(ValueError, match="no text cross-attention"):
        notext(torch.randn(1, 12, 2, 2, 2), torch.zeros(1, 2), text=torch.randn(1, 3, 8))
