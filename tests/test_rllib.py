"""RLlib: the env ids registered with ``ray.tune``, PPO on the twin and on a world model, the trained module
evaluated like any policy, and PPO beating random on Nav.

The ``rllib`` tier: ``ray[rllib]`` pins its own gymnasium, so these run in an environment of the ``rllib`` extra
(``.ci/run`` makes one: ``pytest -m rllib tests/test_rllib.py``); elsewhere they are skipped.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

pytestmark = pytest.mark.rllib
pytest.importorskip("ray.rllib.algorithms.ppo", reason="needs the rllib extra (ray[rllib])", exc_type=ImportError)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from world_model.bundles import save_world_model, untrained_world_model

    folder = tmp_path_factory.mktemp("bundle") / "tiny"
    save_world_model(untrained_world_model("tiny-notext", image_hw=(16, 16), seed=3), folder)
    return folder


def _ppo(env_id: str, env_config: dict, *, runners: int = 0, envs: int = 2, batch: int = 64, seed: int = 0,
         model_config: dict | None = None):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from policies.rllib import SanaWMRLModule

    return (PPOConfig()
            .environment(env_id, env_config=env_config)
            .env_runners(num_env_runners=runners, num_envs_per_env_runner=envs,
                         gym_env_vectorize_mode="vector_entry_point")
            .training(train_batch_size_per_learner=batch, minibatch_size=min(batch, 128), num_epochs=2, gamma=0.98)
            .rl_module(rl_module_spec=RLModuleSpec(module_class=SanaWMRLModule, model_config=model_config or {}))
            .debugging(seed=seed)
            .build_algo())


def test_registered_ids_build_the_gymnasium_envs_and_batched_vector_envs(ray_local):
    from ray.rllib.env.env_context import EnvContext
    from ray.tune.registry import ENV_CREATOR, _global_registry

    from sana_wm_env.envs import env_ids
    from sana_wm_env.envs.rllib import register_rllib_envs
    from sana_wm_env.envs.vector import TwinVectorEnv

    assert register_rllib_envs() == env_ids()
    creator = _global_registry.get(ENV_CREATOR, "SanaWM-TwinNav-v0")
    kw = {"image_hw": (16, 16)}
    env = creator(EnvContext(kw, worker_index=1))
    want, _ = gym.make("SanaWM-TwinNav-v0", **kw).reset(seed=4)
    got, _ = env.reset(seed=4)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    # RLlib's vector_entry_point mode adds num_envs: one batched vector env of that many sub-envs
    venv = creator(EnvContext(kw, worker_index=1) | {"num_envs": 3})
    assert isinstance(venv.unwrapped, TwinVectorEnv) and venv.num_envs == 3
    obs, _ = venv.reset(seed=4)
    np.testing.assert_array_equal(obs["image"][0], want["image"])
    with pytest.raises(ValueError, match="num_envs'\\] must be a positive int"):
        creator({**kw, "num_envs": 0})
    with pytest.raises(ValueError, match="unknown id\\(s\\) 'CartPole-v1'"):
        register_rllib_envs(["CartPole-v1"])


def test_ppo_trains_on_the_twin_and_in_a_world_model_and_the_module_evaluates_as_a_policy(
        ray_local, tiny_bundle, tmp_path):
    from policies.rllib import RLlibPolicy
    from sana_wm_env.envs.rllib import register_rllib_envs
    from sana_wm_env.evaluation.policy import evaluate_policy, make_eval_envs

    register_rllib_envs(["SanaWM-TwinNav-v0", "SanaWM-Nav-v0"])
    # the twin sampled by a remote env runner (the creator shipped to a Ray actor), the world model in the driver
    for env_id, config, runners in (("SanaWM-TwinNav-v0", {"image_hw": (16, 16)}, 1),
                                    ("SanaWM-Nav-v0", {"model": str(tiny_bundle)}, 0)):
        algo = _ppo(env_id, {**config, "task_config": {"max_steps": 8}}, runners=runners)
        before = {k: v.detach().clone() for k, v in algo.get_module().state_dict().items()}
        result = algo.train()
        assert result["num_env_steps_sampled_lifetime"] >= 64
        assert np.isfinite(result["env_runners"]["episode_return_mean"])
        after = algo.get_module().state_dict()
        assert any(not np.allclose(before[k].numpy(), after[k].detach().numpy()) for k in before)  # it learned
        algo.get_module().save_to_path(tmp_path / env_id)
        algo.stop()

    policy = RLlibPolicy(tmp_path / "SanaWM-Nav-v0")
    envs = make_eval_envs("nav", str(tiny_bundle), max_steps=4)
    results = evaluate_policy(policy, envs, episodes=2, seed=100, progress=False)
    assert results["policy"] == "rllib" and set(results["worlds"]) == {"world_model", "twin"}
    obs, _ = envs["world_model"].reset(seed=1)
    action = policy.act(obs)
    assert action.shape == (6,) and action.dtype == np.float32 and np.abs(action).max() <= 1
    np.testing.assert_array_equal(action, RLlibPolicy(tmp_path / "SanaWM-Nav-v0").act(obs))  # deterministic
    with pytest.raises(FileNotFoundError, match="not an RLlib module folder"):
        RLlibPolicy(tmp_path / "missing")

    # the command line takes it as rllib:DIR, and names a missing folder before any model loads
    from sana_wm_cli.main import main

    args = ["evaluate-policy", "--model", str(tiny_bundle), "--episodes", "1", "--max-steps", "3", "--no-progress"]
    assert main([*args, "--policy", f"rllib:{tmp_path / 'SanaWM-Nav-v0'}", "--json", str(tmp_path / "e.json")]) == 0
    assert '"policy": "rllib"' in (tmp_path / "e.json").read_text()
    assert main([*args, "--policy", f"rllib:{tmp_path / 'missing'}"]) == 2


def test_ppo_beats_random_on_twin_nav(ray_local):
    """A short PPO run (pose and goal only, about 12,000 steps) beats uniform random actions on held-out scenes."""
    from policies.rllib import RLlibPolicy
    from policies.scripted import RandomPolicy
    from sana_wm_env.envs.rllib import register_rllib_envs
    from sana_wm_env.evaluation.policy import evaluate_policy, make_eval_envs

    register_rllib_envs(["SanaWM-TwinNav-v0"])
    kw = {"image_hw": (16, 16)}
    algo = _ppo("SanaWM-TwinNav-v0", {**kw, "task_config": {"max_steps": 40}}, envs=4, batch=1000, seed=1,
                model_config={"use_image": False})
    for _ in range(12):
        algo.train()
    policy = RLlibPolicy(algo.get_module())
    algo.stop()
    envs = make_eval_envs("nav", twin_only=True, max_steps=40, **kw)
    trained = evaluate_policy(policy, envs, episodes=10, seed=10_000, progress=False)["worlds"]["twin"]
    random = evaluate_policy(RandomPolicy(), envs, episodes=10, seed=10_000, progress=False)["worlds"]["twin"]
    assert trained["mean_return"] > random["mean_return"] + 0.5, (trained, random)
