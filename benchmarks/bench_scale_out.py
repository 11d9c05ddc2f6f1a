"""Scale-out on Ray against the single-machine path: wall time with 1 and 2 workers, and the overheads.

    python benchmarks/bench_scale_out.py --workers 1 2 --clips 32 --frames 65 --episodes-per-family 2 \
        --json scale_out.json

For each worker count W it measures, on this machine:

* ``sana-wm dataset make``: the local path with ``--workers W`` (a process pool) and the Ray path on a local Ray
  instance of W CPUs (``ray.init(num_cpus=W)``), the latter twice: on fresh worker processes (the first tasks
  pay for starting them and importing torch and MuJoCo) and on warm ones (a second dataset on the same instance);
* ``sana-wm eval`` (``--quick`` with ``--episodes-per-family``, no revisit or stability rollout, ``--threads 1``):
  the local path (one process) and the Ray path on the same instance (fresh and warm workers);
* the overheads: starting Ray (``ray.init``) and shutting it down.

Every Ray result is checked against the local one (the same dataset bytes, the same eval JSON without timing).
Prints a Markdown table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _dataset_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "clips").iterdir())}


def _eval_numbers(path: Path) -> str:
    """The eval JSON without wall-clock numbers, figure paths and output arguments, as comparable text."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("timing", "seconds", "frames_per_second",
                                                                   "figures", "json", "out_dir", "ray")
                    and not k.startswith("streaming_frames_per_second")}
        return [strip(x) for x in v] if isinstance(v, list) else v
    return json.dumps(strip(json.loads(path.read_text())), sort_keys=True)


def run(workers: list[int], *, clips: int, frames: int, size: tuple[int, int], model: str,
        episodes_per_family: int, eval_frames: int, work: Path) -> dict:
    """Measure every worker count of ``workers`` (see the module docstring); returns the rows and the versions."""
    import ray
    import torch

    from sana_wm_cli.main import main as cli
    from sana_wm_env.datasets import DatasetSpec, make_dataset

    spec = DatasetSpec(clips=clips, frames=frames, height=size[0], width=size[1])
    eval_args = ["eval", "--model", model, "--quick", "--episodes-per-family", str(episodes_per_family),
                 "--frames", str(eval_frames), "--revisit-episodes", "0", "--stability-frames", "0",
                 "--no-untrained", "--threads", "1", "--no-progress"]
    torch.set_num_threads(1)
    local_eval = work / "eval_local.json"
    eval_local_s = _timed(lambda: cli([*eval_args, "--json", str(local_eval)]))
    rows = []
    for w in workers:
        row: dict = {"workers": w, "eval_local_s": eval_local_s}
        row["dataset_local_s"] = _timed(lambda w=w: make_dataset(work / f"local{w}", spec, workers=w,
                                                                 progress=False))
        row["ray_init_s"] = _timed(lambda w=w: ray.init(num_cpus=w, include_dashboard=False,
                                                        logging_level="WARNING"))
        try:
            for temp in ("fresh", "warm"):
                root = work / f"ray{w}_{temp}"
                row[f"dataset_ray_{temp}_s"] = _timed(lambda r=root: make_dataset(r, spec, ray="auto",
                                                                                  progress=False))
                if _dataset_bytes(root) != _dataset_bytes(work / f"local{w}"):
                    raise RuntimeError(f"the Ray dataset {root} differs from the local one")
            for temp in ("first", "again"):
                out = work / f"eval_ray{w}_{temp}.json"
                row[f"eval_ray_{temp}_s"] = _timed(lambda o=out: cli([*eval_args, "--json", str(o), "--ray"]))
                if _eval_numbers(out) != _eval_numbers(local_eval):
                    raise RuntimeError(f"the Ray eval {out} differs from the local one")
        finally:
            row["ray_shutdown_s"] = _timed(ray.shutdown)
        rows.append(row)
    return {"rows": rows, "settings": {"clips": clips, "frames": frames, "size": list(size), "model": model,
                                       "episodes_per_family": episodes_per_family, "eval_frames": eval_frames},
            "versions": {"python": platform.python_version(), "ray": ray.__version__, "torch": torch.__version__},
            "machine": {"cpus": _cpus(), "processor": platform.processor() or platform.machine()}}


def _cpus() -> int:
    from sana_wm_env.limits import cpu_cores

    return cpu_cores()


def table(result: dict) -> str:
    """The Markdown table of :func:`run`'s rows (seconds)."""
    s = result["settings"]
    lines = ["| workers | dataset local | dataset Ray (fresh / warm workers) | eval local | eval Ray (fresh / warm) "
             "| ray.init | shutdown |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['workers']} | {r['dataset_local_s']:.1f} s | {r['dataset_ray_fresh_s']:.1f} / "
                     f"{r['dataset_ray_warm_s']:.1f} s | {r['eval_local_s']:.1f} s | {r['eval_ray_first_s']:.1f} / "
                     f"{r['eval_ray_again_s']:.1f} s | {r['ray_init_s']:.1f} s | {r['ray_shutdown_s']:.1f} s |")
    lines.append(f"\ndataset: {s['clips']} clips x {s['frames']} frames at {s['size'][0]}x{s['size'][1]}; eval: "
                 f"model {s['model']}, {s['episodes_per_family']} episode(s) per family of {s['eval_frames']} frames")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default: 1 2)")
    p.add_argument("--clips", type=int, default=32, help="dataset clips (default: %(default)s)")
    p.add_argument("--frames", type=int, default=65, help="frames per clip (default: %(default)s)")
    p.add_argument("--size", default="64x64", help="clip frame size HxW (default: %(default)s)")
    p.add_argument("--model", default="default", help="eval: world-model bundle (default: %(default)s)")
    p.add_argument("--episodes-per-family", type=int, default=2, help="eval episodes per family (default: 2)")
    p.add_argument("--eval-frames", type=int, default=17, help="eval frames per episode (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = p.parse_args(argv)
    if not args.workers or any(w < 1 for w in args.workers):
        raise ValueError(f"--workers must be positive ints, got {args.workers}")
    h, _, w = args.size.partition("x")
    if not (h.isdigit() and w.isdigit()):
        raise ValueError(f"--size must be HxW, got {args.size!r}")
    work = Path(tempfile.mkdtemp(prefix="bench_scale_out_"))
    try:
        result = run(args.workers, clips=args.clips, frames=args.frames, size=(int(h), int(w)), model=args.model,
                     episodes_per_family=args.episodes_per_family, eval_frames=args.eval_frames, work=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["command"] = "python benchmarks/bench_scale_out.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
