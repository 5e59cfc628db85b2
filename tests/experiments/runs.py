"""Running experiments through the real runner on an already loaded model, for tests."""

from __future__ import annotations

from collections.abc import Sequence
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
