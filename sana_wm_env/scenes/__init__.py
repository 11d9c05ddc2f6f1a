"""Procedural MuJoCo twin worlds: scene families, seeds (with an evaluation split) and a headless renderer."""

from sana_wm_env.scenes.families import make_scene
from sana_wm_env.scenes.scene import EVAL_SEEDS, FAMILIES, SEED_COUNT, TRAIN_SEEDS, Scene, check_seed, is_eval_seed

__all__ = [
    "EVAL_SEEDS", "FAMILIES", "SEED_COUNT", "TRAIN_SEEDS", "Scene", "SceneRenderer", "check_seed",
    "is_eval_seed", "make_scene",
]


def __getattr__(name: str):
    if name == "SceneRenderer":  # lazy: importing it loads mujoco and selects a GL backend
        from sana_wm_env.scenes.renderer import SceneRenderer

        return SceneRenderer
    raise AttributeError(name)
