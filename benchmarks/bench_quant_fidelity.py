"""What post-training quantization costs in fidelity, measured on CPU with a trained bundle on real inputs.

    python benchmarks/bench_quant_fidelity.py --json quant_fidelity.json          # bundled model, fp8 and int8
    python benchmarks/bench_quant_fidelity.py --model PATH --modes fp8 fp8-static --frames 65

Inputs are the fidelity evaluation's held-out episodes (twin-world first frame + camera path, rendered ground
truth; see sana_wm_env/evaluation/fidelity.py). For every mode (ModelOpt fake quantization of the streaming
student; camera branch, embedders and final layer stay in float):

- ``pass_rel_err``: relative L2 error ||v_q - v|| / ||v|| of the transformer's velocity on *identical* inputs:
  every denoising call of the float model's generation (latents, timesteps, camera, cache) is replayed through
  the quantized model. Median and max over calls.
- ``psnr_vs_float``: PSNR of the quantized model's generated frames against the float model's (same seeds),
  per horizon: how far whole generations drift.
- ``psnr_vs_render`` / ``ssim_vs_render``: against the twin-world render, per horizon, next to the float model's.

Modes: ``fp8`` / ``int8`` with dynamic activation scales; ``fp8-static`` with static (max-calibrated) scales from
the float model's first episode (that episode is then also scored: a slight optimism, stated in the JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sana_wm_env.evaluation import EvalConfig, plan_episodes
from sana_wm_env.evaluation.fidelity import _episode_seed, _generate, _intrinsics, _render_all
from sana_wm_env.evaluation.metrics import PSNR_CAP_DB, psnr, ssim
from sana_wm_env.scenes import SceneRenderer, make_scene
from world_model import quantization as Q
from world_model.bundles import load_world_model

MODES = ("fp8", "int8", "fp8-static", "nvfp4")


class Recorder:
    """Wraps a transformer's forward_stream; keeps the inputs and outputs of every denoising (non-cache) call."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, []
        self.original = model.forward_stream

    def __enter__(self) -> Recorder:
        def forward_stream(*args, **kwargs):
            out, cache = self.original(*args, **kwargs)
            if not kwargs.get("write_cache", False):
                self.calls.append((args, kwargs, out.detach().clone()))
            return out, cache

        self.model.forward_stream = forward_stream
        return self

    def __exit__(self, *exc) -> None:
        del self.model.forward_stream


def horizons_of(frames: int) -> list[tuple[int, int]]:
    out = [(1, 8), (9, 32), (33, 128)]
    return [(lo, min(hi, frames - 1)) for lo, hi in out if lo <= frames - 1]


def pooled(values: torch.Tensor, lo: int, hi: int) -> float:
    return float(values[lo - 1 : hi].mean())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="bundle name or folder (default: the bundled model)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=["fp8", "int8", "fp8-static"])
    p.add_argument("--episodes-per-family", type=int, default=1)
    p.add_argument("--frames", type=int, default=33, help="frames per episode, frame 0 included")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    wm = load_world_model(args.model, device=args.device)
    cfg = EvalConfig(image_hw=tuple(wm.image_hw), fov_deg=wm.fov_deg, fps=wm.fps,
                     episodes_per_family=args.episodes_per_family, frames=args.frames, revisit_episodes=0,
                     stability_frames=0)
    episodes = plan_episodes(cfg)["main"]
    k4 = _intrinsics(cfg)
    renders = []
    for ep in episodes:
        with SceneRenderer(make_scene(ep.family, ep.scene_seed), *cfg.image_hw, depth=False) as renderer:
            renders.append(_render_all(renderer, ep.poses, k4))

    def generate_all(world_model, record: bool):
        outs, calls = [], []
        gen = world_model.streaming_generator()
        for ep, gt in zip(episodes, renders, strict=True):
            with torch.inference_mode():
                if record:
                    with Recorder(world_model.student) as rec:
                        outs.append(_generate(gen, gt[0], k4, ep.poses, seed=_episode_seed(cfg, ep)))
                    calls.append(rec.calls)
                else:
                    outs.append(_generate(gen, gt[0], k4, ep.poses, seed=_episode_seed(cfg, ep)))
        return outs, calls

    gts = [torch.from_numpy(np.ascontiguousarray(g)).movedim(-1, -3).double() / 255.0 for g in renders]
    t0 = time.perf_counter()
    float_out, float_calls = generate_all(wm, record=True)
    float_seconds = time.perf_counter() - t0
    hz = horizons_of(args.frames)

    def vs_render(outs):
        ps = torch.stack([psnr(o[1:], g[1:], max_db=PSNR_CAP_DB) for o, g in zip(outs, gts, strict=True)]).mean(0)
        ss = torch.stack([ssim(o[1:], g[1:]) for o, g in zip(outs, gts, strict=True)]).mean(0)
        return ({f"{lo}-{hi}": round(pooled(ps, lo, hi), 3) for lo, hi in hz},
                {f"{lo}-{hi}": round(pooled(ss, lo, hi), 4) for lo, hi in hz})

    float_psnr, float_ssim = vs_render(float_out)
    results = {"float": {"psnr_vs_render": float_psnr, "ssim_vs_render": float_ssim,
                         "generate_seconds": round(float_seconds, 2)}}
    for mode in args.modes:
        q = load_world_model(args.model, device=args.device)
        calibration = None
        if mode == "fp8-static":
            first = float_calls[0]

            def calibration(model, first=first):
                with torch.no_grad():
                    for a, kw, _ in first:
                        model.forward_stream(*a, **kw)

        try:
            Q.quantize(q.student, mode.removesuffix("-static"), calibration=calibration)
        except Q.QuantizationUnavailableError as err:
            results[mode] = {"result": "unavailable", "error": str(err)}
            continue
        errs = []
        with torch.inference_mode():
            for calls in float_calls:
                for a, kw, ref in calls:
                    out, _ = q.student.forward_stream(*a, **kw)
                    errs.append(float((out.float() - ref.float()).norm() / ref.float().norm()))
        t0 = time.perf_counter()
        q_out, _ = generate_all(q, record=False)
        q_seconds = time.perf_counter() - t0
        drift = torch.stack([psnr(a[1:], b[1:], max_db=PSNR_CAP_DB) for a, b in zip(q_out, float_out, strict=True)]
                            ).mean(0)
        q_psnr, q_ssim = vs_render(q_out)
        results[mode] = {
            "result": "ok", "quantized_modules": len(Q.quantization_summary(q.student).quantized),
            "calibration": "static (max over the float model's first episode, which is also scored)"
            if calibration else "dynamic (per call)",
            "pass_rel_err": {"median": round(statistics.median(errs), 5), "max": round(max(errs), 5),
                             "calls": len(errs)},
            "psnr_vs_float": {f"{lo}-{hi}": round(pooled(drift, lo, hi), 3) for lo, hi in hz},
            "psnr_vs_render": q_psnr, "ssim_vs_render": q_ssim,
            "delta_psnr_vs_render": {k: round(q_psnr[k] - float_psnr[k], 3) for k in q_psnr},
            "generate_seconds": round(q_seconds, 2),
        }
    out = {
        "format": "sana-wm-env/bench-quant-fidelity", "version": 1,
        "command": " ".join(["python", "benchmarks/bench_quant_fidelity.py", *(argv if argv is not None
                                                                               else sys.argv[1:])]),
        "model": wm.name, "episodes": len(episodes), "frames": args.frames, "image_hw": list(cfg.image_hw),
        "device": args.device, "threads": args.threads, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "results": results,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
