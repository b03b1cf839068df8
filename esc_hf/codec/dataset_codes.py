"""ESC codes for a whole dataset: [`encode_batch`] is a batched `datasets.Dataset.map` function that turns an
audio column into codes, the codes `EscModel.encode` gives each item alone; `examples/tokenize_dataset.py` runs it
on every process of an `accelerate launch`.

    dataset = dataset.map(esc_hf.encode_batch(model, kbps=6), batched=True, remove_columns=["audio"])

Exactness: the model pads every input with zeros to the next length it handles (`config.padded_length`) and its
encoder looks ahead, so an item padded further, to a longer item's length in a batch, gets other codes in its last
frames. `encode_batch` therefore runs the model only on items of the same padded length together (lengths within
the same 20 ms step), which are exactly what each would be alone; sort a dataset by length first for full batches.
"""

import numpy as np
import torch

from .audio_io import decode_audio_value
from .bitstream import codebook_fingerprint, config_fingerprint
from .tokens import codes_to_tokens


def dataset_fingerprints(model, num_streams: int) -> dict:
    """What a tokenised dataset records of the model that made it (its `info.description`, as JSON)."""
    config = model.config
    return {
        "model": str(getattr(config, "_name_or_path", "") or "unnamed"),
        "config_fingerprint": config_fingerprint(config).hex(),
        "codebook_fingerprint": codebook_fingerprint(model).hex(),
        "num_streams": num_streams,
        "kbps": config.bandwidth_for_num_streams(num_streams),
        "codes": "int16 (num_streams, group_size, frames), the frames of the item's own length",
    }


def encode_batch(
    model,
    kbps: float | None = None,
    num_streams: int | None = None,
    audio_column: str = "audio",
    batch_size: int = 16,
    lm_tokens: bool = False,
):
    """A function for `Dataset.map(..., batched=True)`: the `audio_column` values (`datasets.Audio`, decoded or
    not) of a batch → `codes` (int16 arrays `(num_streams, group_size, frames)`), `num_samples` (16 kHz samples
    of the item) and, with `lm_tokens`, `tokens` (`esc_hf.codec.tokens.codes_to_tokens`). Items run through the
    model `batch_size` at a time, only with items of the same padded length (see the module docstring)."""
    config = model.config
    num_streams = config.resolve_num_streams(num_streams, kbps)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if config.codebook_size > 2**15:
        raise ValueError(f"codes of a {config.codebook_size}-entry codebook do not fit int16")
    device = next(model.parameters()).device

    def encode(batch: dict[str, list]) -> dict[str, list]:
        if audio_column not in batch:
            raise ValueError(f"the batch has no column {audio_column!r}; columns: {sorted(batch)}")
        audios = [decode_audio_value(value, config.sampling_rate) for value in batch[audio_column]]
        for index, audio in enumerate(audios):
            if audio.size == 0:
                raise ValueError(f"item {index} of the batch has no audio")
        by_length: dict[int, list[int]] = {}
        for index, audio in enumerate(audios):
            by_length.setdefault(config.padded_length(audio.size), []).append(index)
        codes: list[np.ndarray | None] = [None] * len(audios)
        for padded, indices in by_length.items():
            for start in range(0, len(indices), batch_size):
                part = indices[start : start + batch_size]
                waveforms = torch.zeros(len(part), 1, padded)
                for row, index in enumerate(part):
                    waveforms[row, 0, : audios[index].size] = torch.from_numpy(audios[index])
                with torch.inference_mode():
                    out = model.encode(waveforms.to(device), num_streams=num_streams).audio_codes.cpu()
                for row, index in enumerate(part):
                    codes[index] = out[row].to(torch.int16).numpy()
        result = {"codes": codes, "num_samples": [audio.size for audio in audios]}
        if lm_tokens:
            result["tokens"] = [codes_to_tokens(torch.from_numpy(c).long()[None], config)[0].numpy() for c in codes]
        return result

    return encode
