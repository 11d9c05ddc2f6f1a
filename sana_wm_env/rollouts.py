"""Offline rollouts on disk: environment episodes and generations, stage-1 or refined (format ``sana-wm-rollout/1``).

A rollout is a folder::

    rollout.json        the manifest (below); written last, on close: a folder without it is incomplete, and
                        one whose manifest says ``partial: true`` is a failed or interrupted recording
    frames.npy          uint8 (N, H, W, 3)     exact frames (frame 0 = the start image)
    video.mp4           the same frames for viewing (libx264, lossy)
    c2w.npy             float64 (N, 4, 4)      OpenCV camera-to-world per frame (+x right, +y down, +z forward),
                                               metres, in the episode's world frame
    timestamps.npy      float64 (N,)           seconds since frame 0
    latents.npy         float32 (T, C, h, w)   the model's latents, latent frame by latent frame (optional);
                                               stage-1 latents, or refined ones in a refined rollout
    stage1_latents.npy  float32 (T, C, h, w)   refined rollouts only: the stage-1 latents they came from
    shown_first.npy     bool (N, H, W)         optional, models that show their 3D cache: True where the frame
                                               shows frame 0's own points (frame 0: everywhere); refining keeps
                                               those pixels as they are
    actions.npy         float32 (S, A)         env episodes only: the action of each step
    rewards.npy         float32 (S,)           env episodes only: the reward of each step
    step_frames.npy     int64 (S,)             env episodes only: index of the last frame each step produced

Manifest keys: ``format`` ("sana-wm-rollout/1"), ``kind`` ("env", "generation" or "replay"), ``model``,
``model_path``, ``seed``, ``fps``, ``image_hw`` [H, W], ``intrinsics`` [fx, fy, cx, cy] (pixels), ``frames`` N,
``codec`` (the codec config of the latents, or null), ``latent_frames`` T (0 without latents),
``latent_pixel_frames`` (pixel frames the latents decode to: ``1 + stride * (T - 1)``; >= N, the generator's
padded tail frames are dropped from ``frames``), ``steps`` S (0 for generations), ``action_dim``, ``refined``
(bool), ``refiner`` (its description, refined only), ``source`` (the stage-1 rollout a refined one came from),
``extra`` (free JSON: task, scene, terminated, ...), ``seconds`` (wall time of the recording), ``partial``
(true when the recording failed or was interrupted: :meth:`RolloutWriter.abort`, or a writer left by an
exception) and ``partial_reason``.

Every array is written as it comes (:class:`RolloutWriter` appends chunk by chunk to ``.npy`` files whose header
is completed on close), so memory stays flat in episode length; :func:`read_rollout` memory-maps ``frames.npy``.
:func:`validate_rollout` checks a folder and says what is wrong; it and :func:`read_rollout` refuse partial
rollouts unless ``allow_partial=True``. The frame/latent layout follows the codec:
latent frame 0 is frame 0 alone, latent frame ``j >= 1`` holds frames ``stride * (j - 1) + 1 .. stride * j``.

Refining (``sana-wm refine IN --out OUT``, :func:`refine_rollout`) writes a rollout of the same format with
``refined: true``, the refined latents and frames, and the stage-1 latents kept next to them; where the stage-1
rollout holds ``shown_first.npy``, those pixels keep their stage-1 values (exact where frame 0's depth was
measured; a refiner decodes through the codec and would only blur them).
:class:`RefineEpisodeWrapper` records each episode of a :class:`~sana_wm_env.envs.WorldModelEnv` and refines it
when it ends.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from sana_wm_env.outputs import check_output, write_text_atomic
from world_model.video import to_uint8

FORMAT = "sana-wm-rollout/1"
KINDS = ("env", "generation", "replay")
MANIFEST = "rollout.json"
FILES = ("frames.npy", "video.mp4", "c2w.npy", "timestamps.npy", "latents.npy", "stage1_latents.npy", "actions.npy",
         "rewards.npy", "step_frames.npy", "shown_first.npy", MANIFEST, "comparison.mp4")
_HEADER_BYTES = 256  # fixed .npy header (v1.0) so the shape can be filled in on close


class NpyAppender:
    """Append rows to a ``.npy`` file of fixed trailing shape and dtype; the header is completed on close."""

    def __init__(self, path: Path, dtype, tail: tuple[int, ...]) -> None:
        self.path, self.dtype, self.tail, self.rows = Path(path), np.dtype(dtype), tuple(int(v) for v in tail), 0
        self._f = open(self.path, "wb")  # noqa: SIM115 - kept open across appends, closed in close()
        self._f.write(b"\0" * _HEADER_BYTES)

    def append(self, rows: np.ndarray, name: str) -> None:
        a = np.asarray(rows)
        if a.shape[1:] != self.tail:
            raise ValueError(f"{name} must have shape (n, {', '.join(map(str, self.tail))}), got {a.shape}")
        self._f.write(np.ascontiguousarray(a, dtype=self.dtype).tobytes())
        self.rows += a.shape[0]

    def close(self) -> None:
        if self._f.closed:
            return
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, *self.tail)}
        text = repr(header).encode("latin1")
        body = _HEADER_BYTES - 10
        if len(text) + 1 > body:
            raise ValueError(f"{self.path}: .npy header too long ({len(text)} bytes)")
        self._f.seek(0)
        self._f.write(b"\x93NUMPY\x01\x00" + body.to_bytes(2, "little") + text + b" " * (body - len(text) - 1) + b"\n")
        self._f.close()


@dataclass
class Rollout:
    """A rollout read from disk (arrays as stored; ``frames`` is memory-mapped)."""

    path: Path
    manifest: dict[str, Any]
    frames: np.ndarray
    c2w: np.ndarray
    timestamps: np.ndarray
    latents: np.ndarray | None = None  # (T, C, h, w)
    stage1_latents: np.ndarray | None = None
    actions: np.ndarray | None = None
    rewards: np.ndarray | None = None
    step_frames: np.ndarray | None = None
    shown_first: np.ndarray | None = None  # (N, H, W) bool

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def fps(self) -> float:
        return float(self.manifest["fps"])

    @property
    def intrinsics(self) -> np.ndarray:
        return np.asarray(self.manifest["intrinsics"], dtype=np.float64)

    @property
    def refined(self) -> bool:
        return bool(self.manifest.get("refined"))

    def latent_tensor(self, which: str = "latents") -> torch.Tensor:
        """``(1, C, T, h, w)`` float32 of ``latents`` (or ``stage1_latents``)."""
        z = getattr(self, which)
        if z is None:
            raise ValueError(f"{self.path}: the rollout holds no {which} (recorded without a latent model?)")
        return torch.from_numpy(np.array(z, dtype=np.float32)).permute(1, 0, 2, 3)[None]

    def padded_c2w(self) -> np.ndarray:
        """Poses for every pixel frame of the latents: the recorded ones, the dropped tail holding the last pose."""
        n = int(self.manifest["latent_pixel_frames"]) or len(self.c2w)
        return np.concatenate([self.c2w, np.repeat(self.c2w[-1:], n - len(self.c2w), axis=0)])


class RolloutWriter:
    """Stream a rollout to ``folder`` (see the module docstring). Use as a context manager or call :meth:`close`.

    ``add_frames(uint8 (n, H, W, 3), c2w (n, 4, 4), timestamps=None)`` (default stamps ``i / fps``),
    ``add_latents((C, t, h, w) or (1, C, t, h, w))``, ``add_step(action, reward, last_frame=None)``,
    ``add_shown_first(bool (n, H, W))`` after the frames it belongs to.
    ``codec``: config of the latents' codec (``LatentCodec.to_config()``), required with latents.
    A recording that fails or is interrupted is closed with :meth:`abort` (the context manager does it when an
    exception leaves the block): its manifest says ``partial: true`` and readers refuse it. A partial rollout
    already in ``folder`` is replaced without ``overwrite``.
    """

    def __init__(self, folder: str | Path, *, fps: float, intrinsics, image_hw: tuple[int, int],
                 kind: str = "generation", model: str | None = None, model_path: str | None = None,
                 seed: int | None = None,
                 codec: dict[str, Any] | None = None, video: bool = True, overwrite: bool = False,
                 extra: dict[str, Any] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if isinstance(fps, bool) or not isinstance(fps, int | float) or not np.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        k = np.asarray(intrinsics, dtype=np.float64).reshape(-1)
        if k.shape != (4,) or not np.isfinite(k).all() or k[0] <= 0 or k[1] <= 0:
            raise ValueError(f"intrinsics must be [fx, fy, cx, cy] pixels with fx, fy > 0, got {intrinsics!r}")
        h, w = (int(v) for v in image_hw)
        if h < 1 or w < 1:
            raise ValueError(f"image_hw must be two positive ints, got {image_hw!r}")
        self.folder = Path(folder)
        if holds_complete_rollout(self.folder) and not overwrite:
            raise ValueError(f"folder: {self.folder} already holds a rollout; choose another folder or pass "
                             "overwrite=True")
        if self.folder.is_dir():  # an overwritten or partial rollout: none of its files may stay
            for name in FILES:
                (self.folder / name).unlink(missing_ok=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.manifest: dict[str, Any] = {
            "format": FORMAT, "kind": kind, "model": model, "model_path": model_path, "seed": seed, "fps": float(fps),
            "image_hw": [h, w], "intrinsics": [float(v) for v in k], "codec": codec, "refined": False,
            "refiner": None, "source": None, "extra": dict(extra or {}),
        }
        self._t0 = time.perf_counter()
        self._frames = NpyAppender(self.folder / "frames.npy", np.uint8, (h, w, 3))
        self._c2w = NpyAppender(self.folder / "c2w.npy", np.float64, (4, 4))
        self._stamps = NpyAppender(self.folder / "timestamps.npy", np.float64, ())
        self._latents: dict[str, NpyAppender] = {}
        self._steps: dict[str, NpyAppender] = {}
        self._shown_first: NpyAppender | None = None
        self._video = None
        if video:
            from world_model.video import VideoWriter

            self._video = VideoWriter(self.folder / "video.mp4", fps)
        self.closed = False

    @property
    def frames(self) -> int:
        return self._frames.rows

    def add_frames(self, frames: np.ndarray, c2w, timestamps=None) -> None:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (n, H, W, 3), got {frames.dtype} {frames.shape}")
        poses = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4) if np.size(c2w) else np.zeros((0, 4, 4))
        if len(poses) != len(frames) or not np.isfinite(poses).all():
            raise ValueError(f"c2w must hold one finite 4x4 pose per frame: {len(frames)} frames, got "
                             f"{np.shape(c2w)}")
        n0 = self._frames.rows
        stamps = (n0 + np.arange(len(frames))) / self.manifest["fps"] if timestamps is None else \
            np.asarray(timestamps, dtype=np.float64).reshape(-1)
        if stamps.shape != (len(frames),):
            raise ValueError(f"timestamps must hold one stamp per frame ({len(frames)}), got {np.shape(timestamps)}")
        self._frames.append(frames, "frames")
        self._c2w.append(poses, "c2w")
        self._stamps.append(stamps, "timestamps")
        if self._video is not None:
            self._video.write(frames)

    def add_latents(self, latents, name: str = "latents") -> None:
        if self.manifest["codec"] is None:
            raise ValueError("latents: pass codec= (the codec config) to the writer to store latents")
        z = torch.as_tensor(latents).detach().float().cpu()
        if z.ndim == 5:
            if z.shape[0] != 1:
                raise ValueError(f"latents must be (C, t, h, w) or (1, C, t, h, w), got {tuple(z.shape)}")
            z = z[0]
        if z.ndim != 4:
            raise ValueError(f"latents must be (C, t, h, w) or (1, C, t, h, w), got {tuple(z.shape)}")
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"{name}: the latents hold NaN or inf values (the model diverged?); nothing after "
                             "them is recorded")
        rows = z.permute(1, 0, 2, 3).numpy()
        if name not in self._latents:
            self._latents[name] = NpyAppender(self.folder / f"{name}.npy", np.float32, rows.shape[1:])
        self._latents[name].append(rows, name)

    def add_shown_first(self, mask) -> None:
        """Where the frames just added show frame 0's own points: bool ``(n, H, W)`` (a model that shows its 3D
        cache: ``state.last_shown_first``). The first call also marks frame 0, the start image, as kept whole."""
        m = np.asarray(mask)
        h, w = self.manifest["image_hw"]
        if m.dtype != np.bool_ or m.ndim != 3 or m.shape[1:] != (h, w):
            raise ValueError(f"shown_first must be bool (n, {h}, {w}), got {m.dtype} {m.shape}")
        have = 1 if self._shown_first is None else self._shown_first.rows  # frame 0's mask comes first
        if have + len(m) != self._frames.rows:
            raise ValueError(f"shown_first: one mask per frame, after add_frames: {self._frames.rows} frames, "
                             f"{have} masks so far (frame 0 included), {len(m)} given")
        if self._shown_first is None:
            self._shown_first = NpyAppender(self.folder / "shown_first.npy", np.bool_, (h, w))
            self._shown_first.append(np.ones((1, h, w), np.bool_), "shown_first")
        self._shown_first.append(m, "shown_first")

    def add_step(self, action, reward: float, last_frame: int | None = None) -> None:
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if not np.isfinite(a).all() or not np.isfinite(float(reward)):
            raise ValueError(f"action and reward must be finite, got {action!r}, {reward!r}")
        if "actions" not in self._steps:
            self._steps = {"actions": NpyAppender(self.folder / "actions.npy", np.float32, a.shape),
                           "rewards": NpyAppender(self.folder / "rewards.npy", np.float32, ()),
                           "step_frames": NpyAppender(self.folder / "step_frames.npy", np.int64, ())}
        self._steps["actions"].append(a[None], "action")
        self._steps["rewards"].append(np.asarray([reward], np.float32), "reward")
        self._steps["step_frames"].append(np.asarray([self.frames - 1 if last_frame is None else last_frame]),
                                          "last_frame")

    def close(self, **extra: Any) -> dict[str, Any]:
        """Complete every file and write the manifest (``extra`` merges into ``manifest["extra"]``).

        A rollout that then fails validation is marked partial (the reason in ``partial_reason``) and the
        validation error raised."""
        if self.closed:
            return self.manifest
        for app in (self._frames, self._c2w, self._stamps, *self._latents.values(), *self._steps.values(),
                    *([self._shown_first] if self._shown_first is not None else [])):
            app.close()
        if self._video is not None:
            self._video.close()
        self._write_manifest(extra, None)
        try:
            validate_rollout(self.folder)
        except (ValueError, FileNotFoundError) as err:
            self._write_manifest({}, f"it did not validate: {err}")
            raise
        return self.manifest

    def abort(self, reason: BaseException | str) -> dict[str, Any]:
        """Close a failed or interrupted recording: what was written is kept, the manifest says ``partial: true``.

        Never raises (it runs while another error propagates); a second problem is added to the reason."""
        if self.closed:
            return self.manifest
        if isinstance(reason, KeyboardInterrupt):
            reason = "interrupted (Ctrl-C)"
        elif isinstance(reason, BaseException):
            reason = f"failed: {type(reason).__name__}: {reason}"
        for part in (self._frames, self._c2w, self._stamps, *self._latents.values(), *self._steps.values(),
                     self._shown_first, self._video):
            try:
                if part is not None:
                    part.close()
            except Exception as err:  # the recording is partial anyway: keep the first error, note this one
                reason += f"; closing {getattr(part, 'path', '')}: {err}"
        try:
            self._write_manifest({}, reason)
        except OSError as err:
            print(f"rollout: could not mark {self.folder} partial ({err})", file=sys.stderr)
        self.closed = True
        return self.manifest

    def _write_manifest(self, extra: dict[str, Any], partial_reason: str | None) -> None:
        """Write ``rollout.json`` from the rows written so far (partial when ``partial_reason`` is given)."""
        m = self.manifest
        m["extra"].update(extra)
        m["frames"] = self._frames.rows
        t = self._latents["latents"].rows if "latents" in self._latents else 0
        m["latent_frames"] = t
        stride = int((m["codec"] or {}).get("temporal_stride", 1))
        m["latent_pixel_frames"] = 1 + stride * (t - 1) if t else 0
        m["steps"] = self._steps["actions"].rows if self._steps else 0
        m["action_dim"] = int(self._steps["actions"].tail[0]) if self._steps else None
        m["seconds"] = round(time.perf_counter() - self._t0, 3)
        m["partial"] = partial_reason is not None
        m["partial_reason"] = partial_reason
        write_text_atomic(self.folder / MANIFEST, json.dumps(m, indent=2) + "\n")
        self.closed = True

    def __enter__(self) -> RolloutWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.abort(exc)
        else:
            self.close()


def holds_complete_rollout(folder: str | Path) -> bool:
    """Whether ``folder`` holds a rollout manifest that is not marked partial (unreadable counts as complete)."""
    mpath = Path(folder) / MANIFEST
    if not mpath.is_file():
        return False
    try:
        return not json.loads(mpath.read_text()).get("partial")
    except (OSError, ValueError, AttributeError):
        return True


def check_rollout_folder(folder: str | Path, flag: str, *, inputs=(), overwrite: bool | None = None) -> Path:
    """Fail (ValueError naming ``flag``) unless a new rollout can go to ``folder``: see
    :func:`sana_wm_env.outputs.check_output`; a complete rollout there needs ``overwrite`` (None: the command
    has no --overwrite)."""
    folder = check_output(folder, flag, kind="dir", inputs=inputs)
    if holds_complete_rollout(folder) and not overwrite:
        how = "pass --overwrite or choose another folder" if overwrite is False else "choose another folder or " \
            "delete it first"
        raise ValueError(f"{flag} {folder} already holds a rollout; {how}")
    return folder


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header; the data stay on disk
    if path.stat().st_size < arr.nbytes:
        raise ValueError(f"file is shorter than its header's {arr.dtype} {arr.shape}")
    return tuple(arr.shape), arr.dtype


def validate_rollout(folder: str | Path, allow_partial: bool = False) -> dict[str, Any]:
    """Check a rollout folder; return its manifest or raise ValueError / FileNotFoundError saying what is wrong.

    A partial rollout (a failed or interrupted recording) is refused unless ``allow_partial``; then its files
    are checked against what its manifest counted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"rollout: {folder} is not a folder")
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"rollout: {folder} has no {MANIFEST} (not a rollout, or its writer was not closed: "
                                "an incomplete recording)")
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"rollout: {mpath} is not valid JSON ({err})") from None
    if m.get("format") != FORMAT:
        raise ValueError(f"rollout: {mpath} format must be {FORMAT!r}, got {m.get('format')!r}")
    if m.get("partial") and not allow_partial:
        raise ValueError(f"rollout: {folder} is partial, {m.get('partial_reason') or 'its recording did not finish'}"
                         "; record it again (or read it with allow_partial=True)")
    missing = [k for k in ("kind", "fps", "image_hw", "intrinsics", "frames", "codec", "latent_frames",
                           "latent_pixel_frames", "steps", "refined") if k not in m]
    if missing:
        raise ValueError(f"rollout: {mpath} lacks {', '.join(missing)}")
    n, (h, w) = int(m["frames"]), m["image_hw"]

    def need(name: str, shape: tuple, dtype) -> None:
        p = folder / name
        if not p.is_file():
            raise FileNotFoundError(f"rollout: {folder} lacks {name}")
        try:
            got, dt = _npy_shape(p)
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"rollout: {p} is not a readable .npy file ({err})") from None
        if tuple(got) != tuple(shape) or dt != np.dtype(dtype):
            raise ValueError(f"rollout: {p} holds {dt} {tuple(got)}; the manifest says {np.dtype(dtype)} "
                             f"{tuple(shape)}")

    if n < 1:
        raise ValueError(f"rollout: {mpath} records {n} frames; a rollout has at least the start frame")
    need("frames.npy", (n, h, w, 3), np.uint8)
    need("c2w.npy", (n, 4, 4), np.float64)
    need("timestamps.npy", (n,), np.float64)
    t = int(m["latent_frames"])
    if t:
        if not isinstance(m["codec"], dict) or "type" not in m["codec"]:
            raise ValueError(f"rollout: {mpath} holds latents but no codec config (codec: {m['codec']!r})")
        shape, _ = _npy_shape(folder / "latents.npy") if (folder / "latents.npy").is_file() else ((), None)
        if len(shape) != 4 or shape[0] != t:
            raise ValueError(f"rollout: latents.npy must be (T={t}, C, h, w) float32, got {shape}")
        need("latents.npy", shape, np.float32)
        if m["latent_pixel_frames"] < n and not m.get("partial"):  # a partial one may stop between the two
            raise ValueError(f"rollout: {t} latent frames decode to {m['latent_pixel_frames']} frames, fewer than the "
                             f"{n} recorded frames")
        if m["refined"]:
            need("stage1_latents.npy", shape, np.float32)
    elif m["refined"]:
        raise ValueError(f"rollout: {mpath} is marked refined but holds no latents")
    if (folder / "shown_first.npy").is_file() and not m.get("partial"):  # a partial one may stop between the two
        need("shown_first.npy", (n, h, w), np.bool_)
    s = int(m["steps"])
    if s:
        need("actions.npy", (s, int(m["action_dim"])), np.float32)
        need("rewards.npy", (s,), np.float32)
        need("step_frames.npy", (s,), np.int64)
    return m


def read_rollout(folder: str | Path, allow_partial: bool = False) -> Rollout:
    """Validate and load a rollout (``frames`` memory-mapped); partial ones only with ``allow_partial``."""
    folder = Path(folder)
    m = validate_rollout(folder, allow_partial=allow_partial)

    def opt(name: str) -> np.ndarray | None:
        p = folder / name
        return np.load(p, mmap_mode="r") if p.is_file() else None

    latents = opt("latents.npy") if m["latent_frames"] else None
    return Rollout(folder, m, np.load(folder / "frames.npy", mmap_mode="r"), np.load(folder / "c2w.npy"),
                   np.load(folder / "timestamps.npy"), latents,
                   opt("stage1_latents.npy") if m["refined"] else None,
                   *(opt(f) if m["steps"] else None for f in ("actions.npy", "rewards.npy", "step_frames.npy")),
                   opt("shown_first.npy"))


# ------------------------------------------------------------------------------------------------ refining
def check_refiner_for(refiner, manifest: dict[str, Any]) -> None:
    """Fail (ValueError, with both layouts) unless ``refiner`` reads the latents of a rollout's codec."""
    from world_model.codecs import build_codec

    if not manifest.get("latent_frames"):
        raise ValueError("rollout: it holds no latents (recorded from a twin env or without latents); a refiner "
                         "refines the stage-1 latents of a world model")
    refiner.check_compatible(build_codec(dict(manifest["codec"])))


def refine_rollout(source: str | Path | Rollout, out: str | Path, refiner, *, seed: int | None = None,
                   overwrite: bool = False, comparison: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Refine a stage-1 rollout into ``out`` (same format, ``refined: true``; stage-1 latents kept) and, with
    ``comparison``, write ``out/comparison.mp4`` (stage 1 | refined). The refiner's latent layout is checked
    against the rollout's codec before any work. ``seed`` defaults to the rollout's seed (else 0)."""
    from world_model.codecs import build_codec
    from world_model.video import VideoWriter

    ro = source if isinstance(source, Rollout) else read_rollout(source)
    m = ro.manifest
    check_refiner_for(refiner, m)
    if ro.refined:
        raise ValueError(f"rollout: {ro.path} is already refined (by {m['refiner']}); refine its stage-1 rollout "
                         f"({m.get('source')})")
    out = Path(out)
    if out.resolve() == ro.path.resolve():
        raise ValueError("--out must differ from the input rollout")
    codec = build_codec(dict(m["codec"]))
    seed = int(m.get("seed") or 0) if seed is None else int(seed)
    z1 = ro.latent_tensor()
    t0 = time.perf_counter()
    z = refiner.refine(z1, fps=ro.fps, seed=seed, c2w=torch.from_numpy(ro.padded_c2w())[None],
                       intrinsics=torch.from_numpy(ro.intrinsics))
    refine_s = time.perf_counter() - t0
    writer = RolloutWriter(out, fps=ro.fps, intrinsics=ro.intrinsics, image_hw=tuple(m["image_hw"]), kind=m["kind"],
                           model=m.get("model"), model_path=m.get("model_path"), seed=m.get("seed"),
                           codec=m["codec"], overwrite=overwrite, extra=m.get("extra"))
    side = VideoWriter(out / "comparison.mp4", ro.fps) if comparison else None
    try:
        state1, state2, done, n = codec.decode_stream_start(), codec.decode_stream_start(), 0, len(ro)
        for i in range(0, z.shape[2], 3):
            a, state1 = codec.decode_chunk(z1[:, :, i : i + 3], state1)
            b, state2 = codec.decode_chunk(z[:, :, i : i + 3].float(), state2)
            k = min(a.shape[2], n - done)
            if k <= 0:
                break
            refined = _u8(b[0, :, :k])
            if done == 0:
                refined[0] = ro.frames[0]  # frame 0 is the given image (the sink is unchanged)
            if ro.shown_first is not None:  # frame 0's points stay as stage 1 showed them
                keep = np.asarray(ro.shown_first[done : done + k])[..., None]
                refined = np.where(keep, ro.frames[done : done + k], refined)
            writer.add_frames(refined, ro.c2w[done : done + k], ro.timestamps[done : done + k])
            if side is not None:
                side.write(np.concatenate([_u8(a[0, :, :k]) if done else np.concatenate(
                    [ro.frames[:1], _u8(a[0, :, 1:k])]), refined], axis=2))
            done += k
            if progress is not None:
                progress(done, n)
        writer.add_latents(z)
        writer.add_latents(z1, name="stage1_latents")
        if ro.actions is not None:
            for act, rew, last in zip(ro.actions, ro.rewards, ro.step_frames):
                writer.add_step(act, float(rew), int(last))
        writer.manifest.update(refined=True, refiner=refiner.describe(), source=str(ro.path))
        manifest = writer.close(refine_seconds=round(refine_s, 3), refine_seed=seed)
    except BaseException as err:
        writer.abort(err)  # the real error propagates; the folder is marked partial
        raise
    finally:
        if side is not None:
            side.close()
    return manifest


def _u8(video: torch.Tensor) -> np.ndarray:
    """``(3, n, H, W)`` in [-1, 1] -> uint8 ``(n, H, W, 3)``."""
    return to_uint8(video.movedim(0, 1))


# ------------------------------------------------------------------------------------------------ env wrapper
class RefineEpisodeWrapper(gym.Wrapper):
    """Record every episode of a :class:`~sana_wm_env.envs.WorldModelEnv` as a rollout and refine it when it ends.

    ``RefineEpisodeWrapper(env, refiner, out_dir)``: episode ``k`` is recorded to ``out_dir/episode_{k:05d}_stage1``
    (frames, poses, actions, rewards, stage-1 latents) and, when it terminates or is truncated, refined into
    ``out_dir/episode_{k:05d}``. The last step's ``info`` gets ``"refined_rollout"`` (the folder) and
    ``"refined_frames"`` (uint8 ``(N, H, W, 3)``, memory-mapped); :attr:`last_refined` holds the
    :class:`Rollout`. ``keep_stage1=False`` deletes the stage-1 folder after refining (the refined rollout keeps
    the stage-1 latents). The refiner's latent layout is checked against the model's codec at construction.
    """

    def __init__(self, env: gym.Env, refiner, out_dir: str | Path, *, keep_stage1: bool = True,
                 video: bool = True) -> None:
        super().__init__(env)
        sim = getattr(env.unwrapped, "sim", None)
        if sim is None or getattr(sim, "model", None) is None or not hasattr(sim.backend, "element_latents"):
            raise ValueError("env must be a WorldModelEnv over a world model (a twin env has no latents to refine)")
        if sim.num_envs != 1:
            raise ValueError("env must be a single env (wrap each sub-env of a vector env on its own)")
        refiner.check_compatible(sim.model.codec)
        self.refiner, self.out_dir, self.keep_stage1, self.video = refiner, Path(out_dir), keep_stage1, video
        self.episode_index = -1
        self.last_refined: Rollout | None = None
        self._writer: RolloutWriter | None = None

    @property
    def sim(self):
        return self.env.unwrapped.sim

    def _stage1_dir(self, k: int) -> Path:
        return self.out_dir / f"episode_{k:05d}_stage1"

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if self._writer is not None and not self._writer.closed:  # an unfinished episode: keep what was recorded
            self._writer.close(finished=False)
        self.episode_index += 1
        sim, model = self.sim, self.sim.model
        sub = sim.subs[0]
        _, seed = sim.backend.element_latents(0)
        self._writer = RolloutWriter(
            self._stage1_dir(self.episode_index), fps=sim.fps, intrinsics=sub.intrinsics, image_hw=sim.image_hw,
            kind="env", model=model.name, model_path=str(model.path) if model.path else None, seed=seed,
            codec=model.codec.to_config(), video=self.video, overwrite=True,
            extra={"task": sim.task.name, "scene": info.get("scene", ""), "start_c2w": sub.c2w.tolist()})
        self._writer.add_frames(sub.frame[None], sub.c2w[None], [0.0])
        return obs, info

    def step(self, action):
        if self._writer is None or self._writer.closed:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        sub = self.sim.subs[0]
        z, _ = self.sim.backend.element_latents(0)
        self._writer.add_frames(sub.frames, info["frames_c2w"], info["timestamps"])
        self._writer.add_latents(z)
        shown = self.sim.backend.element_shown_first(0)
        if shown is not None:
            self._writer.add_shown_first(shown)
        self._writer.add_step(action, reward)
        if terminated or truncated:
            self._writer.close(terminated=bool(terminated), truncated=bool(truncated), finished=True)
            k = self.episode_index
            out = self.out_dir / f"episode_{k:05d}"
            refine_rollout(self._stage1_dir(k), out, self.refiner, overwrite=True, comparison=self.video)
            self.last_refined = read_rollout(out)
            if not self.keep_stage1:
                shutil.rmtree(self._stage1_dir(k))
            info = {**info, "refined_rollout": str(out), "refined_frames": self.last_refined.frames}
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        if self._writer is not None and not self._writer.closed:
            self._writer.close(finished=False)
        super().close()


__all__ = ["FORMAT", "KINDS", "NpyAppender", "RefineEpisodeWrapper", "Rollout", "RolloutWriter",
           "check_refiner_for", "check_rollout_folder", "holds_complete_rollout", "read_rollout", "refine_rollout",
           "validate_rollout"]
