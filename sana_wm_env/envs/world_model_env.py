"""``WorldModelEnv``: a Gymnasium env whose physics is a SANA-WM world model; ``TwinEnv``: its MuJoCo twin.

>>> env = gymnasium.make("SanaWM-Nav-v0")               # the bundled model, Nav task
>>> obs, info = env.reset(seed=0)                       # first frame rendered in a twin-world scene
>>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

One step is one generator chunk (``frames_per_step`` frames, ``frames_per_step / fps`` seconds). Actions are
``Box(-1, 1, (6,))`` velocity commands (``sana_wm_env.envs.actions``); observations ``Dict(image, pose, goal)``
per task (``sana_wm_env.envs.tasks``), or the image alone (``obs_mode="image"``), or every frame of the chunk
(``obs_mode="frames"``, image ``(n, H, W, 3)``; at reset the start frame repeated). ``info`` carries every
frame's camera-to-world pose (``frames_c2w``, OpenCV, world frame) and timestamp (s since the episode start),
and how many action components were clipped.

``reset(seed=, options=)``: without options the seed draws a twin-world scene, a free start pose and a goal;
``options`` may hold ``scene=(family, seed)``, ``goal`` (pose7 relative to the start), or ``image`` (path or
uint8 array) with ``intrinsics`` ([fx, fy, cx, cy] of that image) and for ImageNav ``goal_image``; ``text``
(prompt features ``(L, C)`` for a text model). Same seed and actions give the same frames.

``compile="default"`` runs the world model's streaming step through ``torch.compile`` (inductor): on a CPU
x1.3-1.4 steps/s on a one-frame chunk, after 1.5-4 minutes of compiling during the first steps of the first
episode (docs/benchmarks.md); ``None`` (the default) stays eager.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from sana_wm_env.envs.actions import ActionLimits
from sana_wm_env.envs.core import CameraSim
from sana_wm_env.envs.rendering import HumanWindow
from world_model.bundles import WorldModel


class WorldModelEnv(gym.Env):
    """One camera in a world model (``source="world_model"``) or in its twin scene (``TwinEnv``)."""

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 16}
    source = "world_model"

    def __init__(
        self,
        task: str = "nav",
        model: WorldModel | str | Path | None = "default",
        *,
        generator: str = "streaming",
        device: str | torch.device = "cpu",
        compile: str | None = None,
        action_frame: str = "rep103",
        action_limits: ActionLimits | dict | None = None,
        mount: np.ndarray | None = None,
        obs_mode: str = "dict",
        families: tuple[str, ...] = ("rooms",),
        split: str = "train",
        camera_height: str = "handheld",
        render_mode: str | None = None,
        task_config: dict | None = None,
        **geometry: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.sim = CameraSim(
            1, task=task, source=self.source, model=model, generator=generator, device=device, compile=compile,
            action_frame=action_frame, action_limits=action_limits, mount=mount, obs_mode=obs_mode,
            families=families, split=split, camera_height=camera_height, task_config=task_config, **geometry,
        )
        self.observation_space = self.sim.observation_space
        self.action_space = self.sim.action_space
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": int(round(self.sim.fps))}
        self._window: HumanWindow | None = None

    # gymnasium API ---------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options must be a dict or None, got {type(options).__name__}")
        obs, infos = self.sim.reset([0], [self.np_random], [options])
        if self.render_mode == "human":
            self._show()
        return obs[0], infos[0]

    def step(self, action):
        obs, rewards, terms, truncs, infos = self.sim.step([0], action)
        if self.render_mode == "human":
            self._show()
        return obs[0], float(rewards[0]), bool(terms[0]), bool(truncs[0]), infos[0]

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array' or 'human'")
            return None
        frame = self.rgb_frame()
        if self.render_mode == "human":
            self._show(frame)
            return None
        return frame

    def close(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None
        self.sim.close()

    # extras ----------------------------------------------------------------------------------------
    def imagine(self, actions, frames: bool = True) -> dict[str, np.ndarray]:
        """K candidate futures of ``actions`` (K, H, 6) in one batch; the env's state is left unchanged.

        See ``CameraSim.imagine``: ``frames`` (K, H * n, h, w, 3), ``c2w``, ``pose`` (K, H, 7), ``reward`` (K, H).
        """
        return self.sim.imagine(0, actions, frames=frames)

    @property
    def pose(self) -> np.ndarray:
        """Current pose [x, y, z, qx, qy, qz, qw] relative to the start (privileged, also for ImageNav)."""
        return self.sim.relative_pose(0, self.sim.body(0))

    @property
    def goal_pose(self) -> np.ndarray | None:
        ep = self.sim.subs[0].episode
        return None if ep is None or ep.goal_body is None else self.sim.relative_pose(0, ep.goal_body)

    def rgb_frame(self) -> np.ndarray:
        """The last frame enlarged, with the HUD: pose (x, y, z, yaw), goal distance/angle, step."""
        return self.sim.rgb_frame(0)

    def _show(self, frame: np.ndarray | None = None) -> None:
        if self._window is None:
            self._window = HumanWindow(f"SANA-WM {self.sim.task.name} ({self.source})")
        self._window.show(self.rgb_frame() if frame is None else frame, self.metadata["render_fps"])


class TwinEnv(WorldModelEnv):
    """The MuJoCo twin of a ``WorldModelEnv``: same spaces, poses and rewards, frames rendered from the scene.

    ``model`` (optional) is the world model whose geometry (image size, fps, frames per step, field of view) the
    twin copies; without it ``image_hw``, ``fps``, ``frames_per_step`` and ``fov_deg`` default to the bundled
    CPU model's (64x64, 16 fps, 3 frames, 70 degrees).
    """

    source = "twin"

    def __init__(self, task: str = "nav", model: WorldModel | str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(task, model, **kwargs)
