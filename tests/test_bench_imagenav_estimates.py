"""benchmarks/bench_imagenav_estimates.py: the servo in the twin, its actions replayed in the bundled world model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _scripts import load_script

from policies.relative_pose import (
    RelativePoseNet,
    RelativePoseNetConfig,
    measure_goals,
    relative_goal_matrix,
    save_relative_pose_net,
)
from world_model.bundles import DEFAULT_NAME

pytestmark = pytest.mark.slow  # benchmark smoke runs: the slow tier


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_imagenav_estimates.py")


@pytest.fixture(scope="module")
def net_path(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    net = RelativePoseNet(RelativePoseNetConfig(image_hw=(64, 64), width=4, features_dim=8))
    return save_relative_pose_net(net, tmp_path_factory.mktemp("net") / "rp.pt")


def test_goal_errors_are_zero_for_the_networks_own_estimate_and_grow_with_an_offset(bench, net_path):
    from policies.relative_pose import load_relative_pose_net

    net = load_relative_pose_net(net_path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    goal = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pred, _ = measure_goals(net, images, np.repeat(goal[None], 3, axis=0))
    truth = np.stack([relative_goal_matrix(p) for p in pred])
    np.testing.assert_allclose(bench.goal_errors(net, images, goal, truth), 0.0, atol=1e-3)
    moved = truth.copy()
    moved[:, 0, 3] += 0.5  # half a metre further ahead
    c, s = np.cos(np.radians(30.0)), np.sin(np.radians(30.0))
    moved[:, :3, :3] = moved[:, :3, :3] @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # turned 30 deg
    np.testing.assert_allclose(bench.goal_errors(net, images, goal, moved), [[0.5, 30.0]] * 3, atol=1e-3)


def test_replay_passes_through_the_twins_poses_and_reports_by_step(bench, net_path, tmp_path):
    out = tmp_path / "estimates.json"
    video = tmp_path / "estimates.mp4"
    res = bench.main(["--net", str(net_path), "--episodes", "2", "--max-steps", "3", "--json", str(out),
                      "--video", str(video), "--video-scale", "2"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    import imageio.v3 as iio

    frames = iio.imread(video)  # one frame per observation: generated beside rendered, 2x, under a label bar
    assert frames.shape == (sum(e["steps"] + 1 for e in res["episodes"]), 18 + 128, 2 * 128 + 4, 3)
    assert res["model"] == DEFAULT_NAME and len(res["episodes"]) == 2
    rows = res["rows"]
    assert len(rows) == sum(e["steps"] + 1 for e in res["episodes"])  # every observation, the first one included
    first = [r for r in rows if r["step"] == 0]
    for r in first:  # the first observation is the twin's render in both worlds
        assert r["twin_pos"] == pytest.approx(r["world_model_pos"]) == pytest.approx(r["first_frame_pos"])
    later = [r for r in rows if r["step"] > 0]
    assert any(r["twin_pos"] != pytest.approx(r["world_model_pos"]) for r in later)  # generated frames differ
    assert [e["steps"] for e in res["by_step"]][:2] == ["0-0", "1-4"]
    assert res["by_step"][0]["observations"] == 2
    with pytest.raises(ValueError, match="--episodes must be >= 1"):
        bench.main(["--net", str(net_path), "--episodes", "0"])
