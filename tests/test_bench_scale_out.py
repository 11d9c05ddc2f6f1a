"""benchmarks/bench_scale_out.py end to end at toy sizes on a real local Ray instance (the slow tier)."""

from __future__ import annotations

import json

import pytest
from _scripts import load_script

pytestmark = pytest.mark.slow  # benchmark smoke runs: the slow tier


def test_one_worker_row_is_measured_checked_and_tabled(tmp_path, one_thread, capsys):
    pytest.importorskip("ray")
    from world_model.bundles import save_world_model, untrained_world_model

    bundle = save_world_model(untrained_world_model("tiny-notext", image_hw=(16, 16), seed=3), tmp_path / "tiny")
    bench = load_script("benchmarks/bench_scale_out.py")
    out = tmp_path / "scale.json"
    result = bench.main(["--workers", "1", "--clips", "2", "--frames", "4", "--size", "16x16", "--model",
                         str(bundle), "--episodes-per-family", "1", "--eval-frames", "9", "--json", str(out)])
    (row,) = result["rows"]  # run() raises if a Ray result differs from the local one
    assert row["workers"] == 1 and all(v > 0 for k, v in row.items() if k.endswith("_s"))
    assert json.loads(out.read_text())["rows"] == result["rows"] and result["versions"]["ray"].startswith("2.")
    assert "| 1 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--workers"):
        bench.main(["--workers", "0"])
