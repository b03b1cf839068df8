"""Export an ESC model to ONNX (see `esc_hf.codec.onnx_export` for the graphs and what they take).

    python -m esc_hf.export_onnx --model DIR_OR_HUB_ID --output-dir OUT [--num-streams N] [--opset 18] [--no-optimize]
"""

import argparse
import sys

from .codec.onnx_export import DEFAULT_OPSET, DECODER_FILE, ENCODER_FILE, ExportError, export_onnx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esc_hf.export_onnx", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an ESC folder or Hub id (as for from_pretrained)")
    parser.add_argument("--output-dir", required=True, help="folder to write (replaced atomically)")
    parser.add_argument("--num-streams", type=int, help="streams the encoder graph computes (default: all)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument(
        "--no-optimize",
        action="store_true",
        help="skip the exporter's graph optimisation (a third faster to export; the decoder then runs ~2.5x slower)",
    )
    args = parser.parse_args(argv)
    from .models.esc.modeling_esc import EscModel

    try:
        model = EscModel.from_pretrained(args.model)
        out = export_onnx(model, args.output_dir, args.num_streams, args.opset, optimize=not args.no_optimize)
    except (ExportError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out / ENCODER_FILE} and {out / DECODER_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
