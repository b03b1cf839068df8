# Copyright 2026 The esc_hf authors. Licensed under the Apache License, Version 2.0.
"""Feature extractor for ESC: prepares 16 kHz mono waveforms (and their padding mask) for [`EscModel`]."""

import numpy as np
import torch
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import PaddingStrategy, TensorType, logging

from .configuration_esc import esc_padded_length
from .modeling_esc import esc_istft, esc_stft


logger = logging.get_logger(__name__)

# A 2-D example is read as multichannel audio when one axis is at most this long; its channels are averaged.
_MAX_CHANNELS = 8


class EscFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Prepares waveforms for ESC: checks them, reduces multichannel audio to mono, pads a batch to its longest item
    and returns `input_values` `(batch_size, 1, sequence_length)` with a `padding_mask` `(batch_size,
    sequence_length)` (1 = audio, 0 = padding).

    The complex STFT is the first layer of [`EscModel`] (its inverse is the last), so by default the model gets
    waveforms. With `return_stft=True` the extractor also returns that STFT as `input_features`, computed by the
    same function the model calls ([`esc_stft`]) on the same zero-padded signal, so
    `model.encode(input_features=...)` gives the waveform path's codes; [`~EscFeatureExtractor.inverse`] turns
    features back into audio with the model's inverse STFT. Resample to `sampling_rate` before calling (e.g. with
    `soxr`).

    Args:
        feature_size (`int`, *optional*, defaults to 1):
            Channels of the model input (mono).
        sampling_rate (`int`, *optional*, defaults to 16000):
            The sampling rate the model expects, in Hz.
        padding_value (`float`, *optional*, defaults to 0.0):
            Value used to pad shorter items of a batch.
        n_fft (`int`, *optional*, defaults to 382):
            FFT size; `n_fft // 2 + 1` frequency bins (192).
        hop_length (`int`, *optional*, defaults to 80):
            STFT hop in samples (5 ms).
        win_length (`int`, *optional*, defaults to 320):
            Periodic Hann window length in samples (20 ms), zero-padded to `n_fft`.
        frames_per_code (`int`, *optional*, defaults to 4):
            STFT frames per code frame; the signal is zero-padded to `hop_length * (frames_per_code * k - 1)`
            samples, the lengths the network round-trips.
    """

    model_input_names = ["input_values", "padding_mask"]

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        n_fft: int = 382,
        hop_length: int = 80,
        win_length: int = 320,
        frames_per_code: int = 4,
        **kwargs,
    ):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        if not 0 < win_length <= n_fft or hop_length < 1 or frames_per_code < 1:
            raise ValueError(
                f"need 0 < win_length <= n_fft and positive hop_length, frames_per_code; got n_fft={n_fft}, "
                f"win_length={win_length}, hop_length={hop_length}, frames_per_code={frames_per_code}"
            )
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.frames_per_code = frames_per_code

    @property
    def num_frequency_bins(self) -> int:
        return self.n_fft // 2 + 1

    def stft(self, waveforms: torch.Tensor) -> torch.Tensor:
        """ESC's complex STFT of `(B, L)` waveforms, zero-padded as the model pads them: `(B, 2, F, T)`."""
        padded = esc_padded_length(waveforms.shape[-1], self.hop_length, self.frames_per_code, self.n_fft)
        waveforms = torch.nn.functional.pad(waveforms, (0, padded - waveforms.shape[-1]))
        window = torch.hann_window(self.win_length, dtype=waveforms.dtype)
        return esc_stft(waveforms, window, self.n_fft, self.hop_length)

    def inverse(self, features, lengths=None) -> torch.Tensor:
        """Waveforms `(B, L)` from STFT features `(B, 2, F, T)` with the model's inverse STFT.

        `lengths` (ints, one per item, or one int for all) crops each item and zeroes what lies beyond it;
        without it every item has `hop_length * (T - 1)` samples.
        """
        features = torch.as_tensor(features)
        expected = f"(batch, 2, {self.num_frequency_bins}, frames)"
        if features.dim() != 4 or features.shape[1] != 2 or features.shape[2] != self.num_frequency_bins:
            raise ValueError(f"features must have shape {expected}, got {tuple(features.shape)}")
        if not features.is_floating_point() or features.shape[3] < 2:
            raise ValueError(f"features must be floating point of shape {expected} with at least 2 frames")
        window = torch.hann_window(self.win_length, dtype=features.dtype)
        audio = esc_istft(features, window, self.n_fft, self.hop_length)
        if lengths is None:
            return audio
        lengths = [int(lengths)] * audio.shape[0] if np.isscalar(lengths) else [int(n) for n in lengths]
        if len(lengths) != audio.shape[0] or not all(0 < n <= audio.shape[-1] for n in lengths):
            raise ValueError(
                f"lengths must give one length per item, each from 1 to {audio.shape[-1]}; got {lengths}"
            )
        audio = audio[:, : max(lengths)].clone()
        for i, n in enumerate(lengths):
            audio[i, n:] = 0
        return audio

    def _to_mono(self, audio, index: int) -> np.ndarray:
        if hasattr(audio, "detach"):  # torch.Tensor, without importing torch here
            audio = audio.detach().cpu().numpy()
        audio = np.asarray(audio)
        if audio.dtype.kind not in "fiu" or audio.dtype.kind in "iu":
            raise ValueError(
                f"audio item {index} has dtype {audio.dtype}; pass floating point samples in [-1, 1] "
                "(convert integer PCM first, e.g. int16 / 32768)"
            )
        if audio.ndim == 2 and min(audio.shape) <= _MAX_CHANNELS and max(audio.shape) > _MAX_CHANNELS:
            channel_axis = int(np.argmin(audio.shape))
            if audio.shape[channel_axis] > 1:
                logger.warning_once("multichannel audio was averaged to mono")
            audio = audio.mean(axis=channel_axis)
        if audio.ndim != 1:
            raise ValueError(
                f"audio item {index} has shape {audio.shape}; expected mono (length,) or multichannel "
                f"(channels, length) / (length, channels) with at most {_MAX_CHANNELS} channels"
            )
        if audio.size == 0:
            raise ValueError(f"audio item {index} is empty")
        if not np.isfinite(audio).all():
            raise ValueError(f"audio item {index} contains NaN or infinite samples")
        return audio.astype(np.float32)

    def __call__(
        self,
        raw_audio,
        padding: bool | str | PaddingStrategy | None = True,
        truncation: bool | None = False,
        max_length: int | None = None,
        return_tensors: str | TensorType | None = None,
        sampling_rate: int | None = None,
        return_stft: bool = False,
    ) -> BatchFeature:
        """
        Args:
            raw_audio (`np.ndarray`, `torch.Tensor`, `list[float]`, or a list of those):
                One waveform or a list of waveforms at `sampling_rate`. Each is `(length,)`, or multichannel
                `(channels, length)` / `(length, channels)`, which is averaged to mono.
            padding (`bool` or `str`, *optional*, defaults to `True`):
                `True`/`"longest"` pads to the longest item, `"max_length"` to `max_length`, `False` leaves
                lengths as they are (then `return_tensors` needs equal lengths).
            truncation (`bool`, *optional*, defaults to `False`):
                Cut items longer than `max_length`.
            max_length (`int`, *optional*):
                Length for `padding="max_length"` and `truncation`.
            return_tensors (`str` or [`~utils.TensorType`], *optional*):
                `"pt"` or `"np"`; lists when not given.
            sampling_rate (`int`, *optional*):
                Sampling rate of `raw_audio`; must equal the extractor's. Always pass it.
            return_stft (`bool`, *optional*, defaults to `False`):
                Also return `input_features` `(batch_size, 2, num_frequency_bins, frames)` float32, ESC's complex
                STFT (real, imaginary), and `frame_mask` `(batch_size, frames)`: 1 for frames centred on real
                samples. Needs equal lengths or padding.

        Returns:
            [`BatchFeature`] with `input_values` `(batch_size, 1, sequence_length)` and, when padding,
            `padding_mask` `(batch_size, sequence_length)`; with `return_stft`, also `input_features` and
            `frame_mask`.
        """
        if sampling_rate is None:
            logger.warning_once(
                f"pass sampling_rate to {self.__class__.__name__}() so that audio at a wrong rate is caught"
            )
        elif sampling_rate != self.sampling_rate:
            raise ValueError(
                f"audio at {sampling_rate} Hz given, ESC expects {self.sampling_rate} Hz; resample it first "
                "(e.g. soxr.resample(audio, sampling_rate, 16000))"
            )
        if padding and truncation and max_length is None:
            raise ValueError("truncation needs max_length")

        is_batched = isinstance(raw_audio, (list, tuple)) and len(raw_audio) > 0 and not np.isscalar(raw_audio[0])
        if isinstance(raw_audio, (list, tuple)) and len(raw_audio) == 0:
            raise ValueError("no audio given (empty list)")
        items = raw_audio if is_batched else [raw_audio]
        mono = [self._to_mono(audio, index) for index, audio in enumerate(items)]

        padded = self.pad(
            BatchFeature({"input_values": mono}),
            padding=padding,
            max_length=max_length,
            truncation=truncation,
            return_attention_mask=bool(padding),
        )
        if "attention_mask" in padded:
            padded["padding_mask"] = padded.pop("attention_mask")
        padded["input_values"] = [np.asarray(values)[None, :] for values in padded["input_values"]]
        if return_stft:
            if len({values.shape[-1] for values in padded["input_values"]}) != 1:
                raise ValueError("return_stft needs items of equal length: pass padding=True")
            waveforms = torch.from_numpy(np.concatenate(padded["input_values"]))
            features = self.stft(waveforms)
            lengths = [len(values) for values in mono] if not truncation else [waveforms.shape[-1]] * len(mono)
            frames = torch.arange(features.shape[-1]) * self.hop_length
            lengths = torch.tensor([min(n, waveforms.shape[-1]) for n in lengths])
            padded["input_features"] = list(features.numpy())
            padded["frame_mask"] = list((frames[None, :] < lengths[:, None]).to(torch.int32).numpy())
        if return_tensors is not None:
            padded = padded.convert_to_tensors(return_tensors)
        return padded


__all__ = ["EscFeatureExtractor"]
