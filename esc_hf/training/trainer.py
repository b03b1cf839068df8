"""The training loop: the paper's recipe (warm start, then quantizer dropout) under Accelerate, on one CPU, one
GPU or many.

Schedule: a warm start of `warm_start_steps` steps with the quantizers bypassed (projections trained, codebooks
left exactly as they are: their learning rate is 0), then quantization on with quantizer dropout and the optimizer
state reset. The reset happens at the switch itself; the authors' code renews the optimizer one step later, and
there AdamW's weight decay also shrinks the idle codebooks during the warm start. `switch_warmup_steps` can ramp
the learning rate up again after the switch. During the warm start the validation curve is the model's quality with
the quantizers bypassed (its codebooks are still untrained), after it the codec's at every bitrate.

Runs survive: `accelerator.save_state` checkpoints are written to a temporary folder and renamed when complete,
and a training item is a pure function of its index (see `data.py`), the quantizer-dropout draw a pure function of
the step, so a resumed run repeats an uninterrupted one step for step.
"""

import contextlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..codec.audio_io import decode_audio_value, list_audio_files, load_audio_dataset
from ..eval.model_card import write_model_card
from ..eval.metrics import stream_usage
from ..eval.plotting import plot_rate_distortion, plot_val_curve
from ..models.esc.feature_extraction_esc import EscFeatureExtractor
from ..models.esc.modeling_esc import EscModel
from ..utils.atomic_files import atomic_directory, atomic_file
from .arguments import TrainingArguments
from .data import (
    RandomCropDataset,
    StreamingCropDataset,
    cached_concatenation,
    decode_files,
    overlap_warning,
    split_files,
    valid_crop_length,
)
from .discriminator import Discriminator, discriminator_loss, feature_matching_loss, generator_adversarial_loss
from .evaluation import (
    evaluate_codec,
    evaluate_unquantized,
    format_codebook_health,
    format_table,
    read_history,
    write_csv,
)
from .losses import EscLoss
from .revival import DeadCodeReviver

logger = logging.getLogger(__name__)


def draw_num_streams(seed: int, step: int, dropout: float, max_streams: int) -> int:
    """Quantizer dropout: with probability `dropout` n ~ U{1..max}, else all. One draw per step, the same on
    every process (it depends on the seed and step only)."""
    rng = np.random.default_rng((seed, step))
    return int(rng.integers(1, max_streams + 1)) if rng.random() < dropout else max_streams


def lr_multiplier(schedule: str, warmup_steps: int, total_steps: int):
    """transformers' schedule as a function of the step (no optimizer attached)."""
    from transformers import get_scheduler

    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    name = "constant_with_warmup" if schedule == "constant" else schedule
    return get_scheduler(name, dummy, num_warmup_steps=warmup_steps, num_training_steps=total_steps).lr_lambdas[0]


def _is_codebook(name: str) -> bool:
    return name.endswith("embedding.weight") and ".vqs." in name


class EscTrainer:
    def __init__(self, args: TrainingArguments):
        self.args = args
        out = args.output_path
        self.accelerator = Accelerator(
            # Without this, processes started by torchrun on a machine without a GPU do not form a group.
            cpu=not torch.cuda.is_available(),
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=None if args.report_to == "none" else args.report_to,
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        )
        set_seed(args.seed)
        if args.init_from:
            self.model = EscModel.from_pretrained(args.init_from)
        else:
            self.model = EscModel(args.model_config())
        self.model.train()
        self.config = self.model.config
        self.loss_fn = EscLoss(args.commitment_weight, args.codebook_weight, args.mel_weight, args.stft_weight,
                               sampling_rate=self.config.sampling_rate, phase_weight=args.phase_weight,
                               complex_weight=args.complex_weight)  # fmt: skip
        self.crop_length = valid_crop_length(args.crop_seconds, self.config.sampling_rate,
                                             self.config.samples_per_code_frame, self.config.hop_length)  # fmt: skip
        self._build_lr_multiplier()
        # --init_step continues a run from its saved weights alone, with a fresh optimizer (as at the VQ switch).
        self.step, self.best_pesq = args.init_step, -math.inf
        self.cycle_end_fixed = False  # --time_budget_minutes: whether --max_steps is the one the budget chose
        self.switched = args.warm_start_steps <= args.init_step
        self.history: list[dict] = self._read_history()

    # -- data ---------------------------------------------------------------------------------------------------

    def _load_data(self):
        args, sr = self.args, self.config.sampling_rate
        cache = Path(args.cache_dir) if args.cache_dir else args.output_path / "cache"
        val_clips, train_audio, stream = None, None, None
        if args.val_dir:
            val_files = list_audio_files(args.val_dir)[: args.max_val_clips]
            val_clips = decode_files(val_files, sr)
        if args.data_dir:
            files = list_audio_files(args.data_dir)
            if val_clips is None:
                files, val_files = split_files(files, args.val_fraction)
                val_clips = decode_files(val_files[: args.max_val_clips], sr)
            else:
                warning = overlap_warning(files, val_files, args.data_dir, args.val_dir)
                if warning and self.accelerator.is_main_process:
                    logger.warning(warning)
            with self.accelerator.main_process_first():
                train_audio = cached_concatenation(files, cache, sr, args.preprocessing_num_workers)
        else:
            data = load_audio_dataset(args.dataset, args.dataset_split, args.audio_column, args.streaming)
            if val_clips is None:
                held_out = list(data.take(args.max_val_clips)) if args.streaming else data.select(
                    range(min(args.max_val_clips, max(1, int(len(data) * args.val_fraction))))
                )  # fmt: skip
                val_clips = [decode_audio_value(row[args.audio_column], sr) for row in held_out]
                data = data.skip(len(val_clips)) if args.streaming else data.select(range(len(val_clips), len(data)))
            if args.streaming:
                stream = StreamingCropDataset(data.shuffle(seed=args.seed), args.audio_column, self.crop_length, sr,
                                              args.silence_db)  # fmt: skip
            else:
                train_audio = np.concatenate([decode_audio_value(row[args.audio_column], sr) for row in data])
        limit = int(args.max_val_seconds * sr)
        self.val_clips = [clip[:limit] for clip in val_clips if clip.size >= 4 * self.config.samples_per_code_frame]
        if not self.val_clips:
            raise ValueError("no usable validation clip (each needs at least 80 ms of audio)")
        return train_audio, stream

    def _dataloader(self, train_audio, stream):
        args = self.args
        if stream is not None:
            return DataLoader(stream, batch_size=args.batch_size, num_workers=0)
        # Global item index of the first crop this run still needs: resuming asks for exactly the same crops.
        per_step = args.batch_size * args.gradient_accumulation_steps * self.accelerator.num_processes
        remaining = (args.max_steps - self.step) * per_step
        dataset = RandomCropDataset(train_audio, self.crop_length, args.seed, args.silence_db,
                                    length=self.step * per_step + remaining)  # fmt: skip
        indices = range(self.step * per_step, self.step * per_step + remaining)
        subset = torch.utils.data.Subset(dataset, indices)
        return DataLoader(subset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers,
                          persistent_workers=args.num_workers > 0)  # fmt: skip

    # -- optimisation -------------------------------------------------------------------------------------------

    def _optimizer(self, model, lr):
        codebooks = [p for n, p in model.named_parameters() if _is_codebook(n)]
        others = [p for n, p in model.named_parameters() if not _is_codebook(n)]
        groups = [{"params": others}, {"params": codebooks}]
        return torch.optim.AdamW(groups, lr=lr, betas=(self.args.adam_beta1, self.args.adam_beta2),
                                 weight_decay=self.args.weight_decay)  # fmt: skip

    @property
    def _inner_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer

    def _build_lr_multiplier(self):
        args = self.args
        if args.restart_schedule:
            # Fresh AdamW moments after weights that finished a cosine at lr 0: a constant lr with no warm-up costs
            # the continued model quality for hundreds of steps (docs/training_study.md); a new cycle ramps up
            # from 0 and ends annealed at --max_steps.
            cycle = lr_multiplier(args.lr_schedule, args.lr_warmup_steps, args.max_steps - args.init_step)
            self.lr_multiplier = lambda step: cycle(step - args.init_step)
        else:
            self.lr_multiplier = lr_multiplier(args.lr_schedule, args.lr_warmup_steps, args.max_steps)

    def _end_cycle_at(self, max_steps: int):
        self.args.max_steps, self.cycle_end_fixed = max_steps, True
        self._build_lr_multiplier()

    def _fit_cycle_to_budget(self, deadline: float, probe: tuple[int, float]) -> int:
        """The last step that fits before `deadline` (perf_counter seconds) at the pace measured since `probe`
        (step, time), agreed by every process: the slowest pace and the least time left."""
        acc, now = self.accelerator, time.perf_counter()
        pace = (now - probe[1]) / (self.step - probe[0])
        measured = acc.gather(torch.tensor([[pace, deadline - now]], dtype=torch.float64, device=acc.device))
        pace, left = measured[:, 0].max().item(), measured[:, 1].min().item()
        # 1/20 spare: on a shared 2-core CPU the steps after the timing were 3 % slower than the timed ones.
        end = min(self.args.max_steps, self.step + max(1, int(0.95 * left / pace)))
        if acc.is_main_process:  # tqdm.write, not print: a line of its own, not glued to the progress bar
            tqdm.write(f"time budget: {pace:.3f} s a step, {left:.0f} s left: the cycle ends at step {end:,} "
                       f"(--max_steps was {self.args.max_steps:,})")  # fmt: skip
        return end

    def _set_learning_rates(self):
        scale = self.args.learning_rate * self.lr_multiplier(self.step)
        since_switch = self.step - self.args.warm_start_steps
        if 0 <= since_switch < self.args.switch_warmup_steps:
            # Fresh AdamW moments make the first updates sign-sized; ramp up so they do not undo the warm start.
            scale *= (since_switch + 1) / (self.args.switch_warmup_steps + 1)
        groups = self._inner_optimizer.param_groups
        groups[0]["lr"] = scale
        # During the warm start the codebooks get zero gradients; lr 0 keeps AdamW's weight decay off them too.
        groups[1]["lr"] = scale if self.step >= self.args.warm_start_steps else 0.0

    def _switch_to_quantization(self):
        """Fresh optimizer moments when the codebooks come in (the paper re-creates its optimizer here)."""
        self._inner_optimizer.state.clear()
        self.switched = True

    # -- checkpoints --------------------------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.args.output_path / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        done = sorted(self.checkpoint_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        return done[-1] if done else None

    def _save_checkpoint(self):
        acc = self.accelerator
        final = self.checkpoint_dir / f"step-{self.step:08d}"
        tmp = self.checkpoint_dir / f".step-{self.step:08d}.tmp"
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()  # every process has written its part (RNG states) before the rename
        if acc.is_main_process:
            state = {"step": self.step, "switched": self.switched, "best_pesq": self.best_pesq}
            if self.cycle_end_fixed:  # a resumed run keeps the schedule the budget chose, whatever its own budget
                state["cycle_end"] = self.args.max_steps
            (tmp / "trainer_state.json").write_text(json.dumps(state))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)  # a checkpoint folder without the dot prefix is always complete
            for old in sorted(self.checkpoint_dir.glob("step-*"))[: -self.args.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _read_history(self) -> list[dict]:
        path = self.args.output_path / "eval_history.csv"
        return [row for row in read_history(path) if row["step"] <= self.step] if path.exists() else []

    def _resume(self):
        latest = self.latest_checkpoint()
        if latest is None:
            start = (f"from {self.args.init_from} at step {self.step}" if self.args.init_from
                     else "from scratch")  # fmt: skip
            self.accelerator.print(f"no checkpoint in {self.checkpoint_dir}: starting {start}")
            return
        self.accelerator.load_state(str(latest))
        state = json.loads((latest / "trainer_state.json").read_text())
        self.step, self.switched, self.best_pesq = state["step"], state["switched"], state["best_pesq"]
        if "cycle_end" in state:
            end = state["cycle_end"]
            if not isinstance(end, int) or isinstance(end, bool) or end < self.step:
                raise ValueError(f"{latest / 'trainer_state.json'}: cycle_end must be a step at or after the "
                                 f"checkpoint's {self.step}, got {end!r}")
            self._end_cycle_at(end)
        self.history = self._read_history()
        log = self.args.output_path / "train_log.jsonl"
        if self.accelerator.is_main_process and log.exists():  # drop what the interrupted run logged after this point
            kept = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            with atomic_file(log, "w") as handle:
                handle.write("".join(line + "\n" for line in kept))
        self.accelerator.print(f"resumed from {latest.name} at step {self.step}")

    # -- evaluation and output ----------------------------------------------------------------------------------

    def _evaluate(self):
        acc = self.accelerator
        if not acc.is_main_process:
            return None
        model, out = acc.unwrap_model(self.model), self.args.output_path
        if self.step < self.args.warm_start_steps:
            row = evaluate_unquantized(model, self.val_clips)
            self.history.append({"step": self.step, **row})
            write_csv(self.history, out / "eval_history.csv")
            plot_val_curve(self.history, out / "val_curve.png", self.args.warm_start_steps)
            acc.log({f"eval/{k}_unquantized": row[k] for k in ("pesq", "stoi", "mel_distance", "si_sdr")}, step=self.step)
            tqdm.write(f"step {self.step} (warm start, quantizers bypassed): PESQ {row['pesq']:.3f} "
                       f"STOI {row['stoi']:.3f} mel {row['mel_distance']:.3f} SI-SDR {row['si_sdr']:.2f}")  # fmt: skip
            return None
        model.eval()
        try:
            rows = evaluate_codec(model, self.val_clips)
        finally:
            model.train()
        write_csv(rows, out / "eval.csv", {"step": self.step})
        plot_rate_distortion({f"ESC step {self.step}": rows}, out / "rate_distortion.png")
        self.history.append({"step": self.step, **rows[-1]})
        write_csv(self.history, out / "eval_history.csv")
        plot_val_curve(self.history, out / "val_curve.png", self.args.warm_start_steps)
        metrics = ("pesq", "stoi", "mel_distance", "si_sdr", "entropy_kbps")
        acc.log({f"eval/{k}_{r['kbps']:g}kbps": r[k] for r in rows for k in metrics}, step=self.step)
        acc.log({f"eval/codes_used_stream{s}": usage for s, usage in stream_usage(rows[-1]).items()}, step=self.step)
        health = format_codebook_health(rows[-1], self.config.codebook_size)
        tqdm.write(f"step {self.step}:\n{format_table(rows)}\n{health}")
        if rows[-1]["pesq"] > self.best_pesq:
            self.best_pesq = rows[-1]["pesq"]
            self.save_model(out / "best", rows)
        return rows

    def save_model(self, folder: Path, rows: list[dict] | None = None):
        """A `from_pretrained` folder: weights, config, feature extractor, remote code and a model card."""
        model = self.accelerator.unwrap_model(self.model)
        args = self.args
        source = args.dataset or args.data_dir
        training = (
            "## Training\n\n"
            f"Trained with `esc_hf` (`examples/train.py`) on `{source}` for {self.step} steps "
            f"(warm start {args.warm_start_steps} steps), batch {args.batch_size} × "
            f"{self.accelerator.num_processes} process(es) × {args.gradient_accumulation_steps} accumulation, "
            f"{self.crop_length / self.config.sampling_rate:.2f} s crops, AdamW lr {args.learning_rate:g} "
            f"({args.lr_schedule}), mixed precision {args.mixed_precision}, on {self.accelerator.device.type}.\n"
        )
        if rows:
            training += "\n" + "\n".join(
                ["| kbps | PESQ | STOI | mel distance | SI-SDR |", "|---|---|---|---|---|"]
                + [f"| {r['kbps']:g} | {r['pesq']:.3f} | {r['stoi']:.3f} | {r['mel_distance']:.3f} | {r['si_sdr']:.2f} |"
                   for r in rows]
            ) + f"\n\nValidation: {len(self.val_clips)} clips.\n"  # fmt: skip
        with atomic_directory(folder) as tmp:
            model.save_pretrained(tmp)
            EscFeatureExtractor(sampling_rate=self.config.sampling_rate).save_pretrained(tmp)
            write_model_card(tmp, model, source="trained with esc_hf", training=training,
                             repo_id=args.hub_model_id or "path/to/this/folder", metrics=rows)  # fmt: skip

    # -- the loop -----------------------------------------------------------------------------------------------

    def train(self) -> Path:
        args, acc = self.args, self.accelerator
        deadline = time.perf_counter() + 60 * args.time_budget_minutes
        # The warm-up's ramp does not depend on where the schedule ends: timed inside it, the end can still move.
        probe_steps = (max(1, args.lr_warmup_steps // 5), 3 * args.lr_warmup_steps // 5)
        probe = None
        train_audio, stream = self._load_data()
        self.optimizer = self._optimizer(self.model, args.learning_rate)
        discriminator = disc_optimizer = None
        if args.adversarial:
            discriminator = Discriminator()
            disc_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=args.discriminator_lr,
                                               betas=(args.adam_beta1, args.adam_beta2))  # fmt: skip
        prepared = acc.prepare(self.model, self.optimizer, *([discriminator, disc_optimizer] if discriminator else []))
        self.model, self.optimizer = prepared[:2]
        if discriminator is not None:
            discriminator, disc_optimizer = prepared[2:]
        loss_fn = self.loss_fn.to(acc.device)
        reviver = None
        if args.dead_code_window:
            reviver = DeadCodeReviver(acc.unwrap_model(self.model), args.dead_code_window, args.seed, accelerator=acc)
            acc.register_for_checkpointing(reviver)  # its window counts and recent inputs resume with the run
        if args.resume:
            self._resume()
        loader = acc.prepare(self._dataloader(train_audio, stream))  # shards batches across processes
        if args.report_to != "none":
            acc.init_trackers("esc", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})
        max_streams = self.config.num_streams
        grad_clip = args.generator_max_grad_norm_adv if args.adversarial else args.max_grad_norm
        progress = tqdm(total=args.max_steps, initial=self.step, disable=not acc.is_local_main_process, desc="train")
        started, audio_seconds = time.perf_counter(), 0.0
        self.last_losses: list[float] = []
        rows, evaluated_at = None, None
        # Each accumulated batch's loss terms: the step logs their mean, the loss of the whole batch it optimised.
        pending: list[dict] = []
        while self.step < args.max_steps:
            for batch in loader:
                warm = self.step < args.warm_start_steps
                if not warm and not self.switched:
                    self._switch_to_quantization()
                self._set_learning_rates()
                num_streams = draw_num_streams(args.seed, self.step, args.quantizer_dropout, max_streams)
                watching = reviver.observe() if reviver is not None and not warm else contextlib.nullcontext()
                with acc.accumulate(self.model):
                    with watching:
                        output = self.model(batch, num_streams=num_streams, bypass_quantizer=warm)
                    terms = loss_fn(batch, output)
                    loss = terms["total"]
                    adversarial = discriminator is not None and not warm
                    if adversarial:
                        fake, real = discriminator(output.audio_values), discriminator(batch)
                        terms["adversarial"] = generator_adversarial_loss(fake)
                        terms["feature_matching"] = feature_matching_loss(fake, real)
                        loss = loss + args.generator_adv_weight * terms["adversarial"]
                        loss = loss + args.feature_matching_weight * terms["feature_matching"]
                    acc.backward(loss)
                    if acc.sync_gradients:
                        terms["grad_norm"] = acc.clip_grad_norm_(self.model.parameters(), grad_clip)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                    if adversarial:
                        disc_loss = discriminator_loss(discriminator(output.audio_values.detach()), discriminator(batch))
                        acc.backward(disc_loss)
                        if acc.sync_gradients:
                            acc.clip_grad_norm_(discriminator.parameters(), args.discriminator_max_grad_norm)
                        disc_optimizer.step()
                        disc_optimizer.zero_grad()
                        terms["discriminator"] = disc_loss
                pending.append({"loss": loss.detach(), **{k: torch.as_tensor(v).detach() for k, v in terms.items()}})
                audio_seconds += batch.shape[0] * batch.shape[-1] / self.config.sampling_rate * acc.num_processes
                if not acc.sync_gradients:
                    continue
                self.step += 1
                if reviver is not None and not warm:
                    revived = sum(reviver.maybe_revive(self.step, self._inner_optimizer).values())
                    if revived:
                        tqdm.write(f"step {self.step}: revived {revived} dead codebook entries")
                # grad_norm exists on the last batch only: each term is the mean over the batches that have it.
                terms = {k: torch.stack([t[k].float().mean() for t in pending if k in t]).mean() for k in pending[-1]}
                pending.clear()
                total = acc.reduce(terms.pop("loss"), reduction="mean").item()
                self.last_losses.append(total)
                progress.update(1)
                if args.time_budget_minutes and not self.cycle_end_fixed:
                    if probe is None and self.step - args.init_step >= probe_steps[0]:
                        probe = (self.step, time.perf_counter())
                    elif probe is not None and self.step - args.init_step >= probe_steps[1]:
                        self._end_cycle_at(self._fit_cycle_to_budget(deadline, probe))
                        progress.total = args.max_steps
                if self.step % args.log_every == 0 or self.step == args.max_steps:
                    elapsed = time.perf_counter() - started
                    logs = {f"train/{k}": v.item() for k, v in terms.items()}  # each a scalar: the step's mean
                    logs.update({"train/loss": total, "train/num_streams": num_streams, "train/warm_start": int(warm),
                                 "train/audio_seconds_per_second": audio_seconds / elapsed,
                                 "train/lr": self._inner_optimizer.param_groups[0]["lr"]})  # fmt: skip
                    if reviver is not None:
                        logs["train/revived_codes_total"] = reviver.revived_total
                    acc.log(logs, step=self.step)
                    if acc.is_main_process:  # plain-text twin of the tracker, for plots and A/B comparisons
                        args.output_path.mkdir(parents=True, exist_ok=True)
                        with (args.output_path / "train_log.jsonl").open("a") as handle:
                            handle.write(json.dumps({"step": self.step, **logs}) + "\n")
                    progress.set_postfix(loss=f"{total:.3f}", audio_s_per_s=f"{audio_seconds / elapsed:.1f}",
                                         warm=int(warm))  # fmt: skip
                if self.step % args.save_every == 0:
                    self._save_checkpoint()
                if args.eval_every and self.step % args.eval_every == 0:
                    rows, evaluated_at = self._evaluate(), self.step
                    acc.wait_for_everyone()
                if self.step >= args.max_steps:
                    break
            if stream is None:
                break
        progress.close()
        if args.eval_every and evaluated_at != self.step:  # one history row per step: the loop's may be this one
            rows = self._evaluate()
        if self.step % args.save_every:
            self._save_checkpoint()
        if acc.is_main_process:
            self.save_model(args.output_path / "final", rows)
            if not (args.output_path / "best").exists():
                self.save_model(args.output_path / "best", rows)
            if args.push_to_hub:
                from huggingface_hub import upload_folder

                upload_folder(repo_id=args.hub_model_id, folder_path=str(args.output_path / "best"))
        acc.wait_for_everyone()
        acc.end_training()
        return args.output_path
