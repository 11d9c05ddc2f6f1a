"""Does a trained world model use the camera? Flow-matching loss with the true poses vs wrong ones.

    python benchmarks/bench_camera_signal.py --model default --data data/twin64 --batches 12 --json camera.json

For each batch of dataset clips the same noisy latents (same noise, same per-frame timesteps, clean first frame)
go through the transformer three times, changing only the camera: the clips' **true** poses, another clip's poses
(**shuffled**: the batch rolled by one) and a **static** camera (every frame at the first pose). A model that
uses its camera control has a clearly lower loss with the true poses; if the three are close, the model predicts
the future from appearance alone and cannot follow actions (the case of an under-trained model, see the bundled
model's card). Prints the mean loss per variant and the relative gap ``(wrong - true) / true``.

A geometry-guided model (``geometry_channels > 0``, RGB-D data made with ``--depth``) also gets its geometry input:
the exact causal cache of the clip's earlier frames rendered at the variant's poses (the wrong cameras move the
render with them), and a fourth variant, **no_geometry**, keeps the true poses with an empty cache (only frame 0
shown at frame 0): how much the model leans on the cache.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from world_model.training.data import SeededItems, camera_inputs_from_world, collate_clips, latent_batch
from world_model.training.geometry import CacheCorruption, clip_geometry, unknown_depth_geometry


def camera_signal(transformer, codec, dataset, *, batches: int, batch_size: int, latent_frames: int,
                  sigmas: list[float], first_clip: int = 0, seed: int = 0) -> dict:
    """Mean flow-matching loss (frames after the first) with true, shuffled and static cameras."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (shuffling rolls the batch), got {batch_size}")
    if not sigmas or any(not 0.0 < s <= 1.0 for s in sigmas):
        raise ValueError(f"sigmas must be noise levels in (0, 1], got {sigmas}")
    items = SeededItems(dataset)
    n = len(dataset)
    if first_clip + batches * batch_size > n:
        raise ValueError(f"batches x batch_size clips from clip {first_clip} exceed the dataset ({n} clips)")
    gen = torch.Generator().manual_seed(seed)
    geometric = bool(transformer.config.geometry_channels)
    names = ["true", "shuffled", "static"] + (["no_geometry"] if geometric else [])
    losses: dict[str, list[float]] = {name: [] for name in names}
    device, dtype = transformer.device, transformer.dtype
    for b in range(batches):
        batch = collate_clips([items[(first_clip + b * batch_size + i, seed)] for i in range(batch_size)])
        x0, camera, clip = latent_batch(batch, codec, latent_frames, device)
        h, w = clip["frames"].shape[-2:]
        c2w, k = clip["c2w"].double(), clip["intrinsics"].double()
        latent_hw, stride = codec.latent_hw((h, w)), codec.temporal_stride
        poses = {"true": c2w, "shuffled": c2w.roll(1, dims=0), "static": c2w[:, :1].expand_as(c2w).clone()}
        cameras = {name: camera if name == "true" else camera_inputs_from_world(p, k, (h, w), latent_hw, stride)
                   for name, p in poses.items()}
        if geometric:
            bounds = transformer.config.chunk_bounds(latent_frames)
            for name in poses:
                g = clip_geometry(clip["frames"], clip["depth"], poses[name].float(), clip["intrinsics"], codec,
                                  bounds, CacheCorruption.none(), torch.Generator())
                cameras[name] = cameras[name].with_geometry(g)
            empty = unknown_depth_geometry(clip["frames"][:, 0], codec, latent_frames)
            true_g = cameras["true"].geometry
            cameras["no_geometry"] = camera.with_geometry(torch.cat([true_g[:, :, :1], empty[:, :, 1:]], dim=2))
        for sigma in sigmas:
            noise = torch.randn(x0.shape, generator=gen).to(x0)
            xt = (1 - sigma) * x0 + sigma * noise
            xt[:, :, 0] = x0[:, :, 0]
            ts = torch.full(x0.shape[:1] + x0.shape[2:3], sigma * 1000.0, device=device)
            ts[:, 0] = 0.0
            target = (noise - x0)[:, :, 1:]
            for name, cam in cameras.items():
                with torch.no_grad():
                    v = transformer(xt.to(dtype), ts, camera=cam.to(device, dtype), mode="chunk_causal")
                losses[name].append(float((v.float()[:, :, 1:] - target).pow(2).mean()))
    mean = {name: sum(v) / len(v) for name, v in losses.items()}
    return {"loss": mean, "gap": {name: (mean[name] - mean["true"]) / mean["true"] for name in names[1:]},
            "evaluations": len(losses["true"]), "clips": batches * batch_size, "sigmas": sigmas,
            "latent_frames": latent_frames}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="world-model bundle name or folder (default: the bundled one)")
    p.add_argument("--which", choices=("teacher", "student"), default="teacher",
                   help="which transformer of the bundle (default: teacher, if it ships one)")
    p.add_argument("--data", required=True, help="twin dataset folder (sana-wm dataset make)")
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--latent-frames", type=int, default=10)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.3, 0.6, 0.9])
    p.add_argument("--first-clip", type=int, default=0, help="first dataset clip used")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from sana_wm_env.datasets import TwinClipDataset
    from world_model.bundles import load_world_model

    torch.set_num_threads(args.threads)
    wm = load_world_model(args.model)
    transformer = wm.teacher if args.which == "teacher" and wm.teacher is not None else wm.student
    which = "teacher" if transformer is wm.teacher else "student"
    frames = wm.codec.num_pixel_frames(args.latent_frames)
    dataset = TwinClipDataset(args.data, num_frames=frames, random_crop=True, relative=True,
                              load_depth=bool(wm.codec.depth_channels))
    result = camera_signal(transformer, wm.codec, dataset, batches=args.batches, batch_size=args.batch_size,
                           latent_frames=args.latent_frames, sigmas=args.sigmas, first_clip=args.first_clip,
                           seed=args.seed)
    command = " ".join(["python", "benchmarks/bench_camera_signal.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"model": wm.name, "transformer": which, "command": command, **result}
    for name, value in result["loss"].items():
        gap = "" if name == "true" else f"  ({100 * result['gap'][name]:+.1f} % vs true)"
        print(f"{name:11s} loss {value:.4f}{gap}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
