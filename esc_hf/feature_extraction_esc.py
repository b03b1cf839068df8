# Copyright 2026 The esc_hf authors. Licensed under the Apache License, Version 2.0.
"""Feature extractor for ESC: prepares 16 kHz mono waveforms (and their padding mask) for [`EscModel`]."""

import numpy as np
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import PaddingStrategy, TensorType, logging


logger = logging.get_logger(__name__)

# A 2-D example is read as multichannel audio when one axis is at most this long; its channels are averaged.
_MAX_CHANNELS = 8


class EscFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Prepares waveforms for ESC: checks them, reduces multichannel audio to mono, pads a batch to its longest item
    and returns `input_values` `(batch_size, 1, sequence_length)` with a `padding_mask` `(batch_size,
    sequence_length)` (1 = audio, 0 = padding).

    The complex STFT is not computed here: it is the first layer of [`EscModel`] (its inverse is the last), so the
    model takes waveforms. Resample to `sampling_rate` before calling (e.g. with `soxr`).

    Args:
        feature_size (`int`, *optional*, defaults to 1):
            Channels of the model input (mono).
        sampling_rate (`int`, *optional*, defaults to 16000):
            The sampling rate the model expects, in Hz.
        padding_value (`float`, *optional*, defaults to 0.0):
            Value used to pad shorter items of a batch.
    """

    model_input_names = ["input_values", "padding_mask"]

    def __init__(self, feature_size: int = 1, sampling_rate: int = 16000, padding_value: float = 0.0, **kwargs):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)

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

        Returns:
            [`BatchFeature`] with `input_values` `(batch_size, 1, sequence_length)` and, when padding,
            `padding_mask` `(batch_size, sequence_length)`.
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
        if return_tensors is not None:
            padded = padded.convert_to_tensors(return_tensors)
        return padded


__all__ = ["EscFeatureExtractor"]
