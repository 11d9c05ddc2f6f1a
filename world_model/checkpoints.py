"""Loading and saving SANA-WM transformer weights.

:func:`load_transformer` accepts every published form of the stage-1 DiT weights, plus our own:

- **sana-wm-env folder** (written by :func:`save_transformer`): ``config.json`` (a ``ModelConfig`` dict
  marked ``"_format": "sana-wm-env"``) + ``model.safetensors``.
- **diffusers folder**: ``config.json`` with ``_class_name`` ``SanaWMTransformer3DModel`` +
  ``diffusion_pytorch_model.safetensors`` (or sharded with ``...safetensors.index.json``), or a pipeline folder
  holding it in ``transformer/``. The config is translated to a ``ModelConfig`` with the two numerical
  variants of diffusers 0.42 switched on (``ucpe_rms_renorm=True``, ``cam_softmax_scale="padded"``).
  diffusers drops the learned null caption ``y_embedder.y_embedding``: it keeps its random initial value.
- **official file** (``*.safetensors`` / ``*.pt`` / ``*.pth`` / ``*.bin``): the released bidirectional /
  chunk-causal safetensors or the streaming ``model.pt`` (wrapped in ``generator`` / ``model`` /
  ``state_dict`` dicts and/or keys prefixed with ``model.``). The architecture comes from ``config=``
  (default preset ``sana-wm-1.6b``); ``pos_embed`` is dropped.
- **Hugging Face repo id** (``Efficient-Large-Model/SANA-WM_bidirectional`` ...): resolved from the local
  Hugging Face cache only (never downloaded here); when it is not cached the error says what to download.

Keys are checked strictly (missing / unexpected / mis-shaped keys raise one :class:`CheckpointError` naming
the file). Weights keep the checkpoint's floating dtype unless ``dtype`` is given (the official files are
fp32; upstream casts them to bf16 for inference — pass ``dtype=torch.bfloat16`` to do the same).
The model is built on the meta device and the loaded tensors are assigned, so a 1.6B load costs one copy.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import PRESETS, ModelConfig, get_config
from .layers.common import CaptionEmbedder
from .optional import require
from .transformer import SanaWMTransformer

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_NAME",
    "KNOWN_REPO_FILES",
    "CheckpointError",
    "CheckpointNotFoundError",
    "build_transformer",
    "diffusers_config_to_model_config",
    "diffusers_kwargs_from_model_config",
    "load_transformer",
    "read_metadata",
    "save_transformer",
]

FORMAT_NAME = "sana-wm-env"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
DIFFUSERS_CLASS = "SanaWMTransformer3DModel"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_WEIGHTS_BIN = "diffusion_pytorch_model.bin"
DEFAULT_PRESET = "sana-wm-1.6b"

# Stage-1 DiT file of each official Hugging Face repo (docs/architecture.md#official-checkpoints).
KNOWN_REPO_FILES: dict[str, str] = {
    "Efficient-Large-Model/SANA-WM_bidirectional": "dit/sana_wm_1600m_720p.safetensors",
    "Efficient-Large-Model/SANA-WM_chunk_causal": "dit/sana_wm_chunk_causal_1600m_720p.safetensors",
    "Efficient-Large-Model/SANA-WM_streaming": "sana_dit/model.pt",
}

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_WRAPPER_KEYS = ("generator", "state_dict", "model", "module")
_KEY_PREFIXES = ("model.", "module.", "_orig_mod.")
_DROP_KEYS = frozenset({"pos_embed"})  # fixed sin-cos table in upstream checkpoints; we use RoPE
_NULL_CAPTION = "y_embedder.y_embedding"
_DIFFUSERS_RENAMES = {"t_embedder.linear_1.": "t_embedder.mlp.0.", "t_embedder.linear_2.": "t_embedder.mlp.2."}
_MAX_LISTED = 10

# diffusers config.json field -> ModelConfig field.
_DIFFUSERS_FIELDS = {
    "num_layers": "depth",
    "hidden_size": "hidden_size",
    "linear_head_dim": "head_dim",
    "num_attention_heads": "cross_attn_heads",
    "softmax_every_n": "softmax_every_n",
    "mlp_ratio": "mlp_ratio",
    "t_kernel_size": "t_kernel_size",
    "conv_kernel_size": "conv_kernel_size",
    "in_channels": "in_channels",
    "patch_size": "patch_size",
    "chunk_plucker_channels": "plucker_channels",
    "chunk_plucker_post_attn_blocks": "plucker_blocks",
    "caption_channels": "caption_channels",
}
# diffusers fields whose value changes the architecture or numerics: only these values are implemented here.
_DIFFUSERS_FIXED: dict[str, Any] = {
    "cross_norm": True,
    "qk_norm": True,
    "y_norm": True,
    "k_conv_only": True,
    "ffn_type": "GLUMBConvTemp",
    "pos_embed_type": "wan_rope",
    "use_chunk_plucker_post_attn": True,
    "cam_attn_compress": 1,
    "mlp_acts": ["silu", "silu", None],
    "use_pe": True,  # False would drop RoPE
    "pred_sigma": False,  # True would double the output channels
}
# diffusers fields that carry no architecture (or are unused by diffusers itself).
_DIFFUSERS_INFO = frozenset({
    "_class_name", "_diffusers_version", "_name_or_path", "_use_default_values",
    "init_cam_from_base", "fp32_attention", "image_size", "mixed_precision", "learn_sigma",
})
_DIFFUSERS_NUMERICS = {"ucpe_rms_renorm": True, "cam_softmax_scale": "padded"}


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used: corrupt file, wrong format, or keys/shapes that do not match."""


class CheckpointNotFoundError(FileNotFoundError):
    """No checkpoint at the given path, or a Hugging Face repo file that is not in the local cache."""


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------
def build_transformer(
    preset_or_config: str | ModelConfig | dict[str, Any],
    seed: int | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> SanaWMTransformer:
    """A randomly initialised transformer (preset name, ``ModelConfig`` or config dict).

    ``seed`` makes the initialisation reproducible without touching the global RNG state.
    """
    config = get_config(preset_or_config)
    if seed is None:
        model = SanaWMTransformer(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SanaWMTransformer(config)
    return model.to(device=device, dtype=dtype)


def save_transformer(
    model: SanaWMTransformer,
    folder: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` as a sana-wm-env folder (``config.json`` + ``model.safetensors``); returns the folder.

    ``metadata`` (JSON-serialisable: training step, data, ...) is stored in ``config.json`` under
    ``_metadata``; read it back with :func:`read_metadata`. ``dtype`` stores the floating weights in that dtype
    (e.g. ``torch.float16`` halves a shipped bundle); ``None`` keeps the model's dtype.
    """
    if not isinstance(model, SanaWMTransformer):
        raise ValueError(f"model must be a SanaWMTransformer, got {type(model).__name__}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"folder must be a directory path, but {folder} is a file")
    meta = dict(metadata or {})
    try:
        json.dumps(meta)
    except TypeError as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
               .contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "producer": FORMAT_NAME})
    doc = {"_format": FORMAT_NAME, "_format_version": FORMAT_VERSION, "_metadata": meta, **model.config.to_dict()}
    (folder / CONFIG_NAME).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    logger.info("saved %s (%d tensors, %.3gM parameters) to %s", FORMAT_NAME, len(tensors),
                model.num_parameters() / 1e6, folder)
    return folder


def grow_transformer(source: SanaWMTransformer, config: ModelConfig | str | dict[str, Any], *, seed: int = 0
                     ) -> tuple[SanaWMTransformer, dict[str, list[str]]]:
    """A model of ``config`` that starts from ``source``'s weights: same-named tensors are copied; where
    ``config`` is larger (more latent channels, e.g. an RGB-D codec's depth) the old part is copied and the new
    part zeroed, so the grown model computes what ``source`` did on the old channels and nothing on the new
    ones; tensors ``source`` lacks (e.g. the geometry embedding) keep their initialisation.

    Returns ``(model, {"copied": [...], "grown": [...], "new": [...], "skipped": [...]})``; a tensor that
    shrinks or changes rank is skipped (left at its initialisation)."""
    model = build_transformer(config, seed=seed, dtype=torch.float32)
    old = {k: v.detach().float() for k, v in source.state_dict().items()}
    report: dict[str, list[str]] = {"copied": [], "grown": [], "new": [], "skipped": []}
    new_state = model.state_dict()
    with torch.no_grad():
        for name, tensor in new_state.items():
            if name not in old:
                report["new"].append(name)
                continue
            src = old[name]
            if src.shape == tensor.shape:
                tensor.copy_(src)
                report["copied"].append(name)
            elif src.ndim == tensor.ndim and all(a <= b for a, b in zip(src.shape, tensor.shape)):
                tensor.zero_()
                tensor[tuple(slice(0, n) for n in src.shape)] = src
                report["grown"].append(name)
            else:
                report["skipped"].append(name)
    model.load_state_dict(new_state)
    return model, report


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """The ``metadata`` stored by :func:`save_transformer` in a sana-wm-env folder."""
    doc = _read_json(Path(folder) / CONFIG_NAME)
    if doc.get("_format") != FORMAT_NAME:
        raise CheckpointError(f"{Path(folder) / CONFIG_NAME} is not a {FORMAT_NAME} config (no _format marker)")
    return dict(doc.get("_metadata", {}))


def load_transformer(
    name_or_path: str | Path,
    *,
    config: str | ModelConfig | dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    variant: str | None = None,
    strict: bool = True,
    trust_pickle: bool = False,
) -> SanaWMTransformer:
    """Load transformer weights from a folder, an official file or a cached Hugging Face repo (see module doc).

    Args:
        name_or_path: local folder / file, or a Hugging Face repo id (``org/name``; local cache only).
        config: architecture. Required form for official files (default preset ``sana-wm-1.6b``); for folders
            it overrides the stored config (the weights are still checked against it).
        dtype: cast floating weights to this dtype; ``None`` keeps the checkpoint's dtype.
        device: where the returned model lives.
        variant: weight-file variant of a folder (``model.<variant>.safetensors`` /
            ``diffusion_pytorch_model.<variant>.safetensors``).
        strict: if False, missing keys keep their initial value and unexpected keys are ignored (both logged).
            Mis-shaped keys are always an error.
        trust_pickle: allow arbitrary pickled objects in ``.pt`` files (``torch.load(weights_only=False)``).
            Only for files from a trusted source.

    Returns the model in eval mode.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    if variant is not None and (not isinstance(variant, str) or not re.fullmatch(r"[\w-]+", variant)):
        raise ValueError(f"variant must be a short name such as 'fp16' or None, got {variant!r}")
    source = _resolve(name_or_path, variant)
    if config is not None:
        cfg = get_config(config)
        if source.config is not None and _arch(source.config) != _arch(cfg):
            logger.warning("%s: config= overrides the stored config (differs in %s)", source.label,
                           _config_diff(source.config, cfg))
    elif source.config is not None:
        cfg = source.config
    else:
        cfg = PRESETS[DEFAULT_PRESET]

    state = _read_state_dict(source, trust_pickle=trust_pickle)
    allowed_missing = set(source.allowed_missing)
    state, extra_allowed = _normalize_keys(state, source)
    allowed_missing |= extra_allowed

    with torch.device("meta"):
        model = SanaWMTransformer(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = _check_keys(state, expected, allowed_missing, cfg, source, strict)

    state_dtype = _common_float_dtype(state, source.label)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=True)
    if missing:
        _fill_missing(model, cfg, missing, state_dtype)
    model = model.to(device=device, dtype=dtype or state_dtype).eval()
    logger.info(
        "loaded %s checkpoint %s: %d tensors, %.4gM parameters, depth %d, hidden %d, dtype %s, device %s%s",
        source.kind, source.label, len(state), model.num_parameters() / 1e6, cfg.depth, cfg.hidden_size,
        model.dtype, model.device, f"; kept initial values for {sorted(missing)}" if missing else "",
    )
    if unexpected:
        logger.info("%s: ignored %d unexpected keys", source.label, len(unexpected))
    return model


def diffusers_config_to_model_config(data: Mapping[str, Any]) -> ModelConfig:
    """Translate a diffusers ``SanaWMTransformer3DModel`` ``config.json`` dict into a :class:`ModelConfig`.

    Fields whose values this implementation does not support, and unknown fields, raise ``ValueError``.
    The diffusers 0.42 numerical variants are switched on so the forward matches diffusers.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"data must be a dict (diffusers config.json), got {type(data).__name__}")
    cls = data.get("_class_name", DIFFUSERS_CLASS)
    if cls != DIFFUSERS_CLASS:
        raise ValueError(f"_class_name must be {DIFFUSERS_CLASS!r}, got {cls!r}")
    unknown = sorted(set(data) - set(_DIFFUSERS_FIELDS) - set(_DIFFUSERS_FIXED) - _DIFFUSERS_INFO)
    if unknown:
        raise ValueError(f"unknown diffusers config fields {unknown}; known: "
                         f"{sorted(set(_DIFFUSERS_FIELDS) | set(_DIFFUSERS_FIXED) | _DIFFUSERS_INFO)}")
    for name, required in _DIFFUSERS_FIXED.items():
        if name in data:
            value = list(data[name]) if isinstance(data[name], list | tuple) else data[name]
            if value != required:
                raise ValueError(f"diffusers config field {name!r} = {data[name]!r} is not supported; "
                                 f"this implementation requires {required!r}")
    kwargs: dict[str, Any] = {ours: data[theirs] for theirs, ours in _DIFFUSERS_FIELDS.items() if theirs in data}
    if "patch_size" in kwargs:
        kwargs["patch_size"] = tuple(kwargs["patch_size"])
    if kwargs.get("caption_channels", 1) <= 0:
        raise ValueError(f"diffusers config field 'caption_channels' must be > 0, got {kwargs['caption_channels']}")
    return ModelConfig(**kwargs, **_DIFFUSERS_NUMERICS, meta={"source": "diffusers"})


def diffusers_kwargs_from_model_config(config: ModelConfig) -> dict[str, Any]:
    """Constructor kwargs of diffusers' ``SanaWMTransformer3DModel`` with ``config``'s architecture.

    The inverse of :func:`diffusers_config_to_model_config` (benchmarks and oracles build the diffusers model
    from our configs). diffusers always has text cross-attention, so ``config`` must be a text model.
    """
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    if not config.has_text:
        raise ValueError("diffusers' SanaWMTransformer3DModel always has text cross-attention; config has "
                         "caption_channels=0")
    kwargs = {theirs: getattr(config, ours) for theirs, ours in _DIFFUSERS_FIELDS.items()}
    kwargs["patch_size"] = tuple(config.patch_size)
    if config.plucker_blocks < 0:
        kwargs["chunk_plucker_post_attn_blocks"] = config.depth
    return kwargs


# --------------------------------------------------------------------------------------------------
# Resolution of name_or_path
# --------------------------------------------------------------------------------------------------
@dataclass
class _Source:
    kind: str  # "sana-wm-env" | "diffusers" | "official"
    files: list[Path]
    label: str
    config: ModelConfig | None = None
    allowed_missing: set[str] = field(default_factory=set)


def _resolve(name_or_path: str | Path, variant: str | None) -> _Source:
    if not isinstance(name_or_path, str | Path):
        raise ValueError(f"name_or_path must be a path or repo id string, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _resolve_folder(path, variant)
    if path.is_file():
        if variant is not None:
            raise ValueError(f"variant applies to folders only; {path} is a single file")
        return _resolve_file(path)
    text = str(name_or_path)
    if text in PRESETS:
        raise CheckpointNotFoundError(
            f"{text!r} is a config preset, not a checkpoint; use build_transformer({text!r}) for random weights")
    if isinstance(name_or_path, str) and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not text.endswith(
        (".safetensors", *_TORCH_SUFFIXES)
    ):
        return _resolve_repo(text, variant)
    raise CheckpointNotFoundError(f"no checkpoint file or folder at {path} (and it is not a Hugging Face repo id)")


def _resolve_folder(folder: Path, variant: str | None) -> _Source:
    cfg_path = folder / CONFIG_NAME
    if cfg_path.is_file():
        doc = _read_json(cfg_path)
        if doc.get("_format") == FORMAT_NAME:
            return _native_source(folder, doc, variant)
        if "_class_name" in doc:
            if doc["_class_name"] != DIFFUSERS_CLASS:
                raise CheckpointError(f"{cfg_path} describes a diffusers {doc['_class_name']!r}, "
                                      f"not a {DIFFUSERS_CLASS}")
            return _diffusers_source(folder, doc, variant)
        if not (folder / "transformer").is_dir():
            raise CheckpointError(f"{cfg_path} is neither a {FORMAT_NAME} config ('_format' marker) nor a "
                                  f"diffusers {DIFFUSERS_CLASS} config ('_class_name')")
    if (folder / "transformer" / CONFIG_NAME).is_file():
        return _resolve_folder(folder / "transformer", variant)
    found = [folder / rel for rel in KNOWN_REPO_FILES.values() if (folder / rel).is_file()]
    if len(found) == 1 and variant is None:  # e.g. a `--local-dir` download of one official file
        return _resolve_file(found[0])
    raise CheckpointNotFoundError(
        f"{folder} holds no recognised checkpoint: expected {CONFIG_NAME} + {WEIGHTS_NAME} ({FORMAT_NAME}), "
        f"{CONFIG_NAME} + {DIFFUSERS_WEIGHTS} (diffusers), a transformer/ subfolder, or one of "
        f"{sorted(KNOWN_REPO_FILES.values())}" + (f" (found {len(found)})" if found else "")
    )


def _variant_name(name: str, variant: str | None) -> str:
    if variant is None:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _native_source(folder: Path, doc: dict[str, Any], variant: str | None) -> _Source:
    version = doc.get("_format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{folder / CONFIG_NAME}: unsupported {FORMAT_NAME} format version {version!r} "
                              f"(this code reads version {FORMAT_VERSION})")
    fields = {k: v for k, v in doc.items() if not k.startswith("_")}
    try:
        cfg = ModelConfig.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / CONFIG_NAME}: invalid model config: {exc}") from exc
    weights = folder / _variant_name(WEIGHTS_NAME, variant)
    if not weights.is_file():
        raise CheckpointNotFoundError(f"{folder} has a {FORMAT_NAME} config but no weight file {weights.name}")
    return _Source(FORMAT_NAME, [weights], str(weights), cfg)


def _diffusers_source(folder: Path, doc: dict[str, Any], variant: str | None) -> _Source:
    try:
        cfg = diffusers_config_to_model_config(doc)
    except ValueError as exc:
        raise CheckpointError(f"{folder / CONFIG_NAME}: {exc}") from exc
    single = folder / _variant_name(DIFFUSERS_WEIGHTS, variant)
    index = folder / _variant_name(DIFFUSERS_WEIGHTS + ".index.json", variant)
    binary = folder / _variant_name(DIFFUSERS_WEIGHTS_BIN, variant)
    if single.is_file():
        files, label = [single], str(single)
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no 'weight_map'; it looks truncated or corrupt")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointNotFoundError(f"{index} lists shard files that are missing: {absent}")
        label = str(index)
    elif binary.is_file():
        files, label = [binary], str(binary)
    else:
        raise CheckpointNotFoundError(f"{folder} has a diffusers config but no {single.name}, {index.name} or "
                                      f"{binary.name}")
    return _Source("diffusers", files, label, cfg, {_NULL_CAPTION})


def _resolve_file(path: Path) -> _Source:
    suffix = path.suffix.lower()
    if suffix != ".safetensors" and suffix not in _TORCH_SUFFIXES:
        raise CheckpointError(f"{path}: unsupported file type {suffix!r}; expected .safetensors or one of "
                              f"{list(_TORCH_SUFFIXES)} (or a checkpoint folder)")
    return _Source("official", [path], str(path))


def _resolve_repo(repo_id: str, variant: str | None) -> _Source:
    """A cached Hugging Face repo: the known stage-1 file of an official repo, else a cached snapshot folder."""
    filename = KNOWN_REPO_FILES.get(repo_id)
    feature = "loading a checkpoint by Hugging Face repo id"
    huggingface_hub = require("huggingface_hub", extra="ltx2", feature=feature)
    errors = require("huggingface_hub.errors", extra="ltx2", feature=feature)
    try:
        if filename is not None:
            return _resolve_file(Path(huggingface_hub.hf_hub_download(repo_id, filename, local_files_only=True)))
        return _resolve_folder(Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True)), variant)
    except (errors.LocalEntryNotFoundError, FileNotFoundError) as exc:
        logger.debug("%s not in the local Hugging Face cache: %s", repo_id, exc)
    except Exception as exc:  # invalid repo id, broken cache: report as not available
        logger.debug("Hugging Face cache lookup for %s failed: %s", repo_id, exc)
    what = filename or "<file or folder with the transformer>"
    cmd = f"{repo_id} {filename}" if filename else repo_id
    raise CheckpointNotFoundError(
        f"{repo_id!r} is not a local path and {what} of Hugging Face repo {repo_id} is not in the local cache "
        f"(looked up offline; nothing is downloaded). Download it with\n"
        f"    huggingface-cli download {cmd} --local-dir DIR\n"
        f"(with huggingface_hub >= 1.0: `hf download {cmd} --local-dir DIR`), then pass the local path "
        f"{'DIR/' + filename if filename else 'DIR'} to load_transformer."
    )


# --------------------------------------------------------------------------------------------------
# Reading and checking state dicts
# --------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON; it looks truncated or corrupt ({exc})") from exc
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(doc).__name__}")
    return doc


def _read_state_dict(source: _Source, *, trust_pickle: bool) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for path in source.files:
        part = _read_safetensors(path) if path.suffix.lower() == ".safetensors" else _read_torch(path, trust_pickle)
        clash = sorted(set(part) & set(state))
        if clash:
            raise CheckpointError(f"{path}: keys repeated across shards: {_listing(clash)}")
        state.update(part)
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file; it looks truncated or corrupt ({exc})") from exc


def _read_torch(path: Path, trust_pickle: bool) -> Any:
    def load(mmap: bool) -> Any:
        return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle, mmap=mmap)

    try:
        try:
            obj = load(mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = load(mmap=False)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) or "weights_only" in str(exc):
            raise CheckpointError(
                f"{path} holds pickled objects other than tensors, so it was not loaded with weights_only=True. "
                f"If the file comes from a trusted source pass trust_pickle=True ({str(exc).splitlines()[0]})"
            ) from exc
        raise CheckpointError(f"{path}: cannot unpickle; it looks truncated or corrupt ({exc})") from exc
    except (PermissionError, IsADirectoryError):
        raise
    except Exception as exc:  # zip reader / EOF / OSError on a cut file
        raise CheckpointError(f"{path}: cannot read torch file; it looks truncated or corrupt "
                              f"({type(exc).__name__}: {exc})") from exc
    return obj


def _unwrap(obj: Any, label: str) -> dict[str, Any]:
    """Descend ``generator`` / ``state_dict`` / ``model`` / ``module`` wrappers down to the tensor dict."""
    trail = []
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                trail.append(key)
                obj = obj[key]
                break
        else:
            raise CheckpointError(f"{label}: no state dict found (top-level keys {_listing(sorted(map(str, obj)))}; "
                                  f"looked inside {list(_WRAPPER_KEYS)})")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{label} holds a {type(obj).__name__}, not a state dict")
    if trail:
        logger.info("%s: state dict found under %s", label, "/".join(trail))
    return dict(obj)


def _normalize_keys(state: dict[str, Any], source: _Source) -> tuple[dict[str, Any], set[str]]:
    """Official layout names: unwrap, strip prefixes, rename diffusers keys, drop ``pos_embed``."""
    allowed: set[str] = set()
    if source.kind == FORMAT_NAME:
        return state, allowed
    if source.kind == "official":
        state = _unwrap(state, source.label)
        stripped = {}
        for key, value in state.items():
            new = str(key)
            while new.startswith(_KEY_PREFIXES):
                new = new.split(".", 1)[1]
            if new in stripped:
                raise CheckpointError(f"{source.label}: key {new!r} occurs twice after stripping prefixes "
                                      f"{list(_KEY_PREFIXES)}")
            stripped[new] = value
        if any(k.startswith(tuple(_DIFFUSERS_RENAMES)) for k in stripped):
            warnings.warn(
                f"{source.label} has diffusers-style key names; loading it with config flags as given "
                f"(the diffusers forward needs ucpe_rms_renorm=True, cam_softmax_scale='padded': pass the "
                f"diffusers folder to get them set)", stacklevel=3,
            )
            allowed.add(_NULL_CAPTION)
        state = stripped
    renamed = {}
    for key, value in state.items():
        for old, new in _DIFFUSERS_RENAMES.items():
            if key.startswith(old):
                key = new + key[len(old):]
        renamed[key] = value
    dropped = sorted(k for k in renamed if k in _DROP_KEYS)
    if dropped:
        logger.info("%s: dropped %s", source.label, dropped)
    return {k: v for k, v in renamed.items() if k not in _DROP_KEYS}, allowed


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def _check_keys(
    state: dict[str, Any],
    expected: dict[str, tuple[int, ...]],
    allowed_missing: set[str],
    cfg: ModelConfig,
    source: _Source,
    strict: bool,
) -> tuple[set[str], list[str]]:
    """Raise one readable error for missing / unexpected / mis-shaped keys; return (missing-to-fill, unexpected)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    not_tensor = sorted(k for k in state if k in expected and not isinstance(state[k], torch.Tensor))
    misshaped = sorted(
        k for k in set(state) & set(expected)
        if isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != expected[k]
    )
    tolerated_missing = [k for k in missing if k in allowed_missing]
    hard_missing = [k for k in missing if k not in allowed_missing]
    problems = []
    if strict and hard_missing:
        problems.append(f"{len(hard_missing)} missing key(s): {_listing(hard_missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if misshaped:
        shown = [f"{k} checkpoint {tuple(state[k].shape)} vs model {expected[k]}" for k in misshaped]
        problems.append(f"{len(misshaped)} mis-shaped key(s): {_listing(shown)}")
    if not_tensor:
        problems.append(f"{len(not_tensor)} key(s) that are not tensors: {_listing(not_tensor)}")
    if problems:
        hint = _shape_hint(state, cfg)
        name = cfg.meta.get("name", "custom")
        raise CheckpointError(
            f"{source.label} ({source.kind}) does not match the model config ({name}: depth {cfg.depth}, "
            f"hidden_size {cfg.hidden_size}):\n  " + "\n  ".join(problems) + (f"\n  hint: {hint}" if hint else "")
        )
    if not strict and (hard_missing or unexpected):
        logger.warning("%s: strict=False: %d missing key(s) keep their initial value (%s); %d unexpected key(s) "
                       "ignored (%s)", source.label, len(hard_missing), _listing(hard_missing), len(unexpected),
                       _listing(unexpected))
    if tolerated_missing:
        warnings.warn(
            f"{source.label} ({source.kind}) has no {', '.join(tolerated_missing)}; the learned null caption keeps "
            f"its random initial value (only used when the model is called with text=None)", stacklevel=3,
        )
    return set(missing), unexpected


def _shape_hint(state: dict[str, Any], cfg: ModelConfig) -> str:
    """Depth / hidden size read off the checkpoint, when they differ from the config."""
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    embed = state.get("x_embedder.proj.weight")
    hidden = int(embed.shape[0]) if isinstance(embed, torch.Tensor) and embed.ndim == 5 else None
    parts = []
    if depth > 0 and depth != cfg.depth:
        parts.append(f"depth {depth} (blocks.0-{depth - 1}) vs config depth {cfg.depth}")
    if hidden is not None and hidden != cfg.hidden_size:
        parts.append(f"hidden_size {hidden} (x_embedder.proj.weight {tuple(embed.shape)}) vs config "
                     f"{cfg.hidden_size}")
    if not parts:
        return ""
    return "the checkpoint has " + "; ".join(parts) + " — pass config= matching the checkpoint"


def _common_float_dtype(state: dict[str, Any], label: str) -> torch.dtype:
    dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if not dtypes:
        return torch.float32
    result = next(iter(dtypes))
    for dt in dtypes:
        result = torch.promote_types(result, dt)
    if len(dtypes) > 1:
        logger.info("%s mixes floating dtypes %s; using %s", label, sorted(map(str, dtypes)), result)
    return result


def _fill_missing(model: SanaWMTransformer, cfg: ModelConfig, missing: set[str], dtype: torch.dtype) -> None:
    """Give keys absent from the checkpoint their initial value (they are still on the meta device)."""
    if missing == {_NULL_CAPTION}:
        fresh = {_NULL_CAPTION: CaptionEmbedder(cfg.caption_channels, 1, cfg.text_max_length).y_embedding}
    else:
        n = sum(math.prod(s) for s in (model.state_dict()[k].shape for k in missing))
        logger.info("initialising a full model to fill %d missing tensors (%d values)", len(missing), n)
        full = SanaWMTransformer(cfg).state_dict()
        fresh = {k: full[k] for k in missing}
    model.load_state_dict({k: v.to(dtype) for k, v in fresh.items()}, strict=False, assign=True)


def _arch(cfg: ModelConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    d.pop("meta", None)
    return d


def _config_diff(a: ModelConfig, b: ModelConfig) -> str:
    da, db = _arch(a), _arch(b)
    return ", ".join(f"{k}: {da[k]!r} -> {db[k]!r}" for k in sorted(da) if da[k] != db[k])
