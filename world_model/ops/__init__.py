"""Compute ops of the world model: plain-PyTorch references with a dispatch point for fast paths."""

from .attention import chunk_causal_mask, softmax_attention
from .conv import chunked_temporal_conv, short_conv
from .dispatch import fast_path, register_fast_path, unregister_fast_path
from .features import apply_rope, gdn_features, rms_norm
from .gdn import frame_delta_numerator, frame_gdn
from .triton_paths import TRITON_AVAILABLE, register_triton_fast_paths

register_triton_fast_paths()  # CUDA tensors only; triton itself is imported on first use

__all__ = [
    "TRITON_AVAILABLE",
    "apply_rope",
    "chunk_causal_mask",
    "chunked_temporal_conv",
    "fast_path",
    "frame_delta_numerator",
    "frame_gdn",
    "gdn_features",
    "register_fast_path",
    "register_triton_fast_paths",
    "rms_norm",
    "short_conv",
    "softmax_attention",
    "unregister_fast_path",
]
