"""Trajectories: one ``Trajectory`` type, readers/writers for common formats, conventions and generators.

``load(path, format="auto", topic=None, parent_frame=None, child_frame=None)`` and ``save(traj, path)``;
``camera_mount`` and ``Trajectory.to_opencv/to_rep103`` convert between REP-103 body and OpenCV camera poses;
``generate`` makes smooth random camera paths inside a scene.
"""

from sana_wm_env.trajectories.io import FORMATS, detect_format, load, save
from sana_wm_env.trajectories.trajectory import CONVENTIONS, OPENCV_IN_REP103, Trajectory, camera_mount

__all__ = [
    "CONVENTIONS", "FORMATS", "OPENCV_IN_REP103", "Trajectory", "camera_mount", "detect_format", "load", "save",
]
