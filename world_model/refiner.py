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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .codecs.base import LatentCodec

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

    @abc.abstractmethod
    def refine(self, latents: torch.Tensor, *, prompt: str | None = None, fps: float, seed: int = 42) -> torch.Tensor:
        """Refined latents, same shape as ``latents (B, C, T, h, w)``; frame 0 is returned unchanged."""

    def describe(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "latent_layout": vars(self.latent_layout)}

    @torch.no_grad()
    def refine_video(self, latents: torch.Tensor, codec: LatentCodec, **kwargs) -> torch.Tensor:
        """Refine and decode with ``codec``: ``(B, F, 3, H, W)`` in [-1, 1] (F = codec's pixel frames for T)."""
        self.check_compatible(codec)
        return codec.decode(self.refine(latents, **kwargs).float()).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def write_refined(self, latents: torch.Tensor, codec: LatentCodec, writer, *, num_frames: int | None = None,
                      decode_chunk: int = 3, **kwargs) -> int:
        """Refine, then decode chunk by chunk (constant decode memory) into ``writer.write(uint8 (n, H, W, 3))``.

        Writes the first ``num_frames`` pixel frames of batch element 0 (all if None); returns how many.
        """
        self.check_compatible(codec)
        z = self.refine(latents, **kwargs).float()
        state, written = codec.decode_stream_start(), 0
        limit = codec.num_pixel_frames(z.shape[2]) if num_frames is None else int(num_frames)
        for i in range(0, z.shape[2], decode_chunk):
            video, state = codec.decode_chunk(z[:, :, i : i + decode_chunk], state)
            frames = ((video[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
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
        from diffusers import SanaWMLTX2Refiner

        if not isinstance(pipeline, SanaWMLTX2Refiner):
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
        from diffusers import FlowMatchEulerDiscreteScheduler, SanaWMLTX2Refiner, SanaWMLTX2RefinerTransformer3DModel
        from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors

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
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

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

    def refine(self, latents: torch.Tensor, *, prompt: str | None = None, fps: float, seed: int = 42) -> torch.Tensor:
        self.check_latents(latents)
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
    """A refiner from a folder: an official LTX-2 refiner (``transformer/`` + ``connectors/``), or a folder with
    ``refiner.json`` (``{"format": "sana-wm-env/refiner", "type": "ltx2", "options": {...}}``)."""
    folder = Path(path)
    meta_path = folder / "refiner.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "sana-wm-env/refiner":
            raise ValueError(f"{meta_path}: format must be 'sana-wm-env/refiner', got {meta.get('format')!r}")
        if meta.get("type") != "ltx2":
            raise ValueError(f"{meta_path}: unknown refiner type {meta.get('type')!r} (this build reads 'ltx2')")
        return LTX2Refiner.from_folder(folder, device=device, **{**meta.get("options", {}), **kwargs})
    if (folder / "transformer" / "config.json").is_file():
        return LTX2Refiner.from_folder(folder, device=device, **kwargs)
    raise FileNotFoundError(
        f"{what}: no refiner at {str(folder)!r} (expected refiner.json, or transformer/ + connectors/ of the official "
        f"LTX-2 refiner). For SANA-WM's refiner, {DOWNLOAD_HINT}"
    )
