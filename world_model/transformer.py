"""The SANA-WM stage-1 transformer (parameter-compatible with the official checkpoints).

Three ways to run it over latent video ``(B, C, T, H, W)`` with per-frame timesteps ``(B, T)``:

- ``forward(..., mode="bidirectional")``: every frame sees every frame (the release model).
- ``forward(..., mode="chunk_causal")``: frames see their own chunk and all earlier chunks
  (chunks of ``chunk_size`` latent frames after a first chunk of ``first_chunk_size``).
- ``forward_stream(chunk, ..., cache)``: one chunk at a time, carrying a :class:`StreamCache`;
  with an unbounded softmax window this equals the chunk-causal forward exactly.
  :meth:`SanaWMTransformer.compile_streaming` opts its block stack into ``torch.compile`` (+ CUDA graphs).

Camera inputs are a :class:`world_model.camera.CameraInputs` (relative OpenCV camera-to-world per latent
frame + latent-scale intrinsics, and the packed Plücker map). Text is optional: ``text (B, L,
caption_channels)`` features with ``text_mask (B, L)``; a text model given no text uses its learned
null caption. The model predicts the flow velocity ``v = noise - x0``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn as nn
import torch.utils.checkpoint

from .cache import StreamCache, map_tensors
from .camera import se3_inverse
from .config import ModelConfig, get_config
from .layers import stream_cpu  # noqa: F401  (registers the lean CPU streaming path with ops.dispatch)
from .layers.attention import AttentionContext, CameraTransforms, SoftmaxChunk, retain_softmax_cache
from .layers.block import Block, BlockState
from .layers.common import CaptionEmbedder, FinalLayer, PatchEmbed3D, RMSNorm, TimestepEmbedder
from .layers.positional import rope_freqs, slice_rope_for_camera, ucpe_ray_matrices
from .ops import fast_path

Mode = Literal["bidirectional", "chunk_causal"]
# torch.compile modes for compile_streaming (inductor); the first two capture CUDA graphs.
STREAM_COMPILE_MODES = ("reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "default")
_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
# config fields that set the chunk grid; the parameters do not depend on them (SanaWMTransformer.regridded)
GRID_FIELDS = ("chunk_size", "first_chunk_size", "stream_window_chunks")


class SanaWMTransformer(nn.Module):
    def __init__(self, config: ModelConfig | str) -> None:
        super().__init__()
        config = get_config(config)
        self.config = config
        c, patch = config.hidden_size, config.patch_size
        self.x_embedder = PatchEmbed3D(config.in_channels, c, patch)
        self.plucker_embedder = PatchEmbed3D(config.plucker_channels, c, patch)
        self.raymap_embedder = PatchEmbed3D(3, c, patch)  # absolute UCPE map: unused upstream, kept for loading
        embedders = [self.plucker_embedder, self.raymap_embedder]
        if config.geometry_channels:  # the geometry cache's render, GEN3C-style: starts with no effect
            self.geometry_embedder = PatchEmbed3D(config.geometry_channels, c, patch)
            embedders.append(self.geometry_embedder)
        for emb in embedders:
            nn.init.zeros_(emb.proj.weight)
            nn.init.zeros_(emb.proj.bias)
        self.t_embedder = TimestepEmbedder(c)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))
        if config.has_text:
            self.y_embedder = CaptionEmbedder(config.caption_channels, c, config.text_max_length)
            self.attention_y_norm = RMSNorm(c, eps=1e-5, init=0.01)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.depth))
        self.final_layer = FinalLayer(c, config.in_channels * math.prod(patch))
        self.gradient_checkpointing = False
        self._stream_blocks = None  # compiled block stack for forward_stream (compile_streaming)
        self.stream_compile: dict | None = None  # the compile_streaming settings in force, or None
        self.quantization: dict | None = None  # set by world_model.quantization.quantize

    # ------------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.x_embedder.proj.weight.device

    def new_cache(self, *, window_chunks: int | None | str = "config", sink_chunks: int | None = None) -> StreamCache:
        """An empty streaming cache (softmax retention from the config unless given; ``None`` window = keep all)."""
        cfg = self.config
        window = cfg.stream_window_chunks if window_chunks == "config" else window_chunks
        sink = cfg.stream_sink_chunks if sink_chunks is None else sink_chunks
        return StreamCache.empty(cfg.depth, sink_chunks=sink, window_chunks=window)

    @property
    def _stream_cudagraphs(self) -> bool:
        """Whether the compiled streaming step captures CUDA graphs (inductor with a CUDA-graph mode)."""
        c = self.stream_compile
        return c is not None and c["backend"] == "inductor" and c["mode"] in _CUDAGRAPH_MODES

    def compile_streaming(
        self,
        mode: str | None = "reduce-overhead",
        *,
        backend: str = "inductor",
        fullgraph: bool = False,
        dynamic: bool = False,
    ) -> None:
        """Run the block stack of :meth:`forward_stream` through ``torch.compile`` (opt-in; ``mode=None`` undoes it).

        Why it pays off: with a bounded softmax window (sink + window chunks) every chunk from chunk
        ``sink + window`` on has the same shapes, so one compiled graph (and, for ``"reduce-overhead"`` /
        ``"max-autotune"``, one captured CUDA graph per pass kind) serves the rest of the stream, removing
        Python and kernel-launch overhead. The first chunks have other shapes (the first chunk is longer, the
        cache is still filling) and each compiles its own graph: expect them to be slow (warm-up). Pass kinds:
        denoising passes and the cache-writing pass compile separately (2 x (sink + window + 2) graphs at most;
        dynamo's recompile limit is raised to that for these calls).

        Only the per-block computation is compiled: embeddings, RoPE tables, camera matrices and the cache
        bookkeeping (which chunks are kept) run eagerly, so chunk counters never cause recompiles. Caches
        with an unbounded window (the chunk-causal teacher) grow every chunk and always run eagerly.
        With CUDA-graph modes, state that outlives a call is cloned out of the graph's memory pool. On a CPU
        (float32) the lean streaming path (:mod:`world_model.layers.stream_cpu`) is what gets compiled; its fused
        weights are rebuilt eagerly at every new chunk, so weight updates are seen from the next chunk on.

        Args:
            mode: an inductor mode from ``STREAM_COMPILE_MODES`` or ``None`` (back to eager).
            backend: ``"inductor"`` (GPU speed), or ``"eager"`` / ``"aot_eager"`` (tracing checks on CPU; ``mode``
                is then ignored).
            fullgraph, dynamic: passed to ``torch.compile`` (static shapes by default: they are fixed per pass).
        """
        if mode is None:
            self._stream_blocks, self.stream_compile = None, None
            return
        if mode not in STREAM_COMPILE_MODES:
            raise ValueError(f"mode must be one of {STREAM_COMPILE_MODES} or None, got {mode!r}")
        if not isinstance(backend, str) or not backend:
            raise ValueError(f"backend must be a torch.compile backend name such as 'inductor', got {backend!r}")
        options = {"mode": mode} if backend == "inductor" else {}
        self._stream_blocks = torch.compile(self._block_stack, backend=backend, fullgraph=fullgraph,
                                            dynamic=dynamic, **options)
        self.stream_compile = {"mode": mode, "backend": backend, "fullgraph": fullgraph, "dynamic": dynamic}

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        *,
        camera=None,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        mode: Mode = "bidirectional",
    ) -> torch.Tensor:
        """Velocity prediction for a whole clip ``latents (B, C, T, H, W)``, ``timestep (B, T)`` in [0, 1000]."""
        if mode not in ("bidirectional", "chunk_causal"):
            raise ValueError(f"mode must be 'bidirectional' or 'chunk_causal', got {mode!r}")
        t = self._check_latents(latents)
        bounds = [(0, t)] if mode == "bidirectional" else self.config.chunk_bounds(t)
        out, _ = self._run(latents, timestep, camera, text, text_mask, bounds=bounds, causal=mode == "chunk_causal")
        return out

    def forward_stream(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        *,
        cache: StreamCache,
        camera=None,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        write_cache: bool = False,
    ) -> tuple[torch.Tensor, StreamCache | None]:
        """Velocity for the next chunk given the cache of earlier chunks.

        With ``write_cache`` the updated cache (this chunk appended) is returned; otherwise ``None`` and the
        given cache stays valid for another call on the same chunk (e.g. the next denoising step).
        """
        if not isinstance(cache, StreamCache):
            raise ValueError(f"cache must be a StreamCache (model.new_cache()), got {type(cache).__name__}")
        if cache.partial:
            raise ValueError("cache ends with a partial chunk; no further chunk can follow it")
        if len(cache.blocks) != self.config.depth:
            raise ValueError(f"cache has {len(cache.blocks)} blocks, the model {self.config.depth}")
        t = self._check_latents(latents)
        expected = self.config.first_chunk_size if cache.num_chunks == 0 else self.config.chunk_size
        if t > expected:
            raise ValueError(
                f"latents has {t} frames but chunk {cache.num_chunks} takes {expected} "
                f"(first chunk {self.config.first_chunk_size}, then {self.config.chunk_size})"
            )
        out, states = self._run(
            latents, timestep, camera, text, text_mask,
            bounds=[(0, t)], causal=True, cache=cache, write_state=write_cache,
        )
        if not write_cache:
            return out, None
        blocks = tuple(self._merge_state(old, new, cache) for old, new in zip(cache.blocks, states, strict=True))
        new_cache = dataclasses.replace(
            cache, blocks=blocks, next_frame=cache.next_frame + t,
            num_chunks=cache.num_chunks + 1, partial=t < expected,
        )
        return out, new_cache

    @staticmethod
    def _merge_state(old: BlockState | None, new: BlockState, cache: StreamCache) -> BlockState:
        """Fold a block's new softmax chunk K/V into its retained sink + window cache (GDN states replace)."""
        if not isinstance(new.attn, SoftmaxChunk):
            return new
        attn = retain_softmax_cache(None if old is None else old.attn, new.attn, cache.num_chunks,
                                    cache.sink_chunks, cache.window_chunks)
        return dataclasses.replace(new, attn=attn)

    # ------------------------------------------------------------------------------------------
    def _check_latents(self, latents: torch.Tensor) -> int:
        cfg = self.config
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[1] != cfg.in_channels:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must have shape (B, {cfg.in_channels}, T, H, W), got {shape}")
        _, ph, pw = cfg.patch_size
        if latents.shape[3] % ph or latents.shape[4] % pw:
            raise ValueError(f"latents H, W must be multiples of the patch size {cfg.patch_size[1:]}")
        if latents.shape[2] < 1:
            raise ValueError("latents must have at least one frame")
        return latents.shape[2]

    def _check_timestep(self, timestep: torch.Tensor, b: int, t: int) -> torch.Tensor:
        if not isinstance(timestep, torch.Tensor):
            raise ValueError(f"timestep must be a tensor of shape ({b}, {t})")
        if timestep.ndim == 3 and timestep.shape[1] == 1:
            timestep = timestep[:, 0]
        if tuple(timestep.shape) != (b, t):
            raise ValueError(
                f"timestep must have shape (B, T) = ({b}, {t}) (one per latent frame), got {tuple(timestep.shape)}"
            )
        if not torch.isfinite(timestep).all() or (timestep < 0).any() or (timestep > 1000).any():
            raise ValueError("timestep values must be finite and in [0, 1000]")
        return timestep

    def _geometry(self, camera, b: int, t: int, latent_hw) -> torch.Tensor:
        """Embedded geometry-cache render (models with ``geometry_channels``): it rides on ``camera.geometry``."""
        cfg = self.config
        g = None if camera is None else camera.geometry
        if g is None or tuple(g.shape) != (b, cfg.geometry_channels, t, *latent_hw):
            got = "none" if g is None else tuple(g.shape)
            raise ValueError(f"this model reads the geometry cache: camera.geometry must have shape "
                             f"({b}, {cfg.geometry_channels}, {t}, {latent_hw[0]}, {latent_hw[1]}) "
                             f"(world_model.geometry.geometry_inputs), got {got}")
        return self.geometry_embedder(g.to(self.dtype))

    def _camera_context(self, camera, b: int, t: int, grid_hw, rope: torch.Tensor):
        if camera is None:
            return None, None
        cfg = self.config
        cond, pl = camera.conditions, camera.plucker
        if tuple(cond.shape) != (b, t, 20):
            raise ValueError(f"camera.conditions must have shape ({b}, {t}, 20), got {tuple(cond.shape)}")
        lat_hw = (grid_hw[0] * cfg.patch_size[1], grid_hw[1] * cfg.patch_size[2])
        if tuple(pl.shape) != (b, cfg.plucker_channels, t, *lat_hw):
            raise ValueError(
                f"camera.plucker must have shape ({b}, {cfg.plucker_channels}, {t}, {lat_hw[0]}, {lat_hw[1]}), "
                f"got {tuple(pl.shape)}"
            )
        mats = ucpe_ray_matrices(cond.float(), grid_hw, cfg.patch_size[1:])
        transforms = CameraTransforms(
            P=mats, P_T=mats.transpose(-1, -2), P_inv=se3_inverse(mats),
            freqs=slice_rope_for_camera(rope, cfg.head_dim),
        )
        plucker = self.plucker_embedder(pl).flatten(2, 3).to(self.dtype)
        return transforms, plucker

    def _positional_context(self, camera, b: int, t: int, grid_hw, offset: int, device, *, reuse: bool):
        """RoPE table, UCPE transforms and embedded Plücker map of a call.

        With ``reuse`` (streaming inference) the result is kept for the next call with the same ``camera`` object,
        with the same values, at the same frame offset: the denoising passes and the cache write of one chunk share
        it. The inputs are small (camera conditions, Plücker map, the Plücker embedder's weights): a copy of them
        is kept and compared, so in-place edits are seen.
        """
        key = None
        inputs = [self.plucker_embedder.proj.weight, self.plucker_embedder.proj.bias]
        if camera is not None:
            inputs += [camera.conditions, camera.plucker]
        if reuse:
            key = (b, t, tuple(grid_hw), offset, str(device))
            memo = self.__dict__.get("_context_memo")
            if memo is not None and memo[0] is camera and memo[1] == key and all(
                    torch.equal(v, kept) for v, kept in zip(inputs, memo[3], strict=True)):
                return memo[2]
        cfg = self.config
        rope = rope_freqs(cfg.head_dim, t, *grid_hw, frame_offset=offset, theta=cfg.rope_theta, device=device)
        result = (rope, *self._camera_context(camera, b, t, grid_hw, rope))
        kept = tuple(v.detach().clone() for v in inputs) if reuse else None
        self.__dict__["_context_memo"] = (camera, key, result, kept) if reuse else None
        return result

    def _text(self, text, text_mask, b: int):
        cfg = self.config
        if not cfg.has_text:
            if text is not None:
                raise ValueError("this model has no text cross-attention (caption_channels=0); pass text=None")
            return None, None
        if text is None:  # learned null caption
            text = self.y_embedder.y_embedding[None].expand(b, -1, -1)
            text_mask = None
        if text.ndim == 4 and text.shape[1] == 1:
            text = text[:, 0]
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != cfg.caption_channels:
            raise ValueError(f"text must have shape ({b}, L, {cfg.caption_channels}), got {tuple(text.shape)}")
        if text_mask is not None and tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise ValueError(f"text_mask must have shape {tuple(text.shape[:2])}, got {tuple(text_mask.shape)}")
        return self.attention_y_norm(self.y_embedder(text)), text_mask

    def _run(self, latents, timestep, camera, text, text_mask, *, bounds, causal, cache=None, write_state=False):
        cfg = self.config
        b, _, t, hgt, wid = latents.shape
        grid_hw = (hgt // cfg.patch_size[1], wid // cfg.patch_size[2])
        s = grid_hw[0] * grid_hw[1]
        timestep = self._check_timestep(timestep, b, t)
        offset = 0 if cache is None else cache.next_frame

        x = self.x_embedder(latents)
        if cfg.geometry_channels:
            x = x + self._geometry(camera, b, t, latents.shape[-2:])
        x = x.reshape(b, t, s, cfg.hidden_size)
        t_emb = self.t_embedder(timestep.long().flatten()).reshape(b, t, -1)  # integer timesteps, as upstream
        modulation = self.t_block(t_emb).reshape(b, t, 6, cfg.hidden_size)
        rope, cam, plucker = self._positional_context(camera, b, t, grid_hw, offset, x.device,
                                                      reuse=cache is not None and not torch.is_grad_enabled())
        text, text_mask = self._text(text, text_mask, b)
        ctx = AttentionContext(bounds=bounds, rope=rope, camera=cam, causal=causal, streaming=cache is not None)
        prior = None if cache is None else cache.blocks
        args = (x, modulation, ctx, grid_hw, text, text_mask, plucker, prior, write_state)
        compiled = self._stream_blocks is not None and cache is not None and cache.window_chunks is not None
        begin_chunk = None if cache is None else fast_path("stream_begin_chunk", x)
        if begin_chunk is not None:  # the lean path's per-chunk store (a compiled step reads it unchecked)
            begin_chunk(self.blocks, cache, cam is not None, compiled=compiled)
        if compiled:
            if self._stream_cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            # one graph per pass kind (denoise / cache write) and cache fill level (first chunk, then 1 .. sink +
            # window retained chunks): without room for all of them dynamo falls back to eager at the steady state
            graphs = 2 * (cache.sink_chunks + cache.window_chunks + 2)
            with torch._dynamo.config.patch(recompile_limit=max(torch._dynamo.config.recompile_limit, graphs)):
                x, states = self._stream_blocks(*args)
            if self._stream_cudagraphs and write_state:  # the next replay reuses the graph's output memory
                states = [map_tensors(st, torch.clone) for st in states]
        else:
            x, states = self._block_stack(*args)
        out = self.final_layer(x, t_emb)  # (B, T, S, p*p*C)
        return self._unpatchify(out, t, grid_hw), states

    def _block_stack(self, x, modulation, ctx, grid_hw, text, text_mask, plucker, prior, write_state):
        """All blocks: ``x (B, T, S, C)`` -> ``(x, [BlockState | None per block])`` (the part compile_streaming
        compiles: tensors and call-invariant structure in, tensors out)."""
        states = []
        for i, block in enumerate(self.blocks):
            kwargs = dict(
                text=text, text_mask=text_mask, plucker=plucker,
                state=None if prior is None else prior[i], write_state=write_state,
            )
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x, st = torch.utils.checkpoint.checkpoint(
                    lambda x_, blk=block, kw=kwargs: blk(x_, modulation, ctx, grid_hw, **kw), x, use_reentrant=False
                )
            else:
                x, st = block(x, modulation, ctx, grid_hw, **kwargs)
            states.append(st)
        return x, states

    def _unpatchify(self, x: torch.Tensor, t: int, grid_hw) -> torch.Tensor:
        cfg = self.config
        _, ph, pw = cfg.patch_size
        h, w = grid_hw
        b = x.shape[0]
        x = x.reshape(b, t, h, w, ph, pw, cfg.in_channels)
        return x.permute(0, 6, 1, 2, 4, 3, 5).reshape(b, cfg.in_channels, t, h * ph, w * pw)

    def regridded(self, config: ModelConfig) -> SanaWMTransformer:
        """The same weights on ``config``, which may differ from this model's only in its chunk grid
        (:data:`GRID_FIELDS`; e.g. ``self.config.with_chunk_size(1)``). Returns ``self`` when nothing changes."""
        grid = {k: getattr(config, k) for k in GRID_FIELDS}
        if self.config.replace(**grid) != config:
            raise ValueError(f"config differs from this model's in more than the chunk grid {GRID_FIELDS}")
        if config == self.config:
            return self
        model = SanaWMTransformer(config).to(device=self.device, dtype=self.dtype)
        model.load_state_dict(self.state_dict())
        return model.train(self.training)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
