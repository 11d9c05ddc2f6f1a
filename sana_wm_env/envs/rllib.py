"""The SANA-WM env ids registered with RLlib (``ray.tune.registry.register_env``).

After :func:`register_rllib_envs`, ``PPOConfig().environment("SanaWM-Nav-v0", env_config={"model": "default"})``
builds the env on every RLlib env runner: ``env_config`` holds the ``gym.make`` keywords (``model``, ``task_config``,
``image_hw``, ...). With ``env_runners(gym_env_vectorize_mode="vector_entry_point")`` an env runner's
``num_envs_per_env_runner`` sub-envs are one :class:`~sana_wm_env.envs.vector.WorldModelVectorEnv` that generates
all of them in one batched world-model call (the default ``"sync"`` mode steps one env after the other).

RLlib seeds each env runner's envs itself (``config.debugging(seed=...)``); the envs are otherwise the Gymnasium
ones, with the same spaces, conventions (REP-103 body-frame actions in [-1, 1]) and NEXT_STEP autoreset.

RLlib is the optional ``rllib`` extra (``ray[rllib]``, which pins its own gymnasium: install it in its own
environment). :mod:`policies.rllib` has an RLModule for these observations.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["make_rllib_env", "register_rllib_envs"]


def make_rllib_env(env_id: str, env_config: dict[str, Any] | None = None):
    """The env RLlib's creator returns for ``env_id``: ``gym.make(env_id, **env_config)``, or, when RLlib adds
    ``num_envs`` (the ``vector_entry_point`` mode), the batched vector env of that many sub-envs."""
    import gymnasium as gym

    import sana_wm_env  # noqa: F401  (registers the Gymnasium ids)

    config = dict(env_config or {})  # an EnvContext is a dict with worker attributes; only its items are keywords
    num_envs = config.pop("num_envs", None)
    if num_envs is None:
        return gym.make(env_id, **config)
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"env_config['num_envs'] must be a positive int, got {num_envs!r}")
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **config)


def register_rllib_envs(env_ids: Iterable[str] | None = None) -> list[str]:
    """Register ``env_ids`` (default: every ``SanaWM-*-v0`` id) with RLlib's registry; returns the ids.

    Call it in the driver before building the algorithm; RLlib ships the creators to its env runners.
    """
    from sana_wm_env.distributed import require_ray
    from sana_wm_env.envs import env_ids as all_ids

    require_ray()
    try:
        from ray.tune.registry import register_env
    except ImportError as exc:  # ray without the tune/rllib extras
        raise ImportError("registering the envs with RLlib needs ray[rllib]: pip install 'sana-wm-env[rllib]' "
                          "(in its own environment: ray[rllib] pins its own gymnasium)") from exc
    known = all_ids()
    ids = known if env_ids is None else list(env_ids)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(f"env_ids: unknown id(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    for env_id in ids:
        register_env(env_id, lambda config, env_id=env_id: make_rllib_env(env_id, config))
    return ids
