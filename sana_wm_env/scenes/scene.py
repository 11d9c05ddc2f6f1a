"""The ``Scene`` type: one seeded procedural world (MJCF text + analytic geometry + camera bounds).

World frame: z up, metres (MuJoCo's and REP-103's world convention). Camera poses handed to the renderer are
OpenCV camera-to-world matrices in this frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sana_wm_env.scenes.geometry import SceneGeometry

if TYPE_CHECKING:  # pragma: no cover
    import mujoco

FAMILIES: tuple[str, ...] = ("rooms", "city", "outdoor")
SEED_COUNT = 1_000_000  # valid scene seeds are 0 .. SEED_COUNT-1
EVAL_SEEDS: range = range(0, 100)  # reserved for evaluation; never used for training data
TRAIN_SEEDS: range = range(100, SEED_COUNT)


def check_seed(seed: int) -> int:
    """Return ``seed`` as int if it is a valid scene seed, else raise ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int in [0, {SEED_COUNT - 1}], got {seed!r}")
    if not 0 <= int(seed) < SEED_COUNT:
        raise ValueError(f"seed must be in [0, {SEED_COUNT - 1}], got {seed}")
    return int(seed)


def is_eval_seed(seed: int) -> bool:
    """True for the seeds reserved for evaluation (``EVAL_SEEDS``)."""
    return check_seed(seed) in EVAL_SEEDS


@dataclass
class Scene:
    """A procedural MuJoCo world.

    ``bounds`` (2,3) is the axis-aligned box [lo, hi] that cameras may occupy (inside the walls for rooms,
    over the streets for city, above the terrain patch for outdoor). ``camera_heights`` maps a motion kind
    ("drone", "ground", "handheld") to the (min, max) camera height above the ground for that kind.
    ``speed_scale`` is a typical speed in m/s for that family (rooms are slow, cities fast). ``znear``/``zfar``
    are the render clip distances (metres); ``sky`` the background gradient the renderer paints where no
    surface is hit (the depth there is 0).
    """

    family: str
    seed: int
    xml: str
    geometry: SceneGeometry
    bounds: np.ndarray
    camera_heights: dict[str, tuple[float, float]]
    speed_scale: float
    znear: float
    zfar: float
    sky: tuple[np.ndarray, np.ndarray] | None = None  # (zenith rgb, horizon rgb) in [0, 1]; None indoors
    _model: mujoco.MjModel | None = field(default=None, repr=False)

    @property
    def model(self) -> mujoco.MjModel:
        """The compiled MuJoCo model (compiled once, cached)."""
        if self._model is None:
            from sana_wm_env.scenes.gl import import_mujoco

            mj = import_mujoco()
            self._model = mj.MjModel.from_xml_string(self.xml)
        return self._model

    def ground_height(self, xy: np.ndarray) -> np.ndarray:
        """Height of the ground (floor or terrain) under each (x, y) point, metres."""
        xy = np.asarray(xy, dtype=np.float64)
        if self.geometry.terrain is not None:
            return self.geometry.terrain.height(xy)
        return np.zeros(xy.shape[:-1])

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (metres) from points (N,3) to the nearest surface (see ``SceneGeometry``)."""
        return self.geometry.distance(points)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean mask: which points (N,3) lie inside ``bounds``."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return np.all((pts >= self.bounds[0]) & (pts <= self.bounds[1]), axis=1)

    def free(self, points: np.ndarray, clearance: float = 0.2) -> np.ndarray:
        """Boolean mask: inside ``bounds`` and at least ``clearance`` metres from every surface."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return self.contains(pts) & (self.distance(pts) >= clearance)

    def check_camera_position(self, position: np.ndarray, name: str = "c2w") -> None:
        """Raise ValueError if a camera centre lies outside the scene bounds."""
        p = np.asarray(position, dtype=np.float64).reshape(3)
        if not self.contains(p[None])[0]:
            raise ValueError(
                f"{name}: camera position {np.round(p, 3).tolist()} is outside the {self.family} scene "
                f"(seed {self.seed}) bounds lo={np.round(self.bounds[0], 3).tolist()} "
                f"hi={np.round(self.bounds[1], 3).tolist()}"
            )
