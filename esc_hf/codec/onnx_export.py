"""Export an ESC model to ONNX: an encoder graph (STFT features → codes) and a decoder graph (codes → STFT).
The command line is `python -m esc_hf.export_onnx`.

Both graphs take any batch size and any length (`code_frames` is a dynamic axis). The STFT and its inverse stay
outside the graphs (ONNX has no inverse STFT); `esc_hf.codec.onnx_runtime.EscOnnxModel` runs the pair with ONNX Runtime and
does the rest exactly as `EscModel.encode` / `decode` do (padding, STFT, cropping). Streams:

* `encoder.onnx` takes the STFT as `(batch, 2, num_frequency_bins, code_frames, frames_per_code)` and computes
  streams 1 … N (`--num-streams`, default all); streams are nested, so the codes of any n ≤ N streams are its first
  n. Export with a smaller N for a faster low-bitrate encoder.
* `decoder.onnx` takes codes of all `config.num_streams` streams (unused ones may hold any valid index, e.g. 0) and
  a `num_streams` scalar that says how many are used: one graph decodes every bitrate, with the same result as
  `EscModel.decode` on the first `num_streams` streams.

OUT also gets `esc_onnx.json` (what the runtime needs), the model's `config.json` and `preprocessor_config.json`.
The folder is written atomically.
"""

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..utils.atomic_files import atomic_directory


ENCODER_FILE, DECODER_FILE, META_FILE = "encoder.onnx", "decoder.onnx", "esc_onnx.json"
# esc-onnx/2: the encoder takes its frames as (code_frames, frames_per_code); /1 took them flat.
FORMAT = "esc-onnx/2"
DEFAULT_OPSET = 18


class ExportError(ValueError):
    """The model cannot be exported as asked; the message says why."""


class EscOnnxEncoder(nn.Module):
    """`input_features` `(batch, 2, num_frequency_bins, code_frames, frames_per_code)` (the STFT, its frames in
    groups of one code frame) → `audio_codes` `(batch, N, G, code_frames)`."""

    def __init__(self, model, num_streams: int):
        super().__init__()
        self.model, self.num_streams = model, num_streams

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        # Given the code frames as an axis of their own, the exporter writes every size inside the network in terms
        # of them and proves most of the window-padding arithmetic; given the flat frame count (format 1), it could
        # not use its divisibility by 4 and put ~170 checks into the graph, which took half the export time.
        return self.model.encode_stft(input_features.flatten(3), self.num_streams)


class EscOnnxDecoder(nn.Module):
    """`audio_codes` `(batch, num_streams_max, G, code_frames)` and `num_streams` (int64 scalar) → decoder STFT
    `(batch, 2, num_frequency_bins, 4 * code_frames)`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, audio_codes: torch.Tensor, num_streams: torch.Tensor) -> torch.Tensor:
        streams = torch.arange(audio_codes.shape[1], device=audio_codes.device)
        weights = (streams < num_streams).to(torch.float32)
        return self.model.decode_stft(audio_codes, weights).float()


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes, opset, optimize):
    with warnings.catch_warnings():
        # The exporter reports its progress and deprecations as warnings; failures raise.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            external_data=False,
            optimize=optimize,
            verbose=False,
        )
    program.save(str(path))


def export_onnx(
    model, output_dir: str | Path, num_streams: int | None = None, opset: int = DEFAULT_OPSET, optimize: bool = True
) -> Path:
    """Writes `encoder.onnx`, `decoder.onnx` and `esc_onnx.json` (plus the model and feature-extractor configs) to
    `output_dir`, atomically. Returns the folder."""
    from ..models.esc.feature_extraction_esc import EscFeatureExtractor

    config = model.config
    if num_streams is None:
        num_streams = config.num_streams
    if isinstance(num_streams, bool) or not isinstance(num_streams, int) or not 1 <= num_streams <= config.num_streams:
        raise ExportError(f"num_streams must be an integer from 1 to {config.num_streams}, got {num_streams!r}")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ExportError("export a float32 model (the graphs take and return float32 tensors)")
    model = model.eval()
    frames = config.frames_per_code
    code_frames = torch.export.Dim("code_frames", min=2, max=1 << 20)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    features = torch.randn(2, 2, config.num_frequency_bins, 5, frames)
    codes = torch.zeros(2, config.num_streams, config.group_size, 5, dtype=torch.long)
    output_dir = Path(output_dir)
    decoder = EscOnnxDecoder(model)
    with torch.no_grad():
        # An eager call first: it composes the fused de-embedding kernel from the current weights, which the
        # exported decoder then holds as a constant (see `inference_esc._fused_deembedding_weights`).
        decoder(codes, torch.tensor(config.num_streams))
    with torch.no_grad(), atomic_directory(output_dir) as tmp:
        _export(
            EscOnnxEncoder(model, num_streams),
            (features,),
            tmp / ENCODER_FILE,
            ["input_features"],
            ["audio_codes"],
            {"input_features": {0: batch, 3: code_frames}},
            opset,
            optimize,
        )
        _export(
            decoder,
            (codes, torch.tensor(config.num_streams)),
            tmp / DECODER_FILE,
            ["audio_codes", "num_streams"],
            ["reconstructed_stft"],
            {"audio_codes": {0: batch, 3: code_frames}, "num_streams": None},
            opset,
            optimize,
        )
        meta = {
            "format": FORMAT,
            "encoder_num_streams": num_streams,
            "num_streams": config.num_streams,
            "group_size": config.group_size,
            "codebook_size": config.codebook_size,
            "num_frequency_bins": config.num_frequency_bins,
            "frames_per_code": frames,
            "opset": opset,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        config.save_pretrained(tmp)
        EscFeatureExtractor(sampling_rate=config.sampling_rate).save_pretrained(tmp)
    return output_dir
