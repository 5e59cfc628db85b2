"""Export a store as one flat table (CSV or Parquet) for pandas, R or a spreadsheet.

One row per (run, experiment, item, setting): successes with `status` "ok", failures with
"failed" and their error. Scalar metrics become `metrics.NAME` columns (the json_normalize
convention); the payload stays one JSON column; blobs are listed by name, not exported.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmflow.errors import VlmflowError
from vlmflow.store.runs import canonical_json

if TYPE_CHECKING:
    from vlmflow.store.results import ResultStore

BASE_COLUMNS = (
    "run_id",
    "experiment",
    "model",
    "source",
    "item",
    "item_index",
    "setting",
    "setting_index",
    "status",
    "error_type",
    "error_message",
    "seconds",
    "created",
    "payload",
    "blobs",
)
METRIC_PREFIX = "metrics."


def table(store: ResultStore, run_id: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, records) of `store`, in stored order; metric values keep their Python types."""
    runs = {r.run_id: r for r in store.runs()}
    records: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    metric_names: set[str] = set()
    for row in store.rows(run_id):
        run = runs[row.run_id]
        record = _base(row, run.model, run.source, "ok", row.seconds, row.created)
        record["payload"] = canonical_json(row.payload)
        record["blobs"] = ";".join(row.blobs)
        for name, value in row.metrics.items():
            metric_names.add(name)
            record[METRIC_PREFIX + name] = _scalar(value)
        records.append((_order(row), record))
    for fail in store.failures(run_id):
        run = runs[fail.run_id]
        record = _base(fail, run.model, run.source, "failed", fail.seconds, fail.created)
        record["error_type"] = fail.error_type
        record["error_message"] = fail.message
        records.append((_order(fail), record))
    records.sort(key=lambda pair: pair[0])
    columns = list(BASE_COLUMNS) + [METRIC_PREFIX + n for n in sorted(metric_names)]
    return columns, [r for _, r in records]


def write_csv(store: ResultStore, path: Path, run_id: str | None = None) -> int:
    columns, records = table(store, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(records)
    return len(records)


def write_parquet(store: ResultStore, path: Path, run_id: str | None = None) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise VlmflowError(
            "Parquet export needs pyarrow: pip install pyarrow (or pip install 'vlmflow[export]')"
        ) from None
    columns, records = table(store, run_id)
    arrays = {c: _column([r.get(c) for r in records]) for c in columns}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays), path)
    return len(records)


def _base(row: Any, model: str, source: str, status: str, seconds: float, created: float) -> dict:
    return {
        "run_id": row.run_id,
        "experiment": row.experiment,
        "model": model,
        "source": source,
        "item": row.item,
        "item_index": row.item_index,
        "setting": row.setting,
        "setting_index": row.setting_index,
        "status": status,
        "error_type": None,
        "error_message": None,
        "seconds": seconds,
        "created": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "payload": None,
        "blobs": None,
    }


def _order(row: Any) -> tuple[Any, ...]:
    return (row.experiment, row.run_id, row.item_index, row.setting_index, row.item, row.setting)


def _scalar(value: Any) -> Any:
    """Numbers, text and booleans stay as they are; lists and dicts become JSON text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True)


def _column(values: list[Any]) -> Any:
    """One typed pyarrow array; a column mixing numbers and text falls back to text."""
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, pa.int64())
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else str(v) for v in values], pa.string())
