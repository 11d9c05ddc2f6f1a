"""One SANA-WM transformer block: adaLN-single per-frame modulation, self-attention (GDN or softmax, each with
the UCPE camera branch), the Plücker residual, optional text cross-attention and the GLU-conv FFN."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..ops import fast_path
from .attention import AttentionContext, GDNState, SelfAttention, SoftmaxChunk, SoftmaxState
from .common import CrossAttention
from .ffn import GLUConvFFN


@dataclass(frozen=True)
class BlockState:
    """A block's streaming state. Blocks return softmax K/V as a :class:`SoftmaxChunk` (this chunk only); the
    transformer merges it into a :class:`SoftmaxState` (sink + window) before it goes into the cache."""

    attn: GDNState | SoftmaxState | SoftmaxChunk | None
    ffn_tail: torch.Tensor | None


class Block(nn.Module):
    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__()
        c = config.hidden_size
        self.scale_shift_table = nn.Parameter(torch.randn(6, c) / c**0.5)
        self.norm1 = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(
            c,
            config.head_dim,
            softmax=config.is_softmax_block(index),
            conv_kernel_size=config.conv_kernel_size,
            eps=config.attn_eps,
            ucpe_rms_renorm=config.ucpe_rms_renorm,
            cam_softmax_scale=config.cam_softmax_scale,
        )
        self.plucker_proj = nn.Linear(c, c) if config.has_plucker(index) else None
        if self.plucker_proj is not None:
            nn.init.zeros_(self.plucker_proj.weight)
            nn.init.zeros_(self.plucker_proj.bias)
        self.cross_attn = CrossAttention(c, config.cross_attn_heads) if config.has_text else None
        self.mlp = GLUConvFFN(c, config.ffn_hidden, config.t_kernel_size)

    def forward(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor,
        ctx: AttentionContext,
        grid_hw: tuple[int, int],
        *,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        plucker: torch.Tensor | None = None,
        state: BlockState | None = None,
        write_state: bool = False,
    ) -> tuple[torch.Tensor, BlockState | None]:
        """``x (B, T, S, C)``; ``modulation (B, T, 6, C)`` from ``t_block``; ``plucker (B, T, S, C)`` embedded."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            (self.scale_shift_table[None, None] + modulation)[:, :, :, None].unbind(2)
        )
        attn_in = self.norm1(x) * (1 + scale_msa) + shift_msa
        attn_out, attn_state = self.attn(attn_in, ctx, None if state is None else state.attn, write_state)
        x = x + gate_msa * attn_out
        if self.plucker_proj is not None and plucker is not None:
            # the embedding is the same through a chunk's passes: the lean path projects it once per chunk
            lean = fast_path("stream_chunk_constant_linear", self.plucker_proj, plucker) if ctx.streaming else None
            x = x + (lean(self.plucker_proj, plucker) if lean is not None else self.plucker_proj(plucker))
        if self.cross_attn is not None and text is not None:
            b, t, s, c = x.shape
            x = x + self.cross_attn(x.reshape(b, t * s, c), text, text_mask).reshape(b, t, s, c)
        mlp_in = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        mlp_out, ffn_tail = self.mlp(mlp_in, grid_hw, ctx.bounds, None if state is None else state.ffn_tail,
                                     streaming=ctx.streaming)
        x = x + gate_mlp * mlp_out
        new_state = BlockState(attn_state, ffn_tail.clone()) if write_state else None
        return x, new_state
