"""TF trees without tf2: frame chains, static and dynamic edges, lookups (bag reader and the live ROS node).

``TFBuffer`` keeps the edges seen on ``/tf`` (dynamic, timestamped samples) and ``/tf_static`` (one pose each).
``find_chain`` walks ``parent -> child`` through the common ancestor; ``TFChain.compose`` multiplies the edges
along it. Dynamic edges are interpolated at a query time (linear translation, slerp rotation). The output
stamps of a chain are those of its *driving* edge, the dynamic edge with the most samples.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Edge = tuple[str, str]  # (parent frame, child frame)


def _frame(name: str) -> str:
    return name.lstrip("/")


# Pose maths on the message path runs in NumPy rather than through world_model.camera's torch functions (the
# reference they are tested against): ROS callbacks run beside the generating worker thread, every torch op
# releases the GIL, and taking it back behind a busy worker waits up to the interpreter's switch interval (5 ms).
# Through torch, a 1 kHz pose burst reached the live camera at about 70 poses/s.


def _quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """xyzw quaternions (..., 4), normalised here -> rotation matrices (..., 3, 3)."""
    x, y, z, w = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return np.stack(rows, axis=-1).reshape(*q.shape[:-1], 3, 3)


def _rotmat_to_quat(r: np.ndarray) -> np.ndarray:
    """Rotation matrices (N, 3, 3) -> unit xyzw quaternions (N, 4) (Shepperd: divide by the largest component)."""
    m = r.reshape(-1, 9)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.T
    sq = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=-1)
    s = 2 * np.sqrt(np.maximum(sq, 1e-12))  # 4 * |component|
    sw, sx, sy, sz = s.T
    cand = np.stack([
        np.stack([(m21 - m12) / sw, (m02 - m20) / sw, (m10 - m01) / sw, sw / 4], axis=-1),
        np.stack([sx / 4, (m01 + m10) / sx, (m02 + m20) / sx, (m21 - m12) / sx], axis=-1),
        np.stack([(m01 + m10) / sy, sy / 4, (m12 + m21) / sy, (m02 - m20) / sy], axis=-1),
        np.stack([(m02 + m20) / sz, (m12 + m21) / sz, sz / 4, (m10 - m01) / sz], axis=-1),
    ], axis=1)  # (N, 4 cases, 4 xyzw)
    q = cand[np.arange(len(m)), sq.argmax(axis=-1)]
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _slerp(times: np.ndarray, rots: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Rotations (N, 3, 3) keyed at increasing ``times`` -> (M, 3, 3) at ``at``: constant rate, shortest way."""
    q = _rotmat_to_quat(rots)
    seg = np.clip(np.searchsorted(times, at, side="right") - 1, 0, len(times) - 2)
    alpha = ((at - times[seg]) / (times[seg + 1] - times[seg]))[:, None]
    q0, q1 = q[seg], q[seg + 1]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1, dot = np.where(dot < 0, -q1, q1), np.abs(dot)
    theta = np.arccos(np.minimum(dot, 1.0))
    small = theta < 1e-6  # nearly equal keys: linear blend (normalised below) is exact to rounding
    sin = np.where(small, 1.0, np.sin(theta))
    w0 = np.where(small, 1 - alpha, np.sin((1 - alpha) * theta) / sin)
    w1 = np.where(small, alpha, np.sin(alpha * theta) / sin)
    return _quat_to_rotmat(w0 * q0 + w1 * q1)


def pose_matrix(pos, quat_xyzw) -> np.ndarray:
    """(4, 4) from a position and an xyzw quaternion (near-unit quaternions are normalised)."""
    t = np.eye(4)
    t[:3, :3] = _quat_to_rotmat(np.asarray(quat_xyzw, dtype=np.float64))
    t[:3, 3] = pos
    return t


def interpolate_edge(times: np.ndarray, mats: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Poses (M, 4, 4) of a sampled edge at times ``at`` (M,) inside [times[0], times[-1]]."""
    if len(times) == 1:
        return np.repeat(mats[:1], len(at), axis=0)
    times, at = np.asarray(times, dtype=np.float64), np.asarray(at, dtype=np.float64)
    out = np.tile(np.eye(4), (len(at), 1, 1))
    out[:, :3, :3] = _slerp(times, np.asarray(mats, dtype=np.float64)[:, :3, :3], at)
    for i in range(3):
        out[:, i, 3] = np.interp(at, times, mats[:, i, 3])
    return out


@dataclass(frozen=True)
class TFChain:
    """The edges from ``parent`` to ``child``: up from ``child`` and up from ``parent`` to their common ancestor."""

    parent: str
    child: str
    up_child: tuple[Edge, ...]  # edges on the child's side, child first
    up_parent: tuple[Edge, ...]  # edges on the parent's side, parent first

    @property
    def edges(self) -> tuple[Edge, ...]:
        return self.up_child + self.up_parent

    def compose(self, edge_at: Callable[[Edge], np.ndarray], n: int) -> np.ndarray:
        """``T_parent_child`` (n, 4, 4) given ``edge_at(edge) -> (n, 4, 4)`` poses of each edge."""

        def root_to(up: tuple[Edge, ...]) -> np.ndarray:
            acc = np.tile(np.eye(4), (n, 1, 1))
            for e in reversed(up):  # from the common ancestor down to the frame
                acc = acc @ edge_at(e)
            return acc

        up = root_to(self.up_parent)
        inv = np.tile(np.eye(4), (n, 1, 1))  # rigid inverse [R^T, -R^T t]
        inv[:, :3, :3] = np.swapaxes(up[:, :3, :3], -1, -2)
        inv[:, :3, 3] = -np.einsum("nij,nj->ni", inv[:, :3, :3], up[:, :3, 3])
        return inv @ root_to(self.up_child)


def find_chain(parent_of: dict[str, str], parent: str, child: str, source: str = "TF") -> TFChain:
    """The chain ``parent -> child`` in a tree given by ``parent_of[frame]``; ValueError names what is missing."""
    if parent == child:
        raise ValueError(f"parent_frame and child_frame are both {parent!r}")
    frames = sorted(set(parent_of) | set(parent_of.values()))
    for f, name in ((parent, "parent_frame"), (child, "child_frame")):
        if f not in frames:
            raise ValueError(f"{name} {f!r} is not in the TF tree of {source}; frames: {', '.join(frames) or '(none)'}")

    def to_root(f: str) -> list[str]:
        out = [f]
        while out[-1] in parent_of:
            out.append(parent_of[out[-1]])
            if len(out) > len(frames) + 1:
                raise ValueError(f"{source}: the TF tree has a cycle through {f!r}")
        return out

    up_c, up_p = to_root(child), to_root(parent)
    common = next((f for f in up_c if f in up_p), None)
    if common is None:
        raise ValueError(f"{parent!r} and {child!r} are in different TF trees of {source} (no common ancestor)")
    edges_c = tuple((parent_of[f], f) for f in up_c[: up_c.index(common)])
    edges_p = tuple((parent_of[f], f) for f in up_p[: up_p.index(common)])
    return TFChain(parent=parent, child=child, up_child=edges_c, up_parent=edges_p)


class TFBuffer:
    """Edges of a TF tree: static poses and, per dynamic edge, the last ``max_samples`` timestamped poses.

    ``max_samples=None`` keeps everything (bag reading); the live node bounds it so a long run or a burst cannot
    grow memory. Out-of-order samples of an edge are dropped (and counted in ``dropped``). An edge that would break
    the tree (a self-loop, or one that closes a cycle, such as a reversed copy of an edge) is dropped and counted
    in ``rejected_edges`` (``last_rejected`` says which and why): the tree it arrives in keeps working.
    ``jump_back`` (seconds, None: off): a dynamic sample more than that older than its edge's newest means the
    clock jumped back (a looping bag, a simulator restart): every dynamic edge is cleared, the sample is kept and
    ``clock_jumps`` counts it, so the tree follows the new clock instead of dropping it all as out of order.
    """

    def __init__(self, max_samples: int | None = 1000, jump_back: float | None = None) -> None:
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 2):
            raise ValueError(f"max_samples must be None or an int >= 2, got {max_samples!r}")
        if jump_back is not None and not (isinstance(jump_back, int | float) and jump_back > 0):
            raise ValueError(f"jump_back must be None or a positive number of seconds, got {jump_back!r}")
        self.max_samples = max_samples
        self.jump_back = jump_back
        self.parent_of: dict[str, str] = {}
        self.static: dict[Edge, np.ndarray] = {}
        self.dynamic: dict[Edge, deque] = defaultdict(lambda: deque(maxlen=self.max_samples))
        self.counts: dict[Edge, int] = defaultdict(int)  # samples ever received per dynamic edge
        self.dropped = 0
        self.rejected_edges = 0
        self.last_rejected: str | None = None
        self.clock_jumps = 0
        self._emitted: dict[Edge, float] = {}

    def add(self, parent: str, child: str, stamp: float, pos, quat_xyzw, static: bool = False) -> bool:
        """Record one transform (``pos`` (3,), ``quat_xyzw`` (4,)); returns False if it was dropped."""
        key = (_frame(parent), _frame(child))
        pos = np.asarray(pos, dtype=np.float64)
        q = np.asarray(quat_xyzw, dtype=np.float64)
        if not (np.isfinite(pos).all() and np.isfinite(q).all() and np.isfinite(stamp)) \
                or abs(np.linalg.norm(q) - 1.0) > 1e-2:
            self.dropped += 1
            return False
        why = self._breaks_tree(*key)
        if why is not None:
            self.rejected_edges += 1
            self.last_rejected = f"{key[0]} -> {key[1]} ({why})"
            return False
        self.parent_of[key[1]] = key[0]
        if static:
            self.static[key] = pose_matrix(pos, q)
            return True
        samples = self.dynamic[key]
        if samples and self.jump_back is not None and stamp < samples[-1][0] - self.jump_back:
            self.clear_dynamic()
            self.clock_jumps += 1
            samples = self.dynamic[key]
        if samples and stamp <= samples[-1][0]:
            self.dropped += 1
            return False
        samples.append((float(stamp), pose_matrix(pos, q)))
        self.counts[key] += 1
        return True

    def _breaks_tree(self, parent: str, child: str) -> str | None:
        """Why the edge ``parent -> child`` cannot join the tree (None: it can): TF is a tree, and one bad edge
        kept would make every chain through its frames unresolvable."""
        if parent == child:
            return "a self-loop"
        f, seen = parent, 0
        while f in self.parent_of and seen <= len(self.parent_of):
            f, seen = self.parent_of[f], seen + 1
            if f == child:
                return f"{child} is already an ancestor of {parent}: it would close a cycle"
        return None

    def clear_dynamic(self) -> None:
        """Forget every dynamic sample and what ``poll`` emitted (the tree and its static edges stay): the clock
        restarts, e.g. after it jumped back."""
        self.dynamic.clear()
        self._emitted.clear()

    def chain(self, parent: str, child: str, source: str = "TF") -> TFChain:
        return find_chain(self.parent_of, _frame(parent), _frame(child), source)

    def series(self, edge: Edge) -> tuple[np.ndarray, np.ndarray]:
        """(times (N,), poses (N, 4, 4)) of a dynamic edge."""
        s = self.dynamic.get(edge) or ()
        return np.array([x[0] for x in s]), np.array([x[1] for x in s]).reshape(-1, 4, 4)

    def driving_edge(self, chain: TFChain) -> Edge | None:
        """The dynamic edge of ``chain`` with the most samples (its stamps become the chain's), or None if static."""
        dyn = [e for e in chain.edges if e not in self.static]
        return max(dyn, key=lambda e: self.counts.get(e, 0)) if dyn else None

    def lookup(self, chain: TFChain, times: np.ndarray, hold: float = 0.0) -> np.ndarray:
        """``T_parent_child`` (M, 4, 4) at ``times``; each dynamic edge must cover them (``hold`` s past its
        last sample keeps that sample). ValueError if an edge is missing or does not cover a time."""
        times = np.asarray(times, dtype=np.float64)

        def edge_at(e: Edge) -> np.ndarray:
            if e in self.static:
                return np.repeat(self.static[e][None], len(times), axis=0)
            t, m = self.series(e)
            if len(t) == 0:
                raise ValueError(f"TF edge {e[0]} -> {e[1]} has no samples yet")
            if times.min() < t[0] or times.max() > t[-1] + hold:
                raise ValueError(f"TF edge {e[0]} -> {e[1]} covers [{t[0]!r}, {t[-1]!r}] s, not {times.tolist()}")
            return interpolate_edge(t, m, np.minimum(times, t[-1]))

        return chain.compose(edge_at, len(times))

    def covered_span(self, chain: TFChain) -> tuple[float, float] | None:
        """The time span every dynamic edge of ``chain`` covers (None if an edge has no samples)."""
        spans = []
        for e in chain.edges:
            if e in self.static:
                continue
            t, _ = self.series(e)
            if len(t) == 0:
                return None
            spans.append((t[0], t[-1]))
        if not spans:
            return None
        return max(s[0] for s in spans), min(s[1] for s in spans)

    def poll(self, parent: str, child: str, hold: float = 0.0) -> list[tuple[float, np.ndarray]]:
        """New ``(stamp, T_parent_child)`` since the last poll of this pair, at the driving edge's stamps that
        every other dynamic edge covers (``hold`` s past an edge's last sample keeps that sample). Empty while
        the tree does not connect the two frames yet."""
        try:
            chain = self.chain(parent, child)
        except ValueError:
            return []
        drive = self.driving_edge(chain)
        span = self.covered_span(chain)
        if drive is None or span is None:
            return []
        t, _ = self.series(drive)
        last = self._emitted.get((parent, child), -np.inf)
        sel = t[(t > last) & (t >= span[0]) & (t <= span[1] + hold)]
        if len(sel) == 0:
            return []
        poses = self.lookup(chain, sel, hold)
        self._emitted[(parent, child)] = float(sel[-1])
        return list(zip(sel.tolist(), poses))
