"""Entropy coding of ESC codes: probability tables fitted on a model's training-set codes, and a range coder
(`constriction`) that turns one layer of a packet (one stream's codes) into bytes and back.

ESC's codes are far from uniform, so `.esc` v2 (`docs/bitstream.md`) codes each layer with these tables instead
of spending `log2(codebook_size)` bits on every code. Each codebook (stream, group) has its own tables. A stream's
tables can be conditioned on a context that the decoder already holds when it decodes the code:

- `"none"`: no context (one table per codebook).
- `"previous"`: the same codebook's code in the previous frame of the packet (the packet's first frame has none).
- `"coarser"`: the code of the same group in the next coarser stream, same frame (stream 0 has none).

A context code is first mapped to one of `num_buckets` buckets (the `num_buckets - 1` most frequent context codes
get one each, the rest share the last), so that the tables stay small and well estimated; a code without context
uses the context-free table. Probabilities are counts smoothed towards the context-free table (`prior_weight`
pseudo-counts), computed in float64 from the stored integer counts on both sides, so that the coder's fixed-point
tables are the same wherever it runs.

Nothing depends on an earlier packet, so every packet decodes on its own; a layer's context never comes from a
finer stream, so dropping fine layers leaves the rest decodable. `examples/fit_entropy_model.py` fits the tables
(choosing each stream's context by held-out measurement) into a model's folder (`ENTROPY_MODEL_FILE`);
`benchmarks/bench_entropy.py` measures them on the val clips.
"""

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

ENTROPY_MODEL_FILE = "entropy_model.safetensors"
CONTEXTS = ("none", "previous", "coarser")
FORMAT = "esc-entropy-model/1"
MAX_BUCKETS = 1024
MAX_COUNT = 2**31 - 1
_WORD = np.dtype("<u4")


class EntropyModelError(ValueError):
    """An entropy model file cannot be used; the message says why."""


def stream_contexts(context: str | tuple | list, num_streams: int) -> tuple[str, ...]:
    """One context per stream: a name for all streams (stream 0 gets `"none"` for `"coarser"`), or a sequence."""
    if isinstance(context, str):
        context = ["none" if context == "coarser" and s == 0 else context for s in range(num_streams)]
    context = tuple(context)
    if len(context) != num_streams or any(c not in CONTEXTS for c in context):
        raise EntropyModelError(f"contexts must be {num_streams} of {', '.join(CONTEXTS)}, got {context}")
    if context[0] == "coarser":
        raise EntropyModelError("stream 0 has no coarser stream to take its context from")
    return context


class EntropyModel:
    """Probability tables for the codes of one ESC checkpoint, and the coder that uses them.

    Args:
        contexts: the context of each stream (see the module docstring).
        unigram: int counts `(streams, groups, codebook_size)`.
        context_counts: int counts `(streams, groups, num_buckets, codebook_size)`; None if no stream has a context.
        buckets: the bucket of each context code, ints `(streams, groups, codebook_size)`; None with them.
        prior_weight: pseudo-counts of the context-free table in each context's table.
        codebook_fingerprint: the `bitstream.codebook_fingerprint` of the model whose codes were counted.
    """

    def __init__(
        self, contexts, unigram, context_counts=None, buckets=None, prior_weight=16.0, codebook_fingerprint=b""
    ):
        unigram = np.asarray(unigram)
        if unigram.ndim != 3 or min(unigram.shape) < 1 or unigram.shape[-1] < 2:
            raise EntropyModelError(
                f"unigram counts must have shape (streams, groups, codebook_size), got {unigram.shape}"
            )
        _check_counts("unigram", unigram)
        streams, groups, size = unigram.shape
        contexts = stream_contexts(contexts, streams)
        if all(c == "none" for c in contexts):
            if context_counts is not None or buckets is not None:
                raise EntropyModelError("a model without contexts has no context tables")
        else:
            if context_counts is None or buckets is None:
                raise EntropyModelError("a model with contexts needs context counts and buckets")
            context_counts, buckets = np.asarray(context_counts), np.asarray(buckets)
            if context_counts.ndim != 4 or context_counts.shape[:2] + context_counts.shape[3:] != unigram.shape:
                raise EntropyModelError(
                    f"context counts must have shape ({streams}, {groups}, buckets, {size}), "
                    f"got {context_counts.shape}"
                )
            if not 1 <= context_counts.shape[2] <= MAX_BUCKETS:
                raise EntropyModelError(f"{context_counts.shape[2]} context buckets (must be 1 to {MAX_BUCKETS})")
            _check_counts("context", context_counts)
            if buckets.shape != unigram.shape or not np.issubdtype(buckets.dtype, np.integer):
                raise EntropyModelError(f"buckets must be integers of shape {unigram.shape}, got {buckets.shape}")
            if buckets.min() < 0 or buckets.max() >= context_counts.shape[2]:
                raise EntropyModelError(f"buckets must lie in [0, {context_counts.shape[2]})")
        if not (np.isfinite(prior_weight) and 0 < prior_weight <= 1e9):
            raise EntropyModelError(f"prior weight must be positive and finite, got {prior_weight}")
        self.contexts = contexts
        self.prior_weight = float(prior_weight)
        self.codebook_fingerprint = bytes(codebook_fingerprint)
        self.unigram = unigram.astype(np.int64)
        self.context_counts = None if context_counts is None else context_counts.astype(np.int64)
        self.buckets = None if buckets is None else buckets.astype(np.int64)
        self.num_streams, self.group_size, self.codebook_size = streams, groups, size
        self._tables = self._probabilities()
        self._models = None  # the coder's fixed-point tables, built on first use
        self.fingerprint = self._fingerprint()

    # -- fitting ------------------------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        codes,
        contexts,
        codebook_size: int,
        num_buckets: int = 64,
        prior_weight: float = 16.0,
        codebook_fingerprint: bytes = b"",
        packet_frames: int = 50,
    ) -> "EntropyModel":
        """Counts the codes of an iterable of items, each int `(streams, groups, frames)` (all with the same streams
        and groups), as packets of `packet_frames` frames see them (`"previous"` has no context in a packet's
        first frame). `contexts`: see `stream_contexts`."""
        if not 1 <= num_buckets <= min(MAX_BUCKETS, codebook_size):
            raise EntropyModelError(f"num_buckets must be 1 to {min(MAX_BUCKETS, codebook_size)}, got {num_buckets}")
        shape, unigram_index, pair_index = None, [], []
        for item in codes:
            item = np.asarray(item, dtype=np.int64)
            if item.ndim != 3 or item.min(initial=0) < 0 or item.max(initial=0) >= codebook_size:
                raise EntropyModelError(
                    f"codes must be ints in [0, {codebook_size}) of shape (streams, groups, frames)"
                )
            if shape is None:
                shape = item.shape[:2]
                contexts = stream_contexts(contexts, shape[0])
            elif item.shape[:2] != shape:
                raise EntropyModelError(f"an item has {item.shape[:2]} streams and groups, the first had {shape}")
            codebook = np.arange(shape[0] * shape[1])[:, None]  # (stream, group) as one index
            flat = item.reshape(len(codebook), -1)
            unigram_index.append((codebook * codebook_size + flat).reshape(-1))
            context, valid = _item_contexts(contexts, item, packet_frames)
            index = (codebook * codebook_size + context.reshape(len(codebook), -1)) * codebook_size + flat
            pair_index.append(index[valid.reshape(len(codebook), -1)])
        if shape is None:
            raise EntropyModelError("no codes to fit the entropy model on")
        cells = shape[0] * shape[1] * codebook_size
        unigram = _clip(np.bincount(np.concatenate(unigram_index), minlength=cells).reshape(*shape, codebook_size))
        if all(c == "none" for c in contexts):
            return cls(contexts, unigram, prior_weight=prior_weight, codebook_fingerprint=codebook_fingerprint)
        pairs = np.bincount(np.concatenate(pair_index), minlength=cells * codebook_size)
        pairs = pairs.reshape(*shape, codebook_size, codebook_size)  # (stream, group, context, code)
        # The most frequent contexts get a bucket each; the rare ones share the last.
        order = np.argsort(-pairs.sum(axis=-1), axis=-1, kind="stable")
        buckets = np.full(order.shape, num_buckets - 1, np.int64)
        np.put_along_axis(buckets, order[..., : num_buckets - 1], np.arange(num_buckets - 1), axis=-1)
        context_counts = np.zeros(shape + (num_buckets, codebook_size), np.int64)
        for s in range(shape[0]):
            for g in range(shape[1]):
                np.add.at(context_counts[s, g], buckets[s, g], pairs[s, g])
        return cls(contexts, unigram, _clip(context_counts), buckets, prior_weight, codebook_fingerprint)

    # -- files --------------------------------------------------------------------------------------------------

    def save(self, path) -> None:
        """Writes the tables to a safetensors file, atomically."""
        from safetensors.numpy import save

        from ..utils.atomic_files import atomic_file

        tensors = {"unigram": self.unigram.astype(np.int32)}
        if self.context_counts is not None:
            tensors["context_counts"] = self.context_counts.astype(np.int32)
            tensors["buckets"] = self.buckets.astype(np.int32)
        metadata = {
            "format": FORMAT,
            "contexts": ",".join(self.contexts),
            "prior_weight": repr(self.prior_weight),
            "codebook_fingerprint": self.codebook_fingerprint.hex(),
        }
        with atomic_file(path) as handle:
            handle.write(save(tensors, metadata))

    @classmethod
    def load(cls, path) -> "EntropyModel":
        """Reads and checks a file that `save` wrote; `EntropyModelError` names what is wrong."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), "np") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("format") != FORMAT:
                    raise EntropyModelError(f"not an ESC entropy model (format {metadata.get('format')!r})")
                contexts = tuple(metadata.get("contexts", "").split(","))
                expected = {"unigram"} if set(contexts) <= {"none"} else {"unigram", "context_counts", "buckets"}
                if set(handle.keys()) != expected:
                    raise EntropyModelError(f"holds tensors {sorted(handle.keys())}, expected {sorted(expected)}")
                tensors = {name: handle.get_tensor(name) for name in expected}
            for name, tensor in tensors.items():
                if tensor.dtype != np.int32:
                    raise EntropyModelError(f"tensor {name} is {tensor.dtype}, expected int32")
            return cls(contexts, tensors["unigram"], tensors.get("context_counts"), tensors.get("buckets"),
                       float(metadata.get("prior_weight", "nan")),
                       bytes.fromhex(metadata.get("codebook_fingerprint", "")))  # fmt: skip
        except EntropyModelError as error:
            raise EntropyModelError(f"{path}: {error}") from None
        except Exception as error:  # a damaged file fails inside safetensors in many ways; name the file
            raise EntropyModelError(
                f"{path}: cannot read the entropy model ({type(error).__name__}: {error})"
            ) from None

    def check_model(self, model) -> None:
        """Raises `EntropyModelError` unless these tables were fitted on `model`'s codes."""
        from .bitstream import codebook_fingerprint

        config = model.config
        ours = (self.num_streams, self.group_size, self.codebook_size)
        if ours != (config.num_streams, config.group_size, config.codebook_size):
            raise EntropyModelError(
                f"the entropy model is for {ours[0]} streams × {ours[1]} groups × {ours[2]} codes; the model has "
                f"{config.num_streams} × {config.group_size} × {config.codebook_size}"
            )
        if self.codebook_fingerprint != codebook_fingerprint(model):
            raise EntropyModelError(
                "the entropy model was fitted on another checkpoint's codes (codebook fingerprint "
                f"{self.codebook_fingerprint.hex()}, the model's is {codebook_fingerprint(model).hex()}); refit it "
                "with examples/fit_entropy_model.py"
            )

    # -- probabilities ------------------------------------------------------------------------------------------

    def _probabilities(self) -> np.ndarray:
        """float64 `(streams, groups, rows, codebook_size)`: one row per bucket, then the context-free row."""
        size = self.codebook_size
        unigram = (self.unigram + 0.5) / (self.unigram.sum(-1, keepdims=True) + 0.5 * size)
        if self.context_counts is None:
            return unigram[:, :, None]
        counts = self.context_counts
        context = (counts + self.prior_weight * unigram[:, :, None]) / (
            counts.sum(-1, keepdims=True) + self.prior_weight
        )
        return np.concatenate([context, unigram[:, :, None]], axis=2)

    def _fingerprint(self) -> bytes:
        digest = hashlib.sha256(json.dumps([FORMAT, self.contexts, repr(self.prior_weight)]).encode())
        for array in (self.unigram, self.context_counts, self.buckets):
            if array is not None:
                digest.update(str(array.shape).encode())
                digest.update(array.astype("<i8").tobytes())
        return digest.digest()[:8]

    def _rows(self, stream: int, context: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Table row per code: the context's bucket, or the context-free row where there is none."""
        free = self._tables.shape[2] - 1
        if self.buckets is None:
            return np.full(np.shape(context), free)
        groups = np.arange(self.group_size).reshape((-1,) + (1,) * (np.ndim(context) - 1))
        return np.where(valid, self.buckets[stream, groups, context], free)

    def bits(self, codes: np.ndarray, packet_frames: int = 50) -> np.ndarray:
        """Ideal code length in bits of each code of an item `(streams, groups, frames)` coded in packets of
        `packet_frames` frames (the real coder spends at most a few bytes more per layer)."""
        codes = np.asarray(codes, dtype=np.int64)
        context, valid = _item_contexts(self.contexts[: codes.shape[0]], codes, packet_frames)
        out = np.empty(codes.shape)
        for s in range(codes.shape[0]):
            rows = self._rows(s, context[s], valid[s])
            for g in range(codes.shape[1]):
                out[s, g] = -np.log2(self._tables[s, g, rows[g], codes[s, g]])
        return out

    # -- coding -------------------------------------------------------------------------------------------------

    def _coder_models(self):
        """constriction's model of every table row, `[stream][group][row]`."""
        if self._models is None:
            import constriction

            # `perfect=False`: the documented fast quantisation; encoder and decoder both use it.
            self._models = [
                [[constriction.stream.model.Categorical(row, perfect=False) for row in group] for group in stream]
                for stream in self._tables
            ]
        return self._models

    def _check_layer(self, stream: int, coarser) -> None:
        if not 0 <= stream < self.num_streams:
            raise ValueError(f"stream {stream} is outside the entropy model's {self.num_streams} streams")
        if self.contexts[stream] == "coarser" and coarser is None:
            raise ValueError(f"stream {stream} is coded given stream {stream - 1}'s codes, which were not given")

    def encode_layer(self, stream: int, codes: np.ndarray, coarser: np.ndarray | None = None) -> bytes:
        """Bytes of one layer: `codes` int `(groups, frames)` of stream `stream`; `coarser`: the codes of stream
        `stream - 1` in the same frames (needed where that stream's context is `"coarser"`)."""
        import constriction

        self._check_layer(stream, coarser)
        codes = np.asarray(codes, dtype=np.int64)
        models = self._coder_models()[stream]
        encoder = constriction.stream.queue.RangeEncoder()
        context = self.contexts[stream]
        if context == "none":
            for g in range(codes.shape[0]):
                encoder.encode(codes[g].astype(np.int32), models[g][-1])
        else:
            rows = self._rows(stream, *_layer_context(context, codes, coarser))
            # "previous" decodes frame by frame; "coarser" uses the same order.
            for f in range(codes.shape[1]):
                for g in range(codes.shape[0]):
                    encoder.encode(int(codes[g, f]), models[g][rows[g, f]])
        data = encoder.get_compressed().astype(_WORD).tobytes()
        # The coder writes whole 32-bit words, whose last bytes often do not matter: keep the shortest prefix that
        # decodes to the same codes with zeros in place of the bytes dropped. Exact, by this check.
        for cut in (3, 2, 1):
            if len(data) > cut:
                try:
                    if np.array_equal(self._decode(stream, data[:-cut], codes.shape[1], coarser), codes):
                        return data[:-cut]
                except ValueError:
                    pass
        return data

    def decode_layer(self, stream: int, data: bytes, frames: int, coarser: np.ndarray | None = None) -> np.ndarray:
        """Codes `(groups, frames)` of stream `stream` from `encode_layer`'s bytes. Raises `ValueError` for bytes
        the coder cannot decode."""
        self._check_layer(stream, coarser)
        return self._decode(stream, data, frames, coarser)

    def _decode(self, stream: int, data: bytes, frames: int, coarser) -> np.ndarray:
        import constriction

        groups, models, context = self.group_size, self._coder_models()[stream], self.contexts[stream]
        padded = bytes(data) + bytes(-len(data) % 4)
        try:
            decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(padded, dtype=_WORD).astype(np.uint32))
            if context == "none":
                return np.stack([np.asarray(decoder.decode(models[g][-1], frames), np.int64) for g in range(groups)])
            codes = np.empty((groups, frames), np.int64)
            if context == "coarser":
                rows = self._rows(stream, *_layer_context(context, codes, coarser))
            free = self._tables.shape[2] - 1
            for f in range(frames):
                if context == "previous":
                    rows_f = [free] * groups if f == 0 else self.buckets[stream, np.arange(groups), codes[:, f - 1]]
                else:
                    rows_f = rows[:, f]
                for g in range(groups):
                    codes[g, f] = decoder.decode(models[g][rows_f[g]])
            return codes
        except (AssertionError, ValueError, RuntimeError, OverflowError) as error:  # constriction's, for bad data
            raise ValueError(f"the entropy-coded layer cannot be decoded ({error})") from None


def _check_counts(name: str, counts: np.ndarray) -> None:
    if not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0 or counts.max() > MAX_COUNT:
        raise EntropyModelError(f"{name} counts must be integers in [0, {MAX_COUNT}]")


def _clip(counts: np.ndarray) -> np.ndarray:
    return np.minimum(counts, MAX_COUNT)


def _layer_context(context: str, codes: np.ndarray, coarser) -> tuple[np.ndarray, np.ndarray]:
    """Context code and whether there is one, per code of one layer `(groups, frames)`."""
    if context == "previous":
        previous = np.concatenate([np.zeros((codes.shape[0], 1), np.int64), codes[:, :-1]], axis=1)
        return previous, np.broadcast_to(np.arange(codes.shape[1]) > 0, codes.shape)
    if context == "coarser":
        return np.asarray(coarser, dtype=np.int64), np.ones(codes.shape, bool)
    return np.zeros(codes.shape, np.int64), np.zeros(codes.shape, bool)


def _item_contexts(contexts, codes: np.ndarray, packet_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """`_layer_context` for every stream of an item `(streams, groups, frames)` cut into packets."""
    context = np.zeros(codes.shape, np.int64)
    valid = np.zeros(codes.shape, bool)
    for start in range(0, codes.shape[-1], packet_frames):
        part = slice(start, start + packet_frames)
        for s in range(codes.shape[0]):
            coarser = codes[s - 1, :, part] if s else None
            context[s, :, part], valid[s, :, part] = _layer_context(contexts[s], codes[s, :, part], coarser)
    return context, valid


def load_entropy_model(model) -> EntropyModel | None:
    """The entropy model in `model`'s folder (from `from_pretrained`, a local folder or the Hub cache), checked
    against `model`; None if the folder has none."""
    source = str(getattr(model, "name_or_path", "") or "")
    path = Path(source) / ENTROPY_MODEL_FILE if source else None
    if path is None or not path.parent.is_dir():
        path = _hub_file(source)
    if path is None or not Path(path).is_file():
        return None
    stat = Path(path).stat()
    entropy = _load_cached(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
    entropy.check_model(model)
    return entropy


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> EntropyModel:
    # Loading takes about 0.5 s (19 MB of counts → float64 tables); a changed file has another key.
    return EntropyModel.load(path)


def _hub_file(name: str):
    if not name:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, ENTROPY_MODEL_FILE)
    except Exception:  # not a Hub id
        return None
    return found if isinstance(found, str) else None
