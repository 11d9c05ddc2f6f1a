"""``sana-wm refine``: refine a recorded stage-1 rollout (format sana-wm-rollout/1, see docs/rollouts.md).

Reads the rollout IN (an env episode, a generation or a replay saved with --save-rollout), checks that the
refiner reads latents of the rollout's codec (codec family, channels, strides) BEFORE any work (a mismatch
fails with both layouts), refines the stage-1 latents along the rollout's camera path and writes OUT: a rollout
of the same format with refined: true (refined frames and latents; the stage-1 latents kept as
stage1_latents.npy), OUT/video.mp4 (refined) and OUT/comparison.mp4 (stage 1 | refined).

--refiner: a refiner folder (refiner.json: a sana-wm WorldModelRefiner or an LTX-2 refiner) or "bundled" (the
default): the refiner shipped with the rollout's model (BUNDLE/refiner/, else world_model/bundled/<model>-refiner).
--strength overrides a WorldModelRefiner's re-noising strength.

Example:
  sana-wm replay path.tum --convention opencv --twin rooms/0 --out out/replay.mp4 --save-rollout out/replay_rollout
  sana-wm refine out/replay_rollout --out out/replay_refined
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import set_torch_threads


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("refine", help="refine a recorded stage-1 rollout (frames, poses, latents)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rollout", type=Path, help="stage-1 rollout folder (sana-wm-rollout/1)")
    p.add_argument("--out", type=Path, required=True, help="folder for the refined rollout")
    p.add_argument("--refiner", default="bundled", help="refiner folder or 'bundled' (default: %(default)s)")
    p.add_argument("--strength", type=float, default=None, help="re-noising strength (WorldModelRefiner only)")
    p.add_argument("--seed", type=int, default=None, help="refinement seed (default: the rollout's seed)")
    p.add_argument("--overwrite", action="store_true", help="replace a rollout already in --out")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)


def bundled_refiner_path(manifest: dict) -> Path:
    """The refiner shipped with the rollout's model: ``BUNDLE/refiner``, else ``bundled/<name>-refiner``."""
    from world_model.bundles import BUNDLED_DIR

    tried = []
    if manifest.get("model_path"):
        tried.append(Path(manifest["model_path"]) / "refiner")
    if manifest.get("model"):
        tried.append(BUNDLED_DIR / f"{manifest['model']}-refiner")
    for p in tried:
        if (p / "refiner.json").is_file():
            return p
    shipped = sorted(p.parent.name.removesuffix("-refiner") for p in BUNDLED_DIR.glob("*-refiner/refiner.json"))
    raise FileNotFoundError(f"--refiner bundled: no refiner ships with model {manifest.get('model')!r} (looked in "
                            f"{', '.join(map(str, tried)) or 'nothing: the rollout names no model'}; refiners ship "
                            f"with {', '.join(shipped) or 'no bundled model'}); pass --refiner FOLDER (train one "
                            "with `sana-wm train-refiner`)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sana_wm_env.rollouts import check_refiner_for, check_rollout_folder, read_rollout, refine_rollout
    from world_model.refiner import load_refiner

    set_torch_threads(args.threads)
    # ---- every check before any work ----
    check_rollout_folder(args.out, "--out", inputs=(("rollout", args.rollout),), overwrite=args.overwrite)
    ro = read_rollout(args.rollout)
    path = bundled_refiner_path(ro.manifest) if args.refiner == "bundled" else Path(args.refiner)
    kwargs = {} if args.strength is None else {"strength": args.strength}
    refiner = load_refiner(path, device=args.device, what="--refiner", **kwargs)
    check_refiner_for(refiner, ro.manifest)
    # ---- refinement ----
    t0 = time.perf_counter()
    with tqdm(total=len(ro), unit="frame", desc="refine") as bar:
        manifest = refine_rollout(ro, args.out, refiner, seed=args.seed, overwrite=args.overwrite,
                                  progress=lambda done, total: bar.update(done - bar.n))
    summary = {"out": str(args.out), "frames": manifest["frames"], "refiner": str(path),
               "seconds": round(time.perf_counter() - t0, 3), "refine_seconds": manifest["extra"]["refine_seconds"],
               "video": str(args.out / "video.mp4"), "comparison": str(args.out / "comparison.mp4")}
    print(json.dumps(summary))
    return 0
