"""Frame-wise GDN ops: plain-PyTorch references vs the Triton kernels (GPU only), at 704x1280 shapes.

    python benchmarks/bench_gdn_kernels.py                        # H100/H200: B=1, H=20, D=112, S=22*40=880
    python benchmarks/bench_gdn_kernels.py --json gdn_kernels.json --precisions ieee tf32 bf16
    python benchmarks/bench_gdn_kernels.py --device cpu --interpret   # tiny smoke run in the Triton interpreter

Cases: the streaming chunk (T=13 frames from a carried state, backward scan inside the chunk, as
``forward_stream`` calls it), the bidirectional clip (T=121), the camera branch's numerator-only scan for
both, the fused feature prep (RMSNorm + heads + ReLU + key scale + RoPE over C = H*D channels) and the short
conv (chunk-causal bounds). Times are CUDA-event medians after warm-up; every Triton result is checked
against the reference first (max abs error / max |reference| printed).

Throughput formulas (stated so the roofline fraction can be read off):

- scan FLOPs = n_dir * B*H*T * 6*S*D*(D+1): per frame and direction the rank-S update takes two (S x D)(D x D)
  products (K S^T and K^T diag(b) R) and the output one more, for the D x D numerator state (6*S*D^2) and the
  1 x D normaliser (6*S*D); n_dir = 2 with a backward scan. The same algorithmic count is used for the
  reference (which does more work), so TFLOP/s compare like for like.
- scan bytes = compulsory HBM traffic: q, k, v, q_rot, k_rot (B*H*T*S*D each) and beta (B*H*T*S) read once in
  the input dtype, the output written once, states (B*H*D*(D+1) fp32) read and written. The kernels re-read
  inputs once per value tile and per direction, so real traffic is higher (mostly served from L2).
- roofline time = max(bytes / peak GB/s, FLOPs / peak TFLOP/s); fraction = roofline time / measured time.
  Defaults are H100 SXM figures: 3350 GB/s HBM3; 67 TFLOP/s fp32 without tensor cores (precision "ieee"),
  495 dense tf32, 989 dense bf16. An H200 has the same compute and 4800 GB/s HBM3e, which is used when the
  device's name says H200 (override either with --peak-gbps / --peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

PEAK_TFLOPS = {"ieee": 67.0, "tf32": 495.0, "bf16": 989.0}
PEAK_GBPS = 3350.0
PEAK_GBPS_BY_GPU = {"H200": 4800.0, "H100": 3350.0}  # datasheet HBM bandwidth, matched in the device name


@dataclass
class Shape:
    batch: int
    heads: int
    head_dim: int
    tokens: int  # S per frame
    grid_hw: tuple[int, int]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (only with --interpret)")
    p.add_argument("--interpret", action="store_true",
                   help="run the kernels in the Triton interpreter at tiny shapes (CPU smoke test; no speed meaning)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=20)
    p.add_argument("--head-dim", type=int, default=112)
    p.add_argument("--hw", default="22x40", help="latent token grid per frame, HxW (S = H*W)")
    p.add_argument("--stream-frames", type=int, default=13, help="frames of the streaming-chunk case")
    p.add_argument("--bidir-frames", type=int, default=121, help="frames of the bidirectional case")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="input dtype")
    p.add_argument("--precisions", nargs="+", default=["ieee", "tf32"], choices=sorted(PEAK_TFLOPS),
                   help="tl.dot precisions of the scan kernels to time")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--skip-reference", action="store_true", help="time only the kernels (no reference timings)")
    p.add_argument("--peak-gbps", type=float, default=None,
                   help=f"HBM bandwidth for the roofline (default: by GPU name, else {PEAK_GBPS:g})")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak for every precision (default: per precision, H100 SXM figures)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    if args.interpret:
        args.device = "cpu"
        args.heads, args.head_dim, args.hw, args.stream_frames, args.bidir_frames = 2, 16, "4x5", 5, 7
        args.warmup, args.repeats = 0, 1
    return args


class Timer:
    """Median wall time of a callable: CUDA events on a GPU, perf_counter otherwise."""

    def __init__(self, device: str, warmup: int, repeats: int) -> None:
        self.cuda = device.startswith("cuda")
        self.warmup, self.repeats = warmup, repeats

    def __call__(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


def scan_inputs(shape: Shape, frames: int, dtype: torch.dtype, device: str, seed: int = 0) -> list[torch.Tensor]:
    """Inputs in the ranges the model produces (post-ReLU q/k, keys at the (D*S)^-1/2 scale, beta, decay)."""
    g = torch.Generator(device=device).manual_seed(seed)
    b, h, d, s = shape.batch, shape.heads, shape.head_dim, shape.tokens
    size = (b, h, frames, s, d)
    key_scale = (d * s) ** -0.5
    q = torch.rand(size, generator=g, device=device)
    k = torch.rand(size, generator=g, device=device) * key_scale
    v = torch.randn(size, generator=g, device=device)
    q_rot = torch.randn(size, generator=g, device=device)
    k_rot = torch.randn(size, generator=g, device=device) * key_scale
    beta = torch.sigmoid(torch.randn(b, h, frames, s, generator=g, device=device) + 4)
    decay = 0.95 + 0.05 * torch.rand(b, h, frames, generator=g, device=device)
    return [x.to(dtype) for x in (q, k, v, q_rot, k_rot)] + [beta.to(dtype), decay]


def scan_cost(shape: Shape, frames: int, dtype: torch.dtype, directions: int, normaliser: bool) -> tuple[float, float]:
    """``(FLOPs, compulsory bytes)`` of one scan op (see the module docstring)."""
    b, h, d, s = shape.batch, shape.heads, shape.head_dim, shape.tokens
    elt = torch.finfo(dtype).bits // 8
    rows = d + 1 if normaliser else d
    flops = directions * b * h * frames * 6 * s * d * rows
    n_in = 5 if normaliser else 3
    tokens = b * h * frames * s
    bytes_ = tokens * d * elt * (n_in + 1) + tokens * elt + 2 * b * h * d * rows * 4
    return float(flops), float(bytes_)


def rate(flops: float, bytes_: float, seconds: float, peak_tflops: float, peak_gbps: float) -> dict:
    roof = max(bytes_ / (peak_gbps * 1e9), flops / (peak_tflops * 1e12))
    return {
        "ms": seconds * 1e3, "tflops": flops / seconds / 1e12, "gbps": bytes_ / seconds / 1e9,
        "roofline_ms": roof * 1e3, "roofline_fraction": roof / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.interpret:
        if "triton" in sys.modules:
            print("--interpret must be set before triton is imported", file=sys.stderr)
            return 2
        os.environ["TRITON_INTERPRET"] = "1"  # before world_model (which imports triton via torch._dynamo)
    elif not (args.device.startswith("cuda") and torch.cuda.is_available()):
        print("bench_gdn_kernels.py times GPU kernels and needs a CUDA device (none found). "
              "For a CPU smoke run of the code path use: --device cpu --interpret", file=sys.stderr)
        return 2

    from world_model.ops import TRITON_AVAILABLE, frame_delta_numerator, frame_gdn, gdn_features, short_conv

    if not TRITON_AVAILABLE:
        print('triton is not installed (pip install -e ".[kernels]")', file=sys.stderr)
        return 2
    from world_model.layers.positional import rope_freqs
    from world_model.ops import triton_conv, triton_gdn

    dtype = getattr(torch, args.dtype)
    device = args.device
    hh, ww = (int(x) for x in args.hw.split("x"))
    shape = Shape(args.batch, args.heads, args.head_dim, hh * ww, (hh, ww))
    timer = Timer(device, args.warmup, args.repeats)
    if args.peak_gbps is None:
        name = torch.cuda.get_device_name() if device.startswith("cuda") else ""
        args.peak_gbps = next((v for k, v in PEAK_GBPS_BY_GPU.items() if k in name), PEAK_GBPS)
    results: dict = {
        "shape": {"batch": shape.batch, "heads": shape.heads, "head_dim": shape.head_dim, "tokens": shape.tokens,
                  "grid_hw": list(shape.grid_hw), "stream_frames": args.stream_frames,
                  "bidir_frames": args.bidir_frames},
        "dtype": args.dtype, "device": device, "interpret": args.interpret, "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": " ".join(["python", "benchmarks/bench_gdn_kernels.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": platform.processor() or platform.machine(), "peak_gbps": args.peak_gbps, "cases": [],
    }
    if device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name()
    import triton

    results["triton"] = triton.__version__

    def record(case: str, impl: str, seconds: float, flops: float, bytes_: float, precision: str, err: float | None):
        peak = args.peak_tflops or PEAK_TFLOPS[precision]
        row = {"case": case, "impl": impl, "precision": precision, "max_rel_err": err,
               **rate(flops, bytes_, seconds, peak, args.peak_gbps), "peak_tflops": peak}
        results["cases"].append(row)
        if args.json:  # rewritten after every row: a run stopped midway keeps what it measured
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        err_s = "" if err is None else f"{err:9.2e}"
        print(f"{case:<26} {impl:<18} {row['ms']:9.3f} {row['gbps']:9.1f} {row['tflops']:8.2f} "
              f"{row['roofline_fraction']:8.1%} {err_s}", flush=True)

    print(f"{'case':<26} {'impl':<18} {'ms':>9} {'GB/s':>9} {'TFLOP/s':>8} {'roofline':>8} {'rel err':>9}")
    def bench_scans(case: str, frames: int, bounds: list[tuple[int, int]], carried: bool) -> None:
        q, k, v, q_rot, k_rot, beta, decay = scan_inputs(shape, frames, dtype, device)
        d = shape.head_dim
        state = None
        if carried:
            g = torch.Generator(device=device).manual_seed(1)
            state = (torch.randn(shape.batch, shape.heads, d, d, generator=g, device=device) * 0.01,
                     torch.rand(shape.batch, shape.heads, 1, d, generator=g, device=device))

        def ref_gdn():
            return _reference(frame_gdn, q, k, v, q_rot, k_rot, beta, decay, bounds=bounds, state=state)

        flops, bytes_ = scan_cost(shape, frames, dtype, 2, normaliser=True)
        ref = ref_gdn()[0]
        if not args.skip_reference:
            record(f"frame_gdn/{case}", "reference", timer(ref_gdn), flops, bytes_, "ieee", None)
        for prec in args.precisions:
            def run(prec=prec):
                return triton_gdn.triton_frame_gdn(q, k, v, q_rot, k_rot, beta, decay, bounds=bounds, state=state,
                                                   precision=prec)
            err = _rel_err(run()[0], ref)
            record(f"frame_gdn/{case}", f"triton/{prec}", timer(run), flops, bytes_, prec, err)

        cam_state = None if state is None else state[0]

        def ref_num():
            return _reference(frame_delta_numerator, q_rot, k_rot, v, beta, decay, bounds=bounds, state=cam_state)

        flops, bytes_ = scan_cost(shape, frames, dtype, 2, normaliser=False)
        ref = ref_num()[0]
        if not args.skip_reference:
            record(f"numerator/{case}", "reference", timer(ref_num), flops, bytes_, "ieee", None)
        for prec in args.precisions:
            def run_num(prec=prec):
                return triton_gdn.triton_frame_delta_numerator(q_rot, k_rot, v, beta, decay, bounds=bounds,
                                                               state=cam_state, precision=prec)
            err = _rel_err(run_num()[0], ref)
            record(f"numerator/{case}", f"triton/{prec}", timer(run_num), flops, bytes_, prec, err)

    with torch.no_grad():
        bench_scans("stream_chunk", args.stream_frames, [(0, args.stream_frames)], carried=True)
        bench_scans("bidirectional", args.bidir_frames, [(0, args.bidir_frames)], carried=False)

        # feature prep and short conv at the streaming-chunk size: memory-bound elementwise work
        frames = args.stream_frames
        c = shape.heads * shape.head_dim
        g = torch.Generator(device=device).manual_seed(2)
        qkv = torch.randn(shape.batch, frames, shape.tokens, 3 * c, generator=g, device=device).to(dtype)
        qx, kx = qkv[..., :c], qkv[..., c : 2 * c]
        qw, kw = (1 + 0.1 * torch.randn(c, generator=g, device=device)).to(dtype), torch.ones(c, device=device,
                                                                                               dtype=dtype)
        rope = rope_freqs(shape.head_dim, frames, hh, ww, device=device)
        kwargs = dict(num_heads=shape.heads, key_scale=(shape.head_dim * shape.tokens) ** -0.5, eps=1e-5, rope=rope)
        elt = torch.finfo(dtype).bits // 8
        n = shape.batch * frames * shape.tokens * c
        feat_bytes = float(n * elt * 6 + rope.numel() * 8)  # q, k read; q, k, q_rot, k_rot written; the table
        feat_flops = float(n * 2 * 12)  # ~12 flops per element (norm, relu, scale, rotation) for q and k
        ref = _reference(gdn_features, qx, kx, qw, kw, **kwargs)
        if not args.skip_reference:
            record("gdn_features", "reference", timer(lambda: _reference(gdn_features, qx, kx, qw, kw, **kwargs)),
                   feat_flops, feat_bytes, "ieee", None)
        out = triton_gdn.triton_gdn_features(qx, kx, qw, kw, **kwargs)
        err = max(_rel_err(a, b) for a, b in zip(out, ref))
        record("gdn_features", "triton", timer(lambda: triton_gdn.triton_gdn_features(qx, kx, qw, kw, **kwargs)),
               feat_flops, feat_bytes, "ieee", err)

        x = kx.contiguous()
        w = torch.randn(c, 1, 4, generator=g, device=device).to(dtype)
        bounds = [(i, min(i + 3, frames)) for i in range(0, frames, 3)]
        conv_bytes, conv_flops = float(2 * n * elt), float(n * 2 * 7)
        ref, _ = _reference(short_conv, x, w, bounds=bounds)
        if not args.skip_reference:
            record("short_conv", "reference", timer(lambda: _reference(short_conv, x, w, bounds=bounds)),
                   conv_flops, conv_bytes, "ieee", None)
        err = _rel_err(triton_conv.triton_short_conv(x, w, bounds=bounds)[0], ref)
        record("short_conv", "triton", timer(lambda: triton_conv.triton_short_conv(x, w, bounds=bounds)),
               conv_flops, conv_bytes, "ieee", err)

    if device.startswith("cuda"):
        results["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference relative to the largest reference magnitude."""
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30)).item()


def _reference(op: Callable, *args, **kwargs):
    """Call an op with its fast paths switched off (``SANA_WM_REFERENCE_OPS=1``)."""
    old = os.environ.get("SANA_WM_REFERENCE_OPS")
    os.environ["SANA_WM_REFERENCE_OPS"] = "1"
    try:
        return op(*args, **kwargs)
    finally:
        if old is None:
            del os.environ["SANA_WM_REFERENCE_OPS"]
        else:
            os.environ["SANA_WM_REFERENCE_OPS"] = old


if __name__ == "__main__":
    sys.exit(main())
