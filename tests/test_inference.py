"""The inference forms (esc_hf/models/esc/inference_esc.py: window-order Swin stages, fused attention and
de-embedding, oneDNN linears, bf16 backbone) against the modules' own forwards, which follow the authors' op order."""

import copy

import pytest
import torch
from conftest import get_fixture

from esc_hf import EscConfig
from esc_hf.models.esc import inference_esc
from esc_hf.models.esc.modeling_esc import EscPatchDeEmbed, EscTransformerLayer


def assert_equal_up_to_rounding(actual, expected, dtype):
    """Two schedules of the same computation whose kernels see other shapes (fewer rows, fewer windows per call):
    bit-identical on the CPUs measured so far, but like chunked audio (tests/test_streaming.py) equal only up to
    float rounding by promise, which is a bf16 rounding step where the matmuls run in bf16. A schedule that mixes up
    or leaks rows moves values by far more."""
    if dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(actual, expected, rtol=1.6e-2, atol=1e-2)


def _layer(dim=12, heads=3, scale="down"):
    torch.manual_seed(0)
    layer = EscTransformerLayer(EscConfig(window_size=4, depth=3), dim, 2 * dim, heads, scale).eval()
    for p in layer.parameters():  # LayerNorms at their init would hide a mix-up of tokens and channels
        p.data.normal_(0, 0.3)
    return layer


# Heights and widths that need padding, a grid smaller than one window (the bottleneck case) and odd heights
# (PatchMerge's zero row); batch 2 checks that the gathers keep items apart.
@pytest.mark.parametrize("height,width", [(8, 12), (5, 7), (2, 9), (3, 4), (1, 1), (16, 6)])
@pytest.mark.parametrize("scale", ["down", "up", None])
def test_window_order_stage_equals_plain_stage(height, width, scale):
    layer = _layer(scale=scale)
    x = torch.randn(2, height * width, 12, generator=torch.Generator().manual_seed(height * 100 + width))
    with torch.no_grad():
        fast, fast_height = inference_esc.transformer_layer(layer, x, height, width)
        plain, plain_height = layer(x, height, width)  # pad, roll, partition per block, explicit attention
        fused, _ = layer(x, height, width, fused=True)  # the traced form: the same with fused attention
        again, _ = inference_esc.transformer_layer(layer, x, height, width)  # the input is not modified in place
    assert fast_height == plain_height
    torch.testing.assert_close(fast, plain, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(fused, plain, atol=2e-5, rtol=1e-5)
    assert torch.equal(again, fast)


@pytest.mark.parametrize("patch_size", [(3, 2), (2, 2), (3, 1), (1, 3)])
@pytest.mark.parametrize("height,width", [(64, 20), (3, 3), (4, 7), (2, 9), (1, 1)])
def test_fused_deembedding_equals_two_convolutions(patch_size, height, width):
    torch.manual_seed(0)
    deembed = EscPatchDeEmbed(EscConfig(patch_size=list(patch_size), hidden_dims=[12, 12, 24, 24, 24, 24])).eval()
    x = torch.randn(2, height * width, 12)
    with torch.no_grad():
        fused = inference_esc.patch_deembed(deembed, x, height, width)
        reference = deembed(x, height, width)
    assert fused.shape == (2, 2, height * patch_size[0], width * patch_size[1])
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)


def test_fused_deembedding_follows_changes_of_the_weights():
    """The composed kernel is kept between calls and composed again when a weight changes: in place, replaced,
    loaded or cast."""
    torch.manual_seed(0)
    config = EscConfig(hidden_dims=[12, 12, 24, 24, 24, 24])
    deembed, other = EscPatchDeEmbed(config).eval(), EscPatchDeEmbed(config).eval()
    x = torch.randn(1, 6 * 8, 12)

    def matches_two_convolutions() -> bool:
        fused = inference_esc.patch_deembed(deembed, x, 6, 8)
        return torch.allclose(fused, deembed(x, 6, 8), atol=1e-5, rtol=1e-5)

    with torch.no_grad():
        first = inference_esc.patch_deembed(deembed, x, 6, 8)
        assert matches_two_convolutions() and torch.equal(inference_esc.patch_deembed(deembed, x, 6, 8), first)
        deembed.de_proj1.weight.mul_(2)
        assert matches_two_convolutions()
        deembed.de_proj2.bias = torch.nn.Parameter(torch.randn(2))
        assert matches_two_convolutions()
        deembed.load_state_dict(other.state_dict())
        assert matches_two_convolutions()
        deembed.double()
        assert inference_esc.patch_deembed(deembed, x.double(), 6, 8).dtype == torch.float64
        assert torch.allclose(inference_esc.patch_deembed(deembed, x.double(), 6, 8), deembed(x.double(), 6, 8))


def test_stream_weights_drop_streams_exactly():
    model = get_fixture("swin_rvq").model()
    codes = model.encode(get_fixture("swin_rvq").inputs["waveform"]).audio_codes
    csrvq = get_fixture("swin_csrvq").model()
    codes_cs = csrvq.encode(get_fixture("swin_csrvq").inputs["waveform"]).audio_codes
    with torch.no_grad():
        for m, c in ((model, codes), (csrvq, codes_cs)):
            for n in (1, 3, 6):
                weights = (torch.arange(6) < n).float()
                junk = c.clone()
                junk[:, n:] = 0  # the dropped streams' codes must not matter
                assert torch.equal(m.decode_stft(junk, weights), m.decode_stft(c[:, :n]))


@pytest.mark.parametrize("name", ["swin_rvq", "swin_csrvq"])
def test_streams_per_frame_decodes_each_frame_with_its_streams(name):
    """`decode(..., streams_per_frame=...)`: one rate everywhere is the plain decode of those streams, bit for bit,
    whatever the ignored codes hold; the argument is checked."""
    model = get_fixture(name).model()
    codes = model.encode(get_fixture(name).inputs["waveform"]).audio_codes
    batch, frames = codes.shape[0], codes.shape[-1]
    for n in (1, 3, 6):
        junk = codes.clone()
        junk[:, n:] = -1  # absent: never looked at
        out = model.decode(junk, streams_per_frame=torch.full((batch, frames), n)).audio_values
        assert torch.equal(out, model.decode(codes[:, :n]).audio_values)
    changing = torch.full((batch, frames), 6)
    changing[:, frames // 2 :] = 2
    mixed = model.decode(codes, streams_per_frame=changing).audio_values
    # 21 frames are inside one receptive field: the change moves every sample (far from a change, nothing moves:
    # test_bitstream.py::test_packets_with_fewer_layers_decode_frame_by_frame, on the packaged model)
    assert not torch.equal(mixed, model.decode(codes).audio_values)
    assert not torch.equal(mixed, model.decode(codes[:, :2]).audio_values)
    for bad, message in [
        (torch.full((batch, frames + 1), 2), "shape"),
        (torch.full((batch, frames), 2.0), "integer tensor"),
        (torch.full((batch, frames), 0), r"lie in \[1, 6\]"),
        (torch.full((batch, frames), 7), r"lie in \[1, 6\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.decode(codes, streams_per_frame=bad)


@pytest.mark.parametrize("name", ["swin_rvq", "swin_csrvq", "conv_csrvq"])
def test_blend_interpolates_the_quantised_latents(name):
    """`decode(..., blend_codes=..., blend_weights=...)` (packet-loss concealment): weight 0 is the plain decode
    and weight 1 the decode of the blend codes, bit for bit; halfway is neither; the arguments are checked."""
    model = get_fixture(name).model()
    codes = model.encode(get_fixture(name).inputs["waveform"]).audio_codes
    other = torch.roll(codes, 3, dims=-1)
    batch, frames = codes.shape[0], codes.shape[-1]
    decode = model.decode
    zero, one = torch.zeros(batch, frames), torch.ones(batch, frames)
    assert torch.equal(decode(codes, blend_codes=other, blend_weights=zero).audio_values, decode(codes).audio_values)
    assert torch.equal(decode(codes, blend_codes=other, blend_weights=one).audio_values, decode(other).audio_values)
    stft = model.decode_stft
    half = stft(codes, None, (other, torch.full((batch, frames), 0.5)))
    assert not torch.equal(half, stft(codes)) and not torch.equal(half, stft(other))
    streams = torch.full((batch, frames), 2)  # with a rate per frame, the blend codes' other streams are ignored
    junk = other.clone()
    junk[:, 2:] = -1
    assert torch.equal(
        decode(codes, streams_per_frame=streams, blend_codes=junk, blend_weights=one).audio_values,
        decode(other[:, :2]).audio_values,
    )
    for blend_codes, weights, message in [
        (other[..., 1:], zero, "shape of audio_codes"),
        (other, zero[:, 1:], r"shape \(batch, code_frames\)"),
        (other, zero.long(), "float tensor"),
        (other, one * 2, r"\[0, 1\]"),
        (None, zero, "shape of audio_codes"),
        (other * 0 + 10**6, zero, "codes"),
    ]:
        with pytest.raises(ValueError, match=message):
            decode(codes, blend_codes=blend_codes, blend_weights=weights)


@pytest.mark.parametrize("name", ["swin_csrvq", "conv_rvq"])
def test_bf16_backbone_is_opt_in_and_close(name):
    fixture = get_fixture(name)
    waveform = fixture.inputs["waveform"]
    model = fixture.model()
    codes = model.encode(waveform).audio_codes
    audio = model.decode(codes).audio_values
    assert model.set_backbone_dtype(torch.bfloat16) is model
    assert {p.dtype for n, p in model.encoder.blocks.named_parameters() if "norm" not in n} == {torch.bfloat16}
    assert model.encoder.patch_embed.proj.weight.dtype == torch.float32  # cheaper in float32 (see set_backbone_dtype)
    assert all(p.dtype == torch.float32 for p in model.quantizers.parameters())
    codes_bf16 = model.encode(waveform).audio_codes
    audio_bf16 = model.decode(codes).audio_values
    assert codes_bf16.dtype == torch.long and codes_bf16.shape == codes.shape and audio_bf16.dtype == torch.float32
    assert (audio_bf16 - audio).norm() / audio.norm() < 0.05  # how close on a trained model: the test below
    out = model(waveform, num_streams=3)  # the no-grad forward and the training path run in bf16 too
    assert out.audio_values.dtype == torch.float32
    model.train()
    model(waveform, num_streams=3).loss.backward()
    with pytest.raises(ValueError, match="floating point"):
        model.set_backbone_dtype(torch.int8)


# bf16 vs float32 on the trained packaged model (checkpoints/esc-base/bf16_quality.csv, 78 validation clips: codes
# equal 0.990 at 1.5 kbps and 0.846 at 9 kbps, PESQ-WB within 0.01). Measured here on the first 2 s of
# speech_nl.flac: codes equal 0.997 at 1.5 kbps and 0.891 at 9 kbps on an AMD EPYC (AVX2, bf16 without native
# instructions); 0.973–0.997 and 0.813–0.903 over 2 s crops of both clips in tests/data. Decoding the same codes,
# the bf16 decoder is 0.33–0.43 % (relative L2) from float32's. Bounds below leave a margin over those.
BF16_CODES_EQUAL = {1.5: 0.95, 9.0: 0.8}
BF16_DECODE_RELATIVE_L2 = 0.02


@pytest.mark.filterwarnings("ignore:this CPU has no bf16 matrix instructions")  # slow, not wrong
def test_bf16_backbone_on_the_trained_model_keeps_most_codes_and_decodes_close():
    import soundfile as sf
    from conftest import SPEECH

    from esc_hf import load_model

    model = load_model(None).eval()
    fast = copy.deepcopy(model).set_backbone_dtype(torch.bfloat16)
    (path,) = [p for p in SPEECH if p.name == "speech_nl.flac"]
    clip = torch.from_numpy(sf.read(str(path), dtype="float32")[0][: 80 * (4 * 100 - 1)])[None, None]  # 2 s
    with torch.inference_mode():
        codes = model.encode(clip, bandwidth=9.0).audio_codes
        codes_bf16 = fast.encode(clip, bandwidth=9.0).audio_codes  # streams are nested: stream 0 is 1.5 kbps
        audio, audio_bf16 = model.decode(codes).audio_values, fast.decode(codes).audio_values
    equal = codes_bf16 == codes
    assert equal[:, :1].float().mean() >= BF16_CODES_EQUAL[1.5]
    assert equal.float().mean() >= BF16_CODES_EQUAL[9.0]
    assert (audio_bf16.float() - audio).norm() / audio.norm() <= BF16_DECODE_RELATIVE_L2


def test_bf16_attention_in_float32_slices_equals_one_slice(monkeypatch):
    monkeypatch.setenv("ESC_HF_CPU_KERNELS", "0")  # the aten path that stands in for the fused kernel
    layer = _layer(scale=None).to(torch.bfloat16)
    for module in layer.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    x = torch.randn(2, 8 * 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole, _ = inference_esc.transformer_layer(layer, x, 8, 12)
        monkeypatch.setattr(inference_esc, "_FLOAT32_SLICE_BYTES", 1)  # one window per slice, seam windows too
        sliced, _ = inference_esc.transformer_layer(layer, x, 8, 12)
    assert whole.dtype == torch.float32
    assert_equal_up_to_rounding(sliced, whole, torch.bfloat16)


def test_inference_paths_match_authors_in_a_batch_of_two_lengths():
    """Batch > 1 on the ESC-Base-sized fixture: every item as alone, and the first equal to the authors' codes."""
    fixture = get_fixture("esc_base_random")
    model = fixture.model()
    waveform = fixture.inputs["waveform"]
    batch = torch.cat([waveform, 0.5 * waveform.flip(-1)])
    codes = model.encode(batch[:, None], num_streams=6).audio_codes
    assert torch.equal(codes[:1], fixture.outputs["codes_6"])
    assert torch.equal(codes[1:], model.encode(batch[1:], num_streams=6).audio_codes)
    audio = model.decode(codes).audio_values
    torch.testing.assert_close(audio[:1, 0], fixture.outputs["decoded_6"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("height,width", [(2, 9), (1, 6), (3, 4)])
def test_stage_lower_than_a_window_skips_padding_rows(monkeypatch, dtype, height, width):
    """Below one window's height (ESC-Base's 2-row bottleneck) the blocks run norms, projections and MLP on the
    real tokens only; that must give what the same blocks give on every row."""
    layer = _layer(scale="up")
    if dtype == torch.bfloat16:
        layer.to(dtype)
        for module in layer.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.float()
    x = torch.randn(2, height * width, 12, generator=torch.Generator().manual_seed(1))
    calls = []
    real_rows = inference_esc._block_on_real_rows
    monkeypatch.setattr(inference_esc, "_block_on_real_rows", lambda *a: calls.append(1) or real_rows(*a))
    with torch.no_grad():
        skipped, _ = inference_esc.transformer_layer(layer, x, height, width)
        assert len(calls) == len(layer.swint_blocks)
        monkeypatch.setattr(inference_esc, "_block_on_real_rows", inference_esc._block_on_all_rows)
        every_row, _ = inference_esc.transformer_layer(layer, x, height, width)
    assert_equal_up_to_rounding(skipped, every_row, dtype)


def test_bf16_backbone_on_a_cpu_without_bf16_instructions_warns_and_still_runs(tiny_model, monkeypatch):
    """oneDNN cannot create a bf16 GEMM on CPUs without AVX512-BF16/AMX (an AVX2 EPYC raised "could not create a
    primitive"): there the model says so once and computes with aten's ops."""
    monkeypatch.setattr(inference_esc, "_cpu_has_bf16", lambda: False)
    waveform = get_fixture("swin_csrvq").inputs["waveform"][:1]
    reference = tiny_model.encode(waveform).audio_codes
    with pytest.warns(UserWarning, match="no bf16 matrix instructions"):
        tiny_model.set_backbone_dtype(torch.bfloat16)
    codes = tiny_model.encode(waveform).audio_codes
    assert codes.shape == reference.shape and (codes == reference).float().mean() > 0.5
