"""Policies and training glue for the SANA-WM envs (may import sana_wm_env; never imported by its library code).

``make_policy(spec, env)`` builds the policies ``sana-wm evaluate-policy`` names:

* ``random``    - ``scripted.RandomPolicy``;
* ``scripted``  - ``scripted.PoseController`` on Nav; on ImageNav (no pose observed) the privileged oracle
  ``scripted.PrivilegedPoseController``, labelled ``privileged`` in results;
* ``cem`` / ``mppi`` - ``planners.PlannerPolicy`` (pose-goal cost on Nav, image-goal cost on ImageNav);
* ``ppo:PATH.zip`` (or ``sac:``, ``td3:``, ...) - ``sb3.SB3Policy``, a saved Stable-Baselines3 model;
* ``rllib:DIR`` - ``rllib.RLlibPolicy``, a saved RLlib module folder (needs the ``rllib`` extra);
* ``servo:PATH.pt`` - ImageNav: ``relative_pose.VisualServoPolicy``, the pose controller on a pretrained
  relative-pose network's estimate of the goal (observation-only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

POLICY_SPECS: tuple[str, ...] = ("random", "scripted", "cem", "mppi", "ppo:PATH.zip", "rllib:DIR", "servo:PATH.pt")


def check_policy_spec(spec: str) -> None:
    """Fail (ValueError/FileNotFoundError naming the spec or its file) unless ``spec`` names a policy that can be
    built; cheap, so a command checks its policy before loading a world model. A ``servo:`` network is loaded."""
    if spec in ("random", "scripted", "cem", "mppi"):
        return
    algo, sep, path = spec.partition(":")
    if not (sep and algo and path):
        raise ValueError(f"policy must be one of {', '.join(POLICY_SPECS)} (ALGO:PATH for any SB3 algorithm); "
                         f"got {spec!r}")
    if algo == "servo":
        from policies.relative_pose import load_relative_pose_net

        load_relative_pose_net(path)
    elif algo == "rllib":
        if not Path(path).is_dir():
            raise FileNotFoundError(f"policy {spec!r}: no RLlib module folder at {path} (RLModule.save_to_path, or a "
                                    "checkpoint's learner_group/learner/rl_module/default_policy)")
    elif not Path(path).is_file():
        raise FileNotFoundError(f"policy {spec!r}: no SB3 model zip at {path}")


def make_policy(spec: str, env, *, seed: int = 0, planner: dict[str, Any] | None = None):
    """The policy named by ``spec`` (see the module docstring) for ``env`` (whose limits and task it reads)."""
    task = env.unwrapped.sim.task.name
    if spec == "random":
        from policies.scripted import RandomPolicy

        return RandomPolicy(seed)
    if spec == "scripted":
        from policies.scripted import PoseController, PrivilegedPoseController

        cls = PoseController if env.unwrapped.sim.task.observes_pose and task == "nav" else PrivilegedPoseController
        return cls.for_env(env)
    if spec in ("cem", "mppi"):
        from policies.planners import CEM, MPPI, PlannerPolicy

        return PlannerPolicy((CEM if spec == "cem" else MPPI)(seed=seed, **(planner or {})), name=spec)
    algo, sep, path = spec.partition(":")
    if algo == "servo" and path:
        from policies.relative_pose import VisualServoPolicy

        return VisualServoPolicy(path)
    if algo == "rllib" and path:
        try:
            from policies.rllib import RLlibPolicy
        except ImportError as exc:
            raise ImportError(f"policy {spec!r} needs RLlib: pip install 'sana-wm-env[rllib]' (in its own "
                              "environment: ray[rllib] pins its own gymnasium)") from exc
        return RLlibPolicy(path)
    if sep and path:
        from policies.sb3 import SB3Policy

        return SB3Policy(path, algo=algo.upper())
    raise ValueError(f"policy must be one of {', '.join(POLICY_SPECS)} (ALGO:PATH for any SB3 algorithm); got {spec!r}")
