"""ESC against classical speech codecs on a folder of speech: PESQ-WB, STOI, mel distance, SI-SDR per bitrate.

    python benchmarks/compare_codecs.py [--data DIR] [--model DIR_OR_HUB_ID] [--codecs esc opus codec2 speex amr-wb]
                                        [--out-dir compare] [--limit N] [--max-seconds S]

Codecs, each at the rates it is used at for wideband speech:
  esc     every bitrate of the model (`--model`, default the packaged model: say which, it may be untrained)
  opus    libopus through opus-tools (opusenc/opusdec), 6, 9, 12 kbps, wideband forced, VBR
  codec2  c2enc/c2dec (codec2), 3.2 kbps; narrowband (8 kHz) by design, resampled with soxr
  speex   speexenc/speexdec wideband, qualities 1-4 (5.75, 7.75, 9.8, 12.8 kbps)
  amr-wb  libvo-amrwbenc (encoder) and libopencore-amrwb (decoder), 6.6, 8.85, 12.65 kbps
A codec whose tool is missing is skipped with the reason (Debian: apt-get install opus-tools codec2 speex
libvo-amrwbenc0 libopencore-amrwb0). Every decoded signal is aligned to its reference (the lag that maximises the
cross-correlation, within 60 ms) before scoring, since the classical codecs delay their output; ESC's output is
aligned by construction and is not shifted. `kbps` is the
nominal rate, `file_kbps` the size of what the codec wrote (container and framing included) per second.

Writes OUT/compare.csv (one row per file, codec and rate), OUT/summary.csv (means) and OUT/rate_distortion.png.
"""

import argparse
import csv
import ctypes
import ctypes.util
import math
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
MAX_LAG = int(0.06 * RATE)
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".opus"}
METRICS = ("pesq", "stoi", "mel_distance", "si_sdr")
FIELDS = ("file", "codec", "kbps", "file_kbps", "lag_samples", *METRICS)


class CodecUnavailable(Exception):
    """The tool or library a codec needs is not installed; the message says which."""


def _need_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise CodecUnavailable(f"{', '.join(missing)} not found on PATH")


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.decode(errors='replace').strip()}")


def _write_pcm16(path: Path, audio: np.ndarray, rate: int) -> None:
    sf.write(str(path), np.clip(audio, -1, 1), rate, subtype="PCM_16")


# ----------------------------------------------------------------------------------------------------------------
# Codecs: each maps 16 kHz float audio to (decoded 16 kHz float audio, bytes written)


@dataclass
class Codec:
    name: str
    rates: list[float]  # nominal kbps
    delays: bool = True  # whether the decoded signal can lag the input (then it is aligned before scoring)

    def check(self) -> None:
        """Raises CodecUnavailable if this machine cannot run the codec."""

    def code(self, audio: np.ndarray, kbps: float, tmp: Path) -> tuple[np.ndarray, int]:
        raise NotImplementedError


class EscCodec(Codec):
    def __init__(self, model):
        # ESC's output is sample-aligned with its input by construction: searching a lag would only flatter an
        # untrained model by picking whichever shift correlates best.
        super().__init__("esc", list(model.config.target_bandwidths), delays=False)
        self.model = model

    def code(self, audio, kbps, tmp):
        import torch

        from esc_hf.bitstream import EscHeader, pack, unpack

        num_streams = self.model.config.num_streams_for_bandwidth(kbps)
        with torch.inference_mode():
            codes = self.model.encode(torch.from_numpy(audio)[None, None], num_streams=num_streams).audio_codes
            data = pack(codes, EscHeader.for_model(self.model, num_streams, audio.size))
            decoded = self.model.decode(unpack(data, self.model)[0]).audio_values[0, 0, : audio.size]
        return decoded.numpy(), len(data)


class OpusCodec(Codec):
    # opus_defines.h: OPUS_SET_BANDWIDTH_REQUEST = 4008, OPUS_BANDWIDTH_WIDEBAND = 1103
    WIDEBAND = "4008=1103"

    def __init__(self):
        super().__init__("opus", [6.0, 9.0, 12.0])

    def check(self):
        _need_tools("opusenc", "opusdec")

    def code(self, audio, kbps, tmp):
        wav, opus, out = tmp / "in.wav", tmp / "coded.opus", tmp / "out.wav"
        _write_pcm16(wav, audio, RATE)
        _run(["opusenc", "--quiet", "--bitrate", f"{kbps:g}", "--set-ctl-int", self.WIDEBAND, str(wav), str(opus)])
        _run(["opusdec", "--quiet", "--rate", str(RATE), str(opus), str(out)])
        return sf.read(str(out), dtype="float32")[0], opus.stat().st_size


class Codec2Codec(Codec):
    def __init__(self):
        super().__init__("codec2", [3.2])

    def check(self):
        _need_tools("c2enc", "c2dec")

    def code(self, audio, kbps, tmp):
        raw, bits, out = tmp / "in.raw", tmp / "coded.c2", tmp / "out.raw"
        narrow = soxr.resample(audio, RATE, 8000, quality="HQ")
        (np.clip(narrow, -1, 1) * 32767).astype("<i2").tofile(raw)
        mode = f"{int(kbps * 1000)}"
        _run(["c2enc", mode, str(raw), str(bits)])
        _run(["c2dec", mode, str(bits), str(out)])
        decoded = np.fromfile(out, dtype="<i2").astype(np.float32) / 32768
        return soxr.resample(decoded, 8000, RATE, quality="HQ").astype(np.float32), bits.stat().st_size


class SpeexCodec(Codec):
    QUALITY: ClassVar[dict[float, int]] = {
        5.75: 1,
        7.75: 2,
        9.8: 3,
        12.8: 4,
    }  # wideband mode's bitrate at each quality (speex manual)

    def __init__(self):
        super().__init__("speex", list(self.QUALITY))

    def check(self):
        _need_tools("speexenc", "speexdec")

    def code(self, audio, kbps, tmp):
        wav, spx, out = tmp / "in.wav", tmp / "coded.spx", tmp / "out.wav"
        _write_pcm16(wav, audio, RATE)
        _run(["speexenc", "--wideband", "--quality", str(self.QUALITY[kbps]), str(wav), str(spx)])
        _run(["speexdec", str(spx), str(out)])
        return sf.read(str(out), dtype="float32")[0], spx.stat().st_size


class AmrWbCodec(Codec):
    """AMR-WB (3GPP TS 26.190) through its two C libraries: no command-line tool ships with either."""

    MODES: ClassVar[dict[float, int]] = {6.6: 0, 8.85: 1, 12.65: 2}
    FRAME = 320  # 20 ms at 16 kHz

    def __init__(self):
        super().__init__("amr-wb", list(self.MODES))
        self._enc = self._dec = None

    def check(self):
        if self._enc is not None:
            return
        found = {name: ctypes.util.find_library(name) for name in ("vo-amrwbenc", "opencore-amrwb")}
        missing = [f"lib{name}" for name, path in found.items() if path is None]
        if missing:
            raise CodecUnavailable(f"{' and '.join(missing)} not found")
        self._enc, self._dec = ctypes.CDLL(found["vo-amrwbenc"]), ctypes.CDLL(found["opencore-amrwb"])
        for lib, prefix in ((self._enc, "E"), (self._dec, "D")):
            getattr(lib, f"{prefix}_IF_init").restype = ctypes.c_void_p
            getattr(lib, f"{prefix}_IF_exit").argtypes = [ctypes.c_void_p]
        self._enc.E_IF_encode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        self._dec.D_IF_decode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]

    def code(self, audio, kbps, tmp):
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        pcm = np.concatenate([pcm, np.zeros(-pcm.size % self.FRAME, dtype=np.int16)])
        encoder, decoder = self._enc.E_IF_init(), self._dec.D_IF_init()
        packet = (ctypes.c_ubyte * 64)()
        synth = np.zeros(self.FRAME, dtype=np.int16)
        out, size = [], len(b"#!AMR-WB\n")  # as in an .awb file: the storage format's header, then the frames
        try:
            for start in range(0, pcm.size, self.FRAME):
                frame = np.ascontiguousarray(pcm[start : start + self.FRAME])
                written = self._enc.E_IF_encode(encoder, self.MODES[kbps], frame.ctypes.data, packet, 0)
                size += written
                self._dec.D_IF_decode(decoder, packet, synth.ctypes.data, 0)
                out.append(synth.copy())
        finally:
            self._enc.E_IF_exit(encoder)
            self._dec.D_IF_exit(decoder)
        return np.concatenate(out).astype(np.float32) / 32768, size


def all_codecs(model) -> dict[str, Codec]:
    return {c.name: c for c in (EscCodec(model), OpusCodec(), Codec2Codec(), SpeexCodec(), AmrWbCodec())}


# ----------------------------------------------------------------------------------------------------------------
# Scoring


def align(reference: np.ndarray, decoded: np.ndarray, max_lag: int = MAX_LAG) -> tuple[np.ndarray, int]:
    """`decoded` shifted by the lag (0 … max_lag samples of delay) that best matches `reference`, cut or
    zero-padded to its length."""
    n = reference.size + decoded.size
    size = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(decoded, size) * np.conj(np.fft.rfft(reference, size))
    correlation = np.fft.irfft(spectrum, size)[: max_lag + 1]
    lag = int(np.argmax(correlation))
    shifted = decoded[lag : lag + reference.size]
    return np.pad(shifted, (0, reference.size - shifted.size)).astype(np.float32), lag


def score(reference: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    from esc_hf.metrics import mel_distance, pesq_wb, si_sdr, stoi

    return {
        "pesq": pesq_wb(reference, decoded),
        "stoi": stoi(reference, decoded),
        "mel_distance": mel_distance(reference, decoded),
        "si_sdr": si_sdr(reference, decoded),
    }


def load_clips(folder: Path, limit: int | None, max_seconds: float | None) -> list[tuple[str, np.ndarray]]:
    from esc_hf.audio_io import load_audio

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not paths:
        raise SystemExit(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {folder}")
    clips = []
    for path in paths[:limit]:
        audio, _ = load_audio(path, RATE)
        if max_seconds:
            audio = audio[: int(max_seconds * RATE)]
        clips.append((str(path.relative_to(folder)), audio))
    return clips


def compare(clips, codecs: list[Codec], log=print) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for codec in codecs:
            for kbps in codec.rates:
                for name, audio in clips:
                    decoded, size = codec.code(audio, kbps, Path(tmp))
                    decoded = np.asarray(decoded, dtype=np.float32)
                    decoded, lag = align(audio, decoded, MAX_LAG if codec.delays else 0)
                    row = {
                        "file": name,
                        "codec": codec.name,
                        "kbps": kbps,
                        "file_kbps": size * 8 / (audio.size / RATE) / 1000,
                        "lag_samples": lag,
                    }
                    rows.append({**row, **score(audio, decoded)})
                log(f"  {codec.name:>7} {kbps:6g} kbps done")
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    keys = sorted({(r["codec"], r["kbps"]) for r in rows}, key=lambda k: (k[0] != "esc", k[0], k[1]))
    summary = []
    for codec, kbps in keys:
        group = [r for r in rows if r["codec"] == codec and r["kbps"] == kbps]
        entry = {"codec": codec, "kbps": kbps, "files": len(group)}
        for field in ("file_kbps", *METRICS):
            values = [r[field] for r in group if not math.isnan(r[field])]
            entry[field] = float(np.mean(values)) if values else float("nan")
        summary.append(entry)
    return summary


def plot(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from esc_hf.io_utils import atomic_file

    labels = {
        "pesq": "PESQ-WB (higher is better)",
        "stoi": "STOI (higher is better)",
        "mel_distance": "mel distance (lower is better)",
        "si_sdr": "SI-SDR, dB (higher is better)",
    }
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    for axis, metric in zip(axes.flat, METRICS):
        for codec in dict.fromkeys(r["codec"] for r in summary):
            points = [(r["kbps"], r[metric]) for r in summary if r["codec"] == codec]
            axis.plot(*zip(*points), marker="o", label=codec)
        axis.set_xlabel("bitrate (kbps, nominal)")
        axis.set_ylabel(labels[metric])
        axis.grid(alpha=0.3)
    axes.flat[0].legend()
    figure.suptitle(textwrap.fill(title, 150), fontsize=9)
    figure.tight_layout()
    with atomic_file(path) as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)


def write_csv(path: Path, rows: list[dict]) -> None:
    from esc_hf.io_utils import atomic_file

    with atomic_file(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def describe_model(model, name: str | None) -> str:
    from esc_hf.bitstream import codebook_fingerprint, config_fingerprint

    what = name or "the packaged default model (tiny, randomly initialised: not a trained codec)"
    params = sum(p.numel() for p in model.parameters())
    return (
        f"ESC checkpoint: {what}; {params:,} parameters, codebooks of {model.config.codebook_size}, "
        f"config {config_fingerprint(model.config).hex()}, codebooks {codebook_fingerprint(model).hex()}"
    )


def run(
    data: Path, out_dir: Path, model_name: str | None = None, codec_names=None, limit=None, max_seconds=None, log=print
) -> tuple[list[dict], dict[str, str]]:
    """Runs the comparison; returns the summary and the codecs skipped, with why."""
    from esc_hf.cli import load_model

    model = load_model(model_name)
    checkpoint = describe_model(model, model_name)
    log(checkpoint)
    available, skipped = [], {}
    for name, codec in all_codecs(model).items():
        if codec_names and name not in codec_names:
            continue
        try:
            codec.check()
            available.append(codec)
        except CodecUnavailable as reason:
            skipped[name] = str(reason)
            log(f"skipping {name}: {reason}")
    if not available:
        raise SystemExit("no codec to run")
    clips = load_clips(data, limit, max_seconds)
    log(
        f"{len(clips)} clips, {sum(a.size for _, a in clips) / RATE:.1f} s of speech; codecs: "
        f"{', '.join(c.name for c in available)}"
    )
    rows = compare(clips, available, log)
    summary = summarize(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "compare.csv", [{**r, "checkpoint": checkpoint} for r in rows])
    write_csv(out_dir / "summary.csv", [{**r, "checkpoint": checkpoint} for r in summary])
    plot(summary, out_dir / "rate_distortion.png", f"{len(clips)} clips from {Path(data).name}/ — {checkpoint}")
    return summary, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "tests" / "data", help="folder of speech (any rate)")
    parser.add_argument("--model", help="ESC model folder or Hub id (default: the packaged model)")
    parser.add_argument("--codecs", nargs="+", choices=["esc", "opus", "codec2", "speex", "amr-wb"])
    parser.add_argument("--out-dir", type=Path, default=Path("compare"))
    parser.add_argument("--limit", type=int, help="use only the first N files")
    parser.add_argument("--max-seconds", type=float, help="cut every clip to this length")
    args = parser.parse_args()
    summary, _ = run(args.data, args.out_dir, args.model, args.codecs, args.limit, args.max_seconds)
    print(f"\n{'codec':>7} {'kbps':>6} {'file kbps':>9} {'PESQ':>6} {'STOI':>6} {'mel':>6} {'SI-SDR':>7}")
    for r in summary:
        print(
            f"{r['codec']:>7} {r['kbps']:>6g} {r['file_kbps']:>9.2f} {r['pesq']:>6.2f} {r['stoi']:>6.3f} "
            f"{r['mel_distance']:>6.2f} {r['si_sdr']:>7.1f}"
        )
    written = ", ".join(str(args.out_dir / name) for name in ("compare.csv", "summary.csv", "rate_distortion.png"))
    print(f"\nwrote {written}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
