"""Register the Triton kernels as fast paths of the ops -- for CUDA tensors only, without importing triton.

``import world_model`` never imports triton itself: this module only asks ``importlib.util.find_spec`` whether it
is installed, and the kernel modules (:mod:`.triton_gdn`, :mod:`.triton_conv`) are imported on the first call
that runs them. A fast path applies when every tensor argument is on a CUDA device, the dtypes and head size
are ones the kernels take, and no autograd graph is needed (the kernels have no backward: training keeps the
references). ``SANA_WM_REFERENCE_OPS=1`` turns all fast paths off (see :mod:`.dispatch`).

Each kernel wrapper is a ``torch.library`` custom op (``torch.ops.sana_wm.*``) with a fake (shape-only)
implementation, so ``torch.compile`` traces a fast path as one opaque graph node -- no graph break, and CUDA
graphs capture the launches -- instead of tracing into the Python launch code.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .dispatch import register_fast_path

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256  # keeps a (BV x D) fp32 state tile and a (BS x D) key tile in registers


def _kernels(module: str) -> Any:
    """Import a kernel module (a sibling) on first use."""
    return importlib.import_module(f".{module}", __package__)


def _pairs(flat: list[int]) -> list[tuple[int, int]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _flat(bounds: Sequence[tuple[int, int]]) -> list[int]:
    return [int(x) for pair in bounds for x in pair]


# -- custom ops (schemas take flat bounds [c0, c1, c0, c1, ...]) ---------------------------------------------
@torch.library.custom_op("sana_wm::frame_gdn", mutates_args=())
def frame_gdn_op(q: Tensor, k: Tensor, v: Tensor, q_rot: Tensor, k_rot: Tensor, beta: Tensor, decay: Tensor,
                 bounds: list[int], kv0: Tensor | None, z0: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    state = None if kv0 is None else (kv0, z0)
    out, (kv, z) = _kernels("triton_gdn").triton_frame_gdn(q, k, v, q_rot, k_rot, beta, decay, bounds=_pairs(bounds),
                                                           state=state, eps=eps)
    return out, kv, z


@frame_gdn_op.register_fake
def _(q, k, v, q_rot, k_rot, beta, decay, bounds, kv0, z0, eps):
    b, h, t, s, d = q.shape
    dv = v.shape[-1]
    return (v.new_empty(b, h, t, s, dv), q.new_empty(b, h, dv, d, dtype=torch.float32),
            q.new_empty(b, h, 1, d, dtype=torch.float32))


@torch.library.custom_op("sana_wm::frame_delta_numerator", mutates_args=())
def frame_delta_numerator_op(q_rot: Tensor, k_rot: Tensor, v: Tensor, beta: Tensor, decay: Tensor, bounds: list[int],
                             kv0: Tensor | None) -> tuple[Tensor, Tensor]:
    return _kernels("triton_gdn").triton_frame_delta_numerator(q_rot, k_rot, v, beta, decay, bounds=_pairs(bounds),
                                                               state=kv0)


@frame_delta_numerator_op.register_fake
def _(q_rot, k_rot, v, beta, decay, bounds, kv0):
    b, h, t, s, d = q_rot.shape
    dv = v.shape[-1]
    return v.new_empty(b, h, t, s, dv), q_rot.new_empty(b, h, dv, d, dtype=torch.float32)


@torch.library.custom_op("sana_wm::gdn_features", mutates_args=())
def gdn_features_op(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, num_heads: int, key_scale: float,
                    eps: float, rope: Tensor | None) -> list[Tensor]:
    outs = _kernels("triton_gdn").triton_gdn_features(q, k, q_weight, k_weight, num_heads=num_heads,
                                                      key_scale=key_scale, eps=eps, rope=rope)
    return [x for x in outs if x is not None]


@gdn_features_op.register_fake
def _(q, k, q_weight, k_weight, num_heads, key_scale, eps, rope):
    b, t, s, c = q.shape
    return [q.new_empty(b, num_heads, t, s, c // num_heads) for _ in range(2 if rope is None else 4)]


@torch.library.custom_op("sana_wm::short_conv", mutates_args=())
def short_conv_op(x: Tensor, weight: Tensor, bounds: list[int], tail: Tensor | None) -> tuple[Tensor, Tensor]:
    return _kernels("triton_conv").triton_short_conv(x, weight, bounds=_pairs(bounds), tail=tail)


@short_conv_op.register_fake
def _(x, weight, bounds, tail):
    b, t, s, c = x.shape
    return x.new_empty(b, t, s, c), x.new_empty(b, weight.shape[-1] - 1, s, c)


# -- fast paths: the ops' own signatures -> the custom ops ----------------------------------------------------
def _frame_gdn_fast(q, k, v, q_rot, k_rot, beta, decay, *, bounds, state=None, eps=1e-8):
    kv0, z0 = (None, None) if state is None else state
    out, kv, z = frame_gdn_op(q, k, v, q_rot, k_rot, beta, decay, _flat(bounds), kv0, z0, float(eps))
    return out, (kv, z)


def _numerator_fast(q_rot, k_rot, v, beta, decay, *, bounds, state=None):
    return frame_delta_numerator_op(q_rot, k_rot, v, beta, decay, _flat(bounds), state)


def _features_fast(q, k, q_weight, k_weight, *, num_heads, key_scale, eps, rope=None):
    outs = gdn_features_op(q, k, q_weight, k_weight, int(num_heads), float(key_scale), float(eps), rope)
    return (outs[0], outs[1], None, None) if rope is None else tuple(outs)


def _short_conv_fast(x, weight, *, bounds, tail=None):
    return short_conv_op(x, weight, _flat(bounds), tail)


def _kernel_ready(tensors: Iterable[torch.Tensor | None]) -> bool:
    """All given tensors on CUDA in a kernel dtype, and none needing gradients."""
    tensors = [t for t in tensors if t is not None]
    if not TRITON_AVAILABLE or not tensors:
        return False
    grad = torch.is_grad_enabled()
    return all(
        isinstance(t, torch.Tensor) and t.is_cuda and t.dtype in KERNEL_DTYPES and not (grad and t.requires_grad)
        for t in tensors
    )


def _frame_gdn_applies(q, k, v, q_rot, k_rot, beta, decay, *, bounds, state=None, eps=1e-8) -> bool:
    states = state if state is not None else ()
    return (
        _kernel_ready((q, k, v, q_rot, k_rot, beta, decay, *states))
        and q.ndim == 5
        and max(q.shape[-1], v.shape[-1]) <= MAX_HEAD_DIM
    )


def _numerator_applies(q_rot, k_rot, v, beta, decay, *, bounds, state=None) -> bool:
    return (
        _kernel_ready((q_rot, k_rot, v, beta, decay, state))
        and q_rot.ndim == 5
        and max(q_rot.shape[-1], v.shape[-1]) <= MAX_HEAD_DIM
    )


def _features_applies(q, k, q_weight, k_weight, *, num_heads, key_scale, eps, rope=None) -> bool:
    ready = _kernel_ready((q, k, q_weight, k_weight))
    return ready and q.ndim == 4 and q.dtype == k.dtype and (rope is None or (rope.is_cuda and rope.is_complex()))


def _short_conv_applies(x, weight, *, bounds, tail=None) -> bool:
    return _kernel_ready((x, weight, tail)) and x.ndim == 4 and weight.ndim == 3


def register_triton_fast_paths() -> None:
    """Register every Triton kernel as the fast path of its op (a no-op for CPU tensors)."""
    register_fast_path("frame_gdn", _frame_gdn_fast, _frame_gdn_applies)
    register_fast_path("frame_delta_numerator", _numerator_fast, _numerator_applies)
    register_fast_path("gdn_features", _features_fast, _features_applies)
    register_fast_path("short_conv", _short_conv_fast, _short_conv_applies)
