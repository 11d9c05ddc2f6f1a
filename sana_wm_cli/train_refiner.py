"""``sana-wm train-refiner``: train a small stage-2 refiner for a world model on the twin worlds.

Two stages, both resumable:
  1. stage-1 pairs (--pairs, default OUT/pairs): the model's streaming generator rolls out the first --clips
     clips of --data (the first --frames frames of each, from its first frame along its own poses); the
     latents are stored next to the ground-truth frames (format sana-wm-refiner-pairs/1). Clips already
     written are skipped. Geometry-guided models (RGB-D latents) start from each clip's frame-0 depth and
     the pairs keep the clips' depth (--data must hold depth): the refiner then refines depth too.
  2. training (a `sana-wm train` run folder in OUT): a SANA-WM transformer (default: initialised from the
     model's own student, without its geometry input: a refiner reads no geometry cache) learns, in
     bidirectional mode with camera conditioning and the first frame as clean sink, to flow from the
     stage-1 latents re-noised to a strength s (--strengths) to the ground-truth latents. The last
     --val-clips pairs are held out; their PSNR (stage 1 vs refined at each strength) is logged at every
     sample point (metrics.jsonl). At the end the refiner folder is written (--export,
     default OUT/refiner; float16 weights) with --strength as its default.

Example:
  sana-wm train-refiner --data data/twin64 --model default --clips 200 --frames 31 \\
      --out runs/refiner --steps 600 --batch 4 --sample-every 200
  sana-wm train-refiner --data data/twin64 --out runs/refiner --resume --steps 1200   # continue
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import set_torch_threads
from .train import FIELDS, add_common, explicit_overrides, parse_model, resolve_config


def parse_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train-refiner", help="train a small stage-2 refiner on stage-1 rollouts of the twins",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--model", default="default", help="world-model bundle whose stage 1 is refined (default: "
                   "%(default)s)")
    p.add_argument("--pairs", type=Path, default=None, help="stage-1 pairs folder (default OUT/pairs)")
    p.add_argument("--clips", type=int, default=200, help="clips to roll out (default %(default)s)")
    p.add_argument("--clip-frames", type=int, default=31, dest="clip_frames",
                   help="pixel frames per clip, a valid stage-1 clip length (default %(default)s)")
    p.add_argument("--gen-batch", type=int, default=8, help="clips per stage-1 batch (default %(default)s)")
    p.add_argument("--val-clips", type=int, default=None, dest="validation_clips",
                   help="last N pairs held out for validation (default 16)")
    p.add_argument("--preset", default=None, help="refiner architecture (default: the model's student config)")
    p.add_argument("--init-from", default=None, dest="init_from",
                   help="transformer folder to start from (default: the model's student; 'none' = random)")
    p.add_argument("--strengths", type=parse_floats, default=None, help="training strengths (default "
                   "0.909375,0.725,0.421875)")
    p.add_argument("--strength", type=float, default=None, help="strength of the exported refiner (default 0.725)")
    p.add_argument("--window", type=int, default=None,
                   help="latent frames per refinement window after the sink (default 8; 0 = whole clip)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--pairs-only", action="store_true", help="write the stage-1 pairs and stop")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sana_wm_cli.eval import load_model_or_explain
    from sana_wm_env.datasets import TwinClipDataset
    from world_model.training.refine import (
        RefinerTrainConfig,
        RefinerTrainer,
        Stage1Pairs,
        refiner_model_config,
        write_stage1_pairs,
    )

    set_torch_threads(args.threads)
    pairs_dir = args.pairs or args.out / "pairs"
    model = load_model_or_explain(args.model, "cpu" if args.device is None else args.device)
    if not (args.resume and (pairs_dir / "pairs.json").is_file()):
        data = TwinClipDataset(args.data, num_frames=args.clip_frames, random_crop=False, relative=True,
                               load_depth=bool(model.codec.depth_channels))
        with tqdm(total=args.clips, unit="clip", desc="stage-1 pairs", disable=args.no_progress) as bar:
            write_stage1_pairs(data, model, pairs_dir, clips=args.clips, frames=args.clip_frames,
                               batch_size=args.gen_batch, source={"data": str(args.data)},
                               progress=lambda d, n: bar.update(d - bar.n))
    if args.pairs_only:
        print(json.dumps({"pairs": str(pairs_dir), "clips": args.clips}))
        return 0
    pairs = Stage1Pairs(pairs_dir)
    overrides = explicit_overrides(args, FIELDS + ("strengths", "strength", "validation_clips", "window"))
    if not args.resume:
        init = args.init_from
        if init is None and model.path is not None:
            init = str(model.path / "student")
        overrides["init_from"] = None if init == "none" else init
        overrides["model"] = parse_model(args.preset) if args.preset else refiner_model_config(model.student.config)
        overrides["codec"] = model.codec.to_config()
        overrides.setdefault("validation_clips", 16)
        overrides.setdefault("frames_schedule", ((0, int(pairs.meta["latent_frames"])),))
        overrides["fps"] = float(pairs.meta["fps"])
    config = resolve_config(RefinerTrainConfig, args, overrides)
    n_val = min(config.validation_clips, len(pairs) - 1)
    train = Stage1Pairs(pairs_dir, range(len(pairs) - n_val))
    val = Stage1Pairs(pairs_dir, range(len(pairs) - n_val, len(pairs))) if n_val else None
    trainer = RefinerTrainer(config, train, args.out, validation=val, device=args.device, resume=args.resume,
                             progress=not args.no_progress)
    summary = trainer.train()
    export = args.export or args.out / "refiner"
    path = trainer.export(export, name=args.name)
    print(json.dumps({**{k: v for k, v in summary.items() if k != "last"}, "refiner": str(path),
                      "run_dir": str(args.out)}, default=float))
    return 0
