"""Replay a recorded trajectory through a world model, chunk by chunk, for any length.

``prepare_path`` turns a :class:`Trajectory` (REP-103 body poses with a camera mount, or OpenCV camera poses) into
the camera path the model renders: a time window of it, resampled at the model's frame rate (optionally slowed
down or sped up), converted to OpenCV camera-to-world and made relative to its first pose. Stamp gaps up to
``max_gap`` seconds are interpolated (translation linearly, rotation by slerp); a longer gap fails and says where.
``path_frames`` counts the frames of that path from the arguments alone and refuses more than ``max_frames``
(default :data:`sana_wm_env.limits.MAX_FRAMES`), so a slip such as fps=100000 fails before anything is resampled.

``stream_replay`` runs a causal generator along that path and hands every finished chunk to a callback (write it
to an mp4, compare it to a twin render, keep its latents for a refiner): nothing grows with the path length but
the pose array. A tail shorter than one chunk is rendered by holding the last pose for the missing frames, whose
frames are then dropped (``padded_tail_frames`` says how many).

``place_in_scene`` puts a relative camera path into a twin world (level start camera, searched position and
heading with clearance to every surface), for ground-truth renders along the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sana_wm_env.limits import MAX_FRAMES, check_frames
from sana_wm_env.trajectories import OPENCV_IN_REP103, Trajectory
from world_model.camera import rpy_to_rotmat
from world_model.generators import GeneratorState, StreamingGenerator

MAX_GAP_S = 0.25  # seconds between recorded stamps interpolated without complaint
PLACE_CLEARANCE = 0.25  # metres from every surface for a twin placement


@dataclass
class ReplayPath:
    """What ``prepare_path`` gives: OpenCV camera poses relative to frame 0 at ``fps``, and their source stamps."""

    c2w: np.ndarray  # (N, 4, 4)
    source_times: np.ndarray  # (N,) seconds in the recording's clock
    fps: float
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.c2w)

    def trajectory(self) -> Trajectory:
        """The rendered camera poses as a Trajectory (stamps in the recording's clock), e.g. to save as TUM."""
        return Trajectory(timestamps=self.source_times, poses=self.c2w, convention="opencv", frame_id="camera@0",
                          child_frame_id="camera")


def _window(traj: Trajectory, start: float, duration: float | None) -> tuple[float, float]:
    """The window ``[a, b]`` (stamps of the recording) that ``start``/``duration`` select."""
    if len(traj) < 2:
        raise ValueError(f"trajectory has {len(traj)} pose; a replay needs at least 2")
    t = traj.timestamps
    if not np.isfinite(start) or start < 0 or start >= traj.duration:
        raise ValueError(f"start must be in [0, {traj.duration:.3f}) seconds (the recording's length; --start), "
                         f"got {start!r}")
    if duration is not None and (not np.isfinite(duration) or duration <= 0):
        raise ValueError(f"duration must be a positive number of seconds (--duration), got {duration!r}")
    a = t[0] + start
    return a, t[-1] if duration is None else min(t[-1], a + duration)


def path_frames(traj: Trajectory, *, fps: float, time_scale: float = 1.0, start: float = 0.0,
                duration: float | None = None, max_frames: int = MAX_FRAMES) -> int:
    """Frames of the path :func:`prepare_path` makes with these arguments, counted without resampling anything;
    more than ``max_frames`` raises ValueError with the count, the limit and what to change."""
    for name, flag, v in (("fps", "--fps", fps), ("time_scale", "--time-scale", time_scale)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive number ({flag}), got {v!r}")
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive int (--max-frames), got {max_frames!r}")
    a, b = _window(traj, start, duration)
    rate = fps * time_scale  # frames per recorded second
    n = int(min(np.floor((b - a) * rate + 1e-9), 2.0**62)) + 1
    return check_frames(n, f"a replay of {b - a:.3f} recorded seconds at fps {fps:g} (--fps) x time scale "
                           f"{time_scale:g} (--time-scale)",
                        "lower --fps or --time-scale, shorten the window (--start/--duration), or raise the limit "
                        "with --max-frames", limit=max_frames)


def prepare_path(
    traj: Trajectory,
    *,
    fps: float,
    time_scale: float = 1.0,
    start: float = 0.0,
    duration: float | None = None,
    mount: np.ndarray | None = None,
    max_gap: float = MAX_GAP_S,
    max_frames: int = MAX_FRAMES,
) -> ReplayPath:
    """The camera path to render from ``traj`` (see module docstring).

    ``start``/``duration``: window in seconds of the recording (from its first stamp; default: all of it).
    ``time_scale``: >1 plays back slower (more frames per recorded second), <1 faster. ``mount``: ``T_body_cam``
    for a REP-103 body trajectory (default: camera at the body origin looking along +x); not allowed for a
    camera (OpenCV) trajectory. A trajectory of unknown convention must be declared first. More than
    ``max_frames`` frames raise ValueError (see :func:`path_frames`).
    """
    if not isinstance(traj, Trajectory):
        raise ValueError(f"traj must be a Trajectory, got {type(traj).__name__}")
    for name, v in (("fps", fps), ("time_scale", time_scale), ("max_gap", max_gap)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    if traj.convention == "unknown":
        raise ValueError(
            "trajectory: its body convention is unknown (a TUM file without a sana-wm header?); state it: "
            "'opencv' if the poses are of a camera (x right, y down, z forward), 'rep103' if of a robot body "
            "(x forward, y left, z up)"
        )
    if traj.convention == "opencv" and mount is not None:
        raise ValueError("mount: the trajectory already holds OpenCV camera poses; a camera mount applies only to "
                         "'rep103' body trajectories")
    n = path_frames(traj, fps=fps, time_scale=time_scale, start=start, duration=duration, max_frames=max_frames)
    t = traj.timestamps
    a, b = _window(traj, start, duration)
    # Gaps between the stamps that bracket the window.
    i0 = max(0, int(np.searchsorted(t, a, side="right")) - 1)
    i1 = min(len(t) - 1, int(np.searchsorted(t, b, side="left")))
    gaps = np.diff(t[i0 : i1 + 1])
    worst = int(np.argmax(gaps)) if len(gaps) else 0
    largest = float(gaps[worst]) if len(gaps) else 0.0
    if largest > max_gap:
        j = i0 + worst
        raise ValueError(
            f"trajectory: {largest:.3f} s gap between stamps {float(t[j])!r} and {float(t[j + 1])!r} "
            f"({t[j] - t[0]:.2f} s into the recording); replay interpolates gaps up to max_gap={max_gap:g} s and fails "
            "on longer ones. Raise max_gap (--max-gap) to interpolate across it, or choose a window without it "
            "(--start/--duration)"
        )
    rate = fps * time_scale  # frames per recorded second
    times = np.minimum(a + np.arange(n) / rate, b)
    sampled = traj.resample(times=times)
    camera = sampled.to_opencv(mount) if traj.convention == "rep103" else sampled
    rel = camera.recenter()
    info = {
        "source": traj.metadata.get("source"), "convention": traj.convention,
        "window_s": [round(a - t[0], 6), round(b - t[0], 6)], "time_scale": float(time_scale),
        "largest_stamp_gap_s": round(largest, 6), "max_gap_s": float(max_gap),
        "interpolated": "translation linear, rotation slerp between recorded stamps",
    }
    return ReplayPath(c2w=rel.poses, source_times=times, fps=float(fps), info=info)


def check_length(gen: StreamingGenerator, num_frames: int) -> None:
    """Fail unless a path of ``num_frames`` covers the first chunk (frame 0 plus the first step)."""
    need = gen.valid_num_frames(1)
    if num_frames < need:
        raise ValueError(
            f"trajectory: the window gives {num_frames} frame(s) at the model's frame rate, shorter than one chunk "
            f"({need} frames: the first frame plus the first generator step); use a longer window or a larger "
            "time scale"
        )


ChunkFn = Callable[[torch.Tensor, int, GeneratorState], None]


@torch.no_grad()
def stream_replay(
    gen: StreamingGenerator,
    image: torch.Tensor,
    intrinsics,
    c2w: np.ndarray,
    *,
    seed: int = 0,
    on_chunk: ChunkFn | None = None,
    progress: Callable[[int, int], None] | None = None,
    depth: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Render ``c2w (N, 4, 4)`` (frame 0 = ``image (1, 3, H, W)`` in [-1, 1], with ``depth (1, H, W)`` metres for
    geometry-guided models, which otherwise generate it) chunk by chunk.

    ``on_chunk(frames (n, 3, H, W), first_index, state)`` is called with frame 0 (``first_index=0``, the image)
    and then with each step's frames (padding dropped); ``state.latents`` holds that step's latents. Returns
    ``{"frames", "chunks", "padded_tail_frames", "state_bytes"}`` (generator cache bytes after each chunk).
    """
    poses = torch.as_tensor(np.asarray(c2w), dtype=torch.float32)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"c2w must have shape (N, 4, 4), got {tuple(poses.shape)}")
    n = poses.shape[0]
    check_length(gen, n)
    state = gen.start(image, intrinsics, c2w=poses[0], seed=seed, **({} if depth is None else {"depth": depth}))
    if on_chunk is not None:
        on_chunk(image[:1, None][0].float().clamp(-1, 1).cpu(), 0, state)
    done, padded, state_bytes = 1, 0, []
    while done < n:
        k = gen.frames_per_step(state)
        chunk = poses[done : done + k]
        real = chunk.shape[0]
        if real < k:  # hold the last pose; those frames are dropped
            padded = k - real
            chunk = torch.cat([chunk, chunk[-1:].expand(padded, 4, 4)])
        frames, state = gen.step(state, chunk[None])
        if on_chunk is not None:
            on_chunk(frames[0, :real].cpu(), done, state)
        done += real
        state_bytes.append(state.nbytes())
        if progress is not None:
            progress(done, n)
    return {"frames": n, "chunks": state.chunk_index, "padded_tail_frames": padded, "state_bytes": state_bytes}


def place_in_scene(scene, rel_c2w: np.ndarray, *, clearance: float = PLACE_CLEARANCE, tries: int = 4000,
                   seed: int = 0) -> np.ndarray:
    """World poses ``start @ rel_c2w`` inside ``scene`` for a relative OpenCV path (frame 0 = identity).

    The start camera is level (looking horizontally) at a searched position, height and heading such that every
    camera centre is inside the scene and ``clearance`` metres from all surfaces. Raises ValueError if none of
    ``tries`` candidates fits (the message gives the path's extent and the scene's).
    """
    rel = np.asarray(rel_c2w, dtype=np.float64)
    lo, hi = scene.bounds
    heights = [h for pair in scene.camera_heights.values() for h in pair]
    rng = np.random.default_rng([0x5E9A, scene.seed, seed])
    for _ in range(tries):
        xy = rng.uniform(lo[:2], hi[:2])
        psi = rng.uniform(0, 2 * np.pi)
        z = float(scene.ground_height(xy[None])[0]) + rng.uniform(min(heights), max(heights))
        start = np.eye(4)
        start[:3, :3] = rpy_to_rotmat([0.0, 0.0, psi]).numpy() @ OPENCV_IN_REP103
        start[:3, 3] = (xy[0], xy[1], z)
        world = start @ rel
        if scene.free(world[:, :3, 3], clearance).all():
            return world
    extent = np.ptp(rel[:, :3, 3], axis=0)
    raise ValueError(
        f"twin: the path (extent {np.round(extent, 2).tolist()} m in the first camera's x right, y down, "
        f"z forward axes) does not fit in {scene.family} scene {scene.seed} (bounds {np.round(lo, 1).tolist()} to "
        f"{np.round(hi, 1).tolist()} m) with {clearance} m clearance; try another scene or a shorter window"
    )
