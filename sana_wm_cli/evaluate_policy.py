"""``sana-wm evaluate-policy``: a policy's success rate, SPL and return in a world model and in its twin.

Runs N episodes in the world-model env and N in its MuJoCo twin with the same seeds (episode i: seed S + i,
so the same scene, start and goal in both), and reports per world the success rate, SPL (success weighted by
path length: straight-line start-goal distance over metres travelled) and mean return, plus the gap
(world model - twin) on held-out scenes: how far results in imagination are from ground truth. Prints a
table, writes a JSON.

Policies: random | scripted (proportional pose controller; on ImageNav, which observes no pose, a privileged
oracle reading the env's pose, labelled so) | cem | mppi (planners over env.imagine: pose-goal cost on Nav,
image-goal cost on ImageNav) | ppo:PATH.zip (a saved Stable-Baselines3 model; any ALGO:PATH works) |
rllib:DIR (a saved RLlib module folder; needs the rllib extra) | servo:PATH.pt (ImageNav: the pose controller
on a pretrained relative-pose network's goal estimate; see examples/pretrain_relative_pose.py).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from sana_wm_env.outputs import check_output

from . import add_ray_argument, set_torch_threads


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate-policy", help="success rate, SPL and return of a policy in a world model and in its twin",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", choices=("nav", "imagenav"), default="nav", help="task (default: %(default)s)")
    p.add_argument("--policy", default="scripted",
                   help="random | scripted | cem | mppi | ppo:PATH.zip | rllib:DIR | servo:PATH.pt "
                        "(default: %(default)s)")
    p.add_argument("--episodes", type=int, default=20, help="episodes per world (default: %(default)s)")
    p.add_argument("--model", default=None,
                   help="world-model bundle name or path (default: the bundled model; with --twin-only optional: "
                        "the twin then copies its image size, fps and frames per step)")
    p.add_argument("--twin-only", action="store_true", help="evaluate in the MuJoCo twin only")
    p.add_argument("--image-size", default=None, help="--twin-only without --model: twin frame size HxW "
                                                      "(default: 64x64)")
    p.add_argument("--seed", type=int, default=0, help="episode i uses seed SEED + i (default: %(default)s)")
    p.add_argument("--split", choices=("eval", "train"), default="eval",
                   help="twin-world scenes: held-out 'eval' (default) or the models' 'train' split")
    p.add_argument("--max-steps", type=int, default=None, help="episode length cap (default: the task's, 100)")
    p.add_argument("--json", type=Path, default=None, help="write the results JSON here")
    p.add_argument("--planner-samples", type=int, default=32, help="cem/mppi: candidates per iteration (32)")
    p.add_argument("--planner-horizon", type=int, default=4, help="cem/mppi: steps per candidate (4)")
    p.add_argument("--planner-iterations", type=int, default=3, help="cem: iterations per step (3)")
    p.add_argument("--device", default="cpu", help="torch device for the world model (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_ray_argument(p)
    p.epilog = ("With --ray every episode of every world is a Ray task (torch on --threads threads, default 1, one "
                "core per task, one GPU per task with --device cuda); the JSON holds the results of a local run "
                "with the same --threads, timing aside. --model must name a shipped bundle or a folder every "
                "node can read.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from policies import check_policy_spec, make_policy  # the CLI is an application: it may use the policies layer
    from sana_wm_cli.generate import parse_hw
    from sana_wm_env.evaluation.policy import evaluate_policy, format_table, make_eval_envs, write_results

    set_torch_threads(args.threads)
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.json is not None:
        check_output(args.json, "--json")  # before the episodes run: results are not lost to a bad path
    try:
        check_policy_spec(args.policy)  # before any world model loads
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"--policy: {err}") from None
    geometry = {}
    if args.image_size:
        if not args.twin_only or args.model is not None:
            raise ValueError("--image-size applies to --twin-only without --model; a world model has its own size")
        geometry["image_hw"] = parse_hw(args.image_size, "--image-size")
    if args.ray is not None:
        from sana_wm_env.distributed import require_ray

        require_ray()  # before the model loads
    model = args.model if args.model is not None or args.twin_only else "default"
    make_envs = functools.partial(make_eval_envs, args.task, model, twin_only=args.twin_only, device=args.device,
                                  max_steps=args.max_steps, split=args.split, **geometry)
    envs = make_envs()
    planner = {"horizon": args.planner_horizon, "samples": args.planner_samples}
    if args.policy == "cem":
        planner.update(iterations=args.planner_iterations, elites=max(1, args.planner_samples // 8))
    try:
        results = evaluate_policy(functools.partial(make_policy, args.policy, seed=args.seed, planner=planner), envs,
                                  episodes=args.episodes, seed=args.seed, progress=not args.no_progress,
                                  ray=args.ray, make_envs=make_envs, threads=args.threads or 1, device=args.device)
    finally:
        for env in envs.values():
            env.close()
    results["model"] = results.get("model", str(args.model) if args.model is not None else None)
    print(format_table(results))
    if args.json is not None:
        print(f"results: {write_results(results, args.json)}")
    return 0
