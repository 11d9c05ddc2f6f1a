"""Vector envs: N sub-envs stepped in one batched generator call (``gym.make_vec(..., "vector_entry_point")``).

Autoreset mode: ``NEXT_STEP`` (Gymnasium's default): the step after a sub-env terminates or truncates resets
it (its action is ignored, reward 0, not done) and returns its first observation. Sub-env ``i`` of a vector
env reset with seed ``s`` produces exactly the frames of a single env reset with seed ``s + i`` (per-element
noise seeds; batch composition never changes an element's frames).

Batching: sub-envs at the same chunk index share one generator call; after ``reset()`` all N do. A sub-env
autoreset alone runs in its own phase group from then on (one extra call per distinct phase; see
``sana_wm_env.envs.backends``); ``info["generator_calls"]`` reports the calls a step took.

Batched API for other drivers (e.g. the SB3 adapter, which resets finished sub-envs in the same step):
``reset_envs(indices, seeds=..., options=...)`` and ``step_envs(indices, actions)`` act on any subset of sub-envs
in one batched call with no autoreset and return unbatched per-sub-env results; ``render_env(index)`` draws one
sub-env; ``limits``, ``step_seconds`` and ``action_frame`` describe the action scaling shared by all sub-envs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array

from sana_wm_env.envs.actions import ActionLimits
from sana_wm_env.envs.core import CameraSim, make_rngs
from world_model.bundles import WorldModel


class WorldModelVectorEnv(VectorEnv):
    """N world-model sub-envs stepped together: one batched generator call per step (per chunk phase).

    The ``vector_entry_point`` of the ``SanaWM-{Nav,ImageNav,Explore}-v0`` ids (``gym.make_vec(id, num_envs=N,
    vectorization_mode="vector_entry_point")``). :class:`TwinVectorEnv` is the same with MuJoCo frames.

    ## Action Space

    ``Box(-1, 1, (N, 6), float32)``: one velocity command per sub-env, as for
    :class:`~sana_wm_env.envs.world_model_env.WorldModelEnv` (``single_action_space`` is its ``Box(-1, 1, (6,))``).
    Any other shape is a ValueError.

    ## Observation Space

    ``single_observation_space`` is :class:`~sana_wm_env.envs.world_model_env.WorldModelEnv`'s for the same
    arguments; ``observation_space`` batches it over the N sub-envs (a leading N axis on every ``Dict`` entry).

    ## Rewards

    Per sub-env, as :class:`~sana_wm_env.envs.world_model_env.WorldModelEnv`; float64 ``(N,)``.

    ## Starting State

    ``reset(seed=s)`` resets every sub-env; sub-env ``i`` starts exactly as a single env reset with seed ``s + i``
    and produces the same frames (``seed`` may also be a list of N seeds). ``options`` apply to all sub-envs.

    ## Episode End

    Per sub-env, as :class:`~sana_wm_env.envs.world_model_env.WorldModelEnv`. Autoreset mode ``NEXT_STEP``: the step
    after a sub-env terminates or truncates resets it (its action is ignored, reward 0, not done) and returns its
    first observation.

    ## Arguments

    - ``num_envs``: N >= 1; ``task``, ``model`` and every keyword of
      :class:`~sana_wm_env.envs.world_model_env.WorldModelEnv` except ``render_mode="human"``.
    - ``render_mode``: ``"rgb_array"`` (``render()`` returns one HUD frame per sub-env) or None.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 16, "autoreset_mode": AutoresetMode.NEXT_STEP}
    source = "world_model"

    def __init__(self, num_envs: int = 1, task: str = "nav", model: WorldModel | str | Path | None = "default", *,
                 render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode is not None and render_mode != "rgb_array":
            raise ValueError(f"render_mode must be 'rgb_array' or None for a vector env, got {render_mode!r}")
        self.sim = CameraSim(num_envs, task=task, source=self.source, model=model, **kwargs)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.single_observation_space = self.sim.observation_space
        self.single_action_space = self.sim.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {**self.metadata, "render_fps": int(round(self.sim.fps))}
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._rngs = make_rngs(None, num_envs)

    def _batch(self, obs: list) -> Any:
        out = create_empty_array(self.single_observation_space, self.num_envs)
        return concatenate(self.single_observation_space, obs, out)

    # ------------------------------------------------------------------------------------------ batched API
    @property
    def limits(self) -> ActionLimits:
        """The action limits shared by all sub-envs (action ``a`` in [-1, 1] moves ``a * limits.scale`` per s)."""
        return self.sim.limits

    @property
    def step_seconds(self) -> float:
        """Duration of one step in seconds (``frames_per_step / fps``)."""
        return self.sim.step_seconds

    @property
    def action_frame(self) -> str:
        """The frame actions move in: ``"rep103"`` (body) or ``"opencv"`` (camera)."""
        return self.sim.action_frame

    def _indices(self, indices: Sequence[int]) -> list[int]:
        idx = [int(i) for i in indices]
        if not idx or any(i < 0 or i >= self.num_envs for i in idx) or len(set(idx)) != len(idx):
            raise ValueError(f"indices must be distinct sub-env indices in [0, {self.num_envs}), got {list(indices)!r}")
        return idx

    def reset_envs(self, indices: Sequence[int], *, seeds: Sequence[int | None] | None = None,
                   options: Sequence[dict | None] | None = None) -> tuple[list, list[dict]]:
        """Start new episodes for sub-envs ``indices`` in one batched call; returns ([obs], [info]), one per index.

        ``seeds[j]`` (if not None) restarts sub-env ``indices[j]``'s random stream as a single env seeded with it;
        None continues the stream. ``options[j]`` are that sub-env's reset options. No autoreset bookkeeping:
        the caller owns the episode boundaries.
        """
        idx = self._indices(indices)
        for name, per in (("seeds", seeds), ("options", options)):
            if per is not None and len(per) != len(idx):
                raise ValueError(f"{name} must have one entry per index ({len(idx)}), got {len(per)}")
        for i, s in zip(idx, seeds or [None] * len(idx)):
            if s is not None:
                self._rngs[i] = make_rngs(int(s), 1)[0]
        obs, infos = self.sim.reset(idx, [self._rngs[i] for i in idx], list(options or [None] * len(idx)))
        self._autoreset[idx] = False
        return obs, infos

    def step_envs(self, indices: Sequence[int], actions) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Step sub-envs ``indices`` with ``actions`` (len(indices), 6) in one batched call, without autoreset.

        Returns ([obs], rewards, terminated, truncated, [info]), one entry per index. A sub-env whose episode
        ended must be restarted with :meth:`reset_envs` before it steps again (RuntimeError otherwise).
        """
        idx = self._indices(indices)
        return self.sim.step(idx, actions)

    def render_env(self, index: int) -> np.ndarray:
        """Sub-env ``index``'s last frame enlarged, with a HUD (what ``render()`` returns for it)."""
        return self.sim.rgb_frame(self._indices([index])[0])

    # ------------------------------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        # a list holds one seed per sub-env (make_rngs checks it): the base class seeds its np_random with the first
        first = seed if seed is None or isinstance(seed, int | np.integer) else next(iter(seed), None)
        super().reset(seed=None if first is None else int(first))
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options must be a dict or None, got {type(options).__name__}")
        if seed is not None:
            self._rngs = make_rngs(seed, self.num_envs)
        obs, infos = self.reset_envs(range(self.num_envs), options=[options] * self.num_envs)
        merged: dict = {}
        for i, info in enumerate(infos):
            merged = self._add_info(merged, info, i)
        return self._batch(obs), merged

    def step(self, actions):
        a = np.asarray(actions)
        if a.shape != (self.num_envs, 6):
            raise ValueError(f"actions must have shape ({self.num_envs}, 6), got {a.shape}")
        reset_idx = [int(i) for i in np.nonzero(self._autoreset)[0]]
        step_idx = [i for i in range(self.num_envs) if not self._autoreset[i]]
        obs: list = [None] * self.num_envs
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terms = np.zeros(self.num_envs, dtype=bool)
        truncs = np.zeros(self.num_envs, dtype=bool)
        merged: dict = {}
        if reset_idx:
            r_obs, r_infos = self.reset_envs(reset_idx)
            for i, o, info in zip(reset_idx, r_obs, r_infos):
                obs[i] = o
                merged = self._add_info(merged, info, i)
        if step_idx:
            calls = self.sim.backend.num_calls(step_idx)
            s_obs, s_rew, s_term, s_trunc, s_infos = self.step_envs(step_idx, a[step_idx])
            for row, i in enumerate(step_idx):
                obs[i], rewards[i], terms[i], truncs[i] = s_obs[row], s_rew[row], s_term[row], s_trunc[row]
                merged = self._add_info(merged, {**s_infos[row], "generator_calls": calls}, i)
        self._autoreset = terms | truncs
        return self._batch(obs), rewards, terms, truncs, merged

    def imagine(self, index: int, actions, frames: bool = True) -> dict[str, np.ndarray]:
        """K candidate futures (K, H, 6) of sub-env ``index`` in one batch; its state is left unchanged."""
        return self.sim.imagine(index, actions, frames=frames)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return tuple(self.render_env(i) for i in range(self.num_envs))

    def close_extras(self, **kwargs: Any) -> None:
        self.sim.close()


class TwinVectorEnv(WorldModelVectorEnv):
    """N MuJoCo twin sub-envs with the spaces, poses and rewards of ``WorldModelVectorEnv``.

    The ``vector_entry_point`` of the ``SanaWM-Twin{Nav,ImageNav,Explore}-v0`` ids. Action Space, Observation
    Space, Rewards, Starting State and Episode End as :class:`WorldModelVectorEnv`; frames are rendered, not
    generated. Arguments as :class:`WorldModelVectorEnv`, with ``model`` giving the geometry only (image size, fps,
    frames per step, field of view), as for :class:`~sana_wm_env.envs.world_model_env.TwinEnv`.
    """

    source = "twin"
