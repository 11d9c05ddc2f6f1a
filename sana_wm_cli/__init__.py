"""The ``sana-wm`` command (see :mod:`sana_wm_cli.main`) and helpers its subcommands share."""

from __future__ import annotations

import sys


def set_torch_threads(threads: int | None) -> None:
    """Apply a subcommand's ``--threads`` (``None``: torch's choice); a non-positive count is a ValueError.

    More threads than cores only slows torch down (and very large counts crash its thread pool), so a larger
    count is capped at the cores this process may use, with a one-line warning.
    """
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be a positive int, got {threads}")
    import torch

    from sana_wm_env.limits import cpu_cores

    cores = cpu_cores()
    if threads > cores:
        print(f"sana-wm: warning: --threads {threads} is more than the {cores} CPU core(s) here; using {cores}",
              file=sys.stderr)
        threads = cores
    torch.set_num_threads(threads)


def bundle_meta(model: str) -> dict | None:
    """``bundle.json`` of a ``--model`` bundle, read without loading any weights (for checks before the load);
    None where it cannot be read: loading the model then reports why."""
    import json

    from world_model.bundles import resolve_bundle

    try:
        meta = json.loads((resolve_bundle(model) / "bundle.json").read_text())
    except (OSError, ValueError):  # a missing bundle is a FileNotFoundError, bad JSON a ValueError
        return None
    return meta if isinstance(meta, dict) else None


def whole_number(text: str) -> int:
    """argparse type of a count: an int, also written in scientific notation (``1e8``) when it is a whole number,
    so a huge count reaches the size checks (which say the limit) instead of failing as "not an int"."""
    import argparse
    import math

    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def add_ray_argument(parser) -> None:
    """The ``--ray [ADDRESS]`` option of the commands that scale out on Ray (see :mod:`sana_wm_env.distributed`)."""
    from sana_wm_env.distributed import ADDRESS_HELP

    parser.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS", type=_ray_address,
                        help=ADDRESS_HELP)


def _ray_address(text: str) -> str:
    """argparse type of ``--ray``: auto, local or a cluster address (not empty)."""
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("expected auto, local or a cluster address (HOST:PORT, ray://HOST:PORT)")
    return text.strip()
