"""ESC's non-adversarial objective, as in the paper: power-law complex-STFT MSE, multi-scale mel L1, VQ losses;
and, as options beyond the paper, phase-aware STFT losses that teach harmonic fine structure and phase (MP-SENet,
APCodec): anti-wrapping instantaneous-phase, group-delay and instantaneous-frequency losses and a
magnitude-compressed complex STFT loss."""

import math

import torch
import torch.nn as nn

from ..eval.metrics import MultiScaleMel
from ..models.esc.modeling_esc import EscOutput


def power_law_stft_loss(stft: torch.Tensor, reconstructed: torch.Tensor, power: float = 0.3, eps: float = 1e-10):
    """MSE between power-law compressed STFTs `(B, 2, F, T)`, component-wise on real and imaginary parts → `(B,)`."""

    def compress(x):
        return torch.sign(x) * (x.abs() + eps) ** power

    return (compress(stft) - compress(reconstructed)).pow(2).mean([1, 2, 3])


def _anti_wrapping(x: torch.Tensor) -> torch.Tensor:
    """|x − 2π·round(x / 2π)|: how far a phase difference is from the nearest multiple of 2π (0 to π)."""
    return (x - 2 * math.pi * torch.round(x / (2 * math.pi))).abs()


def _phase(stft: torch.Tensor) -> torch.Tensor:
    # MP-SENet's offsets: no 0/0 in atan2's gradient where a bin is exactly zero.
    return torch.atan2(stft[:, 1] + 1e-10, stft[:, 0] + 1e-5)


def phase_losses(stft: torch.Tensor, reconstructed: torch.Tensor) -> dict[str, torch.Tensor]:
    """The anti-wrapping phase losses of MP-SENet between two STFTs `(B, 2, F, T)`, each `(B,)`: instantaneous
    phase (`phase_ip`), group delay (`phase_gd`, the phase's difference along frequency) and instantaneous angular
    frequency (`phase_iaf`, its difference along time)."""
    phase, phase_hat = _phase(stft), _phase(reconstructed)
    return {
        "phase_ip": _anti_wrapping(phase_hat - phase).mean([1, 2]),
        "phase_gd": _anti_wrapping(phase_hat.diff(dim=1) - phase.diff(dim=1)).mean([1, 2]),
        "phase_iaf": _anti_wrapping(phase_hat.diff(dim=2) - phase.diff(dim=2)).mean([1, 2]),
    }


def compressed_complex_loss(stft: torch.Tensor, reconstructed: torch.Tensor, power: float = 0.3) -> torch.Tensor:
    """MSE between magnitude-compressed complex STFTs `|X|^power · e^{jθ}` `(B, 2, F, T)` plus the MSE of the
    compressed magnitudes `|X|^power` (MP-SENet's complex and magnitude losses) → `(B,)`. Unlike the paper's
    power-law loss, which compresses the real and imaginary parts one by one, this keeps each bin's phase."""

    def compress(x):
        magnitude = x.pow(2).sum(1, keepdim=True).add(1e-9).sqrt()
        return x * magnitude.pow(power - 1), magnitude.pow(power)

    (x, magnitude), (y, magnitude_hat) = compress(stft), compress(reconstructed)
    return (x - y).pow(2).mean([1, 2, 3]) + (magnitude - magnitude_hat).pow(2).mean([1, 2, 3])


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

    `total = commitment_weight * cm + codebook_weight * cb + mel_weight * mel + stft_weight * stft`, plus, where their
    weights are not 0 (they are 0 in the paper's recipe and not computed then), `phase_weight * (phase_ip +
    phase_gd + phase_iaf)` and `complex_weight * complex` ([`phase_losses`], [`compressed_complex_loss`]), on the
    model's own STFTs.
    """

    def __init__(self, commitment_weight=0.25, codebook_weight=1.0, mel_weight=0.25, stft_weight=1.0,
                 sampling_rate=16000, stft_power=0.3, phase_weight=0.0, complex_weight=0.0):  # fmt: skip
        super().__init__()
        self.weights = {"commitment": commitment_weight, "codebook": codebook_weight, "mel": mel_weight,
                        "stft": stft_weight, "phase_ip": phase_weight, "phase_gd": phase_weight,
                        "phase_iaf": phase_weight, "complex": complex_weight}  # fmt: skip
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
        if self.weights["phase_ip"]:
            terms.update(phase_losses(output.input_stft, output.reconstructed_stft))
        if self.weights["complex"]:
            terms["complex"] = compressed_complex_loss(output.input_stft, output.reconstructed_stft, self.stft_power)
        per_item = sum(self.weights[name] * value for name, value in terms.items())
        return {**terms, "total": per_item.mean()}
