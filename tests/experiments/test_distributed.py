"""Launch detection and the end-of-run meeting, without starting any process."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from vlmflow.errors import VlmflowError
from vlmflow.experiments.distributed import (
    DONE,
    Launch,
    Meeting,
    RankLost,
    detect,
    finish,
    rank_device,
)

TORCHRUN = {
    "RANK": "3",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "node0",
    "MASTER_PORT": "29500",
}


def test_without_torchrun_the_flags_shard_by_hand() -> None:
    assert detect(None, None, "cpu", {}) == Launch(0, 1, 0, "cpu", False)
    launch = detect(1, 2, "cuda", {})
    assert launch == Launch(1, 2, 0, "cuda", False) and not launch.coordinated
    with pytest.raises(VlmflowError, match="outside world size"):
        detect(2, 2, "cpu", {}).shard  # noqa: B018


def test_torchrun_sets_rank_device_and_backend() -> None:
    launch = detect(None, None, "cuda", TORCHRUN)
    assert launch == Launch(3, 4, 1, "cuda:1", True)
    assert launch.coordinated and launch.backend == "nccl"
    assert detect(3, 4, "cpu", TORCHRUN).backend == "gloo"  # agreeing flags are fine
    single = detect(None, None, "cpu", {**TORCHRUN, "RANK": "0", "WORLD_SIZE": "1"})
    assert single.launched and not single.coordinated


def test_conflicting_or_partial_environment_names_the_fix() -> None:
    with pytest.raises(VlmflowError, match=r"--rank 0 conflicts with RANK=3 set by torchrun"):
        detect(0, None, "cpu", TORCHRUN)
    with pytest.raises(VlmflowError, match=r"--world-size 2 conflicts with WORLD_SIZE=4"):
        detect(None, 2, "cpu", TORCHRUN)
    with pytest.raises(VlmflowError, match="RANK is set but WORLD_SIZE is not"):
        detect(None, None, "cpu", {"RANK": "0"})
    with pytest.raises(VlmflowError, match="MASTER_ADDR is not set"):
        detect(None, None, "cpu", {k: v for k, v in TORCHRUN.items() if k != "MASTER_ADDR"})
    with pytest.raises(VlmflowError, match="not an integer"):
        detect(None, None, "cpu", {**TORCHRUN, "RANK": "x"})


def test_one_gpu_per_rank() -> None:
    assert rank_device("cuda", 5, 8) == "cuda:5"
    assert rank_device("cpu", 5, 8) == "cpu"
    assert rank_device("cuda:2", 0, 1) == "cuda:2"
    with pytest.raises(VlmflowError, match="puts all 8 ranks of this node on one GPU"):
        rank_device("cuda:0", 3, 8)


def _store() -> object:
    import torch.distributed as dist

    store = dist.TCPStore("localhost", 0, 1, True, timedelta(seconds=10), wait_for_workers=False)
    return dist.PrefixStore("test", store)


def test_a_silent_rank_is_given_up_after_the_timeout(tmp_path: Path) -> None:
    meeting = Meeting(_store(), 0, 2, timeout_s=1.0, beat_s=0.1)  # type: ignore[arg-type]
    meeting.start()
    try:
        start = time.monotonic()
        with pytest.raises(RankLost, match=r"rank 1 stopped responding \(no heartbeat for 1 s\)"):
            finish(meeting, tmp_path)
        assert time.monotonic() - start < 5
    finally:
        meeting.stop()


def test_a_failed_rank_ends_the_wait_at_once(tmp_path: Path) -> None:
    store = _store()
    zero = Meeting(store, 0, 2, timeout_s=30.0, beat_s=0.1)  # type: ignore[arg-type]
    one = Meeting(store, 1, 2, timeout_s=30.0, beat_s=0.1)  # type: ignore[arg-type]
    zero.start()
    one.start()
    try:
        threading.Timer(0.3, one.report, ["RuntimeError: out of memory"]).start()
        start = time.monotonic()
        with pytest.raises(RankLost, match=r"rank 1 did not finish \(RuntimeError: out of"):
            finish(zero, tmp_path)
        assert time.monotonic() - start < 5
        # rank 0 told the others its merge did not happen
        assert store.get("merged").decode().startswith("rank 1 did not finish")  # type: ignore[attr-defined]
    finally:
        zero.stop()
        one.stop()


def test_a_slow_rank_that_beats_is_waited_for(tmp_path: Path) -> None:
    store = _store()
    one = Meeting(store, 1, 2, timeout_s=0.5, beat_s=0.05)  # type: ignore[arg-type]
    one.start()  # beats, reports `done` only after three timeouts
    threading.Timer(1.5, one.report, [DONE]).start()
    zero = Meeting(store, 0, 2, timeout_s=0.5, beat_s=0.05)  # type: ignore[arg-type]
    start = time.monotonic()
    try:
        zero.gather()  # raises RankLost if the beating rank were given up after 0.5 s
        waited = time.monotonic() - start
    finally:
        one.stop()
    # it returned only once rank 1 reported, three timeouts later, and saw its `done`
    assert waited >= 1.0, f"gather returned after {waited:.2f} s, before rank 1 reported"
    assert store.get("status/1").decode() == DONE  # type: ignore[attr-defined]
