"""SANA-WM environments: envs, tasks, twin worlds, trajectory I/O, datasets and the `sana-wm` CLI.

Importing the package registers the Gymnasium ids (``SanaWM-Nav-v0``, ``SanaWM-TwinNav-v0``, ...) without
importing torch or mujoco; the env classes load on first use.
"""

from __future__ import annotations

__all__ = ["TwinEnv", "WorldModelEnv"]

from sana_wm_env.envs import register_envs as _register_envs

_register_envs()


def __getattr__(name: str):
    if name in ("WorldModelEnv", "TwinEnv"):
        from sana_wm_env.envs import world_model_env

        return getattr(world_model_env, name)
    raise AttributeError(name)
