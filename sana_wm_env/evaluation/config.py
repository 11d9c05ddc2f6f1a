"""Settings of a fidelity evaluation run (:class:`EvalConfig`) and the protocol's fixed numbers.

The protocol itself is :mod:`sana_wm_env.evaluation.fidelity`; its module docstring says what each setting does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sana_wm_env.scenes import FAMILIES
from sana_wm_env.trajectories.camera_paths import MOTIONS

REVISIT_SEED_OFFSET = 50  # revisit episode e uses scene seed EVAL_SEEDS[REVISIT_SEED_OFFSET + e]
STABILITY_WINDOW = 100  # frames in the first and last window of the stability rollout


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation run (all stored in the JSON)."""

    families: tuple[str, ...] = FAMILIES
    motions: tuple[str, ...] = MOTIONS
    episodes_per_family: int = 3
    frames: int = 129
    horizons: tuple[tuple[int, int], ...] = ((1, 8), (9, 32), (33, 128))
    revisit_episodes: int = 3  # loop paths in total, spread over the families in order
    stability_frames: int = 1000  # 0 turns the stability rollout off
    image_hw: tuple[int, int] = (64, 64)
    fov_deg: float = 70.0
    fps: float = 16.0
    action_stride: int = 8
    action_distractors: int = 7
    min_shift_m: float = 0.1
    min_rot_deg: float = 5.0
    perturb_max_factor: float = 1.5
    perturb_clearance: float = 0.1
    path_clearance: float = 0.2
    stability_min_std_ratio: float = 0.5
    seed: int = 0  # generation seed offset (each episode adds its index)
    contact_frames: tuple[int, ...] = (1, 8, 32, 128)
    delta_psnr: bool = True  # also generate every main episode along a random path (Genie's delta-PSNR)

    def __post_init__(self) -> None:
        if not self.families or any(f not in FAMILIES for f in self.families):
            raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {self.families}")
        if not self.motions or any(m not in MOTIONS for m in self.motions):
            raise ValueError(f"motions must be a non-empty subset of {MOTIONS}, got {self.motions}")
        for name, lo in (("episodes_per_family", 1), ("frames", 2), ("revisit_episodes", 0),
                         ("action_stride", 1), ("action_distractors", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if self.episodes_per_family > REVISIT_SEED_OFFSET:
            raise ValueError(f"episodes_per_family must be <= {REVISIT_SEED_OFFSET} (eval scene seeds), "
                             f"got {self.episodes_per_family}")
        if self.stability_frames != 0 and self.stability_frames < 2 * STABILITY_WINDOW:
            raise ValueError(f"stability_frames must be 0 (off) or >= {2 * STABILITY_WINDOW}, "
                             f"got {self.stability_frames}")
        for lo, hi in self.horizons:
            if not 1 <= lo <= hi:
                raise ValueError(f"horizons must be (lo, hi) frame ranges with 1 <= lo <= hi, got {self.horizons}")
        h, w = self.image_hw
        if h < 11 or w < 11:
            raise ValueError(f"image_hw must be at least 11x11 (the SSIM window), got {self.image_hw}")
        if not 0 < self.fov_deg < 180 or self.fps <= 0:
            raise ValueError(f"fov_deg must be in (0, 180) and fps > 0, got {self.fov_deg}, {self.fps}")
        if self.perturb_max_factor < 1 or self.min_shift_m <= 0 or self.min_rot_deg <= 0:
            raise ValueError("min_shift_m and min_rot_deg must be > 0 and perturb_max_factor >= 1")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["horizons"] = [list(h) for h in self.horizons]
        d["image_hw"] = list(self.image_hw)
        return d
