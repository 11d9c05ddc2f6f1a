"""Twin datasets: the writer (parallel, resumable, deterministic), the CLI and the PyTorch Dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sana_wm_cli.main import main
from sana_wm_env.datasets import DatasetSpec, TwinClipDataset, clip_plan, make_dataset
from sana_wm_env.scenes import EVAL_SEEDS, TRAIN_SEEDS


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("twin")
    spec = DatasetSpec(clips=4, frames=12, height=24, width=32, depth=True, seed=5)
    stats = make_dataset(root, spec, workers=2, progress=False)
    assert stats["written"] == 4 and stats["frames_per_s"] > 0
    return root, spec


def test_written_clips_follow_the_format(small):
    root, spec = small
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["format"] == "sana-wm-twin/1" and meta["frames"] == 12
    families = set()
    for i in range(spec.clips):
        with np.load(root / "clips" / f"{i:06d}.npz") as z:
            assert z["rgb"].shape == (12, 24, 32, 3) and z["rgb"].dtype == np.uint8
            assert z["depth"].shape == (12, 24, 32) and z["depth"].dtype == np.float16
            assert z["c2w"].shape == (12, 4, 4) and z["intrinsics"].shape == (12, 4)
            np.testing.assert_allclose(z["timestamps"], np.arange(12) / 16.0)
            plan = clip_plan(spec, i)
            assert str(z["family"]) == plan["family"] and int(z["scene_seed"]) in TRAIN_SEEDS
            assert int(z["scene_seed"]) not in EVAL_SEEDS
            fx = z["intrinsics"][0, 0]
            assert fx == pytest.approx(16.0 / np.tan(np.radians(plan["fov"]) / 2), rel=1e-5)
            assert z["rgb"].std() > 3 and (z["depth"] > 0).any()
            families.add(str(z["family"]))
    assert families == {"rooms", "city", "outdoor"}


def test_resume_rewrites_only_missing_clips_identically(small):
    root, spec = small
    victim = root / "clips" / "000002.npz"
    with np.load(victim) as z:
        before = {k: z[k].copy() for k in ("rgb", "c2w", "depth")}
    victim.unlink()
    stats = make_dataset(root, spec, workers=1, progress=False)
    assert stats["written"] == 1 and stats["skipped"] == 3
    with np.load(victim) as z:
        for k, v in before.items():
            np.testing.assert_array_equal(z[k], v)
    with pytest.raises(ValueError, match="holds a dataset with other settings"):
        make_dataset(root, DatasetSpec(clips=4, frames=12, height=24, width=32, depth=True, seed=6), progress=False)


def test_torch_dataset_random_temporal_crops(small):
    root, _ = small
    ds = TwinClipDataset(root, num_frames=5, stride=2, load_depth=True)
    assert len(ds) == 4
    torch.manual_seed(0)
    starts = set()
    for _ in range(12):
        item = ds[1]
        starts.add(item["start"])
        assert item["rgb"].shape == (5, 24, 32, 3) and item["depth"].shape == (5, 24, 32)
        torch.testing.assert_close(item["c2w"][0], torch.eye(4))
        torch.testing.assert_close(item["timestamps"], torch.arange(5) * 2 / 16.0)
    assert len(starts) > 1 and max(starts) <= 12 - 9
    fixed = TwinClipDataset(root, num_frames=12, random_crop=False, relative=False)
    with np.load(root / "clips" / "000000.npz") as z:
        np.testing.assert_allclose(fixed[0]["c2w"].numpy(), z["c2w"], atol=1e-5)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["rgb"].shape == (2, 5, 24, 32, 3)
    with pytest.raises(ValueError, match="num_frames must be an int in"):
        TwinClipDataset(root, num_frames=7, stride=2)


def test_spec_and_cli_bad_input(tmp_path, capsys):
    with pytest.raises(ValueError, match="height must be a positive int"):
        DatasetSpec(clips=1, frames=4, height=0, width=8)
    with pytest.raises(ValueError, match="scenes must be a non-empty subset"):
        DatasetSpec(clips=1, frames=4, height=8, width=8, scenes=("moon",))
    with pytest.raises(ValueError, match="revisit clips need at least"):
        DatasetSpec(clips=1, frames=17, height=8, width=8, revisit_fraction=0.5)
    out = tmp_path / "cli"
    rc = main(["dataset", "make", "--scenes", "rooms", "--clips", "2", "--frames", "6", "--size", "16x20",
               "--out", str(out), "--no-progress", "--split", "eval"])
    assert rc == 0 and "wrote 2 clip(s)" in capsys.readouterr().out
    with np.load(out / "clips" / "000001.npz") as z:
        assert z["rgb"].shape == (6, 16, 20, 3) and int(z["scene_seed"]) in EVAL_SEEDS and "depth" not in z
    with pytest.raises(SystemExit):
        main(["dataset", "make", "--clips", "1", "--frames", "4", "--size", "0x8", "--out", str(out)])
    assert main(["dataset", "make", "--clips", "1", "--frames", "4", "--scenes", "moon", "--out",
                 str(tmp_path / "x")]) == 2
    with pytest.raises(SystemExit):  # --ray takes auto, local or an address; checked before anything runs
        main(["dataset", "make", "--clips", "1", "--frames", "4", "--out", str(tmp_path / "y"), "--ray", " "])
    assert not (tmp_path / "y").exists()


def test_damaged_clips_are_reported_named_and_rendered_again(tmp_path, capsys):
    root = tmp_path / "twin"
    make = ["dataset", "make", "--scenes", "rooms", "--clips", "3", "--frames", "4", "--size", "16x16",
            "--out", str(root), "--no-progress"]
    assert main(make) == 0
    clips = [root / "clips" / f"{i:06d}.npz" for i in range(3)]
    good = [p.read_bytes() for p in clips]
    clips[1].write_bytes(good[1][: len(good[1]) // 2])  # truncated (a copy cut short, a full disk)
    flipped = bytearray(good[2])
    flipped[600] ^= 0xFF  # one byte of the frames changed: only the checksum tells
    clips[2].write_bytes(bytes(flipped))
    capsys.readouterr()
    assert main(["dataset", "info", str(root)]) == 1
    out = capsys.readouterr().out
    assert "clips present: 1 / 3 (2 damaged" in out
    assert f"damaged: clip {clips[1]} is damaged" in out and f"damaged: clip {clips[2]} is damaged" in out
    assert "checksum" in out or "CRC" in out
    # Loading names the clip and what to do, instead of a bare BadZipFile traceback.
    ds = TwinClipDataset(root, random_crop=False)
    for i in (1, 2):
        with pytest.raises(ValueError, match=rf"clip {clips[i]} cannot be read \(BadZipFile: .*sana-wm dataset make"):
            ds[i]
    # Resuming renders the damaged clips again, identically; the dataset is whole.
    assert main(make) == 0
    out = capsys.readouterr().out
    assert "wrote 2 clip(s), 1 already present" in out and out.count("rendered again: clip") == 2
    assert [p.read_bytes() for p in clips] == good
    assert main(["dataset", "info", str(root)]) == 0 and "clips present: 3 / 3\n" in capsys.readouterr().out
    # --out is checked first: a file where the folder should be
    (tmp_path / "file").write_text("x")
    assert main([*make[:-3], "--out", str(tmp_path / "file"), "--no-progress"]) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "file").read_text() == "x"


@pytest.mark.slow
def test_ctrl_c_ends_dataset_make_with_one_line_and_leaves_only_whole_clips(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "twin"
    cmd = [sys.executable, "-m", "sana_wm_cli.main", "dataset", "make", "--scenes", "rooms", "--clips", "400",
           "--frames", "8", "--size", "16x16", "--workers", "2", "--no-progress", "--out", str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not ((root / "clips").is_dir() and any((root / "clips").glob("0*.npz"))):  # wait for the first clip
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines() == [
        "sana-wm dataset: interrupted; the outputs of this run were not completed"]
    kept = sorted(p.name for p in (root / "clips").glob("0*.npz"))
    assert 0 < len(kept) < 400
    from sana_wm_env.datasets.writer import DatasetSpec, damaged_clips

    assert damaged_clips(root, DatasetSpec.from_json(json.loads((root / "dataset.json").read_text()))) == {}
