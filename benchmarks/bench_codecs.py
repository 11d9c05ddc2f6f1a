"""Which small codec gives the better frames for the cost: fixed patch codecs vs a tiny learned LTX-2 VAE.

    python benchmarks/bench_codecs.py --data data/twin64 --out outputs/bench_codecs            # full measurement
    python benchmarks/bench_codecs.py --data data/twin64 --vae-steps 20 --val-clips 4          # smoke run

Data: twin-world clips written by ``sana-wm dataset make`` (``dataset.json`` + ``clips/``), read with
``TwinClipDataset``. The last ``--val-clips`` clips are held out for evaluation; the VAE trains on the rest.

Candidates (all through the ``LatentCodec`` interface, ``encode`` / ``decode`` of video in [-1, 1]):

- ``PatchCodec`` variants given as ``P:S:C`` (patch, temporal stride, kept channels); parameter-free. Default: the
  shipped 8:2:96 plus 8:2:64 and 8:1:64.
- A tiny ``AutoencoderKLLTX2Video`` trained from scratch, laid out so its latent grid equals the patch codec's
  token grid (spatial stride 8, temporal stride 2): space-to-depth ``--vae-patch`` (4 or 2, LTX-2 itself uses 4)
  then ``log2(8 / patch)`` down blocks, the last one "spatiotemporal", the others "spatial"; mirrored up blocks;
  block widths ``--vae-width * 2**i``; causal encoder and causal decoder (so ``LTX2Codec`` streams it exactly).
  It takes ``F = 1 + 2k`` frames, like the stride-2 patch codec. Loss: L1 (or MSE) on a reparameterised posterior
  sample + ``--vae-kl`` x the KL to N(0, I) (mean per latent element), AdamW with warm-up and cosine decay.
  After training, ``latents_mean`` / ``latents_std`` are set to the per-channel statistics of the posterior mode
  on training clips (so ``LTX2Codec`` hands the world model unit-variance latents), the VAE is saved with
  ``save_pretrained`` to ``<out>/vae-<C>ch/vae`` and evaluated as ``LTX2Codec.from_pretrained(<out>/vae-<C>ch)``,
  the exact object a world model gets from ``sana-wm train --codec ltx2:<out>/vae-<C>ch``. ``--vae-channels``
  takes several values (one VAE each), e.g. ``32 96`` to compare at the shipped codec's latent size too.

Metrics per candidate on the held-out clips (first ``--eval-frames`` frames of each, default the longest length
every candidate accepts): PSNR (dB, frames in [0, 1], per frame, capped at 100 dB, mean over frames; also frame 0
alone and pooled-MSE PSNR), SSIM, latent values per frame (``C*h*w / temporal_stride``, the size of what the world
model predicts per video frame), tokens per latent frame (``h*w``), latent std, encode / decode time per frame
(median of ``--repeats`` timed calls on one held-out clip, after a warm-up call, ``--threads`` threads), the same
for a streamed decode in ``--chunk`` latent frames per ``decode_chunk`` call (what the streaming generator does)
with its largest difference from the one-shot decode, parameter count and, for the VAE, training time and a
loss-curve summary. Prints a markdown table; ``--json`` gets every number plus versions, machine and the exact
command line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sana_wm_env.datasets import TwinClipDataset
from sana_wm_env.evaluation.metrics import PSNR_CAP_DB, psnr, ssim
from sana_wm_env.evaluation.report import versions
from world_model.codecs import LatentCodec, LTX2Codec, PatchCodec
from world_model.video import from_uint8

DEFAULT_PATCHES = ("8:2:96", "8:2:64", "8:1:64")
TARGET_SPATIAL, TARGET_TEMPORAL = 8, 2


# ---------------------------------------------------------------------------------------------------- candidates
def parse_patch(text: str) -> tuple[int, int, int]:
    """``P:S:C`` -> (patch_size, temporal_stride, latent_channels), checked against PatchCodec's limits."""
    parts = text.split(":")
    try:
        p, s, c = (int(v) for v in parts)
    except ValueError:
        raise ValueError(f"--patch must be P:S:C (patch, temporal stride, channels) integers, got {text!r}") from None
    if p < 1 or s < 1 or not 1 <= c <= 3 * s * p * p:
        raise ValueError(f"--patch {text}: need P, S >= 1 and 1 <= C <= 3*S*P*P = {3 * s * p * p}")
    return p, s, c


def vae_kwargs(latent_channels: int, patch_size: int, width: int, layers: int) -> dict[str, Any]:
    """``AutoencoderKLLTX2Video`` kwargs for spatial stride 8 / temporal stride 2 (see module docs)."""
    if patch_size not in (1, 2, 4, 8):
        raise ValueError(f"--vae-patch must be 1, 2, 4 or 8 (spatial stride 8 = patch * 2**blocks), got {patch_size}")
    blocks = int(math.log2(TARGET_SPATIAL // patch_size))
    if blocks == 0:
        raise ValueError("--vae-patch 8 leaves no down block for the temporal stride 2; use 4 (default), 2 or 1")
    for name, value in (("--vae-channels", latent_channels), ("--vae-width", width), ("--vae-layers", layers)):
        if value < 1:
            raise ValueError(f"{name} must be a positive int, got {value}")
    types = ("spatial",) * (blocks - 1) + ("spatiotemporal",)
    widths = tuple(width * 2**i for i in range(blocks))
    # diffusers' down-sampler adds a channel-grouped space-to-depth residual: out = in * stride_volume / group.
    prev = latent_channels  # the encoder's conv_in maps to latent_channels (diffusers layout)
    for kind, out in zip(types, widths, strict=True):
        vol = 4 if kind == "spatial" else 8
        if out % vol or (prev * vol) % out:
            raise ValueError(
                f"--vae-width {width} / --vae-channels {latent_channels}: a {kind} down block from {prev} to {out} "
                f"channels needs {out} divisible by {vol} and {prev}*{vol} divisible by {out}"
            )
        prev = out
    if width % 2:
        raise ValueError(f"--vae-width must be even (the up-samplers halve it), got {width}")
    n = blocks
    return dict(
        latent_channels=latent_channels,
        patch_size=patch_size,
        block_out_channels=widths,
        down_block_types=("LTX2VideoDownBlock3D",) * n,
        layers_per_block=(layers,) * (n + 1),
        spatio_temporal_scaling=(True,) * n,
        downsample_type=types,
        decoder_block_out_channels=widths,
        decoder_layers_per_block=(layers,) * (n + 1),
        decoder_spatio_temporal_scaling=(True,) * n,
        decoder_inject_noise=(False,) * (n + 1),
        upsample_type=tuple(reversed(types)),
        upsample_residual=(True,) * n,
        upsample_factor=(2,) * n,
        timestep_conditioning=False,
        encoder_causal=True,
        decoder_causal=True,
        spatial_compression_ratio=TARGET_SPATIAL,
        temporal_compression_ratio=TARGET_TEMPORAL,
    )


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------- data
def to_video(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) or (T, H, W, 3) -> float32 (B, 3, T, H, W) in [-1, 1]."""
    if rgb.dtype != torch.uint8:
        raise ValueError(f"rgb must be uint8 frames (..., T, H, W, 3) as TwinClipDataset yields, got {rgb.dtype}")
    if rgb.ndim == 4:
        rgb = rgb[None]
    return from_uint8(rgb).movedim(2, 1)  # (B, T, 3, H, W) -> (B, 3, T, H, W)


def to_unit(video: torch.Tensor) -> torch.Tensor:
    """(1, 3, T, H, W) in [-1, 1] -> (T, 3, H, W) float64 in [0, 1] for the metrics."""
    return video[0].movedim(1, 0).double().add(1.0).div(2.0)


def stack_rgb(items: list[dict]) -> torch.Tensor:
    """DataLoader collate: the ``rgb`` of each item -> uint8 (B, T, H, W, 3)."""
    return torch.stack([item["rgb"] for item in items])


# ---------------------------------------------------------------------------------------------------- VAE training
def train_vae(vae, train_set, args, device: torch.device) -> dict[str, Any]:
    """Train ``vae`` in place on random ``--vae-frames`` crops; returns timing and the loss curve summary."""
    from torch.utils.data import DataLoader, RandomSampler
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(args.seed)
    sampler = RandomSampler(train_set, replacement=True, num_samples=args.vae_steps * args.vae_batch, generator=gen)
    loader = DataLoader(train_set, batch_size=args.vae_batch, sampler=sampler, num_workers=args.workers,
                        collate_fn=stack_rgb)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.01)
    warmup = min(args.vae_warmup, max(1, args.vae_steps // 10))

    def lr_at(step: int) -> float:  # linear warm-up, cosine to 10 %
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, args.vae_steps - warmup)
        return 0.1 + 0.45 * (1.0 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    vae.train()
    losses, recs, kls = [], [], []
    t0 = time.perf_counter()
    bar = tqdm(loader, total=args.vae_steps, desc="train vae", unit="step", disable=args.no_progress)
    for rgb in bar:
        x = to_video(rgb).to(device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn_like(post.mean)
        y = vae.decode(z, temb=None).sample
        rec = (y - x).abs().mean() if args.vae_loss == "l1" else (y - x).square().mean()
        kl = 0.5 * (post.mean.square() + post.var - 1.0 - post.logvar).mean()
        loss = rec + args.vae_kl * kl
        if not torch.isfinite(loss):
            raise RuntimeError(f"VAE training diverged at step {len(losses)} (loss {float(loss)}); lower --vae-lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        recs.append(rec.item())
        kls.append(kl.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", rec=f"{recs[-1]:.4f}")
    seconds = time.perf_counter() - t0
    vae.eval()
    k = max(1, len(losses) // 20)  # 20 windows
    curve = [[i + k, round(statistics.fmean(losses[i : i + k]), 5)] for i in range(0, len(losses), k)]
    tail = max(1, len(losses) // 10)
    return {
        "steps": len(losses), "batch": args.vae_batch, "frames": args.vae_frames, "lr": args.vae_lr,
        "warmup": warmup, "loss": args.vae_loss, "kl_weight": args.vae_kl,
        "seconds": round(seconds, 1), "s_per_step": round(seconds / max(1, len(losses)), 4),
        "loss_first": round(losses[0], 5), "loss_last10pct": round(statistics.fmean(losses[-tail:]), 5),
        "loss_min": round(min(losses), 5), "rec_last10pct": round(statistics.fmean(recs[-tail:]), 5),
        "kl_last10pct": round(statistics.fmean(kls[-tail:]), 5), "curve": curve,
    }


@torch.no_grad()
def set_latent_stats(vae, train_set, args, device: torch.device) -> dict[str, Any]:
    """Per-channel mean / std of the posterior mode over a few training crops -> the VAE's normalisation buffers."""
    count = min(len(train_set), args.stats_clips)
    idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed + 1))[:count]
    mus = [vae.encode(to_video(train_set[int(i)]["rgb"]).to(device)).latent_dist.mode() for i in idx]
    flat = torch.cat([m.movedim(1, -1).reshape(-1, m.shape[1]) for m in mus]).float()
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    vae.latents_mean.copy_(mean.to(vae.latents_mean))
    vae.latents_std.copy_(std.to(vae.latents_std))
    return {"clips": count, "raw_std_min": round(float(std.min()), 4), "raw_std_max": round(float(std.max()), 4)}


# ---------------------------------------------------------------------------------------------------- evaluation
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def stream_decode(codec: LatentCodec, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    """Decode ``latents`` ``chunk`` latent frames at a time with ``decode_chunk`` (as a streaming generator does)."""
    state, parts = codec.decode_stream_start(), []
    for start in range(0, latents.shape[2], chunk):
        video, state = codec.decode_chunk(latents[:, :, start : start + chunk], state)
        parts.append(video)
    return torch.cat(parts, dim=2)


@torch.inference_mode()
def evaluate(
    codec: LatentCodec, videos: list[torch.Tensor], repeats: int, chunk: int, device: torch.device
) -> dict[str, Any]:
    """Reconstruction metrics over ``videos``; median encode / decode / streamed-decode time per frame on the first."""
    per_frame_psnr, per_frame_ssim, sq_err, n_px, latents = [], [], 0.0, 0, []
    for video in videos:
        x = video.to(device)
        z = codec.encode(x)
        y = codec.decode(z)
        if y.shape != x.shape:
            raise RuntimeError(f"{type(codec).__name__} decoded {tuple(y.shape)} from {tuple(x.shape)}")
        a, b = to_unit(y.cpu()), to_unit(video)
        per_frame_psnr.append(psnr(a, b, max_db=PSNR_CAP_DB))
        per_frame_ssim.append(ssim(a, b))
        sq_err += float((a - b).square().sum())
        n_px += a.numel()
        latents.append(z.float().cpu().flatten())
    ps = torch.stack(per_frame_psnr)  # (clips, frames)
    frames = videos[0].shape[2]
    x = videos[0].to(device)
    z = codec.encode(x)
    full = codec.decode(z)  # warm-up
    stream_diff = float((stream_decode(codec, z, chunk) - full).abs().max())
    enc, dec, streamed = [], [], []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        z = codec.encode(x)
        _sync(device)
        t1 = time.perf_counter()
        codec.decode(z)
        _sync(device)
        t2 = time.perf_counter()
        stream_decode(codec, z, chunk)
        _sync(device)
        t3 = time.perf_counter()
        enc.append(t1 - t0)
        dec.append(t2 - t1)
        streamed.append(t3 - t2)
    _, c, t, h, w = z.shape
    s = codec.temporal_stride
    mse = sq_err / n_px
    values = c * h * w / s
    return {
        "latent_channels": c, "spatial_stride": codec.spatial_stride, "temporal_stride": s,
        "latent_grid": [h, w], "tokens_per_latent_frame": h * w, "latent_values_per_frame": values,
        "compression": round(3 * x.shape[-2] * x.shape[-1] / values, 2),
        "latent_std": round(float(torch.cat(latents).std()), 4),
        "psnr_db": round(float(ps.mean()), 3), "psnr_frame0_db": round(float(ps[:, 0].mean()), 3),
        "psnr_later_frames_db": round(float(ps[:, 1:].mean()), 3) if frames > 1 else None,
        "psnr_pooled_db": round(min(PSNR_CAP_DB, 10 * math.log10(1.0 / mse)) if mse > 0 else PSNR_CAP_DB, 3),
        "psnr_min_clip_db": round(float(ps.mean(1).min()), 3),
        "ssim": round(float(torch.stack(per_frame_ssim).mean()), 5),
        "encode_ms_per_frame": round(1e3 * statistics.median(enc) / frames, 4),
        "decode_ms_per_frame": round(1e3 * statistics.median(dec) / frames, 4),
        "stream_decode_ms_per_frame": round(1e3 * statistics.median(streamed) / frames, 4),
        "stream_chunk_latent_frames": chunk, "stream_max_abs_diff": stream_diff,
        "timing_frames": frames, "timing_repeats": repeats,
        "params": param_count(codec),
    }


# ---------------------------------------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]]) -> str:
    head = ("| codec | params | C | tokens / latent frame | latent values / frame | PSNR dB | PSNR f0 | SSIM "
            "| enc ms/f | dec ms/f | stream dec ms/f | train s |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        train = r.get("train", {}).get("seconds")
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['latent_channels']} | {r['tokens_per_latent_frame']} "
            f"| {r['latent_values_per_frame']:g} | {r['psnr_db']:.2f} | {r['psnr_frame0_db']:.2f} | {r['ssim']:.4f} "
            f"| {r['encode_ms_per_frame']:.3f} | {r['decode_ms_per_frame']:.3f} "
            f"| {r['stream_decode_ms_per_frame']:.3f} | {'-' if train is None else train} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="twin dataset folder (sana-wm dataset make)")
    p.add_argument("--out", type=Path, default=Path("outputs/bench_codecs"),
                   help="where the trained VAEs are saved (<out>/vae-<C>ch/vae) and, by default, the JSON")
    p.add_argument("--json", type=Path, default=None, help="results JSON (default: <out>/bench_codecs.json)")
    p.add_argument("--val-clips", type=int, default=32, help="held-out clips (the dataset's last ones)")
    p.add_argument("--eval-frames", type=int, default=None,
                   help="frames per held-out clip (default: the longest length every candidate accepts)")
    p.add_argument("--patch", nargs="*", default=list(DEFAULT_PATCHES), metavar="P:S:C",
                   help=f"PatchCodec candidates (default: {' '.join(DEFAULT_PATCHES)}); none: only the VAE")
    p.add_argument("--no-vae", action="store_true", help="skip the learned VAE")
    p.add_argument("--vae-channels", type=int, nargs="+", default=[32],
                   help="VAE latent channels; several values train one VAE each (e.g. 32 96)")
    p.add_argument("--vae-patch", type=int, default=4, help="VAE space-to-depth patch (4: 1 block, 2: 2 blocks)")
    p.add_argument("--vae-width", type=int, default=64, help="width of the first block (doubles per block)")
    p.add_argument("--vae-layers", type=int, default=1, help="resnet layers per block (and in the mid block)")
    p.add_argument("--vae-steps", type=int, default=2000)
    p.add_argument("--vae-batch", type=int, default=4, help="clips per training step")
    p.add_argument("--vae-frames", type=int, default=9, help="frames per training clip (1 + 2k)")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-warmup", type=int, default=100)
    p.add_argument("--vae-loss", choices=("l1", "mse"), default="l1")
    p.add_argument("--vae-kl", type=float, default=1e-5, help="KL weight (KL as mean per latent element)")
    p.add_argument("--stats-clips", type=int, default=64, help="training clips for the latent mean / std")
    p.add_argument("--repeats", type=int, default=5, help="timed encode / decode calls (median)")
    p.add_argument("--chunk", type=int, default=3,
                   help="latent frames per decode_chunk call when timing streamed decode (twin-s generator step: 3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for VAE training")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if len(set(args.vae_channels)) != len(args.vae_channels):
        raise ValueError(f"--vae-channels must not repeat a value, got {args.vae_channels}")
    for name in ("val_clips", "vae_steps", "vae_batch", "repeats", "chunk", "threads", "stats_clips"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive int, got {getattr(args, name)}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.vae_frames < 1 or (args.vae_frames - 1) % TARGET_TEMPORAL:
        raise ValueError(f"--vae-frames must be 1 + {TARGET_TEMPORAL}k (the VAE's temporal stride), "
                         f"got {args.vae_frames}")
    patches = [parse_patch(t) for t in args.patch]
    if not patches and args.no_vae:
        raise ValueError("nothing to measure: --patch is empty and --no-vae is set")
    layouts = {} if args.no_vae else {c: vae_kwargs(c, args.vae_patch, args.vae_width, args.vae_layers)
                                      for c in args.vae_channels}
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    t_start = time.perf_counter()

    # -- data
    full = TwinClipDataset(args.data, random_crop=False, relative=False)
    n_clips, stored = len(full), full.spec.frames
    n_train = n_clips - args.val_clips
    if n_train < (0 if args.no_vae else 1):
        raise ValueError(f"--val-clips {args.val_clips} leaves {n_train} training clips of {n_clips} in {args.data}")
    strides = [s for _, s, _ in patches] + ([] if args.no_vae else [TARGET_TEMPORAL])
    step = math.lcm(*strides)
    eval_frames = args.eval_frames if args.eval_frames is not None else 1 + step * ((stored - 1) // step)
    if not 1 <= eval_frames <= stored or (eval_frames - 1) % step:
        raise ValueError(f"--eval-frames must be 1 + {step}k and at most {stored} (the stored clip length), "
                         f"got {eval_frames}")
    val_set = TwinClipDataset(args.data, num_frames=eval_frames, random_crop=False, relative=False)
    val_positions = range(n_train, n_clips)
    videos = [to_video(val_set[i]["rgb"]) for i in val_positions]
    hw = tuple(videos[0].shape[-2:])
    print(f"data: {args.data} ({n_clips} clips x {stored} frames, {hw[0]}x{hw[1]}); train on {n_train}, "
          f"evaluate on the last {len(videos)} clips x {eval_frames} frames")

    rows: list[dict[str, Any]] = []
    for p, s, c in patches:
        codec = PatchCodec(patch_size=p, temporal_stride=s, latent_channels=c).to(device)
        name = f"patch {p}/{s}/{c}" + (" (shipped)" if (p, s, c) == (8, 2, 96) else "")
        row = {"name": name, "type": "patch", "config": codec.to_config(), **evaluate(codec, videos, args.repeats,
                                                                                      args.chunk, device)}
        rows.append(row)
        print(f"{name}: {row['psnr_db']:.2f} dB")

    if not args.no_vae:
        from diffusers import AutoencoderKLLTX2Video

        from world_model.codecs import ltx2_strides

        train_set = torch.utils.data.Subset(
            TwinClipDataset(args.data, num_frames=args.vae_frames, random_crop=True, relative=False), range(n_train)
        )
        for channels, kwargs in layouts.items():
            spatial, temporal = ltx2_strides(kwargs)
            torch.manual_seed(args.seed)
            vae = AutoencoderKLLTX2Video(**kwargs).to(device)
            print(f"VAE: strides spatial {spatial} / temporal {temporal} (takes F = 1 + {temporal}k frames), "
                  f"latent {channels} ch, patch {args.vae_patch}, down {kwargs['downsample_type']}, "
                  f"widths {kwargs['block_out_channels']}, {param_count(vae):,} parameters")
            train = train_vae(vae, train_set, args, device)
            stats = set_latent_stats(vae, train_set, args, device)
            folder = args.out / f"vae-{channels}ch"  # the VAE goes to <folder>/vae: `--codec ltx2:<folder>` loads it
            vae.save_pretrained(str(folder / "vae"))
            codec = LTX2Codec.from_pretrained(folder).to(device)
            if (codec.spatial_stride, codec.temporal_stride) != (spatial, temporal):
                raise RuntimeError(f"reloaded VAE has strides {(codec.spatial_stride, codec.temporal_stride)}")
            name = f"ltx2-vae {channels}ch p{args.vae_patch} w{args.vae_width}"
            layout = {
                "path": str(folder), "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
                "spatial_stride": spatial, "temporal_stride": temporal, "params_encoder": param_count(vae.encoder),
                "params_decoder": param_count(vae.decoder), "latent_stats": stats,
            }
            row = {"name": name, "type": "ltx2", "config": codec.to_config(), "vae": layout, "train": train,
                   **evaluate(codec, videos, args.repeats, args.chunk, device)}
            rows.append(row)
            print(f"{name}: {row['psnr_db']:.2f} dB after {train['steps']} steps ({train['seconds']} s)")

    import diffusers

    result = {
        "format": "sana-wm-env/bench-codecs", "version": 1,
        "command": " ".join(["python", "benchmarks/bench_codecs.py", *(argv if argv is not None else sys.argv[1:])]),
        "versions": {**versions(), "diffusers": diffusers.__version__},
        "machine": {"processor": platform.processor() or platform.machine(), "platform": platform.platform(),
                    "cpu_count": os.cpu_count()},
        "device": str(device), "threads": args.threads, "seed": args.seed,
        "data": {"root": str(args.data), "clips": n_clips, "stored_frames": stored, "image_hw": list(hw),
                 "train_clips": n_train, "val_clips": len(videos), "eval_frames": eval_frames},
        "psnr": f"per frame on [0, 1] frames, capped at {PSNR_CAP_DB:g} dB, mean over frames and clips",
        "rows": rows, "seconds": round(time.perf_counter() - t_start, 1),
    }
    print()
    print(table(rows))
    path = args.json if args.json is not None else args.out / "bench_codecs.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
