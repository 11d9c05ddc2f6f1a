"""Transformer throughput: tokens/s of the forward and ms per streaming chunk (4 denoising passes + 1 cache pass).

    python benchmarks/bench_transformer.py --config small-cpu --hw 16x16 --chunks 6 --json out.json
    python benchmarks/bench_transformer.py --config sana-wm-1.6b --hw 22x40 --dtype bfloat16 --device cuda

``--hw`` is the latent (token) grid. Prints one JSON line per measurement; random weights (speed does not
depend on their values). Peak memory is reported on CUDA.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from world_model.camera import CameraInputs
from world_model.config import get_config
from world_model.transformer import SanaWMTransformer


def camera(b: int, t: int, hw: tuple[int, int], stride: int, device, frame0: int = 0) -> CameraInputs:
    cond = torch.zeros(b, t, 20, device=device)
    for i in range(t):
        pose = torch.eye(4)
        pose[2, 3] = 0.05 * (frame0 + i)
        cond[:, i, :16] = pose.flatten().to(device)
    cond[:, :, 16:] = torch.tensor([hw[1] * 0.8, hw[1] * 0.8, hw[1] / 2, hw[0] / 2], device=device)
    return CameraInputs(cond, torch.randn(b, 6 * stride, t, *hw, device=device) * 0.1)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small-cpu")
    p.add_argument("--hw", default="16x16", help="latent grid HxW")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunks", type=int, default=6, help="streaming chunks to time (after one warm-up chunk)")
    p.add_argument("--steps", type=int, default=4, help="denoising passes per chunk (+1 cache pass)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()
    h, w = (int(v) for v in args.hw.split("x"))
    dtype = getattr(torch, args.dtype)
    cfg = get_config(args.config)
    torch.manual_seed(0)
    model = SanaWMTransformer(cfg).eval().to(args.device, dtype)
    results = {
        "config": args.config, "params": model.num_parameters(), "latent_hw": [h, w], "batch": args.batch,
        "dtype": args.dtype, "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name()
        torch.cuda.reset_peak_memory_stats()

    # streaming: first chunk + timed chunks, each = steps denoising passes + 1 cache-writing pass
    cache, per_chunk, frame = model.new_cache(), [], 0
    with torch.no_grad():
        for c in range(args.chunks + 1):
            t = cfg.first_chunk_size if c == 0 else cfg.chunk_size
            x = torch.randn(args.batch, cfg.in_channels, t, h, w, device=args.device, dtype=dtype)
            cam = camera(args.batch, t, (h, w), cfg.temporal_stride, args.device, frame)
            sync(args.device)
            t0 = time.perf_counter()
            for s in range(args.steps):
                ts = torch.full((args.batch, t), 1000.0 * (1 - s / args.steps), device=args.device)
                model.forward_stream(x, ts, cache=cache, camera=cam)
            _, cache = model.forward_stream(x, torch.zeros(args.batch, t, device=args.device), cache=cache,
                                            camera=cam, write_cache=True)
            sync(args.device)
            if c > 0:
                per_chunk.append(time.perf_counter() - t0)
            frame += t
    ms = statistics.median(per_chunk) * 1000
    tokens = args.batch * cfg.chunk_size * h * w
    results.update({
        "ms_per_chunk": round(ms, 2),
        "latent_frames_per_chunk": cfg.chunk_size,
        "passes_per_chunk": args.steps + 1,
        "tokens_per_s": round(tokens * (args.steps + 1) / (ms / 1000), 1),
        "latent_frames_per_s": round(args.batch * cfg.chunk_size / (ms / 1000), 2),
        "cache_mb": round(cache.nbytes() / 2**20, 3),
    })
    if args.device.startswith("cuda"):
        results["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    print(json.dumps(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
