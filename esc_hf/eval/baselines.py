"""Classical speech codecs beside ESC, as functions of 16 kHz float audio, and how their output is scored.

Each codec is run at the rates it is used at for wideband speech:
  esc     every bitrate of the given model
  opus    libopus through opus-tools (opusenc/opusdec), 6, 9, 12 kbps, wideband forced, VBR
  codec2  c2enc/c2dec (codec2), 3.2 kbps; narrowband (8 kHz) by design, resampled with soxr
  speex   speexenc/speexdec wideband, qualities 1-4 (5.75, 7.75, 9.8, 12.8 kbps)
  amr-wb  libvo-amrwbenc (encoder) and libopencore-amrwb (decoder), 6.6, 8.85, 12.65 kbps
A codec whose tool is missing raises `CodecUnavailable` from `check()`, naming it (Debian: apt-get install
opus-tools codec2 speex libvo-amrwbenc0 libopencore-amrwb0). Every decoded signal is aligned to its reference (the
lag that maximises the cross-correlation, within 60 ms) before scoring, since the classical codecs delay their
output; ESC's output is aligned by construction and is not shifted. `kbps` is the nominal rate, `file_kbps` the
size of what the codec wrote (container and framing included) per second.

Used by `benchmarks/compare_codecs.py` and the listening report (`esc report`).
"""

import ctypes
import ctypes.util
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import soundfile as sf
import soxr

from ..utils.processes import forked_map
from .metrics import METRICS, mel_distance, pesq_wb, si_sdr, stoi

RATE = 16000
MAX_LAG = int(0.06 * RATE)


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
        from ..codec.entropy import load_entropy_model

        super().__init__("esc", list(model.config.target_bandwidths), delays=False)
        self.model = model
        self.entropy_model = load_entropy_model(model)  # what `esc encode` uses: its files' sizes are the rate

    def code(self, audio, kbps, tmp):
        import torch

        from ..codec.bitstream import EscHeader, pack, unpack

        num_streams = self.model.config.num_streams_for_bandwidth(kbps)
        with torch.inference_mode():
            codes = self.model.encode(torch.from_numpy(audio)[None, None], num_streams=num_streams).audio_codes
            header = EscHeader.for_model(self.model, num_streams, audio.size, entropy_model=self.entropy_model)
            data = pack(codes, header, self.entropy_model)
            codes = unpack(data, self.model, self.entropy_model)[0]
            decoded = self.model.decode(codes).audio_values[0, 0, : audio.size]
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


def all_codecs(model=None) -> dict[str, Codec]:
    """Every codec by name; ESC only when a model is given."""
    codecs = (OpusCodec(), Codec2Codec(), SpeexCodec(), AmrWbCodec())
    return {c.name: c for c in ((EscCodec(model),) if model is not None else ()) + codecs}


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


def code_aligned(codec: Codec, audio: np.ndarray, kbps: float, tmp: Path) -> tuple[np.ndarray, dict]:
    """`audio` through `codec` at `kbps`: the decoded signal aligned to it, and its row (rate, size, lag)."""
    decoded, size = codec.code(audio, kbps, Path(tmp))
    decoded, lag = align(audio, np.asarray(decoded, dtype=np.float32), MAX_LAG if codec.delays else 0)
    return decoded, {"codec": codec.name, "kbps": kbps, "file_kbps": size * 8 / (audio.size / RATE) / 1000,
                     "lag_samples": lag}  # fmt: skip


def code_and_score(codec: Codec, audio: np.ndarray, kbps: float, tmp: Path) -> tuple[np.ndarray, dict]:
    """[`code_aligned`], with the decoded signal's scores against `audio` in the row."""
    decoded, row = code_aligned(codec, audio, kbps, tmp)
    return decoded, {**row, **score(audio, decoded)}


def score(reference: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    return {
        "pesq": pesq_wb(reference, decoded),
        "stoi": stoi(reference, decoded),
        "mel_distance": mel_distance(reference, decoded),
        "si_sdr": si_sdr(reference, decoded),
    }


def compare(clips, codecs: list[Codec], log=print, jobs: int = 1) -> list[dict]:
    """One row per clip `(name, audio)`, codec and rate, in that order. With `jobs` > 1, that many forked processes
    of one thread each code and score the clips (`esc_hf.utils.processes.forked_map`): PESQ, STOI and the classical
    codecs use one core whatever torch's threads, so one process leaves the others idle for most of a run."""
    rows = []

    def code_and_score_clip(task: tuple[int, float, int]) -> dict:
        codec, kbps, clip = task
        name, audio = clips[clip]
        with tempfile.TemporaryDirectory() as tmp:  # a folder per clip: the classical codecs write fixed file names
            return {"file": name, **code_and_score(codecs[codec], audio, kbps, Path(tmp))[1]}

    with forked_map(code_and_score_clip, jobs, log) as map_:
        for c, codec in enumerate(codecs):
            for kbps in codec.rates:
                rows += map_([(c, kbps, i) for i in range(len(clips))])
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


def curves_by_codec(summary: list[dict]) -> dict[str, list[dict]]:
    """Summary rows grouped into one rate–distortion curve per codec (for `plotting.plot_rate_distortion`)."""
    return {codec: [r for r in summary if r["codec"] == codec] for codec in dict.fromkeys(r["codec"] for r in summary)}
