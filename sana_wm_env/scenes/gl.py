"""Headless OpenGL backend selection for MuJoCo rendering.

MuJoCo reads ``MUJOCO_GL`` (and PyOpenGL ``PYOPENGL_PLATFORM``) when it is first imported, so the choice has to
be made before that. If ``MUJOCO_GL`` is set we respect it; otherwise we probe, in a short subprocess, EGL
(Mesa's software or a GPU driver) and then OSMesa, and export the first one that can create a context so that
worker processes inherit it. Everything in this package imports mujoco through ``import_mujoco``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from types import ModuleType

BACKENDS: tuple[str, ...] = ("egl", "osmesa")
_PROBE = (
    "import os, sys; b = sys.argv[1]; os.environ['MUJOCO_GL'] = b; os.environ['PYOPENGL_PLATFORM'] = b\n"
    "import importlib; ctx = importlib.import_module('mujoco.' + b).GLContext(8, 8); ctx.make_current(); ctx.free()"
)


def _probe(backend: str) -> bool:
    try:
        res = subprocess.run(
            [sys.executable, "-c", _PROBE, backend], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def select_backend() -> str:
    """Return the GL backend to use, setting ``MUJOCO_GL``/``PYOPENGL_PLATFORM`` if they were unset."""
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    if not chosen:
        for backend in BACKENDS:
            if _probe(backend):
                chosen = backend
                break
        else:
            raise RuntimeError(
                "no headless OpenGL backend works: tried MUJOCO_GL=egl (needs the system packages libegl1, "
                "libgl1 and libgl1-mesa-dri) and MUJOCO_GL=osmesa (needs libosmesa6)"
            )
        os.environ["MUJOCO_GL"] = chosen
    if chosen in BACKENDS:
        os.environ.setdefault("PYOPENGL_PLATFORM", chosen)
    return chosen


def import_mujoco() -> ModuleType:
    """Import mujoco after the GL backend has been chosen."""
    if "mujoco" not in sys.modules:
        select_backend()
    import mujoco

    return mujoco


def _load_triton_first() -> None:
    """Triton and Mesa (EGL/OSMesa through llvmpipe) each bring their own LLVM: loading Triton's library after a
    Mesa context exists crashes the process (a segmentation fault), and torch loads Triton lazily (the first
    ``torch.compile`` or ``torch._dynamo`` import). Loading it before the first context avoids that (~0.2 s)."""
    if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
        with contextlib.suppress(ImportError):  # a broken Triton install: torch says so if it is ever needed
            import triton  # noqa: F401


def gl_context(width: int, height: int):
    """Create (but do not make current) an offscreen GL context of the selected backend."""
    backend = select_backend()
    if backend in BACKENDS:
        _load_triton_first()
    import_mujoco()
    if backend == "egl":
        from mujoco.egl import GLContext
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    else:
        from mujoco.glfw import GLContext
    return GLContext(width, height)
