"""Shared test fixtures."""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# Triton kernels run on CPU only in Triton's interpreter, and TRITON_INTERPRET must be in the environment before
# `triton` is first imported (triton.language's own @jit helpers are decorated then; torch._dynamo, which
# torch.compile and diffusers load, imports triton). Without CUDA nothing can launch a compiled Triton kernel
# anyway, so the interpreter is turned on for the whole session; tests/test_triton_kernels.py relies on it.
# TRITON_INTERPRET=0 in the environment opts out (those tests then skip).
if not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The real recordings, vendored in tests/data (a plain clone tests itself); $SANA_WM_TESTDATA points elsewhere.
TRAJECTORY_DATA = Path(os.environ.get("SANA_WM_TESTDATA", Path(__file__).resolve().parent / "data")) / "trajectories"


# Environment variables that record a choice made once, when a library was first imported (MuJoCo's GL backend,
# sana_wm_env.scenes.gl): the choice stays made whatever the variables say, so they stay too (children inherit them).
IMPORT_TIME_ENV: tuple[str, ...] = ("MUJOCO_GL", "PYOPENGL_PLATFORM")


def _torch_flags() -> dict:
    """Process-global torch settings that benchmark and CLI code (``--threads``, seeding, precision) may change."""
    cudnn = torch.backends.cudnn
    return {
        "threads": torch.get_num_threads(),
        "default_dtype": torch.get_default_dtype(),
        "default_device": torch.get_default_device(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "grad": torch.is_grad_enabled(),
        "anomaly": torch.is_anomaly_enabled(),
        "deterministic": (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled()),
        "cudnn": (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32),
    }


def _set_torch_flags(flags: dict) -> None:
    """Put back what differs from ``flags`` (only that: a default device set to "cpu" would add a dispatch mode)."""
    now, cudnn = _torch_flags(), torch.backends.cudnn
    setters = {
        "threads": torch.set_num_threads,
        "default_dtype": torch.set_default_dtype,
        "default_device": lambda d: torch.set_default_device(None if d == torch.device("cpu") else d),
        "matmul_precision": torch.set_float32_matmul_precision,
        "grad": torch.set_grad_enabled,
        "anomaly": torch.set_anomaly_enabled,
        "deterministic": lambda d: torch.use_deterministic_algorithms(d[0], warn_only=d[1]),
    }
    for name, setter in setters.items():
        if now[name] != flags[name]:
            setter(flags[name])
    if now["cudnn"] != flags["cudnn"]:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32 = flags["cudnn"]


def _save() -> tuple:
    return _torch_flags(), dict(os.environ), (torch.get_rng_state(), np.random.get_state(), random.getstate())


def _restore(saved: tuple) -> None:
    flags, env, rngs = saved
    if _torch_flags() != flags:
        _set_torch_flags(flags)
    torch.set_rng_state(rngs[0])
    np.random.set_state(rngs[1])
    random.setstate(rngs[2])
    if dict(os.environ) != env:
        for key in set(os.environ) - set(env) - set(IMPORT_TIME_ENV):
            del os.environ[key]
        for key, value in env.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@pytest.fixture(autouse=True)
def restore_process_state():
    """Every test leaves the process as it found it, so test order cannot change a result: torch threads, dtype,
    device, matmul precision, grad/anomaly mode, deterministic flags, the global RNGs (torch, numpy, random) and the
    environment variables (``OMP_NUM_THREADS``, ...) are put back after each test, whatever the code under test set."""
    saved = _save()
    yield
    _restore(saved)


@pytest.fixture(scope="module", autouse=True)
def restore_process_state_per_module():
    """The same around each test module, for what its module-scoped fixtures change (seeding, environment)."""
    saved = _save()
    yield
    _restore(saved)


@pytest.fixture(scope="session")
def trajectory_data() -> Path:
    """The folder of real trajectory files; missing data is a failure, not a skip."""
    if not TRAJECTORY_DATA.is_dir():
        pytest.fail(f"real trajectory files not found at {TRAJECTORY_DATA}; they are vendored in tests/data, or set "
                    "SANA_WM_TESTDATA to a folder with a trajectories/ subfolder")
    return TRAJECTORY_DATA


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not thrash a shared 2-core runner)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def wm():
    """An untrained tiny-notext world model at 16x16 (plumbing tests)."""
    from world_model.bundles import untrained_world_model

    return untrained_world_model("tiny-notext", image_hw=(16, 16))
