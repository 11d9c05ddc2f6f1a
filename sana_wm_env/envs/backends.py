"""Frame sources of the envs: the world model (batched generator calls) or the MuJoCo twin (ground truth).

Both take the camera-to-world poses of a step's frames for a subset of the batch and return uint8 frames;
the env logic (actions, tasks, rewards) is shared and never knows which one runs.

The world-model backend keeps the batch as *groups* of elements that share a chunk phase: the model's
positions and noise streams are per chunk, so elements at the same chunk index run in one generator call.
Sub-envs reset together (and every sub-env after ``reset()``) share one group; a sub-env reset alone starts a
group of its own until the phases meet again (they never merge: positions differ), and a group of which only
some members step splits in two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from world_model.bundles import WorldModel
from world_model.generators import GeneratorState
from world_model.video import from_uint8, to_uint8

GENERATORS: tuple[str, ...] = ("streaming", "chunk_causal")


class WorldModelBackend:
    """Frames from a world-model generator, one call per chunk phase group."""

    def __init__(self, model: WorldModel, generator: str = "streaming", **generator_kwargs) -> None:
        if generator == "streaming":
            self.generator = model.streaming_generator(**generator_kwargs)
        elif generator == "chunk_causal":
            self.generator = model.teacher_generator(**generator_kwargs)
        else:
            raise ValueError(f"generator must be one of {', '.join(GENERATORS)}; got {generator!r}")
        cfg, s = self.generator.config, self.generator.codec.temporal_stride
        first, later = (cfg.first_chunk_size - 1) * s, cfg.chunk_size * s
        if first != later:
            raise ValueError(
                f"this env needs equal-length chunks; the model's first chunk gives {first} frames and later chunks "
                f"{later} (first_chunk_size must be chunk_size + 1)"
            )
        self.frames_per_step = later
        self.groups: list[tuple[list[int], GeneratorState]] = []

    def _remove(self, idx: Sequence[int]) -> None:
        drop, kept = set(idx), []
        for members, state in self.groups:
            keep = [p for p, m in enumerate(members) if m not in drop]
            if len(keep) == len(members):
                kept.append((members, state))
            elif keep:
                kept.append(([members[p] for p in keep], state.select(keep)))
        self.groups = kept

    @property
    def takes_depth(self) -> bool:
        """Whether the model keeps a geometry cache (it uses frame 0's depth and generates depth)."""
        return bool(self.generator.takes_depth)

    def start(self, idx: Sequence[int], images: np.ndarray, intrinsics: np.ndarray, c2w: np.ndarray,
              seeds: Sequence[int], text: torch.Tensor | None = None, depth: np.ndarray | None = None) -> None:
        """(Re)start elements ``idx`` from uint8 images (b, H, W, 3), intrinsics (b, 4), poses (b, 4, 4) and, for
        geometry-guided models, frame 0's depth (b, H, W) metres (None: the model generates it)."""
        self._remove(idx)
        kwargs = {} if depth is None else {"depth": torch.as_tensor(depth, dtype=torch.float32)}
        state = self.generator.start(
            from_uint8(images), torch.as_tensor(intrinsics, dtype=torch.float32),
            c2w=torch.as_tensor(c2w, dtype=torch.float32), seed=[int(s) for s in seeds], text=text, **kwargs,
        )
        self.groups.append((list(idx), state))

    def geometry(self, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(depth (b, n, H, W) float32 metres, coverage (b, n) float32 or None)`` of elements ``idx``'s last
        frames (after ``start``: frame 0's depth, no coverage). Geometry-guided models only."""
        if not self.takes_depth:
            raise ValueError("this world model generates no depth (it has no geometry cache)")
        depth, coverage = [], []
        for e in idx:
            state, row = self._state_of(e)
            depth.append(state.last_depth[row].detach().cpu().float().numpy())
            coverage.append(None if state.last_coverage is None else state.last_coverage[row].cpu().float().numpy())
        cover = None if any(c is None for c in coverage) else np.stack(coverage)
        return np.stack(depth), cover

    def _state_of(self, element: int):
        """``(generator state, row)`` of a started element."""
        for members, state in self.groups:
            if element in members:
                return state, members.index(element)
        raise ValueError(f"element {element} has not been started")

    def element_latents(self, element: int) -> tuple[torch.Tensor | None, int]:
        """(last step's latents ``(1, C, t, h, w)`` or None before the first step, generation seed) of an element."""
        state, row = self._state_of(element)
        z = None if state.latents is None else state.latents[row : row + 1].detach().cpu()
        return z, int(state.seeds[row])

    def element_shown_first(self, element: int) -> np.ndarray | None:
        """Bool ``(n, H, W)``: where the element's last frames show frame 0's own points (models that show their 3D
        cache; ``None`` otherwise or before the first step)."""
        state, row = self._state_of(element)
        return None if state.last_shown_first is None else state.last_shown_first[row].detach().cpu().numpy()

    def step(self, idx: Sequence[int], c2w: np.ndarray) -> np.ndarray:
        """uint8 frames (b, n, H, W, 3) of elements ``idx`` for their next ``n`` poses ``c2w`` (b, n, 4, 4)."""
        pos = {m: p for p, m in enumerate(idx)}
        out: np.ndarray | None = None
        new_groups = []
        for members, state in self.groups:
            inside = [m in pos for m in members]
            if not any(inside):
                new_groups.append((members, state))
                continue
            if not all(inside):  # part of a group steps: it splits, the others keep their state and phase
                rest = [p for p, m in enumerate(members) if m not in pos]
                new_groups.append(([members[p] for p in rest], state.select(rest)))
                moving = [p for p, m in enumerate(members) if m in pos]
                members, state = [members[p] for p in moving], state.select(moving)
            rows = [pos[m] for m in members]
            frames, state = self.generator.step(state, torch.as_tensor(c2w[rows], dtype=torch.float32))
            frames = to_uint8(frames)
            if out is None:
                out = np.empty((len(idx), *frames.shape[1:]), dtype=np.uint8)
            out[rows] = frames
            new_groups.append((members, state))
        if out is None or len({m for g, _ in self.groups for m in g if m in pos}) != len(idx):
            raise RuntimeError(f"elements {list(idx)} were not all started (internal error)")
        self.groups = new_groups
        return out

    def imagine(self, element: int, c2w: np.ndarray) -> np.ndarray:
        """uint8 frames (K, H * n, h, w, 3) of K futures (poses (K, H, n, 4, 4)) from element's current state.

        Runs on a forked, K-times repeated state: the element's own state is untouched.
        """
        for members, state in self.groups:
            if element in members:
                k, horizon = c2w.shape[:2]
                fork = state.select([members.index(element)] * k)
                chunks = []
                for h in range(horizon):
                    frames, fork = self.generator.step(fork, torch.as_tensor(c2w[:, h], dtype=torch.float32))
                    chunks.append(to_uint8(frames))
                return np.concatenate(chunks, axis=1)
        raise RuntimeError(f"element {element} was never started; call reset() first")

    def num_calls(self, idx: Sequence[int]) -> int:
        """Generator calls a step of ``idx`` takes (the number of chunk-phase groups among them)."""
        s = set(idx)
        return sum(1 for members, _ in self.groups if s.intersection(members))


class TwinBackend:
    """Ground-truth frames rendered by MuJoCo at the same poses (``render_fn(element, c2w) -> uint8 (H, W, 3)``)."""

    def __init__(self, render_fn: Callable[[int, np.ndarray], np.ndarray], frames_per_step: int) -> None:
        if not isinstance(frames_per_step, int) or frames_per_step < 1:
            raise ValueError(f"frames_per_step must be an int >= 1, got {frames_per_step!r}")
        self.render_fn = render_fn
        self.frames_per_step = frames_per_step

    takes_depth = False

    def start(self, idx, images, intrinsics, c2w, seeds, text=None, depth=None) -> None:
        """Nothing to carry: the scene is the state."""

    def step(self, idx: Sequence[int], c2w: np.ndarray) -> np.ndarray:
        return np.stack([np.stack([self.render_fn(i, t) for t in poses]) for i, poses in zip(idx, c2w)])

    def imagine(self, element: int, c2w: np.ndarray) -> np.ndarray:
        k, horizon, n = c2w.shape[:3]
        flat = c2w.reshape(k, horizon * n, 4, 4)
        return np.stack([np.stack([self.render_fn(element, t) for t in row]) for row in flat])

    def num_calls(self, idx: Sequence[int]) -> int:
        return 0
