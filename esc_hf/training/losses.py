"""ESC's non-adversarial objective, as in the paper: power-law complex-STFT MSE, multi-scale mel L1, VQ losses."""

import torch
import torch.nn as nn

from ..eval.metrics import MultiScaleMel
from ..models.esc.modeling_esc import EscOutput


def power_law_stft_loss(stft: torch.Tensor, reconstructed: torch.Tensor, power: float = 0.3, eps: float = 1e-10):
    """MSE between power-law compressed STFTs `(B, 2, F, T)`, component-wise on real and imaginary parts → `(B,)`."""

    def compress(x):
        return torch.sign(x) * (x.abs() + eps) ** power

    return (compress(stft) - compress(reconstructed)).pow(2).mean([1, 2, 3])


class MultiScaleMelLoss(MultiScaleMel):
    """Sum over window sizes of `mean|M_x - M_y| + mean|log10(max(M_x, eps)^2) - log10(max(M_y, eps)^2)|`, where
    `M` is [`MultiScaleMel`]'s spectrogram → `(B,)`.
    """

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
