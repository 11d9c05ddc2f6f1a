"""Write twin-world training clips: rendered frames + exact metric camera poses, intrinsics and optional depth.

Dataset format ``sana-wm-twin/1`` (a directory):

``dataset.json``
    ``{"format": "sana-wm-twin/1", "clips": N, "frames": F, "height": H, "width": W, "fps": 16.0,
    "scenes": ["rooms", ...], "motions": ["drone", ...], "split": "train"|"eval", "seed": S, "depth": bool,
    "fov_deg": [lo, hi], "revisit_fraction": p, "clearance": 0.2}`` - everything needed to regenerate
    any clip (clip ``i`` depends only on these settings and ``i``).
``clips/<i:06d>.npz`` (one per clip, written atomically, so an interrupted run resumes where it stopped; a resumed
run checks every clip (:func:`check_clip`: checksums, arrays and shapes) and renders damaged ones again)
    ``rgb``          uint8   (F, H, W, 3)
    ``c2w``          float64 (F, 4, 4)  OpenCV camera-to-world (+x right, +y down, +z forward), metres, in the
                                         scene's world frame (z up); use ``relative_to_first`` for model input
    ``intrinsics``   float32 (F, 4)     [fx, fy, cx, cy] in pixels of the stored frames (pixel centres at
                                         integer coordinates)
    ``timestamps``   float64 (F,)       seconds from the first frame (``i / fps``)
    ``depth``        float16 (F, H, W)  z-depth in metres, 0 where no surface (sky); only with ``depth: true``
    ``family`` (str), ``scene_seed`` (int), ``motion`` (str), ``revisit`` (bool),
    ``loop_period_frames`` (int; frames i and i+period share a pose, -1 if not a loop), ``traj_seed`` (int)

Scene seeds come from ``TRAIN_SEEDS`` for ``split="train"`` and from the reserved ``EVAL_SEEDS`` for
``split="eval"``, so evaluation worlds are never trained on.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sana_wm_env.limits import check_frames, check_memory
from sana_wm_env.scenes import EVAL_SEEDS, FAMILIES, TRAIN_SEEDS, make_scene
from sana_wm_env.trajectories.camera_paths import MOTIONS, generate, min_revisit_seconds

FORMAT = "sana-wm-twin/1"


@dataclass(frozen=True)
class DatasetSpec:
    """Settings of a twin dataset (stored as ``dataset.json``)."""

    clips: int
    frames: int
    height: int
    width: int
    fps: float = 16.0
    scenes: tuple[str, ...] = FAMILIES
    motions: tuple[str, ...] = MOTIONS
    split: str = "train"
    seed: int = 0
    depth: bool = False
    fov_deg: tuple[float, float] = (60.0, 90.0)
    revisit_fraction: float = 0.0
    clearance: float = 0.2
    format: str = field(default=FORMAT)

    def __post_init__(self) -> None:
        for name in ("clips", "frames", "height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (2 if name == "frames" else 1):
                raise ValueError(f"{name} must be a positive int{' >= 2' if name == 'frames' else ''}, got {v!r}")
        if not np.isfinite(self.fps) or self.fps <= 0:
            raise ValueError(f"fps must be a positive number, got {self.fps!r}")
        # A clip is rendered whole in memory before it is written: refuse absurd sizes before any work.
        check_frames(self.frames, "frames per clip (--frames)", "use fewer frames per clip")
        clip_bytes = self.frames * self.height * self.width * (3 + (2 if self.depth else 0))
        check_memory(clip_bytes, f"a clip of {self.frames:,} frames of {self.height}x{self.width} (--frames, --size)",
                     "use fewer or smaller frames per clip")
        if not self.scenes or any(s not in FAMILIES for s in self.scenes):
            raise ValueError(f"scenes must be a non-empty subset of {', '.join(FAMILIES)}; got {list(self.scenes)}")
        if not self.motions or any(m not in MOTIONS for m in self.motions):
            raise ValueError(f"motions must be a non-empty subset of {', '.join(MOTIONS)}; got {list(self.motions)}")
        if self.split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {self.split!r}")
        lo, hi = self.fov_deg
        if not 0 < lo <= hi < 180:
            raise ValueError(f"fov_deg must be (lo, hi) degrees with 0 < lo <= hi < 180, got {self.fov_deg}")
        if not 0.0 <= self.revisit_fraction <= 1.0:
            raise ValueError(f"revisit_fraction must be in [0, 1], got {self.revisit_fraction}")
        if self.revisit_fraction > 0:
            need = max(min_revisit_seconds(make_scene(f, 100), m) for f in self.scenes for m in self.motions)
            if (self.frames - 1) / self.fps < need:
                raise ValueError(
                    f"frames: revisit clips need at least {int(np.ceil(need * self.fps)) + 1} frames at "
                    f"{self.fps:g} fps; got {self.frames} (use --revisit-fraction 0 or longer clips)"
                )

    def to_json(self) -> dict:
        d = asdict(self)
        d["scenes"], d["motions"], d["fov_deg"] = list(self.scenes), list(self.motions), list(self.fov_deg)
        return d

    @classmethod
    def from_json(cls, d: dict, source: str | Path = "dataset.json") -> DatasetSpec:
        """The spec a ``dataset.json`` object holds; anything else raises ValueError naming ``source``."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: holds a JSON {type(d).__name__}, not an object of dataset settings")
        if d.get("format") != FORMAT:
            raise ValueError(f"{source}: format must be {FORMAT!r}, got {d.get('format')!r}")
        d = dict(d)
        try:
            d["scenes"], d["motions"], d["fov_deg"] = tuple(d["scenes"]), tuple(d["motions"]), tuple(d["fov_deg"])
            return cls(**d)
        except (KeyError, TypeError) as err:  # a setting missing, unknown or of the wrong kind
            raise ValueError(f"{source}: not the settings of a {FORMAT} dataset ({type(err).__name__}: {err}); "
                             "`sana-wm dataset make` writes it") from None


def read_dataset_json(root: str | Path) -> dict:
    """The ``dataset.json`` object of the dataset folder ``root``: a missing file raises FileNotFoundError, one
    that is not a JSON object ValueError naming the file (and the line of a JSON syntax error)."""
    meta = Path(root) / "dataset.json"
    if not meta.is_file():
        raise FileNotFoundError(f"root: {root} is not a twin dataset (no dataset.json)")
    try:
        d = json.loads(meta.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"{meta}: not a text file; a dataset.json is a JSON object of dataset settings") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno}); a dataset.json is "
                         "a JSON object of dataset settings (`sana-wm dataset make` writes it)") from None
    if not isinstance(d, dict):
        raise ValueError(f"{meta}: holds a JSON {type(d).__name__}, not an object; a dataset.json is a JSON object of "
                         "dataset settings (`sana-wm dataset make` writes it)")
    return d


def clip_path(root: Path, index: int) -> Path:
    return Path(root) / "clips" / f"{index:06d}.npz"


def _array_headers(zf: zipfile.ZipFile) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every ``.npy`` member of an open ``.npz``, read from the headers only."""
    out = {}
    for name in zf.namelist():
        with zf.open(name) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        out[name.removesuffix(".npy")] = (tuple(shape), np.dtype(dtype))
    return out


def check_clip(path: str | Path, spec: DatasetSpec) -> None:
    """Raise ValueError naming ``path`` unless it is a complete clip of ``spec``: a readable archive whose every
    member passes its checksum, holding every array with the shape and dtype the format gives."""
    path = Path(path)
    f, h, w = spec.frames, spec.height, spec.width
    want = {"rgb": ((f, h, w, 3), np.uint8), "c2w": ((f, 4, 4), np.float64), "intrinsics": ((f, 4), np.float32),
            "timestamps": ((f,), np.float64), "family": None, "scene_seed": None, "motion": None, "revisit": None,
            "loop_period_frames": None, "traj_seed": None}
    if spec.depth:
        want["depth"] = ((f, h, w), np.float16)
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()  # reads every member and checks its CRC
            if bad is not None:
                raise ValueError(f"member {bad} fails its checksum")
            got = _array_headers(zf)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ValueError(f"clip {path} is damaged ({err})") from None
    for key, shape_dtype in want.items():
        if key not in got:
            raise ValueError(f"clip {path} is damaged (it lacks {key!r})")
        if shape_dtype is not None and got[key] != (shape_dtype[0], np.dtype(shape_dtype[1])):
            raise ValueError(f"clip {path} is damaged ({key} is {got[key][1]} {got[key][0]}, the dataset says "
                             f"{np.dtype(shape_dtype[1])} {shape_dtype[0]})")


def damaged_clips(root: str | Path, spec: DatasetSpec) -> dict[int, str]:
    """``{clip index: what is wrong}`` for the clips present under ``root`` that fail :func:`check_clip`."""
    bad = {}
    for i in range(spec.clips):
        if clip_path(root, i).exists():
            try:
                check_clip(clip_path(root, i), spec)
            except ValueError as err:
                bad[i] = str(err)
    return bad


def clip_plan(spec: DatasetSpec, index: int) -> dict:
    """What clip ``index`` shows (family, scene seed, motion, revisit, fov, trajectory seed): deterministic."""
    rng = np.random.default_rng([spec.seed, index])
    seeds = TRAIN_SEEDS if spec.split == "train" else EVAL_SEEDS
    return dict(
        family=spec.scenes[index % len(spec.scenes)],
        scene_seed=int(seeds[int(rng.integers(len(seeds)))]),
        motion=spec.motions[int(rng.integers(len(spec.motions)))],
        revisit=bool(rng.random() < spec.revisit_fraction),
        fov=float(rng.uniform(*spec.fov_deg)),
        traj_seed=int(rng.integers(2**31)),
    )


def make_clip(spec: DatasetSpec, index: int) -> dict[str, np.ndarray]:
    """Render clip ``index`` of ``spec`` (arrays as stored in its ``.npz``)."""
    from sana_wm_env.scenes import SceneRenderer
    from world_model.camera import fov_to_intrinsics

    plan = clip_plan(spec, index)
    scene = make_scene(plan["family"], plan["scene_seed"])
    traj = None
    for k in range(5):  # a scene can be too cramped for a path; the retries are deterministic too
        try:
            traj = generate(scene, plan["motion"], spec.frames, spec.fps, seed=[plan["traj_seed"], k],
                            revisit=plan["revisit"], clearance=spec.clearance)
            break
        except RuntimeError:
            seeds = TRAIN_SEEDS if spec.split == "train" else EVAL_SEEDS
            scene = make_scene(plan["family"], int(seeds[(seeds.index(plan["scene_seed"]) + k + 1) % len(seeds)]))
    if traj is None:  # the settings ask for more than these scenes hold: bad input, not a crash
        raise ValueError(
            f"clip {index}: no {plan['motion']} camera path of {spec.frames} frames "
            f"({(spec.frames - 1) / spec.fps:.1f} s at {spec.fps:g} fps) fits in the {plan['family']} scenes tried; "
            "long clips need room: use fewer frames per clip (--frames) or other scenes (--scenes)"
        )
    k4 = fov_to_intrinsics(plan["fov"], spec.height, spec.width).double().numpy()
    renderer = SceneRenderer(scene, spec.height, spec.width, depth=spec.depth)
    rgb = np.empty((spec.frames, spec.height, spec.width, 3), np.uint8)
    depth = np.empty((spec.frames, spec.height, spec.width), np.float16) if spec.depth else None
    for i, pose in enumerate(traj.poses):
        img, d = renderer.render(pose, k4)
        rgb[i] = img
        if depth is not None:
            depth[i] = d
    renderer.close()
    out = dict(
        rgb=rgb, c2w=traj.poses, intrinsics=np.tile(k4.astype(np.float32), (spec.frames, 1)),
        timestamps=traj.timestamps - traj.timestamps[0], family=np.array(scene.family),
        scene_seed=np.array(scene.seed), motion=np.array(plan["motion"]), revisit=np.array(plan["revisit"]),
        loop_period_frames=np.array(traj.metadata.get("loop_period_frames", -1)),
        traj_seed=np.array(plan["traj_seed"]),
    )
    if depth is not None:
        out["depth"] = depth
    return out


# Every archive member gets this timestamp (the zip format's earliest), so a clip's bytes depend only on its
# arrays: clip i is byte-identical whenever and wherever it is rendered (np.savez stamps the current time).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The ``.npz`` archive of ``arrays`` (what ``np.savez`` writes, uncompressed), with fixed member timestamps."""
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return buf.getvalue()


def clip_bytes(spec: DatasetSpec, index: int) -> bytes:
    """Render clip ``index`` of ``spec``: the bytes of its ``.npz`` file (the same on every machine and run)."""
    return npz_bytes(make_clip(spec, index))


def store_clip(root: Path, index: int, data: bytes) -> None:
    """Write the ``.npz`` bytes of clip ``index`` under ``root`` atomically (a temporary file, then a rename)."""
    path = clip_path(root, index)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_clip(spec: DatasetSpec, root: Path, index: int) -> int:
    """Render and atomically write clip ``index``; returns the number of frames written (0 if it existed)."""
    if clip_path(root, index).exists():
        return 0
    store_clip(root, index, clip_bytes(spec, index))
    return spec.frames


def prepare(root: Path, spec: DatasetSpec) -> tuple[list[int], dict[int, str]]:
    """Create ``root`` (or check that an existing one has the same settings); return the ids of the clips to
    render (the missing ones and the damaged ones, which are deleted) and what was wrong with the damaged ones."""
    root = Path(root)
    meta = root / "dataset.json"
    if meta.exists():
        old = DatasetSpec.from_json(read_dataset_json(root), meta)
        if old != spec:
            diff = {k: (v, spec.to_json()[k]) for k, v in old.to_json().items() if spec.to_json()[k] != v}
            raise ValueError(f"out: {root} holds a dataset with other settings (existing, requested): {diff}")
    else:
        (root / "clips").mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    (root / "clips").mkdir(exist_ok=True)
    for stale in (root / "clips").glob(".*.tmp.npz"):
        stale.unlink()
    damaged = damaged_clips(root, spec)
    for i in damaged:
        clip_path(root, i).unlink()
    return [i for i in range(spec.clips) if not clip_path(root, i).exists()], damaged


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the parent (which ends the pool), instead of each printing a traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker(args: tuple[DatasetSpec, str, int]) -> int:
    spec, root, index = args
    return write_clip(spec, Path(root), index)


def make_dataset(root, spec: DatasetSpec, workers: int = 1, progress: bool = True, ray: str | None = None) -> dict:
    """Write every missing clip of ``spec`` under ``root`` using ``workers`` processes (resumable).

    With ``ray`` (an address, see :mod:`sana_wm_env.distributed`) the clips are Ray tasks instead, one per clip
    on one core each (``workers`` is then unused): a task renders the clip and returns its ``.npz`` bytes, and
    this process writes them (so the cluster needs no shared storage); the bytes are those a local run writes.

    Returns {"written": clips written now, "skipped": already present, "damaged": {index: what was wrong} of the
    clips found damaged and rendered again, "seconds": wall time, "clips_per_s", "frames_per_s"}.
    """
    import time

    from tqdm import tqdm

    from sana_wm_env.scenes.gl import select_backend

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if ray is not None:
        from sana_wm_env.distributed import require_ray

        require_ray()  # a missing extra is said before any folder is made
    root = Path(root)
    todo, damaged = prepare(root, spec)
    select_backend()  # probe once here; workers inherit MUJOCO_GL
    t0 = time.perf_counter()
    frames = 0
    bar = tqdm(total=spec.clips, initial=spec.clips - len(todo), unit="clip", disable=not progress,
               desc=f"dataset {root.name}")
    if ray is not None:
        from sana_wm_env.distributed import connect, run_tasks

        def store(i: int, data: bytes) -> int:
            store_clip(root, todo[i], data)
            bar.update(1)
            return spec.frames

        if todo:  # a finished dataset needs no cluster
            with connect(ray):
                frames = sum(run_tasks(clip_bytes, [(spec, i) for i in todo], desc="clip tasks", progress=False,
                                       on_result=store, unit="clip"))
    elif workers == 1 or len(todo) <= 1:
        for i in todo:
            frames += write_clip(spec, root, i)
            bar.update(1)
    else:
        import multiprocessing as mp

        # Not "fork": a parent that has rendered holds a GL context, and forked children of it can hang.
        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_ignore_sigint) as pool:
            for n in pool.imap_unordered(_worker, [(spec, str(root), i) for i in todo]):
                frames += n
                bar.update(1)
    bar.close()
    dt = time.perf_counter() - t0
    written = len(todo)
    return dict(written=written, skipped=spec.clips - written, damaged=damaged, seconds=dt,
                clips_per_s=written / dt if dt > 0 else 0.0, frames_per_s=frames / dt if dt > 0 else 0.0)
