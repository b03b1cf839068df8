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
