"""``sana-wm play``: fly the camera through a world model (or its twin) with the keyboard; record an mp4.

Keys (held): W/S forward/back, A/D left/right, R/F up/down, Left/Right yaw, Up/Down pitch (Up looks up),
Q/E roll; Backspace starts a new episode, Esc or closing the window quits. Every generated frame is written
to the video at the model's fps. Without a display (no ``DISPLAY`` or ``WAYLAND_DISPLAY``) and without
``SDL_VIDEODRIVER`` the window uses SDL's "dummy" driver: nothing is shown, the video is still written (e.g. with
``--max-steps``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

# key name -> (action index, sign) in the REP-103 body frame [forward, left, up, roll, pitch, yaw]
KEYMAP: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "r": (2, 1.0), "f": (2, -1.0),
    "q": (3, -1.0), "e": (3, 1.0), "up": (4, -1.0), "down": (4, 1.0), "left": (5, 1.0), "right": (5, -1.0),
}


def keys_to_action(held: set[str]) -> np.ndarray:
    """Action (6,) in [-1, 1] for the set of held key names (opposite keys cancel)."""
    a = np.zeros(6, dtype=np.float32)
    for k in held:
        if k in KEYMAP:
            i, s = KEYMAP[k]
            a[i] += s
    return np.clip(a, -1.0, 1.0)


def run_play(env, out: Path | None, *, seed: int | None = 0, max_steps: int | None = None,
             before_step: Callable[[int], None] | None = None) -> dict:
    """The interactive loop on a ``WorldModelEnv``/``TwinEnv`` with ``render_mode="human"``.

    ``before_step(step)`` runs before each step's event handling (tests inject key events with it).
    Returns ``{"steps", "frames", "episodes", "path"}``.
    """
    import pygame

    from world_model.video import write_video

    base = env.unwrapped
    obs, _ = env.reset(seed=seed)
    frames = [base.sim.subs[0].frame.copy()]
    held: set[str] = set()
    steps, episodes, running = 0, 1, True
    while running and (max_steps is None or steps < max_steps):
        if before_step is not None:
            before_step(steps)
        reset = False
        for ev in pygame.event.get():
            if ev.type == pygame.QUIT:
                running = False
            elif ev.type in (pygame.KEYDOWN, pygame.KEYUP):
                name = pygame.key.name(ev.key)
                if ev.type == pygame.KEYDOWN and name == "escape":
                    running = False
                elif ev.type == pygame.KEYDOWN and name == "backspace":
                    reset = True
                elif ev.type == pygame.KEYDOWN:
                    held.add(name)
                else:
                    held.discard(name)
        if not running:
            break
        if reset:
            env.reset()
            episodes += 1
            frames.append(base.sim.subs[0].frame.copy())
            continue
        _, _, term, trunc, _ = env.step(keys_to_action(held))
        frames.extend(base.sim.subs[0].frames)
        steps += 1
        if term or trunc:
            env.reset()
            episodes += 1
            frames.append(base.sim.subs[0].frame.copy())
    env.close()
    path = None
    if out is not None:
        from sana_wm_env.outputs import StagedOutputs

        with StagedOutputs() as outputs:  # a failed write leaves no half video under ``out``
            write_video(np.stack(frames), outputs.stage(out), fps=base.sim.fps)
        path = Path(out)
    return {"steps": steps, "frames": len(frames), "episodes": episodes, "path": path}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("play", help="fly a camera through a world model with the keyboard, record an mp4",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="world-model bundle name or path (default: %(default)s)")
    p.add_argument("--twin", action="store_true", help="play in the MuJoCo twin instead of the world model")
    p.add_argument("--task", default="nav", choices=("nav", "imagenav", "explore"), help="task (default: nav)")
    p.add_argument("--seed", type=int, default=0, help="episode seed: scene, start and goal (default: 0)")
    p.add_argument("--image-size", default=None, help="twin only: HxW instead of the model's (default: the model's)")
    p.add_argument("--device", default="cpu", help="torch device for the world model (default: cpu)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: until Esc)")
    p.add_argument("--out", type=Path, default=Path("play.mp4"), help="video file (default: %(default)s)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from sana_wm_cli.generate import parse_hw
    from sana_wm_env.envs.world_model_env import TwinEnv, WorldModelEnv
    from sana_wm_env.outputs import check_output

    check_output(args.out, "--out", suffixes=(".mp4", ".gif"))  # before the model loads and the session starts
    if args.twin:
        geometry = {"image_hw": parse_hw(args.image_size, "--image-size")} if args.image_size else {}
        env = TwinEnv(args.task, args.model, render_mode="human", task_config={"max_steps": 10**9}, **geometry)
    else:
        if args.image_size:
            raise ValueError("--image-size applies to --twin; a world model has its own size")
        env = WorldModelEnv(args.task, args.model, device=args.device, render_mode="human",
                            task_config={"max_steps": 10**9})
    result = run_play(env, args.out, seed=args.seed, max_steps=args.max_steps)
    print(f"{result['steps']} steps, {result['episodes']} episode(s), {result['frames']} frames -> {result['path']}")
    return 0
