"""`vlmflow judge REFERENCE CANDIDATE` and `vlmflow judge agreement [LABELS.jsonl]`.

Texts are given inline or as `@path` (`@-` reads standard input). Nothing heavy is imported until
the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vlmflow.errors import VlmflowError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = (
        "vlmflow judge REFERENCE CANDIDATE [options]\n"
        "       vlmflow judge agreement [LABELS.jsonl] [options]"
    )
    parser.add_argument(
        "args",
        nargs="*",
        metavar="TEXT",
        help="REFERENCE CANDIDATE (text or @file), or 'agreement' and an optional label file "
        "(default: the hand-labelled set that ships with vlmflow)",
    )
    from vlmflow.judge.backends import BACKENDS

    parser.add_argument(
        "--backend",
        choices=tuple(BACKENDS),
        default="offline",
        help="; ".join(f"{name}: {spec.help}" for name, spec in BACKENDS.items()),
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    for spec in BACKENDS.values():
        spec.flags(parser)
    parser.add_argument("--cache", help="SQLite cache file (default $VLMFLOW_CACHE/judge.sqlite3)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument("--split", help="agreement: only label lines of this split (dev, heldout)")
    parser.add_argument(
        "--show-errors", action="store_true", help="agreement: list every disagreement"
    )


def _read_text(value: str) -> str:
    if value.startswith("@"):
        if value == "@-":
            return sys.stdin.read()
        path = Path(value[1:])
        if not path.is_file():
            raise VlmflowError(f"text file {path} not found (drop the @ to pass text inline)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise VlmflowError(f"text file {path} is not UTF-8 text: give a text file") from None
        except OSError as err:
            raise VlmflowError(f"cannot read text file {path} ({err.strerror}): check it") from None
        if "\x00" in text:
            raise VlmflowError(f"text file {path} holds binary data: give a text file")
        return text
    return value


def _backend(args: argparse.Namespace) -> Any:
    from vlmflow.judge.backends import backend_spec

    return backend_spec(args.backend).from_args(args)


def _cache(args: argparse.Namespace) -> Any:
    if args.no_cache:
        return False
    from vlmflow.judge.cache import JudgeCache

    return JudgeCache(args.cache) if args.cache else JudgeCache()


def run(args: argparse.Namespace) -> int:
    positional = list(args.args)
    if positional and positional[0] == "agreement":
        if len(positional) > 2:
            raise VlmflowError("usage: vlmflow judge agreement [LABELS.jsonl]")
        return _agreement(args, positional[1] if len(positional) == 2 else None)
    if len(positional) != 2:
        raise VlmflowError(
            "give a REFERENCE and a CANDIDATE description (text or @file), "
            "or 'agreement LABELS.jsonl'"
        )
    from vlmflow import judge

    reference, candidate = (_read_text(p) for p in positional)
    verdict = judge.compare(reference, candidate, _backend(args), cache=_cache(args))
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=2, ensure_ascii=False))
        return 0
    symbol = {1.0: "="}
    pairs = [f"{m.reference} {symbol.get(m.score, '~')} {m.candidate}" for m in verdict.matches]
    lines = [
        f"reference objects ({len(verdict.reference_objects)}): "
        + (", ".join(verdict.reference_objects) or "-"),
        f"candidate objects ({len(verdict.candidate_objects)}): "
        + (", ".join(verdict.candidate_objects) or "-"),
        f"matched (TP {verdict.tp}): " + ("; ".join(pairs) or "-"),
        f"missing (FN {verdict.fn}): " + (", ".join(verdict.missing) or "-"),
        f"hallucinated (FP {verdict.fp}): " + (", ".join(verdict.hallucinated) or "-"),
        f"precision {verdict.precision:.3f}  recall {verdict.recall:.3f}  F1 {verdict.f1:.3f}"
        f"   [{verdict.backend} {verdict.model}{', cached' if verdict.cached else ''}]",
    ]
    print("\n".join(lines))
    return 0


def _agreement(args: argparse.Namespace, labels: str | None) -> int:
    from vlmflow import judge
    from vlmflow.judge import agreement

    path = Path(labels) if labels else agreement.shipped_labels()
    decisions = agreement.load_labels(path, split=args.split)
    backend = _backend(args)
    store = _cache(args)

    def ask(text: str, objects: Any) -> tuple[bool, ...]:
        return judge.mentions(text, objects, backend, cache=store)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{done}/{total} texts", end="" if done < total else "\n", file=sys.stderr)

    result = agreement.measure(decisions, ask, progress)
    if args.json:
        data = result.to_dict()
        data.update({"labels": str(path), "backend": backend.name, "model": backend.model})
        if not args.show_errors:
            data.pop("disagreements")
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    print(f"{backend.name} judge ({backend.model}) vs. human labels in {path}")
    print(result.table())
    if args.show_errors:
        print("\ndisagreements (item, object, human, judge):")
        for d, judged in result.disagreements:
            print(
                f"  {d.item:<34} {d.object:<18} human={'yes' if d.human else 'no':<4}"
                f" judge={'yes' if judged else 'no'}"
            )
    return 0
