"""Encode/decode speed (× real time) and peak memory of ESC-Base on the CPU, optionally beside the authors' code.

    python benchmarks/bench_codec.py [--seconds 10] [--threads 2] [--repeats 3] [--authors CHECKOUT] [--csv FILE]

Random ESC-Base weights (speed does not depend on them). Each measurement runs in a fresh process so that its
peak RSS is its own. With `--authors`, the authors' model (from a checkout of yzGuu830/efficient-speech-codec;
needs `einops` and `torchaudio` importable) gets the same weights, its codes are checked against ours, and both are
timed in the same run: compare ratios, not absolute numbers, on a shared machine.
"""

import argparse
import csv
import multiprocessing as mp
import resource
import sys
import time
import types
from pathlib import Path


def _import_authors(checkout: str):
    """The authors' ESC class. Their code imports timm only for weight init and audiotools only for the GAN."""
    import torch

    layers = types.ModuleType("timm.models.layers")
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    layers.to_2tuple = lambda x: x if isinstance(x, tuple) else (x, x)
    sys.modules.update({"timm": types.ModuleType("timm"), "timm.models": types.ModuleType("timm.models"),
                        "timm.models.layers": layers})  # fmt: skip
    audiotools = types.ModuleType("audiotools")
    audiotools.ml = types.SimpleNamespace(BaseModel=torch.nn.Module)
    audiotools.AudioSignal = audiotools.STFTParams = object
    sys.modules.update({"audiotools": audiotools, "audiotools.ml": audiotools.ml})
    sys.path.insert(0, checkout)
    from esc.models import ESC

    return ESC


def _build(impl: str, authors: str | None):
    import torch

    from esc_hf import EscConfig, EscModel
    from esc_hf.convert import convert_state_dict

    torch.manual_seed(0)
    ours = EscModel(EscConfig()).eval()
    if authors is None:
        return ours
    ESC = _import_authors(authors)
    torch.manual_seed(0)
    theirs = ESC(codebook_dims=[32, 32, 16, 12, 8, 6]).eval()
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), ours), strict=False)
    return ours if impl == "esc_hf" else theirs


def _measure(impl, op, streams, args, queue):
    import torch

    torch.set_num_threads(args.threads)
    model = _build(impl, args.authors)
    length = 80 * (4 * round(args.seconds * 50) - 1)  # a length the authors' code round-trips
    audio = 0.1 * torch.randn(1, length, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        if impl == "esc_hf":
            encode = lambda: model.encode(audio[:, None], num_streams=streams).audio_codes  # noqa: E731
            codes = encode()
            decode = lambda: model.decode(codes).audio_values  # noqa: E731
        else:
            encode = lambda: model.encode(audio, num_streams=streams)[0]  # noqa: E731
            codes = encode()
            decode = lambda: model.decode(codes, (2, codes.shape[-1] * 2))  # noqa: E731
        fn = encode if op == "encode" else decode
        fn()  # warm-up
        best = min(_timed(fn) for _ in range(args.repeats))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((best, peak, codes.cpu().numpy()))


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(args):
    impls = ["esc_hf"] + (["authors"] if args.authors else [])
    ctx = mp.get_context("spawn")
    rows, codes = [], {}
    for op in ("encode", "decode"):
        for streams in (1, 6):
            for impl in impls:
                queue = ctx.Queue()
                proc = ctx.Process(target=_measure, args=(impl, op, streams, args, queue))
                proc.start()
                best, peak, code = queue.get()
                proc.join()
                codes[(impl, streams)] = code
                rows.append({"impl": impl, "op": op, "kbps": 1.5 * streams, "seconds": round(best, 4),
                             "x_real_time": round(args.seconds / best, 2), "peak_rss_mb": round(peak, 1)})  # fmt: skip
    if args.authors:
        for streams in (1, 6):
            same = bool((codes[("esc_hf", streams)] == codes[("authors", streams)]).all())
            print(f"codes identical to the authors' at {1.5 * streams:g} kbps: {same}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10 s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up; best is kept")
    parser.add_argument("--authors", help="checkout of the authors' repository, to time their code beside ours")
    parser.add_argument("--csv", help="also write the table here")
    args = parser.parse_args()
    rows = run(args)
    header = f"{'impl':<8} {'op':<7} {'kbps':>5} {'seconds':>8} {'x real time':>12} {'peak RSS MB':>12}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['impl']:<8} {r['op']:<7} {r['kbps']:>5g} {r['seconds']:>8.3f} {r['x_real_time']:>12.2f} "
              f"{r['peak_rss_mb']:>12.1f}")  # fmt: skip
    if args.authors:
        for op in ("encode", "decode"):
            for kbps in (1.5, 9.0):
                ours, theirs = (next(r for r in rows if r["impl"] == i and r["op"] == op and r["kbps"] == kbps)
                                for i in ("esc_hf", "authors"))  # fmt: skip
                print(f"speed-up {op} @ {kbps:g} kbps: {theirs['seconds'] / ours['seconds']:.2f}x")
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
