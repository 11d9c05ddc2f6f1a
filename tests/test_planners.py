"""CEM and MPPI over imagined rollouts reach a pose goal in the twin; the image-goal cost ranks views."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sana_wm_env  # noqa: F401
from policies.planners import CEM, MPPI, image_goal_cost, pose_goal_cost

GOAL = [1.2, 0.4, 0.0, 0.0, 0.0, np.sin(np.radians(20)), np.cos(np.radians(20))]  # 1.26 m away, 40 deg yaw


@pytest.mark.parametrize("planner", [CEM(horizon=3, samples=24, elites=4, iterations=2), MPPI(horizon=4, samples=64)])
def test_planner_reaches_pose_goal(planner):
    env = gym.make("SanaWM-TwinNav-v0", image_hw=(16, 16), task_config={"max_steps": 40})
    env.reset(seed=3, options={"goal": GOAL})
    success = False
    for _ in range(40):
        _, _, term, trunc, info = env.step(planner.act(env, pose_goal_cost))
        if term or trunc:
            success = info["is_success"]
            break
    assert success


def test_image_goal_cost_prefers_the_goal_view():
    env = gym.make("SanaWM-TwinImageNav-v0", image_hw=(16, 16))
    obs, _ = env.reset(seed=1)
    cost = image_goal_cost(obs["image"])  # the current view as "goal": standing still must cost least
    plans = np.zeros((3, 1, 6))
    plans[1, 0, 5], plans[2, 0, 5] = 1.0, -1.0
    c = cost(env, plans)
    assert c[0] < c[1] and c[0] < c[2] and c[0] == pytest.approx(0.0, abs=1e-6)
