"""Small building blocks shared by the transformer: norms, embeddings, the final layer.

Module and parameter names follow the official checkpoint layout (docs/architecture.md#official-checkpoints).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.attention import softmax_attention
from ..ops.features import rms_norm


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learnable weight; statistics in float32."""

    def __init__(self, dim: int, eps: float = 1e-5, init: float = 1.0) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def timestep_sinusoids(timesteps: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """``[cos | sin]`` sinusoidal embedding of ``timesteps (N,)`` -> ``(N, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoids (256) -> Linear -> SiLU -> Linear (keys ``t_embedder.mlp.{0,2}``)."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        emb = timestep_sinusoids(timesteps, self.frequency_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class PatchEmbed3D(nn.Module):
    """Conv3d patchify ``(B, C, T, H, W) -> (B, T, h, w, hidden)`` (key ``proj``)."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Non-overlapping patches: a linear map of each flattened patch (same weights as the Conv3d, and much
        # faster on CPU than a 1x1x1 Conv3d).
        weight, bias = self.proj.weight, self.proj.bias
        _, ph, pw = self.proj.kernel_size
        b, c, t, h, w = x.shape
        patches = x.to(weight.dtype).reshape(b, c, t, h // ph, ph, w // pw, pw)
        patches = patches.permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t, h // ph, w // pw, c * ph * pw)
        return F.linear(patches, weight.reshape(weight.shape[0], -1), bias)


class CaptionEmbedder(nn.Module):
    """Text features -> hidden (keys ``y_proj.fc1``, ``y_proj.fc2``) plus the learned null caption ``y_embedding``."""

    def __init__(self, caption_channels: int, hidden_size: int, max_length: int) -> None:
        super().__init__()
        self.y_proj = nn.Module()
        self.y_proj.fc1 = nn.Linear(caption_channels, hidden_size)
        self.y_proj.fc2 = nn.Linear(hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(max_length, caption_channels) / caption_channels**0.5)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.y_proj.fc1(caption.to(self.y_proj.fc1.weight.dtype)), approximate="tanh")
        return self.y_proj.fc2(h)


class CrossAttention(nn.Module):
    """Image tokens attend to text tokens (keys ``q_linear``, ``kv_linear``, ``proj``, ``q_norm``, ``k_norm``)."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(hidden_size, hidden_size)
        self.kv_linear = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.q_norm = RMSNorm(hidden_size, eps=1e-6)
        self.k_norm = RMSNorm(hidden_size, eps=1e-6)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
        """``x (B, N, C)``, ``text (B, L, C)`` (already embedded), ``text_mask (B, L)`` bool (True = token)."""
        b, n, c = x.shape
        h = self.num_heads
        q = self.q_norm(self.q_linear(x)).reshape(b, n, h, -1).transpose(1, 2)
        k, v = self.kv_linear(text).chunk(2, dim=-1)
        k = self.k_norm(k).reshape(b, -1, h, c // h).transpose(1, 2)
        v = v.reshape(b, -1, h, c // h).transpose(1, 2)
        mask = None if text_mask is None else text_mask[:, None, None, :].to(torch.bool)
        out = softmax_attention(q, k, v, mask=mask, scale=(c // h) ** -0.5)  # CUDA: head dim padded for flash
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class FinalLayer(nn.Module):
    """LayerNorm -> per-frame shift/scale (table + timestep embedding) -> Linear to latent channels."""

    def __init__(self, hidden_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """``x (B, T, S, C)``, ``t_emb (B, T, C)``."""
        shift, scale = (self.scale_shift_table[None, None] + t_emb[:, :, None]).unbind(2)
        x = self.norm_final(x) * (1 + scale[:, :, None]) + shift[:, :, None]
        return self.linear(x)
