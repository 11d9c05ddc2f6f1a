"""Metric 6-DoF camera actions: ``Box(-1, 1, (6,))`` scaled to a rigid motion per step, and the per-frame poses.

Two action frames:

* ``"rep103"`` (default): the robot body frame, ``[forward, left, up, roll, pitch, yaw]`` (x fwd, y left, z up;
  positive pitch turns the nose down, positive yaw turns left). The camera sits on the body with an explicit
  mount ``T_body_cam`` (``sana_wm_env.trajectories.camera_mount``), so ``c2w = T_world_body @ mount``.
* ``"opencv"``: the camera frame itself, ``[right, down, forward, rot_x, rot_y, rot_z]``.

An action ``a`` is a velocity command held for one step: the twist ``xi = a * limits * step_seconds`` is
applied in the action frame (``T' = T @ exp(xi)``), and the step's frames lie on the SE(3) geodesic from the
old pose to the new one (frame ``j`` of ``n`` at ``T @ exp(j / n * xi)``). Limits are speeds (m/s, rad/s) so the
same limits give the same physical motion whatever the model's fps and chunk length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from world_model.camera import se3_exp

ACTION_FRAMES: tuple[str, ...] = ("rep103", "opencv")


@dataclass(frozen=True)
class ActionLimits:
    """Speeds reached at ``|a| = 1``: linear (3,) in m/s and angular (3,) in rad/s, per action-frame axis.

    Defaults (1.0 m/s forward, 0.5 m/s sideways and vertical; 0.5 rad/s roll and pitch, 1.0 rad/s yaw) are
    walking-robot speeds: at the bundled model's 16 fps a frame moves at most 6.3 cm and 3.6 degrees, inside
    the per-frame motion of the twin-world training paths (handheld/ground: <= 1.4 m/s, <= 75 deg/s).
    """

    linear: tuple[float, float, float] = (1.0, 0.5, 0.5)
    angular: tuple[float, float, float] = (0.5, 0.5, 1.0)

    def __post_init__(self) -> None:
        for name in ("linear", "angular"):
            v = np.asarray(getattr(self, name), dtype=np.float64)
            if v.shape != (3,) or not np.isfinite(v).all() or (v < 0).any():
                raise ValueError(f"{name} must be 3 finite speeds >= 0 (m/s or rad/s), got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(float(x) for x in v))

    @property
    def scale(self) -> np.ndarray:
        """(6,) speeds for the 6 action components."""
        return np.asarray(self.linear + self.angular, dtype=np.float64)


def check_action_frame(frame: str) -> str:
    if frame not in ACTION_FRAMES:
        raise ValueError(f"action_frame must be one of {', '.join(ACTION_FRAMES)}; got {frame!r}")
    return frame


def real_array(actions, shape: str) -> np.ndarray:
    """``actions`` as float64, or a ValueError naming the expected ``shape`` if they are not real numbers (complex
    values would lose their imaginary part, strings would be parsed)."""
    try:
        raw = np.asarray(actions)
    except (TypeError, ValueError) as exc:  # ragged nesting
        raise ValueError(f"action must be real numbers of shape {shape}, got {actions!r}") from exc
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"action must be real numbers (bool, int or float) of shape {shape}, got dtype {raw.dtype}: "
                         f"{actions!r}")
    return raw.astype(np.float64)


def validate_actions(actions, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Check ``actions`` ((6,) for batch 1, or (batch, 6)); return (clipped float64 (batch, 6), clipped count per row).

    NaN/inf raise ValueError; values outside [-1, 1] are clipped and counted (never silently).
    """
    a = real_array(actions, f"(6,) or ({batch}, 6)" if batch == 1 else f"({batch}, 6)")
    if batch == 1 and a.shape == (6,):
        a = a[None]
    if a.shape != (batch, 6):
        raise ValueError(f"action must have shape {'(6,) or ' if batch == 1 else ''}({batch}, 6), got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ValueError(f"action must be finite; got {a[row, col]} at {(row, col) if batch > 1 else col}")
    out = np.clip(a, -1.0, 1.0)
    return out, (out != a).sum(axis=1)


def action_twists(actions: np.ndarray, limits: ActionLimits, step_seconds: float) -> np.ndarray:
    """Twists ``[v, w]`` (B, 6) in the action frame for validated actions (B, 6) held for ``step_seconds``."""
    return actions * limits.scale[None] * float(step_seconds)


def orthonormalize(t: np.ndarray) -> np.ndarray:
    """Project the rotation blocks of rigid transforms (..., 4, 4) back onto SO(3) (stops drift over long runs)."""
    u, _, vt = np.linalg.svd(t[..., :3, :3])
    out = t.copy()
    out[..., :3, :3] = u @ vt
    out[..., 3, :] = (0.0, 0.0, 0.0, 1.0)
    return out


def step_poses(c2w: np.ndarray, twists: np.ndarray, n: int, frame: str, mount: np.ndarray) -> np.ndarray:
    """Camera-to-world poses (B, n, 4, 4) of a step's ``n`` frames from camera poses ``c2w`` (B, 4, 4).

    The action frame's pose moves as ``T @ exp(j / n * xi)``, j = 1..n (the geodesic; the last frame is the new pose).
    """
    alphas = np.arange(1, n + 1, dtype=np.float64) / n
    deltas = se3_exp(torch.from_numpy(alphas[None, :, None] * twists[:, None, :])).numpy()  # (B, n, 4, 4)
    if frame == "opencv":
        out = c2w[:, None] @ deltas
    else:
        inv_mount = np.linalg.inv(mount)
        body = c2w @ inv_mount
        out = body[:, None] @ deltas @ mount
    return orthonormalize(out)
