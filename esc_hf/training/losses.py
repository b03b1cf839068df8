"""ESC's non-adversarial objective (ESC_SPEC §6.2): power-law complex-STFT MSE, multi-scale mel L1, VQ losses."""

import torch
import torch.nn as nn
from transformers.audio_utils import mel_filter_bank

from ..modeling_esc import EscOutput


def power_law_stft_loss(stft: torch.Tensor, reconstructed: torch.Tensor, power: float = 0.3, eps: float = 1e-10):
    """MSE between power-law compressed STFTs `(B, 2, F, T)`, component-wise on real and imaginary parts → `(B,)`."""

    def compress(x):
        return torch.sign(x) * (x.abs() + eps) ** power

    return (compress(stft) - compress(reconstructed)).pow(2).mean([1, 2, 3])


class MultiScaleMelLoss(nn.Module):
    """Sum over window sizes of `mean|M_x - M_y| + mean|log10(max(M_x, eps)^2) - log10(max(M_y, eps)^2)|`, where
    `M` is a magnitude (power 1) HTK mel spectrogram with hop `window // 4`, centred with reflect padding → `(B,)`.
    """

    def __init__(
        self,
        sampling_rate: int = 16000,
        window_lengths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048),
        num_mel_bins: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320),
        clamp_eps: float = 1e-5,
    ):
        super().__init__()
        if len(window_lengths) != len(num_mel_bins):
            raise ValueError("window_lengths and num_mel_bins need one entry per scale")
        self.window_lengths, self.clamp_eps = list(window_lengths), clamp_eps
        for i, (window, mels) in enumerate(zip(window_lengths, num_mel_bins)):
            filters = mel_filter_bank(
                num_frequency_bins=window // 2 + 1,
                num_mel_filters=mels,
                min_frequency=0.0,
                max_frequency=sampling_rate / 2,
                sampling_rate=sampling_rate,
                norm=None,
                mel_scale="htk",
            )
            self.register_buffer(f"filters_{i}", torch.tensor(filters, dtype=torch.float32), persistent=False)
            self.register_buffer(f"window_{i}", torch.hann_window(window), persistent=False)

    def mel(self, audio: torch.Tensor, scale: int) -> torch.Tensor:
        """Mel magnitudes `(B, mels, frames)` of `audio` `(B, L)` at scale index `scale`."""
        window = self.window_lengths[scale]
        spec = torch.stft(
            audio, n_fft=window, hop_length=window // 4, win_length=window, window=getattr(self, f"window_{scale}"),
            center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True,
        ).abs()  # fmt: skip
        return (spec.transpose(-1, -2) @ getattr(self, f"filters_{scale}")).transpose(-1, -2)

    def forward(self, audio: torch.Tensor, reconstructed: torch.Tensor) -> torch.Tensor:
        loss = 0.0
        for scale in range(len(self.window_lengths)):
            x, y = self.mel(audio, scale), self.mel(reconstructed, scale)
            loss = loss + (x - y).abs().mean([1, 2])
            log_x = x.clamp(self.clamp_eps).pow(2).log10()
            log_y = y.clamp(self.clamp_eps).pow(2).log10()
            loss = loss + (log_x - log_y).abs().mean([1, 2])
        return loss


class EscLoss(nn.Module):
    """The weighted objective of the paper's non-adversarial recipe, per item then averaged over the batch.

    `total = commitment_weight * cm + codebook_weight * cb + mel_weight * mel + stft_weight * stft`.
    """

    def __init__(self, commitment_weight=0.25, codebook_weight=1.0, mel_weight=0.25, stft_weight=1.0,
                 sampling_rate=16000, stft_power=0.3):  # fmt: skip
        super().__init__()
        self.weights = {"commitment": commitment_weight, "codebook": codebook_weight, "mel": mel_weight,
                        "stft": stft_weight}  # fmt: skip
        self.stft_power = stft_power
        self.mel_loss = MultiScaleMelLoss(sampling_rate)

    def forward(self, audio: torch.Tensor, output: EscOutput) -> dict[str, torch.Tensor]:
        """`audio` `(B, 1, L)` or `(B, L)`, the model's [`EscOutput`] → per-item terms `(B,)` and scalar `total`."""
        audio = audio.reshape(audio.shape[0], -1)
        terms = {
            "commitment": output.commitment_loss,
            "codebook": output.codebook_loss,
            "mel": self.mel_loss(audio, output.audio_values.reshape(audio.shape)),
            "stft": power_law_stft_loss(output.input_stft, output.reconstructed_stft, self.stft_power),
        }
        per_item = sum(self.weights[name] * value for name, value in terms.items())
        return {**terms, "total": per_item.mean()}
