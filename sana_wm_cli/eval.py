"""``sana-wm eval``: how faithful a world model is to the twin worlds it imitates.

Generates clips from held-out twin-world first frames along held-out camera paths and compares them with the
twin renders at the same poses: PSNR/SSIM per horizon (frames 1-8, 9-32, 33-128), action-following accuracy
(is the render at the commanded pose the closest of 8?, chance 1/8), revisit consistency on closed loops,
and stability of a long streaming rollout; PSNR on the pixels frame 0's content reaches and on the holes, and
Genie's delta-PSNR (commanded vs random path); the same for three baselines (repeat the first frame; frame 0
warped into each pose with its twin depth, no learning; the same architecture with random weights). Writes a
JSON with every number and two PNGs (contact sheet, PSNR plot).
See sana_wm_env/evaluation/fidelity.py for the exact protocol.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

from . import add_ray_argument, set_torch_threads

QUICK = {"episodes_per_family": 1, "frames": 33, "revisit_episodes": 1, "stability_frames": 200}
DEFAULTS = {"episodes_per_family": 3, "frames": 129, "revisit_episodes": 3, "stability_frames": 1000}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="measure a world model's fidelity against the twin worlds (JSON + figures)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="default",
                   help="bundle name (shipped) or path to a bundle folder (default: %(default)s)")
    p.add_argument("--json", required=True, type=Path, help="where to write the results JSON")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="folder for the contact sheet and PSNR plot PNGs (default: next to --json)")
    p.add_argument("--episodes-per-family", type=int, default=None,
                   help=f"main episodes per scene family (default {DEFAULTS['episodes_per_family']}, "
                        f"--quick {QUICK['episodes_per_family']})")
    p.add_argument("--frames", type=int, default=None,
                   help=f"frames per main episode, frame 0 included (default {DEFAULTS['frames']}, "
                        f"--quick {QUICK['frames']})")
    p.add_argument("--revisit-episodes", type=int, default=None,
                   help=f"closed-loop episodes in total (default {DEFAULTS['revisit_episodes']}, "
                        f"--quick {QUICK['revisit_episodes']}; 0 = off)")
    p.add_argument("--stability-frames", type=int, default=None,
                   help=f"length of the streaming stability rollout (default {DEFAULTS['stability_frames']}, "
                        f"--quick {QUICK['stability_frames']}; 0 = off, else >= 200)")
    p.add_argument("--size", default=None, help="frame size HxW (default: the model's image size)")
    p.add_argument("--action-stride", type=int, default=8,
                   help="action following is scored on frames 1, 1+k, 1+2k, ... (default: %(default)s)")
    p.add_argument("--teacher", action="store_true", help="also evaluate the bundle's chunk-causal teacher")
    p.add_argument("--refiner", default=None, metavar="FOLDER",
                   help="also evaluate the model refined by this refiner ('model+refiner': stage-1 clip, then "
                        "refined offline; no stability rollout)")
    p.add_argument("--strength", type=float, default=None, help="--refiner strength override (WorldModelRefiner)")
    p.add_argument("--no-untrained", action="store_true", help="skip the untrained-model baseline")
    p.add_argument("--quantize", default=None, choices=["fp8", "int8", "nvfp4"],
                   help="evaluate the streaming student after post-training quantization (ModelOpt fake-quant, "
                        "dynamic activation scales; camera branch, embedders and final layer stay in full "
                        "precision; nvfp4 needs --device cuda). Needs the quant extra: pip install "
                        "\"sana-wm-env[quant]\"")
    p.add_argument("--seed", type=int, default=0, help="generation seed offset (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device for the model (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is much faster when other processes share "
                        "the cores)")
    p.add_argument("--quick", action="store_true",
                   help="small smoke configuration: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_ray_argument(p)
    p.epilog = ("With --ray every episode and each candidate's stability rollout is a Ray task (torch on --threads "
                "threads, default 1, one core per task, one GPU per task with --device cuda); the JSON holds the "
                "numbers of a local run with the same --threads, timing aside.")
    p.set_defaults(func=run)


def load_model_or_explain(name: str, device: str):
    """``load_world_model(name)``; a missing bundle raises FileNotFoundError that says what to do."""
    from world_model.bundles import load_world_model
    from world_model.checkpoints import CheckpointNotFoundError

    try:
        return load_world_model(name, device=device)
    except CheckpointNotFoundError as err:
        raise FileNotFoundError(
            f"{err}\nhint: pass --model PATH to a bundle folder (one made by world_model.bundles.save_world_model "
            "or by `sana-wm distill`), or train one first (`sana-wm train --help`, then `sana-wm distill --help`)."
        ) from None


def build_candidates(args: argparse.Namespace):
    """The loaded model and the candidates that ``args`` asks for (the model, its baselines, optionally the
    teacher and the refined model), as every process of a run builds them."""
    from sana_wm_env.evaluation import world_model_candidates

    model = load_model_or_explain(args.model, args.device)
    model.student.eval()
    if args.quantize is not None:
        from world_model.quantization import quantize

        quantize(model.student, args.quantize)
    candidates = world_model_candidates(model, teacher=args.teacher, untrained=not args.no_untrained)
    if args.refiner is not None:
        from sana_wm_env.evaluation.candidates import generator_candidate
        from world_model.refiner import RefinedGenerator, load_refiner

        refiner = load_refiner(args.refiner, device=args.device, what="--refiner",
                               **({} if args.strength is None else {"strength": args.strength}))
        refined = RefinedGenerator(model.streaming_generator(), refiner, fps=model.fps)
        candidates.append(generator_candidate("model+refiner", refined, description=f"{model.name} refined by "
                                              f"{args.refiner}", info=refiner.describe()))
    return model, candidates


def task_candidates(arguments: dict):
    """:func:`build_candidates` of the arguments ``vars(args)`` (without ``func``): what a Ray task runs."""
    return build_candidates(argparse.Namespace(**arguments))[1]


def build_config(args: argparse.Namespace, model):
    from sana_wm_cli.generate import parse_hw
    from sana_wm_env.evaluation import EvalConfig

    base = QUICK if args.quick else DEFAULTS
    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    hw = parse_hw(args.size, "--size") if args.size else tuple(model.image_hw)
    return EvalConfig(image_hw=hw, fov_deg=float(model.fov_deg), fps=float(model.fps), seed=args.seed,
                      action_stride=args.action_stride, **values)


def _fmt(x, spec: str = ".2f") -> str:
    return "  n/a" if x is None else format(x, spec)


def print_summary(results: dict, json_path: Path, figures: dict) -> None:
    cands = results["candidates"]
    horizons = list(next(iter(cands.values()))["fidelity"]["psnr"])
    head = "".join(f"  PSNR {h:>6}" for h in horizons) + "".join(f"  SSIM {h:>6}" for h in horizons)
    print(f"{'candidate':<20}{head}  action-acc  revisit-dB  stable")
    for name, r in cands.items():
        ps = "".join(f"  {_fmt(r['fidelity']['psnr'][h]['mean']):>11}" for h in horizons)
        ss = "".join(f"  {_fmt(r['fidelity']['ssim'][h]['mean'], '.3f'):>11}" for h in horizons)
        acc = r["action_following"]["accuracy"]
        rv = r["revisit"]["psnr_vs_render"]
        st = r.get("stability", {}).get("pass")
        print(f"{name:<20}{ps}{ss}  {_fmt(acc, '.3f'):>10}  {_fmt(rv):>10}  {'n/a' if st is None else st}")
    cover = "".join(f"  {_fmt(c['mean'], '.3f'):>11}" for c in results.get("coverage", {}).values())
    print(f"\n{'(geometry)':<20}" + "".join(f"  cover {h:>5}" for h in horizons) + "   <- share of pixels frame 0's "
          "content reaches at each pose")
    print(f"{'':<20}{cover}")
    head = ("".join(f"  covered {h:>5}" for h in horizons) + "".join(f"  holes {h:>6}" for h in horizons)
            + "".join(f"  delta-PSNR {h}" for h in horizons))
    print(f"{'candidate':<20}{head}")
    for name, r in cands.items():
        f = r["fidelity"]
        row = [f["psnr_covered"][h]["mean"] for h in horizons] + [f["psnr_holes"][h]["mean"] for h in horizons]
        row += [(f["delta_psnr"] or {}).get(h, {}).get("mean") for h in horizons]
        print(f"{name:<20}" + "".join(f"  {_fmt(v):>13}" for v in row))
    chance = next(iter(cands.values()))["action_following"]["chance"]
    print(f"PSNR/SSIM: generated frame vs twin render at the same pose, pooled over frames in each horizon "
          f"(higher is better). action-acc: share of scored frames whose commanded-pose render is the closest "
          f"of {int(round(1 / chance))} (chance {chance:.3f}). revisit-dB: PSNR vs render on frames that return "
          "to an earlier pose. stable: finite frames and contrast not collapsing over the long rollout. "
          "covered / holes: PSNR on the pixels frame 0's content reaches (its points, with the twin's depth, "
          "splatted into the pose) / on the rest. delta-PSNR: PSNR along the commanded poses minus along a random "
          "path from the same first frame (0 = the camera is ignored).")
    for k, v in results.get("targets", {}).items():
        print(f"target {k}: value {_fmt(v['value'], '.3f')} -> {'met' if v['met'] else 'NOT met'}")
    print(f"results: {json_path}")
    for k, v in figures.items():
        print(f"{k}: {v}")


def run(args: argparse.Namespace) -> int:
    import torch

    from sana_wm_env.evaluation import evaluate, targets
    from sana_wm_env.evaluation.report import contact_sheet, psnr_plot, versions, write_json
    from sana_wm_env.outputs import check_output
    from world_model.optional import require

    t0 = time.perf_counter()
    set_torch_threads(args.threads)
    check_output(args.json, "--json")  # before the model loads: a long evaluation is not lost to a bad path
    out_dir = check_output(args.out_dir or args.json.parent, "--out-dir", kind="dir")
    for name in ("contact", "psnr"):
        check_output(out_dir / f"{args.json.stem}_{name}.png", "--out-dir")
    require("matplotlib", extra="reports", feature="sana-wm eval's figures")  # before a long evaluation
    if args.ray is not None:
        from sana_wm_env.distributed import require_ray

        require_ray()  # before the model loads
    model, candidates = build_candidates(args)
    cfg = build_config(args, model)
    arguments = {k: v for k, v in vars(args).items() if k != "func"}
    with torch.inference_mode():
        results = evaluate(candidates, cfg, progress=not args.no_progress, ray=args.ray,
                           make_candidates=functools.partial(task_candidates, arguments),
                           threads=args.threads or 1, device=args.device)
    contact = results.pop("_contact")
    stem = args.json.stem
    title = f"{model.name}: generated vs twin-world ground truth (first main episode per family)"
    figures = {
        "contact_sheet": str(contact_sheet(contact, out_dir / f"{stem}_contact.png", title=title)),
        "psnr_plot": str(psnr_plot(results, out_dir / f"{stem}_psnr.png",
                                   title=f"{model.name}: PSNR vs twin render against horizon")),
    }
    results = {
        "format": "sana-wm-env/fidelity", "version": 1,
        "model": {"name": model.name, "requested": args.model, "path": str(model.path) if model.path else None,
                  "image_hw": list(model.image_hw), "fps": model.fps, "fov_deg": model.fov_deg,
                  "streaming_sampler": model.streaming, "has_teacher": model.teacher is not None,
                  "parameters": sum(p.numel() for p in model.student.parameters()), "device": args.device,
                  "quantization": model.student.quantization},
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
        "quick": bool(args.quick),
        **results,
        "targets": targets(results),
        "figures": figures,
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
    }
    results["timing"]["total_seconds"] = time.perf_counter() - t0
    write_json(results, args.json)
    print_summary(results, args.json, figures)
    print(json.dumps({"json": str(args.json), "seconds": round(results["timing"]["total_seconds"], 1)}))
    return 0
