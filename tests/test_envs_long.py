"""A 10,000-step world-model rollout: no NaN, generator state and resident memory flat.

The model is the smallest config of the SANA-WM architecture (one GDN block, hidden 32, 16x16 frames), so
the test measures the env + streaming-generator plumbing (caches, buffers, info dicts), not model compute.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import sana_wm_env  # noqa: F401  (registers the ids)
from world_model.bundles import WorldModel
from world_model.checkpoints import build_transformer
from world_model.codecs import PatchCodec
from world_model.config import PRESETS

STEPS = 10_000
WARMUP = 1_000  # allocator pools and lazy caches settle before the baseline is taken
RSS_GROWTH_LIMIT_MB = 16.0


def _rss_mb() -> float:
    """Resident set size of this process from /proc (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmRSS not found in /proc/self/status")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for resident memory")
def test_ten_thousand_steps_finite_and_memory_flat(one_thread):
    cfg = dataclasses.replace(PRESETS["tiny-notext"], depth=1, hidden_size=32, head_dim=16,
                              meta={"name": "micro"})
    student = build_transformer(cfg, seed=0)
    codec = PatchCodec(patch_size=2, temporal_stride=student.config.temporal_stride)
    wm = WorldModel(student=student, codec=codec, name="micro-untrained", image_hw=(16, 16))
    # Explore never reaches a goal; a long max_steps keeps one episode (one growing clip) for the whole run.
    env = gym.make("SanaWM-Explore-v0", model=wm, task_config={"max_steps": 2 * STEPS})
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    # small motions that mostly turn in place, so the camera stays inside the scene for thousands of steps
    scale = np.array([0.05, 0.05, 0.02, 0.05, 0.05, 1.0])
    state_bytes, resets, rss_base = set(), 0, None
    for step in range(STEPS):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 6) * scale)
        assert np.isfinite(obs["pose"]).all() and np.isfinite(reward), f"non-finite output at step {step}"
        assert obs["image"].dtype == np.uint8 and obs["image"].shape == (16, 16, 3)
        if terminated or truncated:
            env.reset()
            resets += 1
        if step >= WARMUP:
            state_bytes.add(env.unwrapped.sim.backend.groups[0][1].nbytes())
        if step == WARMUP:
            rss_base = _rss_mb()
    rss_end = _rss_mb()
    assert len(state_bytes) == 1, f"generator state size changed over the rollout: {sorted(state_bytes)}"
    assert rss_end - rss_base < RSS_GROWTH_LIMIT_MB, (
        f"resident memory grew {rss_end - rss_base:.1f} MiB between step {WARMUP} and {STEPS} "
        f"({resets} resets)"
    )
    assert resets < STEPS // 100, f"{resets} resets: the rollout should mostly be one long episode"
    assert info["step"] > STEPS // 10, "the last episode should be long (thousands of chunks on one cache)"
    env.close()
