# Copyright 2026 The esc_hf authors. Licensed under the Apache License, Version 2.0.
"""ESC (Efficient Speech Codec) model configuration."""

import math

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig


# The published variants (the paper's ESC-Base, ESC-Base with the adversarial loss, ESC-Large). Everything not
# listed here is shared by all of them.
ESC_VARIANTS = {
    "esc-base": {"depth": 2, "codebook_dims": [32, 32, 16, 12, 8, 6]},
    "esc-base-adv": {"depth": 2, "codebook_dims": [8, 8, 8, 8, 8, 8]},
    "esc-large": {"depth": 4, "codebook_dims": [8, 8, 8, 8, 8, 8]},
}


@strict
class EscConfig(PreTrainedConfig):
    r"""
    Configuration of an [`EscModel`]: the Efficient Speech Codec of Gu & Diao (2024, arXiv 2404.19441), a Swin
    Transformer (or CNN) encoder/decoder working on the complex STFT, with cross-scale residual vector quantization.
    The defaults are the released ESC-Base (9 kbps, 8.74 M parameters).

    Args:
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate of the waveform in Hz.
        num_frequency_bins (`int`, *optional*, defaults to 192):
            One-sided STFT bins `F`; the FFT size is `2 * (F - 1)` (382).
        window_length_ms (`float`, *optional*, defaults to 20):
            STFT window length in milliseconds (320 samples at 16 kHz, periodic Hann).
        hop_length_ms (`float`, *optional*, defaults to 5):
            STFT hop in milliseconds (80 samples at 16 kHz).
        patch_size (`list[int]`, *optional*, defaults to `[3, 2]`):
            (frequency, time) patch of the patch embedding.
        hidden_dims (`list[int]`, *optional*, defaults to `[45, 72, 96, 144, 192, 384]`):
            Channels at each of the encoder's scales, finest first; the decoder uses them reversed.
        num_heads (`list[int]`, *optional*, defaults to `[3, 6, 12, 24, 24]`):
            Attention heads of the Swin stages at `hidden_dims[:-1]` (one entry fewer than `hidden_dims`).
        depth (`int`, *optional*, defaults to 2):
            Swin blocks per stage; even blocks use windows, odd blocks shifted windows.
        window_size (`int`, *optional*, defaults to 4):
            Attention window edge; the shift is `window_size // 2`.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            Hidden size of each Swin MLP relative to its stage's channels.
        backbone (`str`, *optional*, defaults to `"swin"`):
            `"swin"` (the paper's model) or `"conv"` (the CNN ablation).
        conv_kernel_size (`list[int]`, *optional*, defaults to `[5, 2]`):
            Kernel of the CNN backbone's scaling convolutions (`backbone="conv"` only).
        conv_depth (`int`, *optional*, defaults to 1):
            Residual units per CNN stage (`backbone="conv"` only).
        quantizer (`str`, *optional*, defaults to `"csrvq"`):
            `"csrvq"` (cross-scale residual VQ, the paper's model) or `"rvq"` (residual VQ at the bottleneck only).
        num_streams (`int`, *optional*, defaults to 6):
            Maximum number of code streams; each adds `bitrate_per_stream` bits per second.
        overlap (`int`, *optional*, defaults to 2):
            Consecutive latent frames quantised together as one vector.
        group_size (`int`, *optional*, defaults to 3):
            Product-VQ groups (codebooks) per stream.
        codebook_size (`int`, *optional*, defaults to 1024):
            Entries per codebook (a power of two).
        codebook_dims (`list[int]`, *optional*, defaults to `[32, 32, 16, 12, 8, 6]`):
            Codebook dimension of each stream, coarsest first. The `"rvq"` quantizer needs them all equal.
        l2norm (`bool`, *optional*, defaults to `True`):
            Whether code lookup compares L2-normalised vectors.
        commitment_loss_weight (`float`, *optional*, defaults to 0.25):
            Weight of the commitment loss in [`EscOutput.loss`].
        codebook_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the codebook loss in [`EscOutput.loss`].

    Example:

    ```python
    >>> from esc_hf import EscConfig, EscModel
    >>> config = EscConfig()  # ESC-Base
    >>> large = EscConfig.from_variant("esc-large")
    >>> model = EscModel(config)
    ```"""

    model_type = "esc"

    sampling_rate: int = 16000
    num_frequency_bins: int = 192
    window_length_ms: int | float = 20
    hop_length_ms: int | float = 5
    patch_size: list[int] | tuple[int, ...] = (3, 2)
    hidden_dims: list[int] | tuple[int, ...] = (45, 72, 96, 144, 192, 384)
    num_heads: list[int] | tuple[int, ...] = (3, 6, 12, 24, 24)
    depth: int = 2
    window_size: int = 4
    mlp_ratio: float = 4.0
    backbone: str = "swin"
    conv_kernel_size: list[int] | tuple[int, ...] = (5, 2)
    conv_depth: int = 1
    quantizer: str = "csrvq"
    num_streams: int = 6
    overlap: int = 2
    group_size: int = 3
    codebook_size: int = 1024
    codebook_dims: list[int] | tuple[int, ...] = (32, 32, 16, 12, 8, 6)
    l2norm: bool = True
    commitment_loss_weight: float = 0.25
    codebook_loss_weight: float = 1.0

    def __post_init__(self, **kwargs):
        for name in ("patch_size", "hidden_dims", "num_heads", "conv_kernel_size", "codebook_dims"):
            setattr(self, name, list(getattr(self, name)))
        # Checked here rather than in a strict class validator so that a bad value is a plain ValueError.
        self._check_architecture()
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: re-checks the numbers after they were changed on a live config."""
        self._check_architecture()

    def _check_architecture(self):
        if self.backbone not in ("swin", "conv"):
            raise ValueError(f"backbone must be 'swin' or 'conv', got {self.backbone!r}")
        if self.quantizer not in ("csrvq", "rvq"):
            raise ValueError(f"quantizer must be 'csrvq' or 'rvq', got {self.quantizer!r}")
        if len(self.patch_size) != 2 or len(self.conv_kernel_size) != 2:
            raise ValueError(
                f"patch_size and conv_kernel_size are (frequency, time) pairs, got {self.patch_size} "
                f"and {self.conv_kernel_size}"
            )
        if len(self.hidden_dims) < 2:
            raise ValueError(f"hidden_dims needs at least 2 scales, got {self.hidden_dims}")
        if len(self.num_heads) != len(self.hidden_dims) - 1:
            raise ValueError(
                f"num_heads needs one entry per Swin stage, i.e. len(hidden_dims) - 1 = {len(self.hidden_dims) - 1}, "
                f"got {len(self.num_heads)}"
            )
        if self.backbone == "swin":
            for dim, heads in zip(self.hidden_dims, self.num_heads):
                if heads < 1 or dim % heads:
                    raise ValueError(f"num_heads {heads} does not divide hidden dim {dim}")
        if min(self.hidden_dims) < 1 or self.depth < 1 or self.window_size < 2 or self.conv_depth < 1:
            raise ValueError("hidden_dims, depth and conv_depth must be positive and window_size at least 2")
        if self.num_frequency_bins < 2 or self.num_frequency_bins % self.patch_size[0]:
            raise ValueError(
                f"num_frequency_bins {self.num_frequency_bins} must be a multiple of the frequency patch "
                f"{self.patch_size[0]}"
            )
        if self.bottleneck_frequency < 1 or self.patch_frequency % 2 ** (len(self.hidden_dims) - 1):
            raise ValueError(
                f"the patch grid height {self.patch_frequency} must halve exactly {len(self.hidden_dims) - 1} times"
            )
        if self.hop_length < 1 or self.win_length > self.n_fft or self.win_length < 1:
            raise ValueError(
                f"STFT window {self.win_length} and hop {self.hop_length} samples must be positive and the window "
                f"no longer than the FFT size {self.n_fft}"
            )
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"codebook_size must be a power of two, got {self.codebook_size}")
        if self.overlap < 1 or self.group_size < 1:
            raise ValueError("overlap and group_size must be at least 1")
        if len(self.codebook_dims) != self.num_streams:
            raise ValueError(
                f"codebook_dims needs one entry per stream ({self.num_streams}), got {len(self.codebook_dims)}"
            )
        if min(self.codebook_dims) < 1:
            raise ValueError(f"codebook_dims must be positive, got {self.codebook_dims}")
        if self.quantizer == "csrvq" and self.num_streams != len(self.hidden_dims):
            raise ValueError(
                "the cross-scale quantizer has one stream per scale: num_streams must equal len(hidden_dims) "
                f"({len(self.hidden_dims)}), got {self.num_streams}"
            )
        if self.quantizer == "rvq" and len(set(self.codebook_dims)) != 1:
            raise ValueError(f"the 'rvq' quantizer shares one codebook dim across stages, got {self.codebook_dims}")

    @classmethod
    def from_variant(cls, name: str, **kwargs) -> "EscConfig":
        """The configuration of a published variant: `"esc-base"`, `"esc-base-adv"` or `"esc-large"`."""
        if name not in ESC_VARIANTS:
            raise ValueError(f"unknown ESC variant {name!r}; choose one of {sorted(ESC_VARIANTS)}")
        return cls(**{**ESC_VARIANTS[name], **kwargs})

    @property
    def n_fft(self) -> int:
        return 2 * (self.num_frequency_bins - 1)

    @property
    def win_length(self) -> int:
        return int(self.window_length_ms * self.sampling_rate * 1e-3)

    @property
    def hop_length(self) -> int:
        return int(self.hop_length_ms * self.sampling_rate * 1e-3)

    @property
    def patch_frequency(self) -> int:
        """Height `H0` of the patch grid."""
        return self.num_frequency_bins // self.patch_size[0]

    @property
    def bottleneck_frequency(self) -> int:
        """Height of the coarsest latent grid, where streams 0 and 1 live."""
        return self.patch_frequency // 2 ** (len(self.hidden_dims) - 1)

    @property
    def samples_per_code_frame(self) -> int:
        return self.hop_length * self.patch_size[1] * self.overlap

    @property
    def frame_rate(self) -> float:
        """Code frames per second (50 for ESC)."""
        return self.sampling_rate / self.samples_per_code_frame

    @property
    def bits_per_codebook(self) -> int:
        return int(math.log2(self.codebook_size))

    @property
    def bitrate_per_stream(self) -> float:
        """Bits per second that one stream adds (1500 for ESC)."""
        return self.group_size * self.bits_per_codebook * self.frame_rate

    @property
    def target_bandwidths(self) -> list[float]:
        """The bitrates in kbps that 1 … `num_streams` streams give."""
        return [n * self.bitrate_per_stream / 1000 for n in range(1, self.num_streams + 1)]

    def num_streams_for_bandwidth(self, kbps: float) -> int:
        """Streams needed for `kbps` kilobits per second; it must be one of `target_bandwidths`."""
        n = kbps * 1000 / self.bitrate_per_stream
        if not math.isfinite(n) or abs(n - round(n)) > 1e-6 or not 1 <= round(n) <= self.num_streams:
            raise ValueError(f"bandwidth {kbps} kbps is not supported; choose one of {self.target_bandwidths}")
        return round(n)

    def bandwidth_for_num_streams(self, num_streams: int) -> float:
        """Kilobits per second of `num_streams` streams."""
        if not 1 <= num_streams <= self.num_streams:
            raise ValueError(f"num_streams must be between 1 and {self.num_streams}, got {num_streams}")
        return num_streams * self.bitrate_per_stream / 1000

    def resolve_num_streams(self, num_streams: int | None = None, bandwidth: float | None = None) -> int:
        """The streams that `num_streams` or `bandwidth` (kbps) ask for, checked; all streams when neither is given."""
        if num_streams is not None and bandwidth is not None:
            raise ValueError("give num_streams or bandwidth, not both")
        if bandwidth is not None:
            return self.num_streams_for_bandwidth(bandwidth)
        if num_streams is None:
            return self.num_streams
        if isinstance(num_streams, bool) or not isinstance(num_streams, int) or not 1 <= num_streams <= self.num_streams:
            raise ValueError(f"num_streams must be an integer from 1 to {self.num_streams}, got {num_streams!r}")
        return num_streams

    @property
    def frames_per_code(self) -> int:
        """STFT frames per code frame (4 for ESC)."""
        return self.patch_size[1] * self.overlap

    def padded_length(self, num_samples: int) -> int:
        """The length `num_samples` samples are zero-padded to before the STFT (see [`esc_padded_length`])."""
        return esc_padded_length(num_samples, self.hop_length, self.frames_per_code, self.n_fft)

    def code_frames_for_samples(self, num_samples: int) -> int:
        """Code frames that `EscModel.encode` makes of `num_samples` samples (51 for 1 s of ESC)."""
        return (self.padded_length(num_samples) + self.hop_length) // self.samples_per_code_frame

    def samples_for_code_frames(self, code_frames: int) -> int:
        """Samples that `EscModel.decode` makes of `code_frames` code frames without a padding mask
        (`320 * code_frames - 80` for ESC): at least the samples that were encoded, then cropped by the caller."""
        return code_frames * self.samples_per_code_frame - self.hop_length


def esc_padded_length(length: int, hop_length: int, frames_per_code: int, n_fft: int) -> int:
    """Smallest length `>= length` that ESC round-trips exactly, `hop * (frames_per_code * k - 1)` (80·(4k−1) for
    ESC): its STFT has a multiple of `frames_per_code` frames, and reflect padding needs more than `n_fft / 2`."""
    k = max(1, math.ceil((length / hop_length + 1) / frames_per_code))
    while hop_length * (frames_per_code * k - 1) <= n_fft // 2:
        k += 1
    return hop_length * (frames_per_code * k - 1)


__all__ = ["EscConfig", "ESC_VARIANTS", "esc_padded_length"]
