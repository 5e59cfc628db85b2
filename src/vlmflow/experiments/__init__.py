"""Experiments of the paper as resumable, shardable runs, and the runner that executes them.

    from vlmflow.experiments import ImageSource, Runner, create
    from vlmflow.store import ResultStore

    with ResultStore.open("out") as store:
        Runner([create("check")], ImageSource.parse("scenes"), store).run()

An experiment (see `Experiment`) lists work items and settings and computes one `Result` per
(item, setting); the runner resumes, records failures, shards by rank and shows progress.
"""

from vlmflow.experiments.protocol import Context, Experiment, Result, WorkItem, parse_config
from vlmflow.experiments.registry import (
    EXPERIMENTS,
    ExperimentSpec,
    ReportSection,
    create,
    names,
    register,
)
from vlmflow.experiments.runner import NO_MODEL, Plan, Runner, RunSummary, Unit
from vlmflow.experiments.shard import Shard
from vlmflow.sources import ImageRef, ImageSource

__all__ = [
    "EXPERIMENTS",
    "NO_MODEL",
    "Context",
    "Experiment",
    "ExperimentSpec",
    "ImageRef",
    "ImageSource",
    "Plan",
    "ReportSection",
    "Result",
    "RunSummary",
    "Runner",
    "Shard",
    "Unit",
    "WorkItem",
    "create",
    "names",
    "parse_config",
    "register",
]
