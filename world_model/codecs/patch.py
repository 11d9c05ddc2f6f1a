"""PatchCodec: a light, parameter-free codec for small world models.

Each latent "pixel" is one ``p x p`` patch of ``temporal_stride`` frames (space-to-depth), expressed in a
fixed orthonormal basis: an opponent colour transform (luma, two chroma axes) times a 2-D DCT-II over the
patch (times a 1-D DCT-II over the frames of a temporal group). The ``3*s*p*p`` basis vectors are ordered by
the variance a natural image is expected to put on them, so keeping the first ``latent_channels`` keeps luma
and low spatial frequencies first (the least-squares optimal subspace under the model below, like JPEG's
zig-zag truncation). With all channels kept the codec is exactly invertible (orthonormal basis, up to float
rounding); with fewer it is the orthogonal projection onto the kept subspace.

Scale model (so latents are roughly unit-variance on natural images, as diffusion training wants). Pixels in
[-1, 1] are modelled with per-channel std ``PIXEL_STD = 0.5`` and inter-channel correlation
``RGB_CORRELATION = 0.9``, giving opponent-axis stds ``sigma_luma = 0.5*sqrt(1 + 2*0.9) ~= 0.84`` and
``sigma_chroma = 0.5*sqrt(1 - 0.9) ~= 0.16``. Energy over a block falls off like a regularised 1/f amplitude
spectrum, ``g(u, v, w) = 1 / (1 + sqrt(u^2 + v^2 + w^2))`` (u, v, w = DCT indices), normalised so the total
variance of a block is preserved (orthonormality): ``std = sigma_axis * g * sqrt(n / sum(g^2))`` with
``n = s*p*p``. Each latent channel is the coefficient divided by its modelled std (for p=8, s=1 the luma DC
std is ~3.6 and the highest chroma frequency ~0.06). No mean is subtracted.

Depth (``depth_channels = d > 0``, an RGB-D codec): the normalised inverse depth plane (see
:mod:`world_model.codecs.base`) gets its own DCT basis over the group (``s*p*p`` vectors ordered by ``g``,
std ``DEPTH_STD * g * sqrt(n / sum(g^2))``); its first ``d`` coefficients are the last ``d`` latent channels.
Inverse depth is smooth away from edges, so a few low frequencies carry most of it.

Temporal grouping (``temporal_stride = s > 1``): latent frame 0 is pixel frame 0 repeated ``s`` times (so it
occupies only the temporal-DC channels), latent frame k >= 1 holds pixel frames ``1 + s*(k-1) .. s*k``.
Decoding latent frame 0 averages its ``s`` reconstructed copies (exact when all channels are kept). Every
latent frame decodes independently, so streaming decode is exact and needs no cache.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .base import DecodeStreamState, LatentCodec

__all__ = ["DEPTH_STD", "PIXEL_STD", "RGB_CORRELATION", "PatchCodec", "dct_matrix", "depth_basis", "patch_basis"]

PIXEL_STD = 0.5
RGB_CORRELATION = 0.9
DEPTH_STD = 0.5  # modelled std of the normalised inverse depth channel

# Orthonormal opponent colour transform (rows: luma, red-blue, green-magenta).
_OPPONENT = np.array(
    [
        [1.0, 1.0, 1.0],
        [1.0, 0.0, -1.0],
        [1.0, -2.0, 1.0],
    ]
) / np.array([[math.sqrt(3.0)], [math.sqrt(2.0)], [math.sqrt(6.0)]])


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix (n, n); row k is the k-th cosine basis vector."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    mat = np.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    mat[0] /= math.sqrt(2.0)
    return mat


def patch_basis(patch_size: int, temporal_stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Full ordered basis (N, N) and modelled coefficient stds (N,), N = 3*s*p*p, float64.

    Row j of the basis acts on a group flattened in (colour, frame, row, col) order. Rows are sorted by
    decreasing modelled std (ties: by (colour, w, u, v) index), so prefixes are the best truncations.
    """
    p, s = patch_size, temporal_stride
    basis = np.kron(np.kron(np.kron(_OPPONENT, dct_matrix(s)), dct_matrix(p)), dct_matrix(p))
    g = _frequency_weights(p, s)
    sigma_luma = PIXEL_STD * math.sqrt(1.0 + 2.0 * RGB_CORRELATION)
    sigma_chroma = PIXEL_STD * math.sqrt(1.0 - RGB_CORRELATION)
    std = np.concatenate([sigma_luma * g, sigma_chroma * g, sigma_chroma * g])
    order = np.lexsort((np.arange(std.size), -np.round(std, 12)))
    return basis[order], std[order]


def _frequency_weights(patch_size: int, temporal_stride: int) -> np.ndarray:
    """``g(u, v, w) = 1 / (1 + sqrt(u^2 + v^2 + w^2))`` over a group, normalised to mean square 1."""
    w, u, v = np.meshgrid(np.arange(temporal_stride), np.arange(patch_size), np.arange(patch_size), indexing="ij")
    g = 1.0 / (1.0 + np.sqrt(u**2 + v**2 + w**2)).reshape(-1)
    return g * math.sqrt(g.size / float(np.sum(g**2)))


def depth_basis(patch_size: int, temporal_stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Ordered basis (N, N) and modelled stds (N,), N = s*p*p, of the depth plane of a group (frame, row, col)."""
    p, s = patch_size, temporal_stride
    basis = np.kron(np.kron(dct_matrix(s), dct_matrix(p)), dct_matrix(p))
    std = DEPTH_STD * _frequency_weights(p, s)
    order = np.lexsort((np.arange(std.size), -np.round(std, 12)))
    return basis[order], std[order]


class PatchCodec(LatentCodec):
    """Space-to-depth codec with a fixed, ordered orthonormal basis (see module docs).

    ``PatchCodec(patch_size=8, temporal_stride=1, latent_channels=None, depth_channels=0)``:
    ``latent_channels`` (all of them, depth included) defaults to the full ``3*temporal_stride*patch_size**2``
    colour channels plus ``depth_channels`` (exactly invertible); fewer keeps the lowest-frequency colour
    channels. ``depth_channels > 0`` makes an RGB-D codec (at most ``temporal_stride*patch_size**2``).
    Parameter-free: the bases and scales are non-persistent float64 buffers rebuilt from the config; the
    transform runs in float64 for float64 input and in float32 otherwise, and returns the input's dtype.
    """

    def __init__(self, patch_size: int = 8, temporal_stride: int = 1, latent_channels: int | None = None,
                 depth_channels: int = 0):
        super().__init__()
        for name, value in (("patch_size", patch_size), ("temporal_stride", temporal_stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        group = temporal_stride * patch_size**2
        if isinstance(depth_channels, bool) or not isinstance(depth_channels, int) or not 0 <= depth_channels <= group:
            raise ValueError(f"depth_channels must be an int in [0, temporal_stride*patch_size**2 = {group}], "
                             f"got {depth_channels!r}")
        full = 3 * group
        if latent_channels is None:
            latent_channels = full + depth_channels
        if (
            isinstance(latent_channels, bool)
            or not isinstance(latent_channels, int)
            or not 1 <= latent_channels - depth_channels <= full
        ):
            raise ValueError(
                f"latent_channels must be an int in [1 + depth_channels, 3*temporal_stride*patch_size**2 + "
                f"depth_channels = {full + depth_channels}] or None, got {latent_channels!r}"
            )
        self.patch_size = patch_size
        self.spatial_stride = patch_size
        self.temporal_stride = temporal_stride
        self.latent_channels = latent_channels
        self.depth_channels = depth_channels
        rgb = latent_channels - depth_channels
        basis, std = patch_basis(patch_size, temporal_stride)
        self.register_buffer("projection", torch.from_numpy(basis[:rgb].copy()), persistent=False)
        self.register_buffer("channel_std", torch.from_numpy(std[:rgb].copy()), persistent=False)
        dbasis, dstd = depth_basis(patch_size, temporal_stride)
        self.register_buffer("depth_projection", torch.from_numpy(dbasis[:depth_channels].copy()), persistent=False)
        self.register_buffer("depth_std", torch.from_numpy(dstd[:depth_channels].copy()), persistent=False)

    @property
    def full_channels(self) -> int:
        """Colour channel count at which the codec is exactly invertible: 3 * temporal_stride * patch_size**2."""
        return 3 * self.temporal_stride * self.patch_size**2

    def extra_repr(self) -> str:
        return (
            f"patch_size={self.patch_size}, temporal_stride={self.temporal_stride}, "
            f"latent_channels={self.latent_channels}, depth_channels={self.depth_channels}"
        )

    # ------------------------------------------------------------------ config
    def to_config(self) -> dict[str, Any]:
        """``{"type": "patch", "patch_size", "temporal_stride", "latent_channels"[, "depth_channels"]}``."""
        config = {
            "type": "patch",
            "patch_size": self.patch_size,
            "temporal_stride": self.temporal_stride,
            "latent_channels": self.latent_channels,
        }
        if self.depth_channels:
            config["depth_channels"] = self.depth_channels
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PatchCodec:
        """Rebuild from :meth:`to_config` output (``type`` may be omitted; unknown keys are rejected)."""
        if not isinstance(config, dict):
            raise ValueError(
                f"config must be a dict like PatchCodec.to_config(), got {type(config).__name__}"
            )
        allowed = {"type", "patch_size", "temporal_stride", "latent_channels", "depth_channels"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"config has unknown keys {unknown}; PatchCodec accepts {sorted(allowed)}")
        if config.get("type", "patch") != "patch":
            raise ValueError(f"config['type'] must be 'patch' for PatchCodec, got {config['type']!r}")
        kwargs = {k: config[k] for k in ("patch_size", "temporal_stride", "latent_channels", "depth_channels")
                  if k in config}
        return cls(**kwargs)

    # ------------------------------------------------------------------ transforms
    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        dtype = video.dtype if video.dtype == torch.float64 else torch.float32
        x = video.to(dtype)
        s, p = self.temporal_stride, self.patch_size
        if s > 1:
            x = torch.cat([x[:, :, :1].expand(-1, -1, s, -1, -1), x[:, :, 1:]], dim=2)
        batch, channels, frames, height, width = x.shape
        t, h, w = frames // s, height // p, width // p
        groups = x.reshape(batch, channels, t, s, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        groups = groups.reshape(batch, t, h, w, channels, s * p * p)
        proj = self.projection.to(device=x.device, dtype=dtype)
        coeffs = groups[..., :3, :].flatten(-2) @ proj.T / self.channel_std.to(device=x.device, dtype=dtype)
        if self.depth_channels:
            dproj = self.depth_projection.to(device=x.device, dtype=dtype)
            depth = groups[..., 3, :] @ dproj.T / self.depth_std.to(device=x.device, dtype=dtype)
            coeffs = torch.cat([coeffs, depth], dim=-1)
        return coeffs.permute(0, 4, 1, 2, 3).contiguous().to(video.dtype)

    def _groups_to_frames(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode every latent frame to its full group of ``temporal_stride`` frames: (B, 3 [+1], T*s, H, W)."""
        dtype = latents.dtype if latents.dtype == torch.float64 else torch.float32
        z = latents.to(dtype)
        s, p, d = self.temporal_stride, self.patch_size, self.depth_channels
        batch, _, t, h, w = z.shape
        proj = self.projection.to(device=z.device, dtype=dtype)
        z = z.permute(0, 2, 3, 4, 1)
        rgb = z[..., : self.latent_channels - d] * self.channel_std.to(device=z.device, dtype=dtype)
        groups = (rgb @ proj).reshape(batch, t, h, w, 3, s, p, p)
        if d:
            dproj = self.depth_projection.to(device=z.device, dtype=dtype)
            depth = (z[..., -d:] * self.depth_std.to(device=z.device, dtype=dtype)) @ dproj
            groups = torch.cat([groups, depth.reshape(batch, t, h, w, 1, s, p, p)], dim=4)
        c = groups.shape[4]
        return groups.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(batch, c, t * s, h * p, w * p)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        frames = self._groups_to_frames(latents)
        s = self.temporal_stride
        if s > 1:
            frames = torch.cat([frames[:, :, :s].mean(dim=2, keepdim=True), frames[:, :, s:]], dim=2)
        return frames.to(latents.dtype)

    def _decode_chunk(
        self, latents_chunk: torch.Tensor, state: DecodeStreamState
    ) -> tuple[torch.Tensor, Any]:
        if state.latent_frames == 0:
            return self._decode(latents_chunk), None
        return self._groups_to_frames(latents_chunk).to(latents_chunk.dtype), None
