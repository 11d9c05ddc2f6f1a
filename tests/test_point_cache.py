"""The 3D point cache: exact geometric cases, occlusion, edges, bounded memory, batching and immutability."""

from __future__ import annotations

import math

import pytest
import torch

from world_model.camera import so3_exp
from world_model.point_cache import PointCache, depth_edges, fill_holes

H = W = 32
K = torch.tensor([16.0, 16.0, 16.0, 16.0])  # fx, fy, cx, cy: 90 deg FoV, integer principal point


def pose(t=(0.0, 0.0, 0.0), rotvec=(0.0, 0.0, 0.0)) -> torch.Tensor:
    c2w = torch.eye(4)
    c2w[:3, :3] = so3_exp(torch.tensor(rotvec, dtype=torch.float32))
    c2w[:3, 3] = torch.tensor(t)
    return c2w


def texture(b: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def source_index_colours() -> torch.Tensor:
    """Colours that name their pixel: channel 0 = u, channel 1 = v (exact in float32)."""
    vs, us = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    return torch.stack([us, vs, torch.zeros_like(us)])[None]


def test_plane_moved_by_a_known_translation_lands_on_the_predicted_pixels():
    rgb = texture()
    cache = PointCache.from_frame(rgb, torch.full((1, H, W), 2.0), pose()[None], K)
    out = cache.render(pose((0.5, 0.0, 0.0))[None], K, (H, W))  # 0.5 m right at 2 m: 16 * 0.5 / 2 = 4 px left
    assert torch.equal(out.rgb[0, :, :, : W - 4], rgb[0, :, :, 4:])
    assert out.mask[0, :, : W - 4].all() and not out.mask[0, :, W - 4 :].any()
    assert torch.allclose(out.depth[0, :, : W - 4], torch.full((H, W - 4), 2.0))
    assert (out.depth[0, :, W - 4 :] == 0).all() and not out.sky.any()
    assert out.coverage().item() == pytest.approx((W - 4) / W)
    # up and back: 0.25 m down (+y) at 2 m is 2 px up; 2 m further back halves the image about the centre
    out = cache.render(pose((0.0, 0.25, 0.0))[None], K, (H, W))
    assert torch.equal(out.rgb[0, :, : H - 2], rgb[0, :, 2:])
    out = cache.render(pose((0.0, 0.0, -2.0))[None], K, (H, W))
    assert torch.equal(out.rgb[0, :, 16, 16], rgb[0, :, 16, 16]) and torch.equal(out.rgb[0, :, 12, 10], rgb[0, :, 8, 4])
    assert torch.allclose(out.depth[0][out.mask[0]], torch.tensor(4.0))


def test_moving_closer_splats_wider_points_without_cracks():
    rgb = source_index_colours()
    cache = PointCache.from_frame(rgb, torch.full((1, H, W), 2.0), pose()[None], K)
    out = cache.render(pose((0.0, 0.0, 1.0))[None], K, (H, W))  # twice as close: every point covers 3x3 centres
    assert out.mask.all()
    # every pixel shows one of the source pixels whose magnified footprint holds it
    us = torch.arange(W, dtype=torch.float32)
    expected_u = (us - 16) / 2 + 16
    shown_u = out.rgb[0, 0, 5]
    assert ((shown_u - expected_u).abs() <= 0.5).all()


def test_pure_rotation_follows_the_homography_whatever_the_depth():
    rotvec = (0.02, math.radians(6.0), 0.01)
    rot = so3_exp(torch.tensor(rotvec, dtype=torch.float32))
    kmat = torch.tensor([[16.0, 0, 16], [0, 16, 16], [0, 0, 1]])
    homography = kmat @ rot.T @ torch.linalg.inv(kmat)  # source pixel -> target pixel
    rgb = source_index_colours()
    depths = {"near plane": torch.full((1, H, W), 1.5),
              "random": 1 + 4 * torch.rand(1, H, W, generator=torch.Generator().manual_seed(1)),
              "sky": torch.zeros(1, H, W)}
    for name, depth in depths.items():
        cache = PointCache.from_frame(rgb, depth, pose()[None], K, edge_threshold=1e9)
        out = cache.render(pose(rotvec=rotvec)[None], K, (H, W))
        assert out.coverage().item() > 0.75, name
        vt, ut = torch.nonzero(out.mask[0], as_tuple=True)
        src = torch.stack([out.rgb[0, 0, vt, ut], out.rgb[0, 1, vt, ut], torch.ones_like(ut, dtype=torch.float32)])
        proj = homography @ src
        proj = proj[:2] / proj[2]
        # the shown source pixel projects into the target pixel's footprint (a pixel, a little more when rotated)
        err = torch.maximum((proj[0] - ut).abs(), (proj[1] - vt).abs())
        assert err.max().item() <= 0.65, (name, err.max().item())
        assert out.sky[0][out.mask[0]].all() == (name == "sky")
        # no cracks: every target pixel whose homography pre-image is well inside the source image is covered
        grid_v, grid_u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                                        indexing="ij")
        back = torch.linalg.inv(homography) @ torch.stack([grid_u, grid_v, torch.ones_like(grid_u)]).reshape(3, -1)
        back = (back[:2] / back[2]).reshape(2, H, W)
        inside = (back[0] > 1) & (back[0] < W - 2) & (back[1] > 1) & (back[1] < H - 2)
        assert out.mask[0][inside].float().mean().item() > 0.97, name


def test_sky_is_at_infinity_translation_does_not_move_it():
    rgb = texture()
    depth = torch.zeros(1, H, W)
    depth[:, H // 2 :] = 3.0  # lower half: a wall at 3 m, upper half sky
    cache = PointCache.from_frame(rgb, depth, pose()[None], K)
    out = cache.render(pose((1.0, 0.0, 0.5))[None], K, (H, W))
    sky_rows = slice(0, H // 2 - 2)  # away from the wall's rim
    assert out.sky[0, sky_rows].all()
    assert torch.equal(out.rgb[0, :, sky_rows], rgb[0, :, sky_rows])
    assert (out.depth[0][out.sky[0]] == 0).all()


def test_the_nearer_surface_occludes_the_farther_one():
    rgb = torch.zeros(1, 3, H, W)
    rgb[:, 0, :, :16] = 1.0  # left half red at 1 m
    rgb[:, 1, :, 16:] = 1.0  # right half green at 4 m
    depth = torch.full((1, H, W), 4.0)
    depth[:, :, :16] = 1.0
    cache = PointCache.from_frame(rgb, depth, pose()[None], K)
    # 0.25 m left: the near half moves 4 px right, the far half 1 px: the near one covers the far one's left edge
    out = cache.render(pose((-0.25, 0.0, 0.0))[None], K, (H, W))
    assert (out.rgb[0, 0, :, 4:19] == 1).all() and (out.rgb[0, 1, :, 4:19] == 0).all()
    assert (out.rgb[0, 1, :, 20:] == 1).all()
    assert torch.allclose(out.depth[0, :, 4:19], torch.tensor(1.0))


def test_depth_edges_catch_untrustworthy_depth_not_clean_edges_planes_or_sky():
    step = torch.full((1, H, W), 3.0)
    step[:, :, :16] = 1.0
    floor = torch.zeros(1, H, W)  # a floor 1 m below the camera (+y down) up to the horizon, sky above
    rows = torch.arange(H, dtype=torch.float32)
    floor[0, rows > 16] = (16.0 / (rows[rows > 16] - 16))[:, None].expand(-1, W)
    for mode in ("isolated", "ramps"):  # both sides of a clean edge keep a neighbour on their surface
        assert not depth_edges(step, mode=mode).any() and not depth_edges(floor, mode=mode).any()
    lone = torch.zeros(1, H, W)
    lone[0, 5, 5] = 2.0  # a lone near pixel in the sky
    assert depth_edges(lone)[0, 5, 5] and depth_edges(lone).sum().item() == 1
    ramp = step.clone()
    ramp[:, :, 16] = 2.0  # depth blurred across the edge: a column of blend pixels
    assert not depth_edges(ramp).any()  # each agrees with the blend pixels above and below it
    edges = depth_edges(ramp, mode="ramps")
    assert edges[0, :, 16].all() and edges.sum().item() == H
    assert not depth_edges(lone, mode="none").any()
    # flagged pixels never enter the cache; a frame can ask for another filter
    assert PointCache.from_frame(texture(), lone, pose()[None], K).num_points == H * W - 1
    cache = PointCache.from_frame(texture(), ramp, pose()[None], K, edge_filter="ramps")
    assert cache.num_points == H * W - H
    assert PointCache.from_frame(texture(), ramp, pose()[None], K).num_points == H * W
    with pytest.raises(ValueError, match="mode must be one of"):
        depth_edges(step, mode="sobel")


def test_a_new_frame_supersedes_what_it_sees_again_or_sees_past():
    rgb_a, rgb_b = texture(seed=1), texture(seed=2)
    wall = torch.full((1, H, W), 2.0)
    cache = PointCache.from_frame(rgb_a, wall, pose()[None], K)
    # the same view again, new colours: the new frame replaces the old points, no growth
    again = cache.add(rgb_b, wall, pose()[None], K)
    assert again.num_points == cache.num_points
    assert torch.equal(again.render(pose()[None], K, (H, W)).rgb, rgb_b)
    # the wall is gone: the new frame sees 4 m past it, so the old wall points go
    farther = cache.add(rgb_b, 2 * wall, pose()[None], K)
    out = farther.render(pose()[None], K, (H, W))
    assert torch.allclose(out.depth, torch.tensor(4.0)) and farther.num_points == H * W
    # what a frame cannot see stays: a view turned away keeps the first wall (and shows nothing of it)
    assert not cache.render(pose(rotvec=(0.0, math.pi, 0.0))[None], K, (H, W)).mask.any()
    turned = cache.add(rgb_b, wall, pose(rotvec=(0.0, math.pi, 0.0))[None], K)
    assert turned.num_points == 2 * H * W
    assert torch.equal(turned.render(pose()[None], K, (H, W)).rgb, rgb_a)
    # supersede=False only adds: both walls are kept (at equal depth the newer point wins the z-buffer)
    added = cache.add(rgb_b, wall, pose()[None], K, supersede=False)
    assert added.num_points == 2 * H * W and torch.equal(added.render(pose()[None], K, (H, W)).rgb, rgb_b)


def test_first_frame_keeps_only_the_points_the_first_frame_added():
    rgb_a, rgb_b = texture(b=2, seed=1), texture(b=2, seed=2)
    wall = torch.full((2, H, W), 2.0)
    c2w = pose()[None].repeat(2, 1, 1)
    added = PointCache.from_frame(rgb_a, wall, c2w, K).add(rgb_b, wall, c2w, K, supersede=False)
    first = added.first_frame()
    assert added.num_points == 4 * H * W and first.counts().tolist() == [H * W, H * W]
    assert (first.stamp == 0).all() and first.batch_size == 2
    assert torch.equal(first.render(c2w, K, (H, W)).rgb, rgb_a)  # the newer frame wins in the full cache
    assert torch.equal(added.render(c2w, K, (H, W)).rgb, rgb_b)
    # a frame that sees past the first frame's points supersedes them all
    assert added.add(rgb_b, 2 * wall, c2w, K).first_frame().num_points == 0


def test_revisiting_keeps_memory_flat_and_capacity_keeps_the_newest():
    depth = torch.full((1, 8, 8), 2.0)
    k = torch.tensor([4.0, 4.0, 4.0, 4.0])
    cache = PointCache.empty(1)
    sizes = []
    for i in range(1000):  # a camera circling in front of the same wall
        angle = 2 * math.pi * i / 50
        c2w = pose((0.3 * math.cos(angle), 0.3 * math.sin(angle), 0.0))[None]
        cache = cache.add(texture(1, seed=i)[:, :, :8, :8], depth, c2w, k)
        if i in (99, 999):
            sizes.append(cache.nbytes())
    assert sizes[1] <= sizes[0] * 1.05
    assert cache.counts().item() <= 2 * 64 < cache.capacity  # flat because new frames supersede, not by capacity
    assert cache.next_stamp == 1000
    # a camera flying away from what it saw: the oldest points go first
    small = PointCache.empty(1, capacity=100)
    for i in range(6):
        small = small.add(texture(1, seed=i)[:, :, :8, :8], depth, pose((10.0 * i, 0.0, 0.0))[None], k)
    assert small.num_points == 100 and small.stamp.min().item() >= 4  # 64 points per frame: frames 4 and 5 left


def test_select_cat_fork_and_immutability():
    rgb = texture(2)
    depth = torch.stack([torch.full((H, W), 2.0), torch.full((H, W), 3.0)])
    c2w = torch.stack([pose(), pose((0.1, 0.0, 0.0))])
    cache = PointCache.from_frame(rgb, depth, c2w, K)
    before = [t.clone() for t in (cache.xyzw, cache.colors, cache.stamp)]
    grown = cache.add(texture(2, seed=5), depth, torch.stack([pose((0.0, 0.0, 0.3))] * 2), K)
    assert all(torch.equal(a, b) for a, b in zip(before, (cache.xyzw, cache.colors, cache.stamp)))
    assert grown.next_stamp == 2 and cache.next_stamp == 1
    view = torch.stack([pose((0.2, 0.0, 0.0)), pose((0.0, 0.1, 0.0))])
    full = cache.render(view, K, (H, W))
    swapped = cache.select([1, 0]).render(view.flip(0), K, (H, W))
    assert torch.equal(swapped.rgb, full.rgb.flip(0)) and torch.equal(swapped.mask, full.mask.flip(0))
    joined = PointCache.cat([cache.select([0]), cache.select([1])]).render(view, K, (H, W))
    assert all(torch.equal(a, b) for a, b in zip(joined, full))
    # several views per element at once equal one view at a time
    both = cache.render(torch.stack([view, view.flip(0)], dim=1), K, (H, W))
    assert torch.equal(both.rgb[:, 0], full.rgb) and both.rgb.shape == (2, 2, 3, H, W)


def test_same_inputs_same_render():
    def run():
        depth = 1 + 3 * torch.rand(1, H, W, generator=torch.Generator().manual_seed(3))
        cache = PointCache.from_frame(texture(), depth, pose()[None], K)
        cache = cache.add(texture(seed=4), torch.full((1, H, W), 2.5), pose((0.1, 0.0, 0.2), (0.0, 0.1, 0.0))[None], K)
        return cache.render(pose((0.05, 0.02, 0.1), (0.0, 0.05, 0.0))[None], K, (H, W))

    a, b = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_bad_input_names_the_argument():
    cache = PointCache.empty(1)
    rgb, depth = texture(), torch.full((1, H, W), 2.0)
    with pytest.raises(ValueError, match="rgb must have shape"):
        cache.add(texture(2), depth, pose()[None], K)
    with pytest.raises(ValueError, match="depth must be finite and >= 0"):
        cache.add(rgb, -depth, pose()[None], K)
    with pytest.raises(ValueError, match="depth must be a float tensor of shape"):
        cache.add(rgb, depth[:, :4], pose()[None], K)
    bad = pose()
    bad[0, 0] = 2.0
    with pytest.raises(ValueError, match="c2w.*not a rigid transform"):
        cache.add(rgb, depth, bad[None], K)
    with pytest.raises(ValueError, match="non-positive focal length"):
        cache.add(rgb, depth, pose()[None], torch.tensor([0.0, 16.0, 16.0, 16.0]))
    with pytest.raises(ValueError, match="image_hw"):
        cache.render(pose()[None], K, (0, 4))
    with pytest.raises(ValueError, match="indices must be in"):
        cache.select([1])
    with pytest.raises(ValueError, match="capacity must be a positive int"):
        PointCache.empty(1, capacity=0)


def test_fill_holes_spreads_neighbours_into_holes():
    image = torch.ones(1, 3, 8, 8) * torch.tensor([0.2, 0.4, 0.6])[:, None, None]
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    mask[0, 2:5, 3:6] = False
    filled, filled_mask = fill_holes(image * mask[:, None], mask)
    assert filled_mask.all() and torch.allclose(filled, image)
    filled, filled_mask = fill_holes(image, torch.zeros(1, 8, 8, dtype=torch.bool))
    assert not filled_mask.any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_render_matches_cpu():
    depth = 1 + 3 * torch.rand(1, H, W, generator=torch.Generator().manual_seed(3))
    cpu = PointCache.from_frame(texture(), depth, pose()[None], K)
    gpu = PointCache.from_frame(texture().cuda(), depth.cuda(), pose()[None].cuda(), K.cuda())
    view = pose((0.05, 0.02, 0.1), (0.0, 0.05, 0.0))[None]
    a, b = cpu.render(view, K, (H, W)), gpu.render(view.cuda(), K.cuda(), (H, W))
    assert (a.mask == b.mask.cpu()).float().mean() > 0.999
    both = a.mask & b.mask.cpu()
    torch.testing.assert_close(a.depth[both], b.depth.cpu()[both], atol=1e-4, rtol=1e-4)
