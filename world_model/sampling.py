"""Flow-matching sampling: sigma schedules, the Euler update and classifier-free guidance.

Convention (docs/architecture.md#generation-modes-and-training):
``x_sigma = (1 - sigma) * x0 + sigma * noise``; the model predicts the velocity ``v = noise - x0`` at timestep
``t = 1000 * sigma``; Euler: ``x <- x + (sigma_next - sigma) * v``.
Timesteps are per latent frame, so a clean conditioning frame simply keeps ``t = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Distilled 4-step streaming schedule (shift 8 applied to 1, .75, .5, .25), then 0.
DISTILLED_TIMESTEPS: tuple[int, ...] = (1000, 960, 889, 727)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution shift ``s * sigma / (1 + (s - 1) * sigma)`` (more steps at high noise for s > 1)."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """``num_steps + 1`` sigmas from 1 to 0, linearly spaced then shifted."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    return shift_sigmas(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift).float()


def sigmas_from_timesteps(timesteps: Sequence[float]) -> torch.Tensor:
    """Sigmas for explicit timesteps in (0, 1000], descending, with the final 0 appended."""
    ts = [float(t) for t in timesteps]
    if not ts or any(not 0 < t <= 1000 for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly descending values in (0, 1000], got {list(timesteps)}")
    return torch.tensor([*ts, 0.0], dtype=torch.float64).div(1000.0).float()


def distilled_sigmas() -> torch.Tensor:
    return sigmas_from_timesteps(DISTILLED_TIMESTEPS)


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    return x + (sigma_next - sigma) * velocity


def guide(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ``v_u + scale * (v_c - v_u)``."""
    return v_uncond + scale * (v_cond - v_uncond)


def seeded_noise(
    shape: Sequence[int], seeds: Sequence[int], stream: int, *, dtype=torch.float32, device=None
) -> torch.Tensor:
    """Gaussian noise, one independent stream per batch element: element b uses ``(seeds[b], stream)``.

    Depends only on the element's seed and the stream index (e.g. the chunk index), never on the batch
    it is in: the same seed and the same actions give the same frames alone or in a vector env.
    """
    if len(seeds) != shape[0]:
        raise ValueError(f"need one seed per batch element: {len(seeds)} seeds for batch {shape[0]}")
    out = []
    for seed in seeds:
        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(stream) * 7_919) % (2**63 - 1))
        out.append(torch.randn(tuple(shape[1:]), generator=gen, dtype=torch.float32))
    return torch.stack(out).to(device=device, dtype=dtype)
