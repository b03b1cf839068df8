"""The bf16 backbone's CPU kernels (esc_hf/kernels/cpu_kernels.py): window attention against float32 SDPA, the residual
add against aten, both in the model, and the fallback where they cannot be built."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import get_fixture
from esc_hf.kernels import cpu_kernels

needs_kernels = pytest.mark.skipif(not cpu_kernels.enabled(), reason="no C++ toolchain to build esc_hf's CPU kernels")


def _inputs(windows, heads, head_dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    qkv = (2 * torch.randn(windows, 16, 3, heads, head_dim, generator=generator)).bfloat16()
    bias = torch.randn(1, heads, 16, 16, generator=generator)
    # A shift mask as the model's: -100 between regions (here a random half of the pairs in each window).
    mask = torch.where(torch.rand(windows, 1, 16, 16, generator=generator) < 0.5, -100.0, 0.0)
    mask[..., torch.arange(16), torch.arange(16)] = 0.0  # every query keeps itself, as in a real window
    return qkv, bias, mask


# ESC-Base's head dims (6 to 24), the generic loop (40) and its limit (64).
@needs_kernels
@pytest.mark.parametrize("heads,head_dim", [(3, 15), (6, 12), (12, 8), (24, 6), (24, 16), (3, 24), (2, 40), (1, 64)])
@pytest.mark.parametrize("masked", [False, True])
def test_window_attention_equals_float32_sdpa_up_to_bf16_rounding(heads, head_dim, masked):
    qkv, bias, mask = _inputs(37, heads, head_dim)
    mask = mask if masked else None
    scale = head_dim**-0.5
    with torch.no_grad():
        out = cpu_kernels.window_attention(qkv, bias, mask, scale)
    query, key, value = qkv.float().permute(2, 0, 3, 1, 4)
    reference = F.scaled_dot_product_attention(query, key, value, bias if mask is None else bias + mask, scale=scale)
    reference = reference.transpose(1, 2).reshape(37, 16, heads * head_dim)
    assert out.shape == reference.shape and out.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: the kernel and the rounded reference may differ by one unit in the last place.
    torch.testing.assert_close(out.float(), reference, rtol=2**-7, atol=1e-6)
    assert (out != reference.bfloat16()).float().mean() < 0.01


@needs_kernels
def test_window_attention_keeps_nan_inside_its_window():
    qkv, bias, _ = _inputs(3, 2, 8)
    qkv[1, 5, 1, 0, 2] = float("nan")  # one key of window 1, head 0
    with torch.no_grad():
        out = cpu_kernels.window_attention(qkv, bias, None, 0.5).view(3, 16, 2, 8)
    assert out[1, :, 0].isnan().all()  # every query of that window and head sees the NaN key, as in SDPA
    assert not out[[0, 2]].isnan().any() and not out[1, :, 1].isnan().any()


@needs_kernels
def test_residual_add_is_exact_and_falls_back_where_it_does_not_apply():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1000, 45, generator=generator)
    y = torch.randn(1000, 45, generator=generator).bfloat16()
    expected = x + y.float()
    with torch.no_grad():
        assert cpu_kernels.add_(x, y) is x  # in place
        assert torch.equal(x, expected)
        z = torch.randn(45, 1000, generator=generator)
        reference = z.t() + y.float()
        assert torch.equal(cpu_kernels.add_(z.t(), y), reference)  # non-contiguous: aten's add_
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="bf16"):
            torch.ops.esc_hf.add_bf16_(x, y.float())


@needs_kernels
def test_window_attention_rejects_bad_shapes():
    qkv, bias, mask = _inputs(4, 3, 8)
    with torch.no_grad():
        with pytest.raises(ValueError, match="qkv must be"):
            cpu_kernels.window_attention(qkv[:, :9], bias, None, 1.0)  # a 3 x 3 window
        with pytest.raises(ValueError, match="bf16"):
            cpu_kernels.window_attention(qkv.float(), bias, None, 1.0)
        with pytest.raises(ValueError, match="bias must be"):
            cpu_kernels.window_attention(qkv, bias[:, :2], None, 1.0)
        with pytest.raises(ValueError, match="mask must be"):
            cpu_kernels.window_attention(qkv, bias, mask[:3], 1.0)


@needs_kernels
def test_kernel_is_for_bf16_inference_only():
    qkv, bias, _ = _inputs(2, 3, 8)
    with torch.no_grad():
        assert cpu_kernels.supports_attention(qkv, bias)
        assert not cpu_kernels.supports_attention(qkv.float(), bias)
        assert not cpu_kernels.supports_attention(qkv[:, :9], bias)
    assert not cpu_kernels.supports_attention(qkv, bias)  # no autograd formula: training keeps aten's attention


@needs_kernels
def test_bf16_model_runs_the_kernel_and_is_as_close_to_float32_as_the_aten_path(monkeypatch):
    fixture = get_fixture("esc_base_random")  # ESC-Base's widths and heads, so every kernel variant runs
    waveform, codes_fp32 = fixture.inputs["waveform"], fixture.outputs["codes_6"]
    audio_fp32 = fixture.model().decode(codes_fp32).audio_values
    model = fixture.model().set_backbone_dtype(torch.bfloat16)
    calls = []
    attention = cpu_kernels.window_attention
    monkeypatch.setattr(cpu_kernels, "window_attention", lambda *a: calls.append(a[0].shape[-1]) or attention(*a))
    results = {}
    for kernels in ("1", "0"):
        monkeypatch.setenv("ESC_HF_CPU_KERNELS", kernels)
        codes = model.encode(waveform, num_streams=6).audio_codes
        audio = model.decode(codes_fp32).audio_values
        results[kernels] = codes, (audio - audio_fp32).norm() / audio_fp32.norm()
        if kernels == "1":
            assert set(calls) == {6, 8, 12, 15, 16, 24}
            calls.clear()
    assert not calls
    (codes, error), (_, error_aten) = results["1"], results["0"]
    # Decoding the same codes, the kernel's error against float32 is the aten path's (0.0085 and 0.0086 here):
    # both round the same float32 attention to bf16.
    assert error < 1.25 * error_aten + 1e-3
    # Codes: random weights make the finer streams chaotic (on this 1 s clip 81 % of all codes match float32 with
    # the kernel and 89 % with aten's attention; on 10 s 90.0 % vs 89.0 %), the coarse stream is stable.
    assert (codes[:, 0] == codes_fp32[:, 0]).float().mean() > 0.9


def test_without_a_compiler_the_bf16_backbone_falls_back_with_a_warning(tmp_path):
    script = (
        "import logging, torch\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from esc_hf import EscConfig, EscModel, cpu_kernels\n"
        "model = EscModel(EscConfig(hidden_dims=[12, 12, 24], num_heads=[3, 3], codebook_dims=[8, 8, 8],"
        " num_streams=3)).eval().set_backbone_dtype(torch.bfloat16)\n"
        "assert not cpu_kernels.enabled()\n"
        "codes = model.encode(torch.randn(1, 1, 8000) * 0.1, num_streams=3).audio_codes\n"
        "print('codes', tuple(codes.shape))\n"
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), TORCH_EXTENSIONS_DIR=str(tmp_path / "build"))
    env.pop("ESC_HF_CPU_KERNELS", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "could not build the fused CPU kernels" in result.stderr
    assert "codes (1, 3, " in result.stdout
