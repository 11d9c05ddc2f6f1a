"""ImageNav: how well can a goal estimator read the goal from generated frames, against twin renders of the same poses?

    python benchmarks/bench_imagenav_estimates.py --net outputs/relpose/early_w32_unc.pt --episodes 20 --seed 10000

For each episode (seed S + i, held-out scenes) the visual servo (``policies.relative_pose.VisualServoPolicy``) drives
``SanaWM-TwinImageNav-v0``; its actions are then replayed in ``SanaWM-ImageNav-v0`` with the same seed, so both
worlds pass through exactly the same body poses (an env step moves the body by the commanded twist) and only the
frames differ: MuJoCo renders in the twin, the world model's generated frames in the other. At every step the
relative-pose network estimates the goal from the frame and the goal image, and the estimate is compared with the
true goal in the body frame (position error in metres, heading error in degrees). A third column feeds the network
the episode's first frame at every step: what a model that never moves the view would give. Where the generated
frames score like the first frame and not like the renders, they do not carry the motion a policy needs.

Prints the medians by step range and the servo's closed-loop success in the twin; ``--json`` writes everything and
``--video out.mp4`` shows each step's generated frame beside the twin's render of the same pose, episode after
episode (one video frame per step).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

import numpy as np
import torch

STEP_BINS: tuple[tuple[int, int], ...] = ((0, 1), (1, 5), (5, 10), (10, 20), (20, 50), (50, 10**9))
SOURCES: tuple[str, ...] = ("twin", "world_model", "first_frame")


def goal_errors(net, images: np.ndarray, goal_image: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Position (m) and heading (deg) errors (N, 2) of the network's estimates from ``images`` (N, H, W, 3) against
    the true goals in the body frame ``truth`` (N, 4, 4)."""
    from policies.relative_pose import measure_goals, relative_goal_matrix
    from world_model.camera import rotation_angle  # the angle the tasks' success test uses

    pred, _ = measure_goals(net, images, np.repeat(goal_image[None], len(images), axis=0))
    est = np.stack([relative_goal_matrix(p) for p in pred])
    pos = np.linalg.norm(est[:, :3, 3] - truth[:, :3, 3], axis=1)
    heading = [float(rotation_angle(e[:3, :3].T @ t[:3, :3])) for e, t in zip(est, truth, strict=True)]
    return np.stack([pos, np.degrees(heading)], axis=1)


def run_pair(envs: dict[str, Any], policy, seed: int) -> dict[str, Any]:
    """One episode: the servo in the twin, its actions replayed in the world model; the frames of both, the true
    goal in the body frame at every observation, and the twin outcome."""
    twin, wm = envs["twin"], envs["world_model"]
    obs, _ = twin.reset(seed=seed)
    policy.reset(twin, seed)
    goal_image = obs["goal"]
    sim = twin.unwrapped.sim
    goal_body = sim.subs[0].episode.goal_body
    images, bodies, actions = [obs["image"]], [sim.body(0)], []
    info: dict = {}
    while True:
        action = policy.act(obs, twin)
        actions.append(action)
        obs, _, terminated, truncated, info = twin.step(action)
        images.append(obs["image"])
        bodies.append(sim.body(0))
        if terminated or truncated:
            break
    wm_obs, _ = wm.reset(seed=seed)
    if not np.array_equal(wm_obs["goal"], goal_image):
        raise RuntimeError(f"seed {seed}: the world-model env drew another goal view than the twin")
    wm_images = [wm_obs["image"]]
    for t, action in enumerate(actions):
        wm_obs, _, terminated, truncated, _ = wm.step(action)
        wm_images.append(wm_obs["image"])
        if not np.allclose(wm.unwrapped.sim.body(0), bodies[t + 1], atol=1e-6):
            raise RuntimeError(f"seed {seed}, step {t + 1}: the replayed body pose left the twin's")
        if (terminated or truncated) and t + 1 < len(actions):
            break
    n = len(wm_images)
    truth = np.stack([np.linalg.inv(b) @ goal_body for b in bodies[:n]])
    return {"seed": seed, "steps": len(actions), "success": bool(info.get("is_success", False)),
            "collision": bool(info.get("collision", False)), "goal_image": goal_image,
            "images": {"twin": np.stack(images[:n]), "world_model": np.stack(wm_images),
                       "first_frame": np.repeat(images[0][None], n, axis=0)},
            "truth": truth}


def summarize_errors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians by step range over all episodes' per-step rows (``step``, ``distance``, ``<source>_pos/_deg``)."""
    table = []
    for lo, hi in STEP_BINS:
        sel = [r for r in rows if lo <= r["step"] < hi]
        if not sel:
            continue
        entry: dict[str, Any] = {"steps": f"{lo}-{hi - 1}" if hi < 10**9 else f"{lo}+", "observations": len(sel),
                                 "goal_distance_m": float(np.median([r["distance"] for r in sel]))}
        for src in SOURCES:
            entry[f"{src}_pos_m"] = float(np.median([r[f"{src}_pos"] for r in sel]))
            entry[f"{src}_heading_deg"] = float(np.median([r[f"{src}_deg"] for r in sel]))
        table.append(entry)
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", required=True, help="relative-pose network (examples/pretrain_relative_pose.py)")
    p.add_argument("--model", default="default", help="world-model bundle name or folder (default: the bundled one)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=10000, help="episode i uses seed SEED + i")
    p.add_argument("--max-steps", type=int, default=None, help="episode length cap (default: the task's)")
    p.add_argument("--memory", type=float, default=0.8, help="the servo's GoalTracker memory")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--video", default=None, help="mp4: generated frames beside twin renders of the same poses")
    p.add_argument("--video-scale", type=int, default=4, help="pixel scale of the video (default: 4)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")

    from tqdm.auto import tqdm

    from policies.relative_pose import VisualServoPolicy
    from sana_wm_cli.demo import side_by_side
    from sana_wm_env.evaluation.policy import make_eval_envs
    from world_model.video import VideoWriter

    torch.set_num_threads(args.threads)
    policy = VisualServoPolicy(args.net, memory=args.memory)
    envs = make_eval_envs("imagenav", args.model, max_steps=args.max_steps)
    model_name = envs["world_model"].unwrapped.sim.model.name
    rows: list[dict[str, Any]] = []
    episodes = []
    fps = 1.0 / envs["twin"].unwrapped.sim.step_seconds  # one video frame per env step
    with VideoWriter(args.video, fps) if args.video else contextlib.nullcontext() as writer:
        for i in tqdm(range(args.episodes), desc="episodes"):
            ep = run_pair(envs, policy, args.seed + i)
            if writer is not None:
                writer.write(side_by_side(ep["images"]["world_model"], ep["images"]["twin"], args.video_scale,
                                          f"seed {ep['seed']} generated ({model_name})", "twin render, same pose",
                                          fps=fps))
            errors = {src: goal_errors(policy.net, ep["images"][src], ep["goal_image"], ep["truth"])
                      for src in SOURCES}
            for t in range(len(ep["truth"])):
                row = {"seed": ep["seed"], "step": t, "distance": float(np.linalg.norm(ep["truth"][t, :3, 3]))}
                for src in SOURCES:
                    row[f"{src}_pos"], row[f"{src}_deg"] = (float(v) for v in errors[src][t])
                rows.append(row)
            episodes.append({k: ep[k] for k in ("seed", "steps", "success", "collision")})
    table = summarize_errors(rows)
    command = " ".join(["python", "benchmarks/bench_imagenav_estimates.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"command": command, "model": model_name, "net": args.net, "video": args.video,
              "servo_twin_success_rate": float(np.mean([e["success"] for e in episodes])),
              "by_step": table, "episodes": episodes, "rows": rows}
    print(f"{args.episodes} episodes from seed {args.seed}; servo success in the twin "
          f"{result['servo_twin_success_rate']:.2f}; goal estimate error, median position m / heading deg")
    print(f"{'steps':>7} {'obs':>5} {'goal m':>7} {'twin render':>13} {'generated':>13} {'first frame':>13}")
    for e in table:
        cells = " ".join(f"{e[f'{s}_pos_m']:6.2f} /{e[f'{s}_heading_deg']:5.1f}" for s in SOURCES)
        print(f"{e['steps']:>7} {e['observations']:5d} {e['goal_distance_m']:7.2f} {cells}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
