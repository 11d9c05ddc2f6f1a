"""Gymnasium envs: registration, checkers, actions and poses, determinism, tasks, twin parity, imagine, rendering."""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame-ce "human" rendering without a display
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import json
import re
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from scipy.spatial.transform import Rotation

import sana_wm_env
from sana_wm_env.envs import env_ids
from world_model.bundles import untrained_world_model
from world_model.camera import se3_inverse, se3_log
from world_model.checkpoints import CheckpointNotFoundError

FWD = np.array([1.0, 0, 0, 0, 0, 0])


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def wm36():
    return untrained_world_model("tiny-notext", image_hw=(36, 36))


def make(env_id, model, **kw):
    return gym.make(env_id, model=model, **kw)


def test_import_is_light_and_ids_register_without_import():
    code = (
        "import sys, sana_wm_env, gymnasium as gym\n"
        "assert 'torch' not in sys.modules and 'mujoco' not in sys.modules, 'heavy import'\n"
        "print(sorted(k for k in gym.registry if k.startswith('SanaWM')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(sorted(env_ids()))
    code = (
        "import gymnasium as gym\n"
        "env = gym.make('sana_wm_env:SanaWM-TwinNav-v0', image_hw=(16, 16))\n"
        "obs, info = env.reset(seed=0)\n"
        "print(obs['image'].shape, obs['pose'].dtype)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(16, 16, 3) float32"


def test_default_bundled_model_runs_and_missing_models_raise_clearly(tmp_path):
    env = gym.make("SanaWM-Nav-v0")  # the bundled model, no arguments
    obs, _ = env.reset(seed=0)
    obs2, reward, terminated, truncated, info = env.step(FWD)
    assert obs["image"].shape == obs2["image"].shape == (64, 64, 3) and np.isfinite(reward)
    model = env.unwrapped.sim.model  # one step = one chunk of latent frames x the codec's temporal stride
    assert len(info["frames_c2w"]) == model.student.config.chunk_size * model.codec.temporal_stride
    if model.student.config.geometry_channels:  # the default model reads a geometry cache, started from the twin
        assert 0.0 <= info["cache_coverage"] <= 1.0
    env.close()
    with pytest.raises(CheckpointNotFoundError, match="no world-model bundle"):
        gym.make("SanaWM-Nav-v0", model=tmp_path / "missing")


@pytest.mark.parametrize("env_id", env_ids())
def test_gymnasium_check_env_without_warnings(env_id, wm):
    env = make(env_id, wm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []
    env.close()


@pytest.mark.parametrize("env_id", env_ids())
def test_sb3_check_env_without_warnings(env_id, wm36):
    from stable_baselines3.common.env_checker import check_env

    env = make(env_id, wm36)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, warn=True, skip_render_check=True)
    assert [str(w.message) for w in caught] == []
    env.close()


def test_same_seed_same_frames_and_other_seed_differs(wm):
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 6))

    def run(seed):
        env = make("SanaWM-Nav-v0", wm)
        obs, info = env.reset(seed=seed)
        frames, poses = [obs["image"]], [obs["pose"]]
        for a in actions:
            obs, *_ , info = env.step(a)
            frames.append(obs["image"])
            poses.append(obs["pose"])
        return np.stack(frames), np.stack(poses), info["frames_c2w"]

    f1, p1, c1 = run(7)
    f2, p2, c2 = run(7)
    f3, _, _ = run(8)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(f1, f3)


def test_actions_validated_clipped_and_counted(wm):
    env = make("SanaWM-TwinNav-v0", None, image_hw=(16, 16))
    env.reset(seed=1)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([0, 0, np.inf, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"shape"):
        env.step(np.zeros(5))
    _, _, _, _, info = env.step(np.array([3.0, 0, -2.0, 0, 0, 0.5]))
    assert info["action_clipped"] == 2 and info["action_clipped_total"] == 2
    # clipped motion equals the motion of the clipped action
    env2 = make("SanaWM-TwinNav-v0", None, image_hw=(16, 16))
    env2.reset(seed=1)
    _, _, _, _, info2 = env2.step(np.array([1.0, 0, -1.0, 0, 0, 0.5]))
    np.testing.assert_allclose(info["c2w"], info2["c2w"])
    assert info2["action_clipped"] == 0


def test_rep103_actions_move_by_the_limits_on_the_geodesic(wm):
    env = make("SanaWM-Nav-v0", wm).unwrapped
    sim = env.sim
    dt = sim.frames_per_step / sim.fps
    obs, _ = env.reset(seed=3)
    np.testing.assert_allclose(obs["pose"], [0, 0, 0, 0, 0, 0, 1], atol=1e-6)
    obs, _, _, _, info = env.step(FWD)
    np.testing.assert_allclose(obs["pose"][:3], [1.0 * dt, 0, 0], atol=1e-5)  # forward = body +x, 1 m/s default
    n = sim.frames_per_step
    assert info["frames_c2w"].shape == (n, 4, 4)
    np.testing.assert_allclose(info["timestamps"], (1 + np.arange(n)) / sim.fps)
    # yaw left + forward: frames equally spaced on the geodesic (constant twist between consecutive frames)
    obs0 = obs
    obs, _, _, _, info = env.step(np.array([1.0, 0, 0, 0, 0, 1.0]))
    c = torch.as_tensor(info["frames_c2w"])
    twists = se3_log(se3_inverse(c[:-1]) @ c[1:])
    np.testing.assert_allclose(twists, twists[:1].expand_as(twists), atol=1e-6)
    yaw0 = Rotation.from_quat(obs0["pose"][3:]).as_euler("ZYX")[0]
    yaw1 = Rotation.from_quat(obs["pose"][3:]).as_euler("ZYX")[0]
    assert yaw1 - yaw0 == pytest.approx(1.0 * dt, abs=1e-5)  # +yaw turns left at 1 rad/s
    # pitch > 0 turns the nose (and the camera's optical axis) down
    z_before = info["c2w"][2, 2]
    _, _, _, _, info = env.step(np.array([0, 0, 0, 0, 1.0, 0]))
    assert info["c2w"][2, 2] < z_before - 0.05


def test_opencv_action_frame_moves_along_the_optical_axis(wm):
    env = make("SanaWM-Nav-v0", wm, action_frame="opencv", action_limits={"linear": (0.5, 0.5, 2.0)}).unwrapped
    _, info0 = env.reset(seed=3)
    obs, _, _, _, info = env.step(np.array([0, 0, 1.0, 0, 0, 0]))
    dt = env.sim.step_seconds
    np.testing.assert_allclose(obs["pose"][:3], [0, 0, 2.0 * dt], atol=1e-5)  # camera +z = forward
    np.testing.assert_allclose(info["c2w"][:3, 3] - info0["c2w"][:3, 3], info0["c2w"][:3, 2] * 2.0 * dt, atol=1e-6)
    with pytest.raises(ValueError, match="action_frame"):
        make("SanaWM-Nav-v0", wm, action_frame="ned")


def test_twin_matches_world_model_spaces_poses_and_rewards(wm):
    a = make("SanaWM-Nav-v0", wm)
    b = make("SanaWM-TwinNav-v0", wm)  # the twin of this model: same geometry
    assert a.observation_space == b.observation_space and a.action_space == b.action_space
    oa, ia = a.reset(seed=11)
    ob, ib = b.reset(seed=11)
    np.testing.assert_array_equal(oa["image"], ob["image"])  # the first frame is the twin's render
    np.testing.assert_array_equal(oa["goal"], ob["goal"])
    assert ia["scene"] == ib["scene"]
    for act in np.random.default_rng(1).uniform(-1, 1, (3, 6)):
        ra = a.step(act)
        rb = b.step(act)
        np.testing.assert_array_equal(ra[0]["pose"], rb[0]["pose"])
        assert ra[1:4] == rb[1:4]
        np.testing.assert_array_equal(ra[4]["frames_c2w"], rb[4]["frames_c2w"])
    # the twin renders what the scene shows at the pose
    sim = b.unwrapped.sim
    expect = sim._renderer(0).render(rb[4]["c2w"], sim.subs[0].intrinsics, check_inside=False)[0]
    np.testing.assert_array_equal(rb[0]["image"], expect)


def _geometry(sim):
    return (sim.image_hw, sim.fps, sim.frames_per_step, sim.fov_deg, sim.step_seconds,
            sim.default_intrinsics.tolist())


def test_twin_of_a_bundle_name_copies_that_models_geometry():
    """Whatever the default bundle is, its twin (by name, or without a model) steps like its world-model env."""
    wm_env = gym.make("SanaWM-Nav-v0", model="default")
    want = _geometry(wm_env.unwrapped.sim)
    twins = [gym.make("SanaWM-TwinNav-v0", model="default"), gym.make("SanaWM-TwinNav-v0"),
             gym.make("SanaWM-TwinNav-v0", model=None)]
    for twin in twins:
        assert _geometry(twin.unwrapped.sim) == want
        assert twin.observation_space == wm_env.observation_space
        assert twin.metadata["render_fps"] == wm_env.metadata["render_fps"]
    wm_env.reset(seed=5)
    twins[0].reset(seed=5)
    *_, info_wm = wm_env.step(FWD)
    *_, info_twin = twins[0].step(FWD)
    assert len(info_twin["frames_c2w"]) == len(info_wm["frames_c2w"]) == wm_env.unwrapped.sim.frames_per_step
    np.testing.assert_array_equal(info_twin["timestamps"], info_wm["timestamps"])
    np.testing.assert_array_equal(info_twin["frames_c2w"], info_wm["frames_c2w"])
    # the vector twin of the same name too
    vec_wm = gym.make_vec("SanaWM-Nav-v0", 2, vectorization_mode="vector_entry_point", model="default")
    vec_twin = gym.make_vec("SanaWM-TwinNav-v0", 2, vectorization_mode="vector_entry_point", model="default")
    assert _geometry(vec_twin.sim) == _geometry(vec_wm.sim) == want
    assert vec_twin.single_observation_space == vec_wm.single_observation_space
    # explicit geometry still replaces the model's, one value at a time
    small = gym.make("SanaWM-TwinNav-v0", model="default", image_hw=(16, 16)).unwrapped.sim
    assert small.image_hw == (16, 16) and _geometry(small)[1:4] == want[1:4]
    for e in (wm_env, *twins, vec_wm, vec_twin):
        e.close()


def test_twin_of_an_untrained_model_copies_its_chunk(wm):
    """A model with another chunk length than the default bundle's: the twin takes that model's."""
    twin = make("SanaWM-TwinNav-v0", wm).unwrapped.sim
    assert _geometry(twin) == _geometry(make("SanaWM-Nav-v0", wm).unwrapped.sim)


def test_nav_success_terminates_and_step_after_end_raises():
    env = make("SanaWM-TwinNav-v0", None, image_hw=(16, 16))
    env.reset(seed=2, options={"goal": [0.6, 0, 0, 0, 0, 0, 1]})
    rewards, info, term = [], {}, False
    for _ in range(10):
        _, r, term, trunc, info = env.step(FWD)
        rewards.append(r)
        if term or trunc:
            break
    assert term and info["is_success"] and info["distance"] < 0.3
    assert all(r > 0 for r in rewards) and rewards[-1] > 1.0  # progress each step, +1 bonus at the end
    with pytest.raises(RuntimeError, match="reset"):
        env.step(FWD)


def test_truncation_collision_and_explore_reward():
    # the turn per step is the scenario's, not the default bundled model's: pin the step's duration
    env = make("SanaWM-TwinExplore-v0", None, image_hw=(16, 16), fps=16.0, frames_per_step=3,
               task_config={"max_steps": 3})
    env.reset(seed=4)
    out = [env.step(np.array([0, 0, 0, 0, 0, 1.0])) for _ in range(3)]
    assert [o[3] for o in out] == [False, False, True] and not any(o[2] for o in out)
    assert out[-1][4]["views"] >= 2 and max(o[1] for o in out) > 0
    # flying up through the ceiling of a room ends the episode with the collision penalty
    env = make("SanaWM-TwinNav-v0", None, image_hw=(16, 16), task_config={"max_steps": 200})
    env.reset(seed=4)
    for _ in range(200):
        _, r, term, trunc, info = env.step(np.array([0, 0, 1.0, 0, 0, 0]))
        if term or trunc:
            break
    assert term and info["collision"] and r < -0.5


def test_reset_from_image_and_intrinsics(wm, tmp_path):
    from PIL import Image

    env = make("SanaWM-Nav-v0", wm)
    img = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    k = [20.0, 20.0, 16.0, 12.0]
    obs, info = env.reset(seed=0, options={"image": img, "intrinsics": k, "goal": [1, 0, 0, 0, 0, 0, 1]})
    assert obs["image"].shape == (16, 16, 3) and info["scene"] == ""
    # resized to 16 x 21 (cover), then 2 columns cropped on the left
    np.testing.assert_allclose(info["intrinsics"], [20 * 21 / 32, 20 * 16 / 24, 16 * 21 / 32 - 2, 8.0], atol=1e-5)
    np.testing.assert_allclose(obs["goal"], [1, 0, 0, 0, 0, 0, 1], atol=1e-6)
    obs, *_ = env.step(FWD)
    assert np.isfinite(obs["pose"]).all()
    path = tmp_path / "start.png"
    Image.fromarray(img).save(path)
    obs2, _ = env.reset(seed=0, options={"image": str(path), "intrinsics": k, "goal": [1, 0, 0, 0, 0, 0, 1]})
    np.testing.assert_array_equal(obs2["image"], make("SanaWM-Nav-v0", wm).reset(
        seed=0, options={"image": img, "intrinsics": k, "goal": [1, 0, 0, 0, 0, 0, 1]})[0]["image"])
    with pytest.raises(ValueError, match="intrinsics"):
        env.reset(options={"image": img})
    with pytest.raises(ValueError, match="image"):
        env.reset(options={"image": np.zeros((8, 8), np.float32), "intrinsics": k})
    with pytest.raises(ValueError, match="goal_image"):
        make("SanaWM-ImageNav-v0", wm).reset(options={"image": img, "intrinsics": k, "goal": [1, 0, 0, 0, 0, 0, 1]})
    with pytest.raises(ValueError, match="world-model"):
        make("SanaWM-TwinNav-v0", None, image_hw=(16, 16)).reset(options={"image": img, "intrinsics": k})


K16 = [20.0, 20.0, 16.0, 12.0]
IMG = np.zeros((24, 32, 3), np.uint8)
GOAL = [1.0, 0, 0, 0, 0, 0, 1]
# (options, what the error must name: the argument, the expected form, what was given)
BAD_OPTIONS = [
    ({"seed": 3}, r"unknown key\(s\) 'seed'.*known keys: 'scene'"),
    ({"goal_pose": GOAL}, r"unknown key\(s\) 'goal_pose'.*'goal' \(goal pose"),
    ({"scene": "city"}, r'options\["scene"\] must be a \(family, seed\) pair .*rooms.*got \'city\''),
    ({"scene": ("mars", 3)}, r'options\["scene"\] must be a \(family, seed\) pair.*got \(\'mars\', 3\)'),
    ({"scene": ("rooms", "3")}, r'options\["scene"\].*seed an int in \[0, .*got \(\'rooms\', \'3\'\)'),
    ({"scene": ("rooms", -1)}, r'options\["scene"\].*got \(\'rooms\', -1\)'),
    ({"scene": ("rooms", 2.5)}, r'options\["scene"\].*got \(\'rooms\', 2\.5\)'),
    ({"scene": ("rooms", 1, 2)}, r'options\["scene"\] must be a \(family, seed\) pair.*got \(\'rooms\', 1, 2\)'),
    ({"intrinsics": K16}, r'options\["intrinsics"\] applies only with options\["image"\]'),
    ({"depth": np.ones((4, 4))}, r'options\["depth"\] applies only with options\["image"\]'),
    ({"goal_image": IMG}, r'options\["goal_image"\] applies only with options\["image"\]'),
    ({"scene": ("rooms", 1), "image": IMG, "intrinsics": K16}, r'options\["scene"\].*options\["image"\].*one of'),
    ({"image": np.zeros((0, 8, 3), np.uint8), "intrinsics": K16},
     r'options\["image"\] must be a path or a uint8 \(H, W, 3\) array with H, W >= 1, got uint8 \(0, 8, 3\)'),
    ({"image": IMG, "intrinsics": [1j, 20, 16, 12]}, r'options\["intrinsics"\] must be \[fx, fy, cx, cy\].*1j'),
    ({"image": IMG, "intrinsics": ["20", "20", "16", "12"]}, r'options\["intrinsics"\] must be.*\'20\''),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS, ids=[str(i) for i in range(len(BAD_OPTIONS))])
def test_reset_rejects_bad_options_by_name(wm, options, message):
    env = make("SanaWM-Nav-v0", wm)
    with pytest.raises(ValueError, match=message):
        env.reset(seed=0, options={"goal": GOAL, **options} if "image" in options else options)
    env.close()


def test_reset_rejects_unreadable_image_files_by_name(wm, tmp_path):
    from PIL import Image

    png = tmp_path / "ok.png"
    Image.fromarray(np.full((24, 32, 3), 99, np.uint8)).save(png)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png.read_bytes()[:60])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all" * 10)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    env = make("SanaWM-Nav-v0", wm)
    for path in (truncated, garbage, empty):
        with pytest.raises(ValueError, match=r'options\["image"\] must be an image file \(PNG, JPEG, \.\.\.\) or a '
                                             rf"uint8 \(H, W, 3\) array; '{re.escape(str(path))}' does not read "
                                             "as an image"):
            env.reset(options={"image": str(path), "intrinsics": K16, "goal": GOAL})
    image_nav = make("SanaWM-ImageNav-v0", wm)
    with pytest.raises(ValueError, match=rf'options\["goal_image"\] must be an image file.*{re.escape(str(garbage))}'):
        image_nav.reset(options={"image": str(png), "intrinsics": K16, "goal": GOAL, "goal_image": str(garbage)})
    obs, _ = image_nav.reset(options={"image": str(png), "intrinsics": K16, "goal": GOAL, "goal_image": str(png)})
    assert obs["goal"].shape == (16, 16, 3)  # the good file still loads


def test_twin_and_vector_envs_reject_bad_options_too(wm):
    with pytest.raises(ValueError, match=r'options\["scene"\] must be a \(family, seed\) pair'):
        make("SanaWM-TwinNav-v0", wm).reset(options={"scene": "city"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'sceen'"):
        gym.make_vec("SanaWM-TwinNav-v0", 2, vectorization_mode="vector_entry_point", model=wm).reset(
            options={"sceen": ("rooms", 1)})
    obs, info = make("SanaWM-TwinNav-v0", wm).reset(options={"scene": ("rooms", 7)})  # a good one still works
    assert info["scene"] == "rooms/7"


def test_non_real_actions_are_rejected_by_name(wm):
    env = make("SanaWM-TwinNav-v0", wm)
    env.reset(seed=1)
    bad = [(np.array([1 + 2j, 0, 0, 0, 0, 0]), "complex128"), ([0.5j, 0, 0, 0, 0, 0], "complex128"),
           (["1", "0", "0", "0", "0", "0"], "<U1"), ([None] * 6, "object")]
    for action, dtype in bad:
        with pytest.raises(ValueError, match=rf"action must be real numbers \(bool, int or float\) of shape \(6,\) "
                                             rf"or \(1, 6\), got dtype {dtype}"):
            env.step(action)
    with pytest.raises(ValueError, match=r"action must be real numbers of shape \(6,\) or \(1, 6\)"):
        env.step([[1.0, 0], [0, 0, 0]])  # ragged
    with pytest.raises(ValueError, match=r"real numbers .* of shape \(K, H, 6\), got dtype complex128"):
        env.unwrapped.imagine(np.zeros((2, 1, 6), complex))
    venv = gym.make_vec("SanaWM-TwinNav-v0", 2, vectorization_mode="vector_entry_point", model=wm)
    venv.reset(seed=1)
    with pytest.raises(ValueError, match=r"real numbers .* of shape \(2, 6\), got dtype complex128"):
        venv.step(np.zeros((2, 6), complex))
    _, _, _, _, info = env.step(np.array([True, 0, 0, 0, 0, 0]))  # bools and ints are real numbers
    assert info["action_clipped"] == 0


def test_obs_modes_and_imagenav_goal_image(wm):
    env = make("SanaWM-Nav-v0", wm, obs_mode="image")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (16, 16, 3) and env.observation_space.contains(obs)
    env = make("SanaWM-Nav-v0", wm, obs_mode="frames")
    obs, _ = env.reset(seed=0)
    n = env.unwrapped.sim.frames_per_step
    assert obs["image"].shape == (n, 16, 16, 3)
    obs, *_ = env.step(FWD)
    assert env.observation_space.contains(obs)
    env = make("SanaWM-ImageNav-v0", wm)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"image", "goal"} and obs["goal"].shape == (16, 16, 3)
    sim = env.unwrapped.sim
    goal_c2w = sim.subs[0].episode.goal_body @ sim.mount
    np.testing.assert_array_equal(obs["goal"], sim._render(0, goal_c2w))  # the goal view, rendered in the twin
    with pytest.raises(ValueError, match="obs_mode"):
        make("SanaWM-Nav-v0", wm, obs_mode="pixels")


def test_imagine_leaves_state_unchanged_and_matches_real_rollout(wm):
    env = make("SanaWM-Nav-v0", wm)
    env.reset(seed=5)
    env.step(FWD)
    plan = np.random.default_rng(2).uniform(-1, 1, (3, 2, 6))
    before = [(m, s) for m, s in env.unwrapped.sim.backend.groups]
    out = env.unwrapped.imagine(plan)
    n = env.unwrapped.sim.frames_per_step
    assert out["frames"].shape == (3, 2 * n, 16, 16, 3) and out["pose"].shape == (3, 2, 7)
    assert env.unwrapped.sim.backend.groups == before  # the same (immutable) states
    frames = []
    for h in range(2):
        obs, r, *_ , info = env.step(plan[1, h])
        frames.append(obs["image"])
        assert r == pytest.approx(out["reward"][1, h])
    np.testing.assert_array_equal(out["frames"][1, n - 1], frames[0])  # candidate 1 is what the env then does
    np.testing.assert_array_equal(out["frames"][1, -1], frames[1])
    np.testing.assert_allclose(out["pose"][1, -1], obs["pose"], atol=1e-6)
    with pytest.raises(ValueError, match=r"\(K, H, 6\)"):
        env.unwrapped.imagine(np.zeros((2, 6)))


def test_select_state_repeats_and_subsets_exactly(wm):
    gen = wm.streaming_generator()
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    k = torch.tensor([10.0, 10.0, 8.0, 8.0])
    st = gen.start(img, k, seed=[3, 4])
    poses = torch.eye(4).expand(2, 3, 4, 4).clone()
    poses[:, :, 0, 3] = torch.arange(1, 4) * 0.1
    _, st = gen.step(st, poses)
    both, _ = gen.step(st, poses)
    one, _ = gen.step(st.select([1, 1]), poses[[1, 1]])
    # the same element's frames, up to float reassociation across batch sizes
    torch.testing.assert_close(one[0], both[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(one[1], one[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="index"):
        st.select([2])


def test_long_rollout_bounded_state_and_finite_poses(wm):
    env = make("SanaWM-Explore-v0", wm, task_config={"max_steps": 10_000})
    env.reset(seed=9)
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(40):
        a = rng.uniform(-1, 1, 6) * np.array([0.2, 0.2, 0.2, 0.2, 0.2, 1.0])
        obs, r, term, trunc, info = env.step(a)
        assert np.isfinite(obs["pose"]).all() and np.isfinite(r)
        if term:  # a collision in the scene: start again
            env.reset()
        group_state = env.unwrapped.sim.backend.groups[0][1]
        sizes.append(group_state.nbytes())
        rot = info["c2w"][:3, :3]
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
    assert max(sizes[10:]) == min(sizes[10:])  # streaming cache is flat in episode length


def test_rgb_array_hud_and_human_render(wm):
    env = make("SanaWM-Nav-v0", wm, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape[1] == 256 and frame.shape[0] > 256
    np.testing.assert_array_equal(frame[:16:16, :16:16], obs["image"][:1, :1])  # enlarged frame on top
    assert frame[256:].max() > 0  # the HUD text
    env.step(FWD)
    assert not np.array_equal(env.render()[256:], frame[256:])  # the HUD follows the step
    human = make("SanaWM-TwinNav-v0", None, image_hw=(16, 16), render_mode="human")
    human.reset(seed=0)
    human.step(FWD)
    assert human.render() is None
    human.close()


def test_package_exports_env_classes():
    assert sana_wm_env.WorldModelEnv.__name__ == "WorldModelEnv"
    assert sana_wm_env.TwinEnv.source == "twin"


def test_play_loop_with_injected_keys(wm, tmp_path):
    import imageio.v3 as iio
    import pygame

    from sana_wm_cli.play import keys_to_action, run_play

    assert keys_to_action({"w", "left"}).tolist() == [1, 0, 0, 0, 0, 1]
    assert keys_to_action({"w", "s", "up"}).tolist() == [0, 0, 0, 0, -1, 0]
    env = gym.make("SanaWM-Nav-v0", model=wm, render_mode="human", task_config={"max_steps": 1000})

    def inject(step):
        if step == 0:
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_w))
        if step == 3:
            pygame.event.post(pygame.event.Event(pygame.KEYUP, key=pygame.K_w))
        if step == 4:
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE))

    poses = []
    orig_step = env.unwrapped.step

    def spy(action):
        out = orig_step(action)
        poses.append(out[0]["pose"].copy())
        return out

    env.unwrapped.step = spy
    result = run_play(env, tmp_path / "play.mp4", seed=0, before_step=inject)
    n = env.unwrapped.sim.frames_per_step
    assert result["steps"] == 4 and result["frames"] == 1 + 4 * n
    assert poses[2][0] > poses[0][0] > 0 and poses[3][0] == pytest.approx(poses[2][0])  # W held, then released
    assert iio.imread(tmp_path / "play.mp4").shape[0] == 1 + 4 * n


def test_play_cli_headless_twin(tmp_path):
    import argparse

    from sana_wm_cli import play

    parser = argparse.ArgumentParser()
    play.register(parser.add_subparsers())
    args = parser.parse_args(["play", "--twin", "--image-size", "16x16", "--max-steps", "2",
                              "--out", str(tmp_path / "p.mp4")])
    assert args.func(args) == 0
    assert (tmp_path / "p.mp4").stat().st_size > 0


HEADLESS_HUMAN = """
import json, os, sys, warnings
import gymnasium as gym, numpy as np
import sana_wm_env
from sana_wm_cli.main import main

out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    human = gym.make("SanaWM-TwinNav-v0", image_hw=(16, 16), render_mode="human")
    first, _ = human.reset(seed=0)
    human.step(np.ones(6))
    human.close()
out["warned"] = [str(w.message) for w in caught if "dummy" in str(w.message)]
out["driver_left_set"] = "SDL_VIDEODRIVER" in os.environ
later, _ = gym.make("SanaWM-TwinNav-v0", image_hw=(16, 16)).reset(seed=0)  # a later renderer in this process
out["later_same"] = bool(np.array_equal(later["image"], first["image"]))
out["play_rc"] = main(["play", "--twin", "--image-size", "16x16", "--max-steps", "2", "--out", sys.argv[1]])
out["later_after_play"] = bool(np.array_equal(
    gym.make("SanaWM-TwinNav-v0", image_hw=(16, 16)).reset(seed=0)[0]["image"], first["image"]))
print("RESULT", json.dumps(out))
"""


def test_human_render_and_play_without_a_display_keep_mujoco_rendering(tmp_path):
    """No DISPLAY and no SDL_VIDEODRIVER: SDL's dummy driver (with a warning), never the EGL "offscreen" one that
    tears down MuJoCo's EGL display; later renders in the same process still work and play writes its video."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    video = tmp_path / "p.mp4"
    res = subprocess.run([sys.executable, "-c", HEADLESS_HUMAN, str(video)], capture_output=True, text=True, env=env,
                         timeout=600)
    lines = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["warned"] and "nothing is shown" in out["warned"][0]
    assert not out["driver_left_set"]
    assert out["later_same"] and out["later_after_play"]
    assert out["play_rc"] == 0 and video.stat().st_size > 0


# -- geometry-guided models: depth observations, cache coverage, first-frame depth ----------------------------
@pytest.fixture(scope="module")
def geo36():
    wm = untrained_world_model("tiny-geo", image_hw=(36, 36))
    with torch.no_grad():  # wake the zero-initialised geometry and camera inputs
        gen = torch.Generator().manual_seed(0)
        for p in wm.student.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return wm


def test_depth_observation_and_cache_coverage_of_a_geometry_guided_model(geo36):
    env = make("SanaWM-Nav-v0", geo36, depth_obs=True)
    assert env.observation_space["depth"].shape == (36, 36) and env.observation_space["depth"].dtype == np.float32
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    # frame 0's depth is the twin's: the same as the twin env's first depth observation
    twin = make("SanaWM-TwinNav-v0", geo36, depth_obs=True)
    twin_obs, _ = twin.reset(seed=3)
    np.testing.assert_allclose(obs["depth"], twin_obs["depth"], rtol=1e-6)
    assert (obs["depth"] > 0).any()
    for _ in range(3):
        obs, _, _, _, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and 0.0 <= info["cache_coverage"] <= 1.0
        twin_obs, *_ = twin.step(np.zeros(6, np.float32))
        assert twin.observation_space.contains(twin_obs)
    # frames mode: one depth map per frame of the step
    frames = make("SanaWM-Nav-v0", geo36, depth_obs=True, obs_mode="frames")
    obs, _ = frames.reset(seed=1)
    n = frames.unwrapped.sim.frames_per_step
    assert obs["depth"].shape == (n, 36, 36) and obs["image"].shape == (n, 36, 36, 3)
    for e in (env, twin, frames):
        e.close()


def test_a_user_image_starts_with_its_depth_or_with_generated_depth(geo36, tmp_path):
    image = (np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)
    depth = np.full((48, 48), 2.5, np.float32)
    np.save(tmp_path / "d.npy", depth)
    env = make("SanaWM-Nav-v0", geo36, depth_obs=True)
    opts = {"image": image, "intrinsics": [40.0, 40.0, 24.0, 24.0]}
    given, _ = env.reset(seed=0, options={**opts, "depth": str(tmp_path / "d.npy")})
    np.testing.assert_allclose(given["depth"], 2.5)
    generated, _ = env.reset(seed=0, options=opts)
    assert generated["depth"].shape == (36, 36) and np.isfinite(generated["depth"]).all()
    again, _ = env.reset(seed=0, options=opts)
    np.testing.assert_array_equal(again["depth"], generated["depth"])  # seeded
    with pytest.raises(ValueError, match=r'options\["depth"\] is 4x48'):
        env.reset(seed=0, options={**opts, "depth": depth[:4]})
    env.close()


def test_depth_observation_needs_a_model_that_generates_depth(wm36):
    with pytest.raises(ValueError, match="generates no depth"):
        make("SanaWM-Nav-v0", wm36, depth_obs=True)
    with pytest.raises(ValueError, match="depth_obs needs obs_mode"):
        make("SanaWM-TwinNav-v0", None, depth_obs=True, obs_mode="image")
