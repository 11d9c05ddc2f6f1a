"""Figures and the JSON of an evaluation: a contact sheet PNG and a PSNR-against-horizon plot PNG.

Matplotlib is used with the non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np

from world_model.optional import require


def _pyplot():
    """matplotlib's pyplot on the Agg backend; matplotlib is the ``reports`` extra."""
    require("matplotlib", extra="reports", feature="evaluation figures").use("Agg")
    return require("matplotlib.pyplot", extra="reports", feature="evaluation figures")


def contact_sheet(contact: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Grid PNG: for each family a block of rows (ground truth, then each candidate), one column per frame.

    ``contact`` is ``evaluate(...)["_contact"]``: ``{"frame_indices": [...], "ground_truth": {family: uint8
    (n, H, W, 3)}, candidate: {family: uint8 (n, H, W, 3)}, ...}``.
    """
    plt = _pyplot()
    frames = contact["frame_indices"]
    families = list(contact["ground_truth"])
    names = [k for k in contact if k not in ("frame_indices", "ground_truth")]
    if not families:
        raise ValueError("contact holds no ground-truth frames (no main episodes were evaluated)")
    ordered = []
    for f in families:
        ordered.append((f, "ground truth", contact["ground_truth"][f]))
        for n in names:
            if f in contact[n]:
                ordered.append((f, n, contact[n][f]))
    rows = ordered
    ncol = len(frames)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.3 * ncol + 1.6, 1.3 * len(rows) + 0.6), squeeze=False)
    for r, (fam, name, imgs) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r][c]
            ax.imshow(imgs[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("given (frame 0)" if frames[c] == 0 else f"frame {frames[c]}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{fam}\n{name}", fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title or "generated vs ground truth (first main episode of each family)", fontsize=9)
    return _save(fig, path)


def psnr_plot(results: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """PNG: mean PSNR against frame index (horizon) for every candidate, horizon bins shaded, bin means dotted."""
    plt = _pyplot()
    cands = results["candidates"]
    horizons = [tuple(h) for h in results["config"]["horizons"]]
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    styles = {"model": "-", "baseline": "--", "oracle": ":"}
    drawn = 0
    for name, r in cands.items():
        curve = r["fidelity"].get("psnr_per_frame")
        if not curve:
            continue
        x = np.arange(1, len(curve) + 1)
        y = np.minimum(np.asarray(curve, dtype=float), 60.0)
        (line,) = ax.plot(x, y, styles.get(r["kind"], "-"), lw=1.5, label=name)
        drawn += 1
        for h in horizons:
            m = r["fidelity"]["psnr"][f"{h[0]}-{h[1]}"]["mean"]
            if m is not None:
                ax.hlines(min(m, 60.0), h[0], min(h[1], len(curve)), colors=line.get_color(), linestyles=":", lw=1)
    if drawn == 0:
        plt.close(fig)
        raise ValueError("results hold no per-frame PSNR curves (no main episodes were evaluated)")
    last = max(len(r["fidelity"].get("psnr_per_frame") or []) for r in cands.values())
    for i, h in enumerate(horizons):
        if h[0] <= last:
            ax.axvspan(h[0] - 0.5, min(h[1], last) + 0.5, color="0.9" if i % 2 == 0 else "0.97", zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(0.8, last * 1.1)
    ax.set_xlabel("frames after the given first frame (horizon, log scale)")
    ax.set_ylabel("PSNR vs twin render (dB, capped at 60 for display)")
    ax.set_title(title or "PSNR against horizon (dotted: horizon-bin means)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def versions() -> dict[str, str]:
    """Versions of the software that produced an evaluation."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("sana-wm-env", "torch", "numpy", "mujoco", "scipy", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None  # strict JSON has no NaN/inf
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_json(results: dict[str, Any], path: str | Path) -> Path:
    """Write the results (without the contact frames) as strict JSON; NaN/inf become null."""
    from sana_wm_env.outputs import write_text_atomic

    clean = {k: v for k, v in results.items() if not k.startswith("_")}
    return write_text_atomic(path, json.dumps(_json_safe(clean), indent=2, allow_nan=False) + "\n")


def _save(fig, path: str | Path) -> Path:
    """Lay out, write (dpi 100, parent folders created) and close a matplotlib figure."""
    plt = _pyplot()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
