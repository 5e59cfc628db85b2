"""The backend registry: one entry makes a backend known to the library, the CLI and the
experiments, with nothing else edited."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import pytest

from vlmflow import judge
from vlmflow.cli import main
from vlmflow.errors import VlmflowError
from vlmflow.judge.backends import BACKENDS, BackendSpec


class Echo(judge.Backend):
    """Every distinct lower-case word is an object; `shout` upper-cases them (a backend flag)."""

    name = "echo"

    def __init__(self, shout: bool = False, vocabulary: Any = None) -> None:
        self.model = "shout" if shout else "plain"
        self.vocabulary = vocabulary

    def _objects(self, text: str) -> list[str]:
        words = [w.strip(".,") for w in text.split() if w.islower()]
        return list(dict.fromkeys(w.upper() if self.model == "shout" else w for w in words))

    def compare(self, reference: str, candidate: str) -> judge.Verdict:
        refs, cands = self._objects(reference), self._objects(candidate)
        matches = [judge.Match(n, n, 1.0, "same word") for n in refs if n in cands]
        return self.verdict(refs, cands, matches, "same words")

    def mentions(self, text: str, objects: Sequence[str]) -> tuple[bool, ...]:
        found = set(self._objects(text))
        return tuple(o in found for o in objects)


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shout", action="store_true", help="echo backend: upper-case")


@pytest.fixture
def echo(monkeypatch: pytest.MonkeyPatch) -> BackendSpec:
    spec = BackendSpec(
        "echo",
        "every word",
        Echo,
        lambda args: Echo(shout=args.shout),
        _flags,
        closed_vocabulary=True,
    )
    monkeypatch.setitem(BACKENDS, "echo", spec)
    return spec


def test_a_registered_backend_is_built_by_name(echo: BackendSpec) -> None:
    backend = judge.get_backend("echo", shout=True)
    assert isinstance(backend, Echo) and backend.model == "shout"
    verdict = judge.compare("a dog and a cat", "a dog", "echo", cache=False)
    assert (verdict.tp, verdict.fn, verdict.fp) == (2, 2, 0)  # a, dog / and, cat


def test_a_registered_backend_and_its_flags_reach_the_cli(
    echo: BackendSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["judge", "a dog", "a cat", "--backend", "echo", "--no-cache", "--json"]
    assert main([*args, "--shout"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["reference_objects"] == ["A", "DOG"] and data["model"] == "shout"


def test_experiments_accept_it_and_pass_a_closed_vocabulary(echo: BackendSpec) -> None:
    from vlmflow.experiments.knockout import Judge

    backend = Judge("echo", cache=False).backend
    assert isinstance(backend, Echo)
    assert "dog" in backend.vocabulary.names  # the scene world's, as the scene judge gets it


def test_unknown_names_list_the_registry() -> None:
    with pytest.raises(VlmflowError, match="choose one of offline, llm, scene"):
        judge.get_backend("nope")
    with pytest.raises(ValueError, match="is not one of offline, llm, scene"):
        from vlmflow.experiments.knockout import Judge

        Judge("nope")
