"""Baseline policies, SPL and policy evaluation in both worlds, `sana-wm evaluate-policy`, the PPO example."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from _scripts import load_script

import sana_wm_env  # noqa: F401
from policies import make_policy
from policies.sb3 import GoalFrameExtractor, SB3Policy, goal_in_body_frame
from policies.scripted import PoseController, PrivilegedPoseController, RandomPolicy
from sana_wm_cli.main import main as cli_main
from sana_wm_env.envs.actions import ActionLimits
from sana_wm_env.evaluation.policy import (
    EpisodeResult,
    evaluate_policy,
    format_table,
    make_eval_envs,
    run_episode,
    spl,
    spl_terms,
    summarize,
)
from world_model.bundles import save_world_model, untrained_world_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle16(tmp_path_factory) -> Path:
    return save_world_model(untrained_world_model("tiny-notext", image_hw=(16, 16)),
                            tmp_path_factory.mktemp("b16") / "tiny16")


def twin_envs(task="nav", max_steps=30):
    return make_eval_envs(task, None, twin_only=True, max_steps=max_steps, image_hw=(16, 16))


# ------------------------------------------------------------------------------------------------ SPL
def test_spl_on_hand_made_episodes():
    # success on a detour (l=2, p=4): 0.5; failure: 0; success stopping short of l (p < l, inside the radius): 1
    assert spl_terms([True, False, True], [2.0, 3.0, 1.0], [4.0, 1.0, 0.8]).tolist() == [0.5, 0.0, 1.0]
    assert spl([True, False, True], [2.0, 3.0, 1.0], [4.0, 1.0, 0.8]) == pytest.approx(0.5)
    assert spl([False, False], [1.0, 1.0], [0.0, 1.0]) == 0.0
    eps = [EpisodeResult(0, True, 1.5, 10, 3.0, 1.5, False), EpisodeResult(1, False, -0.2, 30, 0.5, 2.0, True)]
    s = summarize(eps)
    assert s["success_rate"] == 0.5 and s["spl"] == pytest.approx(0.25) and s["mean_return"] == pytest.approx(0.65)
    assert s["collision_rate"] == 0.5 and s["mean_steps"] == 20.0


@pytest.mark.parametrize("args, word", [
    (([True], [1.0], [1.0, 2.0]), "one length"),
    (([True], [1.0], [-1.0]), ">= 0"),
    (([True], [0.0], [1.0]), "shortest distance > 0"),
    (([], [], []), "at least one"),
])
def test_spl_rejects_bad_input(args, word):
    with pytest.raises(ValueError, match=word):
        spl(*args)


# ------------------------------------------------------------------------------------------------ controller
def test_pose_controller_respects_limits_and_keeps_direction():
    ctl = PoseController(ActionLimits(), step_seconds=0.25, gain=1.0)  # per step: 0.25 m fwd, 0.125 m side
    ident = np.array([0, 0, 0, 0, 0, 0, 1.0])
    near = ctl.command(ident, np.array([0.1, 0.05, 0, 0, 0, 0, 1.0]))
    np.testing.assert_allclose(near, [0.4, 0.4, 0, 0, 0, 0], atol=1e-6)  # inside the limits: exact twist
    far = ctl.command(ident, np.array([2.0, 2.0, 0, 0, 0, 0, 1.0]))  # left is the slow axis: it saturates
    np.testing.assert_allclose(far[:3], [0.5, 1.0, 0.0], atol=1e-6)  # scaled as a whole, so 2 m / 2 m -> 45 deg
    assert np.abs(far).max() <= 1.0
    turn = ctl.command(ident, np.array([0, 0, 0, 0, 0, np.sin(0.5), np.cos(0.5)]))  # 1 rad left
    np.testing.assert_allclose(turn, [0, 0, 0, 0, 0, 1.0], atol=1e-6)
    frozen = PoseController(ActionLimits(linear=(1.0, 0.0, 0.5)), step_seconds=0.25)
    assert frozen.command(ident, np.array([0.0, 1.0, 0, 0, 0, 0, 1.0]))[1] == 0.0  # no sideways speed: no command
    with pytest.raises(ValueError, match="gain"):
        PoseController(ActionLimits(), 0.25, gain=1.5)
    with pytest.raises(ValueError, match="pose"):
        ctl.command(ident, np.zeros(7))


def test_pose_controller_is_nav_only_and_privileged_oracle_labelled():
    env = gym.make("SanaWM-TwinImageNav-v0", image_hw=(16, 16))
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="ImageNav"):
        PoseController.for_env(env).act(obs)
    pol = make_policy("scripted", env)
    assert isinstance(pol, PrivilegedPoseController) and pol.privileged
    assert pol.act(obs, env).shape == (6,)
    with pytest.raises(ValueError, match="policy must be one of"):
        make_policy("bogus", env)


def test_scripted_reaches_goals_in_the_twin_and_beats_random():
    envs = twin_envs(max_steps=30)
    env = envs["twin"]
    scripted = evaluate_policy(PoseController.for_env(env), envs, episodes=8, seed=0, progress=False)
    random = evaluate_policy(RandomPolicy(), envs, episodes=8, seed=0, progress=False)
    s, r = scripted["worlds"]["twin"], random["worlds"]["twin"]
    assert s["success_rate"] >= 0.75 and s["spl"] >= 0.7
    assert s["success_rate"] - r["success_rate"] >= 0.5
    assert s["mean_return"] > r["mean_return"] + 0.5
    assert [e["shortest"] for e in scripted["worlds"]["twin"]["episodes"]] == \
        [e["shortest"] for e in random["worlds"]["twin"]["episodes"]]  # same seeds, same goals
    assert scripted["gap"] is None and "twin" in format_table(scripted)


def test_run_episode_measures_body_path_length():
    class Const:
        def __init__(self, a):
            self.a = np.asarray(a, dtype=np.float32)

        def act(self, obs, env):
            return self.a

    env = twin_envs(max_steps=4)["twin"]
    far_goal = {"goal": [20.0, 0, 0, 0, 0, 0, 1.0]}
    fwd = run_episode(env, Const([1, 0, 0, 0, 0, 0]), seed=2, options=far_goal)
    step_m = env.unwrapped.sim.step_seconds * 1.0  # forward limit 1 m/s
    assert fwd.path_length == pytest.approx(fwd.steps * step_m, rel=1e-6) and not fwd.success
    assert fwd.shortest == pytest.approx(20.0)
    spin = run_episode(env, Const([0, 0, 0, 0, 0, 1]), seed=2, options=far_goal)  # turning in place: 0 m
    assert spin.steps == 4 and spin.path_length == pytest.approx(0.0, abs=1e-9)


# ------------------------------------------------------------------------------------------------ CLI
def test_evaluate_policy_cli_both_worlds(bundle16, tmp_path, capsys):
    out = tmp_path / "ev.json"
    rc = cli_main(["evaluate-policy", "--task", "nav", "--policy", "random", "--episodes", "2", "--model",
                   str(bundle16), "--max-steps", "4", "--seed", "5", "--json", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["worlds"]) == {"world_model", "twin"} and res["policy"] == "random" and res["split"] == "eval"
    wm, tw = res["worlds"]["world_model"]["episodes"], res["worlds"]["twin"]["episodes"]
    assert [e["seed"] for e in wm] == [e["seed"] for e in tw] == [5, 6]
    # random actions ignore the frames and rewards come from poses: both worlds run identical episodes
    for a, b in zip(wm, tw):
        assert a == b
    assert res["gap"] == {"success_rate": 0.0, "spl": 0.0, "mean_return": 0.0}
    assert "gap (wm-tw)" in capsys.readouterr().out


def test_evaluate_policy_cli_imagenav_cem_twin_only(tmp_path):
    out = tmp_path / "ev.json"
    rc = cli_main(["evaluate-policy", "--task", "imagenav", "--policy", "cem", "--episodes", "1", "--twin-only",
                   "--image-size", "16x16", "--max-steps", "2", "--planner-samples", "8", "--planner-horizon", "2",
                   "--planner-iterations", "1", "--json", str(out), "--no-progress"])
    res = json.loads(out.read_text())
    assert rc == 0 and list(res["worlds"]) == ["twin"] and res["policy"] == "cem" and not res["privileged"]
    assert res["worlds"]["twin"]["episodes"][0]["steps"] <= 2


def test_evaluate_policy_cli_errors(capsys):
    assert cli_main(["evaluate-policy", "--policy", "bogus", "--twin-only", "--episodes", "1"]) == 2
    assert "policy must be one of" in capsys.readouterr().err
    assert cli_main(["evaluate-policy", "--image-size", "16x16", "--episodes", "1"]) == 2
    assert "--image-size" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ SB3 features
def test_goal_in_body_frame_matches_matrix_algebra():
    import torch
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    quats = Rotation.random(8, random_state=1).as_quat()  # [qx, qy, qz, qw]
    pose = np.concatenate([rng.normal(size=(4, 3)), quats[:4]], axis=1)
    goal = np.concatenate([rng.normal(size=(4, 3)), quats[4:]], axis=1)
    got = goal_in_body_frame(torch.tensor(pose, dtype=torch.float64), torch.tensor(goal, dtype=torch.float64)).numpy()
    for i in range(4):
        tp, tg = np.eye(4), np.eye(4)
        tp[:3, :3], tp[:3, 3] = Rotation.from_quat(pose[i, 3:]).as_matrix(), pose[i, :3]
        tg[:3, :3], tg[:3, 3] = Rotation.from_quat(goal[i, 3:]).as_matrix(), goal[i, :3]
        rel = np.linalg.inv(tp) @ tg
        np.testing.assert_allclose(got[i, :3], rel[:3, 3], atol=1e-9)
        np.testing.assert_allclose(got[i, 3], np.linalg.norm(rel[:3, 3]), atol=1e-9)
        np.testing.assert_allclose(got[i, 4:], np.concatenate([rel[:3, 0], rel[:3, 1]]), atol=1e-9)
    # the goal straight ahead of an unrotated body is +x (REP-103 forward)
    ahead = goal_in_body_frame(torch.tensor([[0, 0, 0, 0, 0, 0, 1.0]]), torch.tensor([[2.0, 0, 0, 0, 0, 0, 1]]))
    np.testing.assert_allclose(ahead[0, :4].numpy(), [2, 0, 0, 2], atol=1e-6)


def test_goal_frame_extractor_feature_sizes():
    import torch

    nav = gym.make("SanaWM-TwinNav-v0", image_hw=(36, 36))
    image_nav = gym.make("SanaWM-TwinImageNav-v0", image_hw=(36, 36))
    for env, kind in ((nav, "pose"), (image_nav, "image")):
        space = gym.spaces.Dict({k: (gym.spaces.Box(0, 255, (3, 36, 36), np.uint8) if sp.shape == (36, 36, 3) else sp)
                                 for k, sp in env.observation_space.spaces.items()})
        ext = GoalFrameExtractor(space, cnn_output_dim=16)
        assert ext.uses_goal_frame == (kind == "pose") and ext.uses_goal_image == (kind == "image")
        obs = {k: torch.as_tensor(np.stack([sp.sample(), sp.sample()]), dtype=torch.float32)
               for k, sp in space.spaces.items()}
        if kind == "pose":
            obs["pose"][:, 3:] = torch.tensor([0, 0, 0, 1.0])
            obs["goal"][:, 3:] = torch.tensor([0, 0, 0, 1.0])
            assert ext.features_dim == ext.combined.features_dim + 10
        else:  # image and goal go through one CNN, stacked on the channel axis
            assert ext.features_dim == 16 and ext.fused.cnn[0].in_channels == 6
        assert ext(obs).shape == (2, ext.features_dim)
    # early fusion: the features depend on the goal image, not only on the current one
    obs = {k: torch.as_tensor(np.stack([sp.sample()]), dtype=torch.float32) for k, sp in space.spaces.items()}
    changed = dict(obs, goal=255.0 - obs["goal"])
    assert not torch.allclose(ext(obs), ext(changed))


# ------------------------------------------------------------------------------------------------ PPO example
@pytest.mark.slow
def test_train_ppo_example_smoke(tmp_path):
    example = load_script("examples/train_ppo_nav.py")
    bundle = save_world_model(untrained_world_model("tiny-notext", image_hw=(36, 36)), tmp_path / "tiny36")
    zip_path = tmp_path / "ppo.zip"
    res = example.main(["--env-id", "SanaWM-TwinNav-v0", "--model", str(bundle), "--total-steps", "128",
                        "--n-envs", "2", "--n-steps", "64", "--batch-size", "64", "--max-steps", "3",
                        "--eval-episodes", "1", "--out", str(zip_path), "--eval-json", str(tmp_path / "e.json")])
    assert zip_path.is_file() and res["train_steps"] >= 128
    assert set(res["worlds"]) == {"world_model", "twin"} and res["policy"] == "ppo:ppo.zip"
    # a saved policy refuses an env with other observation shapes
    other = gym.make("SanaWM-TwinNav-v0", image_hw=(40, 40))
    with pytest.raises(ValueError, match="trained on observations"):
        SB3Policy(zip_path).reset(other)


def test_train_ppo_example_imagenav_twin_only(tmp_path):
    example = load_script("examples/train_ppo_nav.py")
    res = example.main(["--env-id", "SanaWM-TwinImageNav-v0", "--model", "none", "--image-size", "36",
                        "--total-steps", "64", "--n-envs", "2", "--n-steps", "32", "--batch-size", "32",
                        "--max-steps", "3", "--eval-episodes", "1", "--out", str(tmp_path / "p.zip")])
    assert res["train_steps"] >= 64 and set(res["worlds"]) == {"twin"}
    assert res["task"] == "imagenav"
    with pytest.raises(ValueError, match="twin --env-id"):
        example.main(["--env-id", "SanaWM-ImageNav-v0", "--model", "none", "--total-steps", "8"])
