"""Vector envs (one batched generator call for N sub-envs, NEXT_STEP autoreset) and the SB3 VecEnv adapter."""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import sana_wm_env  # noqa: F401
from world_model.bundles import save_world_model

pytestmark = pytest.mark.usefixtures("one_thread")



def make_vec(env_id, n, **kw):
    return gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **kw)


def test_vector_env_batches_and_matches_single_envs(wm):
    venv = make_vec("SanaWM-Nav-v0", 3, model=wm)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = venv.reset(seed=10)
    assert venv.observation_space.contains(obs) and obs["image"].shape == (3, 16, 16, 3)
    actions = np.random.default_rng(0).uniform(-1, 1, (2, 3, 6)).astype(np.float32)
    frames = []
    for a in actions:
        obs, rew, term, trunc, info = venv.step(a)
        assert info["generator_calls"].tolist() == [1, 1, 1]  # all 3 sub-envs in one generator call
        frames.append(obs["image"])
    for i in range(3):  # sub-env i of a vector env seeded 10 == a single env seeded 10 + i
        env = gym.make("SanaWM-Nav-v0", model=wm)
        env.reset(seed=10 + i)
        for t, a in enumerate(actions):
            o, *_ = env.step(a[i])
            diff = np.abs(o["image"].astype(int) - frames[t][i].astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # equal up to float reassociation in the batch
    with pytest.raises(ValueError, match=r"\(3, 6\)"):
        venv.step(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="finite"):
        venv.step(np.full((3, 6), np.nan))


def test_next_step_autoreset_and_phase_groups(wm, tmp_path):
    path = save_world_model(wm, tmp_path / "bundle")  # any bundle path works as the model
    venv = make_vec("SanaWM-Nav-v0", 2, model=str(path), task_config={"max_steps": 2})
    venv.reset(seed=0)
    a = np.zeros((2, 6), np.float32)
    a[:, 0] = 1.0
    venv.step(a)
    obs, rew, term, trunc, info = venv.step(a)
    assert trunc.tolist() == [True, True] and not term.any()
    obs, rew, term, trunc, info = venv.step(a)  # NEXT_STEP: this step resets both, ignoring the actions
    assert rew.tolist() == [0.0, 0.0] and not (term | trunc).any()
    np.testing.assert_allclose(obs["pose"], np.tile([0, 0, 0, 0, 0, 0, 1.0], (2, 1)), atol=1e-6)
    assert info["_scene"].all()
    # a sub-env reset alone runs in its own chunk phase: two generator calls, sub-env 1 unaffected
    venv2 = make_vec("SanaWM-Nav-v0", 2, model=wm)
    venv2.reset(seed=4)
    venv2.step(a)
    venv2.reset_envs([0])  # the public batched API: sub-env 0 alone, its random stream continued
    _, _, _, _, info = venv2.step(a)
    assert info["generator_calls"].tolist() == [2, 2]
    single = gym.make("SanaWM-Nav-v0", model=wm)
    single.reset(seed=5)
    single.step(a[1])
    o, *_ = single.step(a[1])
    venv_obs = venv2.sim.observe(1)
    assert np.abs(o["image"].astype(int) - venv_obs["image"].astype(int)).max() <= 1


def test_twin_vector_env_has_same_spaces_and_rewards(wm):
    a = make_vec("SanaWM-Nav-v0", 2, model=wm)
    b = make_vec("SanaWM-TwinNav-v0", 2, model=wm)
    assert a.single_observation_space == b.single_observation_space
    a.reset(seed=3)
    b.reset(seed=3)
    act = np.random.default_rng(1).uniform(-1, 1, (2, 6))
    ra, rb = a.step(act), b.step(act)
    np.testing.assert_array_equal(ra[1], rb[1])
    np.testing.assert_array_equal(ra[0]["pose"], rb[0]["pose"])
    assert b.render() is None  # no render_mode given
    c = make_vec("SanaWM-TwinNav-v0", 2, image_hw=(16, 16), render_mode="rgb_array")
    c.reset(seed=0)
    assert len(c.render()) == 2


def test_reset_takes_one_seed_per_sub_env():
    """``reset(seed=[a, b])``: sub-env i starts as a single env seeded with the i-th seed."""
    kw = {"image_hw": (16, 16)}
    venv = make_vec("SanaWM-TwinNav-v0", 2, **kw)
    obs, _ = venv.reset(seed=[5, 9])
    for i, s in enumerate((5, 9)):
        single, _ = gym.make("SanaWM-TwinNav-v0", **kw).reset(seed=s)
        for key in single:
            np.testing.assert_array_equal(obs[key][i], single[key])
    with pytest.raises(ValueError, match="list of 2 ints"):
        venv.reset(seed=[1, 2, 3])


def test_sb3_adapter_same_step_reset_and_ppo_smoke():
    from stable_baselines3 import PPO

    from policies.sb3 import make_sb3_vec_env

    venv = make_sb3_vec_env("SanaWM-TwinNav-v0", num_envs=2, image_hw=(36, 36), task_config={"max_steps": 2})
    venv.seed(1)
    obs = venv.reset()
    assert obs["image"].shape == (2, 36, 36, 3) and obs["goal"].shape == (2, 7)
    act = np.zeros((2, 6), np.float32)
    venv.step(act)
    obs, rew, done, infos = venv.step(act)
    assert done.tolist() == [True, True]
    assert all(i["TimeLimit.truncated"] for i in infos)
    assert infos[0]["terminal_observation"]["image"].shape == (36, 36, 3)
    np.testing.assert_allclose(obs["pose"], np.tile([0, 0, 0, 0, 0, 0, 1.0], (2, 1)), atol=1e-6)  # reset already
    # the SB3 sub-env API: env_method calls a per-sub-env method once per selected sub-env
    calls = []
    real_imagine = venv.venv.imagine
    venv.venv.imagine = lambda i, *a, **k: calls.append(i) or real_imagine(i, *a, **k)
    out = venv.env_method("imagine", np.zeros((2, 1, 6)), frames=False, indices=[1])
    assert calls == [1] and len(out) == 1 and out[0]["pose"].shape == (2, 1, 7)
    calls.clear()
    assert len(venv.env_method("imagine", np.zeros((1, 1, 6)), frames=False)) == 2 and calls == [0, 1]
    del venv.venv.imagine
    with pytest.raises(ValueError, match="per-sub-env method"):
        venv.env_method("close")
    assert [f.shape[2] for f in venv.env_method("render_env")] == [3, 3]
    # set_attr honours indices: all sub-envs at once is fine, a strict subset is refused (one shared simulation)
    venv.set_attr("note", "a", indices=[0, 1])
    assert venv.get_attr("note") == ["a", "a"] and venv.get_attr("note", indices=[1]) == ["a"]
    with pytest.raises(ValueError, match=r"all 2 of them.*\[1\]"):
        venv.set_attr("note", "b", indices=[1])
    assert venv.get_attr("note") == ["a", "a"]
    model = PPO("MultiInputPolicy", venv, n_steps=4, batch_size=8, n_epochs=1, device="cpu", seed=0)
    model.learn(8)
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (2, 6)
    venv.close()


def test_vector_env_batched_api(wm):
    venv = make_vec("SanaWM-Nav-v0", 3, model=wm, task_config={"max_steps": 1}).unwrapped
    assert venv.limits is venv.sim.limits and venv.step_seconds == venv.sim.step_seconds
    assert venv.action_frame == "rep103"
    obs, infos = venv.reset_envs([2, 0], seeds=[7, None])
    assert len(obs) == len(infos) == 2 and all(i["step"] == 0 for i in infos)
    single = gym.make("SanaWM-Nav-v0", model=wm)  # a seeded sub-env restarts like a single env with that seed
    o, _ = single.reset(seed=7)
    np.testing.assert_array_equal(obs[0]["image"], o["image"])
    np.testing.assert_allclose(obs[0]["goal"], o["goal"])
    s_obs, rew, term, trunc, s_infos = venv.step_envs([0], np.zeros((1, 6), np.float32))
    assert len(s_obs) == 1 and rew.shape == term.shape == trunc.shape == (1,) and trunc[0]
    with pytest.raises(RuntimeError, match="sub-env 0.*reset"):
        venv.step_envs([0], np.zeros((1, 6), np.float32))  # no autoreset in the batched API
    with pytest.raises(ValueError, match="indices"):
        venv.step_envs([3], np.zeros((1, 6)))
    with pytest.raises(ValueError, match="indices"):
        venv.reset_envs([0, 0])
    with pytest.raises(ValueError, match="seeds must have one entry per index"):
        venv.reset_envs([0], seeds=[1, 2])
    assert venv.render_env(2).ndim == 3


def test_geometry_guided_vector_env_resets_one_sub_env_and_imagines():
    import torch

    from world_model.bundles import untrained_world_model

    wm = untrained_world_model("tiny-geo", image_hw=(16, 16))
    with torch.no_grad():
        for p in wm.student.parameters():
            if not p.any():
                p.add_(0.05 * torch.randn_like(p))
    venv = make_vec("SanaWM-Nav-v0", 2, model=wm, depth_obs=True, task_config={"max_steps": 2})
    obs, _ = venv.reset(seed=4)
    assert obs["depth"].shape == (2, 16, 16)
    for _ in range(4):  # sub-envs end after 2 steps and restart on the next one: caches are selected per element
        obs, _, _, _, info = venv.step(np.zeros((2, 6), np.float32))
        assert venv.observation_space.contains(obs) and np.isfinite(obs["depth"]).all()
    sim = venv.unwrapped.sim if hasattr(venv.unwrapped, "sim") else venv.sim
    out = sim.imagine(0, np.zeros((3, 2, 6)))
    assert out["frames"].shape[:2] == (3, 2 * sim.frames_per_step)
    venv.close()
