"""Train PPO in RLlib on SANA-WM Nav, save the module, and evaluate it against a random policy in both worlds.

    pip install torch==2.13.0 "sana-wm-env[rllib]"     # its own environment: ray[rllib] pins its own gymnasium
    python examples/train_rllib_ppo_nav.py --env-id SanaWM-TwinNav-v0 --model none --iterations 30
    python examples/train_rllib_ppo_nav.py --env-id SanaWM-Nav-v0 --model default --iterations 30
    python examples/train_rllib_ppo_nav.py --address auto --env-runners 16     # on a running Ray cluster

Choices, top to bottom:

* **Env**: ``register_rllib_envs()`` registers every ``SanaWM-*-v0`` id with RLlib; ``env_config`` holds the
  ``gym.make`` keywords. ``SanaWM-Nav-v0`` trains inside the world model; ``SanaWM-TwinNav-v0`` in the MuJoCo
  twin (ground truth, faster on CPU; ``--model none`` renders it without any world model, at ``--image-size``).
* **Env runners**: ``--env-runners`` Ray actors collect samples (0: the driver collects them itself), each with
  ``--envs-per-runner`` sub-envs. ``gym_env_vectorize_mode="vector_entry_point"`` makes those sub-envs one
  batched world-model vector env (one generator call per step for all of them) instead of a loop of envs.
* **RLModule**: ``policies.rllib.SanaWMRLModule``: a small CNN on the image and, on Nav, the goal seen from the
  body (a fixed function of ``pose`` and ``goal``), separate policy and value MLPs, a learned log std.
* **PPO settings**: RLlib defaults except small batches (``--batch-size`` env steps per iteration), minibatches
  of 128, 4 epochs, ``gamma = 0.98`` (episodes are at most ``--max-steps`` steps; a goal is reached in 10-30),
  and a learning rate of 3e-4: cheap iterations on a CPU.
* **Evaluation**: ``sana_wm_env.evaluation.policy.evaluate_policy`` runs the trained module (deterministic: the
  Gaussian's mean) and ``policies.scripted.RandomPolicy`` on held-out scenes (the ``eval`` split), on the same
  episode seeds, in the world model and in its twin; the table shows both and whether PPO beats random.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ENV_TASKS = {"SanaWM-Nav-v0": ("nav", False), "SanaWM-TwinNav-v0": ("nav", True)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env-id", default="SanaWM-TwinNav-v0", choices=tuple(ENV_TASKS),
                   help="train in the world model or in its twin (default: %(default)s)")
    p.add_argument("--model", default="default",
                   help="world-model bundle name or path; 'none' with the twin env: twin only, no world model")
    p.add_argument("--image-size", type=int, default=None, help="twin without a model: square frame size (64)")
    p.add_argument("--iterations", type=int, default=30, help="PPO iterations (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=1000, help="env steps per iteration (default: %(default)s)")
    p.add_argument("--env-runners", type=int, default=0, help="Ray sampling actors; 0: the driver samples")
    p.add_argument("--envs-per-runner", type=int, default=4, help="batched sub-envs per runner (default 4)")
    p.add_argument("--max-steps", type=int, default=100, help="episode length cap (default: %(default)s)")
    p.add_argument("--no-image", action="store_true", help="the module ignores the image (pose and goal only)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    p.add_argument("--address", default=None, help="a running Ray cluster ('auto', HOST:PORT); default: local")
    p.add_argument("--out", type=Path, default=Path("rllib_ppo_nav"), help="module folder (default: %(default)s)")
    p.add_argument("--eval-episodes", type=int, default=20, help="episodes per world and policy (0: skip)")
    p.add_argument("--eval-seed", type=int, default=10_000, help="first evaluation seed (default: %(default)s)")
    p.add_argument("--eval-json", type=Path, default=None, help="write the evaluation JSON here")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of the driver")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)

    import ray
    import torch
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from policies.rllib import RLlibPolicy, SanaWMRLModule
    from policies.scripted import RandomPolicy
    from sana_wm_env.envs.rllib import register_rllib_envs
    from sana_wm_env.evaluation.policy import evaluate_policy, format_table, make_eval_envs

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    task, twin = ENV_TASKS[args.env_id]
    model = None if args.model == "none" else args.model
    if model is None and not twin:
        raise ValueError("--model none only works with the twin --env-id (the world-model env needs a model)")
    if args.image_size and model is not None:
        raise ValueError("--image-size applies to the twin without a model; a world model has its own size")
    geometry = {"image_hw": (args.image_size, args.image_size)} if args.image_size else {}

    # 1. The envs, registered with RLlib; env_config is what every env runner passes to gym.make.
    ray.init(address=args.address, include_dashboard=False, logging_level="ERROR")
    register_rllib_envs([args.env_id])
    env_config = {"model": model, "task_config": {"max_steps": args.max_steps}, "split": "train", **geometry}

    # 2. PPO with the SANA-WM module; each env runner's sub-envs step as one batched vector env.
    config = (
        PPOConfig()
        .environment(args.env_id, env_config=env_config)
        .env_runners(num_env_runners=args.env_runners, num_envs_per_env_runner=args.envs_per_runner,
                     gym_env_vectorize_mode="vector_entry_point", num_cpus_per_env_runner=1)
        .training(train_batch_size_per_learner=args.batch_size, minibatch_size=128, num_epochs=4, gamma=0.98,
                  lr=3e-4)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=SanaWMRLModule,
                                               model_config={"use_image": not args.no_image}))
        .debugging(seed=args.seed)
    )
    algo = config.build_algo()
    t0, steps, curve = time.perf_counter(), 0, []
    for it in range(args.iterations):
        result = algo.train()
        steps = int(result["num_env_steps_sampled_lifetime"])
        ret = result["env_runners"].get("episode_return_mean", float("nan"))
        curve.append({"iteration": it + 1, "env_steps": steps, "episode_return_mean": float(ret)})
        print(f"iteration {it + 1:3d}  env steps {steps:7d}  episode return {ret:7.3f}", flush=True)
    train_s = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    module = algo.get_module()
    module.save_to_path(args.out.resolve())
    algo.stop()
    ray.shutdown()
    print(f"trained {steps} steps in {train_s:.0f} s ({steps / train_s:.1f} steps/s) on {args.env_id} -> {args.out}")
    summary: dict = {"env_id": args.env_id, "train_steps": steps, "train_seconds": train_s,
                     "module_path": str(args.out), "curve": curve}

    # 3. Evaluate the saved module and a random policy in the world model and in its twin, on the same seeds.
    if args.eval_episodes > 0:
        envs = make_eval_envs(task, model, twin_only=model is None, max_steps=args.max_steps, **geometry)
        for name, policy in (("ppo", RLlibPolicy(args.out)), ("random", RandomPolicy(seed=args.eval_seed))):
            results = evaluate_policy(policy, envs, episodes=args.eval_episodes, seed=args.eval_seed)
            print(format_table(results))
            summary[name] = results
        for env in envs.values():
            env.close()
        summary["beats_random"] = {w: summary["ppo"]["worlds"][w]["mean_return"]
                                   > summary["random"]["worlds"][w]["mean_return"] for w in envs}
        print("PPO beats random (mean return): " + ", ".join(f"{w} {'yes' if b else 'no'}"
                                                              for w, b in summary["beats_random"].items()))
        if args.eval_json is not None:
            args.eval_json.parent.mkdir(parents=True, exist_ok=True)
            args.eval_json.write_text(json.dumps(summary, indent=1))
            print(f"results: {args.eval_json}")
    return summary


if __name__ == "__main__":
    main()
