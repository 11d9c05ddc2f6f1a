"""Stage-2 refiners: stage-1 latents (+ prompt, fps) in, refined latents of the same layout out.

    refiner = load_refiner("weights/sana_wm_refiner")          # a folder (see LTX2Refiner.from_folder)
    refiner.check_compatible(world_model.codec)                 # fails early, with the reason, on a layout mismatch
    refined = refiner.refine(latents, prompt="a drone flight through a hall", fps=16, seed=42)
    video = refiner.refine_video(latents, codec, fps=16)        # decoded (B, F, 3, H, W) in [-1, 1]

Every refiner states its :class:`LatentLayout` (which codec's latents, channels, strides): refining latents of
another codec is meaningless, so :meth:`Refiner.check_compatible` compares it with a generator's codec before any
work. Latent frame 0 (the conditioning image) is the attention sink and comes back unchanged.

:class:`LTX2Refiner` runs SANA-WM's official stage 2 through diffusers' ``SanaWMLTX2Refiner`` (LTX-2 DiT + text
connectors + Gemma-3 text encoder): the distilled Euler schedule sigma = 0.909375 -> 0.725 -> 0.421875 -> 0 from
stage-1 latents noised to sigma_0, in one of two modes:

* ``"chunk_causal"`` (streaming, what the released model was trained with): blocks of ``block_size=3`` latent
  frames, each attending to the sink frame and the last ``kv_max_frames - 1 = 10`` refined frames, so cost is
  linear and memory flat in video length;
* ``"sink_bidirectional"``: every frame after the sink is refined jointly in one block that attends to all of
  them (the offline mode; memory grows with the clip).

Memory options for 24 GB cards: ``text_encoder_device="cpu"`` keeps Gemma-3 (and the small connectors) on the CPU;
prompt features are computed there once per prompt and cached. ``offload="blocks"`` keeps the DiT's blocks on the
CPU and moves one block at a time to the GPU while it runs (:func:`offload_blocks`; diffusers' own group offloading
needs ``accelerate``).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .codecs.base import LatentCodec
from .optional import require
from .video import to_uint8

DISTILLED_SIGMAS: tuple[float, ...] = (0.909375, 0.725, 0.421875, 0.0)
MODES: tuple[str, ...] = ("chunk_causal", "sink_bidirectional")
OFFICIAL_REPO = "Efficient-Large-Model/SANA-WM_streaming"
DOWNLOAD_HINT = (
    "download the official refiner (about 38 GB) and its Gemma-3-12B text encoder (about 46 GB) on a machine with "
    f"network access, e.g. `huggingface-cli download {OFFICIAL_REPO} --include 'refiner_diffusers/*' 'gemma3_12b/*' "
    "--local-dir SANA-WM_streaming`, then pass the folder SANA-WM_streaming/refiner_diffusers (with "
    "text_encoder=SANA-WM_streaming/gemma3_12b)"
)


@dataclass(frozen=True)
class LatentLayout:
    """Which latents a model works on: the codec family and its channel count and strides."""

    codec: str  # "ltx2" (LTX-2 VAE, normalised), "patch" (PatchCodec), ...
    channels: int
    temporal_stride: int
    spatial_stride: int

    @classmethod
    def of_codec(cls, codec: LatentCodec) -> LatentLayout:
        family = type(codec).__name__.lower().removesuffix("codec")  # LTX2Codec -> "ltx2", PatchCodec -> "patch"
        return cls(codec=family, channels=codec.latent_channels,
                   temporal_stride=codec.temporal_stride, spatial_stride=codec.spatial_stride)

    def mismatch(self, other: LatentLayout) -> list[str]:
        """Human-readable differences to ``other`` (empty when they match)."""
        return [f"{name} {getattr(self, name)!r} vs {getattr(other, name)!r}"
                for name in ("codec", "channels", "temporal_stride", "spatial_stride")
                if getattr(self, name) != getattr(other, name)]


@dataclass(frozen=True)
class KeptPixels:
    """Stage-1 pixels a refinement keeps: ``frames (B, F, 3, H, W)`` in [-1, 1] and ``mask (B, F, H, W)``, True
    where the refined clip shows ``frames`` instead of its own pixels (frame ``i`` of the clip is row ``i``).

    For a generator that shows its 3D cache (``show_cache``) these are its frames and ``state.last_shown_first``,
    the pixels that show frame 0's own points: exact where frame 0's depth was measured, and a refiner, which
    decodes through the codec, would only blur them. Everything else (the model's frames and what the cache shows
    of them) is the refiner's, where it helps (see :func:`kept_pixels_of`)."""

    frames: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        f, m = self.frames, self.mask
        if not isinstance(f, torch.Tensor) or f.ndim != 5 or f.shape[2] != 3 or not f.is_floating_point():
            raise ValueError(f"KeptPixels.frames must be a float tensor (B, F, 3, H, W) in [-1, 1], got "
                             f"{tuple(getattr(f, 'shape', ())) or type(f).__name__}")
        want = (f.shape[0], f.shape[1], f.shape[3], f.shape[4])
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != want:
            raise ValueError(f"KeptPixels.mask must be a bool tensor {want} (frames' B, F, H, W), got "
                             f"{getattr(m, 'dtype', type(m).__name__)} {tuple(getattr(m, 'shape', ()))}")

    def apply(self, video: torch.Tensor, first: int) -> torch.Tensor:
        """``video (B, n, 3, H, W)``, frames ``first .. first + n - 1`` of the clip, with the kept pixels put back
        (frames past the kept ones are returned as they are)."""
        n = max(0, min(video.shape[1], self.frames.shape[1] - first))
        if n == 0:
            return video
        frames = self.frames[:, first : first + n].to(video.device, video.dtype)
        mask = self.mask[:, first : first + n, None].to(video.device)
        return torch.cat([torch.where(mask, frames, video[:, :n]), video[:, n:]], dim=1)


def kept_pixels_of(frames: Sequence[torch.Tensor], shown: Sequence[torch.Tensor | None], first_image: torch.Tensor
                   ) -> KeptPixels | None:
    """:class:`KeptPixels` of a streamed clip: the first image (kept whole), then each step's ``frames (B, n, 3, H,
    W)`` and its ``state.last_shown_first (B, n, H, W)``; ``None`` when no step showed the cache."""
    if not frames or all(m is None for m in shown):
        return None
    b, _, h, w = first_image.shape
    masks = [torch.ones(b, 1, h, w, dtype=torch.bool)]
    masks += [torch.zeros(f.shape[:2] + f.shape[-2:], dtype=torch.bool) if m is None else m.cpu().bool()
              for f, m in zip(frames, shown)]
    video = torch.cat([first_image.float().cpu()[:, None], *(f.float().cpu() for f in frames)], dim=1)
    return KeptPixels(video, torch.cat(masks, dim=1))


class Refiner(abc.ABC):
    """One interface for stage-2 refiners (see module docstring)."""

    latent_layout: LatentLayout

    def check_compatible(self, target) -> None:
        """Raise ValueError unless ``target`` (codec, generator or world model) makes latents this refiner reads."""
        codec = getattr(target, "codec", target)
        if not isinstance(codec, LatentCodec):
            raise ValueError(f"target must be a LatentCodec, a generator or a world model, got {type(target).__name__}")
        diff = self.latent_layout.mismatch(LatentLayout.of_codec(codec))
        if diff:
            raise ValueError(
                f"refiner latent layout does not match the generator's codec ({'; '.join(diff)}; refiner vs codec): "
                "a refiner only works on latents of the codec it was trained with"
            )

    def check_latents(self, latents: torch.Tensor) -> None:
        lay = self.latent_layout
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[1] != lay.channels:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must be a tensor (B, {lay.channels}, T, h, w) of {lay.codec} latents, got {got}")
        if latents.shape[2] < 2:
            raise ValueError(f"latents need >= 2 latent frames (the sink and one to refine), got {latents.shape[2]}")

    #: True when :meth:`refine` needs the camera path (``c2w`` + ``intrinsics``) of the latents.
    needs_camera: bool = False

    @abc.abstractmethod
    def refine(self, latents: torch.Tensor, *, prompt: str | None = None, fps: float, seed: int = 42,
               c2w=None, intrinsics=None) -> torch.Tensor:
        """Refined latents, same shape as ``latents (B, C, T, h, w)``; frame 0 is returned unchanged.

        ``c2w (B, F, 4, 4)`` OpenCV camera-to-world poses of the ``F`` pixel frames the latents decode to and
        ``intrinsics`` ``[fx, fy, cx, cy]`` pixels ((4,) or (B, 4)): used by camera-conditioned refiners
        (``needs_camera``), ignored by the others."""

    def describe(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "latent_layout": vars(self.latent_layout)}

    @torch.no_grad()
    def refine_video(self, latents: torch.Tensor, codec: LatentCodec, *, keep: KeptPixels | None = None,
                     **kwargs) -> torch.Tensor:
        """Refine and decode with ``codec``: ``(B, F, 3, H, W)`` in [-1, 1] (F = codec's pixel frames for T).
        ``keep``: stage-1 pixels that stay as they were (:class:`KeptPixels`)."""
        self.check_compatible(codec)
        video = codec.decode(self.refine(latents, **kwargs).float()).permute(0, 2, 1, 3, 4)
        return video if keep is None else keep.apply(video, 0)

    @torch.no_grad()
    def write_refined(self, latents: torch.Tensor, codec: LatentCodec, writer, *, num_frames: int | None = None,
                      decode_chunk: int = 3, keep: KeptPixels | None = None, **kwargs) -> int:
        """Refine, then decode chunk by chunk (constant decode memory) into ``writer.write(uint8 (n, H, W, 3))``.

        Writes the first ``num_frames`` pixel frames of batch element 0 (all if None); returns how many.
        ``keep``: stage-1 pixels that stay as they were (:class:`KeptPixels`).
        """
        self.check_compatible(codec)
        z = self.refine(latents, **kwargs).float()
        state, written = codec.decode_stream_start(), 0
        limit = codec.num_pixel_frames(z.shape[2]) if num_frames is None else int(num_frames)
        for i in range(0, z.shape[2], decode_chunk):
            video, state = codec.decode_chunk(z[:, :, i : i + decode_chunk], state)
            if keep is not None:
                video = keep.apply(video.movedim(1, 2), written).movedim(1, 2)
            frames = to_uint8(video[0].movedim(0, 1))
            frames = frames[: max(0, limit - written)]
            if len(frames):
                writer.write(frames)
                written += len(frames)
        return written


# ------------------------------------------------------------------------------------------------------- LTX-2
class LTX2Refiner(Refiner):
    """SANA-WM's LTX-2 stage-2 refiner over diffusers' ``SanaWMLTX2Refiner`` (see module docstring)."""

    def __init__(
        self,
        pipeline,
        *,
        mode: str = "chunk_causal",
        block_size: int = 3,
        kv_max_frames: int = 11,
        sigmas: tuple[float, ...] = DISTILLED_SIGMAS,
        device: str | torch.device = "cpu",
        text_encoder_device: str | torch.device | None = None,
        offload: str | None = None,
    ) -> None:
        diffusers = require("diffusers", extra="refiner", feature="the LTX-2 refiner")
        if not isinstance(pipeline, diffusers.SanaWMLTX2Refiner):
            raise ValueError(f"pipeline must be a diffusers SanaWMLTX2Refiner, got {type(pipeline).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if block_size < 1 or kv_max_frames < 2:
            raise ValueError(f"block_size must be >= 1 and kv_max_frames >= 2, got {block_size}, {kv_max_frames}")
        if offload not in (None, "blocks"):
            raise ValueError(f"offload must be None or 'blocks', got {offload!r}")
        s = tuple(float(v) for v in sigmas)
        if len(s) < 2 or s[-1] != 0.0 or any(a <= b for a, b in zip(s, s[1:])):
            raise ValueError(f"sigmas must decrease strictly and end at 0.0, got {s}")
        self.pipe, self.mode, self.block_size, self.kv_max_frames, self.sigmas = pipeline, mode, block_size, \
            kv_max_frames, s
        self.device = torch.device(device)
        self.text_encoder_device = torch.device(text_encoder_device) if text_encoder_device is not None else self.device
        self.offload = offload
        cfg = pipeline.transformer.config
        t_stride, s_stride = int(cfg.vae_scale_factors[0]), int(cfg.vae_scale_factors[1])
        self.latent_layout = LatentLayout("ltx2", int(cfg.in_channels), t_stride, s_stride)
        self._prompt_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # Placement: text side (Gemma + connectors) on text_encoder_device, the DiT on device (or block-offloaded).
        pipeline.text_encoder.to(self.text_encoder_device)
        pipeline.connectors.to(self.text_encoder_device)
        pipeline.transformer.to(self.device)
        if offload == "blocks":
            offload_blocks(pipeline.transformer.transformer_blocks, self.device)
        if pipeline.vae is not None:
            pipeline.vae.to(self.device)
        refiner = self

        def encode_prompt(prompt: str, *, device, dtype):  # cached, on the text device, moved to the DiT's device
            if prompt not in refiner._prompt_cache:
                emb, mask = type(pipeline)._encode_prompt(pipeline, prompt, device=refiner.text_encoder_device,
                                                          dtype=dtype)
                refiner._prompt_cache[prompt] = (emb, mask)
            emb, mask = refiner._prompt_cache[prompt]
            return emb.to(refiner.device), mask.to(refiner.device)

        # The pipeline takes its execution device from its first component, the DiT (or its onload device).
        pipeline._encode_prompt = encode_prompt

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        text_encoder: str | Path | None = None,
        dtype: torch.dtype = torch.bfloat16,
        text_max_sequence_length: int = 1024,
        **kwargs,
    ) -> LTX2Refiner:
        """Load the official refiner from local files: ``folder/transformer``, ``folder/connectors`` (diffusers
        format, as in ``refiner_diffusers/`` of the release) and the Gemma-3 text encoder + tokenizer from
        ``text_encoder`` (default ``folder/text_encoder``, else ``folder/../gemma3_12b``). Nothing is downloaded."""
        diffusers = require("diffusers", extra="refiner", feature="the LTX-2 refiner")
        FlowMatchEulerDiscreteScheduler = diffusers.FlowMatchEulerDiscreteScheduler
        SanaWMLTX2Refiner = diffusers.SanaWMLTX2Refiner
        SanaWMLTX2RefinerTransformer3DModel = diffusers.SanaWMLTX2RefinerTransformer3DModel
        LTX2TextConnectors = require("diffusers.pipelines.ltx2.connectors", extra="refiner",
                                     feature="the LTX-2 refiner").LTX2TextConnectors

        folder = Path(folder)
        missing = [p for p in (folder / "transformer", folder / "connectors") if not (p / "config.json").is_file()]
        if missing:
            raise FileNotFoundError(f"no LTX-2 refiner at {str(folder)!r} (missing {', '.join(map(str, missing))}); "
                                    + DOWNLOAD_HINT)
        if text_encoder is None:
            text_encoder = next((p for p in (folder / "text_encoder", folder.parent / "gemma3_12b")
                                 if (p / "config.json").is_file()), None)
        if text_encoder is None or not (Path(text_encoder) / "config.json").is_file():
            raise FileNotFoundError(f"no Gemma-3 text encoder for the refiner at {str(folder)!r} (looked for "
                                    f"{folder / 'text_encoder'} and {folder.parent / 'gemma3_12b'}); " + DOWNLOAD_HINT)
        transformers = require("transformers", extra="refiner", feature="the LTX-2 refiner's text encoder")
        AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer
        AutoModelForImageTextToText = transformers.AutoModelForImageTextToText

        te_path = Path(text_encoder)
        # The release ships Gemma3ForConditionalGeneration ("gemma3"); a text-only Gemma-3 ("gemma3_text") works too.
        text_only = json.loads((te_path / "config.json").read_text()).get("model_type") == "gemma3_text"
        auto = AutoModelForCausalLM if text_only else AutoModelForImageTextToText
        tok_path = te_path / "tokenizer" if (te_path / "tokenizer").is_dir() else te_path
        tokenizer = AutoTokenizer.from_pretrained(tok_path)
        encoder = auto.from_pretrained(te_path, dtype=dtype)
        pipe = SanaWMLTX2Refiner(
            transformer=SanaWMLTX2RefinerTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=dtype),
            connectors=LTX2TextConnectors.from_pretrained(folder / "connectors", torch_dtype=dtype),
            tokenizer=tokenizer, text_encoder=encoder, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
            text_max_sequence_length=text_max_sequence_length,
        )
        return cls(pipe, **kwargs)

    def refine(self, latents: torch.Tensor, *, prompt: str | None = None, fps: float, seed: int = 42,
               c2w=None, intrinsics=None) -> torch.Tensor:
        self.check_latents(latents)  # c2w / intrinsics: the LTX-2 refiner is text-conditioned only
        if not fps > 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        t = latents.shape[2]
        block, kv = (self.block_size, self.kv_max_frames) if self.mode == "chunk_causal" else (t - 1, t)
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        out = self.pipe(latents.to(self.device), prompt or "", fps=float(fps), sink_size=1, generator=generator,
                        block_size=block, kv_max_frames=kv, sigmas=self.sigmas, output_type="latent")
        return out.to(latents.dtype)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mode": self.mode, "block_size": self.block_size,
                "kv_max_frames": self.kv_max_frames, "sigmas": list(self.sigmas), "offload": self.offload,
                "text_encoder_device": str(self.text_encoder_device)}


def offload_blocks(blocks, device: str | torch.device) -> list:
    """Keep each module of ``blocks`` on the CPU and move it to ``device`` only while it runs (block-by-block
    offload: GPU memory holds one block's weights). Returns the hook handles (``.remove()`` undoes the hooks)."""
    device = torch.device(device)
    handles = []
    for block in blocks:
        block.to("cpu")
        handles.append(block.register_forward_pre_hook(lambda m, args: (m.to(device), None)[1]))
        handles.append(block.register_forward_hook(lambda m, args, out: (m.to("cpu"), None)[1]))
        block._sana_wm_offload = True
    return handles


# ------------------------------------------------------------------------------------------------------- loading
def load_refiner(path: str | Path, *, device: str | torch.device = "cpu", what: str = "refiner",
                 **kwargs) -> Refiner:
    """A refiner from a folder, by its type: a folder with ``refiner.json`` (``{"format": "sana-wm-env/refiner",
    "type": "sana-wm" | "ltx2", ...}``: a :class:`WorldModelRefiner` or an LTX-2 refiner with ``"options"``), or
    the official LTX-2 refiner's ``transformer/`` + ``connectors/``."""
    folder = Path(path)
    meta_path = folder / "refiner.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != REFINER_FORMAT:
            raise ValueError(f"{meta_path}: format must be {REFINER_FORMAT!r}, got {meta.get('format')!r}")
        kind = meta.get("type")
        if kind == "sana-wm":
            return WorldModelRefiner.from_folder(folder, device=device, **kwargs)
        if kind == "ltx2":
            return LTX2Refiner.from_folder(folder, device=device, **{**meta.get("options", {}), **kwargs})
        raise ValueError(f"{meta_path}: unknown refiner type {kind!r} (this build reads 'sana-wm' and 'ltx2')")
    if (folder / "transformer" / "config.json").is_file():
        return LTX2Refiner.from_folder(folder, device=device, **kwargs)
    raise FileNotFoundError(
        f"{what}: no refiner at {str(folder)!r} (expected refiner.json, or transformer/ + connectors/ of the official "
        f"LTX-2 refiner). For SANA-WM's refiner, {DOWNLOAD_HINT}"
    )


# ------------------------------------------------------------------------------------------------------- SANA-WM
REFINER_FORMAT = "sana-wm-env/refiner"


def schedule_from(strength: float, schedule: tuple[float, ...] = DISTILLED_SIGMAS) -> tuple[float, ...]:
    """The sigmas a refinement of ``strength`` runs: ``strength`` itself, then the points of ``schedule`` below it,
    then 0 (e.g. 0.725 -> (0.725, 0.421875, 0.0) on the distilled schedule)."""
    s = float(strength)
    if not 0.0 < s <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    return (s, *[float(v) for v in schedule if 0.0 < float(v) < s - 1e-9], 0.0)


def refine_windows(num_latent: int, window: int) -> list[tuple[int, int]]:
    """Latent-frame ranges ``[(a, e), ...]`` covering frames ``1 .. num_latent - 1`` in the fewest windows of at
    most ``window`` frames, of near-equal sizes (sizes differ by at most one)."""
    n = num_latent - 1
    k = -(-n // window)
    bounds = [1 + (n * i) // k for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


class WorldModelRefiner(Refiner):
    """A small SANA-WM transformer as stage-2 refiner (SDEdit with a learned flow back to the ground truth).

    The stage-1 latents (frame 0, the given image, is the clean sink) are re-noised to ``sigmas[0]`` (the
    strength), then Euler steps along ``sigmas`` bring them to 0 with the transformer in bidirectional mode,
    conditioned on the camera path (UCPE + Plücker, like stage 1). The transformer was trained to flow from such
    re-noised stage-1 latents to the ground-truth latents at the same poses (``world_model.training.refine``).
    Clips longer than ``window + 1`` latent frames are refined in consecutive windows of at most ``window`` frames
    (:func:`refine_windows`: near-equal sizes), each with the sink in front (constant memory in clip length).
    Deterministic: noise depends only on ``seed``.

    Saved as a folder: ``refiner.json`` (format, type ``"sana-wm"``, latent layout, codec, sigmas, window, fps,
    image size), ``transformer/`` (``save_transformer``; float16 on disk, float32 in memory) and ``MODEL_CARD.md``.
    """

    needs_camera = True

    def __init__(self, transformer, layout: LatentLayout, *, sigmas: tuple[float, ...] = schedule_from(0.725),
                 window: int = 15, fps: float = 16.0, image_hw: tuple[int, int] | None = None,
                 codec: dict[str, Any] | None = None, device: str | torch.device = "cpu") -> None:
        from .transformer import SanaWMTransformer

        if not isinstance(transformer, SanaWMTransformer):
            raise ValueError(f"transformer must be a SanaWMTransformer, got {type(transformer).__name__}")
        if not isinstance(layout, LatentLayout):
            raise ValueError(f"layout must be a LatentLayout, got {type(layout).__name__}")
        cfg = transformer.config
        if layout.channels != cfg.in_channels or layout.temporal_stride != cfg.temporal_stride:
            raise ValueError(f"layout {vars(layout)} does not fit the transformer ({cfg.in_channels} channels, "
                             f"temporal stride {cfg.temporal_stride})")
        if cfg.has_text:
            raise ValueError("a WorldModelRefiner transformer must be text-free (caption_channels=0)")
        if cfg.geometry_channels:
            raise ValueError("a WorldModelRefiner transformer reads no geometry cache (geometry_channels=0): it "
                             "refines finished latents jointly")
        s = tuple(float(v) for v in sigmas)
        if len(s) < 2 or s[-1] != 0.0 or not 0 < s[0] <= 1 or any(a <= b for a, b in zip(s, s[1:])):
            raise ValueError(f"sigmas must start in (0, 1], decrease strictly and end at 0.0, got {s}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int (latent frames per refinement window), got {window!r}")
        self.device = torch.device(device)
        self.transformer = transformer.to(device=self.device, dtype=torch.float32).eval().requires_grad_(False)
        self.latent_layout, self.sigmas, self.window, self.fps = layout, s, window, float(fps)
        self.image_hw = None if image_hw is None else (int(image_hw[0]), int(image_hw[1]))
        self.codec_config = dict(codec) if codec is not None else None

    @property
    def strength(self) -> float:
        return self.sigmas[0]

    def with_sigmas(self, sigmas: tuple[float, ...]) -> WorldModelRefiner:
        """The same weights with another schedule (e.g. ``schedule_from(0.42)``)."""
        return WorldModelRefiner(self.transformer, self.latent_layout, sigmas=sigmas, window=self.window,
                                 fps=self.fps, image_hw=self.image_hw, codec=self.codec_config, device=self.device)

    # -- refinement ----------------------------------------------------------------------------------------
    def camera_inputs(self, latents: torch.Tensor, c2w, intrinsics):
        """Camera inputs of the whole clip (poses relative to frame 0), checked against the latents."""
        from .camera import camera_inputs_from_world, validate_c2w, validate_intrinsics

        b, _, t, h, w = latents.shape
        lay = self.latent_layout
        f = 1 + lay.temporal_stride * (t - 1)
        if c2w is None or intrinsics is None:
            raise ValueError(f"this refiner is camera-conditioned: pass c2w (B, {f}, 4, 4) OpenCV camera-to-world "
                             "poses of the pixel frames and intrinsics [fx, fy, cx, cy] in pixels")
        poses = validate_c2w(c2w, "c2w").double()
        if tuple(poses.shape) != (b, f, 4, 4):
            raise ValueError(f"c2w must have shape ({b}, {f}, 4, 4) (one pose per pixel frame of {t} latent "
                             f"frames), got {tuple(poses.shape)}")
        k = validate_intrinsics(intrinsics, "intrinsics").double()
        if tuple(k.shape) not in ((4,), (b, 4)):
            raise ValueError(f"intrinsics must have shape (4,) or ({b}, 4), got {tuple(k.shape)}")
        image_hw = (h * lay.spatial_stride, w * lay.spatial_stride)
        return camera_inputs_from_world(poses, k, image_hw, (h, w), lay.temporal_stride).to(self.device,
                                                                                           torch.float32)

    @torch.no_grad()
    def refine(self, latents: torch.Tensor, *, prompt: str | None = None, fps: float = 16.0, seed: int = 42,
               c2w=None, intrinsics=None) -> torch.Tensor:
        from .camera import CameraInputs
        from .sampling import euler_step, seeded_noise

        self.check_latents(latents)
        if prompt:
            raise ValueError("prompt: this refiner has no text conditioning (it follows the camera path); "
                             "drop the prompt")
        if not fps > 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        camera = self.camera_inputs(latents, c2w, intrinsics)
        b, c, t, h, w = latents.shape
        z = latents.to(self.device, torch.float32)
        noise = seeded_noise((b, c, t, h, w), [int(seed)] * b, 0, device=self.device)
        out = z.clone()
        s = self.sigmas
        for a, e in refine_windows(t, self.window):
            x = torch.cat([z[:, :, :1], (1 - s[0]) * z[:, :, a:e] + s[0] * noise[:, :, a:e]], dim=2)
            cam = CameraInputs.cat([camera.slice_frames(0, 1), camera.slice_frames(a, e)])
            for i in range(len(s) - 1):
                ts = torch.full((b, x.shape[2]), s[i] * 1000.0, device=self.device)
                ts[:, 0] = 0.0
                v = self.transformer(x, ts, camera=cam, mode="bidirectional")
                x = euler_step(x, v.float(), s[i], s[i + 1])
                x[:, :, :1] = z[:, :, :1]
            out[:, :, a:e] = x[:, :, 1:]
        return out.to(latents.dtype)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sigmas": list(self.sigmas), "window": self.window,
                "parameters": self.transformer.num_parameters(), "fps": self.fps}

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, folder: str | Path, *, card: str | None = None, metadata: dict[str, Any] | None = None,
             dtype: torch.dtype = torch.float16) -> Path:
        """Write the refiner folder (weights cast to ``dtype`` on disk; see the class docstring)."""
        import copy

        from .checkpoints import save_transformer

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_transformer(copy.deepcopy(self.transformer).to("cpu", dtype), folder / "transformer",
                         metadata=metadata or {})
        meta = {"format": REFINER_FORMAT, "type": "sana-wm", "version": 1,
                "latent_layout": vars(self.latent_layout), "codec": self.codec_config, "sigmas": list(self.sigmas),
                "window": self.window, "fps": self.fps, "image_hw": list(self.image_hw) if self.image_hw else None}
        (folder / "refiner.json").write_text(json.dumps(meta, indent=2) + "\n")
        if card is not None:
            (folder / "MODEL_CARD.md").write_text(card)
        return folder

    @classmethod
    def from_folder(cls, folder: str | Path, *, device: str | torch.device = "cpu", sigmas=None,
                    strength: float | None = None) -> WorldModelRefiner:
        """Load a saved refiner; ``strength`` (or explicit ``sigmas``) overrides the stored schedule."""
        from .checkpoints import load_transformer

        folder = Path(folder)
        meta = json.loads((folder / "refiner.json").read_text())
        lay = meta.get("latent_layout") or {}
        try:
            layout = LatentLayout(str(lay["codec"]), int(lay["channels"]), int(lay["temporal_stride"]),
                                  int(lay["spatial_stride"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{folder / 'refiner.json'}: latent_layout must hold codec, channels, temporal_stride "
                             f"and spatial_stride, got {lay!r}") from None
        if sigmas is None:
            sigmas = schedule_from(strength) if strength is not None else tuple(meta["sigmas"])
        transformer = load_transformer(folder / "transformer", dtype=torch.float32)
        return cls(transformer, layout, sigmas=tuple(sigmas), window=int(meta.get("window", 15)),
                   fps=float(meta.get("fps", 16.0)), image_hw=meta.get("image_hw"), codec=meta.get("codec"),
                   device=device)


class RefinedGenerator:
    """Stage 1 then stage 2 behind the generator interface's ``generate`` (offline: the whole clip is rolled out by
    the causal ``stage1`` generator, then its latents are refined and decoded). For evaluation protocols that call
    ``generate``; there is no streaming ``start``/``step`` (refinement needs the finished clip). Frame 0's depth
    (``depth=``) goes to a stage-1 generator that takes it (:attr:`takes_depth`)."""

    streaming = False

    def __init__(self, stage1, refiner: Refiner, *, fps: float) -> None:
        refiner.check_compatible(stage1.codec)
        if not fps > 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.stage1, self.refiner, self.fps = stage1, refiner, float(fps)
        self.codec = stage1.codec

    @property
    def takes_depth(self) -> bool:
        """Whether the stage-1 generator uses frame 0's depth (geometry-guided models)."""
        return bool(getattr(self.stage1, "takes_depth", False))

    def valid_num_frames(self, num_chunks: int) -> int:
        return self.stage1.valid_num_frames(num_chunks)

    @torch.no_grad()
    def stage1_latents(self, image: torch.Tensor, intrinsics, c2w, *, seed=0,
                       depth: torch.Tensor | None = None) -> torch.Tensor:
        """The stage-1 latents ``(B, C, T, h, w)`` of a clip (latent frame 0 = the encoded image); ``depth``:
        frame 0's ``(B, H, W)`` metres for a stage-1 generator that takes it."""
        return self.stage1_clip(image, intrinsics, c2w, seed=seed, depth=depth)[0]

    @torch.no_grad()
    def stage1_clip(self, image: torch.Tensor, intrinsics, c2w, *, seed=0, depth: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, KeptPixels | None]:
        """The stage-1 latents and the pixels a refinement keeps (where a ``show_cache`` generator showed frame 0's
        points; ``None`` for other generators)."""
        poses = self.stage1._check_clip_poses(c2w)
        extra = {} if depth is None else {"depth": depth}
        state = self.stage1.start(image, intrinsics, c2w=poses[:, 0], seed=seed, **extra)
        chunks, frames, shown, done = [], [], [], 1
        while done < poses.shape[1]:
            n = self.stage1.frames_per_step(state)
            out, state = self.stage1.step(state, poses[:, done : done + n])
            chunks.append(state.latents.float())
            frames.append(out)
            shown.append(state.last_shown_first)
            done += n
        return torch.cat(chunks, dim=2), kept_pixels_of(frames, shown, image)

    @torch.no_grad()
    def generate(self, image: torch.Tensor, intrinsics, c2w, *, seed: int = 0, progress=None,
                 depth: torch.Tensor | None = None, **start_kwargs) -> torch.Tensor:
        """Refined clip ``(B, F, 3, H, W)`` in [-1, 1] for poses ``c2w (B, F, 4, 4)``; frame 0 is ``image``
        (``depth``: its depth, for a stage-1 generator that takes it)."""
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an int (one refinement seed for the batch), got {seed!r}")
        z1, keep = self.stage1_clip(image, intrinsics, c2w, seed=seed, depth=depth)
        k = torch.as_tensor(intrinsics, dtype=torch.float32)
        video = self.refiner.refine_video(z1, self.codec, keep=keep, fps=self.fps, seed=seed,
                                          c2w=torch.as_tensor(c2w, dtype=torch.float32), intrinsics=k).cpu()
        return torch.cat([image.float().clamp(-1, 1)[:, None].cpu(), video[:, 1:]], dim=1)

    def start(self, *args, **kwargs):
        raise ValueError("RefinedGenerator refines finished clips: use generate() (or the stage-1 generator to "
                         "stream)")

    step = frames_per_step = start
