"""LTX2Codec: the LTX-2 video VAE (diffusers ``AutoencoderKLLTX2Video``) behind the LatentCodec interface.

SANA-WM convention (reference section 7): encode takes the posterior *mode* ``mu`` and normalises per
channel, ``z = (mu - latents_mean) * scaling_factor / latents_std`` (``latents_mean`` / ``latents_std`` are
buffers of the VAE); decode inverts that and runs the decoder with ``temb=None``. Input video is RGB in
[-1, 1].

Strides. They are derived from the architecture in the VAE config, not from diffusers'
``vae.spatial_compression_ratio``: built from the class defaults that attribute is computed as
``patch_size * 2**sum(spatio_temporal_scaling)`` = 64 (and 16 temporal), which counts a spatial-only and a
temporal-only down block as both. The real LTX-2 layout (patch_size 4; down blocks "spatial", "temporal",
"spatiotemporal", "spatiotemporal"; three "spatiotemporal" up blocks) gives spatial 4*2*2*2 = 32 and
temporal 2*2*2 = 8, which is what the hub config states explicitly
(``spatial_compression_ratio=32, temporal_compression_ratio=8``). :func:`ltx2_strides` counts encoder and
decoder separately, requires them to agree and requires any explicit ratio in the config to agree too; the
codec also writes the true values to ``vae.spatial_compression_ratio`` / ``vae.temporal_compression_ratio``
so diffusers' own tiling uses them.

Streaming decode. diffusers 0.42.1 runs every temporal convolution of the decoder through
``LTX2VideoCausalConv3d``; with ``decoder_causal=True`` (the causal variant SANA-WM streams with) each one
pads the past with copies of its first input frame, and each temporal up-sampler drops the first
``stride - 1`` output frames. :class:`LTX2Codec` streams such decoders *exactly*: while a chunk is decoded
it swaps in forwards that take each convolution's past from a cache (its last ``k - 1`` input frames)
instead of the replicated padding, and feed each up-sampler the last input frame of the previous chunk
(dropping the extra output frame), so chunk-by-chunk output equals one full decode up to float rounding (max
abs difference measured ~5e-6 in float32 on a tiny random VAE whose outputs reach ~1.8). The cache holds a
few frames per convolution, independent of the stream length. Note: diffusers evaluates
``causal or decoder.is_causal``, so a causal decoder cannot be run non-causally.

A non-causal decoder (``decoder_causal=False``, the LTX-2 / SANA-WM bidirectional setting) looks at future
latent frames too, which a stream does not have yet, so it is streamed approximately: each chunk is decoded
together with the previous ``stream_context_frames`` latent frames (default: the decoder's backward temporal
reach, :func:`decoder_temporal_reach`, rounded up) and only the new frames are kept. Frames within the
decoder's forward reach of a chunk end miss their right context. Measured on a tiny random VAE
(tests/test_codecs.py, reach 6.6 latent frames), chunks of 2-4 latent frames differ from a full decode by up
to ~2.0 (outputs up to ~1.8), i.e. by the order of the signal; only the last chunk is exact. For streaming,
use a causal decoder (upstream streams with its causal VAE variant for this reason).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from ..optional import require
from .base import DecodeStreamState, LatentCodec

# diffusers is the ltx2 extra; the streaming decode wraps its LTX-2 layer classes (internals: see the version bound)
_FEATURE = "the LTX-2 codec"
AutoencoderKLLTX2Video = require("diffusers", extra="ltx2", feature=_FEATURE).AutoencoderKLLTX2Video
_ltx2_layers = require("diffusers.models.autoencoders.autoencoder_kl_ltx2", extra="ltx2", feature=_FEATURE)
LTX2VideoCausalConv3d, LTX2VideoUpsampler3d = _ltx2_layers.LTX2VideoCausalConv3d, _ltx2_layers.LTX2VideoUpsampler3d

__all__ = ["LTX2Codec", "decoder_temporal_reach", "ltx2_strides"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SPATIAL_TYPES = {"spatial", "spatiotemporal", "conv"}
_TEMPORAL_TYPES = {"temporal", "spatiotemporal", "conv"}


def _as_tuple(value: Any, length: int) -> tuple:
    """diffusers lets per-block flags be one bool for all blocks."""
    return (value,) * length if isinstance(value, bool) else tuple(value)


def ltx2_strides(config: Any) -> tuple[int, int]:
    """(spatial, temporal) strides of an ``AutoencoderKLLTX2Video`` config; ValueError if inconsistent."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    if get("patch_size_t", 1) != 1:
        raise ValueError(f"vae config patch_size_t must be 1 (SANA-WM layout), got {get('patch_size_t')}")
    p = get("patch_size", 4)
    n_enc = len(get("block_out_channels"))
    enc_scale = _as_tuple(get("spatio_temporal_scaling"), n_enc)
    enc_types = tuple(get("downsample_type"))
    n_dec = len(get("decoder_block_out_channels"))
    dec_scale = _as_tuple(get("decoder_spatio_temporal_scaling"), n_dec)
    dec_types = tuple(get("upsample_type"))
    enc_s = p * 2 ** sum(1 for i in range(n_enc) if enc_scale[i] and enc_types[i] in _SPATIAL_TYPES)
    enc_t = 2 ** sum(1 for i in range(n_enc) if enc_scale[i] and enc_types[i] in _TEMPORAL_TYPES)
    dec_s = p * 2 ** sum(
        1 for i in range(n_dec) if dec_scale[i] and dec_types[i] in {"spatial", "spatiotemporal"}
    )
    dec_t = 2 ** sum(
        1 for i in range(n_dec) if dec_scale[i] and dec_types[i] in {"temporal", "spatiotemporal"}
    )
    if (enc_s, enc_t) != (dec_s, dec_t):
        raise ValueError(
            f"vae config is inconsistent: encoder strides (spatial, temporal)=({enc_s}, {enc_t}) but decoder "
            f"strides ({dec_s}, {dec_t})"
        )
    for key, derived in (("spatial_compression_ratio", enc_s), ("temporal_compression_ratio", enc_t)):
        explicit = get(key)
        if explicit is not None and explicit != derived:
            raise ValueError(
                f"vae config {key}={explicit} contradicts the architecture, which gives {derived}"
            )
    return enc_s, enc_t


def decoder_temporal_reach(decoder: torch.nn.Module, causal: bool) -> float:
    """How many latent frames back a decoder output can see (sum of temporal conv reaches, latent units).

    Each temporal conv of kernel k at temporal rate r (r = product of the temporal up-sampling before it)
    reaches ``(k - 1) / r`` latent frames into the past when causal, ``(k - 1) / (2 r)`` when centred.
    """
    reach, rate = 0.0, 1
    pending: tuple[str, int] | None = None
    for name, module in decoder.named_modules():
        if isinstance(module, LTX2VideoUpsampler3d):
            pending = (name + ".", module.stride[0])
        elif isinstance(module, LTX2VideoCausalConv3d):
            k = module.kernel_size[0] - 1
            reach += (k if causal else k / 2) / rate
            if pending is not None and name.startswith(pending[0]):
                rate *= pending[1]
                pending = None
    return reach


class _CausalStream:
    """Context manager: run a causal LTX-2 decoder on one chunk with its temporal past taken from a cache."""

    def __init__(self, decoder: torch.nn.Module, cache: dict[str, torch.Tensor] | None):
        self.decoder = decoder
        self.old = cache or {}
        self.new: dict[str, torch.Tensor] = {}
        self.lead: dict[str, int] = {}
        self.patched: list[torch.nn.Module] = []

    def __enter__(self) -> _CausalStream:
        for name, module in self.decoder.named_modules():
            if isinstance(module, LTX2VideoCausalConv3d):
                module.forward = self._conv_forward(name, module)
            elif isinstance(module, LTX2VideoUpsampler3d):
                module.forward = self._upsampler_forward(name, module)
            else:
                continue
            self.patched.append(module)
        return self

    def __exit__(self, *exc: object) -> None:
        for module in self.patched:
            del module.forward

    def _conv_forward(self, name: str, module: LTX2VideoCausalConv3d):
        n = module.kernel_size[0] - 1

        def forward(hidden_states: torch.Tensor, causal: bool = True) -> torch.Tensor:
            if not causal:
                raise RuntimeError("exact streaming needs a causal decoder")
            if n == 0:
                return module.conv(hidden_states)
            past = self.old.get(name)
            lead = self.lead.get(name, 0)
            if past is None:
                pad = hidden_states[:, :, :1].expand(-1, -1, n, -1, -1)
            else:
                end = past.shape[2] - lead
                pad = past[:, :, end - n : end]
            padded = torch.cat([pad, hidden_states], dim=2)
            self.new[name] = padded[:, :, -(n + 1) :].clone()
            return module.conv(padded)

        return forward

    def _upsampler_forward(self, name: str, module: LTX2VideoUpsampler3d):
        original = type(module).forward

        def forward(hidden_states: torch.Tensor, causal: bool = True) -> torch.Tensor:
            last = self.old.get(name)
            self.new[name] = hidden_states[:, :, -1:].clone()
            if last is None:
                return original(module, hidden_states, causal=causal)
            # Re-run the previous chunk's last frame so the frames the up-sampler drops at the start of a
            # sequence are that frame's (then dropped here), not this chunk's.
            self.lead[name + ".conv"] = 1
            try:
                out = original(module, torch.cat([last, hidden_states], dim=2), causal=causal)
            finally:
                self.lead.pop(name + ".conv")
            return out[:, :, 1:]

        return forward


class LTX2Codec(LatentCodec):
    """LTX-2 VAE codec (see module docs): 128 latent channels, strides 32 (spatial) and 8 (temporal).

    ``LTX2Codec(vae, *, dtype=None, stream_context_frames=None)``. ``dtype`` casts the VAE (e.g.
    ``torch.bfloat16`` as upstream); encode/decode move inputs to the VAE's device/dtype, compute the
    normalisation in float32 and return tensors on the input's device in the input's dtype.
    ``stream_context_frames`` applies to non-causal decoders only (latent frames of left context per chunk).
    """

    def __init__(
        self,
        vae: AutoencoderKLLTX2Video,
        *,
        dtype: torch.dtype | None = None,
        stream_context_frames: int | None = None,
    ):
        super().__init__()
        if not isinstance(vae, AutoencoderKLLTX2Video):
            raise ValueError(f"vae must be a diffusers AutoencoderKLLTX2Video, got {type(vae).__name__}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        if vae.config.timestep_conditioning:
            raise ValueError("vae must have timestep_conditioning=False: SANA-WM decodes with temb=None")
        spatial, temporal = ltx2_strides(vae.config)
        if dtype is not None:
            vae.to(dtype)
        vae.eval()
        vae.spatial_compression_ratio = spatial
        vae.temporal_compression_ratio = temporal
        self.vae = vae
        self.latent_channels = int(vae.config.latent_channels)
        self.spatial_stride = spatial
        self.temporal_stride = temporal
        self.scaling_factor = float(vae.config.scaling_factor)
        self.decoder_causal = bool(vae.decoder.is_causal)
        if self.decoder_causal:
            if stream_context_frames is not None:
                raise ValueError(
                    "stream_context_frames must be None for a causal decoder (it streams exactly a cache)"
                )
        else:
            if stream_context_frames is None:
                stream_context_frames = max(1, math.ceil(decoder_temporal_reach(vae.decoder, causal=False)))
            if isinstance(stream_context_frames, bool) or not isinstance(stream_context_frames, int):
                raise ValueError(
                    f"stream_context_frames must be an int >= 1 or None, got {stream_context_frames!r}"
                )
            if stream_context_frames < 1:
                raise ValueError(
                    f"stream_context_frames must be an int >= 1 or None, got {stream_context_frames}"
                )
        self.stream_context_frames = stream_context_frames
        self._source: dict[str, Any] | None = None

    # ------------------------------------------------------------------ loading / config
    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        subfolder: str | None = "vae",
        *,
        dtype: torch.dtype | None = None,
        stream_context_frames: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> LTX2Codec:
        """Load from a local folder (``<path>/<subfolder>/config.json`` + weights) or from the HF cache.

        A Hugging Face repo id (``owner/name``) is looked up with ``local_files_only=True`` only; nothing is
        downloaded. If it is not cached, FileNotFoundError says which files to download and where to put them.
        """
        if not isinstance(path_or_repo_id, str | Path) or not str(path_or_repo_id):
            raise ValueError(
                f"path_or_repo_id must be a folder path or 'owner/name' repo id, got {path_or_repo_id!r}"
            )
        if subfolder is not None and (not isinstance(subfolder, str) or not subfolder):
            raise ValueError(f"subfolder must be a non-empty str or None, got {subfolder!r}")
        local = Path(path_or_repo_id).expanduser()
        if local.is_dir():
            root = local.resolve()
        elif isinstance(path_or_repo_id, str) and _REPO_ID.match(path_or_repo_id) and not local.exists():
            root = _cached_snapshot(path_or_repo_id, subfolder, cache_dir)
        else:
            raise FileNotFoundError(f"path_or_repo_id {str(path_or_repo_id)!r} is not an existing folder")
        folder = root / subfolder if subfolder else root
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder} has no config.json; expected a diffusers AutoencoderKLLTX2Video folder "
                "(config.json + diffusion_pytorch_model.safetensors)"
                + (
                    f" -- download hint: {_download_hint(str(path_or_repo_id), subfolder)}"
                    if not local.is_dir()
                    else ""
                )
            )
        vae = AutoencoderKLLTX2Video.from_pretrained(str(folder), torch_dtype=dtype)
        codec = cls(vae, dtype=dtype, stream_context_frames=stream_context_frames)
        source = str(path_or_repo_id) if not local.is_dir() else str(root)
        codec._source = {"path": source, "subfolder": subfolder}
        return codec

    def to_config(self) -> dict[str, Any]:
        """``{"type": "ltx2", "path", "subfolder", "dtype", "stream_context_frames"}``."""
        if self._source is None:
            raise ValueError(
                "to_config needs a codec made by LTX2Codec.from_pretrained; save the VAE with "
                "vae.save_pretrained(folder), then use LTX2Codec.from_pretrained(folder, subfolder=None)"
            )
        dtype = next(self.vae.parameters()).dtype
        return {
            "type": "ltx2",
            **self._source,
            "dtype": str(dtype).removeprefix("torch."),
            "stream_context_frames": None if self.decoder_causal else self.stream_context_frames,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LTX2Codec:
        """Rebuild from :meth:`to_config` output (``path``: local folder or cached repo id)."""
        if not isinstance(config, dict) or "path" not in config:
            raise ValueError(
                f"config must be a dict with at least 'path' (see LTX2Codec.to_config), got {config!r}"
            )
        allowed = {"type", "path", "subfolder", "dtype", "stream_context_frames"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"config has unknown keys {unknown}; LTX2Codec accepts {sorted(allowed)}")
        if config.get("type", "ltx2") != "ltx2":
            raise ValueError(f"config['type'] must be 'ltx2' for LTX2Codec, got {config['type']!r}")
        dtype_name = config.get("dtype")
        dtype = None
        if dtype_name is not None:
            dtype = getattr(torch, str(dtype_name), None)
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                raise ValueError(
                    f"config['dtype'] must name a floating torch dtype like 'bfloat16', got {dtype_name!r}"
                )
        return cls.from_pretrained(
            config["path"],
            subfolder=config.get("subfolder", "vae"),
            dtype=dtype,
            stream_context_frames=config.get("stream_context_frames"),
        )

    def _check_latents(self, latents: torch.Tensor, name: str = "latents") -> None:
        """Base checks plus the decoder's spatial padding limit (reflect padding needs h, w >= 2)."""
        super()._check_latents(latents, name)
        if self.vae.config.decoder_spatial_padding_mode == "reflect" and min(latents.shape[-2:]) < 2:
            raise ValueError(
                f"{name} must have latent h and w >= 2 (images of at least {2 * self.spatial_stride} px) "
                f"because the decoder pads spatially with 'reflect', got shape {tuple(latents.shape)}"
            )

    # ------------------------------------------------------------------ normalisation
    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        mean = self.vae.latents_mean.to(device=device, dtype=torch.float32).view(shape)
        std = self.vae.latents_std.to(device=device, dtype=torch.float32).view(shape)
        return mean, std

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """Raw posterior mode -> transformer latents: (mu - latents_mean) * scaling_factor / latents_std."""
        mean, std = self._stats(mu.device)
        return (mu.float() - mean) * self.scaling_factor / std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Transformer latents -> raw VAE latents (inverse of :meth:`normalize`), float32."""
        mean, std = self._stats(latents.device)
        return latents.float() * std / self.scaling_factor + mean

    def _vae_param(self) -> torch.Tensor:
        return next(self.vae.parameters())

    # ------------------------------------------------------------------ transforms
    @torch.no_grad()
    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        param = self._vae_param()
        mu = self.vae.encode(video.to(device=param.device, dtype=param.dtype)).latent_dist.mode()
        return self.normalize(mu).to(device=video.device, dtype=video.dtype)

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        param = self._vae_param()
        z = self.denormalize(latents.to(param.device)).to(param.dtype)
        video = self.vae.decode(z, temb=None).sample
        return video.to(device=latents.device, dtype=latents.dtype)

    @torch.no_grad()
    def _decode_chunk(
        self, latents_chunk: torch.Tensor, state: DecodeStreamState
    ) -> tuple[torch.Tensor, Any]:
        param = self._vae_param()
        z = self.denormalize(latents_chunk.to(param.device)).to(param.dtype)
        if self.decoder_causal:
            with _CausalStream(self.vae.decoder, state.cache) as stream:
                video = self.vae.decoder(z, None)
            cache: Any = stream.new
        else:
            t = z.shape[2]
            if state.cache is not None:
                z = torch.cat([state.cache, z], dim=2)
            video = self.vae.decoder(z, None)
            if state.cache is not None:
                video = video[:, :, -self.temporal_stride * t :]
            cache = z[:, :, -self.stream_context_frames :].clone()
        return video.to(device=latents_chunk.device, dtype=latents_chunk.dtype), cache


def _download_hint(repo_id: str, subfolder: str | None) -> str:
    include = f" --include '{subfolder}/*'" if subfolder else ""
    return (
        f"hf download {repo_id}{include} --local-dir <DIR>  (older huggingface_hub: "
        f"huggingface-cli download ...), then LTX2Codec.from_pretrained('<DIR>', subfolder={subfolder!r}); "
        "or run it without --local-dir to fill the Hugging Face cache, which is then used offline"
    )


def _cached_snapshot(repo_id: str, subfolder: str | None, cache_dir: str | Path | None) -> Path:
    """Snapshot folder of ``repo_id`` from the local HF cache only; FileNotFoundError with a hint."""
    snapshot_download = require("huggingface_hub", extra="ltx2", feature=_FEATURE).snapshot_download
    patterns = [f"{subfolder}/*"] if subfolder else None
    try:
        folder = snapshot_download(
            repo_id,
            allow_patterns=patterns,
            local_files_only=True,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
        )
    except Exception as err:  # noqa: BLE001 -- every hub failure means "not available offline"
        raise FileNotFoundError(
            f"LTX-2 VAE {repo_id!r} (subfolder {subfolder!r}) is neither a local folder nor in the Hugging "
            f"Face cache, and no download is attempted. On a machine with network access run: "
            f"{_download_hint(repo_id, subfolder)}. ({type(err).__name__})"
        ) from err
    return Path(folder)
