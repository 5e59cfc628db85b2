"""The SQLite cache: keyed by backend, model, prompt version and texts; survives a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlmflow import judge
from vlmflow.judge.cache import JudgeCache, default_path
from vlmflow.judge.protocol import Backend, JudgeReplyError, Match, Verdict


class CountingJudge(Backend):
    """Matches equal words; counts calls, to see what the cache saves."""

    name = "counting"
    model = "m1"
    prompt_version = "p1"

    def __init__(self) -> None:
        self.calls = 0

    def compare(self, reference: str, candidate: str) -> Verdict:
        self.calls += 1
        if "garbage" in candidate:
            raise JudgeReplyError("malformed reply", raw="{not json")
        refs, cands = reference.split(), candidate.split()
        return self.verdict(refs, cands, [Match(w, w) for w in refs if w in cands])

    def mentions(self, text: str, objects: list[str]) -> tuple[bool, ...]:  # type: ignore[override]
        self.calls += 1
        return tuple(o in text.split() for o in objects)


def test_default_location_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMFLOW_CACHE", str(tmp_path / "c"))
    assert default_path() == tmp_path / "c" / "judge.sqlite3"


def test_second_compare_is_served_from_cache(cache: JudgeCache) -> None:
    j = CountingJudge()
    first = judge.compare("dog cat", "dog", j, cache=cache)
    second = judge.compare("dog cat", "dog", j, cache=cache)
    assert j.calls == 1
    assert not first.cached and second.cached
    assert second.tp == 1 and second.fn == 1
    assert len(cache) == 1


def test_key_includes_model_and_prompt_version(cache: JudgeCache) -> None:
    j = CountingJudge()
    judge.compare("dog", "dog", j, cache=cache)
    j.prompt_version = "p2"
    judge.compare("dog", "dog", j, cache=cache)
    j.model = "m2"
    judge.compare("dog", "dog", j, cache=cache)
    assert j.calls == 3


def test_failures_are_recorded_not_cached(cache: JudgeCache) -> None:
    j = CountingJudge()
    results = judge.compare_many([("dog", "dog"), ("dog", "garbage")], j, cache=cache)
    assert isinstance(results[0], Verdict)
    assert isinstance(results[1], judge.Failure)
    assert "malformed" in results[1].error and results[1].raw == "{not json"
    assert [f["raw"] for f in cache.failures()] == ["{not json"]
    judge.compare_many([("dog", "garbage")], j, cache=cache)
    assert j.calls == 3  # the failure is asked again, never served as a verdict


def test_mentions_are_cached(cache: JudgeCache) -> None:
    j = CountingJudge()
    assert judge.mentions("a dog", ["dog", "cat"], j, cache=cache) == (True, False)
    assert judge.mentions("a dog", ["dog", "cat"], j, cache=cache) == (True, False)
    assert j.calls == 1


CRASHING_SWEEP = """
import os, sys
from vlmflow import judge
from vlmflow.judge.cache import JudgeCache
from vlmflow.judge.protocol import Backend, Match

class J(Backend):
    name, model, prompt_version = "counting", "m1", "p1"
    def compare(self, r, c):
        same = [Match(w, w) for w in r.split() if w in c.split()]
        return self.verdict(r.split(), c.split(), same)
    def mentions(self, t, o):
        return ()

store = JudgeCache(sys.argv[1])
judge.compare("dog cat", "dog", J(), cache=store)
judge.compare("car", "car", J(), cache=store)
os._exit(9)  # dies without closing anything
"""


def test_cached_verdicts_survive_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(Path(judge.__file__).parents[2])}
    done = subprocess.run([sys.executable, "-c", CRASHING_SWEEP, str(path)], env=env)
    assert done.returncode == 9
    store = JudgeCache(path)
    assert len(store) == 2
    j = CountingJudge()
    v = judge.compare("dog cat", "dog", j, cache=store)
    assert v.cached and j.calls == 0 and v.fn == 1
