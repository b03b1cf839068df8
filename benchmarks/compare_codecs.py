"""ESC against classical speech codecs on a folder of speech: PESQ-WB, STOI, mel distance, SI-SDR per bitrate.

    python benchmarks/compare_codecs.py [--data DIR] [--model DIR_OR_HUB_ID] [--codecs esc opus codec2 speex amr-wb]
                                        [--out-dir compare] [--limit N] [--max-seconds S] [--jobs N]

Codecs (see `esc_hf/eval/baselines.py`): esc at every bitrate of the model (`--model`, default the packaged model: the
output says which), Opus 6/9/12 kbps wideband, Codec2 3.2 kbps, Speex wideband, AMR-WB 6.6-12.65 kbps. A codec
whose tool is missing is skipped with the reason. `--jobs N` codes and scores the clips in N processes of one thread
each (one per core: the metrics and the classical codecs use one core whatever torch's threads).

Writes OUT/compare.csv (one row per file, codec and rate), OUT/summary.csv (means) and OUT/rate_distortion.png.
"""

import argparse
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esc_hf.eval.baselines import RATE, CodecUnavailable, all_codecs, compare, curves_by_codec, summarize  # noqa: E402
from esc_hf.eval.plotting import plot_rate_distortion  # noqa: E402
from esc_hf.training.evaluation import write_csv  # noqa: E402


def load_clips(folder: Path, limit: int | None, max_seconds: float | None) -> list[tuple[str, np.ndarray]]:
    from esc_hf.codec.audio_io import load_audio

    from esc_hf.codec.audio_io import list_audio_files

    try:
        paths = list_audio_files(folder)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    clips = []
    for path in paths[:limit]:
        audio, _ = load_audio(path, RATE)
        if max_seconds:
            audio = audio[: int(max_seconds * RATE)]
        clips.append((str(path.relative_to(folder)), audio))
    return clips


def describe_model(model, name: str | None) -> str:
    from esc_hf.codec.bitstream import codebook_fingerprint, config_fingerprint

    what = name or "the packaged default model (checkpoints/esc-base)"
    params = sum(p.numel() for p in model.parameters())
    return (
        f"ESC checkpoint: {what}; {params:,} parameters, codebooks of {model.config.codebook_size}, "
        f"config {config_fingerprint(model.config).hex()}, codebooks {codebook_fingerprint(model).hex()}"
    )


def run(
    data: Path, out_dir: Path, model_name: str | None = None, codec_names=None, limit=None, max_seconds=None, log=print,
    label: str | None = None, jobs: int = 1,
) -> tuple[list[dict], dict[str, str]]:
    """Runs the comparison; returns the summary and the codecs skipped, with why. `label` names the checkpoint in
    the outputs (default: `model_name`); `jobs` processes code and score the clips (`baselines.compare`)."""
    from esc_hf import load_model

    model = load_model(model_name)
    checkpoint = describe_model(model, label or model_name)
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
    rows = compare(clips, available, log, jobs)
    summary = summarize(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv([{**r, "checkpoint": checkpoint} for r in rows], out_dir / "compare.csv")
    write_csv([{**r, "checkpoint": checkpoint} for r in summary], out_dir / "summary.csv")
    title = textwrap.fill(f"{len(clips)} clips from {Path(data).name}/ — {checkpoint}", 150)
    plot_rate_distortion(curves_by_codec(summary), out_dir / "rate_distortion.png", title)
    return summary, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "tests" / "data", help="folder of speech (any rate)")
    parser.add_argument("--model", help="ESC model folder or Hub id (default: the packaged model)")
    parser.add_argument("--codecs", nargs="+", choices=["esc", "opus", "codec2", "speex", "amr-wb"])
    parser.add_argument("--out-dir", type=Path, default=Path("compare"))
    parser.add_argument("--limit", type=int, help="use only the first N files")
    parser.add_argument("--max-seconds", type=float, help="cut every clip to this length")
    parser.add_argument("--jobs", type=int, default=1, help="processes that code and score the clips, one thread each")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    summary, _ = run(args.data, args.out_dir, args.model, args.codecs, args.limit, args.max_seconds, jobs=args.jobs)
    print(f"\n{'codec':>7} {'kbps':>6} {'file kbps':>9} {'PESQ':>6} {'STOI':>6} {'mel':>6} {'SI-SDR':>7}")
    for r in summary:
        print(
            f"{r['codec']:>7} {r['kbps']:>6g} {r['file_kbps']:>9.2f} {r['pesq']:>6.2f} {r['stoi']:>6.3f} "
            f"{r['mel_distance']:>6.2f} {r['si_sdr']:>7.1f}"
        )
    written = ", ".join(str(args.out_dir / name) for name in ("compare.csv", "summary.csv", "rate_distortion.png"))
    print(f"\nwrote {written}")


if __name__ == "__main__":
    main()
