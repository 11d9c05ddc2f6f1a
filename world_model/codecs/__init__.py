"""Latent codecs: video in [-1, 1] <-> the latents the world-model transformer works on.

- :class:`LatentCodec` (``base``): the interface (encode / decode / streaming decode / shape arithmetic).
- :class:`PatchCodec` (``patch``): parameter-free space-to-depth + ordered orthonormal (colour x DCT) basis,
  for small models.
- :class:`LTX2Codec` (``ltx2``): the LTX-2 VAE used by SANA-WM (128 ch, strides 32 / 8).
- :func:`build_codec`: rebuild any codec from its ``to_config()`` dict.
"""

from __future__ import annotations

from typing import Any

from .base import DecodeStreamState, LatentCodec
from .ltx2 import LTX2Codec, decoder_temporal_reach, ltx2_strides
from .patch import PatchCodec

__all__ = [
    "DecodeStreamState",
    "LTX2Codec",
    "LatentCodec",
    "PatchCodec",
    "build_codec",
    "decoder_temporal_reach",
    "ltx2_strides",
]

_CODECS = {"patch": PatchCodec, "ltx2": LTX2Codec}


def build_codec(config: dict[str, Any]) -> LatentCodec:
    """Build a codec from a config dict; ``config["type"]`` is ``"patch"`` or ``"ltx2"``.

    ``{"type": "patch", "patch_size": 8, "temporal_stride": 1, "latent_channels": None}`` or
    ``{"type": "ltx2", "path": "<local folder or cached repo id>", "subfolder": "vae", "dtype": None}``.
    """
    if not isinstance(config, dict) or config.get("type") not in _CODECS:
        got = config.get("type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"config must be a dict with 'type' in {sorted(_CODECS)}, got {got!r}")
    return _CODECS[config["type"]].from_config(config)
