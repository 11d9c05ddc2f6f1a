"""Env throughput: N sub-envs in one batched vector env vs N separate envs (aggregate sub-env steps/s).

    python benchmarks/bench_envs.py --preset small-cpu --size 64x64 --num-envs 1 4 8 16 --steps 8 --threads 2

The world model is an untrained preset of the given size (the timing does not depend on the weights) unless
``--model`` names a bundle. Both sides run the same sub-env steps; separate envs step one after another. The two
sides alternate step by step and report medians, so a noisy machine skews them alike.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
import torch

import sana_wm_env  # noqa: F401


def bench(model, n: int, steps: int, warmup: int = 2) -> dict:
    """Aggregate sub-env steps/s of one batched vector env and of ``n`` separate envs over the same actions.

    The two sides alternate round by round (one batched step, then one step of every separate env), so that the
    machine's drift over the run hits both alike; the figures are medians over the rounds."""
    rng = np.random.default_rng(0)
    acts = rng.uniform(-0.3, 0.3, (warmup + steps, n, 6)).astype(np.float32)
    kw = {"model": model, "task_config": {"max_steps": 10**6}}
    venv = gym.make_vec("SanaWM-Explore-v0", num_envs=n, vectorization_mode="vector_entry_point", **kw)
    venv.reset(seed=0)
    envs = [gym.make("SanaWM-Explore-v0", **kw) for _ in range(n)]
    for i, e in enumerate(envs):
        e.reset(seed=i)
    batched, separate = [], []
    for t in range(warmup + steps):
        t0 = time.perf_counter()
        venv.step(acts[t])
        t1 = time.perf_counter()
        for i, e in enumerate(envs):
            e.step(acts[t, i])
        t2 = time.perf_counter()
        if t >= warmup:
            batched.append(t1 - t0)
            separate.append(t2 - t1)
    b, s = n / float(np.median(batched)), n / float(np.median(separate))
    return {"num_envs": n, "batched_steps_per_s": b, "separate_steps_per_s": s, "speedup": b / s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None, help="bundle name/path (default: an untrained --preset)")
    p.add_argument("--preset", default="small-cpu")
    p.add_argument("--size", default="64x64")
    p.add_argument("--num-envs", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=None,
                   help="run the model's weights on another chunk grid (latent frames per step; timing probe: "
                        "weights trained on one grid need distillation to work on another)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from world_model.bundles import untrained_world_model

        h, w = (int(v) for v in args.size.split("x"))
        model = untrained_world_model(args.preset, image_hw=(h, w))
    else:
        from world_model.bundles import load_world_model

        model = load_world_model(args.model)
    if args.chunk_size is not None and args.chunk_size != model.student.config.chunk_size:
        model.student = model.student.regridded(model.student.config.with_chunk_size(args.chunk_size)).eval()
    rows = []
    for n in args.num_envs:
        row = bench(model, n, args.steps)
        rows.append(row)
        print(f"N={n:3d}  batched {row['batched_steps_per_s']:8.2f} steps/s  separate "
              f"{row['separate_steps_per_s']:8.2f} steps/s  x{row['speedup']:.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
