"""Training ESC: losses (and, as the training issue lands, data, schedule, evaluation and the trainer loop)."""

from .losses import EscLoss, MultiScaleMelLoss, power_law_stft_loss


__all__ = ["EscLoss", "MultiScaleMelLoss", "power_law_stft_loss"]
