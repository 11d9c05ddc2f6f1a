"""World-model bundles: save/load round trip, shipped-name resolution and errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from world_model.bundles import load_world_model, save_world_model, untrained_world_model
from world_model.checkpoints import CheckpointNotFoundError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bundle_round_trip_generates_identical_frames(tmp_path):
    wm = untrained_world_model("tiny-notext", seed=1, image_hw=(16, 16))
    wm.teacher = untrained_world_model("tiny-notext", seed=2).student
    save_world_model(wm, tmp_path / "b", card="# tiny\n")
    loaded = load_world_model(tmp_path / "b")
    assert loaded.name == "tiny-notext-untrained" and loaded.image_hw == (16, 16) and loaded.teacher is not None
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    k = torch.tensor([16.0, 16.0, 8.0, 8.0])
    path = torch.eye(4).repeat(1, 3, 1, 1)
    path[:, :, 2, 3] = torch.tensor([0.1, 0.2, 0.3])
    outs = []
    for model in (wm, loaded):
        gen = model.streaming_generator()
        frames, _ = gen.step(gen.start(image, k, seed=3), path)
        outs.append(frames)
    assert torch.equal(outs[0], outs[1])
    teacher = loaded.teacher_generator(num_steps=2)
    assert teacher.sigmas.shape == (3,)
    assert (tmp_path / "b" / "MODEL_CARD.md").read_text() == "# tiny\n"


def test_float16_bundle_is_half_the_size_and_loads_in_float32(tmp_path):
    wm = untrained_world_model("tiny-notext", seed=1, image_hw=(16, 16))
    save_world_model(wm, tmp_path / "f32")
    save_world_model(wm, tmp_path / "f16", weights_dtype=torch.float16)
    size = {k: (tmp_path / k / "student" / "model.safetensors").stat().st_size for k in ("f32", "f16")}
    assert size["f16"] < 0.55 * size["f32"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32, the default, is the CPU's fast path: no warning
        loaded = load_world_model(tmp_path / "f16")
    assert loaded.student.dtype == torch.float32  # stored float16, computed in float32
    for name, value in wm.student.state_dict().items():
        assert torch.equal(loaded.student.state_dict()[name], value.half().float()), name
    with pytest.warns(UserWarning, match="float32-only"):  # a CPU runs bfloat16 on the slower reference layers
        assert load_world_model(tmp_path / "f16", dtype=torch.bfloat16).student.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be a floating"):
        save_world_model(wm, tmp_path / "bad", weights_dtype=torch.int8)


def test_missing_and_bad_bundles(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no world-model bundle"):
        load_world_model(tmp_path / "nothing")
    wm = untrained_world_model("tiny-notext")
    save_world_model(wm, tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    meta["version"] = 7
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unsupported version 7"):
        load_world_model(tmp_path / "b")
    with pytest.raises(ValueError, match="latent channels"):
        untrained_world_model("tiny-notext", patch_size=3)
    with pytest.raises(ValueError, match="ships no teacher"):
        wm.teacher_generator()


def test_the_shipped_bundle_has_student_and_teacher_within_25_mb():
    from world_model.bundles import resolve_bundle

    folder = resolve_bundle("default")
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 25 * 2**20
    wm = load_world_model("default")
    assert wm.teacher is not None and wm.student.dtype == wm.teacher.dtype == torch.float32
    assert wm.student.config.to_dict() == wm.teacher.config.to_dict()
    assert len(wm.streaming["timesteps"]) == 4 and wm.teacher_sampler["num_steps"] >= 20
    assert wm.fov_deg == 70.0 and wm.image_hw == (64, 64) and (folder / "MODEL_CARD.md").is_file()
    # distilled: the student is not the teacher
    assert any(not torch.equal(a, b) for a, b in zip(wm.student.state_dict().values(),
                                                      wm.teacher.state_dict().values()))


def test_generator_options_in_the_bundle_apply_and_keywords_override_them(one_thread):
    wm = load_world_model("default")
    assert wm.streaming.get("show_cache") and wm.teacher_sampler.get("show_cache")
    assert wm.streaming_generator().show_cache and wm.teacher_generator().show_cache
    assert not wm.streaming_generator(show_cache=False).show_cache
    assert not wm.teacher_generator(show_cache=False).show_cache
    assert wm.streaming == load_world_model("default").streaming  # settings are not consumed by building
