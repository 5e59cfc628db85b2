"""`vlmflow run` under torchrun (gloo, CPU): merged ranks equal one process; a killed rank resumes.

Each launch starts torchrun's agent and two workers (a few seconds of imports each), so the
tests keep launches few: the toy experiment for the runner's machinery, one launch of the
analyses beyond the paper (`trace`, `lens`) on a tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
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
from toy_experiment import ToyExperiment

from vlmflow.experiments import ImageSource, Runner, Shard, command, create
from vlmflow.store import ResultStore

TOY = Path(toy_experiment.__file__)
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc, needs fork")


def torchrun(*args: str) -> list[str]:
    """The torchrun command line of this interpreter: two CPU workers on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", *args]  # fmt: skip


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}


def toy_command(out: Path, config: Path) -> list[str]:
    return torchrun(
        str(TOY), "toy", "--images", "scenes:1", "--out", str(out), "--config", str(config),
        "--no-progress", "--rank-timeout", "30",
    )  # fmt: skip


def single_process(out: Path, experiment: Any, images: str = "scenes:1") -> Path:
    with ResultStore.open(out) as store:
        Runner([experiment], ImageSource.parse(images), store, progress=False).run()
    return out / "results.sqlite3"


def count_rows(path: Path) -> int:
    conn = sqlite3.connect(path, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
    finally:
        conn.close()


def workers(parent: int) -> dict[int, int]:
    """rank -> pid of the processes torchrun started (children of `parent` with RANK set)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for var in env:
            if var.startswith(b"RANK="):
                found[int(var[5:])] = int(entry.name)
    return found


def test_two_ranks_merged_equal_a_single_process_run(tmp_path: Path) -> None:
    options = {"count": 30, "sleep_ms": 5}
    config = tmp_path / "toy.json"
    config.write_text(json.dumps({"toy": options}))
    out, table = tmp_path / "out", tmp_path / "table.csv"
    start = time.monotonic()
    done = subprocess.run(
        [*toy_command(out, config), "--export", str(table)],
        capture_output=True, text=True, env=clean_env(), timeout=120,
    )  # fmt: skip
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert "merged ranks [0, 1]" in done.stdout and "59 results, 1 failures added" in done.stdout
    reference = single_process(tmp_path / "single", ToyExperiment(options))
    rows, failures, blobs = snapshot(out / "results.sqlite3")
    assert (rows, failures, blobs) == snapshot(reference)
    assert len(rows) == 59 and len({r[:4] for r in rows}) == 59  # no duplicates
    assert [attempts for _, attempts in failures] == [1]  # the failure once
    assert len(table.read_text().splitlines()) == 61  # rank 0 exported the merged table
    print(f"torchrun 2 ranks: {seconds:.1f} s")


def test_python_m_vlmflow_runs_check_under_torchrun(tmp_path: Path) -> None:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(7):
        Image.new("RGB", (5 + i, 4), (30 * i, 10, 20)).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    done = subprocess.run(
        torchrun("-m", "vlmflow", "run", "check", "--images", str(images), "--out", str(out),
                 "--no-progress"),
        capture_output=True, text=True, env=clean_env(), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "7 results, 1 failures added" in done.stdout
    reference = single_process(tmp_path / "single", create("check"), str(images))
    assert snapshot(out / "results.sqlite3") == snapshot(reference)


def test_trace_and_lens_under_torchrun_equal_one_process(tiny_path: Any, tmp_path: Path) -> None:
    # the README's torchrun line for the analyses beyond the paper, on a tiny LLaVA
    config = tmp_path / "beyond.toml"
    config.write_text('[trace]\nquestions = ["yesno", "open"]\nlimit = 1\n\n[lens]\ntop_k = 3\n')
    model = str(tiny_path("llava"))
    args = ["-m", "vlmflow", "run", "trace", "lens", "--images", "scenes:2", "--model", model,
            "--config", str(config), "--no-progress"]  # fmt: skip
    env = {**clean_env(), "OMP_NUM_THREADS": "1"}  # both runs single-threaded: the same kernels
    out, single = tmp_path / "out", tmp_path / "single"
    done = subprocess.run(
        torchrun(*args, "--out", str(out)), capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "merged ranks [0, 1]" in done.stdout
    alone = subprocess.run(
        [sys.executable, *args, "--out", str(single)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    rows, failures, blobs = snapshot(out / "results.sqlite3")
    assert (rows, failures, blobs) == snapshot(single / "results.sqlite3")
    # 2 scenes x (yesno, open) traces and 2 lens results, each once, none failed
    assert sorted((r[1], r[2], r[3]) for r in rows) == [
        ("lens", "fixed-00", "lens"), ("lens", "fixed-01", "lens"),
        ("trace", "fixed-00", "open"), ("trace", "fixed-00", "yesno"),
        ("trace", "fixed-01", "open"), ("trace", "fixed-01", "yesno"),
    ]  # fmt: skip
    assert failures == [] and len(blobs) == 4  # lens: ids and named per scene


def kill_rank_one_partway(argv: list[str], out: Path) -> tuple[subprocess.Popen[str], str, float]:
    """Start `argv`, SIGKILL rank 1 once it has committed some results; (launcher, stderr, s)."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
        start_new_session=True,
    )  # fmt: skip
    try:
        wal = out / "results.rank1.sqlite3-wal"  # ~70 KiB of set-up, then ~8 KiB a result
        deadline = time.monotonic() + 60
        while not (wal.exists() and wal.stat().st_size > 140_000):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "rank 1 made no progress"
            time.sleep(0.02)
        os.kill(workers(proc.pid)[1], signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        return proc, stderr, time.monotonic() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def slow_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path, Path]:
    """A torchrun command of a toy slow enough to kill partway (4 s a rank), its --out, and the
    single-process store of the same run."""
    options = {"count": 40, "sleep_ms": 100}
    config = tmp_path / "toy.json"
    config.write_text(json.dumps({"toy": options}))
    with monkeypatch.context() as patch:  # the same run (same config), without the waiting
        patch.setattr(toy_experiment.time, "sleep", lambda seconds: None)
        reference = single_process(tmp_path / "single", ToyExperiment(options))
    out = tmp_path / "out"
    return toy_command(out, config), out, reference


def test_killed_rank_stops_the_job_and_the_same_command_resumes(
    slow_job: tuple[list[str], Path, Path],
) -> None:
    argv, out, reference = slow_job
    proc, stderr, stopped_after = kill_rank_one_partway(argv, out)
    assert proc.returncode != 0
    assert stopped_after < 45
    assert "to resume" in stderr  # rank 0's one line
    partial = count_rows(out / "results.rank1.sqlite3")
    assert 0 < partial < 40
    assert not (out / "results.sqlite3").exists()

    again = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already done" in again.stdout
    rows, failures, blobs = snapshot(out / "results.sqlite3")
    assert (rows, failures, blobs) == snapshot(reference)
    assert len(rows) == 79 and [attempts for _, attempts in failures] == [1]
    print(f"job stopped {stopped_after:.1f} s after the kill; rank 1 had {partial}/40 rows")


def test_torchrun_restarts_resume_on_their_own(slow_job: tuple[list[str], Path, Path]) -> None:
    argv, out, reference = slow_job
    argv.insert(argv.index("--standalone"), "--max-restarts=1")
    proc, stderr, _ = kill_rank_one_partway(argv, out)
    assert proc.returncode == 0, stderr[-3000:]
    assert snapshot(out / "results.sqlite3") == snapshot(reference)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


def test_manual_ranks_without_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmflow.errors import VlmflowError

    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    config = tmp_path / "toy.json"
    config.write_text(json.dumps({"toy": {"count": 9}}))
    out = tmp_path / "out"
    argv = ["toy", "--images", "scenes:1", "--out", str(out), "--config", str(config),
            "--no-progress"]  # fmt: skip
    for rank in (1, 0):
        assert _cli([*argv, "--rank", str(rank), "--world-size", "2"]) == 0
    assert not (out / "results.sqlite3").exists()  # by hand: nothing merges on its own
    assert _cli(["--merge", "--out", str(out)]) == 0
    reference = single_process(tmp_path / "single", ToyExperiment({"count": 9}))
    assert snapshot(out / "results.sqlite3") == snapshot(reference)

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(VlmflowError, match="--rank 1 conflicts with RANK=0 set by torchrun"):
        _cli([*argv, "--rank", "1", "--world-size", "2"])


def test_rank_store_and_shard_agree() -> None:
    # the file a torchrun rank writes is the one manual sharding writes: they can mix
    from vlmflow.experiments.distributed import detect
    from vlmflow.store import store_path

    launch = detect(None, None, "cpu", {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h",
                                        "MASTER_PORT": "1"})  # fmt: skip
    assert launch.shard == Shard(1, 2)
    assert store_path("o", launch.rank, launch.world_size).name == "results.rank1.sqlite3"
