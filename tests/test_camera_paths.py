"""Random camera paths (trajectories.camera_paths): bounded motion, clearance checked with MuJoCo ray casts,
motion styles, revisits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sana_wm_env.scenes import FAMILIES, make_scene
from sana_wm_env.scenes.gl import import_mujoco
from sana_wm_env.trajectories.camera_paths import MOTIONS, generate, min_revisit_seconds, motion_limits

FPS = 16.0


def _rates(traj):
    p = traj.positions
    vel = np.diff(p, axis=0) * FPS
    acc = np.diff(vel, axis=0) * FPS
    r = traj.poses[:, :3, :3]
    rel = np.transpose(r[:-1], (0, 2, 1)) @ r[1:]
    ang = np.linalg.norm(Rotation.from_matrix(rel).as_rotvec(), axis=1) * FPS
    return np.linalg.norm(vel, axis=1), np.linalg.norm(acc, axis=1), ang


def _ray_clearance(scene, points) -> float:
    """Smallest MuJoCo ray-hit distance from the points over 26 directions (independent of our geometry)."""
    mj = import_mujoco()
    data = mj.MjData(scene.model)
    mj.mj_forward(scene.model, data)
    dirs = np.array([[x, y, z] for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1) if (x, y, z) != (0, 0, 0)],
                    dtype=np.float64)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    gid = np.zeros(1, np.int32)
    best = np.inf
    for p in points:
        for d in dirs:
            h = mj.mj_ray(scene.model, data, p, d, None, 1, -1, gid)
            if h >= 0:
                best = min(best, h)
    return best


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("motion", MOTIONS)
def test_generated_paths_are_bounded_inside_and_clear(family, motion):
    scene = make_scene(family, 1000 + MOTIONS.index(motion))
    traj = generate(scene, motion, 49, FPS, seed=7)
    assert len(traj) == 49 and traj.convention == "opencv"
    lim = motion_limits(scene, motion)
    speed, acc, ang = _rates(traj)
    assert speed.max() <= lim.max_speed * 1.02
    assert speed.min() > 0.2 * lim.max_speed  # it actually moves
    assert acc.max() <= lim.max_accel * 1.1
    assert ang.max() <= lim.max_angular_speed * 1.05
    assert scene.contains(traj.positions).all()
    assert _ray_clearance(scene, traj.positions) >= 0.2
    right, fwd = traj.poses[:, :3, 0], traj.poses[:, :3, 2]
    if motion == "ground":
        np.testing.assert_allclose(right[:, 2], 0, atol=1e-9)  # no roll
        np.testing.assert_allclose(fwd[:, 2], 0, atol=1e-9)  # no pitch
        height = traj.positions[:, 2] - scene.ground_height(traj.positions[:, :2])
        if scene.geometry.terrain is None:
            np.testing.assert_allclose(height, height[0], atol=1e-9)
        else:
            assert np.ptp(height) < 0.3  # follows the (low-passed) terrain
    elif motion == "handheld":
        assert np.abs(np.degrees(np.arcsin(right[:, 2]))).max() < 5.0  # small roll
        assert np.ptp(traj.positions[:, 2]) < 0.05 or scene.geometry.terrain is not None
    else:
        assert np.abs(right[:, 2]).max() > 1e-3  # drones roll


def test_revisit_loops_return_to_the_same_pose():
    scene = make_scene("rooms", 2000)
    frames = int(np.ceil(min_revisit_seconds(scene, "handheld") * FPS)) + 24
    traj = generate(scene, "handheld", frames, FPS, seed=3, revisit=True)
    period = traj.metadata["loop_period_frames"]
    assert 8 <= period <= frames - 1
    np.testing.assert_allclose(traj.poses[period:], traj.poses[: frames - period], atol=1e-6)
    assert np.linalg.norm(traj.positions[period // 2] - traj.positions[0]) > 0.3  # it goes somewhere between
    assert _ray_clearance(scene, traj.positions) >= 0.2
    with pytest.raises(ValueError, match="revisit loop for handheld needs at least"):
        generate(scene, "handheld", 33, FPS, seed=3, revisit=True)


def test_generator_is_deterministic_and_checks_arguments():
    scene = make_scene("outdoor", 3000)
    a = generate(scene, "drone", 17, FPS, seed=11)
    b = generate(scene, "drone", 17, FPS, seed=11)
    c = generate(scene, "drone", 17, FPS, seed=12)
    np.testing.assert_array_equal(a.poses, b.poses)
    assert not np.allclose(a.poses, c.poses)
    with pytest.raises(ValueError, match="motion must be one of drone, ground, handheld"):
        generate(scene, "car", 17)
    with pytest.raises(ValueError, match="num_frames must be an int >= 2"):
        generate(scene, "drone", 1)
    with pytest.raises(ValueError, match="fps must be a positive number"):
        generate(scene, "drone", 17, fps=0)
