"""GLU-conv feed-forward (``GLUMBConvTemp``): per-frame inverted bottleneck with a gated depthwise conv,
then a temporal residual conv over frames whose future half stops at chunk ends (see ops.conv)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import chunked_temporal_conv


class _Conv(nn.Module):
    """Holds a Conv2d under ``.conv`` (checkpoint names ``inverted_conv.conv.weight`` ...)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class GLUConvFFN(nn.Module):
    def __init__(self, hidden_size: int, ffn_hidden: int, t_kernel_size: int = 3) -> None:
        super().__init__()
        if t_kernel_size % 2 != 1:
            raise ValueError(f"t_kernel_size must be odd, got {t_kernel_size}")
        h2 = 2 * ffn_hidden
        self.inverted_conv = _Conv(nn.Conv2d(hidden_size, h2, 1, bias=True))
        self.depth_conv = _Conv(nn.Conv2d(h2, h2, 3, padding=1, groups=h2, bias=True))
        self.point_conv = _Conv(nn.Conv2d(ffn_hidden, hidden_size, 1, bias=False))
        self.t_conv = nn.Conv2d(
            hidden_size, hidden_size, (t_kernel_size, 1), padding=(t_kernel_size // 2, 0), bias=False
        )
        nn.init.zeros_(self.t_conv.weight)

    def forward(
        self, x: torch.Tensor, grid_hw: tuple[int, int], bounds, tail: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, T, S, C)`` -> ``(y (B, T, S, C), tail of the pre-temporal-conv activations)``.

        The 1x1 convs run as linear maps on channels-last tokens (same weights, faster on CPU).
        """
        b, t, s, c = x.shape
        h, w = grid_hw
        inv = self.inverted_conv.conv
        y = F.silu(F.linear(x, inv.weight.flatten(1), inv.bias))  # (B, T, S, 2h)
        y = y.reshape(b * t, h, w, -1).permute(0, 3, 1, 2)
        y = self.depth_conv(y).permute(0, 2, 3, 1)  # (B*T, h, w, 2h)
        value, gate = y.chunk(2, dim=-1)
        y = F.linear(value * F.silu(gate), self.point_conv.conv.weight.flatten(1))  # (B*T, h, w, C)
        y = y.reshape(b, t, s, c).permute(0, 3, 1, 2)  # (B, C, T, S)
        conv, new_tail = chunked_temporal_conv(y, self.t_conv.weight, bounds=bounds, tail=tail)
        y = y + conv
        return y.permute(0, 2, 3, 1), new_tail
