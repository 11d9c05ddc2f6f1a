"""The batched camera simulation behind every env: B sub-envs, one frame source, one task.

``WorldModelEnv`` is this with B = 1, ``WorldModelVectorEnv`` and the SB3 adapter with B = N; the per-step
work on the frame source (one batched generator call per chunk phase) is shared, the rest is cheap numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding

from sana_wm_env.envs.actions import (
    ActionLimits,
    action_twists,
    check_action_frame,
    real_array,
    step_poses,
    validate_actions,
)
from sana_wm_env.envs.backends import TwinBackend, WorldModelBackend
from sana_wm_env.envs.tasks import Episode, Task, make_task, pose7
from sana_wm_env.scenes import FAMILIES, SEED_COUNT, Scene, make_scene
from sana_wm_env.trajectories import camera_mount
from world_model.bundles import WorldModel, load_world_model
from world_model.camera import fov_to_intrinsics, resize_crop_geometry, resize_crop_intrinsics, validate_c2w

OBS_MODES: tuple[str, ...] = ("dict", "image", "frames")
SPLITS: dict[str, tuple[int, int]] = {"train": (100, SEED_COUNT), "eval": (0, 100)}
START_CLEARANCE = 0.5  # metres: start and goal keep this far from every surface


def resolve_model(model: WorldModel | str | Path, device: str | torch.device) -> WorldModel:
    """A ``WorldModel`` instance (moved to ``device``) or a bundle name/path loaded onto it."""
    if isinstance(model, WorldModel):
        return model.to(device)
    if isinstance(model, str | Path):
        return load_world_model(model, device=device)
    raise ValueError(f"model must be a WorldModel, a bundle name or a bundle path, got {type(model).__name__}")


def model_geometry(model: WorldModel, generator: str = "streaming") -> dict[str, Any]:
    """What an env takes from ``model``: image size, fps, frames per step (one chunk of ``generator``) and field of
    view; a twin copies it so that its spaces, step duration and camera are those of the model's env."""
    return {"image_hw": tuple(int(v) for v in model.image_hw), "fps": float(model.fps),
            "frames_per_step": WorldModelBackend(model, generator).frames_per_step, "fov_deg": float(model.fov_deg)}


def load_depth(depth, image, hw: tuple[int, int]) -> np.ndarray:
    """``options["depth"]`` (path or float (H, W) metres, see :mod:`sana_wm_env.depth`) of ``options["image"]``,
    resized and cropped like it."""
    from PIL import Image

    from sana_wm_env.depth import fit_depth, read_depth

    if isinstance(image, str | Path):
        with Image.open(image) as im:
            src = (im.height, im.width)
    else:
        src = tuple(np.asarray(image).shape[:2])
    return fit_depth(read_depth(depth, what='options["depth"]'), src, hw, what='options["depth"]')


def load_image(image, hw: tuple[int, int], intrinsics, *, what: str = 'options["image"]'
               ) -> tuple[np.ndarray, np.ndarray]:
    """``options["image"]`` (path or uint8 (H, W, 3) array) -> resized/centre-cropped uint8 image and intrinsics.

    ``what`` names the argument in errors (an unreadable file or a wrong array is a ValueError, never PIL's own)."""
    from PIL import Image

    if intrinsics is None:
        raise ValueError('options["intrinsics"] ([fx, fy, cx, cy] pixels of the given image) is required with '
                         'options["image"]')
    if isinstance(image, str | Path):
        if not Path(image).is_file():
            raise ValueError(f'{what}: no file at {str(image)!r}')
        try:
            with Image.open(image) as im:
                pil = im.convert("RGB")
        except (OSError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError, truncated data
            raise ValueError(f"{what} must be an image file (PNG, JPEG, ...) or a uint8 (H, W, 3) array; "
                             f"{str(image)!r} does not read as an image: {exc}") from exc
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
            raise ValueError(f"{what} must be a path or a uint8 (H, W, 3) array with H, W >= 1, got {arr.dtype} "
                             f"{arr.shape}")
        pil = Image.fromarray(arr)
    src = (pil.height, pil.width)
    k = np.asarray(intrinsics)
    if k.dtype.kind not in "iuf" or k.shape != (4,) or not np.isfinite(k).all() or (k[:2] <= 0).any():
        raise ValueError(f'options["intrinsics"] must be [fx, fy, cx, cy] (real numbers, pixels) with fx, fy > 0, '
                         f"got {intrinsics!r}")
    k = k.astype(np.float64)
    (rh, rw), (top, left) = resize_crop_geometry(src, hw)
    if (rh, rw) != src:
        pil = pil.resize((rw, rh), Image.LANCZOS)
    pil = pil.crop((left, top, left + hw[1], top + hw[0]))
    return np.asarray(pil, dtype=np.uint8), resize_crop_intrinsics(k, src, hw).numpy()


# reset(options=...) keys and what each holds (an unknown key is an error, not ignored)
RESET_OPTIONS: dict[str, str] = {
    "scene": "(family, seed) of the twin-world scene to start in",
    "goal": "goal pose [x, y, z, qx, qy, qz, qw] relative to the start",
    "image": "start image instead of a twin-world scene: a path or a uint8 (H, W, 3) array",
    "intrinsics": 'with "image": [fx, fy, cx, cy] pixels of that image',
    "depth": 'with "image": its depth, a path or float (H, W) metres',
    "goal_image": 'with "image", for ImageNav: the goal image, a path or a uint8 (H, W, 3) array',
    "text": "prompt features (L, C) for a text-conditioned model",
}
WITH_IMAGE: tuple[str, ...] = ("intrinsics", "depth", "goal_image")


def check_options(options: dict) -> None:
    """Reject ``reset`` options that would be ignored or misread: unknown keys, image-only keys without
    ``"image"``, ``"scene"`` beside ``"image"``, and a ``"scene"`` that is not a (family, seed) pair."""
    unknown = sorted(str(k) for k in options if k not in RESET_OPTIONS)
    if unknown:
        raise ValueError(f"options: unknown key(s) {', '.join(map(repr, unknown))}; known keys: "
                         + "; ".join(f"{k!r} ({v})" for k, v in RESET_OPTIONS.items()))
    if "image" not in options:
        stray = [k for k in WITH_IMAGE if k in options]
        if stray:
            raise ValueError(f'options["{stray[0]}"] applies only with options["image"] (a twin-world start renders '
                             "its own image, intrinsics and goal image); drop it or give the image")
    elif "scene" in options:
        raise ValueError('options["scene"] picks a twin-world scene; options["image"] starts from that image instead '
                         "(no scene): give one of them")
    if "scene" in options:
        scene = options["scene"]
        family = scene[0] if isinstance(scene, tuple | list) and len(scene) == 2 else None
        seed = scene[1] if family is not None else None
        if (family not in FAMILIES or isinstance(seed, bool) or not isinstance(seed, int | np.integer)
                or not 0 <= int(seed) < SEED_COUNT):
            raise ValueError(f'options["scene"] must be a (family, seed) pair with family one of '
                             f"{', '.join(FAMILIES)} and seed an int in [0, {SEED_COUNT - 1}], got {scene!r}")


def _relative_goal(options: dict, start_body: np.ndarray) -> np.ndarray | None:
    if "goal" not in options:
        return None
    g = np.asarray(options["goal"], dtype=np.float64)
    if g.shape != (7,) or not np.isfinite(g).all():
        raise ValueError(f'options["goal"] must be a pose [x, y, z, qx, qy, qz, qw] relative to the start, got {g}')
    from world_model.camera import pose7_to_matrix

    return start_body @ pose7_to_matrix(g).numpy()


@dataclass
class _Sub:
    """One sub-env's episode."""

    rng: np.random.Generator | None = None
    scene: Scene | None = None
    renderer: Any = None
    intrinsics: np.ndarray | None = None
    episode: Episode | None = None
    c2w: np.ndarray | None = None  # current camera-to-world (world frame)
    frame: np.ndarray | None = None  # last frame uint8
    frames: np.ndarray | None = None  # last step's frames
    depth: np.ndarray | None = None  # last frame's depth (depth_obs), float32 metres
    depths: np.ndarray | None = None  # last step's depths
    steps: int = 0
    frames_done: int = 1
    clipped_total: int = 0
    done: bool = True
    info: dict = field(default_factory=dict)


class CameraSim:
    """B camera sub-envs over one frame source ("world_model" or "twin") and one task."""

    def __init__(
        self,
        num_envs: int = 1,
        *,
        task: str = "nav",
        source: str = "world_model",
        model: WorldModel | str | Path | None = "default",
        generator: str = "streaming",
        device: str | torch.device = "cpu",
        compile: str | None = None,
        action_frame: str = "rep103",
        action_limits: ActionLimits | dict | None = None,
        camera_mount_xyz_rpy: tuple | None = None,
        mount: np.ndarray | None = None,
        obs_mode: str = "dict",
        families: tuple[str, ...] = ("rooms",),
        split: str = "train",
        camera_height: str = "handheld",
        image_hw: tuple[int, int] | None = None,
        fps: float | None = None,
        frames_per_step: int | None = None,
        fov_deg: float | None = None,
        task_config: dict | None = None,
        depth_obs: bool = False,
    ) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {', '.join(OBS_MODES)}; got {obs_mode!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        families = (families,) if isinstance(families, str) else tuple(families)
        if not families or any(f not in FAMILIES for f in families):
            raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {families!r}")
        if camera_height not in ("drone", "ground", "handheld"):
            raise ValueError(f"camera_height must be 'drone', 'ground' or 'handheld', got {camera_height!r}")
        self.num_envs, self.source, self.obs_mode = num_envs, source, obs_mode
        self.families, self.split, self.camera_height = families, split, camera_height
        self.action_frame = check_action_frame(action_frame)
        if isinstance(action_limits, dict):
            action_limits = ActionLimits(**action_limits)
        self.limits = action_limits or ActionLimits()
        if mount is not None and camera_mount_xyz_rpy is not None:
            raise ValueError("give mount (4x4 T_body_cam) or camera_mount_xyz_rpy ((x, y, z), (r, p, y)), not both")
        if mount is not None:
            self.mount = validate_c2w(np.asarray(mount, dtype=np.float64), "mount").double().numpy()
        elif camera_mount_xyz_rpy is not None:
            self.mount = camera_mount(*camera_mount_xyz_rpy)
        else:
            self.mount = camera_mount()
        self.task: Task = make_task(task, **(task_config or {}))

        geometry = {"image_hw": image_hw, "fps": fps, "frames_per_step": frames_per_step, "fov_deg": fov_deg}
        self.model: WorldModel | None = None
        if source == "world_model":
            if any(v is not None for v in geometry.values()):
                given = [k for k, v in geometry.items() if v is not None]
                raise ValueError(
                    f"{', '.join(given)} come from the world model; do not pass them for source='world_model'"
                )
            if model is None:
                raise ValueError("model must be a WorldModel, a bundle name or path for source='world_model'")
            if compile is not None and generator != "streaming":
                raise ValueError(f"compile applies to the streaming generator only, got generator={generator!r}")
            self.model = resolve_model(model, device)
            self.backend = WorldModelBackend(self.model, generator, **({} if compile is None else {"compile": compile}))
            self.image_hw, self.fps = tuple(self.model.image_hw), float(self.model.fps)
            self.fov_deg = float(self.model.fov_deg)
            self.frames_per_step = self.backend.frames_per_step
        elif source == "twin":
            if compile is not None:
                raise ValueError("compile applies to source='world_model' (a twin env renders with MuJoCo); drop it")
            # the twin of a model copies its geometry (identical spaces and step duration); None: the default
            # bundled model's. A given WorldModel stays where it is; a name or path is loaded on the CPU.
            # Geometry passed explicitly wins (and with all of it given and no model, no model is loaded).
            given = {k: v for k, v in geometry.items() if v is not None}
            base = dict(given)
            if model is not None or len(given) < len(geometry):
                like = model if isinstance(model, WorldModel) else resolve_model(
                    "default" if model is None else model, "cpu")
                base = {**model_geometry(like, generator), **given}
            self.image_hw, self.fps = tuple(int(v) for v in base["image_hw"]), float(base["fps"])
            self.fov_deg, self.frames_per_step = float(base["fov_deg"]), int(base["frames_per_step"])
            self.backend = TwinBackend(self._render, self.frames_per_step)
        else:
            raise ValueError(f"source must be 'world_model' or 'twin', got {source!r}")
        if self.fps <= 0 or not np.isfinite(self.fps):
            raise ValueError(f"fps must be positive, got {self.fps}")
        self.step_seconds = self.frames_per_step / self.fps
        self.default_intrinsics = fov_to_intrinsics(self.fov_deg, *self.image_hw).double().numpy()
        if not isinstance(depth_obs, bool):
            raise ValueError(f"depth_obs must be True or False, got {depth_obs!r}")
        if depth_obs and obs_mode == "image":
            raise ValueError("depth_obs needs obs_mode='dict' or 'frames' (the depth goes beside the image)")
        if depth_obs and source == "world_model" and not self.backend.takes_depth:
            raise ValueError(f"depth_obs: world model {self.model.name!r} generates no depth (it keeps no geometry "
                             "cache); use a geometry-guided model or the twin env")
        self.depth_obs = depth_obs
        # twin renders give depth when it is observed, or when the world model starts from frame 0's depth
        self._render_depth = depth_obs or self.backend.takes_depth
        self.subs = [_Sub() for _ in range(num_envs)]
        self.observation_space = self._observation_space()
        self.action_space = spaces.Box(-1.0, 1.0, (6,), dtype=np.float32)

    # ------------------------------------------------------------------------------------------ spaces
    def _observation_space(self) -> spaces.Space:
        h, w = self.image_hw
        if self.obs_mode == "image":
            return spaces.Box(0, 255, (h, w, 3), dtype=np.uint8)
        frames = (self.frames_per_step,) if self.obs_mode == "frames" else ()
        obs = {"image": spaces.Box(0, 255, (*frames, h, w, 3), dtype=np.uint8)}
        if self.depth_obs:  # metres along the optical axis, 0 where there is no surface (sky)
            obs["depth"] = spaces.Box(0.0, np.inf, (*frames, h, w), dtype=np.float32)
        return spaces.Dict({**obs, **self.task.extra_spaces((h, w))})

    # ------------------------------------------------------------------------------------------ scenes
    def _renderer(self, i: int):
        sub = self.subs[i]
        if sub.renderer is None or sub.renderer.scene is not sub.scene:
            from sana_wm_env.scenes.renderer import SceneRenderer

            if sub.renderer is not None:
                sub.renderer.close()
            sub.renderer = SceneRenderer(sub.scene, *self.image_hw, depth=self._render_depth)
        return sub.renderer

    def _render_depth_map(self, i: int, c2w: np.ndarray) -> np.ndarray:
        """The twin's depth (H, W) float32 metres (0 = sky) at camera pose ``c2w``."""
        sub = self.subs[i]
        return self._renderer(i).render(c2w, sub.intrinsics, check_inside=False)[1].astype(np.float32)

    def _render(self, i: int, c2w: np.ndarray) -> np.ndarray:
        sub = self.subs[i]
        if sub.scene is None:
            raise ValueError("the twin renders twin-world scenes only; options['image'] needs source='world_model'")
        return self._renderer(i).render(c2w, sub.intrinsics, check_inside=False)[0]

    def _draw_scene(self, rng: np.random.Generator, options: dict) -> Scene:
        if "scene" in options:
            family, seed = options["scene"]
            return make_scene(family, int(seed))
        family = self.families[int(rng.integers(len(self.families)))]
        return make_scene(family, int(rng.integers(*SPLITS[self.split])))

    def _draw_start(self, rng: np.random.Generator, scene: Scene) -> np.ndarray | None:
        from sana_wm_env.envs.tasks import yaw_body

        lo, hi = scene.bounds
        h_lo, h_hi = scene.camera_heights[self.camera_height]
        for _ in range(200):
            xy = rng.uniform(lo[:2], hi[:2])
            z = float(scene.ground_height(xy[None])[0] + rng.uniform(h_lo, h_hi))
            p = np.array([xy[0], xy[1], z])
            if scene.free(p[None], START_CLEARANCE)[0]:
                return yaw_body(p, float(rng.uniform(-np.pi, np.pi)))
        return None

    def draw_episode(self, rng: np.random.Generator, options: dict | None = None, scene: Scene | None = None):
        """``(scene, start_body, goal_body)`` of a new twin-world episode, as ``reset`` draws them (world frame;
        ``goal_body`` is None for tasks without a goal). ``options``: ``"scene"`` and ``"goal"`` as in ``reset``;
        ``scene``: draw the start and goal in this scene instead of drawing one."""
        opts = options or {}
        given = scene
        for _ in range(50):
            scene = given or self._draw_scene(rng, opts)
            start = self._draw_start(rng, scene)
            if start is None:
                if given is not None:
                    raise ValueError(f"scene {scene.family}/{scene.seed}: found no free start pose")
                if "scene" in opts:
                    raise ValueError(f"options['scene']={opts['scene']!r}: found no free start pose")
                continue
            free = (lambda s: lambda pts: s.free(pts, START_CLEARANCE))(scene)
            goal = _relative_goal(opts, start) if "goal" in opts else self.task.sample_goal(rng, start, free)
            if goal is not None or self.task.name == "explore":
                return scene, start, goal
        raise RuntimeError("no start/goal pair found in 50 scenes (internal error)")

    # ------------------------------------------------------------------------------------------ reset
    def reset(self, idx: list[int], rngs: list[np.random.Generator], options: list[dict | None]):
        """Start new episodes for sub-envs ``idx``; returns ([obs], [info])."""
        starts, images, ks, seeds, texts, depths = [], [], [], [], [], []
        for i, rng, opts in zip(idx, rngs, options):
            opts = dict(opts or {})
            check_options(opts)
            sub = self.subs[i]
            sub.rng = rng
            goal_image = None
            if "image" in opts:
                if self.source == "twin":
                    raise ValueError("options['image'] needs a world-model env; a twin env renders its scene")
                image, k = load_image(opts["image"], self.image_hw, opts.get("intrinsics"))
                sub.scene, start = None, np.eye(4)
                depths.append(None if opts.get("depth") is None else load_depth(opts["depth"], opts["image"],
                                                                                 self.image_hw))
                goal = _relative_goal(opts, start)
                if goal is None and self.task.name == "imagenav":
                    raise ValueError('ImageNav from options["image"] needs options["goal"] (pose relative to the '
                                     'start) and options["goal_image"]')
                if goal is None:
                    goal = self.task.sample_goal(rng, start, None)
                if self.task.needs_goal_image:
                    if "goal_image" not in opts:
                        raise ValueError('ImageNav from options["image"] needs options["goal_image"]')
                    goal_image, _ = load_image(opts["goal_image"], self.image_hw, k, what='options["goal_image"]')
            else:
                k = self.default_intrinsics
                scene, start, goal = self.draw_episode(rng, opts)
                sub.scene, sub.intrinsics = scene, k
                image = self._render(i, start @ self.mount)
                depths.append(self._render_depth_map(i, start @ self.mount) if self._render_depth else None)
                if self.task.needs_goal_image:
                    goal_image = self._render(i, goal @ self.mount)
            sub.intrinsics = np.asarray(k, dtype=np.float64)
            sub.episode = Episode(start_body=start, goal_body=goal, goal_image=goal_image)
            self.task.begin(sub.episode)
            sub.c2w = start @ self.mount
            sub.frame = image
            sub.frames = np.repeat(image[None], self.frames_per_step, axis=0)
            sub.steps, sub.frames_done, sub.clipped_total, sub.done = 0, 1, 0, False
            starts.append(sub.c2w)
            images.append(image)
            ks.append(sub.intrinsics)
            seeds.append(int(rng.integers(2**31 - 1)))
            texts.append(opts.get("text"))
        text = None
        if any(t is not None for t in texts):
            if len(idx) != 1:
                raise ValueError("options['text'] is supported for single-env resets")
            text = torch.as_tensor(texts[0])[None]
        known = [d is not None for d in depths]
        if self.backend.takes_depth and any(known) and not all(known):  # some depths given, some to generate
            for j, i in enumerate(idx):
                self.backend.start([i], np.stack(images[j : j + 1]), np.stack(ks[j : j + 1]),
                                   np.stack(starts[j : j + 1]), seeds[j : j + 1], text=text,
                                   depth=None if depths[j] is None else depths[j][None])
        else:
            depth = np.stack(depths) if self.backend.takes_depth and all(known) else None
            self.backend.start(idx, np.stack(images), np.stack(ks), np.stack(starts), seeds, text=text, depth=depth)
        if self.depth_obs:
            first = (self.backend.geometry(idx)[0][:, 0] if self.backend.takes_depth
                     else np.stack(depths).astype(np.float32))
            for j, i in enumerate(idx):
                self.subs[i].depth = first[j]
                self.subs[i].depths = np.repeat(first[j][None], self.frames_per_step, axis=0)
        obs, infos = [], []
        for i in idx:
            sub = self.subs[i]
            info = {"c2w": sub.c2w.copy(), "intrinsics": sub.intrinsics.copy(), "step": 0,
                    "scene": "" if sub.scene is None else f"{sub.scene.family}/{sub.scene.seed}"}
            sub.info = info
            obs.append(self.observe(i))
            infos.append(info)
        return obs, infos

    # ------------------------------------------------------------------------------------------ observe
    def _frame_pose(self, t_world: np.ndarray) -> np.ndarray:
        """A world body pose in the action frame's convention (body for rep103, camera for opencv)."""
        return t_world @ self.mount if self.action_frame == "opencv" else t_world

    def relative_pose(self, i: int, body: np.ndarray) -> np.ndarray:
        ep = self.subs[i].episode
        return pose7(np.linalg.inv(self._frame_pose(ep.start_body)) @ self._frame_pose(body))

    def body(self, i: int) -> np.ndarray:
        return self.subs[i].c2w @ np.linalg.inv(self.mount)

    def observe(self, i: int):
        sub = self.subs[i]
        if self.obs_mode == "image":
            return sub.frame.copy()
        obs = {"image": sub.frames.copy() if self.obs_mode == "frames" else sub.frame.copy()}
        if self.depth_obs:
            obs["depth"] = sub.depths.copy() if self.obs_mode == "frames" else sub.depth.copy()
        if self.task.observes_pose:
            obs["pose"] = self.relative_pose(i, self.body(i))
        if self.task.name == "nav":
            obs["goal"] = self.relative_pose(i, sub.episode.goal_body)
        elif self.task.name == "imagenav":
            obs["goal"] = sub.episode.goal_image.copy()
        return obs

    # ------------------------------------------------------------------------------------------ step
    def step(self, idx: list[int], actions) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Step sub-envs ``idx`` with ``actions`` (len(idx), 6) in one batched frame-source call per phase."""
        for i in idx:
            if self.subs[i].done:
                raise RuntimeError(f"sub-env {i}: episode is over (terminated or truncated); call reset() first")
        acts, clipped = validate_actions(actions, len(idx))
        n = self.frames_per_step
        c2w0 = np.stack([self.subs[i].c2w for i in idx])
        twists = action_twists(acts, self.limits, self.step_seconds)
        poses = step_poses(c2w0, twists, n, self.action_frame, self.mount)  # (b, n, 4, 4)
        frames = self.backend.step(idx, poses)
        depth = coverage = None
        if self.backend.takes_depth:
            depth, coverage = self.backend.geometry(idx)
        elif self.depth_obs:
            depth = np.stack([np.stack([self._render_depth_map(i, t) for t in rows]) for i, rows in zip(idx, poses)])
        obs, rewards, terms, truncs, infos = [], np.zeros(len(idx)), np.zeros(len(idx), bool), \
            np.zeros(len(idx), bool), []
        for row, i in enumerate(idx):
            sub = self.subs[i]
            sub.c2w, sub.frames, sub.frame = poses[row, -1], frames[row], frames[row, -1]
            if depth is not None:
                sub.depths, sub.depth = depth[row], depth[row, -1]
            collided = False
            if sub.scene is not None:
                collided = not bool(sub.scene.free(poses[row, :, :3, 3], self.task.config.collision_clearance).all())
            reward, terminated, tinfo = self.task.reward(sub.episode, self.body(i), collided)
            sub.steps += 1
            stamps = (sub.frames_done + np.arange(n)) / self.fps
            sub.frames_done += n
            sub.clipped_total += int(clipped[row])
            truncated = not terminated and sub.steps >= self.task.config.max_steps
            sub.done = terminated or truncated
            info = {"c2w": sub.c2w.copy(), "frames_c2w": poses[row].copy(), "timestamps": stamps, "step": sub.steps,
                    "action_clipped": int(clipped[row]), "action_clipped_total": sub.clipped_total, **tinfo}
            if coverage is not None:  # share of the step's last frame that the geometry cache already showed
                info["cache_coverage"] = float(coverage[row, -1])
            sub.info = info
            obs.append(self.observe(i))
            rewards[row], terms[row], truncs[row] = reward, terminated, truncated
            infos.append(info)
        return obs, rewards, terms, truncs, infos

    # ------------------------------------------------------------------------------------------ imagine
    def imagine(self, i: int, actions, frames: bool = True) -> dict[str, np.ndarray]:
        """K candidate futures of ``actions`` (K, H, 6) from sub-env ``i``'s current state, in one batch.

        Returns ``frames`` uint8 (K, H * n, h, w, 3) (only with ``frames=True``: poses and rewards need no
        generation), ``c2w`` (K, H * n, 4, 4) world camera poses, ``pose`` float32 (K, H, 7) relative to the start
        (like the observation) and ``reward`` (K, H) of the task (collisions not counted).
        The sub-env's state (generator state, pose, episode) is left unchanged.
        """
        sub = self.subs[i]
        if sub.episode is None:
            raise RuntimeError("call reset() before imagine()")
        a = real_array(actions, "(K, H, 6)")
        if a.ndim != 3 or a.shape[2] != 6 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"actions must have shape (K, H, 6) with K, H >= 1, got {a.shape}")
        k, horizon = a.shape[:2]
        flat, _ = validate_actions(a.reshape(k * horizon, 6), k * horizon)
        flat = flat.reshape(k, horizon, 6)
        n = self.frames_per_step
        poses = np.empty((k, horizon, n, 4, 4))
        cur = np.repeat(sub.c2w[None], k, axis=0)
        for h in range(horizon):
            poses[:, h] = step_poses(cur, action_twists(flat[:, h], self.limits, self.step_seconds), n,
                                     self.action_frame, self.mount)
            cur = poses[:, h, -1]
        video = self.backend.imagine(i, poses) if frames else None
        inv_mount = np.linalg.inv(self.mount)
        rel = np.array([[self.relative_pose(i, poses[j, h, -1] @ inv_mount) for h in range(horizon)]
                        for j in range(k)])
        rewards = np.zeros((k, horizon))
        import copy

        for j in range(k):
            ep = copy.deepcopy(sub.episode)
            for h in range(horizon):
                rewards[j, h] = self.task.reward(ep, poses[j, h, -1] @ inv_mount, False)[0]
        out = {"c2w": poses.reshape(k, horizon * n, 4, 4), "pose": rel, "reward": rewards}
        if video is not None:
            out["frames"] = video
        return out

    def rgb_frame(self, i: int) -> np.ndarray:
        """Sub-env ``i``'s last frame enlarged, with a HUD: step, pose (x, y, z, yaw), goal distance and angle."""
        from sana_wm_env.envs.rendering import hud_frame

        sub = self.subs[i]
        if sub.frame is None:
            raise RuntimeError("call reset() before render()")
        p = self.relative_pose(i, self.body(i))
        yaw = np.degrees(2 * np.arctan2(p[5], p[6]))
        lines = [f"step {sub.steps}  t={sub.steps * self.step_seconds:.2f}s  {self.source}",
                 f"pose x={p[0]:+.2f} y={p[1]:+.2f} z={p[2]:+.2f} yaw={yaw:+.0f}"]
        if sub.episode.goal_body is not None:
            d, th = self.task.goal_error(sub.episode, self.body(i))
            lines.append(f"goal {d:.2f} m  {np.degrees(th):.0f} deg")
        return hud_frame(sub.frame, lines)

    def close(self) -> None:
        for sub in self.subs:
            if sub.renderer is not None:
                sub.renderer.close()
                sub.renderer = None


def make_rngs(seed: int | list[int] | None, num: int) -> list[np.random.Generator]:
    """Per-sub-env generators: sub-env i of a vector env seeded ``s`` behaves like a single env seeded ``s + i``."""
    if seed is None:
        return [seeding.np_random(None)[0] for _ in range(num)]
    seeds = [int(seed) + j for j in range(num)] if isinstance(seed, int | np.integer) else [int(s) for s in seed]
    if len(seeds) != num:
        raise ValueError(f"seed must be an int or a list of {num} ints, got {seed!r}")
    return [seeding.np_random(s)[0] for s in seeds]
