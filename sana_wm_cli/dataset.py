"""``sana-wm dataset``: render twin-world training clips (``make``) and summarise a dataset (``info``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sana_wm_env.limits import MAX_FRAMES, MAX_MEMORY_BYTES

from . import add_ray_argument, whole_number


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be HxW with positive ints (e.g. 64x64), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"--size must be HxW with positive ints (e.g. 64x64), got {text!r}")
    return h, w


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _fov(text: str) -> tuple[float, float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fov must be LO,HI degrees, got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2:
        raise argparse.ArgumentTypeError(f"--fov must be LO,HI degrees, got {text!r}")
    return vals[0], vals[1]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dataset", help="make training clips from the MuJoCo twin worlds",
                              description="Render twin-world clips with exact metric camera poses.")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    m = sub.add_parser("make", help="render clips into a directory (parallel, resumable)",
                       description="Render clips (frames, OpenCV camera-to-world poses, intrinsics, optional "
                                   "depth, scene seed) into OUT in the sana-wm-twin/1 format. Re-running the "
                                   "same command resumes an interrupted run. With --ray every clip is a Ray "
                                   "task; clip i has the same bytes whichever machine renders it.")
    m.add_argument("--scenes", type=_names, default=("rooms", "city", "outdoor"),
                   help="comma-separated scene families (default: rooms,city,outdoor)")
    m.add_argument("--clips", type=whole_number, required=True, help="number of clips")
    m.add_argument("--frames", type=whole_number, required=True,
                   help=f"frames per clip (at most {MAX_FRAMES:,}, and {MAX_MEMORY_BYTES // 2**30} GiB of frames)")
    m.add_argument("--size", type=_size, default=(64, 64), help="frame size HxW (default 64x64)")
    m.add_argument("--fps", type=float, default=16.0, help="frames per second (default 16)")
    m.add_argument("--out", type=Path, required=True, help="output directory")
    m.add_argument("--motions", type=_names, default=("drone", "ground", "handheld"),
                   help="comma-separated camera motions (default: drone,ground,handheld)")
    m.add_argument("--revisit-fraction", type=float, default=0.0,
                   help="fraction of clips on closed revisit loops (needs clips of roughly 10 s or more)")
    m.add_argument("--fov", type=_fov, default=(60.0, 90.0), help="horizontal field of view range LO,HI degrees")
    m.add_argument("--depth", action="store_true", help="also store depth (float16 metres)")
    m.add_argument("--split", choices=("train", "eval"), default="train",
                   help="draw scene seeds from the training seeds or the reserved evaluation seeds")
    m.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    m.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1; not with --ray)")
    add_ray_argument(m)
    m.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    m.set_defaults(func=run_make)
    i = sub.add_parser("info", help="summarise a dataset directory and check its clips",
                       description="Print the settings and count the clips present; every clip is checked "
                                   "(checksums, arrays, shapes) and damaged ones are listed and not counted (exit "
                                   "code 1). `sana-wm dataset make` with the same settings renders them again.")
    i.add_argument("root", type=Path, help="dataset directory")
    i.set_defaults(func=run_info)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_make(args: argparse.Namespace) -> int:
    from sana_wm_env.datasets.writer import DatasetSpec, make_dataset
    from sana_wm_env.outputs import check_output

    check_output(args.out, "--out", kind="dir")

    h, w = args.size
    spec = DatasetSpec(
        clips=args.clips, frames=args.frames, height=h, width=w, fps=args.fps, scenes=args.scenes,
        motions=args.motions, split=args.split, seed=args.seed, depth=args.depth, fov_deg=args.fov,
        revisit_fraction=args.revisit_fraction,
    )
    if args.ray is not None and args.workers != 1:
        raise ValueError("--workers: with --ray every clip is a Ray task on the cluster's cores; leave --workers out")
    stats = make_dataset(args.out, spec, workers=args.workers, progress=not args.no_progress, ray=args.ray)
    for message in stats["damaged"].values():
        print(f"rendered again: {message}")
    print(
        f"{args.out}: wrote {stats['written']} clip(s), {stats['skipped']} already present; "
        f"{stats['seconds']:.2f} s, {stats['clips_per_s']:.2f} clips/s, {stats['frames_per_s']:.1f} frames/s"
    )
    return 0


def run_info(args: argparse.Namespace) -> int:
    meta = Path(args.root) / "dataset.json"
    if not meta.is_file():
        raise FileNotFoundError(f"root: {args.root} is not a twin dataset (no dataset.json)")
    from sana_wm_env.datasets.writer import DatasetSpec, clip_path, damaged_clips, read_dataset_json

    raw = read_dataset_json(args.root)
    spec = DatasetSpec.from_json(raw, meta)
    damaged = damaged_clips(args.root, spec)
    done = sum(clip_path(args.root, i).exists() for i in range(spec.clips)) - len(damaged)
    print(json.dumps(raw, indent=2))
    for message in damaged.values():
        print(f"damaged: {message}")
    print(f"clips present: {done} / {spec.clips}" + (f" ({len(damaged)} damaged, not counted; `sana-wm dataset make` "
                                                      "with these settings renders them again)" if damaged else ""))
    return 1 if damaged else 0
