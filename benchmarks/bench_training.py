"""Training-step speed of ESC on this machine: forward + losses + backward + AdamW, per precision, crop and batch.

    python benchmarks/bench_training.py [--variant esc-base] [--threads 2] [--steps 5] \
        [--precisions fp32,bf16] [--crops 1.0,2.0,3.0] [--batches 4,8] [--csv FILE]

Prints steps/s and audio-seconds per second (batch × crop / step time) for each setting, measured side by side in
one run, so that a training recipe can be chosen by numbers rather than guesses.
"""

import argparse
import time

import torch

from esc_hf import EscConfig, EscModel
from esc_hf.training.data import valid_crop_length
from esc_hf.training.evaluation import write_csv
from esc_hf.training.losses import EscLoss


def time_steps(variant: str, precision: str, crop_seconds: float, batch: int, steps: int, warm: bool) -> float:
    torch.manual_seed(0)
    model = EscModel(EscConfig.from_variant(variant)).train()
    loss_fn = EscLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    length = valid_crop_length(crop_seconds)
    audio = 0.1 * torch.randn(batch, 1, length)
    dtype = torch.bfloat16 if precision == "bf16" else None
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            output = model(audio, num_streams=6, bypass_quantizer=warm)
            loss = loss_fn(audio, output)["total"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad()
        if step:  # the first step pays for allocation and kernel selection
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="esc-base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting (median kept)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--crops", default="1.0,2.0,3.0", help="crop lengths in seconds")
    parser.add_argument("--batches", default="8")
    parser.add_argument("--warm-start", action="store_true", help="time the bypassed-quantizer phase")
    parser.add_argument("--csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'precision':<9} {'crop s':>6} {'batch':>5} {'s/step':>7} {'steps/s':>7} {'audio s/s':>9}")
    for precision in args.precisions.split(","):
        for crop in map(float, args.crops.split(",")):
            for batch in map(int, args.batches.split(",")):
                seconds = time_steps(args.variant, precision, crop, batch, args.steps, args.warm_start)
                audio_seconds = batch * valid_crop_length(crop) / 16000
                row = {"precision": precision, "crop_s": crop, "batch": batch, "s_per_step": round(seconds, 3),
                       "steps_per_s": round(1 / seconds, 3), "audio_s_per_s": round(audio_seconds / seconds, 2)}
                rows.append(row)
                print(f"{precision:<9} {crop:>6g} {batch:>5} {seconds:>7.2f} {1 / seconds:>7.3f} "
                      f"{row['audio_s_per_s']:>9.2f}", flush=True)  # fmt: skip
    if args.csv:
        write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
