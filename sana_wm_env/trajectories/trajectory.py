"""The ``Trajectory`` type: timestamped rigid poses of one body in one world frame, with a stated convention.

Conventions (``Trajectory.convention``) say which axes the *body* frame has:

* ``"opencv"``  - an OpenCV camera frame: +x right, +y down, +z forward (what the world model consumes);
* ``"rep103"``  - a ROS REP-103 body frame: +x forward, +y left, +z up (robots, drones, mocap rigid bodies);
* ``"unknown"`` - as recorded; convert only after stating what it is (``with_convention``).

A camera mount ``T_body_cam`` (4x4, the OpenCV camera frame expressed in the REP-103 body frame) links the two:
``c2w = T_world_body @ T_body_cam``. ``camera_mount()`` builds one from an offset and roll/pitch/yaw.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from world_model import camera as cam

CONVENTIONS: tuple[str, ...] = ("opencv", "rep103", "unknown")

# Columns: the OpenCV camera axes (right, down, forward) written in REP-103 body axes (x fwd, y left, z up).
OPENCV_IN_REP103 = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def camera_mount(xyz=(0.0, 0.0, 0.0), rpy=(0.0, 0.0, 0.0)) -> np.ndarray:
    """``T_body_cam``: an OpenCV camera at ``xyz`` (metres, body frame) looking along the body +x axis after
    rotating the body axes by roll, pitch, yaw (radians, REP-103 order: R = Rz(yaw) Ry(pitch) Rx(roll)).

    A positive pitch tilts the camera down (REP-103: +y is left, so +pitch turns +x towards -z).
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    rpy = np.asarray(rpy, dtype=np.float64)
    if xyz.shape != (3,) or not np.isfinite(xyz).all():
        raise ValueError(f"xyz must be 3 finite numbers (metres), got {xyz.tolist()}")
    if rpy.shape != (3,) or not np.isfinite(rpy).all():
        raise ValueError(f"rpy must be 3 finite angles (roll, pitch, yaw in radians), got {rpy.tolist()}")
    t = np.eye(4)
    t[:3, :3] = cam.rpy_to_rotmat(rpy).numpy() @ OPENCV_IN_REP103
    t[:3, 3] = xyz
    return t


def _check_mount(mount) -> np.ndarray:
    return cam.validate_c2w(np.asarray(mount, dtype=np.float64), "mount").numpy()


@dataclass
class Trajectory:
    """Timestamps (N,) in seconds (strictly increasing) and poses (N,4,4) body-to-world, float64.

    ``intrinsics`` (N,4) [fx, fy, cx, cy] is optional (camera trajectories from datasets). ``metadata`` keeps
    provenance such as the source path and how many rows a reader dropped.
    """

    timestamps: np.ndarray
    poses: np.ndarray
    convention: str = "unknown"
    frame_id: str = "world"
    child_frame_id: str = "body"
    intrinsics: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = np.asarray(self.timestamps, dtype=np.float64)
        p = np.asarray(self.poses, dtype=np.float64)
        if t.ndim != 1 or len(t) == 0:
            raise ValueError(f"timestamps must be a non-empty (N,) array of seconds, got shape {t.shape}")
        if p.shape != (len(t), 4, 4):
            raise ValueError(f"poses must have shape (N, 4, 4) = ({len(t)}, 4, 4), got {p.shape}")
        if not np.isfinite(t).all():
            raise ValueError(f"timestamps contain {int((~np.isfinite(t)).sum())} non-finite values")
        bad = np.nonzero(np.diff(t) <= 0)[0]
        if len(bad):
            i = int(bad[0]) + 1
            raise ValueError(
                f"timestamps must be strictly increasing; {len(bad)} violation(s), first at index {i} "
                f"({t[i - 1]!r} -> {t[i]!r})"
            )
        cam.validate_c2w(p, "poses")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}; got {self.convention!r}")
        if self.intrinsics is not None:
            k = cam.validate_intrinsics(np.asarray(self.intrinsics, dtype=np.float64), "intrinsics").numpy()
            if k.shape == (4,):
                k = np.broadcast_to(k, (len(t), 4)).copy()  # documented: one shared camera
            if k.shape != (len(t), 4):
                raise ValueError(f"intrinsics must be (4,), (3,3), (N,4) or (N,3,3) with N={len(t)}, got {k.shape}")
            self.intrinsics = k
        self.timestamps, self.poses = t, p

    # ----------------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def positions(self) -> np.ndarray:
        """(N,3) body origins in the world frame."""
        return self.poses[:, :3, 3].copy()

    @property
    def quaternions(self) -> np.ndarray:
        """(N,4) body orientations as xyzw quaternions (w >= 0)."""
        return cam.rotmat_to_quat(self.poses[:, :3, :3]).numpy()

    @property
    def duration(self) -> float:
        return float(self.timestamps[-1] - self.timestamps[0])

    def _with(self, **changes) -> Trajectory:
        return replace(self, metadata=dict(self.metadata), **changes)

    # ----------------------------------------------------------------------------------------------------------
    def resample(self, fps: float | None = None, times=None) -> Trajectory:
        """Poses at a uniform ``fps`` from the first stamp (or at explicit ``times``): linear interpolation of
        translation, slerp of rotation (intrinsics are interpolated linearly)."""
        if (fps is None) == (times is None):
            raise ValueError("resample needs exactly one of fps (frames per second) or times (seconds)")
        if len(self) < 2:
            raise ValueError("resample needs a trajectory with at least 2 poses")
        t0, t1 = self.timestamps[0], self.timestamps[-1]
        if fps is not None:
            if not np.isfinite(fps) or fps <= 0:
                raise ValueError(f"fps must be a positive number, got {fps!r}")
            n = int(np.floor((t1 - t0) * fps + 1e-9)) + 1
            new_t = t0 + np.arange(n) / fps
        else:
            new_t = np.asarray(times, dtype=np.float64)
            if new_t.ndim != 1 or len(new_t) == 0 or not np.isfinite(new_t).all():
                raise ValueError("times must be a non-empty (M,) array of finite seconds")
            if new_t.min() < t0 or new_t.max() > t1:
                raise ValueError(
                    f"times must lie within the trajectory [{t0!r}, {t1!r}] s; got [{new_t.min()!r}, {new_t.max()!r}]"
                )
        rot = cam.slerp(self.timestamps, self.poses[:, :3, :3], new_t).numpy()
        pos = np.stack([np.interp(new_t, self.timestamps, self.poses[:, i, 3]) for i in range(3)], axis=1)
        poses = np.tile(np.eye(4), (len(new_t), 1, 1))
        poses[:, :3, :3], poses[:, :3, 3] = rot, pos
        k = None
        if self.intrinsics is not None:
            k = np.stack([np.interp(new_t, self.timestamps, self.intrinsics[:, i]) for i in range(4)], axis=1)
        return self._with(timestamps=new_t, poses=poses, intrinsics=k)

    def scale_time(self, factor: float) -> Trajectory:
        """Play back ``factor`` times slower (>1) or faster (<1): t' = t0 + (t - t0) * factor."""
        if not np.isfinite(factor) or factor <= 0:
            raise ValueError(f"factor must be a positive number, got {factor!r}")
        t0 = self.timestamps[0]
        return self._with(timestamps=t0 + (self.timestamps - t0) * factor)

    def recenter(self) -> Trajectory:
        """Express all poses in the frame of the first pose (which becomes the identity)."""
        return self._with(poses=cam.relative_to_first(self.poses).numpy(), frame_id=f"{self.child_frame_id}@0")

    def with_convention(self, convention: str) -> Trajectory:
        """Declare the body convention of a trajectory read as ``"unknown"`` (no numbers change)."""
        return self._with(convention=convention)

    def to_opencv(self, mount=None) -> Trajectory:
        """REP-103 body poses -> OpenCV camera-to-world poses ``T_world_body @ mount`` (default
        ``camera_mount()``: camera at the body origin looking along +x)."""
        if self.convention == "opencv":
            return self._with()
        if self.convention != "rep103":
            raise ValueError(
                f"to_opencv needs a 'rep103' body trajectory, this one is {self.convention!r}; "
                "declare it first with with_convention('rep103')"
            )
        m = camera_mount() if mount is None else _check_mount(mount)
        return self._with(poses=self.poses @ m, convention="opencv", child_frame_id=f"{self.child_frame_id}_camera")

    def to_rep103(self, mount=None) -> Trajectory:
        """OpenCV camera-to-world poses -> REP-103 body poses ``c2w @ inv(mount)``."""
        if self.convention == "rep103":
            return self._with()
        if self.convention != "opencv":
            raise ValueError(
                f"to_rep103 needs an 'opencv' camera trajectory, this one is {self.convention!r}; "
                "declare it first with with_convention('opencv')"
            )
        m = camera_mount() if mount is None else _check_mount(mount)
        return self._with(poses=self.poses @ cam.se3_inverse(m).numpy(), convention="rep103")


def clean_rows(times: np.ndarray, finite: np.ndarray, where: list[str], on_invalid: str, source: str) -> np.ndarray:
    """Select the rows to keep: finite values and strictly increasing stamps.

    ``on_invalid="raise"`` raises ValueError at the first bad row (``where[i]`` names it, e.g. ``file:line``);
    ``"drop"`` drops bad rows and warns with the counts. Returns the kept row indices.
    """
    if on_invalid not in ("raise", "drop"):
        raise ValueError(f"on_invalid must be 'raise' or 'drop', got {on_invalid!r}")
    keep: list[int] = []
    n_nan = n_order = 0
    last = -np.inf
    for i in range(len(times)):
        if not finite[i]:
            if on_invalid == "raise":
                raise ValueError(f"{where[i]}: row contains NaN/inf values (pass on_invalid='drop' to skip such rows)")
            n_nan += 1
            continue
        if times[i] <= last:
            if on_invalid == "raise":
                what = "duplicate" if times[i] == last else "non-monotonic"
                raise ValueError(
                    f"{where[i]}: {what} timestamp {float(times[i])!r} after {float(last)!r} "
                    "(pass on_invalid='drop' to skip such rows)"
                )
            n_order += 1
            continue
        keep.append(i)
        last = times[i]
    if n_nan or n_order:
        warnings.warn(
            f"{source}: dropped {n_nan} row(s) with NaN/inf and {n_order} with duplicate or non-monotonic "
            f"timestamps; kept {len(keep)}",
            stacklevel=3,
        )
    if not keep:
        raise ValueError(f"{source}: no valid poses")
    return np.asarray(keep, dtype=np.int64)
