"""The fidelity protocol's scores: per-frame records pooled into horizon tables, action-following accuracy,
revisit consistency, the stability verdict, and the targets a results file is checked against.

:mod:`sana_wm_env.evaluation.fidelity` collects the records (one :class:`Records` per candidate); frame-level
metrics (PSNR, SSIM) are in :mod:`sana_wm_env.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sana_wm_env.evaluation.config import STABILITY_WINDOW, EvalConfig


def horizon_label(h: tuple[int, int]) -> str:
    """The results key of a horizon ``(lo, hi)`` of frame indices: ``"lo-hi"``."""
    return f"{h[0]}-{h[1]}"


@dataclass
class Records:
    """Raw per-frame records of one candidate (pooled at the end)."""

    psnr: dict[str, list[np.ndarray]] = field(default_factory=dict)  # episode key -> per-frame (F-1,)
    ssim: dict[str, list[np.ndarray]] = field(default_factory=dict)
    psnr_covered: dict[str, list[np.ndarray]] = field(default_factory=dict)  # NaN where a frame has no such pixel
    psnr_holes: dict[str, list[np.ndarray]] = field(default_factory=dict)
    delta_psnr: dict[str, list[np.ndarray]] = field(default_factory=dict)  # commanded minus random path
    action: list[tuple[str, str, int, bool]] = field(default_factory=list)  # (family, motion, frame, correct)
    revisit: list[dict[str, float]] = field(default_factory=list)
    contact: dict[str, np.ndarray] = field(default_factory=dict)  # family -> uint8 (n, H, W, 3)
    seconds: float = 0.0
    frames: int = 0


def pool_frames(values: list[np.ndarray], lo: int, hi: int) -> tuple[float | None, int]:
    """Mean over frames lo..hi (1-based frame index; arrays hold frames 1..F-1) of all episodes."""
    chunks = [v[lo - 1 : hi] for v in values if len(v) >= lo]
    cat = np.concatenate(chunks) if chunks else np.zeros(0)
    cat = cat[np.isfinite(cat)]  # masked PSNRs are NaN on frames without such pixels
    if cat.size == 0:
        return None, 0
    return float(cat.mean()), int(cat.size)


def horizon_table(per_episode: dict[str, list[np.ndarray]], keys: Callable[[str], bool],
                   cfg: EvalConfig) -> dict[str, Any]:
    """``{horizon label: {"mean", "frames"}}`` over the episodes whose key ``keys`` accepts."""
    vals = [v for k, vs in per_episode.items() if keys(k) for v in vs]
    out: dict[str, Any] = {}
    for h in cfg.horizons:
        mean, n = pool_frames(vals, *h)
        out[horizon_label(h)] = {"mean": mean, "frames": n}
    return out


def summarise(acc: Records, cfg: EvalConfig) -> dict[str, Any]:
    """One candidate's ``fidelity``, ``action_following`` and ``revisit`` tables from its records."""
    def fam_is(f):
        return lambda k: k.split("/")[0] == f

    def mot_is(m):
        return lambda k: k.split("/")[1] == m

    def every(k):
        return True

    fid: dict[str, Any] = {
        "psnr": horizon_table(acc.psnr, every, cfg), "ssim": horizon_table(acc.ssim, every, cfg),
        "psnr_covered": horizon_table(acc.psnr_covered, every, cfg),
        "psnr_holes": horizon_table(acc.psnr_holes, every, cfg),
        "delta_psnr": horizon_table(acc.delta_psnr, every, cfg) if acc.delta_psnr else None,
        "per_family": {f: {"psnr": horizon_table(acc.psnr, fam_is(f), cfg),
                           "ssim": horizon_table(acc.ssim, fam_is(f), cfg)} for f in cfg.families},
        "per_motion": {m: {"psnr": horizon_table(acc.psnr, mot_is(m), cfg),
                           "ssim": horizon_table(acc.ssim, mot_is(m), cfg)}
                       for m in cfg.motions if any(k.split("/")[1] == m for k in acc.psnr)},
    }
    all_psnr = [v for vs in acc.psnr.values() for v in vs]
    all_ssim = [v for vs in acc.ssim.values() for v in vs]
    if all_psnr:
        fid["psnr_per_frame"] = [float(x) for x in np.mean(np.stack(all_psnr), axis=0)]
        fid["ssim_per_frame"] = [float(x) for x in np.mean(np.stack(all_ssim), axis=0)]
    chance = 1.0 / (cfg.action_distractors + 1)
    rows = acc.action

    def acc_of(sel) -> dict[str, Any]:
        hits = [c for r in rows if sel(r) for c in [r[3]]]
        return {"accuracy": float(np.mean(hits)) if hits else None, "frames": len(hits)}

    action = {
        **acc_of(lambda r: True), "chance": chance, "frame_stride": cfg.action_stride,
        "evaluated_frames": f"frames 1, 1+{cfg.action_stride}, 1+2*{cfg.action_stride}, ... of every main episode",
        "distractors": cfg.action_distractors,
        "per_horizon": {horizon_label(h): acc_of(lambda r, h=h: h[0] <= r[2] <= h[1]) for h in cfg.horizons},
        "per_family": {f: acc_of(lambda r, f=f: r[0] == f) for f in cfg.families},
    }
    rv = acc.revisit
    revisit: dict[str, Any] = {"episodes": len(rv), "frames": int(sum(r["frames"] for r in rv))}
    for key in ("psnr_vs_render", "psnr_vs_earlier_generated", "psnr_first_visit_vs_render"):
        tot = sum(r["frames"] for r in rv)
        revisit[key] = float(sum(r[key] * r["frames"] for r in rv) / tot) if tot else None
    revisit["per_episode"] = rv
    return {"fidelity": fid, "action_following": action, "revisit": revisit}


def stability_stats(std_per_frame: Sequence[float], finite_per_frame: Sequence[bool], *,
                    min_std_ratio: float = 0.5, window: int = STABILITY_WINDOW) -> dict[str, Any]:
    """Verdict on a rollout from per-frame contrast (std) and finiteness.

    Pass = every frame finite and ``mean std of the last window >= min_std_ratio * mean std of the first``.
    Non-finite frames are left out of the std means (their std is NaN); a first-window std of 0 fails.
    """
    std = np.asarray(std_per_frame, dtype=np.float64)
    finite = np.asarray(finite_per_frame, dtype=bool)
    if std.ndim != 1 or std.shape != finite.shape:
        raise ValueError(f"std_per_frame and finite_per_frame must be equal-length 1-D, got {std.shape}, "
                         f"{finite.shape}")
    if len(std) < 2 * window:
        raise ValueError(f"need at least {2 * window} frames for a first/last window of {window}, got {len(std)}")

    def wmean(x: np.ndarray, ok: np.ndarray) -> float | None:
        return float(x[ok].mean()) if ok.any() else None

    first = wmean(std[:window], finite[:window])
    last = wmean(std[-window:], finite[-window:])
    ratio = None if first in (None, 0.0) or last is None else last / first
    nonfinite = int((~finite).sum())
    passed = nonfinite == 0 and ratio is not None and ratio >= min_std_ratio
    return {
        "frames": int(len(std)), "nonfinite_frames": nonfinite,
        "first_nonfinite_frame": int(np.argmax(~finite)) if nonfinite else None,
        "std_first": first, "std_last": last, "std_ratio": ratio, "window": window,
        "threshold": f"all frames finite and std_last >= {min_std_ratio} * std_first",
        "min_std_ratio": min_std_ratio, "pass": bool(passed),
    }


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets that this evaluation measures, with the measured values and met / not met."""
    cands = results["candidates"]
    out: dict[str, Any] = {}
    model = cands.get("model")
    if model is None:
        return out
    acc = model["action_following"]["accuracy"]
    out["action_following_accuracy>=0.8"] = {"value": acc, "met": None if acc is None else acc >= 0.8}
    first = next(iter(model["fidelity"]["psnr"]), None)
    base = cands.get("repeat_first_frame")
    if first is not None and base is not None:
        m, b = model["fidelity"]["psnr"][first]["mean"], base["fidelity"]["psnr"][first]["mean"]
        gain = None if m is None or b is None else m - b
        out[f"psnr_{first}_gain_over_repeat_first_frame>=3dB"] = {
            "value": gain, "model": m, "baseline": b, "met": None if gain is None else gain >= 3.0}
    warp = cands.get("warp")
    if warp is not None:
        for h, cell in model["fidelity"]["psnr"].items():
            m, w = cell["mean"], warp["fidelity"]["psnr"][h]["mean"]
            gain = None if m is None or w is None else m - w
            out[f"psnr_{h}_gain_over_warp>=0dB"] = {"value": gain, "model": m, "baseline": w,
                                                   "met": None if gain is None else gain >= 0.0}
    teacher = cands.get("teacher")
    if first is not None and teacher is not None:
        m, t = model["fidelity"]["psnr"][first]["mean"], teacher["fidelity"]["psnr"][first]["mean"]
        gap = None if m is None or t is None else t - m
        out[f"student_within_1dB_of_teacher_psnr_{first}"] = {"value": gap, "met": None if gap is None else gap <= 1.0}
    if "stability" in model:
        st = model["stability"]
        out[f"stable_over_{st['frames']}_frames"] = {"value": st["std_ratio"], "met": st["pass"]}
        fps = st.get("frames_per_second")
        out["streaming_frames_per_second>=20 (this machine, incl. decode)"] = {
            "value": fps, "met": None if fps is None else fps >= 20.0}
    return out
