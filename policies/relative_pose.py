"""Where is the goal from here? A small CNN that reads the current view and the goal view (ImageNav) and
predicts the goal pose relative to the current body, trained offline on the MuJoCo twin.

ImageNav observes no pose: a policy must turn two 64x64 images into "the goal is 1.2 m ahead, 0.4 m to the left,
turned 30 degrees". PPO learning that from its sparse-ish reward alone, with a CNN from scratch, stays at the
level of random actions on a CPU budget (see the README table). Robot-learning practice is to pretrain the
visual encoder; here the twin gives exact labels for free, so the encoder is pretrained by supervision:

* **Data** (:func:`collect_pairs`): ImageNav episodes in the twin (training scenes), driven by the privileged
  pose controller with random gains and action noise, so the visited states cover the approach paths a policy
  takes. Every step records ``(image, goal image, goal_in_body_frame(pose, goal))``; the pose labels are
  privileged, but only the trained network is used at run time, and it sees images only.
* **Network** (:class:`RelativePoseNet`): the two images stacked channel-wise (early fusion) through four strided
  convolutions and a linear layer; a linear head predicts the 10 numbers of
  :func:`policies.sb3.goal_in_body_frame` (goal position in REP-103 body axes, m; its distance; the first two
  columns of the relative rotation).
* **Use**: :class:`policies.sb3.GoalFrameExtractor` with ``goal_pose_net=PATH`` feeds PPO the frozen network's
  features and prediction; ``examples/train_ppo_nav.py --goal-pose-net PATH``.

Files: :func:`save_relative_pose_net` writes ``{"config", "state_dict", "metrics"}`` with ``torch.save``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

TARGET_DIM = 10  # the layout of policies.sb3.goal_in_body_frame


@dataclass(frozen=True)
class RelativePoseNetConfig:
    """Architecture of :class:`RelativePoseNet` (stored with its weights)."""

    image_hw: tuple[int, int] = (64, 64)
    width: int = 32
    features_dim: int = 256

    def __post_init__(self) -> None:
        h, w = self.image_hw
        if min(h, w) < 32:
            raise ValueError(f"image_hw must be at least 32x32 (four stride-2 convolutions), got {self.image_hw}")
        if self.width < 1 or self.features_dim < 1:
            raise ValueError(f"width and features_dim must be >= 1, got {self.width}, {self.features_dim}")


class RelativePoseNet(nn.Module):
    """``(image, goal)`` uint8 channel-first ``(N, 3, H, W)`` each -> goal relative to the body ``(N, 10)``."""

    def __init__(self, config: RelativePoseNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or RelativePoseNetConfig()
        w = self.config.width
        self.trunk = nn.Sequential(
            nn.Conv2d(6, w, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        h, wd = (math.ceil(s / 16) for s in self.config.image_hw)
        self.fc = nn.Sequential(nn.Linear(4 * w * h * wd, self.config.features_dim), nn.ReLU())
        self.head = nn.Linear(self.config.features_dim, TARGET_DIM)

    def _check(self, image: torch.Tensor, goal: torch.Tensor) -> None:
        shape = (3, *self.config.image_hw)
        for name, x in (("image", image), ("goal", goal)):
            if x.ndim != 4 or tuple(x.shape[1:]) != shape:
                raise ValueError(f"{name} must have shape (N, {', '.join(map(str, shape))}) (channel-first), "
                                 f"got {tuple(x.shape)}")
        if image.shape[0] != goal.shape[0]:
            raise ValueError(f"image and goal batch sizes differ: {image.shape[0]} vs {goal.shape[0]}")

    def features(self, image: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """``(N, features_dim)``; images as uint8 (0-255) or floats already in 0-255."""
        self._check(image, goal)
        x = torch.cat([image, goal], dim=1).float() / 255.0
        return self.fc(self.trunk(x))

    def forward(self, image: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image, goal))


def save_relative_pose_net(net: RelativePoseNet, path: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = asdict(net.config)
    cfg["image_hw"] = list(cfg["image_hw"])
    torch.save({"format": "sana-wm-env/relative-pose-net", "config": cfg, "state_dict": net.state_dict(),
                "metrics": metrics or {}}, path)
    return path


def load_relative_pose_net(path: str | Path) -> RelativePoseNet:
    """Load a network written by :func:`save_relative_pose_net` (eval mode, on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no relative-pose network at {path}; train one with "
                                f"`python examples/pretrain_relative_pose.py --out {path}`")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != "sana-wm-env/relative-pose-net":
        raise ValueError(f"{path} is not a relative-pose network file (save_relative_pose_net writes them)")
    cfg = dict(blob["config"])
    cfg["image_hw"] = tuple(cfg["image_hw"])
    net = RelativePoseNet(RelativePoseNetConfig(**cfg))
    net.load_state_dict(blob["state_dict"])
    return net.eval()


# ------------------------------------------------------------------------------------------ data
def collect_pairs(
    num_samples: int,
    *,
    model: Any = "default",
    split: str = "train",
    seed: int = 0,
    action_noise: float = 0.3,
    gain_range: tuple[float, float] = (0.3, 1.0),
    max_steps: int = 100,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """``num_samples`` (image, goal image, relative goal) triples from twin ImageNav episodes.

    ``model``: whose geometry the twin takes (image size, FoV, frames per step), as for ``SanaWM-TwinImageNav-v0``;
    ``None`` for the twin defaults. Episodes are driven by the privileged pose controller with a gain drawn from
    ``gain_range`` per episode plus Gaussian action noise (std ``action_noise``). Returns uint8 ``image``/``goal``
    ``(N, 3, H, W)`` and float32 ``target (N, 10)``.
    """
    import gymnasium as gym

    from policies.sb3 import goal_in_body_frame
    from policies.scripted import PrivilegedPoseController

    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    if action_noise < 0 or not 0 < gain_range[0] <= gain_range[1] <= 1:
        raise ValueError(f"action_noise must be >= 0 and gain_range within (0, 1], got {action_noise}, {gain_range}")
    env = gym.make("SanaWM-TwinImageNav-v0", model=model, split=split, task_config={"max_steps": max_steps})
    rng = np.random.default_rng(seed)
    images, goals, poses, goal_poses = [], [], [], []
    bar = _progress(num_samples, "collecting", progress)
    episode = 0
    while len(images) < num_samples:
        obs, _ = env.reset(seed=seed * 1_000_003 + episode)
        episode += 1
        ctl = PrivilegedPoseController.for_env(env, gain=float(rng.uniform(*gain_range)))
        done = False
        while not done and len(images) < num_samples:
            images.append(obs["image"])
            goals.append(obs["goal"])
            poses.append(env.unwrapped.pose)
            goal_poses.append(env.unwrapped.goal_pose)
            bar.update(1)
            action = ctl.act(obs, env) + rng.normal(0.0, action_noise, 6).astype(np.float32)
            obs, _, term, trunc, _ = env.step(np.clip(action, -1.0, 1.0))
            done = term or trunc
    bar.close()
    env.close()
    target = goal_in_body_frame(torch.as_tensor(np.stack(poses)), torch.as_tensor(np.stack(goal_poses)))
    chw = lambda a: np.ascontiguousarray(np.stack(a).transpose(0, 3, 1, 2))  # noqa: E731
    return {"image": chw(images), "goal": chw(goals), "target": target.numpy().astype(np.float32),
            "episodes": np.asarray(episode)}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="sample")


# ------------------------------------------------------------------------------------------ training
def pose_errors(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Median goal-position error (m) and goal-heading error (deg) of predictions in the 10-number layout."""
    pos = (pred[:, :3] - target[:, :3]).norm(dim=-1)
    # heading of the goal's x axis in the body frame, from the first column of the relative rotation
    yaw = lambda x: torch.atan2(x[:, 5], x[:, 4])  # noqa: E731
    dyaw = torch.remainder(yaw(pred) - yaw(target) + math.pi, 2 * math.pi) - math.pi
    return {"median_position_error_m": float(pos.median()), "median_heading_error_deg":
            float(dyaw.abs().median() * 180 / math.pi), "median_goal_distance_m": float(target[:, 3].median())}


def train_relative_pose_net(
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray] | None = None,
    *,
    config: RelativePoseNetConfig | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> tuple[RelativePoseNet, dict[str, Any]]:
    """Fit a :class:`RelativePoseNet` by mean squared error on the 10 targets (Adam, cosine learning rate).

    Augmentation: none that would change the labels (no flips or crops; the pose maths depends on the pixels'
    geometry), only brightness jitter of +-10 % applied to both images alike. Returns the network (eval mode)
    and metrics: train/val loss per epoch and the val pose errors of :func:`pose_errors`.
    """
    for name, data in (("train", train), ("val", val)):
        if data is None:
            continue
        keys = ("image", "goal", "target")
        if not set(keys) <= set(data) or len({len(data[k]) for k in keys}) != 1:
            raise ValueError(f"{name} must hold 'image', 'goal', 'target' arrays of one length (collect_pairs)")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    torch.manual_seed(seed)
    hw = tuple(int(v) for v in train["image"].shape[2:])
    net = RelativePoseNet(config or RelativePoseNetConfig(image_hw=hw))
    images, goals = torch.as_tensor(train["image"]), torch.as_tensor(train["goal"])
    targets = torch.as_tensor(train["target"])
    n = len(targets)
    steps = epochs * math.ceil(n / batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    bar = _progress(steps, "training", progress)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            gain = 1.0 + 0.2 * (torch.rand(len(idx), 1, 1, 1, generator=gen) - 0.5)
            img = (images[idx].float() * gain).clamp(0, 255)
            gl = (goals[idx].float() * gain).clamp(0, 255)
            loss = F.mse_loss(net(img, gl), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            bar.update(1)
        row = {"epoch": epoch + 1, "train_loss": total / n}
        if val is not None:
            row.update(evaluate_relative_pose_net(net, val))
        history.append(row)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
    bar.close()
    net.eval()
    metrics: dict[str, Any] = {"history": history, "train_samples": n, "epochs": epochs, "batch_size": batch_size,
                               "lr": lr, "seconds": time.perf_counter() - t0}
    if val is not None:
        metrics["val"] = history[-1]
    return net, metrics


@torch.no_grad()
def evaluate_relative_pose_net(net: RelativePoseNet, data: dict[str, np.ndarray], batch_size: int = 512) -> dict:
    """Loss and pose errors of ``net`` on ``data`` (from :func:`collect_pairs`)."""
    was_training = net.training
    net.eval()
    preds = [net(torch.as_tensor(data["image"][i:i + batch_size]), torch.as_tensor(data["goal"][i:i + batch_size]))
             for i in range(0, len(data["target"]), batch_size)]
    net.train(was_training)
    pred, target = torch.cat(preds), torch.as_tensor(data["target"])
    return {"val_loss": float(F.mse_loss(pred, target)), **pose_errors(pred, target)}


# ------------------------------------------------------------------------------------------ a policy
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


class VisualServoPolicy:
    """ImageNav without privileged poses: the pose controller driven by :class:`RelativePoseNet`'s estimate of
    where the goal is (observation-only; a scripted counterpart of PPO with the same encoder)."""

    privileged = False

    def __init__(self, net: RelativePoseNet | str | Path, gain: float = 0.8) -> None:
        self.net = load_relative_pose_net(net) if isinstance(net, str | Path) else net.eval()
        self.gain = gain
        self.name = f"servo:{Path(net).name}" if isinstance(net, str | Path) else "servo"
        self.controller = None

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

    @torch.no_grad()
    def act(self, obs, env=None) -> np.ndarray:
        if self.controller is None:
            raise ValueError("call reset(env) before act()")
        chw = lambda a: torch.as_tensor(np.ascontiguousarray(np.asarray(a).transpose(2, 0, 1)))[None]  # noqa: E731
        pred = self.net(chw(obs["image"]), chw(obs["goal"]))[0].numpy()
        return self.controller.command_relative(relative_goal_matrix(pred))
