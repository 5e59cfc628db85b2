"""Run experiments over a source into a store: skip what is done, record failures, go on.

Resume is a set difference: the runner lists every (item, setting) of its shard, subtracts the
store's done keys and works through the rest, committing each result as it completes. Nothing
else is needed to survive SIGKILL, because a result is either committed or absent.

SIGINT/SIGTERM set a flag that is checked between units of work: the current unit finishes and
is committed, then `run()` returns with `interrupted` set (a second signal stops at once).

Data parallel (e.g. under torchrun): every rank builds `Shard(RANK, WORLD_SIZE)` and
`ResultStore.open(out, RANK, WORLD_SIZE)`, lists the same items and runs its own share into its
own file, so ranks never write the same file and resume independently. After a barrier, rank 0
calls `vlmflow.store.merge(out)`; the merged rows equal those of a single-process run because
keys, not files or ranks, decide what a result is.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from vlmflow.errors import VlmflowError
from vlmflow.experiments.protocol import Context, Experiment, Result, WorkItem
from vlmflow.experiments.shard import Shard
from vlmflow.sources import ImageSource
from vlmflow.store.results import ResultKey, ResultStore
from vlmflow.store.runs import RunSpec

NO_MODEL = "-"  # the model key of experiments that load none: their results fit any --model


@dataclass(frozen=True)
class Unit:
    """One pending (experiment, item, setting)."""

    experiment: Experiment
    run_id: str
    item: WorkItem
    item_index: int
    setting: str
    setting_index: int
    later: tuple[str, ...] = ()  # the item's pending settings after this one

    @property
    def key(self) -> ResultKey:
        return ResultKey(
            self.run_id,
            self.experiment.name,
            self.item.item_id,
            self.setting,
            self.item_index,
            self.setting_index,
        )


@dataclass(frozen=True)
class Plan:
    """What this shard still has to do, and how much it skips as already done."""

    units: tuple[Unit, ...]
    skipped: int
    run_ids: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.units) + self.skipped


@dataclass(frozen=True)
class RunSummary:
    """Counts of one `Runner.run()`; `signal` is the signal number that interrupted it."""

    done: int
    failed: int
    skipped: int
    remaining: int
    seconds: float
    run_ids: dict[str, str]
    signal: int | None = None

    @property
    def interrupted(self) -> bool:
        return self.signal is not None and self.remaining > 0


class Runner:
    """Executes experiments unit by unit into a `ResultStore`: the runner behind `vlmflow run`.

    A unit is one (work item, setting) of an experiment, e.g. one image under one knockout
    (paper Sec. 4-5: each analysis is an experiment). `handle_factory` is called at most once,
    just before the first unit of an experiment that needs a model: a fully resumed run never
    loads one, and tests pass model-free experiments.

    Args:
        experiments: the experiments to run, each at most once (VlmflowError otherwise).
        source: the images (`ImageSource`); its key is part of each run's identity.
        store: where results go (`ResultStore.open`); done units are skipped.
        model: the model's name, recorded with every run that needs one.
        handle_factory: builds the `Handle` on first need.
        shard: this rank's share of the items (data parallel), all by default.
        retry_failed: run units recorded as failed again.
        progress: show a progress bar on stderr.
    """

    def __init__(
        self,
        experiments: Sequence[Experiment],
        source: ImageSource,
        store: ResultStore,
        *,
        model: str = "",
        handle_factory: Callable[[], Any] | None = None,
        shard: Shard | None = None,
        retry_failed: bool = False,
        progress: bool = True,
    ) -> None:
        names = [e.name for e in experiments]
        if len(set(names)) != len(names):
            raise VlmflowError(f"experiment listed twice in {names}: give each once")
        self.experiments = list(experiments)
        self.source = source
        self.store = store
        self.model = model
        self.handle_factory = handle_factory
        self.shard = shard or Shard()
        self.retry_failed = retry_failed
        self.progress = progress
        self._handle: Any = None
        self._stop: int | None = None

    def plan(self) -> Plan:
        """Register the runs and list this shard's pending units, in item then setting order."""
        units: list[Unit] = []
        skipped = 0
        run_ids: dict[str, str] = {}
        for exp in self.experiments:
            model = self.model if getattr(exp, "needs_model", True) else NO_MODEL
            run_id = self.store.add_run(RunSpec(exp.name, model, self.source.key, exp.config))
            run_ids[exp.name] = run_id
            done = self.store.done_keys(run_id, include_failed=not self.retry_failed)
            seen: set[str] = set()
            for i, item in enumerate(exp.items(self.source)):
                if item.item_id in seen:
                    raise VlmflowError(
                        f"{exp.name}: two work items share the id {item.item_id!r}: "
                        "give every image a distinct name"
                    )
                seen.add(item.item_id)
                if not self.shard.owns(i):
                    continue
                todo: list[tuple[int, str]] = []
                for j, setting in enumerate(exp.settings(item)):
                    if (item.item_id, setting) in done:
                        skipped += 1
                    else:
                        todo.append((j, setting))
                names = tuple(setting for _, setting in todo)
                for n, (j, setting) in enumerate(todo):
                    units.append(Unit(exp, run_id, item, i, setting, j, names[n + 1 :]))
        return Plan(tuple(units), skipped, run_ids)

    def run(self) -> RunSummary:
        """Work through the plan, committing each unit's result (or its failure) as it ends.

        Returns a `RunSummary`: units done, failed, skipped (already in the store), remaining,
        seconds, run ids, and the signal that interrupted it (SIGINT/SIGTERM return early,
        after the current unit). A unit that raises is recorded as failed and the run goes on;
        VlmflowError is raised for work items that share an id.
        """
        start = time.perf_counter()
        plan = self.plan()
        done = failed = 0
        previous = self._install_signals()
        bar = self._bar(plan)
        try:
            for position, unit in enumerate(plan.units):
                if self._stop is not None:
                    return self._summary(plan, done, failed, position, start)
                if self._execute(unit):
                    done += 1
                else:
                    failed += 1
                bar.update(1)
                if failed:
                    bar.set_postfix(failed=failed, refresh=False)
        finally:
            bar.close()
            self._restore_signals(previous)
        if self.store.shard_info() is not None:
            self.store.mark_finished()
        return self._summary(plan, done, failed, len(plan.units), start)

    def _execute(self, unit: Unit) -> bool:
        """Run one unit and commit its result or its failure; True on success."""
        context = Context(
            unit.run_id,
            self.store.path.parent,
            self.model,
            unit.item_index,
            unit.setting_index,
            self.shard.rank,
            self.shard.world_size,
            (unit.setting, *unit.later),
        )
        handle = self._handle_for(unit.experiment)  # a model that fails to load stops the run
        t0 = time.perf_counter()
        try:
            result = unit.experiment.run(handle, unit.item, unit.setting, context)
            if not isinstance(result, Result):
                raise TypeError(f"{unit.experiment.name}.run returned {type(result).__name__}")
            self.store.put_result(
                unit.key, result.metrics, result.payload, result.blobs, time.perf_counter() - t0
            )
            return True
        except sqlite3.Error:
            raise  # the store itself failed (disk full, locked): stop rather than mislabel
        except Exception as err:
            self._fail(unit, err, t0)
        return False

    def _fail(self, unit: Unit, err: Exception, t0: float) -> None:
        message = " ".join(str(err).split()) or type(err).__name__
        self.store.put_failure(
            unit.key,
            type(err).__name__,
            message,
            traceback.format_exc(),
            time.perf_counter() - t0,
        )

    def _handle_for(self, experiment: Experiment) -> Any:
        if not getattr(experiment, "needs_model", True):
            return None
        if self._handle is None:
            if self.handle_factory is None:
                raise VlmflowError(f"experiment {experiment.name} needs a model: give --model")
            self._handle = self.handle_factory()
        return self._handle

    def _summary(
        self, plan: Plan, done: int, failed: int, attempted: int, start: float
    ) -> RunSummary:
        return RunSummary(
            done,
            failed,
            plan.skipped,
            len(plan.units) - attempted,
            time.perf_counter() - start,
            plan.run_ids,
            self._stop,
        )

    def _bar(self, plan: Plan) -> Any:
        from tqdm import tqdm

        desc = "+".join(e.name for e in self.experiments)
        if self.shard.world_size > 1:
            desc += f" [rank {self.shard.rank}/{self.shard.world_size}]"
        return tqdm(
            total=plan.total,
            initial=plan.skipped,
            desc=desc,
            unit="item",
            disable=not self.progress,
            file=sys.stderr,
            mininterval=0.5,
            dynamic_ncols=True,
        )

    # -- signals ----------------------------------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # signals reach the main thread only; its owner handles them
        self._stop = None
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop is not None:
            raise KeyboardInterrupt  # second signal: stop now; committed results stay
        self._stop = signum
        print(
            f"\nvlmflow: {signal.Signals(signum).name}: stopping after the current item "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
