"""The ``sana-wm`` command (see :mod:`sana_wm_env.cli.main`) and helpers its subcommands share."""

from __future__ import annotations


def set_torch_threads(threads: int | None) -> None:
    """Apply a subcommand's ``--threads`` (``None``: torch's choice); a non-positive count is a ValueError."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be a positive int, got {threads}")
    import torch

    torch.set_num_threads(threads)
