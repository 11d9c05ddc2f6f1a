"""benchmarks/bench_camera_signal.py on a tiny twin dataset and an untrained tiny bundle."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _scripts import load_script

from world_model.bundles import save_world_model, untrained_world_model

pytestmark = pytest.mark.slow  # benchmark smoke runs: the slow tier


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_camera_signal.py")


def test_camera_signal_end_to_end(bench, tmp_path):
    from sana_wm_env.datasets import DatasetSpec, make_dataset

    data = tmp_path / "twin"
    make_dataset(data, DatasetSpec(clips=4, frames=8, height=16, width=16, seed=2), workers=1, progress=False)
    wm = untrained_world_model("tiny-notext", seed=3, image_hw=(16, 16))
    # the camera branches start at zero (adapters that begin as no-ops): wake them so the camera reaches the output
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in wm.student.parameters():
            if not param.any():
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    bundle = save_world_model(wm, tmp_path / "wm")
    out = tmp_path / "camera.json"
    res = bench.main(["--model", str(bundle), "--data", str(data), "--batches", "2", "--batch-size", "2",
                      "--latent-frames", "4", "--sigmas", "0.5", "--json", str(out)])
    assert json.loads(out.read_text()) == res
    assert res["transformer"] == "student" and res["evaluations"] == 2 and res["clips"] == 4  # no teacher shipped
    assert all(math.isfinite(v) and v > 0 for v in res["loss"].values())
    # a wrong camera changes the loss (random weights: in either direction)
    assert res["loss"]["static"] != res["loss"]["true"] and res["loss"]["shuffled"] != res["loss"]["true"]
    assert res["gap"]["static"] == pytest.approx((res["loss"]["static"] - res["loss"]["true"]) / res["loss"]["true"])
    with pytest.raises(ValueError, match="exceed the dataset"):
        bench.main(["--model", str(bundle), "--data", str(data), "--batches", "3", "--batch-size", "2",
                    "--latent-frames", "4"])
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        bench.main(["--model", str(bundle), "--data", str(data), "--batch-size", "1", "--latent-frames", "4"])
