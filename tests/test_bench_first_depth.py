"""benchmarks/bench_first_depth.py: generated first-frame depth against the twin's, on a tiny geometry model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _scripts import load_script

from world_model.bundles import save_world_model, untrained_world_model

pytestmark = pytest.mark.slow  # benchmark smoke runs: the slow tier


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_first_depth.py")


def test_depth_errors_of_known_maps(bench):
    truth = np.array([[0.0, 2.0], [4.0, 8.0]])
    exact = bench.depth_errors(truth.copy(), truth)
    assert exact["abs_rel"] == 0 and exact["delta_1.25"] == 1 and exact["sky_recall"] == 1
    doubled = bench.depth_errors(np.array([[1.0, 4.0], [8.0, 16.0]]), truth)
    assert doubled["abs_rel"] == pytest.approx(1.0) and doubled["delta_1.25"] == 0
    assert doubled["abs_rel_median_scaled"] == pytest.approx(0.0) and doubled["sky_recall"] == 0


def test_first_depth_benchmark_end_to_end(bench, tmp_path, one_thread):
    bundle = save_world_model(untrained_world_model("tiny-geo", image_hw=(16, 16)), tmp_path / "geo")
    out = tmp_path / "depth.json"
    res = bench.main(["--model", str(bundle), "--images", "3", "--json", str(out)])
    assert res["images"] == 3 and json.loads(out.read_text())["images"] == 3
    assert all(r["surface_pixels"] >= 0 for r in res["per_image"])
    with pytest.raises(SystemExit, match="generates no depth"):
        plain = save_world_model(untrained_world_model("tiny-notext", image_hw=(16, 16)), tmp_path / "plain")
        bench.main(["--model", str(plain), "--images", "1"])
