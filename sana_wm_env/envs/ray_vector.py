"""A Gymnasium vector env whose sub-envs are Ray actors: N envs spread over a cluster behind ``VectorEnv``.

``RayVectorEnv("SanaWM-Nav-v0", 8, model="default")`` makes each sub-env with ``gym.make(env_id, **kwargs)`` in
its own Ray actor (one core each, ``num_gpus`` each where the model runs on a GPU) and steps them concurrently.
``envs_per_actor=k`` puts k sub-envs in each actor as one local vector env, generated in one batched world-model
call per step (fewer, busier actors: the batching that makes a GPU worth its cost).
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


def _unbatch_info(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """A vector env's merged ``info`` (``info[key]`` batched, ``info["_key"]`` the mask) -> one dict per sub-env."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in info.items():
        if key.startswith("_"):
            continue
        mask = info.get(f"_{key}", np.ones(n, dtype=bool))
        parts = _unbatch_info(value, n) if isinstance(value, dict) else None
        for i in np.flatnonzero(mask):
            out[i][key] = parts[i] if parts is not None else value[i]
    return out


class SubEnvs:
    """The sub-envs of one Ray actor, with the ``NEXT_STEP`` autoreset: ``gym.make(env_id, **kwargs)`` for one, or
    for several the local vector env (``vector_entry_point``: one batched world-model call steps all of them).

    Every method returns one ``(obs, ..., info)`` tuple per sub-env.
    """

    def __init__(self, env_id: str, kwargs: dict[str, Any], threads: int, num_envs: int = 1) -> None:
        import gymnasium as gym
        import torch

        import sana_wm_env  # noqa: F401  (registers the ids)

        torch.set_num_threads(threads)
        self.num_envs = num_envs
        if num_envs == 1:
            self.env = gym.make(env_id, **kwargs)
            self.single_space = self.env.observation_space
        else:
            self.env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
            self.single_space = self.env.single_observation_space
            if self.env.metadata.get("autoreset_mode") != AutoresetMode.NEXT_STEP:
                raise ValueError(f"{env_id}'s vector env does not autoreset NEXT_STEP; use envs_per_actor=1")
        self.needs_reset = False

    def spaces(self) -> tuple[Any, Any, dict[str, Any]]:
        if self.num_envs == 1:
            return self.env.observation_space, self.env.action_space, dict(self.env.metadata)
        return self.env.single_observation_space, self.env.single_action_space, dict(self.env.metadata)

    def _split(self, obs, info: dict[str, Any], *columns) -> list[tuple]:
        observations = list(iterate(self.single_space, obs)) if self.num_envs > 1 else [obs]
        infos = _unbatch_info(info, self.num_envs) if self.num_envs > 1 else [info]
        rows = zip(*columns) if columns else [()] * self.num_envs
        return [(o, *row, i) for o, row, i in zip(observations, rows, infos)]

    def reset(self, seeds: list[int | None], options: dict | None) -> list[tuple]:
        if self.num_envs == 1:
            self.needs_reset = False
            return self._split(*self.env.reset(seed=seeds[0], options=options))
        if any(s is None for s in seeds) and not all(s is None for s in seeds):
            raise ValueError(f"seed: the sub-envs of one actor are seeded together, all ints or all None; got {seeds}")
        return self._split(*self.env.reset(seed=None if seeds[0] is None else seeds, options=options))

    def step(self, actions) -> list[tuple]:
        if self.num_envs > 1:
            obs, rew, term, trunc, info = self.env.step(np.asarray(actions))
            return self._split(obs, info, [float(r) for r in rew], [bool(t) for t in term], [bool(t) for t in trunc])
        if self.needs_reset:
            obs, info = self.env.reset()
            reward, terminated, truncated = 0.0, False, False
        else:
            obs, reward, terminated, truncated, info = self.env.step(actions[0])
        self.needs_reset = bool(terminated or truncated)
        return [(obs, float(reward), bool(terminated), bool(truncated), info)]

    def render(self) -> list:
        frames = self.env.render()
        return [frames] if self.num_envs == 1 else list(frames or [None] * self.num_envs)

    def close(self) -> None:
        self.env.close()


class RayVectorEnv(VectorEnv):
    """``num_envs`` sub-envs of ``env_id`` in Ray actors, ``envs_per_actor`` per actor (see the module docstring).

    ``ray`` is the address to connect to when this process is not connected yet (a connection made here ends
    with :meth:`close`); ``num_cpus`` / ``num_gpus`` are each actor's resources; ``threads`` its torch threads;
    ``env_kwargs`` go to every ``gym.make`` / ``gym.make_vec``. With ``envs_per_actor > 1`` each actor steps its
    sub-envs as one local vector env (one batched world-model call for all of them), so sub-envs
    ``[j * k, (j + 1) * k)`` are actor ``j``'s.
    """

    def __init__(self, env_id: str, num_envs: int, *, envs_per_actor: int = 1, ray: str | None = "auto",
                 num_cpus: float = 1, num_gpus: float = 0, threads: int = 1, **env_kwargs: Any) -> None:
        from sana_wm_env.distributed import attach

        for name, value in (("num_envs", num_envs), ("envs_per_actor", envs_per_actor)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_envs % envs_per_actor:
            raise ValueError(f"num_envs ({num_envs}) must be a multiple of envs_per_actor ({envs_per_actor})")
        self._ray, self._started = attach(ray)
        actor = self._ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(SubEnvs)
        self.envs_per_actor = envs_per_actor
        self.actors = [actor.remote(env_id, env_kwargs, threads, envs_per_actor)
                       for _ in range(num_envs // envs_per_actor)]
        self.num_envs = num_envs
        obs_space, act_space, metadata = self._ray.get(self.actors[0].spaces.remote())
        self.single_observation_space, self.single_action_space = obs_space, act_space
        self.observation_space = batch_space(obs_space, num_envs)
        self.action_space = batch_space(act_space, num_envs)
        self.metadata = {**metadata, "autoreset_mode": AutoresetMode.NEXT_STEP}
        self.render_mode = metadata.get("render_mode")

    def _per_actor(self, items: Sequence[Any]) -> list[list[Any]]:
        k = self.envs_per_actor
        return [list(items[j * k:(j + 1) * k]) for j in range(len(self.actors))]

    def _gather(self, results: Sequence[tuple]) -> tuple[Any, dict[str, Any]]:
        """Batched observations and merged infos of per-sub-env ``(obs, ..., info)`` results."""
        space = self.single_observation_space
        obs = concatenate(space, [r[0] for r in results], create_empty_array(space, n=self.num_envs, fn=np.zeros))
        infos: dict[str, Any] = {}
        for i, r in enumerate(results):
            infos = self._add_info(infos, r[-1], i)
        return obs, infos

    def _call(self, method: str, *per_actor_args: Sequence[Any]) -> list[tuple]:
        """``method`` on every actor (with its slice of each argument), flattened to one result per sub-env."""
        refs = [getattr(a, method).remote(*args) for a, *args in zip(self.actors, *per_actor_args)]
        return [row for rows in self._ray.get(refs) for row in rows]

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
        return self._gather(self._call("reset", self._per_actor(seeds), [options] * len(self.actors)))

    def step(self, actions) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        results = self._call("step", self._per_actor(list(iterate(self.action_space, actions))))
        obs, infos = self._gather(results)
        rewards = np.array([r[1] for r in results], dtype=np.float64)
        terminated = np.array([r[2] for r in results], dtype=np.bool_)
        truncated = np.array([r[3] for r in results], dtype=np.bool_)
        return obs, rewards, terminated, truncated, infos

    def render(self) -> tuple[Any, ...] | None:
        """Every sub-env's ``render()``."""
        return tuple(frame for frames in self._ray.get([a.render.remote() for a in self.actors]) for frame in frames)

    def close_extras(self, **kwargs: Any) -> None:
        if not self._ray.is_initialized():
            return
        self._ray.get([a.close.remote() for a in self.actors])
        for a in self.actors:
            self._ray.kill(a)
        if self._started:
            self._ray.shutdown()
