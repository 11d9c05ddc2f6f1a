"""Perturbed camera poses for the action-following test: distractor poses near a commanded one, their renders,
and the distance between two poses.

A perturbation is, with equal probability, a translation of ``[1, perturb_max_factor] x min_shift_m`` along a
uniformly random direction (redrawn until the camera stays ``perturb_clearance`` metres from every surface and
inside the scene; a rotation if 20 draws fail) or a rotation of ``[1, perturb_max_factor] x min_rot_deg`` about a
uniformly random axis. The settings are the fields of :class:`~sana_wm_env.evaluation.config.EvalConfig`.
"""

from __future__ import annotations

import math

import numpy as np

from sana_wm_env.evaluation.config import EvalConfig
from sana_wm_env.scenes.scene import Scene
from world_model.camera import so3_exp

DISTRACTOR_REDRAWS = 10


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def perturbed_poses(scene: Scene, pose: np.ndarray, rng: np.random.Generator, cfg: EvalConfig,
                    count: int | None = None) -> np.ndarray:
    """``count`` (default ``cfg.action_distractors``) poses (n, 4, 4), each at least ``min_shift_m`` or
    ``min_rot_deg`` from ``pose``.

    Translations keep the camera inside the scene and ``perturb_clearance`` from every surface; rotations are
    about the camera centre (which the path already keeps clear).
    """
    n = cfg.action_distractors if count is None else count
    out = np.repeat(pose[None].astype(np.float64), n, axis=0)
    for j in range(n):
        factor = rng.uniform(1.0, cfg.perturb_max_factor)
        if rng.random() < 0.5:
            for _ in range(20):
                centre = pose[:3, 3] + _unit(rng) * cfg.min_shift_m * factor
                if scene.free(centre[None], cfg.perturb_clearance)[0]:
                    out[j, :3, 3] = centre
                    break
            else:
                out[j, :3, :3] = pose[:3, :3] @ so3_exp(_unit(rng) * math.radians(cfg.min_rot_deg * factor)).numpy()
        else:
            out[j, :3, :3] = pose[:3, :3] @ so3_exp(_unit(rng) * math.radians(cfg.min_rot_deg * factor)).numpy()
    return out


def distractor_renders(renderer, scene: Scene, pose: np.ndarray, commanded_rgb: np.ndarray,
                       rng: np.random.Generator, cfg: EvalConfig, k4: np.ndarray,
                       redraws: int = DISTRACTOR_REDRAWS) -> np.ndarray | None:
    """Renders (n, H, W, 3) at :func:`perturbed_poses` of ``pose``, none pixel-identical to ``commanded_rgb``.

    A distractor that renders exactly like the commanded pose (e.g. a small shift seeing only sky) cannot be
    told apart by any model; it is redrawn up to ``redraws`` times, after which the frame is not scored (None).
    """
    out = []
    for _ in range(cfg.action_distractors):
        for _ in range(redraws + 1):
            rgb = renderer.render(perturbed_poses(scene, pose, rng, cfg, count=1)[0], k4)[0]
            if not np.array_equal(rgb, commanded_rgb):
                out.append(rgb)
                break
        else:
            return None
    return np.stack(out)


def pose_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(metres between the camera centres, degrees between the orientations) of two c2w poses."""
    dt = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
    cos = (np.trace(a[:3, :3].T @ b[:3, :3]) - 1.0) / 2.0
    return dt, math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))


def same_pose(a: np.ndarray, b: np.ndarray, tol_m: float = 0.01, tol_deg: float = 0.5) -> bool:
    """Whether two c2w poses are within ``tol_m`` metres and ``tol_deg`` degrees (a revisit of a loop)."""
    dt, dr = pose_distance(a, b)
    return dt <= tol_m and dr <= tol_deg
