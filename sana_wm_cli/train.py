"""``sana-wm train``: flow-matching training of a SANA-WM transformer on a twin-world dataset.

Writes a run folder (config.json, metrics.jsonl, checkpoints/, model/ = EMA weights, samples/*.mp4) and at the
end a world-model bundle (``--export``, default RUN_DIR/bundle) whose student is the trained model itself
until ``sana-wm distill`` makes the few-step streaming student. ``--resume`` continues a run from its latest
checkpoint with the stored config (only --steps and the logging / device flags may change).

Example:
  sana-wm dataset make --clips 64 --frames 17 --size 64x64 --out data/twin64
  sana-wm train --data data/twin64 --preset small-cpu --codec patch:4 --frames 0:4,500:7 --steps 2000 \\
      --batch 4 --out runs/teacher
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# flags that may differ when resuming (the rest must match the stored config)
RESUMABLE = {"steps", "log_every", "sample_every", "checkpoint_every", "num_workers"}


def parse_codec(text: str, in_channels: int) -> dict[str, Any]:
    """``patch:P[:S[:D]]`` (PatchCodec, patch P, temporal stride S, D depth channels of an RGB-D codec; colour
    truncated to the model's channels) or ``ltx2:PATH``."""
    parts = text.split(":")
    if parts[0] == "patch" and len(parts) in (2, 3, 4):
        try:
            p, s = int(parts[1]), int(parts[2]) if len(parts) >= 3 else 1
            d = int(parts[3]) if len(parts) == 4 else 0
        except ValueError:
            raise ValueError(f"--codec must be patch:P[:S[:D]] with integers, got {text!r}") from None
        full = 3 * s * p * p
        if not in_channels - d <= full or in_channels <= d:
            raise ValueError(f"--codec {text} gives 1 to {full} colour channels plus {d} of depth; the model needs "
                             f"{in_channels} latent channels")
        config = {"type": "patch", "patch_size": p, "temporal_stride": s,
                  "latent_channels": None if in_channels == full + d else in_channels}
        if d:
            config["depth_channels"] = d
        return config
    if parts[0] == "ltx2" and len(parts) >= 2:
        return {"type": "ltx2", "path": text.split(":", 1)[1]}
    raise ValueError(f"--codec must be patch:P[:S[:D]] or ltx2:PATH, got {text!r}")


def parse_frames(text: str) -> tuple[tuple[int, int], ...]:
    """``7`` or ``0:4,1000:7,3000:10`` (start_step:latent_frames) -> frames schedule."""
    try:
        if ":" not in text:
            return ((0, int(text)),)
        return tuple((int(a), int(b)) for a, b in (item.split(":") for item in text.split(",")))
    except ValueError:
        raise ValueError(f"--frames must be T or STEP:T,STEP:T,... (latent frames), got {text!r}") from None


def parse_model(text: str) -> str | dict:
    """A preset name or a ModelConfig JSON file (a save_transformer config.json works too)."""
    from world_model.config import PRESETS

    if text in PRESETS:
        return text
    path = Path(text)
    if path.suffix == ".json" and path.is_file():
        doc = json.loads(path.read_text())
        return {k: v for k, v in doc.items() if not k.startswith("_")}
    raise ValueError(f"--preset must be one of {sorted(PRESETS)} or a ModelConfig .json file, got {text!r}")


EXPORT_DTYPES = ("float32", "float16", "bfloat16")  # torch dtype names


def add_common(p: argparse.ArgumentParser) -> None:
    """Flags shared by train and distill (defaults None = take the config's value)."""
    p.add_argument("--data", type=Path, required=True, help="twin dataset folder (sana-wm dataset make)")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, metrics, samples)")
    p.add_argument("--config", type=Path, default=None, help="a TrainConfig / DistillConfig JSON to start from")
    p.add_argument("--steps", type=int, default=None, help="total optimiser steps")
    p.add_argument("--batch", type=int, default=None, dest="batch_size", help="clips per step")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--grad-clip", type=float, default=None, help="max gradient norm (0 = off)")
    p.add_argument("--warmup", type=int, default=None, dest="warmup_steps", help="linear LR warm-up steps")
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--frames", type=parse_frames, default=None, dest="frames_schedule",
                   help="latent frames per clip: T, or a progressive schedule STEP:T,STEP:T (e.g. 0:4,1000:7)")
    p.add_argument("--frame-stride", type=int, default=1, help="use every N-th stored frame (default 1)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None,
                   help="auto = bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--grad-checkpointing", action="store_const", const=True, default=None,
                   dest="gradient_checkpointing", help="recompute activations in the backward pass (less memory)")
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--sample-every", type=int, default=None, help="sample video every N steps (0 = at the end)")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, dest="num_workers", help="DataLoader worker processes")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--export", type=Path, default=None, help="bundle folder to write at the end (default OUT/bundle)")
    p.add_argument("--name", default=None, help="bundle name (default: the export folder's name)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_export_options(p: argparse.ArgumentParser) -> None:
    """Options of the world-model bundle written at the end (train, distill)."""
    p.add_argument("--export-dtype", choices=EXPORT_DTYPES, default="float32",
                   help="dtype of the bundle's stored weights (float16 halves it; loading computes in float32)")
    p.add_argument("--export-fov", type=float, default=None, metavar="DEG",
                   help="the bundle's default horizontal FoV in degrees, used by envs for first frames "
                        "(default: the first training clip's)")


FIELDS = ("steps", "batch_size", "lr", "weight_decay", "grad_clip", "warmup_steps", "ema_decay", "frames_schedule",
          "seed", "precision", "gradient_checkpointing", "log_every", "sample_every", "checkpoint_every",
          "num_workers")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a world model on a twin dataset (flow matching)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    add_export_options(p)
    p.add_argument("--preset", default=None, help="model: a preset name (e.g. small-cpu) or a ModelConfig .json")
    p.add_argument("--codec", default=None,
                   help="patch:P[:S[:D]] (PatchCodec; D depth channels make it RGB-D, for geometry-guided models "
                        "such as --preset twin-g: patch:8:2:16) or ltx2:PATH (default patch:4)")
    p.add_argument("--mode", choices=("chunk_causal", "bidirectional"), default=None)
    p.add_argument("--shift", type=float, default=None, dest="flow_shift", help="timestep shift (default 3)")
    p.add_argument("--init-from", default=None, dest="init_from", help="transformer folder to fine-tune from")
    p.set_defaults(func=run)


def explicit_overrides(args: argparse.Namespace, fields) -> dict[str, Any]:
    return {k: getattr(args, k) for k in fields if getattr(args, k, None) is not None}


def resolve_config(cls, args: argparse.Namespace, overrides: dict[str, Any]):
    """The run config: the stored one on --resume (checked against overrides), else --config + overrides."""
    stored = args.out / "config.json"
    if args.resume:
        if not stored.is_file():
            raise FileNotFoundError(f"--resume: {stored} does not exist (nothing to resume)")
        config = cls.from_json(stored)
        d = config.to_dict()
        for k, v in overrides.items():
            cur = d.get(k)
            new = [list(x) for x in v] if k == "frames_schedule" else v
            if k not in RESUMABLE and cur != new:
                raise ValueError(f"--resume: {k} is {cur!r} in the stored run; it cannot change to {new!r}")
        return config.replace(**{k: v for k, v in overrides.items() if k in RESUMABLE})
    base = cls.from_json(args.config).to_dict() if args.config else {}
    return cls.from_dict({**base, **overrides})


def open_dataset(args: argparse.Namespace, codec_cfg: dict, max_latent: int):
    """The twin dataset with clips long enough for ``max_latent`` latent frames, and its fps."""
    from sana_wm_env.datasets import TwinClipDataset
    from world_model.codecs import build_codec

    codec = build_codec(codec_cfg)
    frames = 1 + codec.temporal_stride * (max_latent - 1)
    ds = TwinClipDataset(args.data, num_frames=frames, stride=args.frame_stride, random_crop=True, relative=True,
                         load_depth=bool(codec.depth_channels))
    return ds, ds.spec.fps / args.frame_stride


def finish(trainer, args: argparse.Namespace, summary: dict) -> int:
    export = args.export or args.out / "bundle"
    import torch

    path = trainer.export(export, name=args.name, weights_dtype=getattr(torch, args.export_dtype),
                          fov_deg=args.export_fov)
    summary = {**summary, "run_dir": str(args.out), "bundle": str(path), "model": str(args.out / "model")}
    print(json.dumps(summary, default=float))
    return 0


def run(args: argparse.Namespace) -> int:
    from sana_wm_env.outputs import check_output
    from world_model.config import get_config
    from world_model.training import TrainConfig, Trainer

    check_output(args.out, "--out", kind="dir")
    if args.export is not None:
        check_output(args.export, "--export", kind="dir")
    overrides = explicit_overrides(args, FIELDS + ("mode", "flow_shift", "init_from"))
    if args.preset is not None:
        overrides["model"] = parse_model(args.preset)
    if args.codec is not None:
        model = overrides.get("model")
        if model is None:
            base = TrainConfig.from_json(args.config) if args.config else TrainConfig()
            model = base.model
        overrides["codec"] = parse_codec(args.codec, get_config(model).in_channels)
    config = resolve_config(TrainConfig, args, overrides)
    dataset, fps = open_dataset(args, config.codec, config.max_latent_frames)
    config = config.replace(fps=fps) if not args.resume else config
    trainer = Trainer(config, dataset, args.out, device=args.device, resume=args.resume,
                      progress=not args.no_progress)
    summary = trainer.train()
    return finish(trainer, args, {k: v for k, v in summary.items() if k != "last"} | {"last": summary["last"]})
