"""Listening report for a folder of clips: ESC at four bitrates beside Opus and AMR-WB, as one HTML page.

    python examples/make_report.py IN_DIR OUT_DIR [--model DIR_OR_HUB_ID] [--clips N]

The same as `esc report IN_DIR OUT_DIR`; open OUT_DIR/index.html in any browser.
"""

import argparse

from esc_hf.eval.report import make_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="folder of audio clips")
    parser.add_argument("output", help="report folder to write")
    parser.add_argument("--model", help="ESC folder or Hub id (default: the packaged model)")
    parser.add_argument("--clips", type=int, default=8, help="clips to use (default 8)")
    args = parser.parse_args()
    index = make_report(args.input, args.output, args.model, kbps=(1.5, 3.0, 6.0, 9.0), codecs=("opus", "amr-wb"),
                        max_clips=args.clips)  # fmt: skip
    print(f"open {index}")


if __name__ == "__main__":
    main()
