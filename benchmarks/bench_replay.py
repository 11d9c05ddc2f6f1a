"""Full-length `sana-wm replay` throughput on the real recordings with the bundled model.

    OMP_NUM_THREADS=1 python benchmarks/bench_replay.py [--testdata tests/data] [--threads 1] [--out DIR]

Replays the EuRoC V1_02 drone flight, TUM fr1/xyz and the nav2 TurtleBot bag (/odom, its 1.76 s stamp gap
interpolated with --max-gap 2) from examples/first_frame.png, whole length, at the model's 16 fps, and prints
one JSON line per recording: frames, seconds (generation + mp4 writing, model loading excluded), frames/s and the
largest generator state (flat in length). Timing on a shared CPU varies; run it on an idle machine to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDINGS = (
    ("euroc_v1_02", "V102_groundtruth.csv", []),
    ("tum_fr1_xyz", "freiburg1_xyz-groundtruth.txt", ["--convention", "opencv"]),
    ("nav2_turtlebot", "nav2_turtlebot.mcap", ["--topic", "/odom", "--mount", "0.1,0,0.2,0,0,0", "--max-gap", "2"]),
)


def main() -> None:
    from sana_wm_cli.main import main as cli

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--testdata", type=Path,
                    default=Path(os.environ.get("SANA_WM_TESTDATA", ROOT / "tests" / "data")))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_replay")
    args = ap.parse_args()
    for name, file, extra in RECORDINGS:
        out = args.out / f"{name}.mp4"
        t0 = time.perf_counter()
        code = cli(["replay", str(args.testdata / "trajectories" / file), "--image", str(ROOT / "examples" /
                    "first_frame.png"), "--threads", str(args.threads), "--out", str(out), *extra])
        wall = time.perf_counter() - t0
        if code != 0:
            raise SystemExit(f"{name}: replay failed with exit code {code}")
        meta = json.loads(out.with_suffix(".json").read_text())
        print(json.dumps({"recording": name, "frames": meta["frames"], "seconds_of_video": round(
            (meta["frames"] - 1) / meta["fps"], 2), "seconds": meta["seconds"], "frames_per_second":
            meta["frames_per_second"], "wall_seconds_incl_load": round(wall, 2),
            "generator_state_bytes_max": meta["generator_state_bytes_max"], "threads": args.threads}), flush=True)


if __name__ == "__main__":
    main()
