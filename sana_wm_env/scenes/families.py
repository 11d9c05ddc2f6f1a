"""Procedural scene families: ``rooms`` (indoor), ``city`` (streets at drone altitude), ``outdoor`` (terrain).

Each builder draws everything (layout, sizes, textures, colours, lights) from a numpy Generator seeded by
(family, seed), writes MJCF and records the same primitives in a ``SceneGeometry`` for clearance queries.
Rendering settings favour a CPU rasteriser: no shadows, no multisampling, no reflections.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sana_wm_env.scenes.geometry import SceneGeometry, Terrain
from sana_wm_env.scenes.scene import FAMILIES, Scene, check_seed

_MARKS = ("none", "random", "edge", "cross")


def _f(values) -> str:
    return " ".join(f"{float(v):.5g}" for v in np.atleast_1d(values))


class _Builder:
    """Accumulates MJCF assets/geoms and the matching analytic geometry."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.assets: list[str] = []
        self.body: list[str] = []
        self.geometry = SceneGeometry()
        self.materials: dict[str, list[str]] = {}
        self._n = 0

    def material(self, group: str, base_rgb: Sequence[float], spread: float = 0.15, kind: str = "cube",
                 repeat: float = 1.0, builtin: str | None = None) -> str:
        """Add a randomly textured material around ``base_rgb`` and return its name."""
        r = self.rng
        name = f"{group}{len(self.materials.setdefault(group, []))}"
        base = np.clip(np.asarray(base_rgb) + r.uniform(-spread, spread, 3), 0.02, 0.98)
        other = np.clip(base * r.uniform(0.55, 0.95) + r.uniform(-0.05, 0.05, 3), 0.0, 1.0)
        builtin = builtin or str(r.choice(["checker", "gradient", "flat"], p=[0.45, 0.2, 0.35]))
        mark = str(r.choice(_MARKS))
        markrgb = np.clip(base * r.uniform(0.3, 1.4), 0, 1)
        self.assets.append(
            f'<texture name="t_{name}" type="{kind}" builtin="{builtin}" rgb1="{_f(base)}" rgb2="{_f(other)}" '
            f'mark="{mark}" markrgb="{_f(markrgb)}" random="{r.uniform(0.01, 0.08):.3f}" width="64" height="64"/>'
        )
        rep = f"{repeat * r.uniform(0.6, 1.6):.3g}"
        self.assets.append(
            f'<material name="{name}" texture="t_{name}" texrepeat="{rep} {rep}" texuniform="true" '
            f'specular="{r.uniform(0.0, 0.3):.2f}" shininess="{r.uniform(0.1, 0.6):.2f}" reflectance="0"/>'
        )
        self.materials[group].append(name)
        return name

    def pick(self, group: str) -> str:
        return str(self.rng.choice(self.materials[group]))

    def box(self, center, half, material: str, yaw: float = 0.0) -> None:
        quat = np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])
        self.body.append(
            f'<geom type="box" pos="{_f(center)}" size="{_f(half)}" quat="{_f(quat)}" material="{material}"/>'
        )
        self.geometry.add_box(center, half, yaw)

    def cylinder(self, center, radius: float, half_height: float, material: str) -> None:
        self.body.append(
            f'<geom type="cylinder" pos="{_f(center)}" size="{radius:.5g} {half_height:.5g}" material="{material}"/>'
        )
        self.geometry.add_cylinder(center, radius, half_height)

    def sphere(self, center, radius: float, material: str) -> None:
        self.body.append(f'<geom type="sphere" pos="{_f(center)}" size="{radius:.5g}" material="{material}"/>')
        self.geometry.add_sphere(center, radius)

    def ellipsoid(self, center, radii, material: str) -> None:
        self.body.append(f'<geom type="ellipsoid" pos="{_f(center)}" size="{_f(radii)}" material="{material}"/>')
        self.geometry.add_ellipsoid(center, radii)

    def light(self, pos, direction, diffuse: float, directional: bool) -> None:
        col = np.clip(diffuse * self.rng.uniform(0.85, 1.15, 3), 0, 1)
        self.body.append(
            f'<light pos="{_f(pos)}" dir="{_f(direction)}" directional="{str(directional).lower()}" '
            f'castshadow="false" diffuse="{_f(col)}" specular="0.1 0.1 0.1"/>'
        )

    def xml(self, name: str, center, extent: float, znear: float, zfar: float, ambient: float) -> str:
        assets = self.assets
        return "\n".join(
            [
                f'<mujoco model="{name}">',
                '<compiler angle="radian"/>',
                f'<statistic extent="{extent:.6g}" center="{_f(center)}"/>',
                "<visual>",
                f'  <headlight ambient="{_f([ambient] * 3)}" diffuse="0.25 0.25 0.25" specular="0 0 0"/>',
                f'  <map znear="{znear / extent:.6g}" zfar="{zfar / extent:.6g}"/>',
                '  <quality shadowsize="0" offsamples="0"/>',
                '  <global offwidth="64" offheight="64"/>',
                "</visual>",
                "<asset>",
                *("  " + a for a in assets),
                "</asset>",
                "<worldbody>",
                *("  " + b for b in self.body),
                "</worldbody>",
                "</mujoco>",
            ]
        )


def _add_markers(b: _Builder, markers: Sequence[Sequence[float]] | None, radius: float) -> None:
    if markers is None:
        return
    pts = np.asarray(markers, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or not np.isfinite(pts).all():
        raise ValueError(f"markers must be a finite (N, 3) array of points, got shape {pts.shape}")
    b.assets.append('<material name="marker" rgba="1 0 1 1" emission="1"/>')
    for p in pts:
        b.sphere(p, radius, "marker")


def _rooms(rng: np.random.Generator, b: _Builder) -> dict:
    """A grid of 1-3 x 1-2 rooms with doorways in every shared wall, furniture and posters."""
    nx, ny = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(3.2, 6.0, nx))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(3.2, 5.5, ny))])
    X, Y, H, t = xs[-1], ys[-1], float(rng.uniform(2.5, 3.2)), 0.12
    for _ in range(3):
        b.material("floor", rng.uniform(0.2, 0.8, 3), repeat=2.0)
        b.material("wall", rng.uniform(0.4, 0.95, 3), repeat=1.5)
        b.material("furn", rng.uniform(0.1, 0.9, 3), spread=0.2)
        b.material("furn", rng.uniform(0.1, 0.9, 3), spread=0.2)
    ceil = b.material("ceil", rng.uniform(0.7, 0.95, 3), spread=0.05, builtin="flat")
    b.box([X / 2, Y / 2, -0.05], [X / 2 + t, Y / 2 + t, 0.05], b.pick("floor"))
    b.box([X / 2, Y / 2, H + 0.05], [X / 2 + t, Y / 2 + t, 0.05], ceil)
    outer = b.pick("wall")
    b.box([-t / 2, Y / 2, H / 2], [t / 2, Y / 2 + t, H / 2], outer)
    b.box([X + t / 2, Y / 2, H / 2], [t / 2, Y / 2 + t, H / 2], outer)
    b.box([X / 2, -t / 2, H / 2], [X / 2, t / 2, H / 2], outer)
    b.box([X / 2, Y + t / 2, H / 2], [X / 2, t / 2, H / 2], outer)
    doors: list[np.ndarray] = []

    def wall_with_door(axis: int, at: float, lo: float, hi: float) -> None:
        wd = float(rng.uniform(0.9, 1.4))
        dh = float(rng.uniform(2.0, min(2.3, H - 0.1)))
        c = float(rng.uniform(lo + 0.35 + wd / 2, hi - 0.35 - wd / 2))
        mat = b.pick("wall")
        for a, z in ((lo, c - wd / 2), (c + wd / 2, hi)):
            mid, half = (a + z) / 2, (z - a) / 2
            pos = [at, mid, H / 2] if axis == 0 else [mid, at, H / 2]
            size = [t / 2, half, H / 2] if axis == 0 else [half, t / 2, H / 2]
            b.box(pos, size, mat)
        pos = [at, c, (dh + H) / 2] if axis == 0 else [c, at, (dh + H) / 2]
        size = [t / 2, wd / 2, (H - dh) / 2] if axis == 0 else [wd / 2, t / 2, (H - dh) / 2]
        b.box(pos, size, mat)
        doors.append(np.array([at, c]) if axis == 0 else np.array([c, at]))

    for i in range(1, nx):
        for j in range(ny):
            wall_with_door(0, xs[i], ys[j], ys[j + 1])
    for j in range(1, ny):
        for i in range(nx):
            wall_with_door(1, ys[j], xs[i], xs[i + 1])

    def clear_of_doors(xy: np.ndarray, r: float) -> bool:
        return all(np.linalg.norm(xy - d) > r + 0.9 for d in doors)

    for i in range(nx):
        for j in range(ny):
            x0, x1, y0, y1 = xs[i] + 0.1, xs[i + 1] - 0.1, ys[j] + 0.1, ys[j + 1] - 0.1
            b.light([(x0 + x1) / 2, (y0 + y1) / 2, H - 0.3], [0, 0, -1], rng.uniform(0.35, 0.6), False)
            for _ in range(int(rng.integers(2, 6))):
                kind = str(rng.choice(["table", "cabinet", "sofa", "pillar", "ball"]))
                mat = b.pick("furn")
                for _try in range(10):
                    if kind == "table":
                        hx, hy = rng.uniform(0.35, 0.8), rng.uniform(0.3, 0.5)
                        r = np.hypot(hx, hy)
                    elif kind == "cabinet":
                        hx, hy = rng.uniform(0.2, 0.3), rng.uniform(0.4, 0.9)
                        r = hy
                    elif kind == "sofa":
                        hx, hy = rng.uniform(0.4, 1.0), rng.uniform(0.45, 0.9)
                        r = np.hypot(hx, hy)
                    else:
                        hx = hy = r = rng.uniform(0.12, 0.3)
                    if x1 - x0 < 2 * r + 0.2 or y1 - y0 < 2 * r + 0.2:
                        break
                    xy = np.array([rng.uniform(x0 + r, x1 - r), rng.uniform(y0 + r, y1 - r)])
                    if clear_of_doors(xy, r):
                        break
                else:
                    continue
                yaw = float(rng.uniform(0, np.pi))
                if kind == "table":
                    top = rng.uniform(0.7, 0.78)
                    b.box([*xy, top], [hx, hy, 0.025], mat, yaw)
                    c, s = np.cos(yaw), np.sin(yaw)
                    for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                        lx, ly = sx * (hx - 0.05), sy * (hy - 0.05)
                        b.box([xy[0] + c * lx - s * ly, xy[1] + s * lx + c * ly, top / 2],
                              [0.03, 0.03, top / 2 - 0.01], mat, yaw)
                elif kind == "cabinet":
                    hz = rng.uniform(0.4, 1.0)
                    b.box([*xy, hz], [hx, hy, hz], mat, yaw)
                elif kind == "sofa":
                    hz = rng.uniform(0.2, 0.3)
                    b.box([*xy, hz], [hx, hy, hz], mat, yaw)
                elif kind == "pillar":
                    b.cylinder([*xy, H / 2], hx, H / 2, mat)
                else:
                    b.sphere([*xy, hx], hx, mat)
    # posters on the outer walls
    for _ in range(int(rng.integers(2, 2 + 2 * nx * ny))):
        mat = b.material("poster", rng.uniform(0, 1, 3), spread=0.3, builtin="checker", repeat=4.0)
        w, h, z = rng.uniform(0.2, 0.5), rng.uniform(0.15, 0.4), rng.uniform(1.2, 1.8)
        side = int(rng.integers(4))
        if side < 2:
            y = rng.uniform(w + 0.05, Y - w - 0.05)
            x = 0.01 if side == 0 else X - 0.01
            b.box([x, y, z], [0.01, w, h], mat)
        else:
            x = rng.uniform(w + 0.05, X - w - 0.05)
            y = 0.01 if side == 2 else Y - 0.01
            b.box([x, y, z], [w, 0.01, h], mat)
    return dict(
        bounds=np.array([[0.0, 0.0, 0.0], [X, Y, H]]),
        camera_heights={"drone": (0.5, H - 0.45), "ground": (0.3, 0.5), "handheld": (1.3, 1.7)},
        speed_scale=0.8, znear=0.03, zfar=30.0, ambient=rng.uniform(0.35, 0.5), sky=None,
        center=[X / 2, Y / 2, H / 2], extent=max(X, Y),
    )


def _city(rng: np.random.Generator, b: _Builder) -> dict:
    """A grid of blocks with buildings of random footprints and heights, streets, lamp posts and trees."""
    nbx, nby = int(rng.integers(3, 6)), int(rng.integers(3, 6))
    street = float(rng.uniform(10.0, 18.0))
    bx = rng.uniform(20.0, 40.0, nbx)
    by = rng.uniform(20.0, 40.0, nby)
    xs = street + np.concatenate([[0.0], np.cumsum(bx + street)])  # block starts
    ys = street + np.concatenate([[0.0], np.cumsum(by + street)])
    X, Y = xs[-1], ys[-1]
    for _ in range(4):
        b.material("facade", rng.uniform(0.3, 0.9, 3), builtin="checker", repeat=0.15)
    for _ in range(2):
        b.material("roof", rng.uniform(0.2, 0.6, 3))
        b.material("tree", [0.2, 0.5, 0.15], spread=0.1, builtin="flat")
    road = b.material("road", [0.35, 0.35, 0.37], spread=0.05, kind="2d", repeat=0.2)
    walk = b.material("walk", [0.6, 0.58, 0.55], spread=0.08, repeat=0.5)
    pole = b.material("pole", [0.2, 0.2, 0.22], spread=0.05, builtin="flat")
    trunk = b.material("trunk", [0.35, 0.25, 0.15], spread=0.05, builtin="flat")
    b.box([X / 2, Y / 2, -0.1], [X / 2, Y / 2, 0.1], road)
    top = 0.0
    for i in range(nbx):
        for j in range(nby):
            x0, y0, w, d = xs[i], ys[j], bx[i], by[j]
            b.box([x0 + w / 2, y0 + d / 2, 0.075], [w / 2, d / 2, 0.075], walk)  # sidewalk slab
            sx, sy = int(rng.integers(1, 3)), int(rng.integers(1, 3))
            lot_w, lot_d = (w - 4.0) / sx, (d - 4.0) / sy
            for a in range(sx):
                for c in range(sy):
                    if rng.random() < 0.12:
                        continue  # empty lot / plaza
                    hw = lot_w / 2 * rng.uniform(0.6, 0.95)
                    hd = lot_d / 2 * rng.uniform(0.6, 0.95)
                    hh = rng.uniform(3.0, 22.0)
                    cx, cy = x0 + 2.0 + (a + 0.5) * lot_w, y0 + 2.0 + (c + 0.5) * lot_d
                    b.box([cx, cy, hh], [hw, hd, hh], b.pick("facade"))
                    top = max(top, 2 * hh)
                    if rng.random() < 0.4:
                        rh = rng.uniform(0.8, 2.5)
                        b.box([cx, cy, 2 * hh + rh], [hw * 0.4, hd * 0.4, rh], b.pick("roof"))
                        top = max(top, 2 * hh + 2 * rh)
            for _ in range(int(rng.integers(0, 4))):  # lamp posts / trees at the block edge
                px = x0 + (rng.uniform(0.8, 1.4) if rng.random() < 0.5 else w - rng.uniform(0.8, 1.4))
                py = y0 + rng.uniform(1.0, d - 1.0)
                if rng.random() < 0.5:
                    b.cylinder([px, py, 2.5], 0.1, 2.5, pole)
                else:
                    b.cylinder([px, py, 1.5], 0.15, 1.5, trunk)
                    b.sphere([px, py, 3.0 + 1.2], 1.3, b.pick("tree"))
    b.light([X / 2, Y / 2, 200], rng.uniform([-0.6, -0.6, -1], [0.6, 0.6, -0.6]), rng.uniform(0.5, 0.8), True)
    sky = (rng.uniform([0.4, 0.55, 0.8], [0.6, 0.75, 1.0]), rng.uniform([0.8, 0.8, 0.8], [1.0, 1.0, 1.0]))
    return dict(
        bounds=np.array([[0.0, 0.0, 0.0], [X, Y, max(top, 20.0) + 25.0]]),
        camera_heights={"drone": (4.0, 40.0), "ground": (0.4, 0.8), "handheld": (1.5, 1.8)},
        speed_scale=4.0, znear=0.05, zfar=1.5 * np.hypot(X, Y) + 100.0, ambient=rng.uniform(0.3, 0.45),
        sky=sky, center=[X / 2, Y / 2, 10.0], extent=max(X, Y),
    )


def _smooth_noise(rng: np.random.Generator, n: int, octaves: int = 4) -> np.ndarray:
    """Sum of random low-frequency cosines on an n x n grid in [0, 1]^2 (smooth, tileable enough)."""
    u = np.linspace(0.0, 1.0, n)
    gx, gy = np.meshgrid(u, u)
    z = np.zeros((n, n))
    for o in range(octaves):
        for _ in range(3):
            k = rng.normal(0, 1.5 * 2**o, 2)
            z += 2.0**-o * np.cos(2 * np.pi * (k[0] * gx + k[1] * gy) + rng.uniform(0, 2 * np.pi))
    return z


def _outdoor(rng: np.random.Generator, b: _Builder) -> dict:
    """A hilly height-field terrain patch with trees and rocks."""
    half = float(rng.uniform(50.0, 70.0))
    n = 65
    z = _smooth_noise(rng, n, octaves=3)
    amp = float(rng.uniform(1.0, 6.0))
    heights = (z - z.min()) / max(np.ptp(z), 1e-9) * amp
    zmax = float(heights.max())
    ground = b.material("ground", rng.choice([[0.35, 0.5, 0.2], [0.55, 0.45, 0.3], [0.5, 0.55, 0.35]]),
                        spread=0.08, kind="2d", repeat=0.15)
    for _ in range(3):
        b.material("leaf", rng.choice([[0.15, 0.45, 0.12], [0.3, 0.5, 0.15], [0.5, 0.45, 0.1]]), spread=0.08)
        b.material("rock", [0.5, 0.5, 0.48], spread=0.12)
    bark = b.material("bark", [0.35, 0.25, 0.15], spread=0.06, builtin="flat")
    # MJCF lists elevation rows from +y down to -y (MuJoCo flips them on load); our rows grow with y.
    elev = " ".join(f"{v:.5g}" for v in (heights[::-1] / max(zmax, 1e-9)).ravel())
    size = f"{half:.5g} {half:.5g} {max(zmax, 1e-3):.5g} 1"
    b.assets.append(f'<hfield name="terrain" nrow="{n}" ncol="{n}" size="{size}" elevation="{elev}"/>')
    b.body.append(f'<geom type="hfield" hfield="terrain" pos="0 0 0" material="{ground}"/>')
    b.geometry.terrain = Terrain(center=(0.0, 0.0), half_size=(half, half), heights=heights)
    terrain = b.geometry.terrain
    inner = half - 8.0
    for _ in range(int(rng.integers(15, 60))):
        xy = rng.uniform(-inner, inner, 2)
        g = float(terrain.height(xy[None])[0])
        th = rng.uniform(1.5, 4.0)
        r = rng.uniform(0.12, 0.35)
        b.cylinder([*xy, g + th / 2 - 0.3], r, th / 2 + 0.3, bark)
        cr = rng.uniform(1.2, 3.0)
        b.ellipsoid([*xy, g + th + cr * 0.8], [cr, cr, cr * rng.uniform(0.8, 1.6)], b.pick("leaf"))
    for _ in range(int(rng.integers(10, 40))):
        xy = rng.uniform(-inner, inner, 2)
        g = float(terrain.height(xy[None])[0])
        radii = rng.uniform(0.3, 2.0, 3) * [1, 1, 0.6]
        b.ellipsoid([*xy, g], radii, b.pick("rock"))
    b.light([0, 0, 100], rng.uniform([-0.7, -0.7, -1], [0.7, 0.7, -0.5]), rng.uniform(0.5, 0.8), True)
    sky = (rng.uniform([0.35, 0.5, 0.75], [0.6, 0.75, 1.0]), rng.uniform([0.75, 0.8, 0.85], [1.0, 1.0, 1.0]))
    return dict(
        bounds=np.array([[-inner, -inner, 0.0], [inner, inner, zmax + 30.0]]),
        camera_heights={"drone": (3.0, 20.0), "ground": (0.4, 0.8), "handheld": (1.5, 1.8)},
        speed_scale=3.0, znear=0.05, zfar=4 * half + 100.0, ambient=rng.uniform(0.3, 0.45), sky=sky,
        center=[0.0, 0.0, zmax / 2], extent=2 * half,
    )


_BUILDERS = {"rooms": _rooms, "city": _city, "outdoor": _outdoor}


def make_scene(family: str, seed: int, markers: Sequence[Sequence[float]] | None = None,
               marker_radius: float = 0.02) -> Scene:
    """Build scene ``seed`` of ``family`` (one of ``FAMILIES``); deterministic for a given (family, seed).

    ``markers`` optionally adds small self-lit magenta spheres at world points (used to check camera maths).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}")
    seed = check_seed(seed)
    rng = np.random.default_rng([FAMILIES.index(family), seed])
    b = _Builder(rng)
    info = _BUILDERS[family](rng, b)
    _add_markers(b, markers, marker_radius)
    xml = b.xml(f"{family}_{seed}", info["center"], info["extent"], info["znear"], info["zfar"], info["ambient"])
    sky = None if info["sky"] is None else (np.asarray(info["sky"][0]), np.asarray(info["sky"][1]))
    return Scene(
        family=family, seed=seed, xml=xml, geometry=b.geometry, bounds=info["bounds"],
        camera_heights=info["camera_heights"], speed_scale=info["speed_scale"],
        znear=info["znear"], zfar=float(info["zfar"]), sky=sky,
    )
