"""Fitting and scoring the relative-pose network on :func:`~policies.relative_pose.data.collect_pairs` data."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from policies.relative_pose.data import _progress
from policies.relative_pose.model import RelativePoseNet, RelativePoseNetConfig, relative_pose_loss


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
    """Fit a :class:`RelativePoseNet` on the 10 targets (Adam, cosine learning rate) by mean squared error, or
    with ``config.uncertainty`` by :func:`relative_pose_loss`'s beta-NLL.

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
    bar = _progress(steps, "training", progress, "step")
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
            loss = relative_pose_loss(*net.predict(img, gl), targets[idx])
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
    outs = [net.predict(torch.as_tensor(data["image"][i:i + batch_size]),
                        torch.as_tensor(data["goal"][i:i + batch_size]))
            for i in range(0, len(data["target"]), batch_size)]
    net.train(was_training)
    pred, target = torch.cat([m for m, _ in outs]), torch.as_tensor(data["target"])
    out = {"val_loss": float(F.mse_loss(pred, target)), **pose_errors(pred, target)}
    if net.log_var is not None:  # the likelihood, and how often the position error is within the predicted sigma
        log_var = torch.cat([lv for _, lv in outs])
        out["val_nll"] = float(relative_pose_loss(pred, log_var, target, beta=0.0))
        err = (pred[:, :3] - target[:, :3]).norm(dim=-1) / torch.exp(0.5 * log_var[:, 0])
        out["val_position_within_predicted_rms"] = float((err <= 3 ** 0.5).float().mean())  # 3-D: E|e|^2 = 3 sigma^2
    return out
