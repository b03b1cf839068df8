"""Turn a training run into the shipped checkpoint folder: weights, configs, evaluation beside Opus and AMR-WB on
the validation clips, curves and a model card that says how it was made.

    python examples/prepare_speech_data.py --output data/speech
    python examples/package_checkpoint.py --run runs/esc-base-cpu --val data/speech/val --train data/speech/train \
        --output checkpoints/esc-base --command "python examples/train.py ... --data_dir data/speech/train ..." \
        --hardware "2-core Xeon, bf16" --wall-time "2 h 10 min"

The card's command block shows the data step (`DATA_COMMAND`) first, then each `--command` in order.

A run that continued a shipped checkpoint (`--init_from`) is packaged with `--base` (that folder) and, for each
stage that made it, in order, `--base-config` (the stage's recipe) and `--base-step` (the step it ended at; the last
is the run's `--init_step`): the card describes every stage, the base's validation history and training log are
put before the run's, so that the curves start at step 0, and the card compares the new weights with the base's clip
by clip (`examples/compare_checkpoints.py`'s table, PESQ-WB), where the base's `eval_per_clip.csv` scored the same
clips; the table is printed too. Runs between the base and `--run` (a cycle that continued the base and that `--run`
continued in turn, never packaged) are named, in order, by `--between`; each ends at one of the last `--base-step`
values, and the card still compares with the base.

The folder is written beside `--output` and renamed into place when complete.
"""

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))

import bench_bf16_quality  # noqa: E402
import compare_checkpoints  # noqa: E402
import compare_codecs  # noqa: E402
import fit_entropy_model  # noqa: E402

from esc_hf import EscFeatureExtractor, EscModel  # noqa: E402
from esc_hf.utils.atomic_files import atomic_directory  # noqa: E402
from esc_hf.training.arguments import parse_arguments  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from esc_hf.eval.model_card import write_model_card  # noqa: E402
from esc_hf.eval.plotting import plot_val_curve  # noqa: E402
from esc_hf.training.evaluation import read_history, write_csv  # noqa: E402

DATA = """## Training data

616 Ogg Opus files (32 kbit/s, 16 kHz mono), **2.19 h** of human speech in 22 languages and 27 voice groups,
from two Debian bookworm packages: `tuxpaint-stamps-default` 2022.06.04-1 (spoken stamp descriptions,
GPL-2.0-or-later, Tux Paint volunteers) and `klettres-data` 4:22.12.3-1 (letters and syllables by native speakers,
GPL-2.0-or-later, KDE KLettres). Validation: 78 FLAC files, 0.141 h, 5 voice groups not in training, 3 languages.
These are short words, letters and phrases, not conversational speech: expect the codec to do best on material
like it. The weights are a work trained on GPL-2.0-or-later data; this card does not give legal advice on what that
implies. Both sets are rebuilt from those packages by `python examples/prepare_speech_data.py --output data/speech`
(per-file manifests in `examples/data/`).
"""
# Printed before the training command(s) on the card: it rebuilds the data that DATA describes.
DATA_COMMAND = "python examples/prepare_speech_data.py --output data/speech"


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _table(summary: list[dict]) -> str:
    return _markdown(["codec", "kbps", "real kbps", "PESQ-WB", "STOI", "mel distance", "SI-SDR (dB)"],
                     [[r["codec"], f"{float(r['kbps']):g}", f"{float(r['file_kbps']):.2f}", f"{float(r['pesq']):.3f}",
                       f"{float(r['stoi']):.3f}", f"{float(r['mel_distance']):.3f}", f"{float(r['si_sdr']):.2f}"]
                      for r in summary])  # fmt: skip


def _bf16_table(rows: list[dict]) -> str:
    pairs = (("pesq", "PESQ-WB", ".3f"), ("stoi", "STOI", ".3f"), ("si_sdr", "SI-SDR", ".2f"))
    return _markdown(["kbps", "codes = float32", *(f"{label} fp32 → bf16" for _, label, _ in pairs)],
                     [[f"{r['kbps']:g}", f"{r['codes_equal']:.3f}",
                       *(f"{r[f'{m}_fp32']:{fmt}} → {r[f'{m}_bf16']:{fmt}}" for m, _, fmt in pairs)]
                      for r in rows])  # fmt: skip


def _recipe(config: str, **flags: str):
    """The TrainingArguments a config file gives (the data folders play no part in packaging)."""
    argv = ["--config", config, "--data_dir", "-"]
    for name, value in flags.items():
        argv += [f"--{name}", value]
    return parse_arguments(argv)


def _stages(configs: list[str], ends: list[int]) -> tuple[str, float]:
    """The card's description of the training stages (stage k ran steps ends[k-1]+1 to ends[k] with configs[k], each
    after the first continued from the previous one's weights) and the seconds of audio per step, averaged."""
    lines, audio, start = [], 0.0, 0
    for number, (config, end) in enumerate(zip(configs, ends), 1):
        # max_steps as run (a cycle's config names the step its first cycle ended at; later ones pass --max_steps)
        recipe = _recipe(config, max_steps=str(end), **({"init_from": "-", "init_step": str(start)} if start else {}))
        audio += (end - start) * recipe.batch_size * recipe.gradient_accumulation_steps * recipe.crop_seconds
        origin = ("from scratch" if not start else f"continued from those weights (`--init_from`, `--init_step "
                  f"{start}`, fresh optimizer moments)")  # fmt: skip
        lines.append(f"{number}. steps {start + 1:,}–{end:,} {origin}, recipe `{config}` ({recipe.recipe_summary()})")
        start = end
    if len(lines) == 1:
        return f"Recipe: `{configs[0]}` ({recipe.recipe_summary()}).", audio / ends[-1]
    words = "Two Three Four Five Six Seven Eight Nine Ten Eleven Twelve".split()
    count = words[len(lines) - 2] if len(lines) - 2 < len(words) else str(len(lines))
    return f"{count} stages:\n\n" + ";\n".join(lines) + ".", audio / ends[-1]


def _merged_history(parts: list[tuple[Path, int]], run: Path, tmp: Path, warm_start_steps: int) -> None:
    """The eval_history.csv and train_log.jsonl of each (folder, last step) of `parts` in order (the base, then the
    runs between it and `run`), each from past the previous one's last step to its own, then the run's, written into
    `tmp`, with the validation curve drawn over all of them."""
    history, lines, start = [], [], -1
    for folder, end in parts:
        history += [r for r in read_history(folder / "eval_history.csv") if start < r["step"] <= end]
        lines += [line for line in (folder / "train_log.jsonl").read_text().splitlines()
                  if line.strip() and start < json.loads(line)["step"] <= end]  # fmt: skip
        start = end
    history += read_history(run / "eval_history.csv")
    write_csv(history, tmp / "eval_history.csv")
    plot_val_curve(history, tmp / "val_curve.png", warm_start_steps)
    lines += [line for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    (tmp / "train_log.jsonl").write_text("\n".join(lines) + "\n")


def _against_base(base: Path, base_step: int, candidate: Path) -> str:
    """The card's paired comparison with the weights the run continued, or why there is none."""
    heading = f"### Against step {base_step:,}\n\n"
    old, new = base / "eval_per_clip.csv", candidate / "eval_per_clip.csv"
    try:
        table = compare_checkpoints.table(old, new, ["pesq"], "esc", 0.95)
    except ValueError as error:  # a base packaged before per-clip scores, or scored on other clips (--limit)
        # The card names no path of the machine that packaged it.
        why = str(error).replace(str(old), "the base's eval_per_clip.csv").replace(str(new), "eval_per_clip.csv")
        return f"{heading}Not compared clip by clip with the weights this run continued: {why}."
    print(table)
    return (
        f"{heading}PESQ-WB of these weights minus that of the weights they continued (`--base`), clip by clip on the "
        "same clips (`examples/compare_checkpoints.py`): the mean difference, its 95 % bootstrap interval over the "
        "clips (one that holds 0 is within what another draw of clips like these could give), the share of clips "
        f"improved and the change in the files' real rate.\n\n{table}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True,
                        help="training output folder (its latest checkpoint is shipped)")
    parser.add_argument("--val", type=Path, required=True, help="validation clips")
    parser.add_argument("--train", type=Path, required=True, help="training clips (the .esc v2 entropy tables)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--config", default="examples/configs/esc-base-cpu.yaml", help="the recipe")
    parser.add_argument("--command", required=True, action="append",
                        help="the exact training command; repeat it for each stage (with --base, the base's first), "
                             "or to add a '# ...' comment line")  # fmt: skip
    parser.add_argument("--hardware", required=True)
    parser.add_argument("--wall-time", required=True)
    parser.add_argument("--note", default="", help="what the numbers mean, how far from the target")
    parser.add_argument("--limit", type=int, help="evaluate on the first N clips only (a quick look)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes, one thread each, that encode the training clips, code and score the val ones")
    parser.add_argument("--base", type=Path, help="the shipped folder the run continued (its --init_from)")
    parser.add_argument("--base-config", action="append", default=[],
                        help="with --base: the recipe of a stage that made it; repeat it for each stage, in order")
    parser.add_argument("--base-step", action="append", type=int, default=[],
                        help="with --base: the step that stage ended at (the last is the run's --init_step)")
    parser.add_argument("--between", type=Path, action="append", default=[],
                        help="with --base: a training run that continued the base (or the previous --between) and "
                             "that --run continued; repeat in order, each ending at one of the last --base-steps")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if len({args.base is None, not args.base_config, not args.base_step}) > 1:
        parser.error("--base, --base-config and --base-step go together")
    if len(args.base_config) != len(args.base_step):
        parser.error("give one --base-step for each --base-config")
    if any(b <= a for a, b in zip([0, *args.base_step], args.base_step)):
        parser.error("--base-step values must be at least 1 and increasing")
    if args.between and len(args.between) >= len(args.base_step):
        parser.error("--between needs --base, and one --base-step for each --between run and one for the base")
    # The base ends at its own step, each run between at the next --base-step.
    parts = list(zip([args.base, *args.between], args.base_step[len(args.base_step) - len(args.between) - 1 :]))
    for folder, end in parts[1:]:
        try:
            ends = [r["step"] for r in read_history(folder / "eval_history.csv")]
        except ValueError as error:
            parser.error(f"--between {folder}: {error}")
        if not ends or max(ends) != end:
            parser.error(f"--between {folder} does not end at --base-step {end} (its eval_history.csv: "
                         f"{max(ends) if ends else 'empty'})")  # fmt: skip
    for option, (folder, _) in zip(["--base", *["--between"] * len(args.between)], parts):
        if not (folder / "train_log.jsonl").is_file():  # merged into the card's log
            parser.error(f"{option} {folder} has no train_log.jsonl")

    # The latest complete checkpoint of the run (a stopped run has no final/ folder).
    checkpoints = [p for p in (args.run / "checkpoints").glob("step-*") if p.name[5:].isdigit()]
    if not checkpoints:
        parser.error(f"--run {args.run} has no checkpoints/step-N folder")
    latest = max(checkpoints, key=lambda p: int(p.name[5:]))
    state = json.loads((latest / "trainer_state.json").read_text())
    base_step = args.base_step[-1] if args.base_step else 0
    recipe = _recipe(args.config, max_steps=str(state["step"]),
                     **({"init_from": str(args.base), "init_step": str(base_step)} if base_step else {}))
    model = EscModel(recipe.model_config())
    model.load_state_dict(load_file(str(latest / "model.safetensors")))
    model.eval()
    with atomic_directory(args.output) as tmp:
        model.save_pretrained(tmp)
        EscFeatureExtractor(sampling_rate=model.config.sampling_rate).save_pretrained(tmp)
        # Before the evaluation, which measures real v2 files.
        fit_entropy_model.fit_into(tmp, args.train, jobs=args.jobs)
        summary, skipped = compare_codecs.run(args.val, tmp, str(tmp), ["esc", "opus", "amr-wb"], args.limit,
                                              label=f"checkpoints/esc-base at step {state['step']}", jobs=args.jobs)
        (tmp / "compare.csv").rename(tmp / "eval_per_clip.csv")
        (tmp / "summary.csv").rename(tmp / "eval.csv")
        if args.base is not None:
            _merged_history(parts, args.run, tmp, _recipe(args.base_config[0]).warm_start_steps)
        else:
            for name in ("val_curve.png", "eval_history.csv", "train_log.jsonl"):
                if (args.run / name).exists():
                    shutil.copy(args.run / name, tmp / name)
        esc = [r for r in summary if r["codec"] == "esc"]
        clips = compare_codecs.load_clips(args.val, args.limit, None)
        bf16 = bench_bf16_quality.measure(model, clips, [1.5, 9.0], args.jobs)
        write_csv(bf16, tmp / "bf16_quality.csv")
        stages, seconds = _stages([*args.base_config, args.config], [*args.base_step, state["step"]])
        commands = "\n".join(args.command)
        next_cycle = ""
        if recipe.restart_schedule:  # the same number of steps again, in a new cycle
            next_cycle = (f"; another cycle: `--config {args.config} --init_step {state['step']} "
                          f"--max_steps {2 * state['step'] - base_step}`")  # fmt: skip
        against = "" if args.base is None else _against_base(*parts[0], candidate=tmp) + "\n\n"
        training = (
            f"{DATA}\n## Training\n\nTrained with `esc_hf`'s own trainer for **{state['step']:,} steps** "
            f"({state['step'] * seconds / 3600:.1f} h of audio seen) on {args.hardware}, "
            f"{args.wall_time} of wall time. {stages}\n\n"
            "The exact commands (the first downloads the two Debian packages, about 200 MB, and rebuilds the data "
            "set, checking every file's length against the manifests):\n\n"
            f"```bash\n{DATA_COMMAND}\n{commands}\n```\n\n"
            "Continue it anywhere (a GPU is ~100× faster) with `--init_from` this folder and `--init_step "
            f"{state['step']}` (fresh optimizer moments, as at the VQ switch{next_cycle}), or start over with the "
            "config.\n\n"
            f"## Evaluation\n\n{len(clips)} validation clips "
            f"(`benchmarks/compare_codecs.py`, same clips for every codec; ESC through its real `.esc` bitstream):\n\n"
            f"{_table(summary)}\n\n{args.note}\n\n{against}"
            "### Opt-in bf16 backbone\n\n`model.set_backbone_dtype(torch.bfloat16)` (the faster CPU/GPU path of "
            "`benchmarks/bench_codec.py`) on the same clips, each path decoding its own codes "
            f"(`benchmarks/bench_bf16_quality.py`; `bf16_quality.csv`):\n\n{_bf16_table(bf16)}\n\n"
            "`eval.csv` (means), `eval_per_clip.csv`, `rate_distortion.png` (all codecs) and `val_curve.png` "
            "(validation during training; `eval_history.csv`, `train_log.jsonl`) are in this folder, with "
            "`entropy_model.safetensors`: the `.esc` v2 entropy-coding tables, fitted on the training clips' codes by "
            "`examples/fit_entropy_model.py`.\n"
        )
        if skipped:
            training += f"\nNot measured here: {skipped}.\n"
        write_model_card(tmp, model, title="ESC-Base (esc_hf, CPU-trained)", training=training,
                         source=f"trained by the esc_hf project on a CPU, step {state['step']}",
                         metrics=[{**r, "kbps": float(r["kbps"])} for r in esc])  # fmt: skip
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
