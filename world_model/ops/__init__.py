"""Compute ops of the world model: plain-PyTorch references with a dispatch point for fast paths."""

from .attention import chunk_causal_mask, softmax_attention
from .conv import chunked_temporal_conv, short_conv
from .dispatch import fast_path, register_fast_path, unregister_fast_path
from .gdn import frame_delta_numerator, frame_gdn

__all__ = [
    "chunk_causal_mask",
    "chunked_temporal_conv",
    "fast_path",
    "frame_delta_numerator",
    "frame_gdn",
    "register_fast_path",
    "short_conv",
    "softmax_attention",
    "unregister_fast_path",
]
