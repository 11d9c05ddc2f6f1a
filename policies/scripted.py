"""Baseline policies: uniform random actions and a scripted proportional pose controller.

Every policy here has the interface the evaluation uses (``sana_wm_env.evaluation.policy``):
``reset(env, seed)`` at the start of an episode and ``act(obs, env) -> float32 (6,)`` in ``[-1, 1]``.

* :class:`RandomPolicy` - i.i.d. uniform actions in ``[-1, 1]^6`` from its own generator, re-seeded per
  episode, so the same seed gives the same actions in the world model and in its twin.
* :class:`PoseController` - Nav only: drives the observed ``pose`` to the observed ``goal`` (both relative
  to the start, in the action frame's convention; see ``sana_wm_env.envs.tasks``). Each step it computes the
  goal in the current frame, ``T_rel = pose^-1 @ goal`` (translation ``p``, rotation vector ``w``), and
  commands the twist ``gain * [p, w]`` for this step, i.e. actions ``gain * [p, w] / (limits * step_seconds)``.
  It is holonomic: it translates straight at the goal (forward, sideways and vertically at once, so the path
  is the straight line SPL measures against) while rotating towards the goal orientation. When a command
  exceeds the limits, the linear part and the angular part are each scaled down as a whole (never clipped per
  axis), so the direction of motion is kept. Axes with a zero speed limit get no command. ``gain < 1``
  leaves slack for the coupling of translation and rotation inside one step (``T @ exp(xi)`` moves on a
  helix), which the next step's feedback removes. The same maths holds in both action frames because the
  observed poses are expressed in the action frame's own convention.
* :class:`PrivilegedPoseController` - the same controller fed with the env's *privileged* poses
  (``env.unwrapped.pose`` / ``goal_pose``), for tasks that observe no pose (ImageNav). It is an oracle upper
  bound, not an observation-only policy; the evaluation labels it ``privileged``. For an observation-only
  ImageNav baseline use CEM with the image-goal cost (``policies.planners.image_goal_cost``).
"""

from __future__ import annotations

import numpy as np

from sana_wm_env.envs.actions import ActionLimits
from world_model.camera import pose7_to_matrix, se3_inverse, so3_log


class RandomPolicy:
    """Uniform random actions in ``[-1, 1]^6``; ``reset(seed=s)`` makes the episode's actions reproducible."""

    name = "random"
    privileged = False

    def __init__(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def reset(self, env=None, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def act(self, obs=None, env=None) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, 6).astype(np.float32)


class PoseController:
    """Proportional pose controller for Nav (see the module docstring): observed pose -> observed goal."""

    name = "scripted"
    privileged = False

    def __init__(self, limits: ActionLimits, step_seconds: float, gain: float = 0.8) -> None:
        if not isinstance(limits, ActionLimits):
            raise ValueError(f"limits must be an ActionLimits, got {type(limits).__name__}")
        if not np.isfinite(step_seconds) or step_seconds <= 0:
            raise ValueError(f"step_seconds must be > 0, got {step_seconds!r}")
        if not 0 < gain <= 1:
            raise ValueError(f"gain must be in (0, 1], got {gain!r}")
        self.gain = float(gain)
        self.max_step = limits.scale * float(step_seconds)  # (6,) motion per step at |a| = 1

    @classmethod
    def for_env(cls, env, gain: float = 0.8) -> PoseController:
        """A controller with the action limits and step duration of ``env`` (a SANA-WM env or a wrapper of one)."""
        sim = env.unwrapped.sim
        return cls(sim.limits, sim.step_seconds, gain)

    def reset(self, env=None, seed: int | None = None) -> None:
        """Stateless: nothing to reset."""

    def command(self, pose: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The action (6,) float32 that moves ``pose`` towards ``goal`` (both pose7 in the same frame)."""
        mats = []
        for name, x in (("pose", pose), ("goal", goal)):
            try:
                if np.shape(x) != (7,):
                    raise ValueError(f"got shape {np.shape(x)}")
                mats.append(pose7_to_matrix(np.asarray(x, dtype=np.float64)))
            except ValueError as exc:
                raise ValueError(f"the {name} pose must be [x, y, z, qx, qy, qz, qw] with a unit quaternion, got {x!r} "
                                 f"({exc})") from None
        return self.command_relative((se3_inverse(mats[0]) @ mats[1]).numpy())

    def command_relative(self, rel: np.ndarray) -> np.ndarray:
        """The action (6,) float32 towards a goal at ``rel`` (4, 4), the goal pose in the current body frame."""
        twist = self.gain * np.concatenate([rel[:3, 3], so3_log(np.asarray(rel[:3, :3], dtype=np.float64)).numpy()])
        movable = self.max_step > 0
        a = np.zeros(6)
        a[movable] = twist[movable] / self.max_step[movable]
        for part in (slice(0, 3), slice(3, 6)):  # keep each part's direction: scale, never clip per axis
            a[part] /= max(1.0, float(np.abs(a[part]).max()))
        return a.astype(np.float32)

    def act(self, obs, env=None) -> np.ndarray:
        if not isinstance(obs, dict) or "pose" not in obs or np.shape(obs.get("goal")) != (7,):
            raise ValueError("PoseController needs dict observations with a 'pose' and a pose 'goal' (the Nav task); "
                             "for ImageNav use PrivilegedPoseController (oracle) or CEM with the image-goal cost")
        return self.command(obs["pose"], obs["goal"])


class PrivilegedPoseController(PoseController):
    """``PoseController`` on the env's privileged pose and goal pose (an oracle for tasks without pose obs)."""

    name = "scripted-privileged"
    privileged = True

    def act(self, obs, env=None) -> np.ndarray:
        if env is None:
            raise ValueError("PrivilegedPoseController.act needs env (it reads env.unwrapped.pose and goal_pose)")
        goal = env.unwrapped.goal_pose
        if goal is None:
            raise ValueError("the env's task has no goal pose (Explore?); the pose controller needs one")
        return self.command(env.unwrapped.pose, goal)
