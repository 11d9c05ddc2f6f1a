"""The ImageNav goal encoder: twin data collection, training, files, and its use as a frozen PPO extractor."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from _scripts import load_script

import sana_wm_env  # noqa: F401
from policies.relative_pose import (
    RelativePoseNet,
    RelativePoseNetConfig,
    collect_pairs,
    evaluate_relative_pose_net,
    load_relative_pose_net,
    pose_errors,
    save_relative_pose_net,
    train_relative_pose_net,
)
from policies.sb3 import GoalFrameExtractor, SB3Policy, goal_in_body_frame

pytestmark = pytest.mark.usefixtures("one_thread")


def _pose7_matrix(pose) -> np.ndarray:
    from world_model.camera import pose7_to_matrix

    return pose7_to_matrix(np.asarray(pose, dtype=np.float64)).numpy()


@pytest.fixture(scope="module")
def pairs() -> dict[str, np.ndarray]:
    return collect_pairs(48, model=None, seed=3, goals_per_scene=3, views_per_goal=4)


def test_collect_pairs_are_renders_of_their_poses_with_exact_labels(pairs):
    from sana_wm_env.scenes import make_scene
    from sana_wm_env.scenes.renderer import SceneRenderer

    n = 48
    sim = gym.make("SanaWM-TwinImageNav-v0").unwrapped.sim
    h, w = sim.image_hw
    assert pairs["image"].shape == pairs["goal"].shape == (n, 3, h, w) and pairs["image"].dtype == np.uint8
    assert pairs["target"].shape == (n, 10) and pairs["target"].dtype == np.float32
    assert pairs["body"].shape == pairs["goal_body"].shape == (n, 4, 4) and len(pairs["scene"]) == n
    assert int(pairs["scenes"]) == len(set(pairs["scene"])) >= n // 12
    # every label is the goal in the body frame, as goal_in_body_frame computes it from the two poses
    from world_model.camera import matrix_to_pose7

    p7 = lambda t: matrix_to_pose7(torch.as_tensor(t, dtype=torch.float64)).float()  # noqa: E731
    expected = goal_in_body_frame(p7(pairs["body"]), p7(pairs["goal_body"]))
    np.testing.assert_allclose(pairs["target"], expected.numpy(), atol=1e-4)
    # each goal's first view is its episode start: the goal lies 1-3 m away (TaskConfig.goal_distance); the other
    # views are free poses of the scene around the path
    starts = np.arange(0, n, 4)
    assert ((pairs["target"][starts, 3] >= 1.0) & (pairs["target"][starts, 3] <= 3.0)).all()
    # images are the twin's renders of those poses in those scenes
    for i in (0, 1, 5, n - 1):
        family, seed = pairs["scene"][i].split("/")
        scene = make_scene(family, int(seed))
        assert scene.free(pairs["body"][i][None, :3, 3].astype(np.float64), 0.1)[0]
        with SceneRenderer(scene, h, w, depth=False) as r:
            for key, pose in (("image", pairs["body"][i]), ("goal", pairs["goal_body"][i])):
                frame = r.render(pose.astype(np.float64) @ sim.mount, sim.default_intrinsics, check_inside=False)[0]
                np.testing.assert_array_equal(frame.transpose(2, 0, 1), pairs[key][i])
    # the same seed gives the same data
    again = collect_pairs(8, model=None, seed=3, goals_per_scene=3, views_per_goal=4)
    np.testing.assert_array_equal(again["image"], pairs["image"][:8])


def test_local_correlation_matches_shifted_products():
    from policies.relative_pose import local_correlation

    a, b, r = torch.randn(2, 5, 8, 6, dtype=torch.float64), torch.randn(2, 5, 8, 6, dtype=torch.float64), 2
    padded = torch.nn.functional.pad(b, (r, r, r, r))
    ref = torch.stack([(a * padded[:, :, dy:dy + 8, dx:dx + 6]).mean(1) for dy in range(5) for dx in range(5)], 1)
    torch.testing.assert_close(local_correlation(a, b, r), ref)
    # offset (dy, dx) = (0, +1) is channel r * (2r + 1) + r + 1: a shifted copy correlates fully there
    shifted = torch.zeros_like(a)
    shifted[..., 1:] = a[..., :-1]
    corr = local_correlation(a, shifted, r)
    torch.testing.assert_close(corr[:, r * 5 + r + 1, :, :-1], (a[..., :-1] ** 2).mean(1))


@pytest.mark.parametrize("radius", [0, 2], ids=["early-fusion", "correlation"])
def test_training_fits_and_the_file_round_trips(pairs, tmp_path, radius):
    torch.manual_seed(0)  # the untrained reference: its loss must not depend on the tests that ran before
    net0 = RelativePoseNet(RelativePoseNetConfig(image_hw=pairs["image"].shape[2:], width=8, features_dim=32,
                                                 correlation_radius=radius))
    before = evaluate_relative_pose_net(net0, pairs)["val_loss"]
    net, metrics = train_relative_pose_net(pairs, pairs, config=net0.config, epochs=25, batch_size=16, lr=3e-3)
    after = metrics["val"]["val_loss"]
    assert after < 0.5 * before, (before, after)  # it can fit the data it saw
    assert len(metrics["history"]) == 25 and {"median_position_error_m", "median_heading_error_deg"} <= set(
        metrics["val"])
    path = save_relative_pose_net(net, tmp_path / "rp.pt", metrics)
    back = load_relative_pose_net(path)
    img, goal = torch.as_tensor(pairs["image"][:4]), torch.as_tensor(pairs["goal"][:4])
    torch.testing.assert_close(back(img, goal), net(img, goal), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="pretrain_relative_pose"):
        load_relative_pose_net(tmp_path / "missing.pt")
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a relative-pose network"):
        load_relative_pose_net(tmp_path / "other.pt")


def test_bad_inputs_are_named():
    net = RelativePoseNet(RelativePoseNetConfig(image_hw=(32, 32), width=4, features_dim=8))
    with pytest.raises(ValueError, match="image must have shape"):
        net(torch.zeros(1, 32, 32, 3), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="batch sizes differ"):
        net(torch.zeros(2, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="image_hw"):
        RelativePoseNetConfig(image_hw=(16, 16))
    with pytest.raises(ValueError, match="correlation_radius"):
        RelativePoseNetConfig(image_hw=(32, 32), correlation_radius=5)
    with pytest.raises(ValueError, match="num_samples"):
        collect_pairs(0)
    with pytest.raises(ValueError, match="views_per_goal"):
        collect_pairs(4, views_per_goal=0)
    with pytest.raises(ValueError, match="'image', 'goal', 'target'"):
        train_relative_pose_net({"image": np.zeros((2, 3, 32, 32), np.uint8), "target": np.zeros((2, 10))})


def test_pose_errors_are_metres_and_degrees():
    yaw45 = [2.0, 0, 0, 0, 0, np.sin(np.pi / 8), np.cos(np.pi / 8)]
    target = goal_in_body_frame(torch.tensor([[0.0, 0, 0, 0, 0, 0, 1]]), torch.tensor([yaw45], dtype=torch.float32))
    pred = target.clone()
    pred[:, 0] += 0.5  # half a metre too far
    errs = pose_errors(pred, target)
    assert errs["median_position_error_m"] == pytest.approx(0.5) and errs["median_heading_error_deg"] == 0.0
    assert errs["median_goal_distance_m"] == pytest.approx(2.0)


def _train_tiny_imagenav_ppo(tmp_path: Path, net_path: Path, *extra: str) -> Path:
    """``examples/train_ppo_nav.py`` for 64 twin ImageNav steps on the frozen encoder at ``net_path``."""
    example = load_script("examples/train_ppo_nav.py")
    zip_path = tmp_path / "ppo.zip"
    example.main(["--env-id", "SanaWM-TwinImageNav-v0", "--model", "none", "--total-steps", "64",
                  "--n-envs", "2", "--n-steps", "32", "--batch-size", "32", "--max-steps", "4",
                  "--eval-episodes", "0", "--out", str(zip_path), "--goal-pose-net", str(net_path), *extra])
    return zip_path


def test_frozen_goal_encoder_in_ppo(pairs, tmp_path):
    net, _ = train_relative_pose_net(pairs, None, config=RelativePoseNetConfig(image_hw=(64, 64), width=4,
                                                                              features_dim=8), epochs=1)
    net_path = save_relative_pose_net(net, tmp_path / "rp.pt")
    zip_path = _train_tiny_imagenav_ppo(tmp_path, net_path)
    policy = SB3Policy(zip_path)
    ext = policy.model.policy.features_extractor
    assert isinstance(ext, GoalFrameExtractor) and ext.uses_goal_pose_net
    assert ext.features_dim == 8 + 10
    # PPO (its orthogonal init included) trained around the encoder without changing it
    for name, p in net.state_dict().items():
        torch.testing.assert_close(ext.fused.module.state_dict()[name], p, rtol=0, atol=0)
    assert not any(p.requires_grad for p in ext.fused.parameters())
    # the extractor hands the policy the encoder's own prediction (images rescaled from SB3's [0, 1] floats)
    img, goal = torch.as_tensor(pairs["image"][:2]), torch.as_tensor(pairs["goal"][:2])
    feats = ext({"image": img.float() / 255.0, "goal": goal.float() / 255.0})
    torch.testing.assert_close(feats[:, 8:], net(img, goal), rtol=1e-5, atol=1e-5)
    env = gym.make("SanaWM-TwinImageNav-v0")
    obs, _ = env.reset(seed=0)
    assert policy.act(obs, env).shape == (6,)
    # without the encoder's features the policy sees its prediction alone
    lean = SB3Policy(_train_tiny_imagenav_ppo(tmp_path, net_path, "--no-encoder-features")).model
    ext = lean.policy.features_extractor
    assert ext.features_dim == 10 and not ext.goal_pose_features
    torch.testing.assert_close(ext({"image": img.float() / 255.0, "goal": goal.float() / 255.0}), net(img, goal),
                               rtol=1e-5, atol=1e-5)
    # a pose-goal task has no image goal for it
    nav = gym.make("SanaWM-TwinNav-v0").observation_space
    with pytest.raises(ValueError, match="goal_pose_net needs image goals"):
        GoalFrameExtractor(nav, goal_pose_net=net_path)


def test_visual_servo_policy(pairs, tmp_path):
    from policies import make_policy
    from policies.relative_pose import VisualServoPolicy, relative_goal_matrix
    from policies.scripted import PoseController

    env = gym.make("SanaWM-TwinImageNav-v0")
    obs, _ = env.reset(seed=5)
    pose, goal = env.unwrapped.pose, env.unwrapped.goal_pose
    # an exact estimate gives exactly the pose controller's command
    exact = goal_in_body_frame(torch.as_tensor(pose)[None], torch.as_tensor(goal)[None])[0].numpy()
    np.testing.assert_allclose(relative_goal_matrix(exact), np.linalg.inv(_pose7_matrix(pose)) @ _pose7_matrix(goal),
                               atol=1e-5)
    ctl = PoseController.for_env(env)
    np.testing.assert_allclose(ctl.command_relative(relative_goal_matrix(exact)), ctl.command(pose, goal), atol=1e-5)
    # any prediction maps to a proper rotation
    r = relative_goal_matrix(np.arange(10, dtype=np.float32))[:3, :3]
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-9)
    assert np.linalg.det(r) == pytest.approx(1.0)
    net, _ = train_relative_pose_net(pairs, None, config=RelativePoseNetConfig(width=4, features_dim=8), epochs=1)
    path = save_relative_pose_net(net, tmp_path / "rp.pt")
    policy = make_policy(f"servo:{path}", env)
    assert isinstance(policy, VisualServoPolicy) and not policy.privileged
    with pytest.raises(ValueError, match="reset"):
        policy.act(obs, env)
    policy.reset(env, seed=5)
    a = policy.act(obs, env)
    assert a.shape == (6,) and a.dtype == np.float32 and np.abs(a).max() <= 1.0
    with pytest.raises(ValueError, match="ImageNav"):
        policy.reset(gym.make("SanaWM-TwinNav-v0"))
    with pytest.raises(ValueError, match="finite"):
        relative_goal_matrix(np.full(10, np.nan))


def test_uncertainty_head_is_trained_by_the_likelihood(pairs):
    from policies.relative_pose import expand_log_var, relative_pose_loss

    cfg = RelativePoseNetConfig(image_hw=pairs["image"].shape[2:], width=8, features_dim=32, uncertainty=True)
    img, goal = torch.as_tensor(pairs["image"][:4]), torch.as_tensor(pairs["goal"][:4])
    mean, log_var = RelativePoseNet(cfg).predict(img, goal)
    assert mean.shape == (4, 10) and log_var.shape == (4, 2)
    assert RelativePoseNet(RelativePoseNetConfig(width=4, features_dim=8)).predict(img, goal)[1] is None
    # beta = 0 is the Gaussian negative log-likelihood per entry; a variance matching the error minimises it
    target = torch.zeros(1, 10)
    err = torch.full((1, 10), 0.5)
    nll = lambda lv: relative_pose_loss(err, torch.full((1, 2), lv), target, beta=0.0)  # noqa: E731
    torch.testing.assert_close(nll(0.0), torch.tensor(0.5 * 0.25))
    assert nll(float(np.log(0.25))) < min(nll(float(np.log(0.2))), nll(float(np.log(0.3))))
    assert expand_log_var(torch.tensor([[1.0, 2.0]])).tolist() == [[1.0] * 4 + [2.0] * 6]
    net, metrics = train_relative_pose_net(pairs, pairs, config=cfg, epochs=25, batch_size=16, lr=3e-3)
    v = metrics["val"]
    # the fitted variances are informative: within their predicted RMS most of the time, and the NLL is finite
    assert np.isfinite(v["val_nll"]) and v["val_position_within_predicted_rms"] > 0.5
    assert v["val_loss"] < evaluate_relative_pose_net(RelativePoseNet(cfg), pairs)["val_loss"]


def test_goal_tracker_odometry_and_fusion():
    from policies.relative_pose import GoalTracker, relative_goal_matrix, relative_goal_target

    env = gym.make("SanaWM-TwinImageNav-v0", image_hw=(32, 32))
    env.reset(seed=2)
    net = RelativePoseNet(RelativePoseNetConfig(image_hw=(32, 32), width=4, features_dim=8))
    tracker = GoalTracker.for_env(net, env, memory=1.0)
    exact = lambda: relative_goal_target(_pose7_matrix(env.unwrapped.pose),  # noqa: E731
                                         _pose7_matrix(env.unwrapped.goal_pose))
    # fed exact estimates, odometry from the actions alone follows the env's privileged pose and goal
    tracker.add(exact(), np.ones(2))
    rng = np.random.default_rng(0)
    for _ in range(6):
        action = rng.uniform(-1.2, 1.2, 6)  # out-of-range entries are clipped, by the env and the tracker alike
        _, _, term, trunc, _ = env.step(action)
        tracker.move(action)
        np.testing.assert_allclose(tracker.body, _pose7_matrix(env.unwrapped.pose), atol=1e-5)
        np.testing.assert_allclose(tracker.estimate, relative_goal_matrix(exact()), atol=1e-4)
        if term or trunc:
            break
        tracker.add(exact(), np.ones(2))
    # fusion: positions average by their weights (in the start frame); memory discounts earlier estimates
    for memory, expected in ((1.0, 0.75), (0.5, 0.6), (0.0, 0.0)):
        t = GoalTracker.for_env(net, env, memory=memory)
        a, b = np.zeros(10), np.zeros(10)
        a[[0, 3, 4, 8]] = [1.0, 1.0, 1.0, 1.0]  # 1 m ahead, no rotation
        b[[4, 8]] = [1.0, 1.0]  # here
        t.add(a, np.array([3.0, 1.0]))
        t.add(b, np.array([1.0, 1.0]))
        assert t.estimate[0, 3] == pytest.approx(expected)
    with pytest.raises(ValueError, match="weights"):
        t.add(a, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="memory"):
        GoalTracker.for_env(net, env, memory=1.5)
    with pytest.raises(ValueError, match="rep103"):
        GoalTracker.for_env(net, gym.make("SanaWM-TwinImageNav-v0", image_hw=(32, 32), action_frame="opencv"))
    with pytest.raises(ValueError, match="reset"):
        _ = GoalTracker.for_env(net, env).estimate


def test_goal_tracker_vec_env_and_ppo_on_its_estimate(pairs, tmp_path):
    from policies.relative_pose import GoalTracker
    from policies.sb3 import GOAL_ESTIMATE_KEY, GoalTrackerVecEnv, make_sb3_vec_env

    net, _ = train_relative_pose_net(pairs, None, config=RelativePoseNetConfig(width=4, features_dim=8), epochs=1)
    net_path = save_relative_pose_net(net, tmp_path / "rp.pt")
    venv = GoalTrackerVecEnv(make_sb3_vec_env("SanaWM-TwinImageNav-v0", num_envs=2, task_config={"max_steps": 3}),
                             net_path, memory=0.5)
    assert venv.observation_space[GOAL_ESTIMATE_KEY].shape == (10,)
    venv.seed(4)
    obs = venv.reset()
    # sub-env 1 against a tracker of its own, fed the same observations and actions, across an autoreset
    ref = GoalTracker.for_sim(venv.net, venv.venv.venv, memory=0.5)
    first = lambda o, i: {"image": o["image"][i], "goal": o["goal"][i]}  # noqa: E731
    ref.reset(first(obs, 1))
    np.testing.assert_allclose(obs[GOAL_ESTIMATE_KEY][1], ref.estimate_vector(), atol=1e-5)
    rng = np.random.default_rng(1)
    ended = 0
    for _ in range(5):
        actions = rng.uniform(-1, 1, (2, 6)).astype(np.float32)
        obs, _, dones, infos = venv.step(actions)
        if dones[1]:
            final = infos[1]["terminal_observation"]
            ref.update(actions[1], final)
            np.testing.assert_allclose(final[GOAL_ESTIMATE_KEY], ref.estimate_vector(), atol=1e-5)
            ref.reset(first(obs, 1))  # the new episode's first observation
            ended += 1
        else:
            ref.update(actions[1], first(obs, 1))
        np.testing.assert_allclose(obs[GOAL_ESTIMATE_KEY][1], ref.estimate_vector(), atol=1e-5)
    assert ended == 1  # max_steps 3: the first episode ended at step 3 (or earlier on a collision)
    venv.close()
    with pytest.raises(ValueError, match="ImageNav"):
        GoalTrackerVecEnv(make_sb3_vec_env("SanaWM-TwinNav-v0", num_envs=1), net_path)
    with pytest.raises(ValueError, match="goal_tracker_memory"):
        GoalFrameExtractor(gym.make("SanaWM-TwinImageNav-v0").observation_space, goal_pose_net=net_path,
                           goal_tracker_memory=0.5)

    # PPO on the estimate; the saved policy rebuilds the tracker for a single env and steps it with its actions
    zip_path = _train_tiny_imagenav_ppo(tmp_path, net_path, "--goal-tracker-memory", "0.5")
    policy = SB3Policy(zip_path)
    assert policy.uses_tracker and policy.model.policy.features_extractor.goal_tracker_memory == 0.5
    env = gym.make("SanaWM-TwinImageNav-v0")
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="reset"):
        policy.act(obs, env)
    policy.reset(env, seed=0)
    for _ in range(3):
        a = policy.act(obs, env)
        assert a.shape == (6,) and np.abs(a).max() <= 1.0
        obs, *_ = env.step(a)
    assert policy.tracker.steps == 2
    with pytest.raises(ValueError, match="trained on observations"):
        policy.reset(gym.make("SanaWM-TwinNav-v0"))


def test_scripted_expert_on_the_tracked_goal_is_the_servo(pairs, tmp_path):
    from policies.imitation import scripted_expert
    from policies.relative_pose import VisualServoPolicy
    from policies.sb3 import GoalTrackerVecEnv, make_sb3_vec_env

    net, _ = train_relative_pose_net(pairs, None, config=RelativePoseNetConfig(width=4, features_dim=8), epochs=1)
    net_path = save_relative_pose_net(net, tmp_path / "rp.pt")
    venv = GoalTrackerVecEnv(make_sb3_vec_env("SanaWM-TwinImageNav-v0", num_envs=1, task_config={"max_steps": 6}),
                             net_path, memory=0.8)
    venv.seed(5)
    obs = venv.reset()
    expert = scripted_expert(venv)
    env = gym.make("SanaWM-TwinImageNav-v0", task_config={"max_steps": 6})
    single, _ = env.reset(seed=5)
    servo = VisualServoPolicy(net_path, memory=0.8)
    servo.reset(env, seed=5)
    for _ in range(4):  # the batched expert on goal_estimate acts as sana-wm evaluate-policy's servo
        action = expert(obs)[0]
        np.testing.assert_allclose(action, servo.act(single, env), atol=1e-5)
        single, *_ = env.step(action)
        obs, *_ = venv.step(action[None])
    # end to end: the example clones the servo on the tracker's observations, then runs PPO
    zip_path = _train_tiny_imagenav_ppo(tmp_path, net_path, "--goal-tracker-memory", "0.8", "--bc-steps", "16",
                                        "--bc-epochs", "1", "--no-encoder-features")
    clone = SB3Policy(zip_path.with_name("ppo_bc.zip"))
    assert clone.uses_tracker
    clone.reset(env, seed=0)
    obs, _ = env.reset(seed=0)
    assert clone.act(obs, env).shape == (6,)
