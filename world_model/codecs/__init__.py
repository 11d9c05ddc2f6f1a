"""Latent codecs: video in [-1, 1] <-> the latents the world-model transformer works on.

- :class:`LatentCodec` (``base``): the interface (encode / decode / streaming decode / shape arithmetic).
- :class:`PatchCodec` (``patch``): parameter-free space-to-depth + ordered orthonormal (colour x DCT) basis,
  for small models.
- :class:`LTX2Codec` (``ltx2``): the LTX-2 VAE used by SANA-WM (128 ch, strides 32 / 8).
- :func:`build_codec`: rebuild any codec from its ``to_config()`` dict.

``ltx2`` is imported on first use (``from world_model.codecs import LTX2Codec`` or an ``"ltx2"`` config): it
imports diffusers (the ``ltx2`` extra), which the patch codec of the bundled models does not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import DecodeStreamState, LatentCodec
from .patch import PatchCodec

if TYPE_CHECKING:
    from .ltx2 import LTX2Codec, decoder_temporal_reach, ltx2_strides

__all__ = [
    "DecodeStreamState",
    "LTX2Codec",
    "LatentCodec",
    "PatchCodec",
    "build_codec",
    "decoder_temporal_reach",
    "ltx2_strides",
]

_LAZY = frozenset({"LTX2Codec", "decoder_temporal_reach", "ltx2_strides"})
_CODECS = ("ltx2", "patch")


def __getattr__(name: str) -> Any:
    """The names of ``ltx2``, imported when first asked for (module ``__getattr__``, PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(".ltx2", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)


def build_codec(config: dict[str, Any]) -> LatentCodec:
    """Build a codec from a config dict; ``config["type"]`` is ``"patch"`` or ``"ltx2"``.

    ``{"type": "patch", "patch_size": 8, "temporal_stride": 1, "latent_channels": None}`` or
    ``{"type": "ltx2", "path": "<local folder or cached repo id>", "subfolder": "vae", "dtype": None}``.
    """
    if not isinstance(config, dict) or config.get("type") not in _CODECS:
        got = config.get("type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"config must be a dict with 'type' in {sorted(_CODECS)}, got {got!r}")
    codec = PatchCodec if config["type"] == "patch" else __getattr__("LTX2Codec")
    return codec.from_config(config)
