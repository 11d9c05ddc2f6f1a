"""``sana-wm generate``: a first image and a constant camera motion in, an mp4 out.

Motion flags are in the camera's own frame, per second: --forward/--right/--up in metres, --yaw (positive
turns left), --pitch (positive looks up) and --roll (positive lowers the right side) in degrees.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from world_model.bundles import WorldModel, load_world_model, untrained_world_model
from world_model.camera import (
    fov_to_intrinsics,
    resize_crop_geometry,
    resize_crop_intrinsics,
    se3_exp,
    validate_intrinsics_for_image,
)
from world_model.config import PRESETS
from world_model.generators import BidirectionalGenerator, ChunkCausalGenerator
from world_model.video import from_uint8, to_uint8, write_video

GENERATORS = ("streaming", "chunk_causal", "bidirectional")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate", help="generate a video from an image and a camera motion",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="default",
                   help="a world-model bundle (shipped name or folder), or a preset name with --random-init "
                   "(default: the bundled model)")
    p.add_argument("--random-init", action="store_true",
                   help="build the --model preset with random weights: exercises the pipeline, the frames are noise")
    p.add_argument("--image", required=True, type=Path, help="first frame (png/jpg); resized and centre-cropped")
    p.add_argument("--depth", type=Path, default=None,
                   help="depth map of --image for geometry-guided models: .npy float metres or 16-bit .png (see "
                        "--depth-scale); 0 = no data / sky. Without it such a model generates frame 0's depth")
    p.add_argument("--depth-scale", type=float, default=1000.0,
                   help="16-bit --depth PNG units per metre (default 1000 = millimetres; TUM RGB-D uses 5000)")
    p.add_argument("--size", default=None, help="output HxW, multiples of the codec stride (default: the model's)")
    p.add_argument("--fov", type=float, default=60.0, help="horizontal field of view of --image in degrees")
    p.add_argument("--intrinsics", default=None, help="fx,fy,cx,cy of --image in its own pixels (overrides --fov)")
    for name, unit in (("forward", "m/s"), ("right", "m/s"), ("up", "m/s"),
                       ("yaw", "deg/s"), ("pitch", "deg/s"), ("roll", "deg/s")):
        p.add_argument(f"--{name}", type=float, default=0.5 if name == "forward" else 0.0, help=f"motion, {unit}")
    p.add_argument("--fps", type=float, default=None, help="camera path and video frame rate (default: the model's)")
    p.add_argument("--chunks", type=int, default=4, help="generator steps (chunks) to run (default: %(default)s)")
    p.add_argument("--generator", choices=GENERATORS, default="streaming")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (chunk_causal / bidirectional)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("outputs/generate.mp4"), help="video path (.mp4 or .gif)")
    p.set_defaults(func=run)


def parse_hw(text: str, name: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{name} must look like HxW (e.g. 64x64), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {text!r}")
    return h, w


def load_image(path: Path, size_hw: tuple[int, int], intrinsics, fov: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize-then-centre-crop ``path`` to ``size_hw``; returns (image (1, 3, H, W) in [-1, 1], intrinsics (4,))."""
    from PIL import Image

    if not path.exists():
        raise FileNotFoundError(f"--image {path} does not exist")
    try:
        img = Image.open(path).convert("RGB")
    except (OSError, SyntaxError) as err:  # PIL: UnidentifiedImageError (an OSError), truncated files
        raise ValueError(f"--image {path} is not a readable image (png/jpg...): {err}") from None
    src_hw = (img.height, img.width)
    (rh, rw), (top, left) = resize_crop_geometry(src_hw, size_hw)
    img = img.resize((rw, rh), Image.LANCZOS).crop((left, top, left + size_hw[1], top + size_hw[0]))
    if intrinsics is None:
        if not (isinstance(fov, int | float) and 0 < fov < 180):
            raise ValueError(f"--fov must be a horizontal field of view in degrees in (0, 180), got {fov!r}")
        k_src = fov_to_intrinsics(fov, *src_hw)
    else:
        try:
            k_src = torch.tensor([float(v) for v in intrinsics.split(",")])
        except ValueError:
            raise ValueError(f"--intrinsics must be fx,fy,cx,cy, got {intrinsics!r}") from None
        if k_src.shape != (4,):
            raise ValueError(f"--intrinsics must be 4 numbers fx,fy,cx,cy, got {intrinsics!r}")
        validate_intrinsics_for_image(k_src, src_hw, "--intrinsics")
    k = resize_crop_intrinsics(k_src, src_hw, size_hw)
    return from_uint8(np.asarray(img))[None], k.float()


def load_depth_for(image_path: Path, depth_path: Path, size_hw: tuple[int, int], depth_scale: float) -> torch.Tensor:
    """``--depth`` of ``--image``, resized and cropped like it: ``(1, H, W)`` metres."""
    from PIL import Image

    from sana_wm_env.depth import fit_depth, read_depth

    with Image.open(image_path) as im:
        src = (im.height, im.width)
    depth = read_depth(depth_path, depth_scale=depth_scale, what="--depth")
    return torch.from_numpy(fit_depth(depth, src, size_hw, what="--depth"))[None]


def constant_motion_path(num_frames: int, fps: float, args: argparse.Namespace) -> torch.Tensor:
    """Camera-to-world poses (F, 4, 4) starting at identity, moving with the per-second motion flags."""
    dt = 1.0 / fps
    v = torch.tensor([args.right, -args.up, args.forward], dtype=torch.float64) * dt
    # OpenCV camera: up is -y, so a left turn (positive yaw) is a positive rotation about -y
    w = torch.tensor([math.radians(args.pitch), -math.radians(args.yaw), math.radians(args.roll)],
                     dtype=torch.float64) * dt
    delta = se3_exp(torch.cat([v, w]))
    poses = [torch.eye(4, dtype=torch.float64)]
    for _ in range(num_frames - 1):
        poses.append(poses[-1] @ delta)
    return torch.stack(poses).float()


def build_model(args: argparse.Namespace) -> WorldModel:
    if args.random_init:
        if args.model not in PRESETS:
            raise ValueError(f"--random-init needs a preset --model ({sorted(PRESETS)}), got {args.model!r}")
        return untrained_world_model(args.model, seed=args.seed)
    if args.model in PRESETS:
        raise ValueError(
            f"--model {args.model!r} is an architecture preset without trained weights; pass --random-init to run "
            "it with random weights (noise frames, for checking the pipeline), or a trained bundle"
        )
    return load_world_model(args.model, device=args.device)


def run(args: argparse.Namespace) -> int:
    from sana_wm_env.limits import check_fps
    from sana_wm_env.outputs import StagedOutputs, check_output

    if args.chunks < 1:
        raise ValueError(f"--chunks must be >= 1, got {args.chunks}")
    check_output(args.out, "--out", inputs=(("--image", args.image), ("--depth", args.depth)),
                 suffixes=(".mp4", ".gif"))
    if args.fps is not None:
        check_fps(args.fps, "--fps")
    wm = build_model(args).to(args.device)
    model, codec = wm.student.eval(), wm.codec
    size = wm.image_hw if args.size is None else parse_hw(args.size, "--size")
    fps = wm.fps if args.fps is None else args.fps
    image, k = load_image(args.image, size, args.intrinsics, args.fov)
    extra = {}
    if args.depth is not None:
        extra["depth"] = load_depth_for(args.image, args.depth, size, args.depth_scale)
    steps = {} if args.steps is None else {"num_steps": args.steps}
    if args.generator == "streaming":
        gen = wm.streaming_generator()
    elif args.generator == "chunk_causal":
        gen = ChunkCausalGenerator(model, codec, **steps)
    else:
        gen = BidirectionalGenerator(model, codec, **steps)
    poses = constant_motion_path(gen.valid_num_frames(args.chunks), fps, args)
    t0 = time.perf_counter()
    with tqdm(total=poses.shape[0], initial=1, unit="frame", desc=f"{args.generator} generation") as bar:
        if "depth" in extra and not gen.takes_depth:
            raise ValueError(f"--depth: model {args.model!r} does not use depth (it keeps no geometry cache); drop it")
        video = gen.generate(image.to(args.device), k, poses[None], seed=args.seed, **extra,
                             progress=lambda done, total: bar.update(done - bar.n) if args.generator != "bidirectional"
                             else None)
        bar.update(poses.shape[0] - bar.n)
    elapsed = time.perf_counter() - t0
    with StagedOutputs() as outputs:  # a failed write leaves no half video under --out
        write_video(to_uint8(video[0]), outputs.stage(args.out), fps)
    summary = {"out": str(args.out), "frames": int(video.shape[1]), "size": list(size), "seconds": round(elapsed, 3),
               "frames_per_second": round((video.shape[1] - 1) / elapsed, 2), "generator": args.generator,
               "model": args.model, "random_init": args.random_init}
    print(json.dumps(summary))
    return 0
