"""Encode/decode speed of ESC-Base beside the transformers codecs (and the authors' code), in one run.

    python benchmarks/bench_codec.py [--seconds 10] [--threads 2] [--repeats 3] [--rounds 2] [--authors CHECKOUT]
        [--impls esc_hf esc_hf-compile onnxruntime encodec mimi dac authors] [--onnx-dir DIR] [--csv FILE]
        [--device cpu|cuda] [--batch-sizes 1 16 64] [--precisions fp32 tf32 bf16]

Every codec gets the same clip length, threads and repeats, random weights (speed does not depend on them) and
its own sampling rate (EnCodec and Mimi 24 kHz). Each (codec, precision, batch) runs in a fresh process; encode and
decode are timed separately (best of `--repeats` after a warm-up, and best over `--rounds` passes through all
codecs) at two rates: ESC 1.5 and 9 kbps, the others at their bitrate nearest 1.5 kbps and their highest up to
9 kbps (the `kbps` column says which). `esc_hf-compile` (torch.compile, inductor; 9 kbps only) is timed when named
in `--impls`: compiling takes minutes. `onnxruntime` exports ESC-Base once (minutes; `--onnx-dir` keeps it for
the next run); its encoder graph computes all six streams, also for the 1.5 kbps row. Columns:

* `x_real_time`: seconds of audio (× batch) per second of compute.
* `peak_mb`: peak resident memory of the process during that call (CPU; the model and the runtime included), or
  peak CUDA memory allocated (GPU).
* `gflop`: FLOPs of the call as PyTorch's FlopCounterMode counts them (matmuls, convolutions, attention). ESC rows
  all use the FLOPs of the authors' formulation (their op graph), so every ESC row is measured against the same work;
  the other codecs' are counted with `--flops` (slow).
  There is no "share of peak" column: the fast paths do less work than that formulation (the fused
  de-embedding alone has 6x fewer FLOPs), so nominal FLOPs per second overstate the hardware's rate (the fp32
  decode came out at 160-175 % of a 2048^3 matmul's speed on one CPU) and no measured ceiling makes that share
  honest.
* `codes_vs_fp32`: share of codes equal to esc_hf fp32 eager's (the exact path; its own row compares with the
  authors' codes when `--authors` is given).

Memory: every child process runs with glibc keeping freed memory for reuse (`MALLOC_MMAP_THRESHOLD_` at its
32 MiB maximum, `MALLOC_TRIM_THRESHOLD_` never reached), the same for all codecs; `--malloc default` turns this
off. With glibc's defaults a call's large temporaries are partly fresh pages, and how many depends on the heap's
history: on one 2-core VM that moved EnCodec's encode between 21x and 30x real time from one run to the next,
while ESC moved by a few percent; the setting measures every codec at its best.

Precisions: `fp32` (exact: ESC codes identical to the authors'), `tf32` (CUDA matmuls in TF32), `bf16` (opt-in
`EscModel.set_backbone_dtype(torch.bfloat16)`: backbone in bf16, STFT and codebook search in float32). The
authors' checkout needs `einops` and `torchaudio` importable; their model gets our weights.
"""

import argparse
import csv
import multiprocessing as mp
import os
import sys
import tempfile
import time
import types
from pathlib import Path


ESC_IMPLS = ("esc_hf", "esc_hf-compile", "onnxruntime", "authors")
OTHER_IMPLS = ("encodec", "mimi", "dac")
ALL_IMPLS = ("esc_hf", "esc_hf-compile", "onnxruntime", "encodec", "mimi", "dac", "authors")
# torch.compile (inductor) takes ~6 minutes on 2 cores for the two 9 kbps graphs: asked for by name only.
DEFAULT_IMPLS = ("esc_hf", "onnxruntime", "encodec", "mimi", "dac", "authors")


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


def _esc_models(authors: str | None):
    """Random ESC-Base (seed 0), and the authors' model with the same weights when a checkout is given."""
    import torch

    from esc_hf import EscConfig, EscModel
    from esc_hf.convert import convert_state_dict

    torch.manual_seed(0)
    ours = EscModel(EscConfig()).eval()
    if authors is None:
        return ours, None
    ESC = _import_authors(authors)
    torch.manual_seed(0)
    theirs = ESC(codebook_dims=[32, 32, 16, 12, 8, 6]).eval()
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), ours), strict=False)
    return ours, theirs


# ----------------------------------------------------------------------------------------------------------------
# One codec per process: encode(audio, setting) / decode(codes, setting), its bitrates and FLOP counts


class _Codec:
    sample_rate = 16000
    settings = ()  # (kbps, argument)

    def encode(self, audio, setting):
        raise NotImplementedError

    def decode(self, codes, setting):
        raise NotImplementedError

    def flops(self, audio, codes, setting):
        """(encode, decode) FLOPs, or None."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.encode(audio, setting)
        encode = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            self.decode(codes, setting)
        return encode, counter.get_total_flops()


class _EscHF(_Codec):
    settings = ((1.5, 1), (9.0, 6))

    def __init__(self, args, precision, compiled=False):
        import torch

        self.model = _esc_models(args.authors)[0].to(args.device)
        if precision == "bf16":
            self.model.set_backbone_dtype(torch.bfloat16)
        self._encode = lambda audio, n: self.model.encode(audio[:, None], num_streams=n).audio_codes  # noqa: E731
        self._decode = lambda codes: self.model.decode(codes).audio_values  # noqa: E731
        if compiled:
            # Inductor compiles each (streams, length) once, minutes on 2 cores: 9 kbps only.
            self.settings = self.settings[1:]
            self._encode, self._decode = torch.compile(self._encode), torch.compile(self._decode)

    def encode(self, audio, n):
        return self._encode(audio, n)

    def decode(self, codes, n):
        return self._decode(codes)


def _esc_nominal_flops(model, audio, codes, streams):
    """FLOPs of the authors' formulation of ESC (their attention and de-embedding), counted on our model's
    training-path ops, which follow the authors' op graph."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from esc_hf import EscFeatureExtractor

    stft = EscFeatureExtractor(sampling_rate=model.config.sampling_rate).stft(audio.float().reshape(audio.shape[0], -1))
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model.encode_stft(stft, streams)
    encode = counter.get_total_flops()
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model.decode_stft(codes)
    return encode, counter.get_total_flops()


class _Authors(_Codec):
    settings = ((1.5, 1), (9.0, 6))

    def __init__(self, args, precision):
        self.model = _esc_models(args.authors)[1].to(args.device)

    def encode(self, audio, n):
        return self.model.encode(audio, num_streams=n)[0]

    def decode(self, codes, n):
        return self.model.decode(codes, (2, codes.shape[-1] * 2))


class _OnnxRuntime(_Codec):
    settings = ((1.5, 1), (9.0, 6))

    def __init__(self, args, precision):
        from esc_hf.codec.onnx_runtime import EscOnnxModel

        self.codec = EscOnnxModel(args.onnx_dir, threads=args.threads)

    def encode(self, audio, n):
        import torch

        return torch.from_numpy(self.codec.encode(audio.cpu().numpy(), num_streams=n))

    def decode(self, codes, n):
        return self.codec.decode(codes.cpu().numpy())

    def flops(self, audio, codes, setting):
        return None


class _Transformers(_Codec):
    def __init__(self, args, precision, name):
        import torch
        import transformers

        torch.manual_seed(0)
        if name == "encodec":
            self.model = transformers.EncodecModel(transformers.EncodecConfig())
            self.sample_rate = self.model.config.sampling_rate
            self.settings = ((1.5, 1.5), (6.0, 6.0))
        elif name == "mimi":
            self.model = transformers.MimiModel(transformers.MimiConfig())
            c = self.model.config
            self.sample_rate = c.sampling_rate
            kbps = lambda n: round(c.frame_rate * n * (c.codebook_size.bit_length() - 1) / 1000, 2)  # noqa: E731
            low = min(range(1, c.num_quantizers + 1), key=lambda n: abs(kbps(n) - 1.5))
            self.settings = ((kbps(low), low), (kbps(c.num_quantizers), c.num_quantizers))
        else:
            self.model = transformers.DacModel(transformers.DacConfig())
            c = self.model.config
            self.sample_rate = c.sampling_rate
            bits = c.codebook_size.bit_length() - 1
            kbps = lambda n: round(c.sampling_rate / c.hop_length * n * bits / 1000, 2)  # noqa: E731
            low = min(range(1, c.n_codebooks + 1), key=lambda n: abs(kbps(n) - 1.5))
            high = max(n for n in range(1, c.n_codebooks + 1) if kbps(n) <= 9.0)
            self.settings = ((kbps(low), low), (kbps(high), high))
        self.model = self.model.eval().to(args.device)
        self.name = name

    def encode(self, audio, setting):
        audio = audio[:, None]
        if self.name == "encodec":
            out = self.model.encode(audio, bandwidth=setting)
            return out.audio_codes, out.audio_scales
        if self.name == "mimi":
            return self.model.encode(audio, num_quantizers=setting).audio_codes
        return self.model.encode(audio, n_quantizers=setting).audio_codes

    def decode(self, codes, setting):
        if self.name == "encodec":
            return self.model.decode(codes[0], codes[1]).audio_values
        if self.name == "dac":
            return self.model.decode(audio_codes=codes).audio_values
        return self.model.decode(codes).audio_values


def _make_codec(impl, precision, args):
    if impl == "esc_hf":
        return _EscHF(args, precision)
    if impl == "esc_hf-compile":
        return _EscHF(args, precision, compiled=True)
    if impl == "onnxruntime":
        return _OnnxRuntime(args, precision)
    if impl == "authors":
        return _Authors(args, precision)
    return _Transformers(args, precision, impl)


# ----------------------------------------------------------------------------------------------------------------
# Measurement (in a child process)


def _reset_peak_rss():
    """Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM), so each call gets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_rss_mb():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _set_precision(precision, device):
    import torch

    tf32 = precision == "tf32"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def _timed(fn, repeats, device):
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()  # warm-up (and the compile, for torch.compile)
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _peak_rss_mb()
    return best, peak


def _measure(impl, precision, batch, args, queue):
    try:
        queue.put(_measure_rows(impl, precision, batch, args))
    except Exception as error:  # reported in the table rather than killing the whole run
        queue.put(f"{type(error).__name__}: {error}")


def _measure_rows(impl, precision, batch, args):
    import torch

    torch.set_num_threads(args.threads)
    _set_precision(precision, args.device)
    start = time.perf_counter()
    codec = _make_codec(impl, precision, args)
    setup = time.perf_counter() - start
    length = round(args.seconds * codec.sample_rate)
    if codec.sample_rate == 16000:
        length = 80 * (4 * round(args.seconds * 50) - 1)  # a length the authors' ESC code round-trips
    audio = 0.1 * torch.randn(batch, length, generator=torch.Generator().manual_seed(1))
    audio = audio.to(args.device)
    rows = []
    with torch.inference_mode():
        for kbps, setting in codec.settings:
            rate = "low" if setting == codec.settings[0][1] and len(codec.settings) > 1 else "high"
            first = time.perf_counter()
            codes = codec.encode(audio, setting)
            first = time.perf_counter() - first
            enc_s, enc_peak = _timed(lambda: codec.encode(audio, setting), args.repeats, args.device)
            dec_s, dec_peak = _timed(lambda: codec.decode(codes, setting), args.repeats, args.device)
            flops = None
            if impl in ESC_IMPLS:
                # FLOPs grow with the batch: counted on one item, on the CPU (also for CUDA runs).
                cpu = isinstance(codec, _EscHF) and args.device == "cpu"
                model = codec.model if cpu else _esc_models(None)[0]
                flops = [batch * f for f in _esc_nominal_flops(model, audio[:1].cpu(), codes[:1].cpu(), setting)]
            elif args.flops:
                flops = codec.flops(audio, codes, setting)
            array = codes.cpu().numpy() if torch.is_tensor(codes) else None
            seconds_of_audio = batch * length / codec.sample_rate
            for op, seconds, peak, fl in (("encode", enc_s, enc_peak, flops and flops[0]),
                                          ("decode", dec_s, dec_peak, flops and flops[1])):  # fmt: skip
                rows.append({"impl": impl, "precision": precision, "device": args.device, "batch": batch, "op": op,
                             "kbps": kbps, "rate": rate, "seconds": seconds, "x_real_time": seconds_of_audio / seconds,
                             "peak_mb": peak, "gflop": fl / 1e9 if fl else None,
                             "first_call_s": first if op == "encode" else None, "setup_s": setup,
                             "codes": array if op == "encode" else None})  # fmt: skip
    return rows


def _in_child(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    try:
        result = queue.get()
    finally:
        proc.join()
    return result


def _export_onnx(args):
    """ONNX graphs of the benchmark's ESC-Base. One export (minutes on 2 cores): its encoder computes all six
    streams, so the 1.5 kbps row encodes six and keeps one (`--num-streams 1` would export a faster one)."""
    from esc_hf.codec.onnx_export import export_onnx

    if not (Path(args.onnx_dir) / "encoder.onnx").exists():
        export_onnx(_esc_models(args.authors)[0], args.onnx_dir)


def run(args):
    impls = [i for i in args.impls if i != "authors" or args.authors]
    if args.authors and "authors" not in impls:
        impls.append("authors")
    if "onnxruntime" in impls and args.device != "cpu":
        impls.remove("onnxruntime")  # the CPU execution provider only, here
    jobs = []
    for impl in impls:
        precisions = [p for p in args.precisions if impl == "esc_hf" or p != "bf16"]
        if impl in OTHER_IMPLS or impl == "onnxruntime":
            precisions = [p for p in precisions if p in ("fp32", "tf32")][: 1 if args.device == "cpu" else None]
        jobs += [(impl, precision, batch) for precision in precisions for batch in args.batch_sizes]
    if "onnxruntime" in impls:
        start = time.perf_counter()
        _export_in_child(args)
        print(f"ONNX export: {time.perf_counter() - start:.0f} s", flush=True)
    best, failures = {}, []
    # Rounds go through every codec in turn, so that a burst of load from elsewhere hits one round of one codec
    # rather than all its measurements; each call keeps its fastest round.
    for round_ in range(args.rounds):
        for impl, precision, batch in jobs:
            if impl == "esc_hf-compile" and round_:
                continue  # minutes of compilation per round
            start = time.perf_counter()
            result = _in_child(_measure, impl, precision, batch, args)
            label = f"round {round_ + 1}: {impl} {precision} batch {batch}"
            if isinstance(result, str):
                failures.append(f"{label}: {result}")
                print(f"{label}: FAILED {result}", flush=True)
                continue
            print(f"{label}: {time.perf_counter() - start:.0f} s", flush=True)
            for row in result:
                key = (row["impl"], row["precision"], row["batch"], row["op"], row["rate"])
                if key not in best or row["seconds"] < best[key]["seconds"]:
                    best[key] = row
    rows = list(best.values())
    _annotate(rows)
    return rows, failures


def _export_in_child(args):
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_export_onnx, args=(args,))
    proc.start()
    proc.join()
    if proc.exitcode:
        raise RuntimeError(f"ONNX export failed (exit code {proc.exitcode})")


def _annotate(rows):
    import numpy as np

    def find(impl, precision, batch, rate, op="encode"):
        key = (impl, precision, batch, rate, op)
        return next((r for r in rows if (r["impl"], r["precision"], r["batch"], r["rate"], r["op"]) == key), None)

    for r in rows:
        if r["impl"] in ESC_IMPLS and r["gflop"] is None:
            ref = find("esc_hf", "fp32", r["batch"], r["rate"], r["op"])
            r["gflop"] = ref and ref["gflop"]
        r["codes_vs_fp32"] = None
        if r["op"] != "encode" or r["impl"] in OTHER_IMPLS:
            continue
        exact = r["impl"] == "esc_hf" and r["precision"] == "fp32"
        ref = find("authors" if exact else "esc_hf", "fp32", r["batch"], r["rate"])
        if ref is not None and ref is not r and r["codes"] is not None and ref["codes"] is not None:
            r["codes_vs_fp32"] = float(np.mean(r["codes"] == ref["codes"]))
    for r in rows:
        if r["op"] == "decode":
            r["codes_vs_fp32"] = find(r["impl"], r["precision"], r["batch"], r["rate"])["codes_vs_fp32"]


COLUMNS = ["impl", "precision", "device", "batch", "op", "rate", "kbps", "seconds", "x_real_time", "peak_mb", "gflop",
           "codes_vs_fp32", "first_call_s", "setup_s"]  # fmt: skip


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_table(rows, args):
    print(f"\n{args.seconds:g} s clip, {args.threads} threads, device {args.device}, best of {args.repeats}, "
          f"malloc {args.malloc}")
    header = (f"{'impl':<15} {'prec':<5} {'batch':>5} {'op':<7} {'kbps':>5} {'seconds':>8} {'x RT':>8} {'peak MB':>8} "
              f"{'GFLOP':>7} {'codes=':>7}")  # fmt: skip
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['impl']:<15} {r['precision']:<5} {r['batch']:>5} {r['op']:<7} {r['kbps']:>5g} {r['seconds']:>8.3f} "
              f"{r['x_real_time']:>8.1f} {r['peak_mb']:>8.0f} {_fmt(r['gflop'], '7.1f'):>7} "
              f"{_fmt(r['codes_vs_fp32'], '7.4f'):>7}")  # fmt: skip


def print_ratios(rows):
    """Speed-ups of every ESC row over the authors' code and over EnCodec, same batch, operation and rate."""
    print()
    for r in sorted(rows, key=lambda r: (r["batch"], r["op"], r["rate"])):
        if r["impl"] not in ESC_IMPLS or r["impl"] == "authors":
            continue
        for name in ("authors", "encodec"):
            ref = next((x for x in rows if (x["impl"], x["precision"], x["batch"], x["op"], x["rate"])
                        == (name, "fp32", r["batch"], r["op"], r["rate"])), None)  # fmt: skip
            if ref is not None:
                print(f"batch {r['batch']} {r['op']} {r['kbps']:g} kbps: {r['impl']} {r['precision']} is "
                      f"{ref['seconds'] / r['seconds']:.2f}x {name} ({ref['kbps']:g} kbps)")  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10 s)")
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up; best is kept")
    parser.add_argument("--authors", help="checkout of the authors' repository, to time their code beside ours")
    parser.add_argument("--impls", nargs="+", default=list(DEFAULT_IMPLS), choices=ALL_IMPLS,
                        help="what to time (default: all but esc_hf-compile; authors needs --authors)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="passes over all codecs; each call keeps its best")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="clips per call (default 1)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "tf32", "bf16"],
                        help="default: fp32 bf16 on the CPU, fp32 tf32 bf16 on CUDA")  # fmt: skip
    parser.add_argument("--flops", action="store_true", help="also count the transformers codecs' FLOPs (slow)")
    parser.add_argument("--onnx-dir", help="where the ONNX export goes (reused if there; default: a temporary one)")
    parser.add_argument("--csv", help="also write the table here")
    parser.add_argument("--malloc", choices=["reuse", "default"], default="reuse",
                        help="glibc keeps freed memory for reuse in every child (default), or its own defaults")  # fmt: skip
    args = parser.parse_args(argv)
    if args.precisions is None:
        args.precisions = ["fp32", "tf32", "bf16"] if args.device == "cuda" else ["fp32", "bf16"]
    if args.device == "cpu" and "tf32" in args.precisions:
        parser.error("tf32 is a CUDA setting")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch build or machine has no CUDA device")
    if min(args.batch_sizes) < 1 or args.seconds <= 0 or args.repeats < 1:
        parser.error("--batch-sizes, --seconds and --repeats must be positive")
    if args.malloc == "reuse":
        # Read by glibc when a spawned child starts: every measurement process gets them.
        os.environ.update({"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**62)})
    with tempfile.TemporaryDirectory() as tmp:
        args.onnx_dir = args.onnx_dir or str(Path(tmp) / "onnx")
        rows, failures = run(args)
    print_table(rows, args)
    print_ratios(rows)
    for failure in failures:
        print("failed:", failure)
    if args.csv:
        from esc_hf.utils.atomic_files import atomic_file

        with atomic_file(args.csv, "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
