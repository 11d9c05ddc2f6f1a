"""Generators: a first frame and a camera path in, video out — behind one batched interface.

    state = gen.start(image, intrinsics, c2w=first_pose, seed=[0, 1])   # image (B, 3, H, W) in [-1, 1]
    frames, state = gen.step(state, c2w_next)                         # c2w_next (B, n, 4, 4) world poses
    imagined, _ = gen.step(state.fork(), other_path)                  # forks never touch the original

Poses are OpenCV camera-to-world 4x4 (metres) in any world frame; the model sees them relative to the
first frame's pose. ``intrinsics`` are ``[fx, fy, cx, cy]`` in pixels of ``image``. A step takes exactly
``gen.frames_per_step(state)`` poses (one chunk: ``chunk_size`` latent frames times the codec's temporal
stride) and returns that many new frames ``(B, n, 3, H, W)`` in [-1, 1].

- :class:`StreamingGenerator`: the distilled few-step student (default 4 steps [1000, 960, 889, 727], no
  CFG); softmax blocks keep a sink chunk + a window of recent chunks, so memory is flat in video length.
- :class:`ChunkCausalGenerator`: the chunk-causal teacher — many Euler steps with CFG, chunk after chunk,
  attending to every earlier chunk (exact chunk-causal context; memory grows with the video).
- :class:`BidirectionalGenerator`: the offline release model — samples the whole clip jointly; ``step``
  re-samples everything so far (earlier frames may change), ``generate`` is the natural entry point.

Each chunk's noise depends only on (seed of the batch element, chunk index): same seed and same poses
give the same frames, alone or batched.

Geometry-guided models (``geometry_channels > 0``, an RGB-D codec) also keep a
:class:`world_model.point_cache.PointCache` in the state: frame 0 with its depth (``start(..., depth=)``; without
it the model generates frame 0's depth from its colours), then, from every generated frame with its generated
depth, the pixels the cache could not show (what it showed is never overwritten: frame 0 is exact, generated
frames are not). Each step renders the cache at the step's poses and gives the render to the transformer
(:mod:`world_model.geometry`); ``state.last_depth`` holds the depth of the frames the last step returned and
``state.last_coverage`` the share of their pixels the cache showed.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .cache import StreamCache, map_tensors
from .camera import CameraInputs, camera_inputs_from_world, validate_c2w, validate_intrinsics
from .codecs.base import DecodeStreamState, LatentCodec
from .geometry import geometry_channels, geometry_inputs
from .point_cache import CacheRender, PointCache
from .sampling import distilled_sigmas, euler_step, flow_sigmas, guide, seeded_noise
from .transformer import SanaWMTransformer

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class GeneratorState:
    """Everything a generator carries between steps. Immutable: :meth:`fork` is a cheap copy."""

    image_hw: tuple[int, int]
    latent_hw: tuple[int, int]
    intrinsics: torch.Tensor  # (B, 4) pixels
    reference_c2w: torch.Tensor  # (B, 4, 4) world pose of frame 0
    seeds: tuple[int, ...]
    first_latent: torch.Tensor  # (B, C, 1, h, w)
    text: torch.Tensor | None
    text_mask: torch.Tensor | None
    uncond_text: torch.Tensor | None
    uncond_text_mask: torch.Tensor | None
    cache: StreamCache | None = None
    uncond_cache: StreamCache | None = None
    decode: DecodeStreamState | None = None
    chunk_index: int = 0  # chunks generated so far
    frames_done: int = 1  # pixel frames so far, frame 0 included
    last_c2w: torch.Tensor | None = None  # (B, 4, 4) world pose of the last frame
    history_c2w: torch.Tensor | None = None  # bidirectional only: all poses so far (B, F, 4, 4)
    # causal: the last step's clean latents (B, C, t, h, w) (chunk 0: frame 0 too); with show_cache, the latents of
    # the frames shown (cache render where it covers them), so that refiners and recorded rollouts start from them
    latents: torch.Tensor | None = None
    geometry: PointCache | None = None  # geometry-guided models: frame 0 and every generated frame, with depth
    last_depth: torch.Tensor | None = None  # geometry-guided models: depth (B, n, H, W) metres of the last frames
    last_coverage: torch.Tensor | None = None  # geometry-guided models: share (B, n) of those frames' pixels the
    # cache covered before they were generated
    # show_cache: (B, n, H, W) True where those frames show frame 0's own points (exact where its depth was measured)
    last_shown_first: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.intrinsics.shape[0]

    def fork(self) -> GeneratorState:
        return dataclasses.replace(self)

    def nbytes(self) -> int:
        caches = [c for c in (self.cache, self.uncond_cache, self.geometry) if c is not None]
        return sum(c.nbytes() for c in caches)

    def select(self, index: Sequence[int]) -> GeneratorState:
        """The state of batch elements ``index`` (any order, repeats allowed); this state is left untouched.

        Vector envs restart some elements while the others keep streaming, and imagined rollouts repeat one
        element K times. Every tensor in the state (caches, decode carry-over, first latents, poses, text) is
        batch-first, so selection is an ``index_select`` on dim 0; the point cache selects its own elements.
        """
        idx = [int(i) for i in index]
        b = self.batch_size
        if not idx or any(i < 0 or i >= b for i in idx):
            raise ValueError(f"index must be a non-empty list of batch positions in [0, {b}), got {idx}")
        sel = torch.as_tensor(idx, dtype=torch.long)

        def pick(t: torch.Tensor) -> torch.Tensor:
            if t.ndim == 0 or t.shape[0] != b:
                raise ValueError(f"state holds a tensor of shape {tuple(t.shape)} that is not batch-first (batch {b})")
            return t.index_select(0, sel.to(t.device))

        skip = ("seeds", "decode", "image_hw", "latent_hw", "geometry")
        new = {f.name: map_tensors(getattr(self, f.name), pick) for f in dataclasses.fields(self) if f.name not in skip}
        new["seeds"] = tuple(self.seeds[i] for i in idx)
        if self.geometry is not None:
            new["geometry"] = self.geometry.select(idx)
        if self.decode is not None:
            d = self.decode
            new["decode"] = dataclasses.replace(d, cache=map_tensors(d.cache, pick),
                                                batch_size=None if d.batch_size is None else len(idx))
        return dataclasses.replace(self, **new)


def _seeds(seed: int | Sequence[int], batch: int) -> tuple[int, ...]:
    seeds = (seed,) * batch if isinstance(seed, int) else tuple(int(s) for s in seed)
    if len(seeds) != batch:
        raise ValueError(f"seed must be an int or one int per batch element ({batch}), got {len(seeds)} seeds")
    return seeds


def _check_first_depth(depth, shape: tuple[int, int, int]) -> torch.Tensor:
    if not isinstance(depth, torch.Tensor) or not depth.is_floating_point() or tuple(depth.shape) != shape:
        got = f"{getattr(depth, 'dtype', type(depth).__name__)} {tuple(getattr(depth, 'shape', ()))}"
        raise ValueError(f"depth must be a float tensor {shape} (frame 0's depth in metres, 0 = sky), got {got}")
    if not bool(torch.isfinite(depth).all()) or bool((depth < 0).any()):
        raise ValueError("depth must be finite and >= 0 (metres; 0 marks sky / no surface)")
    return depth.float()


def _check_show_cache(show_cache, gen: _Generator) -> bool:
    if not isinstance(show_cache, bool):
        raise ValueError(f"show_cache must be True or False, got {show_cache!r}")
    if show_cache and not gen.takes_depth:
        raise ValueError("show_cache needs a geometry-guided model (ModelConfig.geometry_channels > 0); this model "
                         "keeps no 3D cache")
    return show_cache


class _Generator(abc.ABC):
    def __init__(
        self,
        transformer: SanaWMTransformer,
        codec: LatentCodec,
        *,
        sigmas: torch.Tensor,
        guidance_scale: float | None,
    ) -> None:
        cfg = transformer.config
        if guidance_scale is None:  # upstream CFG 5.0 for text models; a text-free model has nothing to guide
            guidance_scale = 5.0 if cfg.has_text else 1.0
        if codec.latent_channels != cfg.in_channels:
            raise ValueError(
                f"codec has {codec.latent_channels} latent channels but the transformer expects {cfg.in_channels}"
            )
        if codec.temporal_stride != cfg.temporal_stride:
            raise ValueError(
                f"codec temporal stride {codec.temporal_stride} does not match the transformer's Plücker packing "
                f"({cfg.plucker_channels} channels = 6 x {cfg.temporal_stride})"
            )
        if guidance_scale != 1.0 and not cfg.has_text:
            raise ValueError(f"guidance_scale={guidance_scale} needs a text model; this model has no text (use 1.0)")
        if cfg.geometry_channels and (not codec.depth_channels or cfg.geometry_channels != geometry_channels(codec)):
            raise ValueError(
                f"a geometry-guided model ({cfg.geometry_channels} geometry channels) needs an RGB-D codec with "
                f"{cfg.geometry_channels - codec.temporal_stride} latent channels; this codec has "
                f"{codec.latent_channels} ({codec.depth_channels} of depth)")
        self.transformer = transformer
        self.codec = codec
        self.sigmas = sigmas
        self.guidance_scale = float(guidance_scale)

    @property
    def config(self):
        return self.transformer.config

    @property
    def takes_depth(self) -> bool:
        """Whether ``start`` uses frame 0's depth (geometry-guided models; without it they generate one)."""
        return bool(self.config.geometry_channels)

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    # -- starting ----------------------------------------------------------------------------
    @torch.no_grad()
    def start(
        self,
        image: torch.Tensor,
        intrinsics,
        *,
        c2w=None,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        negative_text: torch.Tensor | None = None,
        negative_text_mask: torch.Tensor | None = None,
        seed: int | Sequence[int] = 0,
        depth: torch.Tensor | None = None,
    ) -> GeneratorState:
        """Begin an episode from ``image (B, 3, H, W)`` in [-1, 1] with ``intrinsics`` ((4,) or (B, 4) pixels).

        ``c2w``: world pose of the first frame ((4, 4) or (B, 4, 4); identity if omitted). ``text``: optional
        prompt features ``(B, L, caption_channels)``; without it a text model uses its learned null caption,
        which is also the unconditional branch of CFG unless ``negative_text`` is given. ``depth``: frame 0's
        depth ``(B, H, W)`` in metres (0 = sky) for geometry-guided models (:attr:`takes_depth`); without it they
        generate it from the image. Other models refuse it.
        """
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a float tensor (B, 3, H, W) in [-1, 1], got {got}")
        b, _, h, w = image.shape
        k = validate_intrinsics(intrinsics, "intrinsics").float()
        if k.shape == (4,):
            k = k.expand(b, 4)
        if tuple(k.shape) != (b, 4):
            raise ValueError(f"intrinsics must have shape (4,) or ({b}, 4), got {tuple(k.shape)}")
        if c2w is None:
            ref = torch.eye(4).expand(b, 4, 4)
        else:
            ref = validate_c2w(c2w, "c2w").float()
            ref = ref.expand(b, 4, 4) if ref.shape == (4, 4) else ref
            if tuple(ref.shape) != (b, 4, 4):
                raise ValueError(f"c2w must have shape (4, 4) or ({b}, 4, 4), got {tuple(ref.shape)}")
        if text is not None and text.shape[0] != b:
            raise ValueError(f"text must have batch size {b}, got {tuple(text.shape)}")
        latent_hw = self.codec.latent_hw((h, w))
        seeds = _seeds(seed, b)
        image = image.to(self.device, torch.float32)
        geometry = None
        if self.takes_depth:
            if depth is None:
                depth = self.generate_depth(image, k, seeds, text=text, text_mask=text_mask)
            depth = _check_first_depth(depth, (b, h, w)).to(self.device)
            geometry = PointCache.from_frame(image, depth, ref.to(self.device), k.to(self.device))
            first = self.codec.encode_image(image, depth)
        elif depth is not None:
            raise ValueError("depth: this model does not use depth (it has no geometry cache); pass depth=None")
        else:
            first = self.codec.encode_image(image)
        state = GeneratorState(
            image_hw=(h, w), latent_hw=latent_hw, intrinsics=k.clone(), reference_c2w=ref.clone(),
            seeds=seeds, first_latent=first.to(self.transformer.dtype), text=text, text_mask=text_mask,
            uncond_text=negative_text, uncond_text_mask=negative_text_mask, last_c2w=ref.clone(), geometry=geometry,
            last_depth=None if depth is None or not self.takes_depth else depth[:, None].clone(),
        )
        return self._init_state(state)

    @torch.no_grad()
    def generate_depth(self, image: torch.Tensor, intrinsics, seed: int | Sequence[int] = 0, *,
                       text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                       num_steps: int = 16, shift: float = 3.0) -> torch.Tensor:
        """Frame 0's depth ``(B, H, W)`` metres generated from its colours (geometry-guided models).

        Latent frame 0 alone is sampled with its colour channels held at the image's latents and its depth
        channels denoised from seeded noise (``num_steps`` Euler steps, flow shift ``shift``), the way training
        teaches it (frames whose colour is clean while their depth is noisy). The geometry input is the image
        itself, fully covered, with depth unknown (read as sky)."""
        if not self.takes_depth:
            raise ValueError("generate_depth needs a geometry-guided model with an RGB-D codec")
        b, _, h, w = image.shape
        k = validate_intrinsics(intrinsics, "intrinsics").float()
        k = k.expand(b, 4) if k.shape == (4,) else k
        model, dtype, d = self.transformer, self.transformer.dtype, self.codec.depth_channels
        image = image.to(self.device, torch.float32)
        unknown = torch.zeros(b, h, w, device=self.device)
        clean = self.codec.encode_image(image, unknown).to(dtype)
        eye = torch.eye(4, device=self.device).expand(b, 1, 4, 4)
        latent_hw = self.codec.latent_hw((h, w))
        camera = camera_inputs_from_world(eye, k.to(self.device), (h, w), latent_hw, self.codec.temporal_stride)
        geometry = geometry_inputs(self._image_render(image, unknown), self.codec, first=True)
        camera = camera.to(self.device, torch.float32).with_geometry(geometry)
        x = seeded_noise(clean.shape, _seeds(seed, b), -1, dtype=dtype, device=self.device)
        x[:, :-d] = clean[:, :-d]
        sig = flow_sigmas(num_steps, shift).tolist()
        for i in range(len(sig) - 1):
            t = torch.full((b, 1), sig[i] * 1000.0, device=self.device)
            v = model(x, t, camera=camera, text=text, text_mask=text_mask, mode="chunk_causal")
            x = euler_step(x, v.to(dtype), sig[i], sig[i + 1])
            x[:, :-d] = clean[:, :-d]
        _, depth = self.codec.decode(x.float(), with_depth=True)
        return depth[:, 0]

    @staticmethod
    def _image_render(image: torch.Tensor, depth: torch.Tensor):
        """A one-view cache render of the image itself (every pixel covered)."""
        mask = torch.ones_like(depth, dtype=torch.bool)
        return CacheRender(image[:, None], depth[:, None], mask[:, None], (depth == 0)[:, None])

    def _geometry_camera(self, state: GeneratorState, camera: CameraInputs, poses: torch.Tensor, first: bool
                         ) -> tuple[CameraInputs, CacheRender | None]:
        """``camera`` with the cache's render at this chunk's frame poses attached, and that render of the new
        frames (leading dims ``(B, n)``; geometry-guided models; else ``camera`` and None)."""
        if not self.takes_depth:
            return camera, None
        if first:
            poses = torch.cat([state.reference_c2w[:, None], poses], dim=1)
        render = state.geometry.render(poses.to(self.device), state.intrinsics.to(self.device), state.image_hw)
        geometry = geometry_inputs(render, self.codec, first=first).to(camera.plucker.dtype)
        if first:
            render = CacheRender(*(t[:, 1:] for t in (render.rgb, render.depth, render.mask, render.sky)))
        return camera.with_geometry(geometry), render

    def _init_state(self, state: GeneratorState) -> GeneratorState:
        return state

    def frames_per_step(self, state: GeneratorState) -> int:
        cfg, s = self.config, self.codec.temporal_stride
        return (cfg.first_chunk_size - 1) * s if state.chunk_index == 0 else cfg.chunk_size * s

    def _check_step_poses(self, state: GeneratorState, c2w) -> torch.Tensor:
        n = self.frames_per_step(state)
        poses = validate_c2w(c2w, "c2w").float()
        if tuple(poses.shape) != (state.batch_size, n, 4, 4):
            raise ValueError(
                f"c2w must hold the next {n} frames' poses, shape ({state.batch_size}, {n}, 4, 4); "
                f"got {tuple(poses.shape)}"
            )
        return poses

    def _camera(self, state: GeneratorState, poses: torch.Tensor, first: bool):
        if first:
            poses = torch.cat([state.reference_c2w[:, None], poses], dim=1)
        cam = camera_inputs_from_world(
            poses, state.intrinsics, state.image_hw, state.latent_hw, self.codec.temporal_stride,
            reference_c2w=state.reference_c2w, starts_at_first_frame=first,
        )
        return cam.to(self.device, torch.float32)

    def _velocity(self, x, t, *, camera, state: GeneratorState, fn) -> torch.Tensor:
        v = fn(x, t, camera=camera, text=state.text, text_mask=state.text_mask)
        if self.guidance_scale != 1.0:
            v_u = fn(x, t, camera=camera, text=state.uncond_text, text_mask=state.uncond_text_mask, uncond=True)
            v = guide(v, v_u, self.guidance_scale)
        return v

    def generate(
        self,
        image: torch.Tensor,
        intrinsics,
        c2w,
        *,
        progress: ProgressFn | None = None,
        **start_kwargs,
    ) -> torch.Tensor:
        """The whole clip for world poses ``c2w (B, F, 4, 4)`` (frame 0 = ``image``): ``(B, F, 3, H, W)``."""
        poses = self._check_clip_poses(c2w)
        state = self.start(image, intrinsics, c2w=poses[:, 0], **start_kwargs)
        frames, done, total = [image.float().clamp(-1, 1)[:, None].cpu()], 1, poses.shape[1]
        while done < total:
            n = self.frames_per_step(state)
            out, state = self.step(state, poses[:, done : done + n])
            frames.append(out.cpu())
            done += n
            if progress is not None:
                progress(done, total)
        return torch.cat(frames, dim=1)

    @abc.abstractmethod
    def step(self, state: GeneratorState, c2w) -> tuple[torch.Tensor, GeneratorState]:
        """Generate the next chunk for world poses ``c2w (B, n, 4, 4)``: ``(frames (B, n, 3, H, W), new_state)``."""

    def valid_num_frames(self, num_chunks: int) -> int:
        """Pixel frames of a clip of ``num_chunks`` steps (frame 0 included)."""
        cfg, s = self.config, self.codec.temporal_stride
        return 1 + (cfg.first_chunk_size - 1) * s + max(0, num_chunks - 1) * cfg.chunk_size * s

    def _check_clip_poses(self, c2w) -> torch.Tensor:
        poses = validate_c2w(c2w, "c2w").float()
        if poses.ndim != 4:
            raise ValueError(f"c2w must have shape (B, F, 4, 4), got {tuple(poses.shape)}")
        f = poses.shape[1]
        valid = [self.valid_num_frames(k) for k in range(1, 2 + (f // max(1, self.config.chunk_size)))]
        if f not in valid:
            near = [v for v in valid if abs(v - f) == min(abs(v - f) for v in valid)]
            raise ValueError(
                f"c2w has {f} frames; a clip must have 1 + {valid[0] - 1} + k * "
                f"{self.config.chunk_size * self.codec.temporal_stride} frames (nearest valid: {near})"
            )
        return poses


class _CausalGenerator(_Generator):
    """Chunk-by-chunk sampling on the streaming transformer (shared by the teacher and the student)."""

    window_chunks: int | None | str = "config"
    # show_cache: the pixels the 3D cache covers show its render (the first frame's points first), the model's
    # frame fills the holes (geometry-guided models; what enters the cache is the model's frame either way)
    show_cache: bool = False

    def _init_state(self, state: GeneratorState) -> GeneratorState:
        cache = self.transformer.new_cache(window_chunks=self.window_chunks)
        uncond = cache if self.guidance_scale != 1.0 else None
        return dataclasses.replace(state, cache=cache, uncond_cache=uncond, decode=self.codec.decode_stream_start())

    @torch.no_grad()
    def step(self, state: GeneratorState, c2w) -> tuple[torch.Tensor, GeneratorState]:
        """Generate the next chunk for ``c2w (B, n, 4, 4)``; returns ``(frames (B, n, 3, H, W), new_state)``."""
        if not isinstance(state, GeneratorState) or state.cache is None:
            raise ValueError("state must come from this generator's start() or step()")
        poses = self._check_step_poses(state, c2w)
        first = state.chunk_index == 0
        camera, render = self._geometry_camera(state, self._camera(state, poses, first), poses, first)
        covered = None if render is None else render.mask
        model, dtype = self.transformer, self.transformer.dtype
        b, t = state.batch_size, camera.num_frames
        x = seeded_noise((b, model.config.in_channels, t, *state.latent_hw), state.seeds, state.chunk_index,
                         dtype=dtype, device=self.device)
        if first:
            x[:, :, :1] = state.first_latent

        def forward(x_, t_, *, camera, text, text_mask, uncond=False):
            cache = state.uncond_cache if uncond else state.cache
            v, _ = model.forward_stream(x_, t_, cache=cache, camera=camera, text=text, text_mask=text_mask)
            return v

        sig = self.sigmas.tolist()
        for i in range(len(sig) - 1):
            t_frames = torch.full((b, t), sig[i] * 1000.0, device=self.device)
            if first:
                t_frames[:, 0] = 0.0
            v = self._velocity(x, t_frames, camera=camera, state=state, fn=forward)
            x = euler_step(x, v.to(dtype), sig[i], sig[i + 1])
            if first:
                x[:, :, :1] = state.first_latent  # the condition frame stays clean
        zeros = torch.zeros(b, t, device=self.device)
        _, cache = model.forward_stream(x, zeros, cache=state.cache, camera=camera, text=state.text,
                                        text_mask=state.text_mask, write_cache=True)
        uncond_cache = None
        if state.uncond_cache is not None:
            _, uncond_cache = model.forward_stream(x, zeros, cache=state.uncond_cache, camera=camera,
                                                   text=state.uncond_text, text_mask=state.uncond_text_mask,
                                                   write_cache=True)
        geometry, depth = state.geometry, None
        if self.takes_depth:
            (video, depth), decode = self.codec.decode_chunk(x.float(), state.decode, with_depth=True)
            depth = depth[:, 1:] if first else depth
        else:
            video, decode = self.codec.decode_chunk(x.float(), state.decode)  # (B, 3, F, H, W)
        if first:
            video = video[:, :, 1:]  # frame 0 is the given image
        frames = video.permute(0, 2, 1, 3, 4)
        latents, shown = x.detach(), None
        if self.show_cache and render is not None:
            frames, shown_depth, shown = self._show_cache(frames, depth, render, state, poses)
            latents = self._shown_latents(frames, shown_depth, state, first).to(x.dtype)
        coverage = None
        if depth is not None:
            # The new frames fill the cache's holes only: what it showed stays as it was (frame 0 is exact, a
            # generated frame is not), what it could not show comes from the model. Generated depth is blurred at
            # edges: drop the ramps.
            coverage = covered.flatten(-2).float().mean(-1)
            for i in range(frames.shape[1]):
                geometry = geometry.add(frames[:, i].float(), depth[:, i], poses[:, i].to(self.device),
                                        state.intrinsics.to(self.device), valid=~covered[:, i], edge_filter="ramps",
                                        supersede=False)
        new_state = dataclasses.replace(
            state, cache=cache, uncond_cache=uncond_cache, decode=decode, chunk_index=state.chunk_index + 1,
            frames_done=state.frames_done + frames.shape[1], last_c2w=poses[:, -1].clone(), latents=latents,
            geometry=geometry, last_depth=depth, last_coverage=coverage, last_shown_first=shown,
        )
        return frames, new_state


    def _show_cache(self, frames: torch.Tensor, depth: torch.Tensor, render: CacheRender, state: GeneratorState,
                    poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``frames (B, n, 3, H, W)`` and their ``depth (B, n, H, W)`` with the cache shown where it covers them:
        the first frame's points where they land (exact when its depth was measured), then the generated frames'
        points, the model in the holes; plus the mask ``(B, n, H, W)`` of the pixels that show frame 0's points."""
        exact = state.geometry.first_frame().render(poses.to(self.device), state.intrinsics.to(self.device),
                                                    state.image_hw)
        out = torch.where(render.mask[:, :, None], render.rgb.to(frames.dtype).clamp(-1, 1), frames)
        out = torch.where(exact.mask[:, :, None], exact.rgb.to(frames.dtype).clamp(-1, 1), out)
        shown_depth = torch.where(render.mask, render.depth.to(depth.dtype), depth)
        return out, torch.where(exact.mask, exact.depth.to(depth.dtype), shown_depth), exact.mask

    def _shown_latents(self, frames: torch.Tensor, depth: torch.Tensor, state: GeneratorState, first: bool
                       ) -> torch.Tensor:
        """The latents ``(B, C, t, h, w)`` of the frames shown (what a refiner or a recorded rollout should start
        from, not the transformer's own latents)."""
        z = self.codec.encode_continuation(frames.permute(0, 2, 1, 3, 4).float(), depth.float())
        return torch.cat([state.first_latent.to(z.dtype), z], dim=2) if first else z


class StreamingGenerator(_CausalGenerator):
    """Distilled few-step streaming generator (constant memory in video length)."""

    def __init__(
        self,
        transformer: SanaWMTransformer,
        codec: LatentCodec,
        *,
        sigmas: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        window_chunks: int | None | str = "config",
        compile: str | None = None,
        compile_backend: str = "inductor",
        show_cache: bool = False,
    ) -> None:
        """``compile``: a ``torch.compile`` mode (e.g. ``"reduce-overhead"`` = CUDA graphs) for the transformer's
        streaming step, see :meth:`SanaWMTransformer.compile_streaming` (it applies to the transformer, so to
        every generator sharing it); ``None`` leaves the transformer as it is. ``show_cache``: output frames show
        the 3D cache's render wherever it covers them (the first frame's points before generated ones) and the
        model's frame in the holes (geometry-guided models)."""
        super().__init__(transformer, codec, sigmas=distilled_sigmas() if sigmas is None else sigmas,
                         guidance_scale=guidance_scale)
        self.window_chunks = window_chunks
        self.show_cache = _check_show_cache(show_cache, self)
        if compile is not None:
            transformer.compile_streaming(compile, backend=compile_backend)


class ChunkCausalGenerator(_CausalGenerator):
    """Chunk-causal teacher: ``num_steps`` shifted Euler steps with CFG, full causal context."""

    def __init__(
        self,
        transformer: SanaWMTransformer,
        codec: LatentCodec,
        *,
        num_steps: int = 50,
        shift: float = 8.0,
        guidance_scale: float | None = None,
        show_cache: bool = False,
    ) -> None:
        """``show_cache``: as :class:`StreamingGenerator`'s."""
        super().__init__(transformer, codec, sigmas=flow_sigmas(num_steps, shift), guidance_scale=guidance_scale)
        self.window_chunks = None
        self.show_cache = _check_show_cache(show_cache, self)


class BidirectionalGenerator(_Generator):
    """Offline whole-clip sampler on the bidirectional model."""

    def __init__(
        self,
        transformer: SanaWMTransformer,
        codec: LatentCodec,
        *,
        num_steps: int = 60,
        shift: float = 8.0,
        guidance_scale: float | None = None,
    ) -> None:
        super().__init__(transformer, codec, sigmas=flow_sigmas(num_steps, shift), guidance_scale=guidance_scale)

    def _init_state(self, state: GeneratorState) -> GeneratorState:
        return dataclasses.replace(state, history_c2w=state.reference_c2w[:, None].clone())

    @torch.no_grad()
    def sample(self, state: GeneratorState, poses: torch.Tensor, progress: ProgressFn | None = None,
               *, with_depth: bool = False):
        """Jointly sample every frame for world poses ``poses (B, F, 4, 4)`` (frame 0 = the start image):
        ``video (B, F, 3, H, W)``, or ``(video, depth (B, F, H, W))`` with ``with_depth`` (geometry-guided models,
        whose geometry input is frame 0's cache: the clip is sampled jointly, not frame after frame)."""
        camera, _ = self._geometry_camera(state, self._camera(state, poses[:, 1:], first=True), poses[:, 1:], True)
        model, dtype = self.transformer, self.transformer.dtype
        b, t = state.batch_size, camera.num_frames
        x = seeded_noise((b, model.config.in_channels, t, *state.latent_hw), state.seeds, 0,
                         dtype=dtype, device=self.device)
        x[:, :, :1] = state.first_latent

        def forward(x_, t_, *, camera, text, text_mask, uncond=False):
            return model(x_, t_, camera=camera, text=text, text_mask=text_mask, mode="bidirectional")

        sig = self.sigmas.tolist()
        for i in range(len(sig) - 1):
            t_frames = torch.full((b, t), sig[i] * 1000.0, device=self.device)
            t_frames[:, 0] = 0.0
            v = self._velocity(x, t_frames, camera=camera, state=state, fn=forward)
            x = euler_step(x, v.to(dtype), sig[i], sig[i + 1])
            x[:, :, :1] = state.first_latent
            if progress is not None:
                progress(i + 1, len(sig) - 1)
        if with_depth:
            video, depth = self.codec.decode(x.float(), with_depth=True)
            return video.permute(0, 2, 1, 3, 4), depth
        return self.codec.decode(x.float()).permute(0, 2, 1, 3, 4)

    def generate(self, image, intrinsics, c2w, *, progress: ProgressFn | None = None, **start_kwargs) -> torch.Tensor:
        """Sample the whole clip for ``c2w (B, F, 4, 4)`` jointly; frame 0 is ``image``."""
        poses = self._check_clip_poses(c2w)
        state = self.start(image, intrinsics, c2w=poses[:, 0], **start_kwargs)
        video = self.sample(state, poses, progress=progress)
        return torch.cat([image.float().clamp(-1, 1)[:, None].cpu(), video[:, 1:].cpu()], dim=1)

    def step(self, state: GeneratorState, c2w) -> tuple[torch.Tensor, GeneratorState]:
        """Append one chunk of poses and re-sample the whole clip; returns the new frames only."""
        if not isinstance(state, GeneratorState) or state.history_c2w is None:
            raise ValueError("state must come from this generator's start() or step()")
        poses = self._check_step_poses(state, c2w)
        history = torch.cat([state.history_c2w, poses], dim=1)
        n = poses.shape[1]
        depth = None
        coverage = None
        if self.takes_depth:
            video, depth = self.sample(state, history, with_depth=True)
            depth = depth[:, -n:]
            coverage = state.geometry.render(poses.to(self.device), state.intrinsics.to(self.device),
                                             state.image_hw).coverage()
        else:
            video = self.sample(state, history)
        new_state = dataclasses.replace(
            state, history_c2w=history, chunk_index=state.chunk_index + 1,
            frames_done=state.frames_done + n, last_c2w=poses[:, -1].clone(), last_depth=depth,
            last_coverage=coverage,
        )
        return video[:, -n:], new_state
