"""MkDocs hook: pages generated at build time from the code, so the site never copies help text.

In a page's Markdown,
    <!-- vlmflow:cli -->              becomes every `vlmflow` subcommand's `--help`, rendered from
                                      the argparse parsers of `vlmflow.cli` (nested ones too);
    <!-- vlmflow:experiment NAME -->  becomes experiment NAME's one-line help and description
                                      (its module docstring) and a table of its config options
                                      with their defaults, read from the experiment registry.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:  # document the tree being built, not another installed copy
    sys.path.insert(0, str(SRC))

CLI_MARK = "<!-- vlmflow:cli -->"
EXPERIMENT_MARK = re.compile(r"<!-- vlmflow:experiment (\w+) -->")
HELP_WIDTH = "100"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _render_parser(parser: argparse.ArgumentParser, title: str, depth: int) -> list[str]:
    lines = [f"{'#' * depth} `{title}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, child in _subparsers(parser).items():
        lines += _render_parser(child, f"{title} {name}", depth + 1)
    return lines


def cli_reference() -> str:
    """Markdown with the help of `vlmflow` and of every subcommand (each parsed on its own, as
    the lazy CLI registry builds only the chosen command's arguments)."""
    from vlmflow.cli import COMMANDS, build_parser

    os.environ["COLUMNS"] = HELP_WIDTH  # argparse wraps help to the terminal width
    lines = ["## `vlmflow`", "", "```text", build_parser([]).format_help().rstrip(), "```", ""]
    for name in COMMANDS:
        lines += _render_parser(_subparsers(build_parser([name]))[name], f"vlmflow {name}", 2)
    return "\n".join(lines)


def _default(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value!r}`".replace("|", "\\|")


def experiment_reference(name: str) -> str:
    """Markdown for one registered experiment: help line, module docstring, options table."""
    import inspect

    from vlmflow.experiments.registry import create, spec

    entry = spec(name)
    help_text = entry.help
    module = importlib.import_module(entry.factory.partition(":")[0])
    options = create(name, {}).options  # type: ignore[attr-defined]
    lines = [
        f"`vlmflow run {name}`: {help_text}.",
        "",
        inspect.cleandoc(module.__doc__ or ""),
        "",
        f"### Options (`[{name}]` table of `--config`)",
        "",
        inspect.cleandoc(type(options).__doc__ or ""),
        "",
        "| option | default |",
        "|---|---|",
    ]
    lines += [f"| `{f.name}` | {_default(getattr(options, f.name))} |"
              for f in dataclasses.fields(options)]
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, **_: Any) -> str:
    if CLI_MARK in markdown:
        markdown = markdown.replace(CLI_MARK, cli_reference())
    return EXPERIMENT_MARK.sub(lambda m: experiment_reference(m.group(1)), markdown)
