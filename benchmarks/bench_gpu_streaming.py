"""Benchmarks of the GPU fast path at the official size: sana-wm-1.6b, 704x1280, bf16, random weights.

    python benchmarks/bench_gpu_streaming.py --json gpu_streaming.json              # every case, one H100/H200
    python benchmarks/bench_gpu_streaming.py --cases stream clip60 --json a.json    # a subset
    python benchmarks/bench_gpu_streaming.py --smoke                                # tiny config on CPU, same code

Shapes: 704x1280 video = 22x40 latent tokens of 128 channels (LTX-2 VAE), 16 fps, 8 video frames per latent frame.
A streaming chunk is 3 latent frames = 24 video frames = 1.5 s of video, run as 4 denoising passes + 1
cache-writing pass (the distilled recipe); the first chunk has 4 latent frames (clean image latent + 3).

Cases (``--cases``):
  stream     ms per chunk and real-time factor in steady state (cache full): Stage-1 alone, LTX-2 VAE decode
             alone, and the StreamingGenerator with decode (random-weight AutoencoderKLLTX2Video, default config).
  clip60     wall time of a whole 60 s clip (121 latent frames, 40 chunks): Stage-1 alone and the generator
             with decode (frames stay on the GPU).
  memory     peak GPU memory vs video length (--lengths, seconds) for streaming, chunk-causal and bidirectional,
             for the hybrid model and an all-softmax variant (every block softmax); OOM is caught and recorded.
             Streaming runs 1 denoising + 1 cache pass per chunk (passes are sequential: 4 would peak the same).
  compare    one bidirectional forward at --compare-seconds through this package (fast paths), through its
             PyTorch reference ops (SANA_WM_REFERENCE_OPS=1) and through diffusers' SanaWMTransformer3DModel.
  quant      Stage-1 streaming ms per chunk per precision: bf16, fp8 (ModelOpt fake-quant), fp8-compressed (FP8
             weights + real FP8 GEMMs on SM >= 8.9), nvfp4 (simulated; real FP4 needs Blackwell).
  compile    Stage-1 streaming with torch.compile off / on (--compile-modes), warm-up (compile) time included.
  attention  SDPA at head dim 112: plain vs padded to 128 (the softmax_attention fast path).

Times are CUDA-event medians over timed iterations after warm-up (perf_counter on CPU); peak memory is
torch.cuda.max_memory_allocated, reset before every measurement ("extra" = peak minus what was allocated before,
i.e. without resident weights). The JSON records the GPU, versions and the exact command. Random weights: speed
does not depend on their values, output quality means nothing here.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from world_model.camera import CameraInputs
from world_model.config import ModelConfig, get_config
from world_model.ops.attention import sdpa_padded_head_dim
from world_model.sampling import distilled_sigmas, euler_step
from world_model.transformer import SanaWMTransformer

CASES = ("stream", "clip60", "memory", "compare", "quant", "compile", "attention")
QUANT_MODES = ("bf16", "fp8", "fp8-compressed", "nvfp4")
TARGETS = {
    "stream_rtf": "streaming Stage-1 >= 4x real time (a 1.5 s chunk in <= 375 ms)",
    "clip60_seconds": "60 s clip (Stage-1) in <= 15 s",
    "stream_peak_60s_gb": "60 s streaming peak memory <= 24 GB",
    "stream_peak_growth": "60 s streaming peak within 10 % of the 10 s figure",
}


@dataclass
class Setup:
    """Everything a case needs to know about the run."""

    config: ModelConfig
    config_name: str
    device: torch.device
    dtype: torch.dtype
    latent_hw: tuple[int, int]
    image_hw: tuple[int, int]
    fps: float
    vae_kwargs: dict[str, Any]
    warmup_chunks: int
    timed_chunks: int
    clip_seconds: float
    lengths_s: tuple[float, ...]
    compare_seconds: tuple[float, ...]
    compile_backend: str
    compile_modes: tuple[str, ...]
    quant_modes: tuple[str, ...]
    repeats: int
    smoke: bool
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def latent_frames(self, seconds: float) -> int:
        """Latent frames of a clip of ``seconds`` (video frames 1 + fps * s, temporal stride of the config)."""
        stride = self.config.temporal_stride
        return int(round(self.fps * seconds)) // stride + 1

    @property
    def chunk_seconds(self) -> float:
        return self.config.chunk_size * self.config.temporal_stride / self.fps


# ------------------------------------------------------------------------------------------------ measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``(fn(), seconds)``: CUDA events on GPU, perf_counter on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return out, start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def reset_memory(device: torch.device) -> float | None:
    """Free cached memory, reset the peak counter; returns the GB allocated now (None on CPU)."""
    gc.collect()
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device) / 2**30


def memory_fields(device: torch.device, base_gb: float | None) -> dict[str, float | None]:
    if device.type != "cuda":
        return {"peak_gb": None, "extra_gb": None}
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    return {"peak_gb": round(peak, 3), "extra_gb": round(peak - (base_gb or 0.0), 3)}


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def median_ms(seconds: Sequence[float]) -> float:
    return round(statistics.median(seconds) * 1000.0, 3)


@contextlib.contextmanager
def reference_ops(on: bool):
    """Force the plain-PyTorch reference of every op (SANA_WM_REFERENCE_OPS=1) inside the block."""
    old = os.environ.get("SANA_WM_REFERENCE_OPS")
    if on:
        os.environ["SANA_WM_REFERENCE_OPS"] = "1"
    else:
        os.environ.pop("SANA_WM_REFERENCE_OPS", None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SANA_WM_REFERENCE_OPS", None)
        else:
            os.environ["SANA_WM_REFERENCE_OPS"] = old


@contextlib.contextmanager
def quiet():
    """Silence ModelOpt's per-module "No real-quant GEMM found" warnings (the quant rows record it once)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RealQuantLinear: No real-quant GEMM found")
        yield


# ------------------------------------------------------------------------------------------------ inputs
def build_model(setup: Setup, config: ModelConfig | None = None) -> SanaWMTransformer:
    """A random-weight transformer built directly on the device (fast init for 2.66B parameters).

    Weight matrices that the architecture zero-initialises (camera residual, output gate, ...) get small random
    values too, as in a trained model: an all-zero weight is a degenerate case for quantizers."""
    torch.manual_seed(0)
    with torch.device(setup.device):
        model = SanaWMTransformer(config or setup.config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2 and not p.any():
                p.normal_(0.0, 0.02)
    return model.to(setup.dtype).eval()


def camera_inputs(setup: Setup, t: int, frame0: int, gen: torch.Generator, config: ModelConfig | None = None
                  ) -> CameraInputs:
    """A forward-moving camera (latent-scale intrinsics) and a random Plücker map for ``t`` latent frames."""
    cfg = config or setup.config
    h, w = setup.latent_hw
    cond = torch.zeros(1, t, 20)
    for i in range(t):
        pose = torch.eye(4)
        pose[2, 3] = 0.05 * (frame0 + i)
        cond[0, i, :16] = pose.flatten()
    cond[:, :, 16:] = torch.tensor([0.8 * w, 0.8 * w, w / 2, h / 2])
    plucker = torch.randn(1, cfg.plucker_channels, t, h, w, generator=gen) * 0.1
    return CameraInputs(cond.to(setup.device), plucker.to(setup.device))


def text_inputs(setup: Setup, config: ModelConfig | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Random caption features of the full text length (300 tokens for the release model), all valid."""
    cfg = config or setup.config
    if not cfg.has_text:
        return None, None
    gen = torch.Generator().manual_seed(7)
    text = torch.randn(1, cfg.text_max_length, cfg.caption_channels, generator=gen).to(setup.device, setup.dtype)
    return text, torch.ones(1, cfg.text_max_length, dtype=torch.bool, device=setup.device)


def chunk_lengths(cfg: ModelConfig, latent_frames: int) -> list[int]:
    return [c1 - c0 for c0, c1 in cfg.chunk_bounds(latent_frames)]


# ------------------------------------------------------------------------------------------------ stage 1
def stage1_stream(model: SanaWMTransformer, setup: Setup, lengths: Sequence[int], *, steps: int = 4,
                  seed: int = 0) -> tuple[list[float], torch.Tensor, Any]:
    """Stream chunks of ``lengths`` latent frames (``steps`` Euler passes + 1 cache pass each), as the streaming
    generator does. Returns (seconds per chunk, the last chunk's latents, the final cache)."""
    cfg = model.config
    text, text_mask = text_inputs(setup, cfg)
    sig = distilled_sigmas().tolist()
    sig = sig[:steps] + [0.0] if steps < len(sig) - 1 else sig
    gen = torch.Generator().manual_seed(seed)
    cache, frame, seconds, x = model.new_cache(), 0, [], None
    h, w = setup.latent_hw
    for t in lengths:
        x = (torch.randn(1, cfg.in_channels, t, h, w, generator=gen)).to(setup.device, setup.dtype)
        cam = camera_inputs(setup, t, frame, gen, cfg)

        def chunk(x=x, cam=cam, t=t):
            nonlocal cache
            for i in range(len(sig) - 1):
                ts = torch.full((1, t), sig[i] * 1000.0, device=setup.device)
                v, _ = model.forward_stream(x, ts, cache=cache, camera=cam, text=text, text_mask=text_mask)
                x = euler_step(x, v.to(setup.dtype), sig[i], sig[i + 1])
            _, cache = model.forward_stream(x, torch.zeros(1, t, device=setup.device), cache=cache, camera=cam,
                                            text=text, text_mask=text_mask, write_cache=True)
            return x

        with torch.no_grad():
            x, secs = timed(chunk, setup.device)
        seconds.append(secs)
        frame += t
    return seconds, x, cache


def steady_lengths(setup: Setup, warmup: int | None = None) -> list[int]:
    cfg = setup.config
    warmup = setup.warmup_chunks if warmup is None else warmup
    return [cfg.first_chunk_size] + [cfg.chunk_size] * (warmup + setup.timed_chunks - 1)


def stage1_row(setup: Setup, model: SanaWMTransformer, variant: str, *, warmup: int | None = None, **extra
               ) -> tuple[dict[str, Any], torch.Tensor]:
    """Steady-state Stage-1 streaming: median ms per chunk over the timed chunks after the warm-up chunks."""
    warmup = setup.warmup_chunks if warmup is None else warmup
    base = reset_memory(setup.device)
    seconds, x, cache = stage1_stream(model, setup, steady_lengths(setup, warmup))
    ms = median_ms(seconds[warmup:])
    return {
        "case": extra.pop("case", "stream"), "variant": variant, "ms_per_chunk": ms,
        "rtf": round(setup.chunk_seconds / (ms / 1000.0), 3), "warmup_s": round(sum(seconds[:warmup]), 3),
        "chunk_ms": [round(s * 1000, 2) for s in seconds], "cache_mb": round(cache.nbytes() / 2**20, 2),
        **memory_fields(setup.device, base), **extra,
    }, x


# ------------------------------------------------------------------------------------------------ VAE / generator
def build_codec(setup: Setup):
    from diffusers import AutoencoderKLLTX2Video

    from world_model.codecs import LTX2Codec

    torch.manual_seed(0)
    with torch.device(setup.device):
        vae = AutoencoderKLLTX2Video(**setup.vae_kwargs)
    return LTX2Codec(vae, dtype=setup.dtype)


def build_generator(setup: Setup, model: SanaWMTransformer, codec):
    from world_model.generators import StreamingGenerator

    return StreamingGenerator(model, codec)


def forward_poses(n: int, start: int) -> torch.Tensor:
    poses = torch.eye(4).repeat(1, n, 1, 1)
    poses[:, :, 2, 3] = torch.arange(start, start + n).float() * 0.02
    return poses


def run_generator(setup: Setup, gen, num_chunks: int) -> tuple[float, list[float]]:
    """Start from a random image and step ``num_chunks`` chunks; (start seconds, seconds per step)."""
    hgt, wid = setup.image_hw
    image = (torch.rand(1, 3, hgt, wid, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(setup.device)
    k = torch.tensor([0.8 * wid, 0.8 * wid, wid / 2, hgt / 2])
    text, _ = text_inputs(setup, gen.transformer.config)
    state, start_s = timed(lambda: gen.start(image, k, text=text, seed=0), setup.device)
    done, steps = 1, []
    for _ in range(num_chunks):
        n = gen.frames_per_step(state)
        (_, state), secs = timed(lambda n=n, done=done, state=state: gen.step(state, forward_poses(n, done)),
                                 setup.device)
        steps.append(secs)
        done += n
    return start_s, steps


# ------------------------------------------------------------------------------------------------ cases
def case_stream(setup: Setup) -> None:
    model = build_model(setup)
    row, _ = stage1_row(setup, model, "stage1")
    setup.rows.append(row)
    codec = build_codec(setup)
    cfg = setup.config
    h, w = setup.latent_hw
    base = reset_memory(setup.device)
    state, seconds = codec.decode_stream_start(), []
    with torch.no_grad():
        for t in steady_lengths(setup):
            z = torch.randn(1, cfg.in_channels, t, h, w, device=setup.device)
            (_, state), secs = timed(lambda z=z, state=state: codec.decode_chunk(z, state), setup.device)
            seconds.append(secs)
    ms = median_ms(seconds[setup.warmup_chunks:])
    setup.rows.append({"case": "stream", "variant": "vae_decode", "ms_per_chunk": ms,
                       "rtf": round(setup.chunk_seconds / (ms / 1000.0), 3),
                       "chunk_ms": [round(s * 1000, 2) for s in seconds], **memory_fields(setup.device, base)})
    gen = build_generator(setup, model, codec)
    base = reset_memory(setup.device)
    start_s, steps = run_generator(setup, gen, setup.warmup_chunks + setup.timed_chunks)
    ms = median_ms(steps[setup.warmup_chunks:])
    setup.rows.append({"case": "stream", "variant": "generator+decode", "ms_per_chunk": ms,
                       "rtf": round(setup.chunk_seconds / (ms / 1000.0), 3), "start_ms": round(start_s * 1000, 2),
                       "chunk_ms": [round(s * 1000, 2) for s in steps], **memory_fields(setup.device, base)})


def case_clip60(setup: Setup) -> None:
    model = build_model(setup)
    cfg = setup.config
    frames = setup.latent_frames(setup.clip_seconds)
    lengths = chunk_lengths(cfg, frames)
    stage1_stream(model, setup, lengths[: min(3, len(lengths))])  # warm-up (allocator, cuDNN/cuBLAS heuristics)
    base = reset_memory(setup.device)
    (seconds, _, cache), total = timed(lambda: stage1_stream(model, setup, lengths), setup.device)
    setup.rows.append({"case": "clip60", "variant": "stage1", "video_s": setup.clip_seconds, "latent_frames": frames,
                       "chunks": len(lengths), "seconds": round(total, 3), "rtf": round(setup.clip_seconds / total, 3),
                       "cache_mb": round(cache.nbytes() / 2**20, 2), **memory_fields(setup.device, base)})
    gen = build_generator(setup, model, build_codec(setup))
    run_generator(setup, gen, min(3, len(lengths)))  # warm-up
    base = reset_memory(setup.device)
    (start_s, steps), total = timed(lambda: run_generator(setup, gen, len(lengths)), setup.device)
    setup.rows.append({"case": "clip60", "variant": "generator+decode", "video_s": setup.clip_seconds,
                       "latent_frames": frames, "chunks": len(lengths), "seconds": round(total, 3),
                       "rtf": round(setup.clip_seconds / total, 3), "start_ms": round(start_s * 1000, 2),
                       **memory_fields(setup.device, base)})


def case_memory(setup: Setup) -> None:
    variants = (("hybrid", setup.config), ("all-softmax", setup.config.replace(softmax_every_n=1)))
    for name, cfg in variants:
        model = build_model(setup, cfg)
        weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
        for mode in ("streaming", "chunk_causal", "bidirectional"):
            failed = False
            for secs in setup.lengths_s:
                frames = setup.latent_frames(secs)
                row = {"case": "memory", "variant": name, "mode": mode, "video_s": secs, "latent_frames": frames,
                       "weights_gb": round(weights_gb, 3)}
                if failed:
                    setup.rows.append({**row, "result": "skipped (OOM at a shorter length)"})
                    continue
                base = reset_memory(setup.device)
                try:
                    if mode == "streaming":
                        (_, _, cache), secs_run = timed(
                            functools.partial(stage1_stream, model, setup, chunk_lengths(cfg, frames), steps=1),
                            setup.device)
                        row["cache_mb"] = round(cache.nbytes() / 2**20, 2)
                        del cache  # else it is still allocated when the next length's baseline is taken
                        row["passes_per_chunk"] = 2
                    else:
                        gen = torch.Generator().manual_seed(0)
                        h, w = setup.latent_hw
                        x = torch.randn(1, cfg.in_channels, frames, h, w, generator=gen).to(setup.device, setup.dtype)
                        cam = camera_inputs(setup, frames, 0, gen, cfg)
                        text, text_mask = text_inputs(setup, cfg)
                        ts = torch.full((1, frames), 500.0, device=setup.device)
                        with torch.no_grad():
                            _, secs_run = timed(functools.partial(model, x, ts, camera=cam, text=text,
                                                                  text_mask=text_mask, mode=mode), setup.device)
                    row.update(result="ok", seconds=round(secs_run, 3), **memory_fields(setup.device, base))
                except RuntimeError as err:
                    if not is_oom(err):
                        raise
                    failed = True
                    row.update(result="OOM", error=str(err).splitlines()[0][:200])
                setup.rows.append(row)
        del model
        reset_memory(setup.device)


def case_compare(setup: Setup) -> None:
    from diffusers import SanaWMTransformer3DModel

    from world_model.checkpoints import diffusers_kwargs_from_model_config

    cfg = setup.config
    model = build_model(setup)
    torch.manual_seed(0)
    with torch.device(setup.device):
        theirs = SanaWMTransformer3DModel(**diffusers_kwargs_from_model_config(cfg))
    theirs = theirs.to(setup.dtype).eval()
    for secs in setup.compare_seconds:
        frames = setup.latent_frames(secs)
        gen = torch.Generator().manual_seed(0)
        h, w = setup.latent_hw
        x = torch.randn(1, cfg.in_channels, frames, h, w, generator=gen).to(setup.device, setup.dtype)
        cam = camera_inputs(setup, frames, 0, gen, cfg)
        text, text_mask = text_inputs(setup, cfg)
        ts = torch.full((1, frames), 500.0, device=setup.device)
        ours = functools.partial(model, x, ts, camera=cam, text=text, text_mask=text_mask, mode="bidirectional")
        runs = {
            "ours": ours,
            "ours_reference_ops": ours,  # run under SANA_WM_REFERENCE_OPS=1
            "diffusers": functools.partial(theirs, x, ts[:, None], text[:, None],
                                           encoder_attention_mask=text_mask.float(),
                                           camera_conditions=cam.conditions.float(),  # geometry in fp32, as ours
                                           chunk_plucker=cam.plucker),
        }
        results = {}
        for name, fn in runs.items():
            row = {"case": "compare", "variant": name, "video_s": secs, "latent_frames": frames,
                   "tokens": frames * h * w}
            try:
                with reference_ops(name == "ours_reference_ops"), torch.no_grad(), quiet():
                    timed(fn, setup.device)  # warm-up
                    base = reset_memory(setup.device)
                    seconds = [timed(fn, setup.device)[1] for _ in range(setup.repeats)]
                row.update(result="ok", ms=median_ms(seconds), **memory_fields(setup.device, base))
                results[name] = row
            except Exception as err:  # noqa: BLE001 - OOM or an incompatibility: record it, go on
                row.update(result="OOM" if isinstance(err, RuntimeError) and is_oom(err) else "failed",
                           error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
            setup.rows.append(row)
        if "diffusers" in results:
            for name in ("ours", "ours_reference_ops"):
                if name in results:
                    results[name]["time_vs_diffusers"] = round(results[name]["ms"] / results["diffusers"]["ms"], 3)
        if "ours" in results and "ours_reference_ops" in results:
            results["ours"]["speedup_vs_reference_ops"] = round(
                results["ours_reference_ops"]["ms"] / results["ours"]["ms"], 3)


def case_quant(setup: Setup) -> None:
    from world_model import quantization as Q

    ref_x = None
    for qmode in setup.quant_modes:
        model = build_model(setup)
        row: dict[str, Any] = {"case": "quant", "variant": qmode}
        try:
            if qmode != "bf16":
                lengths = [setup.config.first_chunk_size, setup.config.chunk_size]
                Q.quantize(model, qmode.removesuffix("-compressed"),
                           calibration=lambda m, lengths=lengths: stage1_stream(m, setup, lengths, seed=11))
                if qmode.endswith("-compressed"):
                    Q.compress(model)
                row["quantized_modules"] = len(Q.quantization_summary(model).quantized)
            with quiet():
                row, x = stage1_row(setup, model, qmode, case="quant", **{k: v for k, v in row.items()
                                                                           if k not in ("case", "variant")})
            if qmode.endswith("-compressed"):  # did ModelOpt find a real FP8 GEMM (SM >= 8.9) for the linears?
                impl = getattr(model.blocks[0].attn.qkv, "_real_quant_gemm_impl", None)
                row["real_quant_gemm"] = None if impl is None else getattr(impl, "__name__", str(impl))
            if ref_x is None and qmode == "bf16":
                ref_x = x.float()
            elif ref_x is not None:  # same seeds and inputs: how far the last chunk's latents moved
                row["rel_diff_vs_bf16"] = round(((x.float() - ref_x).norm() / ref_x.norm()).item(), 5)
            row["result"] = "ok"
        except Exception as err:  # noqa: BLE001 - e.g. NVFP4 on CPU, modelopt missing: record, go on
            if isinstance(err, RuntimeError) and is_oom(err):
                row.update(result="OOM")
            else:
                row.update(result="unavailable", error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
        setup.rows.append(row)
        del model
        reset_memory(setup.device)


def case_compile(setup: Setup) -> None:
    ref_x = None
    for cmode in setup.compile_modes:
        model = build_model(setup)
        row: dict[str, Any] = {"case": "compile", "variant": cmode}
        try:
            if cmode != "off":
                model.compile_streaming(cmode, backend=setup.compile_backend)
                row["backend"] = setup.compile_backend
            # chunk 2 is the first fixed-shape chunk (compiles); CUDA graphs record on a graph's second call and
            # the cache pass runs once per chunk, so replay starts at chunk 4. Same count for every mode, so the
            # last chunk's latents are comparable.
            warmup = max(setup.warmup_chunks, 5)
            row, x = stage1_row(setup, model, cmode, case="compile", warmup=warmup,
                                **{k: v for k, v in row.items() if k not in ("case", "variant")})
            if cmode == "off":
                ref_x = x.float()
            elif ref_x is not None:
                row["rel_diff_vs_eager"] = round(((x.float() - ref_x).norm() / ref_x.norm()).item(), 6)
            row["result"] = "ok"
        except Exception as err:  # noqa: BLE001 - a compile failure is a result to record
            row.update(result="failed", error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}",
                       traceback=traceback.format_exc(limit=3)[-1500:])
        setup.rows.append(row)
        del model
        torch._dynamo.reset()
        reset_memory(setup.device)


def case_attention(setup: Setup) -> None:
    cfg = setup.config
    h, w = setup.latent_hw
    s = h * w
    shapes = {
        "streaming chunk": (cfg.chunk_size * s, (cfg.first_chunk_size + 2 * cfg.chunk_size) * s),
        f"bidirectional {setup.compare_seconds[0]:g} s": (setup.latent_frames(setup.compare_seconds[0]) * s,) * 2,
    }
    d = cfg.head_dim
    gen = torch.Generator().manual_seed(0)
    for name, (nq, nk) in shapes.items():
        q = torch.randn(1, cfg.num_heads, nq, d, generator=gen).to(setup.device, setup.dtype)
        k = torch.randn(1, cfg.num_heads, nk, d, generator=gen).to(setup.device, setup.dtype)
        v = torch.randn(1, cfg.num_heads, nk, d, generator=gen).to(setup.device, setup.dtype)
        ref = None
        plain = functools.partial(torch.nn.functional.scaled_dot_product_attention, q, k, v, scale=d**-0.5)
        for variant, fn in (("sdpa", plain), ("sdpa_padded", functools.partial(sdpa_padded_head_dim, q, k, v,
                                                                              scale=d**-0.5))):
            with torch.no_grad():
                out, _ = timed(fn, setup.device)
                seconds = [timed(fn, setup.device)[1] for _ in range(max(3, setup.repeats))]
            row = {"case": "attention", "variant": variant, "shape": name, "q_tokens": nq, "kv_tokens": nk,
                   "head_dim": d, "ms": median_ms(seconds)}
            if ref is None:
                ref = out.float()
            else:
                row["max_abs_diff_vs_sdpa"] = float((out.float() - ref).abs().max())
            setup.rows.append(row)


CASE_FUNCS = {"stream": case_stream, "clip60": case_clip60, "memory": case_memory, "compare": case_compare,
              "quant": case_quant, "compile": case_compile, "attention": case_attention}


# ------------------------------------------------------------------------------------------------ report
def targets(rows: list[dict[str, Any]], setup: Setup) -> dict[str, Any]:
    """The GPU targets that this run's rows measure (only meaningful for the full config on a GPU)."""
    out: dict[str, Any] = {}
    stage1 = next((r for r in rows if r["case"] == "stream" and r["variant"] == "stage1"), None)
    if stage1:
        out["stream_rtf"] = {"value": stage1["rtf"], "met": stage1["rtf"] >= 4.0}
    clip = next((r for r in rows if r["case"] == "clip60" and r["variant"] == "stage1"), None)
    if clip and clip["video_s"] == 60:
        out["clip60_seconds"] = {"value": clip["seconds"], "met": clip["seconds"] <= 15.0}
    mem = {r["video_s"]: r for r in rows if r["case"] == "memory" and r["variant"] == "hybrid"
           and r["mode"] == "streaming" and r.get("result") == "ok" and r.get("peak_gb") is not None}
    if 60 in mem:
        out["stream_peak_60s_gb"] = {"value": mem[60]["peak_gb"], "met": mem[60]["peak_gb"] <= 24.0}
        if 10 in mem:
            growth = mem[60]["peak_gb"] / mem[10]["peak_gb"] - 1
            out["stream_peak_growth"] = {"value": round(growth, 4), "met": growth <= 0.10}
    for key, v in out.items():
        v["target"] = TARGETS[key]
        v["meaningful"] = setup.cuda and not setup.smoke
    return out


def versions() -> dict[str, str | None]:
    def ver(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "nvidia_driver": nvidia_driver(), "triton": ver("triton"), "diffusers": ver("diffusers"),
            "nvidia-modelopt": ver("nvidia-modelopt"), "sana-wm-env": ver("sana-wm-env")}


def nvidia_driver() -> str | None:
    """The NVIDIA driver version as ``nvidia-smi`` reports it (None without a CUDA device or nvidia-smi)."""
    if not torch.cuda.is_available():
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def print_table(rows: list[dict[str, Any]]) -> None:
    keys = ("case", "variant", "mode", "shape", "video_s", "ms_per_chunk", "ms", "rtf", "seconds", "peak_gb",
            "extra_gb", "result")
    cols = [k for k in keys if any(k in r for r in rows)]
    table = [[str(r.get(k, "")) for k in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(wd) for c, wd in zip(cols, widths)))
    for t in table:
        print("  ".join(v.ljust(wd) for v, wd in zip(t, widths)))


def make_setup(args: argparse.Namespace) -> Setup:
    if args.smoke:
        config_name = "tiny-text"  # depth cut to 2 below (one GDN + one softmax block): fast tracing in tests
        vae_kwargs = dict(latent_channels=16, block_out_channels=(8, 16, 32, 32),
                          decoder_block_out_channels=(8, 16, 32), layers_per_block=(1, 1, 1, 1, 1),
                          decoder_layers_per_block=(1, 1, 1, 1), decoder_inject_noise=False, decoder_causal=True)
        defaults = dict(device="cpu", dtype=torch.float32, latent_hw=(2, 2), image_hw=(64, 64), warmup=2, timed=2,
                        clip=3.0, lengths=(2.0, 3.0), compare=(2.0,), backend="eager",
                        compile_modes=("off", "reduce-overhead"), repeats=1)
    else:
        config_name = args.config
        vae_kwargs = {}  # diffusers' default AutoencoderKLLTX2Video: the LTX-2 architecture, causal decoder
        defaults = dict(device="cuda", dtype=torch.bfloat16, latent_hw=(22, 40), image_hw=(704, 1280), warmup=3,
                        timed=8, clip=60.0, lengths=(10.0, 20.0, 30.0, 60.0), compare=(10.0,), backend="inductor",
                        compile_modes=("off", "max-autotune-no-cudagraphs", "reduce-overhead"), repeats=3)
    device = torch.device(args.device or defaults["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or use --smoke (tiny config on CPU)")
    lat = tuple(int(v) for v in args.latent_hw.split("x")) if args.latent_hw else defaults["latent_hw"]
    img = tuple(32 * v for v in lat) if args.latent_hw else defaults["image_hw"]
    config = get_config(config_name)
    if args.smoke:
        config = config.replace(depth=2, plucker_blocks=2, meta={"name": "tiny-text-depth2"})
        config_name = "tiny-text-depth2"
    if args.depth is not None:
        if not 1 <= args.depth <= config.depth:
            raise SystemExit(f"--depth must be between 1 and the preset's {config.depth} blocks, got {args.depth}")
        config_name = f"{config_name}-depth{args.depth}"
        config = config.replace(depth=args.depth, meta={"name": config_name})
    return Setup(
        config=config, config_name=config_name, device=device,
        dtype=getattr(torch, args.dtype) if args.dtype else defaults["dtype"], latent_hw=lat, image_hw=img,
        fps=16.0, vae_kwargs=vae_kwargs, warmup_chunks=args.warmup_chunks or defaults["warmup"],
        timed_chunks=args.timed_chunks or defaults["timed"], clip_seconds=args.clip_seconds or defaults["clip"],
        lengths_s=tuple(args.lengths or defaults["lengths"]), compare_seconds=tuple(args.compare_seconds
                                                                                    or defaults["compare"]),
        compile_backend=args.compile_backend or defaults["backend"],
        compile_modes=tuple(args.compile_modes or defaults["compile_modes"]),
        quant_modes=tuple(args.quant_modes or QUANT_MODES), repeats=args.repeats or defaults["repeats"],
        smoke=args.smoke,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny config on CPU through the same code paths (tests)")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--config", default="sana-wm-1.6b", help="model preset (default: %(default)s)")
    p.add_argument("--depth", type=int, default=None,
                   help="keep only the first N blocks of the preset (e.g. a compile case whose inductor compile time "
                   "grows with depth; times per block scale to the full model)")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"], help="default: bfloat16")
    p.add_argument("--latent-hw", default=None, help="latent grid HxW (default 22x40 = 704x1280 video)")
    p.add_argument("--warmup-chunks", type=int, default=None, help="untimed chunks first (default 3; >= 2 fills "
                   "the sink + window cache; compiled runs use at least 5)")
    p.add_argument("--timed-chunks", type=int, default=None, help="timed steady-state chunks (default 8)")
    p.add_argument("--clip-seconds", type=float, default=None, help="clip length of the clip60 case (default 60)")
    p.add_argument("--lengths", type=float, nargs="+", default=None, help="memory case video lengths in seconds "
                   "(default 10 20 30 60)")
    p.add_argument("--compare-seconds", type=float, nargs="+", default=None, help="compare case lengths (default 10)")
    p.add_argument("--compile-modes", nargs="+", default=None, help="'off' and torch.compile modes "
                   "(default: off max-autotune-no-cudagraphs reduce-overhead)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default inductor; eager with --smoke)")
    p.add_argument("--quant-modes", nargs="+", choices=QUANT_MODES, default=None)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats of single passes (default 3)")
    p.add_argument("--strict", action="store_true", help="stop at the first failing case (default: record it)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 with --smoke)")
    p.add_argument("--json", type=Path, default=None, help="write every row, the targets and the metadata here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    threads = args.threads or (1 if args.smoke else None)  # tiny CPU models run far faster on one thread
    if threads:
        torch.set_num_threads(threads)
    setup = make_setup(args)
    meta = {
        "command": shlex.join(["python", "benchmarks/bench_gpu_streaming.py", *argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "config": setup.config_name,
        "parameters": None, "dtype": str(setup.dtype).removeprefix("torch."), "device": str(setup.device),
        "latent_hw": list(setup.latent_hw), "image_hw": list(setup.image_hw), "fps": setup.fps,
        "chunk_seconds": setup.chunk_seconds, "smoke": setup.smoke, "versions": versions(),
        "machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
    }
    if setup.cuda:
        props = torch.cuda.get_device_properties(setup.device)
        meta.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gb=round(props.total_memory / 2**30, 1))
    with torch.device("meta"):
        meta["parameters"] = SanaWMTransformer(setup.config).num_parameters()

    def result() -> dict[str, Any]:
        return {"format": "sana-wm-env/bench-gpu-streaming", "version": 1, "meta": meta, "rows": setup.rows,
                "targets": targets(setup.rows, setup)}

    def write_json() -> None:  # after every case, so that a run stopped midway keeps what it measured
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result(), indent=2) + "\n")

    interrupted = False
    for case in args.cases:
        t0 = time.perf_counter()
        n = len(setup.rows)
        try:
            CASE_FUNCS[case](setup)
        except KeyboardInterrupt:  # Ctrl-C or `timeout -s INT`: keep what was measured, skip the other cases
            setup.rows.append({"case": case, "variant": "(case)", "result": "interrupted"})
            interrupted = True
        except Exception as err:  # noqa: BLE001 - keep the other cases of a long GPU run
            setup.rows.append({"case": case, "variant": "(case)", "result": "failed",
                               "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}",
                               "traceback": traceback.format_exc(limit=6)[-3000:]})
            if args.strict:
                raise
        for row in setup.rows[n:]:
            row.setdefault("case", case)
        meta.setdefault("case_seconds", {})[case] = round(time.perf_counter() - t0, 1)
        print(f"[{case}] {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        write_json()
        if interrupted:
            break
    final = result()
    print_table(setup.rows)
    for key, v in final["targets"].items():
        note = "" if v["meaningful"] else " (smoke/CPU run: not a measurement of the target)"
        print(f"target {key}: {v['value']} -> {'met' if v['met'] else 'NOT met'}{note}")
    write_json()
    if interrupted:
        raise SystemExit(130)
    return final


if __name__ == "__main__":
    main()
