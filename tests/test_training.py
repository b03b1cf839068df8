"""Training on the CPU with the tiny config: learning, the warm-start switch, exact resume, data sources, and a
two-process Accelerate run."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import SPEECH, free_port, run_script
from esc_hf import DEFAULT_MODEL, EscModel
from esc_hf.codec.audio_io import list_audio_files
from esc_hf.training.arguments import parse_arguments
from esc_hf.training.data import decode_files
from esc_hf.training.evaluation import evaluate_unquantized
from esc_hf.training.trainer import EscTrainer, draw_num_streams


ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "examples" / "configs" / "tiny-cpu.yaml")


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    for path in SPEECH:
        shutil.copy(path, folder / path.name)
    return folder


def tiny_args(tmp_path, data_dir, *extra):
    return parse_arguments(["--config", TINY, "--data-dir", str(data_dir), "--val-dir", str(data_dir),
                            "--output-dir", str(tmp_path / "run"), "--max-val-clips", "1", "--max-val-seconds", "1",
                            "--batch-size", "2", "--crop-seconds", "0.5", *extra])  # fmt: skip


def distance(state: dict, other: dict) -> float:
    """The L2 norm of the difference of two models' weights, all of them as one vector."""
    return torch.cat([(state[k].float() - other[k].float()).flatten() for k in state]).norm().item()


def train_log(run: Path) -> list[dict]:
    """A run's `train_log.jsonl`, a dict a logged step."""
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def codebooks(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith("embedding.weight")}


def test_loss_falls_when_overfitting_one_clip(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(SPEECH[0], one)
    # 50 steps: the mean loss of the last ten is about 0.64 of the first ten's (0.55 after 100 steps).
    trainer = EscTrainer(tiny_args(tmp_path, one, "--max-steps", "50", "--warm-start-steps", "50",
                                   "--learning-rate", "3e-3", "--silence-db", "-30", "--save-every", "1000"))  # fmt: skip
    trainer.train()
    losses = trainer.last_losses
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.75 * first, f"loss went from {first:.3f} to {last:.3f}"


def test_warm_start_keeps_codebooks_then_switches(tmp_path, speech_dir):
    trainer = EscTrainer(tiny_args(tmp_path, speech_dir, "--max-steps", "4", "--warm-start-steps", "2",
                                   "--save-every", "1", "--keep-checkpoints", "10"))  # fmt: skip
    initial = codebooks({k: v.clone() for k, v in trainer.model.state_dict().items()})
    trainer.train()
    checkpoints = trainer.checkpoint_dir
    states = {step: load_file(str(checkpoints / f"step-{step:08d}" / "model.safetensors")) for step in (1, 2, 3, 4)}
    for step in (1, 2):
        for key, value in codebooks(states[step]).items():
            assert torch.equal(value, initial[key]), f"codebook {key} changed during the warm start (step {step})"
    changed = [k for k, v in codebooks(states[3]).items() if not torch.equal(v, initial[k])]
    assert changed, "codebooks must train once quantization is on"
    assert not torch.equal(states[1]["encoder.patch_embed.proj.weight"], states[2]["encoder.patch_embed.proj.weight"])
    # The optimizer was reset at the switch: its step counter restarted at step 3.
    optimizer = torch.load(checkpoints / "step-00000003" / "optimizer.bin", weights_only=True)
    assert {int(s["step"]) for s in optimizer["state"].values()} == {1}
    # The codebooks never get None gradients (zero tensors): their optimizer state exists after the switch too.
    assert json.loads((checkpoints / "step-00000004" / "trainer_state.json").read_text())["switched"]


# With dead-code revival every 2 steps, the checkpoint at step 3 falls inside a window: the resumed run must revive
# at step 4 from the counts and inputs of steps 3 and 4, which needs the reviver's state in the checkpoint.
@pytest.mark.parametrize("revival", [[], ["--dead-code-window", "2"]], ids=["plain", "dead-code-revival"])
def test_resumed_run_matches_uninterrupted_run(tmp_path, speech_dir, revival):
    common = [*revival, "--max-steps", "6", "--warm-start-steps", "2", "--save-every", "3", "--quantizer-dropout", "0.75"]
    straight = EscTrainer(tiny_args(tmp_path / "a", speech_dir, *common))
    straight.train()
    first = EscTrainer(tiny_args(tmp_path / "b", speech_dir, *common[:-4], "--save-every", "3",
                                 "--quantizer-dropout", "0.75", "--max-steps", "3"))  # fmt: skip
    first.args.max_steps = 3
    first.train()
    resumed = EscTrainer(tiny_args(tmp_path / "b", speech_dir, *common, "--resume"))
    resumed.train()
    assert resumed.last_losses == straight.last_losses[3:], (resumed.last_losses, straight.last_losses)
    a = load_file(str(tmp_path / "a" / "run" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_is_the_large_batch_in_parts(tmp_path, speech_dir):
    """4 crops in one batch, or in 2 accumulated batches of 2: the same crops, loss and gradient, so the same steps
    up to float rounding (the order of the sums); the step logs the loss of all 4 crops, not of its last batch. Warm
    steps (quantizers bypassed): once the codes are chosen by a nearest neighbour, a rounding-sized difference in the
    weights can choose another code, and the runs part for that reason alone."""
    common = ["--max-steps", "2", "--warm-start-steps", "5", "--log-every", "1", "--save-every", "100",
              "--eval-every", "0"]  # fmt: skip
    whole = EscTrainer(tiny_args(tmp_path / "a", speech_dir, *common, "--batch-size", "4"))
    start = {k: v.clone() for k, v in whole.model.state_dict().items()}
    whole.train()
    parts = EscTrainer(tiny_args(tmp_path / "b", speech_dir, *common, "--batch-size", "2",
                                 "--gradient-accumulation-steps", "2"))  # fmt: skip
    parts.train()
    assert parts.step == whole.step == 2
    logs = [train_log(tmp_path / run / "run") for run in ("a", "b")]
    # Step 1 starts from the same weights: only the order of the sums differs. At step 2 the weights differ where
    # Adam's first step is rounding-sensitive (below): the loss and the gradient's norm (before clipping) stay within
    # 1 % (7e-5 apart seen), where the last batch's loss alone was 3-6 % off and a loss not divided by the number of
    # batches would double the gradient.
    for step, rtol in ((0, 1e-5), (1, 1e-2)):
        assert parts.last_losses[step] == pytest.approx(whole.last_losses[step], rel=rtol)
        assert logs[1][step]["train/grad_norm"] == pytest.approx(logs[0][step]["train/grad_norm"], rel=rtol)
    a = load_file(str(tmp_path / "a" / "run" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "final" / "model.safetensors"))
    # How far the runs part, against how far the weights moved. Not element by element: Adam's first steps are
    # lr * g / (|g| + eps), so a weight whose gradient is near 0 can move by up to lr (1e-3) either way with rounding
    # (1.1e-3 apart in a CI run on 2 workers). Rounding parts them by 8e-4 of the move here; an optimizer step per
    # batch (4 steps of 2 crops) by 0.83.
    assert distance(a, b) < 0.05 * distance(a, start)


def test_adversarial_steps_log_both_models_losses(tmp_path, speech_dir):
    """--adversarial: after the warm start the generator's step adds the adversarial and feature-matching terms and
    the discriminators take their own step, each logged as the mean over the step's accumulated batches."""
    trainer = EscTrainer(tiny_args(tmp_path, speech_dir, "--adversarial", "--max-steps", "3", "--warm-start-steps", "1",
                                   "--gradient-accumulation-steps", "2", "--log-every", "1", "--save-every", "100",
                                   "--eval-every", "0"))  # fmt: skip
    trainer.train()
    logs = train_log(tmp_path / "run")
    assert [r["step"] for r in logs] == [1, 2, 3]
    gan = ("train/adversarial", "train/feature_matching", "train/discriminator")
    assert not any(k in logs[0] for k in gan), "no discriminator during the warm start"
    for row in logs[1:]:
        assert all(np.isfinite(row[k]) and row[k] > 0 for k in gan), row
        assert row["train/loss"] > row["train/total"], "the adversarial terms add to the reconstruction loss"


def test_time_budget_ends_the_cycle_as_max_steps_would(tmp_path, speech_dir):
    """--time_budget_minutes moves the cycle's end inside the warm-up, so the run is exactly the `--max_steps` run
    that ends there, and a resumed run keeps that end. A budget spent before the timing ends allows one more step
    (here step 7: timed over steps 2-6 of a 10-step warm-up); an ample one leaves --max_steps as it is."""
    init = tmp_path / "init"
    EscModel(tiny_args(tmp_path, speech_dir).model_config()).save_pretrained(init)
    cycle = ["--init-from", str(init), "--restart-schedule", "--lr-schedule", "cosine", "--lr-warmup-steps", "10",
             "--warm-start-steps", "0", "--log-every", "1", "--save-every", "3", "--keep-checkpoints", "5"]
    budget = EscTrainer(tiny_args(tmp_path / "budget", speech_dir, *cycle, "--max-steps", "40",
                                  "--time-budget-minutes", "1e-9"))  # fmt: skip
    budget.train()
    fixed = EscTrainer(tiny_args(tmp_path / "fixed", speech_dir, *cycle, "--max-steps", "7"))
    fixed.train()
    # The whole schedule is the 7-step one, past the warm-up too (where a longer cycle would not have decayed).
    assert budget.args.max_steps == 7
    assert [budget.lr_multiplier(s) for s in range(40)] == [fixed.lr_multiplier(s) for s in range(40)]
    runs = {name: tmp_path / name / "run" for name in ("budget", "fixed")}
    logs = {name: [{k: v for k, v in row.items() if k != "train/audio_seconds_per_second"} for row in train_log(run)]
            for name, run in runs.items()}
    assert [row["step"] for row in logs["budget"]] == list(range(1, 8))
    assert logs["budget"] == logs["fixed"]  # losses and learning rates, step by step
    weights = {name: load_file(str(run / "final" / "model.safetensors")) for name, run in runs.items()}
    assert all(torch.equal(weights["budget"][k], weights["fixed"][k]) for k in weights["fixed"])
    state = json.loads((runs["budget"] / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert state["cycle_end"] == 7  # chosen at step 6, before that step's checkpoint
    assert "cycle_end" not in json.loads((runs["fixed"] / "checkpoints" / "step-00000006" / "trainer_state.json")
                                         .read_text())  # fmt: skip

    # Resumed from step 6 with a budget that would allow every step: the chosen end holds.
    shutil.rmtree(runs["budget"] / "checkpoints" / "step-00000007")
    resumed = EscTrainer(tiny_args(tmp_path / "budget", speech_dir, *cycle, "--max-steps", "40",
                                   "--time-budget-minutes", "1e6", "--resume"))  # fmt: skip
    resumed.train()
    assert resumed.step == 7
    again = load_file(str(runs["budget"] / "final" / "model.safetensors"))
    assert all(torch.equal(again[k], weights["fixed"][k]) for k in again)
    state_file = runs["budget"] / "checkpoints" / "step-00000007" / "trainer_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "cycle_end": 3}))
    with pytest.raises(ValueError, match="cycle_end must be a step at or after"):
        EscTrainer(tiny_args(tmp_path / "budget", speech_dir, *cycle, "--max-steps", "40", "--resume")).train()

    ample = EscTrainer(tiny_args(tmp_path / "ample", speech_dir, *cycle, "--max-steps", "9",
                                 "--time-budget-minutes", "1e6"))  # fmt: skip
    ample.train()
    assert ample.step == 9 and ample.args.max_steps == 9


def test_quantizer_dropout_draw():
    draws = [draw_num_streams(53, step, 0.75, 6) for step in range(4000)]
    assert draws == [draw_num_streams(53, step, 0.75, 6) for step in range(4000)]
    full = np.mean([d == 6 for d in draws])
    assert abs(full - (0.25 + 0.75 / 6)) < 0.03 and set(draws) == {1, 2, 3, 4, 5, 6}
    assert {draw_num_streams(1, s, 0.0, 6) for s in range(100)} == {6}


def test_training_from_a_datasets_dataset(tmp_path, speech_dir):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"audio": [str(p) for p in SPEECH] * 2, "text": ["a", "b"] * 2})
    data = data.cast_column("audio", datasets.Audio())
    data.save_to_disk(str(tmp_path / "ds"))
    for streaming in ([], ["--streaming"]):
        args = parse_arguments(["--config", TINY, "--dataset", str(tmp_path / "ds"), "--val-dir", str(speech_dir),
                                "--output-dir", str(tmp_path / f"run{len(streaming)}"), "--max-steps", "2",
                                "--warm-start-steps", "1", "--max-val-clips", "1", "--max-val-seconds", "1",
                                "--crop-seconds", "0.5", "--batch-size", "2", *streaming])  # fmt: skip
        EscTrainer(args).train()
        assert (tmp_path / f"run{len(streaming)}" / "final" / "model.safetensors").exists()


def test_two_processes_with_accelerate_launch(tmp_path, speech_dir):
    out = tmp_path / "ddp"
    # `--multi_gpu` starts torchrun; without a GPU, Accelerate runs the processes on the CPU with gloo.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
               "--dynamo_backend", "no",
               str(ROOT / "examples" / "train.py"), "--config", TINY, "--data-dir", str(speech_dir),
               "--val-dir", str(speech_dir), "--output-dir", str(out), "--max-steps", "40", "--warm-start-steps", "1",
               "--max-val-clips", "1", "--max-val-seconds", "1", "--crop-seconds", "0.5", "--batch-size", "2",
               # a spent time budget: the two processes must agree to end after step 4 (timed over steps 1-3)
               "--lr-warmup-steps", "5", "--time-budget-minutes", "1e-9"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    from transformers import AutoModel

    import esc_hf  # noqa: F401

    model = AutoModel.from_pretrained(out / "final")
    assert model.num_parameters() > 0 and (out / "eval.csv").exists() and (out / "rate_distortion.png").exists()
    card = (out / "final" / "README.md").read_text()
    assert "model-index:" in card and "2 process(es)" in card
    state = json.loads((out / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["cycle_end"] == 4


def test_output_folder_and_evaluation_files(tmp_path, speech_dir):
    EscTrainer(tiny_args(tmp_path, speech_dir, "--max-steps", "2", "--warm-start-steps", "1")).train()
    run = tmp_path / "run"
    for name in ("best", "final"):
        assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_esc.py"} <= {
            p.name for p in (run / name).iterdir()
        }
    header = (run / "eval.csv").read_text().splitlines()[0].split(",")
    assert {"step", "kbps", "pesq", "stoi", "mel_distance", "si_sdr", "utilization", "entropy_kbps"} <= set(header)
    assert (run / "rate_distortion.png").read_bytes()[:4] == b"\x89PNG"


def test_no_evaluation_and_decoding_in_processes(tmp_path, speech_dir, monkeypatch):
    """--eval_every 0 trains without PESQ or STOI installed (no evaluation, not even at the end; best/ is final/),
    and --preprocessing_num_workers decodes the training files into the same cache as one process does."""
    monkeypatch.setitem(sys.modules, "pesq", None)  # None in sys.modules: `import pesq` raises ImportError
    monkeypatch.setitem(sys.modules, "pystoi", None)
    EscTrainer(tiny_args(tmp_path, speech_dir, "--max-steps", "3", "--warm-start-steps", "1", "--eval-every", "0",
                         "--preprocessing-num-workers", "2")).train()  # fmt: skip
    run = tmp_path / "run"
    assert not {"eval.csv", "eval_history.csv", "val_curve.png"} & {p.name for p in run.iterdir()}
    final, best = (load_file(str(run / name / "model.safetensors")) for name in ("final", "best"))
    assert all(torch.equal(final[k], best[k]) for k in final)
    (cache,) = (run / "cache").glob("*.npy")
    np.testing.assert_array_equal(np.load(cache), np.concatenate(decode_files(list_audio_files(speech_dir))))

    broken = tmp_path / "broken"
    shutil.copytree(speech_dir, broken)
    (broken / "zz-not-audio.flac").write_bytes(b"fLaC but no stream info")
    with pytest.raises(ValueError, match="training data: .*zz-not-audio.flac"):
        decode_files(list_audio_files(broken), num_workers=2)


def test_val_curve_through_the_switch_ramp_and_continuing_from_weights(tmp_path, speech_dir, capsys):
    EscTrainer(tiny_args(tmp_path, speech_dir, "--max-steps", "4", "--warm-start-steps", "2", "--eval-every", "1",
                         "--log-every", "1", "--switch-warmup-steps", "2")).train()  # fmt: skip
    run = tmp_path / "run"
    history = (run / "eval_history.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in history[1:]] == [1, 2, 3, 4]  # the last step evaluated once
    streams = [int(line.split(",")[2]) for line in history[1:]]
    assert history[0].startswith("step,kbps,streams") and streams[:2] == [0, 6]  # warm start: quantizers bypassed
    assert (run / "val_curve.png").read_bytes()[:4] == b"\x89PNG"
    lrs = {row["step"]: row["train/lr"] for row in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())}
    assert lrs == pytest.approx({1: 1e-3, 2: 1e-3, 3: 1e-3 / 3, 4: 2e-3 / 3})  # the ramp after the switch

    more = EscTrainer(tiny_args(tmp_path / "more", speech_dir, "--max-steps", "6", "--warm-start-steps", "2",
                                "--log-every", "1", "--init-from", str(run / "final"), "--init-step", "4",
                                "--resume"))  # fmt: skip
    assert more.step == 4 and more.switched
    more.train()
    # --resume with no checkpoint yet (the first launch of a resumable command) starts from the given weights
    assert f"starting from {run / 'final'} at step 4" in capsys.readouterr().out
    log = [json.loads(line)["step"] for line in (tmp_path / "more" / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log == [5, 6]
    with pytest.raises(ValueError, match="--init_from"):
        parse_arguments(["--data-dir", "x", "--init-step", "3"])

    # --restart_schedule: a new cosine cycle from step 4 (warm-up from 0, peak, then down), where the run's own
    # schedule would be three steps from its end
    again = tmp_path / "again"
    EscTrainer(tiny_args(again, speech_dir, "--max-steps", "7", "--warm-start-steps", "2", "--log-every", "1",
                         "--init-from", str(run / "final"), "--init-step", "4", "--restart-schedule",
                         "--lr-schedule", "cosine", "--lr-warmup-steps", "1")).train()  # fmt: skip
    lrs = {row["step"]: row["train/lr"] for row in map(json.loads, (again / "run" / "train_log.jsonl").read_text()
                                                       .splitlines())}  # fmt: skip
    assert lrs == pytest.approx({5: 0.0, 6: 1e-3, 7: 5e-4})
    with pytest.raises(ValueError, match="--init_from"):
        parse_arguments(["--data-dir", "x", "--restart-schedule"])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--output-dir", "x"], "--data-dir or --dataset"),
        (["--data-dir", "x", "--variant", "esc-huge"], "unknown variant"),
        (["--data-dir", "x", "--lr-schedule", "exp"], "lr_schedule"),
        (["--data-dir", "x", "--push-to-hub"], "hub-model-id"),
        (["--data-dir", "x", "--bogus", "1"], "unknown arguments"),
        (["--data-dir", "x", "--time-budget-minutes", "-1"], "time_budget_minutes"),
        (["--data-dir", "x", "--eval-every", "-1"], "eval_every"),
        (["--data-dir", "x", "--preprocessing-num-workers", "0"], "preprocessing_num_workers"),
        (["--data-dir", "x", "--time-budget-minutes", "5", "--lr-warmup-steps", "4"], "--lr_warmup_steps"),
        (["--data-dir", "x", "--time-budget-minutes", "5", "--lr-warmup-steps", "100", "--init-from", "w",
          "--init-step", "10"], "--restart_schedule"),
    ],
)
def test_bad_arguments(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_arguments(argv)


def test_recipe_summary_follows_the_config():
    """The model card's recipe line is built from the arguments: the shipped configs' summaries name what they set,
    and a continuation past the warm start does not claim one."""
    configs = ROOT / "examples" / "configs"
    scratch = parse_arguments(["--config", str(configs / "esc-base-cpu.yaml"), "--data-dir", "-"]).recipe_summary()
    assert scratch.startswith("8 × 1 s crops, bf16 autocast, AdamW (lr 0.001, 200 warm-up steps, cosine schedule)")
    assert "bypassed to step 1,000, then VQ with quantizer dropout 0.75, fresh optimizer moments and a 100-step ramp" \
        in scratch
    assert "revival" not in scratch and scratch.endswith("; no GAN")
    continued = parse_arguments(["--config", str(configs / "esc-base-cpu-continue.yaml"), "--data-dir", "-",
                                 "--init-from", "x", "--init-step", "10000"]).recipe_summary()  # fmt: skip
    assert "float32" in continued and "constant schedule" in continued and "bypassed" not in continued
    assert "quantizer dropout 0.25, dead-code revival (codebook entries unused for 100 steps" in continued
    cycle = parse_arguments(["--config", str(configs / "esc-base-cpu-cycle.yaml"), "--data-dir", "-",
                             "--init-from", "x", "--init-step", "10000"]).recipe_summary()  # fmt: skip
    assert "(lr 0.0003, 100 warm-up steps, cosine schedule restarted at step 10,000)" in cycle
    assert "quantizer dropout 0.75;" in cycle and "revival" not in cycle
    accumulated = parse_arguments(["--config", str(configs / "esc-base-gpu-cycle.yaml"), "--data-dir", "-",
                                   "--init-from", "x", "--init-step", "23400", "--batch-size", "6",
                                   "--gradient-accumulation-steps", "6"]).recipe_summary()  # fmt: skip
    assert accumulated.startswith("36 × 3 s crops (as 6 accumulated batches of 6), bf16 autocast")
    weighted = parse_arguments(["--data-dir", "-", "--phase-weight", "0.5", "--adversarial"]).recipe_summary()
    assert "anti-wrapping phase (weight 0.5)" in weighted and weighted.endswith("DAC's discriminators")


def test_help_lists_every_option(capsys):
    """`train.py --help` is where the script sends users for every option: it names every field of
    TrainingArguments (both spellings) and nothing else, shows each help text with the field's real default, and
    every option it names sets its field."""
    import dataclasses
    import re

    from esc_hf.training.arguments import TrainingArguments

    code, stdout, err = run_script(ROOT / "examples" / "train.py", "--help", capsys=capsys)
    assert code == 0, err
    text = " ".join(stdout.split())  # argparse wraps lines
    fields = [f for f in dataclasses.fields(TrainingArguments) if f.name != "model_overrides"]  # YAML `model:` only
    expected = {"-h", "--help", "--config", "--model_overrides", "--model-overrides"}
    for f in fields:
        expected |= {f"--{f.name}", f"--{f.name.replace('_', '-')}"}
        help_text = f.metadata.get("help")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if help_text:  # argparse shows the default only beside a help text
            assert f"{' '.join(help_text.split())} (default: {default})" in text, f.name
    assert set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", stdout.split("options:")[1])) == expected

    # Every option named sets its field (dashed spelling; a bool flag takes no value).
    values = {str: "x", int: 7, float: 0.5}

    def kind(f):  # `str | None` → str
        return next(t for t in getattr(f.type, "__args__", (f.type,)) if t is not type(None))

    argv = ["--data-dir", "d"]
    for f in fields:
        if kind(f) is bool:
            argv.append(f"--{f.name.replace('_', '-')}")
        elif f.name not in ("data_dir", "variant", "lr_schedule", "mixed_precision"):
            argv += [f"--{f.name.replace('_', '-')}", str(values[kind(f)])]
    argv += ["--init-step", "0", "--max-steps", "9", "--quantizer-dropout", "0.5", "--hub-model-id", "me/esc"]
    args = parse_arguments(argv)
    for f in fields:
        if kind(f) is bool:
            assert getattr(args, f.name) is True, f.name
        elif f.name not in ("data_dir", "variant", "lr_schedule", "mixed_precision", "init_step", "max_steps",
                            "hub_model_id"):  # fmt: skip
            assert getattr(args, f.name) == values[kind(f)], f.name


def test_evaluate_script_writes_table_csv_and_plot(tmp_path, capsys):
    script = ROOT / "examples" / "evaluate.py"
    code, out, err = run_script(script, "--data", SPEECH[0].parent, "--out", tmp_path / "eval.csv", "--plot",
                                tmp_path / "rd.png", "--max-seconds", 1, capsys=capsys)  # fmt: skip
    assert code == 0, err[-2000:]
    assert "PESQ" in out and len((tmp_path / "eval.csv").read_text().splitlines()) == 7
    # The codebook health of every stream, as a table and as CSV columns (the packaged model has 6 streams x 3).
    assert "codes used, of 1024" in out and all(f"\n     {s}  " in out for s in range(6))
    header = (tmp_path / "eval.csv").read_text().splitlines()[0].split(",")
    assert {f"usage_s{s}_c{c}" for s in range(6) for c in range(3)} <= set(header)
    assert (tmp_path / "rd.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_script(script, "--data", tmp_path / "no", "--out", tmp_path / "x.csv", capsys=capsys)
    assert code == 1 and "not found" in err


def test_evaluate_script_scores_the_unquantized_ceiling(tmp_path, capsys):
    script = ROOT / "examples" / "evaluate.py"
    code, out, err = run_script(script, "--data", SPEECH[0].parent, "--out", tmp_path / "eval.csv", "--max-seconds", 1,
                                "--unquantized", capsys=capsys)  # fmt: skip
    assert code == 0, err[-2000:]
    with (tmp_path / "eval.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["streams"] for r in rows] == ["1", "2", "3", "4", "5", "6", "0"]
    clips = [clip[:16000] for clip in decode_files(list_audio_files(SPEECH[0].parent))]
    expected = evaluate_unquantized(EscModel.from_pretrained(DEFAULT_MODEL).eval(), clips)
    assert float(rows[-1]["pesq"]) == pytest.approx(expected["pesq"], abs=1e-4)
    assert f"unquantized (the quantizers bypassed): PESQ {expected['pesq']:.3f}" in out


def test_validation_inside_the_training_folder_is_warned_about(tmp_path, speech_dir, caplog):
    nested = tmp_path / "corpus"
    shutil.copytree(speech_dir, nested / "val")
    shutil.copy(SPEECH[0], nested / "extra.flac")
    apart = tmp_path / "apart"
    shutil.copytree(speech_dir, apart)
    cases = [(speech_dir, speech_dir, f"are the same folder: {len(SPEECH)} of the {len(SPEECH)} validation files"),
             (nested, nested / "val", f"are nested: {len(SPEECH)} of the {len(SPEECH)} validation files"),
             (speech_dir, apart, None)]  # fmt: skip
    for index, (data, val, expected) in enumerate(cases):
        caplog.clear()
        args = tiny_args(tmp_path / str(index), data, "--val-dir", str(val), "--max-val-clips", "10")
        with caplog.at_level("WARNING", logger="esc_hf.training.trainer"):
            EscTrainer(args)._load_data()
        warned = [r.getMessage() for r in caplog.records if r.name == "esc_hf.training.trainer"]
        if expected is None:
            assert warned == [], warned
        else:
            assert len(warned) == 1 and expected in warned[0] and "\n" not in warned[0], warned
            assert "validation scores clips the model trained on" in warned[0]
