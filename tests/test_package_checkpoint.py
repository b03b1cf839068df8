"""examples/package_checkpoint.py: a run that continued the shipped checkpoint becomes a complete checkpoint folder
whose card describes every stage that made it, with the histories of all of them, and compares it clip by clip with
the weights it continued."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
from safetensors.torch import load_file

from conftest import SPEECH, run_script
from esc_hf.training.evaluation import read_history, write_csv


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "package_checkpoint.py"
COMPARE_CODECS = ROOT / "benchmarks" / "compare_codecs.py"
SHIPPED = ROOT / "checkpoints" / "esc-base"
CLIPS = ROOT / "tests" / "data"


# The shipped weights as the end of a second stage (whatever cycles made them) that a third continued.
HISTORY = read_history(SHIPPED / "eval_history.csv")
END = HISTORY[-1]["step"]
STAGES = ["--base", SHIPPED, "--base-config", "examples/configs/esc-base-cpu.yaml", "--base-step", 10000,
          "--base-config", "examples/configs/esc-base-cpu-cycle.yaml", "--base-step", END]  # fmt: skip


def training_run(run: Path, step: int) -> Path:
    """A run folder as the trainer leaves it at `step`, with the shipped weights."""
    checkpoint = run / "checkpoints" / f"step-{step:08d}"
    checkpoint.mkdir(parents=True)
    shutil.copy(SHIPPED / "model.safetensors", checkpoint)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": step, "switched": True}))
    write_csv([{**HISTORY[-1], "step": step}], run / "eval_history.csv")
    (run / "train_log.jsonl").write_text(json.dumps({"step": step, "train/loss": 1.7}) + "\n")
    return run


@pytest.fixture
def run(tmp_path):
    """A run two steps past the shipped weights (a third cycle), with clips to fit entropy tables on."""
    run = training_run(tmp_path / "run", END + 2)
    # The entropy tables are fitted on at least ten clips: pieces of the test clips.
    train = run / "train"
    train.mkdir()
    for path in SPEECH:
        audio, rate = sf.read(str(path), dtype="float32")
        for piece, start in enumerate(range(0, 5 * audio.size // 6, audio.size // 6)):
            sf.write(str(train / f"{path.stem}-{piece}.flac"), audio[start : start + audio.size // 3], rate)
    return run


def package(run: Path, output: Path, *extra, capsys) -> tuple[int, str]:
    code, _, err = run_script(SCRIPT, "--run", run, "--val", CLIPS, "--train", run / "train", "--output", output,
                              "--config", "examples/configs/esc-base-cpu-cycle.yaml", "--command", "first",
                              "--command", "second", "--command", "third", "--hardware", "a test machine",
                              "--wall-time", "no time", *extra, capsys=capsys, cwd=ROOT)  # fmt: skip
    return code, err


def test_a_third_stage_is_described_after_the_first_two(run, tmp_path, capsys):
    output = tmp_path / "esc-base"
    code, err = package(run, output, *STAGES, "--jobs", 2, capsys=capsys)  # the clips scored in two processes
    assert code == 0, err[-3000:]
    card = (output / "README.md").read_text()
    assert "Three stages:" in card and f"**{END + 2:,} steps**" in card
    assert "1. steps 1–10,000 from scratch, recipe `examples/configs/esc-base-cpu.yaml`" in card
    assert f"2. steps 10,001–{END:,} continued from those weights (`--init_from`, `--init_step 10000`" in card
    assert f"3. steps {END + 1:,}–{END + 2:,} continued from those weights (`--init_from`, `--init_step {END}`" in card
    assert "cosine schedule restarted at step 10,000" in card and f"cosine schedule restarted at step {END:,}" in card
    assert "first\nsecond\nthird\n```" in card
    hint = f"another cycle: `--config examples/configs/esc-base-cpu-cycle.yaml --init_step {END + 2} --max_steps"
    assert f"{hint} {END + 4}`" in card
    steps = [row["step"] for row in read_history(output / "eval_history.csv")]
    assert steps == sorted(steps) and steps[-2:] == [END, END + 2] and 10000 in steps
    log = [json.loads(line)["step"] for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert log[-2:] == [END, END + 2]
    weights = load_file(str(output / "model.safetensors"))
    shipped = load_file(str(SHIPPED / "model.safetensors"))
    assert weights.keys() == shipped.keys() and all(weights[k].equal(shipped[k]) for k in weights)
    assert (output / "entropy_model.safetensors").exists() and (output / "val_curve.png").exists()
    assert not list(tmp_path.glob(".*tmp*"))  # written beside --output and renamed
    # The shipped folder's per-clip scores are of the val clips, not of these: no difference over other clips.
    against = card.split(f"### Against step {END:,}\n\n")[1]
    assert against.startswith("Not compared clip by clip with the weights this run continued: at 1.5 kbps the two "
                              "CSVs score different clips")  # fmt: skip
    assert str(SHIPPED) not in card and str(tmp_path) not in card


def test_the_card_compares_the_weights_with_the_base_clip_by_clip(run, tmp_path, capsys):
    """A base scored on the same clips, by the same weights through its own entropy tables (the same codes, so the
    same audio), but with PESQ-WB lowered by 0.1 on every row: the new weights are 0.1 better on every clip."""
    base = tmp_path / "base"
    base.mkdir()
    for name in ("eval_history.csv", "train_log.jsonl"):
        shutil.copy(SHIPPED / name, base)
    code, _, err = run_script(COMPARE_CODECS, "--data", CLIPS, "--model", SHIPPED, "--codecs", "esc", "--out-dir",
                              tmp_path / "scored", capsys=capsys, cwd=ROOT)  # fmt: skip
    assert code == 0, err[-3000:]
    with (tmp_path / "scored" / "compare.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["pesq"] = float(row["pesq"]) - 0.1
    write_csv(rows, base / "eval_per_clip.csv")
    output = tmp_path / "esc-base"
    code, err = package(run, output, *[base if s is SHIPPED else s for s in STAGES], capsys=capsys)
    assert code == 0, err[-3000:]
    against = (output / "README.md").read_text().split(f"### Against step {END:,}\n\n")[1].split("###")[0]
    lines = [line for line in against.splitlines() if line.startswith("| pesq |")]
    assert [line.split(" | ")[1] for line in lines] == ["1.5", "3", "4.5", "6", "7.5", "9"]
    for line in lines:
        assert " | 2 | +0.1000 | [+0.1000, +0.1000] | 100% | " in line, line


def test_a_run_between_the_base_and_the_packaged_one(run, tmp_path, capsys):
    """A cycle that continued the shipped weights and was never packaged (`--between`), then the run: the card
    describes both after the base's stages, the histories follow each other, and the comparison is with the base.
    The run's recipe accumulates batches: its steps count as the audio they saw."""
    last_step = END + 1002
    last = training_run(tmp_path / "last", last_step)
    config = tmp_path / "accumulated.yaml"
    config.write_text((ROOT / "examples" / "configs" / "esc-base-cpu-cycle.yaml").read_text()
                      + "gradient_accumulation_steps: 4\n")  # fmt: skip
    output = tmp_path / "esc-base"
    code, _, err = run_script(SCRIPT, "--run", last, "--val", CLIPS, "--train", run / "train", "--output", output,
                              "--config", config, "--command", "first",
                              "--hardware", "a test machine", "--wall-time", "no time", *STAGES, "--base-config",
                              "examples/configs/esc-base-cpu-cycle.yaml", "--base-step", END + 2, "--between", run,
                              capsys=capsys, cwd=ROOT)  # fmt: skip
    assert code == 0, err[-3000:]
    card = (output / "README.md").read_text()
    assert "Four stages:" in card and f"**{last_step:,} steps**" in card
    # 8 × 1 s a step to the end of the run between, then 1,000 steps of 4 accumulated batches of 8 × 1 s
    assert f"({(8 * (END + 2) + 4 * 8 * 1000) / 3600:.1f} h of audio seen)" in card
    continued = "continued from those weights (`--init_from`, `--init_step"
    assert f"3. steps {END + 1:,}–{END + 2:,} {continued} {END}`" in card
    assert f"4. steps {END + 3:,}–{last_step:,} {continued} {END + 2}`, fresh optimizer moments), recipe " \
           f"`{config}` (32 × 1 s crops (as 4 accumulated batches of 8)," in card
    steps = [row["step"] for row in read_history(output / "eval_history.csv")]
    assert steps == sorted(steps) and steps[-3:] == [END, END + 2, last_step]
    log = [json.loads(line)["step"] for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert log[-3:] == [END, END + 2, last_step]
    assert f"### Against step {END:,}\n\n" in card  # the base's step, not the run between's
    assert f"--init_step {last_step} --max_steps {2 * last_step - (END + 2)}`" in card


@pytest.mark.parametrize("stages, message", [
    (["--base", SHIPPED, "--base-config", "examples/configs/esc-base-cpu.yaml"], "go together"),
    ([*STAGES, "--base-config", "examples/configs/esc-base-cpu-cycle.yaml"], "one --base-step for each"),
    (["--base", SHIPPED, "--base-config", "a.yaml", "--base-step", END, "--base-config", "b.yaml", "--base-step",
      10000], "increasing"),
    (["--base", SHIPPED, "--base-config", "a.yaml", "--base-step", 0], "at least 1"),
    (["--base", SHIPPED, "--base-config", "a.yaml", "--base-step", END, "--between", SHIPPED],
     "one --base-step for each --between run and one for the base"),
    (STAGES, "has no checkpoints/step-N folder"),
    (["--between", SHIPPED], "--between needs --base"),
    (["--jobs", 0], "--jobs must be at least 1, got 0"),
    ([*STAGES, "--base-config", "a.yaml", "--base-step", END + 1, "--between", SHIPPED],
     f"does not end at --base-step {END + 1} (its eval_history.csv: {END})"),
    ([*STAGES, "--base-config", "a.yaml", "--base-step", END + 1, "--between", ROOT / "tests"],
     "no evaluation history"),
])  # fmt: skip
def test_stages_that_do_not_add_up_are_refused(tmp_path, stages, message, capsys):
    code, err = package(tmp_path / "run", tmp_path / "out", *stages, capsys=capsys)
    assert code == 2 and message in err and not (tmp_path / "out").exists()


def test_a_run_between_without_a_training_log_is_refused(tmp_path, capsys):
    between = tmp_path / "between"
    between.mkdir()
    write_csv([{**HISTORY[-1], "step": END + 1}], between / "eval_history.csv")  # it ends where its --base-step says
    code, err = package(tmp_path / "run", tmp_path / "out", *STAGES, "--base-config", "a.yaml", "--base-step",
                        END + 1, "--between", between, capsys=capsys)  # fmt: skip
    assert code == 2 and "has no train_log.jsonl" in err and not (tmp_path / "out").exists()


def test_a_base_without_a_training_log_is_refused(tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    stages = [base if s is SHIPPED else s for s in STAGES]
    code, err = package(tmp_path / "run", tmp_path / "out", *stages, capsys=capsys)
    assert code == 2 and f"--base {base} has no train_log.jsonl" in err and not (tmp_path / "out").exists()
