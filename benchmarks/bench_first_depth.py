"""How good is the depth a geometry-guided model generates for a first frame that comes without one?

    python benchmarks/bench_first_depth.py --model default --images 24 --json first_depth.json

For held-out twin-world views (evaluation scene seeds, the model's size and FoV) the model generates frame 0's depth
from the image alone (``generate_depth``, the path of ``sana-wm generate --image`` without ``--depth``) and it is
compared with the twin's rendered depth: AbsRel (mean |d - d*| / d* over pixels with a surface in both), the share
of those pixels within a factor 1.25 of the truth (delta < 1.25), and how often sky (no surface) is called sky.
A median-scaled AbsRel (prediction rescaled by the median ratio per image) separates shape from metric scale.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch


def depth_errors(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Errors of one predicted depth map against the truth (metres, 0 = sky / no surface)."""
    both = (pred > 0) & (truth > 0)
    out = {"surface_pixels": int(both.sum())}
    if both.any():
        p, t = pred[both], truth[both]
        out["abs_rel"] = float(np.mean(np.abs(p - t) / t))
        out["delta_1.25"] = float(np.mean(np.maximum(p / t, t / p) < 1.25))
        scaled = p * np.median(t / p)
        out["abs_rel_median_scaled"] = float(np.mean(np.abs(scaled - t) / t))
    sky = truth <= 0
    out["sky_recall"] = float(np.mean(pred[sky] <= 0)) if sky.any() else None
    return out


def views(count: int, image_hw: tuple[int, int], fov_deg: float, seed: int = 0):
    """``count`` held-out views: (rgb uint8 (H, W, 3), depth (H, W) metres, intrinsics (4,)), over the families."""
    from sana_wm_env.scenes import EVAL_SEEDS, FAMILIES, SceneRenderer, make_scene
    from sana_wm_env.trajectories.camera_paths import MOTIONS, generate
    from world_model.camera import fov_to_intrinsics

    k4 = fov_to_intrinsics(fov_deg, *image_hw).double().numpy()
    out = []
    for i in range(count):
        family, motion = FAMILIES[i % len(FAMILIES)], MOTIONS[(i // len(FAMILIES)) % len(MOTIONS)]
        scene = make_scene(family, EVAL_SEEDS[(seed + i) % len(EVAL_SEEDS)])
        pose = generate(scene, motion, 2, 16.0, seed=[seed, i]).poses[0]
        with SceneRenderer(scene, *image_hw, depth=True) as renderer:
            rgb, depth = renderer.render(pose, k4)
        out.append((rgb, depth.astype(np.float32), k4.astype(np.float32)))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="world-model bundle name or folder (geometry-guided)")
    p.add_argument("--images", type=int, default=24, help="held-out views (spread over the scene families)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from world_model.bundles import load_world_model
    from world_model.video import from_uint8

    torch.set_num_threads(args.threads)
    wm = load_world_model(args.model)
    gen = wm.streaming_generator()
    if not gen.takes_depth:
        raise SystemExit(f"model {wm.name!r} keeps no geometry cache and generates no depth")
    rows, t0 = [], time.perf_counter()
    for i, (rgb, truth, k4) in enumerate(views(args.images, tuple(wm.image_hw), wm.fov_deg, args.seed)):
        with torch.inference_mode():
            pred = gen.generate_depth(from_uint8(rgb)[None], torch.from_numpy(k4), seed=args.seed + i)[0].numpy()
        rows.append(depth_errors(pred, truth))
    seconds = time.perf_counter() - t0

    def mean(key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    command = " ".join(["python", "benchmarks/bench_first_depth.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"model": wm.name, "command": command, "images": len(rows), "seconds": seconds,
              **{k: mean(k) for k in ("abs_rel", "abs_rel_median_scaled", "delta_1.25", "sky_recall")},
              "per_image": rows}
    print(f"{wm.name}: AbsRel {result['abs_rel']:.3f} (median-scaled {result['abs_rel_median_scaled']:.3f}), "
          f"delta<1.25 {result['delta_1.25']:.3f}, sky recall {result['sky_recall']}, {len(rows)} views, "
          f"{seconds:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
