"""Behaviour-cloning warm start (policies.imitation): the batched expert, expert data, pretraining, the example."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from _scripts import load_script
from stable_baselines3 import PPO

import sana_wm_env  # noqa: F401
from policies.imitation import collect_expert_data, pretrain_policy, scripted_expert
from policies.sb3 import GoalFrameExtractor, SB3Policy, make_sb3_vec_env
from policies.scripted import PoseController

pytestmark = pytest.mark.usefixtures("one_thread")


def _nav_agent(num_envs: int = 2, max_steps: int = 5) -> PPO:
    venv = make_sb3_vec_env("SanaWM-TwinNav-v0", num_envs=num_envs, task_config={"max_steps": max_steps})
    return PPO("MultiInputPolicy", venv, n_steps=16, batch_size=16, seed=0, device="cpu",
               policy_kwargs={"features_extractor_class": GoalFrameExtractor, "log_std_init": -1.0})


def test_scripted_expert_is_the_pose_controller_of_each_sub_env():
    agent = _nav_agent(num_envs=2)
    venv = agent.get_env()
    venv.seed(10)
    obs = venv.reset()
    expert = scripted_expert(venv)
    singles = [gym.make("SanaWM-TwinNav-v0", task_config={"max_steps": 5}) for _ in range(2)]
    single_obs = [env.reset(seed=10 + i)[0] for i, env in enumerate(singles)]
    controllers = [PoseController.for_env(env) for env in singles]
    for _ in range(4):
        actions = expert(obs)
        assert actions.shape == (2, 6) and np.abs(actions).max() <= 1.0
        for i in range(2):  # sub-env i of a vector env seeded 10 == a single env seeded 10 + i
            np.testing.assert_allclose(actions[i], controllers[i].act(single_obs[i]), atol=1e-6)
            single_obs[i], *_ = singles[i].step(actions[i])
        obs, *_ = venv.step(actions)
    explore = make_sb3_vec_env("SanaWM-TwinExplore-v0", num_envs=1)
    with pytest.raises(ValueError, match="scripted_expert needs"):
        scripted_expert(explore)


def test_expert_data_returns_follow_the_rewards_and_pretraining_fits_the_expert():
    agent = _nav_agent(num_envs=2, max_steps=5)
    venv = agent.get_env()
    expert = scripted_expert(venv)

    def collect(gamma: float):
        venv.seed(3)
        return collect_expert_data(venv, expert, 24, gamma)

    rewards, data = collect(0.0).returns, collect(0.9)
    assert len(data) + data.dropped_steps == 24 and data.episodes == int(data.episode_ends.sum()) >= 2
    assert data.episode_ends[-1] and data.obs["image"].shape[1:] == venv.observation_space["image"].shape
    # G_t = r_t + 0.9 G_{t+1} inside an episode, G_T = r_T at its end (no bootstrapping)
    following = np.append(data.returns[1:], 0.0) * ~data.episode_ends
    np.testing.assert_allclose(data.returns, rewards + 0.9 * following, rtol=1e-5, atol=1e-6)
    # the stored actions are the expert's on the stored observations
    np.testing.assert_allclose(data.actions, expert(data.obs), atol=1e-6)

    history = pretrain_policy(agent.policy, data, epochs=30, batch_size=8, learning_rate=3e-3)
    assert len(history) == 30
    assert history[-1]["action_mse"] < 0.5 * history[0]["action_mse"]
    assert history[-1]["value_mse"] < history[0]["value_mse"]
    log_std = agent.policy.log_std.detach().numpy()
    np.testing.assert_allclose(log_std, -1.0)  # exploration is left to the caller

    with pytest.raises(ValueError, match="steps must be >= num_envs"):
        collect_expert_data(venv, expert, 1, 0.9)
    with pytest.raises(ValueError, match="gamma"):
        collect_expert_data(venv, expert, 8, 1.5)
    with pytest.raises(ValueError, match=r"expert must return \(2, 6\)"):
        collect_expert_data(venv, lambda obs: np.zeros((2, 3)), 8, 0.9)
    image_only = make_sb3_vec_env("SanaWM-TwinNav-v0", num_envs=1, obs_mode="image")
    with pytest.raises(ValueError, match="dict observations"):
        collect_expert_data(image_only, lambda obs: np.zeros((1, 6)), 8, 0.9)
    with pytest.raises(ValueError, match="no episode finished"):
        collect_expert_data(venv, expert, 4, 0.9)  # 2 steps per sub-env, episodes last 5


def test_train_ppo_nav_warm_start_saves_the_clone(tmp_path):
    example = load_script("examples/train_ppo_nav.py")
    out = tmp_path / "ppo.zip"
    summary = example.main(["--env-id", "SanaWM-TwinNav-v0", "--model", "none", "--total-steps", "32",
                            "--n-envs", "2", "--n-steps", "16", "--batch-size", "16", "--max-steps", "4",
                            "--eval-episodes", "0", "--out", str(out), "--bc-steps", "16", "--bc-epochs", "2",
                            "--log-std-init", "-1"])
    warm = summary["warm_start"]
    assert warm["episodes"] >= 2 and warm["steps"] + warm["dropped_steps"] == 16 and len(warm["losses"]) == 2
    clone = SB3Policy(tmp_path / "ppo_bc.zip")
    env = gym.make("SanaWM-TwinNav-v0")
    obs, _ = env.reset(seed=0)
    assert clone.act(obs, env).shape == (6,) and out.is_file()
