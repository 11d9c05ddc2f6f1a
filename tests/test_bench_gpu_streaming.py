"""The GPU benchmark script's --smoke mode: a tiny config on CPU through the same code paths as the H100 run."""

from __future__ import annotations

import json

import pytest
from _scripts import load_script

pytestmark = pytest.mark.slow  # benchmark smoke runs: the slow tier


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_gpu_streaming.py")


def test_smoke_run_covers_every_case_and_writes_the_json(bench, tmp_path, one_thread):
    pytest.importorskip("modelopt.torch.quantization")
    out = tmp_path / "smoke.json"
    result = bench.main(["--smoke", "--strict", "--lengths", "2", "--quant-modes", "bf16", "fp8", "nvfp4",
                         "--compile-modes", "off", "--warmup-chunks", "2", "--timed-chunks", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    meta = result["meta"]
    assert meta["command"].startswith("python benchmarks/bench_gpu_streaming.py --smoke")
    assert meta["versions"]["torch"] and meta["smoke"] and meta["device"] == "cpu"
    rows = result["rows"]
    assert {r["case"] for r in rows} == set(bench.CASES)

    def row(case, variant, **match):
        found = [r for r in rows if r["case"] == case and r["variant"] == variant
                 and all(r.get(k) == v for k, v in match.items())]
        assert len(found) == 1, (case, variant, match)
        return found[0]

    for variant in ("stage1", "vae_decode", "generator+decode"):
        r = row("stream", variant)
        assert r["ms_per_chunk"] > 0 and r["rtf"] == pytest.approx(1.5 / (r["ms_per_chunk"] / 1000), rel=1e-2)
    assert row("clip60", "stage1")["chunks"] == 2  # 3 s = 7 latent frames = chunks of 4 + 3
    for variant in ("hybrid", "all-softmax"):
        for mode in ("streaming", "chunk_causal", "bidirectional"):
            assert row("memory", variant, mode=mode)["result"] == "ok"
    assert row("compare", "ours")["time_vs_diffusers"] > 0
    assert row("compare", "ours")["speedup_vs_reference_ops"] > 0
    fp8 = row("quant", "fp8")
    assert fp8["result"] == "ok" and 0 < fp8["rel_diff_vs_bf16"] < 0.1 and fp8["quantized_modules"] == 2 * 8
    assert row("quant", "nvfp4")["result"] == "unavailable" and "CUDA" in row("quant", "nvfp4")["error"]
    assert row("compile", "off")["result"] == "ok"
    assert row("attention", "sdpa_padded", shape="streaming chunk")["max_abs_diff_vs_sdpa"] < 1e-5
    assert all(not t["meaningful"] for t in result["targets"].values())
