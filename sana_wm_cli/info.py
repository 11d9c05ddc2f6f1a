"""``sana-wm info``: versions, model presets and a model's architecture at a glance."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import platform

import torch

from world_model.config import PRESETS, get_config
from world_model.transformer import SanaWMTransformer


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="show versions, presets and model architectures",
                              description="Show package versions, the model presets and their sizes.")
    p.add_argument("--model", default=None, help="a preset name to describe in detail (default: list all)")
    p.set_defaults(func=run)


def _params(name: str) -> int:
    with torch.device("meta"):
        return SanaWMTransformer(name).num_parameters()


def run(args: argparse.Namespace) -> int:
    versions = {pkg: _version(pkg) for pkg in ("sana-wm-env", "torch", "diffusers", "gymnasium", "mujoco")}
    print(f"python {platform.python_version()}  " + "  ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"cuda available: {torch.cuda.is_available()}  threads: {torch.get_num_threads()}")
    names = [args.model] if args.model else sorted(PRESETS)
    for name in names:
        cfg = get_config(name)
        kinds = "".join("S" if cfg.is_softmax_block(i) else "G" for i in range(cfg.depth))
        print(
            f"\n{name}: {_params(name) / 1e6:,.1f}M params, depth {cfg.depth} [{kinds}] (G = GDN, S = softmax), "
            f"hidden {cfg.hidden_size}, heads {cfg.num_heads}x{cfg.head_dim}, latent channels {cfg.in_channels}, "
            f"temporal stride {cfg.temporal_stride}, text {'yes' if cfg.has_text else 'no'}"
        )
        if args.model:
            print(cfg.to_json())
    return 0


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"
