"""A 3D cache of coloured world points: what the world model has seen, rendered into any camera.

Why: a video model that must follow a metric camera learns far more easily when it is shown where the content it
has already seen lands in the new view. :class:`PointCache` keeps that content as world-frame points built from
RGB-D frames and renders it into any batch of cameras with a z-buffered forward splat, giving colour, depth and
a validity mask per pixel (GEN3C-style geometry conditioning; also the zero-learning ``warp`` baseline).

Conventions (as :mod:`world_model.camera`): poses are OpenCV camera-to-world ``(B, 4, 4)`` matrices (+x right,
+y down, +z forward), metres; intrinsics are ``[fx, fy, cx, cy]`` in pixels with integer pixel centres (pixel
``(u, v)`` looks along ``((u - cx) / fx, (v - cy) / fy, 1)``); depth is the distance along the optical axis
(``z``) in metres, and **depth 0 means no surface (sky)**. Such pixels become points at infinity (unit
directions): a translation does not move them, a rotation moves them by its homography.

Design:

- **Immutable and forkable.** Every method returns a new cache and leaves its inputs alone, so a generator
  state holding a cache can be kept, forked (``imagine()``) and batched (:meth:`select`, :meth:`cat`) freely.
- **Newest view wins, bounded memory.** A new frame supersedes the cached points it shows again or sees past
  (each old point projected to its nearest pixel: in front of or within ``replace_tolerance`` of the new depth,
  or under new sky); points it cannot see (behind its surfaces, off-screen) stay. So revisiting a place does
  not grow the cache, and the cache follows the newest content (generated frames correct older ones). Beyond
  ``capacity`` points per batch element the oldest are dropped.
- **Untrustworthy depth filtered.** Pixels on depth edges are not added (:func:`depth_edges`): by default
  ("isolated") depth that agrees with no neighbour (speckle, lone flying pixels); with ``edge_filter="ramps"``
  also the blend pixels along edges of blurred depth (estimated or generated). Both sides of a clean edge,
  planes at grazing angles and sky stay.
- **Footprint-aware splat.** A point remembers half the size of the pixel it came from; rendered at depth
  ``z`` it covers the pixel centres within ``rho = f * radius / z`` pixels of its projection (at least the
  nearest one, at most ``max_splat`` pixels away), so moving closer does not crack surfaces open.
- **Deterministic z-buffer.** Per pixel the nearest depth wins (points within ``depth_tolerance`` of it form
  the front surface); among those, the point projecting closest to the pixel centre, then the newest. Only
  ``scatter_reduce`` and sorting: pure PyTorch on CPU and CUDA, same results on every run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .camera import se3_inverse, validate_c2w, validate_intrinsics

__all__ = ["EDGE_FILTERS", "CacheRender", "PointCache", "depth_edges", "fill_holes"]

_SKY_KEY = 3.0e38  # z-buffer key of points at infinity: every finite point is nearer


class CacheRender(NamedTuple):
    """What a cache shows a batch of cameras: ``rgb (..., C, H, W)`` (zeros in holes), ``depth (..., H, W)``
    metres (0 in holes and on sky), ``mask (..., H, W)`` True where a cached point landed (sky included) and
    ``sky (..., H, W)`` True where that point is at infinity."""

    rgb: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor
    sky: torch.Tensor

    def coverage(self) -> torch.Tensor:
        """Fraction of pixels the cache covers, per view: ``(...)``."""
        return self.mask.flatten(-2).float().mean(-1)


@dataclass(frozen=True)
class PointCache:
    """World points with colour, per batch element (see the module docstring).

    Storage is flat: point ``i`` belongs to batch element ``batch[i]``; points are kept sorted by
    ``(batch, stamp)``, so index order is insertion order within each element.

    Attributes:
        xyzw: ``(N, 4)`` world homogeneous coordinates: ``w = 1`` for surfaces, ``w = 0`` (unit direction) for
            points at infinity.
        colors: ``(N, C)`` colour (any channels, e.g. RGB in [-1, 1]).
        radius: ``(N,)`` half the footprint of the pixel a point came from: ``z / f / 2`` metres for surfaces,
            ``cos^2(theta) / f / 2`` radians for directions (theta: the angle off the optical axis).
        batch: ``(N,)`` int64 batch element of each point.
        stamp: ``(N,)`` int64 insertion order (newer points have larger stamps).
        batch_size, channels: the batch size and colour channels.
        capacity: most points kept per batch element; ``None`` until the first frame sets it
            (``frames_capacity`` frames of that size).
        edge_threshold, edge_filter: the depth-edge test (:func:`depth_edges`) applied to added frames, unless
            :meth:`add` is given another ``edge_filter``.
        replace_tolerance: relative depth within which a new frame's surface re-observes a cached point.
        next_stamp: the stamp the next added frame gets.
    """

    xyzw: torch.Tensor
    colors: torch.Tensor
    radius: torch.Tensor
    batch: torch.Tensor
    stamp: torch.Tensor
    batch_size: int
    channels: int
    capacity: int | None = None
    frames_capacity: int = 16
    edge_threshold: float = 0.1
    edge_filter: str = "isolated"
    replace_tolerance: float = 0.05
    next_stamp: int = 0

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def empty(
        cls,
        batch_size: int,
        channels: int = 3,
        *,
        capacity: int | None = None,
        frames_capacity: int = 16,
        edge_threshold: float = 0.1,
        edge_filter: str = "isolated",
        replace_tolerance: float = 0.05,
        device: torch.device | str | None = None,
    ) -> PointCache:
        """A cache with no points (``capacity=None``: set by the first frame added)."""
        for name, value in (("batch_size", batch_size), ("channels", channels), ("frames_capacity", frames_capacity)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
            raise ValueError(f"capacity must be a positive int (points per batch element) or None, got {capacity!r}")
        if edge_filter not in EDGE_FILTERS:
            raise ValueError(f"edge_filter must be one of {EDGE_FILTERS}, got {edge_filter!r}")
        for name, value in (("edge_threshold", edge_threshold), ("replace_tolerance", replace_tolerance)):
            if isinstance(value, bool) or not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return cls(
            xyzw=torch.zeros(0, 4, device=dev), colors=torch.zeros(0, channels, device=dev),
            radius=torch.zeros(0, device=dev), batch=torch.zeros(0, dtype=torch.long, device=dev),
            stamp=torch.zeros(0, dtype=torch.long, device=dev), batch_size=batch_size, channels=channels,
            capacity=capacity, frames_capacity=frames_capacity, edge_threshold=float(edge_threshold),
            edge_filter=edge_filter, replace_tolerance=float(replace_tolerance),
        )

    @classmethod
    def from_frame(cls, rgb: torch.Tensor, depth: torch.Tensor, c2w, intrinsics, **kwargs) -> PointCache:
        """A cache holding one RGB-D frame per batch element (``kwargs`` as :meth:`empty`)."""
        rgb = _check_image(rgb, "rgb")
        return cls.empty(rgb.shape[0], rgb.shape[1], device=rgb.device, **kwargs).add(rgb, depth, c2w, intrinsics)

    # ------------------------------------------------------------------------------------------- queries
    @property
    def device(self) -> torch.device:
        return self.xyzw.device

    @property
    def num_points(self) -> int:
        return int(self.xyzw.shape[0])

    def counts(self) -> torch.Tensor:
        """Points per batch element: ``(B,)`` int64."""
        return torch.bincount(self.batch, minlength=self.batch_size)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.xyzw, self.colors, self.radius, self.batch, self.stamp))

    def first_frame(self) -> PointCache:
        """The points of the first frame added (stamp 0) that the cache still holds: its exact part when that frame
        came with measured depth, the rest being generated frames' points."""
        keep = self.stamp == 0
        return self._with(self.xyzw[keep], self.colors[keep], self.radius[keep], self.batch[keep], self.stamp[keep])

    # ------------------------------------------------------------------------------------------- batching
    def select(self, indices) -> PointCache:
        """The caches of batch elements ``indices`` (a sequence of ints, repeats allowed), in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() == 0:
            raise ValueError("indices must name at least one batch element")
        if int(idx.min()) < 0 or int(idx.max()) >= self.batch_size:
            raise ValueError(f"indices must be in [0, {self.batch_size}), got {idx.tolist()}")
        parts = [self._element(int(i), new_index=j) for j, i in enumerate(idx.tolist())]
        return self._with(*_cat_parts(parts, self), batch_size=len(parts))

    @classmethod
    def cat(cls, caches: list[PointCache]) -> PointCache:
        """One cache whose batch elements are those of ``caches`` in order (settings of the first)."""
        if not caches:
            raise ValueError("caches must hold at least one PointCache")
        first = caches[0]
        for i, c in enumerate(caches):
            if not isinstance(c, PointCache):
                raise ValueError(f"caches[{i}] must be a PointCache, got {type(c).__name__}")
            if c.channels != first.channels:
                raise ValueError(f"caches[{i}] has {c.channels} colour channels, caches[0] has {first.channels}")
        parts, offset = [], 0
        for c in caches:
            for b in range(c.batch_size):
                parts.append(c._element(b, new_index=offset + b))
            offset += c.batch_size
        return first._with(*_cat_parts(parts, first), batch_size=offset,
                           next_stamp=max(c.next_stamp for c in caches))

    def _element(self, b: int, new_index: int) -> tuple[torch.Tensor, ...]:
        keep = self.batch == b
        return (self.xyzw[keep], self.colors[keep], self.radius[keep],
                torch.full((int(keep.sum()),), new_index, dtype=torch.long, device=self.device), self.stamp[keep])

    def _with(self, xyzw, colors, radius, batch, stamp, **changes) -> PointCache:
        return dataclasses.replace(self, xyzw=xyzw, colors=colors, radius=radius, batch=batch, stamp=stamp, **changes)

    def to(self, device: torch.device | str) -> PointCache:
        return self._with(*(t.to(device) for t in (self.xyzw, self.colors, self.radius, self.batch, self.stamp)))

    # ------------------------------------------------------------------------------------------- adding frames
    def add(self, rgb: torch.Tensor, depth: torch.Tensor, c2w, intrinsics, *, valid: torch.Tensor | None = None,
            edge_filter: str | None = None, supersede: bool = True) -> PointCache:
        """This cache plus one RGB-D frame per batch element.

        Args:
            rgb: ``(B, C, H, W)`` colours.
            depth: ``(B, H, W)`` metres along the optical axis, ``0`` for no surface (sky); finite, ``>= 0``.
            c2w: ``(B, 4, 4)`` OpenCV camera-to-world poses.
            intrinsics: ``(B, 4)`` or ``(4,)`` ``[fx, fy, cx, cy]`` in pixels of this image.
            valid: optional ``(B, H, W)`` bool: pixels to add (e.g. only some batch elements).
            edge_filter: :func:`depth_edges` mode for this frame (default: the cache's): e.g. "ramps" for a
                generated frame in a cache started from exact depth.
            supersede: let this frame replace the cached points it shows again or sees past (the newest view
                wins); ``False`` only adds points, e.g. a generated frame filling the holes of a cache it should
                not overwrite (pass those holes as ``valid``).
        """
        rgb = _check_image(rgb, "rgb")
        b, c, h, w = rgb.shape
        if b != self.batch_size or c != self.channels:
            raise ValueError(f"rgb must have shape ({self.batch_size}, {self.channels}, H, W) for this cache, "
                             f"got {tuple(rgb.shape)}")
        depth = _check_depth(depth, (b, h, w), rgb.device)
        poses = _poses(c2w, (b,), rgb.device)
        k4 = _intrinsics(intrinsics, (b,), rgb.device)
        keep = ~depth_edges(depth, self.edge_threshold, self.edge_filter if edge_filter is None else edge_filter)
        if valid is not None:
            if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or tuple(valid.shape) != (b, h, w):
                got = f"{getattr(valid, 'dtype', type(valid).__name__)} {tuple(getattr(valid, 'shape', ()))}"
                raise ValueError(f"valid must be a bool tensor of shape ({b}, {h}, {w}), got {got}")
            keep = keep & valid.to(rgb.device)
        xyzw, radius = _unproject(depth, poses, k4)
        bi, vi, ui = torch.nonzero(keep, as_tuple=True)
        new = (xyzw[bi, vi, ui], rgb.permute(0, 2, 3, 1)[bi, vi, ui].to(self.colors.dtype), radius[bi, vi, ui], bi,
               torch.full_like(bi, self.next_stamp))
        if self.num_points and supersede:
            old = ~self._superseded(depth, keep, poses, k4)
        else:
            old = torch.ones_like(self.batch, dtype=torch.bool)
        columns = zip((self.xyzw, self.colors, self.radius, self.batch, self.stamp), new)
        # (batch, stamp) order: per element, the old points it keeps, then its new ones
        merged = [torch.cat([before[old], added]) for before, added in columns]
        order = torch.argsort(merged[3], stable=True)
        capacity = self.frames_capacity * h * w if self.capacity is None else self.capacity
        out = self._with(*(m[order] for m in merged), next_stamp=self.next_stamp + 1, capacity=capacity)
        return out._within_capacity()

    def _superseded(self, depth: torch.Tensor, observed: torch.Tensor, c2w: torch.Tensor, k4: torch.Tensor
                    ) -> torch.Tensor:
        """``(N,)`` bool: cached points that a new frame shows again or sees past.

        A point lands on the nearest pixel of its element's new camera; where that pixel is ``observed`` (added:
        not an edge, valid), a surface point in front of or within ``replace_tolerance`` of the new depth is
        superseded (re-observed, or free space now), as is any surface point on a new sky pixel; a point at
        infinity is superseded by new sky. Points behind the new surface, off-screen or behind the camera stay.
        """
        h, w = depth.shape[-2:]
        cam = torch.einsum("nij,nj->ni", se3_inverse(c2w)[self.batch, :3, :], self.xyzw)
        z = cam[:, 2]
        finite = self.xyzw[:, 3] > 0
        k = k4[self.batch]
        zs = z.clamp_min(1e-12)
        u = torch.round(k[:, 0] * cam[:, 0] / zs + k[:, 2])
        v = torch.round(k[:, 1] * cam[:, 1] / zs + k[:, 3])
        on = (z > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        flat = (self.batch * (h * w) + (v.clamp(0, h - 1) * w + u.clamp(0, w - 1)).long())
        new_depth = depth.reshape(-1)[flat]
        seen = on & observed.reshape(-1)[flat]
        new_sky = new_depth <= 0
        passes = torch.where(finite, new_sky | (z <= new_depth * (1 + self.replace_tolerance)), new_sky)
        return seen & passes

    def _within_capacity(self) -> PointCache:
        """At most ``capacity`` points per batch element: the newest."""
        counts = self.counts()
        if int(counts.max()) <= self.capacity:
            return self
        # points are stored in (batch, stamp) order: keep the last `capacity` of each element
        starts = torch.cumsum(counts, 0) - counts
        position = torch.arange(self.num_points, device=self.device) - starts[self.batch]
        keep = position >= (counts - self.capacity).clamp_min(0)[self.batch]
        return self._with(self.xyzw[keep], self.colors[keep], self.radius[keep], self.batch[keep], self.stamp[keep])

    # ------------------------------------------------------------------------------------------- rendering
    def render(self, c2w, intrinsics, image_hw: tuple[int, int], *, max_splat: int = 2,
               depth_tolerance: float = 0.01, near: float = 1e-3) -> CacheRender:
        """Splat the cache into cameras ``c2w`` ``(B, 4, 4)`` or ``(B, T, 4, 4)`` (T views per element) with
        ``intrinsics`` ``(4,)``, ``(B, 4)`` or ``(B, T, 4)``; returns :class:`CacheRender` with leading dims
        ``(B,)`` or ``(B, T)``."""
        h, w = _check_hw(image_hw)
        if isinstance(max_splat, bool) or not isinstance(max_splat, int) or max_splat < 0:
            raise ValueError(f"max_splat must be an int >= 0 (pixels), got {max_splat!r}")
        poses = torch.as_tensor(c2w, dtype=torch.float32, device=self.device) if not isinstance(c2w, torch.Tensor) \
            else c2w.to(self.device, torch.float32)
        if poses.ndim == 3:
            lead = (self.batch_size,)
        elif poses.ndim == 4:
            lead = (self.batch_size, poses.shape[1])
        else:
            raise ValueError(f"c2w must have shape ({self.batch_size}, 4, 4) or ({self.batch_size}, T, 4, 4), "
                             f"got {tuple(poses.shape)}")
        poses = _poses(poses, lead, self.device)
        k4 = _intrinsics(intrinsics, lead, self.device)
        views = poses.reshape(-1, 4, 4)
        k4 = k4.reshape(-1, 4)
        t = views.shape[0] // self.batch_size
        n_views = views.shape[0]
        rgb = torch.zeros(n_views, h * w, self.channels, device=self.device, dtype=self.colors.dtype)
        depth = torch.zeros(n_views, h * w, device=self.device)
        mask = torch.zeros(n_views, h * w, dtype=torch.bool, device=self.device)
        sky = torch.zeros(n_views, h * w, dtype=torch.bool, device=self.device)
        if self.num_points:
            self._splat(views, k4, t, h, w, max_splat, depth_tolerance, near, rgb, depth, mask, sky)
        rgb = rgb.reshape(*lead, h, w, self.channels).movedim(-1, -3)
        return CacheRender(rgb, depth.reshape(*lead, h, w), mask.reshape(*lead, h, w), sky.reshape(*lead, h, w))

    def _splat(self, views, k4, t, h, w, max_splat, depth_tolerance, near, rgb, depth, mask, sky) -> None:
        # every (view, point of the view's batch element) pair, in camera coordinates: points padded per element
        counts = self.counts()
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(self.num_points, device=self.device) - starts[self.batch]
        n_max = int(counts.max())
        pts = self.xyzw.new_zeros(self.batch_size, n_max, 4)
        pts[self.batch, slot] = self.xyzw
        present = torch.zeros(self.batch_size, n_max, dtype=torch.bool, device=self.device)
        present[self.batch, slot] = True
        w2c = se3_inverse(views)[:, :3, :].reshape(self.batch_size, t, 3, 4)
        cam = torch.matmul(pts[:, None], w2c.transpose(-1, -2))  # (B, T, N, 3); w = 0 rows: rotation only
        z = cam[..., 2]
        finite_bn = pts[..., 3] > 0
        kk = k4.reshape(self.batch_size, t, 1, 4)
        zs = z.clamp_min(1e-12)
        u = kk[..., 0] * cam[..., 0] / zs + kk[..., 2]
        v = kk[..., 1] * cam[..., 1] / zs + kk[..., 3]
        on = present[:, None] & torch.where(finite_bn[:, None], z > near, z > 1e-6)
        on &= (u > -max_splat - 1) & (u < w + max_splat) & (v > -max_splat - 1) & (v < h + max_splat)
        bi, ti, ni = torch.nonzero(on, as_tuple=True)
        view = bi * t + ti
        point = starts[bi] + ni
        z, u, v = z[on], u[on], v[on]
        finite = finite_bn[bi, ni]
        rho = kk[..., :2].mean(-1).reshape(-1)[view] * self.radius[point] / torch.where(finite, z, z * z)
        if u.numel() == 0:  # nothing cached is in front of these cameras
            return
        # candidate pixels: the nearest pixel centre of every pair, plus, for pairs whose footprint reaches
        # further (reach k = ceil(rho - 1/2) >= 1), the other centres of the (2k+1)^2 square inside it
        reach = torch.clamp(torch.ceil(rho - 0.5), 0, max_splat).long()
        pair_parts, pu_parts, pv_parts = [], [], []
        for k in range(max_splat + 1):
            sel = torch.arange(u.numel(), device=self.device) if k == 0 else torch.nonzero(reach == k)[:, 0]
            if sel.numel() == 0:
                continue
            r = torch.arange(-k, k + 1, device=self.device, dtype=u.dtype)
            du, dv = (g.reshape(-1) for g in torch.meshgrid(r, r, indexing="xy"))
            if k:
                du, dv = du[(du != 0) | (dv != 0)], dv[(du != 0) | (dv != 0)]
            us, vs = u[sel, None], v[sel, None]
            pu, pv = torch.round(us) + du[None], torch.round(vs) + dv[None]
            ok = (pu >= 0) & (pu < w) & (pv >= 0) & (pv < h)
            if k:
                ok &= ((pu - us).abs() <= rho[sel, None]) & ((pv - vs).abs() <= rho[sel, None])
            si, ki = torch.nonzero(ok, as_tuple=True)
            pair_parts.append(sel[si])
            pu_parts.append(pu[si, ki])
            pv_parts.append(pv[si, ki])
        pair, pu, pv = torch.cat(pair_parts), torch.cat(pu_parts), torch.cat(pv_parts)
        pixel = view[pair] * (h * w) + (pv * w + pu).long()
        key = torch.where(finite[pair], z[pair], torch.full_like(z[pair], _SKY_KEY))
        size = rgb.shape[0] * h * w
        zbuf = torch.full((size,), float("inf"), device=self.device).scatter_reduce(0, pixel, key, "amin")
        front_surface = key <= zbuf[pixel] * (1.0 + depth_tolerance)
        pixel, pair, pu, pv = pixel[front_surface], pair[front_surface], pu[front_surface], pv[front_surface]
        dist = (pu - u[pair]) ** 2 + (pv - v[pair]) ** 2
        dbuf = torch.full((size,), float("inf"), device=self.device).scatter_reduce(0, pixel, dist, "amin")
        nearest = dist <= dbuf[pixel]
        pixel, pair = pixel[nearest], pair[nearest]
        winner = torch.full((size,), -1, dtype=torch.long, device=self.device)
        winner = winner.scatter_reduce(0, pixel, point[pair], "amax")  # the newest point (index order = stamp order)
        chosen = point[pair] == winner[pixel]  # one candidate per pixel: a point reaches a pixel at most once
        pixel, pair = pixel[chosen], pair[chosen]
        won = point[pair]
        is_sky = ~finite[pair]
        rgb.view(size, -1)[pixel] = self.colors[won]
        depth.view(size)[pixel] = torch.where(is_sky, torch.zeros_like(z[pair]), z[pair])
        mask.view(size)[pixel] = True
        sky.view(size)[pixel] = is_sky


# ------------------------------------------------------------------------------------------------ helpers
EDGE_FILTERS = ("isolated", "ramps", "none")


def depth_edges(depth: torch.Tensor, threshold: float = 0.1, mode: str = "isolated") -> torch.Tensor:
    """``(B, H, W)`` bool: pixels whose depth is not to be trusted, by ``mode``:

    - ``"isolated"``: depth that agrees with none of the 4-neighbours' (relative inverse depth difference
      ``|id - id_n| > threshold * max(id, id_n)`` for each neighbour inside the image): speckle and lone flying
      pixels. Both sides of a clean edge, planes at grazing angles, strips one pixel thick and sky stay: the
      right filter for exact depth (the twin worlds').
    - ``"ramps"``: also pixels that, along a row or column, differ from both neighbours and are not on a line
      with them (``|id_l + id_r - 2 id| > threshold * max(id_l, id, id_r)``; planes have affine inverse depth):
      the blend pixels along an edge of blurred (estimated or generated) depth, at the cost of thin strips seen
      edge-on (1-pixel ridges near the horizon).
    - ``"none"``: nothing.
    """
    if mode not in EDGE_FILTERS:
        raise ValueError(f"mode must be one of {EDGE_FILTERS}, got {mode!r}")
    flagged = torch.zeros_like(depth, dtype=torch.bool)
    if mode == "none":
        return flagged
    inv = torch.where(depth > 0, 1.0 / depth.clamp_min(1e-12), torch.zeros_like(depth))
    agrees = torch.zeros_like(depth, dtype=torch.bool)
    for dim in (-1, -2):
        n = inv.shape[dim]
        if n < 2:
            continue
        a, b = inv.narrow(dim, 0, n - 1), inv.narrow(dim, 1, n - 1)
        same = (a - b).abs() <= threshold * torch.maximum(a, b)
        with_next, with_previous = ((0, 1), (1, 0)) if dim == -1 else ((0, 0, 0, 1), (0, 0, 1, 0))
        agrees |= F.pad(same, with_next, value=False) | F.pad(same, with_previous, value=False)
        if mode == "ramps" and n >= 3:
            left, mid, right = inv.narrow(dim, 0, n - 2), inv.narrow(dim, 1, n - 2), inv.narrow(dim, 2, n - 2)
            apart = ~same.narrow(dim, 0, n - 2) & ~same.narrow(dim, 1, n - 2)
            bent = (left + right - 2 * mid).abs() > threshold * torch.maximum(torch.maximum(left, right), mid)
            flagged |= F.pad(apart & bent, (1, 1) if dim == -1 else (0, 0, 1, 1), value=False)
    return flagged | ~agrees


def fill_holes(image: torch.Tensor, mask: torch.Tensor, iterations: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill pixels outside ``mask`` by repeated 3x3 dilation: each pass gives every empty pixel with filled
    neighbours their mean. ``image (..., C, H, W)``, ``mask (..., H, W)`` bool; returns ``(filled, filled_mask)``
    (pixels more than ``iterations`` away from any valid one stay empty)."""
    if image.shape[:-3] != mask.shape[:-2] or image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"image (..., C, H, W) and mask (..., H, W) must match, got {tuple(image.shape)} and "
                         f"{tuple(mask.shape)}")
    lead, (c, h, w) = image.shape[:-3], image.shape[-3:]
    x = image.reshape(-1, c, h, w) * mask.reshape(-1, 1, h, w)
    m = mask.reshape(-1, 1, h, w).to(image.dtype)
    kernel = torch.ones(1, 1, 3, 3, dtype=image.dtype, device=image.device)
    for _ in range(iterations):
        if bool(m.all()):
            break
        count = F.conv2d(m, kernel, padding=1)
        total = F.conv2d(x.reshape(-1, 1, h, w), kernel, padding=1).reshape(-1, c, h, w)
        grow = (m == 0) & (count > 0)
        x = torch.where(grow, total / count.clamp_min(1), x)
        m = torch.where(grow, torch.ones_like(m), m)
    return x.reshape(*lead, c, h, w), m.reshape(*lead, h, w) > 0


def _unproject(depth: torch.Tensor, c2w: torch.Tensor, k4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World ``xyzw (B, H, W, 4)`` of every pixel (``w = 0`` unit directions where depth is 0) and each pixel's
    half footprint ``(B, H, W)``."""
    b, h, w = depth.shape
    vs = torch.arange(h, device=depth.device, dtype=torch.float32)
    us = torch.arange(w, device=depth.device, dtype=torch.float32)
    fx, fy, cx, cy = (k4[:, i, None, None] for i in range(4))
    x = (us[None, None, :] - cx) / fx
    y = (vs[None, :, None] - cy) / fy
    x, y = torch.broadcast_tensors(x, y)
    ray = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (B, H, W, 3), z = 1
    rot, centre = c2w[:, None, None, :3, :3], c2w[:, None, None, :3, 3]
    surface = depth > 0
    world_dir = torch.einsum("bhwij,bhwj->bhwi", rot.expand(b, h, w, 3, 3), ray)
    point = centre + world_dir * depth[..., None]
    unit = world_dir / torch.linalg.vector_norm(world_dir, dim=-1, keepdim=True)
    xyz = torch.where(surface[..., None], point, unit)
    xyzw = torch.cat([xyz, surface[..., None].float()], dim=-1)
    f = k4[:, :2].mean(-1)[:, None, None]
    # a pixel spans z / f metres of a surface at depth z; in angle it spans cos^2(theta) / f radians at field angle
    # theta (cos(theta) = 1 / |ray| for a ray with z = 1): rendering divides by z, or by cos^2 of the new angle
    cos2 = 1.0 / (ray * ray).sum(-1)
    radius = torch.where(surface, 0.5 * depth / f, 0.5 * cos2 / f)
    return xyzw, radius


def _check_hw(image_hw) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_hw)
    except (TypeError, ValueError):
        raise ValueError(f"image_hw must be (height, width), got {image_hw!r}") from None
    if h < 1 or w < 1 or (h, w) != tuple(image_hw):
        raise ValueError(f"image_hw must be (height, width) of positive ints, got {image_hw!r}")
    return h, w


def _check_image(rgb, name: str) -> torch.Tensor:
    if not isinstance(rgb, torch.Tensor) or rgb.ndim != 4 or not rgb.is_floating_point():
        raise ValueError(f"{name} must be a float tensor (B, C, H, W), got "
                         f"{getattr(rgb, 'dtype', type(rgb).__name__)} {tuple(getattr(rgb, 'shape', ()))}")
    if not torch.isfinite(rgb).all():
        raise ValueError(f"{name} must be finite")
    return rgb


def _check_depth(depth, shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    if not isinstance(depth, torch.Tensor) or tuple(depth.shape) != shape or not depth.is_floating_point():
        raise ValueError(f"depth must be a float tensor of shape {shape} (metres along the optical axis, 0 = sky), "
                         f"got {getattr(depth, 'dtype', type(depth).__name__)} {tuple(getattr(depth, 'shape', ()))}")
    if not torch.isfinite(depth).all() or bool((depth < 0).any()):
        raise ValueError("depth must be finite and >= 0 (metres; 0 marks sky / no surface)")
    return depth.to(device, torch.float32)


def _poses(c2w, lead: tuple[int, ...], device: torch.device) -> torch.Tensor:
    poses = validate_c2w(c2w, "c2w")
    if tuple(poses.shape) != (*lead, 4, 4):
        raise ValueError(f"c2w must have shape {(*lead, 4, 4)}, got {tuple(poses.shape)}")
    return poses.to(device, torch.float32)


def _intrinsics(intrinsics, lead: tuple[int, ...], device: torch.device) -> torch.Tensor:
    k4 = validate_intrinsics(intrinsics, "intrinsics").to(device, torch.float32)
    if k4.ndim == 1:
        return k4.expand(*lead, 4)
    if tuple(k4.shape[:-1]) == lead:
        return k4
    if len(lead) == 2 and tuple(k4.shape[:-1]) == lead[:1]:
        return k4[:, None].expand(*lead, 4)
    raise ValueError(f"intrinsics must have shape (4,), {(*lead[:1], 4)} or {(*lead, 4)}, got {tuple(k4.shape)}")


def _cat_parts(parts: list[tuple[torch.Tensor, ...]], like: PointCache) -> tuple[torch.Tensor, ...]:
    if not parts:
        return (like.xyzw[:0], like.colors[:0], like.radius[:0], like.batch[:0], like.stamp[:0])
    return tuple(torch.cat(column) for column in zip(*parts))
