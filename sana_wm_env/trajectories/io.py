"""Trajectory readers and writers: TUM, EuRoC CSV, KITTI odometry, ROS 2 bags, SANA-WM-Bench ``.npz``, ``.npy``.

``load(path, format="auto", ...)`` picks the reader from the path (a bag directory or ``.mcap``/``.db3`` file,
``.npz``, ``.npy``, ``.csv`` = EuRoC, ``.txt`` sniffed: 8 numbers a line = TUM, 12 = KITTI). ``save`` writes TUM
(readable by evo; the convention and frame names go in a ``#`` header line) or ``.npz``.

Bad input: a malformed line raises ``ValueError("<file>:<line>: <reason>")`` (binary data in a text format too);
a file that is not what its format needs (a damaged ``.npz``, a folder that is not a bag) raises ValueError naming
it; rows with NaN and duplicate or non-monotonic stamps raise by default, or are dropped with a warning giving
the counts (``on_invalid="drop"``, counts also in ``metadata["dropped_rows"]``); quaternions whose norm is off by
more than 1e-2 raise, near-unit ones are normalised. EuRoC stamps are read exactly as whole nanoseconds.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from sana_wm_env.trajectories.readers import check_convention, error_reason, quat_poses
from sana_wm_env.trajectories.trajectory import Trajectory, clean_rows
from world_model import camera as cam

FORMATS: tuple[str, ...] = ("tum", "euroc", "kitti", "bag", "npz", "npy")
ORTHO_TOL = 1e-2
_HEADER = re.compile(r"#\s*sana-wm trajectory\s+(.*)")


def detect_format(path: str | Path) -> str:
    """Guess the format of ``path`` (see module docstring); raise ValueError if it cannot be told."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path: no such file or directory: {p}")
    if p.is_dir() or p.suffix in (".mcap", ".db3", ".bag"):
        return "bag"
    if p.suffix in (".npz", ".npy"):
        return p.suffix[1:]
    if p.suffix == ".csv":
        return "euroc"
    for _lineno, line in _text_lines(p):
        s = line.strip()
        if not s or s.startswith("#") or s.startswith("%"):
            continue
        n = len(s.replace(",", " ").split())
        if n == 8:
            return "tum"
        if n == 12:
            return "kitti"
        if "," in s and n >= 8:
            return "euroc"
        break
    raise ValueError(
        f"path: cannot detect the trajectory format of {p}; pass format= one of {', '.join(FORMATS)}"
    )


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of a UTF-8 text file; binary data raises ValueError at its line.

    Reading line by line in bytes names the line a stray binary byte is on, and NUL bytes (a zeroed or sparse
    file, valid UTF-8) count as binary too.
    """
    if path.is_dir():
        raise ValueError(f"path: {path} is a folder; a text trajectory (TUM, EuRoC, KITTI) is a file")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            col = raw.find(b"\0")
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                col = err.start if col < 0 else min(col, err.start)
                text = None
            if text is None or col >= 0:
                raise ValueError(
                    f"{path}:{lineno}: binary data (byte 0x{raw[col]:02x} at column {col + 1}), not a text "
                    "trajectory; TUM, EuRoC and KITTI files are text (binary trajectories: .npz, .npy, ROS 2 bags)"
                )
            yield lineno, text


def _parse_rows(path: Path, ncols: int, sep: str | None, what: str, min_cols: int | None = None):
    """Numbers of each data line (comments '#' and blank lines skipped) with the line numbers and their text."""
    rows: list[list[float]] = []
    lines: list[int] = []
    texts: list[str] = []
    header: dict[str, str] = {}
    for lineno, line in _text_lines(path):
        s = line.strip()
        if not s or s.startswith("#"):
            m = _HEADER.match(s)
            if m:
                header = dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)
            continue
        parts = [x for x in (s.split(sep) if sep else s.split())]
        if sep:
            parts = [x.strip() for x in parts]
        n_ok = len(parts) >= min_cols if min_cols is not None else len(parts) == ncols
        if not n_ok:
            need = f"at least {min_cols}" if min_cols is not None else str(ncols)
            raise ValueError(f"{path}:{lineno}: expected {need} numbers ({what}), got {len(parts)}")
        try:
            rows.append([float(x) for x in parts[: (min_cols or ncols)]])
        except ValueError:
            bad = next(x for x in parts if not _is_float(x))
            raise ValueError(f"{path}:{lineno}: could not parse {bad!r} as a number ({what})") from None
        lines.append(lineno)
        texts.append(parts[0])
    if not rows:
        raise ValueError(f"{path}: no data lines ({what})")
    return np.asarray(rows, dtype=np.float64), lines, header, texts


def _is_float(x: str) -> bool:
    try:
        float(x)
    except ValueError:
        return False
    return True


def _finish(times, poses_fn, where, on_invalid, source, raw_finite, **kw) -> Trajectory:
    keep = clean_rows(times, raw_finite, where, on_invalid, source)
    dropped = len(times) - len(keep)
    traj = Trajectory(timestamps=times[keep], poses=poses_fn(keep), **kw)
    traj.metadata.update(source=str(source), dropped_rows=dropped)
    return traj


def read_tum(path, convention: str | None = None, on_invalid: str = "raise") -> Trajectory:
    """TUM: ``timestamp tx ty tz qx qy qz qw`` per line (seconds, quaternion w last), ``#`` comments."""
    p = Path(path)
    rows, lines, header, _ = _parse_rows(p, 8, None, "timestamp tx ty tz qx qy qz qw")
    where = [f"{p}:{n}" for n in lines]
    conv = check_convention(convention, header.get("convention", "unknown"))
    return _finish(
        rows[:, 0], lambda k: quat_poses(rows[k, 1:4], rows[k, 4:8], [where[i] for i in k]), where, on_invalid, p,
        np.isfinite(rows).all(axis=1), convention=conv, frame_id=header.get("frame_id", "world"),
        child_frame_id=header.get("child_frame_id", "body"),
    )


def read_euroc(path, convention: str | None = None, on_invalid: str = "raise") -> Trajectory:
    """EuRoC MAV ground truth CSV: ``ns, px, py, pz, qw, qx, qy, qz[, ...]`` (w first; extra columns ignored)."""
    p = Path(path)
    rows, lines, _, stamps = _parse_rows(p, 8, ",", "timestamp_ns, p_x, p_y, p_z, q_w, q_x, q_y, q_z", min_cols=8)
    where = [f"{p}:{n}" for n in lines]
    # Exact integer nanoseconds -> seconds (float64 keeps ~0.2 us at epoch times); NaN stamps stay NaN rows.
    times = np.array([_euroc_ns(text, w) for text, w in zip(stamps, where)], dtype=np.float64) * 1e-9
    q_xyzw = rows[:, [5, 6, 7, 4]]
    return _finish(
        times, lambda k: quat_poses(rows[k, 1:4], q_xyzw[k], [where[i] for i in k]), where, on_invalid, p,
        np.isfinite(rows).all(axis=1) & np.isfinite(times), convention=check_convention(convention, "rep103"),
        frame_id="world", child_frame_id="body",
    )


def _euroc_ns(text: str, where: str) -> float:
    """A EuRoC stamp (integer nanoseconds) read exactly; NaN/inf give NaN (an invalid row, see ``on_invalid``).

    Any notation of a whole number is accepted (``1403715273262142976``, ``1.5e18``); a fraction of a nanosecond
    (such as seconds written as ``1403715273.26``) or a stamp past the int64 range raises ValueError at its line.
    """
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - _parse_rows already parsed it as a float
        raise ValueError(f"{where}: could not parse {text!r} as a timestamp in nanoseconds") from None
    if not value.is_finite():
        return float("nan")
    if value != value.to_integral_value():
        raise ValueError(f"{where}: timestamp {text!r} is not a whole number of nanoseconds; EuRoC stamps are "
                         "integer nanoseconds (stamps in seconds: multiply by 1e9)")
    if abs(value) >= 2**63:
        raise ValueError(f"{where}: timestamp {text!r} ns is outside the int64 range of EuRoC stamps")
    return float(int(value))


def read_kitti(path, times=None, fps: float = 10.0, convention: str | None = None,
               on_invalid: str = "raise") -> Trajectory:
    """KITTI odometry: 12 numbers a line (row-major 3x4 [R|t] of the camera in the first camera frame).

    Timestamps come from ``times`` (a path with one number a line), else from ``<name>_times.txt`` or
    ``times.txt`` next to the file, else ``index / fps``. Rotations off orthonormal by more than 1e-2 fail;
    smaller errors (text rounding) are projected back onto SO(3).
    """
    p = Path(path)
    rows, lines, _, _ = _parse_rows(p, 12, None, "r11 r12 r13 tx r21 r22 r23 ty r31 r32 r33 tz")
    where = [f"{p}:{n}" for n in lines]
    if times is None:
        for cand in (p.with_name(p.stem + "_times.txt"), p.with_name("times.txt")):
            if cand.is_file():
                times = cand
                break
    if times is not None:
        tp = Path(times)
        trows, _, _, _ = _parse_rows(tp, 1, None, "timestamp in seconds")
        stamps = trows[:, 0]
        if len(stamps) != len(rows):
            raise ValueError(f"times: {tp} has {len(stamps)} stamps but {p} has {len(rows)} poses")
        source_t = str(tp)
    else:
        if not np.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        stamps = np.arange(len(rows)) / fps
        source_t = f"index/{fps}Hz"
    mats = rows.reshape(-1, 3, 4)
    finite = np.isfinite(rows).all(axis=1) & np.isfinite(stamps)

    def poses(k: np.ndarray) -> np.ndarray:
        out = np.tile(np.eye(4), (len(k), 1, 1))
        r = mats[k, :, :3]
        err = np.abs(np.transpose(r, (0, 2, 1)) @ r - np.eye(3)).max(axis=(1, 2))
        bad = np.nonzero((err > ORTHO_TOL) | (np.linalg.det(r) <= 0))[0]
        if len(bad):
            i = int(k[bad[0]])
            raise ValueError(f"{where[i]}: rotation is not orthonormal (max|R^T R - I| = {err[bad[0]]:.3g})")
        u, _, vt = np.linalg.svd(r)
        out[:, :3, :3] = u @ vt
        out[:, :3, 3] = mats[k, :, 3]
        return out

    traj = _finish(stamps, poses, where, on_invalid, p, finite,
                   convention=check_convention(convention, "opencv"), frame_id="camera0", child_frame_id="camera")
    traj.metadata["timestamps_from"] = source_t
    return traj


def read_npz(path, fps: float = 16.0, convention: str | None = None) -> Trajectory:
    """SANA-WM-Bench style ``.npz``: ``c2w`` (F,4,4) OpenCV camera-to-world, optional ``intrinsics`` ((F,3,3),
    (F,4), (3,3) or (4,)) and ``timestamps`` (F,) (else ``index / fps``)."""
    p = Path(path)
    expected = "np.savez output with a 'c2w' (F, 4, 4) array of camera-to-world poses"
    if not zipfile.is_zipfile(p):
        raise ValueError(f"path: {p} is not a trajectory .npz (not a complete NumPy .npz archive: truncated, or "
                         f"another kind of file); expected {expected}")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            key = next((k for k in ("c2w", "poses", "camera") if k in keys), None)
            if key is not None:
                c2w = np.asarray(z[key], dtype=np.float64)
                k = np.asarray(z["intrinsics"], dtype=np.float64) if "intrinsics" in keys else None
                stamps = np.asarray(z["timestamps"], dtype=np.float64) if "timestamps" in keys else None
                meta = {n: str(z[n]) for n in ("convention", "frame_id", "child_frame_id") if n in keys}
    except _ARRAY_FILE_ERRORS as err:
        raise ValueError(f"path: {p} is not a readable trajectory .npz ({_array_reason(err)}); "
                         f"expected {expected}") from None
    if key is None:
        raise ValueError(f"path: {p} has no 'c2w' array (keys: {', '.join(sorted(keys)) or 'none'}); "
                         f"expected {expected}")
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"path: {p}['{key}'] must have shape (F, 4, 4), got {c2w.shape}")
    if stamps is None:
        stamps = np.arange(len(c2w)) / _check_fps(fps)
    traj = Trajectory(
        timestamps=stamps, poses=c2w, intrinsics=k,
        convention=check_convention(convention, meta.get("convention", "opencv")),
        frame_id=meta.get("frame_id", "world"), child_frame_id=meta.get("child_frame_id", "camera"),
    )
    traj.metadata.update(source=str(p), dropped_rows=0)
    return traj


def read_npy(path, fps: float = 16.0, convention: str | None = None) -> Trajectory:
    """``.npy`` (F,4,4) OpenCV camera-to-world poses at ``fps``."""
    p = Path(path)
    try:
        c2w = np.load(p, allow_pickle=False)
        if not isinstance(c2w, np.ndarray):  # an .npz archive under an .npy name
            c2w.close()
            raise ValueError("an .npz archive, not an .npy array")
    except _ARRAY_FILE_ERRORS as err:
        raise ValueError(f"path: {p} is not a trajectory .npy ({_array_reason(err)}); "
                         "expected np.save output of an (F, 4, 4) array of camera-to-world poses") from None
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"path: {p} must hold an (F, 4, 4) array of camera-to-world poses, got {c2w.shape}")
    traj = Trajectory(timestamps=np.arange(len(c2w)) / _check_fps(fps), poses=c2w.astype(np.float64),
                      convention=check_convention(convention, "opencv"), child_frame_id="camera")
    traj.metadata.update(source=str(p), dropped_rows=0)
    return traj


# What reading a damaged or foreign NumPy file raises (np.load, zip members, the .npy header parser).
_ARRAY_FILE_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, SyntaxError)


def _array_reason(err: BaseException) -> str:
    """What a NumPy file error means for a trajectory, without numpy's advice to unpickle untrusted files."""
    text = str(err)
    if "Object arrays" in text:
        return "it holds Python objects, not arrays of numbers"
    if "pickle" in text:  # numpy reads a file without an .npy header as a pickle
        return "not a readable NumPy array file"
    return f"truncated or damaged? {error_reason(err)}"


def _check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return float(fps)


def load(path, format: str = "auto", topic: str | None = None, parent_frame: str | None = None,
         child_frame: str | None = None, *, convention: str | None = None, times=None, fps: float | None = None,
         on_invalid: str = "raise") -> Trajectory:
    """Read a trajectory file (see module docstring). ``topic``/``parent_frame``/``child_frame`` select what a
    ROS 2 bag holds; ``times``/``fps`` give KITTI or array files their stamps; ``convention`` overrides the
    format's default body convention (TUM: from its header or "unknown"; EuRoC and bags: "rep103"; KITTI, npz,
    npy: "opencv")."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {', '.join(FORMATS)}; got {format!r}")
    if not Path(path).exists():
        raise FileNotFoundError(f"path: no such file or directory: {path}")
    if fmt != "bag" and Path(path).is_dir():
        raise ValueError(f"path: {path} is a folder; a {fmt} trajectory is a file (only a ROS 2 bag is a folder)")
    if fmt != "bag" and (topic or parent_frame or child_frame):
        raise ValueError(f"topic/parent_frame/child_frame only apply to ROS 2 bags, not {fmt} files")
    if fmt == "tum":
        return read_tum(path, convention, on_invalid)
    if fmt == "euroc":
        return read_euroc(path, convention, on_invalid)
    if fmt == "kitti":
        return read_kitti(path, times=times, fps=10.0 if fps is None else fps, convention=convention,
                          on_invalid=on_invalid)
    if fmt == "npz":
        return read_npz(path, fps=16.0 if fps is None else fps, convention=convention)
    if fmt == "npy":
        return read_npy(path, fps=16.0 if fps is None else fps, convention=convention)
    from sana_wm_env.trajectories.bags import read_bag

    return read_bag(path, topic=topic, parent_frame=parent_frame, child_frame=child_frame,
                    convention=convention, on_invalid=on_invalid)


def _num(x: float) -> str:
    return repr(float(x))  # shortest text that reads back to the same float64


def save(traj: Trajectory, path, format: str = "auto") -> Path:
    """Write ``traj`` as TUM text (``.txt``/``.tum``; evo-compatible) or ``.npz``. Returns the path."""
    if not isinstance(traj, Trajectory):
        raise ValueError(f"traj must be a Trajectory, got {type(traj).__name__}")
    p = Path(path)
    fmt = format
    if fmt == "auto":
        fmt = "npz" if p.suffix == ".npz" else "tum" if p.suffix in (".txt", ".tum") else ""
        if not fmt:
            raise ValueError(f"path: cannot tell the format from suffix {p.suffix!r}; use .txt/.tum or .npz")
    if fmt == "tum":
        q = traj.quaternions
        with p.open("w") as f:
            f.write(f"# sana-wm trajectory convention={traj.convention} frame_id={traj.frame_id} "
                    f"child_frame_id={traj.child_frame_id}\n# timestamp tx ty tz qx qy qz qw\n")
            for t, pos, qq in zip(traj.timestamps, traj.positions, q):
                f.write(" ".join(_num(v) for v in (t, *pos, *qq)) + "\n")
    elif fmt == "npz":
        arrays = dict(c2w=traj.poses, timestamps=traj.timestamps, convention=np.array(traj.convention),
                      frame_id=np.array(traj.frame_id), child_frame_id=np.array(traj.child_frame_id))
        if traj.intrinsics is not None:
            arrays["intrinsics"] = cam.intrinsics_to_matrix(traj.intrinsics).numpy()
        np.savez(p, **arrays)
    else:
        raise ValueError(f"format must be 'auto', 'tum' or 'npz' for writing; got {format!r}")
    return p
