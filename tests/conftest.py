"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


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
