"""ModelConfig presets, JSON round trips and validation."""

from __future__ import annotations

import pytest

from world_model.config import PRESETS, ModelConfig, get_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name, tmp_path):
    cfg = PRESETS[name]
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "config.json"
    cfg.to_json(path)
    again = ModelConfig.from_json(path)
    assert again == cfg and again.meta == cfg.meta and isinstance(again.patch_size, tuple)


def test_official_preset_matches_the_release():
    cfg = get_config("sana-wm-1.6b")
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.head_dim) == (20, 2240, 20, 112)
    assert [i for i in range(cfg.depth) if cfg.is_softmax_block(i)] == [3, 7, 11, 15, 19]
    assert (cfg.mlp_ratio, cfg.t_kernel_size, cfg.conv_kernel_size) == (3.0, 3, 4)
    assert (cfg.caption_channels, cfg.in_channels, cfg.plucker_channels, cfg.temporal_stride) == (2304, 128, 48, 8)
    assert cfg.chunk_bounds(121)[:3] == [(0, 4), (4, 7), (7, 10)] and len(cfg.chunk_bounds(121)) == 40
    assert len(cfg.chunk_bounds(43)) == 14
    assert cfg.chunk_bounds(3, start_frame=7) == [(7, 10)]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(hidden_size=100, head_dim=48), "multiple of head_dim"),
        (dict(head_dim=36, hidden_size=72), "multiple of 8"),
        (dict(plucker_channels=40), "6 \\* temporal stride"),
        (dict(patch_size=(2, 1, 1)), "patch_size"),
        (dict(cam_softmax_scale="half"), "cam_softmax_scale"),
    ],
)
def test_invalid_configs_are_rejected(changes, match):
    with pytest.raises(ValueError, match=match):
        PRESETS["tiny-text"].replace(**changes)


def test_unknown_fields_and_presets():
    with pytest.raises(ValueError, match="unknown ModelConfig fields \\['depthh'\\]"):
        ModelConfig.from_dict({"depthh": 3})
    with pytest.raises(ValueError, match="unknown model config"):
        get_config("sana-wm-99b")


def test_with_chunk_size_keeps_the_streaming_context_in_frames():
    cfg = get_config("tiny-notext")  # chunks of 3, window 1 chunk
    one = cfg.with_chunk_size(1)
    assert (one.chunk_size, one.first_chunk_size, one.stream_window_chunks) == (1, 2, 3)
    assert one.stream_sink_chunks == cfg.stream_sink_chunks and one.hidden_size == cfg.hidden_size
    assert one.chunk_bounds(5) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert cfg.with_chunk_size(2).stream_window_chunks == 2  # 3 frames -> 2 chunks of 2 (at least as long)
    assert cfg.with_chunk_size(3) == cfg
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            cfg.with_chunk_size(bad)
