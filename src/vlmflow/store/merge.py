"""Merge the per-rank stores of a sharded run into the folder's main store.

The merge is idempotent (keys already present are kept, so merging twice or merging overlapping
ranks adds nothing) and follows the same rules as a single store: a result replaces a failure of
the same key, and a failure never replaces a result. The merged rows therefore equal those of a
single-process run over the same work items.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from vlmflow.errors import VlmflowError
from vlmflow.store.results import MAIN_FILE, CorruptStoreError, ResultStore, ShardInfo

_RANK_FILE = re.compile(r"results\.rank(\d+)\.sqlite3$")
_KEY = "run_id, experiment, item, setting"
# A rank file still locked after this long belongs to a running rank: fail fast, say so.
RANK_BUSY_S = 1.0


@dataclass(frozen=True)
class MergeReport:
    """What a merge did: the rank files read and how many rows they added."""

    path: Path
    ranks: tuple[int, ...]
    results_added: int
    failures_added: int


def rank_files(out_dir: str | Path) -> dict[int, Path]:
    """rank -> per-rank store file in `out_dir`."""
    found = {}
    for path in Path(out_dir).glob("results.rank*.sqlite3"):
        match = _RANK_FILE.search(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def merge(out_dir: str | Path, partial: bool = False) -> MergeReport:
    """Fold every `results.rank{R}.sqlite3` of `out_dir` into `results.sqlite3`.

    Unless `partial`, every rank of the recorded world size must exist and have finished its
    shard, so a merge never silently drops a rank that is still running or was lost. Every rank
    file first passes the check a store gets when opened (`check_integrity`); a damaged one
    raises VlmflowError naming it and how to recover, before anything is merged.
    """
    out = Path(out_dir)
    files = rank_files(out)
    if not files:
        raise VlmflowError(f"no per-rank stores (results.rank*.sqlite3) in {out}: check --out")
    infos = _checked(files)
    if not partial:
        _check_complete(files, infos)
    # Exclusive, so attached rank files are read without a shared-memory WAL index.
    with ResultStore(out / MAIN_FILE, exclusive=True, busy_timeout_s=RANK_BUSY_S) as main:
        before = main.count()
        db = main._conn
        for path in files.values():
            try:
                db.execute("ATTACH DATABASE ? AS src", (str(path),))
                try:
                    _merge_attached(main)
                finally:
                    db.execute("DETACH DATABASE src")
            except sqlite3.OperationalError as err:
                raise VlmflowError(
                    f"cannot read {path} ({err}): is that rank still running?"
                ) from None
        after = main.count()
    return MergeReport(
        out / MAIN_FILE, tuple(files), after[0] - before[0], max(0, after[1] - before[1])
    )


def _merge_attached(main: ResultStore) -> None:
    with main._transaction() as db:
        db.execute("INSERT INTO runs SELECT * FROM src.runs WHERE 1 ON CONFLICT DO NOTHING")
        db.execute("INSERT INTO results SELECT * FROM src.results WHERE 1 ON CONFLICT DO NOTHING")
        db.execute(f"DELETE FROM failures WHERE ({_KEY}) IN (SELECT {_KEY} FROM results)")
        db.execute("INSERT INTO blobs SELECT * FROM src.blobs WHERE 1 ON CONFLICT DO NOTHING")
        db.execute(
            f"INSERT INTO failures SELECT * FROM src.failures WHERE ({_KEY}) NOT IN "
            f"(SELECT {_KEY} FROM results) ON CONFLICT DO NOTHING"
        )


def _checked(files: dict[int, Path]) -> dict[int, ShardInfo | None]:
    """rank -> its shard record, each rank file first passing the check every store gets
    when opened (`check_integrity`): a damaged rank is refused before anything is merged, so
    the main store is left as it was."""
    infos = {}
    for rank, path in files.items():
        try:
            with ResultStore(
                path, exclusive=True, create=False, busy_timeout_s=RANK_BUSY_S
            ) as store:
                infos[rank] = store.shard_info()
        except CorruptStoreError as err:
            raise VlmflowError(
                f"cannot merge rank {rank}, nothing merged: {err}; or run rank {rank} again"
            ) from None
        except VlmflowError as err:
            raise VlmflowError(f"cannot read rank {rank}: {err}") from None
    return infos


def _check_complete(files: dict[int, Path], infos: dict[int, ShardInfo | None]) -> None:
    world_sizes = set()
    for rank, path in files.items():
        info = infos[rank]
        if info is None or not info.finished:
            raise VlmflowError(
                f"rank {rank} has not finished ({path}): run it to completion, "
                "or merge what there is with --partial"
            )
        world_sizes.add(info.world_size)
    if len(world_sizes) > 1:
        return  # re-sharded runs: each file finished its own shard; keys are deduplicated
    world_size = world_sizes.pop()
    missing = sorted(set(range(world_size)) - set(files))
    if missing:
        raise VlmflowError(
            f"ranks {missing} of {world_size} left no store: run them, or merge with --partial"
        )
