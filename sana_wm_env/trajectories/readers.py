"""What the trajectory readers share (text and array files in :mod:`.io`, ROS 2 bags in :mod:`.bags`): the
body-convention check, poses from positions and quaternions, and one-line error reasons."""

from __future__ import annotations

import numpy as np

from sana_wm_env.trajectories.trajectory import CONVENTIONS
from world_model import camera as cam

QUAT_NORM_TOL = 1e-2


def check_convention(convention: str | None, default: str) -> str:
    """``convention``, or the format's ``default`` where it is None; a name not in CONVENTIONS is a ValueError."""
    c = default if convention is None else convention
    if c not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}; got {c!r}")
    return c


def quat_poses(pos: np.ndarray, q_xyzw: np.ndarray, where: list[str]) -> np.ndarray:
    """(N,4,4) from positions and xyzw quaternions; far-from-unit quaternions fail with their location."""
    norms = np.linalg.norm(q_xyzw, axis=1)
    bad = np.nonzero(np.abs(norms - 1.0) > QUAT_NORM_TOL)[0]
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{where[i]}: quaternion norm {norms[i]:.6g} is not close to 1 (|norm - 1| > {QUAT_NORM_TOL}); "
            f"{len(bad)} such row(s)"
        )
    poses = np.tile(np.eye(4), (len(pos), 1, 1))
    if len(pos):
        poses[:, :3, :3] = cam.quat_to_rotmat(q_xyzw).numpy()
        poses[:, :3, 3] = pos
    return poses


def error_reason(err: BaseException) -> str:
    """First line of an exception as ``Type: message``, for wrapping a low-level error in a one-line message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
