"""``sana-wm demo``: watch the world model fly a scripted 6-DoF camera path next to the real twin world.

Takes the twin-world render at the start pose as the first frame, then streams the world model along a
scripted path (forward, a left turn, a climb with a little roll, a right turn) and writes an mp4 with the
generated video on the left and the twin-world render at the same poses on the right. It prints where the
video is and how close the generated frames are to the renders (PSNR per horizon: higher is closer).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from . import bundle_meta, set_torch_threads

# Scripted path, in seconds from the start: (t0, t1, forward speed factor, yaw deg/s, climb m/s factor, roll deg/s)
SCRIPT: tuple[tuple[float, float, float, float, float, float], ...] = (
    (0.0, 2.0, 1.0, 0.0, 0.0, 0.0),  # forward
    (2.0, 4.0, 0.5, 35.0, 0.0, 0.0),  # turn left while moving
    (4.0, 5.0, 0.6, 0.0, 0.3, 8.0),  # climb, rolling right a little
    (5.0, 6.0, 0.6, 0.0, 0.3, -8.0),  # climb, rolling back
    (6.0, math.inf, 0.8, -25.0, 0.0, 0.0),  # turn right
)
PATH_CLEARANCE = 0.3


def register(subparsers: argparse._SubParsersAction) -> None:
    from sana_wm_env.scenes import FAMILIES

    p = subparsers.add_parser(
        "demo", help="world model vs twin world, side by side, along a scripted 6-DoF path (mp4)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="default", help="bundle name or folder (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("outputs/demo.mp4"), help="video path (default: %(default)s)")
    p.add_argument("--family", choices=FAMILIES, default="rooms", help="twin-world family (default: %(default)s)")
    p.add_argument("--scene-seed", type=int, default=0,
                   help="scene seed (default: %(default)s, a held-out evaluation world)")
    p.add_argument("--seconds", type=float, default=8.0, help="length of the path (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default: %(default)s)")
    p.add_argument("--scale", type=int, default=None, help="integer upscaling of the video (default: to ~256 px)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is much faster when other processes share "
                        "the cores)")
    p.set_defaults(func=run)


def scripted_path(scene, num_frames: int, fps: float, *, clearance: float = PATH_CLEARANCE,
                  tries: int = 2000) -> np.ndarray:
    """OpenCV c2w poses (num_frames, 4, 4) of :data:`SCRIPT` from a start found inside ``scene``.

    The start (position, heading) is searched deterministically until every frame is inside the scene and
    ``clearance`` metres from all surfaces. Speeds scale with the family's typical speed.
    """
    from sana_wm_env.trajectories.trajectory import OPENCV_IN_REP103
    from world_model.camera import rpy_to_rotmat

    dt = 1.0 / fps
    t = np.arange(num_frames) * dt
    seg = [next(s for s in SCRIPT if s[0] <= ti < s[1]) for ti in t]
    v = 0.5 * scene.speed_scale
    yaw_rate = np.radians([s[3] for s in seg])
    roll_rate = np.radians([s[5] for s in seg])
    yaw = np.concatenate([[0.0], np.cumsum(yaw_rate[:-1] * dt)])
    roll = np.concatenate([[0.0], np.cumsum(roll_rate[:-1] * dt)])
    fwd = np.array([s[2] for s in seg]) * v
    climb = np.array([s[4] for s in seg]) * v
    step_local = np.stack([fwd * np.cos(yaw), fwd * np.sin(yaw), climb], axis=1) * dt
    offsets = np.concatenate([[np.zeros(3)], np.cumsum(step_local[:-1], axis=0)])  # heading 0 = +x
    lo, hi = scene.bounds
    h_lo, h_hi = scene.camera_heights["handheld"]
    rng = np.random.default_rng([0xDE30, scene.seed])
    for _ in range(tries):
        xy = rng.uniform(lo[:2], hi[:2])
        psi = rng.uniform(0, 2 * np.pi)
        z = float(scene.ground_height(xy[None])[0]) + 0.5 * (h_lo + h_hi)
        rot = rpy_to_rotmat([0.0, 0.0, psi]).numpy()
        pos = np.array([xy[0], xy[1], z]) + offsets @ rot.T
        if not scene.free(pos, clearance).all():
            continue
        rpy = np.column_stack([roll, np.zeros_like(roll), yaw + psi])
        poses = np.tile(np.eye(4), (num_frames, 1, 1))
        poses[:, :3, :3] = rpy_to_rotmat(rpy).numpy() @ OPENCV_IN_REP103
        poses[:, :3, 3] = pos
        return poses
    raise RuntimeError(f"no start for the demo path in {scene.family} scene {scene.seed}; try another --scene-seed")


def _label_bar(width: int, texts: list[tuple[int, str]], height: int = 18) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    bar = Image.new("RGB", (width, height), (20, 20, 20))
    draw = ImageDraw.Draw(bar)
    font = ImageFont.load_default()
    for x, text in texts:
        draw.text((x + 4, 3), text, fill=(240, 240, 240), font=font)
    return np.asarray(bar)


def side_by_side(generated: np.ndarray, truth: np.ndarray, scale: int, left: str, right: str,
                 fps: float, first_index: int = 0) -> np.ndarray:
    """uint8 (F, H, W, 3) pairs -> labelled video frames (F, 18 + H*scale, 2*W*scale + 4, 3).

    ``first_index``: video index of the first frame given (for the time label when called chunk by chunk).
    """
    if generated.shape != truth.shape:
        raise ValueError(f"generated and truth must have the same shape, got {generated.shape}, {truth.shape}")
    big_g = generated.repeat(scale, axis=1).repeat(scale, axis=2)
    big_t = truth.repeat(scale, axis=1).repeat(scale, axis=2)
    f, h, w, _ = big_g.shape
    gap = np.full((f, h, 4, 3), 255, np.uint8)
    body = np.concatenate([big_g, gap, big_t], axis=2)
    out = np.empty((f, h + 18, body.shape[2], 3), np.uint8)
    out[:, 18:] = body
    for i in range(f):
        out[i, :18] = _label_bar(body.shape[2], [(0, f"{left}  t={(first_index + i) / fps:4.1f}s"), (w + 4, right)])
    return out


def check_video_size(seconds: float, scale: int | None, image_hw: tuple[int, int], fps: float) -> int:
    """Refuse a demo whose side-by-side video would be absurd (frames, pixels a side, bytes in memory: it is held
    whole before writing); returns the upscaling to use."""
    from sana_wm_env.limits import MAX_VIDEO_SIDE, check_frame_size, check_frames, check_memory

    h, w = image_hw
    scale = scale or max(1, 256 // h)
    frames = check_frames(int(round(seconds * fps)) + 1, f"--seconds {seconds:g} at the model's {fps:g} fps",
                          "use fewer --seconds")
    out_h, out_w = 18 + h * scale, 2 * w * scale + 4
    most = max(1, min((MAX_VIDEO_SIDE - 18) // h, (MAX_VIDEO_SIDE - 4) // (2 * w)))
    check_frame_size(out_h, out_w, f"--scale {scale} on the model's {h}x{w} frames (side by side)",
                     f"use --scale {most} or less")
    check_memory(frames * out_h * out_w * 3, f"a {frames}-frame video of {out_h}x{out_w} pixels (--scale {scale}, "
                 f"--seconds {seconds:g})", "use a smaller --scale or fewer --seconds")
    return scale


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from sana_wm_cli.eval import load_model_or_explain
    from sana_wm_env.evaluation.candidates import clip_frames
    from sana_wm_env.evaluation.metrics import PSNR_CAP_DB, psnr
    from sana_wm_env.limits import check_positive
    from sana_wm_env.outputs import StagedOutputs, check_output
    from sana_wm_env.scenes import SceneRenderer, make_scene
    from world_model.camera import fov_to_intrinsics
    from world_model.video import from_uint8, to_uint8, write_video

    check_positive(args.seconds, "--seconds")
    check_output(args.out, "--out", suffixes=(".mp4", ".gif"))
    if args.scale is not None and args.scale < 1:
        raise ValueError(f"--scale must be a positive int, got {args.scale}")
    meta = bundle_meta(args.model)
    if meta is not None:  # sizes checked before the model loads
        check_video_size(args.seconds, args.scale, tuple(meta["image_hw"]), float(meta["fps"]))
    set_torch_threads(args.threads)
    model = load_model_or_explain(args.model, args.device)
    scale = check_video_size(args.seconds, args.scale, model.image_hw, model.fps)
    gen = model.streaming_generator()
    h, w = model.image_hw
    frames = clip_frames(gen, int(round(args.seconds * model.fps)) + 1)
    scene = make_scene(args.family, args.scene_seed)
    poses = scripted_path(scene, frames, model.fps)
    k4 = fov_to_intrinsics(model.fov_deg, h, w).double()
    with SceneRenderer(scene, h, w, depth=gen.takes_depth) as renderer:
        truth = np.stack([renderer.render(p, k4.numpy())[0] for p in poses])
        # a geometry-guided model starts from the twin's depth of frame 0, as the envs give it
        depth = {"depth": torch.from_numpy(renderer.render(poses[0], k4.numpy())[1])[None]} if gen.takes_depth else {}
    c2w = torch.from_numpy(poses).float()[None]
    out = [from_uint8(truth[0])[None]]
    t0 = time.perf_counter()
    with torch.inference_mode(), tqdm(total=frames, initial=1, unit="frame", desc="demo rollout") as bar:
        state = gen.start(out[0].to(args.device), k4.float(), c2w=c2w[:, 0], seed=args.seed, **depth)
        done = 1
        while done < frames:
            n = gen.frames_per_step(state)
            chunk, state = gen.step(state, c2w[:, done : done + n])
            out.append(chunk[0].cpu())
            done += n
            bar.update(n)
    elapsed = time.perf_counter() - t0
    video = torch.cat(out)[:frames]
    generated = to_uint8(video)
    with StagedOutputs() as outputs:  # a failed write leaves no half video under --out
        write_video(side_by_side(generated, truth, scale, f"generated ({model.name})", "ground truth (twin render)",
                                 model.fps), outputs.stage(args.out), model.fps)
    gen01 = (video.double().clamp(-1, 1) + 1) / 2
    gt01 = torch.from_numpy(truth).movedim(-1, -3).double() / 255.0
    per_frame = psnr(gen01[1:], gt01[1:], max_db=PSNR_CAP_DB).numpy()
    still = psnr(gt01[:1].expand_as(gt01[1:]), gt01[1:], max_db=PSNR_CAP_DB).numpy()  # repeat-first baseline
    bins, base = {}, {}
    for lo, hi in ((1, 8), (9, 32), (33, 128), (129, frames - 1)):
        if lo <= frames - 1 and lo <= hi and (lo <= 128 or hi - lo >= 15):  # no tiny tail bin
            key = f"{lo}-{min(hi, frames - 1)}"
            bins[key] = round(float(per_frame[lo - 1 : hi].mean()), 2)
            base[key] = round(float(still[lo - 1 : hi].mean()), 2)
    summary = {
        "out": str(args.out), "frames": frames, "seconds_of_video": round((frames - 1) / model.fps, 2),
        "size": [h, w], "model": model.name, "scene": f"{scene.family}/{scene.seed}",
        "generation_seconds": round(elapsed, 2), "frames_per_second": round((frames - 1) / elapsed, 2),
        "psnr_db_by_horizon": bins, "repeat_first_frame_psnr_db_by_horizon": base,
    }
    print(f"wrote {args.out}: left = generated by {model.name} from the first frame and the camera path only, "
          f"right = the twin world rendered at the same poses ({frames} frames at {model.fps:g} fps).")
    print("PSNR (dB) of generated vs ground-truth frames, averaged over frames 1-8, 9-32, ... after the first "
          "frame (higher = closer to the real scene; identical frames are capped at 100):")
    for k in bins:
        print(f"  frames {k:>8}: model {bins[k]:6.2f} dB   repeat-the-first-frame baseline {base[k]:6.2f} dB")
    print("A model that follows the camera beats the baseline; one that ignores the camera scores about the same.")
    print(f"streaming speed: {summary['frames_per_second']} frames/s on {args.device}")
    print(json.dumps(summary))
    return 0
