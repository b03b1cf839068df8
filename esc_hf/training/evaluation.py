"""Codec evaluation at every bitrate: PESQ-WB, STOI, mel distance, SI-SDR, code utilization and the health of every
codebook, as tables, a CSV and a rate–distortion plot."""

import csv
import io
import math
from pathlib import Path

import numpy as np
import torch

from ..eval.metrics import (
    METRICS,
    code_utilization,
    codebook_health,
    entropy_kbps,
    mel_distance,
    pesq_wb,
    si_sdr,
    stoi,
)
from ..utils.atomic_files import atomic_file


@torch.inference_mode()
def evaluate_codec(model, clips: list[np.ndarray], num_streams: list[int] | None = None) -> list[dict]:
    """One row per bitrate with the mean of each metric over `clips` (16 kHz mono arrays), the code utilization,
    the rate the codes would cost entropy coded (`entropy_kbps`, see `esc_hf.eval.metrics.entropy_kbps`) and the
    usage and entropy of each codebook of its streams (see `esc_hf.eval.metrics.codebook_health`)."""
    if not clips:
        raise ValueError("evaluation needs at least one clip")
    config = model.config
    device = next(model.parameters()).device
    rows = []
    for n in num_streams or range(1, config.num_streams + 1):
        scores, all_codes = {name: [] for name in METRICS}, []
        for clip in clips:
            audio = torch.as_tensor(np.asarray(clip, dtype=np.float32), device=device)[None, None]
            codes = model.encode(audio, num_streams=n).audio_codes
            decoded = model.decode(codes).audio_values[0, 0, : audio.shape[-1]].float().cpu().numpy()
            all_codes.append(codes[0].cpu())
            scores["pesq"].append(pesq_wb(clip, decoded, config.sampling_rate))
            scores["stoi"].append(stoi(clip, decoded, config.sampling_rate))
            scores["mel_distance"].append(mel_distance(clip, decoded, config.sampling_rate))
            scores["si_sdr"].append(si_sdr(clip, decoded))
        codes = torch.cat(all_codes, dim=-1)
        row = {"kbps": config.bandwidth_for_num_streams(n), "streams": n, "clips": len(clips)}
        row.update({name: float(np.nanmean(values)) for name, values in scores.items()})
        row["utilization"] = code_utilization(codes, config.codebook_size)
        row["entropy_kbps"] = entropy_kbps(codes, config.codebook_size, config.frame_rate)
        row.update(codebook_health(codes, config.codebook_size))
        rows.append(row)
    return rows


@torch.no_grad()
def evaluate_unquantized(model, clips: list[np.ndarray]) -> dict:
    """The warm-start model's own quality: each clip through encoder and decoder with the quantizers bypassed.

    The codebooks are still untrained during the warm start, so this, not `evaluate_codec`, is its val curve.
    """
    if not clips:
        raise ValueError("evaluation needs at least one clip")
    config, was_training = model.config, model.training
    device = next(model.parameters()).device
    scores = {name: [] for name in METRICS}
    model.train()  # bypassing the quantizers is a training-mode path; ESC has no dropout, so nothing is random
    try:
        for clip in clips:
            audio = torch.as_tensor(np.asarray(clip, dtype=np.float32), device=device)[None, None]
            decoded = model(audio, bypass_quantizer=True).audio_values[0, 0, : audio.shape[-1]].float().cpu().numpy()
            scores["pesq"].append(pesq_wb(clip, decoded, config.sampling_rate))
            scores["stoi"].append(stoi(clip, decoded, config.sampling_rate))
            scores["mel_distance"].append(mel_distance(clip, decoded, config.sampling_rate))
            scores["si_sdr"].append(si_sdr(clip, decoded))
    finally:
        model.train(was_training)
    return {"kbps": float("nan"), "streams": 0, "clips": len(clips),
            **{name: float(np.nanmean(values)) for name, values in scores.items()}}  # fmt: skip


def format_table(rows: list[dict]) -> str:
    """`evaluate_codec`'s rows as a text table; `H kbps` is the entropy-coded rate estimate (`entropy_kbps`)."""
    lines = [f"{'kbps':>5} {'PESQ':>6} {'STOI':>6} {'mel dist':>9} {'SI-SDR':>7} {'util':>5} {'H kbps':>6}"]
    for r in rows:
        lines.append(f"{r['kbps']:>5g} {r['pesq']:>6.3f} {r['stoi']:>6.3f} {r['mel_distance']:>9.3f} "
                     f"{r['si_sdr']:>7.2f} {r['utilization']:>5.3f} {r['entropy_kbps']:>6.2f}")  # fmt: skip
    return "\n".join(lines)


def format_codebook_health(row: dict, codebook_size: int) -> str:
    """The codebook columns of an `evaluate_codec` row as a table: per stream, the codes used and the entropy of
    each codebook."""
    streams = sorted({int(key.split("_")[1][1:]) for key in row if key.startswith("usage_s")})
    if not streams:
        return "(no codebook statistics: the quantizers were bypassed)"
    lines = [f"{'stream':>6}  {f'codes used, of {codebook_size}':<28}  entropy, bits of {math.log2(codebook_size):g}"]
    for s in streams:
        codebooks = sorted(int(key.rsplit("_c", 1)[1]) for key in row if key.startswith(f"usage_s{s}_c"))
        used = " / ".join(f"{round(row[f'usage_s{s}_c{c}'] * codebook_size)}" for c in codebooks)
        bits = " / ".join(f"{row[f'entropy_s{s}_c{c}']:.1f}" for c in codebooks)
        lines.append(f"{s:>6}  {used:<28}  {bits}")
    return "\n".join(lines)


def read_history(path: str | Path) -> list[dict]:
    """The rows of a run's `eval_history.csv` (as the trainer writes it), numbers as floats, `step` and `streams` as
    ints; an empty cell (a column that row lacks) is NaN. `ValueError` naming the file if it is not such a table."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        rows = [{k: float(v or "nan") for k, v in row.items()} for row in rows]
        for row in rows:
            if not (row["step"].is_integer() and row["streams"].is_integer()):
                raise ValueError(f"step and streams must be whole numbers, got {row['step']} and {row['streams']}")
        return [{**row, "step": int(row["step"]), "streams": int(row["streams"])} for row in rows]
    except FileNotFoundError:
        raise ValueError(f"no evaluation history: {path} does not exist") from None
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path} is not an evaluation history (step, streams and numbers): {error}") from None


def write_csv(rows: list[dict], path: str | Path, extra: dict | None = None) -> None:
    rows = [{**(extra or {}), **row} for row in rows]
    text = io.StringIO()
    fields = list(dict.fromkeys(key for row in rows for key in row))  # rows may differ (warm start vs VQ)
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_file(path, "w") as handle:
        handle.write(text.getvalue())
