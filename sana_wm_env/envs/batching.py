"""Batch surgery on immutable generator states: pick, reorder or repeat batch elements.

Vector envs reset some sub-envs while the others keep streaming, and ``imagine`` repeats one element's state
K times; both need a :class:`~world_model.generators.GeneratorState` for a subset of the batch. Every tensor
in the state (caches, decode carry-over, first latents, poses, text) is batch-first, so selection is an
``index_select`` on dim 0; the original state is never touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from world_model.generators import GeneratorState


def _map(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _map(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)
                                           if f.init})
    if isinstance(obj, tuple):
        return tuple(_map(x, fn) for x in obj)
    if isinstance(obj, list):
        return [_map(x, fn) for x in obj]
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def select_state(state: GeneratorState, index: Sequence[int]) -> GeneratorState:
    """The state of batch elements ``index`` (any order, repeats allowed) of ``state``."""
    idx = [int(i) for i in index]
    b = state.batch_size
    if not idx or any(i < 0 or i >= b for i in idx):
        raise ValueError(f"index must be a non-empty list of batch positions in [0, {b}), got {idx}")
    sel = torch.as_tensor(idx, dtype=torch.long)

    def pick(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0 or t.shape[0] != b:
            raise ValueError(f"state holds a tensor of shape {tuple(t.shape)} that is not batch-first (batch {b})")
        return t.index_select(0, sel.to(t.device))

    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    skip = ("seeds", "decode", "image_hw", "latent_hw", "geometry")
    new = {k: _map(v, pick) for k, v in fields.items() if k not in skip}
    new["seeds"] = tuple(state.seeds[i] for i in idx)
    if state.geometry is not None:  # the point cache stores its elements flat; it selects its own
        new["geometry"] = state.geometry.select(idx)
    if state.decode is not None:
        d = state.decode
        new["decode"] = dataclasses.replace(
            d, cache=_map(d.cache, pick), batch_size=None if d.batch_size is None else len(idx)
        )
    return dataclasses.replace(state, **new)
