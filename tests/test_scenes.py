"""Scenes and renderer: determinism, seed split, geometry vs MuJoCo ray casts, and the camera convention."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sana_wm_env.scenes import EVAL_SEEDS, FAMILIES, TRAIN_SEEDS, SceneRenderer, is_eval_seed, make_scene
from sana_wm_env.scenes.gl import import_mujoco

# OpenCV camera axes expressed in a REP-103 body frame (x fwd, y left, z up): right=-y, down=-z, fwd=+x.
_CAM_IN_BODY = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _c2w(position, yaw, pitch, roll) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler("ZYX", [yaw, pitch, roll]).as_matrix() @ _CAM_IN_BODY
    t[:3, 3] = position
    return t


def _free_point(scene, rng, clearance=1.0):
    for _ in range(2000):
        p = rng.uniform(scene.bounds[0], scene.bounds[1])
        if scene.free(p[None], clearance)[0]:
            return p
    raise AssertionError("no free point found")


def test_scene_is_deterministic_and_seeds_differ():
    for fam in FAMILIES:
        a, b, c = make_scene(fam, 1234), make_scene(fam, 1234), make_scene(fam, 1235)
        assert a.xml == b.xml
        assert a.xml != c.xml
        assert a.model.ngeom > 10
    assert make_scene("rooms", 7).xml != make_scene("city", 7).xml


def test_seed_split_and_bad_seeds():
    assert set(EVAL_SEEDS).isdisjoint(range(TRAIN_SEEDS.start, TRAIN_SEEDS.start + 1000))
    assert is_eval_seed(0) and not is_eval_seed(TRAIN_SEEDS.start)
    for bad in (-1, TRAIN_SEEDS.stop, 1.5, "3", True):
        with pytest.raises(ValueError, match="seed"):
            make_scene("rooms", bad)
    with pytest.raises(ValueError, match="family must be one of rooms, city, outdoor"):
        make_scene("forest", 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_distance_field_is_a_lower_bound_of_mujoco_ray_hits(family):
    """The analytic geometry used for clearance agrees with the rendered MuJoCo model."""
    mj = import_mujoco()
    scene = make_scene(family, 4321)
    model = scene.model
    data = mj.MjData(model)
    mj.mj_forward(model, data)
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(40, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    geomid = np.zeros(1, np.int32)
    tight = 0
    for _ in range(12):
        p = _free_point(scene, rng, clearance=0.25)
        sdf = scene.distance(p[None])[0]
        hits = [mj.mj_ray(model, data, p, d, None, 1, -1, geomid) for d in dirs]
        hits = np.array([h for h in hits if h >= 0])
        assert hits.min() >= sdf - 1e-3, (p, sdf, hits.min())
        tight += hits.min() < sdf + 0.5 + 0.5 * sdf  # the bound is also reasonably tight
    assert tight >= 6


@pytest.mark.parametrize("family", ["rooms", "outdoor"])
def test_marker_projects_to_predicted_pixel(family):
    """A small marker at a known 3-D point appears where our intrinsics and OpenCV c2w predict (+-1 px)."""
    h, w = 96, 128
    k = np.array([70.0, 80.0, 60.3, 50.7])  # fx != fy and an off-centre principal point
    base = make_scene(family, 555)
    rng = np.random.default_rng(1)
    poses, markers, cams = [], [], []
    offsets = [(0.0, 0.0), (0.35, -0.25), (-0.4, 0.3), (0.2, 0.35)]
    rolls = [0.0, 0.6, -1.2, np.pi / 2]
    for (ox, oy), roll in zip(offsets, rolls):
        for _ in range(200):
            p = _free_point(base, rng, clearance=0.6)
            c2w = _c2w(p, rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 0.3), roll)
            x_cam = np.array([ox, oy, 1.0]) * 1.1
            m = c2w[:3, :3] @ x_cam + p
            seg = p + np.linspace(0.1, 1.0, 20)[:, None] * (m - p)
            if base.distance(seg).min() > 0.1:
                break
        poses.append(c2w)
        markers.append(m)
        cams.append(x_cam)
    plain = SceneRenderer(base, h, w)
    for c2w, x_cam, m in zip(poses, cams, markers):
        marked = SceneRenderer(make_scene(family, 555, markers=[m], marker_radius=0.015), h, w)
        rgb0, _ = plain.render(c2w, k)
        rgb1, depth = marked.render(c2w, k)
        diff = np.abs(rgb1.astype(int) - rgb0.astype(int)).sum(-1) > 40
        assert diff.sum() >= 3, "marker not visible"
        v, u = np.nonzero(diff)
        u_pred = k[0] * x_cam[0] / x_cam[2] + k[2]
        v_pred = k[1] * x_cam[1] / x_cam[2] + k[3]
        assert abs(u.mean() - u_pred) <= 1.0 and abs(v.mean() - v_pred) <= 1.0, (u.mean(), u_pred, v.mean(), v_pred)
        d_marker = depth[int(round(v_pred)), int(round(u_pred))]
        assert abs(d_marker - (x_cam[2] - 0.015)) < 0.02


def test_render_outputs_and_bad_input():
    scene = make_scene("city", 2024)
    r = SceneRenderer(scene, 48, 64)
    p = _free_point(scene, np.random.default_rng(3), clearance=2.0)
    p[2] = 10.0 if scene.free(np.array([[p[0], p[1], 10.0]]), 2.0)[0] else p[2]
    rgb, depth = r.render(_c2w(p, 0.3, 0.4, 0.0), np.array([[40.0, 0, 32.0], [0, 40.0, 24.0], [0, 0, 1]]))
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8 and rgb.std() > 5
    assert depth.shape == (48, 64) and depth.dtype == np.float32 and (depth >= 0).all() and depth.max() > 0
    rgb_only, none = SceneRenderer(scene, 48, 64, depth=False).render(_c2w(p, 0.3, 0.4, 0.0), (40, 40, 32, 24))
    assert none is None and np.array_equal(rgb_only, rgb)
    with pytest.raises(ValueError, match="height must be a positive int"):
        SceneRenderer(scene, 0, 64)
    with pytest.raises(ValueError, match="outside the city scene"):
        r.render(_c2w(scene.bounds[1] + 5.0, 0, 0, 0), (40, 40, 32, 24))
    bad = _c2w(p, 0, 0, 0)
    bad[:3, :3] *= 2.0
    with pytest.raises(ValueError, match="c2w is not a rigid transform"):
        r.render(bad, (40, 40, 32, 24))
    with pytest.raises(ValueError, match="intrinsics has non-positive focal length"):
        r.render(_c2w(p, 0, 0, 0), (40, -1, 32, 24))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (the kernels extra)")
def test_triton_loads_after_a_twin_renders():
    """Mesa's and Triton's LLVMs clash when Triton loads second; torch loads Triton lazily (torch._dynamo)."""
    code = (
        "from sana_wm_env.scenes.gl import gl_context\n"
        "ctx = gl_context(8, 8); ctx.make_current(); ctx.free()\n"
        "import torch._dynamo, triton; print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
