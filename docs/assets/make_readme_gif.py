"""Write the README's looping GIF: the bundled world model (left) beside its MuJoCo twin (right).

Both envs get the same seed and the same scripted actions, so they fly the same camera path from the same first
frame; only the pixels differ (generated vs rendered). Run from the repository root (about a minute on one core)::

    OMP_NUM_THREADS=1 python docs/assets/make_readme_gif.py            # -> docs/assets/generated_vs_twin.gif
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
from PIL import Image, ImageDraw, ImageFont

import sana_wm_env  # noqa: F401  (registers the env ids)

# (steps, action): REP-103 body velocities [forward, left, up, roll, pitch, yaw] in [-1, 1]
SCRIPT: tuple[tuple[int, tuple[float, ...]], ...] = (
    (8, (0.6, 0.0, 0.0, 0.0, 0.0, 0.0)),  # forward
    (10, (0.3, 0.0, 0.0, 0.0, 0.0, 0.6)),  # turn left while moving
    (6, (0.3, 0.0, 0.3, 0.0, 0.0, 0.0)),  # climb
    (10, (0.3, 0.0, 0.0, 0.0, 0.0, -0.6)),  # turn right
)


def label_bar(width: int, labels: list[tuple[int, str]], height: int = 14) -> np.ndarray:
    """A dark (height, width, 3) strip with white ``labels`` at their x offsets."""
    bar = Image.new("RGB", (width, height), (20, 20, 20))
    draw = ImageDraw.Draw(bar)
    for x, text in labels:
        draw.text((x + 3, 1), text, fill=(240, 240, 240), font=ImageFont.load_default())
    return np.asarray(bar)


def rollout(env_id: str, seed: int) -> tuple[np.ndarray, float]:
    """uint8 (F, H, W, 3) frames (the first frame, then every frame of every scripted step, up to an episode end)
    and the env's frame rate."""
    env = gym.make(env_id, obs_mode="frames")
    obs, _ = env.reset(seed=seed)
    frames, done = [obs["image"][0]], False
    for steps, action in SCRIPT:
        for _ in range(steps if not done else 0):
            obs, _, terminated, truncated, _ = env.step(np.asarray(action, dtype=np.float32))
            frames.extend(obs["image"])
            done = terminated or truncated
    fps = env.metadata["render_fps"]
    env.close()
    return np.stack(frames), fps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("generated_vs_twin.gif"))
    p.add_argument("--seed", type=int, default=0, help="episode seed of both envs (default: %(default)s)")
    p.add_argument("--scale", type=int, default=3, help="integer upscaling (default: %(default)s)")
    args = p.parse_args()
    generated, fps = rollout("SanaWM-Explore-v0", args.seed)
    twin, _ = rollout("SanaWM-TwinExplore-v0", args.seed)
    n = min(len(generated), len(twin))
    big = [v[:n].repeat(args.scale, axis=1).repeat(args.scale, axis=2) for v in (generated, twin)]
    w = big[0].shape[2]
    gap = np.full((*big[0].shape[:2], 4, 3), 255, np.uint8)
    body = np.concatenate([big[0], gap, big[1]], axis=2)
    bar = label_bar(body.shape[2], [(0, "generated"), (w + 4, "twin (MuJoCo render)")])
    video = np.concatenate([np.broadcast_to(bar, (n, *bar.shape)), body], axis=1)
    Image.fromarray(video[0]).save(args.out, save_all=True, append_images=[Image.fromarray(f) for f in video[1:]],
                                   duration=int(round(1000 / fps)), loop=0, optimize=True)
    print(f"wrote {args.out}: {n} frames, {args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
