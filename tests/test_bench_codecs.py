"""benchmarks/bench_codecs.py end to end on a tiny twin dataset written by the real dataset writer."""

from __future__ import annotations

import json
import math

import pytest
from _scripts import load_script

from sana_wm_env.datasets import DatasetSpec, make_dataset
from world_model.codecs import LTX2Codec, build_codec

pytestmark = pytest.mark.slow  # benchmark smoke runs: the slow tier


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_codecs.py")


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    root = tmp_path_factory.mktemp("twin16")
    make_dataset(root, DatasetSpec(clips=3, frames=6, height=16, width=16, seed=3), workers=1, progress=False)
    return root


TINY = ["--vae-steps", "2", "--vae-batch", "2", "--vae-frames", "3", "--vae-channels", "8", "--vae-width", "8",
        "--stats-clips", "2", "--val-clips", "1", "--repeats", "1", "--chunk", "1", "--no-progress"]


def test_every_candidate_gets_a_row_and_the_full_patch_codec_is_exact(bench, twin, tmp_path, one_thread):
    out = tmp_path / "out"
    result = bench.main(["--data", str(twin), "--out", str(out), "--patch", "8:2:384", "8:2:64", "8:1:64", *TINY])
    saved = json.loads((out / "bench_codecs.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["command"].startswith("python benchmarks/bench_codecs.py --data")
    assert saved["versions"]["torch"] and saved["versions"]["diffusers"] and saved["machine"]["cpu_count"] >= 1
    # 6 stored frames: the longest length both temporal strides accept is 5; the last clip is held out.
    assert saved["data"] | {"root": None} == {"root": None, "clips": 3, "stored_frames": 6, "image_hw": [16, 16],
                                              "train_clips": 2, "val_clips": 1, "eval_frames": 5}
    rows = {r["name"]: r for r in saved["rows"]}
    assert set(rows) == {"patch 8/2/384", "patch 8/2/64", "patch 8/1/64", "ltx2-vae 8ch p4 w8"}
    for r in rows.values():
        assert math.isfinite(r["psnr_db"]) and math.isfinite(r["ssim"]) and r["psnr_db"] > 0
        assert r["tokens_per_latent_frame"] == 4 and r["latent_grid"] == [2, 2]
        assert r["latent_values_per_frame"] == r["latent_channels"] * 4 / r["temporal_stride"]
        assert r["encode_ms_per_frame"] > 0 and r["decode_ms_per_frame"] > 0 and r["stream_decode_ms_per_frame"] > 0
        assert r["stream_max_abs_diff"] < 1e-4  # both codecs stream exactly (the VAE's decoder is causal)
    # 3 * 2 * 8 * 8 = 384 channels keep everything: exact up to float32 rounding (capped PSNR).
    assert rows["patch 8/2/384"]["psnr_db"] >= 60 and rows["patch 8/2/384"]["params"] == 0
    assert rows["patch 8/2/64"]["psnr_db"] < rows["patch 8/2/384"]["psnr_db"]

    vae = rows["ltx2-vae 8ch p4 w8"]
    assert (vae["spatial_stride"], vae["temporal_stride"], vae["latent_channels"]) == (8, 2, 8)
    assert vae["train"]["steps"] == 2 and len(vae["train"]["curve"]) == 2 and vae["params"] > 0
    assert vae["params"] == vae["vae"]["params_encoder"] + vae["vae"]["params_decoder"]
    # The saved VAE is what `--codec ltx2:<folder>` loads.
    codec = build_codec(vae["config"])
    assert isinstance(codec, LTX2Codec) and (codec.spatial_stride, codec.temporal_stride) == (8, 2)
    assert codec.to_config()["path"] == str((out / "vae-8ch").resolve())


def test_bad_arguments_raise_value_errors(bench, twin, tmp_path):
    with pytest.raises(ValueError, match="--patch must be P:S:C"):
        bench.main(["--data", str(twin), "--patch", "8:2", "--no-vae"])
    with pytest.raises(ValueError, match="--vae-frames must be 1 \\+ 2k"):
        bench.main(["--data", str(twin), "--vae-frames", "4"])
    with pytest.raises(ValueError, match="a spatiotemporal down block from 4 to 64"):
        bench.main(["--data", str(twin), "--out", str(tmp_path), "--vae-channels", "4", "--val-clips", "1"])
    with pytest.raises(ValueError, match="--val-clips 3 leaves 0 training clips"):
        bench.main(["--data", str(twin), "--val-clips", "3"])
