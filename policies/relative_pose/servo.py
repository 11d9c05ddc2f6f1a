"""The visual servo: the pose controller steered by the tracked goal (``servo:PATH`` policies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policies.relative_pose.model import RelativePoseNet, load_relative_pose_net
from policies.relative_pose.tracker import GoalTracker


class VisualServoPolicy:
    """ImageNav without privileged poses: the pose controller driven by a :class:`GoalTracker` on
    :class:`RelativePoseNet`'s estimates (observation-only; a scripted counterpart of PPO with the same encoder).

    ``memory``: as in :class:`GoalTracker` (0: act on each step's estimate alone).
    """

    privileged = False

    def __init__(self, net: RelativePoseNet | str | Path, gain: float = 0.8, memory: float = 0.8) -> None:
        self.net = load_relative_pose_net(net) if isinstance(net, str | Path) else net.eval()
        self.gain, self.memory = gain, memory
        base = f"servo:{Path(net).name}" if isinstance(net, str | Path) else "servo"
        self.name = f"{base} (memory {memory:g})"
        self.controller = None
        self.tracker: GoalTracker | None = None
        self._last_action: np.ndarray | None = None

    def reset(self, env=None, seed: int | None = None) -> None:
        import gymnasium as gym

        from policies.scripted import PoseController

        if env is None:
            raise ValueError("VisualServoPolicy.reset needs env (its action limits and step length)")
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict) or "goal" not in space.spaces or (
                space["goal"].shape != (*self.net.config.image_hw, 3)):
            raise ValueError(f"VisualServoPolicy needs ImageNav observations with {self.net.config.image_hw} goal "
                             f"images, got {space}")
        self.controller = PoseController.for_env(env, gain=self.gain)
        self.tracker = GoalTracker.for_env(self.net, env, memory=self.memory)
        self._last_action = None

    def act(self, obs, env=None) -> np.ndarray:
        if self.controller is None or self.tracker is None:
            raise ValueError("call reset(env) before act()")
        if self._last_action is None:
            estimate = self.tracker.reset(obs)
        else:
            estimate = self.tracker.update(self._last_action, obs)
        self._last_action = self.controller.command_relative(estimate)
        return self._last_action
