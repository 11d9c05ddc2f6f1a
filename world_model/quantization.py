"""Post-training quantization of the stage-1 transformer with NVIDIA ModelOpt (``pip install "sana-wm-env[quant]"``).

What is quantized (an allow-list of our module names, :data:`QUANTIZED_GROUPS`): the self-attention ``qkv``,
``proj`` and ``output_gate`` linears, the text cross-attention ``q_linear`` / ``kv_linear`` / ``proj`` and the
FFN's two 1x1 convs. What stays in the model's dtype (bf16 in deployment), and why:

- the camera branch (``attn.{q,k,v,out}_proj_cam``, ``plucker_proj``, ``plucker_embedder``, ``raymap_embedder``):
  upstream found that quantizing the small camera residual makes the video stop following the pose;
- the embedders (``x_embedder``, ``t_embedder``, ``y_embedder``), ``t_block`` and ``final_layer``: small, and
  they set the scale of everything else (upstream skips them too);
- ``attn.beta_proj`` / ``attn.gate_proj``: per-head gates with 20 outputs (not a multiple of 16, so no FP8 GEMM),
  negligible compute, and the GDN decay is sensitive to them;
- the FFN's depthwise 3x3 ``depth_conv`` (memory-bound, no GEMM to speed up) and its dense temporal conv
  ``t_conv`` (about a quarter of the FFN's multiply-adds): ``t_conv``'s weight is read directly by the
  chunk-causal op ``ops.chunked_temporal_conv``, so a wrapped module's quantizers would never run. Upstream's
  FP8/FP4 Stage-1 path quantizes only the FFN's 1x1 convs too.

The FFN's 1x1 convs: ModelOpt does wrap ``nn.Conv2d`` (``QuantConv2d``), but our FFN runs these convs as
``F.linear`` on the conv weights (faster), which would bypass the quantizers. :func:`quantize` therefore first
linearises them (:meth:`world_model.layers.ffn.GLUConvFFN.linearize`: real ``nn.Linear`` modules on the same
weights, the same outputs), as upstream does ("linearised FFN"). A quantized model is saved with
:func:`save_quantized`, never with ``save_transformer``.

Modes (:data:`MODES`); all are *fake quantization* (quantize-dequantize in PyTorch), i.e. numerical simulation:

- ``"fp8"``: FP8 E4M3 per-tensor weights and activations. Runs anywhere, CPU included. Speed: fake-quant is
  slower than bf16; on Hopper/Ada (SM >= 8.9) :func:`compress` stores the weights in FP8 (half the memory)
  and runs real FP8 GEMMs (``torch._scaled_mm``) through ModelOpt's real-quant backend.
- ``"nvfp4"``: NVFP4 (E2M1 values, 16-element blocks with FP8 scales) for weights and activations. ModelOpt's
  NVFP4 quantizer only runs on CUDA tensors: simulated on any CUDA GPU (H100 included: numerics only, no speed-up);
  real FP4 GEMMs need Blackwell (SM >= 10) and TensorRT-LLM, which this package does not wire up. On CPU
  :func:`quantize` raises :class:`QuantizationUnavailableError`.
- ``"int8"``: INT8 per-channel weights, per-tensor activations (ModelOpt's INT8 default). Runs anywhere; a
  fidelity experiment (no real INT8 GEMM path here).

Calibration: with ``calibration=None`` activation scales are computed from every input (dynamic, per call);
with a callable ``calibration(model)`` that runs representative forwards (e.g. a short generation),
they are fixed to the max seen ("max" calibration), which is what a deployment would use.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import ModelConfig
from .layers.ffn import GLUConvFFN

__all__ = [
    "DEFAULT_GROUPS",
    "FULL_PRECISION_PATTERNS",
    "MODES",
    "QUANTIZED_GROUPS",
    "QuantizationSummary",
    "QuantizationUnavailableError",
    "compress",
    "load_quantized",
    "quantization_summary",
    "quantize",
    "save_quantized",
]

MODES = ("fp8", "nvfp4", "int8")
# Module-name patterns (fnmatch on names relative to the transformer) of each group that can be quantized.
QUANTIZED_GROUPS: dict[str, tuple[str, ...]] = {
    "self_qkv": ("blocks.*.attn.qkv",),
    "self_attention": ("blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.attn.output_gate"),
    "cross_attention": ("blocks.*.cross_attn.q_linear", "blocks.*.cross_attn.kv_linear", "blocks.*.cross_attn.proj"),
    "ffn": ("blocks.*.mlp.inverted_conv.conv", "blocks.*.mlp.point_conv.conv"),
}
DEFAULT_GROUPS = ("self_attention", "cross_attention", "ffn")  # upstream's Stage-1 "self_attn+cross+ffn"
# Modules that must never carry an enabled quantizer, whatever the groups (checked after quantizing).
FULL_PRECISION_PATTERNS = (
    "*_proj_cam", "*plucker_proj", "plucker_embedder*", "raymap_embedder*", "x_embedder*", "t_embedder*",
    "t_block*", "y_embedder*", "final_layer*", "*attn.beta_proj", "*attn.gate_proj",
)
FORMAT = "sana-wm-env/quantized-transformer"
_INSTALL_HINT = 'pip install "sana-wm-env[quant]"  (nvidia-modelopt 0.47.x and requests)'


class QuantizationUnavailableError(RuntimeError):
    """The requested quantization cannot run here (missing package or unsupported device)."""


def _modelopt():
    """Import ModelOpt lazily (it is an optional extra) with an error that says how to install it."""
    if importlib.util.find_spec("modelopt") is None:
        raise QuantizationUnavailableError(f"quantization needs NVIDIA ModelOpt, which is not installed: "
                                           f"{_INSTALL_HINT}")
    try:
        import modelopt.torch.opt as mto
        import modelopt.torch.quantization as mtq
    except ModuleNotFoundError as err:  # modelopt 0.47 imports requests without declaring it
        raise QuantizationUnavailableError(
            f"importing NVIDIA ModelOpt failed ({err}); install the quant extra: {_INSTALL_HINT}"
        ) from err
    return mtq, mto


def _quantizer_cfgs(mtq, mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weight, input) quantizer settings of ModelOpt's default config for ``mode``."""
    base = {"fp8": mtq.FP8_DEFAULT_CFG, "nvfp4": mtq.NVFP4_DEFAULT_CFG, "int8": mtq.INT8_DEFAULT_CFG}[mode]
    found = {}
    for entry in base["quant_cfg"]:
        if isinstance(entry, dict) and entry.get("quantizer_name") in ("*weight_quantizer", "*input_quantizer"):
            found[entry["quantizer_name"]] = dict(entry["cfg"])
    return found["*weight_quantizer"], found["*input_quantizer"]


def _check_groups(groups: Sequence[str]) -> tuple[str, ...]:
    if isinstance(groups, str) or not groups or any(g not in QUANTIZED_GROUPS for g in groups):
        raise ValueError(f"groups must be a non-empty sequence of {sorted(QUANTIZED_GROUPS)}, got {groups!r}")
    return tuple(dict.fromkeys(groups))


def _targets(model: nn.Module, groups: Sequence[str]) -> list[str]:
    patterns = [p for g in groups for p in QUANTIZED_GROUPS[g]]
    return [name for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def _linearize_ffns(model: nn.Module) -> None:
    for mod in model.modules():
        if isinstance(mod, GLUConvFFN):
            mod.linearize()


def _device_type(model: nn.Module) -> str:
    return next(model.parameters()).device.type


def quantize(
    transformer: nn.Module,
    mode: str,
    calibration: Callable[[nn.Module], None] | None = None,
    *,
    groups: Sequence[str] = DEFAULT_GROUPS,
) -> nn.Module:
    """Quantize ``transformer`` in place (and return it) with ModelOpt fake quantization.

    Args:
        transformer: a :class:`~world_model.transformer.SanaWMTransformer` (not yet quantized), already on the
            device and in the dtype it will run in.
        mode: one of :data:`MODES` (see the module docs for what each means on which hardware).
        calibration: ``None`` (dynamic activation scales) or ``calibration(model)`` running representative
            forwards to fix static activation scales.
        groups: which of :data:`QUANTIZED_GROUPS` to quantize (default: self-attention, cross-attention, FFN).
            The camera branch, embedders, timestep blocks and final layer are never quantized.

    Raises:
        ValueError: bad ``mode`` / ``groups`` / ``calibration``, or an already quantized model.
        QuantizationUnavailableError: ModelOpt missing, or ``"nvfp4"`` on a non-CUDA model.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if calibration is not None and not callable(calibration):
        raise ValueError(f"calibration must be None or a callable taking the model, got {type(calibration).__name__}")
    groups = _check_groups(groups)
    if not isinstance(transformer, nn.Module) or not isinstance(getattr(transformer, "config", None), ModelConfig):
        raise ValueError(f"transformer must be a SanaWMTransformer, got {type(transformer).__name__}")
    if getattr(transformer, "quantization", None) is not None:
        raise ValueError(f"transformer is already quantized ({transformer.quantization['mode']}); quantize a fresh one")
    if mode == "nvfp4" and _device_type(transformer) != "cuda":
        raise QuantizationUnavailableError(
            f"mode 'nvfp4' needs the transformer on a CUDA GPU, but it is on {_device_type(transformer)!r}: "
            "ModelOpt's NVFP4 quantizer (dynamic 16-element blocks) only runs on CUDA tensors. Move the model "
            "with .to('cuda') first (any CUDA GPU simulates NVFP4; real FP4 speed needs Blackwell), or use 'fp8' "
            "or 'int8', which also run on CPU."
        )
    mtq, _ = _modelopt()
    _linearize_ffns(transformer)
    targets = _targets(transformer, groups)
    if not targets:
        raise ValueError(f"no module of groups {groups} exists in this transformer")
    # An all-zero weight (e.g. the zero-initialised output gate of an untrained model) has nothing to quantize,
    # and its scale would be 0 (FP8 compression then divides 0 by 0): such modules stay in full precision.
    modules = dict(transformer.named_modules())
    zero = [name for name in targets if not bool(modules[name].weight.detach().abs().amax() > 0)]
    targets = [name for name in targets if name not in zero]
    weight_cfg, input_cfg = _quantizer_cfgs(mtq, mode)
    entries: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    for name in targets:
        entries.append({"quantizer_name": f"{name}.weight_quantizer", "cfg": dict(weight_cfg)})
        entries.append({"quantizer_name": f"{name}.input_quantizer", "cfg": dict(input_cfg)})
    was_training = transformer.training
    transformer.eval()
    mtq.quantize(transformer, {"quant_cfg": entries, "algorithm": "max"}, forward_loop=calibration)
    transformer.train(was_training)
    transformer.quantization = {"mode": mode, "groups": list(groups), "calibrated": calibration is not None,
                                "compressed": False, "skipped_zero_weight": zero}
    _check_full_precision(transformer)
    return transformer


def _check_full_precision(model: nn.Module) -> None:
    """Fail loudly if any module that must stay in full precision carries an enabled quantizer."""
    bad = [name for name in quantization_summary(model).quantized
           if any(fnmatch.fnmatchcase(name, p) for p in FULL_PRECISION_PATTERNS)]
    if bad:
        raise RuntimeError(f"modules that must stay unquantized were quantized: {bad}")


def compress(transformer: nn.Module) -> nn.Module:
    """Store the quantized weights of an ``"fp8"`` model in FP8 and enable ModelOpt's real FP8 GEMMs (in place).

    On CUDA GPUs with SM >= 8.9 (Ada, Hopper) the quantized linears then run ``torch._scaled_mm``; elsewhere
    they fall back to dequantize + matmul (same outputs, half the weight memory). A compressed model cannot
    be saved with :func:`save_quantized`: save before compressing, compress after :func:`load_quantized`.
    """
    info = getattr(transformer, "quantization", None)
    if info is None:
        raise ValueError("transformer is not quantized; call quantize(transformer, 'fp8') first")
    if info["mode"] != "fp8":
        raise ValueError(f"compress supports mode 'fp8' only (this package has no real {info['mode']} GEMM path)")
    if info["compressed"]:
        return transformer
    mtq, _ = _modelopt()
    mtq.compress(transformer)
    info["compressed"] = True
    return transformer


@dataclasses.dataclass(frozen=True)
class QuantizationSummary:
    """Which modules run quantized (name -> ``"weight: ...; input: ..."``) and which linear/conv modules do not."""

    mode: str | None
    quantized: dict[str, str]
    full_precision: list[str]


def _describe(quantizer) -> str:
    bits = quantizer.num_bits
    fmt = {(4, 3): "fp8 e4m3", (2, 1): "fp4 e2m1", 8: "int8"}.get(tuple(bits) if isinstance(bits, list | tuple)
                                                                   else bits, str(bits))
    if getattr(quantizer, "block_sizes", None):
        sizes = {k: v for k, v in quantizer.block_sizes.items() if isinstance(k, int)}
        fmt += f" blocks {sizes}"
    elif quantizer.axis is not None:
        fmt += f" per-channel(axis={quantizer.axis})"
    else:
        fmt += " per-tensor"
    return fmt


def quantization_summary(model: nn.Module) -> QuantizationSummary:
    """List the quantized modules of ``model`` (and the linear/conv modules left in full precision)."""
    quantized, full = {}, []
    for name, mod in model.named_modules():
        wq, iq = getattr(mod, "weight_quantizer", None), getattr(mod, "input_quantizer", None)
        on = [q for q in (wq, iq) if q is not None and getattr(q, "is_enabled", False)]
        if on:
            parts = []
            if wq is not None and wq.is_enabled:
                parts.append(f"weight: {_describe(wq)}")
            if iq is not None and iq.is_enabled:
                parts.append(f"input: {_describe(iq)}")
            quantized[name] = "; ".join(parts)
        elif isinstance(mod, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            full.append(name)
    info = getattr(model, "quantization", None)
    return QuantizationSummary(None if info is None else info["mode"], quantized, full)


def save_quantized(model: nn.Module, path: str | Path) -> Path:
    """Write a quantized transformer (config, ModelOpt state, weights and scales) to one file."""
    info = getattr(model, "quantization", None)
    if info is None:
        raise ValueError("model is not quantized (use world_model.checkpoints.save_transformer for float models)")
    if info["compressed"]:
        raise ValueError("a compressed model cannot be saved; save before compress() and compress after loading")
    _, mto = _modelopt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "format": FORMAT, "version": 1, "quantization": dict(info), "config": model.config.to_dict(),
        "modelopt_state": mto.modelopt_state(model), "state_dict": model.state_dict(),
    }, path)
    return path


def load_quantized(fresh_model: nn.Module, path: str | Path) -> nn.Module:
    """Restore a :func:`save_quantized` file onto ``fresh_model`` (an unquantized transformer of the same config).

    The FFN is linearised, ModelOpt re-applies its module conversion, then weights and scales are loaded, so
    outputs are bit-identical to the saved model's. Returns ``fresh_model`` (modified in place).
    """
    _, mto = _modelopt()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no quantized model at {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (written by save_quantized)")
    if getattr(fresh_model, "quantization", None) is not None:
        raise ValueError("fresh_model is already quantized; pass a newly built transformer")
    saved = ModelConfig.from_dict(data["config"])
    if fresh_model.config != saved:
        raise ValueError(f"fresh_model's config differs from the saved model's ({path}): build it from {saved}")
    _linearize_ffns(fresh_model)
    mto.restore_from_modelopt_state(fresh_model, data["modelopt_state"])
    fresh_model.load_state_dict(data["state_dict"])
    fresh_model.quantization = dict(data["quantization"])
    return fresh_model

