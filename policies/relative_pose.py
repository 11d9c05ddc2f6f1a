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
  :func:`policies.sb3.goal_in_body_frame` (goal position in REP-103 body axes, m; its distance; the first two
  columns of the relative rotation).
* **Use**: :class:`GoalTracker` fuses its estimates over an episode by odometry; :class:`VisualServoPolicy`
  (``servo:PATH``) steers the pose controller by the tracked goal; :class:`policies.sb3.GoalFrameExtractor` with
  ``goal_pose_net=PATH`` feeds PPO the frozen network's features and prediction, and
  :class:`policies.sb3.GoalTrackerVecEnv` the tracked goal (``examples/train_ppo_nav.py --goal-pose-net PATH
  --goal-tracker-memory 0.8``).

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
    """Architecture of :class:`RelativePoseNet` (stored with its weights).

    ``correlation_radius`` 0: early fusion, the two images stacked channel-wise into one CNN. ``r > 0``: a siamese
    encoder maps each image to 16x16 feature maps, and a cost volume (the correlation of every current-view
    feature with the goal-view features within ``r`` cells, ``(2r + 1)^2`` channels) goes with both maps into the
    regression CNN: matching the two views is then built in rather than learnt from scratch.

    ``uncertainty``: a second head predicts the log-variance of the position (m^2) and of the rotation code, trained
    by a Gaussian likelihood; :class:`GoalTracker` weights estimates by it.
    """

    image_hw: tuple[int, int] = (64, 64)
    width: int = 32
    features_dim: int = 256
    correlation_radius: int = 0
    uncertainty: bool = False

    def __post_init__(self) -> None:
        h, w = self.image_hw
        if min(h, w) < 32:
            raise ValueError(f"image_hw must be at least 32x32 (four stride-2 convolutions), got {self.image_hw}")
        if self.width < 1 or self.features_dim < 1:
            raise ValueError(f"width and features_dim must be >= 1, got {self.width}, {self.features_dim}")
        if not isinstance(self.correlation_radius, int) or not 0 <= self.correlation_radius <= min(h, w) // 8:
            raise ValueError(f"correlation_radius must be an int in [0, {min(h, w) // 8}] (cells of the 1/4-scale "
                             f"feature map), got {self.correlation_radius!r}")


def local_correlation(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """Cost volume ``(N, (2r+1)^2, H, W)``: channel-mean of ``a[y, x] * b[y + dy, x + dx]`` for every offset
    ``|dy|, |dx| <= r`` (zero outside ``b``), offsets in row-major order.

    Computed as one ``bmm`` of all position pairs and a gather of the window: on a 16x16 map that is ~10x faster
    on a CPU than 81 shifted products, forward and backward.
    """
    n, c, h, w = a.shape
    size = 2 * radius + 1
    dy, dx = (t.reshape(-1) for t in torch.meshgrid(torch.arange(size) - radius, torch.arange(size) - radius,
                                                    indexing="ij"))
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ty, tx = ys.reshape(-1, 1) + dy, xs.reshape(-1, 1) + dx  # (HW, K) target cells
    inside = ((ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)).to(a.dtype)
    index = (ty.clamp(0, h - 1) * w + tx.clamp(0, w - 1)).to(a.device)
    pairs = torch.bmm(a.flatten(2).transpose(1, 2), b.flatten(2)) / c  # (N, HW, HW)
    corr = pairs.gather(2, index.expand(n, -1, -1)) * inside.to(a.device)
    return corr.transpose(1, 2).reshape(n, size * size, h, w)


class RelativePoseNet(nn.Module):
    """``(image, goal)`` uint8 channel-first ``(N, 3, H, W)`` each -> goal relative to the body ``(N, 10)``."""

    def __init__(self, config: RelativePoseNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or RelativePoseNetConfig()
        w, r = self.config.width, self.config.correlation_radius
        if r == 0:
            self.encoder = None
            self.trunk = nn.Sequential(
                nn.Conv2d(6, w, 5, stride=2, padding=2), nn.ReLU(),
                nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
                nn.Flatten(),
            )
        else:
            self.encoder = nn.Sequential(
                nn.Conv2d(3, w, 5, stride=2, padding=2), nn.ReLU(),
                nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            )
            self.trunk = nn.Sequential(
                nn.Conv2d((2 * r + 1) ** 2 + 4 * w, 3 * w, 1), nn.ReLU(),
                nn.Conv2d(3 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
                nn.Flatten(),
            )
        h, wd = (math.ceil(s / 16) for s in self.config.image_hw)
        self.fc = nn.Sequential(nn.Linear(4 * w * h * wd, self.config.features_dim), nn.ReLU())
        self.head = nn.Linear(self.config.features_dim, TARGET_DIM)
        self.log_var = nn.Linear(self.config.features_dim, 2) if self.config.uncertainty else None

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
        if self.encoder is None:
            return self.fc(self.trunk(torch.cat([image, goal], dim=1).float() / 255.0))
        both = self.encoder(torch.cat([image, goal], dim=0).float() / 255.0)
        a, b = both.chunk(2, dim=0)
        corr = local_correlation(a, b, self.config.correlation_radius)
        return self.fc(self.trunk(torch.cat([corr, a, b], dim=1)))

    def forward(self, image: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image, goal))

    def predict(self, image: torch.Tensor, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(estimate (N, 10), log_var (N, 2) or None)``: the log-variances of the position entries (the first
        four, m^2) and of the rotation entries (the last six); None without ``config.uncertainty``."""
        feats = self.features(image, goal)
        return self.head(feats), (self.log_var(feats).clamp(-12.0, 6.0) if self.log_var is not None else None)


def expand_log_var(log_var: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` position / rotation log-variances -> ``(N, 10)``, one per target entry."""
    return torch.cat([log_var[:, :1].expand(-1, 4), log_var[:, 1:].expand(-1, TARGET_DIM - 4)], dim=1)


def relative_pose_loss(mean: torch.Tensor, log_var: torch.Tensor | None, target: torch.Tensor,
                       beta: float = 0.5) -> torch.Tensor:
    """Mean squared error without ``log_var``; with it the beta-NLL of a Gaussian (Seitzer et al., 2022): the
    negative log-likelihood per entry, weighted by the detached ``variance ** beta`` so that hard (far,
    non-overlapping) pairs neither dominate as in MSE nor get ignored as in the plain likelihood."""
    if log_var is None:
        return F.mse_loss(mean, target)
    lv = expand_log_var(log_var)
    nll = 0.5 * ((mean - target) ** 2 * torch.exp(-lv) + lv)
    return (nll * torch.exp(beta * lv).detach()).mean()


def save_relative_pose_net(net: RelativePoseNet, path: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = asdict(net.config)
    cfg["image_hw"] = list(cfg["image_hw"])
    torch.save({"format": "sana-wm-env/relative-pose-net", "config": cfg, "state_dict": net.state_dict(),
                "metrics": metrics or {}}, path)
    return path


def load_relative_pose_net(path: str | Path) -> RelativePoseNet:
    """Load a network written by :func:`save_relative_pose_net` (eval mode, on the CPU).

    Any other file raises ValueError naming it. Only tensors are ever unpickled (``weights_only=True``): torch's
    advice to load such a file with arbitrary code execution allowed is not passed on.
    """
    path = Path(path)
    train = f"train one with `python examples/pretrain_relative_pose.py --out {path}`"
    if not path.is_file():
        raise FileNotFoundError(f"no relative-pose network at {path}; {train}")
    not_a_net = f"{path} is not a relative-pose network file (save_relative_pose_net writes them; {train})"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises UnpicklingError, RuntimeError, EOFError, IndexError... by the damage
        raise ValueError(f"{not_a_net}: torch cannot read it as a tensor file") from None
    if not isinstance(blob, dict) or blob.get("format") != "sana-wm-env/relative-pose-net":
        raise ValueError(not_a_net)
    try:
        cfg = dict(blob["config"])
        cfg["image_hw"] = tuple(cfg["image_hw"])
        net = RelativePoseNet(RelativePoseNetConfig(**cfg))
        net.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # missing/unknown config keys, other shapes
        raise ValueError(f"{path}: a damaged relative-pose network file ({type(err).__name__}); {train}") from None
    return net.eval()


# ------------------------------------------------------------------------------------------ data
def collect_pairs(
    num_samples: int,
    *,
    model: Any = "default",
    split: str = "train",
    seed: int = 0,
    goals_per_scene: int = 8,
    views_per_goal: int = 8,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """``num_samples`` (image, goal image, relative goal) triples rendered in twin ImageNav scenes.

    ``model``: whose geometry the twin takes (image size, FoV, camera mount), as for ``SanaWM-TwinImageNav-v0``;
    ``None`` for the twin defaults. Each scene of ``split`` gets ``goals_per_scene`` episodes drawn exactly as the
    env's ``reset`` draws them (:meth:`CameraSim.draw_episode`), and each episode ``views_per_goal`` current views:
    the start itself, then views around the straight path to the goal (:func:`sample_approach_pose`), i.e. where a
    policy that heads for the goal is. Rendering views directly instead of running episodes makes the data ~8x
    cheaper per pair and far more diverse (many goals per scene; a scene costs ~0.2 s to set up, a view ~2 ms).
    Returns uint8 ``image``/``goal`` ``(N, 3, H, W)``, float32 ``target (N, 10)``, the world body poses
    ``body``/``goal_body`` ``(N, 4, 4)``, each sample's ``scene`` ("family/seed") and the number of ``scenes``.
    """
    import gymnasium as gym

    from sana_wm_env.scenes.renderer import SceneRenderer

    for name, v in (("num_samples", num_samples), ("goals_per_scene", goals_per_scene),
                    ("views_per_goal", views_per_goal)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    env = gym.make("SanaWM-TwinImageNav-v0", model=model, split=split)
    sim = env.unwrapped.sim
    rng = np.random.default_rng(seed)
    h, w = sim.image_hw
    images = np.empty((num_samples, 3, h, w), np.uint8)
    goals = np.empty_like(images)
    target = np.empty((num_samples, TARGET_DIM), np.float32)
    bodies, goal_bodies = np.empty((2, num_samples, 4, 4), np.float32)
    names: list[str] = []
    bar = _progress(num_samples, "collecting", progress, "pair")
    n = scenes = 0
    while n < num_samples:
        scene, _, _ = sim.draw_episode(rng)
        scenes += 1
        with SceneRenderer(scene, h, w, depth=False) as renderer:
            render = lambda body: renderer.render(body @ sim.mount, sim.default_intrinsics,  # noqa: E731
                                                  check_inside=False)[0].transpose(2, 0, 1)
            for _ in range(goals_per_scene):
                try:
                    _, start, goal = sim.draw_episode(rng, scene=scene)
                except (RuntimeError, ValueError):  # a cramped scene: go on with the next one
                    break
                goal_image = render(goal)
                for v in range(views_per_goal):
                    body = start if v == 0 else sample_approach_pose(rng, start, goal, scene)
                    if body is None or n == num_samples:
                        continue
                    images[n], goals[n], target[n] = render(body), goal_image, relative_goal_target(body, goal)
                    bodies[n], goal_bodies[n] = body, goal
                    names.append(f"{scene.family}/{scene.seed}")
                    n += 1
                    bar.update(1)
    bar.close()
    env.close()
    return {"image": images, "goal": goals, "target": target, "body": bodies, "goal_body": goal_bodies,
            "scene": np.asarray(names), "scenes": np.asarray(scenes)}


def relative_goal_target(body: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """World body poses (4, 4) -> the goal in the body frame, in :func:`policies.sb3.goal_in_body_frame`'s layout."""
    rel = np.linalg.inv(body) @ goal
    p = rel[:3, 3]
    return np.concatenate([p, [np.linalg.norm(p)], rel[:3, 0], rel[:3, 1]]).astype(np.float32)


def sample_approach_pose(rng: np.random.Generator, start: np.ndarray, goal: np.ndarray, scene: Any,
                         clearance: float = 0.15, tries: int = 10) -> np.ndarray | None:
    """A free body pose on the way from ``start`` to ``goal``: a point along the straight path (30 % of the time
    at the goal itself), moved sideways by ~0.25 m, its heading between the two headings with ~20 degrees of
    noise and a few degrees of roll and pitch. None when ``tries`` draws all hit a surface."""
    from scipy.spatial.transform import Rotation

    yaw = lambda t: np.arctan2(t[1, 0], t[0, 0])  # noqa: E731
    dyaw = (yaw(goal) - yaw(start) + np.pi) % (2 * np.pi) - np.pi
    for _ in range(tries):
        u = 1.0 if rng.random() < 0.3 else rng.random()
        pos = start[:3, 3] + u * (goal[:3, 3] - start[:3, 3])
        pos = pos + np.array([*rng.normal(0.0, 0.25, 2), rng.normal(0.0, 0.05)])
        if not scene.free(pos[None], clearance)[0]:
            continue
        t = np.eye(4)
        t[:3, :3] = Rotation.from_euler("ZYX", [yaw(start) + u * dyaw + rng.normal(0.0, 0.35),
                                               *rng.normal(0.0, 0.05, 2)]).as_matrix()
        t[:3, 3] = pos
        return t
    return None


def _progress(total: int, desc: str, enabled: bool, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit=unit)


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
        """A tracker with the action limits and step length of an env's simulation (``env.unwrapped.sim``)."""
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
        """:attr:`estimate` in :func:`policies.sb3.goal_in_body_frame`'s 10-number layout (float32)."""
        return relative_goal_target(np.eye(4), self.estimate)


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
