"""Geometry-guided generation: RGB-D latents, the geometry input, generators with a cache, training inputs."""

from __future__ import annotations

import pytest
import torch

from world_model.checkpoints import grow_transformer
from world_model.codecs.patch import PatchCodec
from world_model.config import PRESETS
from world_model.generators import BidirectionalGenerator, ChunkCausalGenerator, StreamingGenerator
from world_model.geometry import geometry_channels, geometry_inputs
from world_model.point_cache import PointCache
from world_model.training.geometry import CacheCorruption, clip_geometry, unknown_depth_geometry
from world_model.transformer import SanaWMTransformer

H = W = 16
K = torch.tensor([16.0, 16.0, 8.0, 8.0])


def rgbd_codec() -> PatchCodec:
    return PatchCodec(patch_size=4, temporal_stride=2, latent_channels=24 + 8, depth_channels=8)


def geo_model(seed: int = 0, awake: bool = True) -> SanaWMTransformer:
    codec = rgbd_codec()
    cfg = PRESETS["tiny-notext"].replace(in_channels=codec.latent_channels, plucker_channels=12,
                                         geometry_channels=geometry_channels(codec), chunk_size=1, first_chunk_size=2)
    torch.manual_seed(seed)
    model = SanaWMTransformer(cfg).eval()
    if awake:  # move the zero-initialised geometry, camera and temporal paths off their init
        with torch.no_grad():
            for name, p in model.named_parameters():
                if any(k in name for k in ("geometry", "cam", "plucker", "t_conv")):
                    p.add_(0.05 * torch.randn_like(p))
    return model


def image(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def path(b: int, n: int, start: int) -> torch.Tensor:
    poses = torch.eye(4).repeat(b, n, 1, 1)
    poses[:, :, 0, 3] = 0.05 * torch.arange(start, start + n)
    poses[:, :, 2, 3] = 0.03 * torch.arange(start, start + n)
    return poses


def test_geometry_inputs_encode_the_render_and_its_coverage():
    codec = rgbd_codec()
    rgb = image(1)[:, None].repeat(1, 5, 1, 1, 1)
    depth = torch.full((1, 5, H, W), 2.0)
    cache = PointCache.from_frame(rgb[:, 0], depth[:, 0], torch.eye(4)[None], K)
    shifted = path(1, 4, 1)  # continuation chunk of 2 latent frames = 4 frames
    render = cache.render(shifted, K, (H, W))
    g = geometry_inputs(render, codec, first=False)
    assert g.shape == (1, geometry_channels(codec), 2, 4, 4)
    video = render.rgb.permute(0, 2, 1, 3, 4)
    expect = codec.encode(torch.cat([video[:, :, :1], video], 2), torch.cat([render.depth[:, :1], render.depth], 1))
    torch.testing.assert_close(g[:, : codec.latent_channels], expect[:, :, 1:])
    share = render.mask.float().reshape(1, 2, 2, 4, 4, 4, 4).mean(dim=(4, 6))  # (B, T, s, h, w)
    torch.testing.assert_close(g[:, codec.latent_channels :], share.permute(0, 2, 1, 3, 4) * 2 - 1)
    with pytest.raises(ValueError, match="continuation chunk's render must hold"):
        geometry_inputs(cache.render(path(1, 3, 1), K, (H, W)), codec, first=False)


def test_zero_initialised_geometry_input_has_no_effect_until_trained():
    model = geo_model(awake=False)
    codec = rgbd_codec()
    from world_model.camera import camera_inputs_from_world

    cam = camera_inputs_from_world(path(1, 5, 0), K, (H, W), (4, 4), 2)
    x = torch.randn(1, codec.latent_channels, 3, 4, 4)
    t = torch.full((1, 3), 500.0)
    g1, g2 = torch.randn(2, 1, geometry_channels(codec), 3, 4, 4)
    with torch.no_grad():
        a = model(x, t, camera=cam.with_geometry(g1), mode="chunk_causal")
        b = model(x, t, camera=cam.with_geometry(g2), mode="chunk_causal")
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="camera.geometry must have shape"):
        model(x, t, camera=cam, mode="chunk_causal")


def test_grown_transformer_computes_what_its_source_did_on_the_old_channels():
    torch.manual_seed(0)
    source = SanaWMTransformer(PRESETS["tiny-notext"].replace(in_channels=24, plucker_channels=12, chunk_size=1,
                                                              first_chunk_size=2)).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grown, report = grow_transformer(source, geo_model().config)
    assert "x_embedder.proj.weight" in report["grown"] and "geometry_embedder.proj.weight" in report["new"]
    assert not report["skipped"]
    from world_model.camera import camera_inputs_from_world

    cam = camera_inputs_from_world(path(1, 5, 0), K, (H, W), (4, 4), 2)
    x = torch.randn(1, 24, 3, 4, 4)
    t = torch.full((1, 3), 500.0)
    g = torch.randn(1, grown.config.geometry_channels, 3, 4, 4)
    with torch.no_grad():
        old = source(x, t, camera=cam, mode="chunk_causal")
        new = grown(torch.cat([x, torch.randn(1, 8, 3, 4, 4)], 1), t, camera=cam.with_geometry(g), mode="chunk_causal")
    torch.testing.assert_close(new[:, :24], old, atol=1e-5, rtol=1e-5)
    assert new[:, 24:].abs().max() == 0  # the new (depth) outputs start at zero


@pytest.mark.parametrize("kind", ["streaming", "teacher", "bidirectional"])
def test_generators_keep_a_cache_of_generated_rgbd_frames(kind, one_thread):
    model, codec = geo_model(), rgbd_codec()
    gen = {"streaming": lambda: StreamingGenerator(model, codec),
           "teacher": lambda: ChunkCausalGenerator(model, codec, num_steps=3),
           "bidirectional": lambda: BidirectionalGenerator(model, codec, num_steps=3)}[kind]()
    assert gen.takes_depth
    state = gen.start(image(), K, depth=torch.full((2, H, W), 2.0), seed=[1, 2])
    assert state.geometry.counts().tolist() == [H * W, H * W]
    done = 1
    for _ in range(3):
        n = gen.frames_per_step(state)
        frames, state = gen.step(state, path(2, n, done))
        assert frames.shape == (2, n, 3, H, W) and state.last_depth.shape == (2, n, H, W)
        assert torch.isfinite(frames).all() and (state.last_depth >= 0).all()
        done += n
    if kind == "bidirectional":  # sampled jointly: the geometry input is frame 0's cache
        assert state.geometry.counts().tolist() == [H * W, H * W]
    else:  # generated frames only fill holes: frame 0's points all stay
        assert (state.geometry.counts() >= H * W).all() and state.geometry.next_stamp == 1 + 6
        assert (state.geometry.stamp[state.geometry.batch == 0] == 0).sum() == H * W
    with pytest.raises(ValueError, match="depth must be a float tensor"):
        gen.start(image(), K, depth=torch.full((2, H), 2.0))


@pytest.mark.parametrize("kind", ["streaming", "teacher"])
def test_show_cache_shows_the_render_where_it_covers_and_the_model_in_the_holes(kind, one_thread):
    model, codec = geo_model(), rgbd_codec()
    make = {"streaming": lambda **kw: StreamingGenerator(model, codec, **kw),
            "teacher": lambda **kw: ChunkCausalGenerator(model, codec, num_steps=3, **kw)}[kind]
    plain, shown = make(), make(show_cache=True)
    first = image()
    depth = torch.full((2, H, W), 2.0)
    depth[:, :, : W // 4] = 0.0  # sky on the left: covered at any pose
    s_plain = plain.start(first, K, depth=depth, seed=[1, 2])
    s_shown = shown.start(first, K, depth=depth, seed=[1, 2])
    done, saw_holes = 1, False
    for _ in range(3):
        n = plain.frames_per_step(s_plain)
        poses = path(2, n, done)
        render = s_shown.geometry.render(poses, K, (H, W))
        exact = s_shown.geometry.first_frame().render(poses, K, (H, W))
        a, s_plain = plain.step(s_plain, poses)
        b, s_shown = shown.step(s_shown, poses)
        covered = render.mask[:, :, None].expand_as(a)
        first = exact.mask[:, :, None].expand_as(a)
        assert first.any() and (covered & ~first).any() == (done > 1)  # generated points show from step 2 on
        torch.testing.assert_close(b[first], exact.rgb.clamp(-1, 1)[first])  # the first frame's points win
        torch.testing.assert_close(b[covered & ~first], render.rgb.clamp(-1, 1)[covered & ~first])
        assert torch.equal(b[~covered], a[~covered])  # the holes are the model's frame
        saw_holes |= bool((~covered).any())
        # the state's latents are those of the frames shown (colour and depth), for refiners and recordings
        shown_depth = torch.where(render.mask, render.depth, s_plain.last_depth)
        shown_depth = torch.where(exact.mask, exact.depth, shown_depth)
        video = b.permute(0, 2, 1, 3, 4)
        expect = codec.encode(torch.cat([video[:, :, :1], video], 2),
                              torch.cat([shown_depth[:, :1], shown_depth], 1))[:, :, 1:]
        torch.testing.assert_close(s_shown.latents[:, :, -expect.shape[2]:], expect)
        if done == 1:  # the first chunk's latents start with frame 0's, as without show_cache
            torch.testing.assert_close(s_shown.latents[:, :, :1], s_plain.latents[:, :, :1])
        assert s_shown.latents.shape == s_plain.latents.shape
        assert torch.equal(s_shown.last_shown_first, exact.mask) and s_plain.last_shown_first is None
        assert not torch.allclose(s_shown.latents, s_plain.latents)
        # what goes into the cache is the model's either way
        assert torch.equal(s_plain.geometry.xyzw, s_shown.geometry.xyzw)
        assert torch.equal(s_plain.geometry.colors, s_shown.geometry.colors)
        done += n
    assert saw_holes
    with pytest.raises(ValueError, match="show_cache must be True or False"):
        make(show_cache=1)


def test_show_cache_needs_a_geometry_guided_model():
    cfg = PRESETS["tiny-notext"].replace(plucker_channels=12, chunk_size=1, first_chunk_size=2)
    codec = PatchCodec(patch_size=4, temporal_stride=2, latent_channels=cfg.in_channels)
    with pytest.raises(ValueError, match="needs a geometry-guided model"):
        StreamingGenerator(SanaWMTransformer(cfg), codec, show_cache=True)


def test_same_seed_same_frames_and_forks_do_not_touch_the_original(one_thread):
    model, codec = geo_model(), rgbd_codec()
    gen = StreamingGenerator(model, codec)

    def run(state, start, steps):
        out = []
        for i in range(steps):
            n = gen.frames_per_step(state)
            frames, state = gen.step(state, path(2, n, start + 2 * i))
            out.append(frames)
        return torch.cat(out, 1), state

    s0 = gen.start(image(), K, depth=torch.full((2, H, W), 2.0), seed=[3, 4])
    a, s1 = run(s0, 1, 2)
    b, _ = run(gen.start(image(), K, depth=torch.full((2, H, W), 2.0), seed=[3, 4]), 1, 2)
    assert torch.equal(a, b)
    points = s1.geometry.num_points
    forked, _ = run(s1.fork(), 5, 2)
    again, _ = run(s1, 5, 2)
    assert torch.equal(forked, again) and s1.geometry.num_points == points


def test_frame_zero_depth_is_generated_when_not_given(one_thread):
    model, codec = geo_model(), rgbd_codec()
    gen = StreamingGenerator(model, codec)
    depth = gen.generate_depth(image(), K, seed=[1, 2])
    assert depth.shape == (2, H, W) and torch.isfinite(depth).all() and (depth >= 0).all()
    assert torch.equal(depth, gen.generate_depth(image(), K, seed=[1, 2]))  # seeded
    state = gen.start(image(), K, seed=[1, 2])
    assert torch.equal(state.last_depth[:, 0], depth)
    plain = StreamingGenerator(SanaWMTransformer(PRESETS["tiny-notext"]).eval(), PatchCodec(2, 1))
    assert not plain.takes_depth
    with pytest.raises(ValueError, match="does not use depth"):
        plain.start(image(), K, depth=torch.ones(2, H, W))


def test_training_geometry_follows_the_causal_cache_and_corrupts_it_reproducibly():
    codec = rgbd_codec()
    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(2, 7, 3, H, W, generator=g) * 2 - 1)
    depth = 1.0 + 3 * torch.rand(2, 7, 1, 1, generator=g).expand(2, 7, H, W).contiguous()
    c2w = path(2, 7, 0)
    k = K.expand(2, 7, 4)
    bounds = [(0, 2), (2, 3), (3, 4)]  # 4 latent frames = 7 video frames
    exact = clip_geometry(frames, depth, c2w, k, codec, bounds, CacheCorruption.none(), torch.Generator())
    assert exact.shape == (2, geometry_channels(codec), 4, 4, 4)
    # exact caches: chunk [2, 3) (video frames 3, 4) sees frame 0 plus what frames 1, 2 showed of the holes of the
    # render they were made from (the first chunk's: frame 0's cache at poses 0..2)
    cache = PointCache.from_frame(frames[:, 0], depth[:, 0], c2w[:, 0], K)
    covered = cache.render(c2w[:, :3], K, (H, W)).mask
    for i in (1, 2):
        cache = cache.add(frames[:, i], depth[:, i], c2w[:, i], K, valid=~covered[:, i], edge_filter="ramps",
                          supersede=False)
    want = geometry_inputs(cache.render(c2w[:, 3:5], K, (H, W)), codec, first=False)
    torch.testing.assert_close(exact[:, :, 2:3], want)
    noisy = [clip_geometry(frames, depth, c2w, k, codec, bounds, CacheCorruption(), torch.Generator().manual_seed(5))
             for _ in range(2)]
    assert torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[0], exact)
    unknown = unknown_depth_geometry(frames[:, 0], codec, 4)
    assert unknown.shape == exact.shape and (unknown[:, -2:, 1:] == -1).all() and (unknown[:, -2:, 0] == 1).all()


class RGBDClips(torch.utils.data.Dataset):
    """Clips of a textured wall 2-4 m away seen by a camera sliding right: frames, depth, poses, intrinsics."""

    def __init__(self, n: int = 4, frames: int = 9) -> None:
        self.n, self.f = n, frames

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        wall = torch.rand(3, H, 4 * W, generator=g) * 2 - 1
        frames = torch.stack([wall[:, :, j : j + W] for j in range(self.f)])
        return {"frames": frames, "c2w": path(1, self.f, 0)[0], "intrinsics": K,
                "depth": torch.full((self.f, H, W), 2.0 + i % 3)}


def test_training_and_distilling_a_geometry_guided_model(tmp_path, one_thread):
    from world_model.training import DistillConfig, Distiller, TrainConfig, Trainer

    codec = rgbd_codec().to_config()
    cfg = TrainConfig(model="tiny-geo", codec=codec, steps=3, batch_size=2, frames_schedule=((0, 4),), log_every=1,
                      checkpoint_every=100, sample_steps=2, depth_first_prob=0.5)
    trainer = Trainer(cfg, RGBDClips(), tmp_path / "teacher", device="cpu", progress=False)
    summary = trainer.train()
    assert summary["last"]["latent_frames"] == 4 and "depth_first_rows" in summary["last"]
    dcfg = DistillConfig(model="tiny-geo", codec=codec, steps=2, batch_size=1, frames_schedule=((0, 4),),
                         teacher_steps_per_segment=1, log_every=1, checkpoint_every=100, sample_steps=2)
    d = Distiller(dcfg, RGBDClips(), tmp_path / "student", teacher=trainer.ema, device="cpu", progress=False)
    assert d.train()["last"]["loss"] > 0
    # the rollout's caches hold its own frames: chunk k's geometry comes from the chunks before it
    from world_model.training import latent_batch
    from world_model.training.data import collate_clips
    from world_model.training.distill import RolloutGeometry, teacher_rollout

    x0, cam, clip = latent_batch(collate_clips([RGBDClips()[0]]), d.codec, 4, "cpu")
    bounds = d.teacher.config.chunk_bounds(4)
    rollout = RolloutGeometry(clip, d.codec, bounds, "cpu")
    noises = [torch.randn(1, 32, b - a, *x0.shape[-2:]) for a, b in bounds]
    _, finals = teacher_rollout(d.teacher, x0[:, :, :1], cam, bounds, d.grid, noises, geometry=rollout)
    assert rollout.inputs().shape == (1, 34, 4, *x0.shape[-2:]) and len(finals) == len(bounds)
    with pytest.raises(ValueError, match="in order"):
        rollout(1, finals)
