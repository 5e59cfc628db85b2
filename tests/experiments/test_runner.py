"""The runner: resume after SIGKILL, failures, skipping, signals, sharding, the `run` command."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import toy_experiment
from runs import snapshot
from toy_experiment import FAIL_MESSAGE, ToyExperiment

from vlmflow.errors import VlmflowError
from vlmflow.experiments import ImageSource, Runner, Shard, command, create
from vlmflow.store import ResultStore, merge

SCRIPT = Path(toy_experiment.__file__)
SOURCE = ImageSource.parse("scenes:1")  # the toy ignores it; any valid source will do


def toy(**options: Any) -> ToyExperiment:
    return ToyExperiment(options)


def run_toy(out: Path, rank: int = 0, world_size: int = 1, **options: Any) -> Any:
    with ResultStore.open(out, rank, world_size) as store:
        return Runner(
            [toy(**options)], SOURCE, store, shard=Shard(rank, world_size), progress=False
        ).run()


def count_results(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(path, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


def start_toy(out: Path, config: Path) -> subprocess.Popen[str]:
    args = ["run", "toy", "--images", "scenes:1", "--out", str(out), "--config", str(config)]
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=SCRIPT.parent,
    )


def write_config(path: Path, **options: Any) -> Path:
    path.write_text(json.dumps({"toy": options}))
    return path


def test_failure_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    summary = run_toy(tmp_path, count=20)
    assert (summary.done, summary.failed, summary.skipped) == (39, 1, 0)
    with ResultStore.open(tmp_path) as store:
        [failure] = store.failures()
        assert (failure.item, failure.setting, failure.error_type) == (
            "item-013",
            "b",
            "RuntimeError",
        )
        assert FAIL_MESSAGE in failure.message and "Traceback" in failure.traceback
        items = [r.item for r in store.rows()]
        assert "item-019" in items  # items after the failing one ran
        assert items.count("item-013") == 1  # its other setting succeeded


def test_rerun_skips_everything(tmp_path: Path) -> None:
    run_toy(tmp_path, count=10)
    before = snapshot(tmp_path / "results.sqlite3")
    ToyExperiment.calls = 0
    with ResultStore.open(tmp_path) as store:
        factory_calls = []
        runner = Runner(
            [toy(count=10)],
            SOURCE,
            store,
            handle_factory=lambda: factory_calls.append(1),
            progress=False,
        )
        summary = runner.run()
    assert (summary.done, summary.failed, summary.skipped) == (0, 0, 20)
    assert ToyExperiment.calls == 0 and factory_calls == []
    assert snapshot(tmp_path / "results.sqlite3") == before


def test_retry_failed_runs_only_failures(tmp_path: Path) -> None:
    run_toy(tmp_path, count=15)
    ToyExperiment.calls = 0
    with ResultStore.open(tmp_path) as store:
        runner = Runner([toy(count=15)], SOURCE, store, retry_failed=True, progress=False)
        summary = runner.run()
        [failure] = store.failures()
    assert ToyExperiment.calls == 1 and summary.failed == 1 and summary.skipped == 29
    assert failure.attempts == 2


def test_changed_config_is_a_new_run(tmp_path: Path) -> None:
    first = run_toy(tmp_path, count=3)
    second = run_toy(tmp_path, count=3, settings=["a"])
    assert first.run_ids["toy"] != second.run_ids["toy"]
    assert second.done == 3 and second.skipped == 0


def test_sigkill_at_a_random_moment_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    config = write_config(tmp_path / "toy.json", count=60, sleep_ms=8)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(
        [sys.executable, str(SCRIPT), "toy", "--images", "scenes:1", "--out", str(reference),
         "--config", str(config), "--no-progress"],
        check=True, capture_output=True, cwd=SCRIPT.parent, timeout=120,
    )  # fmt: skip

    threshold = rng.randint(3, 100)
    proc = start_toy(killed, config)
    deadline = time.monotonic() + 60
    while count_results(killed / "results.sqlite3") < threshold:
        assert proc.poll() is None, f"finished before the kill (seed {seed})"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(rng.random() * 0.02)  # land anywhere, including inside a commit
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    partial = count_results(killed / "results.sqlite3")
    assert proc.returncode == -signal.SIGKILL
    assert threshold <= partial < 119, f"seed {seed}"

    resumed = subprocess.run(
        [sys.executable, str(SCRIPT), "toy", "--images", "scenes:1", "--out", str(killed),
         "--config", str(config), "--no-progress"],
        check=True, capture_output=True, text=True, cwd=SCRIPT.parent, timeout=120,
    )  # fmt: skip
    assert "already done" in resumed.stdout
    rows, failures, blobs = snapshot(killed / "results.sqlite3")
    assert (rows, failures, blobs) == snapshot(reference / "results.sqlite3"), f"seed {seed}"
    assert len(rows) == 119 and len({r[:4] for r in rows}) == 119
    assert [f[1] for f in failures] == [1]


def test_sigterm_finishes_the_current_item_and_says_how_to_resume(tmp_path: Path) -> None:
    config = write_config(tmp_path / "toy.json", count=60, sleep_ms=20)
    proc = start_toy(tmp_path, config)
    deadline = time.monotonic() + 60
    while count_results(tmp_path / "results.sqlite3") < 3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "to resume, run again" in stderr
    done = count_results(tmp_path / "results.sqlite3")
    assert 3 <= done < 119
    summary = run_toy(tmp_path, count=60, sleep_ms=20)  # the same config: the same run
    assert summary.skipped == done + 1 or summary.skipped == done  # + the failure if reached
    assert count_results(tmp_path / "results.sqlite3") == 119


def test_shards_partition_the_items() -> None:
    owners = [[Shard(r, 3).owns(i) for r in range(3)] for i in range(10)]
    assert all(sum(o) == 1 for o in owners)
    assert [o.index(True) for o in owners] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(VlmflowError, match="rank 2 is outside world size 2"):
        Shard(2, 2)


def test_two_ranks_merged_equal_a_single_run(tmp_path: Path) -> None:
    run_toy(tmp_path / "single", count=25)
    sharded = tmp_path / "sharded"
    first = run_toy(sharded, 0, 2, count=25)
    with pytest.raises(VlmflowError, match=r"ranks \[1\] of 2 left no store"):
        merge(sharded)  # rank 1 has not run
    second = run_toy(sharded, 1, 2, count=25)
    assert first.done + first.failed == 26 and second.done + second.failed == 24
    report = merge(sharded)
    assert report.ranks == (0, 1) and report.results_added == 49
    assert snapshot(sharded / "results.sqlite3") == snapshot(tmp_path / "single/results.sqlite3")
    assert merge(sharded).results_added == 0  # idempotent
    # A rank restarted after the merge sees the merged keys and has nothing to do.
    assert run_toy(sharded, 1, 2, count=25).done == 0


def test_rank_files_are_locked_while_in_use(tmp_path: Path) -> None:
    with ResultStore.open(tmp_path, 0, 2) as store:
        store.mark_finished()
        assert not (tmp_path / "results.rank0.sqlite3-shm").exists()  # no shared memory index
        with pytest.raises(VlmflowError, match=r"in use|still running"):
            merge(tmp_path, partial=True)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


def test_check_command_records_a_corrupt_image_and_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        Image.new("RGB", (8 + i, 6), (10 * i, 20, 30)).save(images / name)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    argv = ["check", "--images", str(images), "--out", str(out), "--no-progress"]
    assert _cli([*argv, "--export", str(tmp_path / "t.csv")]) == 0
    assert "3 done, 1 failed" in capsys.readouterr().out
    with ResultStore.open(out) as store:
        [failure] = store.failures()
        assert failure.item == "broken.png" and "intact PNG" in failure.message
        assert [r.item for r in store.rows()] == ["a.png", "b.jpg", "sub/c.png"]
        assert store.rows()[1].metrics["width"] == 9
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 5
    assert _cli(argv) == 0
    assert "0 done, 0 failed, 4 already done" in capsys.readouterr().out


def test_command_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(VlmflowError, match="unknown experiment 'nope'"):
        _cli(["nope", "--out", str(tmp_path)])
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"chek": {}}))
    with pytest.raises(VlmflowError, match="section 'chek' is not an experiment"):
        _cli(["check", "--config", str(bad), "--out", str(tmp_path)])
    bad.write_text(json.dumps({"check": {"thumbnails": True}}))
    with pytest.raises(VlmflowError, match=r"unknown option.*thumbnails.*known options"):
        _cli(["check", "--config", str(bad), "--out", str(tmp_path)])
    with pytest.raises(VlmflowError, match="not found"):
        _cli(["check", "--images", str(tmp_path / "missing"), "--out", str(tmp_path)])


def test_model_experiment_without_factory_is_refused(tmp_path: Path) -> None:
    experiment = create("check")
    experiment.needs_model = True  # type: ignore[misc]
    with ResultStore.open(tmp_path) as store, pytest.raises(VlmflowError, match="needs a model"):
        Runner([experiment], SOURCE, store, progress=False).run()


def test_store_and_runner_import_without_torch() -> None:
    code = (
        "import sys, vlmflow.store, vlmflow.experiments, vlmflow.experiments.command; "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_single_process_resumes_a_sharded_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    for i in range(5):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / f"{i}.png")
    out = tmp_path / "out"
    argv = ["check", "--images", str(tmp_path), "--out", str(out), "--no-progress"]
    assert _cli([*argv, "--rank", "1", "--world-size", "2"]) == 0
    assert "rank 1 finished" in capsys.readouterr().out
    assert _cli(argv) == 0  # rank 0 never ran: one process finishes the job
    assert "3 done, 0 failed, 2 already done" in capsys.readouterr().out
    with ResultStore.open(out) as store:
        assert [r.item for r in store.rows()] == [f"{i}.png" for i in range(5)]
