"""Tests for world_model.codecs: PatchCodec, LTX2Codec (tiny random diffusers VAE) and build_codec."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLLTX2Video

from world_model.codecs import (
    DecodeStreamState,
    LatentCodec,
    LTX2Codec,
    PatchCodec,
    build_codec,
    decoder_temporal_reach,
    ltx2_strides,
)
from world_model.codecs.patch import patch_basis

LATENT_C = 16


def tiny_vae(decoder_causal: bool = True, **overrides) -> AutoencoderKLLTX2Video:
    """Tiny random LTX-2 VAE with the real stride layout (spatial 32, temporal 8), class-default blocks."""
    torch.manual_seed(0)
    kwargs = dict(
        latent_channels=LATENT_C,
        block_out_channels=(8, 16, 32, 32),
        decoder_block_out_channels=(8, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        decoder_inject_noise=False,
        decoder_causal=decoder_causal,
    )
    kwargs.update(overrides)
    return AutoencoderKLLTX2Video(**kwargs)


def rand_video(b: int, f: int, h: int, w: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, f, h, w, generator=g, dtype=dtype) * 2 - 1).clamp(-1, 1)


def pink_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Synthetic natural-like images: 1/f amplitude spectrum, RGB correlation 0.9, std ~0.45, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0 / size

    def field() -> np.ndarray:
        x = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) / f))
        return (x - x.mean()) / x.std()

    out = []
    for _ in range(n):
        shared = field()
        out.append(np.stack([math.sqrt(0.9) * shared + math.sqrt(0.1) * field() for _ in range(3)]))
    return torch.from_numpy(np.clip(np.stack(out) * 0.45, -1, 1)).float()


def stream(
    codec: LatentCodec, latents: torch.Tensor, sizes: list[int]
) -> tuple[torch.Tensor, DecodeStreamState]:
    state = codec.decode_stream_start()
    outs = []
    for chunk in latents.split(sizes, dim=2):
        video, state = codec.decode_chunk(chunk, state, clamp=False)
        outs.append(video)
    return torch.cat(outs, dim=2), state


# ---------------------------------------------------------------------------------------------- PatchCodec
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_patch_exact_round_trip(stride: int) -> None:
    codec = PatchCodec(patch_size=4, temporal_stride=stride)
    assert codec.latent_channels == 3 * stride * 16 == codec.full_channels
    video = rand_video(2, 1 + 2 * stride, 8, 12, dtype=torch.float64)
    z = codec.encode(video)
    assert z.shape == (2, codec.latent_channels, 3, 2, 3) and z.dtype == torch.float64
    assert torch.allclose(codec.decode(z, clamp=False), video, atol=1e-12, rtol=0)
    v32 = video.float()
    assert torch.allclose(codec.decode(codec.encode(v32)), v32, atol=1e-5, rtol=0)


def test_patch_basis_orthonormal_and_ordered() -> None:
    basis, std = patch_basis(8, 2)
    assert basis.shape == (384, 384)
    assert np.abs(basis @ basis.T - np.eye(384)).max() < 1e-12
    assert np.all(np.diff(std) <= 1e-12)
    # Channel 0 is the luma DC: a constant grey video excites only it.
    codec = PatchCodec(8, temporal_stride=1)
    z = codec.encode(torch.full((1, 3, 1, 16, 16), 0.3, dtype=torch.float64))
    assert z[:, 0].abs().min() > 0.01
    assert z[:, 1:].abs().max() < 1e-12


def test_patch_reduced_channels_prefix_and_error_decreases() -> None:
    images = pink_images(4, 64).unsqueeze(2)
    full = PatchCodec(8)
    z_full = full.encode(images)
    errors = []
    for c in (3, 12, 48, 96, 160, 192):
        codec = PatchCodec(8, latent_channels=c)
        z = codec.encode(images)
        assert torch.allclose(z, z_full[:, :c], atol=1e-5)  # reduced latents are a prefix of the full ones
        errors.append(float((codec.decode(z, clamp=False) - images).pow(2).mean().sqrt()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5 and errors[0] > 0.05


def test_patch_latents_roughly_unit_variance_on_natural_like_images() -> None:
    images = pink_images(6, 128, seed=1).unsqueeze(2)
    for p in (4, 8):
        z = PatchCodec(p).encode(images)
        per_channel = z.transpose(0, 1).reshape(z.shape[1], -1).std(dim=1)
        assert float(per_channel.min()) > 0.3 and float(per_channel.max()) < 3.0, (p, per_channel)
        assert 0.5 < float(per_channel.mean()) < 1.5


def test_patch_temporal_grouping_first_frame_alone() -> None:
    s = 4
    codec = PatchCodec(4, temporal_stride=s, latent_channels=40)
    video = rand_video(1, 1 + 2 * s, 8, 8, seed=3)
    z = codec.encode(video)
    assert z.shape == (1, 40, 3, 2, 2)
    assert torch.allclose(z[:, :, :1], codec.encode_image(video[:, :, 0]), atol=1e-6)
    bumped = video.clone()
    bumped[:, :, 6] = -bumped[:, :, 6]  # pixel frame 6 is in latent frame (6 - 1) // 4 + 1 = 2
    dz = (codec.encode(bumped) - z).abs().amax(dim=(0, 1, 3, 4))
    assert dz[0] == 0 and dz[1] == 0 and dz[2] > 0


@pytest.mark.parametrize("stride", [1, 2])
def test_patch_stream_equals_full(stride: int) -> None:
    codec = PatchCodec(4, temporal_stride=stride, latent_channels=20)
    z = torch.randn(2, 20, 7, 3, 2)
    full = codec.decode(z, clamp=False)
    streamed, state = stream(codec, z, [1, 3, 1, 2])
    assert torch.equal(streamed, full)
    assert state.latent_frames == 7 and state.cache is None
    assert streamed.shape[2] == codec.num_pixel_frames(7)


def test_patch_config_round_trip_and_build_codec() -> None:
    codec = PatchCodec(patch_size=4, temporal_stride=2, latent_channels=24)
    cfg = codec.to_config()
    assert cfg == {"type": "patch", "patch_size": 4, "temporal_stride": 2, "latent_channels": 24}
    again = build_codec(cfg)
    assert isinstance(again, PatchCodec) and again.to_config() == cfg
    video = rand_video(1, 5, 8, 8)
    assert torch.equal(again.encode(video), codec.encode(video))
    assert PatchCodec.from_config({"patch_size": 2}).latent_channels == 12
    assert len(codec.state_dict()) == 0  # parameter-free: nothing to checkpoint
    with pytest.raises(ValueError, match="unknown keys"):
        PatchCodec.from_config({"type": "patch", "patch_sz": 4})
    with pytest.raises(ValueError, match="'type' in"):
        build_codec({"type": "vqgan"})
    with pytest.raises(ValueError, match="'type' in"):
        build_codec([("type", "patch")])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patch_size": 0}, "patch_size"),
        ({"patch_size": 2.0}, "patch_size"),
        ({"temporal_stride": 0}, "temporal_stride"),
        ({"patch_size": 2, "latent_channels": 13}, "latent_channels"),
        ({"latent_channels": 0}, "latent_channels"),
    ],
)
def test_patch_bad_constructor_args(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PatchCodec(**kwargs)


def test_shape_arithmetic_and_bad_inputs() -> None:
    codec = PatchCodec(8, temporal_stride=4, latent_channels=32)
    assert codec.num_latent_frames(1) == 1 and codec.num_latent_frames(13) == 4
    assert codec.num_pixel_frames(4) == 13 and codec.latent_hw((32, 64)) == (4, 8)
    with pytest.raises(ValueError, match=r"num_frames must be .*1 \+ 4\*k"):
        codec.num_latent_frames(12)
    with pytest.raises(ValueError, match="num_frames"):
        codec.num_latent_frames(0)
    with pytest.raises(ValueError, match="num_latent"):
        codec.num_pixel_frames(0)
    with pytest.raises(ValueError, match="image_hw .*multiples of spatial_stride=8"):
        codec.latent_hw((30, 32))
    with pytest.raises(ValueError, match="image_hw must be a pair"):
        codec.latent_hw(32)
    good = rand_video(1, 5, 16, 16)
    bad_videos = [
        (good[0], r"video must be .*\(B, 3, F, H, W\).*shape"),
        (good[:, :2], "video must be .*shape"),
        (good[:, :, :4], r"video must be .*F=4 is not 1 \+ 4\*k"),
        (good[:, :, :, :12], r"video must be .*\(H, W\)=\(12, 16\) are not multiples of 8"),
        (good * 1.5, r"video must be .*in \[-1, 1\].*values span"),
        (good.masked_fill(good > 0.9, float("nan")), "NaN"),
        ((good * 100).to(torch.int64), "dtype"),
        (good.numpy(), "got ndarray"),
    ]
    for video, match in bad_videos:
        with pytest.raises(ValueError, match=match):
            codec.encode(video)
    with pytest.raises(ValueError, match=r"image must be .*\(B, 3, H, W\)"):
        codec.encode_image(good)
    with pytest.raises(ValueError, match=r"image must be .*values span"):
        codec.encode_image(good[:, :, 0] * 2)
    z = codec.encode(good)
    for latents, match in [
        (z[:, :31], r"latents must be .*\(B, 32, T, h, w\)"),
        (z[0], "latents must be"),
        (z[:, :, :0], "latents must be"),
        (z.masked_fill(z > 0.5, float("inf")), "NaN or inf"),
    ]:
        with pytest.raises(ValueError, match=match):
            codec.decode(latents)
    state = codec.decode_stream_start()
    _, state = codec.decode_chunk(z[:, :, :1], state)
    with pytest.raises(ValueError, match="latents_chunk must have batch 1 and latent"):
        codec.decode_chunk(torch.zeros(1, 32, 1, 4, 2), state)
    with pytest.raises(ValueError, match="latents_chunk must be"):
        codec.decode_chunk(z[:, :3], state)
    with pytest.raises(ValueError, match="state must be a DecodeStreamState"):
        codec.decode_chunk(z, {"latent_frames": 0})


def test_decode_clamps_by_default() -> None:
    codec = PatchCodec(4, latent_channels=6)
    z = torch.randn(1, 6, 1, 2, 2) * 20
    assert codec.decode(z).abs().max() <= 1.0
    assert codec.decode(z, clamp=False).abs().max() > 1.0


# ---------------------------------------------------------------------------------------------- LTX2Codec
@pytest.fixture(scope="module")
def causal_codec() -> LTX2Codec:
    return LTX2Codec(tiny_vae(decoder_causal=True))


def test_ltx2_strides_match_real_shapes(causal_codec: LTX2Codec) -> None:
    raw = tiny_vae()
    assert (raw.spatial_compression_ratio, raw.temporal_compression_ratio) == (64, 16)  # the diffusers trap
    codec = causal_codec
    assert (codec.latent_channels, codec.spatial_stride, codec.temporal_stride) == (LATENT_C, 32, 8)
    assert (codec.vae.spatial_compression_ratio, codec.vae.temporal_compression_ratio) == (32, 8)
    for frames, size in ((9, (64, 64)), (17, (64, 96)), (1, (96, 64))):
        video = rand_video(1, frames, *size)
        z = codec.encode(video)
        assert z.shape == (1, LATENT_C, codec.num_latent_frames(frames), *codec.latent_hw(size))
        assert codec.decode(z).shape == video.shape
    z = codec.encode_image(rand_video(2, 1, 64, 32)[:, :, 0])
    assert z.shape == (2, LATENT_C, 1, 2, 1)
    # The decoder pads spatially with "reflect", which needs a latent grid of at least 2 x 2.
    with pytest.raises(ValueError, match=r"latent h and w >= 2 .*reflect"):
        codec.decode(z)


def test_ltx2_strides_from_configs() -> None:
    hub_like = dict(
        block_out_channels=(256, 512, 1024, 2048),
        decoder_block_out_channels=(256, 512, 1024),
        spatio_temporal_scaling=(True, True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True),
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_type=("spatiotemporal", "spatiotemporal", "spatiotemporal"),
        patch_size=4,
        patch_size_t=1,
        spatial_compression_ratio=32,
        temporal_compression_ratio=8,
    )
    assert ltx2_strides(hub_like) == (32, 8)
    assert ltx2_strides(
        {
            **hub_like,
            "spatio_temporal_scaling": (True, True, True, False),
            "decoder_spatio_temporal_scaling": (True, True, False),
            "spatial_compression_ratio": None,
            "temporal_compression_ratio": None,
        }
    ) == (16, 4)
    with pytest.raises(ValueError, match="spatial_compression_ratio=64 contradicts"):
        ltx2_strides({**hub_like, "spatial_compression_ratio": 64})
    with pytest.raises(ValueError, match="encoder strides"):
        ltx2_strides({**hub_like, "decoder_spatio_temporal_scaling": (True, True, False)})
    with pytest.raises(ValueError, match="patch_size_t must be 1"):
        ltx2_strides({**hub_like, "patch_size_t": 2})


def test_ltx2_normalisation_uses_posterior_mode_and_buffers() -> None:
    vae = tiny_vae(scaling_factor=0.7)
    g = torch.Generator().manual_seed(1)
    vae.latents_mean.copy_(torch.randn(LATENT_C, generator=g) * 0.3)
    vae.latents_std.copy_(torch.rand(LATENT_C, generator=g) + 0.5)
    codec = LTX2Codec(vae)
    video = rand_video(2, 9, 64, 64, seed=5)
    with torch.no_grad():
        h = vae.encoder(video)  # (B, 2C, T, h, w): mean channels first, then log-variance
        mu = h[:, :LATENT_C]
        expected = (mu - vae.latents_mean.view(1, -1, 1, 1, 1)) * 0.7 / vae.latents_std.view(1, -1, 1, 1, 1)
    z = codec.encode(video)
    assert torch.allclose(z, expected, atol=1e-5)
    assert torch.allclose(codec.denormalize(z), mu, atol=1e-5)
    with torch.no_grad():
        expected_video = vae.decoder(mu, None)
    assert torch.allclose(codec.decode(z, clamp=False), expected_video, atol=1e-5)
    assert torch.allclose(codec.decode(z), expected_video.clamp(-1, 1), atol=1e-5)


def test_ltx2_dtype_cast_returns_input_dtype() -> None:
    codec = LTX2Codec(tiny_vae(), dtype=torch.bfloat16)
    assert next(codec.vae.parameters()).dtype == torch.bfloat16
    z = codec.encode(rand_video(1, 9, 64, 64))
    assert z.dtype == torch.float32 and z.shape == (1, LATENT_C, 2, 2, 2)
    assert codec.decode(z).dtype == torch.float32


def test_ltx2_causal_stream_equals_full_decode(causal_codec: LTX2Codec) -> None:
    codec = causal_codec
    z = torch.randn(1, LATENT_C, 8, 2, 2, generator=torch.Generator().manual_seed(2))
    full = codec.decode(z, clamp=False)
    for sizes in ([1, 2, 3, 2], [1] * 8, [5, 3]):
        streamed, state = stream(codec, z, sizes)
        assert streamed.shape == full.shape
        assert float((streamed - full).abs().max()) < 1e-4, sizes  # measured ~5e-6 (float32)
    # Bounded memory: the cache after 8 one-frame chunks is as big as after 2.
    _, short = stream(codec, z[:, :, :2], [1, 1])
    assert sum(t.numel() for t in state.cache.values()) == sum(t.numel() for t in short.cache.values())
    # States are immutable: branching from a kept state reproduces the same continuation.
    _, mid = stream(codec, z[:, :, :3], [1, 2])
    a, _ = codec.decode_chunk(z[:, :, 3:5], mid, clamp=False)
    b, _ = codec.decode_chunk(z[:, :, 3:5], mid, clamp=False)
    assert torch.equal(a, b) and torch.allclose(a, full[:, :, 17:33], atol=1e-4)
    # The decoder's forwards are restored after streaming.
    assert not any("forward" in vars(m) for m in codec.vae.decoder.modules())


def test_ltx2_noncausal_stream_window() -> None:
    codec = LTX2Codec(tiny_vae(decoder_causal=False))
    reach = decoder_temporal_reach(codec.vae.decoder, causal=False)
    assert codec.stream_context_frames == math.ceil(reach) >= 1
    z = torch.randn(1, LATENT_C, 8, 2, 2, generator=torch.Generator().manual_seed(3))
    full = codec.decode(z, clamp=False)
    one, _ = stream(codec, z, [8])
    assert torch.allclose(one, full, atol=1e-5)  # a single chunk is a full decode
    streamed, state = stream(codec, z, [2, 3, 3])
    assert streamed.shape == full.shape
    assert state.cache.shape[2] == codec.stream_context_frames  # bounded context
    # Documented approximation: frames near a chunk end miss their right context. On random weights the
    # error is of the order of the signal (measured max ~2 for |full| <= ~1.8); the last chunk is exact.
    assert torch.allclose(streamed[:, :, -8 * 3 :], full[:, :, -8 * 3 :], atol=1e-4)
    small = LTX2Codec(tiny_vae(decoder_causal=False), stream_context_frames=1)
    assert small.stream_context_frames == 1
    with pytest.raises(ValueError, match="stream_context_frames must be an int >= 1"):
        LTX2Codec(tiny_vae(decoder_causal=False), stream_context_frames=0)


def test_ltx2_bad_construction() -> None:
    with pytest.raises(ValueError, match="vae must be a diffusers AutoencoderKLLTX2Video"):
        LTX2Codec(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="stream_context_frames must be None for a causal decoder"):
        LTX2Codec(tiny_vae(), stream_context_frames=2)
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
        LTX2Codec(tiny_vae(), dtype=torch.int8)
    with pytest.raises(ValueError, match="timestep_conditioning=False"):
        LTX2Codec(tiny_vae(timestep_conditioning=True))
    with pytest.raises(ValueError, match="to_config needs a codec made by LTX2Codec.from_pretrained"):
        LTX2Codec(tiny_vae()).to_config()


def test_ltx2_bad_inputs(causal_codec: LTX2Codec) -> None:
    codec = causal_codec
    video = rand_video(1, 9, 64, 64)
    for bad, match in [
        (video[:, :, :8], r"F=8 is not 1 \+ 8\*k"),
        (video[:, :, :, :48], r"\(H, W\)=\(48, 64\) are not multiples of 32"),
        (video * 1.01 + 0.02, r"values span"),
        (video[:, :1], r"\(B, 3, F, H, W\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            codec.encode(bad)
    with pytest.raises(ValueError, match=rf"latents must be .*\(B, {LATENT_C}, T, h, w\)"):
        codec.decode(torch.zeros(1, LATENT_C + 1, 2, 2, 2))


def test_ltx2_save_and_from_pretrained(tmp_path, causal_codec: LTX2Codec) -> None:
    causal_codec.vae.save_pretrained(tmp_path / "repo" / "vae")
    video = rand_video(1, 9, 64, 64, seed=7)
    z_ref = causal_codec.encode(video)
    loaded = LTX2Codec.from_pretrained(tmp_path / "repo")  # subfolder="vae" by default
    assert torch.allclose(loaded.encode(video), z_ref, atol=1e-6)
    assert loaded.decoder_causal and loaded.spatial_stride == 32
    direct = LTX2Codec.from_pretrained(str(tmp_path / "repo" / "vae"), subfolder=None)
    assert torch.allclose(direct.encode(video), z_ref, atol=1e-6)
    cfg = loaded.to_config()
    assert cfg == {
        "type": "ltx2",
        "path": str((tmp_path / "repo").resolve()),
        "subfolder": "vae",
        "dtype": "float32",
        "stream_context_frames": None,
    }
    rebuilt = build_codec(cfg)
    assert isinstance(rebuilt, LTX2Codec) and torch.allclose(rebuilt.encode(video), z_ref, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        LTX2Codec.from_pretrained(tmp_path / "repo", subfolder="transformer")
    with pytest.raises(FileNotFoundError, match="is not an existing folder"):
        LTX2Codec.from_pretrained(str(tmp_path / "missing" / "dir"))
    with pytest.raises(ValueError, match="unknown keys"):
        build_codec({**cfg, "tiling": True})


def test_ltx2_repo_id_offline_uses_cache_or_explains(tmp_path, causal_codec: LTX2Codec) -> None:
    repo = "Efficient-Large-Model/SANA-WM_bidirectional"
    with pytest.raises(FileNotFoundError) as info:
        LTX2Codec.from_pretrained(repo, cache_dir=tmp_path / "empty_cache")
    message = str(info.value)
    assert repo in message and "'vae'" in message
    assert f"hf download {repo} --include 'vae/*' --local-dir" in message
    # A populated HF cache is used offline (local_files_only): fake one snapshot in the standard layout.
    cache = tmp_path / "hf_cache"
    commit = "0" * 40
    entry = cache / "models--owner--tiny-ltx2"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    causal_codec.vae.save_pretrained(entry / "snapshots" / commit / "vae")
    codec = LTX2Codec.from_pretrained("owner/tiny-ltx2", cache_dir=cache)
    video = rand_video(1, 9, 64, 32)
    assert torch.allclose(codec.encode(video), causal_codec.encode(video), atol=1e-6)
    assert codec.to_config()["path"] == "owner/tiny-ltx2"


# -- RGB-D -----------------------------------------------------------------------------------------------------
def test_depth_channel_maps_metres_to_normalised_inverse_depth_and_back():
    from world_model.codecs.base import DEPTH_REFERENCE_M, channel_to_depth, depth_to_channel

    depth = torch.tensor([0.0, 0.05, 1.0, DEPTH_REFERENCE_M, 50.0, 300.0])
    channel = depth_to_channel(depth)
    assert channel[0] == -1 and channel[3] == 0 and (channel[1:] > -1).all() and (channel < 1).all()
    assert (channel[1:].diff() < 0).all()  # nearer is larger
    back = channel_to_depth(channel)
    assert back[0] == 0 and torch.allclose(back[1:], depth[1:], rtol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_rgbd_patch_codec_round_trips_colour_and_depth(stride):
    codec = PatchCodec(patch_size=4, temporal_stride=stride, depth_channels=stride * 16)
    assert codec.latent_channels == 4 * stride * 16 and codec.depth_channels == stride * 16
    g = torch.Generator().manual_seed(0)
    frames = 1 + stride * 2
    video = torch.rand(2, 3, frames, 8, 12, generator=g) * 2 - 1
    depth = 0.5 + 10 * torch.rand(2, frames, 8, 12, generator=g)
    depth[:, :, :2] = 0.0  # sky rows
    z = codec.encode(video, depth)
    assert z.shape == (2, codec.latent_channels, 3, 2, 3)
    rgb, back = codec.decode(z, with_depth=True)
    torch.testing.assert_close(rgb, video, atol=1e-5, rtol=0)
    assert (back[:, :, :2] == 0).all()
    torch.testing.assert_close(back[:, :, 2:], depth[:, :, 2:], atol=1e-3, rtol=1e-4)
    assert torch.equal(codec.decode(z), rgb)  # colour only by default
    # colour channels do not depend on depth: an RGB-D codec's colour latents equal the RGB codec's
    plain = PatchCodec(patch_size=4, temporal_stride=stride)
    torch.testing.assert_close(z[:, : plain.latent_channels], plain.encode(video))
    # streaming decode gives depth chunk by chunk, as decode does
    (v0, d0), state = codec.decode_chunk(z[:, :, :1], codec.decode_stream_start(), with_depth=True)
    (v1, d1), _ = codec.decode_chunk(z[:, :, 1:], state, with_depth=True)
    torch.testing.assert_close(torch.cat([d0, d1], 1), back)
    assert PatchCodec.from_config(codec.to_config()).to_config() == codec.to_config()


def test_truncated_depth_keeps_the_smooth_part_and_first_frames_take_depth():
    codec = PatchCodec(patch_size=8, temporal_stride=2, latent_channels=96 + 8, depth_channels=8)
    ramp = torch.linspace(1.0, 6.0, 64)[None, None, None, :].expand(1, 3, 64, 64).clone()  # a slanted wall
    image = torch.zeros(1, 3, 64, 64)
    z = codec.encode_image(image, ramp[:, 0])
    _, depth = codec.decode(z, with_depth=True)
    assert (depth[0, 0] - ramp[0, 0]).abs().max() < 0.05 * ramp.max()
    with pytest.raises(ValueError, match="needs depth"):
        codec.encode_image(image)
    with pytest.raises(ValueError, match="encodes RGB only"):
        PatchCodec(patch_size=8).encode_image(image, ramp[:, 0])
    with pytest.raises(ValueError, match="depth must be finite and >= 0"):
        codec.encode_image(image, -ramp[:, 0])
    with pytest.raises(ValueError, match="depth_channels must be an int"):
        PatchCodec(patch_size=4, depth_channels=17)
