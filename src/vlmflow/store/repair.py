"""`repair(path)`: a damaged results store rebuilt from every row that can still be read.

The damaged file is moved aside (`results.sqlite3.damaged-<unix time>`, with its WAL) and never
deleted; a fresh store takes every run, result (with its blobs) and failure whose row reads
and decodes. Rows are gathered two ways and united by key: SQL reads each table forwards up to
its first damaged page and backwards from its end up to its last, and `pages.salvage` walks the
b-tree pages themselves, so rows between two (or any number of) damaged regions are kept too.
Only the rows on damaged pages (and cells) are lost, and the report says how many pages and
cells could not be read.
"""

from __future__ import annotations

import mmap
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmflow.errors import VlmflowError
from vlmflow.store.pages import Salvage, salvage
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
    """What a repair kept (rows per table), where the damaged file went, what it skipped.

    `skipped`: rows that were read but did not decode (or blobs of a result not kept);
    `unreadable`: damaged pages and cells whose rows could not be read at all (when the pages
    themselves could not be walked: damaged regions SQL met, each costing an unknown number
    of rows).
    """

    path: Path
    damaged: Path | None
    kept: dict[str, int]
    skipped: int
    unreadable: int = 0

    def summary(self) -> str:
        if self.damaged is None:
            return f"{self.path} is intact: nothing to repair"
        kept = ", ".join(f"{n} {table}" for table, n in self.kept.items() if table != "meta")
        return (
            f"repaired {self.path}: kept {kept}; {self.skipped} row(s) that did not decode "
            f"skipped, {self.unreadable} page(s) or cell(s) could not be read; the damaged "
            f"file is {self.damaged}"
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
        salvaged = _salvage(damaged, _shapes(target))
        unreadable = 0 if salvaged is None else salvaged.damaged_pages + salvaged.damaged_cells
        target.execute("BEGIN")
        results: set[tuple[Any, ...]] = set()
        for table in ("runs", "results", "failures", "meta", "blobs"):
            rows, lost = _readable_rows(source, table)
            if salvaged is None:
                unreadable += lost
            else:
                rows = _united(table, rows, salvaged.rows[table])
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
    return RepairReport(file, damaged, kept, skipped, unreadable)


def _shapes(conn: sqlite3.Connection) -> dict[str, tuple[int, bool]]:
    """table -> (column count, WITHOUT ROWID) of the store's schema, as `salvage` takes it."""
    shapes = {}
    for table in _KEYS:
        width = len(conn.execute(f"SELECT * FROM {table} LIMIT 0").description)
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name=?", (table,)).fetchone()[0]
        shapes[table] = (width, "WITHOUT ROWID" in sql.upper())
    return shapes


def _salvage(damaged: Path, shapes: dict[str, tuple[int, bool]]) -> Salvage | None:
    """`pages.salvage` on the damaged file as SQLite sees it: with a WAL, on a copy into
    which the WAL is checkpointed first (the damaged file itself stays as it was)."""
    wal = damaged.with_name(damaged.name + "-wal")
    with tempfile.TemporaryDirectory(dir=damaged.parent) as tmp:
        file = damaged
        if wal.is_file() and wal.stat().st_size > 0:
            file = Path(tmp) / "copy.sqlite3"
            shutil.copyfile(damaged, file)
            shutil.copyfile(wal, file.with_name(file.name + "-wal"))
            try:
                conn = sqlite3.connect(file, isolation_level=None)
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    conn.close()
            except sqlite3.DatabaseError:
                pass  # the pages without the WAL's newer versions: still every sound row there
        with file.open("rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return None
            with (
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data,
                memoryview(data) as view,
            ):
                return salvage(view, shapes)


def _united(
    table: str, read: list[tuple[Any, ...]], salvaged: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """Rows SQL read, plus those only the page walk found, in key order."""
    width = len(_KEYS[table])
    rows = {tuple(row[:width]): row for row in salvaged}
    rows.update((tuple(row[:width]), row) for row in read)
    return [rows[key] for key in sorted(rows, key=_sort_key)]


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
