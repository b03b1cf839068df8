"""Hear with the eyes what training changed: decode one clip with several models at one bitrate and draw the
spectrograms of the original and of every decode one under the other, on the original's colour scale.

    python examples/compare_decodes.py CLIP old=checkpoints/esc-base new=runs/cycle/final --kbps 9 \
        --seconds 3 --plot decodes.png

A model is `NAME=FOLDER` or a `FOLDER` (named after it): a packaged model or a training run's `final/` folder.
"""

import argparse
import sys
from pathlib import Path

import torch

from esc_hf.codec.audio_io import load_audio
from esc_hf.codec.loading import load_model
from esc_hf.eval.plotting import plot_spectrograms


def parse_model(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    path = Path(folder if sep else text)
    return (name if sep else path.name), path


def decode_with(model, audio, kbps: float):
    """The decode of `audio` `(samples,)` at `kbps`, cut to its length."""
    with torch.inference_mode():
        codes = model.encode(torch.from_numpy(audio)[None, None], bandwidth=kbps).audio_codes
        return model.decode(codes).audio_values[0, 0, : audio.size].numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clip", help="an audio file (any rate and channels: resampled to the models' rate, mono)")
    parser.add_argument("models", nargs="+", help="NAME=FOLDER or FOLDER (a model folder)")
    parser.add_argument("--kbps", type=float, default=9.0, help="the bitrate to encode at")
    parser.add_argument("--seconds", type=float, default=3.0, help="draw the clip's first SECONDS")
    parser.add_argument("--plot", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    try:
        models = [parse_model(text) for text in args.models]
        names = [name for name, _ in models]
        if len(set(names)) != len(names) or "original" in names:
            raise ValueError(f"model names must differ from each other and from 'original': {names}")
        if args.seconds <= 0:
            raise ValueError(f"--seconds must be positive, not {args.seconds}")
        for name, path in models:
            if not path.is_dir():
                raise ValueError(f"model {name!r}: {path} is not a folder")
        signals, rate = {}, None
        for name, path in models:
            model = load_model(path)
            if rate is None:
                rate = model.config.sampling_rate
                audio = load_audio(args.clip, rate)[0][: int(args.seconds * rate)]
                signals["original"] = audio
            elif model.config.sampling_rate != rate:
                raise ValueError(f"model {name!r} runs at {model.config.sampling_rate} Hz, the first at {rate} Hz")
            signals[f"{name}, {args.kbps:g} kbps"] = decode_with(model, audio, args.kbps)
        plot_spectrograms(signals, args.plot, rate)
    except ValueError as error:  # AudioFileError too
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
