"""The results store: keys, failures, durability, merge and export."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from vlmflow.errors import VlmflowError
from vlmflow.store import ResultKey, ResultStore, RunSpec, ShardInfo, merge, store_path

SPEC = RunSpec("toy", "tiny-model", "scenes:80", {"layers": "from:4", "k": 0.05})


def key(run_id: str, item: str, setting: str = "s", index: int = 0) -> ResultKey:
    return ResultKey(run_id, "toy", item, setting, index, 0)


def test_run_id_is_canonical_and_config_sensitive() -> None:
    same = RunSpec("toy", "tiny-model", "scenes:80", {"k": 0.05, "layers": "from:4"})
    assert SPEC.run_id == same.run_id and len(SPEC.run_id) == 16
    assert RunSpec("toy", "tiny-model", "scenes:80", {"k": 0.02, "layers": "from:4"}).run_id != (
        SPEC.run_id
    )
    assert RunSpec("toy", "other", "scenes:80", SPEC.config).run_id != SPEC.run_id


def test_result_roundtrip_with_blob(tmp_path: Path) -> None:
    attention = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4).astype(np.float16)
    with ResultStore.open(tmp_path) as store:
        run = store.add_run(SPEC, version="9.9")
        assert store.put_result(
            key(run, "img-1"),
            metrics={"f1": np.float32(0.5), "n": np.int64(3)},
            payload={"text": "a cat", "ids": np.arange(3)},
            blobs={"attention": attention},
        )
        [row] = store.rows(run)
        assert row.metrics == {"f1": 0.5, "n": 3} and row.payload["ids"] == [0, 1, 2]
        assert row.blobs == ("attention",)
        loaded = store.blob(key(run, "img-1"), "attention")
        assert loaded.dtype == np.float16 and np.array_equal(loaded, attention)
        [info] = store.runs()
        assert info.config == {"k": 0.05, "layers": "from:4"} and info.version == "9.9"
    with sqlite3.connect(tmp_path / "results.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_duplicate_can_never_be_inserted(tmp_path: Path) -> None:
    with ResultStore.open(tmp_path) as store:
        run = store.add_run(SPEC)
        assert store.put_result(key(run, "x"), {"v": 1})
        assert not store.put_result(key(run, "x"), {"v": 2})  # first result kept
        assert [r.metrics["v"] for r in store.rows()] == [1]
        with pytest.raises(sqlite3.IntegrityError):
            store._conn.execute(
                "INSERT INTO results VALUES (?, 'toy', 'x', 's', 0, 0, '{}', '{}', 0, 0)", (run,)
            )


def test_failure_then_success_replaces_it(tmp_path: Path) -> None:
    with ResultStore.open(tmp_path) as store:
        run = store.add_run(SPEC)
        assert store.put_failure(key(run, "x"), "OSError", "bad file", "Traceback ...")
        assert store.put_failure(key(run, "x"), "OSError", "bad file again")
        [failure] = store.failures(run)
        assert failure.attempts == 2 and failure.message == "bad file again"
        assert store.done_keys(run) == {("x", "s")}
        assert store.done_keys(run, include_failed=False) == set()
        assert store.put_result(key(run, "x"), {"v": 1})
        assert store.failures(run) == [] and len(store.rows(run)) == 1
        assert not store.put_failure(key(run, "x"), "OSError", "late")  # success stays
        assert store.failures(run) == []


def test_rows_follow_item_order_and_filter_by_experiment(tmp_path: Path) -> None:
    with ResultStore.open(tmp_path) as store:
        run = store.add_run(SPEC)
        other = store.add_run(RunSpec("other", "m", "s"))
        for index, item in [(2, "b"), (0, "z"), (1, "a")]:
            store.put_result(key(run, item, index=index))
        store.put_result(ResultKey(other, "other", "q", "s"))
        assert [r.item for r in store.rows(run)] == ["z", "a", "b"]
        assert [r.item for r in store.rows(experiment="other")] == ["q"]


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_commit_survives_sigkill(tmp_path: Path, world_size: int) -> None:
    """The row is committed, the process killed before any checkpoint: the row is there."""
    path = store_path(tmp_path, 0, world_size)
    code = textwrap.dedent(
        f"""
        import sys, time
        from vlmflow.store import ResultKey, ResultStore, RunSpec
        store = ResultStore.open({str(tmp_path)!r}, 0, {world_size})
        run = store.add_run(RunSpec("toy", "m", "s"))
        store.put_result(ResultKey(run, "toy", "kept", "s"), {{"v": 7}})
        print("committed", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "committed"
        assert Path(f"{path}-wal").stat().st_size > 0  # still in the WAL, not checkpointed
    finally:
        proc.kill()
        proc.wait(timeout=10)
    with ResultStore(path, exclusive=world_size > 1, create=False) as store:
        [row] = store.rows()
        assert (row.item, row.metrics) == ("kept", {"v": 7})


def test_not_a_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "results.sqlite3").write_bytes(b"this is not a database file at all" * 40)
    with pytest.raises(VlmflowError, match="not a vlmflow results store"):
        ResultStore.open(tmp_path)
    with pytest.raises(VlmflowError, match="no results store"):
        ResultStore(tmp_path / "missing.sqlite3", create=False)


def test_merge_keeps_results_over_failures_and_is_idempotent(tmp_path: Path) -> None:
    for rank in range(2):
        with ResultStore.open(tmp_path, rank, 2) as store:
            run = store.add_run(SPEC)
            store.put_result(key(run, f"r{rank}", index=rank), {"rank": rank})
            store.put_result(key(run, "both", index=5), {"v": 1})  # same key on both ranks
            if rank == 0:
                store.put_failure(key(run, "flaky", index=9), "RuntimeError", "rank 0 failed")
                store.put_failure(key(run, "bad", index=8), "RuntimeError", "always fails")
            else:
                store.put_result(key(run, "flaky", index=9), {"v": 2}, blobs={"m": np.ones(2)})
            store.mark_finished()
    report = merge(tmp_path)
    assert report.results_added == 4 and report.failures_added == 1
    with ResultStore.open(tmp_path) as main:
        assert [r.item for r in main.rows()] == ["r0", "r1", "both", "flaky"]
        assert [f.item for f in main.failures()] == ["bad"]
        assert main.blob(key(SPEC.run_id, "flaky"), "m").tolist() == [1.0, 1.0]
    assert merge(tmp_path).results_added == 0


def test_merge_refuses_unfinished_or_missing_ranks(tmp_path: Path) -> None:
    with ResultStore.open(tmp_path, 0, 3) as store:
        store.add_run(SPEC)
        store.mark_finished()
    with pytest.raises(VlmflowError, match=r"ranks \[1, 2\] of 3 left no store"):
        merge(tmp_path)
    with ResultStore.open(tmp_path, 1, 3):
        pass  # started, never finished
    with pytest.raises(VlmflowError, match=r"rank 1 has not finished.*--partial"):
        merge(tmp_path)
    assert merge(tmp_path, partial=True).ranks == (0, 1)
    with pytest.raises(VlmflowError, match="no per-rank stores"):
        merge(tmp_path / "empty")


def _filled(tmp_path: Path) -> ResultStore:
    store = ResultStore.open(tmp_path)
    run = store.add_run(SPEC)
    store.put_result(key(run, "a", "x", 0), {"f1": 0.25, "n": 2}, {"text": 'a, "quoted"\nline'})
    store.put_failure(key(run, "b", "x", 1), "OSError", "cannot read b.png")
    store.put_result(key(run, "c", "x", 2), {"f1": 1.0, "extra": [1, 2]}, blobs={"m": np.ones(1)})
    return store


def test_csv_export_round_trip(tmp_path: Path) -> None:
    with _filled(tmp_path) as store:
        assert store.to_csv(tmp_path / "t.csv") == 3
    with (tmp_path / "t.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["item"], r["status"]) for r in rows] == [("a", "ok"), ("b", "failed"), ("c", "ok")]
    assert json.loads(rows[0]["payload"]) == {"text": 'a, "quoted"\nline'}
    assert float(rows[0]["metrics.f1"]) == 0.25 and rows[0]["metrics.n"] == "2"
    assert rows[1]["error_message"] == "cannot read b.png" and rows[1]["metrics.f1"] == ""
    assert json.loads(rows[2]["metrics.extra"]) == [1, 2] and rows[2]["blobs"] == "m"
    assert rows[0]["model"] == "tiny-model" and rows[0]["run_id"] == SPEC.run_id


def test_parquet_export(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    with _filled(tmp_path) as store:
        assert store.to_parquet(tmp_path / "t.parquet") == 3
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.column("metrics.f1").to_pylist() == [0.25, None, 1.0]
    assert str(table.schema.field("metrics.n").type) == "int64"
    assert table.column("status").to_pylist() == ["ok", "failed", "ok"]


def test_parquet_without_pyarrow_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with _filled(tmp_path) as store, pytest.raises(VlmflowError, match="pip install pyarrow"):
        store.to_parquet(tmp_path / "t.parquet")


def test_changing_world_size_warns(tmp_path: Path) -> None:
    with ResultStore.open(tmp_path, 1, 2) as store:
        assert store.shard_info() == ShardInfo(1, 2, False)
    with pytest.warns(UserWarning, match="world size 2, now 3"), ResultStore.open(tmp_path, 1, 3):
        pass
