"""The results store: one SQLite file per output folder, one transaction per finished result.

Why SQLite: it is in the standard library, a commit is atomic and durable (WAL with
`synchronous=FULL` fsyncs every commit), and a primary key makes a duplicate result impossible
rather than merely unlikely. A run killed at any moment therefore loses at most the result it was
computing, and the restarted run skips every key already in the file.

Files in an output folder:
- `results.sqlite3`: a single-process run, and the merged result of a sharded run.
- `results.rank{R}.sqlite3`: rank R of a sharded run. Only that rank ever writes it, and it is
  opened with an exclusive lock, so SQLite keeps the WAL index in process memory instead of a
  shared-memory file: safe on a shared (network) filesystem. `merge()` folds them together.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmflow.errors import VlmflowError
from vlmflow.store.runs import RunInfo, RunSpec, canonical_json

if TYPE_CHECKING:
    import numpy as np

SCHEMA_VERSION = 1
MAIN_FILE = "results.sqlite3"
BUSY_TIMEOUT_S = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    model      TEXT NOT NULL,
    source     TEXT NOT NULL,
    config     TEXT NOT NULL,
    version    TEXT NOT NULL,
    created    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    run_id        TEXT NOT NULL REFERENCES runs(run_id),
    experiment    TEXT NOT NULL,
    item          TEXT NOT NULL,
    setting       TEXT NOT NULL,
    item_index    INTEGER NOT NULL,
    setting_index INTEGER NOT NULL,
    metrics       TEXT NOT NULL,
    payload       TEXT NOT NULL,
    seconds       REAL NOT NULL,
    created       REAL NOT NULL,
    PRIMARY KEY (run_id, experiment, item, setting)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failures (
    run_id        TEXT NOT NULL REFERENCES runs(run_id),
    experiment    TEXT NOT NULL,
    item          TEXT NOT NULL,
    setting       TEXT NOT NULL,
    item_index    INTEGER NOT NULL,
    setting_index INTEGER NOT NULL,
    error_type    TEXT NOT NULL,
    message       TEXT NOT NULL,
    traceback     TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 1,
    seconds       REAL NOT NULL,
    created       REAL NOT NULL,
    PRIMARY KEY (run_id, experiment, item, setting)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    run_id     TEXT NOT NULL,
    experiment TEXT NOT NULL,
    item       TEXT NOT NULL,
    setting    TEXT NOT NULL,
    name       TEXT NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (run_id, experiment, item, setting, name),
    FOREIGN KEY (run_id, experiment, item, setting)
        REFERENCES results(run_id, experiment, item, setting) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def store_path(out_dir: str | Path, rank: int = 0, world_size: int = 1) -> Path:
    """The store file of `rank` in `out_dir`: the main file unless the run is sharded."""
    out = Path(out_dir)
    return out / MAIN_FILE if world_size <= 1 else out / f"results.rank{rank}.sqlite3"


@dataclass(frozen=True)
class ResultKey:
    """Where one result lives: the run, the experiment, the work item and the setting."""

    run_id: str
    experiment: str
    item: str
    setting: str
    item_index: int = 0
    setting_index: int = 0

    def ident(self) -> tuple[str, str, str, str]:
        return (self.run_id, self.experiment, self.item, self.setting)


@dataclass(frozen=True)
class Row:
    """One stored result (`seconds` and `created` differ between runs; the rest must not)."""

    run_id: str
    experiment: str
    item: str
    setting: str
    item_index: int
    setting_index: int
    metrics: Mapping[str, Any]
    payload: Mapping[str, Any]
    blobs: tuple[str, ...]
    seconds: float
    created: float

    def content(self) -> tuple[Any, ...]:
        """Everything but timing, as canonical text: equal for equal results on any machine."""
        return (
            self.run_id,
            self.experiment,
            self.item,
            self.setting,
            self.item_index,
            self.setting_index,
            canonical_json(self.metrics),
            canonical_json(self.payload),
            self.blobs,
        )


@dataclass(frozen=True)
class Failure:
    """A work item that raised: kept with its error so the run can go on and report it later."""

    run_id: str
    experiment: str
    item: str
    setting: str
    item_index: int
    setting_index: int
    error_type: str
    message: str
    traceback: str
    attempts: int
    seconds: float
    created: float

    def content(self) -> tuple[Any, ...]:
        return (
            self.run_id,
            self.experiment,
            self.item,
            self.setting,
            self.item_index,
            self.setting_index,
            self.error_type,
            self.message,
        )


@dataclass(frozen=True)
class ShardInfo:
    """Recorded in a rank's file: which shard it holds and whether that shard finished."""

    rank: int
    world_size: int
    finished: bool


@dataclass(eq=False)
class ResultStore:
    """Durable, duplicate-free results of one output folder (or one rank of it).

    Open with `ResultStore.open(out_dir, rank, world_size)`, or on a file path directly. Every
    `put_result` / `put_failure` is its own committed transaction.
    """

    path: Path
    exclusive: bool = False
    create: bool = True
    prior_path: Path | None = None
    busy_timeout_s: float = BUSY_TIMEOUT_S
    _conn: sqlite3.Connection = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.create and not self.path.is_file():
            raise VlmflowError(f"no results store at {self.path}: give the --out folder of a run")
        existed = self.path.is_file() and self.path.stat().st_size > 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = _connect(self.path, self.exclusive, self.busy_timeout_s, existed)
        except StoreCorrupt as err:
            raise CorruptStoreError(
                f"{self.path} is corrupt ({err}): run `vlmflow run --repair --out "
                f"{self.path.parent}` to keep every readable result (the damaged file is kept "
                "beside it)"
            ) from None
        except sqlite3.OperationalError as err:
            raise _locked_or(err, self.path) from None
        except sqlite3.DatabaseError as err:
            raise VlmflowError(
                f"{self.path} is not a vlmflow results store ({err}): choose another --out folder"
            ) from None

    @classmethod
    def open(cls, out_dir: str | Path, rank: int = 0, world_size: int = 1) -> ResultStore:
        """The store of `rank` in `out_dir`; a sharded rank also sees what a merge holds."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise VlmflowError(
                f"rank {rank} is outside world size {world_size}: use 0 <= rank < world size"
            )
        path = store_path(out_dir, rank, world_size)
        if world_size == 1:
            return cls(path)
        store = cls(path, exclusive=True, prior_path=Path(out_dir) / MAIN_FILE)
        store._start_shard(rank, world_size)
        return store

    # -- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- runs -------------------------------------------------------------------------------

    def add_run(self, spec: RunSpec, version: str | None = None) -> str:
        """Record `spec` (once) and return its run id."""
        if version is None:
            from vlmflow import __version__ as version
        with self._transaction() as db:
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    spec.run_id,
                    spec.experiment,
                    spec.model,
                    spec.source,
                    spec.config_json,
                    version,
                    time.time(),
                ),
            )
        return spec.run_id

    def runs(self) -> list[RunInfo]:
        import json

        cur = self._conn.execute("SELECT * FROM runs ORDER BY created, run_id")
        return [
            RunInfo(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6]) for r in cur.fetchall()
        ]

    # -- writing ----------------------------------------------------------------------------

    def put_result(
        self,
        key: ResultKey,
        metrics: Mapping[str, Any] | None = None,
        payload: Mapping[str, Any] | None = None,
        blobs: Mapping[str, np.ndarray] | None = None,
        seconds: float = 0.0,
    ) -> bool:
        """Commit one result (and its blobs), replacing a failure of the same key.

        Returns False, writing nothing, when the key already has a result: the first result
        of a key is kept, so a repeated work item can never produce a duplicate row.
        """
        metrics_json = canonical_json(metrics or {})
        payload_json = canonical_json(payload or {})
        encoded = {name: _encode_array(arr) for name, arr in (blobs or {}).items()}
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    *key.ident(),
                    key.item_index,
                    key.setting_index,
                    metrics_json,
                    payload_json,
                    float(seconds),
                    time.time(),
                ),
            )
            if cur.rowcount == 0:
                return False
            db.execute(
                "DELETE FROM failures WHERE run_id=? AND experiment=? AND item=? AND setting=?",
                key.ident(),
            )
            db.executemany(
                "INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?)",
                [(*key.ident(), name, data) for name, data in encoded.items()],
            )
        return True

    def put_failure(
        self,
        key: ResultKey,
        error_type: str,
        message: str,
        traceback: str = "",
        seconds: float = 0.0,
    ) -> bool:
        """Commit a failure of `key`; a repeated failure updates the record and counts attempts.

        Returns False when the key already has a result (a success is never overwritten).
        """
        with self._transaction() as db:
            done = db.execute(
                "SELECT 1 FROM results WHERE run_id=? AND experiment=? AND item=? AND setting=?",
                key.ident(),
            ).fetchone()
            if done:
                return False
            db.execute(
                "INSERT INTO failures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) "
                "ON CONFLICT DO UPDATE SET error_type=excluded.error_type, "
                "message=excluded.message, traceback=excluded.traceback, "
                "attempts=failures.attempts + 1, seconds=excluded.seconds, "
                "created=excluded.created",
                (
                    *key.ident(),
                    key.item_index,
                    key.setting_index,
                    error_type,
                    message,
                    traceback,
                    float(seconds),
                    time.time(),
                ),
            )
        return True

    # -- reading ----------------------------------------------------------------------------

    def done_keys(self, run_id: str, include_failed: bool = True) -> set[tuple[str, str]]:
        """(item, setting) pairs of `run_id` that need no more work.

        A sharded rank adds the keys of the merged file, so a rank restarted after a merge (or
        with another world size) does not redo work another rank already finished.
        """
        tables = ["results", "failures"] if include_failed else ["results"]
        keys: set[tuple[str, str]] = set()
        for table in tables:
            cur = self._conn.execute(f"SELECT item, setting FROM {table} WHERE run_id=?", (run_id,))
            keys.update(cur.fetchall())
        if self.prior_path is not None and self.prior_path.is_file():
            keys |= _prior_keys(self.prior_path, run_id, tables)
        return keys

    def rows(self, run_id: str | None = None, experiment: str | None = None) -> list[Row]:
        """Stored results in a stable order: experiment, run, item order, setting order."""
        import json

        where, args = _filter(run_id, experiment)
        blob_names: dict[tuple[str, str, str, str], list[str]] = {}
        for r in self._conn.execute(
            f"SELECT run_id, experiment, item, setting, name FROM blobs {where} ORDER BY name",
            args,
        ):
            blob_names.setdefault(tuple(r[:4]), []).append(r[4])
        cur = self._conn.execute(
            f"SELECT * FROM results {where} "
            "ORDER BY experiment, run_id, item_index, setting_index, item, setting",
            args,
        )
        return [
            Row(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                json.loads(r[6]),
                json.loads(r[7]),
                tuple(blob_names.get(tuple(r[:4]), ())),
                r[8],
                r[9],
            )
            for r in cur.fetchall()
        ]

    def failures(self, run_id: str | None = None, experiment: str | None = None) -> list[Failure]:
        where, args = _filter(run_id, experiment)
        cur = self._conn.execute(
            f"SELECT * FROM failures {where} "
            "ORDER BY experiment, run_id, item_index, setting_index, item, setting",
            args,
        )
        return [Failure(*r) for r in cur.fetchall()]

    def blob(self, key: ResultKey, name: str) -> np.ndarray:
        """The array stored as `name` with the result of `key`."""
        row = self._conn.execute(
            "SELECT data FROM blobs WHERE run_id=? AND experiment=? AND item=? AND setting=? "
            "AND name=?",
            (*key.ident(), name),
        ).fetchone()
        if row is None:
            raise KeyError(f"no blob {name!r} for {key.ident()}")
        return _decode_array(row[0])

    def count(self) -> tuple[int, int]:
        """(results, failures) in this file."""
        r = self._conn.execute("SELECT count(*) FROM results").fetchone()[0]
        f = self._conn.execute("SELECT count(*) FROM failures").fetchone()[0]
        return int(r), int(f)

    # -- export -----------------------------------------------------------------------------

    def to_csv(self, path: str | Path, run_id: str | None = None) -> int:
        """Write results and failures as CSV (metrics as `metrics.NAME` columns); row count."""
        from vlmflow.store.export import write_csv

        return write_csv(self, Path(path), run_id)

    def to_parquet(self, path: str | Path, run_id: str | None = None) -> int:
        """Write the same table as `to_csv` as Parquet (needs pyarrow); row count."""
        from vlmflow.store.export import write_parquet

        return write_parquet(self, Path(path), run_id)

    # -- shards -----------------------------------------------------------------------------

    def shard_info(self) -> ShardInfo | None:
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if "world_size" not in meta:
            return None
        return ShardInfo(int(meta["rank"]), int(meta["world_size"]), meta["finished"] == "1")

    def _start_shard(self, rank: int, world_size: int) -> None:
        old = self.shard_info()
        if old is not None and old.world_size != world_size:
            warnings.warn(
                f"{self.path} was written with world size {old.world_size}, now {world_size}: "
                "items may move between ranks and be computed twice (merge first to avoid it)",
                stacklevel=3,
            )
        self._set_meta(rank=str(rank), world_size=str(world_size), finished="0")

    def mark_finished(self) -> None:
        """Record that this rank attempted every work item of its shard (merge checks it)."""
        self._set_meta(finished="1")

    def _set_meta(self, **values: str) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT DO UPDATE SET value=excluded.value",
                list(values.items()),
            )


class CorruptStoreError(VlmflowError):
    """A store file failed `check_integrity` when opened; the message says how to recover."""


class StoreCorrupt(Exception):
    """`check_integrity` found damage (the message says what)."""


def _connect(path: Path, exclusive: bool, timeout: float, check: bool) -> sqlite3.Connection:
    """Open `path` in WAL mode with the schema in place; with `check`, refuse a damaged file
    (StoreCorrupt) before anything is written to it."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    if exclusive:
        # Before WAL is switched on: the WAL index then lives in process memory (no -shm file).
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL fsyncs the WAL on every commit: a result survives a power cut, not only a SIGKILL.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        conn.close()
        raise VlmflowError(
            f"{path} was written by a newer vlmflow (schema {version}): upgrade vlmflow"
        )
    if check:
        try:
            problem = check_integrity(conn)
        except BaseException:
            conn.close()
            raise
        if problem is not None:
            conn.close()
            raise StoreCorrupt(problem)
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


def check_integrity(conn: sqlite3.Connection) -> str | None:
    """What is wrong with an open store, or None: SQLite's `quick_check` (every page and
    record well formed, O(size of the file)) plus decoding every result's and failure's JSON.

    Why on every open: a store with garbled pages otherwise resumes with rc 0 and fails later
    in `report`, or silently counts damaged rows as done.
    """
    try:
        found = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
        if found != ["ok"]:
            # one line: SQLite puts line breaks inside its findings
            return "; ".join(" ".join(str(f).split()) for f in found)[:200]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table, columns in (("results", "metrics, payload"), ("failures", "message")):
            if table not in tables:
                continue
            for row in conn.execute(f"SELECT {columns} FROM {table}"):
                _decode_row(table, row)
    except (sqlite3.DatabaseError, ValueError) as err:
        if isinstance(err, sqlite3.OperationalError) and _is_busy(err):
            raise
        return str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    return None


def _decode_row(table: str, row: tuple[Any, ...]) -> None:
    """Raise ValueError when a stored row's text columns do not decode."""
    import json

    if table == "results":
        for text in row:
            if not isinstance(text, str) or not isinstance(json.loads(text), dict):
                raise ValueError(f"a stored {table} row does not decode")
    elif not isinstance(row[0], str):
        raise ValueError(f"a stored {table} row does not decode")


def _is_busy(err: sqlite3.OperationalError) -> bool:
    return "locked" in str(err) or "busy" in str(err)


def _locked_or(err: sqlite3.OperationalError, path: Path) -> Exception:
    if _is_busy(err):
        return VlmflowError(
            f"{path} is in use by another process: wait for it to finish or choose another --out"
        )
    return VlmflowError(f"cannot open {path} ({err}): check the folder exists and is writable")


def _prior_keys(path: Path, run_id: str, tables: list[str]) -> set[tuple[str, str]]:
    """Keys of the merged file, read without locks (nobody writes it while ranks run)."""
    keys: set[tuple[str, str]] = set()
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            for table in tables:
                cur = conn.execute(f"SELECT item, setting FROM {table} WHERE run_id=?", (run_id,))
                keys.update(cur.fetchall())
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        # Only costs recomputation: merging drops the duplicates again.
        warnings.warn(f"ignoring {path} while resuming ({err})", stacklevel=3)
    return keys


def _filter(run_id: str | None, experiment: str | None) -> tuple[str, tuple[str, ...]]:
    clauses, args = [], []
    if run_id is not None:
        clauses.append("run_id=?")
        args.append(run_id)
    if experiment is not None:
        clauses.append("experiment=?")
        args.append(experiment)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def _encode_array(arr: Any) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def _decode_array(data: bytes) -> np.ndarray:
    import numpy as np

    return np.load(io.BytesIO(data), allow_pickle=False)
