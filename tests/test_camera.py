"""Tests for world_model.camera: SE(3) maths, intrinsics, Plücker rays and SANA-WM camera packing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from world_model import camera as cam

# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _smooth_trajectory(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """World c2w (F, 4, 4): a random base pose followed by a smooth sinusoidal path (metres / radians)."""
    t = np.linspace(0.0, 1.0, num_frames)[:, None]
    amp, freq, phase = rng.uniform(0.1, 0.8, 3), rng.uniform(0.3, 1.5, 3), rng.uniform(0, 2 * np.pi, 3)
    pos = amp * np.sin(2 * np.pi * freq * t + phase)
    ramp, rfreq = rng.uniform(0.05, 0.5, 3), rng.uniform(0.2, 1.0, 3)
    rotvec = ramp * np.sin(2 * np.pi * rfreq * t)
    base = np.eye(4)
    base[:3, :3] = Rotation.random(random_state=rng).as_matrix()
    base[:3, 3] = rng.uniform(-3, 3, 3)
    local = np.tile(np.eye(4), (num_frames, 1, 1))
    local[:, :3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    local[:, :3, 3] = pos
    return base @ local


def _smooth_intrinsics(rng: np.random.Generator, num_frames: int, hw: tuple[int, int]) -> np.ndarray:
    """Per-frame pixel intrinsics (F, 4) with a slow zoom and a slightly off-centre principal point."""
    h, w = hw
    zoom = 1.0 + 0.2 * np.sin(np.linspace(0, np.pi, num_frames))
    fx = rng.uniform(0.7, 1.2) * w * zoom
    fy = fx * rng.uniform(0.95, 1.05)
    cx = np.full(num_frames, w / 2 + rng.uniform(-3, 3))
    cy = np.full(num_frames, h / 2 + rng.uniform(-3, 3))
    return np.stack([fx, fy, cx, cy], axis=-1)


def _random_poses(rng: np.random.Generator, n: int) -> torch.Tensor:
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, :3, :3] = Rotation.random(n, random_state=rng).as_matrix()
    out[:, :3, 3] = rng.normal(size=(n, 3))
    return torch.as_tensor(out)


def _rotz(deg: float) -> torch.Tensor:
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3] = torch.as_tensor(Rotation.from_euler("z", deg, degrees=True).as_matrix())
    return out


def _project(c2w: torch.Tensor, k4: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Pixel (u, v) of a world point under the integer-pixel-centre pinhole model."""
    pc = cam.se3_inverse(c2w) @ torch.cat([point, point.new_ones(1)])
    fx, fy, cx, cy = k4
    return torch.stack([fx * pc[0] / pc[2] + cx, fy * pc[1] / pc[2] + cy])


# ---------------------------------------------------------------------------------------------------
# Oracle: diffusers' SANA-WM prepare_camera
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames", [17, 25])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prepare_camera_matches_diffusers(num_frames: int, dtype: torch.dtype) -> None:
    cam_utils = pytest.importorskip("diffusers.pipelines.sana_wm.cam_utils")
    rng = np.random.default_rng(num_frames)
    image_hw, latent_hw, stride = (128, 192), (4, 6), 8
    c2w = _smooth_trajectory(rng, num_frames).astype(np.float32)
    k4 = _smooth_intrinsics(rng, num_frames, image_hw).astype(np.float32)
    ref = cam_utils.prepare_camera(c2w, k4, target_size=image_hw, vae_stride=(stride, 32, 32))

    # The documented path: relative poses + latent intrinsics -> prepare_camera.
    c2w_t = torch.as_tensor(c2w, dtype=dtype)[None]
    rel = cam.relative_to_first(c2w_t)
    k_lat = cam.scale_intrinsics(torch.as_tensor(k4, dtype=dtype)[None], image_hw, latent_hw)
    out = cam.prepare_camera(rel, k_lat, latent_hw, stride)
    t_lat = (num_frames - 1) // stride + 1
    assert out.conditions.shape == (1, t_lat, 20) and out.plucker.shape == (1, 6 * stride, t_lat, *latent_hw)
    assert out.conditions.dtype == dtype and out.plucker.dtype == dtype
    assert out.num_frames == t_lat and out.batch_size == 1 and out.temporal_stride == stride
    torch.testing.assert_close(out.conditions[0].float(), ref["raymap"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.plucker[0].float(), ref["chunk_plucker"], atol=1e-5, rtol=0)

    # The convenience wrapper gives the same tensors.
    conv = cam.camera_inputs_from_world(c2w_t, torch.as_tensor(k4, dtype=dtype)[None], image_hw, latent_hw, stride)
    torch.testing.assert_close(conv.conditions, out.conditions)
    torch.testing.assert_close(conv.plucker, out.plucker)


@pytest.mark.parametrize(("stride", "a", "b"), [(8, 1, 2), (4, 2, 3), (1, 1, 1)])
def test_prepare_camera_split_equals_whole(stride: int, a: int, b: int) -> None:
    rng = np.random.default_rng(stride * 100 + a * 10 + b)
    batch, num_frames, latent_hw = 2, 1 + (a + b) * stride, (3, 5)
    c2w = torch.as_tensor(np.stack([_smooth_trajectory(rng, num_frames) for _ in range(batch)]))
    k4 = torch.as_tensor(np.stack([_smooth_intrinsics(rng, num_frames, latent_hw) for _ in range(batch)]))
    rel = cam.relative_to_first(c2w)
    whole = cam.prepare_camera(rel, k4, latent_hw, stride)
    n0 = 1 + a * stride
    first = cam.prepare_camera(rel[:, :n0], k4[:, :n0], latent_hw, stride)
    rest = cam.prepare_camera(rel[:, n0:], k4[:, n0:], latent_hw, stride, starts_at_first_frame=False)
    assert first.num_frames == a + 1 and rest.num_frames == b
    joined = cam.CameraInputs.cat([first, rest])
    torch.testing.assert_close(joined.conditions, whole.conditions, atol=0, rtol=0)
    torch.testing.assert_close(joined.plucker, whole.plucker, atol=0, rtol=0)
    # slice_frames undoes cat.
    torch.testing.assert_close(whole.slice_frames(a + 1, a + 1 + b).plucker, rest.plucker, atol=0, rtol=0)

    # World-pose wrapper for the continuation chunk, relative to the episode's first pose.
    image_hw = (latent_hw[0] * 32, latent_hw[1] * 32)
    k_pix = cam.scale_intrinsics(k4, latent_hw, image_hw)
    rest_w = cam.camera_inputs_from_world(
        c2w[:, n0:],
        k_pix[:, n0:],
        image_hw,
        latent_hw,
        stride,
        reference_c2w=c2w[:, 0],
        starts_at_first_frame=False,
    )
    torch.testing.assert_close(rest_w.conditions, rest.conditions, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(rest_w.plucker, rest.plucker, atol=1e-9, rtol=1e-9)


def test_prepare_camera_packing_layout() -> None:
    """Conditions come from frame s*l and channel frame_in_group*6 + c holds that frame's rays."""
    rng = np.random.default_rng(7)
    stride, num_frames, latent_hw = 4, 9, (2, 3)
    rel = cam.relative_to_first(torch.as_tensor(_smooth_trajectory(rng, num_frames))[None])
    k4 = torch.as_tensor(_smooth_intrinsics(rng, num_frames, latent_hw))[None]
    out = cam.prepare_camera(rel, k4, latent_hw, stride)
    rays = cam.plucker_rays(rel[0], k4[0], *latent_hw)  # (F, 6, h, w)
    for lat, group in enumerate([[0, 1, 2, 3], [1, 2, 3, 4], [5, 6, 7, 8]]):
        torch.testing.assert_close(out.conditions[0, lat, :16], rel[0, stride * lat].reshape(16))
        torch.testing.assert_close(out.conditions[0, lat, 16:], k4[0, stride * lat])
        for j, frame in enumerate(group):
            torch.testing.assert_close(out.plucker[0, 6 * j : 6 * j + 6, lat], rays[frame])
    cont = cam.prepare_camera(rel[:, 1:], k4[:, 1:], latent_hw, stride, starts_at_first_frame=False)
    torch.testing.assert_close(cont.conditions[0, 1, :16], rel[0, 8].reshape(16))


def test_camera_inputs_container() -> None:
    rng = np.random.default_rng(3)
    rel = cam.relative_to_first(torch.as_tensor(_smooth_trajectory(rng, 9))[None])
    k4 = torch.as_tensor(_smooth_intrinsics(rng, 9, (2, 2)))[None]
    x = cam.prepare_camera(rel, k4, (2, 2), 4)
    y = x.to(dtype=torch.float32)
    assert y.conditions.dtype == torch.float32 and y.plucker.dtype == torch.float32
    both = cam.CameraInputs.cat([x, x], dim="batch")
    assert both.batch_size == 2 and both.num_frames == 3 and both.latent_hw == (2, 2)
    with pytest.raises(ValueError, match="slice_frames"):
        x.slice_frames(2, 5)
    with pytest.raises(ValueError, match=r"items\[1\]"):
        cam.CameraInputs.cat([x, cam.prepare_camera(rel, k4, (2, 3), 4)])
    with pytest.raises(ValueError, match="conditions"):
        cam.CameraInputs(torch.zeros(1, 3, 19), x.plucker)
    with pytest.raises(ValueError, match="plucker"):
        cam.CameraInputs(x.conditions, torch.zeros(1, 24, 2, 2, 2))


# ---------------------------------------------------------------------------------------------------
# SO(3) / SE(3)
# ---------------------------------------------------------------------------------------------------


def test_so3_exp_log_vs_scipy() -> None:
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(64, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate([rng.uniform(0, math.pi - 1e-3, 56), [0.0, 1e-9, 1e-5, 2e-3, math.pi - 1e-7] + [3.1] * 3])
    rotvec = axes * angles[:, None]
    mats = cam.so3_exp(torch.as_tensor(rotvec))
    np.testing.assert_allclose(mats.numpy(), Rotation.from_rotvec(rotvec).as_matrix(), atol=1e-12)
    back = cam.so3_log(mats).numpy()
    np.testing.assert_allclose(back, rotvec, atol=1e-9)


@pytest.mark.parametrize("angle", [math.pi, math.pi - 1e-6, math.pi - 1e-3])
def test_so3_log_near_pi(angle: float) -> None:
    rng = np.random.default_rng(1)
    axes = rng.normal(size=(16, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    mats = torch.as_tensor(Rotation.from_rotvec(axes * angle).as_matrix())
    w = cam.so3_log(mats)
    torch.testing.assert_close(torch.linalg.vector_norm(w, dim=-1), torch.full((16,), angle, dtype=torch.float64))
    torch.testing.assert_close(cam.so3_exp(w), mats, atol=1e-9, rtol=0)


def test_so3_small_angles_float32() -> None:
    w64 = torch.tensor([[1e-4, -2e-4, 3e-4], [1e-7, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    r32 = cam.so3_exp(w64.float())
    assert r32.dtype == torch.float32
    torch.testing.assert_close(r32.double(), cam.so3_exp(w64), atol=1e-7, rtol=0)
    torch.testing.assert_close(cam.so3_log(cam.so3_exp(w64)), w64, atol=1e-15, rtol=0)


def test_se3_exp_log_round_trip_and_expm_oracle() -> None:
    rng = np.random.default_rng(2)
    twist = rng.normal(size=(32, 6))
    twist[:, 3:] *= (rng.uniform(0, math.pi - 1e-3, 32) / np.linalg.norm(twist[:, 3:], axis=1))[:, None]
    twist[0, 3:] = 0.0  # pure translation
    twist[1, 3:] *= 1e-8 / np.linalg.norm(twist[1, 3:])
    mats = cam.se3_exp(torch.as_tensor(twist))
    for i in range(len(twist)):
        v, w = twist[i, :3], twist[i, 3:]
        xi_hat = np.zeros((4, 4))
        xi_hat[:3, :3] = [[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]
        xi_hat[:3, 3] = v
        np.testing.assert_allclose(mats[i].numpy(), scipy.linalg.expm(xi_hat), atol=1e-10)
    torch.testing.assert_close(cam.se3_log(mats), torch.as_tensor(twist), atol=1e-9, rtol=0)
    poses = _random_poses(rng, 16)
    torch.testing.assert_close(cam.se3_exp(cam.se3_log(poses)), poses, atol=1e-10, rtol=0)


def test_se3_inverse_and_relative() -> None:
    rng = np.random.default_rng(4)
    poses = _random_poses(rng, 6).reshape(2, 3, 4, 4)
    eye = torch.eye(4, dtype=torch.float64).expand(2, 3, 4, 4)
    torch.testing.assert_close(cam.se3_inverse(poses) @ poses, eye, atol=1e-12, rtol=0)
    rel = cam.relative_to_first(poses)
    torch.testing.assert_close(rel[:, 0], eye[:, 0], atol=1e-12, rtol=0)
    torch.testing.assert_close(poses[:, :1] @ rel, poses, atol=1e-12, rtol=0)
    shared = cam.relative_to(poses, poses[0, 0])
    torch.testing.assert_close(shared[0, 0], eye[0, 0], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="reference"):
        cam.relative_to(poses, poses[:, :2])


def test_se3_interpolate() -> None:
    t1 = _rotz(90.0)
    mid = cam.se3_interpolate(torch.eye(4, dtype=torch.float64), t1, 0.5)
    torch.testing.assert_close(mid, _rotz(45.0), atol=1e-12, rtol=0)
    rng = np.random.default_rng(5)
    a, b = _random_poses(rng, 4), _random_poses(rng, 4)
    torch.testing.assert_close(cam.se3_interpolate(a, b, 0.0), a, atol=1e-10, rtol=0)
    torch.testing.assert_close(cam.se3_interpolate(a, b, 1.0), b, atol=1e-10, rtol=0)
    # Screw motion: pure translation interpolates linearly; alpha as a tensor broadcasts to (N, 4, 4).
    t_end = torch.eye(4, dtype=torch.float64)
    t_end[:3, 3] = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
    path = cam.se3_interpolate(torch.eye(4, dtype=torch.float64), t_end, torch.tensor([0.25, 0.5]))
    assert path.shape == (2, 4, 4)
    torch.testing.assert_close(path[0, :3, 3], 0.25 * t_end[:3, 3])
    with pytest.raises(ValueError, match="T1"):
        cam.se3_interpolate(a, b[:2], 0.5)


# ---------------------------------------------------------------------------------------------------
# Quaternions and pose7
# ---------------------------------------------------------------------------------------------------


def test_quaternion_round_trips_vs_scipy() -> None:
    rng = np.random.default_rng(6)
    rots = Rotation.random(64, random_state=rng)
    axes = rng.normal(size=(8, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    near_pi = Rotation.from_rotvec(axes * np.array([math.pi, math.pi - 1e-7, math.pi - 1e-4, 3.0] * 2)[:, None])
    all_rots = Rotation.concatenate([rots, near_pi, Rotation.identity(1)])
    mats = torch.as_tensor(all_rots.as_matrix())
    q = cam.rotmat_to_quat(mats)
    ref_q = all_rots.as_quat(canonical=True)
    assert bool((q[:, 3] >= 0).all())
    # Equal up to the sign ambiguity that remains only when w == 0 (exact pi rotations).
    dots = np.abs(np.sum(q.numpy() * ref_q, axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-12)
    signed = np.abs(ref_q[:, 3]) > 1e-12  # everything except exact-pi rotations has a unique canonical form
    assert signed.sum() >= len(ref_q) - 2
    np.testing.assert_allclose(q.numpy()[signed], ref_q[signed], atol=1e-12)
    np.testing.assert_allclose(cam.quat_to_rotmat(torch.as_tensor(ref_q)).numpy(), all_rots.as_matrix(), atol=1e-12)
    torch.testing.assert_close(cam.quat_to_rotmat(q), mats, atol=1e-12, rtol=0)


def test_pose7_round_trip_and_normalisation() -> None:
    rng = np.random.default_rng(8)
    poses = _random_poses(rng, 10)
    p7 = cam.matrix_to_pose7(poses)
    assert p7.shape == (10, 7)
    torch.testing.assert_close(cam.pose7_to_matrix(p7), poses, atol=1e-12, rtol=0)
    scaled = p7.clone()
    scaled[:, 3:] *= 1.005  # near-unit quaternions are normalised
    torch.testing.assert_close(cam.pose7_to_matrix(scaled), poses, atol=1e-12, rtol=0)
    np_in = cam.pose7_to_matrix(np.array([1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0]))
    assert np_in.dtype == torch.float64
    torch.testing.assert_close(np_in[:3, 3], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"q_xyzw\[1\].*unit quaternion"):
        cam.quat_to_rotmat(torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.1]]))
    with pytest.raises(ValueError, match=r"^p: quaternion"):
        cam.pose7_to_matrix(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]))
    with pytest.raises(ValueError, match="q_xyzw must have shape"):
        cam.quat_to_rotmat(torch.zeros(3))


# ---------------------------------------------------------------------------------------------------
# look_at, intrinsics, Plücker
# ---------------------------------------------------------------------------------------------------


def test_look_at_projection() -> None:
    eye = torch.tensor([1.0, -2.0, 1.5], dtype=torch.float64)
    target = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    c2w = cam.look_at(eye, target, up)
    cam.validate_c2w(c2w, atol=1e-9)
    k4 = cam.fov_to_intrinsics(70.0, 240, 320, dtype=torch.float64)
    torch.testing.assert_close(_project(c2w, k4, target), k4[2:], atol=1e-9, rtol=0)
    above = _project(c2w, k4, target + 0.3 * up)
    assert above[1] < k4[3] - 1.0  # higher in the world -> smaller v (image up)
    assert abs(float(above[0] - k4[2])) < 1e-9  # straight up stays on the centre column
    # Camera x axis is horizontal (no roll) and +z points at the target.
    assert abs(float(c2w[2, 0])) < 1e-12
    torch.testing.assert_close(c2w[:3, 2], (target - eye) / torch.linalg.vector_norm(target - eye))
    batched = cam.look_at(torch.stack([eye, eye + 1]), torch.stack([target, target]), up)
    assert batched.shape == (2, 4, 4)
    with pytest.raises(ValueError, match="eye equals target"):
        cam.look_at(eye, eye, up)
    with pytest.raises(ValueError, match="up is zero or parallel"):
        cam.look_at(eye, eye + 2 * up, up)
    with pytest.raises(ValueError, match="target must have"):
        cam.look_at(eye, torch.stack([target, target]), up)


def test_intrinsics_helpers() -> None:
    k4 = cam.fov_to_intrinsics(90.0, 480, 640)
    assert k4.dtype == torch.float32
    torch.testing.assert_close(k4, torch.tensor([320.0, 320.0, 320.0, 240.0]))
    exact = cam.fov_to_intrinsics(90.0, 480, 640, half_pixel_centre=True)
    torch.testing.assert_close(exact[2:], torch.tensor([319.5, 239.5]))
    fovs = cam.intrinsics_to_fov(cam.fov_y_to_intrinsics(45.0, 480, 640), 480, 640)
    assert abs(float(fovs[1]) - 45.0) < 1e-4 and float(fovs[0]) > 45.0
    kmat = cam.intrinsics_to_matrix(torch.tensor([[100.0, 110.0, 30.0, 20.0]]))
    assert kmat.shape == (1, 3, 3) and float(kmat[0, 0, 2]) == 30.0 and float(kmat[0, 2, 2]) == 1.0
    torch.testing.assert_close(cam.matrix_to_intrinsics(kmat), torch.tensor([[100.0, 110.0, 30.0, 20.0]]))
    torch.testing.assert_close(cam.validate_intrinsics(kmat[0].numpy()), torch.tensor([100.0, 110.0, 30.0, 20.0]))
    lat = cam.scale_intrinsics(torch.tensor([640.0, 704.0, 640.0, 352.0]), (704, 1280), (22, 40))
    torch.testing.assert_close(lat, torch.tensor([20.0, 22.0, 20.0, 11.0]))


@pytest.mark.parametrize(("src_hw", "dst_hw"), [((480, 640), (64, 128)), ((300, 200), (64, 128)), ((81, 97), (40, 40))])
def test_resize_crop_matches_diffusers(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> None:
    cam_utils = pytest.importorskip("diffusers.pipelines.sana_wm.cam_utils")
    img = Image.new("RGB", (src_hw[1], src_hw[0]))
    cropped, src_size, resized, offset = cam_utils.resize_and_center_crop(img, *dst_hw)
    (rh, rw), (top, left) = cam.resize_crop_geometry(src_hw, dst_hw)
    assert (rw, rh) == resized and (left, top) == offset and cropped.size == (dst_hw[1], dst_hw[0])
    k4 = np.array([[500.0, 510.0, src_hw[1] / 2 + 3, src_hw[0] / 2 - 2]])
    ref = cam_utils.transform_intrinsics_for_crop(k4, src_size, resized, offset)
    np.testing.assert_allclose(cam.resize_crop_intrinsics(k4, src_hw, dst_hw).numpy(), ref, rtol=1e-12)


def test_plucker_rays_geometry() -> None:
    rng = np.random.default_rng(9)
    poses = _random_poses(rng, 3)
    k4 = torch.tensor([[5.0, 6.0, 3.0, 2.0], [4.0, 4.0, 3.0, 2.0], [7.0, 5.0, 3.0, 2.0]], dtype=torch.float64)
    h, w = 5, 7
    rays = cam.plucker_rays(poses, k4, h, w)
    assert rays.shape == (3, 6, h, w)
    d, m = rays[:, :3], rays[:, 3:]
    torch.testing.assert_close(torch.linalg.vector_norm(d, dim=1), torch.ones(3, h, w, dtype=torch.float64))
    torch.testing.assert_close((d * m).sum(1), torch.zeros(3, h, w, dtype=torch.float64), atol=1e-12, rtol=0)
    # The principal pixel (integer cx, cy) looks along the camera z axis.
    torch.testing.assert_close(d[:, :, 2, 3], poses[:, :3, 2])
    # A world point seen at pixel (u, v) lies on that pixel's ray: X x d == m.
    u, v, depth = 5, 1, 2.5
    for i in range(3):
        fx, fy, cx, cy = k4[i]
        pc = torch.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, torch.tensor(depth, dtype=torch.float64)])
        x = poses[i, :3, :3] @ pc + poses[i, :3, 3]
        torch.testing.assert_close(torch.linalg.cross(x, d[i, :, v, u]), m[i, :, v, u], atol=1e-12, rtol=0)
    shared = cam.plucker_rays(poses, k4[0], h, w)
    torch.testing.assert_close(shared[0], rays[0])
    assert cam.plucker_rays(poses.float(), k4.float(), h, w).dtype == torch.float32


# ---------------------------------------------------------------------------------------------------
# Frame counts and validation errors
# ---------------------------------------------------------------------------------------------------


def test_num_latent_frames() -> None:
    assert cam.num_latent_frames(1, 8) == 1
    assert cam.num_latent_frames(17, 8) == 3
    assert cam.num_latent_frames(161, 8) == 21
    assert cam.num_latent_frames(16, 8, starts_at_first_frame=False) == 2
    with pytest.raises(ValueError, match=r"num_frames=20 .*nearest valid counts are 17 and 25"):
        cam.num_latent_frames(20, 8)
    with pytest.raises(ValueError, match=r"num_frames=5 .*nearest valid counts are 8"):
        cam.num_latent_frames(5, 8, starts_at_first_frame=False)
    with pytest.raises(ValueError, match="num_frames must be an int"):
        cam.num_latent_frames(0, 8)
    with pytest.raises(ValueError, match="temporal_stride"):
        cam.num_latent_frames(9, 0)


def test_validate_c2w_errors() -> None:
    good = torch.eye(4).expand(2, 5, 4, 4).clone()
    assert cam.validate_c2w(good.numpy()).shape == (2, 5, 4, 4)
    flipped = good.clone()
    flipped[1, 3, 0, 0] = -1.0
    with pytest.raises(ValueError, match=r"c2w\[1, 3\] is not a rigid transform: det\(R\)=-1.*proper rotation"):
        cam.validate_c2w(flipped)
    scaled = good.clone()
    scaled[0, 2, :3, :3] *= 1.1
    with pytest.raises(ValueError, match=r"poses\[0, 2\] is not a rigid transform: max\|R\^T R - I\|"):
        cam.validate_c2w(scaled, name="poses")
    nan = good.clone()
    nan[0, 4, 1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"c2w\[0, 4\] contains NaN"):
        cam.validate_c2w(nan)
    bottom = good.clone()
    bottom[1, 0, 3, 0] = 0.5
    with pytest.raises(ValueError, match=r"c2w\[1, 0\] is not a rigid transform: bottom row"):
        cam.validate_c2w(bottom)
    with pytest.raises(ValueError, match=r"c2w must have shape \(\.\.\., 4, 4\)"):
        cam.validate_c2w(torch.eye(3))


def test_validate_intrinsics_errors() -> None:
    with pytest.raises(ValueError, match=r"intrinsics\[1\] has non-positive focal length"):
        cam.validate_intrinsics(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    skew = torch.tensor([[100.0, 2.0, 10.0], [0.0, 100.0, 10.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="K has non-zero skew"):
        cam.validate_intrinsics(skew, name="K")
    last = torch.tensor([[100.0, 0.0, 10.0], [0.0, 100.0, 10.0], [0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"intrinsics last row is not \[0, 0, 1\]"):
        cam.validate_intrinsics(last)
    with pytest.raises(ValueError, match=r"intrinsics must have shape \(\.\.\., 4\)"):
        cam.validate_intrinsics(torch.ones(5))
    with pytest.raises(ValueError, match="intrinsics contains NaN"):
        cam.validate_intrinsics(torch.tensor([1.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(ValueError, match="from_hw"):
        cam.scale_intrinsics(torch.tensor([1.0, 1.0, 0.0, 0.0]), (0, 4), (2, 2))
    with pytest.raises(ValueError, match="fov_x_deg"):
        cam.fov_to_intrinsics(180.0, 4, 4)


def test_prepare_camera_errors() -> None:
    rng = np.random.default_rng(10)
    rel = cam.relative_to_first(torch.as_tensor(_smooth_trajectory(rng, 9))[None])
    k4 = torch.as_tensor(_smooth_intrinsics(rng, 9, (2, 3)))[None]
    with pytest.raises(ValueError, match=r"c2w_rel must have shape \(B, F, 4, 4\)"):
        cam.prepare_camera(rel[0], k4, (2, 3), 4)
    with pytest.raises(ValueError, match=r"k4_latent must have shape \(B, F, 4\)"):
        cam.prepare_camera(rel, k4[0], (2, 3), 4)
    with pytest.raises(ValueError, match="k4_latent shape .* does not match c2w_rel"):
        cam.prepare_camera(rel, torch.cat([k4, k4]), (2, 3), 4)
    with pytest.raises(ValueError, match="k4_latent shape .* does not match c2w_rel"):
        cam.prepare_camera(rel, k4[:, :8], (2, 3), 4)
    bad = rel.clone()
    bad[0, 5, :3, :3] *= 2.0
    with pytest.raises(ValueError, match=r"c2w_rel\[0, 5\] is not a rigid transform"):
        cam.prepare_camera(bad, k4, (2, 3), 4)
    nan = rel.clone()
    nan[0, 2, 0, 3] = float("inf")
    with pytest.raises(ValueError, match=r"c2w_rel\[0, 2\] contains NaN or inf"):
        cam.prepare_camera(nan, k4, (2, 3), 4)
    neg = k4.clone()
    neg[0, 6, 1] = -1.0
    with pytest.raises(ValueError, match=r"k4_latent\[0, 6\] has non-positive focal length"):
        cam.prepare_camera(rel, neg, (2, 3), 4)
    with pytest.raises(ValueError, match=r"num_frames=9 .*nearest valid counts are 8 and 12"):
        cam.prepare_camera(rel, k4, (2, 3), 4, starts_at_first_frame=False)
    with pytest.raises(ValueError, match=r"num_frames=8 .*nearest valid counts are 5 and 9"):
        cam.prepare_camera(rel[:, :8], k4[:, :8], (2, 3), 4)
    with pytest.raises(ValueError, match="latent_hw"):
        cam.prepare_camera(rel, k4, (2, 3.0), 4)
    with pytest.raises(ValueError, match="temporal_stride"):
        cam.prepare_camera(rel, k4, (2, 3), 0)


def test_camera_inputs_from_world_errors_and_shared_intrinsics() -> None:
    rng = np.random.default_rng(11)
    c2w = torch.as_tensor(np.stack([_smooth_trajectory(rng, 9) for _ in range(2)]))
    k_vec = torch.tensor([60.0, 62.0, 48.0, 31.0], dtype=torch.float64)
    a = cam.camera_inputs_from_world(c2w, k_vec, (64, 96), (2, 3), 4)
    b = cam.camera_inputs_from_world(c2w, k_vec.expand(2, 9, 4), (64, 96), (2, 3), 4)
    c = cam.camera_inputs_from_world(c2w, cam.intrinsics_to_matrix(k_vec.expand(2, 4)), (64, 96), (2, 3), 4)
    torch.testing.assert_close(a.plucker, b.plucker)
    torch.testing.assert_close(a.conditions, c.conditions)
    torch.testing.assert_close(a.conditions[:, 0, :16], torch.eye(4, dtype=torch.float64).reshape(1, 16).expand(2, 16))
    with pytest.raises(ValueError, match="reference_c2w is required"):
        cam.camera_inputs_from_world(c2w[:, 1:], k_vec, (64, 96), (2, 3), 4, starts_at_first_frame=False)
    with pytest.raises(ValueError, match=r"k4_pixels must have shape \(4,\), \(2, 4\) or \(2, 9, 4\)"):
        cam.camera_inputs_from_world(c2w, k_vec.expand(3, 4), (64, 96), (2, 3), 4)
    with pytest.raises(ValueError, match=r"reference_c2w must have shape"):
        cam.camera_inputs_from_world(c2w, k_vec, (64, 96), (2, 3), 4, reference_c2w=c2w[:, :2])
    with pytest.raises(ValueError, match="image_hw"):
        cam.camera_inputs_from_world(c2w, k_vec, (64,), (2, 3), 4)


def test_rpy_slerp_and_rotation_angle_vs_scipy() -> None:
    rng = np.random.default_rng(3)
    rpy = rng.uniform(-3.0, 3.0, (40, 3))
    ref = Rotation.from_euler("ZYX", rpy[:, ::-1]).as_matrix()  # yaw, pitch, roll about the moving axes
    np.testing.assert_allclose(cam.rpy_to_rotmat(rpy).numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(cam.rpy_to_rotmat(rpy).numpy(), Rotation.from_euler("xyz", rpy).as_matrix(), atol=1e-12)
    with pytest.raises(ValueError, match=r"rpy must have shape \(\.\.\., 3\)"):
        cam.rpy_to_rotmat(np.zeros(4))

    keys = Rotation.random(7, random_state=rng)
    times = np.sort(rng.uniform(0.0, 4.0, 7))
    at = np.concatenate([rng.uniform(times[0], times[-1], 50), times])
    np.testing.assert_allclose(cam.slerp(times, keys.as_matrix(), at).numpy(),
                               __import__("scipy.spatial.transform", fromlist=["Slerp"]).Slerp(times, keys)(at)
                               .as_matrix(), atol=1e-12)
    with pytest.raises(ValueError, match="within"):
        cam.slerp(times, keys.as_matrix(), [times[-1] + 1.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        cam.slerp(times[::-1].copy(), keys.as_matrix(), [times[0]])
    with pytest.raises(ValueError, match="N >= 2"):
        cam.slerp(times[:1], keys.as_matrix()[:1], [times[0]])

    mats = np.concatenate([Rotation.random(30, random_state=rng).as_matrix(),
                           Rotation.from_rotvec([[1e-9, 0, 0], [0, math.pi, 0], [0, 0, 0]]).as_matrix()])
    np.testing.assert_allclose(cam.rotation_angle(mats).numpy(), Rotation.from_matrix(mats).magnitude(), atol=1e-9)


def test_quat_to_rotmat_unchecked_normalises_any_quaternion() -> None:
    q = Rotation.random(16, random_state=5).as_quat()
    scaled = torch.as_tensor(q * np.linspace(0.1, 30.0, 16)[:, None])
    np.testing.assert_allclose(cam.quat_to_rotmat(scaled, check=False).numpy(),
                               Rotation.from_quat(q).as_matrix(), atol=1e-12)
    with pytest.raises(ValueError, match="unit"):
        cam.quat_to_rotmat(scaled)
    assert torch.equal(cam.quat_to_rotmat(torch.zeros(4), check=False), torch.eye(4)[:3, :3].float())
