"""Headless MuJoCo renderer: RGB (uint8) and depth (metres) for OpenCV camera-to-world poses and pinhole intrinsics.

Camera convention: ``c2w`` is a 4x4 OpenCV camera-to-world matrix (+x right, +y down, +z forward) in the scene's
world frame; intrinsics are (fx, fy, cx, cy) in pixels of the rendered image, where the centre of the pixel in
column u, row v sits at the continuous coordinate (u, v) (so a point projects to pixel
``round(fx * x/z + cx), round(fy * y/z + cy)``). Depth is the z-distance along the optical axis.

MuJoCo cameras look down their -z axis with +y up, so the OpenGL camera gets forward = R[:, 2] and up = -R[:, 1];
the frustum is set directly from the intrinsics, which also supports off-centre principal points.
"""

from __future__ import annotations

import numpy as np

from sana_wm_env.scenes.gl import gl_context, import_mujoco
from sana_wm_env.scenes.scene import Scene
from world_model.camera import validate_c2w, validate_intrinsics


def _pose_and_intrinsics(c2w, intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Validate one pose and one set of intrinsics with the shared camera maths; return float64 numpy."""
    t = validate_c2w(c2w, "c2w").detach().cpu().double().numpy()
    k = validate_intrinsics(intrinsics, "intrinsics").detach().cpu().double().numpy()
    if t.shape != (4, 4):
        raise ValueError(f"c2w must be one 4x4 camera-to-world matrix, got shape {t.shape}")
    if k.shape != (4,):
        raise ValueError(f"intrinsics must be one (fx, fy, cx, cy) vector or 3x3 matrix, got shape {k.shape}")
    return t, k


class SceneRenderer:
    """Renders one scene at a fixed image size. Not thread-safe; make one per process.

    >>> r = SceneRenderer(make_scene("rooms", 123), height=64, width=64)
    >>> rgb, depth = r.render(c2w, (50.0, 50.0, 31.5, 31.5))
    """

    def __init__(self, scene: Scene, height: int, width: int, depth: bool = True) -> None:
        for n, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{n} must be a positive int (image size in pixels), got {v!r}")
        self.scene, self.height, self.width, self.depth = scene, int(height), int(width), bool(depth)
        mj = import_mujoco()
        self._mj = mj
        model = scene.model
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), self.width)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), self.height)
        self._data = mj.MjData(model)
        mj.mj_forward(model, self._data)
        self._ctx = gl_context(self.width, self.height)
        self._ctx.make_current()
        self._con = mj.MjrContext(model, mj.mjtFontScale.mjFONTSCALE_100.value)
        mj.mjr_setBuffer(mj.mjtFramebuffer.mjFB_OFFSCREEN.value, self._con)
        self._con.readDepthMap = 0  # mjDEPTH_ZERONEAR: window depth 0 at the near plane, 1 at the far plane
        self._rect = mj.MjrRect(0, 0, self.width, self.height)
        self._scn = mj.MjvScene(model, maxgeom=max(1000, 2 * model.ngeom + 10))
        self._opt = mj.MjvOption()
        self._cam = mj.MjvCamera()
        self._cam.type = mj.mjtCamera.mjCAMERA_FREE.value
        for flag in ("mjRND_SHADOW", "mjRND_REFLECTION", "mjRND_FOG", "mjRND_HAZE"):
            self._scn.flags[getattr(mj.mjtRndFlag, flag)] = False
        # Static world: build the geometry list once; each render only moves the camera.
        mj.mjv_updateScene(model, self._data, self._opt, None, self._cam, mj.mjtCatBit.mjCAT_ALL.value, self._scn)
        self._near, self._far = scene.znear, scene.zfar
        self._rgb = np.empty((self.height, self.width, 3), np.uint8)
        self._zbuf = np.empty((self.height, self.width), np.float32)

    def render(self, c2w, intrinsics, check_inside: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (rgb uint8 (H,W,3), depth float32 metres (H,W) or None) for one camera.

        Raises ValueError for a malformed pose or intrinsics, or (with ``check_inside``) a camera centre outside
        the scene bounds.
        """
        t, (fx, fy, cx, cy) = _pose_and_intrinsics(c2w, intrinsics)
        if check_inside:
            self.scene.check_camera_position(t[:3, 3])
        mj, n, f = self._mj, self._near, self._far
        fwd, up = t[:3, 2], -t[:3, 1]
        # OpenGL frustum at the near plane; image edges are half a pixel outside the first/last pixel centre.
        left, right = n * (-0.5 - cx) / fx, n * (self.width - 0.5 - cx) / fx
        top, bottom = n * (cy + 0.5) / fy, -n * (self.height - 0.5 - cy) / fy
        for cam in self._scn.camera:
            cam.pos[:] = t[:3, 3]
            cam.forward[:] = fwd
            cam.up[:] = up
            cam.frustum_center = (left + right) / 2
            cam.frustum_width = (right - left) / 2
            cam.frustum_bottom, cam.frustum_top = bottom, top
            cam.frustum_near, cam.frustum_far = n, f
            cam.orthographic = 0
        self._ctx.make_current()
        mj.mjr_render(self._rect, self._scn, self._con)
        mj.mjr_readPixels(self._rgb, self._zbuf, self._rect, self._con)
        rgb = np.flipud(self._rgb).copy()
        zbuf = np.flipud(self._zbuf)
        empty = zbuf >= 1.0  # cleared depth: no surface along the ray
        if empty.any():
            self._paint_sky(rgb, empty, t[:3, :3], (fx, fy, cx, cy))
        if not self.depth:
            return rgb, None
        depth = self._linear_depth(zbuf)
        depth[empty] = 0.0
        return rgb, depth

    def _paint_sky(self, rgb: np.ndarray, mask: np.ndarray, rot: np.ndarray, k: tuple) -> None:
        """Fill background pixels with the scene's sky gradient (by ray elevation); black indoors."""
        if self.scene.sky is None:
            rgb[mask] = 0
            return
        zenith, horizon = self.scene.sky
        v, u = np.nonzero(mask)
        d_cam = np.stack([(u - k[2]) / k[0], (v - k[3]) / k[1], np.ones(len(u))], axis=1)
        d_world = d_cam @ rot.T
        elev = d_world[:, 2] / np.linalg.norm(d_world, axis=1)
        a = np.clip(elev, 0.0, 1.0)[:, None] ** 0.6
        col = horizon[None] * (1 - a) + zenith[None] * a
        col = np.where(elev[:, None] < 0, horizon[None] * 0.8, col)
        rgb[v, u] = np.clip(col * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def _linear_depth(self, z: np.ndarray) -> np.ndarray:
        """Window depth in [0, 1] (0 at the near plane; MjrContext's default mapping) -> metres along +z.

        """
        n, f = np.float64(self._near), np.float64(self._far)
        z = z.astype(np.float64)
        return (n * f / (f - z * (f - n))).astype(np.float32)

    def close(self) -> None:
        """Free the GL resources (also done at garbage collection)."""
        if getattr(self, "_con", None) is not None:
            self._ctx.make_current()
            self._con.free()
            self._con = None
        if getattr(self, "_ctx", None) is not None:
            self._ctx.free()
            self._ctx = None

    def __del__(self) -> None:
        # Free our GL objects with our own context current: MjrContext frees by object id, and ids are
        # reused across contexts, so freeing it under another renderer's context would break that one.
        # Interpreter shutdown may have torn GL (and module globals such as ``contextlib``) down already: a bare
        # try/except needs no global.
        try:  # noqa: SIM105
            self.close()
        except Exception:
            pass

    def __enter__(self) -> SceneRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
