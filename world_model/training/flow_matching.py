"""Flow-matching training targets: per-frame timesteps, the clean first-frame condition, the chunk-causal
diffusion-forcing mixture and the loss.

Conventions (docs/architecture.md#generation-modes-and-training, as in :mod:`world_model.sampling`):
``x_sigma = (1 - sigma) * x0 + sigma * noise``;
the model predicts ``v = noise - x0`` at timestep ``1000 * sigma``. Everything here works on *sigmas* in
[0, 1] of shape ``(B, T)`` (one per latent frame); multiply by 1000 for the model's timestep.

Clean frames (``sigma == 0``: the conditioning first frame, teacher-forced context chunks) carry no loss: the
model sees ``x0`` there, and ``v = noise - x0`` would ask it to guess the noise. :func:`flow_matching_loss`
takes the mask that says which frames are noisy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..sampling import shift_sigmas

# Upstream chunk-causal "df" task mixture (docs/architecture.md#generation-modes-and-training).
DEFAULT_CHUNK_MIXTURE: dict[str, float] = {
    "same_t": 0.1,
    "incremental": 0.4,
    "last_chunk_anchor": 0.4,
    "teacher_forcing_clean": 0.1,
}
CHUNK_MODES: tuple[str, ...] = tuple(DEFAULT_CHUNK_MIXTURE)


def _check_bt(batch: int, num_frames: int) -> None:
    for name, v in (("batch", batch), ("num_frames", num_frames)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def logit_normal(
    shape: Sequence[int], *, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Unshifted noise levels ``sigmoid(N(mean, std))`` in (0, 1), float32."""
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    z = torch.randn(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    return torch.sigmoid(z * std + mean)


def sample_frame_sigmas(
    batch: int, num_frames: int, *, shift: float = 1.0, mean: float = 0.0, std: float = 1.0,
    generator: torch.Generator | None = None, device: torch.device | str | None = None,
) -> torch.Tensor:
    """Independent per-frame sigmas ``(B, T)``: ``shift_sigmas(sigmoid(N(mean, std)), shift)``.

    This is the bidirectional recipe (logit-normal(0, 1) per frame, then the resolution shift; upstream
    trains with shift 9.95 at 720p). ``shift > 1`` moves mass to high noise.
    """
    _check_bt(batch, num_frames)
    u = logit_normal((batch, num_frames), mean=mean, std=std, generator=generator, device=device)
    return shift_sigmas(u, shift)


def apply_first_frame_condition(
    sigmas: torch.Tensor, prob: float, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make latent frame 0 clean (sigma 0) for each clip with probability ``prob`` (the image condition).

    Returns ``(sigmas, conditioned)`` with ``conditioned`` a (B,) bool tensor. Conditioned frames are clean
    and so are excluded from the loss by :func:`noisy_mask`. Upstream uses ``prob = 0.9``.
    """
    if sigmas.ndim != 2:
        raise ValueError(f"sigmas must have shape (B, T), got {tuple(sigmas.shape)}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    b = sigmas.shape[0]
    draw = torch.rand(b, generator=generator, device=sigmas.device if generator is None else generator.device)
    cond = draw.to(sigmas.device) < prob
    out = sigmas.clone()
    out[cond, 0] = 0.0
    return out, cond


def noisy_mask(sigmas: torch.Tensor) -> torch.Tensor:
    """Frames that carry loss: ``sigma > 0`` (clean frames are conditions, not targets)."""
    return sigmas > 0


def check_mixture(probs: Mapping[str, float]) -> dict[str, float]:
    """Validate a chunk mixture: keys among :data:`CHUNK_MODES`, non-negative, summing to 1 (within 1e-6)."""
    if not isinstance(probs, Mapping):
        raise ValueError(f"chunk mixture must be a mapping {{mode: probability}}, got {type(probs).__name__}")
    unknown = sorted(set(probs) - set(CHUNK_MODES))
    if unknown:
        raise ValueError(f"chunk mixture has unknown modes {unknown}; known: {list(CHUNK_MODES)}")
    out = {m: float(probs.get(m, 0.0)) for m in CHUNK_MODES}
    if any(p < 0 for p in out.values()) or abs(sum(out.values()) - 1.0) > 1e-6:
        raise ValueError(f"chunk mixture probabilities must be >= 0 and sum to 1, got {dict(probs)}")
    return out


def sample_chunk_sigmas(
    batch: int,
    bounds: Sequence[tuple[int, int]],
    *,
    mixture: Mapping[str, float] = DEFAULT_CHUNK_MIXTURE,
    shift: float = 1.0,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chunk sigmas ``(B, T)`` for chunk-causal (diffusion-forcing) training, and each clip's mode index.

    ``bounds`` are the latent-frame chunk boundaries ``[(0, c1), (c1, c2), ...]`` (``config.chunk_bounds(T)``);
    every frame of a chunk shares one sigma. Per clip a mode is drawn from ``mixture`` (index into
    :data:`CHUNK_MODES`), a base level ``tau = sigmoid(N(mean, std))`` (unshifted), and with ``C`` chunks:

    - ``same_t``: every chunk at ``tau``.
    - ``incremental``: a frontier chunk ``f ~ Uniform{0..C-1}``; chunk ``j`` at
      ``clip(tau + (j - f) / C, 0, 1)``: the frontier is at ``tau``, each earlier chunk ``1/C`` cleaner, each
      later one ``1/C`` noisier: the staggered state of a chunk-by-chunk sampler in which chunk ``j`` starts
      denoising a ``1/C`` of the schedule after chunk ``j-1`` (upstream ``ChunkFlowEuler``).
    - ``last_chunk_anchor``: the same staircase with the frontier fixed at the last chunk (``f = C - 1``), so the
      last chunk is at ``tau`` and earlier chunks are progressively cleaner (reaching 0 where clipped).
    - ``teacher_forcing_clean``: ``f = C - 1``; every chunk before it is clean (sigma 0, ground-truth context, no
      loss) and the last chunk is at ``tau``: exactly what a streaming generator sees (clean cache, noisy
      current chunk).

    Levels are shifted last (``shift_sigmas(., shift)``; 0 and 1 are fixed points). Exactly-0 levels are clean
    context. With one chunk every mode reduces to ``same_t``.
    """
    probs = check_mixture(mixture)
    bounds = [(int(a), int(b)) for a, b in bounds]
    if not bounds or bounds[0][0] != 0 or any(b <= a for a, b in bounds) or any(
        b0[1] != b1[0] for b0, b1 in zip(bounds, bounds[1:])
    ):
        raise ValueError(f"bounds must be contiguous non-empty chunks starting at frame 0, got {bounds}")
    _check_bt(batch, bounds[-1][1])
    gdev = generator.device if generator is not None else device
    c = len(bounds)
    p = torch.tensor([probs[m] for m in CHUNK_MODES], dtype=torch.float32, device=gdev)
    modes = torch.multinomial(p.expand(batch, -1), 1, generator=generator).squeeze(1)
    tau = logit_normal((batch,), mean=mean, std=std, generator=generator, device=gdev)
    frontier_random = torch.randint(0, c, (batch,), generator=generator, device=gdev)
    j = torch.arange(c, device=gdev, dtype=torch.float32)[None, :]  # (1, C)
    same = modes == CHUNK_MODES.index("same_t")
    frontier = torch.where(modes == CHUNK_MODES.index("incremental"), frontier_random, torch.full_like(modes, c - 1))
    levels = (tau[:, None] + (j - frontier[:, None].float()) / c).clamp(0.0, 1.0)
    levels = torch.where(same[:, None], tau[:, None].expand(-1, c), levels)
    tf = modes == CHUNK_MODES.index("teacher_forcing_clean")
    levels = torch.where(tf[:, None] & (j < c - 1), torch.zeros_like(levels), levels)
    levels = torch.where(tf[:, None] & (j == c - 1), tau[:, None].expand(-1, c), levels)
    sig = shift_sigmas(levels, shift)
    lengths = torch.tensor([b - a for a, b in bounds], device=gdev)
    frames = torch.repeat_interleave(sig, lengths, dim=1)
    return frames.to(device) if device is not None else frames, modes


def noise_latents(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``x_sigma = (1 - sigma) x0 + sigma noise`` with per-frame ``sigmas (B, T)`` on ``x0 (B, C, T, H, W)``."""
    if x0.ndim != 5 or tuple(sigmas.shape) != (x0.shape[0], x0.shape[2]):
        raise ValueError(
            f"sigmas must have shape (B, T) = ({x0.shape[0]}, {x0.shape[2]}) for x0 (B, C, T, H, W), "
            f"got sigmas {tuple(sigmas.shape)} and x0 {tuple(x0.shape)}"
        )
    s = sigmas.to(x0.dtype)[:, None, :, None, None]
    return (1 - s) * x0 + s * noise


def flow_matching_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the frames where ``mask (B, T)`` is true (per-frame MSE, then frame mean).

    ``prediction`` / ``target`` are ``(B, C, T, H, W)`` velocities; computed in float32. Raises if no frame is
    masked in (a batch of only clean frames has no target).
    """
    if prediction.shape != target.shape or prediction.ndim != 5:
        raise ValueError(f"prediction and target must both be (B, C, T, H, W), got {tuple(prediction.shape)} "
                         f"and {tuple(target.shape)}")
    if tuple(mask.shape) != (prediction.shape[0], prediction.shape[2]):
        raise ValueError(f"mask must have shape (B, T) = {(prediction.shape[0], prediction.shape[2])}, "
                         f"got {tuple(mask.shape)}")
    per_frame = (prediction.float() - target.float()).pow(2).mean(dim=(1, 3, 4))  # (B, T)
    m = mask.to(per_frame.dtype)
    n = m.sum()
    if n.item() == 0:
        raise ValueError("mask selects no frame: the batch has no noisy frame to learn from")
    return (per_frame * m).sum() / n
