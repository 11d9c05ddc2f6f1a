"""Checkpoint loading/saving: official layout of the 1.6B model (meta device), round trips of every supported
format with tiny models, and the error messages for broken or absent checkpoints."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from world_model.checkpoints import (
    KNOWN_REPO_FILES,
    CheckpointError,
    CheckpointNotFoundError,
    build_transformer,
    diffusers_config_to_model_config,
    load_transformer,
    read_metadata,
    save_transformer,
)
from world_model.config import PRESETS, ModelConfig
from world_model.transformer import SanaWMTransformer

TINY = PRESETS["tiny-text"]
TINY_NOTEXT = PRESETS["tiny-notext"]


# --------------------------------------------------------------------------------------------------
# Official layout of the released 1.6B model (docs/architecture.md#backbone, #official-checkpoints).
# --------------------------------------------------------------------------------------------------
C, HEADS, LAT, PL, CAP, TXT = 2240, 20, 128, 48, 2304, 300
FFN = 3 * C  # 6720, the inverted conv outputs 2 * FFN

OFFICIAL_TOP = {
    "x_embedder.proj.weight": (C, LAT, 1, 1, 1),
    "x_embedder.proj.bias": (C,),
    "plucker_embedder.proj.weight": (C, PL, 1, 1, 1),
    "plucker_embedder.proj.bias": (C,),
    "raymap_embedder.proj.weight": (C, 3, 1, 1, 1),
    "raymap_embedder.proj.bias": (C,),
    "t_embedder.mlp.0.weight": (C, 256),
    "t_embedder.mlp.0.bias": (C,),
    "t_embedder.mlp.2.weight": (C, C),
    "t_embedder.mlp.2.bias": (C,),
    "t_block.1.weight": (13440, C),
    "t_block.1.bias": (13440,),
    "y_embedder.y_proj.fc1.weight": (C, CAP),
    "y_embedder.y_proj.fc1.bias": (C,),
    "y_embedder.y_proj.fc2.weight": (C, C),
    "y_embedder.y_proj.fc2.bias": (C,),
    "y_embedder.y_embedding": (TXT, CAP),
    "attention_y_norm.weight": (C,),
    "final_layer.linear.weight": (LAT, C),
    "final_layer.linear.bias": (LAT,),
    "final_layer.scale_shift_table": (2, C),
}


def official_block(softmax: bool) -> dict[str, tuple[int, ...]]:
    keys = {
        "scale_shift_table": (6, C),
        "plucker_proj.weight": (C, C),
        "plucker_proj.bias": (C,),
        "attn.qkv.weight": (6720, C),
        "attn.proj.weight": (C, C),
        "attn.proj.bias": (C,),
        "attn.output_gate.weight": (C, C),
        "attn.output_gate.bias": (C,),
        "attn.q_norm.weight": (C,),
        "attn.k_norm.weight": (C,),
        "attn.beta_proj.weight": (HEADS, C),
        "attn.beta_proj.bias": (HEADS,),
        "attn.gate_proj.weight": (HEADS, C),
        "attn.gate_proj.bias": (HEADS,),
        "attn.A_log": (HEADS,),
        "attn.dt_bias": (HEADS,),
        "attn.recall_gate": (1,),
        "attn.q_proj_cam.weight": (C, C),
        "attn.q_proj_cam.bias": (C,),
        "attn.k_proj_cam.weight": (C, C),
        "attn.k_proj_cam.bias": (C,),
        "attn.v_proj_cam.weight": (C, C),
        "attn.v_proj_cam.bias": (C,),
        "attn.out_proj_cam.weight": (C, C),
        "attn.out_proj_cam.bias": (C,),
        "attn.q_norm_cam.weight": (C,),
        "attn.k_norm_cam.weight": (C,),
        "cross_attn.q_linear.weight": (C, C),
        "cross_attn.q_linear.bias": (C,),
        "cross_attn.kv_linear.weight": (2 * C, C),
        "cross_attn.kv_linear.bias": (2 * C,),
        "cross_attn.proj.weight": (C, C),
        "cross_attn.proj.bias": (C,),
        "cross_attn.q_norm.weight": (C,),
        "cross_attn.k_norm.weight": (C,),
        "mlp.inverted_conv.conv.weight": (13440, C, 1, 1),
        "mlp.inverted_conv.conv.bias": (13440,),
        "mlp.depth_conv.conv.weight": (13440, 1, 3, 3),
        "mlp.depth_conv.conv.bias": (13440,),
        "mlp.point_conv.conv.weight": (C, FFN, 1, 1),
        "mlp.t_conv.weight": (C, C, 3, 1),
    }
    if not softmax:
        keys["attn.conv_k.weight"] = (C, 1, 4)
        keys["attn.conv_k_cam.weight"] = (C, 1, 4)
    return keys


@pytest.fixture(scope="module")
def meta_1p6b() -> SanaWMTransformer:
    with torch.device("meta"):
        return SanaWMTransformer(PRESETS["sana-wm-1.6b"])


def test_1p6b_parameter_count(meta_1p6b):
    n = meta_1p6b.num_parameters()
    assert abs(n - 2.66e9) <= 0.02e9, n


def test_1p6b_matches_official_layout(meta_1p6b):
    softmax_blocks = {3, 7, 11, 15, 19}
    expected = dict(OFFICIAL_TOP)
    for i in range(20):
        expected.update({f"blocks.{i}.{k}": v for k, v in official_block(i in softmax_blocks).items()})
    got = {k: tuple(v.shape) for k, v in meta_1p6b.state_dict().items()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: got[k] for k in expected if got[k] != expected[k]} == {}
    found_softmax = {i for i in range(20) if f"blocks.{i}.attn.conv_k.weight" not in got}
    assert found_softmax == softmax_blocks
    per_block = sum(torch.Size(s).numel() for s in official_block(False).values())
    assert abs(per_block - 130.8e6) < 0.1e6  # docs/architecture.md#backbone (size)


# --------------------------------------------------------------------------------------------------
# Helpers for tiny models
# --------------------------------------------------------------------------------------------------
def _randomize(model: SanaWMTransformer, seed: int = 0) -> SanaWMTransformer:
    """Non-zero values everywhere (the zero-init branches would hide wiring mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.state_dict().values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _inputs(cfg: ModelConfig, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, cfg.in_channels, 2, 4, 4, generator=g)
    timestep = torch.tensor([[400.0, 900.0]])
    if not cfg.has_text:
        return latents, timestep, None, None
    text = torch.randn(1, 5, cfg.caption_channels, generator=g)
    mask = torch.tensor([[True, True, True, False, False]])
    return latents, timestep, text, mask


def _run(model: SanaWMTransformer, cfg: ModelConfig) -> torch.Tensor:
    latents, timestep, text, mask = _inputs(cfg)
    with torch.no_grad():
        return model(latents, timestep, camera=None, text=text, text_mask=mask)


@pytest.fixture
def tiny() -> SanaWMTransformer:
    torch.manual_seed(0)
    return _randomize(SanaWMTransformer(TINY))


# --------------------------------------------------------------------------------------------------
# Own format
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [TINY, TINY_NOTEXT], ids=["text", "notext"])
def test_save_load_round_trip(tmp_path, cfg):
    model = _randomize(SanaWMTransformer(cfg), seed=3)
    folder = save_transformer(model, tmp_path / "ckpt", metadata={"step": 12, "data": "unit-test"})
    doc = json.loads((folder / "config.json").read_text())
    assert doc["_format"] == "sana-wm-env"
    assert read_metadata(folder) == {"step": 12, "data": "unit-test"}
    loaded = load_transformer(folder)
    assert loaded.config == cfg
    assert not loaded.training
    ref, out = _run(model, cfg), _run(loaded, cfg)
    assert torch.equal(ref, out)
    assert ref.abs().max() > 0


def test_dtype_cast_and_kept(tmp_path, tiny):
    folder = save_transformer(tiny.to(torch.bfloat16), tmp_path / "bf16")
    assert load_transformer(folder).dtype == torch.bfloat16  # file dtype kept
    assert load_transformer(folder, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        load_transformer(folder, dtype=torch.int8)


def test_build_transformer_seeded():
    a, b = build_transformer("tiny-notext", seed=5), build_transformer(TINY_NOTEXT, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    c = build_transformer("tiny-notext", seed=6)
    assert not torch.equal(a.t_block[1].weight, c.t_block[1].weight)


# --------------------------------------------------------------------------------------------------
# Official-layout files
# --------------------------------------------------------------------------------------------------
def test_official_safetensors_with_pos_embed(tmp_path, tiny):
    state = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    state["pos_embed"] = torch.randn(1, 16, TINY.hidden_size)
    path = tmp_path / "sana_wm_1600m_720p.safetensors"
    save_file(state, str(path))
    loaded = load_transformer(path, config=TINY)
    assert torch.equal(_run(loaded, TINY), _run(tiny, TINY))


def test_official_streaming_pt_wrapped_and_prefixed(tmp_path, tiny):
    path = tmp_path / "model.pt"
    torch.save({"generator": {"model." + k: v for k, v in tiny.state_dict().items()}, "step": 7}, path)
    loaded = load_transformer(path, config="tiny-text")
    assert torch.equal(_run(loaded, TINY), _run(tiny, TINY))
    # also accepted: the official file inside a --local-dir download folder
    (tmp_path / "dl" / "sana_dit").mkdir(parents=True)
    path.rename(tmp_path / "dl" / "sana_dit" / "model.pt")
    assert torch.equal(_run(load_transformer(tmp_path / "dl", config=TINY), TINY), _run(tiny, TINY))


def test_official_file_default_config_is_1p6b_and_hint(tmp_path, tiny):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny.state_dict(), str(path))
    with pytest.raises(CheckpointError) as err:
        load_transformer(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "attention_y_norm.weight checkpoint (96,) vs model (2240,)" in msg
    assert "hidden_size 96 (x_embedder.proj.weight (96, 16, 1, 1, 1)) vs config 2240" in msg
    assert "depth 4" in msg and "hidden_size 96" in msg and "config=" in msg
    assert "more" in msg  # long lists are truncated with a count


def test_pickled_objects_need_trust(tmp_path, tiny):
    import argparse

    path = tmp_path / "model.pt"
    torch.save({"generator": tiny.state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match="trust_pickle") as err:
        load_transformer(path, config=TINY)
    assert str(path) in str(err.value)
    loaded = load_transformer(path, config=TINY, trust_pickle=True)
    assert torch.equal(_run(loaded, TINY), _run(tiny, TINY))


# --------------------------------------------------------------------------------------------------
# diffusers format
# --------------------------------------------------------------------------------------------------
def _diffusers_tiny():
    from diffusers import SanaWMTransformer3DModel

    torch.manual_seed(0)
    return SanaWMTransformer3DModel(
        in_channels=16, num_layers=4, hidden_size=96, num_attention_heads=2, linear_head_dim=48,
        softmax_every_n=2, caption_channels=32, chunk_plucker_post_attn_blocks=4,
    )


def _assert_same_params(ours: SanaWMTransformer, theirs_sd: dict[str, torch.Tensor]) -> None:
    mapping = {"t_embedder.linear_1.": "t_embedder.mlp.0.", "t_embedder.linear_2.": "t_embedder.mlp.2."}
    ours_sd = ours.state_dict()
    mapped = {}
    for k, v in theirs_sd.items():
        for old, new in mapping.items():
            k = k.replace(old, new)
        mapped[k] = v
    assert set(ours_sd) - set(mapped) == {"y_embedder.y_embedding"}
    assert set(mapped) <= set(ours_sd)
    for k, v in mapped.items():
        assert torch.equal(ours_sd[k], v), k


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("layout", ["folder", "pipeline", "sharded"])
def test_diffusers_folder(tmp_path, layout):
    dm = _diffusers_tiny()
    target = tmp_path / "transformer" if layout == "pipeline" else tmp_path
    dm.save_pretrained(target, max_shard_size="200KB" if layout == "sharded" else "10GB")
    if layout == "sharded":
        assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    model = load_transformer(tmp_path)
    cfg = model.config
    assert (cfg.depth, cfg.hidden_size, cfg.head_dim, cfg.cross_attn_heads) == (4, 96, 48, 2)
    assert (cfg.in_channels, cfg.caption_channels, cfg.plucker_channels, cfg.plucker_blocks) == (16, 32, 48, 4)
    assert cfg.softmax_every_n == 2 and cfg.ucpe_rms_renorm is True and cfg.cam_softmax_scale == "padded"
    assert cfg.text_max_length == 300 and model.y_embedder.y_embedding.shape == (300, 32)
    _assert_same_params(model, dm.state_dict())
    out = _run(model, cfg)
    assert out.shape == (1, 16, 2, 4, 4) and torch.isfinite(out).all()


def test_diffusers_missing_null_caption_warns(tmp_path):
    _diffusers_tiny().save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="y_embedder.y_embedding"):
        load_transformer(tmp_path)


def test_diffusers_defaults_equal_model_config_defaults():
    import inspect

    from diffusers import SanaWMTransformer3DModel

    params = inspect.signature(SanaWMTransformer3DModel.__init__).parameters
    defaults = {k: (list(p.default) if isinstance(p.default, tuple) else p.default)
                for k, p in params.items() if k != "self"}
    cfg = diffusers_config_to_model_config(defaults)
    assert cfg.replace(ucpe_rms_renorm=False, cam_softmax_scale="head_dim") == PRESETS["sana-wm-1.6b"]


@pytest.mark.parametrize(
    ("change", "pattern"),
    [({"ffn_type": "GLUMBConv"}, "ffn_type"), ({"k_conv_only": False}, "k_conv_only"),
     ({"use_chunk_plucker_post_attn": False}, "use_chunk_plucker_post_attn"), ({"new_thing": 1}, "new_thing")],
)
def test_diffusers_config_rejections(tmp_path, change, pattern):
    _diffusers_tiny().save_pretrained(tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc.update(change)
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=pattern) as err:
        load_transformer(tmp_path)
    assert "config.json" in str(err.value)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path, tiny) -> Path:
    return save_transformer(tiny, tmp_path / "ckpt")


def _rewrite(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_file(tmp_path, tiny, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save(tiny.state_dict(), path)
    else:
        save_file(tiny.state_dict(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_transformer(path, config=TINY)
    assert str(path) in str(err.value)


def test_truncated_in_folder(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_transformer(saved)
    assert "model.safetensors" in str(err.value)


def test_wrong_shape(saved):
    _rewrite(saved, lambda s: s.__setitem__("blocks.1.attn.qkv.weight", torch.zeros(10, 96)))
    with pytest.raises(CheckpointError) as err:
        load_transformer(saved)
    msg = str(err.value)
    assert "model.safetensors" in msg
    assert "blocks.1.attn.qkv.weight checkpoint (10, 96) vs model (288, 96)" in msg
    with pytest.raises(CheckpointError, match="blocks.1.attn.qkv.weight"):
        load_transformer(saved, strict=False)  # shapes are always checked


def test_unexpected_key(saved, caplog):
    _rewrite(saved, lambda s: s.__setitem__("blocks.0.attn.surprise", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\): blocks.0.attn.surprise"):
        load_transformer(saved)
    with caplog.at_level(logging.WARNING, logger="world_model.checkpoints"):
        load_transformer(saved, strict=False)
    assert "blocks.0.attn.surprise" in caplog.text


def test_missing_key(saved, tiny):
    _rewrite(saved, lambda s: s.pop("blocks.2.mlp.t_conv.weight"))
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): blocks.2.mlp.t_conv.weight") as err:
        load_transformer(saved)
    assert "model.safetensors" in str(err.value)
    loose = load_transformer(saved, strict=False)  # the missing tensor gets an initial value
    assert loose.blocks[2].mlp.t_conv.weight.device.type == "cpu"
    assert torch.equal(loose.blocks[1].mlp.t_conv.weight, tiny.blocks[1].mlp.t_conv.weight)


def test_repo_id_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for repo, file in KNOWN_REPO_FILES.items():
        with pytest.raises(CheckpointNotFoundError) as err:
            load_transformer(repo)
        msg = str(err.value)
        assert repo in msg and file in msg
        assert f"huggingface-cli download {repo} {file} --local-dir" in msg
    with pytest.raises(CheckpointNotFoundError, match="someone/some-model"):
        load_transformer("someone/some-model")


def test_repo_id_from_populated_cache(monkeypatch, tmp_path, tiny):
    """A cached official file is found offline (fake cache in the hub layout)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    repo = "Efficient-Large-Model/SANA-WM_streaming"
    snap = cache / "models--Efficient-Large-Model--SANA-WM_streaming"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text(commit)
    (snap / "snapshots" / commit / "sana_dit").mkdir(parents=True)
    torch.save({"generator": tiny.state_dict()}, snap / "snapshots" / commit / "sana_dit" / "model.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    loaded = load_transformer(repo, config=TINY)
    assert torch.equal(_run(loaded, TINY), _run(tiny, TINY))


def test_nonexistent_and_bad_inputs(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint"):
        load_transformer(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointNotFoundError, match="holds no recognised checkpoint"):
        load_transformer(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="build_transformer"):
        load_transformer("tiny-text")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported file type"):
        load_transformer(tmp_path / "weights.npz")
    assert issubclass(CheckpointNotFoundError, FileNotFoundError) and issubclass(CheckpointError, ValueError)
