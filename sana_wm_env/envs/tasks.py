"""Tasks: what an episode asks for, what the agent observes besides the image, and how it is rewarded.

All tasks work on REP-103 body poses in the world frame (``T_world_body``; the camera is ``body @ mount``).
Rewards depend only on poses, so a world-model env and its MuJoCo twin with the same seed and actions give
the same rewards; only the pixels differ.

* ``nav``       - reach a goal pose. Reward per step: ``(d_prev - d) + rot_weight * (theta_prev - theta)
  - step_cost`` with ``d`` the goal distance (m) and ``theta`` the rotation angle to the goal orientation (rad);
  ``+ success_bonus`` on success (``d < 0.3 m`` and ``theta < 15 deg``), which terminates. Observes the goal
  pose relative to the start.
* ``imagenav``  - as ``nav``, but the goal is the image seen from the goal pose and no pose is observed.
* ``explore``   - visit new views: ``+ view_reward`` per new (0.5 m cell, 45-degree heading sector) pair,
  ``- step_cost`` per step; never succeeds, ends by truncation. Observes the pose.

Every task, when the episode runs in a twin-world scene: leaving the scene bounds or coming closer than
``collision_clearance`` to a surface terminates with ``- collision_penalty`` (default 2, above the whole episode's
step cost ``max_steps * step_cost`` = 1, so ending an episode by crashing never pays). Episodes are truncated after
``max_steps`` steps.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces

from world_model.camera import matrix_to_pose7, rotation_angle, rpy_to_rotmat

POSE_LOW = np.array([-1e4, -1e4, -1e4, -1.0, -1.0, -1.0, -1.0], dtype=np.float32)
POSE_HIGH = -POSE_LOW


def pose7(t: np.ndarray) -> np.ndarray:
    """(4, 4) rigid transform -> float32 ``[x, y, z, qx, qy, qz, qw]`` (qw >= 0)."""
    return matrix_to_pose7(np.asarray(t, dtype=np.float64)).numpy().astype(np.float32)


def yaw_body(position: np.ndarray, yaw: float) -> np.ndarray:
    """Level REP-103 body pose at ``position`` heading ``yaw`` (rad, about world z)."""
    t = np.eye(4)
    t[:3, :3] = rpy_to_rotmat([0.0, 0.0, float(yaw)]).numpy()
    t[:3, 3] = position
    return t


@dataclass
class TaskConfig:
    """Reward and episode settings shared by the tasks (see the module docstring)."""

    max_steps: int = 100
    step_cost: float = 0.01
    rot_weight: float = 0.2  # metres of progress per radian of rotation progress
    success_bonus: float = 1.0
    success_distance: float = 0.3  # metres
    success_angle_deg: float = 15.0
    collision_penalty: float = 2.0  # > max_steps * step_cost: crashing early never beats staying safe
    collision_clearance: float = 0.1  # metres
    goal_distance: tuple[float, float] = (1.0, 3.0)  # metres from the start
    goal_bearing_deg: float = 90.0  # goals lie within +- this bearing of the start heading
    goal_yaw_deg: float = 90.0  # goal heading differs from the start heading by at most this
    view_reward: float = 0.05
    cell_size: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be an int >= 1, got {self.max_steps!r}")
        lo, hi = self.goal_distance
        if not 0 < lo <= hi:
            raise ValueError(f"goal_distance must be (min, max) metres with 0 < min <= max, got {self.goal_distance}")


@dataclass
class Episode:
    """Per-episode task state of one (sub-)environment."""

    start_body: np.ndarray  # (4, 4) world
    goal_body: np.ndarray | None = None
    goal_image: np.ndarray | None = None
    last_distance: float = 0.0
    last_angle: float = 0.0
    visited: set = field(default_factory=set)


class Task(abc.ABC):
    """Base task: spaces of the extra observation keys, goals, rewards."""

    name = "base"
    observes_pose = True
    needs_goal_image = False

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    def extra_spaces(self, image_hw: tuple[int, int]) -> dict[str, spaces.Space]:
        out: dict[str, spaces.Space] = {}
        if self.observes_pose:
            out["pose"] = spaces.Box(POSE_LOW, POSE_HIGH, dtype=np.float32)
        return out

    def sample_goal(self, rng: np.random.Generator, start_body: np.ndarray, free_fn) -> np.ndarray | None:
        """A goal body pose (4, 4) or None; ``free_fn(points (N, 3)) -> bool mask`` (None: no scene)."""
        return None

    def begin(self, episode: Episode) -> None:
        if episode.goal_body is not None:
            episode.last_distance, episode.last_angle = self.goal_error(episode, episode.start_body)
        episode.visited = set()
        self._visit(episode, episode.start_body)

    def goal_error(self, episode: Episode, body: np.ndarray) -> tuple[float, float]:
        g = episode.goal_body
        return float(np.linalg.norm(body[:3, 3] - g[:3, 3])), float(rotation_angle(g[:3, :3].T @ body[:3, :3]))

    def _visit(self, episode: Episode, body: np.ndarray) -> int:
        cell = tuple(np.floor(body[:3, 3] / self.config.cell_size).astype(int).tolist())
        heading = body[:3, 0]
        sector = int(np.floor((np.arctan2(heading[1], heading[0]) + np.pi) / (np.pi / 4))) % 8
        key = (cell, sector)
        if key in episode.visited:
            return 0
        episode.visited.add(key)
        return 1

    @abc.abstractmethod
    def reward(self, episode: Episode, body: np.ndarray, collided: bool) -> tuple[float, bool, dict[str, Any]]:
        """(reward, terminated, info) after moving to ``body``."""


class NavTask(Task):
    name = "nav"

    def extra_spaces(self, image_hw):
        out = super().extra_spaces(image_hw)
        out["goal"] = spaces.Box(POSE_LOW, POSE_HIGH, dtype=np.float32)
        return out

    def sample_goal(self, rng, start_body, free_fn):
        c = self.config
        for _ in range(100):
            dist = rng.uniform(*c.goal_distance)
            bearing = np.radians(rng.uniform(-c.goal_bearing_deg, c.goal_bearing_deg))
            heading = np.arctan2(start_body[1, 0], start_body[0, 0])
            direction = np.array([np.cos(heading + bearing), np.sin(heading + bearing), 0.0])
            pos = start_body[:3, 3] + dist * direction
            yaw = heading + np.radians(rng.uniform(-c.goal_yaw_deg, c.goal_yaw_deg))
            if free_fn is not None:  # the goal and the straight path to it must be free
                s = np.linspace(0.0, 1.0, max(2, int(np.ceil(dist / 0.1))))[:, None]
                if not free_fn(start_body[:3, 3] + s * (pos - start_body[:3, 3])).all():
                    continue
            return yaw_body(pos, yaw)
        return None

    def reward(self, episode, body, collided):
        c = self.config
        d, th = self.goal_error(episode, body)
        r = (episode.last_distance - d) + c.rot_weight * (episode.last_angle - th) - c.step_cost
        episode.last_distance, episode.last_angle = d, th
        success = d < c.success_distance and th < np.radians(c.success_angle_deg)
        if success:
            r += c.success_bonus
        if collided:
            r -= c.collision_penalty
        info = {"distance": d, "angle_error": th, "is_success": bool(success), "collision": bool(collided)}
        return float(r), bool(success or collided), info


class ImageNavTask(NavTask):
    name = "imagenav"
    observes_pose = False
    needs_goal_image = True

    def extra_spaces(self, image_hw):
        return {"goal": spaces.Box(0, 255, (*image_hw, 3), dtype=np.uint8)}


class ExploreTask(Task):
    name = "explore"

    def reward(self, episode, body, collided):
        c = self.config
        new = self._visit(episode, body)
        r = c.view_reward * new - c.step_cost - (c.collision_penalty if collided else 0.0)
        info = {"views": len(episode.visited), "is_success": False, "collision": bool(collided)}
        return float(r), bool(collided), info


TASKS: dict[str, type[Task]] = {t.name: t for t in (NavTask, ImageNavTask, ExploreTask)}


def make_task(name: str, **config) -> Task:
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {name!r}")
    return TASKS[name](TaskConfig(**config))
