"""`repair(path)`: a damaged results store rebuilt from every row that can still be read.

The damaged file is moved aside (`results.sqlite3.damaged-<unix time>`, with its WAL) and never
deleted; a fresh store takes every run, result (with its blobs) and failure whose row reads
and decodes. Each table is read forwards up to a damaged page and backwards from its end up to
it, so one damaged page costs only the rows on it.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmflow.errors import VlmflowError
from vlmflow.store.results import SCHEMA, SCHEMA_VERSION, _decode_row, check_integrity

# Primary-key columns per table, in key order.
_KEYS: dict[str, tuple[str, ...]] = {
    "runs": ("run_id",),
    "results": ("run_id", "experiment", "item", "setting"),
    "failures": ("run_id", "experiment", "item", "setting"),
    "blobs": ("run_id", "experiment", "item", "setting", "name"),
    "meta": ("key",),
}


@dataclass(frozen=True)
class RepairReport:
    """What a repair kept (rows per table), where the damaged file went, what it skipped."""

    path: Path
    damaged: Path | None
    kept: dict[str, int]
    skipped: int

    def summary(self) -> str:
        if self.damaged is None:
            return f"{self.path} is intact: nothing to repair"
        kept = ", ".join(f"{n} {table}" for table, n in self.kept.items() if table != "meta")
        return (
            f"repaired {self.path}: kept {kept}; {self.skipped} unreadable row(s) or page(s) "
            f"skipped; the damaged file is {self.damaged}"
        )


def repair(path: str | Path) -> RepairReport:
    """Rebuild the store at `path` from its readable rows (see the module doc).

    An intact store is left as it is. Raises VlmflowError when there is no file at `path`.
    """
    file = Path(path)
    if not file.is_file():
        raise VlmflowError(f"no results store at {file}: give the --out folder of a run")
    if _intact(file):
        return RepairReport(file, None, {}, 0)
    damaged = file.with_name(f"{file.name}.damaged-{int(time.time())}")
    file.replace(damaged)
    for suffix in ("-wal", "-shm"):
        side = file.with_name(file.name + suffix)
        if side.exists():
            side.replace(damaged.with_name(damaged.name + suffix))
    kept: dict[str, int] = {}
    skipped = 0
    source = sqlite3.connect(f"{damaged.resolve().as_uri()}?mode=ro", uri=True)
    target = sqlite3.connect(file, isolation_level=None)
    try:
        target.execute("PRAGMA journal_mode=WAL")
        target.executescript(SCHEMA)
        target.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        target.execute("BEGIN")
        results: set[tuple[Any, ...]] = set()
        for table in ("runs", "results", "failures", "meta", "blobs"):
            rows, lost = _readable_rows(source, table)
            skipped += lost
            count = 0
            for row in rows:
                if table == "results":
                    try:
                        _decode_row("results", (row[6], row[7]))
                    except ValueError:
                        skipped += 1
                        continue
                    results.add(tuple(row[:4]))
                if table == "blobs" and tuple(row[:4]) not in results:
                    skipped += 1
                    continue
                marks = ", ".join("?" * len(row))
                target.execute(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", row)
                count += 1
            kept[table] = count
        target.execute("COMMIT")
    finally:
        source.close()
        target.close()
    return RepairReport(file, damaged, kept, skipped)


def _intact(file: Path) -> bool:
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return False
    try:
        return check_integrity(conn) is None
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def _readable_rows(conn: sqlite3.Connection, table: str) -> tuple[list[tuple[Any, ...]], int]:
    """Rows of `table` in key order around damaged pages; (rows, damaged spans met).

    Read forwards until the first damaged page, then backwards from the end until that page
    again: one damaged page costs only its own rows.
    """
    width = len(_KEYS[table])
    found: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    lost = 0
    for direction in ("ASC", "DESC"):
        try:
            order = ", ".join(f"{column} {direction}" for column in _KEYS[table])
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY {order}"):
                key = tuple(row[:width])
                if key in found:
                    break  # met the rows read the other way: nothing was damaged in between
                found[key] = tuple(row)
            else:
                if direction == "ASC":
                    break  # the whole table read: no need to go backwards
        except sqlite3.DatabaseError:
            lost += 1
    rows = [found[k] for k in sorted(found, key=_sort_key)]
    return rows, min(lost, 1)


def _sort_key(key: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(v) for v in key)
