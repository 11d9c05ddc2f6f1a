"""Refiners: the interface, and LTX2Refiner end to end over diffusers' SanaWMLTX2Refiner with tiny random parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the LTX-2 refiner's text encoder needs transformers")

from diffusers import FlowMatchEulerDiscreteScheduler, SanaWMLTX2Refiner, SanaWMLTX2RefinerTransformer3DModel  # noqa: E402
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors  # noqa: E402
from test_codecs import LATENT_C, tiny_vae  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast  # noqa: E402

from world_model.codecs import LTX2Codec, PatchCodec  # noqa: E402
from world_model.refiner import DISTILLED_SIGMAS, LatentLayout, LTX2Refiner, load_refiner  # noqa: E402

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


def test_sink_bidirectional_refines_all_frames_jointly():
    z = _latents()
    bi = LTX2Refiner(tiny_pipeline(), mode="sink_bidirectional").refine(z, prompt=PROMPT, fps=16)
    causal = LTX2Refiner(tiny_pipeline()).refine(z, prompt=PROMPT, fps=16)
    oracle = tiny_pipeline()(z, PROMPT, fps=16.0, generator=torch.Generator().manual_seed(42), block_size=7,
                             kv_max_frames=8, output_type="latent")
    torch.testing.assert_close(bi, oracle, rtol=0, atol=0)
    assert torch.equal(bi[:, :, 0], z[:, :, 0]) and not torch.allclose(bi[:, :, 1:], causal[:, :, 1:])


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


def test_replay_refuses_a_refiner_of_another_codec_before_generating(tmp_path, capsys):
    from pathlib import Path

    from sana_wm_env.cli.main import main

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
