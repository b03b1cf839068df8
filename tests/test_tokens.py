from pathlib import Path

import pytest
import soundfile as sf
import torch
from conftest import SPEECH, run_script

from esc_hf import EscConfig, load_model
from esc_hf.codec.tokens import codes_to_tokens, tokens_to_codes, vocab_size


@pytest.fixture(scope="module")
def model():
    return load_model(None)


def test_round_trip_is_exact_and_batched():
    config = EscConfig()
    codes = torch.randint(0, 1024, (5, 4, 3, 37))
    for offset in (0, 32000):
        tokens = codes_to_tokens(codes, config, offset=offset)
        assert tokens.shape == (5, 37 * 4 * 3) and tokens.dtype == torch.long
        assert offset <= tokens.min() and tokens.max() < offset + vocab_size(config) == offset + 18432
        assert torch.equal(tokens_to_codes(tokens, config, offset=offset), codes)  # streams read from the tokens
        assert torch.equal(tokens_to_codes(tokens, config, num_streams=4, offset=offset), codes)
    assert torch.equal(tokens_to_codes(codes_to_tokens(codes[:1, :, :, :1], config), config), codes[:1, :, :, :1])


def test_flattening_is_frame_major_with_one_block_per_stream_and_group():
    config = EscConfig(codebook_size=8, codebook_dims=[4] * 6)
    codes = torch.zeros(1, 2, 3, 2, dtype=torch.long)
    codes[0, 1, 2, 1] = 5  # stream 1, group 2, frame 1
    tokens = codes_to_tokens(codes, config)[0].tolist()
    assert tokens == [0, 8, 16, 24, 32, 40] + [0, 8, 16, 24, 32, 45]
    # a token means the same at every bitrate: the 1-stream sequence is the 2-stream one without stream 1
    assert codes_to_tokens(codes[:, :1], config)[0].tolist() == [0, 8, 16, 0, 8, 16]


def test_real_speech_tokens_decode_to_the_same_audio(model):
    audio = torch.from_numpy(sf.read(str(SPEECH[1]), dtype="float32")[0])[None, None]
    with torch.inference_mode():
        codes = model.encode(audio, num_streams=3).audio_codes
        back = tokens_to_codes(codes_to_tokens(codes, model.config), model.config)
        assert torch.equal(model.decode(back).audio_values, model.decode(codes).audio_values)


def test_malformed_token_sequences_name_the_problem(model):
    config = model.config
    size = config.codebook_size
    tokens = codes_to_tokens(torch.randint(0, size, (2, 2, 3, 4)), config, offset=10)
    swapped = tokens.clone()
    swapped[1, 7] = tokens[1, 8]
    with pytest.raises(
        ValueError,
        match=r"position 7\) is a code of stream 0, group 2, but that position holds "
        r"stream 0, group 1",
    ):
        tokens_to_codes(swapped, config, offset=10)
    with pytest.raises(ValueError, match="not whole frames of 6"):
        tokens_to_codes(tokens[:, :-1], config, num_streams=2, offset=10)
    with pytest.raises(ValueError, match="is not an ESC token"):
        tokens_to_codes(tokens + vocab_size(config), config, offset=10)  # ids past the audio block (text, say)
    with pytest.raises(ValueError, match="integer"):
        tokens_to_codes(tokens.float(), config)
    with pytest.raises(ValueError, match=rf"\[0, {size}\)"):
        codes_to_tokens(torch.full((1, 1, 3, 2), size), config)
    with pytest.raises(ValueError, match="shape"):
        codes_to_tokens(torch.zeros(1, 7, 3, 2, dtype=torch.long), config)


def test_example_runs(tmp_path, capsys):
    root = Path(__file__).parents[1]
    code, out, err = run_script(root / "examples" / "tokens_for_lm.py", "--out", tmp_path / "d.wav", capsys=capsys,
                                cwd=tmp_path)  # fmt: skip
    assert code == 0, err
    assert "→ 555 tokens" in out  # 3.69 s at 1 stream: 185 code frames × 3 codebooks
    assert sf.info(str(tmp_path / "d.wav")).frames == sf.info(str(SPEECH[1])).frames  # speech_nl.flac
