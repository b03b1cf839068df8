"""The `esc` command line (also `python -m esc_hf`): encode, decode, simulate-loss, info, truncate, roundtrip,
report.

Files of any length are processed in chunks (esc_hf.codec.streaming), so memory does not grow with their length.
Every expected failure (missing or unreadable file, unsupported bitrate, corrupt `.esc`, wrong model, a full
disk) is one line on stderr and exit code 1. torch, transformers and the audio libraries are imported inside the
verbs, so that `esc --help` and argument errors answer at once.
"""

import argparse
import os
import sys
from pathlib import Path

from .codec.loading import DEFAULT_MODEL, load_model  # noqa: F401 - DEFAULT_MODEL: old import path, kept for a release

# Here rather than imported, so that `esc --help` stays instant (tests/test_cli.py checks they agree).
CONCEAL_METHODS = ("silence", "repeat", "interpolate")
DEFAULT_FRAMES_PER_PACKET = 50

PROGRESS_SECONDS = 30.0  # files at least this long get a progress bar (on a terminal)


def _check_output(args) -> None:
    """Refuses an output that is the input file itself (under any name, or a hard link): writing it would replace
    the very file being read."""
    source, target = Path(args.input), Path(args.output)
    if source.exists() and target.exists() and os.path.samefile(source, target):
        raise ValueError(f"the output {target} is the input file; choose another output name")


def _model_name(args) -> str:
    return args.model or "the packaged default model"


def _open_source(args, model):
    from .codec.audio_io import AudioSource

    source = AudioSource(args.input, model.config.sampling_rate)
    for note in source.notes:
        print(f"note: {note}", file=sys.stderr)
    return source


def _chunk_frames(model, args) -> int:
    from .codec.streaming import FILE_CHUNK_FRAMES

    seconds = args.chunk_seconds
    if seconds is None:
        return FILE_CHUNK_FRAMES
    if not 0 < seconds < 1e6:
        raise ValueError(f"--chunk-seconds must be a positive number of seconds, got {seconds:g}")
    return max(1, round(seconds * model.config.frame_rate))


def _num_streams(model, kbps: float | None) -> tuple[int, float]:
    kbps = kbps if kbps is not None else model.config.target_bandwidths[-1]
    return model.config.num_streams_for_bandwidth(kbps), kbps


def _progress(total_seconds: float, description: str):
    """A tqdm bar in seconds of audio for long files on a terminal; otherwise nothing."""
    from tqdm import tqdm

    if total_seconds < PROGRESS_SECONDS:
        return None
    return tqdm(
        total=round(total_seconds, 1),
        unit="s",
        desc=description,
        disable=None,
        leave=False,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]",
    )


def _blocks_with_progress(source, bar):
    for block in source.blocks():
        yield block
        if bar is not None:
            bar.update(min(block.size / source.sampling_rate, bar.total - bar.n))


def encode(args) -> None:
    from .codec.streaming import encode_file

    _check_output(args)
    model = load_model(args.model)
    num_streams, kbps = _num_streams(model, args.kbps)
    source = _open_source(args, model)
    bar = _progress(source.duration, "encoding")
    try:
        header = encode_file(
            model,
            _blocks_with_progress(source, bar),
            args.output,
            num_streams,
            chunk_frames=_chunk_frames(model, args),
            frames_per_packet=args.frames_per_packet,
            version=int(args.format[1:]),
        )
    finally:
        if bar is not None:
            bar.close()
    size = Path(args.output).stat().st_size
    print(
        f"{args.input} → {args.output}: {header.duration:.2f} s at {kbps:g} kbps, {size:,} bytes "
        f"({size * 8 / header.duration / 1000:.2f} kbps with header and framing)"
    )


def _decode_to(model, esc_path, sink, chunk_frames, conceal=None):
    from .codec.streaming import decode_file

    blocks = decode_file(model, esc_path, chunk_frames, conceal)
    header = next(blocks)
    bar = _progress((header.duration or 0.0), "decoding")
    try:
        for block in blocks:
            sink.write(block)
            if bar is not None:
                bar.update(min(block.size / header.sample_rate, bar.total - bar.n))
    finally:
        if bar is not None:
            bar.close()
    return header


def _note_clipping(sink) -> None:
    if sink.clipped:
        print(f"note: clipped {sink.clipped} decoded samples to ±1", file=sys.stderr)


def decode(args) -> None:
    from .codec.audio_io import open_audio_sink
    from .codec.bitstream import BitstreamError, ModelMismatchError

    if not Path(args.input).is_file():
        raise OSError(f"no such file: {args.input}")
    _check_output(args)
    model = load_model(args.model)
    with open_audio_sink(args.output, model.config.sampling_rate) as sink:
        try:
            header = _decode_to(model, args.input, sink, _chunk_frames(model, args), args.conceal)
        except BitstreamError as error:
            hint = "; pass the model that encoded it with --model" if isinstance(error, ModelMismatchError) else ""
            raise type(error)(f"{args.input}: {error}{hint if not args.model else ''}") from None
    _note_clipping(sink)
    seconds = sink.samples / header.sample_rate
    print(f"{args.input} → {args.output}: {seconds:.2f} s at {header.kbps:g} kbps")


def simulate_loss(args) -> None:
    from .codec.audio_io import open_audio_sink
    from .codec.bitstream import BitstreamError, iter_packet_bytes
    from .codec.streaming import EscStreamingDecoder
    from .eval.packet_loss import bernoulli_losses, gilbert_elliott_losses, parse_loss

    path = Path(args.input)
    if not path.is_file():
        raise OSError(f"no such file: {path}")
    _check_output(args)
    rate = parse_loss(args.loss)
    if args.burst is not None and not 1 <= args.burst <= 1000:
        raise ValueError(f"--burst is a mean burst length of 1 to 1000 packets, got {args.burst:g}")
    model = load_model(args.model)
    try:
        with open(path, "rb") as handle:
            packets = iter_packet_bytes(handle)
            header = next(packets)
            if header.num_frames is None:
                raise ValueError(f"{path} does not say its length (a live stream): esc simulate-loss needs a file")
            count = -(-header.num_frames // header.frames_per_packet)
            if args.burst is None:
                lost = bernoulli_losses(count, rate, args.seed)
            else:
                lost = gilbert_elliott_losses(count, rate, args.burst, args.seed)
            decoder = EscStreamingDecoder(model, header, _chunk_frames(model, args), conceal=args.conceal)
            with open_audio_sink(args.output, model.config.sampling_rate) as sink:
                for (_, data), gone in zip(packets, lost):
                    if not gone:
                        sink.write(decoder.push(data))
                sink.write(decoder.flush())
    except BitstreamError as error:
        raise type(error)(f"{path}: {error}") from None
    _note_clipping(sink)
    ms = 1000 * header.frames_per_packet * header.samples_per_frame / header.sample_rate
    print(
        f"{args.input} → {args.output}: lost {int(lost.sum())} of {count} packets of {ms:g} ms "
        f"({lost.mean():.1%}), concealed by {args.conceal}"
    )


def info(args) -> None:
    from .codec.bitstream import CODER_NAMES, BitstreamError, ModelMismatchError
    from .codec.streaming import iter_packets

    path = Path(args.input)
    if not path.is_file():
        raise OSError(f"no such file: {path}")
    try:
        packets = iter_packets(path, decode_codes=False)  # every check but the codes' decoding: no model needed
        header = next(packets)
        count = frames = drop = 0
        layer_bytes = [0] * header.num_streams  # v2: bytes of each layer, framing included
        fewer = 0  # v2: packets with fewer layers than the header's streams
        for packet in packets:
            count, frames, drop = count + 1, frames + packet.frames, packet.drop
            for layer, size in enumerate(packet.layer_sizes):
                layer_bytes[layer] += size
            fewer += 0 < packet.layers < header.num_streams
    except BitstreamError as error:
        raise type(error)(f"{path}: {error}") from None
    header = header.with_length(frames * header.samples_per_frame - drop, frames)  # a live stream's header lacks it
    size = path.stat().st_size
    nominal = header.kbps * 1000 * header.duration / 8
    # The reader refuses empty streams; this line must not divide by zero even so.
    overhead = "no audio"
    if nominal > 0:
        overhead = f"{(size - nominal) / nominal:+.2%} against the nominal {nominal:,.0f} bytes"
    model = load_model(args.model)
    try:
        header.check_model(model)  # the fields as well as the fingerprints: a forged header keeps the fingerprints
        matches = True
    except ModelMismatchError:
        matches = False
    except BitstreamError as error:
        raise type(error)(f"{path}: {error}") from None
    coder = "bit-packed codes, one CRC per packet"
    if header.version >= 2:
        coder = CODER_NAMES[header.coder] + (
            f" (tables {header.coder_fingerprint.hex()})" if header.coder_fingerprint != bytes(8) else ""
        )
    rows = [
        ("file", f"{path} ({size:,} bytes = {size * 8 / header.duration / 1000:.2f} kbps)"),
        ("format", f"ESC bitstream version {header.version}; {coder}"),
        ("audio", f"{header.num_samples:,} samples at {header.sample_rate} Hz = {header.duration:.3f} s, mono"),
        (
            "codes",
            (
                f"{header.num_streams} streams × {header.group_size} codebooks × {header.bits_per_code} bits, "
                f"{header.num_frames:,} frames at {header.frame_rate:g}/s = {header.kbps:g} kbps nominal"
            ),
        ),
        ("packets", f"{count:,} of up to {header.frames_per_packet} frames, every CRC correct"),
        ("size", f"{size:,} bytes, {overhead}"),
    ]
    if header.version >= 2:
        for layer, used in enumerate(layer_bytes):
            rows.append((
                "layer" if layer == 0 else "",
                f"{layer}: {used:,} bytes = {used * 8 / header.duration / 1000:.2f} kbps (nominal "
                f"{header.kbps_per_stream:g})",
            ))  # fmt: skip
        if fewer:
            rows.append(("", f"{fewer} packets hold fewer layers (a lower rate there)"))
    rows.append((
        "model",
        f"config {header.config_fingerprint.hex()}, codebooks {header.codebook_fingerprint.hex()}: "
        f"{'decodes with' if matches else 'NOT made by'} {_model_name(args)}",
    ))  # fmt: skip
    for name, value in rows:
        print(f"{name:<8} {value}")


def truncate(args) -> None:
    from .codec.bitstream import MAX_HEADER_SIZE, BitstreamError, EscHeader, iter_truncated, streams_for_kbps
    from .utils.atomic_files import atomic_file

    _check_output(args)
    path = Path(args.input)
    if not path.is_file():
        raise OSError(f"no such file: {path}")
    try:
        with open(path, "rb") as source:
            header = EscHeader.from_bytes(source.read(MAX_HEADER_SIZE))
            streams = streams_for_kbps(header, args.kbps)
            if streams > header.num_streams:
                raise ValueError(f"the file is {header.kbps:g} kbps; it cannot be raised to {args.kbps:g}")
            source.seek(0)
            with atomic_file(args.output) as handle:
                for part in iter_truncated(source, streams):  # packet by packet: any length in bounded memory
                    handle.write(part)
    except BitstreamError as error:
        raise type(error)(f"{path}: {error}") from None
    sizes = f"{path.stat().st_size:,} → {Path(args.output).stat().st_size:,} bytes"
    print(f"{args.input} → {args.output}: {header.kbps:g} → {args.kbps:g} kbps, {sizes}")


def roundtrip(args) -> None:
    from .codec.audio_io import open_audio_sink
    from .codec.streaming import ChunkedDecoder, ChunkedEncoder, ChunkPlan

    _check_output(args)
    model = load_model(args.model)
    num_streams, kbps = _num_streams(model, args.kbps)
    plan = ChunkPlan.for_model(model, _chunk_frames(model, args))
    source = _open_source(args, model)
    bar = _progress(source.duration, "coding")
    encoder, decoder = ChunkedEncoder(model, num_streams, plan), ChunkedDecoder(model, plan)
    try:
        with open_audio_sink(args.output, model.config.sampling_rate) as sink:
            for block in _blocks_with_progress(source, bar):
                sink.write(decoder.push(encoder.push(block)))
            sink.write(decoder.push(encoder.finish()))
            sink.write(decoder.finish(encoder.num_samples))
    finally:
        if bar is not None:
            bar.close()
    _note_clipping(sink)
    seconds = encoder.num_samples / model.config.sampling_rate
    print(
        f"{args.input} → {args.output}: {seconds:.2f} s at {kbps:g} kbps "
        f"({num_streams} of {model.config.num_streams} streams, {encoder.next_frame} code frames)"
    )


def report(args) -> None:
    from .eval.report import make_report

    clips, out = Path(args.input).resolve(), Path(args.output).resolve()
    if out == clips or out in clips.parents:
        raise ValueError(f"the report folder {args.output} would replace the clips' folder {args.input}")

    kbps = tuple(_parse_list(args.kbps, float, "--kbps")) if args.kbps else None
    codecs = tuple(_parse_list(args.codecs, str, "--codecs")) if args.codecs is not None else None
    options = {"kbps": kbps, "codecs": codecs}
    index = make_report(args.input, args.output, args.model, max_clips=args.clips,
                        command="esc " + " ".join(sys.argv[1:]) if sys.argv[1:] else None,
                        **{k: v for k, v in options.items() if v is not None})  # fmt: skip
    print(f"wrote {index}")


def _parse_list(text: str, kind, option: str) -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        return [kind(item) for item in items]
    except ValueError:
        raise ValueError(f"{option} takes a comma-separated list, got {text!r}") from None


KBPS_HELP = (
    "bitrate, a multiple of the model's per-stream rate (ESC-Base, the packaged model: 1.5, 3, 4.5, 6, 7.5 or 9); "
    "default: the highest"
)
MODEL_HELP = "model folder or Hub id (default: the packaged model)"
CHUNK_HELP = (
    "seconds of audio per model call (default: 10 for ESC); less uses less memory, more a little less "
    "time; the output is the same"
)


def _add_verb(verbs, name: str, func, help: str, description: str, input_help: str, output_help: str | None,
              kbps: bool = False, chunks: bool = True, model_help: str = MODEL_HELP):
    verb = verbs.add_parser(name, help=help, description=description)
    verb.add_argument("input", help=input_help)
    if output_help:
        verb.add_argument("output", help=output_help)
    if kbps:
        verb.add_argument("--kbps", type=float, help=KBPS_HELP)
    verb.add_argument("--model", help=model_help)
    if chunks:
        verb.add_argument("--chunk-seconds", type=float, help=CHUNK_HELP)
    verb.set_defaults(func=func)
    return verb


AUDIO_IN_HELP = "audio file (wav, flac, ogg/opus, mp3; any rate, mono or multichannel)"
AUDIO_OUT_HELP = "audio file to write (.wav, .flac or .ogg)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esc",
        description="ESC speech codec: 16 kHz speech at 1.5–9 kbps. Audio in: wav, flac, ogg/opus, mp3 (any rate, "
        "any channels: resampled and mixed to mono). Long files are processed in chunks, in bounded memory. "
        f"Without --model, the packaged model is used ({DEFAULT_MODEL.resolve().name}).",
    )
    verbs = parser.add_subparsers(dest="verb", required=True,
                                  metavar="{encode,decode,simulate-loss,info,truncate,roundtrip,report}")  # fmt: skip
    enc = _add_verb(verbs, "encode", encode, "compress an audio file to an .esc file",
                    "Compress an audio file to an .esc bitstream (see docs/bitstream.md).",
                    AUDIO_IN_HELP, ".esc file to write", kbps=True)  # fmt: skip
    enc.add_argument("--format", choices=("v1", "v2"), default="v2",
                     help="bitstream version: v2 (default) is layered and entropy coded with the model folder's "
                          "tables; v1 is the older bit-packed format")  # fmt: skip
    enc.add_argument("--frames-per-packet", type=int, default=DEFAULT_FRAMES_PER_PACKET,
                     help=f"code frames (20 ms each) per packet (default {DEFAULT_FRAMES_PER_PACKET}): smaller "
                          "packets lose less audio each when lost, larger ones spend less on framing")  # fmt: skip
    dec = _add_verb(verbs, "decode", decode, "decompress an .esc file to audio",
                    "Decode an .esc file with the model that encoded it. A missing packet is an error unless "
                    "--conceal names a method to fill it.", ".esc file", AUDIO_OUT_HELP)  # fmt: skip
    dec.add_argument("--conceal", choices=CONCEAL_METHODS,
                     help="fill missing packets: silence, repeat (the last codes, fading), or interpolate (the "
                          "decoder's latents across the gap); default: a missing packet is an error")  # fmt: skip
    sim = _add_verb(verbs, "simulate-loss", simulate_loss, "decode an .esc file as if packets had been lost",
                    "Drop a seeded random share of an .esc file's packets (all but the final one) and decode the "
                    "rest with packet-loss concealment, to hear it. Encode with --frames-per-packet 1 for the 20 ms "
                    "packets of a call.", ".esc file", AUDIO_OUT_HELP)  # fmt: skip
    sim.add_argument("--loss", required=True, help="share of packets lost, e.g. 10%% or 0.1")
    sim.add_argument("--burst", type=float, help="mean burst length in packets: bursty (Gilbert–Elliott) loss "
                                                  "instead of independent losses")  # fmt: skip
    sim.add_argument("--seed", type=int, default=0, help="seed of the loss pattern (default 0)")
    sim.add_argument("--conceal", choices=CONCEAL_METHODS, default="interpolate",
                     help="concealment method (default: interpolate)")  # fmt: skip
    _add_verb(verbs, "info", info, "check an .esc file and describe it",
              "Read every packet of an .esc file, check it, and print what it holds.", ".esc file", None,
              chunks=False, model_help="model to check the file against (default: the packaged model)")  # fmt: skip
    cut = verbs.add_parser("truncate", help="lower an .esc file's bitrate by dropping layers (no model)",
                           description="Copy a version 2 .esc file with only the layers of a lower bitrate: the "
                                       "bytes of the coarse layers are kept, the finer ones dropped; no model, no "
                                       "decoding. Decoding the result equals encoding at that bitrate.")  # fmt: skip
    cut.add_argument("input", help=".esc file (version 2)")
    cut.add_argument("output", help=".esc file to write")
    cut.add_argument("--kbps", type=float, required=True, help="the lower bitrate, a multiple of the file's rate "
                                                               "per layer (1.5 for ESC-Base)")  # fmt: skip
    cut.set_defaults(func=truncate)
    _add_verb(verbs, "roundtrip", roundtrip, "encode and decode a file, writing the decoded audio",
              "Encode and decode an audio file (what `encode` then `decode` give).", AUDIO_IN_HELP,
              "decoded " + AUDIO_OUT_HELP, kbps=True)  # fmt: skip
    rep = _add_verb(verbs, "report", report, "write an HTML listening report comparing ESC with other codecs",
                    "Code every clip of a folder with ESC and classical codecs and write OUTPUT/index.html: players, "
                    "spectrograms and metrics per clip, the rate-distortion plot and the means. Opens from the file "
                    "system; needs no server.", "folder of audio clips", "report folder to write (replaced)",
                    chunks=False)  # fmt: skip
    rep.add_argument("--kbps", help="ESC bitrates, comma-separated (default: 1.5,3,6,9)")
    rep.add_argument("--codecs", help="other codecs, comma-separated: opus, amr-wb, speex, codec2 (default: "
                                      "opus,amr-wb; an empty string for none)")  # fmt: skip
    rep.add_argument("--clips", type=int, help="use the first N clips (sorted by path)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as error:  # AudioFileError, BitstreamError and ModelLoadError are ValueErrors
        message = " ".join(str(error).split())  # one line, whatever the library said
        print(f"esc: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("esc: interrupted", file=sys.stderr)
        return 130
    return 0
