"""Fit the entropy model of `.esc` v2 on a model's training-set codes and store it in the model's folder.

    python examples/fit_entropy_model.py --model checkpoints/esc-base --data data/speech/train \
        [--max-files N] [--cache DIR] [--jobs N]

Every clip is encoded at the model's highest rate (the codes of lower rates are their leading streams). One clip
in ten is held out to choose, by measured bits, each stream's context (none, the previous frame, the coarser
stream), the number of context buckets and the prior weight (`esc_hf.codec.entropy`); the chosen tables are then
counted on all clips and written to `MODEL/entropy_model.safetensors`. `--cache` keeps each clip's codes (one
`.npy` per clip) so that a killed run resumes; `--max-files` takes a seeded random subset of the clips; `--jobs N`
encodes them in N processes of one thread each.
`examples/package_checkpoint.py` runs this on the shipped folder.
"""

import argparse
import functools
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from esc_hf.codec.audio_io import list_audio_files, load_audio
from esc_hf.codec.bitstream import codebook_fingerprint
from esc_hf.codec.entropy import CONTEXTS, ENTROPY_MODEL_FILE, EntropyModel
from esc_hf.codec.loading import load_model
from esc_hf.utils.processes import forked_map

BUCKETS = (16, 64, 256)  # 256 at most: the tables file stays under 20 MB (6 × 3 × 256 × 1024 int32)
PRIOR_WEIGHTS = (16.0, 64.0, 256.0, 1024.0)
HELD_OUT_EVERY = 10


def clip_codes(model, files, root: Path, cache: Path | None, jobs: int = 1):
    """Codes `(streams, groups, frames)` of each clip at the model's highest rate, from `cache` when there; with
    `jobs` > 1 the clips are encoded in that many forked processes of one thread each."""
    start = time.time()
    encode = functools.partial(_clip_codes, model, root, cache)
    with forked_map(encode, jobs, log=lambda line: print(line, file=sys.stderr)) as map_:
        for index, codes in enumerate(map_(files)):
            if index % 25 == 0:
                print(f"encoded {index + 1}/{len(files)} clips ({time.time() - start:.0f} s)", file=sys.stderr)
            yield codes.astype(np.int64)


def _clip_codes(model, root: Path, cache: Path | None, path) -> np.ndarray:
    target = None if cache is None else cache / (str(Path(path).relative_to(root)).replace("/", "__") + ".npy")
    if target is not None and target.exists():
        try:
            codes = np.load(target, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"{target}: not a cached codes file ({error}); delete it to encode the clip again") \
                from None
        config = model.config
        if (codes.dtype != np.int16 or codes.ndim != 3 or codes.shape[:2] != (config.num_streams, config.group_size)
                or codes.min(initial=0) < 0 or codes.max(initial=0) >= config.codebook_size):  # fmt: skip
            raise ValueError(f"{target}: not codes of this model ({codes.dtype} {codes.shape}, where it codes int16 "
                             f"({config.num_streams}, {config.group_size}, frames) below {config.codebook_size}); "
                             "delete it, or give another --cache")  # fmt: skip
        return codes
    audio, _ = load_audio(path, model.config.sampling_rate)
    with torch.inference_mode():
        codes = model.encode(torch.from_numpy(audio)[None, None]).audio_codes[0].numpy().astype(np.int16)
    if target is not None:  # the process id keeps two writers of one clip (two jobs, two runs) apart
        partial = target.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(partial, codes)
        partial.replace(target)
    return codes


def mean_bits(entropy_model: EntropyModel, items) -> np.ndarray:
    """Mean bits per code of each stream over `items`."""
    bits = np.concatenate([entropy_model.bits(c).reshape(c.shape[0], -1) for c in items], axis=1)
    return bits.mean(axis=1)


def choose(fit_items, held_out, codebook_size: int) -> tuple[tuple[str, ...], int, float, list[dict]]:
    """Each stream's context and the bucket count and prior weight with the fewest held-out bits."""
    rows, best = [], None
    for buckets in BUCKETS:
        for weight in PRIOR_WEIGHTS:
            bits = {c: mean_bits(EntropyModel.fit(fit_items, c, codebook_size, buckets, weight), held_out)
                    for c in CONTEXTS}  # fmt: skip
            for context, per_stream in bits.items():
                rows.append({"context": context, "buckets": buckets, "prior_weight": weight,
                             "bits": [round(float(b), 3) for b in per_stream]})  # fmt: skip
            contexts = tuple(min(CONTEXTS, key=lambda c: bits[c][s]) for s in range(len(bits["none"])))
            total = sum(bits[c][s] for s, c in enumerate(contexts))
            if best is None or total < best[0]:
                best = (total, contexts, buckets, weight)
    return best[1], best[2], best[3], rows


def fit_into(model_dir: Path, data: Path, max_files: int | None = None, cache: Path | None = None,
             jobs: int = 1) -> EntropyModel:  # fmt: skip
    model = load_model(model_dir)
    files = list_audio_files(data)
    random.Random(0).shuffle(files)
    files = files[:max_files] if max_files else files
    if len(files) < HELD_OUT_EVERY:
        raise SystemExit(f"{data}: {len(files)} clips; at least {HELD_OUT_EVERY} are needed (one in ten is held out)")
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    items = list(clip_codes(model, files, Path(data), cache, jobs))
    held_out = items[::HELD_OUT_EVERY]
    fit_items = [c for i, c in enumerate(items) if i % HELD_OUT_EVERY]
    size = model.config.codebook_size
    contexts, buckets, weight, rows = choose(fit_items, held_out, size)
    chosen = EntropyModel.fit(fit_items, contexts, size, buckets, weight)
    for context in ("none", *(c for c in CONTEXTS if c != "none")):
        row = next(
            r for r in rows if r["context"] == context and r["buckets"] == buckets and r["prior_weight"] == weight
        )
        print(f"held out, bits per code by stream, context {context:<8}: {row['bits']}")
    print(f"held out, chosen {contexts}: {[round(float(b), 3) for b in mean_bits(chosen, held_out)]} "
          f"({buckets} buckets, prior weight {weight:g})")  # fmt: skip
    final = EntropyModel.fit(items, contexts, size, buckets, weight, codebook_fingerprint(model))
    final.save(Path(model_dir) / ENTROPY_MODEL_FILE)
    frames = sum(c.shape[-1] for c in items)
    hours = frames / model.config.frame_rate / 3600
    print(f"wrote {Path(model_dir) / ENTROPY_MODEL_FILE}: {len(items)} clips, {hours:.2f} h, tables {final.fingerprint.hex()}")
    return final


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the model folder (the tables are written into it)")
    parser.add_argument("--data", type=Path, required=True, help="training clips (a folder, searched recursively)")
    parser.add_argument("--max-files", type=int, help="a seeded random subset of this many clips")
    parser.add_argument("--cache", type=Path, help="folder for each clip's codes (resumable)")
    parser.add_argument("--jobs", type=int, default=1, help="processes that encode the clips, one thread each")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if not (args.model / "config.json").is_file():
        parser.error(f"{args.model} is not a model folder (no config.json)")
    try:
        fit_into(args.model, args.data, args.max_files, args.cache, args.jobs)
    except ValueError as error:  # a cached file that is not this model's codes
        parser.error(str(error))


if __name__ == "__main__":
    main()
