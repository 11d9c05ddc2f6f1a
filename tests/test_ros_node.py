"""The sana_wm ROS 2 node over real rclpy (loopback, its own ROS_DOMAIN_ID, localhost-only discovery)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from nav_msgs.msg import Path as PathMsg  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from sana_wm_env.envs.core import load_image  # noqa: E402
from sana_wm_env.trajectories import camera_mount, load  # noqa: E402
from sana_wm_ros.node import SanaWMNode, array_to_image, sec_to_stamp, stamp_to_sec  # noqa: E402

FIRST_FRAME = Path(__file__).resolve().parents[1] / "examples" / "first_frame.png"
DOMAIN = random.Random(os.getpid() ^ int(time.time())).randint(100, 200)


@pytest.fixture(scope="module")
def ctx():
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(DOMAIN)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN)
    yield context
    rclpy.try_shutdown(context=context)


class Harness:
    """The node under test plus a probe node (publishers, subscribers) spun by one executor thread."""

    def __init__(self, ctx, params: dict, model=None) -> None:
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        self.node = SanaWMNode(model=model, context=ctx, parameter_overrides=overrides)
        self.probe = rclpy.create_node("probe", context=ctx)
        self.images, self.infos, self.poses, self.imagined, self.diags = [], [], [], [], []
        sub = QoSProfile(depth=200, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.probe.create_subscription(Image, "/sana_wm/image", self.images.append, sub)
        self.probe.create_subscription(CameraInfo, "/sana_wm/camera_info", self.infos.append, sub)
        self.probe.create_subscription(PoseStamped, "/sana_wm/camera_pose", self.poses.append, sub)
        self.probe.create_subscription(Image, "/sana_wm/imagined/image", self.imagined.append, sub)
        from diagnostic_msgs.msg import DiagnosticArray

        self.probe.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 10)
        self.executor = SingleThreadedExecutor(context=ctx)  # as sana-wm-ros: see its main()
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def publisher(self, msg_type, topic, qos=None):
        pub = self.probe.create_publisher(msg_type, topic, qos or QoSProfile(depth=1000))
        deadline = time.monotonic() + 10
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pub.get_subscription_count() > 0, f"nobody subscribes to {topic}"
        return pub

    def wait(self, cond, timeout=60.0) -> bool:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.02)
        return cond()

    def settle(self, timeout=60.0, accepted: int | None = None) -> None:
        """Until ``accepted`` poses (if given) reached the engine, the worker rendered every complete chunk and
        its messages arrived (without the pose count, the last pose may still be in flight when idle)."""
        if accepted is not None:
            assert self.wait(lambda: self.node.camera.stats()["accepted"] == accepted, timeout)
        assert self.wait(self.node.camera.idle, timeout)
        time.sleep(0.3)

    def close(self) -> None:
        self.node.close()
        self.executor.shutdown()
        self.thread.join(timeout=5)
        self.node.destroy_node()
        self.probe.destroy_node()


def _bag_raw(bag: Path, topics: set[str], seconds: float):
    """[(topic, recorded ns, raw CDR)] of the first ``seconds`` of ``topics`` (static transforms always)."""
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.topic in topics]
        out = [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages(connections=conns)]
    t0 = min(t for topic, t, _ in out if topic not in ("/tf_static",))
    return [m for m in out if m[0] == "/tf_static" or m[1] - t0 <= seconds * 1e9]


def _replay(pub_of, msgs) -> None:
    """Publish raw messages at their recorded rate."""
    t_first, w_first = msgs[0][1], time.monotonic()
    for topic, t, raw in msgs:
        delay = (t - t_first) * 1e-9 - (time.monotonic() - w_first)
        if delay > 0:
            time.sleep(delay)
        pub_of[topic].publish(raw)


def _expected_frames(stamps: np.ndarray, fps: float, chunk: int) -> int:
    return 1 + chunk * (int(np.floor((stamps[-1] - stamps[0]) * fps + 1e-9)) // chunk)


def _stamps(msgs) -> np.ndarray:
    return np.array([stamp_to_sec(m.header.stamp) for m in msgs])


def _c2w(msgs) -> np.ndarray:
    from sana_wm_env.trajectories.tf import pose_matrix

    return np.stack([pose_matrix([m.pose.position.x, m.pose.position.y, m.pose.position.z],
                                 [m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z,
                                  m.pose.orientation.w]) for m in msgs])


def test_odom_replay_with_the_bundled_model(trajectory_data, ctx, one_thread):
    bag = trajectory_data / "nav2_turtlebot.mcap"
    mount = ([0.05, 0.0, 0.2], [0.0, 0.1, 0.0])
    h = Harness(ctx, {"initial_image": str(FIRST_FRAME), "input": "odometry", "pose_topic": "/odom",
                      "mount_xyz": mount[0], "mount_rpy": mount[1], "frame_id": "cam_optical", "max_lag": 60.0})
    try:
        msgs = _bag_raw(bag, {"/odom"}, seconds=2.5)
        pub = h.publisher(Odometry, "/odom")
        _replay({"/odom": pub}, msgs)
        h.settle(accepted=len(msgs))
        odom = load(bag, topic="/odom")
        sent = odom.timestamps[: len(msgs)]
        cam = h.node.camera
        n = _expected_frames(sent, cam.fps, cam.chunk_frames)
        assert cam.stats()["accepted"] == len(msgs)
        assert len(h.images) == len(h.infos) == len(h.poses) == n > 20
        img = h.images[0]
        assert (img.height, img.width, img.encoding, img.step) == (64, 64, "rgb8", 3 * 64)
        assert len(img.data) == 64 * 64 * 3 and img.header.frame_id == "cam_optical"
        stamps = _stamps(h.images)
        np.testing.assert_allclose(stamps, sent[0] + np.arange(n) / cam.fps, atol=2e-9)
        np.testing.assert_array_equal(_stamps(h.infos), stamps)
        # each frame depicts the recorded /odom pose at its stamp, through the camera mount
        ref = odom.resample(times=stamps).to_opencv(camera_mount(*mount)).poses
        np.testing.assert_allclose(_c2w(h.poses), ref, atol=1e-5)
        assert h.poses[0].header.frame_id == "odom"
        info = h.infos[-1]
        fx, fy, cx, cy = cam.intrinsics
        np.testing.assert_allclose(info.k, [fx, 0, cx, 0, fy, cy, 0, 0, 1])
        np.testing.assert_allclose(np.reshape(info.p, (3, 4))[:, :3], np.reshape(info.k, (3, 3)))
        assert (info.height, info.width) == (64, 64) and info.header.frame_id == "cam_optical"
        # the first image is the first frame as the model sees it
        got = np.frombuffer(bytes(h.images[0].data), np.uint8).reshape(64, 64, 3)
        np.testing.assert_array_equal(got, cam._first_frame)
    finally:
        h.close()


def test_tf_input_chains_the_tf_example_bag(trajectory_data, ctx, wm, one_thread):
    pytest.importorskip("tf2_msgs", reason="tf2_msgs: build it with python -m sana_wm_ros.build_tf2_msgs")
    from tf2_msgs.msg import TFMessage

    bag = trajectory_data / "tf_example"
    h = Harness(ctx, {"initial_image": str(FIRST_FRAME), "input": "tf", "parent_frame": "odom",
                      "child_frame": "base_link", "max_lag": 60.0}, model=wm)
    try:
        msgs = _bag_raw(bag, {"/tf", "/tf_static"}, seconds=3.0)
        static_qos = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                reliability=ReliabilityPolicy.RELIABLE)
        pubs = {"/tf": h.publisher(TFMessage, "/tf"), "/tf_static": h.publisher(TFMessage, "/tf_static", static_qos)}
        static = [m for m in msgs if m[0] == "/tf_static"]
        _replay(pubs, static + [m for m in msgs if m[0] == "/tf"])
        ref = load(bag, parent_frame="odom", child_frame="base_link")
        sent = ref.timestamps[ref.timestamps <= ref.timestamps[0] + 3.0]
        h.settle(accepted=len(sent))
        cam = h.node.camera
        assert cam.stats()["accepted"] == len(sent)
        assert len(h.images) == _expected_frames(sent, cam.fps, cam.chunk_frames) > 10
        stamps = _stamps(h.images)
        ref_c2w = ref.resample(times=stamps).to_opencv(camera_mount()).poses
        np.testing.assert_allclose(_c2w(h.poses), ref_c2w, atol=1e-5)
        assert h.poses[0].header.frame_id == "odom"
    finally:
        h.close()


def test_pose_with_covariance_input_replays_amcl_pose(trajectory_data, ctx, wm, one_thread):
    bag = trajectory_data / "nav2_turtlebot.mcap"
    mount = ([0.1, -0.02, 0.25], [0.0, 0.15, 0.05])
    # /amcl_pose comes every 0.6 s (after a first one 9.3 s earlier, skipped): max_gap above the update period
    h = Harness(ctx, {"initial_image": str(FIRST_FRAME), "input": "pose_with_covariance", "pose_topic": "/amcl_pose",
                      "mount_xyz": mount[0], "mount_rpy": mount[1], "max_gap": 1.0, "max_lag": 60.0}, model=wm)
    try:
        msgs = _bag_raw(bag, {"/amcl_pose"}, seconds=60.0)[1:7]
        _replay({"/amcl_pose": h.publisher(PoseWithCovarianceStamped, "/amcl_pose")}, msgs)
        cam = h.node.camera
        assert h.wait(lambda: cam.stats()["accepted"] == len(msgs), 10)  # the last pose arrived, then settle
        h.settle()
        assert cam.stats()["gaps"] == 0
        ref = load(bag, topic="/amcl_pose")
        sent = ref.timestamps[1:7]
        n = _expected_frames(sent, cam.fps, cam.chunk_frames)
        assert len(h.images) == len(h.infos) == len(h.poses) == n > 40
        stamps = _stamps(h.images)
        np.testing.assert_allclose(stamps, sent[0] + np.arange(n) / cam.fps, atol=2e-9)
        assert sent[0] <= stamps[0] and stamps[-1] <= sent[-1]
        np.testing.assert_array_equal(_stamps(h.poses), stamps)
        ref_c2w = ref.resample(times=stamps).to_opencv(camera_mount(*mount)).poses
        np.testing.assert_allclose(_c2w(h.poses), ref_c2w, atol=1e-5)
        assert h.poses[0].header.frame_id == "map"
    finally:
        h.close()


def _pose_msg(t: float, x: float, q=(0.0, 0.0, 0.0, 1.0)) -> PoseStamped:
    m = PoseStamped()
    m.header.frame_id = "map"
    ns = int(round(t * 1e9))
    m.header.stamp.sec, m.header.stamp.nanosec = ns // 10**9, ns % 10**9
    m.pose.position.x = x
    m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z, m.pose.orientation.w = q
    return m


@pytest.mark.slow
def test_faults_nan_out_of_order_burst_and_diagnostics(ctx, wm, one_thread):
    h = Harness(ctx, {"initial_image": str(FIRST_FRAME), "input": "pose", "pose_topic": "/robot_pose",
                      "max_lag": 1.0, "diagnostics_period": 0.2, "pose_queue": 2000}, model=wm)
    try:
        pub = h.publisher(PoseStamped, "/robot_pose", QoSProfile(depth=5000))
        for m in (_pose_msg(10.0, 0.0), _pose_msg(10.05, float("nan")), _pose_msg(10.05, 0.1),
                  _pose_msg(10.05, 0.1), _pose_msg(10.01, 0.1)):
            pub.publish(m)
            time.sleep(0.01)
        cam = h.node.camera
        assert h.wait(lambda: cam.stats()["poses_in"] == 5, 10)
        s = cam.stats()
        assert (s["accepted"], s["dropped_nan"], s["dropped_duplicate"], s["dropped_out_of_order"]) == (2, 1, 1, 1)
        # a 1 kHz burst of 2000 poses whose stamps span 40 s: buffers stay bounded, dropped frames are counted
        t = 10.1 + np.arange(2000) * 0.02
        w0 = time.monotonic()
        for i, ti in enumerate(t):
            pub.publish(_pose_msg(ti, 0.001 * i))
            while time.monotonic() < w0 + (i + 1) * 1e-3:
                pass
        # the subscription is best effort (it must match sensor-QoS publishers), so DDS may shed part of a
        # 1 kHz burst on a loaded machine (the publisher spins on one core): wait until arrivals stop, then
        # require that a real part of the burst got through
        last, still_since, deadline = -1, time.monotonic(), time.monotonic() + 30
        while time.monotonic() < deadline and time.monotonic() - still_since < 1.0:
            n_in = cam.stats()["poses_in"]
            if n_in != last:
                last, still_since = n_in, time.monotonic()
            time.sleep(0.05)
        s = cam.stats()
        assert s["poses_in"] >= 5 + 100, f"only {s['poses_in'] - 5} of 2000 burst poses arrived"
        assert s["pending_frames"] <= s["max_pending"]
        assert s["dropped_frames"] > 0
        h.settle()
        stamps = _stamps(h.images)
        assert np.all(np.diff(stamps) > 0)  # true stamps, in order, even with frames dropped in between
        assert h.wait(lambda: any(d.status and any(kv.key == "dropped_frames" and kv.value != "0"
                                                  for kv in d.status[0].values) for d in h.diags), 10)
        values = {kv.key: kv.value for kv in h.diags[-1].status[0].values}
        assert values["dropped_nan"] == "1" and values["dropped_out_of_order"] == "1"
        assert values["dropped_duplicate"] == "1" and "lag_s" in values
        # the stream stopped: the node holds and warns
        assert h.wait(lambda: h.diags[-1].status[0].level == b"\x01"
                      and "no pose" in h.diags[-1].status[0].message, 10)
    finally:
        h.close()


@pytest.mark.slow
def test_reset_service_and_imagine_topic(ctx, wm, one_thread):
    h = Harness(ctx, {"initial_image": str(FIRST_FRAME), "input": "pose", "pose_topic": "/robot_pose",
                      "max_lag": 30.0}, model=wm)
    try:
        pub = h.publisher(PoseStamped, "/robot_pose")
        for i in range(30):
            pub.publish(_pose_msg(20.0 + 0.05 * i, 0.05 * i))
            time.sleep(0.005)
        cam = h.node.camera
        assert h.wait(lambda: cam.stats()["accepted"] == 30, 10)
        h.settle()
        live_before = len(h.images)
        path = PathMsg()
        path.header.frame_id = "map"
        path.poses = [_pose_msg(21.45 + 0.25 * i, 1.45 + 0.25 * i) for i in range(5)]  # 1 s -> 17 frames
        imagine_pub = h.publisher(PathMsg, "/sana_wm/imagine", QoSProfile(depth=10))
        imagine_pub.publish(path)
        assert h.wait(lambda: len(h.imagined) == 17, 30)
        np.testing.assert_allclose(_stamps(h.imagined), 21.45 + np.arange(17) / cam.fps, atol=2e-9)
        assert len(h.images) == live_before  # the live stream was not touched
        for i in range(30, 50):  # ... and carries on
            pub.publish(_pose_msg(20.0 + 0.05 * i, 0.05 * i))
            time.sleep(0.005)
        h.settle()
        assert len(h.images) > live_before
        client = h.probe.create_client(Trigger, "/sana_wm/reset")
        assert client.wait_for_service(timeout_sec=10)
        n_before = len(h.images)
        fut = client.call_async(Trigger.Request())
        assert h.wait(fut.done, 10)
        assert fut.result().success, fut.result().message
        h.settle()
        assert h.wait(lambda: len(h.images) > n_before, 10)
        restart = h.images[n_before]
        assert stamp_to_sec(restart.header.stamp) == pytest.approx(20.0 + 0.05 * 49, abs=1e-9)
        np.testing.assert_array_equal(np.frombuffer(bytes(restart.data), np.uint8).reshape(16, 16, 3),
                                      cam._first_frame)
        assert cam.stats()["restarts"] == 1
    finally:
        h.close()


@pytest.mark.slow
def test_first_frame_topic_waits_for_a_first_frame_and_reset_takes_the_latest(ctx, wm, one_thread):
    from PIL import Image as PILImage

    h = Harness(ctx, {"input": "pose", "pose_topic": "/robot_pose", "first_frame_topic": "/camera/image",
                      "first_frame_camera_info_topic": "/camera/camera_info", "diagnostics_period": 0.2,
                      "max_lag": 30.0}, model=wm)
    try:
        cam = h.node.camera
        pub = h.publisher(PoseStamped, "/robot_pose")
        for i in range(5):
            pub.publish(_pose_msg(30.0 + 0.05 * i, 0.05 * i))
            time.sleep(0.005)
        assert h.wait(lambda: cam.stats()["poses_in"] == 5, 10)
        assert cam.stats()["waiting_for_first_frame"] == 5 and not cam.stats()["started"]
        assert h.wait(lambda: any(d.status[0].level == b"\x01" and "waiting for a first frame" in d.status[0].message
                                  and {kv.key: kv.value for kv in d.status[0].values}["waiting_for_first_frame"] == "5"
                                  for d in h.diags), 10)
        assert not h.images and not h.infos and not h.poses  # nothing without a first frame
        # the first frame: 96x80 rgb8 with its camera info (sent first: the image takes the latest intrinsics)
        first1 = np.asarray(PILImage.open(FIRST_FRAME).convert("RGB").resize((96, 80)), dtype=np.uint8)
        k_first = [70.0, 72.0, 47.0, 41.0]
        info = CameraInfo()
        info.height, info.width = 80, 96
        info.k = [k_first[0], 0.0, k_first[2], 0.0, k_first[1], k_first[3], 0.0, 0.0, 1.0]
        h.publisher(CameraInfo, "/camera/camera_info").publish(info)
        assert h.wait(lambda: h.node._first_frame_k is not None, 10)
        first_pub = h.publisher(Image, "/camera/image")
        first_pub.publish(array_to_image(first1, 0.0, "camera"))
        assert h.wait(lambda: len(h.images) >= 1, 30)
        want1, k1 = load_image(first1, cam.image_hw, k_first)
        first = h.images[0]
        assert stamp_to_sec(first.header.stamp) == pytest.approx(30.2, abs=1e-9)  # starts at the latest pose
        np.testing.assert_array_equal(np.frombuffer(bytes(first.data), np.uint8).reshape(16, 16, 3), want1)
        np.testing.assert_allclose(h.infos[0].k, [k1[0], 0, k1[2], 0, k1[1], k1[3], 0, 0, 1])
        for i in range(5, 20):
            pub.publish(_pose_msg(30.0 + 0.05 * i, 0.05 * i))
            time.sleep(0.005)
        assert h.wait(lambda: cam.stats()["accepted"] == 20, 10)
        h.settle()
        assert len(h.images) > 1 and cam.stats()["waiting_for_first_frame"] == 5
        # a second, different first frame takes effect at the next (re)start only
        yy, xx = np.mgrid[0:80, 0:96]
        first2 = np.stack([xx * 2, yy * 3, (xx + yy) % 256], axis=-1).astype(np.uint8)
        want2, _ = load_image(first2, cam.image_hw, k_first)
        assert not np.array_equal(want1, want2)
        n_live = len(h.images)
        first_pub.publish(array_to_image(first2, 0.0, "camera"))
        assert h.wait(lambda: np.array_equal(cam._first_frame, want2), 10)
        time.sleep(0.2)
        assert len(h.images) == n_live
        client = h.probe.create_client(Trigger, "/sana_wm/reset")
        assert client.wait_for_service(timeout_sec=10)
        fut = client.call_async(Trigger.Request())
        assert h.wait(fut.done, 10)
        assert fut.result().success, fut.result().message
        assert h.wait(lambda: len(h.images) > n_live, 10)
        restart = h.images[n_live]
        assert stamp_to_sec(restart.header.stamp) == pytest.approx(30.95, abs=1e-9)
        np.testing.assert_array_equal(np.frombuffer(bytes(restart.data), np.uint8).reshape(16, 16, 3), want2)
        assert cam.stats()["restarts"] == 1
    finally:
        h.close()


def _tf_msg(edges, t: float):
    """tf2_msgs/TFMessage of ``edges`` [(parent, child, x)] (identity rotation) stamped ``t``."""
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    msg = TFMessage()
    for parent, child, x in edges:
        tr = TransformStamped()
        sec_to_stamp(t, tr.header.stamp)
        tr.header.frame_id, tr.child_frame_id = parent, child
        tr.transform.translation.x = x
        tr.transform.rotation.w = 1.0
        msg.transforms.append(tr)
    return msg


def _diag_values(diag) -> dict[str, str]:
    return {kv.key: kv.value for kv in diag.status[0].values}


def test_tf_input_drops_a_reversed_and_a_self_loop_edge_and_keeps_going(ctx, wm, one_thread):
    """A reversed edge (it closes a cycle with the chain) and a self-loop are dropped and counted on /diagnostics;
    the chain keeps streaming."""
    pytest.importorskip("tf2_msgs", reason="tf2_msgs: build it with python -m sana_wm_ros.build_tf2_msgs")
    from tf2_msgs.msg import TFMessage

    h = Harness(ctx, {"initial_image": str(FIRST_FRAME), "input": "tf", "parent_frame": "odom",
                      "child_frame": "base_link", "diagnostics_period": 0.2, "max_lag": 60.0}, model=wm)
    try:
        static_qos = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                reliability=ReliabilityPolicy.RELIABLE)
        tf_pub = h.publisher(TFMessage, "/tf")
        static_pub = h.publisher(TFMessage, "/tf_static", static_qos)
        cam = h.node.camera
        stamps = 50.0 + 0.05 * np.arange(30)
        for i, t in enumerate(stamps):
            if i == 10:  # a reversed copy of the chain's edge, then a self-loop on a static edge
                tf_pub.publish(_tf_msg([("base_link", "odom", -0.5)], t - 0.01))
                assert h.wait(lambda: h.node.tf.rejected_edges == 1, 10)
                static_pub.publish(_tf_msg([("base_link", "base_link", 0.0)], 0.0))
                assert h.wait(lambda: h.node.tf.rejected_edges == 2, 10)
            tf_pub.publish(_tf_msg([("odom", "base_link", 0.05 * i)], t))
            time.sleep(0.005)
        h.settle(accepted=len(stamps))
        assert len(h.images) == _expected_frames(stamps, cam.fps, cam.chunk_frames) > 20
        np.testing.assert_allclose(_stamps(h.images), stamps[0] + np.arange(len(h.images)) / cam.fps, atol=2e-9)
        xs = [m.pose.position.x for m in h.poses]
        np.testing.assert_allclose(xs, (_stamps(h.poses) - 50.0), atol=1e-6)  # x = 1 m/s * t: unbent chain
        assert h.wait(lambda: any(_diag_values(d).get("tf_rejected_edges") == "2" for d in h.diags), 10)
        report = next(d.status[0] for d in h.diags if _diag_values(d).get("tf_rejected_edges") == "2")
        assert "2 TF edge(s) dropped" in report.message and "base_link -> base_link (a self-loop)" in report.message
        assert report.level == b"\x01"  # the report after a new bad edge warns
    finally:
        h.close()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["pose", "tf"])
def test_a_pose_clock_jump_back_restarts_the_stream_and_reset_recovers(ctx, wm, one_thread, source):
    """A looping bag: the pose clock jumps back by more than max_gap; the stream restarts from the first frame at
    the new clock, and /diagnostics counts the jump. A smaller jump back drops poses until ~/reset."""
    if source == "tf":
        pytest.importorskip("tf2_msgs", reason="tf2_msgs: build it with python -m sana_wm_ros.build_tf2_msgs")
        from tf2_msgs.msg import TFMessage
    params = {"initial_image": str(FIRST_FRAME), "diagnostics_period": 0.2, "max_lag": 60.0}
    params.update({"input": "tf"} if source == "tf" else {"input": "pose", "pose_topic": "/robot_pose"})
    h = Harness(ctx, params, model=wm)
    try:
        if source == "tf":
            pub = h.publisher(TFMessage, "/tf")
            send = lambda t, x: pub.publish(_tf_msg([("odom", "base_link", x)], t))  # noqa: E731
        else:
            pub = h.publisher(PoseStamped, "/robot_pose")
            send = lambda t, x: pub.publish(_pose_msg(t, x))  # noqa: E731
        cam = h.node.camera

        def play(stamps, accepted):
            for t in stamps:
                send(t, float(t) - 90.0)
                time.sleep(0.005)
            h.settle(accepted=accepted)

        play(100.0 + 0.05 * np.arange(20), 20)
        n1 = len(h.images)
        assert n1 == _expected_frames(100.0 + 0.05 * np.arange(20), cam.fps, cam.chunk_frames)
        second = 5.0 + 0.05 * np.arange(20)  # the bag loops: back to 5 s
        play(second, 40)
        s = cam.stats()
        assert s["clock_jumps"] == 1 and s["dropped_out_of_order"] == 0
        after = h.images[n1:]
        assert len(after) == _expected_frames(second, cam.fps, cam.chunk_frames) > 10
        np.testing.assert_allclose(_stamps(after), 5.0 + np.arange(len(after)) / cam.fps, atol=2e-9)
        np.testing.assert_array_equal(np.frombuffer(bytes(after[0].data), np.uint8).reshape(16, 16, 3),
                                      cam._first_frame)  # restarted from the first frame
        np.testing.assert_allclose([m.pose.position.x for m in h.poses[n1:]], _stamps(after) - 90.0, atol=1e-6)
        assert h.wait(lambda: any(_diag_values(d).get("clock_jumps") == "1" and "jumped back" in d.status[0].message
                                  for d in h.diags), 10)
        # a jump back shorter than max_gap: dropped as out of order (a reordered message looks the same) ...
        n2 = len(h.images)
        for t in 5.7 + 0.05 * np.arange(4):
            send(t, float(t) - 90.0)
            time.sleep(0.005)
        key = "dropped" if source == "tf" else "dropped_out_of_order"
        assert h.wait(lambda: (h.node.tf.dropped if source == "tf" else cam.stats()[key]) == 4, 10)
        assert cam.stats()["accepted"] == 40
        # ... until ~/reset restarts the stream: the earlier clock is taken from the next pose on
        client = h.probe.create_client(Trigger, "/sana_wm/reset")
        assert client.wait_for_service(timeout_sec=10)
        fut = client.call_async(Trigger.Request())
        assert h.wait(fut.done, 10) and fut.result().success, fut.result().message
        third = 5.7 + 0.05 * np.arange(4, 20)
        play(third, 40 + len(third))
        assert cam.stats()["restarts"] == 1
        restarted = [i for i, m in enumerate(h.images) if i >= n2 and stamp_to_sec(m.header.stamp) == third[0]]
        assert restarted, _stamps(h.images[n2:])
        tail = h.images[restarted[0]:]
        np.testing.assert_allclose(_stamps(tail), third[0] + np.arange(len(tail)) / cam.fps, atol=2e-9)
        assert len(tail) == _expected_frames(third, cam.fps, cam.chunk_frames)
    finally:
        h.close()


def _corrupt_bundle(tmp_path: Path) -> Path:
    folder = tmp_path / "corrupt_bundle"
    folder.mkdir()
    (folder / "bundle.json").write_text('{"format": ')
    return folder


BAD_PARAMETERS = [  # (overrides, the parameter the error must name)
    ({"diagnostics_period": 0.0}, "diagnostics_period"),
    ({"diagnostics_period": -1.0}, "diagnostics_period"),
    ({"fps": -5.0}, "fps"),
    ({"fps": float("nan")}, "fps"),
    ({"torch_threads": -2}, "torch_threads"),
    ({"pose_queue": 0}, "pose_queue"),
    ({"pose_queue": 2.5}, "pose_queue"),
    ({"seed": -1}, "seed"),
    ({"max_gap": 0.0}, "max_gap"),
    ({"max_lag": -1.0}, "max_lag"),
    ({"stall_timeout": 0.0}, "stall_timeout"),
    ({"tf_hold": -0.1}, "tf_hold"),
    ({"initial_depth_scale": 0.0}, "initial_depth_scale"),
    ({"input": "lidar"}, "input"),
    ({"pose_topic": "not a topic"}, "pose_topic"),
    ({"pose_topic": ""}, "pose_topic"),
    ({"first_frame_topic": "/cam/"}, "first_frame_topic"),
    ({"input": "tf", "child_frame": "odom"}, "child_frame"),
    ({"mount_xyz": [0.0, 0.1]}, "mount_xyz"),
    ({"mount_rpy": [0.0, float("inf"), 0.0]}, "mount_rpy"),
    ({"first_frame_intrinsics": [500.0, 500.0, 320.0]}, "first_frame_intrinsics"),
    ({"first_frame_intrinsics": [-500.0, 500.0, 320.0, 240.0]}, "first_frame_intrinsics"),
    ({"frame_id": ""}, "frame_id"),
    ({"device": "gpu0"}, "device"),
    ({"initial_image": "/nonexistent/first_frame.png"}, "initial_image"),
    ({"initial_image": "{tmp}"}, "initial_image"),  # a folder
    ({"initial_image": "{tmp}/corrupt.png"}, "initial_image"),
    ({"initial_image": "{tmp}/truncated.png"}, "initial_image"),
    ({"initial_depth": "{tmp}/missing.npy", "initial_image": str(FIRST_FRAME)}, "initial_depth"),
    ({"initial_depth": "{tmp}/depth.npy"}, "initial_depth"),  # without initial_image
    ({"model": "/nonexistent/bundle"}, "model"),
    ({"model": "{tmp}/corrupt_bundle"}, "model"),
    ({"model": "{tmp}"}, "model"),  # a folder without bundle.json
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad_files")
    (tmp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (tmp / "truncated.png").write_bytes(FIRST_FRAME.read_bytes()[:200])
    np.save(tmp / "depth.npy", np.ones((4, 4), np.float32))
    _corrupt_bundle(tmp)
    return tmp


@pytest.mark.parametrize("overrides,name", BAD_PARAMETERS, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_PARAMETERS)])
def test_bad_parameters_fail_at_start_in_one_line_naming_the_parameter(ctx, wm, bad_files, overrides, name):
    from sana_wm_ros.node import ParameterError

    params = {k: v.format(tmp=bad_files) if isinstance(v, str) else v for k, v in overrides.items()}
    with pytest.raises(ParameterError) as err:
        SanaWMNode(model=None if "model" in params else wm, context=ctx,
                   parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    text = str(err.value)
    assert text.startswith(f"parameter {name} ") and "\n" not in text, text
    assert f"-p {name}:=" in text, text  # says what to set instead


def test_numbers_of_either_type_are_accepted(ctx, wm):
    """``-p fps:=8`` (an integer) and ``-p first_frame_intrinsics:="[20, 20, 12, 10]"`` work like their float forms."""
    node = SanaWMNode(model=wm, context=ctx, parameter_overrides=[
        Parameter("fps", value=8), Parameter("max_gap", value=1), Parameter("initial_image", value=str(FIRST_FRAME)),
        Parameter("first_frame_intrinsics", value=[20, 20, 12, 10]), Parameter("mount_xyz", value=[0, 0, 1])])
    try:
        assert node.camera.fps == 8.0 and node.camera.max_gap == 1.0
        assert node.params["first_frame_intrinsics"] == [20.0, 20.0, 12.0, 10.0]
    finally:
        node.close()
        node.destroy_node()


def test_deprecated_seed_parameters_still_work_and_warn(ctx, wm, one_thread):
    """The first-frame parameters' older names (seed_image_topic, seed_intrinsics, ...) are read, with a warning;
    set together with their current names, or with a bad value, they stop the node naming what was set."""
    from sana_wm_ros.node import ParameterError

    with pytest.warns(DeprecationWarning) as record:
        h = Harness(ctx, {"input": "pose", "pose_topic": "/robot_pose", "seed_image_topic": "/old/image",
                          "seed_intrinsics": [20, 20, 12, 10]}, model=wm)
    assert {str(w.message) for w in record if "parameter" in str(w.message)} == {
        "parameter seed_image_topic is deprecated: use first_frame_topic",
        "parameter seed_intrinsics is deprecated: use first_frame_intrinsics"}
    try:
        cam = h.node.camera
        assert h.node.params["first_frame_topic"] == "/old/image"
        assert h.node.params["first_frame_intrinsics"] == [20.0, 20.0, 12.0, 10.0]
        assert not cam.has_first_frame
        h.publisher(Image, "/old/image").publish(array_to_image(np.full((20, 24, 3), 90, np.uint8), 0.0, "camera"))
        assert h.wait(lambda: cam.has_first_frame, 10)
        want, _ = load_image(np.full((20, 24, 3), 90, np.uint8), cam.image_hw, [20.0, 20.0, 12.0, 10.0])
        np.testing.assert_array_equal(cam._first_frame, want)
    finally:
        h.close()
    for overrides, why in [({"seed_image_topic": "/a", "first_frame_topic": "/b"}, "first_frame_topic is set too"),
                           ({"seed_intrinsics": [500.0, 500.0, 320.0]}, "-p first_frame_intrinsics:="),
                           ({"seed_camera_info_topic": "/cam/"}, "-p first_frame_camera_info_topic:=")]:
        with pytest.warns(DeprecationWarning), pytest.raises(ParameterError) as err:
            SanaWMNode(model=wm, context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        assert str(err.value).startswith(f"parameter {next(iter(overrides))} ") and why in str(err.value), err.value


@pytest.mark.parametrize("arg,name", [("diagnostics_period:=0.0", "diagnostics_period"),
                                      ("model:=/nonexistent/bundle", "model"),
                                      ("initial_image:={tmp}/corrupt.png", "initial_image")])
def test_console_script_rejects_a_bad_parameter_in_one_line(bad_files, arg, name):
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN + 2), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "sana_wm_ros.node", "--ros-args", "-p", arg.format(tmp=bad_files)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sana-wm-ros: parameter {name} "), proc.stderr


def test_console_script_shuts_down_cleanly_on_sigint(tmp_path, wm):
    from world_model.bundles import save_world_model

    bundle = save_world_model(wm, tmp_path / "tiny")
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN + 1), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sana_wm_ros.node", "--ros-args", "-p", f"model:={bundle}",
         "-p", f"initial_image:={FIRST_FRAME}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = ""
        deadline = time.monotonic() + 60
        while "sana_wm: model" not in out and time.monotonic() < deadline and proc.poll() is None:
            out += proc.stdout.readline()
        assert "sana_wm: model" in out, out
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + rest
    assert "shut down" in rest
    assert "Traceback" not in rest


class _StubNode(Node):
    """A bare node for main(): the console script's shutdown paths, without a world model."""

    def __init__(self) -> None:
        super().__init__("sana_wm_stub")
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("shut_down_first", [True, False])
def test_main_treats_a_wait_set_error_after_sigint_as_shutdown(monkeypatch, capsys, shut_down_first):
    """SIGINT can shut the context down between executor iterations; rclpy then raises RCLError (a RuntimeError,
    "the given context is not valid") while building the next wait set. That is a clean shutdown (exit 0); the
    same error with a live context is a failure (exit 2)."""
    import sana_wm_ros.node as node_module

    def spin(self):
        if shut_down_first:
            rclpy.shutdown()
        raise RuntimeError("failed to initialize wait set: the given context is not valid")

    monkeypatch.setattr(node_module, "SanaWMNode", _StubNode)
    monkeypatch.setattr(node_module.SingleThreadedExecutor, "spin", spin)
    code = node_module.main(["sana-wm-ros"])
    err = capsys.readouterr().err
    assert not rclpy.ok()  # main always leaves the default context shut down
    if shut_down_first:
        assert code == 0 and "shut down" in err
    else:
        assert code == 2 and "context is not valid" in err
