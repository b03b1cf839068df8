"""Run an exported ESC model (`python -m esc_hf.export_onnx`) with ONNX Runtime.

```python
from esc_hf.codec.onnx_runtime import EscOnnxModel

codec = EscOnnxModel("esc-base-onnx", threads=2)
codes = codec.encode(audio, num_streams=6)        # audio (batch, length) or (length,), 16 kHz float → int64 codes
audio_hat = codec.decode(codes, length=audio.shape[-1])
```

The graphs hold the network; the padding, STFT, inverse STFT and cropping around them are `EscModel`'s own
functions, so codes equal PyTorch's wherever the network's float rounding does not decide a codebook tie, and
audio agrees to float precision (tests/test_onnx.py measures both).
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.esc.configuration_esc import EscConfig
from ..models.esc.modeling_esc import esc_istft, esc_stft
from .onnx_export import DECODER_FILE, ENCODER_FILE, FORMAT, META_FILE


def _check_meta(meta, config: EscConfig, path: Path) -> dict:
    """`esc_onnx.json` as written by this version's exporter, consistent with the folder's config.json."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path} is format {found!r}, this esc_hf reads {FORMAT!r}: export the model again")
    expected = {
        "num_streams": config.num_streams,
        "group_size": config.group_size,
        "codebook_size": config.codebook_size,
        "num_frequency_bins": config.num_frequency_bins,
        "frames_per_code": config.frames_per_code,
    }
    wrong = [key for key, value in expected.items() if meta.get(key) != value]
    streams = meta.get("encoder_num_streams")
    if isinstance(streams, bool) or not isinstance(streams, int) or not 1 <= streams <= config.num_streams:
        wrong.append("encoder_num_streams")
    if wrong:
        raise ValueError(f"{path} does not match the config.json beside it: {', '.join(wrong)}")
    return meta


class EscOnnxModel:
    """ESC encoder and decoder graphs in ONNX Runtime sessions (CPU by default; any execution provider)."""

    def __init__(self, directory: str | Path, threads: int | None = None, providers: list | None = None):
        import onnxruntime as ort

        directory = Path(directory)
        names = (ENCODER_FILE, DECODER_FILE, META_FILE, "config.json")
        missing = [name for name in names if not (directory / name).exists()]
        if missing:
            raise ValueError(f"{directory} is not an ESC ONNX export (esc_hf.export_onnx): missing {missing}")
        self.config = EscConfig.from_pretrained(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{directory / META_FILE} is not JSON: {error}") from None
        self.meta = _check_meta(meta, self.config, directory / META_FILE)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = providers or ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(directory / ENCODER_FILE), options, providers=providers)
        self.decoder = ort.InferenceSession(str(directory / DECODER_FILE), options, providers=providers)
        self.window = torch.hann_window(self.config.win_length)

    def encode(self, audio, num_streams: int | None = None) -> np.ndarray:
        """`audio` `(batch, length)` or `(length,)` → codes `(batch, num_streams, group_size, code_frames)` int64."""
        limit = self.meta["encoder_num_streams"]
        num_streams = limit if num_streams is None else num_streams
        if isinstance(num_streams, bool) or not isinstance(num_streams, int) or not 1 <= num_streams <= limit:
            raise ValueError(
                f"num_streams must be an integer from 1 to {limit} (the streams this encoder was exported with), "
                f"got {num_streams!r}"
            )
        waveform = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        if waveform.dim() == 1:
            waveform = waveform[None]
        if waveform.dim() != 2 or waveform.shape[-1] == 0:
            raise ValueError(f"audio must be (batch, length) or (length,), length > 0; got {tuple(waveform.shape)}")
        waveform = F.pad(waveform, (0, self.config.padded_length(waveform.shape[-1]) - waveform.shape[-1]))
        features = esc_stft(waveform, self.window, self.config.n_fft, self.config.hop_length)
        features = features.unflatten(3, (-1, self.config.frames_per_code))
        (codes,) = self.encoder.run(None, {"input_features": features.contiguous().numpy()})
        return codes[:, :num_streams]

    def decode(self, codes, length: int | None = None) -> np.ndarray:
        """Codes `(batch, n, group_size, code_frames)`, 1 ≤ n ≤ streams → audio `(batch, length)` float32 (all
        `hop · (4 · code_frames − 1)` samples the codes describe without `length`)."""
        codes = np.asarray(codes)
        streams, groups = self.meta["num_streams"], self.meta["group_size"]
        if codes.ndim != 4 or codes.shape[2] != groups or not 1 <= codes.shape[1] <= streams or codes.shape[-1] < 1:
            raise ValueError(f"codes must have shape (batch, 1..{streams}, {groups}, frames), got {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer) or codes.min() < 0 or codes.max() >= self.meta["codebook_size"]:
            raise ValueError(f"codes must be integers in [0, {self.meta['codebook_size']})")
        used = codes.shape[1]
        full = np.zeros((codes.shape[0], streams, groups, codes.shape[-1]), dtype=np.int64)
        full[:, :used] = codes
        (stft,) = self.decoder.run(None, {"audio_codes": full, "num_streams": np.array(used, dtype=np.int64)})
        audio = esc_istft(torch.from_numpy(stft), self.window, self.config.n_fft, self.config.hop_length).numpy()
        if length is not None:
            if length > audio.shape[-1]:
                raise ValueError(f"asked for {length} samples but the codes hold only {audio.shape[-1]}")
            audio = audio[:, :length]
        return audio
