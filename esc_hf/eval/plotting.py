"""The figures the project draws: rate–distortion curves, training validation curves and spectrograms (matplotlib,
PNG, written atomically)."""

from pathlib import Path

import numpy as np

from ..utils.atomic_files import atomic_file
from .metrics import METRICS, stream_usage

LABELS = {"pesq": "PESQ-WB ↑", "stoi": "STOI ↑", "mel_distance": "mel distance ↓", "si_sdr": "SI-SDR (dB) ↑"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int = 90) -> None:
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    _pyplot().close(fig)


def plot_rate_distortion(curves: dict[str, list[dict]], path: str | Path, title: str = "",
                         metrics: tuple[str, ...] = METRICS, panel_size: tuple[float, float] = (4, 3.6),
                         dpi: int = 90) -> None:  # fmt: skip
    """One panel per metric in a row, one line per name in `curves` (each a list of rows with `kbps`). The
    listening report draws each metric as its own small figure (`metrics=(metric,)`) so that a phone can show the
    panels one under the other at full width."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(panel_size[0] * len(metrics), panel_size[1]), squeeze=False)
    axes = axes[0]
    for axis, metric in zip(axes, metrics):
        for name, rows in curves.items():
            axis.plot([r["kbps"] for r in rows], [r[metric] for r in rows], marker="o", label=name)
        axis.set_xlabel("kbps")
        axis.set_title(LABELS[metric])
        axis.grid(alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_val_curve(history: list[dict], path: str | Path, warm_start_steps: int) -> None:
    """Validation PESQ and mel distance against the step (unquantized during the warm start, then at the top rate),
    and the share of its codes that each stream uses (mean over its codebooks), once there are codes."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    warm = [r for r in history if r["streams"] == 0]
    quantized = [r for r in history if r["streams"] != 0]
    for axis, metric, label in zip(axes, ("pesq", "mel_distance"), ("PESQ-WB ↑", "mel distance ↓")):
        if warm:
            axis.plot([r["step"] for r in warm], [r[metric] for r in warm], marker="o", label="warm start (no VQ)")
        if quantized:
            axis.plot([r["step"] for r in quantized], [r[metric] for r in quantized], marker="o",
                      label=f"{quantized[-1]['kbps']:g} kbps")  # fmt: skip
        axis.axvline(warm_start_steps, color="grey", linestyle=":", label="VQ on")
        axis.set_title(f"validation {label}")
    axes[0].legend()
    usage = [(r["step"], stream_usage(r)) for r in quantized]
    usage = [(step, streams) for step, streams in usage if streams and not any(np.isnan(list(streams.values())))]
    for stream in sorted({s for _, streams in usage for s in streams}):
        points = [(step, streams[stream]) for step, streams in usage if stream in streams]
        axes[2].plot(*zip(*points), marker="o", label=f"stream {stream}")
    axes[2].set_ylim(0, 1.02)
    axes[2].set_title("codes used, share per stream ↑")
    if usage:
        axes[2].legend(fontsize="small", ncol=2)
    for axis in axes:
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


RUN_METRICS = ("pesq", "mel_distance", "si_sdr", "utilization")


def plot_runs(histories: dict[str, list[dict]], path: str | Path, metrics: tuple[str, ...] = RUN_METRICS,
              title: str = "") -> None:  # fmt: skip
    """Several training runs' validation curves on shared axes: one panel per metric, one line per name in
    `histories` (rows of `eval_history.csv`; the warm start's unquantized rows are left out), against the step.
    Runs compared this way should share their evaluation clips and bitrate."""
    plt = _pyplot()
    labels = {**LABELS, "utilization": "codes used, share ↑"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), squeeze=False)
    axes = axes[0]
    for axis, metric in zip(axes, metrics):
        for name, rows in histories.items():
            points = [(r["step"], r[metric]) for r in rows if r["streams"] != 0 and metric in r]
            if points:
                axis.plot(*zip(*points), marker="o", label=name)
        axis.set_xlabel("step")
        axis.xaxis.set_major_locator(plt.MaxNLocator(nbins=4, integer=True))  # five-digit steps overlap otherwise
        axis.set_title(labels.get(metric, metric))
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def spectrogram_db(audio: np.ndarray, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Magnitude STFT of `(samples,)` in dB (Hann window), `(n_fft // 2 + 1, frames)`."""
    audio = np.pad(audio, (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop] * np.hanning(n_fft)
    return 20 * np.log10(np.abs(np.fft.rfft(frames, axis=-1)).T + 1e-6)


def plot_spectrograms(signals: dict[str, np.ndarray], path: str | Path, sampling_rate: int,
                      range_db: float = 80.0) -> None:  # fmt: skip
    """One spectrogram per name in `signals` (each `(samples,)`), one under the other on one colour scale: from the
    first signal's peak down `range_db`, so that the others (decodes of it) are seen as louder or quieter."""
    plt = _pyplot()
    spectrograms = {name: spectrogram_db(audio) for name, audio in signals.items()}
    top = float(next(iter(spectrograms.values())).max())
    fig, axes = plt.subplots(len(signals), 1, figsize=(10, 2.2 * len(signals)), sharex=True, squeeze=False)
    for axis, (name, spectrogram) in zip(axes[:, 0], spectrograms.items()):
        seconds = signals[name].size / sampling_rate
        axis.imshow(spectrogram, origin="lower", aspect="auto", cmap="magma", vmin=top - range_db, vmax=top,
                    extent=(0, seconds, 0, sampling_rate / 2000))  # fmt: skip
        axis.set_ylabel("kHz")
        axis.set_title(name, fontsize=10)
    axes[-1, 0].set_xlabel("s")
    fig.tight_layout()
    _save(fig, path, dpi=80)
