"""Damaged stores are refused on open and repaired row by row; one writer per store file;
a checkpoint folder's contents are part of its run identity."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vlmflow.errors import VlmflowError
from vlmflow.store import ResultKey, ResultStore, RunSpec
from vlmflow.store.lock import run_lock
from vlmflow.store.merge import merge
from vlmflow.store.repair import repair
from vlmflow.store.runs import checkpoint_digest

SPEC = RunSpec("toy", "tiny-model", "scenes:80", {"k": 0.05})
PAGE = 4096
ROWS = 300


def _fill(folder: Path, rows: int = ROWS) -> dict[str, tuple[object, ...]]:
    """A store with `rows` results (a unique marker in each payload) and one failure."""
    with ResultStore.open(folder) as store:
        run = store.add_run(SPEC)
        for i in range(rows):
            key = ResultKey(run, "toy", f"item-{i:04d}", "s", i, 0)
            store.put_result(key, {"v": i}, {"marker": f"payload-{i:04d}", "pad": "x" * 200})
        store.put_failure(ResultKey(run, "toy", "broken", "s", rows, 0), "OSError", "bad file")
        return {r.item: r.content() for r in store.rows()}


def _damage_page_of(path: Path, marker: bytes) -> None:
    """Overwrite the whole page holding `marker` with 0xFF bytes (an invalid b-tree page)."""
    data = bytearray(path.read_bytes())
    page = data.index(marker) // PAGE
    assert page > 0  # never the header page
    data[page * PAGE : (page + 1) * PAGE] = b"\xff" * PAGE
    path.write_bytes(bytes(data))


def test_intact_store_opens_and_repair_leaves_it(tmp_path: Path) -> None:
    before = _fill(tmp_path)
    with ResultStore.open(tmp_path) as store:
        assert len(store.rows()) == ROWS
    report = repair(tmp_path / "results.sqlite3")
    assert report.damaged is None and "intact" in report.summary()
    with ResultStore.open(tmp_path) as store:
        assert {r.item: r.content() for r in store.rows()} == before


def test_garbled_page_is_refused_then_repaired_keeping_every_readable_row(tmp_path: Path) -> None:
    before = _fill(tmp_path)
    path = tmp_path / "results.sqlite3"
    _damage_page_of(path, b"payload-0150")
    with pytest.raises(VlmflowError) as err:
        ResultStore.open(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "corrupt" in message and "--repair" in message

    report = repair(path)
    assert report.damaged is not None and report.damaged.is_file()
    with ResultStore.open(tmp_path) as store:  # opens cleanly again
        kept = {r.item: r.content() for r in store.rows()}
        assert [f.item for f in store.failures()] == ["broken"]
        assert len(store.runs()) == 1
    assert "item-0150" not in kept  # its page is gone
    # only the rows of the damaged page are lost (a 4 KiB page holds at most ~16 of them)
    assert ROWS - 16 <= len(kept) < ROWS
    assert all(kept[item] == before[item] for item in kept)  # kept rows are exact


def _page_of_root(path: Path, table: str) -> bytes:
    """A marker unique to the first page of `table`'s b-tree (its root)."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        [(root,)] = conn.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (table,))
    finally:
        conn.close()
    page = path.read_bytes()[(root - 1) * PAGE : root * PAGE]
    start = page.index(b"payload-")
    return page[start : start + len("payload-0000")]


@pytest.mark.parametrize("where", ["two leaf pages", "the root page and a leaf page"])
def test_repair_keeps_every_row_outside_several_damaged_pages(tmp_path: Path, where: str) -> None:
    before = _fill(tmp_path)
    path = tmp_path / "results.sqlite3"
    first = _page_of_root(path, "results") if where.startswith("the root") else b"payload-0060"
    data = path.read_bytes()
    damaged_pages = {data.index(first) // PAGE, data.index(b"payload-0230") // PAGE}
    assert len(damaged_pages) == 2
    on_page = {}  # item -> the page holding its row (a row is ~300 bytes: never split)
    for item in before:
        marker = item.replace("item", "payload").encode()
        assert data.count(marker) == 1
        on_page[item] = data.index(marker) // PAGE
    lost = {item for item, page in on_page.items() if page in damaged_pages}
    assert 0 < len(lost) < ROWS // 4
    _damage_page_of(path, first)
    _damage_page_of(path, b"payload-0230")

    report = repair(path)
    assert report.unreadable == 2 and report.skipped == 0, report.summary()
    with ResultStore.open(tmp_path) as store:
        kept = {r.item: r.content() for r in store.rows()}
        assert [f.item for f in store.failures()] == ["broken"]
    assert set(kept) == set(before) - lost  # every row outside the two pages, and only those
    assert all(kept[item] == before[item] for item in kept)


def test_repair_reads_rows_still_in_the_wal_between_damaged_pages(tmp_path: Path) -> None:
    import shutil

    _fill(tmp_path / "src")
    copy = tmp_path / "copy"
    copy.mkdir()
    with ResultStore.open(tmp_path / "src") as store:  # five more rows, committed to the WAL
        run = store.runs()[0].run_id
        for i in range(5):
            key = ResultKey(run, "toy", f"item-0150-{i}", "s", 1000 + i, 0)
            store.put_result(key, {"v": i}, {"marker": f"wal-{i}"})
        for name in ("results.sqlite3", "results.sqlite3-wal"):  # as a killed run leaves them
            shutil.copyfile(tmp_path / "src" / name, copy / name)
    path = copy / "results.sqlite3"
    assert b"wal-0" not in path.read_bytes() and (copy / "results.sqlite3-wal").stat().st_size
    _damage_page_of(path, b"payload-0060")
    _damage_page_of(path, b"payload-0230")
    damaged_bytes = path.read_bytes()

    report = repair(path)
    assert report.damaged is not None and report.damaged.read_bytes() == damaged_bytes
    with ResultStore.open(copy) as store:
        kept = {r.item for r in store.rows()}
    assert {f"item-0150-{i}" for i in range(5)} <= kept  # between the damaged pages, in the WAL
    assert ROWS + 5 - 32 <= len(kept) < ROWS + 5


def test_page_walk_reads_an_intact_store_exactly_as_sqlite_does(tmp_path: Path) -> None:
    """Every table, overflow pages included (blobs far larger than a page), equals SQL's rows."""
    import sqlite3

    import numpy as np

    from vlmflow.store.pages import salvage
    from vlmflow.store.repair import _shapes

    with ResultStore.open(tmp_path) as store:
        run = store.add_run(SPEC)
        for i in range(40):
            key = ResultKey(run, "toy", f"item-{i:04d}", "s", i, 0)
            blobs = {"map": np.arange(i * 300, dtype=np.float32), "one": np.ones(3)}
            store.put_result(key, {"v": i / 3}, {"text": "é" * i}, blobs=blobs)
        store.put_failure(ResultKey(run, "toy", "broken", "s", 99, 0), "OSError", "bad file")
        store.mark_finished()
    path = tmp_path / "results.sqlite3"
    conn = sqlite3.connect(path)
    try:
        shapes = _shapes(conn)
        found = salvage(path.read_bytes(), shapes)
        assert found is not None and (found.damaged_pages, found.damaged_cells) == (0, 0)
        for table in shapes:
            expected = sorted(conn.execute(f"SELECT * FROM {table}"), key=repr)
            assert sorted(found.rows[table], key=repr) == expected, table
            assert expected  # every table holds rows, so each comparison means something
    finally:
        conn.close()


def test_flipped_bytes_in_a_payload_are_detected_and_that_row_dropped(tmp_path: Path) -> None:
    before = _fill(tmp_path, rows=20)
    path = tmp_path / "results.sqlite3"
    data = bytearray(path.read_bytes())
    at = data.index(b'"marker":"payload-0007"')
    data[at] = ord("#")  # the JSON text no longer decodes; SQLite's page checks still pass
    path.write_bytes(bytes(data))
    with pytest.raises(VlmflowError, match="--repair"):
        ResultStore.open(tmp_path)
    report = repair(path)
    assert report.kept["results"] == 19 and report.skipped == 1
    with ResultStore.open(tmp_path) as store:
        kept = {r.item: r.content() for r in store.rows()}
    assert set(before) - set(kept) == {"item-0007"}


@pytest.mark.parametrize("partial", [False, True])
def test_merge_refuses_a_corrupt_rank_file_and_leaves_the_main_store(
    tmp_path: Path, partial: bool
) -> None:
    _fill(tmp_path, rows=5)  # the main store already holds results of an earlier run
    main = tmp_path / "results.sqlite3"
    before = main.read_bytes()
    for rank in range(2):
        with ResultStore.open(tmp_path, rank, 2) as store:
            run = store.add_run(SPEC)
            for i in range(rank, 120, 2):
                key = ResultKey(run, "toy", f"ranked-{i:04d}", "s", i, 0)
                store.put_result(key, {"v": i}, {"marker": f"rank-{i:04d}", "pad": "x" * 200})
            store.mark_finished()
    rank1 = tmp_path / "results.rank1.sqlite3"
    _damage_page_of(rank1, b"rank-0051")
    with pytest.raises(VlmflowError) as err:
        merge(tmp_path, partial=partial)
    message = str(err.value)
    assert "\n" not in message and str(rank1) in message and "corrupt" in message
    assert "--repair" in message and "rank 1 again" in message
    assert main.read_bytes() == before  # not a row of rank 0 went in either

    kept = repair(rank1).kept["results"]  # the recovery the message names
    assert kept < 60
    report = merge(tmp_path, partial=partial)
    assert report.ranks == (0, 1) and report.results_added == 60 + kept


def test_run_repair_from_the_command_line(tmp_path: Path) -> None:
    from vlmflow.cli import main

    _fill(tmp_path)
    _damage_page_of(tmp_path / "results.sqlite3", b"payload-0100")
    assert main(["run", "--repair", "--out", str(tmp_path)]) == 0
    assert list(tmp_path.glob("results.sqlite3.damaged-*"))
    with ResultStore.open(tmp_path) as store:
        assert ROWS - 16 <= len(store.rows()) < ROWS


def test_report_on_a_corrupt_store_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vlmflow.cli import main

    _fill(tmp_path)
    _damage_page_of(tmp_path / "results.sqlite3", b"payload-0200")
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--repair" in err and "Traceback" not in err


def test_the_lock_without_wait_refuses_a_second_holder_and_frees_on_exit(tmp_path: Path) -> None:
    store = tmp_path / "results.sqlite3"
    code = (
        "import sys, time; from pathlib import Path; from vlmflow.store.lock import run_lock\n"
        "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(store)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(VlmflowError, match=f"pid {holder.pid}"), run_lock(store, wait=False):
            pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(store, wait=False):  # the kernel released it with the process
        pass


@contextlib.contextmanager
def _held(out: Path) -> Iterator[None]:
    """Hold `out`'s store lock from this process, as a running `vlmflow run` would."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.sqlite3.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def _run_process(tiny: Path, tmp_path: Path, out: Path) -> subprocess.Popen[str]:
    config = tmp_path / "short.json"
    config.write_text('{"fractions": {"max_new_tokens": 2}}')
    argv = [sys.executable, "-m", "vlmflow", "run", "fractions", "--images", "scenes:2"]
    argv += ["--model", str(tiny), "--out", str(out), "--config", str(config), "--no-progress"]

    def default_sigint() -> None:  # a background shell may start children with SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )


def _await_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    return proc.stderr.readline()


def test_two_runs_into_one_out_wait_and_compute_each_item_once(tiny_path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    with _held(out):  # both runs start while the folder is busy, so both must wait
        runs = [_run_process(tiny_path("llava"), tmp_path, out) for _ in range(2)]
        waiting = [_await_line(proc) for proc in runs]
    assert all(f"waiting for pid {os.getpid()}" in line for line in waiting), waiting
    ends = [proc.communicate(timeout=300) for proc in runs]
    assert [proc.returncode for proc in runs] == [0, 0], ends
    # once released, one run computes both items and the other, waiting on it, finds them done
    counts = sorted(line for stdout, _ in ends for line in stdout.splitlines() if " done" in line)
    assert counts[0].startswith("0 done, 0 failed, 2 already done"), counts
    assert counts[1].startswith("2 done, 0 failed, 0 already done"), counts
    assert all("waiting" not in stderr for _, stderr in ends)  # said once, before the wait
    with ResultStore.open(out) as store:
        assert store.count() == (2, 0)
        items = [row.item for row in store.rows()]
    assert len(items) == len(set(items)) == 2


def test_ctrl_c_while_waiting_ends_in_one_line_and_writes_nothing(
    tiny_path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    with _held(out):
        proc = _run_process(tiny_path("llava"), tmp_path, out)
        assert "waiting for pid" in _await_line(proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["vlmflow run: interrupted"]
    assert sorted(p.name for p in out.iterdir()) == ["results.sqlite3.lock"]  # no store made


def test_checkpoint_digest_changes_when_weights_are_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llava"}')
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    weights = folder / "model.safetensors"
    weights.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    first = checkpoint_digest(folder)
    assert checkpoint_digest(folder) == first  # stable while nothing changes
    (folder / "notes.txt").write_text("not part of the model")
    assert checkpoint_digest(folder) == first
    stat = weights.stat()
    weights.write_bytes(len(header).to_bytes(8, "little") + header + b"\1" * 8)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert checkpoint_digest(folder) != first


def test_replaced_weights_are_a_new_run(tiny_path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from vlmflow.experiments.command import _model_key

    folder = tmp_path / "model"
    shutil.copytree(tiny_path("llava"), folder)
    key = _model_key(str(folder))
    assert key.startswith(str(folder.resolve()) + "@")
    weights = next(folder.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # new weights, same size and header
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert _model_key(str(folder)) != key
    assert (
        RunSpec("fractions", key, "scenes:2").run_id
        != RunSpec("fractions", _model_key(str(folder)), "scenes:2").run_id
    )


def test_rerun_after_replacing_weights_is_not_already_done(
    tiny_path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from vlmflow.cli import main

    folder = tmp_path / "model"
    shutil.copytree(tiny_path("llava"), folder)
    config = tmp_path / "short.json"
    config.write_text('{"fractions": {"max_new_tokens": 2}}')
    argv = ["run", "fractions", "--images", "scenes:1", "--model", str(folder), "--no-progress"]
    argv += ["--out", str(tmp_path / "out"), "--config", str(config)]
    assert main(argv) == 0 and "1 done, 0 failed, 0 already done" in capsys.readouterr().out
    assert main(argv) == 0 and "0 done, 0 failed, 1 already done" in capsys.readouterr().out
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # rewritten: a new modification time
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert main(argv) == 0 and "1 done, 0 failed, 0 already done" in capsys.readouterr().out


def test_export_replaces_an_existing_file_only_with_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vlmflow.cli import main

    table = tmp_path / "table.csv"
    table.write_text("user's data\n")
    argv = ["run", "check", "--images", "scenes:1", "--out", str(tmp_path / "out")]
    argv += ["--no-progress", "--export", str(table)]
    assert main(argv) == 1 and "--force" in capsys.readouterr().err
    assert table.read_text() == "user's data\n"
    assert not (tmp_path / "out").exists()  # refused before any work
    assert main([*argv, "--force"]) == 0
    import csv

    from vlmflow.store.export import BASE_COLUMNS

    with table.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[: len(BASE_COLUMNS)] == list(BASE_COLUMNS)
    assert [r["experiment"] for r in rows] == ["check"]
