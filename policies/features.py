"""Observation features shared by every RL integration (Stable-Baselines3, RLlib): plain PyTorch, no RL library."""

from __future__ import annotations

import torch

from world_model.camera import quat_to_rotmat

__all__ = ["GOAL_FRAME_DIM", "goal_in_body_frame"]

GOAL_FRAME_DIM = 10  # the width of goal_in_body_frame's output


def goal_in_body_frame(pose: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """The goal seen from the current body: ``(N, 10)`` = position (3, m, REP-103 body axes), distance (1) and the
    first two columns of the relative rotation ``R_pose^T R_goal`` (6, a continuous rotation code).

    ``pose`` and ``goal`` are ``(N, 7)`` [x, y, z, qx, qy, qz, qw] in one frame (the env's start frame).
    """
    r_pose, r_goal = quat_to_rotmat(pose[:, 3:], check=False), quat_to_rotmat(goal[:, 3:], check=False)
    rel_pos = torch.einsum("nji,nj->ni", r_pose, goal[:, :3] - pose[:, :3])
    rel_rot = r_pose.transpose(1, 2) @ r_goal
    return torch.cat([rel_pos, rel_pos.norm(dim=-1, keepdim=True), rel_rot[:, :, 0], rel_rot[:, :, 1]], dim=-1)
