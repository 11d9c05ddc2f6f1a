"""The sana_wm ROS 2 node end to end: pose-in -> image-out latency and frames/s with the bundled model on CPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_ros.py [--seconds 10] [--threads 2] [--model default]

Replays ``/odom`` of the nav2 TurtleBot bag (``tests/data``) at its recorded rate into the node over
real rclpy (loopback, a private ROS_DOMAIN_ID, localhost-only discovery) and receives ``~/image`` in a probe
node. Latency of a frame = wall time from publishing the ``/odom`` message that completed its chunk (the first
message whose stamp reaches the chunk's last frame) to receiving the image. Frames/s = images received over
the wall time from the first to the last image. Also prints the node's own lag and drop counters.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of /odom to replay")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--model", default="default")
    ap.add_argument("--testdata", default=str(REPO / "tests" / "data"))
    ap.add_argument("--max-lag", type=float, default=2.0)
    ap.add_argument("--executor", choices=("single", "multi"), default="single",
                    help="rclpy executor spinning the node and the probe (default: %(default)s, as sana-wm-ros)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    domain = random.randint(100, 200)
    os.environ.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")

    import rclpy
    from nav_msgs.msg import Odometry
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosbags.highlevel import AnyReader
    from sensor_msgs.msg import Image

    from sana_wm_ros.node import SanaWMNode, stamp_to_sec

    bag = Path(args.testdata) / "trajectories" / "nav2_turtlebot.mcap"
    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.topic == "/odom"]
        msgs = [(reader.deserialize(raw, c.msgtype).header.stamp, t, bytes(raw))
                for c, t, raw in reader.messages(connections=conns)]
    msgs = [(s.sec + s.nanosec * 1e-9, t, raw) for s, t, raw in msgs]
    msgs = [m for m in msgs if m[1] - msgs[0][1] <= args.seconds * 1e9]

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    params = {"model": args.model, "initial_image": str(REPO / "examples" / "first_frame.png"),
              "input": "odometry", "pose_topic": "/odom", "max_lag": args.max_lag}
    t_load = time.perf_counter()
    node = SanaWMNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    t_load = time.perf_counter() - t_load
    probe = rclpy.create_node("bench_probe", context=ctx)
    received: list[tuple[float, float]] = []  # (stamp, wall)
    probe.create_subscription(Image, "/sana_wm/image",
                              lambda m: received.append((stamp_to_sec(m.header.stamp), time.perf_counter())),
                              QoSProfile(depth=500, reliability=ReliabilityPolicy.BEST_EFFORT))
    pub = probe.create_publisher(Odometry, "/odom", 1000)
    ex = SingleThreadedExecutor(context=ctx) if args.executor == "single" else \
        MultiThreadedExecutor(num_threads=3, context=ctx)
    ex.add_node(node)
    ex.add_node(probe)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    while pub.get_subscription_count() == 0:
        time.sleep(0.01)

    sent_wall = []
    w0, t0 = time.perf_counter(), msgs[0][1]
    for _stamp, t, raw in msgs:
        delay = (t - t0) * 1e-9 - (time.perf_counter() - w0)
        if delay > 0:
            time.sleep(delay)
        pub.publish(raw)
        sent_wall.append(time.perf_counter())
    deadline = time.perf_counter() + 120
    while not node.camera.idle() and time.perf_counter() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    stats = node.camera.stats()
    node.close()
    ex.shutdown()
    node.destroy_node()
    probe.destroy_node()
    rclpy.try_shutdown(context=ctx)

    stamps = np.array([m[0] for m in msgs])
    lat = []
    for stamp, wall in received[1:]:  # frame 0 is the first frame as given
        i = int(np.searchsorted(stamps, stamp - 1e-9))  # first pose whose stamp reaches this frame
        if i < len(stamps):
            lat.append(wall - sent_wall[i])
    chunk = node.camera.chunk_frames
    chunk_last = np.array(lat[chunk - 1 :: chunk]) if lat else np.array([])
    walls = [w for _, w in received]
    result = {
        "model": node.camera.model.name, "image_hw": list(node.camera.image_hw), "fps_model": node.camera.fps,
        "torch_threads": args.threads, "replayed_s": round((msgs[-1][1] - msgs[0][1]) * 1e-9, 2),
        "poses_sent": len(msgs), "images_received": len(received), "load_s": round(t_load, 2),
        "frames_per_s": round((len(walls) - 1) / (walls[-1] - walls[0]), 2) if len(walls) > 1 else None,
        "latency_ms_chunk_last_frame": {"median": round(float(np.median(chunk_last)) * 1e3, 1),
                                        "p90": round(float(np.percentile(chunk_last, 90)) * 1e3, 1)}
        if len(chunk_last) else None,
        "latency_ms_all_frames": {"median": round(float(np.median(lat)) * 1e3, 1),
                                  "p90": round(float(np.percentile(lat, 90)) * 1e3, 1)} if lat else None,
        "lag_s": round(stats["lag_s"], 3), "dropped_frames": stats["dropped_frames"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
