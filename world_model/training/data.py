"""Training data: the clip item format, collation, deterministic step-indexed batches and latent batches.

Item format (any ``torch.utils.data.Dataset`` whose items are dicts with these keys; extra keys are ignored):

- ``rgb``: uint8 ``(F, H, W, 3)`` frames, **or** ``frames``: float ``(F, 3, H, W)`` in [-1, 1];
- ``c2w``: float ``(F, 4, 4)`` OpenCV camera-to-world poses (metres; any world frame: they are made relative to
  the clip's first frame here);
- ``intrinsics``: float ``(F, 4)`` or ``(4,)`` ``[fx, fy, cx, cy]`` in pixels of the frames;
- ``depth`` (RGB-D codecs): float ``(F, H, W)`` metres along the optical axis, 0 for no surface (sky).

Every item of a dataset must have the same ``F, H, W``; ``F`` must cover the longest clip the run asks for
(``1 + temporal_stride * (latent_frames - 1)``). Training clips are the first frames of each item (random
temporal crops are the dataset's business, e.g. ``TwinClipDataset(random_crop=True)``).

Determinism: batch ``step`` holds the items at positions ``step * B ... step * B + B - 1`` of an epoch-wise
permutation seeded by ``(seed, epoch)``, and each item is fetched with the global RNGs (torch, numpy, random)
seeded by ``(seed, step, k)``. A batch therefore depends only on the seed and the step, which is what makes
resuming exact without saving loader state.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..camera import CameraInputs, camera_inputs_from_world
from ..codecs.base import LatentCodec
from ..video import from_uint8

_MIX = 0x9E3779B97F4A7C15


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    h = 0x2545F4914F6CDD1D
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * _MIX + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


def item_to_tensors(item: dict, where: str = "item") -> dict[str, torch.Tensor]:
    """Check one item; return ``frames (F, 3, H, W)`` float32 in [-1, 1], ``c2w (F, 4, 4)``, ``intrinsics (F, 4)``."""
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be a dict with rgb|frames, c2w and intrinsics, got {type(item).__name__}")
    if "frames" in item:
        frames = torch.as_tensor(item["frames"])
        if not frames.is_floating_point() or frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"{where}['frames'] must be float (F, 3, H, W) in [-1, 1], got "
                             f"{frames.dtype} {tuple(frames.shape)}")
        frames = frames.float()
    elif "rgb" in item:
        rgb = torch.as_tensor(item["rgb"])
        if rgb.dtype != torch.uint8 or rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"{where}['rgb'] must be uint8 (F, H, W, 3), got {rgb.dtype} {tuple(rgb.shape)}")
        frames = from_uint8(rgb)
    else:
        raise ValueError(f"{where} needs 'rgb' uint8 (F, H, W, 3) or 'frames' float (F, 3, H, W); keys: {sorted(item)}")
    f = frames.shape[0]
    c2w = torch.as_tensor(item.get("c2w")) if "c2w" in item else None
    if c2w is None or tuple(c2w.shape) != (f, 4, 4):
        raise ValueError(f"{where}['c2w'] must be ({f}, 4, 4) camera-to-world poses, got "
                         f"{None if c2w is None else tuple(c2w.shape)}")
    k = torch.as_tensor(item.get("intrinsics")) if "intrinsics" in item else None
    if k is None or tuple(k.shape) not in ((4,), (f, 4)):
        raise ValueError(f"{where}['intrinsics'] must be (4,) or ({f}, 4) [fx, fy, cx, cy] pixels, got "
                         f"{None if k is None else tuple(k.shape)}")
    k = k.float()
    out = {"frames": frames, "c2w": c2w.float(), "intrinsics": k.expand(f, 4).clone() if k.ndim == 1 else k}
    if "depth" in item:
        depth = torch.as_tensor(item["depth"])
        if not depth.is_floating_point() or tuple(depth.shape) != (f, *frames.shape[-2:]):
            raise ValueError(f"{where}['depth'] must be float ({f}, {frames.shape[-2]}, {frames.shape[-1]}) metres, "
                             f"got {depth.dtype} {tuple(depth.shape)}")
        out["depth"] = depth.float()
    return out


def collate_clips(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Stack items (see module doc) into ``frames (B, F, 3, H, W)``, ``c2w (B, F, 4, 4)``, ``intrinsics (B, F, 4)``."""
    conv = [item_to_tensors(it, f"items[{i}]") for i, it in enumerate(items)]
    shape = conv[0]["frames"].shape
    for i, c in enumerate(conv[1:], start=1):
        if c["frames"].shape != shape:
            raise ValueError(f"items[{i}] has frames {tuple(c['frames'].shape)}, items[0] {tuple(shape)}: "
                             "all items of a batch need the same (F, H, W)")
    keys = ["frames", "c2w", "intrinsics"]
    with_depth = ["depth" in c for c in conv]
    if any(with_depth) and not all(with_depth):
        raise ValueError(f"items[{with_depth.index(False)}] has no 'depth' but other items of the batch have: "
                         "a batch needs depth for all items or none")
    if all(with_depth):
        keys.append("depth")
    return {key: torch.stack([c[key] for c in conv]) for key in keys}


class SeededItems(Dataset):
    """Wraps a dataset: ``self[(index, seed)]`` fetches ``dataset[index]`` with the global RNGs seeded by ``seed``
    (restored afterwards), so random crops are reproducible in any worker."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                np.random.seed(seed % 2**32)
                random.seed(seed)
                return self.dataset[index]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class StepBatchSampler(Sampler):
    """Yields, for steps ``start .. end - 1``, the ``[(index, item_seed), ...]`` of each batch (see module doc)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, start: int, end: int) -> None:
        if num_items < 1:
            raise ValueError("the dataset is empty")
        self.n, self.b, self.seed, self.start, self.end = num_items, batch_size, seed, start, end
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def batch(self, step: int) -> list[tuple[int, int]]:
        out = []
        for k in range(self.b):
            pos = step * self.b + k
            epoch = pos // self.n
            if epoch != self._perm_epoch:
                gen = torch.Generator().manual_seed(mix_seed(self.seed, 1, epoch))
                self._perm, self._perm_epoch = torch.randperm(self.n, generator=gen).tolist(), epoch
            out.append((self._perm[pos % self.n], mix_seed(self.seed, 2, step, k)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.end):
            yield self.batch(step)


def latent_batch(
    batch: dict[str, torch.Tensor], codec: LatentCodec, latent_frames: int, device: torch.device | str,
) -> tuple[torch.Tensor, CameraInputs, dict[str, torch.Tensor]]:
    """Encode the first ``1 + s * (latent_frames - 1)`` frames of a collated batch.

    Returns ``(x0 (B, C, T, h, w) float32, camera inputs (poses relative to each clip's first frame),
    clip)`` where ``clip`` holds the cropped ``frames``, ``c2w`` and ``intrinsics`` (and ``depth`` for RGB-D
    codecs).
    """
    n = codec.num_pixel_frames(latent_frames)
    frames = batch["frames"]
    b, f, _, h, w = frames.shape
    if f < n:
        raise ValueError(f"items have {f} frames but {latent_frames} latent frames need {n} "
                         f"(1 + {codec.temporal_stride} * {latent_frames - 1}); use longer clips or fewer frames")
    clip = {"frames": frames[:, :n], "c2w": batch["c2w"][:, :n], "intrinsics": batch["intrinsics"][:, :n]}
    video = clip["frames"].permute(0, 2, 1, 3, 4).to(device=device, dtype=torch.float32).clamp(-1, 1)
    depth = None
    if codec.depth_channels:
        if "depth" not in batch:
            raise ValueError("this RGB-D codec needs depth: the dataset's items must carry 'depth' (F, H, W) metres "
                             "(a twin dataset made with `sana-wm dataset make --depth`, loaded with depth)")
        clip["depth"] = batch["depth"][:, :n]
        depth = clip["depth"].to(device=device, dtype=torch.float32)
    with torch.no_grad():
        x0 = codec.encode(video, depth).float()
    latent_hw = codec.latent_hw((h, w))
    camera = camera_inputs_from_world(clip["c2w"].double(), clip["intrinsics"].double(), (h, w), latent_hw,
                                      codec.temporal_stride)
    return x0, camera.to(device, torch.float32), clip


def item_info(item: dict) -> dict[str, Any]:
    """Frame count, image size and horizontal field of view of one dataset item."""
    t = item_to_tensors(item)
    f, _, h, w = t["frames"].shape
    fx = float(t["intrinsics"][0, 0])
    return {"frames": f, "image_hw": (h, w), "fov_deg": math.degrees(2 * math.atan(w / (2 * fx)))}
