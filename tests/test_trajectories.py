"""Trajectory I/O on real recordings, conventions, resampling and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sana_wm_env.trajectories import Trajectory, camera_mount, detect_format, load, save


def _data_lines(path: Path, sep=None) -> list[list[float]]:
    out = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            out.append([float(x) for x in s.split(sep)])
    return out


def _pose(xyz, q_xyzw) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = Rotation.from_quat(q_xyzw).as_matrix()
    t[:3, 3] = xyz
    return t


def _check_monotonic(traj: Trajectory) -> None:
    assert np.all(np.diff(traj.timestamps) > 0)


def test_tum_fr1_counts_first_last_and_round_trip(trajectory_data, tmp_path):
    path = trajectory_data / "freiburg1_xyz-groundtruth.txt"
    raw = _data_lines(path)
    traj = load(path)
    assert detect_format(path) == "tum" and len(traj) == len(raw) == 3000
    _check_monotonic(traj)
    for i in (0, -1):
        assert traj.timestamps[i] == raw[i][0]
        np.testing.assert_allclose(traj.poses[i], _pose(raw[i][1:4], raw[i][4:8]), atol=1e-9)
    out = save(traj.with_convention("rep103"), tmp_path / "rt.txt")
    back = load(out)
    assert back.convention == "rep103" and len(back) == len(traj)
    np.testing.assert_allclose(back.timestamps, traj.timestamps, rtol=0, atol=1e-9)
    np.testing.assert_allclose(back.poses, traj.poses, rtol=0, atol=1e-9)


def test_euroc_v102_w_first_quaternion_and_ns_stamps(trajectory_data):
    path = trajectory_data / "V102_groundtruth.csv"
    raw = _data_lines(path, ",")
    traj = load(path)
    assert len(traj) == len(raw) == 16702 and traj.convention == "rep103"
    _check_monotonic(traj)
    first_ns = int(path.read_text().splitlines()[1].split(",")[0])
    assert abs(traj.timestamps[0] - first_ns * 1e-9) < 1e-6
    for i in (0, -1):
        w, x, y, z = raw[i][4:8]
        np.testing.assert_allclose(traj.poses[i], _pose(raw[i][1:4], [x, y, z, w]), atol=1e-6)


def test_kitti_00_with_times_file(trajectory_data):
    path = trajectory_data / "KITTI_00_gt.txt"
    raw = np.array(_data_lines(path))
    times = np.array(_data_lines(trajectory_data / "KITTI_00_gt_times.txt"))[:, 0]
    traj = load(path)
    assert len(traj) == len(raw) == 4541 and traj.convention == "opencv"
    _check_monotonic(traj)
    np.testing.assert_array_equal(traj.timestamps, times)
    for i in (0, -1):
        np.testing.assert_allclose(traj.poses[i, :3, :4], raw[i].reshape(3, 4), atol=1e-5)


def test_tum_estimate_with_duplicate_stamps_is_rejected_or_dropped_with_count(trajectory_data):
    path = trajectory_data / "V102.txt"
    with pytest.raises(ValueError, match=r"V102\.txt:433: duplicate timestamp"):
        load(path)
    with pytest.warns(UserWarning, match="dropped 0 row.* and 4 with duplicate"):
        traj = load(path, on_invalid="drop")
    assert len(traj) == len(_data_lines(path)) - 4 and traj.metadata["dropped_rows"] == 4
    _check_monotonic(traj)


def test_mcap_odom_and_amcl_pose(trajectory_data):
    from rosbags.highlevel import AnyReader

    bag = trajectory_data / "nav2_turtlebot.mcap"
    odom = load(bag, topic="/odom")
    amcl = load(bag, topic="/amcl_pose")
    assert len(odom) == 2639 and len(amcl) == 135
    assert (odom.frame_id, odom.child_frame_id) == ("odom", "base_link")
    _check_monotonic(odom)
    _check_monotonic(amcl)
    with AnyReader([bag]) as reader:  # independent decoding of the first and last /odom messages
        conns = [c for c in reader.connections if c.topic == "/odom"]
        msgs = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(connections=conns)]
    for i in (0, -1):
        m = msgs[i]
        p, o = m.pose.pose.position, m.pose.pose.orientation
        np.testing.assert_allclose(odom.poses[i], _pose([p.x, p.y, p.z], [o.x, o.y, o.z, o.w]), atol=1e-9)
        assert odom.timestamps[i] == pytest.approx(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9, abs=1e-9)


def test_tf_chains_sqlite_and_mcap(trajectory_data):
    tf = load(trajectory_data / "tf_example", parent_frame="odom", child_frame="base_link")
    assert len(tf) == 517 and tf.frame_id == "odom" and tf.child_frame_id == "base_link"
    _check_monotonic(tf)
    direct = load(trajectory_data / "tf_example", parent_frame="odom", child_frame="base_footprint")
    static = load(trajectory_data / "tf_example", parent_frame="base_footprint", child_frame="odom")  # inverse chain
    np.testing.assert_allclose(static.poses @ direct.poses, np.tile(np.eye(4), (517, 1, 1)), atol=1e-9)
    # map -> base_link through map->odom (AMCL) and odom->base_link (odometry) agrees with /amcl_pose.
    bag = trajectory_data / "nav2_turtlebot.mcap"
    chain = load(bag, parent_frame="map", child_frame="base_link")
    amcl = load(bag, topic="/amcl_pose")
    assert chain.metadata["tf_chain"] == ["odom->base_link", "map->odom"]
    inside = (amcl.timestamps >= chain.timestamps[0]) & (amcl.timestamps <= chain.timestamps[-1])
    at = chain.resample(times=amcl.timestamps[inside])
    err = np.linalg.norm(at.positions - amcl.positions[inside], axis=1)
    assert np.median(err) < 0.1
    with pytest.raises(ValueError, match="child_frame 'nope' is not in the TF tree.*frames: .*base_link"):
        load(bag, parent_frame="map", child_frame="nope")


def test_unknown_topic_lists_topics_with_types(trajectory_data):
    with pytest.raises(ValueError, match=r"'/pose' is not in .*/amcl_pose \(geometry_msgs/msg/PoseWithCovariance"):
        load(trajectory_data / "nav2_turtlebot.mcap", topic="/pose")
    with pytest.raises(ValueError, match="2 pose topics; pass topic="):
        load(trajectory_data / "nav2_turtlebot.mcap")


def test_malformed_nan_and_quaternion_rows(tmp_path):
    good = "1.0 0 0 0 0 0 0 1\n"
    p = tmp_path / "a.txt"
    p.write_text("# c\n" + good + "2.0 0 0 0 0 0 1\n")
    with pytest.raises(ValueError, match=r"a\.txt:3: expected 8 numbers"):
        load(p, format="tum")
    p.write_text(good + "2.0 0 0 x 0 0 0 1\n")
    with pytest.raises(ValueError, match=r"a\.txt:2: could not parse 'x'"):
        load(p, format="tum")
    p.write_text(good + "2.0 nan 0 0 0 0 0 1\n3.0 1 0 0 0 0 0 1\n")
    with pytest.raises(ValueError, match=r"a\.txt:2: row contains NaN"):
        load(p)
    with pytest.warns(UserWarning, match="dropped 1 row"):
        t = load(p, on_invalid="drop")
    assert len(t) == 2 and t.metadata["dropped_rows"] == 1
    p.write_text(good + "0.5 0 0 0 0 0 0 1\n")
    with pytest.raises(ValueError, match=r"a\.txt:2: non-monotonic timestamp"):
        load(p)
    p.write_text(good + "2.0 0 0 0 0 0 0 1.5\n")
    with pytest.raises(ValueError, match=r"a\.txt:2: quaternion norm 1\.5"):
        load(p)
    p.write_text(good + "2.0 0 0 0 0 0 0 1.004\n")
    t = load(p)
    np.testing.assert_allclose(t.poses[1], np.eye(4), atol=1e-12)  # near-unit: normalised
    k = tmp_path / "k.txt"
    k.write_text("1 0 0 0 0 1 0 0 0 0 1 0\n2 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(ValueError, match=r"k\.txt:2: rotation is not orthonormal"):
        load(k)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.txt")


def test_euroc_stamps_are_exact_whole_nanoseconds(tmp_path):
    p = tmp_path / "gt.csv"
    row = ",0,0,0,1,0,0,0\n"
    p.write_text("#timestamp [ns], p_x\n" + "1.5e18" + row + "1500000000001000000" + row + "1.6E+18" + row)
    np.testing.assert_array_equal(load(p).timestamps, [1.5e9, 1.5e9 + 1e-3, 1.6e9])  # was 1e-9 s: "1.5e18" -> 1
    p.write_text("1000" + row + "nan" + row + "3000" + row)
    with pytest.raises(ValueError, match=r"gt\.csv:2: row contains NaN"):  # was int('nan') without a location
        load(p)
    with pytest.warns(UserWarning, match="dropped 1 row"):
        assert len(load(p, on_invalid="drop")) == 2
    p.write_text("1403715273.26" + row)  # seconds, not nanoseconds: used to become 1403715273 ns
    with pytest.raises(ValueError, match=r"gt\.csv:1: timestamp '1403715273.26' is not a whole number of nano"):
        load(p)
    p.write_text("1e30" + row)
    with pytest.raises(ValueError, match=r"gt\.csv:1: .* outside the int64 range"):
        load(p)


def test_binary_and_foreign_files_are_named_with_their_line(tmp_path):
    good = b"1.0 0 0 0 0 0 0 1\n"
    for name, junk, col in (("utf8.txt", b"2.0 \xff\xfe 0\n", 5), ("zeros.txt", bytes(40) + b"\n", 1)):
        (tmp_path / name).write_bytes(good + good.replace(b"1.0", b"1.5") + junk)
        for fmt in ("auto", "tum"):
            with pytest.raises(ValueError, match=rf"{name}:3: binary data \(byte 0x.. at column {col}\), not a text"):
                load(tmp_path / name, format=fmt)
    (tmp_path / "start.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(ValueError, match=r"start\.txt:1: binary data"):
        load(tmp_path / "start.txt")
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(ValueError, match=r"dir\.txt is a folder; a kitti trajectory is a file"):
        load(tmp_path / "dir.txt", format="kitti")
    with pytest.raises(ValueError, match=r"dir\.txt is not a ROS 2 bag \(no metadata\.yaml"):
        load(tmp_path / "dir.txt")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"obj\.npy is not a trajectory \.npy \(it holds Python objects"):
        load(tmp_path / "obj.npy")
    np.savez(tmp_path / "obj.npz", c2w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"obj\.npz is not a readable trajectory \.npz \(it holds Python obj") as info:
        load(tmp_path / "obj.npz")
    assert "allow_pickle" not in str(info.value)


def test_npz_npy_round_trip_and_intrinsics(tmp_path):
    rng = np.random.default_rng(0)
    poses = np.tile(np.eye(4), (5, 1, 1))
    poses[:, :3, :3] = Rotation.from_rotvec(rng.normal(size=(5, 3))).as_matrix()
    poses[:, :3, 3] = rng.normal(size=(5, 3))
    k = np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])
    np.savez(tmp_path / "bench.npz", c2w=poses, intrinsics=np.repeat(k[None], 5, 0))
    t = load(tmp_path / "bench.npz")
    assert t.convention == "opencv" and np.allclose(t.timestamps, np.arange(5) / 16)
    np.testing.assert_allclose(t.intrinsics, np.tile([100.0, 100.0, 32.0, 24.0], (5, 1)))
    back = load(save(t.scale_time(2.0), tmp_path / "out.npz"))
    np.testing.assert_allclose(back.poses, poses, atol=1e-12)
    np.testing.assert_allclose(back.timestamps, np.arange(5) / 8)
    np.save(tmp_path / "c.npy", poses)
    assert len(load(tmp_path / "c.npy", fps=30)) == 5
    np.save(tmp_path / "bad.npy", poses[:, :3])
    with pytest.raises(ValueError, match=r"must hold an \(F, 4, 4\) array"):
        load(tmp_path / "bad.npy")


def test_mount_conversion_resample_recenter():
    # A robot driving along world +x with its camera pitched down 30 deg and mounted 0.2 m up.
    body = np.tile(np.eye(4), (3, 1, 1))
    body[:, 0, 3] = [0.0, 1.0, 2.0]
    body[1, :3, :3] = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    traj = Trajectory(np.array([0.0, 1.0, 2.0]), body, convention="rep103")
    mount = camera_mount(xyz=(0, 0, 0.2), rpy=(0, np.radians(30), 0))
    c2w = traj.to_opencv(mount)
    fwd = c2w.poses[0, :3, 2]
    np.testing.assert_allclose(fwd, [np.cos(np.radians(30)), 0, -np.sin(np.radians(30))], atol=1e-12)
    np.testing.assert_allclose(c2w.poses[0, :3, 0], [0, -1, 0], atol=1e-12)  # image right = robot right
    np.testing.assert_allclose(c2w.positions[:, 2], 0.2)
    np.testing.assert_allclose(c2w.to_rep103(mount).poses, body, atol=1e-12)
    with pytest.raises(ValueError, match="declare it first"):
        Trajectory(np.array([0.0]), body[:1]).to_opencv()
    r = traj.resample(fps=4)
    assert len(r) == 9 and np.allclose(np.diff(r.timestamps), 0.25)
    np.testing.assert_allclose(r.poses[::4], body, atol=1e-12)
    yaw = Rotation.from_matrix(r.poses[2, :3, :3]).as_euler("zyx", degrees=True)[0]
    assert yaw == pytest.approx(45.0)  # slerp halfway
    rc = traj.recenter()
    np.testing.assert_allclose(rc.poses[0], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(rc.poses[2, :3, 3], [2, 0, 0], atol=1e-12)
    with pytest.raises(ValueError, match="strictly increasing"):
        Trajectory(np.array([0.0, 0.0, 1.0]), body)
    with pytest.raises(ValueError, match="times must lie within"):
        traj.resample(times=[3.0])
