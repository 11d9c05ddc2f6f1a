"""Gymnasium environments over a SANA-WM world model and their MuJoCo twins (see ``world_model_env``)."""

from __future__ import annotations

TASK_IDS: dict[str, str] = {"nav": "Nav", "imagenav": "ImageNav", "explore": "Explore"}


def env_ids() -> list[str]:
    """Every registered id: ``SanaWM-<Task>-v0`` (world model) and ``SanaWM-Twin<Task>-v0`` (MuJoCo twin)."""
    return [f"SanaWM-{p}{t}-v0" for p in ("", "Twin") for t in TASK_IDS.values()]


def register_envs() -> None:
    """Register the env ids with Gymnasium (idempotent; imports neither torch nor mujoco)."""
    import gymnasium

    for task, name in TASK_IDS.items():
        for prefix, single, vector in (
            ("", "WorldModelEnv", "WorldModelVectorEnv"),
            ("Twin", "TwinEnv", "TwinVectorEnv"),
        ):
            env_id = f"SanaWM-{prefix}{name}-v0"
            if env_id in gymnasium.registry:
                continue
            gymnasium.register(
                id=env_id,
                entry_point=f"sana_wm_env.envs.world_model_env:{single}",
                vector_entry_point=f"sana_wm_env.envs.vector:{vector}",
                kwargs={"task": task},
            )


def __getattr__(name: str):
    if name in ("WorldModelEnv", "TwinEnv"):
        from sana_wm_env.envs import world_model_env

        return getattr(world_model_env, name)
    if name in ("WorldModelVectorEnv", "TwinVectorEnv"):
        from sana_wm_env.envs import vector

        return getattr(vector, name)
    raise AttributeError(name)
