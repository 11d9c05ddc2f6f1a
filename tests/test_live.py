"""The live pose camera engine (no ROS): resampling, stamps, drops, bounded buffers, gaps, reset, imagine, TF."""

from __future__ import annotations

import numpy as np
import pytest

from sana_wm_env.live import LivePoseCamera
from sana_wm_env.trajectories import Trajectory, camera_mount, load
from sana_wm_env.trajectories.tf import TFBuffer, interpolate_edge, pose_matrix

MOUNT = camera_mount((0.1, 0.0, 0.3), (0.0, 0.2, 0.0))


def _first_frame(h=20, w=24) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _path(n: int, rate: float, t0: float = 1000.0):
    """A curving REP-103 ground path sampled at ``rate`` Hz: (stamps, positions, quaternions xyzw)."""
    t = t0 + np.arange(n) / rate
    yaw = 0.3 * np.sin(np.arange(n) / rate)
    pos = np.stack([0.5 * np.arange(n) / rate, 0.2 * np.sin(np.arange(n) / rate), np.zeros(n)], axis=1)
    quat = np.stack([np.zeros(n), np.zeros(n), np.sin(yaw / 2), np.cos(yaw / 2)], axis=1)
    return t, pos, quat


def _drain(cam: LivePoseCamera):
    out = []
    while True:
        f = cam.process(timeout=0.0)
        if not f:
            return out
        out += f


@pytest.fixture()
def cam(wm, one_thread):
    c = LivePoseCamera(wm, mount=MOUNT, max_lag=30.0)
    c.set_first_frame(_first_frame())
    return c


def test_frames_are_resampled_with_true_stamps_and_poses(cam):
    t, pos, quat = _path(100, 30.0)  # 3.3 s at 30 Hz, not a multiple of the model's 16 fps
    for i in range(len(t)):
        assert cam.add_pose(t[i], pos[i], quat[i]) == "accepted"
    frames = _drain(cam)
    n = cam.chunk_frames
    expected = 1 + n * (int(np.floor((t[-1] - t[0]) * cam.fps + 1e-9)) // n)
    assert len(frames) == expected == cam.stats()["frames_out"]
    stamps = np.array([f.stamp for f in frames])
    np.testing.assert_allclose(stamps, t[0] + np.arange(len(frames)) / cam.fps, atol=1e-9)
    assert [f.index for f in frames] == list(range(len(frames)))
    body = Trajectory(timestamps=t, poses=np.stack([pose_matrix(p, q) for p, q in zip(pos, quat)]),
                      convention="rep103")
    ref = body.resample(times=stamps).to_opencv(MOUNT).poses
    np.testing.assert_allclose(np.stack([f.c2w for f in frames]), ref, atol=1e-6)
    assert frames[0].image.shape == (*cam.image_hw, 3) and frames[0].image.dtype == np.uint8
    assert all(f.latency is not None and f.latency >= 0 for f in frames)
    # the intrinsics actually used: the first frame's FoV intrinsics after resize/centre-crop to the model size
    assert cam.intrinsics.shape == (4,) and (cam.intrinsics > 0).all()


def test_invalid_duplicate_and_out_of_order_poses_are_dropped_and_counted(cam):
    q = [0, 0, 0, 1]
    assert cam.add_pose(1.0, [0, 0, 0], q) == "accepted"
    assert cam.add_pose(1.1, [np.nan, 0, 0], q) == "nan"
    assert cam.add_pose(1.1, [0, 0, 0], [0, 0, 0, 2.0]) == "invalid"
    assert cam.add_pose(1.0, [0, 0, 0], q) == "duplicate"
    assert cam.add_pose(0.5, [0, 0, 0], q) == "out_of_order"
    assert cam.add_pose(1.2, [0.1, 0, 0], q) == "accepted"
    s = cam.stats()
    assert (s["poses_in"], s["accepted"], s["dropped_nan"], s["dropped_invalid"], s["dropped_duplicate"],
            s["dropped_out_of_order"]) == (6, 2, 1, 1, 1, 1)


def test_a_burst_keeps_buffers_bounded_and_counts_dropped_frames(wm, one_thread):
    cam = LivePoseCamera(wm, max_lag=1.0)
    cam.set_first_frame(_first_frame())
    t, pos, quat = _path(5000, 100.0)  # 50 s of poses arriving at once: far more than the worker can render
    for i in range(len(t)):
        cam.add_pose(t[i], pos[i], quat[i])
    s = cam.stats()
    assert s["pending_frames"] <= s["max_pending"] == int(np.ceil(1.0 * cam.fps)) + cam.chunk_frames
    made = int(np.floor((t[-1] - t[0]) * cam.fps + 1e-9))  # grid frames after frame 0
    assert s["dropped_frames"] == made - s["pending_frames"]
    frames = _drain(cam)
    assert frames[0].index == 0 and frames[1].stamp > t[-1] - 1.5  # the newest frames survive, true stamps
    assert cam.stats()["lag_s"] < 1.0


def test_a_gap_holds_the_stream_and_is_counted(cam):
    t = np.r_[np.arange(0, 1.0, 0.05), np.arange(3.0, 4.0, 0.05)]
    statuses = [cam.add_pose(ti, [ti, 0, 0], [0, 0, 0, 1]) for ti in t]
    assert statuses.count("gap") == 1 and cam.stats()["gaps"] == 1
    frames = _drain(cam)
    stamps = np.array([f.stamp for f in frames])
    assert not ((stamps > t[19] + 1e-9) & (stamps < 3.0 - 1e-9)).any()  # nothing invented inside the gap
    assert (stamps >= 3.0).any()
    np.testing.assert_allclose(np.round(stamps * cam.fps), stamps * cam.fps, atol=1e-6)  # still on the clock


def test_reset_restarts_from_the_latest_first_frame_at_the_latest_pose(cam):
    for ti in np.arange(0, 1.0, 0.02):
        cam.add_pose(ti, [ti, 0, 0], [0, 0, 0, 1])
    _drain(cam)
    new_first = np.full((32, 32, 3), 200, dtype=np.uint8)
    cam.set_first_frame(new_first)
    assert cam.request_reset()
    frames = _drain(cam)
    assert frames[0].index == 0 and frames[0].stamp == pytest.approx(0.98)
    assert (frames[0].image == 200).all()
    assert cam.stats()["restarts"] == 1


def test_reset_without_a_first_frame_is_refused(wm):
    assert LivePoseCamera(wm).request_reset() is False


def test_deprecated_set_seed_and_has_seed_still_work_and_warn(wm):
    cam = LivePoseCamera(wm)
    with pytest.warns(DeprecationWarning, match="has_first_frame"):
        assert cam.has_seed is False
    with pytest.warns(DeprecationWarning, match="set_first_frame"):
        cam.set_seed(_first_frame())
    assert cam.has_first_frame and cam.stats()["has_first_frame"]


def test_imagine_runs_on_a_fork_and_leaves_the_live_stream_unchanged(wm, one_thread):
    t, pos, quat = _path(64, 20.0)
    runs = []
    for imagine in (False, True):
        cam = LivePoseCamera(wm, mount=MOUNT, max_lag=30.0, seed=3)
        cam.set_first_frame(_first_frame())
        live, imagined = [], []
        for i in range(len(t)):
            cam.add_pose(t[i], pos[i], quat[i])
            if imagine and i == 30:
                for f in _drain(cam):
                    (imagined if f.imagined else live).append(f)
                body = np.stack([pose_matrix([x, 1.0, 0], [0, 0, 0, 1]) for x in np.linspace(0, 1, 5)])
                cam.request_imagine(t[30] + np.arange(5) * 0.25, body)  # 1 s path -> 17 frames at 16 fps
        for f in _drain(cam):
            (imagined if f.imagined else live).append(f)
        runs.append((live, imagined))
    (live_a, none), (live_b, imagined) = runs
    assert not none and len(imagined) == 17 and all(f.imagined for f in imagined)
    assert len(live_a) == len(live_b)
    for a, b in zip(live_a, live_b):
        assert a.stamp == b.stamp
        np.testing.assert_array_equal(a.image, b.image)


def test_bad_arguments_raise():
    from world_model.bundles import untrained_world_model

    wm = untrained_world_model("tiny-notext", image_hw=(16, 16))
    with pytest.raises(ValueError, match="max_lag must be a positive"):
        LivePoseCamera(wm, max_lag=0)
    with pytest.raises(ValueError, match="fps must be a positive"):
        LivePoseCamera(wm, fps=-1.0)
    cam = LivePoseCamera(wm)
    with pytest.raises(ValueError, match="body_poses"):
        cam.request_imagine(None, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="at most"):
        cam.request_imagine(None, np.tile(np.eye(4), (1000, 1, 1)))


def test_live_tf_chaining_matches_the_bag_reader(trajectory_data):
    from rosbags.highlevel import AnyReader

    bag = trajectory_data / "tf_example"
    ref = load(bag, parent_frame="odom", child_frame="base_link")
    buf = TFBuffer(max_samples=50)
    got = []
    with AnyReader([bag]) as reader:  # feed messages in recorded order, polling as a live node does
        for conn, _, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            for tr in msg.transforms:
                r, q = tr.transform.translation, tr.transform.rotation
                buf.add(tr.header.frame_id, tr.child_frame_id, tr.header.stamp.sec + tr.header.stamp.nanosec * 1e-9,
                        [r.x, r.y, r.z], [q.x, q.y, q.z, q.w], static="static" in conn.topic)
            got += buf.poll("odom", "base_link")
    assert max(len(s) for s in buf.dynamic.values()) <= 50  # bounded
    stamps = np.array([g[0] for g in got])
    assert len(got) >= len(ref) - 1
    idx = np.searchsorted(ref.timestamps, stamps)
    np.testing.assert_allclose(ref.timestamps[idx], stamps, atol=1e-9)
    np.testing.assert_allclose(np.stack([g[1] for g in got]), ref.poses[idx], atol=1e-9)


def test_a_geometry_guided_model_streams_from_a_first_frame_with_or_without_its_depth(one_thread, tmp_path):
    import torch

    from world_model.bundles import untrained_world_model

    geo = untrained_world_model("tiny-geo", image_hw=(16, 16))
    with torch.no_grad():
        for p in geo.student.parameters():
            if not p.any():
                p.add_(0.05 * torch.randn_like(p))
    np.save(tmp_path / "depth.npy", np.full((20, 24), 2.0, np.float32))
    t, pos, quat = _path(20, 16.0)
    streams = []
    for depth in (tmp_path / "depth.npy", None):  # given, then generated from the first frame
        cam = LivePoseCamera(geo, mount=MOUNT, max_lag=30.0)
        cam.set_first_frame(_first_frame(), depth=depth)
        for i in range(len(t)):
            cam.add_pose(t[i], pos[i], quat[i])
        frames = _drain(cam)
        assert len(frames) > 1 and all(np.isfinite(f.image).all() for f in frames)
        streams.append(frames)
    assert not np.array_equal(streams[0][-1].image, streams[1][-1].image)  # the depth changes what is rendered
    with pytest.raises(ValueError, match="is 4x4 \\(HxW\\) but its image is 20x24"):
        LivePoseCamera(geo, mount=MOUNT).set_first_frame(_first_frame(), depth=np.ones((4, 4), np.float32))


def test_message_path_pose_maths_match_the_camera_module():
    """The NumPy pose maths of the TF/pose callbacks agree with world_model.camera's torch reference."""
    from world_model import camera as wcam

    rng = np.random.default_rng(0)
    q = rng.normal(size=(64, 4))
    q[0] = [0, 0, 0, 1]
    q[1] = [1, 0, 0, 1e-9]  # a half turn
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    pos = rng.normal(size=(64, 3))
    mats = np.stack([pose_matrix(p, qq) for p, qq in zip(pos, q)])
    np.testing.assert_allclose(mats[:, :3, :3], wcam.quat_to_rotmat(q).numpy(), atol=1e-12)
    np.testing.assert_allclose(mats[:, :3, 3], pos)
    # keys with near-identical, ordinary and opposite-hemisphere neighbours, sampled inside and at the ends
    keys = mats[:8].copy()
    keys[3] = pose_matrix(pos[3], q[2] + 1e-9)
    times = np.cumsum(rng.uniform(0.05, 0.5, size=8))
    at = np.concatenate([times, rng.uniform(times[0], times[-1], size=40)])
    got = interpolate_edge(times, keys, at)
    np.testing.assert_allclose(got[:, :3, :3], wcam.slerp(times, keys[:, :3, :3], at).numpy(), atol=1e-9)
    for i in range(3):
        np.testing.assert_allclose(got[:, i, 3], np.interp(at, times, keys[:, i, 3]))
    # a chain through a common ancestor composes with the rigid inverse
    buf = TFBuffer()
    buf.add("map", "a", 0.0, pos[4], q[4], static=True)
    buf.add("map", "b", 0.0, pos[5], q[5], static=True)
    chain = buf.chain("b", "a")
    expected = np.linalg.inv(mats[5]) @ mats[4]
    np.testing.assert_allclose(chain.compose(lambda e: buf.static[e][None], 1)[0], expected, atol=1e-12)
