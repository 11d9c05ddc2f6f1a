"""Depth maps from files or arrays, lined up with an image that was resized and centre-cropped.

A user's first frame may come with depth (``--depth`` of ``sana-wm generate`` / ``replay``, ``options["depth"]`` of
an env reset). Depth is metres along the optical axis, 0 where there is no data or no surface (sky): a
geometry-guided model treats those pixels as points at infinity. Accepted forms: a float ``(H, W)`` array in
metres; a ``.npy`` file of one; a 16-bit PNG in sensor units (``depth_scale`` units per metre: 1000 for
millimetres, the default, 5000 for the TUM RGB-D benchmark). The map must have the size of the image it belongs
to; it is resized (nearest neighbour, so no depth is invented between surfaces) and cropped exactly like the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from world_model.camera import resize_crop_geometry


def read_depth(source, *, depth_scale: float = 1000.0, what: str = "depth") -> np.ndarray:
    """``source`` (path or array) -> float32 ``(H, W)`` metres, 0 = no data. ``what`` names it in errors."""
    if not (isinstance(depth_scale, int | float) and depth_scale > 0):
        raise ValueError(f"depth_scale must be a positive number (units per metre), got {depth_scale!r}")
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{what}: no file at {str(path)!r}")
        if path.suffix.lower() == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except ValueError as err:
                raise ValueError(f"{what}: {path} is not a plain .npy array ({err})") from None
        elif path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as im:
                if im.mode not in ("I;16", "I;16B", "I"):
                    raise ValueError(f"{what}: {path} is a {im.mode} PNG; depth PNGs are 16-bit single-channel "
                                     f"(sensor units, {depth_scale:g} per metre)")
                arr = np.asarray(im, dtype=np.float64) / depth_scale
        else:
            raise ValueError(f"{what}: {path} must be a .npy (float metres) or a 16-bit .png (sensor units)")
    else:
        arr = np.asarray(source)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{what} must be a (H, W) array of metres, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{what} must be finite and >= 0 (metres; 0 = no data / sky)")
    return arr


def fit_depth(depth: np.ndarray, image_hw: tuple[int, int], hw: tuple[int, int], *, what: str = "depth"
              ) -> np.ndarray:
    """A depth map of the ``image_hw`` image, resized (nearest) and centre-cropped to ``hw`` like the image."""
    if tuple(depth.shape) != tuple(image_hw):
        raise ValueError(f"{what} is {depth.shape[0]}x{depth.shape[1]} (HxW) but its image is "
                         f"{image_hw[0]}x{image_hw[1]}: give the depth map of that image")
    (rh, rw), (top, left) = resize_crop_geometry(tuple(image_hw), tuple(hw))
    if (rh, rw) != tuple(image_hw):
        rows = np.minimum((np.arange(rh) + 0.5) * image_hw[0] / rh, image_hw[0] - 1).astype(int)
        cols = np.minimum((np.arange(rw) + 0.5) * image_hw[1] / rw, image_hw[1] - 1).astype(int)
        depth = depth[rows][:, cols]
    return np.ascontiguousarray(depth[top : top + hw[0], left : left + hw[1]])
