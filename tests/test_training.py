"""Training: timestep samplers and the chunk mixture, loss masking, EMA, overfitting, exact resume, checkpoint
files, distillation closing the student-teacher gap, and the train / distill commands end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from world_model.bundles import load_world_model
from world_model.checkpoints import build_transformer, load_transformer
from world_model.sampling import shift_sigmas
from world_model.training import (
    CHUNK_MODES,
    DistillConfig,
    Distiller,
    TrainConfig,
    Trainer,
    apply_first_frame_condition,
    collate_clips,
    ema_decay_at,
    ema_update,
    flow_matching_loss,
    noisy_mask,
    sample_chunk_sigmas,
    sample_frame_sigmas,
    teacher_grid,
)
from world_model.training.data import StepBatchSampler
from world_model.training.distill import unshift_sigmas

pytestmark = pytest.mark.usefixtures("one_thread")
CODEC = {"type": "patch", "patch_size": 2, "temporal_stride": 1}
BOUNDS = [(0, 4), (4, 7), (7, 10)]


class PanClips(torch.utils.data.Dataset):
    """Smooth random textures panned sideways while the camera slides right (a learnable toy world)."""

    def __init__(self, n: int = 2, frames: int = 7, hw: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            coarse = torch.rand(1, 3, 4, 6, generator=g) * 1.6 - 0.8
            tex = F.interpolate(coarse, size=(hw, hw + frames), mode="bilinear", align_corners=False)[0]
            video = torch.stack([tex[:, :, k:k + hw] for k in range(frames)])
            c2w = torch.eye(4).repeat(frames, 1, 1)
            c2w[:, 0, 3] = torch.arange(frames) * 0.05
            rgb = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
            self.items.append({"rgb": rgb, "c2w": c2w, "intrinsics": torch.tensor([16.0, 16.0, 7.5, 7.5])})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def tiny_config(**kw) -> TrainConfig:
    base = dict(model="tiny-notext", codec=CODEC, steps=6, batch_size=2, lr=2e-3, frames_schedule=((0, 4),),
                log_every=1, checkpoint_every=3, sample_steps=2, seed=0)
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------ samplers
def test_frame_sigmas_are_shifted_logit_normal():
    g = torch.Generator().manual_seed(0)
    s = sample_frame_sigmas(2000, 10, shift=1.0, generator=g)
    logit = torch.log(s / (1 - s))
    assert s.shape == (2000, 10) and abs(logit.mean().item()) < 0.03 and abs(logit.std().item() - 1) < 0.03
    s3 = sample_frame_sigmas(2000, 10, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s3, shift_sigmas(s, 3.0))  # the same draws, shifted
    assert s3.median().item() == pytest.approx(0.75, abs=0.01)  # shift 3 maps the median 0.5 to 0.75
    # per-frame independence: frames of one clip are uncorrelated
    assert abs(torch.corrcoef(logit[:, :2].T)[0, 1].item()) < 0.08


def test_first_frame_condition_cleans_frame0_and_masks_it():
    sig = torch.full((4000, 5), 0.5)
    out, cond = apply_first_frame_condition(sig, 0.9, generator=torch.Generator().manual_seed(1))
    assert cond.float().mean().item() == pytest.approx(0.9, abs=0.02)
    assert bool((out[cond, 0] == 0).all()) and bool((out[~cond, 0] == 0.5).all()) and bool((out[:, 1:] == 0.5).all())
    mask = noisy_mask(out)
    assert bool((mask[:, 0] == ~cond).all()) and bool(mask[:, 1:].all())
    assert not apply_first_frame_condition(sig, 0.0)[1].any() and apply_first_frame_condition(sig, 1.0)[1].all()
    with pytest.raises(ValueError, match="prob"):
        apply_first_frame_condition(sig, 1.5)


def _chunk_levels(mode: str, n: int = 3000, seed: int = 0):
    sig, modes = sample_chunk_sigmas(n, BOUNDS, mixture={mode: 1.0}, shift=1.0,
                                     generator=torch.Generator().manual_seed(seed))
    assert bool((modes == CHUNK_MODES.index(mode)).all())
    for a, b in BOUNDS:  # one level per chunk
        assert bool((sig[:, a:b] == sig[:, a:a + 1]).all())
    return torch.stack([sig[:, a] for a, _ in BOUNDS], dim=1)  # (n, C)


def test_chunk_mixture_modes_follow_their_definitions():
    c = len(BOUNDS)
    same = _chunk_levels("same_t")
    assert bool((same == same[:, :1]).all()) and same.min() > 0 and same.max() < 1

    inc = _chunk_levels("incremental")
    assert bool((inc[:, 1:] >= inc[:, :-1]).all())  # earlier chunks are never noisier
    interior = (inc > 0) & (inc < 1)
    both = interior[:, 1:] & interior[:, :-1]
    assert torch.allclose((inc[:, 1:] - inc[:, :-1])[both], torch.full_like(inc[:, 1:][both], 1 / c), atol=1e-6)
    # the frontier chunk is uniform over the chunks: each chunk is sometimes the unclipped one at tau
    assert float((inc[:, 0] > 0).float().mean()) > 0.5 and float((inc[:, -1] < 1).float().mean()) > 0.3

    anchor = _chunk_levels("last_chunk_anchor")
    tau = anchor[:, -1]
    expect = (tau[:, None] + (torch.arange(c) - (c - 1)) / c).clamp(0, 1)
    assert torch.allclose(anchor, expect, atol=1e-6) and bool((tau > 0).all())

    tf = _chunk_levels("teacher_forcing_clean")
    assert bool((tf[:, :-1] == 0).all()) and bool((tf[:, -1] > 0).all())

    # the default mixture draws each mode with its probability
    _, modes = sample_chunk_sigmas(20000, BOUNDS, generator=torch.Generator().manual_seed(3))
    freq = torch.bincount(modes, minlength=4).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.1, 0.4, 0.4, 0.1]), atol=0.015)
    with pytest.raises(ValueError, match="sum to 1"):
        sample_chunk_sigmas(2, BOUNDS, mixture={"same_t": 0.5})
    with pytest.raises(ValueError, match="unknown modes"):
        sample_chunk_sigmas(2, BOUNDS, mixture={"pyramid": 1.0})


def test_chunk_shift_keeps_clean_context_clean():
    sig, _ = sample_chunk_sigmas(500, BOUNDS, mixture={"teacher_forcing_clean": 1.0}, shift=8.0,
                                 generator=torch.Generator().manual_seed(0))
    assert bool((sig[:, :7] == 0).all()) and bool((sig[:, 7:] > 0).all())


def test_loss_ignores_clean_frames():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 4, 2, 2, generator=g), torch.randn(2, 3, 4, 2, 2, generator=g)
    mask = torch.tensor([[False, True, True, True], [True, True, False, True]])
    loss = flow_matching_loss(pred, target, mask)
    per_frame = (pred - target).pow(2).mean(dim=(1, 3, 4))
    assert loss.item() == pytest.approx(per_frame[mask].mean().item(), rel=1e-6)
    pred2 = pred.clone()
    pred2[0, :, 0] += 100.0  # a masked-out (clean) frame: no effect
    assert flow_matching_loss(pred2, target, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="no noisy frame"):
        flow_matching_loss(pred, target, torch.zeros(2, 4, dtype=torch.bool))


def test_ema_update_math():
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, model, 0.9)
    for e, b, m in zip(ema.parameters(), before, model.parameters()):
        assert torch.allclose(e, 0.9 * b + 0.1 * m, atol=1e-7)
    assert ema_decay_at(0.999, 0, True) == pytest.approx(0.1) and ema_decay_at(0.999, 10**6, True) == 0.999
    assert ema_decay_at(0.5, 0, False) == 0.5


def test_teacher_grid_contains_the_student_sigmas():
    student = torch.tensor([1.0, 0.96, 0.889, 0.727, 0.0])
    grid, idx = teacher_grid(student, 5, 8.0)
    assert len(grid) == 21 and idx == [0, 5, 10, 15, 20]
    assert torch.equal(grid[idx], student.float()) and bool((grid[1:] < grid[:-1]).all())
    u = unshift_sigmas(grid[:6].double(), 8.0)  # uniform steps in the unshifted domain inside a segment
    assert torch.allclose(u[1:] - u[:-1], (u[1] - u[0]).expand(5), atol=1e-5)


# ------------------------------------------------------------------------------------------------ data, config
def test_items_collate_from_rgb_or_frames_and_bad_items_raise():
    item = PanClips(1)[0]
    frames_item = {"frames": item["rgb"].permute(0, 3, 1, 2).float() / 127.5 - 1, "c2w": item["c2w"],
                   "intrinsics": item["intrinsics"].expand(7, 4)}
    a, b = collate_clips([item]), collate_clips([frames_item])
    assert a["frames"].shape == (1, 7, 3, 16, 16) and torch.allclose(a["frames"], b["frames"])
    assert torch.equal(a["intrinsics"], b["intrinsics"])
    with pytest.raises(ValueError, match="c2w"):
        collate_clips([{**item, "c2w": torch.eye(4)}])
    with pytest.raises(ValueError, match="rgb"):
        collate_clips([{"c2w": item["c2w"], "intrinsics": item["intrinsics"]}])


def test_step_batches_depend_only_on_seed_and_step():
    s = StepBatchSampler(5, 2, seed=3, start=0, end=10)
    full = list(s)
    assert full[4:] == list(StepBatchSampler(5, 2, seed=3, start=4, end=10))
    assert sorted(i for b in full[:5] for i, _ in b) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # two epochs of 5
    assert full != list(StepBatchSampler(5, 2, seed=4, start=0, end=10))


def test_config_json_round_trip_and_validation(tmp_path):
    cfg = tiny_config(frames_schedule=((0, 4), (100, 7)), chunk_mixture={"same_t": 1.0})
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert TrainConfig.from_json(tmp_path / "c.json") == cfg
    assert cfg.latent_frames(99) == 4 and cfg.latent_frames(100) == 7
    d = DistillConfig(model="tiny-notext", codec=CODEC, teacher="x", target="x0")
    assert DistillConfig.from_json(d.to_json()) == d
    with pytest.raises(ValueError, match="frames_schedule"):
        tiny_config(frames_schedule=((5, 4),))
    with pytest.raises(ValueError, match="mode"):
        tiny_config(mode="causal")
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="chunk_causal"):
        DistillConfig(model="tiny-notext", codec=CODEC, mode="bidirectional")


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("overfit")
    cfg = tiny_config(steps=50, batch_size=2, lr=3e-3, checkpoint_every=50, log_every=1, ema_decay=0.9)
    trainer = Trainer(cfg, PanClips(1), run, device="cpu", progress=False)
    trainer.train()
    return trainer


def test_overfitting_one_clip_lowers_the_loss(overfit_run):
    losses = [m["loss"] for m in overfit_run.read_metrics() if "loss" in m]
    assert len(losses) == 50 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)


def test_bidirectional_mode_and_progressive_length(tmp_path):
    cfg = tiny_config(mode="bidirectional", steps=3, frames_schedule=((0, 2), (2, 4)), checkpoint_every=10)
    trainer = Trainer(cfg, PanClips(2), tmp_path, device="cpu", progress=False)
    trainer.train()
    recs = [m for m in trainer.read_metrics() if "loss" in m]
    assert [m["latent_frames"] for m in recs] == [2, 2, 4]


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    data = PanClips(3)
    full = Trainer(tiny_config(), data, tmp_path / "a", device="cpu", progress=False)
    full.train()
    part = Trainer(tiny_config(), data, tmp_path / "b", device="cpu", progress=False)
    part.train(until=4)  # writes its final checkpoint at step 4 (plus the periodic one at 3)
    with open(part.metrics_path, "a") as f:  # a tail written after the checkpoint by an interrupted run
        f.write(json.dumps({"step": 5, "loss": -1.0}) + "\n")
    with pytest.raises(ValueError, match="resume"):
        Trainer(tiny_config(), data, tmp_path / "b", device="cpu", progress=False)
    resumed = Trainer(tiny_config(), data, tmp_path / "b", device="cpu", progress=False, resume=True)
    assert resumed.step == 4
    resumed.train()
    la = [m["loss"] for m in full.read_metrics() if "loss" in m]
    lb = [m["loss"] for m in resumed.read_metrics() if "loss" in m]
    assert la == lb and len(la) == 6
    for (ka, va), (kb, vb) in zip(full.ema.state_dict().items(), resumed.ema.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    for va, vb in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(va, vb)
    with pytest.raises(ValueError, match="no checkpoint"):
        Trainer(tiny_config(), data, tmp_path / "c", device="cpu", progress=False, resume=True)


def test_checkpoint_files(overfit_run):
    run = overfit_run.run_dir
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert ckpts == ["step_00000050"] and (run / "checkpoints" / "latest").read_text().strip() == "step_00000050"
    files = {p.name for p in (run / "checkpoints" / "step_00000050").iterdir()}
    assert files == {"model.safetensors", "ema.safetensors", "optimizer.pt", "rng.pt", "rng.json", "state.json"}
    state = json.loads((run / "checkpoints" / "step_00000050" / "state.json").read_text())
    assert state["step"] == 50 and TrainConfig.from_dict(state["config"]) == overfit_run.config
    model = load_transformer(run / "model")  # the EMA weights, loadable as a transformer
    for (k, v), (k2, v2) in zip(model.state_dict().items(), overfit_run.ema.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert not any(p.name.startswith(".") for p in (run / "checkpoints").iterdir())
    sample = next(m for m in overfit_run.read_metrics() if "sample" in m)
    assert (run / sample["sample"]).stat().st_size > 0 and math.isfinite(sample["sample_psnr_ema"])


def test_sample_video_is_generated_next_to_ground_truth(overfit_run):
    import imageio.v3 as iio

    sample = next(m for m in overfit_run.read_metrics() if "sample" in m)
    frames = iio.imread(overfit_run.run_dir / sample["sample"])
    assert frames.shape == (4, 16, 32, 3)  # 4 frames (T=4 latent, stride 1): generated | ground truth
    truth = overfit_run.dataset[0]["rgb"][:4].numpy().astype(float)
    assert abs(frames[:, :, 16:].astype(float) - truth).mean() < 12  # right half is the clip (mp4 lossy)


@pytest.mark.slow
def test_distillation_closes_the_student_teacher_gap(overfit_run, tmp_path):
    data = PanClips(1)
    cfg = DistillConfig(model="tiny-notext", codec=CODEC, steps=30, batch_size=1, lr=1e-3, weight_decay=0.0,
                        frames_schedule=((0, 4),), teacher_steps_per_segment=3, log_every=5,
                        checkpoint_every=100, sample_steps=2, ema_decay=0.0, ema_warmup=False)
    d = Distiller(cfg, data, tmp_path, teacher=overfit_run.ema, device="cpu", progress=False)
    from world_model.training import latent_batch

    x0, cam, _ = latent_batch(collate_clips([data[0]]), d.codec, 4, "cpu")
    before = d.student_teacher_gap(x0, cam, seed=5)
    d.train()
    after = d.student_teacher_gap(x0, cam, seed=5)
    assert after["gap_mse"] < 0.6 * before["gap_mse"], (before, after)
    assert d.teacher is not d.ema and all(not p.requires_grad for p in d.teacher.parameters())


@pytest.mark.slow
def test_distilling_a_smaller_student_chunk(overfit_run, tmp_path):
    teacher = overfit_run.ema
    assert teacher.config.chunk_size > 1
    data = PanClips(1)
    cfg = DistillConfig(model="tiny-notext", codec=CODEC, steps=30, batch_size=1, lr=1e-3, weight_decay=0.0,
                        frames_schedule=((0, 4),), teacher_steps_per_segment=3, log_every=5, student_chunk_size=1,
                        checkpoint_every=100, sample_steps=2, ema_decay=0.0, ema_warmup=False)
    d = Distiller(cfg, data, tmp_path, teacher=teacher, device="cpu", progress=False)
    # the student keeps the teacher's weights on a one-frame chunk grid; the teacher keeps its grid
    tc = teacher.config
    assert (d.model.config.chunk_size, d.model.config.first_chunk_size) == (1, 2)
    # the streaming softmax window keeps as many frames as the teacher's
    assert d.model.config.stream_window_chunks == tc.stream_window_chunks * tc.chunk_size
    assert d.teacher.config == teacher.config
    assert all(torch.equal(a, b) for a, b in zip(d.model.state_dict().values(), teacher.state_dict().values()))
    from world_model.training import latent_batch

    x0, cam, _ = latent_batch(collate_clips([data[0]]), d.codec, 4, "cpu")
    before = d.student_teacher_gap(x0, cam, seed=5)
    d.train()
    after = d.student_teacher_gap(x0, cam, seed=5)
    # it closes part of the gap (0.103 -> 0.085 here); a one-frame chunk cannot see the rest of the teacher's
    # chunk, so it cannot close all of it
    assert after["gap_mse"] < 0.9 * before["gap_mse"], (before, after)
    wm = d.world_model()
    assert wm.student.config.chunk_size == 1 and wm.teacher.config.chunk_size == teacher.config.chunk_size
    with pytest.raises(ValueError, match="student_chunk_size"):
        DistillConfig(model="tiny-notext", codec=CODEC, student_chunk_size=-1)
    # init_from: the student may start from another transformer of the teacher's architecture, not any other
    from world_model.checkpoints import save_transformer
    from world_model.transformer import SanaWMTransformer

    other = save_transformer(SanaWMTransformer(teacher.config.replace(depth=teacher.config.depth + 1)),
                             tmp_path / "other")
    with pytest.raises(ValueError, match="not the teacher's architecture"):
        Distiller(cfg.replace(init_from=str(other)), data, tmp_path / "d2", teacher=teacher, device="cpu",
                  progress=False)
    start = save_transformer(d.ema, tmp_path / "start")
    d3 = Distiller(cfg.replace(init_from=str(start)), data, tmp_path / "d3", teacher=teacher, device="cpu",
                   progress=False)
    assert all(torch.equal(a, b) for a, b in zip(d3.model.state_dict().values(), d.ema.state_dict().values()))


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def twin_data(tmp_path_factory):
    from sana_wm_env.datasets import DatasetSpec, make_dataset

    root = tmp_path_factory.mktemp("twin")
    make_dataset(root, DatasetSpec(clips=2, frames=8, height=16, width=16, seed=1), workers=1, progress=False)
    return root


def test_cli_train_resume_distill_export(twin_data, tmp_path, capsys):
    from sana_wm_cli.main import main

    run = tmp_path / "run"
    common = ["--data", str(twin_data), "--batch", "2", "--frames", "4", "--no-progress", "--device", "cpu"]
    assert main(["train", *common, "--preset", "tiny-notext", "--codec", "patch:2", "--steps", "2",
                 "--out", str(run), "--lr", "1e-3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2
    assert main(["train", *common, "--out", str(run), "--steps", "3", "--resume"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["steps_run"] == 1
    assert main(["train", *common, "--out", str(run), "--steps", "4", "--lr", "5", "--resume"]) == 2
    assert "cannot change" in capsys.readouterr().err
    wm = load_world_model(run / "bundle")
    assert wm.teacher is not None and wm.image_hw == (16, 16) and "distill" in wm.notes

    out = tmp_path / "student"
    assert main(["distill", *common, "--teacher", str(run / "bundle"), "--out", str(out), "--steps", "2",
                 "--teacher-steps", "2", "--export", str(tmp_path / "bundle2"), "--export-dtype", "float16",
                 "--export-fov", "70"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2
    wm2 = load_world_model(tmp_path / "bundle2")
    assert wm2.streaming == {"timesteps": [1000, 960, 889, 727]} and wm2.teacher is not None
    assert wm2.fov_deg == 70.0 and wm.fov_deg != 70.0  # --export-fov; default: the first clip's FoV
    stored = load_file(str(tmp_path / "bundle2" / "student" / "model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    for (k, v), (_, v2) in zip(wm2.teacher.state_dict().items(), wm.teacher.state_dict().items()):
        assert torch.equal(v, v2.half().float()), k  # the teacher ships unchanged (float16 on disk)
    gen = wm2.streaming_generator()
    frames, _ = gen.step(gen.start(torch.zeros(1, 3, 16, 16), torch.tensor([16.0, 16.0, 7.5, 7.5])),
                         torch.eye(4).repeat(1, 3, 1, 1))
    assert frames.shape == (1, 3, 3, 16, 16) and bool(torch.isfinite(frames).all())
    assert (tmp_path / "bundle2" / "MODEL_CARD.md").read_text().startswith("# bundle2")


def test_cli_help_lists_train_and_distill(capsys):
    from sana_wm_cli.main import main

    for cmd in ("train", "distill"):
        with pytest.raises(SystemExit) as info:
            main([cmd, "--help"])
        assert info.value.code == 0 and "--resume" in capsys.readouterr().out


def test_untrained_build_matches_preset():
    # the trainer's fresh model is build_transformer(preset, seed): same weights for the same seed
    a, b = build_transformer("tiny-notext", seed=0), build_transformer("tiny-notext", seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
