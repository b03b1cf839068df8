import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SPEECH
from esc_hf import EscFeatureExtractor


def test_batch_of_real_clips_is_padded_with_a_mask(tmp_path):
    clips = [sf.read(str(path), dtype="float32")[0] for path in SPEECH]
    fe = EscFeatureExtractor()
    inputs = fe(clips, sampling_rate=16000, return_tensors="pt")
    longest = max(len(c) for c in clips)
    assert inputs.input_values.shape == (len(clips), 1, longest)
    assert inputs.padding_mask.shape == (len(clips), longest)
    for i, clip in enumerate(clips):
        assert inputs.padding_mask[i].sum() == len(clip)
        np.testing.assert_array_equal(inputs.input_values[i, 0, : len(clip)].numpy(), clip)
        assert inputs.input_values[i, 0, len(clip) :].abs().sum() == 0
    fe.save_pretrained(tmp_path)
    assert EscFeatureExtractor.from_pretrained(tmp_path).to_dict() == fe.to_dict()


def test_single_inputs_tensors_and_multichannel():
    fe = EscFeatureExtractor()
    mono = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    single = fe(mono, sampling_rate=16000, return_tensors="pt")
    assert single.input_values.shape == (1, 1, 1000)
    from_tensor = fe([torch.from_numpy(mono)], sampling_rate=16000, return_tensors="pt")
    assert torch.equal(from_tensor.input_values, single.input_values)
    stereo = np.stack([mono, -mono])  # (channels, length): averages to silence
    assert fe(stereo, sampling_rate=16000, return_tensors="np")["input_values"].max() == 0
    assert fe(stereo.T, sampling_rate=16000, return_tensors="np")["input_values"].shape == (1, 1, 1000)


@pytest.mark.parametrize(
    "audio,kwargs,message",
    [
        (np.zeros(100, np.float32), {"sampling_rate": 44100}, "44100 Hz"),
        (np.zeros((2, 3, 100), np.float32), {}, "shape"),
        (np.zeros((20, 100), np.float32), {}, "shape"),
        (np.zeros(0, np.float32), {}, "empty"),
        ([], {}, "no audio"),
        (np.array([0.0, np.nan], np.float32), {}, "NaN"),
        (np.array([0.0, np.inf], np.float32), {}, "NaN or infinite"),
        (np.zeros(100, np.int16), {}, "integer PCM"),
    ],
)
def test_bad_audio_is_a_clear_value_error(audio, kwargs, message):
    with pytest.raises(ValueError, match=message):
        EscFeatureExtractor()(audio, **{"sampling_rate": 16000, **kwargs})


# --- the STFT front end (return_stft, inverse, input_features) ---------------------------------------------------

from conftest import get_fixture


@pytest.mark.parametrize("name", ["swin_csrvq", "swin_rvq", "conv_csrvq", "conv_rvq", "esc_base_random"])
def test_stft_features_equal_the_models_and_give_the_same_codes(name):
    fixture = get_fixture(name)
    model, waveform = fixture.model(), fixture.inputs["waveform"]
    inputs = EscFeatureExtractor()(list(waveform.numpy()), sampling_rate=16000, return_stft=True, return_tensors="pt")
    features = inputs.input_features
    assert features.dtype == torch.float32 and features.shape == (waveform.shape[0], 2, 192, waveform.shape[1] // 80 + 1)
    if "stft" in fixture.outputs:
        torch.testing.assert_close(features, fixture.outputs["stft"], atol=1e-5, rtol=1e-4)
    for n in (1, 6):
        codes = model.encode(input_features=features, num_streams=n).audio_codes
        assert torch.equal(codes, fixture.outputs[f"codes_{n}"])
    with torch.no_grad():
        out = model(input_features=features, num_streams=6)
    torch.testing.assert_close(out.audio_values[:, 0], fixture.outputs["forward_6_recon_audio"], atol=1e-5, rtol=1e-4)


def test_decoder_stft_and_inverse():
    fixture = get_fixture("swin_csrvq")
    model, fe = fixture.model(), EscFeatureExtractor()
    decoded = model.decode(fixture.outputs["codes_6"], return_stft=True)
    torch.testing.assert_close(decoded.reconstructed_stft, fixture.outputs["forward_6_recon_feat"], atol=1e-5, rtol=1e-4)
    audio = fe.inverse(decoded.reconstructed_stft, [6640, 5000, 6640])
    torch.testing.assert_close(audio[0], fixture.outputs["decoded_6"][0], atol=1e-5, rtol=1e-4)
    assert audio[1, 5000:].abs().sum() == 0 and audio.shape == (3, 6640)


def test_padded_batch_features_match_single_items():
    clips = [np.asarray(c) for c in (np.sin(np.arange(3000) / 7) * 0.3, np.cos(np.arange(5000) / 11) * 0.2)]
    fe, model = EscFeatureExtractor(), get_fixture("swin_csrvq").model()
    batch = fe(clips, sampling_rate=16000, return_stft=True, return_tensors="pt")
    assert batch.frame_mask.shape == batch.input_features.shape[::3] and batch.frame_mask[0].sum() == 3000 // 80 + 1
    alone = fe(clips[1], sampling_rate=16000, return_stft=True, return_tensors="pt")
    torch.testing.assert_close(batch.input_features[1:], alone.input_features)
    codes = model.encode(input_features=batch.input_features).audio_codes
    assert torch.equal(codes, model.encode(batch.input_values, batch.padding_mask).audio_codes)


@pytest.mark.parametrize(
    "features,message",
    [
        (torch.zeros(2, 192, 84), "shape"),
        (torch.zeros(1, 3, 192, 84), r"\(batch, 2, 192, frames\)"),
        (torch.zeros(1, 2, 191, 84), r"\(batch, 2, 192, frames\)"),
        (torch.zeros(1, 2, 192, 83), "multiple of 4"),
        (torch.zeros(1, 2, 192, 84, dtype=torch.long), "floating point"),
    ],
)
def test_bad_features_name_the_expected_shape(features, message):
    model = get_fixture("swin_csrvq").model()
    with pytest.raises(ValueError, match=message):
        model.encode(input_features=features)


def test_exactly_one_input_and_inverse_checks():
    model, fe = get_fixture("swin_csrvq").model(), EscFeatureExtractor()
    with pytest.raises(ValueError, match="exactly one"):
        model.encode(torch.zeros(1, 1, 6640), input_features=torch.zeros(1, 2, 192, 84))
    with pytest.raises(ValueError, match="exactly one"):
        model(None)
    with pytest.raises(ValueError, match=r"\(batch, 2, 192, frames\)"):
        fe.inverse(torch.zeros(1, 2, 100, 10))
    with pytest.raises(ValueError, match="one length per item"):
        fe.inverse(torch.zeros(2, 2, 192, 8), [100])
    with pytest.raises(ValueError, match="16000 Hz"):
        fe(np.zeros(100, np.float32), sampling_rate=8000, return_stft=True)


def test_every_setting_round_trips(tmp_path):
    fe = EscFeatureExtractor(n_fft=510, hop_length=160, win_length=400, frames_per_code=2, padding_value=0.0)
    fe.save_pretrained(tmp_path)
    loaded = EscFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == fe.to_dict()
    assert (loaded.n_fft, loaded.hop_length, loaded.win_length, loaded.frames_per_code) == (510, 160, 400, 2)
    features = loaded(np.zeros(1000, np.float32), sampling_rate=16000, return_stft=True, return_tensors="pt")
    assert features.input_features.shape[2] == 256

