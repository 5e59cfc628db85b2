"""Running experiments through the real runner on an already loaded model, for tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmflow.experiments import ImageSource, Runner
from vlmflow.experiments.runner import RunSummary
from vlmflow.store import ResultStore


def run_into(
    store: ResultStore, experiments: Sequence[Any], images: str, handle: Any, model: str = "tiny"
) -> RunSummary:
    """Run `experiments` over `images` into `store` with `handle`, without a progress bar."""
    return Runner(
        list(experiments),
        ImageSource.parse(images),
        store,
        model=model,
        handle_factory=lambda: handle,
        progress=False,
    ).run()


def snapshot(path: Path) -> tuple[list[Any], list[Any], list[Any]]:
    """A store's content but timings: rows, failures (with attempts) and blob bytes, in order."""
    with ResultStore(path, create=False) as store:
        rows = [r.content() for r in store.rows()]
        failures = [(f.content(), f.attempts) for f in store.failures()]
        blobs = store._conn.execute(
            "SELECT run_id, experiment, item, setting, name, data FROM blobs "
            "ORDER BY run_id, experiment, item, setting, name"
        ).fetchall()
    return rows, failures, blobs
