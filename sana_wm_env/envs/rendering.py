"""Rendering: the last frame enlarged with a small HUD (pose, goal, step), and a pygame-ce window for "human"."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator

import numpy as np

HUD_MIN_SIZE = 256  # the frame is enlarged (nearest neighbour) to at least this many pixels wide


def hud_frame(frame: np.ndarray, lines: list[str], min_size: int = HUD_MIN_SIZE) -> np.ndarray:
    """``frame`` uint8 (H, W, 3) enlarged by an integer factor, with ``lines`` of text in a strip below it."""
    from PIL import Image, ImageDraw

    h, w = frame.shape[:2]
    scale = max(1, int(np.ceil(min_size / w)))
    big = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
    line_h = 12
    canvas = Image.new("RGB", (big.shape[1], big.shape[0] + line_h * len(lines) + 4), (0, 0, 0))
    canvas.paste(Image.fromarray(big), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(lines):
        draw.text((3, big.shape[0] + 2 + j * line_h), text, fill=(255, 255, 255))
    return np.asarray(canvas, dtype=np.uint8)


def has_display() -> bool:
    """Whether SDL can open a real window: always on macOS and Windows, elsewhere only with an X11 or Wayland
    display in the environment."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@contextlib.contextmanager
def safe_video_driver() -> Iterator[None]:
    """Around ``pygame.display.init()``: without a display and without ``SDL_VIDEODRIVER``, SDL's "dummy" driver
    (with a warning that nothing is shown).

    SDL's own fallback without a display is its "offscreen" driver, an EGL one: quitting it terminates the EGL
    display MuJoCo renders the twin with, and every later render in the process fails. The variable is only set
    while SDL picks its driver and restored after.
    """
    if os.environ.get("SDL_VIDEODRIVER") or has_display():
        yield
        return
    warnings.warn('render_mode="human" without a display (no DISPLAY or WAYLAND_DISPLAY): using the "dummy" SDL '
                  "video driver, so nothing is shown; set SDL_VIDEODRIVER to choose another", stacklevel=4)
    os.environ["SDL_VIDEODRIVER"] = "dummy"
    try:
        yield
    finally:
        os.environ.pop("SDL_VIDEODRIVER", None)


class HumanWindow:
    """A pygame-ce window showing rgb frames (without a display: SDL's "dummy" driver, see ``safe_video_driver``)."""

    def __init__(self, title: str = "SANA-WM") -> None:
        try:
            import pygame
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError('render_mode="human" needs pygame-ce: pip install "sana-wm-env[play]"') from exc
        self.pygame = pygame
        if not pygame.display.get_init():
            with safe_video_driver():
                pygame.display.init()
        self.title = title
        self.screen = None
        self.clock = pygame.time.Clock()

    def show(self, rgb: np.ndarray, fps: float | None = None) -> None:
        pg = self.pygame
        size = (rgb.shape[1], rgb.shape[0])
        if self.screen is None or self.screen.get_size() != size:
            self.screen = pg.display.set_mode(size)
            pg.display.set_caption(self.title)
        surf = pg.surfarray.make_surface(np.ascontiguousarray(rgb.transpose(1, 0, 2)))
        self.screen.blit(surf, (0, 0))
        pg.event.pump()
        pg.display.flip()
        if fps:
            self.clock.tick(fps)

    def close(self) -> None:
        if self.screen is not None:
            self.pygame.display.quit()
            self.screen = None
