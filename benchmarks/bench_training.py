"""Training-step speed of ESC on this machine: forward + losses + backward + AdamW, per recipe, precision, crop and
batch.

    python benchmarks/bench_training.py [--variant esc-base] [--threads 2] [--steps 5] \
        [--recipes plain,phase,adversarial] [--precisions fp32,bf16] [--crops 1.0,2.0,3.0] [--batches 4,8] [--csv FILE]

Recipes: `plain` (the paper's losses), `phase` (plus the anti-wrapping phase and compressed complex losses,
`--phase_weight 0.3 --complex_weight 0.1` in the trainer) and `adversarial` (plus the DAC discriminators: their
forward passes for the generator's adversarial and feature-matching losses, and the discriminators' own step, as
`--adversarial` runs them). Prints steps/s and audio-seconds per second (batch × crop / step time) for each setting,
measured side by side in one run (the settings' steps interleaved, so that a machine's drift falls on all alike), so
that a training recipe can be chosen by numbers rather than guesses.
"""

import argparse
import time

import torch

from esc_hf import EscConfig, EscModel
from esc_hf.training.arguments import TrainingArguments
from esc_hf.training.data import valid_crop_length
from esc_hf.training.evaluation import write_csv
from esc_hf.training.discriminator import (
    Discriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from esc_hf.training.losses import EscLoss


RECIPES = ("plain", "phase", "adversarial")
# The trainer's own weights and limits, so that a recipe here is the one `--adversarial` runs.
DEFAULTS = TrainingArguments(data_dir="unused")


class Setting:
    """One recipe × precision × crop × batch: its model, losses and optimizers, stepped one step at a time."""

    def __init__(self, variant: str, recipe: str, precision: str, crop_seconds: float, batch: int, warm: bool):
        torch.manual_seed(0)
        self.model = EscModel(EscConfig.from_variant(variant)).train()
        self.loss_fn = EscLoss(phase_weight=0.3, complex_weight=0.1) if recipe == "phase" else EscLoss()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.discriminator = Discriminator() if recipe == "adversarial" else None
        if self.discriminator is not None:
            self.disc_optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=DEFAULTS.discriminator_lr)
        self.audio = 0.1 * torch.randn(batch, 1, valid_crop_length(crop_seconds))
        self.dtype = torch.bfloat16 if precision == "bf16" else None
        self.warm = warm
        self.times: list[float] = []

    def step(self) -> None:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype is not None):
            output = self.model(self.audio, num_streams=6, bypass_quantizer=self.warm)
            loss = self.loss_fn(self.audio, output)["total"]
            if self.discriminator is not None:
                fake, real = self.discriminator(output.audio_values), self.discriminator(self.audio)
                loss = loss + DEFAULTS.generator_adv_weight * generator_adversarial_loss(fake)
                loss = loss + DEFAULTS.feature_matching_weight * feature_matching_loss(fake, real)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.5)
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.discriminator is not None:
            with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype is not None):
                disc_loss = discriminator_loss(
                    self.discriminator(output.audio_values.detach()), self.discriminator(self.audio)
                )
            disc_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), DEFAULTS.discriminator_max_grad_norm)
            self.disc_optimizer.step()
            self.disc_optimizer.zero_grad()
        self.times.append(time.perf_counter() - start)

    def seconds_per_step(self) -> float:
        timed = self.times[1:]  # the first step pays for allocation and kernel selection
        return sorted(timed)[len(timed) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="esc-base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting (median kept)")
    parser.add_argument("--recipes", default="plain", help=f"comma-separated, of {','.join(RECIPES)}")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--crops", default="1.0,2.0,3.0", help="crop lengths in seconds")
    parser.add_argument("--batches", default="8")
    parser.add_argument("--warm-start", action="store_true", help="time the bypassed-quantizer phase")
    parser.add_argument("--csv")
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    if not set(recipes) <= set(RECIPES):
        parser.error(f"--recipes takes {', '.join(RECIPES)}; got {args.recipes}")
    torch.set_num_threads(args.threads)
    keys = [(recipe, precision, crop, batch) for recipe in recipes for precision in args.precisions.split(",")
            for crop in map(float, args.crops.split(",")) for batch in map(int, args.batches.split(","))]  # fmt: skip
    settings = {key: Setting(args.variant, *key, args.warm_start) for key in keys}
    for _ in range(args.steps + 1):
        for setting in settings.values():
            setting.step()
    rows = []
    print(f"{'recipe':<11} {'precision':<9} {'crop s':>6} {'batch':>5} {'s/step':>7} {'steps/s':>7} "
          f"{'audio s/s':>9} {'vs first':>8}")  # fmt: skip
    first = None
    for (recipe, precision, crop, batch), setting in settings.items():
        seconds = setting.seconds_per_step()
        first = first or seconds
        audio_seconds = batch * valid_crop_length(crop) / 16000
        row = {"recipe": recipe, "precision": precision, "crop_s": crop, "batch": batch,
               "s_per_step": round(seconds, 3), "steps_per_s": round(1 / seconds, 3),
               "audio_s_per_s": round(audio_seconds / seconds, 2), "time_vs_first": round(seconds / first, 2)}  # fmt: skip
        rows.append(row)
        print(f"{recipe:<11} {precision:<9} {crop:>6g} {batch:>5} {seconds:>7.2f} {1 / seconds:>7.3f} "
              f"{row['audio_s_per_s']:>9.2f} {row['time_vs_first']:>7.2f}x", flush=True)  # fmt: skip
    if args.csv:
        write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
