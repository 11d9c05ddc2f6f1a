"""Train PPO on SANA-WM Nav (or ImageNav), save it, and evaluate it in the world model and in its MuJoCo twin.

    python examples/train_ppo_nav.py --env-id SanaWM-Nav-v0 --model default --total-steps 50000 --n-envs 8
    python examples/train_ppo_nav.py --env-id SanaWM-TwinImageNav-v0 --total-steps 100000   # goal given as an image

Choices, top to bottom:

* **Env**: ``SanaWM-Nav-v0`` trains inside the world model ("in imagination"); ``SanaWM-TwinNav-v0`` trains in
  the MuJoCo twin (ground truth, much faster on CPU); the ``ImageNav`` ids give the goal as an image of the goal
  view and no pose (the policy must navigate by looking). Either way the evaluation runs the trained policy in
  both worlds on the same seeds, so the table shows the imagination-to-ground-truth gap.
* **Vector env**: ``policies.sb3.make_sb3_vec_env`` steps all ``--n-envs`` sub-envs in one batched generator
  call (SB3 cannot take Gymnasium vector envs). More sub-envs = more samples per second on the same cores.
* **Policy**: ``MultiInputPolicy`` because observations are a dict: ``image`` (uint8, through SB3's NatureCNN,
  which needs images of at least 36x36) and ``pose``/``goal`` (7 floats each, through an MLP). Nav rewards
  metric progress, so the pose and goal carry most of the signal; the image lets the policy avoid walls.
  ``policies.sb3.GoalFrameExtractor`` adds the goal as seen from the current body (position, distance,
  relative rotation): a fixed function of pose and goal that spares the MLP learning quaternion algebra.
  ImageNav observes no pose; there the same extractor stacks the current and the goal image into one CNN
  (early fusion), so the first convolution compares the two views pixel by pixel. From scratch that CNN does not
  learn to find goals on a CPU budget; ``--goal-pose-net PATH`` swaps it for a frozen network pretrained on the
  twin to predict where the goal is (``examples/pretrain_relative_pose.py``), and PPO learns to act on it.
  ``--goal-tracker-memory 0.8`` adds ``goal_estimate``: those predictions fused over the episode with the
  agent's own motion (``policies.sb3.GoalTrackerVecEnv``), far steadier than one view pair's guess.
* **Warm start** (``--bc-steps N``): before PPO, run the scripted expert for N steps (the pose controller on
  ``pose``/``goal``; on ImageNav with the tracker, the same controller on ``goal_estimate``, i.e. the servo) and
  fit the policy's action mean and value head to it (``policies.imitation``). PPO then starts from a policy that
  already reaches goals; ``--log-std-init`` sets how widely it explores around it. The clone is saved beside
  ``--out`` (``*_bc.zip``) so it can be evaluated on its own.
* **PPO settings**: SB3 defaults except shorter rollouts (``n_steps`` per sub-env, so updates come often at
  a few dozen steps/s), a smaller minibatch and fewer epochs (cheap updates on CPU), and ``gamma = 0.98``
  (episodes are at most 100 steps; a goal is reached in 10-30).
* **Episodes**: ``--max-steps`` caps episode length (the task default is 100 steps = 12.5 s with the bundled
  ``sana-wm-twin-g``, 37.5 s with ``sana-wm-twin-s``).
* **Evaluation**: ``sana_wm_env.evaluation.policy.evaluate_policy`` (what ``sana-wm evaluate-policy`` runs) on
  held-out scenes (the ``eval`` split; training uses the ``train`` split), episode seeds from ``--eval-seed``,
  deterministic actions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

# env id -> (task name for the evaluation envs, trains in the twin?)
ENV_TASKS = {
    "SanaWM-Nav-v0": ("nav", False),
    "SanaWM-TwinNav-v0": ("nav", True),
    "SanaWM-ImageNav-v0": ("imagenav", False),
    "SanaWM-TwinImageNav-v0": ("imagenav", True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env-id", default="SanaWM-Nav-v0", choices=tuple(ENV_TASKS),
                   help="task, and whether to train in the world model or in its twin (default: %(default)s)")
    p.add_argument("--model", default="default",
                   help="world-model bundle name or path; 'none' with the twin env: twin only, no world model")
    p.add_argument("--image-size", type=int, default=None, help="twin without a model: square frame size (64)")
    p.add_argument("--total-steps", type=int, default=50_000, help="PPO environment steps (default: %(default)s)")
    p.add_argument("--n-envs", type=int, default=8, help="batched sub-envs (default: %(default)s)")
    p.add_argument("--n-steps", type=int, default=64, help="PPO rollout length per sub-env (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=128, help="PPO minibatch size (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=100, help="episode length cap (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("ppo_nav.zip"), help="model zip (default: %(default)s)")
    p.add_argument("--eval-episodes", type=int, default=20, help="episodes per world (0: skip; default 20)")
    p.add_argument("--eval-seed", type=int, default=10_000, help="first evaluation seed (default: %(default)s)")
    p.add_argument("--eval-json", type=Path, default=None, help="write the evaluation JSON here")
    p.add_argument("--goal-pose-net", type=Path, default=None,
                   help="ImageNav: frozen pretrained goal encoder (examples/pretrain_relative_pose.py) for the policy")
    p.add_argument("--goal-tracker-memory", type=float, default=None,
                   help="with --goal-pose-net: also observe the encoder's estimates fused over the episode by "
                        "odometry (policies.sb3.GoalTrackerVecEnv), with this memory in [0, 1] (e.g. 0.8)")
    p.add_argument("--no-encoder-features", action="store_true",
                   help="with --goal-pose-net: give the policy the encoder's prediction only, not its features")
    p.add_argument("--bc-steps", type=int, default=0,
                   help="warm start: imitate the scripted expert for this many env steps before PPO (default: off)")
    p.add_argument("--bc-epochs", type=int, default=10, help="warm start: epochs over the expert data (default 10)")
    p.add_argument("--log-std-init", type=float, default=0.0,
                   help="initial log std of PPO's Gaussian actions (SB3 default 0; lower after a warm start)")
    p.add_argument("--learning-rate", type=float, default=3e-4, help="PPO learning rate (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--progress", action="store_true", help="show SB3's training progress bar (needs tqdm + rich)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)

    import torch
    from stable_baselines3 import PPO

    from policies.imitation import collect_expert_data, pretrain_policy, scripted_expert
    from policies.sb3 import GoalFrameExtractor, GoalTrackerVecEnv, SB3Policy, make_sb3_vec_env
    from sana_wm_env.evaluation.policy import evaluate_policy, format_table, make_eval_envs, write_results

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    task, twin = ENV_TASKS[args.env_id]
    model = None if args.model == "none" else args.model
    if model is None and not twin:
        raise ValueError("--model none only works with a twin --env-id (the world-model env needs a model)")
    geometry = {"image_hw": (args.image_size, args.image_size)} if args.image_size else {}
    if geometry and model is not None:
        raise ValueError("--image-size applies to the twin without a model; a world model has its own size")

    # 1. The env: N sub-envs batched in one generator call, wrapped as an SB3 VecEnv.
    if model is not None:
        from sana_wm_env.envs.core import resolve_model

        model = resolve_model(model, "cpu")  # load once: training env and both evaluation envs share it
    venv = make_sb3_vec_env(args.env_id, num_envs=args.n_envs, model=model,
                            task_config={"max_steps": args.max_steps}, **geometry)
    if args.goal_pose_net is not None and task != "imagenav":
        raise ValueError("--goal-pose-net is for the ImageNav ids (the goal given as an image)")
    extractor = {} if args.goal_pose_net is None else {"goal_pose_net": str(args.goal_pose_net.resolve())}
    if args.no_encoder_features:
        if args.goal_pose_net is None:
            raise ValueError("--no-encoder-features needs --goal-pose-net")
        extractor["goal_pose_features"] = False
    if args.goal_tracker_memory is not None:
        if args.goal_pose_net is None:
            raise ValueError("--goal-tracker-memory needs --goal-pose-net (the encoder whose estimates it fuses)")
        venv = GoalTrackerVecEnv(venv, args.goal_pose_net, memory=args.goal_tracker_memory)
        extractor["goal_tracker_memory"] = args.goal_tracker_memory
    venv.seed(args.seed)

    # 2. PPO with a dict-observation policy (CNN for the image, MLP for pose and goal).
    agent = PPO("MultiInputPolicy", venv, n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=4,
                gamma=0.98, learning_rate=args.learning_rate, seed=args.seed, device="cpu", verbose=0,
                policy_kwargs={"features_extractor_class": GoalFrameExtractor, "features_extractor_kwargs": extractor,
                               "log_std_init": args.log_std_init})
    summary: dict = {}

    # 2b. Optional warm start: clone the scripted expert on the observations PPO sees, then PPO improves on it.
    if args.bc_steps > 0:
        t0 = time.perf_counter()
        data = collect_expert_data(agent.get_env(), scripted_expert(agent.get_env()), args.bc_steps, agent.gamma)
        losses = pretrain_policy(agent.policy, data, epochs=args.bc_epochs, seed=args.seed)
        bc_path = args.out.with_name(f"{args.out.stem}_bc.zip")
        bc_path.parent.mkdir(parents=True, exist_ok=True)
        agent.save(bc_path)
        summary["warm_start"] = {"steps": len(data), "episodes": data.episodes, "expert_success_rate":
                                 data.successes / data.episodes, "dropped_steps": data.dropped_steps,
                                 "losses": losses, "seconds": time.perf_counter() - t0, "model_path": str(bc_path)}
        print(f"warm start: {len(data)} expert steps ({data.episodes} episodes, expert success "
              f"{data.successes / data.episodes:.2f}), action MSE {losses[0]['action_mse']:.4f} -> "
              f"{losses[-1]['action_mse']:.4f} in {summary['warm_start']['seconds']:.0f} s -> {bc_path}")
    t0 = time.perf_counter()
    agent.learn(total_timesteps=args.total_steps, progress_bar=args.progress)
    train_s = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    agent.save(args.out)
    venv.close()
    print(f"trained {agent.num_timesteps} steps in {train_s:.0f} s ({agent.num_timesteps / train_s:.1f} steps/s) "
          f"on {args.env_id} -> {args.out}")

    # 3. Evaluate the saved policy in the world model and in its twin, on the same held-out seeds.
    summary.update({"train_steps": int(agent.num_timesteps), "train_seconds": train_s, "model_path": str(args.out)})
    if args.eval_episodes > 0:
        envs = make_eval_envs(task, model, twin_only=model is None, max_steps=args.max_steps, **geometry)
        results = evaluate_policy(SB3Policy(args.out), envs, episodes=args.eval_episodes, seed=args.eval_seed)
        for env in envs.values():
            env.close()
        results.update(summary)
        print(format_table(results))
        if args.eval_json is not None:
            print(f"results: {write_results(results, args.eval_json)}")
        summary = results
    return summary


if __name__ == "__main__":
    main()
