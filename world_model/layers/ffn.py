"""GLU-conv feed-forward (``GLUMBConvTemp``): per-frame inverted bottleneck with a gated depthwise conv,
then a temporal residual conv over frames whose future half stops at chunk ends (see ops.conv).

The two 1x1 convs (``inverted_conv``, ``point_conv``) are stored as ``Conv2d`` (checkpoint layout) and run as
linear maps on the same weights. :meth:`GLUConvFFN.linearize` swaps them for real ``nn.Linear`` modules that the
forward calls, so module-level tools that wrap ``nn.Linear`` (quantizers) see these matmuls.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import chunked_temporal_conv, fast_path


class _Conv(nn.Module):
    """Holds a Conv2d under ``.conv`` (checkpoint names ``inverted_conv.conv.weight`` ...)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _pointwise(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv on channels-last ``x``: call a linearised ``nn.Linear`` module, else use the conv's weights."""
    if isinstance(module, nn.Linear):
        return module(x)
    return F.linear(x, module.weight.flatten(1), module.bias)


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

    @property
    def linearized(self) -> bool:
        return isinstance(self.inverted_conv.conv, nn.Linear)

    @torch.no_grad()
    def linearize(self) -> None:
        """Replace the 1x1 ``Conv2d`` of ``inverted_conv`` / ``point_conv`` by ``nn.Linear`` on the same weights.

        Outputs are unchanged (the forward already runs them as linear maps); parameter names stay the same but
        the weights become 2-D, so a linearised model's state dict is not in the checkpoint layout. Used by
        :mod:`world_model.quantization`, which quantizes ``nn.Linear`` modules.
        """
        for holder in (self.inverted_conv, self.point_conv):
            conv = holder.conv
            if isinstance(conv, nn.Linear):
                continue
            lin = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                            device=conv.weight.device, dtype=conv.weight.dtype)
            lin.weight.copy_(conv.weight.flatten(1))
            if conv.bias is not None:
                lin.bias.copy_(conv.bias)
            holder.conv = lin

    def forward(
        self, x: torch.Tensor, grid_hw: tuple[int, int], bounds, tail: torch.Tensor | None = None, *,
        streaming: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, T, S, C)`` -> ``(y (B, T, S, C), tail of the pre-temporal-conv activations)``.

        The 1x1 convs run as linear maps on channels-last tokens (same weights, faster on CPU). A ``streaming``
        call (one chunk, ``bounds == [(0, T)]``) on a CPU runs the temporal conv as one matmul (the
        ``stream_temporal_residual`` fast path, :func:`.stream_cpu.temporal_residual`).
        """
        b, t, s, c = x.shape
        h, w = grid_hw
        y = F.silu(_pointwise(self.inverted_conv.conv, x))  # (B, T, S, 2h)
        y = y.reshape(b * t, h, w, -1).permute(0, 3, 1, 2)  # channels-last strides: the depthwise conv keeps them
        y = self.depth_conv(y).permute(0, 2, 3, 1)  # (B*T, h, w, 2h)
        value, gate = y.chunk(2, dim=-1)
        y = _pointwise(self.point_conv.conv, value * F.silu(gate)).reshape(b, t, s, c)
        lean = fast_path("stream_temporal_residual", y, self.t_conv.weight, tail, self) if streaming else None
        if lean is not None:
            return lean(y, self.t_conv.weight, tail, self)
        y = y.permute(0, 3, 1, 2)  # (B, C, T, S)
        conv, new_tail = chunked_temporal_conv(y, self.t_conv.weight, bounds=bounds, tail=tail)
        y = y + conv
        return y.permute(0, 2, 3, 1), new_tail
