"""Command line: a lazy registry of subcommands, so `vlmflow --help` never imports torch.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int`; it is imported
only when its command is parsed or run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any

# name -> (module path, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "describe": ("vlmflow.commands.describe", "describe an image, optionally under knockout"),
    "demo": ("vlmflow.commands.demo", "run the main job on the default model"),
    "reprompt": ("vlmflow.commands.reprompt", "answer questions from a compressed image context"),
    "run": ("vlmflow.experiments.command", "run experiments resumably into a results store"),
    "report": (
        "vlmflow.report.command",
        "build DIR/report.html: the paper's figures and tables, and a map viewer",
    ),
    "judge": ("vlmflow.judge.command", "compare two descriptions object by object"),
    "scenes": ("vlmflow.scenes.command", "render, list and evaluate the scene world"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmflow", description="How a vision-language model uses the image."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_path, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module_path).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from vlmflow.errors import VlmflowError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    if args.command is None:
        build_parser([]).print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    _quiet_transformers()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = partial(_show_warning, args.command, warnings.showwarning)
            return int(module.run(args) or 0)
    except VlmflowError as err:
        print(f"vlmflow {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vlmflow {args.command}: interrupted", file=sys.stderr)
        return 130


def _show_warning(command: str, show: Any, message: Any, category: type, *rest: Any) -> None:
    """vlmflow's own warnings as one line on stderr; others as Python shows them (`show`)."""
    from vlmflow.errors import VlmflowWarning

    if issubclass(category, VlmflowWarning):
        print(f"vlmflow {command}: warning: {message}", file=sys.stderr)
    else:
        show(message, category, *rest)


def _quiet_transformers() -> None:
    """Keep stderr for vlmflow's own progress and errors (transformers' bars and warnings off)."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


if __name__ == "__main__":
    sys.exit(main())
