"""The one latent-codec interface of the world model.

A codec maps RGB video in [-1, 1] to the (normalised) latents the transformer works on and back. Video is
``(B, 3, F, H, W)``; latents are ``(B, C, T, h, w)`` with ``h = H / spatial_stride``,
``w = W / spatial_stride`` and ``F = 1 + temporal_stride * (T - 1)``: latent frame 0 holds pixel frame 0
alone, every later latent frame holds ``temporal_stride`` pixel frames (the LTX-2 convention, SANA-WM
reference section 7).

RGB-D codecs (``depth_channels > 0``; their last ``depth_channels`` latent channels hold depth) also encode a
depth map per frame and decode one: depth is metres along the optical axis with 0 for no surface (sky), carried
inside the codec as normalised inverse depth (:func:`depth_to_channel`): ``2 * z0 / (z0 + z) - 1`` with
``z0 = DEPTH_REFERENCE_M``, so sky is -1, ``z0`` is 0 and a surface at the camera 1. Metric scale is kept: the
geometry cache built from decoded depth lives in the same metres as the camera poses.

Streaming decode (:meth:`LatentCodec.decode_stream_start` / :meth:`LatentCodec.decode_chunk`) turns latents
into pixels chunk by chunk with memory bounded in the stream length. States are immutable: ``decode_chunk``
returns a new state and never changes the one it was given, so a state can be kept to branch a rollout.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["DEPTH_REFERENCE_M", "DecodeStreamState", "LatentCodec", "channel_to_depth", "depth_to_channel"]

DEPTH_REFERENCE_M = 2.0  # z0 of the normalised inverse depth channel
SKY_CHANNEL = -0.99  # decoded channel values below this (depth beyond ~400 m) are sky (depth 0)


def depth_to_channel(depth: torch.Tensor) -> torch.Tensor:
    """Depth in metres (0 = sky) -> normalised inverse depth in [-1, 1) (sky -1)."""
    z = depth.clamp_min(0)
    q = torch.where(z > 0, DEPTH_REFERENCE_M / (DEPTH_REFERENCE_M + z), torch.zeros_like(z))
    return 2 * q - 1


def channel_to_depth(channel: torch.Tensor) -> torch.Tensor:
    """Normalised inverse depth -> metres; values at or below ``SKY_CHANNEL`` (and above 1, clamped) read as
    sky (0) and as ``z0 / 1000`` respectively."""
    q = ((channel.clamp(max=1.0) + 1) / 2).clamp_min(1e-6)
    depth = DEPTH_REFERENCE_M * (1 - q) / q
    return torch.where(channel > SKY_CHANNEL, depth.clamp_min(DEPTH_REFERENCE_M / 1000), torch.zeros_like(depth))


@dataclass(frozen=True)
class DecodeStreamState:
    """Immutable state of a streaming decode.

    ``latent_frames``: latent frames decoded so far (0 before the first chunk).
    ``batch_size`` / ``latent_hw``: fixed by the first chunk; later chunks must match.
    ``cache``: codec-specific carry-over (treat as opaque; its size does not grow with the stream).
    """

    latent_frames: int = 0
    batch_size: int | None = None
    latent_hw: tuple[int, int] | None = None
    cache: Any = None


class LatentCodec(nn.Module, abc.ABC):
    """Video <-> latent codec: the only interface generators and the transformer rely on.

    Subclasses set ``latent_channels``, ``spatial_stride`` and ``temporal_stride`` in ``__init__`` and
    implement ``_encode``, ``_decode``, ``_decode_chunk`` and ``to_config``. Argument checking lives here.
    """

    latent_channels: int
    spatial_stride: int
    temporal_stride: int
    depth_channels: int = 0  # RGB-D codecs: the last depth_channels latent channels encode depth

    # ------------------------------------------------------------------ shape arithmetic
    def num_latent_frames(self, num_frames: int) -> int:
        """Latent frames T for F pixel frames; F must be ``1 + temporal_stride * k`` (k >= 0)."""
        s = self.temporal_stride
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be an int of the form 1 + {s}*k (k >= 0), got {num_frames!r}")
        if (num_frames - 1) % s:
            raise ValueError(f"num_frames must be of the form 1 + {s}*k (k >= 0), got {num_frames}")
        return (num_frames - 1) // s + 1

    def num_pixel_frames(self, num_latent: int) -> int:
        """Pixel frames F = 1 + temporal_stride * (T - 1) decoded from T >= 1 latent frames."""
        if isinstance(num_latent, bool) or not isinstance(num_latent, int) or num_latent < 1:
            raise ValueError(f"num_latent must be an int >= 1, got {num_latent!r}")
        return 1 + self.temporal_stride * (num_latent - 1)

    def latent_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Latent grid (h, w) for an image of (H, W) pixels; both must be positive multiples of the stride."""
        s = self.spatial_stride
        if (
            not isinstance(image_hw, tuple | list)
            or len(image_hw) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in image_hw)
        ):
            raise ValueError(f"image_hw must be a pair of ints (H, W), got {image_hw!r}")
        height, width = image_hw
        if height < s or width < s or height % s or width % s:
            raise ValueError(
                f"image_hw must be positive multiples of spatial_stride={s}, got (H, W)={image_hw}"
            )
        return height // s, width // s

    # ------------------------------------------------------------------ argument checks
    def _check_video(self, video: torch.Tensor, name: str = "video") -> None:
        """Raise ValueError unless ``video`` is a float (B, 3, F, H, W) in [-1, 1] with valid F, H, W."""
        form = (
            f"a float tensor (B, 3, F, H, W) in [-1, 1], F = 1 + {self.temporal_stride}*k, "
            f"H and W multiples of {self.spatial_stride}"
        )
        if not isinstance(video, torch.Tensor):
            raise ValueError(f"{name} must be {form}, got {type(video).__name__}")
        if not video.is_floating_point():
            raise ValueError(f"{name} must be {form}, got dtype {video.dtype}")
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"{name} must be {form}, got shape {tuple(video.shape)}")
        batch, _, frames, height, width = video.shape
        if batch < 1:
            raise ValueError(f"{name} must be {form} with B >= 1, got shape {tuple(video.shape)}")
        if (frames - 1) % self.temporal_stride or frames < 1:
            raise ValueError(f"{name} must be {form}; F={frames} is not 1 + {self.temporal_stride}*k")
        s = self.spatial_stride
        if height < s or width < s or height % s or width % s:
            raise ValueError(f"{name} must be {form}; (H, W)=({height}, {width}) are not multiples of {s}")
        if not bool(torch.isfinite(video).all()):
            raise ValueError(f"{name} must be {form}; it contains NaN or inf")
        lo, hi = float(video.min()), float(video.max())
        if lo < -1.0 or hi > 1.0:
            raise ValueError(f"{name} must be {form}; its values span [{lo:.4g}, {hi:.4g}]")

    def _check_latents(self, latents: torch.Tensor, name: str = "latents") -> None:
        """Raise ValueError unless ``latents`` is a finite float (B, C, T, h, w) with C = latent_channels."""
        form = f"a finite float tensor (B, {self.latent_channels}, T, h, w) with B, T, h, w >= 1"
        if not isinstance(latents, torch.Tensor):
            raise ValueError(f"{name} must be {form}, got {type(latents).__name__}")
        if not latents.is_floating_point():
            raise ValueError(f"{name} must be {form}, got dtype {latents.dtype}")
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels or min(latents.shape) < 1:
            raise ValueError(f"{name} must be {form}, got shape {tuple(latents.shape)}")
        if not bool(torch.isfinite(latents).all()):
            raise ValueError(f"{name} must be {form}; it contains NaN or inf")

    def _with_depth(self, video: torch.Tensor, depth: torch.Tensor | None, name: str) -> torch.Tensor:
        """``video`` with the normalised depth channel appended (RGB-D codecs), checked; RGB codecs refuse depth."""
        if not self.depth_channels:
            if depth is not None:
                raise ValueError(f"this codec encodes RGB only (depth_channels=0); pass {name}=None")
            return video
        b, _, f, h, w = video.shape
        if depth is None:
            raise ValueError(f"this RGB-D codec needs {name}: a float tensor ({b}, {f}, {h}, {w}) in metres "
                             "(0 = no surface / sky)")
        if not isinstance(depth, torch.Tensor) or tuple(depth.shape) != (b, f, h, w) or not depth.is_floating_point():
            got = f"{getattr(depth, 'dtype', type(depth).__name__)} {tuple(getattr(depth, 'shape', ()))}"
            raise ValueError(f"{name} must be a float tensor ({b}, {f}, {h}, {w}) in metres (0 = sky), got {got}")
        if not bool(torch.isfinite(depth).all()) or bool((depth < 0).any()):
            raise ValueError(f"{name} must be finite and >= 0 (metres; 0 marks sky / no surface)")
        channel = depth_to_channel(depth.to(device=video.device, dtype=video.dtype))
        return torch.cat([video, channel[:, None]], dim=1)

    def _split_depth(self, frames: torch.Tensor, clamp: bool, with_depth: bool):
        """Decoded ``(B, 3 [+1], F, H, W)`` -> video (clamped if asked), plus depth metres if ``with_depth``."""
        video = frames[:, :3]
        video = video.clamp(-1.0, 1.0) if clamp else video
        if not with_depth:
            return video
        if not self.depth_channels:
            raise ValueError("with_depth=True needs an RGB-D codec (depth_channels > 0); this one encodes RGB only")
        return video, channel_to_depth(frames[:, 3])

    # ------------------------------------------------------------------ public API
    def encode(self, video: torch.Tensor, depth: torch.Tensor | None = None) -> torch.Tensor:
        """Encode video (B, 3, F, H, W) in [-1, 1] (and, for RGB-D codecs, ``depth (B, F, H, W)`` metres) to
        normalised latents (B, C, T, h, w)."""
        self._check_video(video, "video")
        return self._encode(self._with_depth(video, depth, "depth"))

    def decode(self, latents: torch.Tensor, *, clamp: bool = True, with_depth: bool = False):
        """Decode latents (B, C, T, h, w) to video (B, 3, F, H, W); with ``with_depth`` (RGB-D codecs) return
        ``(video, depth (B, F, H, W) metres)``.

        With ``clamp=True`` (default) the video is clamped to the pixel range [-1, 1] (decoders and reduced
        codecs can overshoot slightly); ``clamp=False`` returns the raw reconstruction.
        """
        self._check_latents(latents, "latents")
        return self._split_depth(self._decode(latents), clamp, with_depth)

    def encode_continuation(self, video: torch.Tensor, depth: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (B, C, k, h, w) of frames that continue a clip: ``video (B, 3, s*k, H, W)`` (and ``depth (B, s*k,
        H, W)`` for RGB-D codecs). The codec packs clips that start with a lone frame 0, so the chunk is encoded
        after a copy of its first frame and that latent dropped: exact for the patch codec, whose latent frames are
        independent of each other."""
        lead = None if depth is None else torch.cat([depth[:, :1], depth], dim=1)
        return self.encode(torch.cat([video[:, :, :1], video], dim=2), lead)[:, :, 1:]

    def encode_image(self, image: torch.Tensor, depth: torch.Tensor | None = None) -> torch.Tensor:
        """Encode images (B, 3, H, W) in [-1, 1] (RGB-D codecs: and ``depth (B, H, W)`` metres) as one-frame
        videos: latents (B, C, 1, h, w)."""
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a float tensor (B, 3, H, W) in [-1, 1], got {shape}")
        video = image.unsqueeze(2)
        self._check_video(video, "image")
        if depth is not None and isinstance(depth, torch.Tensor) and depth.ndim == 3:
            depth = depth.unsqueeze(1)
        return self._encode(self._with_depth(video, depth, "depth"))

    def decode_stream_start(self) -> DecodeStreamState:
        """Fresh state for :meth:`decode_chunk`."""
        return DecodeStreamState()

    def decode_chunk(
        self, latents_chunk: torch.Tensor, state: DecodeStreamState, *, clamp: bool = True, with_depth: bool = False
    ) -> tuple[Any, DecodeStreamState]:
        """Decode the next latent chunk (B, C, t, h, w) of a stream; returns (video_chunk, new_state), or
        ((video_chunk, depth_chunk), new_state) with ``with_depth`` (RGB-D codecs).

        The first chunk (which holds latent frame 0) yields ``1 + temporal_stride*(t-1)`` frames, later chunks
        ``temporal_stride*t``; concatenated they equal one ``decode`` of the concatenated latents (see the
        codec's docs for how exactly). ``state`` is not modified.
        """
        if not isinstance(state, DecodeStreamState):
            raise ValueError(
                f"state must be a DecodeStreamState from decode_stream_start(), got {type(state).__name__}"
            )
        self._check_latents(latents_chunk, "latents_chunk")
        batch, _, _, h, w = latents_chunk.shape
        if state.batch_size is not None and (batch, (h, w)) != (state.batch_size, state.latent_hw):
            raise ValueError(
                f"latents_chunk must have batch {state.batch_size} and latent (h, w) {state.latent_hw} like "
                f"the earlier chunks of this stream, got shape {tuple(latents_chunk.shape)}"
            )
        video, cache = self._decode_chunk(latents_chunk, state)
        new_state = DecodeStreamState(
            latent_frames=state.latent_frames + latents_chunk.shape[2],
            batch_size=batch,
            latent_hw=(h, w),
            cache=cache,
        )
        return self._split_depth(video, clamp, with_depth), new_state

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode a checked video (B, 3, F, H, W); RGB-D codecs get (B, 4, F, H, W), depth normalised."""

    @abc.abstractmethod
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode checked latents (unclamped) to (B, 3, F, H, W), or (B, 4, F, H, W) for RGB-D codecs."""

    @abc.abstractmethod
    def _decode_chunk(
        self, latents_chunk: torch.Tensor, state: DecodeStreamState
    ) -> tuple[torch.Tensor, Any]:
        """Decode one checked chunk (unclamped) -> (video_chunk, new cache); must not mutate ``state``."""

    @abc.abstractmethod
    def to_config(self) -> dict[str, Any]:
        """JSON-able config; ``world_model.codecs.build_codec(config)`` rebuilds the codec."""
