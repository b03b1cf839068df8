"""EscModel against the authors' outputs, plus the behaviour the port adds: any length, batches, errors, saving."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import get_fixture
from esc_hf import EscConfig, EscModel
from esc_hf.models.esc.modeling_esc import EscMlp


ATOL, RTOL = 1e-5, 1e-4


def assert_close(actual, expected, atol=ATOL, rtol=RTOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("name", ["swin_csrvq", "swin_rvq", "conv_csrvq", "conv_rvq", "esc_base_random"])
def test_encode_decode_match_authors(name):
    fixture = get_fixture(name)
    model = fixture.model()
    cases = [(fixture.inputs["waveform"], fixture.outputs)]
    if fixture.outputs_short is not None:
        cases.append((fixture.inputs["waveform_short"], fixture.outputs_short))
    for waveform, outputs in cases:
        for n in range(1, 7):
            codes = model.encode(waveform[:, None], num_streams=n).audio_codes
            assert torch.equal(codes, outputs[f"codes_{n}"]), f"{name}: codes differ at {n} streams"
            audio = model.decode(codes).audio_values
            assert audio.shape == (waveform.shape[0], 1, waveform.shape[1])
            assert_close(audio[:, 0], outputs[f"decoded_{n}"])


@pytest.mark.parametrize("name", ["swin_csrvq", "swin_rvq", "conv_csrvq", "conv_rvq", "esc_base_random"])
def test_eval_forward_matches_authors(name):
    fixture = get_fixture(name)
    model, outputs = fixture.model(), fixture.outputs
    streams = range(1, 7) if name != "esc_base_random" else [6]
    with torch.no_grad():
        for n in streams:
            out = model(fixture.inputs["waveform"], num_streams=n)
            assert torch.equal(out.audio_codes, outputs[f"forward_{n}_codes"])
            assert_close(out.audio_values[:, 0], outputs[f"forward_{n}_recon_audio"])
            assert_close(out.commitment_loss, outputs[f"forward_{n}_cm_loss"], atol=1e-7)
            assert_close(out.codebook_loss, outputs[f"forward_{n}_cb_loss"], atol=1e-7)
    if "forward_6_recon_feat" in outputs:
        assert_close(out.reconstructed_stft, outputs["forward_6_recon_feat"])
    if "stft" in outputs:
        assert_close(out.input_stft, outputs["stft"])


@pytest.mark.parametrize("name", ["swin_csrvq", "conv_csrvq", "swin_rvq"])
def test_encoder_hidden_states_match_authors(name):
    fixture = get_fixture(name)
    model = fixture.model()
    with torch.no_grad():
        out = model(fixture.inputs["waveform"][:1])
        hidden_states, width = model.encoder(out.input_stft)
    assert width == fixture.outputs["feat_shape"][1]
    for k, state in enumerate(hidden_states):
        assert_close(state, fixture.outputs[f"enc_hs_{k}"])


@pytest.mark.parametrize("tag,kwargs", [("n3", {"num_streams": 3}), ("freeze", {"bypass_quantizer": True})])
def test_training_forward_matches_authors(tiny, tag, kwargs):
    model = tiny.model().train()  # conv models update BatchNorm statistics: a fresh copy per case
    out = model(tiny.inputs["waveform"], **kwargs)
    prefix = f"train_{tag}_"
    assert out.audio_codes.shape[1] == 6, "training mode returns every stream's codes"
    assert torch.equal(out.audio_codes, tiny.outputs[prefix + "codes"])
    assert_close(out.audio_values[:, 0], tiny.outputs[prefix + "recon_audio"])
    assert_close(out.commitment_loss, tiny.outputs[prefix + "cm_loss"], atol=1e-7)
    assert_close(out.codebook_loss, tiny.outputs[prefix + "cb_loss"], atol=1e-7)
    if tag == "freeze":
        assert out.commitment_loss.abs().max() == 0 and out.codebook_loss.abs().max() == 0


def test_streams_are_nested(tiny_model):
    fixture = get_fixture("swin_csrvq")
    codes = tiny_model.encode(fixture.inputs["waveform"]).audio_codes
    for n in range(1, 6):
        assert torch.equal(tiny_model.encode(fixture.inputs["waveform"], num_streams=n).audio_codes, codes[:, :n])


@pytest.mark.parametrize("length", [1, 79, 80, 240, 6639, 16000, 16001])
def test_any_length_round_trips_to_same_length(tiny_model, length):
    waveform = 0.1 * torch.randn(1, 1, length, generator=torch.Generator().manual_seed(length))
    out = tiny_model(waveform)
    assert out.audio_values.shape == (1, 1, length)
    codes = tiny_model.encode(waveform).audio_codes
    padded = tiny_model.config.padded_length(length)
    assert padded >= length and (padded // 80) % 4 == 3 and padded % 80 == 0
    assert codes.shape[-1] == (padded // 80 + 1) // 4
    # Padding is explicit zeros: the codes are those of the zero-padded signal at a length the authors' code takes.
    assert torch.equal(codes, tiny_model.encode(F.pad(waveform, (0, padded - length))).audio_codes)
    mask = torch.ones(1, length)
    assert tiny_model.decode(codes, mask).audio_values.shape == (1, 1, length)


def test_equal_length_batch_matches_one_by_one(tiny_model):
    waveform = get_fixture("swin_csrvq").inputs["waveform"]
    batch = tiny_model.encode(waveform[:, None]).audio_codes
    for i in range(waveform.shape[0]):
        assert torch.equal(tiny_model.encode(waveform[i : i + 1]).audio_codes, batch[i : i + 1])


def test_padded_batch_gives_each_item_its_length(tiny_model):
    waveform = get_fixture("swin_csrvq").inputs["waveform"]
    lengths = [6640, 4000, 2481]
    batch = torch.zeros(3, 1, 6640)
    mask = torch.zeros(3, 6640, dtype=torch.long)
    for i, n in enumerate(lengths):
        batch[i, 0, :n] = waveform[i, :n]
        mask[i, :n] = 1
    batch[1, 0, 4000:] = 1.0  # garbage in the padding must not leak in: the mask zeroes it
    codes = tiny_model.encode(batch, mask).audio_codes
    audio = tiny_model.decode(codes, mask).audio_values
    assert audio.shape == (3, 1, 6640)
    for i, n in enumerate(lengths):
        assert audio[i, 0, :n].abs().max() > 0
        assert audio[i, 0, n:].abs().sum() == 0
    clean = batch.clone()
    clean[1, 0, 4000:] = 0
    assert torch.equal(tiny_model.encode(clean, mask).audio_codes, codes)
    out = tiny_model(batch, mask)
    assert out.audio_values.shape == (3, 1, 6640) and out.audio_values[2, 0, 2481:].abs().max() == 0


def test_input_ranks(tiny_model):
    waveform = get_fixture("swin_csrvq").inputs["waveform"][0]
    expected = tiny_model.encode(waveform[None, None]).audio_codes
    assert torch.equal(tiny_model.encode(waveform[None]).audio_codes, expected)
    assert torch.equal(tiny_model.encode(waveform).audio_codes, expected)


def test_bandwidth_selects_streams():
    config = EscConfig()
    assert config.target_bandwidths == [1.5, 3.0, 4.5, 6.0, 7.5, 9.0]
    fixture = get_fixture("swin_csrvq")
    model = fixture.model()  # codebook_size 64: 0.9 kbps per stream
    codes = model.encode(fixture.inputs["waveform"], bandwidth=2.7).audio_codes
    assert codes.shape[1] == 3


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda m, x: m.encode(x.long()), "floating point"),
        (lambda m, x: m.encode(x.numpy()), "torch.Tensor"),
        (lambda m, x: m.encode(x.expand(1, 2, -1)), "mono audio"),
        (lambda m, x: m.encode(x[..., :0]), "empty"),
        (lambda m, x: m.encode(x, num_streams=0), "num_streams"),
        (lambda m, x: m.encode(x, num_streams=7), "num_streams"),
        (lambda m, x: m.encode(x, num_streams=2.0), "num_streams"),
        (lambda m, x: m.encode(x, bandwidth=1.0), "bandwidth"),
        (lambda m, x: m.encode(x, num_streams=2, bandwidth=1.8), "not both"),
        (lambda m, x: m.encode(x, torch.ones(1, 5)), "padding_mask"),
        (lambda m, x: m(x, bypass_quantizer=True), "training-mode"),
        (lambda m, x: m.decode(torch.zeros(1, 2, 3)), "shape"),
        (lambda m, x: m.decode(torch.zeros(1, 2, 3, 4)), "integer"),
        (lambda m, x: m.decode(torch.zeros(1, 7, 3, 4, dtype=torch.long)), "streams"),
        (lambda m, x: m.decode(torch.full((1, 2, 3, 4), 64)), "lie in"),
        (lambda m, x: m.decode(torch.full((1, 2, 3, 4), -1)), "lie in"),
        (lambda m, x: m.decode(torch.zeros(1, 2, 3, 4, dtype=torch.long), torch.ones(1, 5000)), "asked for"),
    ],
)
def test_bad_input_is_a_clear_value_error(tiny_model, call, message):
    x = 0.1 * torch.randn(1, 1, 1000)
    with pytest.raises(ValueError, match=message):
        call(tiny_model, x)


def test_save_and_load_round_trip(tmp_path, tiny_model):
    waveform = get_fixture("swin_csrvq").inputs["waveform"]
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = EscModel.from_pretrained(tmp_path).eval()
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(loaded.encode(waveform).audio_codes, tiny_model.encode(waveform).audio_codes)
    # Recomputed buffers come out right although they are not stored (loading starts on the meta device).
    assert torch.equal(loaded.window, torch.hann_window(320))
    attn = loaded.encoder.pre_nn.swint_blocks[0].attn
    fresh = EscModel(loaded.config).encoder.pre_nn.swint_blocks[0].attn
    assert torch.equal(attn.relative_position_index, fresh.relative_position_index)


def test_fresh_model_initialises_every_tensor():
    config = EscConfig(hidden_dims=[6, 8, 12, 12, 16, 24], num_heads=[2, 2, 3, 4, 4], codebook_size=64,
                       codebook_dims=[8, 8, 6, 4, 4, 2])  # fmt: skip
    model = EscModel(config)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        assert torch.isfinite(tensor.float()).all(), name
    tables = [m.relative_position_bias_table for m in model.modules() if hasattr(m, "relative_position_bias_table")]
    assert all(0 < t.std() < 0.05 for t in tables), "position biases use trunc-normal(0.02)"
    assert torch.equal(model.window, torch.hann_window(320))
    codebook = model.quantizers[0].vqs[0].embedding.weight
    assert abs(codebook.std().item() - (2 / 8) ** 0.5) < 0.1, "codebooks use Kaiming normal"


def test_training_switch_does_not_touch_codebooks_in_bypass():
    model = get_fixture("swin_csrvq").model().train()
    before = copy.deepcopy([vq.embedding.weight for q in model.quantizers for vq in q.vqs])
    out = model(get_fixture("swin_csrvq").inputs["waveform"], bypass_quantizer=True)
    (out.audio_values.pow(2).mean() + out.loss).backward()
    for q in model.quantizers:
        for vq in q.vqs:
            assert vq.embedding.weight.grad is not None and vq.embedding.weight.grad.abs().max() == 0
    for q, after in zip([vq.embedding.weight for q in model.quantizers for vq in q.vqs], before):
        assert torch.equal(q, after)


class _RecordCasts(TorchDispatchMode):
    """Records the (from, to) dtypes of every cast that reaches the kernels."""

    def __init__(self):
        super().__init__()
        self.casts = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default:
            self.casts.append((args[0].dtype, out.dtype))
        return out


def test_linear_layers_leave_their_input_to_autocast(tiny_model):
    """Under bf16 autocast the MLP's bf16 hidden activations go to its second matmul as they are: a float32 copy for
    autocast to cast back cost a tenth of a bf16 training step (docs/benchmarks.md), for the same values."""
    mlp = next(m for m in tiny_model.modules() if isinstance(m, EscMlp))
    x = torch.randn(2, 16, mlp.linear_1.in_features, generator=torch.Generator().manual_seed(0))
    record = _RecordCasts()
    with torch.autocast("cpu", dtype=torch.bfloat16), record:
        out = mlp(x)
    assert (torch.bfloat16, torch.float32) not in record.casts
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the explicit round trip, exact in bf16
        hidden = F.gelu(F.linear(x, mlp.linear_1.weight, mlp.linear_1.bias))
        expected = F.linear(hidden.float(), mlp.linear_2.weight, mlp.linear_2.bias)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
