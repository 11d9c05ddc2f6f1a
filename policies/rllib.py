"""RLlib (new API stack) glue: an RLModule for the SANA-WM observations and a policy adapter for evaluation.

* :class:`SanaWMRLModule` - PPO-ready (``ValueFunctionAPI``) torch module for the Dict observations of every
  task: the uint8 images (``image``, and ``goal`` on ImageNav) stacked channel-wise through a small CNN (early
  fusion, so the first layer can compare the two views), and on Nav the goal seen from the body
  (:func:`policies.features.goal_in_body_frame`: a fixed function of ``pose`` and ``goal`` that spares the MLP
  quaternion algebra); on Explore the pose itself. Separate policy and value MLPs; the Gaussian's log std is one
  learned vector (state-independent, as SB3's PPO). ``model_config``: ``cnn_channels`` (default (16, 32, 32)),
  ``hidden`` (default (64, 64)), ``log_std_init`` (default 0.0), ``use_image`` (default True; False ignores the
  images, e.g. for a fast Nav baseline).
* :class:`RLlibPolicy` - a trained module (an RLlib checkpoint's module folder, or a module object) behind
  the ``reset``/``act`` protocol of :func:`sana_wm_env.evaluation.policy.evaluate_policy`; deterministic
  (the Gaussian's mean).

Importing this module imports RLlib (the ``rllib`` extra); the envs are registered by
:func:`sana_wm_env.envs.rllib.register_rllib_envs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from policies.features import GOAL_FRAME_DIM, goal_in_body_frame

__all__ = ["RLlibPolicy", "SanaWMRLModule"]


def _image_keys(space: gym.spaces.Dict) -> list[str]:
    return [k for k in ("image", "goal") if k in space.spaces and len(space[k].shape) == 3]


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers)


class SanaWMRLModule(TorchRLModule, ValueFunctionAPI):
    """Policy and value networks over a SANA-WM Dict observation (see the module docstring)."""

    def setup(self) -> None:
        space = self.observation_space
        if not isinstance(space, gym.spaces.Dict):
            raise ValueError(f"SanaWMRLModule needs the envs' Dict observation space, got {space}")
        if not isinstance(self.action_space, gym.spaces.Box) or len(self.action_space.shape) != 1:
            raise ValueError(f"SanaWMRLModule needs a 1-D Box action space, got {self.action_space}")
        cfg = dict(self.model_config or {})
        self.image_keys = _image_keys(space) if cfg.get("use_image", True) else []
        self.goal_frame = all(k in space.spaces and space[k].shape == (7,) for k in ("pose", "goal"))
        self.use_pose = not self.goal_frame and "pose" in space.spaces
        features = 0
        self.cnn: nn.Module | None = None
        if self.image_keys:
            h, w, _ = space[self.image_keys[0]].shape
            layers: list[nn.Module] = []
            ch = 3 * len(self.image_keys)
            for out in cfg.get("cnn_channels", (16, 32, 32)):
                layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.ReLU()]
                ch = out
            layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
            self.cnn = nn.Sequential(*layers)
            features += ch * 16
        features += GOAL_FRAME_DIM if self.goal_frame else 0
        features += 7 if self.use_pose else 0
        if features == 0:
            raise ValueError(f"SanaWMRLModule: nothing to observe in {space} with use_image=False")
        hidden = list(cfg.get("hidden", (64, 64)))
        act_dim = self.action_space.shape[0]
        self.pi = nn.Sequential(_mlp([features, *hidden]), nn.Linear(hidden[-1], act_dim))
        self.vf = nn.Sequential(_mlp([features, *hidden]), nn.Linear(hidden[-1], 1))
        self.log_std = nn.Parameter(torch.full((act_dim,), float(cfg.get("log_std_init", 0.0))))
        nn.init.orthogonal_(self.pi[-1].weight, 0.01)
        nn.init.zeros_(self.pi[-1].bias)

    def _features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.cnn is not None:
            images = torch.cat([obs[k] for k in self.image_keys], dim=-1).float() / 255.0
            parts.append(self.cnn(images.permute(0, 3, 1, 2)))
        if self.goal_frame:
            parts.append(goal_in_body_frame(obs["pose"].float(), obs["goal"].float()))
        if self.use_pose:
            parts.append(obs["pose"].float())
        return torch.cat(parts, dim=-1)

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        features = self._features(batch[Columns.OBS])
        mean = self.pi(features)
        return {Columns.ACTION_DIST_INPUTS: torch.cat([mean, self.log_std.expand_as(mean)], dim=-1),
                Columns.EMBEDDINGS: features}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        if embeddings is None:
            embeddings = self._features(batch[Columns.OBS])
        return self.vf(embeddings).squeeze(-1)


class RLlibPolicy:
    """A trained RLlib module acting deterministically (the Gaussian's mean, clipped to [-1, 1]).

    ``module`` is an ``RLModule`` or the path of one saved by RLlib: an algorithm checkpoint's
    ``learner_group/learner/rl_module/default_policy`` folder, or ``RLModule.save_to_path``'s folder.
    """

    name = "rllib"

    def __init__(self, module: RLModule | str | Path) -> None:
        if isinstance(module, (str, Path)):
            path = Path(module)
            if not path.is_dir():
                raise FileNotFoundError(f"module: {path} is not an RLlib module folder (RLModule.save_to_path, or "
                                        "a checkpoint's learner_group/learner/rl_module/default_policy)")
            module = RLModule.from_checkpoint(path)
        self.module = module
        self.module.eval()

    def reset(self, env=None, seed: int | None = None) -> None:  # noqa: ARG002 - stateless
        return None

    @torch.no_grad()
    def act(self, obs, env=None) -> np.ndarray:  # noqa: ARG002 - observation-only
        batch = {k: torch.as_tensor(np.asarray(v))[None] for k, v in obs.items()}
        out = self.module.forward_inference({Columns.OBS: batch})
        mean = out[Columns.ACTION_DIST_INPUTS][0].chunk(2, dim=-1)[0]
        return np.clip(mean.numpy().astype(np.float32), -1.0, 1.0)
