"""A live world-model camera: timestamped robot poses in, generated camera frames out (no ROS import).

    cam = LivePoseCamera("default", mount=camera_mount((0.1, 0, 0.2)))
    cam.set_first_frame(first_image)                # uint8 (H, W, 3); intrinsics or the model's FoV
    cam.add_pose(stamp, position, quaternion_xyzw)  # REP-103 body pose in the world frame, any thread
    frames = cam.process(timeout=0.1)               # the worker: one unit of work -> [LiveFrame]

Pipeline: validate (NaN, duplicate and out-of-order stamps are dropped and counted) -> resample to the model's
fps on a uniform clock ``t0 + k / fps`` (``t0`` = the first pose after the first frame; linear translation,
slerp rotation, as ``Trajectory.resample``) -> camera poses ``T_world_body @ mount`` -> chunks of
``frames_per_step`` poses -> the streaming generator. Each frame carries the stamp of the pose it depicts, so
stamps stay true when generation runs slower than real time; pending frames are bounded by ``max_lag``
seconds (older ones are dropped and counted). A stamp gap longer than ``max_gap`` holds the stream (no frames
are invented across the gap) and is counted. A stamp more than ``max_gap`` *behind* the newest pose means the
pose clock jumped back (a looping bag, a simulator restart): the stream restarts from the first frame at that
pose and ``clock_jumps`` counts it; a smaller step back is an out-of-order pose (dropped) until ``request_reset``,
after which the next pose restarts the clock whatever its stamp. ``imagine`` runs a path on a forked generator
state: the live stream is not disturbed.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sana_wm_env.envs.core import load_image, resolve_model
from sana_wm_env.trajectories import Trajectory, camera_mount
from sana_wm_env.trajectories.tf import interpolate_edge, pose_matrix
from world_model.bundles import WorldModel
from world_model.camera import fov_to_intrinsics, validate_c2w
from world_model.generators import GeneratorState
from world_model.video import from_uint8, to_uint8

QUAT_NORM_TOL = 1e-2
POSE_STATUSES = ("accepted", "waiting_for_first_frame", "gap", "clock_jump", "nan", "invalid", "duplicate",
                 "out_of_order")


def _depth_kwargs(depth: np.ndarray | None) -> dict:
    return {} if depth is None else {"depth": torch.as_tensor(depth, dtype=torch.float32)[None]}


@dataclass
class LiveFrame:
    """One output frame: ``image`` uint8 (H, W, 3) depicting camera pose ``c2w`` (OpenCV camera-to-world) at
    pose time ``stamp`` (seconds). ``latency``: wall seconds from the arrival of the frame's pose to output."""

    stamp: float
    image: np.ndarray
    c2w: np.ndarray
    index: int
    imagined: bool = False
    latency: float | None = None


@dataclass
class _Imagine:
    stamps: np.ndarray
    c2w: np.ndarray
    request_id: int


class LivePoseCamera:
    """The streaming generator behind a live pose stream (thread-safe: poses from any thread, one worker)."""

    def __init__(
        self,
        model: WorldModel | str | Path = "default",
        *,
        mount=None,
        fps: float | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        max_gap: float = 0.5,
        max_lag: float = 2.0,
        max_imagine_frames: int = 256,
        max_imagine_queue: int = 2,
    ) -> None:
        for name, v in (("max_gap", max_gap), ("max_lag", max_lag)):
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
        if not isinstance(max_imagine_frames, int) or max_imagine_frames < 1:
            raise ValueError(f"max_imagine_frames must be an int >= 1, got {max_imagine_frames!r}")
        self.model = resolve_model(model, device)
        self.generator = self.model.streaming_generator()
        self.fps = float(self.model.fps if fps is None else fps)
        if not math.isfinite(self.fps) or self.fps <= 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.mount = camera_mount() if mount is None else validate_c2w(
            np.asarray(mount, dtype=np.float64), "mount").numpy()
        self.image_hw = tuple(int(x) for x in self.model.image_hw)
        self.seed = int(seed)
        self.max_gap, self.max_lag = float(max_gap), float(max_lag)
        self.max_imagine_frames = max_imagine_frames
        cfg, s = self.generator.config, self.generator.codec.temporal_stride
        self.chunk_frames = cfg.chunk_size * s
        self.first_chunk_frames = (cfg.first_chunk_size - 1) * s
        # pending frames are bounded: max_lag seconds of frames plus one chunk
        self.max_pending = int(math.ceil(self.max_lag * self.fps)) + max(self.chunk_frames, self.first_chunk_frames)

        self._cond = threading.Condition()
        self._closed = False
        self._first_frame: np.ndarray | None = None  # model-sized uint8
        self._first_depth: np.ndarray | None = None  # its depth (metres), geometry-guided models
        self.intrinsics: np.ndarray | None = None  # [fx, fy, cx, cy] of the model-sized image
        self._last: tuple[float, np.ndarray] | None = None  # last accepted (stamp, T_world_body)
        self._last_wall: float | None = None
        self._rebase = False  # set by request_reset: the next pose may restart the clock, whatever its stamp
        self.last_clock_jump: tuple[float, float] | None = None  # (from, to) stamps of the latest jump back
        self._t0: float | None = None
        self._next_k = 0
        self._pending: deque[tuple[int, float, np.ndarray, float]] = deque()  # (k, stamp, c2w, arrival wall)
        self._start: tuple[float, np.ndarray] | None = None  # requested (t0, c2w) start
        self._epoch = 0  # bumped by every (re)start: work from an older epoch is discarded
        self._state: GeneratorState | None = None  # worker-owned
        self._state_epoch = -1
        self._busy = False
        self._need = self.first_chunk_frames
        self._imagine: deque[_Imagine] = deque(maxlen=max_imagine_queue)
        self._next_request = 0
        self.counters = dict.fromkeys(
            ("poses_in", "accepted", "waiting_for_first_frame", "dropped_nan", "dropped_invalid", "dropped_duplicate",
             "dropped_out_of_order", "dropped_frames", "gaps", "clock_jumps", "frames_out", "chunks", "restarts",
             "imagine_requests",
             "imagine_dropped", "imagined_frames"), 0)
        self._last_out_stamp: float | None = None
        self._latencies: deque[float] = deque(maxlen=100)

    # ------------------------------------------------------------------------------------------------ input
    def set_first_frame(self, image, intrinsics=None, depth=None, depth_scale: float = 1000.0) -> None:
        """The first frame: uint8 (H, W, 3) array or image path, with its ``[fx, fy, cx, cy]`` (None: the model's
        FoV over the image width). Resized/centre-cropped to the model size; used by the next (re)start.
        ``depth``: its depth map for geometry-guided models (path or float (H, W) metres, see
        :mod:`sana_wm_env.depth`; ``depth_scale`` for 16-bit PNGs); without it such a model generates one."""
        first_depth = None
        if depth is not None:
            if not self.generator.takes_depth:
                raise ValueError(f"depth: model {self.model.name!r} does not use depth (it keeps no geometry cache)")
            from PIL import Image

            from sana_wm_env.depth import fit_depth, read_depth

            if isinstance(image, str | Path):
                with Image.open(image) as im:
                    src = (im.height, im.width)
            else:
                src = tuple(np.asarray(image).shape[:2])
            first_depth = fit_depth(read_depth(depth, depth_scale=depth_scale, what="depth"), src, self.image_hw)
        if intrinsics is None:
            if isinstance(image, str | Path):
                from PIL import Image

                with Image.open(image) as im:
                    w, h = im.size
            else:
                h, w = np.asarray(image).shape[:2]
            intrinsics = fov_to_intrinsics(self.model.fov_deg, h, w).double().numpy()
        img, k = load_image(image, self.image_hw, intrinsics)
        with self._cond:
            self._first_frame, self.intrinsics = img, np.asarray(k, dtype=np.float64)
            self._first_depth = first_depth
            if self._t0 is None and self._last is not None:
                self._request_start_locked()
            self._cond.notify_all()

    def set_seed(self, image, intrinsics=None, depth=None, depth_scale: float = 1000.0) -> None:
        """Deprecated name of :meth:`set_first_frame` (in Gymnasium a seed is the RNG's)."""
        warnings.warn("LivePoseCamera.set_seed is deprecated: use set_first_frame", DeprecationWarning, stacklevel=2)
        self.set_first_frame(image, intrinsics, depth=depth, depth_scale=depth_scale)

    @property
    def has_first_frame(self) -> bool:
        """Whether a first frame was given (the stream can start)."""
        return self._first_frame is not None

    @property
    def has_seed(self) -> bool:
        """Deprecated name of :attr:`has_first_frame`."""
        warnings.warn("LivePoseCamera.has_seed is deprecated: use has_first_frame", DeprecationWarning, stacklevel=2)
        return self.has_first_frame

    def add_pose(self, stamp: float, position, quaternion_xyzw) -> str:
        """Feed one REP-103 body pose (world frame) at ``stamp`` seconds; returns one of ``POSE_STATUSES``."""
        pos = np.asarray(position, dtype=np.float64).reshape(-1)
        q = np.asarray(quaternion_xyzw, dtype=np.float64).reshape(-1)
        with self._cond:
            self.counters["poses_in"] += 1
            if pos.shape != (3,) or q.shape != (4,):
                self.counters["dropped_invalid"] += 1
                return "invalid"
            if not (math.isfinite(stamp) and np.isfinite(pos).all() and np.isfinite(q).all()):
                self.counters["dropped_nan"] += 1
                return "nan"
            if abs(float(np.linalg.norm(q)) - 1.0) > QUAT_NORM_TOL:
                self.counters["dropped_invalid"] += 1
                return "invalid"
            jumped = False
            if self._last is not None and stamp <= self._last[0]:
                if stamp < self._last[0] and (self._rebase or stamp < self._last[0] - self.max_gap):
                    jumped = True  # the clock jumped back: restart below instead of dropping every later pose
                    self.counters["clock_jumps"] += 1
                    self.last_clock_jump = (self._last[0], float(stamp))
                    self._t0, self._start, self._last_out_stamp = None, None, None
                    self._pending.clear()
                    self._epoch += 1
                else:
                    key = "dropped_duplicate" if stamp == self._last[0] else "dropped_out_of_order"
                    self.counters[key] += 1
                    return key.removeprefix("dropped_")
            self.counters["accepted"] += 1
            self._rebase = False
            body = pose_matrix(pos, q)
            prev, self._last, self._last_wall = self._last, (float(stamp), body), time.monotonic()
            if self._t0 is None:
                if self._first_frame is None:  # kept as the start pose, but nothing to render from yet
                    self.counters["waiting_for_first_frame"] += 1
                    return "waiting_for_first_frame"
                self._request_start_locked()
                return "clock_jump" if jumped else "accepted"
            status = "accepted"
            if prev is not None and stamp - prev[0] > self.max_gap:
                # hold: no frames are invented across the gap; the clock resumes at the new pose
                self.counters["gaps"] += 1
                self._next_k = max(self._next_k, int(math.ceil((stamp - self._t0) * self.fps - 1e-9)))
                prev, status = None, "gap"
            self._resample_locked(prev, float(stamp), body)
            self._cond.notify_all()
            return status

    def _request_start_locked(self) -> None:
        stamp, body = self._last
        self._t0, self._next_k = stamp, 1
        self._start = (stamp, body @ self.mount)
        self._pending.clear()
        self._epoch += 1
        self._need = self.first_chunk_frames
        self._cond.notify_all()

    def _resample_locked(self, prev, stamp: float, body: np.ndarray) -> None:
        t_k = self._t0 + self._next_k / self.fps
        times = []
        while t_k <= stamp + 1e-9:
            times.append(t_k)
            self._next_k += 1
            t_k = self._t0 + self._next_k / self.fps
        if not times:
            return
        at = np.asarray(times)
        if prev is None:  # right after a gap: only the new pose is known
            poses = np.repeat(body[None], len(at), axis=0)
        else:
            poses = interpolate_edge(np.array([prev[0], stamp]), np.stack([prev[1], body]), np.minimum(at, stamp))
        now = time.monotonic()
        k0 = self._next_k - len(times)
        for i, (t, p) in enumerate(zip(times, poses)):
            self._pending.append((k0 + i, t, p @ self.mount, now))
        over = len(self._pending) - self.max_pending
        if over > 0:  # generation is behind: drop the oldest pending frames, keep true stamps on the rest
            for _ in range(over):
                self._pending.popleft()
            self.counters["dropped_frames"] += over

    def request_reset(self) -> bool:
        """Restart from the latest first frame at the latest pose (or at the next pose). The next pose may then be
        older than the latest (the clock was restarted): it restarts the stream there. False without a first frame."""
        with self._cond:
            if self._first_frame is None:
                return False
            self.counters["restarts"] += 1
            self._rebase = True
            if self._last is not None:
                self._request_start_locked()
            else:
                self._t0, self._start = None, None
                self._pending.clear()
                self._epoch += 1
            self._cond.notify_all()
            return True

    def request_imagine(self, stamps, body_poses) -> int:
        """Queue an imagined path: REP-103 body poses (M, 4, 4) in the world frame at ``stamps`` (M,) seconds
        (strictly increasing; resampled to the model fps) or ``stamps=None`` (one pose per frame). Returns the
        request id; the oldest queued request is dropped when the queue is full."""
        poses = validate_c2w(np.asarray(body_poses, dtype=np.float64), "body_poses").numpy()
        if poses.ndim != 3 or len(poses) == 0:
            raise ValueError(f"body_poses must be (M, 4, 4) with M >= 1, got {poses.shape}")
        with self._cond:
            base = self._last[0] if self._last is not None else 0.0
        if stamps is None:
            t = base + np.arange(len(poses)) / self.fps
        else:
            t = np.asarray(stamps, dtype=np.float64)
            if t.shape != (len(poses),):
                raise ValueError(f"stamps must be (M,) = ({len(poses)},) seconds or None, got {t.shape}")
            if len(poses) > 1:
                traj = Trajectory(timestamps=t, poses=poses, convention="rep103").resample(fps=self.fps)
                t, poses = traj.timestamps, traj.poses
        if len(t) > self.max_imagine_frames:
            raise ValueError(f"the imagined path has {len(t)} frames at {self.fps} fps; at most "
                             f"{self.max_imagine_frames} (max_imagine_frames)")
        with self._cond:
            if len(self._imagine) == self._imagine.maxlen:
                self.counters["imagine_dropped"] += 1
            rid = self._next_request
            self._next_request += 1
            self._imagine.append(_Imagine(t, poses @ self.mount, rid))
            self.counters["imagine_requests"] += 1
            self._cond.notify_all()
            return rid

    # ----------------------------------------------------------------------------------------------- worker
    def _work_ready_locked(self) -> bool:
        return (self._start is not None or bool(self._imagine)
                or (self._state is not None and self._state_epoch == self._epoch and len(self._pending) >= self._need))

    def process(self, timeout: float | None = None) -> list[LiveFrame]:
        """Wait up to ``timeout`` s for work, then do one unit: a (re)start (returns the first frame), one chunk
        of live frames, or one imagined path (frames with ``imagined=True``). Call from one worker thread."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed or self._work_ready_locked(), timeout):
                return []
            if self._closed:
                return []
            self._busy = True
            job: dict = {"epoch": self._epoch, "image": self._first_frame, "k": self.intrinsics,
                         "depth": self._first_depth}
            if self._start is not None:
                (job["t0"], job["c2w"]), self._start = self._start, None
                job["kind"] = "start"
            elif self._state is not None and self._state_epoch == job["epoch"] and len(self._pending) >= self._need:
                job.update(kind="chunk", state=self._state, chunk=[self._pending.popleft() for _ in range(self._need)])
            else:
                job.update(kind="imagine", req=self._imagine.popleft(),
                           state=self._state if self._state_epoch == job["epoch"] else None)
        try:
            return self._run(job)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def idle(self) -> bool:
        """True when no work is running or ready (every complete chunk has been rendered)."""
        with self._cond:
            return not self._busy and not self._work_ready_locked()

    def _run(self, v: dict) -> list[LiveFrame]:
        epoch, job = v["epoch"], v["kind"]
        if job == "start":
            t0, c2w, image, k = v["t0"], v["c2w"], v["image"], v["k"]
            state = self.generator.start(from_uint8(image[None]), torch.as_tensor(k, dtype=torch.float32),
                                         c2w=torch.as_tensor(c2w, dtype=torch.float32), seed=self.seed,
                                         **_depth_kwargs(v["depth"]))
            with self._cond:
                if epoch != self._epoch:
                    return []
                self._state, self._state_epoch = state, epoch
                self._need = self.generator.frames_per_step(state)
                self._last_out_stamp = t0
                self.counters["frames_out"] += 1
                self._cond.notify_all()
            return [LiveFrame(stamp=t0, image=image.copy(), c2w=c2w, index=0, latency=0.0)]
        if job == "chunk":
            chunk, state = v["chunk"], v["state"]
            c2w = np.stack([c[2] for c in chunk])
            frames, new_state = self.generator.step(state, torch.as_tensor(c2w[None], dtype=torch.float32))
            images = to_uint8(frames)[0]
            now = time.monotonic()
            with self._cond:
                if epoch != self._epoch:
                    return []
                self._state = new_state
                self._need = self.generator.frames_per_step(new_state)
                self.counters["frames_out"] += len(chunk)
                self.counters["chunks"] += 1
                self._last_out_stamp = chunk[-1][1]
                out = [LiveFrame(stamp=t, image=img, c2w=p, index=kk, latency=now - arr)
                       for (kk, t, p, arr), img in zip(chunk, images)]
                self._latencies.append(out[-1].latency)
            return out
        return self._run_imagine(v["req"], v["state"], v["image"], v["k"], v["depth"])

    def _run_imagine(self, req: _Imagine, state: GeneratorState | None, image, k, depth=None) -> list[LiveFrame]:
        if state is None:
            if image is None:
                return []  # nothing to imagine from yet
            state = self.generator.start(from_uint8(image[None]), torch.as_tensor(k, dtype=torch.float32),
                                         c2w=torch.as_tensor(req.c2w[0], dtype=torch.float32), seed=self.seed,
                                         **_depth_kwargs(depth))
        fork = state.fork()
        out: list[LiveFrame] = []
        done = 0
        while done < len(req.c2w):
            n = self.generator.frames_per_step(fork)
            poses = req.c2w[done:done + n]
            real = len(poses)
            if real < n:  # pad the last chunk by holding the final pose; only real frames are returned
                poses = np.concatenate([poses, np.repeat(poses[-1:], n - real, axis=0)])
            frames, fork = self.generator.step(fork, torch.as_tensor(poses[None], dtype=torch.float32))
            images = to_uint8(frames)[0]
            for i in range(real):
                out.append(LiveFrame(stamp=float(req.stamps[done + i]), image=images[i], c2w=poses[i],
                                     index=done + i, imagined=True))
            done += real
        with self._cond:
            self.counters["imagined_frames"] += len(out)
        return out

    def close(self) -> None:
        """Wake a waiting worker; later ``process`` calls return nothing."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ------------------------------------------------------------------------------------------------ status
    def stats(self) -> dict:
        """Counters plus ``lag_s`` (newest pose stamp minus the newest output frame's stamp), ``pending_frames``,
        ``since_last_pose_s`` (wall), ``latency_s`` (mean pose-in -> frame-out of recent chunks' last frames)."""
        with self._cond:
            out = dict(self.counters)
            newest = self._last[0] if self._last is not None else None
            out["lag_s"] = (newest - self._last_out_stamp) if (newest is not None and self._last_out_stamp
                                                               is not None) else 0.0
            out["pending_frames"] = len(self._pending)
            out["max_pending"] = self.max_pending
            out["since_last_pose_s"] = (time.monotonic() - self._last_wall) if self._last_wall else None
            out["latency_s"] = float(np.mean(self._latencies)) if self._latencies else None
            out["started"] = self._t0 is not None
            out["has_first_frame"] = self._first_frame is not None
            out["imagine_queue"] = len(self._imagine)
            return out
