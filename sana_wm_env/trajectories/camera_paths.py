"""Smooth random 6-DoF camera paths inside a scene, with bounded speed, acceleration and turn rate.

Motions:

* ``drone``    - full 6-DoF: free 3-D path, yaw wandering around the heading, pitch and roll;
* ``ground``   - a wheeled robot: planar path at a fixed height above the ground, yaw = heading, no pitch/roll;
* ``handheld`` - a walking person: planar path at eye height, small roll and pitch, yaw near the heading.

``revisit=True`` makes the path a closed loop traversed at constant speed with an integer period of
``loop_period_frames`` frames, so frame ``i`` and ``i + loop_period_frames`` have the same pose (revisits).

How: random waypoints whose connecting segments keep a safety margin from the scene's analytic geometry; a
cubic spline through them (periodic for loops), arc-length parametrised and run at constant speed; the speed is
lowered until ``v^2 * curvature <= max_accel`` and ``v * curvature <= heading-rate budget``; orientation noise is a
sum of slow sinusoids. Every frame (and the midpoints between frames) is then checked to lie inside the scene
bounds and ``clearance`` metres from all surfaces; otherwise the attempt is redrawn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d

from sana_wm_env.scenes.scene import Scene
from sana_wm_env.trajectories.trajectory import OPENCV_IN_REP103, Trajectory
from world_model.camera import rpy_to_rotmat

MOTIONS: tuple[str, ...] = ("drone", "ground", "handheld")


@dataclass(frozen=True)
class MotionLimits:
    """Bounds a generated path respects: speed (m/s), acceleration (m/s^2), angular speed (rad/s)."""

    max_speed: float
    max_accel: float
    max_angular_speed: float


@dataclass(frozen=True)
class _Style:
    yaw_amp: float  # radians of yaw wander around the heading
    pitch_base: tuple[float, float]  # range of the mean pitch (positive = looking down)
    pitch_amp: float
    roll_amp: float
    planar: bool


_STYLES = {
    "drone": _Style(np.radians(20), (np.radians(0), np.radians(30)), np.radians(6), np.radians(10), False),
    "ground": _Style(0.0, (0.0, 0.0), 0.0, 0.0, True),
    "handheld": _Style(np.radians(10), (np.radians(-3), np.radians(12)), np.radians(4), np.radians(3), True),
}
_NOISE_MAX_HZ = 0.2
_LOOP_SAFETY = 1.3  # loops turn up to this much faster than their circle (waypoint jitter)
_TERRAIN_SMOOTH_S = 0.6  # seconds: planar motions follow the terrain low-passed over this time scale


def motion_limits(scene: Scene, motion: str) -> MotionLimits:
    """Default limits for ``motion`` in ``scene`` (scaled by the family's typical speed)."""
    s = scene.speed_scale
    if motion == "drone":
        return MotionLimits(1.0 * s, 1.0 * s, np.radians(100))
    if motion == "ground":
        return MotionLimits(min(0.8 * s, 1.5), min(0.8 * s, 1.5), np.radians(60))
    if motion == "handheld":
        return MotionLimits(min(0.8 * s, 1.4), min(0.8 * s, 1.4), np.radians(75))
    raise ValueError(f"motion must be one of {', '.join(MOTIONS)}; got {motion!r}")


class _Noise:
    """Sum of sinusoids; frequencies are multiples of 1/period when a period is given (periodic noise)."""

    def __init__(self, rng: np.random.Generator, amp: float, period: float | None, n: int = 3) -> None:
        if period is not None:
            kmax = max(1, int(_NOISE_MAX_HZ * period))
            self.f = rng.integers(1, kmax + 1, n) / period
        else:
            self.f = rng.uniform(0.04, _NOISE_MAX_HZ, n)
        w = rng.uniform(0.3, 1.0, n)
        self.a = amp * w / w.sum()
        self.phi = rng.uniform(0, 2 * np.pi, n)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        return (self.a[None] * np.sin(2 * np.pi * self.f[None] * t[:, None] + self.phi[None])).sum(1)



def _check_args(motion: str, num_frames: int, fps: float, clearance: float) -> None:
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {', '.join(MOTIONS)}; got {motion!r}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 2:
        raise ValueError(f"num_frames must be an int >= 2, got {num_frames!r}")
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not np.isfinite(clearance) or clearance < 0:
        raise ValueError(f"clearance must be a non-negative distance in metres, got {clearance!r}")


class _Planner:
    def __init__(self, scene: Scene, motion: str, rng: np.random.Generator, clearance: float) -> None:
        self.scene, self.motion, self.rng = scene, motion, rng
        self.style = _STYLES[motion]
        self.h_range = scene.camera_heights[motion]
        self.step = (1.0, 2.2) if scene.speed_scale < 2 else (3.0 * scene.speed_scale, 6.0 * scene.speed_scale)
        self.h0 = float(rng.uniform(*self.h_range))
        self.margin = clearance + (0.2 if scene.speed_scale < 2 else 0.8)
        if self.style.planar:  # the floor is h0 below: keep the margin for walls and objects under that
            floor = self.h0
            if scene.geometry.terrain is not None:  # the terrain distance bound shrinks with its steepest slope
                floor /= np.sqrt(1.0 + scene.geometry.terrain.lipschitz**2)
            self.margin = max(clearance + 0.02, min(self.margin, floor - 0.03))

    def lift(self, xy: np.ndarray, h: np.ndarray | float) -> np.ndarray:
        return np.column_stack([xy, self.scene.ground_height(xy) + h])

    def ok_point(self, p: np.ndarray) -> bool:
        return bool(self.scene.free(p[None], self.margin)[0])

    def ok_segment(self, a: np.ndarray, b: np.ndarray, height: float | None) -> bool:
        n = max(2, int(np.ceil(np.linalg.norm(b - a) / 0.1)))
        s = np.linspace(0, 1, n)[:, None]
        pts = a + s * (b - a)
        if height is not None:
            pts = self.lift(pts[:, :2], height)
        return bool(self.scene.free(pts, self.margin).all())

    def start(self) -> np.ndarray | None:
        lo, hi = self.scene.bounds
        for _ in range(300):
            xy = self.rng.uniform(lo[:2], hi[:2])
            h = self.rng.uniform(*self.h_range) if not self.style.planar else self.h0
            p = self.lift(xy[None], h)[0]
            if self.ok_point(p):
                return p
        return None

    def _height(self, p: np.ndarray) -> float:
        return float(p[2] - self.scene.ground_height(p[None, :2])[0])

    def walk(self, length: float) -> np.ndarray | None:
        """Random waypoints (K,3) whose polyline is at least ``length`` long, or None."""
        p = self.start()
        if p is None:
            return None
        pts = [p]
        heading = self.rng.uniform(0, 2 * np.pi)
        total = 0.0
        while total < length:
            for attempt in range(40):
                spread = 0.5 + attempt * 0.08
                psi = heading + self.rng.normal(0, spread)
                step = self.rng.uniform(*self.step)
                xy = p[:2] + step * np.array([np.cos(psi), np.sin(psi)])
                if self.style.planar:
                    h = self.h0
                else:
                    h = float(np.clip(self._height(p) + self.rng.normal(0, 0.25 * step), *self.h_range))
                    h = float(np.clip(h, self._height(p) - 0.5 * step, self._height(p) + 0.5 * step))
                q = self.lift(xy[None], h)[0]
                if self.ok_point(q) and self.ok_segment(p, q, self.h0 if self.style.planar else None):
                    break
            else:
                return None
            total += float(np.linalg.norm(q - p))
            heading = psi
            pts.append(q)
            p = q
            if len(pts) > 400:
                return None
        return np.asarray(pts)

    def loop(self, radius: float) -> np.ndarray | None:
        """Closed smooth loop (K,3) (first point not repeated): a circle of ``radius`` with gentle
        first/second-harmonic wobble (and, for drones, a gentle height wave), or None."""
        k = 48
        th = np.linspace(0, 2 * np.pi, k, endpoint=False)
        for _ in range(60):
            c = self.start()
            if c is None:
                return None
            e1, e2 = self.rng.uniform(0, 0.1), self.rng.uniform(0, 0.04)
            f1, f2, f3 = self.rng.uniform(0, 2 * np.pi, 3)
            r = radius * (1 + e1 * np.cos(th + f1) + e2 * np.cos(2 * th + f2))
            xy = c[:2] + np.column_stack([r * np.cos(th), r * np.sin(th)])
            if self.style.planar:
                h = np.full(k, self.h0)
            else:
                h = np.clip(self._height(c) + self.rng.uniform(0, 0.1) * radius * np.sin(th + f3), *self.h_range)
            pts = self.lift(xy, h)
            if not self.scene.free(pts, self.margin).all():
                continue
            closed = np.vstack([pts, pts[:1]])
            height = self.h0 if self.style.planar else None
            if all(self.ok_segment(closed[i], closed[i + 1], height) for i in range(k)):
                return pts
        return None


def _spline(pts: np.ndarray, periodic: bool):
    """Cubic spline through waypoints parametrised by chord length; dense arc-length table."""
    if periodic:
        pts = np.vstack([pts, pts[:1]])
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    spl = CubicSpline(chord, pts, bc_type="periodic" if periodic else "natural")
    u = np.linspace(0, chord[-1], max(2000, 40 * len(pts)))
    d1 = spl(u, 1)
    ds = np.linalg.norm(d1, axis=1)
    s = np.concatenate([[0.0], np.cumsum((ds[1:] + ds[:-1]) / 2 * np.diff(u))])
    return spl, u, s


def _curvatures(spl, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d1, d2 = spl(u, 1), spl(u, 2)
    n1 = np.linalg.norm(d1, axis=1)
    k3 = np.linalg.norm(np.cross(d1, d2), axis=1) / np.maximum(n1, 1e-9) ** 3
    xy1, xy2 = d1[:, :2], d2[:, :2]
    nxy = np.linalg.norm(xy1, axis=1)
    kxy = np.abs(xy1[:, 0] * xy2[:, 1] - xy1[:, 1] * xy2[:, 0]) / np.maximum(nxy, 1e-9) ** 3
    return k3, kxy


def _noise_rate_bound(style: _Style) -> float:
    return (style.yaw_amp + style.pitch_amp + style.roll_amp) * 2 * np.pi * _NOISE_MAX_HZ


def min_revisit_seconds(scene: Scene, motion: str, limits: MotionLimits | None = None) -> float:
    """Shortest clip (seconds) for which ``revisit=True`` can close 1.25 loops within the turn-rate limit."""
    lim = limits or motion_limits(scene, motion)
    budget = lim.max_angular_speed - _noise_rate_bound(_STYLES[motion])
    return 1.25 * _LOOP_SAFETY * 2 * np.pi / budget


def generate(scene: Scene, motion: str, num_frames: int, fps: float = 16.0, seed=0, revisit: bool = False,
             clearance: float = 0.2, limits: MotionLimits | None = None, max_attempts: int = 40) -> Trajectory:
    """A random camera path of ``num_frames`` frames at ``fps`` in ``scene`` (OpenCV camera-to-world poses).

    ``seed`` is anything ``numpy.random.default_rng`` accepts; the result is deterministic for a given seed.
    Raises ValueError for bad arguments (including a clip too short for a revisit loop, see
    ``min_revisit_seconds``) and RuntimeError if no valid path is found in ``max_attempts`` tries.
    """
    _check_args(motion, num_frames, fps, clearance)
    lim = limits or motion_limits(scene, motion)
    rng = np.random.default_rng(seed)
    duration = (num_frames - 1) / fps
    style = _STYLES[motion]
    turn_budget = lim.max_angular_speed - _noise_rate_bound(style)
    if turn_budget <= 0:
        raise ValueError("limits.max_angular_speed is too small for this motion's orientation noise")
    if revisit and duration < min_revisit_seconds(scene, motion, lim):
        raise ValueError(
            f"num_frames: a revisit loop for {motion} needs at least {min_revisit_seconds(scene, motion, lim):.1f} s "
            f"of clip ({int(np.ceil(min_revisit_seconds(scene, motion, lim) * fps)) + 1} frames at {fps:g} fps); "
            f"got {duration:.2f} s"
        )
    shrink = 1.0  # revisit loops that do not fit get smaller (and slower) on the next attempt
    for _attempt in range(max_attempts):
        plan = _Planner(scene, motion, rng, clearance)
        v = float(rng.uniform(0.5, 1.0)) * lim.max_speed * shrink
        pitch0 = float(rng.uniform(*style.pitch_base))
        if motion == "drone" and scene.family == "rooms":
            pitch0 *= 0.3
        if revisit:
            # Loop period P = duration / laps with 1.25 <= laps; a circle of radius R driven at v turns at
            # 2 pi / P and accelerates at 2 pi v / P: pick v, then R = v P / (2 pi).
            laps_max = min(2.0, duration * turn_budget / (2 * np.pi * _LOOP_SAFETY))
            period_s = duration / rng.uniform(1.25, max(1.25, laps_max))
            v = min(v, lim.max_accel * period_s / (2 * np.pi * _LOOP_SAFETY))
            pts = plan.loop(v * period_s / (2 * np.pi))
        else:
            pts = plan.walk(v * duration * 1.05 + 1.0)
        if pts is None or len(pts) < (3 if revisit else 2):
            shrink = max(0.3, shrink * 0.8) if revisit else shrink
            continue
        spl, u_tab, s_tab = _spline(pts, periodic=revisit)
        used = s_tab[-1] if revisit else min(s_tab[-1], v * duration)
        mask = s_tab <= used + 1e-9
        k3, kxy = _curvatures(spl, u_tab[mask])
        v_wanted = v
        v = min(v, np.sqrt(lim.max_accel / max(k3.max(), 1e-9)), turn_budget / max(kxy.max(), 1e-9))
        if v < 0.5 * v_wanted:
            continue  # a sharp corner would make the camera crawl: redraw
        period = None
        if revisit:
            period_frames = int(np.ceil(s_tab[-1] / v * fps))
            if period_frames > (num_frames - 1) / 1.2 or period_frames < 8:
                continue
            v = s_tab[-1] * fps / period_frames
            period = period_frames / fps
        elif v * duration > s_tab[-1]:
            continue
        t = np.arange(num_frames) / fps
        s = v * np.arange(2 * num_frames - 1) / (2 * fps)  # frames and the midpoints between them
        if revisit:
            s = np.mod(s, s_tab[-1])
        u = np.interp(s, s_tab, u_tab)
        pos = spl(u)
        vel = spl(u, 1)
        if style.planar:
            ground = scene.ground_height(spl(u_tab)[:, :2])
            if scene.geometry.terrain is not None:
                ds = s_tab[-1] / (len(s_tab) - 1)
                ground = gaussian_filter1d(ground, _TERRAIN_SMOOTH_S * v / ds, mode="wrap" if revisit else "nearest")
            pos[:, 2] = np.interp(s, s_tab, ground) + plan.h0
        if not scene.free(pos, clearance).all():
            continue
        pos, vel = pos[::2], vel[::2]
        heading = np.unwrap(np.arctan2(vel[:, 1], vel[:, 0]))
        yaw_n, pitch_n, roll_n = (_Noise(rng, a, period) for a in (style.yaw_amp, style.pitch_amp, style.roll_amp))
        ypr = np.column_stack([heading + yaw_n(t), pitch0 + pitch_n(t), roll_n(t)])
        poses = np.tile(np.eye(4), (num_frames, 1, 1))
        poses[:, :3, :3] = rpy_to_rotmat(ypr[:, ::-1].copy()).numpy() @ OPENCV_IN_REP103
        poses[:, :3, 3] = pos
        traj = Trajectory(t, poses, convention="opencv", frame_id=f"{scene.family}_{scene.seed}",
                          child_frame_id="camera")
        traj.metadata.update(motion=motion, revisit=revisit, speed=float(v), limits=asdict(lim),
                             clearance=clearance)
        if revisit:
            traj.metadata["loop_period_frames"] = int(round(period * fps))
        return traj
    raise RuntimeError(
        f"no valid {motion} path of {num_frames} frames found in {scene.family} scene {scene.seed} after "
        f"{max_attempts} attempts (revisit={revisit}); try a shorter clip or another seed"
    )
