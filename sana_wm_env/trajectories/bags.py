"""ROS 2 bag reader (MCAP or sqlite3 storage) through the pure-Python ``rosbags`` package (no ROS install).

Pose topics: ``geometry_msgs/msg/PoseStamped``, ``PoseWithCovarianceStamped``, ``TransformStamped`` and
``nav_msgs/msg/Odometry`` (stamp = ``header.stamp``). TF: ``tf2_msgs/msg/TFMessage`` on ``/tf`` and
``/tf_static``; ``parent_frame -> child_frame`` is looked up through the TF tree (chains through any common
ancestor). Output stamps are those of the most frequent dynamic edge on the chain, within the time span all
dynamic edges cover; the other dynamic edges are interpolated there (linear translation, slerp rotation).

A bag that cannot be read (truncated, zeroed, not a bag at all, a folder without ``metadata.yaml``) raises
ValueError naming it, whatever the storage library raised.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sana_wm_env.trajectories.readers import check_convention, error_reason, quat_poses
from sana_wm_env.trajectories.tf import find_chain, interpolate_edge
from sana_wm_env.trajectories.trajectory import Trajectory, clean_rows
from world_model.optional import require

POSE_TYPES: tuple[str, ...] = (
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "geometry_msgs/msg/TransformStamped",
    "nav_msgs/msg/Odometry",
)
TF_TYPE = "tf2_msgs/msg/TFMessage"


def _stamp(h) -> float:
    return h.stamp.sec + h.stamp.nanosec * 1e-9


def _pose_of(msg, msgtype: str) -> tuple[np.ndarray, np.ndarray]:
    if msgtype == "geometry_msgs/msg/PoseStamped":
        p = msg.pose
    elif msgtype == "geometry_msgs/msg/TransformStamped":
        tr = msg.transform
        return (np.array([tr.translation.x, tr.translation.y, tr.translation.z]),
                np.array([tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w]))
    else:  # PoseWithCovarianceStamped, Odometry
        p = msg.pose.pose
    return (np.array([p.position.x, p.position.y, p.position.z]),
            np.array([p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w]))


def _topics_str(connections) -> str:
    seen = {}
    for c in connections:
        seen.setdefault(c.topic, c.msgtype)
    return ", ".join(f"{t} ({ty})" for t, ty in sorted(seen.items()))


def _unreadable(path: Path, err: BaseException) -> ValueError:
    """The error for a bag the storage library cannot read (its exceptions vary with the damage)."""
    return ValueError(f"path: {path} is not a readable ROS 2 bag ({error_reason(err)}); it may be truncated or "
                      "damaged: copy it again, or repair it (`ros2 bag reindex` for a folder, `mcap recover` for an "
                      ".mcap)")


@contextmanager
def _open(path: Path) -> Iterator:
    """An open ``AnyReader`` of the bag at ``path`` (a bag folder, an ``.mcap`` file or a folder's ``.db3``)."""
    AnyReader = require("rosbags.highlevel", extra="bags", feature="reading ROS 2 bags").AnyReader
    bag = path.parent if path.is_file() and path.suffix == ".db3" else path
    if bag.is_dir() and not (bag / "metadata.yaml").is_file():
        raise ValueError(f"path: {path} is not a ROS 2 bag (no metadata.yaml in {bag}); pass a trajectory file "
                         "(TUM, EuRoC, KITTI, .npz, .npy), an .mcap file or a bag folder")
    try:
        reader = AnyReader([bag])
        reader.open()
    except Exception as err:  # rosbags raises its own errors, sqlite3, zstd, struct and index errors alike
        raise _unreadable(path, err) from None
    try:
        yield reader
    finally:
        reader.close()


def _messages(reader, connections, path: Path) -> Iterator[tuple]:
    """``(connection, message)`` of ``connections`` in time order; damaged data raises ValueError naming the bag."""
    it = reader.messages(connections=connections)
    while True:
        try:
            conn, _t, raw = next(it)
            msg = reader.deserialize(raw, conn.msgtype)
        except StopIteration:
            return
        except Exception as err:  # as in _open: whatever the damage makes the storage library raise
            raise _unreadable(path, err) from None
        yield conn, msg


def read_bag(path, topic: str | None = None, parent_frame: str | None = None, child_frame: str | None = None,
             convention: str | None = None, on_invalid: str = "raise") -> Trajectory:
    """Read one pose topic, or a TF chain ``parent_frame -> child_frame``, from a ROS 2 bag."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path: no such bag: {p}")
    conv = check_convention(convention, "rep103")
    with _open(p) as reader:
        conns = list(reader.connections)
        use_tf = topic is None and (parent_frame is not None or child_frame is not None)
        if topic is not None:
            sel = [c for c in conns if c.topic == topic]
            if not sel:
                raise ValueError(f"topic {topic!r} is not in {p}; topics: {_topics_str(conns)}")
            if sel[0].msgtype == TF_TYPE:
                use_tf = True
            elif sel[0].msgtype not in POSE_TYPES:
                raise ValueError(
                    f"topic {topic!r} has type {sel[0].msgtype}; supported: {', '.join(POSE_TYPES + (TF_TYPE,))}"
                )
        elif not use_tf:
            cands = sorted({c.topic for c in conns if c.msgtype in POSE_TYPES})
            if len(cands) != 1:
                raise ValueError(
                    f"topic: {p} has {len(cands)} pose topics; pass topic= (or parent_frame= and child_frame= "
                    f"for TF). Topics: {_topics_str(conns)}"
                )
            sel = [c for c in conns if c.topic == cands[0]]
        if use_tf:
            if parent_frame is None or child_frame is None:
                raise ValueError("a TF lookup needs both parent_frame and child_frame")
            tf_conns = [c for c in conns if c.msgtype == TF_TYPE]
            if not tf_conns:
                raise ValueError(f"{p} has no TF topics; topics: {_topics_str(conns)}")
            return _read_tf(reader, tf_conns, p, parent_frame, child_frame, conv, on_invalid)
        return _read_pose_topic(reader, sel, p, parent_frame, child_frame, conv, on_invalid)


def _read_pose_topic(reader, sel, p: Path, parent_frame, child_frame, conv: str, on_invalid: str) -> Trajectory:
    topic, msgtype = sel[0].topic, sel[0].msgtype
    times, pos, quat, frames, children = [], [], [], set(), set()
    for _conn, msg in _messages(reader, sel, p):
        times.append(_stamp(msg.header))
        frames.add(msg.header.frame_id)
        children.add(getattr(msg, "child_frame_id", ""))
        x, q = _pose_of(msg, msgtype)
        pos.append(x)
        quat.append(q)
    if not times:
        raise ValueError(f"topic {topic!r} in {p} has no messages")
    if parent_frame is not None and frames != {parent_frame}:
        raise ValueError(f"parent_frame {parent_frame!r} does not match topic {topic!r} frame_id(s) {sorted(frames)}")
    if child_frame is not None and children != {child_frame}:
        raise ValueError(f"child_frame {child_frame!r} does not match topic {topic!r} child_frame_id(s) "
                         f"{sorted(children)}")
    t = np.asarray(times)
    pos_a, quat_a = np.asarray(pos), np.asarray(quat)
    where = [f"{p}:{topic}#{i}" for i in range(len(t))]
    keep = clean_rows(t, np.isfinite(pos_a).all(1) & np.isfinite(quat_a).all(1), where, on_invalid, f"{p}:{topic}")
    poses = quat_poses(pos_a[keep], quat_a[keep], [where[i] for i in keep])
    child = next(iter(children)) if len(children) == 1 and "" not in children else "body"
    traj = Trajectory(timestamps=t[keep], poses=poses, convention=conv,
                      frame_id=next(iter(frames)) if len(frames) == 1 else "world", child_frame_id=child)
    traj.metadata.update(source=f"{p}:{topic}", dropped_rows=len(t) - len(keep), msgtype=msgtype)
    return traj


def _read_tf(reader, tf_conns, p: Path, parent: str, child: str, conv: str, on_invalid: str) -> Trajectory:
    edges: dict[tuple[str, str], list] = defaultdict(list)  # (parent, child) -> [(t, pos, quat)]
    static: dict[tuple[str, str], tuple] = {}
    parent_of: dict[str, str] = {}
    for conn, msg in _messages(reader, tf_conns, p):
        is_static = "static" in conn.topic
        for tr in msg.transforms:
            key = (tr.header.frame_id.lstrip("/"), tr.child_frame_id.lstrip("/"))
            parent_of[key[1]] = key[0]
            x, q = _pose_of(tr, "geometry_msgs/msg/TransformStamped")
            if is_static:
                static[key] = (x, q)
            else:
                edges[key].append((_stamp(tr.header), x, q))
    chain = find_chain(parent_of, parent, child, str(p))
    chain_edges = list(chain.edges)

    # Per dynamic edge: sorted, cleaned time series.
    series: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    dropped = 0
    for key in chain_edges:
        if key in static:
            continue
        samples = sorted(edges[key], key=lambda s: s[0])
        t = np.array([s[0] for s in samples])
        pos = np.array([s[1] for s in samples])
        quat = np.array([s[2] for s in samples])
        where = [f"{p}:tf {key[0]}->{key[1]} #{i}" for i in range(len(t))]
        keep = clean_rows(t, np.isfinite(pos).all(1) & np.isfinite(quat).all(1), where, on_invalid,
                          f"{p}:tf {key[0]}->{key[1]}")
        dropped += len(t) - len(keep)
        series[key] = (t[keep], quat_poses(pos[keep], quat[keep], [where[i] for i in keep]))
    if not series:
        raise ValueError(f"the TF chain {parent!r} -> {child!r} in {p} is static (no timestamps to read)")
    lo = max(s[0][0] for s in series.values())
    hi = min(s[0][-1] for s in series.values())
    ref = max(series, key=lambda k: len(series[k][0]))
    times = series[ref][0]
    times = times[(times >= lo) & (times <= hi)]
    if len(times) == 0:
        raise ValueError(f"the dynamic TF edges of {parent!r} -> {child!r} in {p} do not overlap in time")

    def edge_at(key: tuple[str, str]) -> np.ndarray:
        if key in static:
            x, q = static[key]
            return np.repeat(quat_poses(x[None], q[None], [f"{p}:tf_static {key[0]}->{key[1]}"]), len(times), 0)
        t, m = series[key]
        return interpolate_edge(t, m, times)

    poses = chain.compose(edge_at, len(times))
    traj = Trajectory(timestamps=times, poses=poses, convention=conv, frame_id=parent, child_frame_id=child)
    traj.metadata.update(source=f"{p}:tf", dropped_rows=dropped, tf_chain=[f"{a}->{b}" for a, b in chain_edges])
    return traj
