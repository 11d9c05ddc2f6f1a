"""Offline rollouts: the sana-wm-rollout/1 format, `sana-wm refine`, and the episode-refining env wrapper."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sana_wm_env.rollouts import (
    FORMAT,
    RefineEpisodeWrapper,
    RolloutWriter,
    read_rollout,
    refine_rollout,
    validate_rollout,
)
from world_model.checkpoints import build_transformer
from world_model.codecs import PatchCodec
from world_model.refiner import LatentLayout, WorldModelRefiner, schedule_from

pytestmark = pytest.mark.usefixtures("one_thread")
K4 = [12.0, 12.0, 7.5, 7.5]


def tiny_refiner(codec=None, seed: int = 3, **kwargs) -> WorldModelRefiner:
    """A random tiny-notext refiner for PatchCodec(2, 1) latents (12 channels)."""
    codec = codec or PatchCodec(patch_size=2, temporal_stride=1)
    model = build_transformer("tiny-notext", seed=seed)
    with torch.no_grad():  # random values for the zero-initialised output / camera layers
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed))
    return WorldModelRefiner(model, LatentLayout.of_codec(codec),
                             codec=codec.to_config(), **kwargs)


def path_poses(n: int) -> np.ndarray:
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 2, 3] = np.linspace(0, 0.5, n)
    return poses


def record_generation(folder, wm, frames: int = 7, seed: int = 5) -> dict:
    """Roll out ``wm``'s streaming generator and record it chunk by chunk (frames, poses, latents)."""
    gen = wm.streaming_generator()
    poses = torch.from_numpy(path_poses(frames)).float()
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    state = gen.start(image, torch.tensor(K4), c2w=poses[0], seed=seed)
    with RolloutWriter(folder, fps=wm.fps, intrinsics=K4, image_hw=(16, 16), model=wm.name, seed=seed,
                       codec=wm.codec.to_config()) as w:
        w.add_frames(((image[0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()[None], poses[:1])
        done = 1
        while done < frames:
            n = gen.frames_per_step(state)
            out, state = gen.step(state, poses[None, done : done + n])
            u8 = ((out[0].permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
            w.add_frames(u8, poses[done : done + n])
            w.add_latents(state.latents)
            done += n
    return w.manifest


def test_writer_streams_and_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (9, 8, 10, 3), dtype=np.uint8)
    poses = path_poses(9)
    lat = rng.standard_normal((1, 12, 5, 4, 5)).astype(np.float32)
    codec = {"type": "patch", "patch_size": 2, "temporal_stride": 2, "latent_channels": 12}
    with RolloutWriter(tmp_path / "r", fps=8.0, intrinsics=K4, image_hw=(8, 10), kind="env", model="m", seed=3,
                       codec=codec, extra={"task": "nav"}) as w:
        for a, b in ((0, 1), (1, 5), (5, 9)):
            w.add_frames(frames[a:b], poses[a:b])
            w.add_step(np.full(6, a, np.float32), reward=0.5 * a)
        w.add_latents(lat[:, :, :2])
        w.add_latents(lat[0, :, 2:])
        assert not (tmp_path / "r" / "rollout.json").exists()  # the manifest comes last
    ro = read_rollout(tmp_path / "r")
    np.testing.assert_array_equal(ro.frames, frames)
    np.testing.assert_array_equal(ro.c2w, poses)
    np.testing.assert_allclose(ro.timestamps, np.arange(9) / 8.0)
    torch.testing.assert_close(ro.latent_tensor(), torch.from_numpy(lat), rtol=0, atol=0)
    np.testing.assert_array_equal(ro.rewards, [0.0, 0.5, 2.5])
    np.testing.assert_array_equal(ro.step_frames, [0, 4, 8])
    assert ro.actions.shape == (3, 6) and ro.manifest["format"] == FORMAT and ro.manifest["extra"] == {"task": "nav"}
    assert ro.manifest["latent_frames"] == 5 and ro.manifest["latent_pixel_frames"] == 9 and not ro.refined
    assert (tmp_path / "r" / "video.mp4").stat().st_size > 0
    assert isinstance(ro.frames, np.memmap)
    with pytest.raises(ValueError, match="already holds a rollout"):
        RolloutWriter(tmp_path / "r", fps=8.0, intrinsics=K4, image_hw=(8, 10))


def test_bad_input_and_damaged_folders_fail_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        RolloutWriter(tmp_path / "a", fps=8, intrinsics=K4, image_hw=(8, 8), kind="movie")
    with pytest.raises(ValueError, match="intrinsics must be"):
        RolloutWriter(tmp_path / "a", fps=8, intrinsics=[1, 2, 3], image_hw=(8, 8))
    w = RolloutWriter(tmp_path / "a", fps=8, intrinsics=K4, image_hw=(8, 8), video=False)
    with pytest.raises(ValueError, match="c2w must hold one finite 4x4 pose per frame"):
        w.add_frames(np.zeros((2, 8, 8, 3), np.uint8), np.eye(4)[None])
    with pytest.raises(ValueError, match=r"frames must have shape \(n, 8, 8, 3\)"):
        w.add_frames(np.zeros((1, 4, 8, 3), np.uint8), np.eye(4)[None])
    with pytest.raises(ValueError, match="pass codec="):
        w.add_latents(torch.zeros(1, 4, 1, 2, 2))
    with pytest.raises(FileNotFoundError, match="incomplete recording"):
        validate_rollout(tmp_path / "a")
    w.add_frames(np.zeros((1, 8, 8, 3), np.uint8), np.eye(4)[None])
    w.close()
    assert validate_rollout(tmp_path / "a")["frames"] == 1
    # damaged: truncated frames file, wrong format, refined without latents
    m = json.loads((tmp_path / "a" / "rollout.json").read_text())
    (tmp_path / "a" / "rollout.json").write_text(json.dumps({**m, "frames": 3}))
    with pytest.raises(ValueError, match=r"frames.npy holds uint8 \(1, 8, 8, 3\); the manifest says"):
        read_rollout(tmp_path / "a")
    (tmp_path / "a" / "rollout.json").write_text(json.dumps({**m, "format": "other/1"}))
    with pytest.raises(ValueError, match="format must be 'sana-wm-rollout/1'"):
        read_rollout(tmp_path / "a")
    (tmp_path / "a" / "rollout.json").write_text(json.dumps({**m, "refined": True}))
    with pytest.raises(ValueError, match="marked refined but holds no latents"):
        read_rollout(tmp_path / "a")
    (tmp_path / "a" / "rollout.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="holds no latents"):
        refine_rollout(tmp_path / "a", tmp_path / "b", tiny_refiner())


def test_refine_cli_end_to_end_and_deterministic(tmp_path, wm, capsys):
    from sana_wm_cli.main import main

    record_generation(tmp_path / "in", wm)
    ref = tiny_refiner(sigmas=schedule_from(0.725), window=3)
    ref.save(tmp_path / "ref")
    code = main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--refiner", str(tmp_path / "ref")])
    assert code == 0, capsys.readouterr().err
    stage1, out = read_rollout(tmp_path / "in"), read_rollout(tmp_path / "out")
    assert out.refined and out.manifest["source"] == str(tmp_path / "in") and len(out) == len(stage1) == 7
    np.testing.assert_array_equal(out.stage1_latents, stage1.latents)
    np.testing.assert_array_equal(out.frames[0], stage1.frames[0])  # the given image is kept
    assert not np.array_equal(out.frames[1:], stage1.frames[1:])
    np.testing.assert_array_equal(out.c2w, stage1.c2w)
    assert (tmp_path / "out" / "comparison.mp4").stat().st_size > 0
    assert out.manifest["refiner"]["type"] == "WorldModelRefiner"
    # same seed -> same refined frames (a second run); another seed differs
    assert main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "again"), "--refiner",
                 str(tmp_path / "ref")]) == 0
    np.testing.assert_array_equal(read_rollout(tmp_path / "again").frames, out.frames)
    assert main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "s9"), "--refiner", str(tmp_path / "ref"),
                 "--seed", "9"]) == 0
    assert not np.array_equal(read_rollout(tmp_path / "s9").latents, out.latents)
    capsys.readouterr()
    # refusing: an existing output, an already refined input
    assert main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--refiner",
                 str(tmp_path / "ref")]) == 2
    assert "already holds a rollout" in capsys.readouterr().err
    assert main(["refine", str(tmp_path / "out"), "--out", str(tmp_path / "x"), "--refiner",
                 str(tmp_path / "ref")]) == 2
    assert "already refined" in capsys.readouterr().err


def test_layout_mismatch_fails_before_any_work(tmp_path, wm, capsys):
    from sana_wm_cli.main import main

    record_generation(tmp_path / "in", wm)
    other = PatchCodec(patch_size=4, temporal_stride=1, latent_channels=12)  # tiny-notext's channels, another stride
    tiny_refiner(codec=other).save(tmp_path / "ref")
    code = main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--refiner", str(tmp_path / "ref")])
    err = capsys.readouterr().err
    assert code == 2 and "refiner latent layout does not match" in err and "spatial_stride 4 vs 2" in err
    assert not (tmp_path / "out").exists()
    # the env wrapper refuses at construction, before any episode
    from sana_wm_env.envs.world_model_env import WorldModelEnv

    env = WorldModelEnv("nav", wm)
    with pytest.raises(ValueError, match="refiner latent layout does not match"):
        RefineEpisodeWrapper(env, WorldModelRefiner.from_folder(tmp_path / "ref"), tmp_path / "eps")


def test_wrapper_records_and_refines_each_episode(tmp_path, wm):
    from sana_wm_env.envs.world_model_env import WorldModelEnv

    ref = tiny_refiner(window=4)
    env = RefineEpisodeWrapper(WorldModelEnv("nav", wm, task_config={"max_steps": 3}), ref, tmp_path / "eps")
    acts = np.random.default_rng(1).uniform(-1, 1, (3, 6)).astype(np.float32)
    for episode in range(2):
        env.reset(seed=11)
        for a in acts:
            _, _, term, trunc, info = env.step(a)
        assert trunc and not term
        stage1 = read_rollout(tmp_path / "eps" / f"episode_{episode:05d}_stage1")
        refined = read_rollout(info["refined_rollout"])
        n = 1 + 3 * env.unwrapped.sim.frames_per_step
        assert len(stage1) == len(refined) == n and stage1.manifest["kind"] == "env"
        np.testing.assert_array_equal(stage1.actions, acts)
        assert stage1.manifest["steps"] == 3 and stage1.manifest["extra"]["truncated"]
        assert stage1.manifest["latent_pixel_frames"] == n  # one latent per frame (stride 1), sink included
        np.testing.assert_array_equal(refined.stage1_latents, stage1.latents)
        np.testing.assert_array_equal(info["refined_frames"], refined.frames)
        assert env.last_refined.path == refined.path
    # same seed and actions -> identical refined episodes
    np.testing.assert_array_equal(read_rollout(tmp_path / "eps" / "episode_00000").frames,
                                  read_rollout(tmp_path / "eps" / "episode_00001").frames)
    env.close()


def test_replay_saves_a_rollout_that_refine_reads(tmp_path, wm):
    from pathlib import Path

    from sana_wm_cli.main import main
    from world_model.bundles import save_world_model

    save_world_model(wm, tmp_path / "bundle")
    npy = tmp_path / "path.npy"
    np.save(npy, path_poses(12))
    image = Path(__file__).resolve().parents[1] / "examples" / "first_frame.png"
    code = main(["replay", str(npy), "--image", str(image), "--model", str(tmp_path / "bundle"), "--fps", "16",
                 "--out", str(tmp_path / "r.mp4"), "--save-rollout", str(tmp_path / "ro")])
    assert code == 0
    ro = read_rollout(tmp_path / "ro")
    assert ro.manifest["kind"] == "replay" and len(ro) == 12 and ro.manifest["latent_pixel_frames"] >= 12
    np.testing.assert_allclose(ro.c2w, path_poses(12), atol=1e-9)
    tiny_refiner().save(tmp_path / "ref")
    assert main(["refine", str(tmp_path / "ro"), "--out", str(tmp_path / "out"), "--refiner",
                 str(tmp_path / "ref")]) == 0
    assert len(read_rollout(tmp_path / "out")) == 12


def test_a_failed_recording_raises_its_own_error_and_is_marked_partial(tmp_path):
    codec = {"type": "patch", "patch_size": 2, "temporal_stride": 1, "latent_channels": 12}
    frames, poses = np.zeros((3, 8, 8, 3), np.uint8), path_poses(3)
    # An error inside the block (after frames whose latents never came): that error, not a validation error.
    with pytest.raises(RuntimeError, match="decoder failed"), RolloutWriter(
            tmp_path / "a", fps=8, intrinsics=K4, image_hw=(8, 8), codec=codec, video=False) as w:
        w.add_frames(frames[:1], poses[:1])
        w.add_latents(torch.zeros(12, 1, 4, 4))
        w.add_frames(frames[1:], poses[1:])
        raise RuntimeError("decoder failed")
    with pytest.raises(ValueError, match="is partial, failed: RuntimeError: decoder failed; record it again"):
        read_rollout(tmp_path / "a")
    m = read_rollout(tmp_path / "a", allow_partial=True).manifest
    assert m["partial"] and m["frames"] == 3 and m["latent_frames"] == 1
    # NaN latents are an error of their own; the folder is partial, not a valid shorter rollout.
    with pytest.raises(ValueError, match="latents hold NaN or inf"), RolloutWriter(
            tmp_path / "b", fps=8, intrinsics=K4, image_hw=(8, 8), codec=codec, video=False) as w:
        w.add_frames(frames[:1], poses[:1])
        w.add_latents(torch.full((12, 1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="is partial, failed: ValueError: latents"):
        validate_rollout(tmp_path / "b")
    # close() that finds the folder inconsistent raises that and leaves it partial, not complete-but-invalid.
    w = RolloutWriter(tmp_path / "c", fps=8, intrinsics=K4, image_hw=(8, 8), codec=codec, video=False)
    w.add_frames(frames, poses)
    w.add_latents(torch.zeros(12, 1, 4, 4))
    with pytest.raises(ValueError, match="1 latent frames decode to 1 frames, fewer than the 3"):
        w.close()
    with pytest.raises(ValueError, match="is partial, it did not validate"):
        validate_rollout(tmp_path / "c")
    # A partial rollout is no obstacle to recording again into the same folder (a complete one is).
    with RolloutWriter(tmp_path / "c", fps=8, intrinsics=K4, image_hw=(8, 8), video=False) as w:
        w.add_frames(frames, poses)
    assert len(read_rollout(tmp_path / "c")) == 3 and not read_rollout(tmp_path / "c").manifest["partial"]


def test_refining_into_nan_surfaces_the_error_and_leaves_a_partial_folder(tmp_path, wm, monkeypatch, capsys):
    from sana_wm_cli.main import main

    record_generation(tmp_path / "in", wm)
    ref = tiny_refiner()
    ref.save(tmp_path / "ref")
    monkeypatch.setattr(WorldModelRefiner, "refine", lambda self, z, **kw: torch.full_like(z, float("nan")))
    with pytest.raises(ValueError, match="latents_chunk must be a finite .* contains NaN or inf"):
        refine_rollout(tmp_path / "in", tmp_path / "out", ref)
    with pytest.raises(ValueError, match="is partial"):
        read_rollout(tmp_path / "out")
    # the CLI: one line naming the real error; --out checked against the input before any work
    assert main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "out2"), "--refiner",
                 str(tmp_path / "ref")]) == 2
    assert "contains NaN or inf" in capsys.readouterr().err
    assert main(["refine", str(tmp_path / "in"), "--out", str(tmp_path / "in"), "--overwrite", "--refiner",
                 str(tmp_path / "ref")]) == 2
    assert "--out" in capsys.readouterr().err and read_rollout(tmp_path / "in")


def test_refined_rollouts_of_a_show_cache_model_keep_frame_0s_points(tmp_path):
    from test_refiner import _geo_refiner

    from sana_wm_env.envs.world_model_env import WorldModelEnv
    from world_model.bundles import untrained_world_model

    geo = untrained_world_model("tiny-geo", image_hw=(16, 16))
    geo.streaming["show_cache"] = True
    env = RefineEpisodeWrapper(WorldModelEnv("nav", geo, task_config={"max_steps": 3}), _geo_refiner(geo),
                               tmp_path / "eps")
    env.reset(seed=11)
    for a in np.random.default_rng(1).uniform(-1, 1, (3, 6)).astype(np.float32):
        *_, info = env.step(a)
    env.close()
    stage1, refined = read_rollout(tmp_path / "eps" / "episode_00000_stage1"), read_rollout(info["refined_rollout"])
    shown = stage1.shown_first
    assert shown is not None and shown.shape == (len(stage1), 16, 16) and shown.dtype == np.bool_
    assert shown[0].all() and shown[1:].any() and not shown[1:].all()
    keep = np.repeat(shown[..., None], 3, axis=-1)
    np.testing.assert_array_equal(refined.frames[keep], stage1.frames[keep])  # frame 0's points, as shown
    assert (refined.frames[~keep] != stage1.frames[~keep]).any()  # the rest is the refiner's
    with RolloutWriter(tmp_path / "bad", fps=16, intrinsics=K4, image_hw=(16, 16)) as w:
        w.add_frames(np.zeros((2, 16, 16, 3), np.uint8), path_poses(2))
        with pytest.raises(ValueError, match="shown_first must be bool"):
            w.add_shown_first(np.ones((1, 16, 16)))
        with pytest.raises(ValueError, match="one mask per frame"):
            w.add_shown_first(np.ones((2, 16, 16), bool))
