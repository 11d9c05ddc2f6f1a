"""Post-training quantization (world_model.quantization, NVIDIA ModelOpt): what is quantized, fidelity, save/restore.

CPU runs FP8 and INT8 fake quantization; NVFP4 needs CUDA (its CPU error is tested); GPU tests skip without CUDA.
"""

from __future__ import annotations

import fnmatch
import importlib

import pytest
import torch
import torch.nn.functional as F

from world_model import quantization as Q
from world_model.camera import CameraInputs
from world_model.config import PRESETS
from world_model.layers.ffn import GLUConvFFN
from world_model.transformer import SanaWMTransformer


def _have_modelopt() -> bool:
    try:
        importlib.import_module("modelopt.torch.quantization")
    except ImportError:
        return False
    return True


needs_modelopt = pytest.mark.skipif(not _have_modelopt(), reason='needs nvidia-modelopt (pip install ".[quant]")')
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny_model(seed: int = 0, device: str = "cpu") -> SanaWMTransformer:
    """tiny-text with every parameter random (zero-initialised camera paths included), so all paths matter."""
    torch.manual_seed(seed)
    model = SanaWMTransformer(PRESETS["tiny-text"]).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if "norm" in name else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
    return model.to(device)


def inputs(device: str = "cpu", seed: int = 1) -> tuple[tuple, dict]:
    gen = torch.Generator().manual_seed(seed)
    b, t, h, w = 1, 4, 4, 4
    cond = torch.zeros(b, t, 20)
    for i in range(t):
        pose = torch.eye(4)
        pose[:3, 3] = torch.tensor([0.1 * i, 0.0, 0.2 * i])
        cond[:, i, :16] = pose.flatten()
    cond[:, :, 16:] = torch.tensor([4.0, 4.0, 2.0, 2.0])
    camera = CameraInputs(cond, torch.randn(b, 48, t, h, w, generator=gen)).to(device, torch.float32)
    x = torch.randn(b, 16, t, h, w, generator=gen).to(device)
    timestep = torch.tensor([[0.0, 300.0, 600.0, 900.0]], device=device)
    return (x, timestep), dict(camera=camera, text=torch.randn(b, 5, 32, generator=gen).to(device))


def expected_quantized(model: SanaWMTransformer) -> set[str]:
    patterns = [p for g in Q.DEFAULT_GROUPS for p in Q.QUANTIZED_GROUPS[g]]
    return {n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and any(fnmatch.fnmatchcase(n, p) for p in patterns)}


def test_linearized_ffn_gives_identical_outputs():
    torch.manual_seed(0)
    ffn = GLUConvFFN(16, 24)
    with torch.no_grad():
        ffn.t_conv.weight.normal_()
    x = torch.randn(2, 3, 6, 16)
    before = ffn(x, (2, 3), [(0, 3)])[0]
    ffn.linearize()
    assert ffn.linearized and isinstance(ffn.inverted_conv.conv, torch.nn.Linear)
    assert isinstance(ffn.point_conv.conv, torch.nn.Linear)
    torch.testing.assert_close(ffn(x, (2, 3), [(0, 3)])[0], before, atol=1e-6, rtol=0)


def test_missing_modelopt_error_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "modelopt" else real(name, *a))
    with pytest.raises(Q.QuantizationUnavailableError, match=r"sana-wm-env\[quant\]"):
        Q.quantize(tiny_model(), "fp8")


def test_bad_arguments_raise_value_error_naming_them():
    model = tiny_model()
    with pytest.raises(ValueError, match="mode must be one of"):
        Q.quantize(model, "fp16")
    with pytest.raises(ValueError, match="groups must be"):
        Q.quantize(model, "fp8", groups=("camera",))
    with pytest.raises(ValueError, match="calibration must be"):
        Q.quantize(model, "fp8", calibration=3)
    assert model.quantization is None  # nothing happened


def test_nvfp4_on_cpu_raises_a_clear_error():
    with pytest.raises(Q.QuantizationUnavailableError, match="'nvfp4' needs the transformer on a CUDA GPU"):
        Q.quantize(tiny_model(), "nvfp4")


@needs_modelopt
def test_fp8_quantizes_attention_and_ffn_linears_and_leaves_the_camera_branch_alone():
    model = tiny_model()
    args, kwargs = inputs()
    with torch.no_grad():
        ref = model(*args, **kwargs)
    Q.quantize(model, "fp8")
    summary = Q.quantization_summary(model)
    assert summary.mode == "fp8"
    assert set(summary.quantized) == expected_quantized(model)
    assert len(summary.quantized) == 4 * 8  # 4 blocks x (qkv, proj, output_gate, 3 cross-attn, 2 FFN)
    assert all("fp8 e4m3 per-tensor" in d for d in summary.quantized.values())
    for name in ("blocks.0.attn.q_proj_cam", "blocks.1.attn.out_proj_cam", "blocks.2.plucker_proj",
                 "plucker_embedder.proj", "x_embedder.proj", "t_block.1", "final_layer.linear",
                 "blocks.3.attn.beta_proj", "blocks.0.mlp.t_conv"):
        assert name in summary.full_precision
    # a camera projection computes exactly the float linear map; a quantized one does not
    x = torch.randn(7, 96)
    with torch.no_grad():
        cam = model.blocks[1].attn.k_proj_cam
        assert torch.equal(cam(x), F.linear(x, cam.weight, cam.bias))
        qkv = model.blocks[1].attn.qkv
        exact = F.linear(x, qkv.weight)
        assert not torch.equal(qkv(x), exact)
        torch.testing.assert_close(qkv(x), exact, atol=0.15, rtol=0.1)
        out = model(*args, **kwargs)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 1e-4 < rel < 0.1, rel  # close to the float model, but not identical


@needs_modelopt
def test_save_and_restore_is_bit_identical(tmp_path):
    model = tiny_model()
    args, kwargs = inputs()
    Q.quantize(model, "fp8", calibration=lambda m: m(*args, **kwargs))  # static scales live in the file
    assert model.quantization["calibrated"]
    with torch.no_grad():
        out = model(*args, **kwargs)
    path = Q.save_quantized(model, tmp_path / "fp8.pt")
    fresh = SanaWMTransformer(PRESETS["tiny-text"]).eval()
    Q.load_quantized(fresh, path)
    assert set(Q.quantization_summary(fresh).quantized) == expected_quantized(model)
    with torch.no_grad():
        assert torch.equal(fresh(*args, **kwargs), out)
    with pytest.raises(ValueError, match="config differs"):
        Q.load_quantized(SanaWMTransformer(PRESETS["tiny-notext"]), path)
    with pytest.raises(ValueError, match="already quantized"):
        Q.quantize(fresh, "fp8")


@needs_modelopt
def test_int8_and_single_group_modes():
    model = tiny_model()
    Q.quantize(model, "int8", groups=("self_qkv",))
    summary = Q.quantization_summary(model)
    assert set(summary.quantized) == {f"blocks.{i}.attn.qkv" for i in range(4)}
    assert all(d.startswith("weight: int8 per-channel") for d in summary.quantized.values())


@needs_modelopt
def test_compressed_fp8_matches_fake_quant_and_refuses_to_save(tmp_path):
    model = tiny_model()
    args, kwargs = inputs()
    with torch.no_grad():
        ref = model(*args, **kwargs)
    Q.quantize(model, "fp8")
    with torch.no_grad():
        fake = model(*args, **kwargs)
    Q.compress(model)
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float8_e4m3fn  # weights stored in FP8
    with torch.no_grad():
        real = model(*args, **kwargs)
    # The same FP8 model: compression moves the output by a small fraction of what FP8 itself costs. Not bit
    # for bit: the dynamic FP8 activation scales round differently when a matmul's summation order changes
    # (it does with the thread count: 2e-7 at 2 threads, 1e-3 at one), and one flipped FP8 step is 6 %.
    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert rel(real, fake) < 0.1 * rel(fake, ref), (rel(real, fake), rel(fake, ref))
    with pytest.raises(ValueError, match="compressed model cannot be saved"):
        Q.save_quantized(model, tmp_path / "x.pt")


@needs_modelopt
@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["fp8", "nvfp4"])
def test_gpu_quantized_output_close_to_bf16(mode):
    model = tiny_model(device="cuda").to(torch.bfloat16)
    args, kwargs = inputs("cuda")
    with torch.no_grad():
        ref = model(*args, **kwargs).float()
        Q.quantize(model, mode)
        out = model(*args, **kwargs).float()
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < (0.1 if mode == "fp8" else 0.3), rel


@needs_modelopt
@needs_cuda
@pytest.mark.gpu
def test_gpu_compressed_fp8_runs_and_matches_fake_quant():
    model = tiny_model(device="cuda").to(torch.bfloat16)
    args, kwargs = inputs("cuda")
    Q.quantize(model, "fp8")
    with torch.no_grad():
        fake = model(*args, **kwargs).float()
        Q.compress(model)
        real = model(*args, **kwargs).float()
    assert ((real - fake).norm() / fake.norm()).item() < 0.05


@needs_modelopt
def test_all_zero_weights_stay_unquantized_and_compression_stays_finite():
    torch.manual_seed(0)
    model = SanaWMTransformer(PRESETS["tiny-text"]).eval()  # untrained: output gates are zero-initialised
    args, kwargs = inputs()
    Q.quantize(model, "fp8")
    zero = model.quantization["skipped_zero_weight"]
    assert zero == [f"blocks.{i}.attn.output_gate" for i in range(4)]
    assert not set(zero) & set(Q.quantization_summary(model).quantized)
    Q.compress(model)
    with torch.no_grad():
        assert torch.isfinite(model(*args, **kwargs)).all()
