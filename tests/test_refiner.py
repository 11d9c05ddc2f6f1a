"""Refiners: the interface; LTX2Refiner end to end over diffusers' SanaWMLTX2Refiner with tiny random parts;
WorldModelRefiner (the small SANA-WM refiner) and its training on stage-1 pairs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from world_model.codecs import LTX2Codec, PatchCodec
from world_model.refiner import DISTILLED_SIGMAS, LatentLayout, LTX2Refiner, load_refiner

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="the LTX-2 refiner's text encoder needs "
                                        "transformers")
if HAS_TRANSFORMERS:
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaWMLTX2Refiner, SanaWMLTX2RefinerTransformer3DModel
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
    from test_codecs import LATENT_C, tiny_vae
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = ["<pad>", "<unk>", "<bos>", "a", "drone", "flies", "through", "hall", "room"]
PROMPT = "a drone flies through a hall"


def tiny_pipeline(seed: int = 0) -> SanaWMLTX2Refiner:
    """Random LTX-2 refiner DiT + connectors + a 2-layer Gemma-3 text model and a word-level tokenizer."""
    torch.manual_seed(seed)
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>")
    te = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64, sliding_window=16, pad_token_id=0)).eval()
    con = LTX2TextConnectors(
        caption_channels=16, text_proj_in_factor=3, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32).eval()
    tr = SanaWMLTX2RefinerTransformer3DModel(
        in_channels=LATENT_C, out_channels=LATENT_C, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, caption_channels=16, num_layers=2, audio_in_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=8, audio_cross_attention_dim=16).eval()
    return SanaWMLTX2Refiner(transformer=tr, connectors=con, tokenizer=tok, text_encoder=te,
                             scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), text_max_sequence_length=16)


def _latents(t: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, LATENT_C, t, 2, 2, generator=torch.Generator().manual_seed(seed))


@needs_transformers
def test_chunk_causal_matches_the_diffusers_pipeline_and_keeps_the_sink():
    z = _latents()
    refiner = LTX2Refiner(tiny_pipeline())
    out = refiner.refine(z, prompt=PROMPT, fps=16, seed=42)
    oracle = tiny_pipeline()(z, PROMPT, fps=16.0, generator=torch.Generator().manual_seed(42), block_size=3,
                             kv_max_frames=11, sigmas=DISTILLED_SIGMAS, output_type="latent")
    torch.testing.assert_close(out, oracle, rtol=0, atol=0)
    assert torch.equal(out[:, :, 0], z[:, :, 0]) and not torch.allclose(out[:, :, 1:], z[:, :, 1:])
    assert refiner.latent_layout == LatentLayout("ltx2", LATENT_C, 8, 32)
    # Chunk-causal: refining a prefix gives the same first blocks (noise is drawn block by block).
    short = refiner.refine(z[:, :, :4], prompt=PROMPT, fps=16, seed=42)
    torch.testing.assert_close(short, out[:, :, :4], rtol=0, atol=1e-6)
    # Same seed, same result; another seed or another prompt or fps changes it.
    assert torch.equal(refiner.refine(z, prompt=PROMPT, fps=16, seed=42), out)
    for kwargs in ({"seed": 7}, {"prompt": "a room"}, {"fps": 8}):
        args = {"prompt": PROMPT, "fps": 16, "seed": 42, **kwargs}
        assert not torch.allclose(refiner.refine(z, **args), out)


@needs_transformers
def test_sink_bidirectional_refines_all_frames_jointly():
    z = _latents()
    bi = LTX2Refiner(tiny_pipeline(), mode="sink_bidirectional").refine(z, prompt=PROMPT, fps=16)
    causal = LTX2Refiner(tiny_pipeline()).refine(z, prompt=PROMPT, fps=16)
    oracle = tiny_pipeline()(z, PROMPT, fps=16.0, generator=torch.Generator().manual_seed(42), block_size=7,
                             kv_max_frames=8, output_type="latent")
    torch.testing.assert_close(bi, oracle, rtol=0, atol=0)
    assert torch.equal(bi[:, :, 0], z[:, :, 0]) and not torch.allclose(bi[:, :, 1:], causal[:, :, 1:])


@needs_transformers
def test_memory_options_give_the_same_latents_and_encode_each_prompt_once():
    z = _latents()
    plain = LTX2Refiner(tiny_pipeline()).refine(z, prompt=PROMPT, fps=16)
    pipe = tiny_pipeline()
    calls = []
    pipe.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    lean = LTX2Refiner(pipe, text_encoder_device="cpu", offload="blocks")
    torch.testing.assert_close(lean.refine(z, prompt=PROMPT, fps=16), plain, rtol=0, atol=1e-6)
    lean.refine(z, prompt=PROMPT, fps=16)
    assert len(calls) == 1  # prompt features cached
    blocks = pipe.transformer.transformer_blocks
    assert all(b._sana_wm_offload and b._forward_pre_hooks and b._forward_hooks for b in blocks)
    assert lean.describe()["offload"] == "blocks"


@needs_transformers
def test_end_to_end_with_the_ltx2_codec_and_layout_checks(tmp_path):
    codec = LTX2Codec(tiny_vae(decoder_causal=True))
    refiner = LTX2Refiner(tiny_pipeline())
    refiner.check_compatible(codec)
    video = torch.rand(1, 3, 17, 64, 64) * 2 - 1
    z = codec.encode(video)
    out = refiner.refine_video(z, codec, prompt=PROMPT, fps=16)
    assert out.shape == (1, 17, 3, 64, 64) and out.abs().max() <= 1

    class Frames:
        def __init__(self):
            self.chunks = []

        def write(self, f):
            self.chunks.append(f)

    sink = Frames()
    assert refiner.write_refined(z, codec, sink, num_frames=15, prompt=PROMPT, fps=16) == 15
    streamed = np.concatenate(sink.chunks)
    expected = ((out[0, :15].permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert streamed.shape == (15, 64, 64, 3) and np.abs(streamed.astype(int) - expected.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="codec 'ltx2' vs 'patch'.*channels 16 vs 48"):
        refiner.check_compatible(PatchCodec(patch_size=4, temporal_stride=1))
    with pytest.raises(ValueError, match=r"latents must be a tensor \(B, 16, T, h, w\)"):
        refiner.refine(torch.zeros(1, 8, 4, 2, 2), fps=16)
    with pytest.raises(ValueError, match="mode must be one of"):
        LTX2Refiner(tiny_pipeline(), mode="causal")


@needs_transformers
def test_loads_from_a_local_folder_or_says_what_to_download(tmp_path):
    pipe = tiny_pipeline()
    folder = tmp_path / "refiner_diffusers"
    pipe.transformer.save_pretrained(folder / "transformer")
    pipe.connectors.save_pretrained(folder / "connectors")
    with pytest.raises(FileNotFoundError, match="Gemma-3 text encoder.*huggingface-cli download"):
        load_refiner(folder)
    # a text-only Gemma-3 + tokenizer stand in for gemma3_12b (the real one loads as AutoModelForImageTextToText)
    pipe.text_encoder.save_pretrained(tmp_path / "te")
    pipe.tokenizer.save_pretrained(tmp_path / "te")
    loaded = load_refiner(folder, text_encoder=tmp_path / "te", dtype=torch.float32, text_max_sequence_length=16)
    z = _latents()
    torch.testing.assert_close(loaded.refine(z, prompt=PROMPT, fps=16),
                               LTX2Refiner(pipe).refine(z, prompt=PROMPT, fps=16), rtol=0, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="no refiner at"):
        load_refiner(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no LTX-2 refiner"):
        LTX2Refiner.from_folder(tmp_path / "nothing")


@needs_transformers
def test_replay_refuses_a_refiner_of_another_codec_before_generating(tmp_path, capsys):
    from pathlib import Path

    from sana_wm_cli.main import main

    pipe = tiny_pipeline()
    folder = tmp_path / "refiner_diffusers"
    pipe.transformer.save_pretrained(folder / "transformer")
    pipe.connectors.save_pretrained(folder / "connectors")
    pipe.text_encoder.save_pretrained(folder / "text_encoder")
    pipe.tokenizer.save_pretrained(folder / "text_encoder")
    npy = tmp_path / "path.npy"
    poses = np.tile(np.eye(4), (40, 1, 1))
    poses[:, 2, 3] = np.linspace(0, 1, 40)
    np.save(npy, poses)
    out = tmp_path / "r.mp4"
    image = Path(__file__).resolve().parents[1] / "examples" / "first_frame.png"
    code = main(["replay", str(npy), "--image", str(image), "--refine", str(folder), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "refiner latent layout does not match" in err and "codec 'ltx2' vs 'patch'" in err
    assert not out.exists() and not out.with_name("r_stage1.mp4").exists()


# ------------------------------------------------------------------------------------------- WorldModelRefiner
def _wm_refiner(window: int = 3, strength: float = 0.725):
    from world_model.checkpoints import build_transformer
    from world_model.refiner import WorldModelRefiner, schedule_from

    codec = PatchCodec(patch_size=2, temporal_stride=1)
    model = build_transformer("tiny-notext", seed=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised layers (output, Plücker) would hide the network's dependence on inputs
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05, generator=g)
    return WorldModelRefiner(model, LatentLayout.of_codec(codec),
                             sigmas=schedule_from(strength), window=window, codec=codec.to_config()), codec


def _path(n: int) -> torch.Tensor:
    poses = torch.eye(4).repeat(1, n, 1, 1)
    poses[0, :, 0, 3] = torch.linspace(0, 0.4, n)
    return poses


def test_world_model_refiner_is_deterministic_windowed_and_round_trips(tmp_path):
    from world_model.refiner import WorldModelRefiner, refine_windows, schedule_from

    assert schedule_from(0.725) == (0.725, 0.421875, 0.0) and schedule_from(0.909375) == DISTILLED_SIGMAS
    assert refine_windows(16, 8) == [(1, 8), (8, 16)] and refine_windows(5, 8) == [(1, 5)]
    assert refine_windows(11, 3) == [(1, 3), (3, 6), (6, 8), (8, 11)]
    ref, codec = _wm_refiner()
    z = torch.randn(1, 12, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    k = torch.tensor([8.0, 8.0, 3.5, 3.5])
    out = ref.refine(z, fps=16, seed=4, c2w=_path(8), intrinsics=k)
    assert out.shape == z.shape and torch.equal(out[:, :, 0], z[:, :, 0])
    assert not torch.allclose(out[:, :, 1:], z[:, :, 1:])
    torch.testing.assert_close(ref.refine(z, fps=16, seed=4, c2w=_path(8), intrinsics=k), out, rtol=0, atol=0)
    assert not torch.allclose(ref.refine(z, fps=16, seed=5, c2w=_path(8), intrinsics=k), out)
    # one window covering the clip differs from windows of 3 (context), but both keep the sink
    whole = ref.with_sigmas(ref.sigmas)
    whole.window = 7
    assert not torch.allclose(whole.refine(z, fps=16, seed=4, c2w=_path(8), intrinsics=k), out)
    # the camera matters
    assert not torch.allclose(ref.refine(z, fps=16, seed=4, c2w=_path(8) * 0 + torch.eye(4), intrinsics=k), out)
    with pytest.raises(ValueError, match="camera-conditioned: pass c2w"):
        ref.refine(z, fps=16)
    with pytest.raises(ValueError, match=r"c2w must have shape \(1, 8, 4, 4\)"):
        ref.refine(z, fps=16, c2w=_path(7), intrinsics=k)
    with pytest.raises(ValueError, match="no text conditioning"):
        ref.refine(z, fps=16, prompt="a hall", c2w=_path(8), intrinsics=k)
    with pytest.raises(ValueError, match="sigmas must start in"):
        ref.with_sigmas((0.5, 0.6, 0.0))
    # save (float16 on disk) / load (float32) through load_refiner's dispatch; strength override
    ref.save(tmp_path / "r", card="# tiny\n")
    loaded = load_refiner(tmp_path / "r")
    assert isinstance(loaded, WorldModelRefiner) and loaded.latent_layout == ref.latent_layout
    assert loaded.window == 3 and loaded.sigmas == ref.sigmas and (tmp_path / "r" / "MODEL_CARD.md").is_file()
    half = ref.with_sigmas(ref.sigmas)
    half.transformer = __import__("copy").deepcopy(ref.transformer).half().float()
    torch.testing.assert_close(loaded.refine(z, fps=16, seed=4, c2w=_path(8), intrinsics=k),
                               half.refine(z, fps=16, seed=4, c2w=_path(8), intrinsics=k), rtol=0, atol=1e-6)
    assert load_refiner(tmp_path / "r", strength=0.421875).sigmas == (0.421875, 0.0)
    ref.check_compatible(codec)
    with pytest.raises(ValueError, match="spatial_stride 2 vs 4"):
        ref.check_compatible(PatchCodec(patch_size=4, temporal_stride=1, latent_channels=12))


def test_refiner_training_on_stage1_pairs_resumes_and_exports(tmp_path, wm):
    from world_model.refiner import RefinedGenerator, WorldModelRefiner
    from world_model.training.refine import RefinerTrainConfig, RefinerTrainer, Stage1Pairs, write_stage1_pairs

    rng = np.random.default_rng(0)
    items = [{"rgb": rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8), "c2w": _path(9)[0],
              "intrinsics": torch.tensor([12.0, 12.0, 7.5, 7.5])} for _ in range(4)]
    gen = wm.streaming_generator()
    frames = gen.valid_num_frames(2)  # 1 + 3 + 3 = 7 for tiny-notext (stride 1)
    with pytest.raises(ValueError, match="frames must be a clip length"):
        write_stage1_pairs(items, wm, tmp_path / "p", clips=4, frames=frames + 1)
    doc = write_stage1_pairs(items, wm, tmp_path / "p", clips=4, frames=frames, batch_size=3)
    pairs = Stage1Pairs(tmp_path / "p")
    assert len(pairs) == 4 and doc["latent_frames"] == frames and pairs[0]["stage1"].shape == (12, frames, 8, 8)
    # the stored stage-1 latents are what the generator makes (frame 0 = the encoded image)
    expect = RefinedGenerator(gen, _wm_refiner()[0], fps=16).stage1_latents(
        torch.from_numpy(items[2]["rgb"][:1]).permute(0, 3, 1, 2).float() / 127.5 - 1,
        items[2]["intrinsics"], _path(9)[:, :frames], seed=2)
    torch.testing.assert_close(pairs[2]["stage1"][None], expect, rtol=0, atol=1e-6)
    cfg = RefinerTrainConfig(model="tiny-notext", codec=wm.codec.to_config(), steps=4, batch_size=2,
                             frames_schedule=((0, frames),), window=4, checkpoint_every=2, log_every=2,
                             strengths=(0.9, 0.5))
    tr = RefinerTrainer(cfg, Stage1Pairs(tmp_path / "p", range(3)), tmp_path / "run", device="cpu",
                        validation=Stage1Pairs(tmp_path / "p", [3]), progress=False)
    tr.train(until=2)
    full = RefinerTrainer(cfg, Stage1Pairs(tmp_path / "p", range(3)), tmp_path / "run2", device="cpu",
                          progress=False)
    full.train()
    resumed = RefinerTrainer(cfg, Stage1Pairs(tmp_path / "p", range(3)), tmp_path / "run", device="cpu",
                             resume=True, progress=False)
    resumed.train()
    losses = [[m["loss"] for m in t.read_metrics() if "loss" in m] for t in (full, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 2
    assert any("val_psnr_refined@0.5" in m for m in resumed.read_metrics())
    folder = resumed.export(tmp_path / "refiner")
    loaded = load_refiner(folder)
    assert isinstance(loaded, WorldModelRefiner) and loaded.window == 4 and loaded.sigmas[0] == cfg.strength
    video = RefinedGenerator(gen, loaded, fps=16).generate(torch.zeros(1, 3, 16, 16), torch.tensor(
        [12.0, 12.0, 7.5, 7.5]), _path(frames), seed=0)
    assert video.shape == (1, frames, 3, 16, 16) and torch.equal(video[0, 0], torch.zeros(3, 16, 16))


def _eval_refined(tmp_path, capsys, wm, refiner) -> dict:
    """``sana-wm eval --refiner`` of bundle ``wm`` refined by ``refiner`` (tiny protocol): its candidates, after
    checking that the refined model is scored on the same frames as stage 1 and differs from it."""
    import json

    from sana_wm_cli.main import main
    from world_model.bundles import save_world_model

    save_world_model(wm, tmp_path / "bundle")
    refiner.save(tmp_path / "ref")
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(tmp_path / "bundle"), "--refiner", str(tmp_path / "ref"), "--json", str(out),
                 "--episodes-per-family", "1", "--frames", "9", "--revisit-episodes", "0", "--stability-frames",
                 "0", "--no-untrained", "--no-progress", "--action-stride", "4"])
    assert code == 0, capsys.readouterr().err
    res = json.loads(out.read_text())["candidates"]
    refined, model = res["model+refiner"], res["model"]
    assert refined["fidelity"]["psnr"]["1-8"]["frames"] == model["fidelity"]["psnr"]["1-8"]["frames"] > 0
    assert refined["fidelity"]["psnr"]["1-8"]["mean"] != model["fidelity"]["psnr"]["1-8"]["mean"]
    return res


def test_eval_cli_scores_the_refined_model_on_the_same_episodes(tmp_path, wm, capsys):
    res = _eval_refined(tmp_path, capsys, wm, _wm_refiner(window=4)[0])
    assert set(res) == {"model", "repeat_first_frame", "warp", "model+refiner"}
    refined, model = res["model+refiner"], res["model"]
    assert refined["action_following"]["frames"] == model["action_following"]["frames"]
    assert "stability" not in refined


# ------------------------------------------------------------------------------ geometry-guided stage 1
K16 = torch.tensor([12.0, 12.0, 7.5, 7.5])


def _geo_items(n: int, f: int, *, depth: bool = True) -> list[dict]:
    """``n`` random 16x16 twin-like clips of ``f`` frames, with depth (metres) unless ``depth=False``."""
    rng = np.random.default_rng(0)
    items = [{"rgb": rng.integers(0, 256, (f, 16, 16, 3), dtype=np.uint8), "c2w": _path(f)[0], "intrinsics": K16,
              "depth": torch.from_numpy(rng.uniform(1.0, 4.0, (f, 16, 16)).astype(np.float32))} for _ in range(n)]
    if not depth:
        for it in items:
            del it["depth"]
    return items


def _image(item: dict) -> torch.Tensor:
    return torch.from_numpy(item["rgb"][:1]).permute(0, 3, 1, 2).float() / 127.5 - 1


def _geo_refiner(geo, window: int = 4):
    """A random refiner for the tiny-geo model ``geo``: its student's architecture without the geometry input."""
    from world_model.checkpoints import build_transformer
    from world_model.refiner import WorldModelRefiner
    from world_model.training.refine import refiner_model_config

    model = build_transformer(refiner_model_config(geo.student.config), seed=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised layers would make the refiner the identity
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05, generator=g)
    return WorldModelRefiner(model, LatentLayout.of_codec(geo.codec), window=window, codec=geo.codec.to_config(),
                             fps=geo.fps, image_hw=geo.image_hw)


def test_refiner_of_a_geometry_guided_model_learns_rgbd_latents_resumes_and_exports(tmp_path):
    from world_model.bundles import untrained_world_model
    from world_model.checkpoints import save_transformer
    from world_model.refiner import RefinedGenerator, WorldModelRefiner
    from world_model.training.refine import (
        RefinerTrainConfig,
        RefinerTrainer,
        Stage1Pairs,
        collate_pairs,
        refiner_model_config,
        write_stage1_pairs,
    )

    geo = untrained_world_model("tiny-geo", image_hw=(16, 16))
    gen = geo.streaming_generator()
    frames = gen.valid_num_frames(2)  # 5: latent frames 0 | 1 | 2 (temporal stride 2)
    items = _geo_items(4, frames)
    with pytest.raises(ValueError, match="must carry 'depth'"):
        write_stage1_pairs(_geo_items(4, frames, depth=False), geo, tmp_path / "nodepth", clips=4, frames=frames)
    doc = write_stage1_pairs(items, geo, tmp_path / "p", clips=4, frames=frames, batch_size=3)
    pairs = Stage1Pairs(tmp_path / "p")
    assert doc["depth"] is True and pairs[0]["stage1"].shape == (geo.codec.latent_channels, 3, 8, 8)
    # the pairs keep the clip's depth (float16 metres) ...
    torch.testing.assert_close(pairs[1]["depth"], items[1]["depth"], rtol=1e-3, atol=0)
    # ... and stage 1 started from the clip's frame-0 depth, not from depth it generated itself
    stage1 = RefinedGenerator(gen, _geo_refiner(geo), fps=16)
    assert stage1.takes_depth
    expect = stage1.stage1_latents(_image(items[2]), K16, _path(frames), seed=2, depth=items[2]["depth"][:1])
    torch.testing.assert_close(pairs[2]["stage1"][None], expect, rtol=0, atol=1e-6)
    assert not torch.allclose(pairs[2]["stage1"][None], stage1.stage1_latents(_image(items[2]), K16, _path(frames),
                                                                               seed=2))
    # the refiner reads no geometry cache: the student's architecture without it, from the student's weights
    with pytest.raises(ValueError, match="a refiner reads no geometry cache"):
        RefinerTrainConfig(model=geo.student.config.to_dict(), codec=geo.codec.to_config())
    with pytest.raises(ValueError, match="reads no geometry cache"):
        WorldModelRefiner(geo.student, LatentLayout.of_codec(geo.codec))
    save_transformer(geo.student, tmp_path / "student")
    cfg = RefinerTrainConfig(model=refiner_model_config(geo.student.config), codec=geo.codec.to_config(),
                             init_from=str(tmp_path / "student"), steps=4, batch_size=2, frames_schedule=((0, 3),),
                             window=2, checkpoint_every=2, log_every=2, strengths=(0.9, 0.5))
    train, val = Stage1Pairs(tmp_path / "p", range(3)), Stage1Pairs(tmp_path / "p", [3])
    tr = RefinerTrainer(cfg, train, tmp_path / "run", device="cpu", validation=val, progress=False)
    student = geo.student.state_dict()
    assert tr.model.config.geometry_channels == 0 and not hasattr(tr.model, "geometry_embedder")
    assert all(torch.equal(v, student[k]) for k, v in tr.model.state_dict().items())
    assert any(k.startswith("geometry_embedder") for k in student)
    # the target is the RGB-D latents: without depth in the pairs there is no target
    with pytest.raises(ValueError, match="needs depth"):
        batch = {k: v for k, v in collate_pairs([train[0]]).items() if k != "depth"}
        tr.batch_loss(batch, 3, torch.Generator().manual_seed(0))
    tr.train(until=2)
    full = RefinerTrainer(cfg, train, tmp_path / "run2", device="cpu", progress=False)
    full.train()
    resumed = RefinerTrainer(cfg, train, tmp_path / "run", device="cpu", resume=True, progress=False)
    resumed.train()
    losses = [[m["loss"] for m in t.read_metrics() if "loss" in m] for t in (full, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 2
    assert any("val_psnr_refined@0.5" in m for m in resumed.read_metrics())
    loaded = load_refiner(resumed.export(tmp_path / "refiner"))
    assert isinstance(loaded, WorldModelRefiner) and loaded.transformer.config.geometry_channels == 0
    assert loaded.latent_layout == LatentLayout.of_codec(geo.codec)
    refined = RefinedGenerator(gen, loaded, fps=16)
    depth = items[0]["depth"][:1]
    video = refined.generate(_image(items[0]), K16, _path(frames), seed=0, depth=depth)
    assert video.shape == (1, frames, 3, 16, 16) and torch.equal(video[0, 0], _image(items[0])[0])
    assert not torch.allclose(video, refined.generate(_image(items[0]), K16, _path(frames), seed=0))


def test_eval_and_replay_refine_a_geometry_guided_model_from_the_twin_depth(tmp_path, capsys, monkeypatch):
    import json

    from sana_wm_cli.main import main
    from world_model.bundles import untrained_world_model
    from world_model.generators import StreamingGenerator

    geo = untrained_world_model("tiny-geo", image_hw=(16, 16))

    def no_generated_depth(*args, **kwargs):
        raise AssertionError("stage 1 generated frame 0's depth although the twin's was given")

    monkeypatch.setattr(StreamingGenerator, "generate_depth", no_generated_depth)
    assert "model+refiner" in _eval_refined(tmp_path, capsys, geo, _geo_refiner(geo))
    # replay along a path in a twin (its frame-0 depth goes to stage 1), then refine
    npy = tmp_path / "path.npy"
    poses = np.tile(np.eye(4), (9, 1, 1))
    poses[:, 2, 3] = np.linspace(0, 0.3, 9)
    np.save(npy, poses)
    video = tmp_path / "r.mp4"
    code = main(["replay", str(npy), "--model", str(tmp_path / "bundle"), "--twin", "rooms/0", "--refine",
                 str(tmp_path / "ref"), "--out", str(video)])
    assert code == 0, capsys.readouterr().err
    meta = json.loads(video.with_suffix(".json").read_text())
    assert video.is_file() and video.with_name("r_stage1.mp4").is_file() and meta["refine"]["frames"] == 9


def test_refining_a_show_cache_model_keeps_the_pixels_that_show_frame_0s_points():
    from world_model.bundles import untrained_world_model
    from world_model.refiner import KeptPixels, RefinedGenerator

    geo = untrained_world_model("tiny-geo", image_hw=(16, 16))
    shown_gen = geo.streaming_generator(show_cache=True)
    refiner = _geo_refiner(geo)
    f = shown_gen.valid_num_frames(3)
    item = _geo_items(1, f)[0]
    image, depth, path = _image(item), item["depth"][:1], _path(f)
    z1, keep = RefinedGenerator(shown_gen, refiner, fps=16).stage1_clip(image, K16, path, seed=3, depth=depth)
    assert keep is not None and keep.mask[:, 0].all() and keep.mask[:, 1:].any() and not keep.mask[:, 1:].all()
    # the kept frames are what stage 1 streamed, frame 0 first
    state, frames = shown_gen.start(image, K16, c2w=path[:, 0], seed=3, depth=depth), [image[:, None]]
    while sum(x.shape[1] for x in frames) < f:
        out, state = shown_gen.step(state, path[:, sum(x.shape[1] for x in frames):][:, : shown_gen.frames_per_step(
            state)])
        frames.append(out)
    torch.testing.assert_close(keep.frames, torch.cat(frames, 1))
    refined = RefinedGenerator(shown_gen, refiner, fps=16).generate(image, K16, path, seed=3, depth=depth)
    plain = geo.codec.decode(refiner.refine(z1, seed=3, c2w=path, intrinsics=K16)).permute(0, 2, 1, 3, 4)
    m = keep.mask[:, 1:, None].expand(-1, -1, 3, -1, -1)
    torch.testing.assert_close(refined[:, 1:][m], keep.frames[:, 1:][m])  # frame 0's points, as shown
    torch.testing.assert_close(refined[:, 1:][~m], plain[:, 1:][~m])  # the refiner's in the holes
    # a model that does not show its cache keeps nothing: the refined clip is the refiner's throughout
    assert RefinedGenerator(geo.streaming_generator(), refiner, fps=16).stage1_clip(image, K16, path, seed=3,
                                                                                     depth=depth)[1] is None
    # apply() covers the frames it holds, in clip order, and leaves later ones alone
    video = torch.zeros(1, 4, 3, 2, 2)
    kp = KeptPixels(torch.ones(1, 3, 3, 2, 2), torch.tensor([[[[True, False], [False, False]]] * 3]))
    out = kp.apply(video, 1)
    assert out[0, 0, :, 0, 0].tolist() == [1, 1, 1] and out[0, 1, :, 0, 0].tolist() == [1, 1, 1]
    assert out[0, 2:].abs().sum() == 0 and out[0, :, :, 1].abs().sum() == 0
    with pytest.raises(ValueError, match="KeptPixels.mask must be a bool tensor"):
        KeptPixels(torch.ones(1, 3, 3, 2, 2), torch.ones(1, 3, 2, 2))
    with pytest.raises(ValueError, match="KeptPixels.frames must be a float tensor"):
        KeptPixels(torch.ones(1, 3, 2, 2), torch.ones(1, 3, 2, 2, dtype=torch.bool))


@pytest.mark.parametrize("name", ["sana-wm-twin-g", "sana-wm-twin-s"])
def test_the_bundled_refiner_fits_its_bundled_model_and_is_small(name):
    from sana_wm_cli.refine import bundled_refiner_path
    from world_model.bundles import load_world_model
    from world_model.refiner import WorldModelRefiner

    model = load_world_model(name)  # both bundled models ship a refiner
    folder = bundled_refiner_path({"model": model.name, "model_path": str(model.path)})
    assert folder.name == f"{model.name}-refiner"
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 10_000_000
    ref = load_refiner(folder)
    assert isinstance(ref, WorldModelRefiner) and ref.fps == model.fps and tuple(ref.image_hw) == model.image_hw
    ref.check_compatible(model.codec)
    with pytest.raises(FileNotFoundError, match="no refiner ships with model 'other'.*refiners ship with "
                       r"sana-wm-twin-g, sana-wm-twin-s\)"):
        bundled_refiner_path({"model": "other", "model_path": None})
