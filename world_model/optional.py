"""Optional dependencies: import a package that only one feature needs, or say which extra installs it.

The core install runs the environments with the bundled models; the LTX-2 codec (diffusers), official checkpoints
from the Hugging Face cache (huggingface-hub), the refiner's text encoder (transformers), ROS 2 bags (rosbags) and
evaluation figures (matplotlib) come with extras, e.g. ``pip install "sana-wm-env[ltx2]"``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependencyError", "install_hint", "require"]


class MissingDependencyError(ImportError):
    """An optional package a feature needs is missing; the message names the extra that installs it."""


def install_hint(extra: str) -> str:
    """The pip command that installs ``extra`` of this package."""
    return f'pip install "sana-wm-env[{extra}]"'


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` (e.g. ``"diffusers"``); a missing one raises :class:`MissingDependencyError` (an
    ImportError) naming ``feature`` and the extra.

    ``feature`` says what needs it ("the LTX-2 codec"); ``extra`` is the optional-dependency group that provides it.
    Import errors of the module's own dependencies surface the same way, with the original error chained.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        raise MissingDependencyError(f"{feature} needs the {top!r} package, which is not installed or failed to import "
                          f"({err}): {install_hint(extra)}", name=top) from err
