"""`build_report(out_dir)`: the results folder's store -> `report.html` and `figures/*.png`."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from vlmflow.errors import VlmflowError
from vlmflow.experiments import registry
from vlmflow.report.figures import Figures
from vlmflow.report.page import Section, collapsed, document, esc, note, paragraph
from vlmflow.report.sections import (
    Context,
    failures_table,
    generic,
    run_label,
    runs_table,
)
from vlmflow.report.viewer import SCRIPT
from vlmflow.store import MAIN_FILE, ResultStore, Row, RunInfo, rank_files

REPORT_FILE = "report.html"


def open_store(out_dir: Path) -> ResultStore:
    """The folder's merged store, or an error naming what to run first."""
    if not out_dir.is_dir():
        raise VlmflowError(
            f"no folder {out_dir}: give the --out folder of `vlmflow run` (default: results)"
        )
    path = out_dir / MAIN_FILE
    if not path.is_file():
        if rank_files(out_dir):
            raise VlmflowError(
                f"{out_dir} holds only per-rank stores: merge them first with "
                f"vlmflow run --merge --out {out_dir}"
            )
        raise VlmflowError(
            f"no results store ({MAIN_FILE}) in {out_dir}: run experiments into it first, "
            f"e.g. vlmflow run fractions maps --out {out_dir}"
        )
    return ResultStore(path, create=False)


def build_report(out_dir: str | Path) -> Path:
    """Write `out_dir/report.html` (and `out_dir/figures/*.png`) from `out_dir/results.sqlite3`.

    One section per experiment in the store, one figure set per run of it; failed items are
    listed, never plotted. Figures an earlier build wrote (its manifest) and this one did not
    (runs since removed) are deleted; other files in `figures` are never touched. Returns the
    report's path.

    Args:
        out_dir: the folder a `vlmflow run --out` wrote (holding `results.sqlite3`).

    Returns:
        The path of `report.html`, written atomically (a reader never sees half a page).

    Raises:
        VlmflowError: no results store in `out_dir`, or one with neither results nor failures.

    The figures are the paper's: role fractions across layers (Sec. 4.4), knockout F1 per
    layer window (Sec. 4.2-4.4), localization (Sec. 4.5), re-prompting (Sec. 5).
    """
    out = Path(out_dir)
    with open_store(out) as store:
        runs = store.runs()
        rows = store.rows()
        failures = store.failures()
        if not rows and not failures:
            raise VlmflowError(
                f"{out / MAIN_FILE} holds no results yet: run experiments into it first, "
                f"e.g. vlmflow run fractions maps --out {out}"
            )
        figures = Figures(out)
        ctx = Context(store, figures)
        sections = _sections(ctx, runs, rows)
    sections.append(_runs_section(runs, rows, failures))
    sections.append(_failures_section(failures))
    figures.remove_stale()
    intro = _intro(out, runs, rows, failures)
    page = document("vlmflow report", intro, sections, SCRIPT if ctx.viewer else "")
    path = out / REPORT_FILE
    temporary = path.with_suffix(".html.tmp")
    temporary.write_text(page, encoding="utf-8")
    os.replace(temporary, path)  # a reader never sees half a report
    return path


def _sections(ctx: Context, runs: Sequence[RunInfo], rows: Sequence[Row]) -> list[Section]:
    by_run: dict[str, list[Row]] = {}
    for row in rows:
        by_run.setdefault(row.run_id, []).append(row)
    present = {run.experiment for run in runs if by_run.get(run.run_id)}
    sections = []
    for experiment in registry.report_order(present):
        spec, build, closing = registry.section_of(experiment)
        section = Section(experiment, spec.title, spec.paper)
        experiment_runs = [r for r in runs if r.experiment == experiment and by_run.get(r.run_id)]
        for run in experiment_runs:
            section.add(f"<h3>{esc(run_label(run))}</h3>")
            section.add("".join((build or generic)(ctx, run, by_run[run.run_id])))
        if closing is not None:
            section.add(closing(ctx))
        sections.append(section)
    missing = [e for e in registry.paper_experiments() if e not in present]
    if missing:
        absent = Section("absent", "Not in this store")
        absent.add(
            note(
                "No results for "
                + ", ".join(missing)
                + ". Run them into this folder to add their sections: vlmflow run "
                + " ".join(missing)
                + " --out DIR, then build the report again."
            )
        )
        sections.append(absent)
    return sections


def _runs_section(runs: Sequence[RunInfo], rows: Sequence[Row], failures: Sequence) -> Section:
    counts: dict[str, tuple[int, int]] = {}
    for row in rows:
        done, failed = counts.get(row.run_id, (0, 0))
        counts[row.run_id] = (done + 1, failed)
    for fail in failures:
        done, failed = counts.get(fail.run_id, (0, 0))
        counts[fail.run_id] = (done, failed + 1)
    section = Section("runs", "Runs")
    section.add(runs_table(runs, counts))
    return section


def _failures_section(failures: Sequence) -> Section:
    section = Section("failures", f"Failures ({len(failures)})")
    if not failures:
        section.add(paragraph("Every work item completed.", "muted"))
        return section
    section.add(
        paragraph(
            "Items that raised are recorded and left out of every figure and mean above; "
            "vlmflow run --retry-failed runs them again.",
            "muted",
        )
    )
    section.add(failures_table(failures))
    tracebacks = "".join(
        f"<p><b>{esc(f.experiment)}</b> {esc(f.item)} / {esc(f.setting)}</p>"
        f"<pre>{esc(_tail(f.traceback))}</pre>"
        for f in failures
        if f.traceback
    )
    if tracebacks:
        section.add(collapsed("Tracebacks (last lines)", tracebacks))
    return section


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _intro(
    out: Path, runs: Sequence[RunInfo], rows: Sequence[Row], failures: Sequence
) -> list[str]:
    models = sorted({run.model for run in runs})
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return [
        paragraph(
            "Figures and tables of \"What's in the Image? A Deep-Dive into the Vision of Vision "
            'Language Models" (Kaduri, Bagon, Dekel), reproduced from the stored results.',
            "lead",
        ),
        paragraph(
            f"Store {out / MAIN_FILE}: {len(runs)} runs, {len(rows)} results, "
            f"{len(failures)} failures. Model: {', '.join(models)}. Built {stamp}.",
            "muted",
        ),
    ]
