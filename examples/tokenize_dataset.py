"""Tokenise a speech dataset with ESC on every process of an Accelerate launch (CPU or GPUs).

    accelerate launch [--num_processes N] examples/tokenize_dataset.py \
        (--dataset NAME_OR_PATH [--config C] [--split S] [--audio-column audio] [--streaming] | --folder DIR) \
        --output DIR [--kbps 6] [--model DIR_OR_HUB_ID] [--batch-size 16] [--shard-size 256] [--lm-tokens]
    python examples/tokenize_dataset.py --output DIR --verify 8 (--dataset … | --folder …)

The output is a `datasets.Dataset` saved to disk (`datasets.load_from_disk(DIR)`): the source's columns other than
the audio (ids, texts; `file` for a folder), `source_index` (the row of the source), `codes` int16 `(num_streams,
3, frames)` with the frames of the item's own length, `num_samples`, and with `--lm-tokens` the flat LM tokens of
`esc_hf.codec.tokens`; its `info.description` holds the model's name, config and codebook fingerprints as JSON.
Codes equal `model.encode` of each item alone (see `esc_hf.codec.dataset_codes`).

Work is cut into shards of `--shard-size` rows; process p of N takes shards p, p + N, …, encodes each shard as one
`encode_batch` call (which groups the whole shard by padded length, for full model calls) and writes it
atomically. A run that was killed finishes the missing shards when started again with the same command; a finished
output is left as it is. `--verify K` re-encodes K random rows from the source alone and checks their codes, and
reports how close their decoded audio is to the source.
"""

import argparse
import json
import math
import resource
import shutil
import sys
import time
from pathlib import Path

import datasets
import numpy as np


SHARD_DIR = "shards"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="Hugging Face dataset name or a save_to_disk folder")
    source.add_argument("--folder", help="a folder of audio files (recursive) instead of a dataset")
    parser.add_argument("--config", help="the dataset's configuration (name)")
    parser.add_argument("--split", default="train", help="split of --dataset (default train)")
    parser.add_argument("--audio-column", default="audio", help="audio column of --dataset (default audio)")
    parser.add_argument("--streaming", action="store_true", help="stream --dataset instead of loading it")
    parser.add_argument("--output", required=True, help="folder of the tokenised dataset")
    parser.add_argument("--model", help="ESC folder or Hub id (default: the packaged model)")
    parser.add_argument("--kbps", type=float, default=None, help="bitrate (default: the model's highest)")
    parser.add_argument("--batch-size", type=int, default=16, help="items per model call (default 16)")
    parser.add_argument("--shard-size", type=int, default=256, help="rows per shard written (default 256)")
    parser.add_argument("--lm-tokens", action="store_true", help="also store the flat LM tokens")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 backbone (EscModel.set_backbone_dtype): faster on GPUs and CPUs with AVX512-BF16 or "
        "AMX; codes then differ from float32's where a codebook decision is close",
    )
    parser.add_argument("--verify", type=int, metavar="K", help="check K random rows of a finished output instead")
    parser.add_argument(
        "--max-shards",
        type=int,
        metavar="K",
        help="write at most K shards per process, then stop (run again to go on)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.shard_size < 1:
        parser.error("--batch-size and --shard-size must be at least 1")
    if args.verify is not None and args.verify < 1:
        parser.error("--verify needs a positive number of rows")
    if args.max_shards is not None and args.max_shards < 1:
        parser.error("--max-shards must be at least 1")
    return args


def load_source(args, sampling_rate: int):
    """The source as a `datasets` dataset with an undecoded audio column named `args.audio_column`."""
    from esc_hf.codec.audio_io import list_audio_files, load_audio_dataset

    if args.folder:
        root = Path(args.folder)
        files = list_audio_files(root)
        args.audio_column = "audio"
        # Paths cast to an Audio column (read by soundfile when encoded; no audio backend for datasets needed).
        rows = datasets.Dataset.from_dict(
            {"file": [str(p.relative_to(root)) for p in files], "audio": [str(p) for p in files]}
        )
        return rows.cast_column("audio", datasets.Audio(sampling_rate=sampling_rate, decode=False))
    return load_audio_dataset(args.dataset, args.split, args.audio_column, args.streaming, args.config)


def shard_rows(source, shard: int, shard_size: int):
    """Rows of shard `shard` of a map-style source, with their row numbers in the source (`source_index`)."""
    start = shard * shard_size
    rows = source.select(range(start, min(start + shard_size, len(source))))
    return rows.add_column("source_index", list(range(start, start + len(rows))))


def write_shard(rows, encode, audio_column: str, path: Path):
    """Encode `rows` in one `encode` call, so that all the shard's items of one padded length share model calls,
    and save them to `path` atomically."""
    coded = rows.map(encode, batched=True, batch_size=len(rows), remove_columns=[audio_column])
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    coded.save_to_disk(str(tmp))
    tmp.rename(path)


def merge(shards: list[Path], output: Path, description: dict):
    merged = datasets.concatenate_datasets([datasets.load_from_disk(str(s)) for s in shards])
    merged = merged.sort("source_index") if "source_index" in merged.column_names else merged
    merged.info.description = json.dumps(description)
    tmp = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_to_disk(str(tmp))
    tmp.rename(output)
    return merged


def verify(args, model, count: int) -> int:
    import torch

    from esc_hf.codec.audio_io import decode_audio_value
    from esc_hf.eval.metrics import mel_distance

    output = Path(args.output)
    data = datasets.load_from_disk(str(output))
    info = json.loads(data.info.description)
    source = load_source(args, model.config.sampling_rate)
    picks = np.random.default_rng(0).choice(len(data), size=min(count, len(data)), replace=False)
    failures = 0
    for row_index in sorted(int(i) for i in picks):
        row = data[row_index]
        audio = decode_audio_value(source[row["source_index"]][args.audio_column])
        with torch.inference_mode():
            expected = model.encode(torch.from_numpy(audio)[None, None], num_streams=info["num_streams"]).audio_codes
            decoded = model.decode(torch.tensor(row["codes"]).long()[None]).audio_values[0, 0, : audio.size]
        equal = torch.equal(torch.tensor(row["codes"]).long(), expected[0]) and row["num_samples"] == audio.size
        failures += not equal
        try:
            closeness = f"mel distance of the decoded audio {mel_distance(audio, decoded.numpy()):.3f}"
        except ValueError as error:  # a clip too short to measure
            closeness = str(error)
        print(f"row {row_index} (source {row['source_index']}): codes {'equal' if equal else 'DIFFER'}, {closeness}")
    print(f"verified {len(picks)} rows: {len(picks) - failures} exact")
    return 1 if failures else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    try:
        return tokenize(args, accelerator)
    finally:
        # Without this, gloo's threads outlive the interpreter's teardown and a process can abort at exit
        # ("terminate called without an active exception"), failing a launch whose work was all done.
        accelerator.end_training()


def tokenize(args, accelerator) -> int:
    import torch
    from accelerate.utils import gather_object

    from esc_hf import load_model
    from esc_hf.codec.dataset_codes import dataset_fingerprints, encode_batch

    output = Path(args.output)
    try:
        model = load_model(args.model).to(accelerator.device).eval()
        if args.bf16:
            model.set_backbone_dtype(torch.bfloat16)
        num_streams = model.config.resolve_num_streams(None, args.kbps)
        if args.verify:
            if args.streaming:
                raise ValueError("--verify reads rows of the source by number: not with --streaming")
            return verify(args, model, args.verify) if accelerator.is_main_process else 0
        if (output / "dataset_info.json").exists():
            accelerator.print(f"{output} is already complete: nothing to do")
            return 0
        source = load_source(args, model.config.sampling_rate)
        if not args.streaming and not len(source):
            raise ValueError("the source has no rows")
    except (ValueError, OSError) as error:
        print(f"tokenize_dataset.py: error: {error}", file=sys.stderr)
        return 1
    work = output.with_name(f".{output.name}.{SHARD_DIR}")
    work.mkdir(parents=True, exist_ok=True)
    encode = encode_batch(model, num_streams=num_streams, audio_column=args.audio_column,
                          batch_size=args.batch_size, lm_tokens=args.lm_tokens)  # fmt: skip
    rank, world = accelerator.process_index, accelerator.num_processes
    started, seconds, done, skipped, finished = time.perf_counter(), 0.0, 0, 0, True
    if args.streaming:
        from datasets.distributed import split_dataset_by_node

        stream = iter(split_dataset_by_node(source, rank=rank, world_size=world))
        chunks = (
            ([row for _, row in zip(range(args.shard_size), stream)], rank + world * local)
            for local in range(sys.maxsize)
        )
    else:
        shards = range(rank, math.ceil(len(source) / args.shard_size), world)
        chunks = ((shard, shard) for shard in shards)
    for rows, shard in chunks:
        if args.streaming and not rows:
            break
        path = work / f"shard-{shard:06d}"
        if path.exists():
            skipped += 1
            continue
        if args.max_shards is not None and done == args.max_shards:
            finished = False
            break
        if args.streaming:
            rows = datasets.Dataset.from_list(rows).cast_column(args.audio_column, datasets.Audio(decode=False))
        else:
            rows = shard_rows(source, rows, args.shard_size)
        write_shard(rows, encode, args.audio_column, path)
        seconds += sum(datasets.load_from_disk(str(path))["num_samples"]) / model.config.sampling_rate
        done += 1
    elapsed = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process {rank}: {done} shards written, {skipped} already there; {seconds / 3600:.3f} h of audio in "
          f"{elapsed:.0f} s ({seconds / max(elapsed, 1e-9):.1f} audio hours per hour), peak memory {peak_mb:.0f} MB",
          flush=True)  # fmt: skip
    accelerator.wait_for_everyone()
    everyone = all(gather_object([finished]))
    if accelerator.is_main_process:
        if not everyone:
            print(f"stopped at --max-shards: run the same command again to write the rest ({work})")
        else:
            shards = sorted(p for p in work.glob("shard-*"))
            description = {**dataset_fingerprints(model, num_streams), "precision": "bf16" if args.bf16 else "fp32"}
            merged = merge(shards, output, description)
            shutil.rmtree(work, ignore_errors=True)
            hours = sum(merged["num_samples"]) / model.config.sampling_rate / 3600
            print(f"wrote {output}: {len(merged)} rows, {hours:.3f} h of audio at "
                  f"{model.config.bandwidth_for_num_streams(num_streams):g} kbps")  # fmt: skip
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
