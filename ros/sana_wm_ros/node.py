"""``sana_wm`` ROS 2 node: the robot's pose stream in, world-model camera images out.

A thin bridge around :class:`sana_wm_env.live.LivePoseCamera` (validation, resampling, chunking, generation,
counters): parameters, subscriptions, message conversion, publishing, services and diagnostics. Generation
runs on a worker thread so the subscriptions keep draining while a chunk is generated.

Inputs (``input`` parameter): ``odometry`` (nav_msgs/Odometry), ``pose`` (geometry_msgs/PoseStamped),
``pose_with_covariance`` (PoseWithCovarianceStamped) on ``pose_topic``; or ``tf`` (tf2_msgs/TFMessage on
``/tf`` and ``/tf_static``, ``parent_frame -> child_frame`` chained here, no tf2_ros needed).
Outputs: ``~/image`` (rgb8), ``~/camera_info``, ``~/camera_pose`` (the OpenCV camera pose each frame depicts),
``~/imagined/image`` + ``~/imagined/camera_info``, ``/diagnostics``. Services: ``~/reset`` (std_srvs/Trigger).
Topics: ``~/imagine`` (nav_msgs/Path), ``first_frame_topic`` (+ optional ``first_frame_camera_info_topic``).
Parameters (``PARAMETERS``) are read and checked once, at start: a bad one stops the node with one line naming
it, the form it takes and an example (:class:`ParameterError`). Numbers may be given as integers or floats.
The older names of the first-frame parameters (``DEPRECATED_PARAMETERS``: ``seed_image_topic``, ...) still work
and warn.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

try:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
    from nav_msgs.msg import Odometry
    from nav_msgs.msg import Path as PathMsg
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.expand_topic_name import expand_topic_name
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rclpy.validate_full_topic_name import validate_full_topic_name
    from sensor_msgs.msg import CameraInfo, Image
    from std_srvs.srv import Trigger
except ImportError as _err:  # pragma: no cover - exercised only without the ros extra
    _ROS_IMPORT_ERROR: ImportError | None = _err
    Node = object  # type: ignore[assignment,misc]
else:
    _ROS_IMPORT_ERROR = None

INPUTS = ("odometry", "pose", "pose_with_covariance", "tf")
ENCODINGS = {"rgb8": (3, False), "bgr8": (3, True), "rgba8": (4, False), "bgra8": (4, True), "mono8": (1, False)}
INSTALL_HINT = ('the ROS 2 node needs rclpy and the message packages: pip install "sana-wm-env[ros]" '
                "(Python 3.11, x86_64 Linux), or source a ROS 2 workspace")
TF2_HINT = ("input 'tf' needs tf2_msgs, which is not on PyPI: in a ROS 2 workspace it comes with ROS; in a pip "
            "venv build it once with `python -m sana_wm_ros.build_tf2_msgs`")




class ParameterError(ValueError):
    """A parameter the node cannot run with: one line naming it, the expected form, the value and an example."""


def _number(lo: float, inclusive: bool) -> Callable[[object], float]:
    """Check: a finite int or float ``>= lo`` (``> lo`` unless ``inclusive``), as a float."""

    def check(v) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                or v < lo or (v == lo and not inclusive):
            raise ValueError
        return float(v)

    return check


def _integer(lo: int) -> Callable[[object], int]:
    def check(v) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError
        return v

    return check


def _text(v) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError
    return v


def _optional_text(v) -> str:
    if not isinstance(v, str):
        raise ValueError
    return v


def _vector3(v) -> list[float]:
    if isinstance(v, str) or not hasattr(v, "__len__") or len(v) != 3:
        raise ValueError
    return [_number(-math.inf, True)(x) for x in v]


def _intrinsics(v) -> list[float]:
    """``[fx, fy, cx, cy]`` with positive focal lengths, or ``[0.0]`` / ``[]`` (-> ``[]``: the model's FoV)."""
    if isinstance(v, str) or not hasattr(v, "__len__"):
        raise ValueError
    k = [_number(-math.inf, True)(x) for x in v]
    if k in ([0.0], []):
        return []
    if len(k) != 4 or k[0] <= 0 or k[1] <= 0:
        raise ValueError
    return k


def _device(v) -> str:
    import torch

    dev = torch.device(_text(v))  # RuntimeError on a malformed string
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("torch sees no CUDA device here")
    return v


# name -> (default, check (returns the value to use, raises on a bad one), expected form, example)
PARAMETERS: dict[str, tuple[object, Callable[[object], object], str, str]] = {
    "model": ("default", _text, "'default', a shipped bundle name or a bundle folder (with bundle.json)", "default"),
    "device": ("cpu", _device, "a torch device that exists here: cpu, cuda, cuda:1", "cpu"),
    "seed": (0, _integer(0), "an integer >= 0 (the generator's noise seed)", "0"),
    "fps": (0.0, _number(0.0, True), "frames per second, a number >= 0 (0: the model's fps)", "16.0"),
    "torch_threads": (0, _integer(0), "an integer >= 0 (0: torch's default)", "1"),
    "input": ("odometry", _text, f"one of {', '.join(INPUTS)}", "odometry"),
    "pose_topic": ("/odom", _text, "a ROS topic name", "/odom"),
    "pose_queue": (100, _integer(1), "an integer >= 1 (the pose subscription's depth)", "100"),
    "tf_topic": ("/tf", _text, "a ROS topic name", "/tf"),
    "tf_static_topic": ("/tf_static", _text, "a ROS topic name", "/tf_static"),
    "parent_frame": ("odom", _text, "a TF frame name (the world frame of the chain)", "odom"),
    "child_frame": ("base_link", _text, "a TF frame name other than parent_frame (the body frame)", "base_link"),
    "tf_hold": (0.1, _number(0.0, True), "seconds >= 0 a slower TF edge's last sample is held", "0.1"),
    "mount_xyz": ([0.0, 0.0, 0.0], _vector3, "[x, y, z], 3 finite numbers (m, body frame)", '"[0.0, 0.0, 0.2]"'),
    "mount_rpy": ([0.0, 0.0, 0.0], _vector3, "[roll, pitch, yaw], 3 finite numbers (rad)", '"[0.0, 0.0, 0.0]"'),
    "frame_id": ("sana_wm_camera_optical_frame", _text, "a frame name", "sana_wm_camera_optical_frame"),
    "initial_image": ("", _optional_text, "'' or the path of a readable image file (png, jpg)",
                      "examples/first_frame.png"),
    "initial_depth": ("", _optional_text, "'' or the path of initial_image's depth map (npy, 16-bit png, exr)",
                      "depth.npy"),
    "initial_depth_scale": (1000.0, _number(0.0, False), "a positive number (16-bit png depth units per metre)",
                            "1000.0"),
    "first_frame_intrinsics": ([0.0], _intrinsics,
                               "[fx, fy, cx, cy] pixels with fx, fy > 0, or [0.0] (the model's FoV)",
                               '"[500.0, 500.0, 320.0, 240.0]"'),
    "first_frame_topic": ("", _optional_text, "'' or a ROS topic name", "/camera/image_raw"),
    "first_frame_camera_info_topic": ("", _optional_text, "'' or a ROS topic name", "/camera/camera_info"),
    "max_gap": (0.5, _number(0.0, False), "a positive number of seconds", "0.5"),
    "max_lag": (2.0, _number(0.0, False), "a positive number of seconds", "2.0"),
    "stall_timeout": (1.0, _number(0.0, False), "a positive number of seconds", "1.0"),
    "diagnostics_period": (1.0, _number(0.0, False), "a positive number of seconds", "1.0"),
}


# deprecated name -> the parameter it stands for (read when set, with a warning)
DEPRECATED_PARAMETERS = {
    "seed_intrinsics": "first_frame_intrinsics",
    "seed_image_topic": "first_frame_topic",
    "seed_camera_info_topic": "first_frame_camera_info_topic",
}


def _one_line(err: BaseException) -> str:
    """The first line of an error, without rcl's trailing source location and final full stop."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    return re.sub(r", at \S+:\d+$", "", " ".join(text.splitlines()[0].split())).rstrip(".")


def parameter_error(name: str, value, why: str = "") -> ParameterError:
    """The one-line error for parameter ``name``: expected form, the value given, why (optional), an example
    (under the current name when ``name`` is a deprecated one)."""
    current = DEPRECATED_PARAMETERS.get(name, name)
    _, _, expected, example = PARAMETERS[current]
    return ParameterError(f"parameter {name} must be {expected}, got {value!r}{': ' + why if why else ''}; "
                          f"set e.g. -p {current}:={example}")


def stamp_to_sec(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def sec_to_stamp(t: float, stamp) -> None:
    """Fill a builtin_interfaces/Time in place from seconds (rounded to the nanosecond)."""
    ns = int(round(t * 1e9))
    stamp.sec, stamp.nanosec = ns // 1_000_000_000, ns % 1_000_000_000


def image_to_array(msg) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> uint8 (H, W, 3) RGB."""
    if msg.encoding not in ENCODINGS:
        raise ValueError(f"first frame encoding must be one of {', '.join(ENCODINGS)}, got {msg.encoding!r}")
    ch, bgr = ENCODINGS[msg.encoding]
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if msg.step < msg.width * ch or len(buf) < msg.step * msg.height:
        raise ValueError(f"first frame: {len(buf)} bytes do not fit {msg.height}x{msg.width} {msg.encoding} "
                         f"with step {msg.step}")
    arr = buf[: msg.step * msg.height].reshape(msg.height, msg.step)[:, : msg.width * ch]
    arr = arr.reshape(msg.height, msg.width, ch)
    if ch == 1:
        return np.repeat(arr, 3, axis=2)
    arr = arr[..., :3]
    return np.ascontiguousarray(arr[..., ::-1] if bgr else arr)


def array_to_image(arr: np.ndarray, t: float, frame_id: str):
    """uint8 (H, W, 3) RGB -> sensor_msgs/Image rgb8 stamped ``t``."""
    msg = Image()
    sec_to_stamp(t, msg.header.stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding, msg.is_bigendian, msg.step = "rgb8", 0, 3 * int(arr.shape[1])
    msg.data = np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    return msg


def camera_info(k: np.ndarray, hw: tuple[int, int], t: float, frame_id: str):
    """sensor_msgs/CameraInfo for pinhole intrinsics ``[fx, fy, cx, cy]`` (no distortion)."""
    fx, fy, cx, cy = (float(x) for x in k)
    msg = CameraInfo()
    sec_to_stamp(t, msg.header.stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(hw[0]), int(hw[1])
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def _pose_of(p) -> tuple[list[float], list[float]]:
    return [p.position.x, p.position.y, p.position.z], [p.orientation.x, p.orientation.y, p.orientation.z,
                                                        p.orientation.w]


class SanaWMNode(Node):
    """The ``sana_wm`` node. ``model`` (a loaded WorldModel) overrides the ``model`` parameter (tests)."""

    def __init__(self, model=None, **node_kwargs) -> None:
        if _ROS_IMPORT_ERROR is not None:
            raise RuntimeError(INSTALL_HINT) from _ROS_IMPORT_ERROR
        super().__init__("sana_wm", **node_kwargs)
        try:
            self._setup(model)
        except BaseException:
            self.destroy_node()
            raise

    def _setup(self, model) -> None:
        """Parameters, engine, topics, services and the worker (the constructor destroys the node if this fails)."""
        from sana_wm_env.live import LivePoseCamera
        from sana_wm_env.trajectories import camera_mount

        p = self._declare_all()
        if p["torch_threads"] > 0:
            import torch

            torch.set_num_threads(p["torch_threads"])
        self.params = p
        self.camera = LivePoseCamera(
            self._load_model(p) if model is None else model, mount=camera_mount(p["mount_xyz"], p["mount_rpy"]),
            fps=p["fps"] if p["fps"] > 0 else None, seed=p["seed"], device=p["device"], max_gap=p["max_gap"],
            max_lag=p["max_lag"],
        )
        self.frame_id = p["frame_id"]
        self._world_frame_id = p["parent_frame"] if p["input"] == "tf" else "world"
        sensor = qos_profile_sensor_data
        self.pub_image = self.create_publisher(Image, "~/image", sensor)
        self.pub_info = self.create_publisher(CameraInfo, "~/camera_info", sensor)
        self.pub_pose = self.create_publisher(PoseStamped, "~/camera_pose", sensor)
        self.pub_imagined = self.create_publisher(Image, "~/imagined/image", sensor)
        self.pub_imagined_info = self.create_publisher(CameraInfo, "~/imagined/camera_info", sensor)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        pose_qos = QoSProfile(depth=p["pose_queue"], reliability=ReliabilityPolicy.BEST_EFFORT)
        if p["input"] == "tf":
            self._setup_tf(p, pose_qos)
        else:
            msg_type = {"odometry": Odometry, "pose": PoseStamped, "pose_with_covariance": PoseWithCovarianceStamped}
            self.create_subscription(msg_type[p["input"]], p["pose_topic"], self._on_pose_msg, pose_qos)
        if p["initial_image"]:
            k = p["first_frame_intrinsics"] or None
            depth = Path(p["initial_depth"]).expanduser() if p["initial_depth"] else None
            try:
                self.camera.set_first_frame(Path(p["initial_image"]).expanduser(), k, depth=depth,
                                            depth_scale=p["initial_depth_scale"])
            except Exception as err:  # the image was checked already: the depth map or a model/depth mismatch
                name = "initial_depth" if depth is not None else "initial_image"
                raise parameter_error(name, p[name], _one_line(err)) from None
        self._first_frame_k = None
        if p["first_frame_topic"]:
            self.create_subscription(Image, p["first_frame_topic"], self._on_first_frame, sensor)
        if p["first_frame_camera_info_topic"]:
            self.create_subscription(CameraInfo, p["first_frame_camera_info_topic"], self._on_first_frame_info,
                                     sensor)
        self.create_subscription(PathMsg, "~/imagine", self._on_imagine, 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self.latencies: list[float] = []
        self._reported: dict[str, int] = {}  # counters as of the previous /diagnostics message
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="sana_wm_generator", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"sana_wm: model {self.camera.model.name} {self.camera.image_hw[1]}x{self.camera.image_hw[0]} at "
            f"{self.camera.fps:g} fps, input {p['input']} "
            f"({p['pose_topic'] if p['input'] != 'tf' else p['parent_frame'] + ' -> ' + p['child_frame']})")

    def _declare_all(self) -> dict:
        """Declare every parameter (any type: ``-p fps:=8`` works) and check it, before anything loads or runs."""
        out = {}
        for name, (default, check, expected, _) in PARAMETERS.items():
            descriptor = ParameterDescriptor(description=expected, dynamic_typing=True)
            value = self.declare_parameter(name, default, descriptor).value
            try:
                out[name] = check(value)
            except (TypeError, ValueError, RuntimeError) as err:
                raise parameter_error(name, value, _one_line(err) if str(err) else "") from None
        given_as = self._declare_deprecated(out)
        if out["input"] not in INPUTS:
            raise parameter_error("input", out["input"])
        topics = ["first_frame_topic", "first_frame_camera_info_topic"]
        topics += ["tf_topic", "tf_static_topic"] if out["input"] == "tf" else ["pose_topic"]
        for name in topics:
            if out[name] or name == "pose_topic":
                try:
                    validate_full_topic_name(expand_topic_name(out[name], self.get_name(), self.get_namespace()))
                except Exception as err:  # rclpy raises its own exception types (and ValueError) here
                    raise parameter_error(given_as.get(name, name), out[name],
                                          _one_line(err).removeprefix("Invalid topic name: ")) from None
        if out["input"] == "tf" and out["parent_frame"].lstrip("/") == out["child_frame"].lstrip("/"):
            raise parameter_error("child_frame", out["child_frame"], "it is parent_frame too")
        if out["initial_depth"] and not out["initial_image"]:
            raise parameter_error("initial_depth", out["initial_depth"], "it needs initial_image (the depth is of it)")
        for name in ("initial_image", "initial_depth"):
            path = Path(out[name]).expanduser()
            if out[name] and not path.is_file():
                raise parameter_error(name, out[name], "a folder" if path.is_dir() else "no such file")
        if out["initial_image"]:
            from PIL import Image as PILImage

            try:
                with PILImage.open(Path(out["initial_image"]).expanduser()) as im:
                    im.load()  # the whole image: a truncated file fails here, not later when it is the first frame
            except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, ... for a bad file
                raise parameter_error("initial_image", out["initial_image"],
                                      f"not a readable image ({_one_line(err)})") from None
        return out

    def _declare_deprecated(self, out: dict) -> dict[str, str]:
        """Declare the deprecated names of ``DEPRECATED_PARAMETERS``; one that is set (to other than the default)
        warns and fills in its current parameter, which must then be left unset. Returns {current: deprecated name}
        for the values taken that way (errors about them name what the user set)."""
        given_as = {}
        for old, new in DEPRECATED_PARAMETERS.items():
            default, check, expected, _ = PARAMETERS[new]
            descriptor = ParameterDescriptor(description=f"deprecated: use {new} ({expected})", dynamic_typing=True)
            value = self.declare_parameter(old, default, descriptor).value
            if value == default:
                continue
            message = f"parameter {old} is deprecated: use {new}"
            self.get_logger().warning(message)
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            try:
                checked = check(value)
            except (TypeError, ValueError, RuntimeError) as err:
                raise parameter_error(old, value, _one_line(err) if str(err) else "") from None
            if out[new] != check(default):
                raise ParameterError(f"parameter {old} is deprecated and {new} is set too: drop {old}")
            out[new], given_as[new] = checked, old
        return given_as

    def _load_model(self, p: dict):
        """The world model of parameter ``model`` on ``device``; a missing or broken bundle is a ParameterError."""
        from sana_wm_env.envs.core import resolve_model

        try:
            return resolve_model(p["model"], p["device"])
        except Exception as err:  # a missing folder, bad JSON, missing or corrupt weights: all one kind of error
            raise parameter_error("model", p["model"], _one_line(err)) from None

    # ---------------------------------------------------------------------------------------------- inputs
    def _feed(self, t: float, pos, quat) -> None:
        status = self.camera.add_pose(t, pos, quat)
        log = self.get_logger()
        if status == "nan":
            log.warning("dropped a pose with NaN/inf values", throttle_duration_sec=2.0)
        elif status == "invalid":
            log.warning("dropped a pose whose quaternion is not unit length", throttle_duration_sec=2.0)
        elif status in ("duplicate", "out_of_order"):
            log.warning(f"dropped a pose with a {status.replace('_', '-')} stamp {t:.9f}", throttle_duration_sec=2.0)
        elif status == "clock_jump":
            was, now = self.camera.last_clock_jump
            log.warning(f"the pose clock jumped back from {was:.3f} to {now:.3f} s: restarting the stream there",
                        throttle_duration_sec=2.0)
        elif status == "gap":
            log.warning(f"gap in the pose stream (> {self.camera.max_gap} s): holding, resuming at {t:.3f}",
                        throttle_duration_sec=2.0)
        elif status == "waiting_for_first_frame":
            log.info("waiting for a first frame (initial_image or first_frame_topic)", throttle_duration_sec=5.0)

    def _on_pose_msg(self, msg) -> None:
        pose = msg.pose if isinstance(msg, PoseStamped) else msg.pose.pose
        self._world_frame_id = msg.header.frame_id or self._world_frame_id
        self._feed(stamp_to_sec(msg.header.stamp), *_pose_of(pose))

    def _setup_tf(self, p: dict, qos) -> None:
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError as err:
            raise RuntimeError(TF2_HINT) from err
        from sana_wm_env.trajectories.tf import TFBuffer

        # a TF clock jump back (looping bag, simulator restart) clears the dynamic edges, as tf2_ros buffers do
        self.tf = TFBuffer(max_samples=1000, jump_back=p["max_gap"])
        self._tf_lock = threading.Lock()
        static_qos = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(TFMessage, p["tf_topic"], lambda m: self._on_tf(m, False), qos)
        self.create_subscription(TFMessage, p["tf_static_topic"], lambda m: self._on_tf(m, True), static_qos)

    def _on_tf(self, msg, static: bool) -> None:
        with self._tf_lock:
            rejected = self.tf.rejected_edges
            for tr in msg.transforms:
                r, q = tr.transform.translation, tr.transform.rotation
                self.tf.add(tr.header.frame_id, tr.child_frame_id, stamp_to_sec(tr.header.stamp),
                            [r.x, r.y, r.z], [q.x, q.y, q.z, q.w], static=static)
            if self.tf.rejected_edges != rejected:
                self.get_logger().warning(f"dropped TF edge {self.tf.last_rejected}; the tree keeps its other edges",
                                          throttle_duration_sec=5.0)
            new = self.tf.poll(self.params["parent_frame"], self.params["child_frame"], self.params["tf_hold"])
        from world_model.camera import rotmat_to_quat

        for t, T in new:
            self._feed(t, T[:3, 3], rotmat_to_quat(T[:3, :3]).numpy())

    def _on_first_frame_info(self, msg) -> None:
        self._first_frame_k = [msg.k[0], msg.k[4], msg.k[2], msg.k[5]]

    def _on_first_frame(self, msg) -> None:
        try:
            arr = image_to_array(msg)
            k = self._first_frame_k or self.params["first_frame_intrinsics"] or None
            self.camera.set_first_frame(arr, k)
        except ValueError as err:
            self.get_logger().warning(f"first frame ignored: {err}", throttle_duration_sec=5.0)

    def _on_imagine(self, msg) -> None:
        from sana_wm_env.trajectories.tf import pose_matrix

        if not msg.poses:
            self.get_logger().warning("~/imagine: empty path ignored")
            return
        try:
            stamps = np.array([stamp_to_sec(ps.header.stamp) for ps in msg.poses])
            poses = np.stack([pose_matrix(*_pose_of(ps.pose)) for ps in msg.poses])
            ok = len(stamps) > 1 and bool(np.all(np.diff(stamps) > 0))
            self.camera.request_imagine(stamps if ok else None, poses)
        except ValueError as err:
            self.get_logger().warning(f"~/imagine: path ignored: {err}")

    def _on_reset(self, request, response):
        if self.params["input"] == "tf":
            with self._tf_lock:  # the TF clock may have been restarted too: take the next samples whatever their stamps
                self.tf.clear_dynamic()
        response.success = self.camera.request_reset()
        response.message = ("restarting from the latest first frame" if response.success
                            else "no first frame yet (set initial_image or publish on first_frame_topic)")
        return response

    # --------------------------------------------------------------------------------------------- outputs
    def _work(self) -> None:
        from world_model.camera import rotmat_to_quat

        while not self._stop.is_set():
            try:
                frames = self.camera.process(timeout=0.1)
            except Exception as err:  # keep the node alive; the error is reported
                self.get_logger().error(f"generation failed: {err!r}")
                continue
            k, hw = self.camera.intrinsics, self.camera.image_hw
            for f in frames:
                if self._stop.is_set():
                    return
                img = array_to_image(f.image, f.stamp, self.frame_id)
                info = camera_info(k, hw, f.stamp, self.frame_id)
                if f.imagined:
                    self.pub_imagined.publish(img)
                    self.pub_imagined_info.publish(info)
                    continue
                pose = PoseStamped()
                pose.header.stamp = img.header.stamp
                pose.header.frame_id = self._world_frame_id
                q = rotmat_to_quat(f.c2w[:3, :3]).numpy()
                (pose.pose.position.x, pose.pose.position.y, pose.pose.position.z) = (float(x) for x in f.c2w[:3, 3])
                (pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z,
                 pose.pose.orientation.w) = (float(x) for x in q)
                self.pub_image.publish(img)
                self.pub_info.publish(info)
                self.pub_pose.publish(pose)
                if f.latency is not None:
                    self.latencies.append(f.latency)
                    del self.latencies[:-1000]

    def _publish_diagnostics(self) -> None:
        s = self.camera.stats()
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: world-model camera"
        status.hardware_id = self.camera.model.name
        level, msgs = DiagnosticStatus.OK, []
        if not s["has_first_frame"]:
            level, msgs = DiagnosticStatus.WARN, ["waiting for a first frame"]
        if s["since_last_pose_s"] is not None and s["since_last_pose_s"] > self.params["stall_timeout"]:
            level = DiagnosticStatus.WARN
            msgs.append(f"no pose for {s['since_last_pose_s']:.1f} s: holding the last frame")
        if s["lag_s"] > self.camera.max_lag:
            level = DiagnosticStatus.WARN
            msgs.append(f"generation lags {s['lag_s']:.2f} s behind the poses")
        if s["dropped_frames"]:
            msgs.append(f"{s['dropped_frames']} frames dropped to keep up")
        if s["clock_jumps"]:
            was, now = self.camera.last_clock_jump
            msgs.append(f"pose clock jumped back {s['clock_jumps']} time(s), last from {was:.3f} to {now:.3f} s: "
                        "stream restarted there")
        if self.params["input"] == "tf":
            s.update(tf_dropped=self.tf.dropped, tf_rejected_edges=self.tf.rejected_edges,
                     tf_clock_jumps=self.tf.clock_jumps)
            if self.tf.rejected_edges:
                msgs.append(f"{self.tf.rejected_edges} TF edge(s) dropped, last {self.tf.last_rejected}")
        for key in ("clock_jumps", "tf_rejected_edges"):  # warn in the report that follows a new one
            if s.get(key, 0) > self._reported.get(key, 0):
                level = DiagnosticStatus.WARN
            self._reported[key] = s.get(key, 0)
        status.level = level
        status.message = "; ".join(msgs) or "generating"
        status.values = [KeyValue(key=k, value=f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in s.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [status]
        self.pub_diag.publish(arr)

    def close(self) -> None:
        """Stop the worker thread (idempotent)."""
        self._stop.set()
        self.camera.close()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=10.0)


def main(argv: list[str] | None = None) -> int:
    """Console script ``sana-wm-ros``: run the node until SIGINT/SIGTERM (ROS args: ``--ros-args -p k:=v``)."""
    if _ROS_IMPORT_ERROR is not None:
        print(f"sana-wm-ros: {INSTALL_HINT} ({_ROS_IMPORT_ERROR})", file=sys.stderr)
        return 1
    rclpy.init(args=sys.argv if argv is None else argv)
    node = executor = None
    try:
        # The executor first: a SIGINT inside its constructor would leave a half-built one whose __del__ fails.
        # One executor thread: the callbacks only queue work for the generator thread, and rclpy's
        # MultiThreadedExecutor loops in Python, starving the generator of the GIL (the default model's many small
        # ops then ran at 2 frames/s instead of 16 on 2 cores; benchmarks/bench_ros.py --executor multi).
        executor = SingleThreadedExecutor()
        node = SanaWMNode()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not rclpy.ok():
            # SIGINT shut the context down between two executor iterations: rclpy then fails to build the next
            # wait set ("the given context is not valid") instead of raising ExternalShutdownException.
            pass
        else:
            print(f"sana-wm-ros: {err}", file=sys.stderr)
            return 2
    finally:
        # Order matters: the executor's SIGINT guard condition must go before the context, or its __del__
        # raises at interpreter exit.
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    print("sana-wm-ros: shut down", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
