"""A SQLite store of judge answers, so a sweep never pays twice for the same comparison.

Keyed by (backend, model, prompt version, texts): a revised prompt or another judge model never
reuses old answers. Each answer is committed the moment it is computed (WAL journal), so a crash
or Ctrl-C mid-sweep loses nothing already judged. Failures are recorded in their own table with the
raw reply, for inspection, and are never served as answers: the next run asks again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    payload TEXT NOT NULL,
    answer TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    payload TEXT NOT NULL,
    error TEXT NOT NULL,
    raw TEXT NOT NULL,
    created REAL NOT NULL
);
"""


def default_path() -> Path:
    """`$VLMFLOW_CACHE/judge.sqlite3`, else `~/.cache/vlmflow/judge.sqlite3`."""
    root = os.environ.get("VLMFLOW_CACHE") or str(Path.home() / ".cache" / "vlmflow")
    return Path(root) / "judge.sqlite3"


def cache_key(kind: str, backend: str, model: str, prompt_version: str, payload: Any) -> str:
    blob = json.dumps([kind, backend, model, prompt_version, payload], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """Answers by key; safe to share between threads of one process and between processes."""

    def __init__(self, path: str | Path | None = None) -> None:
        from vlmflow.errors import VlmflowError
        from vlmflow.validate import output_file

        self.path = Path(path) if path is not None else default_path()
        output_file(self.path, "judge cache", missing_parent_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._db.commit()
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise VlmflowError(
                f"judge cache {self.path} is not a usable SQLite cache ({err}): give another "
                "--cache file, or --no-cache"
            ) from None

    def get(
        self, kind: str, backend: str, model: str, prompt_version: str, payload: Any
    ) -> dict[str, Any] | None:
        key = cache_key(kind, backend, model, prompt_version, payload)
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(
        self,
        kind: str,
        backend: str,
        model: str,
        prompt_version: str,
        payload: Any,
        answer: dict[str, Any],
    ) -> None:
        key = cache_key(kind, backend, model, prompt_version, payload)
        row = (
            key,
            kind,
            backend,
            model,
            prompt_version,
            json.dumps(payload, ensure_ascii=False),
            json.dumps(answer, ensure_ascii=False),
            time.time(),
        )
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

    def record_failure(
        self,
        kind: str,
        backend: str,
        model: str,
        prompt_version: str,
        payload: Any,
        error: str,
        raw: str = "",
    ) -> None:
        key = cache_key(kind, backend, model, prompt_version, payload)
        row = (
            key,
            kind,
            backend,
            model,
            prompt_version,
            json.dumps(payload, ensure_ascii=False),
            error,
            raw,
            time.time(),
        )
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO failures (key, kind, backend, model, prompt_version, payload, error,"
                " raw, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

    def failures(self) -> list[dict[str, Any]]:
        """Recorded failures, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, backend, model, payload, error, raw FROM failures ORDER BY id"
            ).fetchall()
        names = ("kind", "backend", "model", "payload", "error", "raw")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
