"""Sampling-based planners over imagined rollouts: CEM and MPPI, with pose-goal and image-goal costs.

Both call ``env.imagine(actions (K, H, 6))`` once per iteration (K candidate futures in one batch from the
env's current state, state untouched) and return the first action of the best plan (receding horizon).

* pose-goal cost: minus the task reward summed over the horizon (rewards come from poses: no frames needed);
* image-goal cost: mean squared pixel distance between each candidate's last imagined frame and a goal image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CostFn = Callable[[object, np.ndarray], np.ndarray]  # (env, actions (K, H, 6)) -> costs (K,)


def pose_goal_cost(env, actions: np.ndarray) -> np.ndarray:
    """Minus the summed task reward of each imagined future (Nav: progress to the goal pose)."""
    return -env.unwrapped.imagine(actions, frames=False)["reward"].sum(axis=1)


def image_goal_cost(goal_image: np.ndarray) -> CostFn:
    """Cost: mean squared difference (in [0, 1] units) of the last imagined frame to ``goal_image`` (H, W, 3)."""
    goal = np.asarray(goal_image, dtype=np.float32) / 255.0

    def cost(env, actions: np.ndarray) -> np.ndarray:
        last = env.unwrapped.imagine(actions)["frames"][:, -1].astype(np.float32) / 255.0
        return ((last - goal[None]) ** 2).mean(axis=(1, 2, 3))

    return cost


class CEM:
    """Cross-entropy method over action sequences (H, 6) in [-1, 1]."""

    def __init__(self, horizon: int = 4, samples: int = 32, elites: int = 4, iterations: int = 3,
                 init_std: float = 0.6, seed: int | None = 0) -> None:
        if not 1 <= elites <= samples:
            raise ValueError(f"elites must be in [1, samples={samples}], got {elites}")
        if horizon < 1 or iterations < 1:
            raise ValueError(f"horizon and iterations must be >= 1, got {horizon}, {iterations}")
        self.horizon, self.samples, self.elites, self.iterations = horizon, samples, elites, iterations
        self.init_std = init_std
        self.rng = np.random.default_rng(seed)
        self.mean = np.zeros((horizon, 6))

    def reset(self) -> None:
        self.mean = np.zeros((self.horizon, 6))

    def act(self, env, cost: CostFn = pose_goal_cost) -> np.ndarray:
        mean, std = self.mean.copy(), np.full((self.horizon, 6), self.init_std)
        best, best_cost = mean, np.inf
        for _ in range(self.iterations):
            cand = np.clip(mean + std * self.rng.standard_normal((self.samples, self.horizon, 6)), -1, 1)
            cand[0] = np.clip(mean, -1, 1)
            c = cost(env, cand)
            order = np.argsort(c)
            elite = cand[order[: self.elites]]
            if c[order[0]] < best_cost:
                best, best_cost = cand[order[0]], c[order[0]]
            mean, std = elite.mean(axis=0), elite.std(axis=0) + 0.05
        self.mean = np.concatenate([best[1:], np.zeros((1, 6))])  # warm start: shift the plan
        return best[0].astype(np.float32)


class MPPI:
    """Model-predictive path integral control: exponentially cost-weighted average of noisy action sequences."""

    def __init__(self, horizon: int = 4, samples: int = 32, temperature: float = 0.05, noise_std: float = 0.5,
                 seed: int | None = 0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.horizon, self.samples, self.temperature, self.noise_std = horizon, samples, temperature, noise_std
        self.rng = np.random.default_rng(seed)
        self.mean = np.zeros((horizon, 6))

    def reset(self) -> None:
        self.mean = np.zeros((self.horizon, 6))

    def act(self, env, cost: CostFn = pose_goal_cost) -> np.ndarray:
        noise = self.noise_std * self.rng.standard_normal((self.samples, self.horizon, 6))
        noise[0] = 0.0
        cand = np.clip(self.mean[None] + noise, -1, 1)
        c = cost(env, cand)
        w = np.exp(-(c - c.min()) / self.temperature)
        w /= w.sum()
        plan = np.clip((w[:, None, None] * cand).sum(axis=0), -1, 1)
        self.mean = np.concatenate([plan[1:], np.zeros((1, 6))])
        return plan[0].astype(np.float32)


class PlannerPolicy:
    """A planner as an evaluation policy: the pose-goal cost on Nav, the image-goal cost on ImageNav.

    Nav observes its goal pose, so the pose-goal cost (the task reward of imagined poses) is observation-only.
    ImageNav observes only a goal image: the cost compares imagined frames with ``obs["goal"]``, so the
    planner sees the world only through the frames of the env it runs in (world model or twin).
    """

    privileged = False

    def __init__(self, planner: CEM | MPPI, name: str | None = None) -> None:
        self.planner = planner
        self.name = name or type(planner).__name__.lower()

    def reset(self, env=None, seed: int | None = None) -> None:
        self.planner.reset()
        if seed is not None:
            self.planner.rng = np.random.default_rng(seed)

    def act(self, obs, env) -> np.ndarray:
        task = env.unwrapped.sim.task.name
        if task == "nav":
            return self.planner.act(env, pose_goal_cost)
        if task == "imagenav":
            return self.planner.act(env, image_goal_cost(obs["goal"]))
        raise ValueError(f"PlannerPolicy supports the nav and imagenav tasks, got {task!r}")
