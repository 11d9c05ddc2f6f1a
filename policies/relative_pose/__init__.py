"""Where is the goal from here? A small CNN that reads the current view and the goal view (ImageNav) and
predicts the goal pose relative to the current body, trained offline on the MuJoCo twin.

ImageNav observes no pose: a policy must turn two 64x64 images into "the goal is 1.2 m ahead, 0.4 m to the left,
turned 30 degrees". PPO learning that from its sparse-ish reward alone, with a CNN from scratch, stays at the
level of random actions on a CPU budget (docs/results.md). Robot-learning practice is to pretrain the
visual encoder; here the twin gives exact labels for free, so the encoder is pretrained by supervision:

* **Data** (:func:`collect_pairs`): many twin scenes (training split), several ImageNav start/goal draws per
  scene (exactly as ``reset`` draws them), and several views per goal: the start view and collision-free poses
  sampled along the approach from start to goal (:func:`sample_approach_pose`), so the pairs cover what a policy
  sees on its way. Each pair is ``(image, goal image, goal_in_body_frame(pose, goal))``; the pose labels are
  privileged, but only the trained network is used at run time, and it sees images only. Many scenes matter
  more than many steps: a network trained on a few hundred scenes memorises them.
* **Network** (:class:`RelativePoseNet`): early fusion (the two images stacked channel-wise through four
  strided convolutions) or, with ``correlation_radius > 0``, a siamese encoder plus a local cost volume
  (:func:`local_correlation`); then a linear layer and a linear head predicting the 10 numbers of
  :func:`policies.features.goal_in_body_frame` (goal position in REP-103 body axes, m; its distance; the first two
  columns of the relative rotation).
* **Use**: :class:`GoalTracker` fuses its estimates over an episode by odometry; :class:`VisualServoPolicy`
  (``servo:PATH``) steers the pose controller by the tracked goal; :class:`policies.sb3.GoalFrameExtractor` with
  ``goal_pose_net=PATH`` feeds PPO the frozen network's features and prediction, and
  :class:`policies.sb3.GoalTrackerVecEnv` the tracked goal (``examples/train_ppo_nav.py --goal-pose-net PATH
  --goal-tracker-memory 0.8``).

Modules: ``model`` (the network, its loss and file), ``data`` (:func:`collect_pairs`), ``training``
(:func:`train_relative_pose_net`), ``tracker`` (:class:`GoalTracker`) and ``servo`` (:class:`VisualServoPolicy`);
this package re-exports their public names. Files: :func:`save_relative_pose_net` writes
``{"config", "state_dict", "metrics"}`` with ``torch.save``.
"""

from __future__ import annotations

from policies.relative_pose.data import collect_pairs, relative_goal_target, sample_approach_pose
from policies.relative_pose.model import (
    TARGET_DIM,
    RelativePoseNet,
    RelativePoseNetConfig,
    expand_log_var,
    load_relative_pose_net,
    local_correlation,
    relative_pose_loss,
    save_relative_pose_net,
)
from policies.relative_pose.servo import VisualServoPolicy
from policies.relative_pose.tracker import GoalTracker, measure_goals, relative_goal_matrix
from policies.relative_pose.training import evaluate_relative_pose_net, pose_errors, train_relative_pose_net

__all__ = [
    "GoalTracker",
    "RelativePoseNet",
    "RelativePoseNetConfig",
    "TARGET_DIM",
    "VisualServoPolicy",
    "collect_pairs",
    "evaluate_relative_pose_net",
    "expand_log_var",
    "load_relative_pose_net",
    "local_correlation",
    "measure_goals",
    "pose_errors",
    "relative_goal_matrix",
    "relative_goal_target",
    "relative_pose_loss",
    "sample_approach_pose",
    "save_relative_pose_net",
    "train_relative_pose_net",
]
