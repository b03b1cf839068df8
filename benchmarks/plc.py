"""ESC and Opus under packet loss: the same loss patterns over 20 ms packets, PESQ-WB, STOI and PLCMOS.

    python benchmarks/plc.py --clips data/speech/val [--every 6] [--model DIR] [--output-dir docs] [--framing-only]

Writes `plc.csv` (one row per clip, codec, rate, method and loss condition), `plc_summary.csv` (means),
`plc_framing.csv` (network packet sizes, wire rates, latencies, and what entropy-coded layers would take),
`plc.png` (quality against loss rate) and `plc_spectrogram.png` (one clip at 10 % loss) to the output folder, and
prints the tables. PLCMOS needs `pip install esc_hf[bench]` (speechmos).

Loss conditions: none; random (Bernoulli) at 5, 10, 20 and 30 %; bursty (Gilbert–Elliott, 10 %, bursts of 3
packets on average); every pattern seeded by the clip's index and the condition, and shared by ESC and Opus.
ESC: 9 kbps with each concealment method and 6 kbps with interpolation, decoded by its streaming decoder from
network packets, in chunks of `--chunk-frames` (what a lost frame gets does not depend on it; see
`esc_hf.eval.packet_loss.esc_under_loss`). Opus: libopus at 6, 9 and 12 kbps, 20 ms frames, its own
concealment. PLCMOS (the `speechmos` package, its model inside the wheel) is left out if it is not installed.

The click check (`gap_peak_ratio`): around every gap, ESC's peak (from 20 ms before to 20 ms after) over the
loss-free decode's peak from 100 ms before to 100 ms after, and the same of the sample-to-sample steps; a click
or a burst of noise would push them above 1.
"""

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from esc_hf.codec.audio_io import list_audio_files, load_audio
from esc_hf.codec.bitstream import EscHeader
from esc_hf.codec.concealment import CONCEAL_METHODS
from esc_hf.codec.entropy import load_entropy_model
from esc_hf.codec.loading import load_model
from esc_hf.codec.network import NETWORK_OVERHEAD, network_packet_size
from esc_hf.codec.streaming import ChunkPlan
from esc_hf.eval.metrics import pesq_wb, stoi
from esc_hf.eval.packet_loss import (
    LOSS_RATES,
    OpusLibrary,
    bernoulli_losses,
    esc_network_packets,
    esc_under_loss,
    gap_peak_ratio,
    gilbert_elliott_losses,
)

CONDITIONS = [("none", 0.0)] + [("random", rate) for rate in LOSS_RATES] + [("bursty", 0.10)]
OPUS_RATES = (6.0, 9.0, 12.0)


def _plcmos():
    try:
        from speechmos import plcmos
    except ImportError:
        return None
    # PLCMOS refuses samples outside [-1, 1], and a decoder's float output can overshoot where a played or
    # 16-bit file would clip: score what a listener would hear.
    return lambda audio: float(plcmos.run(np.clip(audio, -1.0, 1.0), sr=16000)["plcmos"])


def _pattern(frames: int, condition: str, rate: float, seed: int) -> np.ndarray:
    if condition == "none":
        return np.zeros(frames, dtype=bool)
    if condition == "random":
        return bernoulli_losses(frames, rate, seed)
    return gilbert_elliott_losses(frames, rate, seed=seed)


def framing_table(model, files) -> list[dict]:
    """Network packet sizes, wire rates and latencies at 20, 40 and 100 ms; and, measured at 9 kbps on `files`,
    the payload that entropy coding each layer (the `.esc` file tables, plus a length byte per layer but the
    last) would take instead of bit-packing, as a ratio: blank for a model without tables (a training run's
    folder has none; `examples/package_checkpoint.py` fits them)."""
    config = model.config
    tables = load_entropy_model(model)
    if tables is None:
        print("no entropy tables in the model's folder: the entropy-coded payload ratio is left blank")
        files = []
    codes = []
    for path in files:
        audio, _ = load_audio(path, config.sampling_rate)
        with torch.inference_mode():
            codes.append(model.encode(torch.from_numpy(audio)[None, None]).audio_codes[0].numpy())
    rows = []
    for frames in (1, 2, 5):
        plan = ChunkPlan.for_model(model, frames)
        latency = plan.latency_seconds(config.sampling_rate, frames)
        packed = coded = 0
        for clip in codes:
            for start in range(0, clip.shape[-1] - frames + 1, frames):
                part = clip[..., start : start + frames]
                packed += -(-part.size * config.bits_per_codebook // 8)
                layers = [tables.encode_layer(n, part[n], part[n - 1] if n else None) for n in range(len(part))]
                coded += sum(map(len, layers)) + len(layers) - 1
        ratio = round(coded / packed, 3) if codes else ""
        for streams in range(1, config.num_streams + 1):
            size = network_packet_size(_header(model, streams, frames), frames, streams)
            seconds = frames * config.samples_per_code_frame / config.sampling_rate
            rows.append({
                "ms_per_packet": round(seconds * 1000), "kbps": streams * 1.5, "bytes_per_packet": size,
                "framing_bytes": NETWORK_OVERHEAD, "wire_kbps": round(size * 8 / seconds / 1000, 2),
                "latency_s": round(latency, 3),
                "entropy_coded_payload_ratio_9kbps": ratio if streams == config.num_streams else "",
            })  # fmt: skip
    return rows


def _header(model, streams: int, frames: int):
    return EscHeader.for_model(model, streams, frames_per_packet=frames)


def run(args, model) -> tuple[list[dict], dict | None]:
    spf = model.config.samples_per_code_frame
    opus = OpusLibrary()
    plcmos = _plcmos()
    files = list_audio_files(args.clips)[:: args.every]
    rows = []
    spectrogram = None
    for index, path in enumerate(files):
        audio, _ = load_audio(path, model.config.sampling_rate)
        frames = model.config.code_frames_for_samples(audio.size)
        streams = {9.0: model.config.num_streams_for_bandwidth(9.0), 6.0: model.config.num_streams_for_bandwidth(6.0)}
        packets = {kbps: esc_network_packets(model, audio, n) for kbps, n in streams.items()}
        clean = {}
        for c, (condition, rate) in enumerate(CONDITIONS):
            lost = _pattern(frames, condition, rate, seed=1000 * index + c)
            runs = [("esc", 9.0, method) for method in CONCEAL_METHODS] + [("esc", 6.0, "interpolate")]
            runs += [("opus", kbps, "opus plc") for kbps in OPUS_RATES]
            for codec, kbps, method in runs:
                if codec == "esc":
                    header, sent = packets[kbps]
                    if condition == "none" and kbps in clean:
                        decoded = clean[kbps]  # without loss every method decodes the same samples
                    else:
                        decoded = esc_under_loss(model, header, sent, lost, method, args.chunk_frames)
                    clean.setdefault(kbps, decoded)
                    packet_bytes = float(np.mean([len(p) for p in sent]))
                else:
                    decoded, packet_bytes = opus.code(audio, kbps, lost)
                esc = codec == "esc"
                row = {
                    "file": path.name, "codec": codec, "kbps": kbps, "method": method, "condition": condition,
                    "loss": rate, "lost": float(lost.mean()), "packet_bytes": round(packet_bytes, 2),
                    "pesq": pesq_wb(audio, decoded), "stoi": stoi(audio, decoded),
                    "plcmos": plcmos(decoded) if plcmos else float("nan"),
                    "peak_ratio": gap_peak_ratio(decoded, clean[kbps], lost, spf) if esc else float("nan"),
                    "step_ratio": gap_peak_ratio(decoded, clean[kbps], lost, spf, steps=True) if esc else float("nan"),
                }  # fmt: skip
                rows.append(row)
                if index == 0 and condition == "random" and rate == 0.10 and kbps == 9.0:
                    spectrogram = spectrogram or {"audio": audio, "lost": lost}
                    spectrogram[f"{codec} {method}"] = decoded
            print(f"{path.name} {condition} {rate:.0%} done", flush=True)
    return rows, spectrogram


def summarize(rows: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for row in rows:
        groups[row["codec"], row["kbps"], row["method"], row["condition"], row["loss"]].append(row)
    summary = []
    for (codec, kbps, method, condition, loss), members in groups.items():
        mean = {k: float(np.nanmean([m[k] for m in members])) for k in ("pesq", "stoi", "plcmos", "lost")}
        peak = [m["peak_ratio"] for m in members if not math.isnan(m["peak_ratio"])]
        step = [m["step_ratio"] for m in members if not math.isnan(m["step_ratio"])]
        summary.append({
            "codec": codec, "kbps": kbps, "method": method, "condition": condition, "loss": loss,
            "clips": len(members), **{k: round(v, 4) for k, v in mean.items()},
            "max_peak_ratio": round(max(peak), 3) if peak else float("nan"),
            "max_step_ratio": round(max(step), 3) if step else float("nan"),
        })  # fmt: skip
    return summary


def plot(summary: list[dict], spectrogram: dict | None, folder: Path, have_plcmos: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["pesq", "stoi"] + (["plcmos"] if have_plcmos else [])
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4))
    curves = defaultdict(list)
    for row in summary:
        if row["condition"] in ("none", "random"):
            curves[f"{row['codec']} {row['kbps']:g} kbps, {row['method']}"].append(row)
    for axis, metric in zip(axes, metrics):
        for label, points in sorted(curves.items()):
            points = sorted(points, key=lambda r: r["loss"])
            style = "-o" if label.startswith("esc") else "--s"
            axis.plot([100 * p["loss"] for p in points], [p[metric] for p in points], style, label=label, ms=4)
        axis.set_xlabel("random packet loss (%)")
        axis.set_ylabel(metric.upper())
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(folder / "plc.png", dpi=120)
    plt.close(figure)
    if spectrogram is None:
        return
    names = ["audio", "esc silence", "esc repeat", "esc interpolate", "opus opus plc"]
    figure, axes = plt.subplots(len(names), 1, figsize=(10, 2.2 * len(names)), sharex=True)
    lost = spectrogram["lost"]
    for axis, name in zip(axes, names):
        signal = spectrogram[name]
        axis.specgram(signal + 1e-9, NFFT=512, Fs=16000, noverlap=384, cmap="magma", vmin=-120)
        for frame in np.flatnonzero(lost):
            axis.axvspan(frame * 0.02, frame * 0.02 + 0.02, ymin=0.96, ymax=1.0, color="cyan")
        axis.set_ylabel(name if name != "audio" else "original", fontsize=8)
    axes[-1].set_xlabel("seconds (cyan: lost 20 ms packets, 10 % random loss; ESC and Opus at 9 kbps)")
    figure.tight_layout()
    figure.savefig(folder / "plc_spectrogram.png", dpi=100)
    plt.close(figure)


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", required=True, help="folder of audio clips (the val set)")
    parser.add_argument("--every", type=int, default=4, help="use every N-th clip (sorted by path)")
    parser.add_argument("--model", help="model folder (default: the packaged model)")
    parser.add_argument("--chunk-frames", type=int, default=50, help="ESC decoder chunk (code frames)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output-dir", default=".", help="folder for the CSVs and plots")
    parser.add_argument("--framing-only", action="store_true", help="only the packet sizes (plc_framing.csv)")
    args = parser.parse_args()
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    framing = framing_table(model, list_audio_files(args.clips)[:: args.every * 5])
    _write(folder / "plc_framing.csv", framing)
    for row in framing:
        print(row)
    if args.framing_only:
        return
    rows, spectrogram = run(args, model)
    summary = summarize(rows)
    _write(folder / "plc.csv", rows)
    _write(folder / "plc_summary.csv", summary)
    plot(summary, spectrogram, folder, _plcmos() is not None)
    print(
        f"{'codec':6} {'kbps':>5} {'method':12} {'condition':9} {'loss':>5} {'pesq':>6} {'stoi':>6} {'plcmos':>6} peak"
    )
    for row in summary:
        print(f"{row['codec']:6} {row['kbps']:5g} {row['method']:12} {row['condition']:9} {row['loss']:5.0%} "
              f"{row['pesq']:6.3f} {row['stoi']:6.3f} {row['plcmos']:6.3f} {row['max_peak_ratio']} "
              f"{row['max_step_ratio']}")  # fmt: skip


if __name__ == "__main__":
    main()
