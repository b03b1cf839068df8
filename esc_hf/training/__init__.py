"""Training ESC with Accelerate: arguments, data, the paper's losses, the optional discriminator, evaluation and
the trainer loop. `examples/train.py` is the command-line entry point."""

from .arguments import TrainingArguments, parse_arguments
from .losses import EscLoss, MultiScaleMelLoss, power_law_stft_loss
from .trainer import EscTrainer


__all__ = ["EscLoss", "EscTrainer", "MultiScaleMelLoss", "TrainingArguments", "parse_arguments", "power_law_stft_loss"]
