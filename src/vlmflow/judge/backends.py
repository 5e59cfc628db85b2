"""The judge backends by name: one `BackendSpec` each, the only list of them.

`get_backend`, the `--backend` choices and flags of `vlmflow judge`, and the `judge` setting of
the experiments all read `BACKENDS`. Adding a backend takes its own module (a `Backend`
subclass) and one entry here; nothing else names backends. Nothing heavy is imported until a
backend is built (WordNet and MiniLM load on first use).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmflow.errors import VlmflowError

if TYPE_CHECKING:
    from vlmflow.judge.protocol import Backend


def _no_flags(parser: argparse.ArgumentParser) -> None:
    return None


@dataclass(frozen=True)
class BackendSpec:
    """How one backend is named, described and built.

    `build(**options)` makes it from keyword options (`vlmflow.judge.get_backend`);
    `flags(parser)` adds its own options to `vlmflow judge` and `from_args(args)` builds it from
    them; `closed_vocabulary` says it matches against a fixed list of object names, passed as
    `vocabulary=` (the experiments pass the scene world's).
    """

    name: str
    help: str
    build: Callable[..., Backend]
    from_args: Callable[[argparse.Namespace], Backend]
    flags: Callable[[argparse.ArgumentParser], None] = _no_flags
    closed_vocabulary: bool = False


# -- offline: WordNet + MiniLM ---------------------------------------------------------------


def _offline(**options: Any) -> Backend:
    from vlmflow.judge.offline import OfflineJudge

    return OfflineJudge(**options)


def _offline_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-embeddings", action="store_true", help="offline backend: WordNet only, no MiniLM"
    )


# -- llm: any OpenAI-compatible endpoint -----------------------------------------------------


def _llm(**options: Any) -> Backend:
    from vlmflow.judge.llm import LlmJudge

    return LlmJudge(**options)


def _llm_flags(parser: argparse.ArgumentParser) -> None:
    llm = parser.add_argument_group("llm backend (defaults from VLMFLOW_JUDGE_* / OPENAI_*)")
    llm.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    llm.add_argument("--model", help="chat model name (default gpt-4o)")
    llm.add_argument("--api-key", help="API key (prefer VLMFLOW_JUDGE_API_KEY)")
    llm.add_argument("--timeout", type=float, help="seconds per request (default 120)")
    llm.add_argument("--retries", type=int, help="retries of a failed request (default 3)")


def _llm_from_args(args: argparse.Namespace) -> Backend:
    return _llm(
        base_url=args.base_url,
        model=args.model,
        api_key=args.api_key,
        timeout=args.timeout,
        retries=args.retries,
    )


# -- scene: a closed vocabulary --------------------------------------------------------------


def _scene(vocabulary: Any = None) -> Backend:
    from vlmflow.judge.scene import SceneJudge

    if vocabulary is None:
        raise VlmflowError("the scene backend needs a vocabulary: pass --vocabulary FILE.json")
    return SceneJudge(vocabulary)


def _scene_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vocabulary", help="scene backend: JSON file mapping object names to synonym lists"
    )


def _scene_from_args(args: argparse.Namespace) -> Backend:
    if not args.vocabulary:
        raise VlmflowError("the scene backend needs --vocabulary FILE.json ({name: [synonyms]})")
    path = Path(args.vocabulary)
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # missing, not UTF-8, not JSON
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise VlmflowError(f"cannot read vocabulary {path} ({first}): give a JSON file") from None
    if not isinstance(mapping, dict):
        raise VlmflowError(f"vocabulary {path} must be a JSON object {{name: [synonyms]}}")
    return _scene({str(k): [str(s) for s in v] for k, v in mapping.items()})


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            "offline",
            "WordNet + MiniLM, no network (the default)",
            _offline,
            lambda args: _offline(use_embeddings=not args.no_embeddings),
            _offline_flags,
        ),
        BackendSpec(
            "llm",
            "the paper's protocol on any OpenAI-compatible chat endpoint",
            _llm,
            _llm_from_args,
            _llm_flags,
        ),
        BackendSpec(
            "scene",
            "exact matching against a closed vocabulary of names and synonyms",
            _scene,
            _scene_from_args,
            _scene_flags,
            closed_vocabulary=True,
        ),
    )
}


def backend_spec(name: str) -> BackendSpec:
    """The spec registered as `name`; VlmflowError naming the choices otherwise."""
    if name not in BACKENDS:
        raise VlmflowError(f"unknown judge backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]
