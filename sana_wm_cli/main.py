"""The ``sana-wm`` command: one entry point, one subcommand per module in this package.

Each subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (called with the parsed namespace, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `sana-wm --help` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "info", "generate", "dataset", "play", "train", "distill", "eval", "demo", "evaluate_policy", "replay",
    "train_refiner", "refine",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sana-wm",
        description="SANA-WM world-model environments: generate, inspect and benchmark camera-controlled video.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"sana_wm_cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand: errors in the input end with one line and exit code 2, a missing optional package with
    one line naming its extra and exit code 1, Ctrl-C with one line and 130."""
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"{_name(args)}: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        # a missing optional package (world_model.optional, loaded if it raised: the CLI does not import torch
        # up front) says which extra installs it
        optional = sys.modules.get("world_model.optional")
        if optional is None or not isinstance(err, optional.MissingDependencyError):
            raise
        print(f"{_name(args)}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The subcommands discard their staged outputs and mark partial rollouts on the way out.
        print(f"{_name(args)}: interrupted; the outputs of this run were not completed", file=sys.stderr)
        return 130


def _name(args: argparse.Namespace | None) -> str:
    """``sana-wm COMMAND`` for messages (``sana-wm`` before the command line is parsed)."""
    command = getattr(args, "command", None)
    return f"sana-wm {command}" if command else "sana-wm"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
