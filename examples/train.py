"""Train ESC with Accelerate (one CPU, one GPU, or many: `accelerate launch examples/train.py ...`).

    accelerate launch examples/train.py --config examples/configs/esc-base.yaml \
        --data-dir DATA --val-dir VAL --output-dir runs/esc-base [--max-steps N] [--resume]

Every option and its default: `python examples/train.py --help`. The logic lives in `esc_hf.training`.
"""

import sys

from esc_hf.training.arguments import parse_arguments
from esc_hf.training.trainer import EscTrainer


def main() -> int:
    try:
        args = parse_arguments()
    except ValueError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    EscTrainer(args).train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
