"""Pretrain the ImageNav goal encoder: a CNN that tells where the goal view is from the current view.

    python examples/pretrain_relative_pose.py --train-samples 40000 --val-samples 4000 --out relpose.pt
    sana-wm evaluate-policy --task imagenav --policy servo:relpose.pt --episodes 20
    python examples/train_ppo_nav.py --env-id SanaWM-TwinImageNav-v0 --goal-pose-net relpose.pt \
        --goal-tracker-memory 0.8 --total-steps 100000

Top to bottom:
1. **Data**: twin ImageNav episodes (``train`` scenes for training, held-out ``eval`` scenes for validation),
   several per scene, each giving its goal view and views from the start and around the path to the goal
   (current image, goal image, goal relative to the body). The labels use the twin's exact poses; the network
   only ever sees images.
2. **Training**: mean squared error on the 10 relative-goal numbers, Adam with a cosine schedule; by default the
   siamese network with a cost volume (``--correlation-radius 0`` for the early-fusion CNN).
3. **Report**: the held-out median position and heading errors, then the network file for
   ``policies.sb3.GoalFrameExtractor(goal_pose_net=...)``.
See ``policies/relative_pose/`` for the details and why ImageNav needs this.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="world-model bundle whose geometry the twin takes "
                   "(image size, FoV, step length); 'none' for the twin defaults (default: %(default)s)")
    p.add_argument("--train-samples", type=int, default=40_000, help="training pairs (default: %(default)s)")
    p.add_argument("--val-samples", type=int, default=4_000, help="held-out pairs (default: %(default)s)")
    p.add_argument("--goals-per-scene", type=int, default=8, help="episodes drawn per scene (default: %(default)s)")
    p.add_argument("--views-per-goal", type=int, default=8,
                   help="current views per episode, the start included (default: %(default)s)")
    p.add_argument("--correlation-radius", type=int, default=4,
                   help="cost-volume radius in feature cells; 0 = early fusion (default: %(default)s)")
    p.add_argument("--width", type=int, default=24, help="network base width (default: %(default)s)")
    p.add_argument("--uncertainty", action="store_true",
                   help="also predict the estimate's variance (beta-NLL loss; GoalTracker weights by it)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default: %(default)s)")
    p.add_argument("--data", type=Path, default=None,
                   help="cache the collected pairs in this .npz (reused when it exists)")
    p.add_argument("--out", type=Path, default=Path("relpose.pt"), help="network file (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from policies.relative_pose import (
        RelativePoseNetConfig,
        collect_pairs,
        save_relative_pose_net,
        train_relative_pose_net,
    )

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = None if args.model == "none" else args.model
    show = not args.no_progress

    # 1. Data: collected once, optionally cached (rendering dominates the cost).
    t0 = time.perf_counter()
    if args.data is not None and args.data.is_file():
        blob = np.load(args.data)
        train = {k[6:]: blob[k] for k in blob.files if k.startswith("train_")}
        val = {k[4:]: blob[k] for k in blob.files if k.startswith("val_")}
        print(f"loaded {len(train['target'])} training and {len(val['target'])} held-out pairs from {args.data}")
    else:
        per = {"goals_per_scene": args.goals_per_scene, "views_per_goal": args.views_per_goal, "progress": show}
        train = collect_pairs(args.train_samples, model=model, split="train", seed=args.seed, **per)
        val = collect_pairs(args.val_samples, model=model, split="eval", seed=args.seed + 1, **per)
        if args.data is not None:
            args.data.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.data, **{f"train_{k}": v for k, v in train.items()},
                     **{f"val_{k}": v for k, v in val.items()})
    collect_s = time.perf_counter() - t0

    # 2. Training.
    config = RelativePoseNetConfig(image_hw=tuple(train["image"].shape[2:]), width=args.width,
                                   correlation_radius=args.correlation_radius, uncertainty=args.uncertainty)
    net, metrics = train_relative_pose_net(train, val, config=config, epochs=args.epochs,
                                           batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=show)
    metrics.update({"collect_seconds": collect_s, "val_samples": int(len(val["target"])),
                    "train_scenes": int(train["scenes"]), "model": args.model})

    # 3. Report and save.
    v = metrics["val"]
    print(f"held-out: median goal position error {v['median_position_error_m']:.3f} m (median goal distance "
          f"{v['median_goal_distance_m']:.2f} m), median heading error {v['median_heading_error_deg']:.1f} deg")
    path = save_relative_pose_net(net, args.out, metrics)
    path.with_suffix(".json").write_text(json.dumps(metrics, indent=2))
    print(f"network: {path} (metrics: {path.with_suffix('.json')})")
    return metrics


if __name__ == "__main__":
    main()
