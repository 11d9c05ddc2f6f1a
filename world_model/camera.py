"""Camera maths for SANA-WM camera conditioning: SE(3)/SO(3), intrinsics, Plücker rays, latent packing.

Conventions (used everywhere in this module):

* Poses are **OpenCV camera-to-world** 4x4 matrices ``c2w = [[R, t], [0, 0, 0, 1]]``: the camera looks
  along its +z axis, +x is image right, +y is image down; ``t`` is the camera centre in world coordinates.
  Units are metres and radians.
* Quaternions are **xyzw** (scalar last). ``rotmat_to_quat`` returns the canonical sign ``w >= 0``.
  ``pose7`` vectors are ``[x, y, z, qx, qy, qz, qw]``.
* Twists are ``[v (3), w (3)]`` (translation part first), ``se3_exp(twist) = expm([[w^, v], [0, 0]])``.
* Intrinsics vectors are ``[fx, fy, cx, cy]`` in pixels; matrices are
  ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
* The pixel grid uses **integer pixel centres**: pixel column ``u = 0..W-1`` and row ``v = 0..H-1`` have
  the camera-frame ray ``((u - cx) / fx, (v - cy) / fy, 1)`` (the SANA-WM convention, no +0.5 offset).
  Intrinsics are rescaled by plain multiplication (``cx * s``), exactly as SANA-WM does for the latent grid.
* Image sizes are ``(height, width)`` tuples of positive ints.

All functions take torch tensors (float32 or float64, arbitrary leading batch dims unless said) and return
tensors of the same dtype and device. Every tensor argument also accepts a numpy array or nested list: it is
converted with ``torch.as_tensor`` (float64 stays float64; integer input becomes the default float dtype).
Bad input raises ``ValueError`` naming the argument and the expected form; nothing is silently broadcast or
clipped (the few documented broadcasts, e.g. a shared ``(4,)`` intrinsics vector, are explicit).

SANA-WM packing (``prepare_camera``): for a clip of ``F = 1 + k*s`` raw frames (``s`` = VAE temporal
stride), latent frame ``l`` gets ``conditions[l] = [flatten(c2w[s*l]) (16), fx, fy, cx, cy]`` and a Plücker
group of the ``s`` raw frames starting at ``max(0, s*l - s + 1)`` (channel ``frame_in_group*6 + c``, with
``c`` over ``[d, o x d]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "CameraInputs",
    "camera_inputs_from_world",
    "fov_to_intrinsics",
    "fov_y_to_intrinsics",
    "intrinsics_to_fov",
    "intrinsics_to_matrix",
    "look_at",
    "matrix_to_intrinsics",
    "matrix_to_pose7",
    "num_latent_frames",
    "plucker_rays",
    "pose7_to_matrix",
    "prepare_camera",
    "quat_to_rotmat",
    "relative_to",
    "relative_to_first",
    "resize_crop_geometry",
    "resize_crop_intrinsics",
    "rotation_angle",
    "rotmat_to_quat",
    "rpy_to_rotmat",
    "scale_intrinsics",
    "se3_exp",
    "se3_interpolate",
    "se3_inverse",
    "se3_log",
    "slerp",
    "so3_exp",
    "so3_log",
    "validate_c2w",
    "validate_intrinsics",
    "validate_intrinsics_for_image",
]

_QUAT_NORM_TOL = 1e-2
# Below this rotation angle (radians) the SO(3)/SE(3) coefficient functions use Taylor series.
_SMALL_ANGLE = 1e-3

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequence of numbers


# --------------------------------------------------------------------------------------------------
# Input helpers
# --------------------------------------------------------------------------------------------------


def _as_float(x: ArrayLike, name: str) -> torch.Tensor:
    """Convert to a floating tensor (numpy/list accepted); integer input becomes the default float dtype."""
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a tensor or array of numbers, got {type(x).__name__}") from exc
    if not (t.is_floating_point()):
        if t.is_complex():
            raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
        t = t.to(torch.get_default_dtype())
    return t


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _index_str(name: str, flat_index: int, batch_shape: Sequence[int]) -> str:
    """Render ``name[i, j]`` for a flat index into ``batch_shape`` (just ``name`` for unbatched input)."""
    if len(batch_shape) == 0:
        return name
    idx = np.unravel_index(int(flat_index), tuple(int(s) for s in batch_shape))
    return f"{name}[{', '.join(str(int(i)) for i in idx)}]"


def _check_trailing(t: torch.Tensor, trailing: tuple[int, ...], name: str, expected: str) -> None:
    if t.ndim < len(trailing) or tuple(t.shape[t.ndim - len(trailing) :]) != trailing:
        raise ValueError(f"{name} must have shape {expected}, got {_shape_str(t.shape)}")


def _check_finite(t: torch.Tensor, name: str, n_trailing: int) -> None:
    bad = ~torch.isfinite(t)
    if n_trailing:
        bad = bad.flatten(start_dim=t.ndim - n_trailing).any(dim=-1)
    if bad.any():
        first = int(torch.nonzero(bad.reshape(-1))[0])
        where = _index_str(name, first, t.shape[: t.ndim - n_trailing])
        raise ValueError(f"{where} contains NaN or inf; expected finite values")


def _check_hw(hw: Any, name: str) -> tuple[int, int]:
    """Validate an image size ``(height, width)`` of positive ints."""
    try:
        h, w = hw
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a (height, width) pair of positive ints, got {hw!r}") from exc
    ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (h, w))
    if not ok:
        raise ValueError(f"{name} must be a (height, width) pair of positive ints, got {hw!r}")
    return int(h), int(w)


def _check_pos_int(value: Any, name: str, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _skew(w: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrix."""
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*w.shape[:-1], 3, 3)


def _eye_like(t: torch.Tensor, n: int) -> torch.Tensor:
    return torch.eye(n, dtype=t.dtype, device=t.device)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def validate_c2w(c2w: ArrayLike, name: str = "c2w", atol: float = 1e-3) -> torch.Tensor:
    """Check that ``c2w`` is a (..., 4, 4) rigid transform: finite, orthonormal R, det +1, bottom row 0 0 0 1.

    Accepts numpy arrays. Returns the input as a tensor (unchanged). Raises ValueError naming ``name``, the
    expected form and the first offending batch index.
    """
    t = _as_float(c2w, name)
    _check_trailing(t, (4, 4), name, "(..., 4, 4) camera-to-world rigid transforms")
    _check_finite(t, name, 2)
    batch = t.shape[:-2]
    flat = t.reshape(-1, 4, 4)
    expected = "expected [[R, t], [0, 0, 0, 1]] with R^T R = I and det(R) = +1"
    bottom = flat[:, 3, :]
    ref_bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=t.dtype, device=t.device)
    bad_bottom = (bottom - ref_bottom).abs().amax(dim=-1) > atol
    if bad_bottom.any():
        i = int(torch.nonzero(bad_bottom)[0])
        row = [round(float(v), 6) for v in bottom[i]]
        raise ValueError(f"{_index_str(name, i, batch)} is not a rigid transform: bottom row is {row}; {expected}")
    r = flat[:, :3, :3]
    ortho_err = (r.transpose(-1, -2) @ r - _eye_like(t, 3)).abs().amax(dim=(-1, -2))
    det = torch.linalg.det(r)
    bad_det = det <= 0
    if bad_det.any():
        i = int(torch.nonzero(bad_det)[0])
        raise ValueError(
            f"{_index_str(name, i, batch)} is not a rigid transform: det(R)={float(det[i]):.4g}; "
            f"expected a proper rotation ({expected})"
        )
    bad_ortho = ortho_err > atol
    if bad_ortho.any():
        i = int(torch.nonzero(bad_ortho)[0])
        raise ValueError(
            f"{_index_str(name, i, batch)} is not a rigid transform: "
            f"max|R^T R - I|={float(ortho_err[i]):.4g} > atol={atol}; {expected}"
        )
    return t


def validate_intrinsics(intrinsics: ArrayLike, name: str = "intrinsics") -> torch.Tensor:
    """Validate intrinsics and return them as (..., 4) vectors ``[fx, fy, cx, cy]``.

    Accepts (4,) / (..., 4) vectors or (3, 3) / (..., 3, 3) matrices ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``
    (zero skew required), as tensors or numpy arrays. fx, fy must be > 0 and everything finite.
    """
    t = _as_float(intrinsics, name)
    expected = "(..., 4) [fx, fy, cx, cy] or (..., 3, 3) [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]"
    if t.ndim >= 2 and tuple(t.shape[-2:]) == (3, 3):
        _check_finite(t, name, 2)
        flat = t.reshape(-1, 3, 3)
        scale = flat.abs().amax(dim=(-1, -2)).clamp_min(1.0)
        last = torch.tensor([0.0, 0.0, 1.0], dtype=t.dtype, device=t.device)
        bad_last = (flat[:, 2, :] - last).abs().amax(dim=-1) > 1e-6
        bad_skew = (flat[:, 0, 1].abs() > 1e-6 * scale) | (flat[:, 1, 0].abs() > 1e-6 * scale)
        for bad, what in ((bad_last, "last row is not [0, 0, 1]"), (bad_skew, "has non-zero skew")):
            if bad.any():
                i = int(torch.nonzero(bad)[0])
                raise ValueError(f"{_index_str(name, i, t.shape[:-2])} {what}; expected {expected}")
        k4 = torch.stack([t[..., 0, 0], t[..., 1, 1], t[..., 0, 2], t[..., 1, 2]], dim=-1)
    elif t.ndim >= 1 and t.shape[-1] == 4:
        _check_finite(t, name, 1)
        k4 = t
    else:
        raise ValueError(f"{name} must have shape {expected}, got {_shape_str(t.shape)}")
    bad_f = (k4[..., 0] <= 0) | (k4[..., 1] <= 0)
    if bad_f.any():
        i = int(torch.nonzero(bad_f.reshape(-1))[0])
        f = k4.reshape(-1, 4)[i]
        raise ValueError(
            f"{_index_str(name, i, k4.shape[:-1])} has non-positive focal length "
            f"(fx={float(f[0]):.4g}, fy={float(f[1]):.4g}); expected fx > 0 and fy > 0 in pixels"
        )
    return k4


def validate_intrinsics_for_image(intrinsics: ArrayLike, image_hw: tuple[int, int], name: str = "intrinsics"):
    """Validate intrinsics (see :func:`validate_intrinsics`) and check they belong to an ``image_hw`` image.

    The principal point must lie inside the image (``0 <= cx <= W``, ``0 <= cy <= H``): intrinsics of a
    different resolution (the usual mistake: calibration at full sensor size, image downscaled) fail here,
    with the image size they look like they were made for.
    """
    k4 = validate_intrinsics(intrinsics, name)
    h, w = _check_hw(image_hw, "image_hw")
    flat = k4.reshape(-1, 4)
    bad = (flat[:, 2] < 0) | (flat[:, 2] > w) | (flat[:, 3] < 0) | (flat[:, 3] > h)
    if bad.any():
        i = int(torch.nonzero(bad)[0])
        fx, fy, cx, cy = (float(v) for v in flat[i])
        raise ValueError(
            f"{_index_str(name, i, k4.shape[:-1])} do not fit a {w}x{h} (WxH) image: the principal point "
            f"(cx={cx:.4g}, cy={cy:.4g}) lies outside it; they look like intrinsics of a ~{2 * cx:.0f}x{2 * cy:.0f} "
            f"image. Give [fx, fy, cx, cy] in pixels of this image"
        )
    return k4


# --------------------------------------------------------------------------------------------------
# SE(3) basics
# --------------------------------------------------------------------------------------------------


def se3_inverse(T: ArrayLike) -> torch.Tensor:
    """Closed-form inverse of (..., 4, 4) rigid transforms: [[R^T, -R^T t], [0, 1]]."""
    t = _as_float(T, "T")
    _check_trailing(t, (4, 4), "T", "(..., 4, 4)")
    r_t = t[..., :3, :3].transpose(-1, -2)
    trans = -(r_t @ t[..., :3, 3:4])
    top = torch.cat([r_t, trans], dim=-1)
    bottom = torch.zeros_like(t[..., 3:4, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def relative_to(c2w: ArrayLike, reference: ArrayLike) -> torch.Tensor:
    """``inv(reference) @ c2w``: poses (..., F, 4, 4) expressed in the frame of ``reference`` (..., 4, 4).

    ``reference`` is broadcast over the frame dim F only; its leading dims must equal those of ``c2w`` (or be
    absent: a single (4, 4) reference is shared by every batch element).
    """
    p = _as_float(c2w, "c2w")
    ref = _as_float(reference, "reference")
    _check_trailing(p, (4, 4), "c2w", "(..., F, 4, 4)")
    _check_trailing(ref, (4, 4), "reference", "(..., 4, 4)")
    if p.ndim < 3:
        raise ValueError(f"c2w must have shape (..., F, 4, 4) with a frame dim, got {_shape_str(p.shape)}")
    lead = p.shape[:-3]
    if ref.ndim != 2 and tuple(ref.shape[:-2]) != tuple(lead):
        raise ValueError(
            f"reference must have shape {_shape_str((*lead, 4, 4))} or (4, 4) to match c2w "
            f"{_shape_str(p.shape)}, got {_shape_str(ref.shape)}"
        )
    ref = ref.to(device=p.device, dtype=p.dtype)
    return se3_inverse(ref).unsqueeze(-3) @ p


def relative_to_first(c2w: ArrayLike) -> torch.Tensor:
    """Poses (..., F, 4, 4) relative to their first frame, so frame 0 becomes the identity."""
    p = _as_float(c2w, "c2w")
    _check_trailing(p, (4, 4), "c2w", "(..., F, 4, 4)")
    if p.ndim < 3 or p.shape[-3] < 1:
        raise ValueError(f"c2w must have shape (..., F, 4, 4) with F >= 1, got {_shape_str(p.shape)}")
    return relative_to(p, p[..., 0, :, :])


# --------------------------------------------------------------------------------------------------
# SO(3) / SE(3) exponential and logarithm
# --------------------------------------------------------------------------------------------------


def _rot_coeffs(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A = sin/θ, B = (1-cos)/θ², C = (θ-sin)/θ³, D = (1 - A/(2B))/θ², evaluated in float64 with Taylor series
    below ``_SMALL_ANGLE`` (avoids cancellation in float32), cast back to ``theta``'s dtype."""
    th = theta.to(torch.float64)
    small = th < _SMALL_ANGLE
    ts = torch.where(small, torch.ones_like(th), th)
    t2 = th * th
    a = torch.where(small, 1 - t2 / 6 + t2 * t2 / 120, torch.sin(ts) / ts)
    b = torch.where(small, 0.5 - t2 / 24 + t2 * t2 / 720, (1 - torch.cos(ts)) / (ts * ts))
    c = torch.where(small, 1.0 / 6 - t2 / 120 + t2 * t2 / 5040, (ts - torch.sin(ts)) / (ts**3))
    a_s = torch.sin(ts) / ts
    b_s = (1 - torch.cos(ts)) / (ts * ts)
    d = torch.where(small, 1.0 / 12 + t2 / 720 + t2 * t2 / 30240, (1 - a_s / (2 * b_s)) / (ts * ts))
    return tuple(v.to(theta.dtype) for v in (a, b, c, d))  # type: ignore[return-value]


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """Norm over the last dim whose gradient is finite at zero."""
    sq = (v * v).sum(-1)
    nz = sq > 0
    return torch.where(nz, torch.sqrt(torch.where(nz, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def so3_exp(rotvec: ArrayLike) -> torch.Tensor:
    """Rotation vectors (..., 3) (axis * angle, radians) -> rotation matrices (..., 3, 3) (Rodrigues)."""
    w = _as_float(rotvec, "rotvec")
    _check_trailing(w, (3,), "rotvec", "(..., 3)")
    theta = _safe_norm(w)
    a, b, _, _ = _rot_coeffs(theta)
    k = _skew(w)
    return _eye_like(w, 3) + a[..., None, None] * k + b[..., None, None] * (k @ k)


def so3_log(R: ArrayLike) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> rotation vectors (..., 3) with angle in [0, pi].

    Goes through the canonical quaternion (Shepperd's method), so it is accurate near 0 and near pi.
    """
    r = _as_float(R, "R")
    _check_trailing(r, (3, 3), "R", "(..., 3, 3)")
    q = _rotmat_to_quat_unchecked(r)
    v, w = q[..., :3], q[..., 3]
    n = _safe_norm(v)
    tiny = n < 1e-12
    n_safe = torch.where(tiny, torch.ones_like(n), n)
    w_safe = torch.where(tiny, torch.ones_like(w), w)
    factor = torch.where(tiny, 2.0 / w_safe, 2.0 * torch.atan2(n_safe, w) / n_safe)
    return v * factor[..., None]


def rotation_angle(R: ArrayLike) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> their rotation angles (...) in [0, pi] radians (accurate near 0 and pi)."""
    return _safe_norm(so3_log(R))


def rpy_to_rotmat(rpy: ArrayLike) -> torch.Tensor:
    """Roll, pitch, yaw (..., 3) radians -> rotation matrices ``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` (..., 3, 3).

    The REP-103 / aerospace convention (intrinsic Z-Y-X, i.e. extrinsic x-y-z): yaw about world z, then pitch
    about the new y, then roll about the new x.
    """
    a = _as_float(rpy, "rpy")
    _check_trailing(a, (3,), "rpy", "(..., 3) [roll, pitch, yaw]")
    cr, cp, cy = torch.cos(a).unbind(-1)
    sr, sp, sy = torch.sin(a).unbind(-1)
    rows = [
        cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr,
        sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr,
        -sp, cp * sr, cp * cr,
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*a.shape[:-1], 3, 3)


def slerp(times: ArrayLike, R: ArrayLike, at: ArrayLike) -> torch.Tensor:
    """Rotations (N, 3, 3) keyed at increasing ``times`` (N,), interpolated at ``at`` (M,) -> (M, 3, 3).

    Between two keys the rotation turns at a constant rate about a fixed axis (the shortest way):
    ``R_i @ so3_exp(alpha * so3_log(R_i^T R_{i+1}))``. ``at`` must lie within ``[times[0], times[-1]]``.
    Keys that are not exactly orthonormal are first projected to rotations (through their quaternions).
    """
    t = _as_float(times, "times").to(torch.float64)
    r = _as_float(R, "R")
    q = _as_float(at, "at").to(torch.float64)
    _check_trailing(r, (3, 3), "R", "(N, 3, 3)")
    if t.ndim != 1 or r.ndim != 3 or r.shape[0] != t.shape[0] or t.shape[0] < 2:
        raise ValueError(f"times (N,) and R (N, 3, 3) need the same N >= 2, got {_shape_str(t.shape)} and "
                         f"{_shape_str(r.shape)}")
    if q.ndim != 1:
        raise ValueError(f"at must have shape (M,), got {_shape_str(q.shape)}")
    _check_finite(t, "times", 0)
    _check_finite(q, "at", 0)
    if not bool((t[1:] > t[:-1]).all()):
        raise ValueError("times must be strictly increasing")
    if q.numel() and (q.min() < t[0] or q.max() > t[-1]):
        raise ValueError(f"at must lie within [{float(t[0])!r}, {float(t[-1])!r}], got [{float(q.min())!r}, "
                         f"{float(q.max())!r}]")
    r = quat_to_rotmat(_rotmat_to_quat_unchecked(r), check=False)
    seg = (torch.searchsorted(t, q, right=True) - 1).clamp(0, t.shape[0] - 2)
    alpha = ((q - t[seg]) / (t[seg + 1] - t[seg])).to(r.dtype)
    delta = so3_log(r[:-1].transpose(-1, -2) @ r[1:])  # (N-1, 3) per-segment rotation vectors
    return r[seg] @ so3_exp(alpha[:, None] * delta[seg])


def se3_exp(twist: ArrayLike) -> torch.Tensor:
    """Twists (..., 6) = [v, w] (translation part first) -> rigid transforms (..., 4, 4)."""
    xi = _as_float(twist, "twist")
    _check_trailing(xi, (6,), "twist", "(..., 6) [v (3), w (3)]")
    v, w = xi[..., :3], xi[..., 3:]
    theta = _safe_norm(w)
    a, b, c, _ = _rot_coeffs(theta)
    k = _skew(w)
    k2 = k @ k
    eye = _eye_like(xi, 3)
    rot = eye + a[..., None, None] * k + b[..., None, None] * k2
    vmat = eye + b[..., None, None] * k + c[..., None, None] * k2
    trans = vmat @ v[..., None]
    top = torch.cat([rot, trans], dim=-1)
    bottom = torch.zeros_like(xi[..., None, :4])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def se3_log(T: ArrayLike) -> torch.Tensor:
    """Rigid transforms (..., 4, 4) -> twists (..., 6) = [v, w]; inverse of :func:`se3_exp` (|w| <= pi)."""
    t = _as_float(T, "T")
    _check_trailing(t, (4, 4), "T", "(..., 4, 4)")
    w = so3_log(t[..., :3, :3])
    theta = _safe_norm(w)
    _, _, _, d = _rot_coeffs(theta)
    k = _skew(w)
    vinv = _eye_like(t, 3) - 0.5 * k + d[..., None, None] * (k @ k)
    v = (vinv @ t[..., :3, 3:4])[..., 0]
    return torch.cat([v, w], dim=-1)


def se3_interpolate(T0: ArrayLike, T1: ArrayLike, alpha: float | ArrayLike) -> torch.Tensor:
    """Geodesic interpolation ``T0 @ exp(alpha * log(inv(T0) @ T1))`` (alpha=0 -> T0, alpha=1 -> T1).

    ``T0`` and ``T1`` are (..., 4, 4) with equal shapes. ``alpha`` is a float or a tensor whose shape
    broadcasts against the leading dims of T0 (e.g. T0 (4, 4) with alpha (N,) gives (N, 4, 4)).
    """
    a0 = _as_float(T0, "T0")
    a1 = _as_float(T1, "T1")
    _check_trailing(a0, (4, 4), "T0", "(..., 4, 4)")
    if a1.shape != a0.shape:
        raise ValueError(f"T1 must have the same shape as T0 {_shape_str(a0.shape)}, got {_shape_str(a1.shape)}")
    a1 = a1.to(a0.dtype)
    delta = se3_log(se3_inverse(a0) @ a1)
    al = torch.as_tensor(alpha, dtype=a0.dtype, device=a0.device)
    try:
        torch.broadcast_shapes(al.shape, a0.shape[:-2])
    except RuntimeError as exc:
        raise ValueError(
            f"alpha of shape {_shape_str(al.shape)} does not broadcast against T0 leading dims "
            f"{_shape_str(a0.shape[:-2])}"
        ) from exc
    return a0 @ se3_exp(al[..., None] * delta)


# --------------------------------------------------------------------------------------------------
# Quaternions and pose7
# --------------------------------------------------------------------------------------------------


def _check_unit_quat(q: torch.Tensor, name: str) -> torch.Tensor:
    _check_finite(q, name, 1)
    n = torch.linalg.vector_norm(q, dim=-1)
    bad = (n - 1).abs() > _QUAT_NORM_TOL
    if bad.any():
        i = int(torch.nonzero(bad.reshape(-1))[0])
        raise ValueError(
            f"{_index_str(name, i, q.shape[:-1])} has norm {float(n.reshape(-1)[i]):.4g}; expected a unit "
            f"quaternion [qx, qy, qz, qw] (|norm - 1| <= {_QUAT_NORM_TOL})"
        )
    return q / n[..., None]


def quat_to_rotmat(q_xyzw: ArrayLike, *, check: bool = True) -> torch.Tensor:
    """Unit quaternions (..., 4) xyzw -> rotation matrices (..., 3, 3). Near-unit inputs are normalised.

    ``check=False`` skips the validation (no host sync: for use inside networks) and normalises any quaternion;
    a zero quaternion then gives the identity rather than an error.
    """
    q = _as_float(q_xyzw, "q_xyzw")
    _check_trailing(q, (4,), "q_xyzw", "(..., 4) [qx, qy, qz, qw]")
    if check:
        q = _check_unit_quat(q, "q_xyzw")
    else:
        q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-8)
    x, y, z, w = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def _rotmat_to_quat_unchecked(r: torch.Tensor) -> torch.Tensor:
    """Shepperd's method: pick the numerically largest of the four quaternion components to divide by."""
    m00, m01, m02 = r[..., 0, 0], r[..., 0, 1], r[..., 0, 2]
    m10, m11, m12 = r[..., 1, 0], r[..., 1, 1], r[..., 1, 2]
    m20, m21, m22 = r[..., 2, 0], r[..., 2, 1], r[..., 2, 2]
    # 4 * component^2 for w, x, y, z.
    sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1)
    s = 2 * torch.sqrt(sq.clamp_min(1e-12))  # = 4 * |component|, never zero
    sw, sx, sy, sz = s.unbind(-1)
    cand = torch.stack(
        [
            torch.stack([(m21 - m12) / sw, (m02 - m20) / sw, (m10 - m01) / sw, sw / 4], dim=-1),
            torch.stack([sx / 4, (m01 + m10) / sx, (m02 + m20) / sx, (m21 - m12) / sx], dim=-1),
            torch.stack([(m01 + m10) / sy, sy / 4, (m12 + m21) / sy, (m02 - m20) / sy], dim=-1),
            torch.stack([(m02 + m20) / sz, (m12 + m21) / sz, sz / 4, (m10 - m01) / sz], dim=-1),
        ],
        dim=-2,
    )  # (..., 4 cases, 4 xyzw)
    best = sq.argmax(dim=-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., 3:4] < 0, -q, q)


def rotmat_to_quat(R: ArrayLike) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) xyzw with canonical sign w >= 0."""
    r = _as_float(R, "R")
    _check_trailing(r, (3, 3), "R", "(..., 3, 3)")
    _check_finite(r, "R", 2)
    return _rotmat_to_quat_unchecked(r)


def pose7_to_matrix(p: ArrayLike) -> torch.Tensor:
    """Pose vectors (..., 7) ``[x, y, z, qx, qy, qz, qw]`` -> rigid transforms (..., 4, 4)."""
    t = _as_float(p, "p")
    _check_trailing(t, (7,), "p", "(..., 7) [x, y, z, qx, qy, qz, qw]")
    _check_finite(t, "p", 1)
    try:
        rot = quat_to_rotmat(t[..., 3:])
    except ValueError as exc:
        raise ValueError(f"p: quaternion part p[..., 3:7] is invalid: {exc}") from None
    top = torch.cat([rot, t[..., :3, None]], dim=-1)
    bottom = torch.zeros_like(t[..., None, :4])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def matrix_to_pose7(T: ArrayLike) -> torch.Tensor:
    """Rigid transforms (..., 4, 4) -> pose vectors (..., 7) ``[x, y, z, qx, qy, qz, qw]`` (qw >= 0)."""
    t = _as_float(T, "T")
    _check_trailing(t, (4, 4), "T", "(..., 4, 4)")
    return torch.cat([t[..., :3, 3], rotmat_to_quat(t[..., :3, :3])], dim=-1)


# --------------------------------------------------------------------------------------------------
# look_at and intrinsics
# --------------------------------------------------------------------------------------------------


def look_at(eye: ArrayLike, target: ArrayLike, up: ArrayLike = (0.0, 0.0, 1.0)) -> torch.Tensor:
    """OpenCV camera-to-world pose at ``eye`` looking at ``target``: +z toward the target, +y (image down) is
    opposite to ``up`` projected onto the image plane, +x = y × z (image right).

    ``eye`` and ``target`` are (..., 3) with equal shapes; ``up`` is (3,) (shared) or shaped like ``eye``.
    """
    e = _as_float(eye, "eye")
    tg = _as_float(target, "target").to(e.dtype)
    u = _as_float(up, "up").to(e.dtype)
    _check_trailing(e, (3,), "eye", "(..., 3)")
    if tg.shape != e.shape:
        raise ValueError(f"target must have the same shape as eye {_shape_str(e.shape)}, got {_shape_str(tg.shape)}")
    if u.shape != (3,) and u.shape != e.shape:
        raise ValueError(f"up must have shape (3,) or {_shape_str(e.shape)} like eye, got {_shape_str(u.shape)}")
    for t, nm in ((e, "eye"), (tg, "target"), (u, "up")):
        _check_finite(t, nm, 1)
    fwd = tg - e
    dist = torch.linalg.vector_norm(fwd, dim=-1)
    scale = torch.maximum(torch.linalg.vector_norm(e, dim=-1), torch.linalg.vector_norm(tg, dim=-1)).clamp_min(1.0)
    bad = dist <= 1e-9 * scale
    if bad.any():
        i = int(torch.nonzero(bad.reshape(-1))[0])
        raise ValueError(f"eye equals target at {_index_str('eye', i, e.shape[:-1])}; expected distinct points")
    z = fwd / dist[..., None]
    u = u.expand_as(z)
    u_norm = torch.linalg.vector_norm(u, dim=-1)
    y = -(u - (u * z).sum(-1, keepdim=True) * z)
    y_norm = torch.linalg.vector_norm(y, dim=-1)
    bad = y_norm <= 1e-6 * u_norm.clamp_min(1e-30)
    if bad.any():
        i = int(torch.nonzero(bad.reshape(-1))[0])
        raise ValueError(
            f"up is zero or parallel to the viewing direction (target - eye) at "
            f"{_index_str('eye', i, e.shape[:-1])}; expected an up vector not parallel to the view direction"
        )
    y = y / y_norm[..., None]
    x = torch.linalg.cross(y, z, dim=-1)
    rot = torch.stack([x, y, z], dim=-1)
    top = torch.cat([rot, e[..., None]], dim=-1)
    bottom = torch.zeros_like(e[..., None, :]).expand(*e.shape[:-1], 1, 3)
    bottom = torch.cat([bottom, torch.ones_like(bottom[..., :1])], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def _fov_to_k4(fov_deg: Any, height: int, width: int, axis: str, half_pixel_centre: bool, dtype) -> torch.Tensor:
    h, w = _check_hw((height, width), "(height, width)")
    name = f"fov_{axis}_deg"
    f = torch.as_tensor(fov_deg, dtype=dtype)
    if not f.is_floating_point():
        f = f.to(torch.get_default_dtype())
    if not bool(torch.isfinite(f).all()) or bool(((f <= 0) | (f >= 180)).any()):
        raise ValueError(f"{name} must be finite and in (0, 180) degrees, got {fov_deg!r}")
    extent = w if axis == "x" else h
    focal = (extent / 2) / torch.tan(torch.deg2rad(f) / 2)
    off = 0.5 if half_pixel_centre else 0.0
    cx = torch.full_like(focal, w / 2 - off)
    cy = torch.full_like(focal, h / 2 - off)
    return torch.stack([focal, focal, cx, cy], dim=-1)


def fov_to_intrinsics(
    fov_x_deg: float | ArrayLike,
    height: int,
    width: int,
    *,
    half_pixel_centre: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Square-pixel intrinsics ``[fx, fy, cx, cy]`` from a horizontal field of view (degrees).

    ``fx = fy = (W/2) / tan(fov_x/2)``. Principal point choice: ``(W/2, H/2)`` by default, the image
    centre in continuous coordinates as reported by common pinhole renderers and camera datasets (what
    SANA-WM was trained with). Under this module's integer-pixel-centre grid the exact centre is
    ``((W-1)/2, (H-1)/2)``: pass ``half_pixel_centre=True`` for that (a half-pixel difference). Returns (4,)
    for a scalar fov, (..., 4) for a tensor of fovs (dtype follows a floating tensor input, else ``dtype``).
    """
    return _fov_to_k4(fov_x_deg, height, width, "x", half_pixel_centre, _fov_dtype(fov_x_deg, dtype))


def fov_y_to_intrinsics(
    fov_y_deg: float | ArrayLike,
    height: int,
    width: int,
    *,
    half_pixel_centre: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Like :func:`fov_to_intrinsics` but from the vertical field of view (MuJoCo's ``fovy``):
    ``fx = fy = (H/2) / tan(fov_y/2)``."""
    return _fov_to_k4(fov_y_deg, height, width, "y", half_pixel_centre, _fov_dtype(fov_y_deg, dtype))


def _fov_dtype(fov: Any, default: torch.dtype) -> torch.dtype:
    return fov.dtype if isinstance(fov, torch.Tensor) and fov.is_floating_point() else default


def intrinsics_to_fov(k4: ArrayLike, height: int, width: int) -> torch.Tensor:
    """Fields of view (..., 2) ``[fov_x_deg, fov_y_deg]`` of intrinsics (..., 4) at (height, width)."""
    k = validate_intrinsics(k4, "k4")
    h, w = _check_hw((height, width), "(height, width)")
    fov_x = torch.rad2deg(2 * torch.atan((w / 2) / k[..., 0]))
    fov_y = torch.rad2deg(2 * torch.atan((h / 2) / k[..., 1]))
    return torch.stack([fov_x, fov_y], dim=-1)


def intrinsics_to_matrix(k4: ArrayLike) -> torch.Tensor:
    """Intrinsics vectors (..., 4) ``[fx, fy, cx, cy]`` -> matrices (..., 3, 3)."""
    k = _as_float(k4, "k4")
    _check_trailing(k, (4,), "k4", "(..., 4) [fx, fy, cx, cy]")
    k = validate_intrinsics(k, "k4")
    fx, fy, cx, cy = k.unbind(-1)
    o = torch.zeros_like(fx)
    one = torch.ones_like(fx)
    return torch.stack([fx, o, cx, o, fy, cy, o, o, one], dim=-1).reshape(*k.shape[:-1], 3, 3)


def matrix_to_intrinsics(K: ArrayLike) -> torch.Tensor:
    """Intrinsics matrices (..., 3, 3) -> vectors (..., 4) ``[fx, fy, cx, cy]`` (validated, zero skew)."""
    k = _as_float(K, "K")
    _check_trailing(k, (3, 3), "K", "(..., 3, 3)")
    return validate_intrinsics(k, "K")


def scale_intrinsics(k4: ArrayLike, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    """Rescale intrinsics (..., 4) from an image of ``from_hw`` to ``to_hw`` (e.g. pixels -> latent grid).

    ``fx, cx *= to_w / from_w`` and ``fy, cy *= to_h / from_h`` — exactly SANA-WM's latent rescaling. (3, 3)
    matrices are accepted too; the result is always the (..., 4) vector form.
    """
    k = validate_intrinsics(k4, "k4")
    fh, fw = _check_hw(from_hw, "from_hw")
    th, tw = _check_hw(to_hw, "to_hw")
    sx, sy = tw / fw, th / fh
    scale = torch.tensor([sx, sy, sx, sy], dtype=k.dtype, device=k.device)
    return k * scale


def resize_crop_geometry(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Aspect-preserving resize so the image covers ``dst_hw``, then centre crop (SANA-WM's preprocessing).

    Returns ``(resized_hw, crop_top_left)``: resize the ``src_hw`` image to ``resized_hw = (rh, rw)``, then
    take rows ``top:top+dst_h`` and columns ``left:left+dst_w`` with ``crop_top_left = (top, left)``.
    """
    sh, sw = _check_hw(src_hw, "src_hw")
    dh, dw = _check_hw(dst_hw, "dst_hw")
    scale = max(dh / sh, dw / sw)
    rh = max(dh, int(round(sh * scale)))
    rw = max(dw, int(round(sw * scale)))
    return (rh, rw), ((rh - dh) // 2, (rw - dw) // 2)


def resize_crop_intrinsics(k4: ArrayLike, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """Intrinsics (..., 4) of an image after :func:`resize_crop_geometry` (resize to cover, then centre crop).

    ``fx *= rw/sw``, ``cx = cx * rw/sw - left`` and likewise for y. (3, 3) matrices are accepted too.
    """
    k = validate_intrinsics(k4, "k4")
    sh, sw = _check_hw(src_hw, "src_hw")
    (rh, rw), (top, left) = resize_crop_geometry(src_hw, dst_hw)
    sx, sy = rw / sw, rh / sh
    scale = torch.tensor([sx, sy, sx, sy], dtype=k.dtype, device=k.device)
    shift = torch.tensor([0.0, 0.0, float(left), float(top)], dtype=k.dtype, device=k.device)
    return k * scale - shift


# --------------------------------------------------------------------------------------------------
# Plücker rays
# --------------------------------------------------------------------------------------------------


def plucker_rays(c2w: ArrayLike, k4: ArrayLike, height: int, width: int) -> torch.Tensor:
    """Per-pixel Plücker rays (..., 6, H, W) = ``[d, o × d]`` for cameras c2w (..., 4, 4), intrinsics k4.

    ``d = normalize(R @ ((u - cx)/fx, (v - cy)/fy, 1))`` is the unit world direction through integer pixel
    centre (u, v), ``o`` the camera centre. ``k4`` is (..., 4) with the same leading dims as ``c2w``, or (4,)
    shared. Poses are not validated here (hot path); use :func:`validate_c2w` on untrusted input.
    """
    p = _as_float(c2w, "c2w")
    _check_trailing(p, (4, 4), "c2w", "(..., 4, 4)")
    k = _as_float(k4, "k4").to(device=p.device, dtype=p.dtype)
    _check_trailing(k, (4,), "k4", "(..., 4) [fx, fy, cx, cy]")
    if k.ndim != 1 and k.shape[:-1] != p.shape[:-2]:
        raise ValueError(
            f"k4 must have shape {_shape_str((*p.shape[:-2], 4))} (matching c2w) or (4,), got {_shape_str(k.shape)}"
        )
    h, w = _check_hw((height, width), "(height, width)")
    k = k.expand(*p.shape[:-2], 4)
    vs = torch.arange(h, dtype=p.dtype, device=p.device)
    us = torch.arange(w, dtype=p.dtype, device=p.device)
    fx, fy, cx, cy = (k[..., i, None, None] for i in range(4))
    x = (us[None, :] - cx) / fx  # (..., 1, W)
    y = (vs[:, None] - cy) / fy  # (..., H, 1)
    x, y = torch.broadcast_tensors(x, y)
    dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (..., H, W, 3)
    rot = p[..., :3, :3]
    d = torch.einsum("...ij,...hwj->...hwi", rot, dirs_cam)
    d = d / torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    o = p[..., None, None, :3, 3].expand_as(d)
    m = torch.linalg.cross(o, d, dim=-1)
    return torch.cat([d, m], dim=-1).movedim(-1, -3)


# --------------------------------------------------------------------------------------------------
# Latent-frame packing
# --------------------------------------------------------------------------------------------------


def num_latent_frames(num_frames: int, temporal_stride: int, *, starts_at_first_frame: bool = True) -> int:
    """Latent frame count for ``num_frames`` raw frames under a causal video VAE with ``temporal_stride``.

    ``starts_at_first_frame=True`` (a clip starting at the episode's first frame):
    ``num_frames = 1 + k*stride`` gives ``k + 1``. ``False`` (a later streaming chunk):
    ``num_frames = k*stride`` (k >= 1) gives ``k``.
    """
    n = _check_pos_int(num_frames, "num_frames")
    s = _check_pos_int(temporal_stride, "temporal_stride")
    if starts_at_first_frame:
        if (n - 1) % s == 0:
            return (n - 1) // s + 1
        lo = 1 + ((n - 1) // s) * s
        raise ValueError(
            f"num_frames={n} does not fit temporal_stride={s} for a clip starting at the first frame; "
            f"expected 1 + k*{s} frames, nearest valid counts are {lo} and {lo + s}"
        )
    if n % s == 0:
        return n // s
    lo = (n // s) * s
    near = f"{lo} and {lo + s}" if lo >= s else f"{lo + s}"
    raise ValueError(
        f"num_frames={n} does not fit temporal_stride={s} for a continuation chunk; expected k*{s} frames "
        f"(k >= 1), nearest valid counts are {near}"
    )


@dataclass
class CameraInputs:
    """Camera tensors for the SANA-WM transformer.

    ``conditions`` (B, T, 20): flattened row-major relative c2w (16) + latent ``[fx, fy, cx, cy]`` per
    latent frame.
    ``plucker`` (B, 6*stride, T, h, w): Plücker rays of each latent frame's raw-frame group (channel
    ``frame_in_group*6 + c``).
    ``geometry`` (B, G, T, h, w), optional: what the geometry cache shows at each latent frame's poses, encoded
    (:mod:`world_model.geometry`); read by models with ``geometry_channels = G``.
    """

    conditions: torch.Tensor
    plucker: torch.Tensor
    geometry: torch.Tensor | None = None

    def __post_init__(self) -> None:
        g = self.geometry
        if g is not None:
            p = self.plucker
            if not isinstance(g, torch.Tensor) or g.ndim != 5 or g.shape[0] != p.shape[0] or g.shape[2:] != p.shape[2:]:
                raise ValueError(f"geometry must be a (B, G, T, h, w) tensor matching plucker {_shape_str(p.shape)} "
                                 f"in B, T, h, w, got {_describe(g)}")
        c, p = self.conditions, self.plucker
        if not isinstance(c, torch.Tensor) or c.ndim != 3 or c.shape[-1] != 20:
            raise ValueError(f"conditions must be a (B, T, 20) tensor, got {_describe(c)}")
        if not isinstance(p, torch.Tensor) or p.ndim != 5 or p.shape[1] % 6 != 0 or p.shape[1] == 0:
            raise ValueError(f"plucker must be a (B, 6*stride, T, h, w) tensor, got {_describe(p)}")
        if p.shape[0] != c.shape[0] or p.shape[2] != c.shape[1]:
            raise ValueError(
                f"plucker {_shape_str(p.shape)} must share batch size and frame count with conditions "
                f"{_shape_str(c.shape)}; expected plucker (B, 6*stride, T, h, w) with conditions (B, T, 20)"
            )

    @property
    def num_frames(self) -> int:
        """Number of latent frames T."""
        return int(self.conditions.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.conditions.shape[0])

    @property
    def temporal_stride(self) -> int:
        """Raw frames per latent frame group (plucker channels / 6)."""
        return int(self.plucker.shape[1]) // 6

    @property
    def latent_hw(self) -> tuple[int, int]:
        return int(self.plucker.shape[-2]), int(self.plucker.shape[-1])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CameraInputs:
        """Move/cast every tensor."""
        geometry = None if self.geometry is None else self.geometry.to(device=device, dtype=dtype)
        return CameraInputs(self.conditions.to(device=device, dtype=dtype), self.plucker.to(device=device, dtype=dtype),
                            geometry)

    def with_geometry(self, geometry: torch.Tensor | None) -> CameraInputs:
        """The same camera with ``geometry`` (B, G, T, h, w) attached (or removed with None)."""
        return CameraInputs(self.conditions, self.plucker, geometry)

    def slice_frames(self, start: int, stop: int) -> CameraInputs:
        """Latent frames ``[start, stop)``; requires ``0 <= start < stop <= T`` (no silent clipping)."""
        t = self.num_frames
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, stop))
        if not ok or not (0 <= start < stop <= t):
            raise ValueError(f"slice_frames(start={start!r}, stop={stop!r}) needs ints with 0 <= start < stop <= {t}")
        geometry = None if self.geometry is None else self.geometry[:, :, start:stop]
        return CameraInputs(self.conditions[:, start:stop], self.plucker[:, :, start:stop], geometry)

    @classmethod
    def cat(cls, items: Sequence[CameraInputs], dim: str = "frames") -> CameraInputs:
        """Concatenate along latent frames (``dim="frames"``) or batch (``dim="batch"``)."""
        items = list(items)
        if not items or not all(isinstance(x, CameraInputs) for x in items):
            raise ValueError("items must be a non-empty sequence of CameraInputs")
        if dim not in ("frames", "batch"):
            raise ValueError(f"dim must be 'frames' or 'batch', got {dim!r}")
        first = items[0]
        for i, x in enumerate(items[1:], start=1):
            if x.temporal_stride != first.temporal_stride or x.latent_hw != first.latent_hw:
                raise ValueError(
                    f"items[{i}] has stride {x.temporal_stride} and latent_hw {x.latent_hw}; expected "
                    f"{first.temporal_stride} and {first.latent_hw} like items[0]"
                )
            if dim == "frames" and x.batch_size != first.batch_size:
                raise ValueError(f"items[{i}] has batch size {x.batch_size}; expected {first.batch_size}")
            if dim == "batch" and x.num_frames != first.num_frames:
                raise ValueError(f"items[{i}] has {x.num_frames} latent frames; expected {first.num_frames}")
        with_geometry = [x.geometry is not None for x in items]
        if any(with_geometry) and not all(with_geometry):
            raise ValueError("items must all carry geometry or all not (some have it)")
        c_dim, p_dim = (1, 2) if dim == "frames" else (0, 0)
        geometry = torch.cat([x.geometry for x in items], p_dim) if all(with_geometry) else None
        return cls(torch.cat([x.conditions for x in items], c_dim), torch.cat([x.plucker for x in items], p_dim),
                   geometry)


def _describe(x: Any) -> str:
    return f"shape {_shape_str(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _frame_indices(num_frames: int, stride: int, starts_at_first_frame: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditions frame per latent (T,), Plücker group frames per latent (T, stride)); short groups are
    padded by repeating the last frame."""
    t = num_latent_frames(num_frames, stride, starts_at_first_frame=starts_at_first_frame)
    lat = torch.arange(t)
    offs = torch.arange(stride)
    if starts_at_first_frame:
        cond = stride * lat
        start = (stride * lat - stride + 1).clamp_min(0)
    else:
        cond = stride * lat + stride - 1
        start = stride * lat
    group = (start[:, None] + offs[None, :]).clamp_max(num_frames - 1)  # repeat last available frame
    return cond, group


def prepare_camera(
    c2w_rel: ArrayLike,
    k4_latent: ArrayLike,
    latent_hw: tuple[int, int],
    temporal_stride: int,
    *,
    starts_at_first_frame: bool = True,
) -> CameraInputs:
    """Pack relative poses and latent intrinsics into SANA-WM's camera tensors.

    ``c2w_rel`` (B, F, 4, 4): OpenCV c2w poses already relative to the episode's first frame. ``k4_latent``
    (B, F, 4): ``[fx, fy, cx, cy]`` already at latent resolution ``latent_hw``.

    * ``starts_at_first_frame=True`` (F = 1 + k*s): T = k + 1; latent ``l`` takes conditions from frame
      ``s*l`` and the Plücker group of frames ``[max(0, s*l - s + 1), ... + s)``.
    * ``False`` (a continuation chunk, F = k*s): T = k; latent ``j`` takes conditions from local frame
      ``s*j + s - 1`` and the group ``[s*j, s*j + s)``.

    Packing a whole clip equals ``CameraInputs.cat`` of its first chunk (True) and its continuation (False).
    """
    p = validate_c2w(c2w_rel, "c2w_rel")
    if p.ndim != 4:
        raise ValueError(f"c2w_rel must have shape (B, F, 4, 4), got {_shape_str(p.shape)}")
    k = _as_float(k4_latent, "k4_latent")
    if k.ndim != 3 or k.shape[-1] != 4:
        raise ValueError(f"k4_latent must have shape (B, F, 4) [fx, fy, cx, cy], got {_shape_str(k.shape)}")
    if k.shape[:2] != p.shape[:2]:
        raise ValueError(
            f"k4_latent shape {_shape_str(k.shape)} does not match c2w_rel {_shape_str(p.shape)}; expected "
            f"{_shape_str((*p.shape[:2], 4))}"
        )
    k = validate_intrinsics(k, "k4_latent").to(device=p.device, dtype=p.dtype)
    h, w = _check_hw(latent_hw, "latent_hw")
    s = _check_pos_int(temporal_stride, "temporal_stride")
    b, f = p.shape[:2]
    cond_idx, group_idx = _frame_indices(f, s, starts_at_first_frame)
    cond_idx, group_idx = cond_idx.to(p.device), group_idx.to(p.device)
    t = cond_idx.shape[0]
    conditions = torch.cat([p[:, cond_idx].reshape(b, t, 16), k[:, cond_idx]], dim=-1)
    rays = plucker_rays(p, k, h, w)  # (B, F, 6, h, w)
    grouped = rays[:, group_idx.reshape(-1)].reshape(b, t, s, 6, h, w)
    plucker = grouped.permute(0, 2, 3, 1, 4, 5).reshape(b, s * 6, t, h, w)
    return CameraInputs(conditions=conditions, plucker=plucker)


def camera_inputs_from_world(
    c2w_world: ArrayLike,
    k4_pixels: ArrayLike,
    image_hw: tuple[int, int],
    latent_hw: tuple[int, int],
    temporal_stride: int,
    reference_c2w: ArrayLike | None = None,
    starts_at_first_frame: bool = True,
) -> CameraInputs:
    """World poses + pixel intrinsics -> :class:`CameraInputs`.

    ``c2w_world`` (B, F, 4, 4). ``k4_pixels`` at ``image_hw``: (B, F, 4), (B, 4) (shared over frames) or (4,)
    (shared by all); (…, 3, 3) matrices in the same layouts are accepted. Poses are made relative to
    ``reference_c2w`` ((B, 4, 4) or (4, 4); default: each clip's first frame), intrinsics are rescaled to
    ``latent_hw`` with :func:`scale_intrinsics`, then :func:`prepare_camera` packs them. A continuation chunk
    (``starts_at_first_frame=False``) must pass the episode's first pose as ``reference_c2w``.
    """
    p = validate_c2w(c2w_world, "c2w_world")
    if p.ndim != 4:
        raise ValueError(f"c2w_world must have shape (B, F, 4, 4), got {_shape_str(p.shape)}")
    b, f = p.shape[:2]
    k = validate_intrinsics(k4_pixels, "k4_pixels").to(device=p.device, dtype=p.dtype)
    if k.shape == (4,):
        k = k.expand(b, f, 4)
    elif k.shape == (b, 4):
        k = k[:, None, :].expand(b, f, 4)
    elif k.shape != (b, f, 4):
        raise ValueError(
            f"k4_pixels must have shape (4,), ({b}, 4) or ({b}, {f}, 4) (or the (3, 3) matrix forms) "
            f"to match c2w_world {_shape_str(p.shape)}, got {_shape_str(k.shape)}"
        )
    image_hw = _check_hw(image_hw, "image_hw")
    latent_hw = _check_hw(latent_hw, "latent_hw")
    if reference_c2w is None:
        if not starts_at_first_frame:
            raise ValueError(
                "reference_c2w is required when starts_at_first_frame=False: pass the episode's first c2w "
                "as a (B, 4, 4) or (4, 4) pose so the chunk's poses are relative to it"
            )
        rel = relative_to_first(p)
    else:
        ref = validate_c2w(reference_c2w, "reference_c2w")
        if ref.shape != (4, 4) and ref.shape != (b, 4, 4):
            raise ValueError(f"reference_c2w must have shape (4, 4) or ({b}, 4, 4), got {_shape_str(ref.shape)}")
        rel = relative_to(p, ref.to(device=p.device, dtype=p.dtype))
    k_lat = scale_intrinsics(k, image_hw, latent_hw)
    return prepare_camera(rel, k_lat, latent_hw, temporal_stride, starts_at_first_frame=starts_at_first_frame)
