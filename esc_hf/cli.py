"""The `esc` command line (also `python -m esc_hf`)."""

import argparse
import sys
from pathlib import Path

import torch

from .audio_io import AudioFileError, load_audio, save_audio


DEFAULT_MODEL = Path(__file__).with_name("default_model")


def load_model(name: str | None):
    """The model in folder or Hub id `name`, or the packaged default."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from . import EscModel  # noqa: F401 - registers "esc" with the Auto classes

    hf_logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(str(name or DEFAULT_MODEL)).eval()
    except OSError as error:
        raise ValueError(f"cannot load model {name!r}: {error}") from error


def roundtrip(args) -> None:
    model = load_model(args.model)
    audio, notes = load_audio(args.input, model.config.sampling_rate)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    kbps = args.kbps if args.kbps is not None else model.config.target_bandwidths[-1]
    num_streams = model.config.num_streams_for_bandwidth(kbps)
    with torch.inference_mode():
        waveform = torch.from_numpy(audio)[None, None]
        codes = model.encode(waveform, num_streams=num_streams).audio_codes
        decoded = model.decode(codes).audio_values[0, 0, : audio.shape[0]]
    save_audio(args.output, decoded.numpy(), model.config.sampling_rate)
    seconds = audio.shape[0] / model.config.sampling_rate
    print(f"{args.input} → {args.output}: {seconds:.2f} s at {kbps:g} kbps ({tuple(codes.shape)} codes)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esc", description="ESC speech codec (16 kHz, 1.5–9 kbps).")
    verbs = parser.add_subparsers(dest="verb", required=True)
    rt = verbs.add_parser("roundtrip", help="encode and decode a file, writing the decoded audio")
    rt.add_argument("input", help="audio file (wav, flac, ogg; any rate, mono or multichannel)")
    rt.add_argument("output", help="decoded audio file to write")
    rt.add_argument("--kbps", type=float, help="bitrate, a multiple of the model's per-stream rate (ESC-Base: 1.5, 3, "
                    "4.5, 6, 7.5 or 9); default: the highest")
    rt.add_argument("--model", help="model folder or Hub id (default: the packaged model)")
    rt.set_defaults(func=roundtrip)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (AudioFileError, ValueError, OSError) as error:
        print(f"esc: error: {error}", file=sys.stderr)
        return 1
    return 0
