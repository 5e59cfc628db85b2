"""Write the shipped evaluation set from its fixed seeds.

    python -m vlmflow.scenes.build_fixed [--out DIR]

Run after any change to the scene world; the tests fail until the shipped data matches.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlmflow.scenes.fixed import build_fixed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the 80-scene evaluation set.")
    parser.add_argument("--out", type=Path, default=None, help="folder (default: package data)")
    args = parser.parse_args(argv)
    print(build_fixed(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
