"""Rebuild the speech data that ESC-Base was trained on (train: Ogg Opus, val: FLAC) from its public Debian sources.

    python examples/prepare_speech_data.py --output data/speech
    python examples/train.py --config examples/configs/esc-base-cpu.yaml \
        --data_dir data/speech/train --val_dir data/speech/val --output_dir runs/esc-base-cpu

The manifests shipped in examples/data/ (one row per output file) name, for each file, the Debian bookworm package
and version it comes from and its source clips (`original_files`, in playback order). This script fetches the two
packages (`tuxpaint-stamps-default` 2022.06.04-1 and `klettres-data` 4:22.12.3-1, about 200 MB) with
`apt-get download` (Debian and Ubuntu; elsewhere, fetch the two .deb files from Debian bookworm yourself and pass
`--packages-dir`), checks their SHA-256, unpacks them with
`dpkg-deb -x` into a temporary folder and, for each manifest row, decodes its clips, mixes them to mono, resamples
them to 16 kHz (soxr, 'VHQ'), trims each clip's silence (0.1 s of room tone kept, 5 ms fades), concatenates them,
and writes `train/<path>` as Ogg Opus at 32 kbit/s (with `opusenc --bitrate 32 --vbr --comp 10` as the shipped
set was; without opusenc, with libsndfile's Opus encoder at the same bitrate) and `val/<path>` as 16-bit FLAC.
Each file is written to a temporary name and renamed into place; a rerun skips the files already there and right.
Every file's length is then checked against the manifest's `duration_s`; any mismatch is listed and the exit status
is 1.

Options for machines without network or apt: `--packages-dir DIR` takes the .deb files from DIR (and keeps the
downloads there); `--unpacked-dir DIR` takes packages already unpacked as DIR/<package>/usr/... .
"""

import argparse
import concurrent.futures
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from esc_hf.codec.audio_io import AudioFileError, save_audio
from esc_hf.utils.atomic_files import atomic_file

HERE = Path(__file__).resolve().parent
MANIFESTS = {"train": HERE / "data" / "speech_train_manifest.csv", "val": HERE / "data" / "speech_val_manifest.csv"}
EXTENSIONS = {"train": ".opus", "val": ".flac"}
SAMPLING_RATE = 16000
TOLERANCE_S = 0.02

# The .deb files the manifests were made from, as Debian bookworm lists them (`apt-cache show PKG=VERSION`).
KNOWN_SHA256 = {
    ("tuxpaint-stamps-default", "2022.06.04-1"): "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
    ("klettres-data", "4:22.12.3-1"): "1186d257a19e84230856baea0b0b1ded8be9195080fcdb2588970b5cd937f5a8",
}

# How the clips were made (see the data set's README): steps 2, 4 and 5 of "How it was made".
QUIET_CHANNEL_DB = 20.0  # a channel this much quieter than the other is dead: the live one is kept
FRAME_S, HOP_S = 0.020, 0.010  # activity frames
RANGE_DB, FLOOR_DB = 40.0, 8.0  # active: above max(loudest frame - 40 dB, 5th-percentile frame + 8 dB)
KEEP_S = 0.1  # room tone kept before the first and after the last active frame
FADE_S = 0.005
PEAK_LIMIT = 0.999  # a file that resampling pushed past full scale is scaled to this peak
# Opus: opusenc's options, and the libsndfile compression level that asks for the same 32 kbit/s
# (libsndfile maps level q to (1 - q) * 250 kbit/s + 6 kbit/s per channel).
OPUSENC_OPTIONS = ["--bitrate", "32", "--vbr", "--comp", "10"]
LIBSNDFILE_OPUS_LEVEL = 0.896


class PrepareError(RuntimeError):
    """A one-line, user-facing reason why the data cannot be made."""


def read_manifest(path: str | Path) -> list[dict]:
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise PrepareError(f"cannot read manifest {path}: {error.strerror}") from error
    needed = {"path", "duration_s", "source_package", "package_version", "original_files"}
    if not rows or not needed <= set(rows[0]):
        raise PrepareError(f"{path} is not a speech manifest (needs the columns {', '.join(sorted(needed))})")
    return rows


# ---------------------------------------------------------------------------------------------- the packages


def _find_deb(folder: Path, package: str, version: str) -> Path | None:
    for deb in sorted(folder.glob(f"{package}_*.deb")):
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True, text=True)
        if fields.returncode == 0 and fields.stdout.split() == ["Package:", package, "Version:", version]:
            return deb
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_deb(package: str, version: str, folder: Path) -> Path:
    """The .deb of `package` at `version` in `folder`, downloaded there if it is not there yet."""
    folder.mkdir(parents=True, exist_ok=True)
    deb = _find_deb(folder, package, version)
    if deb is not None:
        return deb
    if not shutil.which("apt-get"):
        raise PrepareError(
            f"no apt-get here: download {package}={version} (Debian bookworm, main) yourself and pass its folder as "
            "--packages-dir"
        )
    print(f"downloading {package}={version} ...", flush=True)
    got = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=folder, capture_output=True, text=True)
    deb = _find_deb(folder, package, version)
    if got.returncode != 0 or deb is None:
        reason = (got.stderr.strip().splitlines() or ["no .deb written"])[-1]
        raise PrepareError(f"apt-get download {package}={version} failed: {reason} (try `apt-get update` first)")
    known = KNOWN_SHA256.get((package, version))
    if known is not None and _sha256(deb) != known:
        raise PrepareError(f"{deb} is not the {package} {version} the manifests were made from (SHA-256 differs)")
    return deb


def unpack_deb(deb: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], capture_output=True, text=True)
    if got.returncode != 0:
        raise PrepareError(f"dpkg-deb -x {deb} failed: {got.stderr.strip()}")
    return folder


def package_roots(packages: dict[str, str], packages_dir: Path | None, work: Path) -> dict[str, Path]:
    """Download (or find in `packages_dir`) and unpack each package; returns package name → unpacked root."""
    if shutil.which("dpkg-deb") is None:
        raise PrepareError(
            "dpkg-deb not found: install dpkg (Debian/Ubuntu: apt-get install dpkg; macOS: brew install dpkg), "
            "or unpack the packages yourself and pass --unpacked-dir"
        )
    roots = {}
    for package, version in sorted(packages.items()):
        deb = fetch_deb(package, version, packages_dir or work / "debs")
        print(f"unpacking {deb.name}", flush=True)
        roots[package] = unpack_deb(deb, work / "unpacked" / package)
    return roots


# ---------------------------------------------------------------------------------------------- the audio


def mix_to_mono(audio: np.ndarray) -> np.ndarray:
    """(frames, channels) → mono: the mean of the channels, or the live channel when another is more than 20 dB
    quieter, or the left channel when the channels are in anti-phase."""
    if audio.shape[1] == 1:
        return audio[:, 0]
    level = 20 * np.log10(np.sqrt(np.mean(audio**2, axis=0)) + 1e-12)
    if level.max() - level.min() > QUIET_CHANNEL_DB:
        return audio[:, int(np.argmax(level))]
    mono = audio.mean(axis=1)
    if audio.shape[1] == 2 and np.sqrt(np.mean(mono**2)) < 0.1 * np.sqrt(np.mean(audio**2)):
        return audio[:, 0]  # anti-phase: the mean would cancel the voice
    return mono


def trim_clip(audio: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Cut the silence around a clip on 20 ms frames every 10 ms, keeping 0.1 s before the first and after the
    last active frame, with 5 ms fades at both ends."""
    frame, hop = round(FRAME_S * sampling_rate), round(HOP_S * sampling_rate)
    if audio.size >= frame:
        frames = np.lib.stride_tricks.sliding_window_view(audio, frame)[::hop]
    else:
        frames = audio[None, :]
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    threshold = max(level.max() - RANGE_DB, np.percentile(level, 5) + FLOOR_DB)
    active = np.flatnonzero(level > threshold)
    if active.size == 0:  # a flat clip: keep it whole
        active = np.array([0, len(level) - 1])
    keep = round(KEEP_S * sampling_rate)
    start = max(0, int(active[0]) * hop - keep)
    end = min(audio.size, int(active[-1]) * hop + frame + keep)
    clip = audio[start:end].copy()
    fade = min(round(FADE_S * sampling_rate), clip.size // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        clip[:fade] *= ramp
        clip[-fade:] *= ramp[::-1]
    return clip


def load_clip(root: Path, name: str, package: str = "") -> np.ndarray:
    """One source clip (`name`, relative to the unpacked package `root`) as 16 kHz mono float64."""
    path = root / name
    if not path.is_file():
        raise AudioFileError(f"missing source file {name} in {package or root}")
    try:
        audio, rate = sf.read(str(path), always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioFileError(f"cannot decode {path}: {error}") from error
    if audio.shape[0] == 0:
        raise AudioFileError(f"{path} holds no samples")
    mono = mix_to_mono(audio)
    if rate != SAMPLING_RATE:
        mono = soxr.resample(mono, rate, SAMPLING_RATE, quality="VHQ")
    return mono


def build_file(row: dict, root: Path) -> tuple[np.ndarray, bool]:
    """The int16 samples of one manifest row's file, and whether it had to be scaled down to fit full scale."""
    names = [name for name in row["original_files"].split(";") if name]
    clips = [trim_clip(load_clip(root, name, f"{row['source_package']} {row['package_version']}")) for name in names]
    if not clips:
        raise AudioFileError(f"{row['path']}: the manifest lists no source files")
    audio = np.concatenate(clips)
    peak = float(np.abs(audio).max())
    scaled = peak > 1.0
    if scaled:
        audio = audio * (PEAK_LIMIT / peak)
    return np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16), scaled


def write_flac(path: Path, pcm: np.ndarray) -> None:
    # save_audio writes 16-bit FLAC from floats as round(x * 32768): int16 / 32768 stores `pcm` exactly.
    save_audio(path, pcm.astype(np.float32) / 32768, SAMPLING_RATE)


def write_opus(path: Path, pcm: np.ndarray, opusenc: str | None) -> None:
    with atomic_file(path) as handle:
        if opusenc is None:
            sf.write(handle, pcm, SAMPLING_RATE, format="OGG", subtype="OPUS", compression_level=LIBSNDFILE_OPUS_LEVEL)
            return
        wav = io.BytesIO()
        sf.write(wav, pcm, SAMPLING_RATE, format="WAV", subtype="PCM_16")
        command = [opusenc, *OPUSENC_OPTIONS, "--title", path.name.rsplit(".", 1)[0], "-", "-"]
        got = subprocess.run(command, input=wav.getvalue(), stdout=handle, stderr=subprocess.PIPE)
        if got.returncode != 0:
            reason = (got.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
            raise AudioFileError(f"opusenc failed on {path.name}: {reason}")


def check_file(path: Path, kind: str, duration_s: float, tolerance_s: float) -> str | None:
    """None if `path` is a finished output file of the right format and length, else what is wrong with it."""
    if not path.is_file():
        return "missing"
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError):
        return "unreadable"
    want = ("OGG", "OPUS") if kind == "train" else ("FLAC", "PCM_16")
    if (info.format, info.subtype) != want or info.samplerate != SAMPLING_RATE or info.channels != 1:
        found = f"{info.format}/{info.subtype} {info.samplerate} Hz {info.channels} ch"
        return f"{found}, not {'/'.join(want)} 16 kHz mono"
    got = info.frames / info.samplerate
    if abs(got - duration_s) > tolerance_s:
        return f"duration {got:.3f} s, manifest {duration_s:.3f} s (off by {got - duration_s:+.3f} s)"
    return None


def make_file(kind: str, row: dict, root: Path, output: Path, opusenc: str | None) -> tuple[str, str | None, bool]:
    """Build and write one row's file; returns (its path, an error or None, whether it was scaled)."""
    target = output / kind / row["path"]
    try:
        pcm, scaled = build_file(row, root)
        if kind == "train":
            write_opus(target, pcm, opusenc)
        else:
            write_flac(target, pcm)
    except AudioFileError as error:
        return f"{kind}/{row['path']}", f"{error} (needed by {kind}/{row['path']})", False
    return f"{kind}/{row['path']}", None, scaled


# ---------------------------------------------------------------------------------------------- the run


def find_opusenc(choice: str) -> str | None:
    """opusenc's path, or None to encode with libsndfile."""
    if choice == "libsndfile":
        return None
    found = shutil.which("opusenc")
    if found is None and choice == "opusenc":
        raise PrepareError("opusenc not found (Debian/Ubuntu: apt-get install opus-tools; macOS: brew install opus-tools)"
                           "; --opus-encoder libsndfile encodes without it")
    if found is None:
        print(
            "note: opusenc not found (install opus-tools to encode exactly as the shipped set was); encoding Opus "
            "with libsndfile at 32 kbit/s instead: same lengths, slightly different samples",
            flush=True,
        )
    return found


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="folder to write train/ and val/ into")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--packages-dir", type=Path,
                        help="folder with the .deb files (missing ones are downloaded into it and kept)")
    source.add_argument("--unpacked-dir", type=Path,
                        help="packages already unpacked, as DIR/<package>/usr/...; nothing is downloaded")
    parser.add_argument("--sets", nargs="+", choices=sorted(MANIFESTS), default=["train", "val"])
    parser.add_argument("--train-manifest", type=Path, default=MANIFESTS["train"])
    parser.add_argument("--val-manifest", type=Path, default=MANIFESTS["val"])
    parser.add_argument("--opus-encoder", choices=["auto", "opusenc", "libsndfile"], default="auto",
                        help="auto: opusenc if installed (as the shipped set), else libsndfile")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE_S,
                        help=f"allowed |duration - duration_s| in seconds (default {TOLERANCE_S})")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="worker processes")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> int:
    started = time.monotonic()
    manifests = {kind: read_manifest(getattr(args, f"{kind}_manifest")) for kind in args.sets}
    todo = []  # (kind, row) whose file is missing or wrong
    for kind, rows in manifests.items():
        for row in rows:
            if not row["path"].endswith(EXTENSIONS[kind]):
                raise PrepareError(f"{kind} manifest row {row['path']}: a {kind} file must end in {EXTENSIONS[kind]}")
            if check_file(args.output / kind / row["path"], kind, float(row["duration_s"]), args.tolerance):
                todo.append((kind, row))
    total = sum(len(rows) for rows in manifests.values())
    print(f"{total - len(todo)} of {total} files already present and correct; {len(todo)} to make", flush=True)

    errors, scaled = [], []
    if todo:
        opusenc = find_opusenc(args.opus_encoder) if any(kind == "train" for kind, _ in todo) else None
        packages = {row["source_package"]: row["package_version"] for _, row in todo}
        with tempfile.TemporaryDirectory(prefix="esc-speech-") as work:
            if args.unpacked_dir is not None:
                roots = {package: args.unpacked_dir / package for package in packages}
                for package, root in roots.items():
                    if not root.is_dir():
                        raise PrepareError(f"--unpacked-dir has no folder {root} (unpack {package} there)")
            else:
                roots = package_roots(packages, args.packages_dir, Path(work))
            jobs = [(kind, row, roots[row["source_package"]], args.output, opusenc) for kind, row in todo]
            if args.jobs > 1 and len(jobs) > 1:
                pool = concurrent.futures.ProcessPoolExecutor(args.jobs)
                results = pool.map(make_file, *zip(*jobs), chunksize=4)
            else:
                pool, results = None, (make_file(*job) for job in jobs)
            try:
                for done, (path, error, was_scaled) in enumerate(results, 1):
                    if error:
                        errors.append(error)
                        print(f"error: {error}", file=sys.stderr, flush=True)
                    if was_scaled:
                        scaled.append(path)
                    if done % 50 == 0 or done == len(jobs):
                        print(f"made {done}/{len(jobs)} files ({time.monotonic() - started:.0f} s)", flush=True)
            finally:
                if pool is not None:
                    pool.shutdown(cancel_futures=True)

    for kind in manifests:  # the manifests beside the files, as shipped
        source = getattr(args, f"{kind}_manifest")
        with atomic_file(args.output / kind / "manifest.csv") as handle:
            handle.write(Path(source).read_bytes())

    mismatches = []
    for kind, rows in manifests.items():
        seconds = 0.0
        for row in rows:
            problem = check_file(args.output / kind / row["path"], kind, float(row["duration_s"]), args.tolerance)
            if problem:
                mismatches.append(f"{kind}/{row['path']}: {problem}")
            else:
                seconds += sf.info(str(args.output / kind / row["path"])).duration
        wrong = sum(m.startswith(f"{kind}/") for m in mismatches)
        print(f"{kind}: {len(rows) - wrong} of {len(rows)} files ({seconds / 60:.1f} min) within "
              f"{args.tolerance * 1000:g} ms of the manifest's durations")
    if scaled:
        shown = ", ".join(scaled[:3]) + (", ..." if len(scaled) > 3 else "")
        print(f"{len(scaled)} files scaled to a {PEAK_LIMIT} peak (resampling pushed them past full scale): {shown}")
    for mismatch in mismatches:
        print(f"mismatch: {mismatch}", file=sys.stderr)
    print(f"done in {time.monotonic() - started:.0f} s: {args.output}")
    return 1 if mismatches or errors else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return prepare(args)
    except PrepareError as error:
        print(f"prepare_speech_data.py: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
