"""What the fidelity protocol evaluates: a :class:`Candidate` hands out a generator for each twin world.

A generator is anything with the world-model generator interface (``world_model.generators``)::

    gen.valid_num_frames(k) -> int                     # pixel frames of a k-step clip, frame 0 included
    gen.generate(image, intrinsics, c2w, seed=...)     # image (B,3,H,W), c2w (B,F,4,4) -> (B,F,3,H,W) in [-1,1]
    gen.start(image, intrinsics, c2w=..., seed=...)    # streaming: a state
    gen.frames_per_step(state) -> int; gen.step(state, c2w (B,n,4,4)) -> (frames (B,n,3,H,W), state)

A trained world model ignores which scene it is in (one generator for all); the twin-render oracle needs the
scene (it renders the commanded poses), so candidates are built per scene. Shipped here: the world-model
candidates, three baselines (repeat the first frame; frame 0 warped into each pose with its depth, no
learning; the same architecture with random weights) and the oracle used to check the protocol itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from sana_wm_env.scenes.scene import Scene


class GeneratorLike(Protocol):
    """The generator interface the protocol relies on (see the module docstring)."""

    def valid_num_frames(self, num_chunks: int) -> int: ...

    def generate(self, image: torch.Tensor, intrinsics, c2w, **kwargs) -> torch.Tensor: ...

    def start(self, image: torch.Tensor, intrinsics, **kwargs) -> Any: ...

    def frames_per_step(self, state: Any) -> int: ...

    def step(self, state: Any, c2w) -> tuple[torch.Tensor, Any]: ...


@dataclass
class Candidate:
    """A named thing to evaluate. ``generator_for(scene)`` returns its generator in that twin world."""

    name: str
    generator_for: Callable[[Scene], GeneratorLike]
    kind: str = "model"  # "model", "baseline" or "oracle"
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("model", "baseline", "oracle"):
            raise ValueError(f"kind must be 'model', 'baseline' or 'oracle', got {self.kind!r}")
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")


def generator_candidate(name: str, generator: GeneratorLike, *, kind: str = "model", description: str = "",
                        info: dict[str, Any] | None = None) -> Candidate:
    """A candidate that uses the same ``generator`` in every scene (any world model)."""
    return Candidate(name, lambda scene: generator, kind=kind, description=description, info=info or {})


@dataclass(frozen=True)
class _SimpleState:
    image: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    intrinsics: torch.Tensor  # (4,) or (B, 4)
    chunk_index: int = 0


class RepeatFirstFrame:
    """Baseline generator: every frame is the given first image (a world model that never moves)."""

    def __init__(self, frames_per_chunk: int = 4) -> None:
        if isinstance(frames_per_chunk, bool) or not isinstance(frames_per_chunk, int) or frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be a positive int, got {frames_per_chunk!r}")
        self.chunk = frames_per_chunk

    def valid_num_frames(self, num_chunks: int) -> int:
        return 1 + num_chunks * self.chunk

    def _frames(self, image: torch.Tensor, c2w) -> torch.Tensor:
        poses = torch.as_tensor(c2w)
        if poses.ndim != 4 or poses.shape[0] != image.shape[0] or poses.shape[-2:] != (4, 4):
            raise ValueError(f"c2w must have shape ({image.shape[0]}, n, 4, 4), got {tuple(poses.shape)}")
        return image.float().clamp(-1, 1)[:, None].expand(-1, poses.shape[1], -1, -1, -1).clone()

    def generate(self, image: torch.Tensor, intrinsics, c2w, **kwargs) -> torch.Tensor:
        return self._frames(image, c2w)

    def start(self, image: torch.Tensor, intrinsics, **kwargs) -> _SimpleState:
        return _SimpleState(image=image.float(), intrinsics=torch.as_tensor(intrinsics))

    def frames_per_step(self, state: _SimpleState) -> int:
        return self.chunk

    def step(self, state: _SimpleState, c2w) -> tuple[torch.Tensor, _SimpleState]:
        return self._frames(state.image, c2w), _SimpleState(state.image, state.intrinsics, state.chunk_index + 1)


@dataclass(frozen=True)
class _WarpState:
    cache: Any  # world_model.point_cache.PointCache of frame 0
    image: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    intrinsics: torch.Tensor  # (B, 4)


class WarpFirstFrame:
    """Baseline generator with no learning: frame 0 forward-splatted into every commanded pose with frame 0's
    depth (:class:`world_model.point_cache.PointCache`), holes filled by dilation.

    It needs frame 0's depth (``takes_depth``: the protocol passes the twin's depth, the same first-frame depth a
    geometry-guided model gets). Pixels no cached point reaches and no dilation fills (a view turned fully
    away) show frame 0's mean colour.
    """

    takes_depth = True

    def __init__(self, frames_per_chunk: int = 4, fill_iterations: int = 64) -> None:
        if isinstance(frames_per_chunk, bool) or not isinstance(frames_per_chunk, int) or frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be a positive int, got {frames_per_chunk!r}")
        self.chunk, self.fill_iterations = frames_per_chunk, int(fill_iterations)

    def valid_num_frames(self, num_chunks: int) -> int:
        return 1 + num_chunks * self.chunk

    def start(self, image: torch.Tensor, intrinsics, *, c2w=None, depth: torch.Tensor | None = None, **kwargs
              ) -> _WarpState:
        from world_model.point_cache import PointCache

        if depth is None:
            raise ValueError("the warp baseline needs frame 0's depth: pass depth=(B, H, W) metres (0 = sky)")
        if c2w is None:
            raise ValueError("the warp baseline needs frame 0's pose: pass c2w=(B, 4, 4) (OpenCV camera-to-world)")
        image = image.float()
        b = image.shape[0]
        k4 = torch.as_tensor(intrinsics, dtype=torch.float32)
        k4 = k4.expand(b, 4) if k4.ndim == 1 else k4
        pose0 = torch.as_tensor(c2w, dtype=torch.float32)
        pose0 = pose0[:, 0] if pose0.ndim == 4 else pose0
        cache = PointCache.from_frame(image, torch.as_tensor(depth, dtype=torch.float32), pose0, k4)
        return _WarpState(cache, image, k4)

    def frames_per_step(self, state: _WarpState) -> int:
        return self.chunk

    def render(self, state: _WarpState, c2w) -> tuple[torch.Tensor, torch.Tensor]:
        """``(frames (B, n, 3, H, W) in [-1, 1], cache mask (B, n, H, W))`` at poses ``c2w (B, n, 4, 4)``."""
        from world_model.point_cache import fill_holes

        poses = torch.as_tensor(c2w, dtype=torch.float32)
        hw = tuple(state.image.shape[-2:])
        out = state.cache.render(poses, state.intrinsics, hw)
        filled, covered = fill_holes(out.rgb, out.mask, self.fill_iterations)
        mean = state.image.mean(dim=(-2, -1))[:, None, :, None, None]
        frames = torch.where(covered[:, :, None], filled, mean.expand_as(filled))
        return frames.clamp(-1, 1), out.mask

    def step(self, state: _WarpState, c2w) -> tuple[torch.Tensor, _WarpState]:
        return self.render(state, c2w)[0], state

    def generate(self, image: torch.Tensor, intrinsics, c2w, *, depth: torch.Tensor | None = None, **kwargs
                 ) -> torch.Tensor:
        poses = torch.as_tensor(c2w, dtype=torch.float32)
        state = self.start(image, intrinsics, c2w=poses[:, 0], depth=depth)
        rest = self.render(state, poses[:, 1:])[0]
        return torch.cat([image.float().clamp(-1, 1)[:, None], rest], dim=1)


class TwinRenderOracle:
    """The perfect world model of one scene: frames are the twin renders at the commanded poses.

    Used to check the protocol (its action-following accuracy must be 1.0). Frame 0 is the given image.
    """

    def __init__(self, scene: Scene, frames_per_chunk: int = 4) -> None:
        self.scene = scene
        self.chunk = frames_per_chunk
        self._renderers: dict[tuple[int, int], Any] = {}

    def _render(self, c2w: torch.Tensor, k4: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        from sana_wm_env.scenes import SceneRenderer
        from world_model.video import from_uint8

        if hw not in self._renderers:
            self._renderers[hw] = SceneRenderer(self.scene, hw[0], hw[1], depth=False)
        r = self._renderers[hw]
        b, n = c2w.shape[:2]
        k = k4.expand(b, 4) if k4.ndim == 1 else k4
        out = torch.empty(b, n, 3, *hw)
        for i in range(b):
            for j in range(n):
                # commanded poses are taken as given (random-action paths may leave the scene)
                rgb, _ = r.render(c2w[i, j].double().numpy(), k[i].double().numpy(), check_inside=False)
                out[i, j] = from_uint8(rgb)
        return out

    def valid_num_frames(self, num_chunks: int) -> int:
        return 1 + num_chunks * self.chunk

    def generate(self, image: torch.Tensor, intrinsics, c2w, **kwargs) -> torch.Tensor:
        poses = torch.as_tensor(c2w, dtype=torch.float64)
        k4 = torch.as_tensor(intrinsics, dtype=torch.float64)
        rest = self._render(poses[:, 1:], k4, tuple(image.shape[-2:]))
        return torch.cat([image.float().clamp(-1, 1)[:, None], rest], dim=1)

    def start(self, image: torch.Tensor, intrinsics, **kwargs) -> _SimpleState:
        return _SimpleState(image=image.float(), intrinsics=torch.as_tensor(intrinsics, dtype=torch.float64))

    def frames_per_step(self, state: _SimpleState) -> int:
        return self.chunk

    def step(self, state: _SimpleState, c2w) -> tuple[torch.Tensor, _SimpleState]:
        frames = self._render(torch.as_tensor(c2w, dtype=torch.float64), state.intrinsics,
                              tuple(state.image.shape[-2:]))
        return frames, _SimpleState(state.image, state.intrinsics, state.chunk_index + 1)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


def repeat_first_frame_candidate() -> Candidate:
    """Baseline 1: repeat the first frame."""
    gen = RepeatFirstFrame()
    return generator_candidate("repeat_first_frame", gen, kind="baseline",
                               description="every generated frame is the given first frame")


def warp_candidate() -> Candidate:
    """Baseline 3: frame 0 warped into each pose with its depth (no learning; see :class:`WarpFirstFrame`)."""
    return generator_candidate("warp", WarpFirstFrame(), kind="baseline",
                               description="frame 0 forward-splatted into each pose with the twin's frame-0 depth, "
                                           "holes filled by dilation")


def oracle_candidate() -> Candidate:
    """The twin-render oracle (upper bound; checks the protocol)."""
    cache: dict[tuple[str, int], TwinRenderOracle] = {}

    def make(scene: Scene) -> TwinRenderOracle:
        key = (scene.family, scene.seed)
        if key not in cache:
            for old in cache.values():
                old.close()
            cache.clear()
            cache[key] = TwinRenderOracle(scene)
        return cache[key]

    return Candidate("oracle", make, kind="oracle", description="twin renders at the commanded poses")


def untrained_like(model, *, seed: int = 0):
    """The same architecture as ``model`` (a ``WorldModel``) with random transformer weights and the same codec.

    Baseline 2 of the issue: it tells how much of the fidelity comes from training rather than from the
    first-frame condition and the codec.
    """
    from world_model.bundles import WorldModel
    from world_model.checkpoints import build_transformer

    student = build_transformer(model.student.config, seed=seed).eval()
    student.to(model.student.device)
    return WorldModel(student=student, codec=model.codec, name=f"{model.name}-untrained", fps=model.fps,
                      image_hw=model.image_hw, fov_deg=model.fov_deg, streaming=dict(model.streaming))


def world_model_candidates(model, *, teacher: bool = False, untrained: bool = True,
                           untrained_seed: int = 0) -> list[Candidate]:
    """Candidates for a loaded ``WorldModel``: its streaming student ("model"; also "model_frames", the
    student's own frames, when the bundle shows its cache), optionally its teacher, then the baselines (repeat
    the first frame; frame 0 warped with its depth; the untrained model, streaming generator, same sampler)."""
    out = [generator_candidate("model", model.streaming_generator(), kind="model",
                               description=f"{model.name}: streaming student, sampler {model.streaming}",
                               info={"name": model.name, "sampler": model.streaming})]
    if model.streaming.get("show_cache"):  # what the transformer itself generates, the cache not shown
        out.append(generator_candidate("model_frames", model.streaming_generator(show_cache=False), kind="model",
                                       description=f"{model.name}: streaming student, its own frames only "
                                                   "(show_cache off)", info={"name": model.name}))
    if teacher:
        if model.teacher is None:
            raise ValueError(f"--teacher: world model {model.name!r} ships no teacher")
        out.append(generator_candidate("teacher", model.teacher_generator(), kind="model",
                                       description=f"{model.name}: chunk-causal teacher, {model.teacher_sampler}",
                                       info={"sampler": model.teacher_sampler}))
    out.append(repeat_first_frame_candidate())
    out.append(warp_candidate())
    if untrained:
        base = untrained_like(model, seed=untrained_seed)
        out.append(generator_candidate("untrained", base.streaming_generator(), kind="baseline",
                                       description=f"same architecture and codec, random transformer weights "
                                                   f"(seed {untrained_seed})", info={"init_seed": untrained_seed}))
    return out


def clip_frames(generator: GeneratorLike, needed: int) -> int:
    """The smallest clip length ``generator`` accepts that holds ``needed`` frames (frame 0 included)."""
    if needed < 1:
        raise ValueError(f"needed must be >= 1, got {needed}")
    k = 1
    while generator.valid_num_frames(k) < needed:
        k += 1
        if k > 100_000:
            raise ValueError("generator.valid_num_frames never reaches the needed clip length")
    return int(generator.valid_num_frames(k))


def pad_poses(poses: np.ndarray, frames: int) -> np.ndarray:
    """``poses (F, 4, 4)`` extended to ``frames`` by holding the last pose (the extra frames are discarded)."""
    if frames < len(poses):
        raise ValueError(f"frames must be >= {len(poses)}, got {frames}")
    extra = np.repeat(poses[-1:], frames - len(poses), axis=0)
    return np.concatenate([poses, extra], axis=0)
