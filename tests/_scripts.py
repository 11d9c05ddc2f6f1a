"""Load the benchmark and example scripts (not packages) as modules, so tests can call their ``main``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: str) -> ModuleType:
    """Import the script at ``path`` (relative to the repository root, e.g. ``"benchmarks/bench_codecs.py"``).

    The module is named after the file and registered in ``sys.modules`` before it runs: dataclasses resolve their
    annotations through it. Each call executes the script afresh.
    """
    file = ROOT / path
    if not file.is_file():
        raise FileNotFoundError(f"no script {path!r} under {ROOT}")
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module
