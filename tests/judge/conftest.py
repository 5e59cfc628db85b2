"""Fixtures: a private cache and the offline judge (loaded once); `chat_server` is shared."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vlmflow.judge.cache import JudgeCache


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's cache; no test sees the user's judge settings."""
    monkeypatch.setenv("VLMFLOW_CACHE", str(tmp_path / "cache"))
    for name in (
        "VLMFLOW_JUDGE_BASE_URL",
        "VLMFLOW_JUDGE_MODEL",
        "VLMFLOW_JUDGE_API_KEY",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[JudgeCache]:
    store = JudgeCache(tmp_path / "judge.sqlite3")
    yield store
    store.close()


@pytest.fixture(scope="session")
def offline_judge() -> Any:
    from vlmflow.judge.offline import OfflineJudge

    return OfflineJudge()
