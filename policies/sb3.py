"""Stable-Baselines3 ``VecEnv`` adapter: SB3 models over N SANA-WM sub-envs stepped in one batched call.

SB3 does not accept Gymnasium vector envs, so this adapter drives the same batched simulation as
``WorldModelVectorEnv`` with SB3's conventions: sub-envs that finish are reset in the same step, their last
observation goes to ``info["terminal_observation"]`` and truncations set ``info["TimeLimit.truncated"]``.

>>> venv = make_sb3_vec_env("SanaWM-Nav-v0", num_envs=8, model=my_world_model)
>>> PPO("MultiInputPolicy", venv).learn(10_000)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvWrapper

import sana_wm_env  # noqa: F401  (registers the ids)
from policies.features import goal_in_body_frame
from sana_wm_env.envs.vector import WorldModelVectorEnv


class SB3VecEnv(VecEnv):
    """An SB3 ``VecEnv`` over a ``WorldModelVectorEnv`` (or ``TwinVectorEnv``), with same-step autoreset.

    The sub-envs are elements of one batched simulation, so they have no objects of their own:
    ``get_attr`` reads the vector env's attribute (the same for every sub-env); ``set_attr`` sets it, and only
    for all sub-envs at once (a strict subset of ``indices`` is refused rather than silently applied to all);
    ``env_method`` calls one of the vector env's per-sub-env methods (:attr:`SUB_ENV_METHODS`, taking the sub-env
    index first) once per selected sub-env.
    """

    #: methods of the vector env that act on one sub-env (``method(index, *args, **kwargs)``)
    SUB_ENV_METHODS = ("imagine", "render_env")

    def __init__(self, venv: WorldModelVectorEnv) -> None:
        if not isinstance(venv, WorldModelVectorEnv):
            raise ValueError(f"venv must be a WorldModelVectorEnv or TwinVectorEnv, got {type(venv).__name__}")
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self.render_mode = venv.render_mode
        self._actions: np.ndarray | None = None

    def _stack(self, obs: list) -> Any:
        if isinstance(self.observation_space, gym.spaces.Dict):
            return {k: np.stack([o[k] for o in obs]) for k in self.observation_space.spaces}
        return np.stack(obs)

    def reset(self):
        idx = list(range(self.num_envs))
        obs, infos = self.venv.reset_envs(idx, seeds=[None if s is None else int(s) for s in self._seeds],
                                          options=[self._options[i] or None for i in idx])
        self.reset_infos = infos
        self._reset_seeds()
        self._reset_options()
        return self._stack(obs)

    def step_async(self, actions: np.ndarray) -> None:
        a = np.asarray(actions)
        if a.shape != (self.num_envs, 6):
            raise ValueError(f"actions must have shape ({self.num_envs}, 6), got {a.shape}")
        self._actions = a

    def step_wait(self):
        obs, rewards, terms, truncs, infos = self.venv.step_envs(range(self.num_envs), self._actions)
        done = terms | truncs
        if done.any():
            done_idx = [int(i) for i in np.nonzero(done)[0]]
            r_obs, _ = self.venv.reset_envs(done_idx)
            for i, o in zip(done_idx, r_obs):
                infos[i] = {**infos[i], "terminal_observation": obs[i],
                            "TimeLimit.truncated": bool(truncs[i] and not terms[i])}
                obs[i] = o
        return self._stack(obs), rewards.astype(np.float32), done, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.venv, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        chosen = sorted({int(i) for i in self._get_indices(indices)})
        if chosen != list(range(self.num_envs)):
            raise ValueError(f"set_attr({attr_name!r}): the sub-envs share one simulation, so attributes can only be "
                             f"set for all {self.num_envs} of them (indices=None), got indices {chosen}")
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        if method_name not in self.SUB_ENV_METHODS:
            raise ValueError(f"env_method: {method_name!r} is not a per-sub-env method; choose one of "
                             f"{', '.join(self.SUB_ENV_METHODS)} (or call the vector env, .venv, directly)")
        method = getattr(self.venv, method_name)
        return [method(int(i), *method_args, **method_kwargs) for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [self.venv.render_env(i) for i in range(self.num_envs)]


def world_model_vec_env(venv: VecEnv) -> WorldModelVectorEnv:
    """The ``WorldModelVectorEnv`` under SB3 wrappers (``VecTransposeImage``, :class:`GoalTrackerVecEnv`, ...) of
    :func:`make_sb3_vec_env`'s :class:`SB3VecEnv`; ValueError for any other VecEnv."""
    env = venv
    while not isinstance(env, SB3VecEnv):
        if not hasattr(env, "venv"):
            raise ValueError(f"venv must wrap policies.sb3.make_sb3_vec_env's SB3VecEnv, got {type(venv).__name__}")
        env = env.venv
    return env.venv


def make_sb3_vec_env(env_id: str, num_envs: int = 1, **kwargs: Any) -> SB3VecEnv:
    """``gym.make_vec(env_id, num_envs, vectorization_mode="vector_entry_point", **kwargs)`` wrapped for SB3."""
    venv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    return SB3VecEnv(venv)


GOAL_ESTIMATE_KEY = "goal_estimate"


def _check_image_size(net, image_hw: tuple[int, int]):
    """``net`` (a relative-pose network) if it was trained on ``image_hw`` frames, else a ValueError."""
    if tuple(net.config.image_hw) != tuple(image_hw):
        raise ValueError(f"goal_pose_net was trained on {tuple(net.config.image_hw)} images, the env gives "
                         f"{tuple(image_hw)}")
    return net


class GoalTrackerVecEnv(VecEnvWrapper):
    """ImageNav sub-envs whose observations also carry ``goal_estimate``: each sub-env's
    :class:`policies.relative_pose.GoalTracker` estimate of the goal in the current body frame (the 10 numbers of
    :func:`goal_in_body_frame`), fused over the episode from a frozen goal encoder and the actions sent.

    Why: one image pair locates the goal poorly (views that do not overlap, texture-poor walls); fused with
    odometry the estimate firms up as the agent moves, which a memoryless PPO policy cannot do on its own. It is
    still observation-only (images and the agent's own actions). The encoder runs once per step for all sub-envs
    (and for the final observations of finished episodes, which SB3 bootstraps truncations from).
    Trackers restart on each sub-env's autoreset. Evaluation: :class:`SB3Policy` rebuilds the same tracker from
    the model's extractor (``GoalFrameExtractor(goal_pose_net=..., goal_tracker_memory=...)``).
    """

    def __init__(self, venv: VecEnv, goal_pose_net: str | Path | torch.nn.Module, memory: float = 0.8) -> None:
        from policies.relative_pose import TARGET_DIM, GoalTracker, load_relative_pose_net

        space = venv.observation_space
        if not (isinstance(space, gym.spaces.Dict) and "image" in space.spaces and "goal" in space.spaces
                and space["goal"].shape == space["image"].shape and len(space["image"].shape) == 3):
            raise ValueError(f"GoalTrackerVecEnv needs ImageNav observations (an image goal), got {space}")
        if GOAL_ESTIMATE_KEY in space.spaces:
            raise ValueError(f"the observations already have a {GOAL_ESTIMATE_KEY!r} key")
        base = world_model_vec_env(venv)  # its action limits and step length drive the trackers' odometry
        net = goal_pose_net if isinstance(goal_pose_net, torch.nn.Module) else load_relative_pose_net(goal_pose_net)
        self.net = _check_image_size(net, space["image"].shape[:2]).eval()
        self.trackers = [GoalTracker.for_sim(self.net, base, memory=memory) for _ in range(venv.num_envs)]
        estimate = gym.spaces.Box(-np.inf, np.inf, (TARGET_DIM,), np.float32)
        super().__init__(venv, observation_space=gym.spaces.Dict({**space.spaces, GOAL_ESTIMATE_KEY: estimate}))
        self._actions: np.ndarray | None = None

    def _measure(self, images: list[np.ndarray], goals: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        from policies.relative_pose import measure_goals

        t = self.trackers[0]
        return measure_goals(self.net, np.stack(images), np.stack(goals), sigma0=t.sigma0, sigma1=t.sigma1)

    def reset(self):
        obs = self.venv.reset()
        preds, weights = self._measure(list(obs["image"]), list(obs["goal"]))
        for t, pred, w in zip(self.trackers, preds, weights):
            t.clear()
            t.add(pred, w)
        return {**obs, GOAL_ESTIMATE_KEY: np.stack([t.estimate_vector() for t in self.trackers])}

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.array(actions, dtype=np.float64)
        self.venv.step_async(actions)

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        done_idx = [int(i) for i in np.nonzero(dones)[0]]
        finals = [infos[i]["terminal_observation"] for i in done_idx]
        # one encoder call: every sub-env's new observation, then the final observations of finished episodes
        preds, weights = self._measure(list(obs["image"]) + [f["image"] for f in finals],
                                       list(obs["goal"]) + [f["goal"] for f in finals])
        final_row = {i: self.num_envs + k for k, i in enumerate(done_idx)}
        for i, t in enumerate(self.trackers):
            t.move(self._actions[i])
            if i in final_row:  # finish the episode on its final observation, then restart on the new one
                t.add(preds[final_row[i]], weights[final_row[i]])
                final = {**infos[i]["terminal_observation"], GOAL_ESTIMATE_KEY: t.estimate_vector()}
                infos[i] = {**infos[i], "terminal_observation": final}
                t.clear()
            t.add(preds[i], weights[i])
        estimates = np.stack([t.estimate_vector() for t in self.trackers])
        return {**obs, GOAL_ESTIMATE_KEY: estimates}, rewards, dones, infos


class _Frozen(torch.nn.Module):
    """A pretrained module that stays as it was loaded: no gradients, and ``apply`` skips it, so initialisers run
    over the enclosing model (SB3's orthogonal init of the features extractor) leave its weights alone."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module.requires_grad_(False)

    def apply(self, fn):  # noqa: ARG002 - deliberately not applied
        return self


class GoalFrameExtractor(BaseFeaturesExtractor):
    """SB3's ``CombinedExtractor`` plus the goal expressed relative to the current view.

    * Pose goal (Nav: ``pose`` and ``goal`` 7-vectors in the start frame): an MLP would have to learn quaternion
      algebra to turn them into "where is the goal from here", so :func:`goal_in_body_frame` is appended
      (a fixed function of the observation, no privileged input).
    * Image goal (ImageNav: ``goal`` an image of the same shape as ``image``): the two images are stacked on
      the channel axis into one NatureCNN (early fusion). With one CNN per image (SB3's default) the policy must
      match two separately pooled feature vectors; stacked, the first convolution sees both views of each
      pixel, so "the goal view is a zoomed / shifted version of this one" is a local pattern it can learn.

    * Image goal with ``goal_pose_net=PATH`` (a :mod:`policies.relative_pose` network, pretrained on the twin):
      the frozen network's features of the two stacked images plus its prediction of the goal relative to the
      body (the 10 numbers of :func:`goal_in_body_frame`). The policy then learns to act on "where the goal is"
      instead of discovering it from the reward. The network's weights are saved inside the SB3 zip, but
      loading the zip rebuilds the extractor from ``PATH``, which must still exist. With
      ``goal_tracker_memory=m`` the observations also carry the fused ``goal_estimate`` of
      :class:`GoalTrackerVecEnv` (flattened with the other keys); ``m`` is the tracker's memory, stored here so
      that :class:`SB3Policy` rebuilds the same tracker at evaluation.
      ``goal_pose_features=False`` keeps only the network's prediction (10 numbers), not its features: a much
      smaller input in which the (tracked) goal is not outnumbered by 256 features.

    Other keys are flattened as in ``CombinedExtractor``. Use with
    ``PPO("MultiInputPolicy", env, policy_kwargs={"features_extractor_class": GoalFrameExtractor})``; the images
    arrive as SB3's default normalised floats in [0, 1].
    """

    def __init__(self, observation_space: gym.spaces.Dict, cnn_output_dim: int = 256,
                 goal_pose_net: str | Path | None = None, goal_tracker_memory: float | None = None,
                 goal_pose_features: bool = True) -> None:
        spaces_ = observation_space.spaces
        if (goal_tracker_memory is not None) != (GOAL_ESTIMATE_KEY in spaces_):
            raise ValueError(f"goal_tracker_memory goes with a {GOAL_ESTIMATE_KEY!r} observation (GoalTrackerVecEnv) "
                             f"and only with it; got goal_tracker_memory={goal_tracker_memory!r} and keys "
                             f"{sorted(spaces_)}")
        if goal_tracker_memory is not None and goal_pose_net is None:
            raise ValueError("goal_tracker_memory needs goal_pose_net (the encoder the tracker fuses)")
        self.goal_tracker_memory = goal_tracker_memory
        if not goal_pose_features and goal_pose_net is None:
            raise ValueError("goal_pose_features=False drops goal_pose_net's features; it needs goal_pose_net")
        self.goal_pose_features = goal_pose_features
        self.uses_goal_frame = all(k in spaces_ and spaces_[k].shape == (7,) for k in ("pose", "goal"))
        image, goal = spaces_.get("image"), spaces_.get("goal")
        self.uses_goal_image = (image is not None and goal is not None and goal.shape == image.shape
                                and len(image.shape) == 3)
        if goal_pose_net is not None and not self.uses_goal_image:
            raise ValueError("goal_pose_net needs image goals (ImageNav: 'goal' an image of the same shape as "
                             f"'image'); this observation space has keys {sorted(spaces_)}")
        if self.uses_goal_image:
            # SB3 hands image observations channel-first (VecTransposeImage), so channels are axis 0 here.
            c, h, w = image.shape
            rest = gym.spaces.Dict({k: v for k, v in spaces_.items() if k not in ("image", "goal")})
            others = CombinedExtractor(rest, cnn_output_dim=cnn_output_dim) if rest.spaces else None
            if goal_pose_net is not None:
                from policies.relative_pose import TARGET_DIM, load_relative_pose_net

                net = _check_image_size(load_relative_pose_net(goal_pose_net), (h, w))
                fused = _Frozen(net)
                fused_dim = (net.config.features_dim if goal_pose_features else 0) + TARGET_DIM
            else:
                fused = NatureCNN(gym.spaces.Box(0, 255, (2 * c, h, w), dtype=np.uint8), features_dim=cnn_output_dim)
                fused_dim = cnn_output_dim
            super().__init__(observation_space, fused_dim + (others.features_dim if others else 0))
            self.fused, self.others = fused, others
            self.uses_goal_pose_net = goal_pose_net is not None
            return
        self.uses_goal_pose_net = False
        combined = CombinedExtractor(observation_space, cnn_output_dim=cnn_output_dim)
        super().__init__(observation_space, combined.features_dim + (10 if self.uses_goal_frame else 0))
        self.combined = combined

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.uses_goal_image:
            if self.uses_goal_pose_net:  # frozen: features and the predicted relative goal, no gradient
                with torch.no_grad():
                    net = self.fused.module
                    feats = net.features(observations["image"] * 255.0, observations["goal"] * 255.0)
                    pred = net.head(feats)
                    features = torch.cat([feats, pred], dim=1) if self.goal_pose_features else pred
            else:
                features = self.fused(torch.cat([observations["image"], observations["goal"]], dim=1))
            if self.others is None:
                return features
            rest = {k: v for k, v in observations.items() if k not in ("image", "goal")}
            return torch.cat([features, self.others(rest)], dim=1)
        features = self.combined(observations)
        if not self.uses_goal_frame:
            return features
        return torch.cat([features, goal_in_body_frame(observations["pose"], observations["goal"])], dim=1)


class SB3Policy:
    """A saved SB3 model (``PPO.save`` zip) as an evaluation policy: deterministic ``predict`` on each observation.

    A model trained on :class:`GoalTrackerVecEnv` observations gets its ``goal_estimate`` from a
    :class:`policies.relative_pose.GoalTracker` rebuilt from the model's own frozen encoder and stored memory,
    updated with the actions this policy sends (so ``reset(env)`` must start every episode).
    """

    privileged = False

    def __init__(self, path: str | Path, algo: str = "PPO", device: str = "cpu") -> None:
        import stable_baselines3

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"policy path: no SB3 model zip at {str(path)!r}")
        if not hasattr(stable_baselines3, algo):
            raise ValueError(f"algo must be an SB3 algorithm class name (PPO, SAC, ...), got {algo!r}")
        self.model = getattr(stable_baselines3, algo).load(path, device=device)
        self.name = f"{algo.lower()}:{path.name}"
        space = self.model.observation_space
        self.uses_tracker = isinstance(space, gym.spaces.Dict) and GOAL_ESTIMATE_KEY in space.spaces
        self.tracker = None
        self._last_action: np.ndarray | None = None

    def reset(self, env=None, seed: int | None = None) -> None:
        space = self.model.observation_space
        if self.uses_tracker:
            space = gym.spaces.Dict({k: v for k, v in space.spaces.items() if k != GOAL_ESTIMATE_KEY})
        if env is not None and not _same_obs_shapes(env.observation_space, space):
            raise ValueError(f"the SB3 model was trained on observations {space}, the env gives "
                             f"{env.observation_space} (same task, image size and obs_mode needed)")
        if self.uses_tracker:
            from policies.relative_pose import GoalTracker

            if env is None:
                raise ValueError(f"{self.name} tracks the goal from its actions: reset(env) needs the env")
            ext = self.model.policy.features_extractor
            self.tracker = GoalTracker.for_env(ext.fused.module, env, memory=ext.goal_tracker_memory)
            self._last_action = None

    def act(self, obs, env=None) -> np.ndarray:
        if self.uses_tracker:
            if self.tracker is None:
                raise ValueError(f"call reset(env) before act(): {self.name} tracks the goal over the episode")
            if self._last_action is None:
                self.tracker.reset(obs)
            else:
                self.tracker.update(self._last_action, obs)
            obs = {**obs, GOAL_ESTIMATE_KEY: self.tracker.estimate_vector()}
        action, _ = self.model.predict(obs, deterministic=True)
        self._last_action = np.asarray(action, dtype=np.float32)
        return self._last_action


def _same_obs_shapes(env_space: gym.Space, model_space: gym.Space) -> bool:
    """Same keys and shapes; SB3 stores image spaces channel-first (VecTransposeImage), the envs channel-last."""

    def shapes(space: gym.Space) -> dict:
        if isinstance(space, gym.spaces.Dict):
            return {k: sp.shape for k, sp in space.spaces.items()}
        return {"": space.shape}

    a, b = shapes(env_space), shapes(model_space)
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (len(a[k]) == 3 and b[k] == (a[k][2], a[k][0], a[k][1])) for k in a
    )
