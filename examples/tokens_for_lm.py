"""ESC codes as tokens for a speech language model, and back to audio.

    python examples/tokens_for_lm.py [AUDIO] [--model DIR_OR_HUB_ID] [--kbps KBPS] [--text-vocab N] [--out decoded.wav]

Encodes AUDIO, flattens its codes into one token sequence (frame-major; each stream and codebook has its own block
of ids, placed after a text vocabulary of N ids), prints what an LM would see, then turns the tokens back into codes
and audio. An LM that generates such tokens is decoded the same way.
"""

import argparse
from pathlib import Path

import torch

from esc_hf.codec.audio_io import load_audio, save_audio
from esc_hf import load_model
from esc_hf.codec.tokens import codes_to_tokens, tokens_to_codes, vocab_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "audio", nargs="?", default=str(Path(__file__).parents[1] / "tests" / "data" / "speech_nl.flac")
    )
    parser.add_argument("--model", help="ESC model folder or Hub id (default: the packaged model)")
    parser.add_argument("--kbps", type=float, help="bitrate (default: the model's lowest)")
    parser.add_argument("--text-vocab", type=int, default=32000, help="ids before the audio tokens (a text LM's)")
    parser.add_argument("--out", default="decoded_from_tokens.wav")
    args = parser.parse_args()

    model = load_model(args.model)
    config = model.config
    kbps = args.kbps or config.target_bandwidths[0]
    audio, _ = load_audio(args.audio, config.sampling_rate)
    with torch.inference_mode():
        codes = model.encode(torch.from_numpy(audio)[None, None], bandwidth=kbps).audio_codes  # (1, n, 3, frames)

    tokens = codes_to_tokens(codes, config, offset=args.text_vocab)  # (1, frames * n * 3)
    per_second = tokens.shape[1] / (audio.size / config.sampling_rate)
    print(
        f"{audio.size / config.sampling_rate:.2f} s at {kbps:g} kbps → {tokens.shape[1]} tokens ({per_second:.0f}/s)"
    )
    print(
        f"audio ids {args.text_vocab} … {args.text_vocab + vocab_size(config) - 1}: the LM's vocabulary grows by "
        f"{vocab_size(config)}"
    )
    print("first frame:", tokens[0, : codes.shape[1] * config.group_size].tolist())

    # ... an LM is trained on such sequences and generates new ones; here the tokens simply go back.
    back = tokens_to_codes(tokens, config, offset=args.text_vocab)
    assert torch.equal(back, codes)
    with torch.inference_mode():
        decoded = model.decode(back).audio_values[0, 0, : audio.size]
    save_audio(args.out, decoded.numpy(), config.sampling_rate)
    print(f"tokens → codes → {args.out}")


if __name__ == "__main__":
    main()
