"""world_model.video: the one uint8 conversion, PSNR and mp4 writer that every layer uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from world_model.video import VideoWriter, from_uint8, psnr, to_uint8, write_video


def test_uint8_round_trip_and_unit_range():
    img = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    x = from_uint8(img)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(to_uint8(x), img)
    np.testing.assert_array_equal(to_uint8((x.double() + 1) / 2, low=0.0), img)  # frames in [0, 1]
    odd = torch.tensor([-3.0, float("nan"), 2.0]).reshape(1, 3, 1, 1).expand(1, 3, 1, 1)
    assert to_uint8(odd).reshape(-1).tolist() == [0, 0, 255]  # clipped; NaN shows as 0
    assert to_uint8(odd.clamp(0, 1), low=0.0).reshape(-1).tolist() == [0, 0, 255]
    with pytest.raises(ValueError, match="low must be"):
        to_uint8(x, low=0.5)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        to_uint8(torch.zeros(4, 5, 5))


def test_psnr_per_image_pooled_and_range():
    a = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    b = torch.full_like(a, 0.1)
    b[1] = 0.01
    np.testing.assert_allclose(psnr(a, b).numpy(), [20.0, 40.0])
    pooled = float(psnr(a, b, pooled=True))
    assert pooled == pytest.approx(10 * math.log10(1 / ((0.01 + 0.0001) / 2)))
    assert float(psnr(a * 2 - 1, b * 2 - 1, data_range=2.0)[0]) == pytest.approx(20.0)  # [-1, 1] frames
    assert math.isinf(float(psnr(a, a)[0])) and float(psnr(a, a, max_db=50.0)[0]) == 50.0
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, b[:1])
    with pytest.raises(ValueError, match="float frames"):
        psnr(a.to(torch.uint8), b.to(torch.uint8))


def test_mp4_writers_pad_odd_sizes(tmp_path):
    imageio = pytest.importorskip("imageio.v3")
    frames = np.random.default_rng(1).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    path = write_video(frames, tmp_path / "a.mp4", fps=8)
    assert imageio.imread(path, index=None).shape[:3] == (3, 6, 8)
    with VideoWriter(tmp_path / "b.mp4", fps=8) as w:
        w.write(frames[:2])
        w.write(frames[2])
    assert w.frames == 3 and imageio.imread(tmp_path / "b.mp4", index=None).shape[0] == 3
    with pytest.raises(ValueError, match=".mp4"):
        VideoWriter(tmp_path / "c.avi", fps=8)
