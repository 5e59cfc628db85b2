"""A cheap, deterministic, model-free experiment for testing the runner and the store.

It is also what adding an experiment takes: this module (the experiment and its report
section) and one `register(ExperimentSpec(...))`; no other list names it.

Run as a script it is `vlmflow run toy ...` (the same argument parser and `run()`), which lets
tests start it in a subprocess and kill it.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vlmflow.experiments import (
    Context,
    ExperimentSpec,
    ImageSource,
    ReportSection,
    Result,
    WorkItem,
    parse_config,
    register,
)

FAIL_MESSAGE = "deliberate failure"


@dataclass(frozen=True)
class ToyConfig:
    count: int = 30
    settings: tuple[str, ...] = ("a", "b")
    sleep_ms: float = 0.0
    fail_item: str = "item-013"


class ToyExperiment:
    name = "toy"
    needs_model = False
    calls = 0  # units run in this process, across instances

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        opts = dict(options or {})
        if "settings" in opts:
            opts["settings"] = tuple(opts["settings"])
        self.options = parse_config(ToyConfig, opts, self.name)
        self.config = asdict(self.options)

    def items(self, source: ImageSource) -> Iterable[WorkItem]:
        return [WorkItem(f"item-{i:03d}", {"i": i}) for i in range(self.options.count)]

    def settings(self, item: WorkItem) -> Sequence[str]:
        return list(self.options.settings)

    def run(self, handle: Any, item: WorkItem, setting: str, context: Context) -> Result:
        type(self).calls += 1
        if self.options.sleep_ms:
            time.sleep(self.options.sleep_ms / 1000)
        if item.item_id == self.options.fail_item and setting == self.options.settings[-1]:
            raise RuntimeError(f"{FAIL_MESSAGE} on {item.item_id}")
        digest = hashlib.sha256(f"{item.item_id}/{setting}".encode()).hexdigest()
        value = int(digest[:8], 16) / 2**32
        return Result(
            metrics={
                "value": value,
                "index": item.payload["i"],
                "even": item.payload["i"] % 2 == 0,
            },
            payload={"digest": digest, "words": [setting, item.item_id]},
            blobs={"map": (np.arange(6).reshape(2, 3) * value).astype(np.float16)},
        )


SECTION_TITLE = "Toy values"


def toy_section(ctx: Any, run: Any, rows: Sequence[Any]) -> list[str]:
    """The toy's report section: the mean of `value` over the run's results."""
    from vlmflow.report.page import paragraph

    mean = sum(float(r.metrics["value"]) for r in rows) / len(rows)
    return [paragraph(f"toy section: {len(rows)} results, mean value {mean:.6f}")]


register(
    ExperimentSpec(
        "toy",
        "toy_experiment:ToyExperiment",
        "test experiment",
        ReportSection(SECTION_TITLE, build="toy_experiment:toy_section"),
    )
)


def main(argv: list[str]) -> int:
    import argparse

    from vlmflow.errors import VlmflowError
    from vlmflow.experiments import command

    parser = argparse.ArgumentParser(prog="vlmflow run")
    command.add_arguments(parser)
    try:
        return command.run(parser.parse_args(argv))
    except VlmflowError as err:
        print(f"vlmflow run: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
