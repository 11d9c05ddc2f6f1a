"""A Gymnasium vector env whose sub-envs are Ray actors: N envs spread over a cluster behind ``VectorEnv``.

``RayVectorEnv("SanaWM-Nav-v0", 8, model="default")`` makes each sub-env with ``gym.make(env_id, **kwargs)`` in
its own Ray actor (one core each, ``num_gpus`` each where the model runs on a GPU) and steps them concurrently.
It follows the local vector envs: autoreset ``NEXT_STEP`` (the step after a sub-env ends resets it, reward 0),
``reset(seed=s)`` seeds sub-env ``i`` with ``s + i``, so its observations are those of
``gym.make_vec(env_id, num_envs=N, vectorization_mode="vector_entry_point")`` for the same seeds (with torch on
the same thread count). Infos are merged the Gymnasium way (``info[key]`` batched, ``info["_key"]`` the mask).

Ray is the optional ``ray`` extra; see :mod:`sana_wm_env.distributed` for the addresses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

__all__ = ["RayVectorEnv"]


class SubEnv:
    """One sub-env in a Ray actor: ``gym.make(env_id, **kwargs)`` with the ``NEXT_STEP`` autoreset."""

    def __init__(self, env_id: str, kwargs: dict[str, Any], threads: int) -> None:
        import gymnasium as gym
        import torch

        import sana_wm_env  # noqa: F401  (registers the ids)

        torch.set_num_threads(threads)
        self.env = gym.make(env_id, **kwargs)
        self.needs_reset = False

    def spaces(self) -> tuple[Any, Any, dict[str, Any]]:
        return self.env.observation_space, self.env.action_space, dict(self.env.metadata)

    def reset(self, seed: int | None, options: dict | None) -> tuple[Any, dict]:
        self.needs_reset = False
        return self.env.reset(seed=seed, options=options)

    def step(self, action) -> tuple[Any, float, bool, bool, dict]:
        if self.needs_reset:
            obs, info = self.env.reset()
            reward, terminated, truncated = 0.0, False, False
        else:
            obs, reward, terminated, truncated, info = self.env.step(action)
        self.needs_reset = bool(terminated or truncated)
        return obs, float(reward), bool(terminated), bool(truncated), info

    def render(self):
        return self.env.render()

    def close(self) -> None:
        self.env.close()


class RayVectorEnv(VectorEnv):
    """``num_envs`` sub-envs of ``env_id``, each in a Ray actor (see the module docstring).

    ``ray`` is the address to connect to when this process is not connected yet (a connection made here ends
    with :meth:`close`); ``num_cpus`` / ``num_gpus`` are each actor's resources; ``threads`` its torch threads;
    ``env_kwargs`` go to every ``gym.make``.
    """

    def __init__(self, env_id: str, num_envs: int, *, ray: str | None = "auto", num_cpus: float = 1,
                 num_gpus: float = 0, threads: int = 1, **env_kwargs: Any) -> None:
        from sana_wm_env.distributed import attach

        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        self._ray, self._started = attach(ray)
        actor = self._ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(SubEnv)
        self.actors = [actor.remote(env_id, env_kwargs, threads) for _ in range(num_envs)]
        self.num_envs = num_envs
        obs_space, act_space, metadata = self._ray.get(self.actors[0].spaces.remote())
        self.single_observation_space, self.single_action_space = obs_space, act_space
        self.observation_space = batch_space(obs_space, num_envs)
        self.action_space = batch_space(act_space, num_envs)
        self.metadata = {**metadata, "autoreset_mode": AutoresetMode.NEXT_STEP}
        self.render_mode = metadata.get("render_mode")

    def _gather(self, results: Sequence[tuple]) -> tuple[Any, dict[str, Any]]:
        """Batched observations and merged infos of per-sub-env ``(obs, ..., info)`` results."""
        space = self.single_observation_space
        obs = concatenate(space, [r[0] for r in results], create_empty_array(space, n=self.num_envs, fn=np.zeros))
        infos: dict[str, Any] = {}
        for i, r in enumerate(results):
            infos = self._add_info(infos, r[-1], i)
        return obs, infos

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None
              ) -> tuple[Any, dict[str, Any]]:
        """Reset every sub-env: ``seed`` an int (sub-env ``i`` gets ``seed + i``), a list of one per sub-env,
        or None."""
        if seed is None or isinstance(seed, (int, np.integer)):
            seeds = [None if seed is None else int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"seed: expected {self.num_envs} seeds, got {len(seeds)}")
        results = self._ray.get([a.reset.remote(s, options) for a, s in zip(self.actors, seeds)])
        return self._gather(results)

    def step(self, actions) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        results = self._ray.get([a.step.remote(act) for a, act in zip(self.actors,
                                                                       iterate(self.action_space, actions))])
        obs, infos = self._gather(results)
        rewards = np.array([r[1] for r in results], dtype=np.float64)
        terminated = np.array([r[2] for r in results], dtype=np.bool_)
        truncated = np.array([r[3] for r in results], dtype=np.bool_)
        return obs, rewards, terminated, truncated, infos

    def render(self) -> tuple[Any, ...] | None:
        """Every sub-env's ``render()``."""
        return tuple(self._ray.get([a.render.remote() for a in self.actors]))

    def close_extras(self, **kwargs: Any) -> None:
        if not self._ray.is_initialized():
            return
        self._ray.get([a.close.remote() for a in self.actors])
        for a in self.actors:
            self._ray.kill(a)
        if self._started:
            self._ray.shutdown()
