"""Shared test fixtures."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

# Triton kernels run on CPU only in Triton's interpreter, and TRITON_INTERPRET must be in the environment before
# `triton` is first imported (triton.language's own @jit helpers are decorated then; importing world_model already
# imports triton via torch._dynamo). Without CUDA nothing can launch a compiled Triton kernel anyway, so the
# interpreter is turned on for the whole session; tests/test_triton_kernels.py relies on it. TRITON_INTERPRET=0
# in the environment opts out (those tests then skip).
if not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The real recordings: shared/testdata beside the repository (as in CI), or $SANA_WM_TESTDATA.
TRAJECTORY_DATA = Path(os.environ.get("SANA_WM_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata")
                       ) / "trajectories"


@pytest.fixture(scope="session")
def trajectory_data() -> Path:
    """The folder of real trajectory files; missing data is a failure, not a skip."""
    if not TRAJECTORY_DATA.is_dir():
        pytest.fail(f"real trajectory files not found at {TRAJECTORY_DATA}; set SANA_WM_TESTDATA to the testdata "
                    "folder")
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
