"""The goal over an episode: network estimates fused by odometry (:class:`GoalTracker`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from policies.relative_pose.data import relative_goal_target
from policies.relative_pose.model import TARGET_DIM, RelativePoseNet


def relative_goal_matrix(pred: np.ndarray) -> np.ndarray:
    """The 10 predicted numbers -> (4, 4) goal pose in the body frame (rotation from its two columns by
    Gram-Schmidt, so any prediction gives a proper rotation)."""
    p = np.asarray(pred, dtype=np.float64)
    if p.shape != (TARGET_DIM,) or not np.isfinite(p).all():
        raise ValueError(f"pred must be {TARGET_DIM} finite numbers (goal_in_body_frame layout), got shape {p.shape}")
    a, b = p[4:7], p[7:10]
    x = a / max(np.linalg.norm(a), 1e-8)
    y = b - x * (x @ b)
    y = y / max(np.linalg.norm(y), 1e-8)
    t = np.eye(4)
    t[:3, :3] = np.stack([x, y, np.cross(x, y)], axis=1)
    t[:3, 3] = p[:3]
    return t


@torch.no_grad()
def measure_goals(net: RelativePoseNet, images: np.ndarray, goals: np.ndarray, *, sigma0: float = 0.05,
                  sigma1: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """One batched network call for N observations: ``images`` and ``goals`` uint8 channel-last (N, H, W, 3) ->
    estimates (N, 10) and fusion weights (N, 2) (position, rotation): the predicted inverse variances with
    ``config.uncertainty``, else ``1 / (sigma0^2 + (sigma1 * d)^2)`` for both, ``d`` the estimated distance."""
    chw = lambda a: torch.as_tensor(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))  # noqa: E731
    pred, log_var = net.predict(chw(images), chw(goals))
    pred = pred.numpy()
    if log_var is not None:
        return pred, np.exp(-log_var.double().numpy())
    w = 1.0 / (sigma0 ** 2 + (sigma1 * np.linalg.norm(pred[:, :3].astype(np.float64), axis=1)) ** 2)
    return pred, np.stack([w, w], axis=1)


class GoalTracker:
    """The goal pose in the current body frame, fused over an episode from :class:`RelativePoseNet` estimates and
    the agent's own motion (observation-only: images and the actions it sent, no pose from the env).

    Why: one estimate is noisy (a held-out median error of tens of cm at 1-3 m) and a policy that acts on each
    estimate alone wanders, mostly into walls. A robot that localises a goal visually keeps it in its odometry
    frame; here the odometry is exact, because an env step moves the body by exactly the commanded twist
    (``sana_wm_env.envs.actions``: ``T' = T @ exp(a * limits * step_seconds)``). Every estimate is mapped into the
    episode's start body frame and averaged with the earlier ones, weighted by the network's predicted inverse
    variances (``config.uncertainty``) or else by ``1 / (sigma0^2 + (sigma1 * d)^2)`` with ``d`` the estimated
    distance (near views locate the goal better), earlier ones discounted by ``memory`` per step; rotations are
    averaged by projecting the weighted sum of rotation matrices onto SO(3).
    ``memory=0`` keeps only the latest estimate, ``memory=1`` averages all of them alike.

    Assumes REP-103 body actions (the network predicts in the body frame) and that actions are not clipped by the
    env beyond ``[-1, 1]`` (the same clip is applied here).
    """

    def __init__(self, net: RelativePoseNet, limits: Any, step_seconds: float, *, memory: float = 0.8,
                 sigma0: float = 0.05, sigma1: float = 0.3) -> None:
        if not np.isfinite(step_seconds) or step_seconds <= 0:
            raise ValueError(f"step_seconds must be > 0, got {step_seconds!r}")
        if sigma0 <= 0 or sigma1 < 0:
            raise ValueError(f"sigma0 must be > 0 and sigma1 >= 0 (metres, per metre), got {sigma0}, {sigma1}")
        if not 0.0 <= memory <= 1.0:
            raise ValueError(f"memory must be in [0, 1] (the weight kept by an estimate per step), got {memory!r}")
        self.net = net.eval()
        self.max_step = np.asarray(limits.scale, dtype=np.float64) * float(step_seconds)
        self.memory, self.sigma0, self.sigma1 = float(memory), float(sigma0), float(sigma1)
        self.clear()  # sets body: the current body in the episode's start body frame (odometry)

    @classmethod
    def for_env(cls, net: RelativePoseNet, env, **kwargs) -> GoalTracker:
        """A tracker with ``env``'s action limits and step length (a SANA-WM ImageNav env or a wrapper of one)."""
        return cls.for_sim(net, env.unwrapped.sim, **kwargs)

    @classmethod
    def for_sim(cls, net: RelativePoseNet, sim, **kwargs) -> GoalTracker:
        """A tracker with the action limits and step length of ``sim``: an env's simulation (``env.unwrapped.sim``)
        or a vector env (``WorldModelVectorEnv``); anything with ``limits``, ``step_seconds`` and ``action_frame``."""
        if sim.action_frame != "rep103":
            raise ValueError(f"GoalTracker needs action_frame='rep103' (body-frame actions; the network predicts the "
                             f"goal in the body frame), the env has {sim.action_frame!r}")
        return cls(net, sim.limits, sim.step_seconds, **kwargs)

    def measure(self, obs: dict) -> tuple[np.ndarray, np.ndarray]:
        """The network's estimate (10,) for one observation (``image`` and ``goal`` uint8 (H, W, 3)) and its fusion
        weights (position, rotation): see :func:`measure_goals`."""
        pred, weights = measure_goals(self.net, np.asarray(obs["image"])[None], np.asarray(obs["goal"])[None],
                                      sigma0=self.sigma0, sigma1=self.sigma1)
        return pred[0], weights[0]

    def clear(self) -> None:
        """Forget the episode: odometry back to the start body, no estimate fused."""
        self.body = np.eye(4)
        self._w, self._pos, self._rot, self.steps = np.zeros(2), np.zeros(3), np.zeros((3, 3)), 0

    def reset(self, obs: dict) -> np.ndarray:
        """Start an episode at ``obs`` (its first observation); returns the goal estimate (4, 4) in the body frame."""
        self.clear()
        return self.add(*self.measure(obs))

    def update(self, action: np.ndarray, obs: dict) -> np.ndarray:
        """Move by the step ``action`` (6,) was held for, then fuse the estimate from the new ``obs``."""
        self.move(action)
        return self.add(*self.measure(obs))

    def move(self, action: np.ndarray) -> None:
        """Odometry: the body moves by the twist the (clipped) ``action`` (6,) commands for one step."""
        from world_model.camera import se3_exp

        a = np.asarray(action, dtype=np.float64)
        if a.shape != (6,) or not np.isfinite(a).all():
            raise ValueError(f"action must be 6 finite numbers, got {action!r}")
        twist = np.clip(a, -1.0, 1.0) * self.max_step
        self.body = self.body @ se3_exp(torch.from_numpy(twist)).double().numpy()
        self.steps += 1

    def add(self, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Fuse one estimate ``pred`` (10,) of the goal from the current body with its (position, rotation)
        ``weights``; returns the fused estimate (4, 4) in the current body frame."""
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (2,) or not (np.isfinite(weights).all() and (weights > 0).all()):
            raise ValueError(f"weights must be 2 finite numbers > 0 (position, rotation), got {weights!r}")
        in_start = self.body @ relative_goal_matrix(pred)
        self._w, self._pos, self._rot = self.memory * self._w, self.memory * self._pos, self.memory * self._rot
        self._w = self._w + weights
        self._pos += weights[0] * in_start[:3, 3]
        self._rot += weights[1] * in_start[:3, :3]
        return self.estimate

    @property
    def goal_in_start(self) -> np.ndarray:
        """The fused goal pose (4, 4) in the episode's start body frame."""
        if not np.all(self._w > 0.0):
            raise ValueError("call reset(obs) first")
        u, _, vt = np.linalg.svd(self._rot)
        t = np.eye(4)
        t[:3, :3] = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
        t[:3, 3] = self._pos / self._w[0]
        return t

    @property
    def estimate(self) -> np.ndarray:
        """The fused goal pose (4, 4) in the current body frame."""
        return np.linalg.inv(self.body) @ self.goal_in_start

    def estimate_vector(self) -> np.ndarray:
        """:attr:`estimate` in :func:`policies.features.goal_in_body_frame`'s 10-number layout (float32)."""
        return relative_goal_target(np.eye(4), self.estimate)
