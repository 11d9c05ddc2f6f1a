"""Dispatch between the plain-PyTorch reference of an op and a registered fast implementation.

Every op in :mod:`world_model.ops` is a plain-PyTorch function that runs anywhere (and is what CI tests).
A fast path (e.g. a Triton kernel for CUDA tensors) registers itself with :func:`register_fast_path`;
the public op then uses it when its ``applies`` predicate accepts the inputs. Setting the environment
variable ``SANA_WM_REFERENCE_OPS=1`` forces the references everywhere (for debugging and comparisons).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FastPath:
    fn: Callable[..., Any]
    applies: Callable[..., bool]


_FAST_PATHS: dict[str, FastPath] = {}


def register_fast_path(op: str, fn: Callable[..., Any], applies: Callable[..., bool]) -> None:
    """Register ``fn`` as the fast implementation of ``op``, used when ``applies(*args, **kwargs)``."""
    _FAST_PATHS[op] = FastPath(fn, applies)


def unregister_fast_path(op: str) -> None:
    _FAST_PATHS.pop(op, None)


def fast_path(op: str, *args: Any, **kwargs: Any) -> Callable[..., Any] | None:
    """The registered fast implementation of ``op`` if one applies to these arguments, else ``None``."""
    if os.environ.get("SANA_WM_REFERENCE_OPS") == "1":
        return None
    entry = _FAST_PATHS.get(op)
    if entry is not None and entry.applies(*args, **kwargs):
        return entry.fn
    return None
