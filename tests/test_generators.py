"""Generators: determinism, forking, constant memory, chunk-causal teacher vs streaming student, bad input."""

from __future__ import annotations

import pytest
import torch

from world_model.codecs.patch import PatchCodec
from world_model.config import PRESETS
from world_model.generators import BidirectionalGenerator, ChunkCausalGenerator, StreamingGenerator
from world_model.sampling import DISTILLED_TIMESTEPS, distilled_sigmas, flow_sigmas, shift_sigmas
from world_model.transformer import SanaWMTransformer

pytestmark = pytest.mark.usefixtures("one_thread")
K = torch.tensor([16.0, 16.0, 8.0, 8.0])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = SanaWMTransformer(PRESETS["tiny-notext"]).eval()
    with torch.no_grad():  # wake up the zero-initialised camera paths so poses matter
        for name, p in m.named_parameters():
            if "cam" in name or "plucker" in name or "t_conv" in name:
                p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def codec():
    return PatchCodec(patch_size=2, temporal_stride=1)


def forward_path(batch: int, n: int, start: int, speed: float = 0.1) -> torch.Tensor:
    poses = torch.eye(4).repeat(batch, n, 1, 1)
    poses[:, :, 2, 3] = torch.arange(start, start + n).float() * speed
    return poses


def image(batch=1, seed=0):
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_schedules():
    assert torch.allclose(distilled_sigmas(), torch.tensor([1.0, 0.96, 0.889, 0.727, 0.0]))
    assert DISTILLED_TIMESTEPS == (1000, 960, 889, 727)
    # the distilled schedule is shift 8 applied to 1, .75, .5, .25 (rounded to integer timesteps)
    shifted = shift_sigmas(torch.tensor([1.0, 0.75, 0.5, 0.25]), 8.0) * 1000
    assert torch.allclose(shifted.round(), torch.tensor([1000.0, 960.0, 889.0, 727.0]))
    s = flow_sigmas(10, 3.0)
    assert s[0] == 1 and s[-1] == 0 and bool((s[1:] < s[:-1]).all())
    with pytest.raises(ValueError, match="num_steps"):
        flow_sigmas(0)


def test_streaming_same_seed_same_frames_and_batch_independent(model, codec):
    gen = StreamingGenerator(model, codec)
    st = gen.start(image(2), K, seed=[7, 8])
    a, _ = gen.step(st, forward_path(2, 3, 1))
    b, _ = gen.step(gen.start(image(2), K, seed=[7, 8]), forward_path(2, 3, 1))
    assert torch.equal(a, b)
    # element 1 alone with its seed gives the same frames as inside the batch
    alone, _ = gen.step(gen.start(image(2)[1:], K, seed=[8]), forward_path(1, 3, 1))
    torch.testing.assert_close(alone[0], a[1], atol=1e-5, rtol=0)
    c, _ = gen.step(gen.start(image(2), K, seed=[9, 8]), forward_path(2, 3, 1))
    assert not torch.equal(c[0], a[0])
    assert a.shape == (2, 3, 3, 16, 16) and a.min() >= -1 and a.max() <= 1


def test_actions_change_frames(model, codec):
    gen = StreamingGenerator(model, codec)
    st = gen.start(image(), K, seed=0)
    slow, _ = gen.step(st, forward_path(1, 3, 1, speed=0.05))
    fast, _ = gen.step(st, forward_path(1, 3, 1, speed=0.5))
    assert (slow - fast).abs().max() > 1e-3


def test_fork_rolls_forward_without_touching_original(model, codec):
    gen = StreamingGenerator(model, codec)
    _, st = gen.step(gen.start(image(), K, seed=1), forward_path(1, 3, 1))
    expected, _ = gen.step(st, forward_path(1, 3, 4))
    fork = st.fork()
    for i in range(3):  # imagine a different future on the fork
        _, fork = gen.step(fork, forward_path(1, 3, 4 + 3 * i, speed=-0.2))
    again, _ = gen.step(st, forward_path(1, 3, 4))
    assert torch.equal(expected, again)
    assert fork.chunk_index == 4 and st.chunk_index == 1


def test_streaming_memory_flat_in_video_length(model, codec):
    gen = StreamingGenerator(model, codec)
    st, sizes = gen.start(image(), K, seed=0), {}
    for chunk in range(50):
        _, st = gen.step(st, forward_path(1, 3, 1 + 3 * chunk))
        if chunk + 1 in (5, 50):
            sizes[chunk + 1] = st.nbytes()
    assert sizes[5] == sizes[50] > 0


def test_chunk_causal_teacher_equals_stream_with_the_same_sigmas(model, codec):
    teacher = ChunkCausalGenerator(model, codec, num_steps=3, shift=4.0)
    student = StreamingGenerator(model, codec, sigmas=flow_sigmas(3, 4.0), window_chunks=None)
    poses = forward_path(1, 10, 0)
    a = teacher.generate(image(), K, poses, seed=4)
    b = student.generate(image(), K, poses, seed=4)
    assert a.shape == (1, 10, 3, 16, 16)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="nearest valid"):
        teacher.generate(image(), K, forward_path(1, 9, 0))


def test_bidirectional_generates_whole_clip_and_steps(model, codec):
    gen = BidirectionalGenerator(model, codec, num_steps=3)
    clip = gen.generate(image(), K, forward_path(1, 7, 0), seed=2)
    assert clip.shape == (1, 7, 3, 16, 16)
    assert torch.equal(clip[:, 0], image().clamp(-1, 1))
    st = gen.start(image(), K, seed=2)
    _, st = gen.step(st, forward_path(1, 3, 1))
    last, st = gen.step(st, forward_path(1, 3, 4))
    torch.testing.assert_close(last, clip[:, 4:], atol=1e-5, rtol=0)


def test_bad_inputs(model, codec):
    gen = StreamingGenerator(model, codec)
    st = gen.start(image(), K, seed=0)
    with pytest.raises(ValueError, match=r"c2w must hold the next 3 frames"):
        gen.step(st, forward_path(1, 4, 1))
    bad = forward_path(1, 3, 1)
    bad[0, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="c2w"):
        gen.step(st, bad)
    shear = forward_path(1, 3, 1)
    shear[0, 2, 0, 1] = 0.5
    with pytest.raises(ValueError, match="rigid"):
        gen.step(st, shear)
    with pytest.raises(ValueError, match="intrinsics"):
        gen.start(image(), torch.tensor([-1.0, 16.0, 8.0, 8.0]))
    with pytest.raises(ValueError, match="image must be"):
        gen.start(torch.rand(1, 16, 16), K)
    with pytest.raises(ValueError, match="seed"):
        gen.start(image(2), K, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="guidance_scale"):
        StreamingGenerator(model, codec, guidance_scale=3.0)
    with pytest.raises(ValueError, match="latent channels"):
        StreamingGenerator(model, PatchCodec(patch_size=4, temporal_stride=1))


def test_streaming_with_ltx2_codec_and_stride_8_packing():
    """The official-style pipeline: LTX-2 VAE (spatial 32, temporal 8, causal decoder), text model with
    48-channel Plücker groups; 24 frames per step, the first step's camera spans frames 0..24."""
    from diffusers import AutoencoderKLLTX2Video

    from world_model.codecs import LTX2Codec

    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(
        latent_channels=16, block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1), decoder_inject_noise=False,
        decoder_causal=True,
    )
    codec = LTX2Codec(vae)
    model = SanaWMTransformer(PRESETS["tiny-text"]).eval()
    gen = StreamingGenerator(model, codec)
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    text = torch.randn(1, 6, 32)
    st = gen.start(img, torch.tensor([50.0, 50.0, 32.0, 32.0]), text=text, seed=5)
    assert gen.frames_per_step(st) == 24
    frames, st2 = gen.step(st, forward_path(1, 24, 1, speed=0.02))
    again, _ = gen.step(st, forward_path(1, 24, 1, speed=0.02))
    assert frames.shape == (1, 24, 3, 64, 64) and torch.equal(frames, again)
    nxt, st3 = gen.step(st2, forward_path(1, 24, 25, speed=0.02))
    assert nxt.shape == (1, 24, 3, 64, 64) and st3.frames_done == 49 and st3.cache.next_frame == 7
