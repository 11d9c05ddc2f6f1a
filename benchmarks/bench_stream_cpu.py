"""The lean CPU streaming path against the reference layers, eager and under ``compile_streaming``, interleaved.

    OMP_NUM_THREADS=1 python benchmarks/bench_stream_cpu.py --threads 1 --rounds 6 --steps 10

One ``SanaWM-Explore-v0`` env per variant, each with its own copy of the world model:

- ``lean``: the default (lean CPU streaming path, eager);
- ``reference``: the reference layers, eager (``SANA_WM_REFERENCE_OPS=1``);
- ``reference-compiled``: the reference layers under ``compile_streaming("default")`` (inductor);
- ``lean-compiled``: the lean path under ``compile_streaming("default")``.

Compiled variants are compiled (and warmed up over a few episodes' worth of cache fill levels) first. Then the
variants take turns: each round runs ``--steps`` env steps of every variant, in an order that rotates from round
to round, so that a loaded machine's drift hits all of them alike. Figures are medians of per-step wall-clock
times over all rounds. Inductor fixes its thread count when it compiles, so run one process per thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import gymnasium as gym
import numpy as np
import torch

import sana_wm_env  # noqa: F401  (registers the envs)
from world_model.bundles import load_world_model

VARIANTS = {  # name: (reference layers, compile mode)
    "lean": (False, None),
    "reference": (True, None),
    "reference-compiled": (True, "default"),
    "lean-compiled": (False, "default"),
}


def _set_reference(on: bool) -> None:
    os.environ["SANA_WM_REFERENCE_OPS"] = "1" if on else "0"


def _step(env, rng: np.random.Generator) -> float:
    t0 = time.perf_counter()
    _, _, terminated, truncated, _ = env.step(rng.uniform(-0.3, 0.3, 6).astype(np.float32))
    elapsed = time.perf_counter() - t0
    if terminated or truncated:
        env.reset()
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="bundle name or folder")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=10, help="env steps per variant per round")
    p.add_argument("--warmup", type=int, default=12, help="steps before timing (compiles the compiled variants)")
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    args = p.parse_args()
    for name, value in (("threads", args.threads), ("rounds", args.rounds), ("steps", args.steps)):
        if value < 1:
            p.error(f"--{name} must be >= 1, got {value}")
    torch.set_num_threads(args.threads)
    # every compiled model shares the block stack's code object: leave room for all of their graphs
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)

    envs, warmup_s = {}, {}
    for name in args.variants:
        reference, mode = VARIANTS[name]
        _set_reference(reference)
        env = gym.make("SanaWM-Explore-v0", model=load_world_model(args.model), task_config={"max_steps": 40},
                       **({} if mode is None else {"compile": mode}))
        env.reset(seed=0)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            _step(env, rng)
        warmup_s[name] = time.perf_counter() - t0
        envs[name] = (env, rng)
        print(f"{name}: {args.warmup} warm-up steps in {warmup_s[name]:.1f} s", flush=True)

    times: dict[str, list[float]] = {name: [] for name in envs}
    load: list[float] = []
    names = list(envs)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            _set_reference(VARIANTS[name][0])
            env, rng = envs[name]
            times[name].extend(_step(env, rng) for _ in range(args.steps))
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {1e3 * float(np.median(times[n][-args.steps:])):.1f} ms" for n in names), flush=True)

    result = {
        "model": args.model, "threads": args.threads, "rounds": args.rounds, "steps_per_round": args.steps,
        "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
        "load_avg_1min": [round(x, 2) for x in load],
        "variants": {
            n: {"median_ms_per_step": 1e3 * float(np.median(times[n])), "steps_per_s": 1 / float(np.median(times[n])),
                "warmup_s": warmup_s[n]}
            for n in names
        },
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
