"""Twin datasets: the writer (parallel, resumable, deterministic), the CLI and the PyTorch Dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sana_wm_env.cli.main import main
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
