"""Behaviour cloning as a warm start for SB3 PPO: imitate a scripted expert, then let PPO improve on it.

Why: on ImageNav, PPO from a random initialisation spends most of a CPU budget discovering that the tracked goal
estimate (``goal_estimate``, :class:`policies.sb3.GoalTrackerVecEnv`) says where to go, while the scripted servo
on the same estimate already reaches some goals. Cloning the servo first, value head included, starts PPO from a
policy that succeeds sometimes, so its advantages carry signal from the first update.

    venv = GoalTrackerVecEnv(make_sb3_vec_env("SanaWM-TwinImageNav-v0", num_envs=8), net_path)
    agent = PPO("MultiInputPolicy", venv, ...)
    data = collect_expert_data(agent.get_env(), scripted_expert(agent.get_env()), steps=20_000, gamma=agent.gamma)
    pretrain_policy(agent.policy, data, epochs=10)
    agent.learn(100_000)

The expert acts on what the policy observes (no privileged state), so the clone can match it exactly in principle:
the pose controller on ``pose`` / ``goal`` (Nav) or on ``goal_estimate`` (ImageNav with the tracker).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

Expert = Callable[[dict[str, np.ndarray]], np.ndarray]


def scripted_expert(venv: VecEnv, gain: float = 0.8) -> Expert:
    """The pose controller as a batched expert on ``venv``'s observations (``(N, 6)`` actions in [-1, 1]).

    Nav (``pose`` and ``goal`` 7-vectors): towards the observed goal. ImageNav with ``goal_estimate``
    (:class:`policies.sb3.GoalTrackerVecEnv`): towards the tracked goal, i.e. the ``servo`` policy of
    ``sana-wm evaluate-policy``. Other observations have no goal an expert could read: ValueError.
    """
    from policies.relative_pose import relative_goal_matrix
    from policies.sb3 import GOAL_ESTIMATE_KEY, world_model_vec_env
    from policies.scripted import PoseController

    space = venv.observation_space
    keys = space.spaces if isinstance(space, gym.spaces.Dict) else {}
    base = world_model_vec_env(venv)
    controller = PoseController(base.limits, base.step_seconds, gain)
    if GOAL_ESTIMATE_KEY in keys:
        def expert(obs: dict[str, np.ndarray]) -> np.ndarray:
            return np.stack([controller.command_relative(relative_goal_matrix(v)) for v in obs[GOAL_ESTIMATE_KEY]])
    elif all(k in keys and keys[k].shape == (7,) for k in ("pose", "goal")):
        def expert(obs: dict[str, np.ndarray]) -> np.ndarray:
            return np.stack([controller.command(p, g) for p, g in zip(obs["pose"], obs["goal"])])
    else:
        raise ValueError("scripted_expert needs Nav observations ('pose' and a pose 'goal') or ImageNav ones with "
                         f"'{GOAL_ESTIMATE_KEY}' (wrap the env in GoalTrackerVecEnv); got keys {sorted(keys)}")
    return expert


@dataclass
class ExpertData:
    """Expert transitions from complete episodes: observations as the policy sees them, actions, returns-to-go."""

    obs: dict[str, np.ndarray]
    actions: np.ndarray  # (M, 6)
    returns: np.ndarray  # (M,) discounted return from each step to the episode's end
    episode_ends: np.ndarray  # (M,) bool: the last step of an episode (episodes are stored contiguously, in order)
    episodes: int
    successes: int
    dropped_steps: int  # steps of episodes still running when collection stopped (no return-to-go for them)

    def __len__(self) -> int:
        return len(self.actions)


def collect_expert_data(venv: VecEnv, expert: Expert, steps: int, gamma: float) -> ExpertData:
    """Run ``expert`` on ``venv`` (an SB3 VecEnv: pass ``agent.get_env()`` so observations match the policy's
    space, images channel-first) for ``steps`` steps in all, keeping the transitions of finished episodes.

    Returns-to-go are discounted by ``gamma`` and stop at the episode's end (time-limit truncations are not
    bootstrapped: the value head then learns what the expert collects within the step budget).
    """
    if steps < venv.num_envs:
        raise ValueError(f"steps must be >= num_envs ({venv.num_envs}), got {steps}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
    if not isinstance(venv.observation_space, gym.spaces.Dict):
        raise ValueError(f"collect_expert_data needs dict observations (the envs' default obs_mode), got "
                         f"{venv.observation_space}")
    n = venv.num_envs
    obs = venv.reset()
    running: list[list[tuple[dict, np.ndarray, float]]] = [[] for _ in range(n)]
    done_obs: list[dict] = []
    done_actions: list[np.ndarray] = []
    done_returns: list[float] = []
    done_ends: list[bool] = []
    episodes = successes = 0
    for _ in range(steps // n):
        actions = np.asarray(expert(obs), dtype=np.float32)
        if actions.shape != (n, 6) or not np.isfinite(actions).all():
            raise ValueError(f"expert must return ({n}, 6) finite actions, got shape {actions.shape}")
        next_obs, rewards, dones, infos = venv.step(actions)
        for i in range(n):
            # copies, not views: a VecEnv may reuse its observation buffers
            running[i].append(({k: np.array(v[i]) for k, v in obs.items()}, actions[i], float(rewards[i])))
            if dones[i]:
                ret = 0.0
                tail = []
                for o, a, r in reversed(running[i]):
                    ret = r + gamma * ret
                    tail.append((o, a, ret))
                for k, (o, a, g) in enumerate(reversed(tail)):
                    done_obs.append(o)
                    done_actions.append(a)
                    done_returns.append(g)
                    done_ends.append(k == len(tail) - 1)
                episodes += 1
                successes += bool(infos[i].get("is_success", False))
                running[i] = []
        obs = next_obs
    if not done_obs:
        raise ValueError(f"no episode finished within {steps} steps; collect more steps than the episode length")
    return ExpertData(obs={k: np.stack([o[k] for o in done_obs]) for k in done_obs[0]},
                      actions=np.stack(done_actions), returns=np.asarray(done_returns, dtype=np.float32),
                      episode_ends=np.asarray(done_ends, dtype=bool),
                      episodes=episodes, successes=successes, dropped_steps=sum(len(r) for r in running))


def pretrain_policy(policy: ActorCriticPolicy, data: ExpertData, *, epochs: int = 10, batch_size: int = 256,
                    learning_rate: float = 1e-3, value_coef: float = 0.5, seed: int = 0) -> list[dict[str, float]]:
    """Fit ``policy``'s action mean to the expert's actions and its value head to the returns-to-go (MSE both).

    The log-std is left as it is (``policy_kwargs={"log_std_init": ...}`` sets how much PPO explores around the
    clone). Returns per-epoch mean losses: ``action_mse`` and ``value_mse``.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    params = [p for name, p in policy.named_parameters() if p.requires_grad and name != "log_std"]
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    rng = np.random.default_rng(seed)
    actions = torch.as_tensor(data.actions, dtype=torch.float32)
    returns = torch.as_tensor(data.returns, dtype=torch.float32)
    history = []
    policy.set_training_mode(True)
    for _ in range(epochs):
        order = rng.permutation(len(data))
        sums = np.zeros(2)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            obs, _ = policy.obs_to_tensor({k: v[idx] for k, v in data.obs.items()})
            features = policy.extract_features(obs)
            if isinstance(features, tuple):  # share_features_extractor=False: one extractor per head
                latent_pi = policy.mlp_extractor.forward_actor(features[0])
                latent_vf = policy.mlp_extractor.forward_critic(features[1])
            else:
                latent_pi, latent_vf = policy.mlp_extractor(features)
            action_loss = torch.nn.functional.mse_loss(policy.action_net(latent_pi), actions[idx])
            value_loss = torch.nn.functional.mse_loss(policy.value_net(latent_vf).squeeze(-1), returns[idx])
            optimizer.zero_grad()
            (action_loss + value_coef * value_loss).backward()
            optimizer.step()
            sums += np.array([action_loss.item(), value_loss.item()]) * len(idx)
        history.append({"action_mse": float(sums[0] / len(data)), "value_mse": float(sums[1] / len(data))})
    policy.set_training_mode(False)
    return history
