"""Training pairs for the relative-pose network: twin ImageNav views with exact labels of where the goal is."""

from __future__ import annotations

from typing import Any

import numpy as np

from policies.relative_pose.model import TARGET_DIM


def collect_pairs(
    num_samples: int,
    *,
    model: Any = "default",
    split: str = "train",
    seed: int = 0,
    goals_per_scene: int = 8,
    views_per_goal: int = 8,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """``num_samples`` (image, goal image, relative goal) triples rendered in twin ImageNav scenes.

    ``model``: whose geometry the twin takes (image size, FoV, camera mount), as for ``SanaWM-TwinImageNav-v0``;
    ``None`` for the twin defaults. Each scene of ``split`` gets ``goals_per_scene`` episodes drawn exactly as the
    env's ``reset`` draws them (:meth:`CameraSim.draw_episode`), and each episode ``views_per_goal`` current views:
    the start itself, then views around the straight path to the goal (:func:`sample_approach_pose`), i.e. where a
    policy that heads for the goal is. Rendering views directly instead of running episodes makes the data ~8x
    cheaper per pair and far more diverse (many goals per scene; a scene costs ~0.2 s to set up, a view ~2 ms).
    Returns uint8 ``image``/``goal`` ``(N, 3, H, W)``, float32 ``target (N, 10)``, the world body poses
    ``body``/``goal_body`` ``(N, 4, 4)``, each sample's ``scene`` ("family/seed") and the number of ``scenes``.
    """
    import gymnasium as gym

    from sana_wm_env.scenes.renderer import SceneRenderer

    for name, v in (("num_samples", num_samples), ("goals_per_scene", goals_per_scene),
                    ("views_per_goal", views_per_goal)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    env = gym.make("SanaWM-TwinImageNav-v0", model=model, split=split)
    sim = env.unwrapped.sim
    rng = np.random.default_rng(seed)
    h, w = sim.image_hw
    images = np.empty((num_samples, 3, h, w), np.uint8)
    goals = np.empty_like(images)
    target = np.empty((num_samples, TARGET_DIM), np.float32)
    bodies, goal_bodies = np.empty((2, num_samples, 4, 4), np.float32)
    names: list[str] = []
    bar = _progress(num_samples, "collecting", progress, "pair")
    n = scenes = 0
    while n < num_samples:
        scene, _, _ = sim.draw_episode(rng)
        scenes += 1
        with SceneRenderer(scene, h, w, depth=False) as renderer:
            render = lambda body: renderer.render(body @ sim.mount, sim.default_intrinsics,  # noqa: E731
                                                  check_inside=False)[0].transpose(2, 0, 1)
            for _ in range(goals_per_scene):
                try:
                    _, start, goal = sim.draw_episode(rng, scene=scene)
                except (RuntimeError, ValueError):  # a cramped scene: go on with the next one
                    break
                goal_image = render(goal)
                for v in range(views_per_goal):
                    body = start if v == 0 else sample_approach_pose(rng, start, goal, scene)
                    if body is None or n == num_samples:
                        continue
                    images[n], goals[n], target[n] = render(body), goal_image, relative_goal_target(body, goal)
                    bodies[n], goal_bodies[n] = body, goal
                    names.append(f"{scene.family}/{scene.seed}")
                    n += 1
                    bar.update(1)
    bar.close()
    env.close()
    return {"image": images, "goal": goals, "target": target, "body": bodies, "goal_body": goal_bodies,
            "scene": np.asarray(names), "scenes": np.asarray(scenes)}


def relative_goal_target(body: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """World body poses (4, 4) -> the goal in the body frame, in :func:`policies.features.goal_in_body_frame`'s
    layout."""
    rel = np.linalg.inv(body) @ goal
    p = rel[:3, 3]
    return np.concatenate([p, [np.linalg.norm(p)], rel[:3, 0], rel[:3, 1]]).astype(np.float32)


def sample_approach_pose(rng: np.random.Generator, start: np.ndarray, goal: np.ndarray, scene: Any,
                         clearance: float = 0.15, tries: int = 10) -> np.ndarray | None:
    """A free body pose on the way from ``start`` to ``goal``: a point along the straight path (30 % of the time
    at the goal itself), moved sideways by ~0.25 m, its heading between the two headings with ~20 degrees of
    noise and a few degrees of roll and pitch. None when ``tries`` draws all hit a surface."""
    from world_model.camera import rpy_to_rotmat

    yaw = lambda t: np.arctan2(t[1, 0], t[0, 0])  # noqa: E731
    dyaw = (yaw(goal) - yaw(start) + np.pi) % (2 * np.pi) - np.pi
    for _ in range(tries):
        u = 1.0 if rng.random() < 0.3 else rng.random()
        pos = start[:3, 3] + u * (goal[:3, 3] - start[:3, 3])
        pos = pos + np.array([*rng.normal(0.0, 0.25, 2), rng.normal(0.0, 0.05)])
        if not scene.free(pos[None], clearance)[0]:
            continue
        t = np.eye(4)
        heading = yaw(start) + u * dyaw + rng.normal(0.0, 0.35)
        pitch, roll = rng.normal(0.0, 0.05, 2)
        t[:3, :3] = rpy_to_rotmat([roll, pitch, heading]).numpy()
        t[:3, 3] = pos
        return t
    return None


def _progress(total: int, desc: str, enabled: bool, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit=unit)
