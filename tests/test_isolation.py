"""Process-global state changed by code under test is put back after each test (tests/conftest.py).

The first test changes what benchmark and CLI code changes (``--threads``, seeding, precision, dtype, grad mode,
deterministic flags, ``OMP_NUM_THREADS``); the next one (pytest runs a module's tests in order) must find the
process as the first one found it.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

SEEN: dict[str, object] = {}


def process_state() -> dict[str, object]:
    return {
        "threads": torch.get_num_threads(),
        "default_dtype": torch.get_default_dtype(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "grad": torch.is_grad_enabled(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "torch_rng": torch.get_rng_state().tolist(),
        "numpy_rng": np.random.get_state()[1].tolist(),
        "random_rng": random.getstate(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "SANA_WM_REFERENCE_OPS", "SANA_WM_ISOLATION")},
    }


def test_code_under_test_changes_process_global_state():
    from sana_wm_cli import set_torch_threads

    SEEN.update(process_state())
    set_torch_threads(2 if torch.get_num_threads() == 1 else 1)  # a subcommand's --threads
    torch.manual_seed(0)  # benchmark scripts seed the global generators
    np.random.seed(0)
    random.seed(0)
    torch.set_default_dtype(torch.float64)
    torch.set_float32_matmul_precision("medium" if torch.get_float32_matmul_precision() == "highest" else "highest")
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    os.environ["OMP_NUM_THREADS"] = "7"
    os.environ["SANA_WM_REFERENCE_OPS"] = "1"
    os.environ["SANA_WM_ISOLATION"] = "set by a test"
    changed = process_state()
    assert [k for k in changed if changed[k] == SEEN[k]] == []


def test_the_next_test_finds_the_process_as_the_previous_one_found_it():
    if not SEEN:
        pytest.skip("runs after test_code_under_test_changes_process_global_state")
    now = process_state()
    assert {k: now[k] for k in now if now[k] != SEEN[k]} == {}
