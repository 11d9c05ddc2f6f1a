"""Analytic geometry of a procedural scene: the primitives it is built from and their distance field.

Every scene family builds its MuJoCo model from the primitives held here, so the same numbers drive the
rendered world and the clearance checks of the trajectory generators. ``SceneGeometry.distance`` gives the
signed distance (metres) from points to the nearest surface: exact for boxes, spheres and vertical
cylinders, a conservative lower bound for ellipsoids and the height-field terrain (so a clearance it
reports is never larger than the true one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_CHUNK = 4096  # points per vectorised distance evaluation (bounds memory to ~N*M*3 floats)


@dataclass
class Terrain:
    """A height field centred at (cx, cy): heights[row, col] over x in [cx-rx, cx+rx] (cols), y (rows)."""

    center: tuple[float, float]
    half_size: tuple[float, float]
    heights: np.ndarray  # (nrow, ncol) metres, row index grows with y, column index with x

    def __post_init__(self) -> None:
        h = np.asarray(self.heights, dtype=np.float64)
        if h.ndim != 2 or min(h.shape) < 2:
            raise ValueError(f"heights must be a (nrow>=2, ncol>=2) array, got shape {h.shape}")
        self.heights = h
        nrow, ncol = h.shape
        dx = 2 * self.half_size[0] / (ncol - 1)
        dy = 2 * self.half_size[1] / (nrow - 1)
        gx = np.abs(np.diff(h, axis=1)).max() / dx if ncol > 1 else 0.0
        gy = np.abs(np.diff(h, axis=0)).max() / dy if nrow > 1 else 0.0
        # Lipschitz constant of the bilinear (and of MuJoCo's triangulated) surface.
        self._lipschitz = float(np.hypot(gx, gy))

    @property
    def lipschitz(self) -> float:
        """Largest slope of the surface (rise over run)."""
        return self._lipschitz

    def height(self, xy: np.ndarray) -> np.ndarray:
        """Terrain height (metres) below each (x, y); points outside the field clamp to its border."""
        xy = np.asarray(xy, dtype=np.float64)
        nrow, ncol = self.heights.shape
        u = (xy[..., 0] - self.center[0] + self.half_size[0]) / (2 * self.half_size[0]) * (ncol - 1)
        v = (xy[..., 1] - self.center[1] + self.half_size[1]) / (2 * self.half_size[1]) * (nrow - 1)
        u = np.clip(u, 0, ncol - 1 - 1e-9)
        v = np.clip(v, 0, nrow - 1 - 1e-9)
        c0 = np.floor(u).astype(int)
        r0 = np.floor(v).astype(int)
        fu = u - c0
        fv = v - r0
        h = self.heights
        return (
            h[r0, c0] * (1 - fu) * (1 - fv)
            + h[r0, c0 + 1] * fu * (1 - fv)
            + h[r0 + 1, c0] * (1 - fu) * fv
            + h[r0 + 1, c0 + 1] * fu * fv
        )

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Lower bound of the distance to the surface (negative below it)."""
        dz = points[:, 2] - self.height(points[:, :2])
        return dz / np.sqrt(1.0 + self._lipschitz**2)


@dataclass
class SceneGeometry:
    """Primitives in world coordinates (z up, metres); arrays grow as the builder adds shapes."""

    boxes: list[tuple[np.ndarray, np.ndarray, float]] = field(default_factory=list)  # centre, half, yaw
    cylinders: list[tuple[np.ndarray, float, float]] = field(default_factory=list)  # centre, radius, half-h
    spheres: list[tuple[np.ndarray, float]] = field(default_factory=list)  # centre, radius
    ellipsoids: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # centre, radii
    terrain: Terrain | None = None
    _packed: dict | None = field(default=None, repr=False)

    def add_box(self, center, half, yaw: float = 0.0) -> None:
        self.boxes.append((np.asarray(center, float), np.asarray(half, float), float(yaw)))
        self._packed = None

    def add_cylinder(self, center, radius: float, half_height: float) -> None:
        self.cylinders.append((np.asarray(center, float), float(radius), float(half_height)))
        self._packed = None

    def add_sphere(self, center, radius: float) -> None:
        self.spheres.append((np.asarray(center, float), float(radius)))
        self._packed = None

    def add_ellipsoid(self, center, radii) -> None:
        self.ellipsoids.append((np.asarray(center, float), np.asarray(radii, float)))
        self._packed = None

    def _pack(self) -> dict:
        if self._packed is None:
            p: dict = {}
            if self.boxes:
                p["bc"] = np.stack([b[0] for b in self.boxes])
                p["bh"] = np.stack([b[1] for b in self.boxes])
                yaw = np.array([b[2] for b in self.boxes])
                p["bcos"], p["bsin"] = np.cos(yaw), np.sin(yaw)
            if self.cylinders:
                p["cc"] = np.stack([c[0] for c in self.cylinders])
                p["cr"] = np.array([c[1] for c in self.cylinders])
                p["ch"] = np.array([c[2] for c in self.cylinders])
            if self.spheres:
                p["sc"] = np.stack([s[0] for s in self.spheres])
                p["sr"] = np.array([s[1] for s in self.spheres])
            if self.ellipsoids:
                p["ec"] = np.stack([e[0] for e in self.ellipsoids])
                p["er"] = np.stack([e[1] for e in self.ellipsoids])
            self._packed = p
        return self._packed

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (metres) from each point (N,3) to the nearest surface; negative inside a solid."""
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"points must be an (N, 3) array, got shape {pts.shape}")
        if len(pts) > _CHUNK:
            return np.concatenate([self.distance(pts[i : i + _CHUNK]) for i in range(0, len(pts), _CHUNK)])
        p = self._pack()
        best = np.full(len(pts), np.inf)
        if "bc" in p:
            d = pts[:, None, :] - p["bc"][None]
            lx = d[..., 0] * p["bcos"] + d[..., 1] * p["bsin"]
            ly = -d[..., 0] * p["bsin"] + d[..., 1] * p["bcos"]
            q = np.abs(np.stack([lx, ly, d[..., 2]], axis=-1)) - p["bh"][None]
            outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
            inside = np.minimum(q.max(axis=-1), 0.0)
            best = np.minimum(best, (outside + inside).min(axis=1))
        if "cc" in p:
            d = pts[:, None, :] - p["cc"][None]
            qr = np.hypot(d[..., 0], d[..., 1]) - p["cr"][None]
            qz = np.abs(d[..., 2]) - p["ch"][None]
            outside = np.hypot(np.maximum(qr, 0.0), np.maximum(qz, 0.0))
            inside = np.minimum(np.maximum(qr, qz), 0.0)
            best = np.minimum(best, (outside + inside).min(axis=1))
        if "sc" in p:
            d = np.linalg.norm(pts[:, None, :] - p["sc"][None], axis=-1) - p["sr"][None]
            best = np.minimum(best, d.min(axis=1))
        if "ec" in p:
            scaled = np.linalg.norm((pts[:, None, :] - p["ec"][None]) / p["er"][None], axis=-1)
            d = (scaled - 1.0) * p["er"].min(axis=1)[None]
            best = np.minimum(best, d.min(axis=1))
        if self.terrain is not None:
            best = np.minimum(best, self.terrain.distance(pts))
        return best
