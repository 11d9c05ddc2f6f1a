"""``sana-wm replay``: render a recorded trajectory (drone flight, handheld camera, robot bag) from a first image.

The trajectory is read (TUM, EuRoC CSV, KITTI, ROS 2 bag, .npz/.npy; --format auto), cut to a window
(--start/--duration, seconds of the recording), resampled to the model's frame rate (--time-scale S plays it
S times slower), turned into OpenCV camera poses (REP-103 body poses go through --mount) and made relative to its
first pose. The model streams it chunk by chunk with constant memory; the mp4 is written as it goes.

Writes OUT (mp4), OUT.tum (the camera poses actually rendered, relative to the first one, stamped in the
recording's clock: compare with `evo_ape tum GROUND_TRUTH OUT.tum -as`) and OUT.json (model, intrinsics, mount,
frame count, timing). --twin FAMILY/SEED also renders a twin world along the same path (placed level inside the
scene; its first render is the first frame, so --image is not used) and writes generated | ground truth side by
side. Stamp gaps up to --max-gap seconds are interpolated, longer ones fail.

The outputs are checked before the model loads (none may be a folder or replace an input: for flight.tum use
an --out other than flight.mp4) and written under temporary names, renamed together when the run succeeds: a
failed or interrupted run leaves an earlier run's files as they were (and a --save-rollout marked partial).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sana_wm_env.outputs import StagedOutputs

from . import add_ray_argument, bundle_meta, set_torch_threads

CONVENTION_CHOICES = ("opencv", "rep103")


def register(subparsers: argparse._SubParsersAction) -> None:
    from sana_wm_env.limits import MAX_FRAMES
    from sana_wm_env.replay import MAX_GAP_S
    from sana_wm_env.trajectories import FORMATS

    p = subparsers.add_parser(
        "replay", help="render a recorded trajectory with the world model (mp4 + TUM + JSON)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("trajectory", type=Path, help="trajectory file or ROS 2 bag (with --ray also a folder of them "
                                                 "or a quoted glob pattern)")
    p.add_argument("--image", type=Path, default=None, help="first frame (png/jpg); resized and centre-cropped")
    p.add_argument("--depth", type=Path, default=None,
                   help="depth map of --image for geometry-guided models (.npy metres or 16-bit .png, see "
                        "--depth-scale; 0 = no data). Without it such a model generates it (--twin: the twin's)")
    p.add_argument("--depth-scale", type=float, default=1000.0,
                   help="16-bit --depth PNG units per metre (default 1000 = millimetres; TUM RGB-D uses 5000)")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="trajectory format (default: auto)")
    p.add_argument("--topic", default=None, help="bag topic (Odometry, Pose*, TF child frame with --child-frame)")
    p.add_argument("--parent-frame", default=None, help="bag /tf: parent frame")
    p.add_argument("--child-frame", default=None, help="bag /tf: child frame")
    p.add_argument("--convention", choices=CONVENTION_CHOICES, default=None,
                   help="body convention when the file does not state it (TUM): opencv = camera poses, rep103 = "
                        "robot body poses")
    k = p.add_mutually_exclusive_group()
    k.add_argument("--intrinsics", default=None, help="fx,fy,cx,cy of --image in its own pixels")
    k.add_argument("--fov", type=float, default=None, help="horizontal field of view of --image in degrees "
                   "(default: the model's)")
    p.add_argument("--mount", default=None,
                   help="camera on a REP-103 body: x,y,z (m),roll,pitch,yaw (deg; +pitch looks down). Default: "
                        "at the body origin looking along +x")
    p.add_argument("--fps", type=float, default=None, help="frame rate to render at (default: the model's)")
    p.add_argument("--time-scale", type=float, default=1.0, help="play back S times slower (>1) or faster (<1)")
    p.add_argument("--start", type=float, default=0.0, help="window start, seconds into the recording")
    p.add_argument("--duration", type=float, default=None, help="window length in recorded seconds (default: all)")
    p.add_argument("--max-gap", type=float, default=MAX_GAP_S,
                   help="interpolate stamp gaps up to this many seconds, fail on longer (default: %(default)s)")
    p.add_argument("--max-frames", type=int, default=MAX_FRAMES,
                   help="refuse a path of more frames than this, counted before anything loads (default: "
                        "%(default)s): a slip in --fps or --time-scale fails at once")
    p.add_argument("--twin", default=None, metavar="FAMILY/SEED", help="also render this twin world (e.g. rooms/0)")
    p.add_argument("--refine", nargs="?", const="bundled", default=None, metavar="REFINER",
                   help="refine the stage-1 latents: a refiner folder (default: the model's shipped refiner)")
    p.add_argument("--prompt", default=None, help="text prompt for refiners that take one")
    p.add_argument("--save-rollout", type=Path, default=None, metavar="DIR",
                   help="also record the stage-1 rollout (frames, poses, latents; docs/rollouts.md) for "
                        "`sana-wm refine`")
    p.add_argument("--model", default="default", help="world-model bundle (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("outputs/replay.mp4"),
                   help="mp4 path (default: %(default)s); with --ray a folder")
    add_ray_argument(p)
    p.epilog = ("With --ray, TRAJECTORY may be a folder (its trajectory files and bags) or a quoted glob pattern, "
                "and --out is a folder: every flight is one Ray task (one core, torch on --threads threads, default "
                "1; one GPU with --device cuda) that writes OUT/NAME.mp4, .tum and .json exactly as a local replay "
                "of that flight would, and OUT/replay_summary.json lists every flight (exit code 1 if one failed). "
                "The trajectories, --image and --out must be on storage every node reads and writes. Put --ray "
                "after TRAJECTORY (or give it a value): `--ray flights/` reads the folder as the address.")
    p.set_defaults(func=run)


def parse_mount(text: str | None) -> tuple[np.ndarray | None, list[float] | None]:
    """``x,y,z,roll,pitch,yaw`` (metres, degrees) -> (T_body_cam, the six numbers)."""
    if text is None:
        return None, None
    from sana_wm_env.trajectories import camera_mount

    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--mount must be x,y,z,roll,pitch,yaw (metres, degrees), got {text!r}") from None
    if len(vals) != 6:
        raise ValueError(f"--mount must be 6 numbers x,y,z,roll,pitch,yaw (metres, degrees), got {text!r}")
    return camera_mount(vals[:3], np.radians(vals[3:])), vals


def parse_twin(text: str):
    from sana_wm_env.scenes import FAMILIES, make_scene

    family, _, seed = text.partition("/")
    if family not in FAMILIES or not seed.isdigit():
        raise ValueError(f"--twin must be FAMILY/SEED with FAMILY one of {', '.join(FAMILIES)}, got {text!r}")
    return make_scene(family, int(seed))


def sidecar_paths(out: Path) -> tuple[Path, Path]:
    """(TUM path, JSON path) written next to the video."""
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out must be an .mp4 path, got {str(out)!r}")
    return out.with_suffix(".tum"), out.with_suffix(".json")


def check_outputs(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """Check --out, its sidecars and --save-rollout before any work; returns (TUM, JSON, stage-1 mp4) paths."""
    from sana_wm_env.outputs import check_output
    from sana_wm_env.rollouts import check_rollout_folder

    tum_path, json_path = sidecar_paths(args.out)
    stage1_path = args.out.with_name(args.out.stem + "_stage1.mp4")
    inputs = (("trajectory", args.trajectory), ("--image", args.image), ("--depth", args.depth))
    check_output(args.out, "--out", inputs=inputs)
    for what, p in (("TUM sidecar", tum_path), ("JSON sidecar", json_path), ("stage-1 video", stage1_path)):
        check_output(p, "--out", inputs=inputs, subject=f"the {what} {p} of --out {args.out}")
    if args.save_rollout is not None:
        check_rollout_folder(args.save_rollout, "--save-rollout", inputs=inputs)
    return tum_path, json_path, stage1_path


def run(args: argparse.Namespace) -> int:
    if args.ray is not None:
        return run_flights(args)
    with StagedOutputs() as outputs:  # renamed to their final names together on success, deleted on failure
        return _run(args, outputs)


def _run(args: argparse.Namespace, outputs: StagedOutputs) -> int:
    import torch
    from tqdm import tqdm

    from sana_wm_cli.demo import side_by_side
    from sana_wm_cli.eval import load_model_or_explain
    from sana_wm_cli.generate import load_depth_for, load_image
    from sana_wm_env.evaluation.metrics import PSNR_CAP_DB, psnr
    from sana_wm_env.limits import check_fps
    from sana_wm_env.replay import check_length, path_frames, place_in_scene, prepare_path, stream_replay
    from sana_wm_env.trajectories import load, save
    from world_model.camera import fov_to_intrinsics
    from world_model.video import VideoWriter, from_uint8, to_uint8

    # ---- everything that can be wrong with the input fails here, before any generation ----
    tum_path, json_path, stage1_path = check_outputs(args)
    set_torch_threads(args.threads)
    if args.twin is None and args.image is None:
        raise ValueError("--image FIRST.png is required (or --twin FAMILY/SEED, whose render is the first frame)")
    if args.twin is not None and (args.image is not None or args.intrinsics is not None or args.fov is not None):
        raise ValueError("--twin renders the first frame itself with the model's camera; drop --image/--intrinsics/"
                         "--fov (or drop --twin to start from your image)")
    mount, mount_vals = parse_mount(args.mount)
    if args.fps is not None:
        check_fps(args.fps, "--fps")
    traj = load(args.trajectory, format=args.format, topic=args.topic, parent_frame=args.parent_frame,
                child_frame=args.child_frame)
    if traj.convention == "unknown" and args.convention is not None:
        traj = traj.with_convention(args.convention)
    elif args.convention is not None and args.convention != traj.convention:
        raise ValueError(f"--convention {args.convention}: {args.trajectory} states its convention as "
                         f"{traj.convention!r}")
    if traj.convention == "unknown":
        raise ValueError(f"{args.trajectory} does not say whether it holds camera or body poses; pass --convention "
                         "opencv (camera: x right, y down, z forward) or rep103 (robot body: x forward, y left, z up)")
    window = dict(time_scale=args.time_scale, start=args.start, duration=args.duration, max_frames=args.max_frames)
    meta_fps = (bundle_meta(args.model) or {}).get("fps") if args.fps is None else args.fps
    if meta_fps is not None:  # the frame count, before the model loads
        path_frames(traj, fps=float(meta_fps), **window)
    model = load_model_or_explain(args.model, args.device)
    fps = model.fps if args.fps is None else args.fps
    h, w = model.image_hw
    path = prepare_path(traj, fps=fps, mount=mount, max_gap=args.max_gap, **window)
    gen = model.streaming_generator()
    check_length(gen, len(path))
    scene = world = None
    if args.twin is not None:
        scene = parse_twin(args.twin)
        world = place_in_scene(scene, path.c2w, seed=args.seed)
        k4 = fov_to_intrinsics(model.fov_deg, h, w).float()
        image = None
    else:
        image, k4 = load_image(args.image, (h, w), args.intrinsics, model.fov_deg if args.fov is None else args.fov)
    depth = None
    if args.depth is not None:
        if args.twin is not None:
            raise ValueError("--twin renders the first frame and its depth; drop --depth")
        if not gen.takes_depth:
            raise ValueError(f"--depth: model {model.name!r} does not use depth (it keeps no geometry cache); drop it")
        depth = load_depth_for(args.image, args.depth, (h, w), args.depth_scale)
    refiner = None
    if args.refine is not None:
        from sana_wm_cli.refine import bundled_refiner_path
        from world_model.refiner import kept_pixels_of, load_refiner

        where = bundled_refiner_path({"model": model.name, "model_path": str(model.path) if model.path else None}) \
            if args.refine == "bundled" else args.refine
        refiner = load_refiner(where, device=args.device, what="--refine")
        refiner.check_compatible(model.codec)

    # ---- generation ----
    renderer = None
    stage1_out = stage1_path if refiner is not None else args.out
    if refiner is None:
        outputs.stale.append(stage1_path)  # an earlier run's, which this run's JSON would not describe
    latents: list[torch.Tensor] = []
    shown: list[torch.Tensor] = []  # show_cache models: stage-1 frames and where they show frame 0's points
    shown_frames: list[torch.Tensor] = []
    psnr_sum, psnr_n = 0.0, 0
    scale = max(1, 256 // h)
    writer = VideoWriter(outputs.stage(stage1_out), fps)
    recorder = None
    if args.save_rollout is not None:
        from sana_wm_env.rollouts import RolloutWriter

        recorder = RolloutWriter(args.save_rollout, fps=fps, intrinsics=k4.double().numpy(), image_hw=(h, w),
                                 kind="replay", model=model.name, model_path=str(model.path) if model.path else None,
                                 seed=args.seed, codec=model.codec.to_config(),
                                 extra={"trajectory": str(args.trajectory), "twin": args.twin})
    try:
        if scene is not None:
            from sana_wm_env.scenes import SceneRenderer

            renderer = SceneRenderer(scene, h, w, depth=gen.takes_depth)
            first_rgb, first_depth = renderer.render(world[0], k4.double().numpy())
            image = from_uint8(first_rgb)[None]
            if gen.takes_depth:
                depth = torch.from_numpy(first_depth)[None]

        def on_chunk(frames, first, state):
            nonlocal psnr_sum, psnr_n
            u8 = to_uint8(frames)
            mask = getattr(state, "last_shown_first", None) if first > 0 else None
            mask = None if mask is None else mask[0, : len(frames)].cpu()  # where frame 0's points show
            if refiner is not None and first > 0:
                latents.append(state.latents.cpu())
                if mask is not None:
                    shown_frames.append(frames.float().cpu()[None])
                    shown.append(mask[None])
            if recorder is not None:
                recorder.add_frames(u8, path.c2w[first : first + len(u8)],
                                    path.source_times[first : first + len(u8)] - path.source_times[0])
                if first > 0:
                    recorder.add_latents(state.latents)
                    if mask is not None:
                        recorder.add_shown_first(mask.numpy())
            if renderer is None:
                writer.write(u8)
                return
            truth = np.stack([renderer.render(world[first + i], k4.double().numpy())[0] for i in range(len(u8))])
            writer.write(side_by_side(u8, truth, scale, f"generated ({model.name})", f"twin {args.twin}", fps,
                                      first_index=first))
            if first > 0:
                gt = torch.from_numpy(truth).movedim(-1, -3).double() / 255.0
                vals = psnr((frames.double().clamp(-1, 1) + 1) / 2, gt, max_db=PSNR_CAP_DB)
                psnr_sum, psnr_n = psnr_sum + float(vals.sum()), psnr_n + len(vals)

        t0 = time.perf_counter()
        with torch.inference_mode(), tqdm(total=len(path), initial=1, unit="frame", desc="replay") as bar:
            stats = stream_replay(gen, image.to(args.device), k4, path.c2w, seed=args.seed, on_chunk=on_chunk,
                                  progress=lambda done, total: bar.update(done - bar.n), depth=depth)
        elapsed = time.perf_counter() - t0
    except BaseException as err:
        if recorder is not None:
            recorder.abort(err)  # kept, marked partial: readers refuse it
        raise
    finally:
        writer.close()
        if recorder is not None:
            recorder.close()
        if renderer is not None:
            renderer.close()
    refine_info = None
    if refiner is not None:
        t1 = time.perf_counter()
        z = torch.cat(latents, dim=2)
        full = model.codec.num_pixel_frames(z.shape[2])  # the held poses of a padded tail included
        c2w = np.concatenate([path.c2w, np.repeat(path.c2w[-1:], full - len(path), axis=0)])
        with VideoWriter(outputs.stage(args.out), fps) as refined_writer:
            keep = kept_pixels_of(shown_frames, shown, image)  # frame 0's points stay as shown
            n = refiner.write_refined(z, model.codec, refined_writer, num_frames=len(path), fps=fps,
                                      prompt=args.prompt, seed=args.seed, c2w=torch.from_numpy(c2w)[None],
                                      intrinsics=k4, keep=keep)
        refine_info = {"refiner": refiner.describe(), "seconds": round(time.perf_counter() - t1, 3),
                       "frames": n, "stage1_video": str(stage1_out)}
    save(path.trajectory(), outputs.stage(tum_path), format="tum")
    summary = {
        "out": str(args.out), "tum": str(tum_path), "model": model.name,
        "model_path": str(model.path) if model.path else None, "frames": stats["frames"], "fps": fps,
        "size": [h, w], "intrinsics": [round(float(v), 6) for v in k4],
        "intrinsics_source": "twin camera (model fov)" if scene is not None else (
            "--intrinsics" if args.intrinsics else f"--fov {model.fov_deg if args.fov is None else args.fov}"),
        "mount_xyz_rpy_deg": mount_vals, "mount_T_body_cam": None if mount is None else mount.round(9).tolist(),
        "trajectory": {**path.info, "path": str(args.trajectory), "format": args.format, "topic": args.topic,
                       "rendered_seconds_of_recording": round(float(path.source_times[-1] - path.source_times[0]), 6)},
        "seed": args.seed, "chunks": stats["chunks"], "padded_tail_frames": stats["padded_tail_frames"],
        "generator_state_bytes_max": max(stats["state_bytes"]),
        "seconds": round(elapsed, 3), "frames_per_second": round((stats["frames"] - 1) / elapsed, 2),
        "device": args.device, "twin": None, "refine": refine_info,
        "rollout": None if args.save_rollout is None else str(args.save_rollout),
    }
    if scene is not None:
        summary["twin"] = {"scene": args.twin, "start_c2w": world[0].round(9).tolist(),
                           "psnr_db_mean": round(psnr_sum / max(1, psnr_n), 3), "layout": "generated | twin render"}
    outputs.stage(json_path).write_text(json.dumps(summary, indent=2) + "\n")  # staged last: marks the run done
    outputs.commit()
    print(f"wrote {args.out} ({stats['frames']} frames at {fps:g} fps), {tum_path} and {json_path}")
    print(json.dumps({k: summary[k] for k in ("out", "frames", "seconds", "frames_per_second")}))
    return 0


# ------------------------------------------------------------------------------------------ many flights on Ray
SUMMARY_NAME = "replay_summary.json"
TRAJECTORY_SUFFIXES = (".txt", ".tum", ".csv", ".mcap", ".db3", ".bag", ".npz", ".npy")


def find_flights(where: Path) -> list[Path]:
    """The trajectories ``where`` names: a file, a folder's trajectory files and bags (sorted; files whose
    format cannot be told, such as a README or KITTI's times file, are left out) or a glob pattern's matches."""
    import glob

    from sana_wm_env.trajectories import detect_format

    if any(c in str(where) for c in "*?["):
        found = [Path(p) for p in sorted(glob.glob(str(where)))]
    elif where.is_dir() and not (where / "metadata.yaml").is_file():
        found = sorted(p for p in where.iterdir() if p.suffix in TRAJECTORY_SUFFIXES
                       or (p.is_dir() and (p / "metadata.yaml").is_file()))
    elif where.exists():
        return [where]
    else:
        raise FileNotFoundError(f"trajectory: no such file, folder or glob match: {where}")
    flights = []
    for p in found:
        try:
            detect_format(p)
        except ValueError:
            continue
        flights.append(p)
    if not flights:
        raise FileNotFoundError(f"trajectory: no trajectory files in {where}")
    return flights


def flight_outputs(flights: list[Path], out: Path) -> list[Path]:
    """The mp4 path under the folder ``out`` of each flight: its file name without suffix (distinct)."""
    names = [f.stem if f.suffix in TRAJECTORY_SUFFIXES else f.name for f in flights]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"trajectory: several flights would write {', '.join(twice)}.mp4 in --out {out}; rename "
                         "them or replay them in separate runs")
    return [out / f"{n}.mp4" for n in names]


def _replay_flight(args: argparse.Namespace) -> dict:
    """A Ray task: the local replay of one flight; its JSON sidecar, or the one-line error of bad input."""
    try:
        run(args)
    except (ValueError, FileNotFoundError) as err:
        return {"trajectory": str(args.trajectory), "out": str(args.out), "error": str(err)}
    return {"trajectory": str(args.trajectory), "out": str(args.out),
            "summary": json.loads(sidecar_paths(args.out)[1].read_text())}


def run_flights(args: argparse.Namespace) -> int:
    """``sana-wm replay --ray``: every flight of TRAJECTORY as a Ray task, then one summary JSON."""
    from sana_wm_env.distributed import connect, require_ray, run_tasks, scheduling_gpus
    from sana_wm_env.outputs import PARTIAL_TAG, check_output, write_text_atomic

    require_ray()
    if args.out.suffix.lower() == ".mp4":
        raise ValueError(f"--out: with --ray, a folder for the flights' outputs (not {args.out})")
    if args.save_rollout is not None:
        raise ValueError("--save-rollout records one flight; replay that flight without --ray")
    out = check_output(args.out, "--out", kind="dir")
    flights = find_flights(args.trajectory)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for flight, mp4 in zip(flights, flight_outputs(flights, out)):
        task_args = argparse.Namespace(**{**vars(args), "trajectory": flight, "out": mp4, "ray": None})
        check_outputs(task_args)  # before any task runs
        jobs.append((task_args,))
    t0 = time.perf_counter()
    with connect(args.ray):
        done = run_tasks(_replay_flight, jobs, desc="flights", unit="flight", threads=args.threads or 1,
                         num_gpus=scheduling_gpus(args.device))
    for (task_args,) in jobs:  # temporary files of a task whose worker died (the task ran again)
        for leftover in out.glob(f".{task_args.out.stem}{PARTIAL_TAG}*"):
            leftover.unlink()
    failed = [d for d in done if "error" in d]
    summary = {"format": "sana-wm-env/replay-flights", "version": 1, "trajectory": str(args.trajectory),
               "flights": done, "replayed": len(done) - len(failed), "failed": len(failed),
               "seconds": round(time.perf_counter() - t0, 3)}
    path = write_text_atomic(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    for d in failed:
        print(f"sana-wm replay: {d['trajectory']}: error: {d['error']}")
    print(f"replayed {summary['replayed']} of {len(done)} flight(s) into {out}; summary {path}")
    return 1 if failed else 0
