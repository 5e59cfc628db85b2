"""`vlmflow report DIR`: build DIR/report.html from the results store of DIR."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "out", metavar="DIR", help="output folder of `vlmflow run` (holds results.sqlite3)"
    )


def run(args: argparse.Namespace) -> int:
    from vlmflow.report import build_report
    from vlmflow.validate import output_folder

    if Path(args.out).is_dir():
        output_folder(args.out, "DIR")  # a read-only folder fails before any figure is drawn
    path = build_report(args.out)
    print(f"wrote {path}")
    return 0
