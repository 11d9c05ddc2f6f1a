"""PyTorch ``Dataset`` over a ``sana-wm-twin/1`` directory with random temporal crops."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sana_wm_env.datasets.writer import DatasetSpec, clip_path, read_dataset_json
from world_model.camera import relative_to_first


class TwinClipDataset(Dataset):
    """Clips of ``num_frames`` frames (every ``stride``-th stored frame) cut from each stored clip.

    ``random_crop=True`` draws the start frame with torch's RNG (seeded per DataLoader worker); otherwise the
    crop starts at frame 0. ``relative=True`` expresses poses relative to the first frame of the crop (what the
    world model consumes). Items are dicts: ``rgb`` uint8 (T,H,W,3), ``c2w`` float32 (T,4,4), ``intrinsics``
    float32 (T,4), ``timestamps`` float32 (T,) from the crop start, ``depth`` float32 (T,H,W) if requested, plus
    ``index``, ``start``, ``family``, ``scene_seed``, ``motion``.
    """

    def __init__(self, root, num_frames: int | None = None, stride: int = 1, random_crop: bool = True,
                 relative: bool = True, load_depth: bool = False) -> None:
        self.root = Path(root)
        meta = self.root / "dataset.json"
        if not meta.is_file():
            raise FileNotFoundError(f"root: {self.root} is not a twin dataset (no dataset.json)")
        self.spec = DatasetSpec.from_json(read_dataset_json(self.root), meta)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        n = self.spec.frames if num_frames is None else num_frames
        if isinstance(n, bool) or not isinstance(n, int) or n < 1 or (n - 1) * stride + 1 > self.spec.frames:
            raise ValueError(
                f"num_frames must be an int in [1, {(self.spec.frames - 1) // stride + 1}] for clips of "
                f"{self.spec.frames} frames at stride {stride}; got {num_frames!r}"
            )
        if load_depth and not self.spec.depth:
            raise ValueError(f"load_depth: {self.root} was written without depth")
        self.num_frames, self.stride = n, stride
        self.random_crop, self.relative, self.load_depth = random_crop, relative, load_depth
        self.indices = [i for i in range(self.spec.clips) if clip_path(self.root, i).exists()]
        if not self.indices:
            raise ValueError(f"root: {self.root} has no clips yet")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict:
        index = self.indices[item]
        span = (self.num_frames - 1) * self.stride + 1
        last_start = self.spec.frames - span
        start = int(torch.randint(0, last_start + 1, ()).item()) if self.random_crop and last_start > 0 else 0
        sel = slice(start, start + span, self.stride)
        try:
            return self._load(index, start, sel)
        except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError) as err:
            raise ValueError(f"clip {clip_path(self.root, index)} cannot be read ({type(err).__name__}: {err}); "
                             "`sana-wm dataset make` with the dataset's settings renders damaged clips again "
                             f"(`sana-wm dataset info {self.root}` lists them)") from err

    def _load(self, index: int, start: int, sel: slice) -> dict:
        """Frames ``sel`` of clip ``index`` as an item (see the class docstring)."""
        with np.load(clip_path(self.root, index), allow_pickle=False) as z:
            c2w = torch.from_numpy(z["c2w"][sel])
            out = dict(
                rgb=torch.from_numpy(z["rgb"][sel].copy()),
                c2w=(relative_to_first(c2w) if self.relative else c2w).float(),
                intrinsics=torch.from_numpy(z["intrinsics"][sel].astype(np.float32)),
                timestamps=torch.from_numpy((z["timestamps"][sel] - z["timestamps"][start]).astype(np.float32)),
                index=index, start=start, family=str(z["family"]), scene_seed=int(z["scene_seed"]),
                motion=str(z["motion"]),
            )
            if self.load_depth:
                out["depth"] = torch.from_numpy(z["depth"][sel].astype(np.float32))
        return out
