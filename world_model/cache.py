"""Streaming state of the transformer: what a chunk-by-chunk generator carries between chunks.

Per block: the GDN states (numerator ``kv``, normaliser ``z``, camera ``kv``) and the K short-conv tails,
or for softmax blocks the K/V of a sink chunk plus a window of recent chunks; and the FFN temporal-conv
tail. Its size is bounded by the window, not by the video length.

The cache is immutable: every update builds new tensors, never writes into old ones. Forking (for
imagined rollouts) is therefore a cheap shallow copy, and rolling a fork forward cannot touch the
original.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .layers.block import BlockState


@dataclass(frozen=True)
class StreamCache:
    blocks: tuple[BlockState | None, ...]
    next_frame: int = 0  # absolute latent index of the next chunk's first frame
    num_chunks: int = 0  # chunks written so far
    sink_chunks: int = 1
    window_chunks: int | None = 1  # None keeps every chunk (exact chunk-causal attention, growing memory)
    partial: bool = False  # the last chunk was shorter than the grid's chunk: no further chunk may follow

    @classmethod
    def empty(cls, depth: int, *, sink_chunks: int = 1, window_chunks: int | None = 1) -> StreamCache:
        if sink_chunks < 0 or (window_chunks is not None and window_chunks < 0):
            raise ValueError(f"sink_chunks and window_chunks must be >= 0, got {sink_chunks}, {window_chunks}")
        return cls(blocks=(None,) * depth, sink_chunks=sink_chunks, window_chunks=window_chunks)

    def fork(self) -> StreamCache:
        """An independent copy (shares immutable tensors)."""
        return dataclasses.replace(self)

    def tensors(self) -> Iterator[torch.Tensor]:
        for block in self.blocks:
            if block is None:
                continue
            yield from _tensors(block)

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors (distinct storages counted once)."""
        seen, total = set(), 0
        for t in self.tensors():
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
        return total


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))
    elif isinstance(obj, tuple):
        for item in obj:
            yield from _tensors(item)


def map_tensors(obj, fn):
    """``obj`` (a tensor, a state dataclass, a tuple, list or dict of them, or None) with ``fn`` applied to every
    tensor; dataclasses are rebuilt from their init fields."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = [f for f in dataclasses.fields(obj) if f.init]
        return dataclasses.replace(obj, **{f.name: map_tensors(getattr(obj, f.name), fn) for f in fields})
    if isinstance(obj, tuple):
        return tuple(map_tensors(item, fn) for item in obj)
    if isinstance(obj, list):
        return [map_tensors(item, fn) for item in obj]
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj
