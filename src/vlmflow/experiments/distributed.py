"""Data parallel `vlmflow run` on `torch.distributed`: one process per rank, started by torchrun.

    torchrun --nproc-per-node 8 -m vlmflow run knockout --device cuda --out runs/ko
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m vlmflow run knockout --device cuda --out /shared/runs/ko      # on every node

Each rank runs `Shard(RANK, WORLD_SIZE)` of the work items into its own file
`OUT/results.rank{R}.sqlite3`, so ranks never write the same file and a killed rank loses at
most the item it was computing. At the end the ranks meet, rank 0 merges the rank files into
`OUT/results.sqlite3` (equal to a single-process run: keys, not ranks, decide what a result
is), and every rank exits. Re-running the same command resumes every rank where it stopped.
All ranks must see the same `--out` (a shared filesystem); otherwise gather the rank files
into one folder afterwards and run `vlmflow run --merge --out DIR`.

Why the end-of-run meeting is not a plain `dist.barrier(timeout)`: ranks finish at different
times (items differ in cost), so any fixed timeout long enough for a slow rank leaves the others
waiting that long for a dead one. Instead every rank beats a counter in the rendezvous store
from a background thread; a finished rank waits for the others' final status and gives up on
a rank whose counter has not moved for `timeout_s`, exiting non-zero with how to resume.
Under torchrun on one node the launcher usually notices a dead worker first and stops the
others with SIGTERM; the heartbeat covers multi-node jobs and other env:// launchers. With
`torchrun --max-restarts N` the launcher restarts the ranks after a failure and they resume
on their own (keys in the store are kept apart per restart).

Without torchrun, `--rank R --world-size W` still shards by hand: no process group, no merge
(run `vlmflow run --merge` once every rank has finished).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from vlmflow.errors import VlmflowError
from vlmflow.experiments.shard import Shard
from vlmflow.store import MergeReport, merge

if TYPE_CHECKING:
    from torch.distributed import Store

DEFAULT_TIMEOUT_S = 300.0
POLL_S = 0.5
DONE = "done"

# Variables torchrun (and any env:// launcher) sets for every worker.
_RANK_VARS = ("RANK", "WORLD_SIZE")
_RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Launch:
    """Where this process stands: its shard, its device, and whether a launcher started it.

    `launched` means RANK/WORLD_SIZE came from the environment (torchrun): the ranks then
    form a process group and meet at the end to merge. Otherwise any sharding is by hand.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    launched: bool = False

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world_size)

    @property
    def coordinated(self) -> bool:
        """True when the ranks must meet at the end (launched, more than one rank)."""
        return self.launched and self.world_size > 1

    @property
    def backend(self) -> str:
        """nccl for CUDA ranks, gloo otherwise (gloo also works on CPU-only machines)."""
        return "nccl" if self.device.startswith("cuda") else "gloo"


def detect(
    rank: int | None,
    world_size: int | None,
    device: str,
    env: Mapping[str, str] | None = None,
) -> Launch:
    """Combine `--rank/--world-size/--device` with what torchrun put in the environment.

    Flags given under torchrun must agree with it (a mismatch would make two processes claim
    one shard); a partial environment is refused rather than guessed.
    """
    env = os.environ if env is None else env
    present = [name for name in _RANK_VARS if env.get(name)]
    if not present:
        return Launch(rank or 0, 1 if world_size is None else world_size, 0, device, False)
    if len(present) < len(_RANK_VARS):
        missing = sorted(set(_RANK_VARS) - set(present))
        raise VlmflowError(
            f"{present[0]} is set but {', '.join(missing)} is not: start the ranks with torchrun, "
            "or unset it and shard by hand with --rank R --world-size W"
        )
    env_rank, env_world = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
    for flag, given, found, var in (
        ("--rank", rank, env_rank, "RANK"),
        ("--world-size", world_size, env_world, "WORLD_SIZE"),
    ):
        if given is not None and given != found:
            raise VlmflowError(
                f"{flag} {given} conflicts with {var}={found} set by torchrun: drop {flag} "
                "(torchrun assigns ranks), or run without torchrun to shard by hand"
            )
    if env_world > 1:
        absent = [name for name in _RENDEZVOUS_VARS if not env.get(name)]
        if absent:
            raise VlmflowError(
                f"WORLD_SIZE={env_world} but {', '.join(absent)} is not set: start the ranks "
                "with torchrun, which sets the rendezvous address"
            )
    local_rank = _int_var(env, "LOCAL_RANK", 0)
    local_world = _int_var(env, "LOCAL_WORLD_SIZE", 1)
    Shard(env_rank, env_world)  # validates the range with the usual message
    return Launch(
        env_rank, env_world, local_rank, rank_device(device, local_rank, local_world), True
    )


def rank_device(device: str, local_rank: int, local_world_size: int = 1) -> str:
    """`cuda` becomes `cuda:{LOCAL_RANK}`: one GPU per rank on each node.

    An explicit `cuda:N` is kept for a single rank per node, and refused with several, since
    every rank of the node would then share one GPU.
    """
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return device
    if not index:
        return f"cuda:{local_rank}"
    if local_world_size > 1:
        raise VlmflowError(
            f"--device {device} puts all {local_world_size} ranks of this node on one GPU: "
            "give --device cuda (each rank then takes cuda:LOCAL_RANK)"
        )
    return device


def _int_var(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = env.get(name)
    if not text:
        if default is None:
            raise VlmflowError(f"{name} is not set: start the ranks with torchrun")
        return default
    try:
        return int(text)
    except ValueError:
        raise VlmflowError(f"{name}={text!r} is not an integer: check the launcher") from None


class RankLost(VlmflowError):
    """Another rank failed, stopped, or went silent: this rank's results stay in its file."""


class Meeting:
    """The end-of-run meeting of the ranks over a shared key-value store.

    Keys (under a per-attempt prefix): `beat/R` counts rank R's heartbeats, `status/R` holds
    its final status (`done`, or why it stopped), `merged` holds rank 0's merge outcome and
    `left` counts the ranks that read it (so a rank 0 that hosts the store stays up until then).
    """

    def __init__(
        self,
        store: Store,
        rank: int,
        world_size: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        beat_s: float | None = None,
    ) -> None:
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.beat_s = beat_s if beat_s is not None else min(5.0, timeout_s / 4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- heartbeat --------------------------------------------------------------------------

    def start(self) -> None:
        """Beat from a thread with its own store connection (the main thread keeps its own)."""
        store = self.store.clone() if hasattr(self.store, "clone") else self.store
        store.add(f"beat/{self.rank}", 1)
        self._thread = threading.Thread(
            target=self._beat, args=(store,), name=f"vlmflow-heartbeat-{self.rank}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.beat_s + 5)

    def _beat(self, store: Store) -> None:
        while not self._stop.wait(self.beat_s):
            try:
                store.add(f"beat/{self.rank}", 1)
            except Exception:  # the store is gone: the waiting ranks notice on their own
                return

    # -- the meeting ------------------------------------------------------------------------

    def report(self, status: str) -> None:
        """Publish this rank's final status: `done`, or one line saying why it stopped."""
        self.store.set(f"status/{self.rank}", status)

    def gather(self) -> None:
        """Wait until every rank reported `done`; raise `RankLost` naming the first that won't."""
        pending = set(range(self.world_size)) - {self.rank}
        for rank, status in self._wait(pending, lambda r: f"status/{r}"):
            if status != DONE:
                raise RankLost(f"rank {rank} did not finish ({status})")

    def publish_merge(self, outcome: str) -> None:
        """Rank 0: say how the merge went; after a success wait (bounded) until all have read it.

        Waiting matters where rank 0 hosts the store (env:// without torchrun's agent): exiting
        at once would take the store away before the others read the outcome.
        """
        self.store.set("merged", outcome)
        if outcome != DONE:
            return
        others = set(range(1, self.world_size))
        deadline = time.monotonic() + self.timeout_s
        with self._watch(others) as silent:
            while int(self.store.add("left", 0)) < len(others):
                if silent() is not None or time.monotonic() > deadline:
                    return  # the results are merged; a rank gone now changes nothing
                time.sleep(POLL_S)

    def await_merge(self) -> str:
        """Other ranks: rank 0's merge outcome (`done` or its error)."""
        [(_, outcome)] = list(self._wait({0}, lambda r: "merged"))
        self.store.add("left", 1)
        return outcome

    def _wait(self, ranks: set[int], key: Callable[[int], str]) -> Iterator[tuple[int, str]]:
        """Yield (rank, value of its key) as they appear; raise if a waited-for rank goes silent."""
        pending = set(ranks)
        with self._watch(pending) as silent:
            while pending:
                for rank in sorted(pending):
                    name = key(rank)
                    if self.store.check([name]):
                        pending.discard(rank)
                        yield rank, self.store.get(name).decode()
                lost = silent()
                if lost is not None:
                    raise RankLost(
                        f"rank {lost} stopped responding (no heartbeat for {self.timeout_s:.0f} s)"
                    )
                if pending:
                    time.sleep(POLL_S)

    @contextlib.contextmanager
    def _watch(self, ranks: set[int]) -> Iterator[Callable[[], int | None]]:
        """A probe returning a rank of `ranks` whose heartbeat stalled for `timeout_s`, or None.

        Counters, not timestamps: nodes' clocks need not agree.
        """
        now = time.monotonic()
        seen = {r: (-1, now) for r in ranks}

        def silent() -> int | None:
            now = time.monotonic()
            for rank in sorted(ranks):
                count = int(self.store.add(f"beat/{rank}", 0))
                last, since = seen[rank]
                if count != last:
                    seen[rank] = (count, now)
                elif now - since > self.timeout_s:
                    return rank
            return None

        yield silent


@contextlib.contextmanager
def process_group(launch: Launch, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Meeting]:
    """Join the torchrun job: rendezvous, init the process group, beat; destroy on the way out.

    The process group (gloo, or nccl on CUDA) is there for experiments that need collectives;
    the meeting at the end goes through the rendezvous store (see the module docstring).
    """
    import torch
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if launch.device.startswith("cuda"):
        if not torch.cuda.is_available() or launch.local_rank >= torch.cuda.device_count():
            raise VlmflowError(
                f"rank {launch.rank} wants {launch.device} but this node has "
                f"{torch.cuda.device_count()} GPU(s): use --nproc-per-node <= GPUs per node"
            )
        torch.cuda.set_device(torch.device(launch.device))
    try:
        store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    except (RuntimeError, ValueError) as err:
        raise VlmflowError(f"rank {launch.rank} cannot reach the rendezvous ({err})") from None
    store.set_timeout(timeout)
    # torchrun --max-restarts reuses its store for the restarted workers: keys of an earlier
    # attempt (gloo's peer addresses, statuses) must not be read again.
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    try:
        dist.init_process_group(
            launch.backend,
            store=dist.PrefixStore(f"vlmflow/attempt{attempt}/default_pg", store),
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=timeout,
            device_id=torch.device(launch.device) if launch.backend == "nccl" else None,
        )
    except RuntimeError as err:
        raise VlmflowError(
            f"rank {launch.rank} cannot join the {launch.backend} process group "
            f"({' '.join(str(err).split())[:300]}): check that the nodes reach each other "
            "(firewall; GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME name the network interface)"
        ) from None
    meeting = Meeting(
        dist.PrefixStore(f"vlmflow/attempt{attempt}/meeting", store),
        launch.rank,
        launch.world_size,
        timeout_s,
    )
    meeting.start()
    try:
        yield meeting
    finally:
        meeting.stop()
        if dist.is_initialized():
            dist.destroy_process_group()


def finish(meeting: Meeting, out: Path) -> MergeReport | None:
    """After this rank's shard: meet the others; rank 0 merges. Raises `RankLost` on failure.

    Returns rank 0's merge report (None on the other ranks).
    """
    try:
        with _signals_raise():
            return _finish(meeting, out)
    except VlmflowError:
        raise
    except RuntimeError as err:  # torch's store errors: the store's host is gone
        raise RankLost(f"lost the rendezvous store ({' '.join(str(err).split())})") from None


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """While waiting for the others, SIGTERM/SIGINT (torchrun stopping the job) end the wait
    with `RankLost`, so the rank still says how to resume instead of dying silently."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise RankLost(f"stopped by {signal.Signals(signum).name} while waiting for the others")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _finish(meeting: Meeting, out: Path) -> MergeReport | None:
    meeting.report(DONE)
    if meeting.rank != 0:
        meeting.gather()  # fail fast with the others when one is lost
        outcome = meeting.await_merge()
        if outcome != DONE:
            raise RankLost(f"rank 0 could not merge ({outcome})")
        return None
    try:
        meeting.gather()
        # Every rank of this job reported its shard done, so the merge need not check rank
        # files itself; partial also tolerates stale unfinished files of an earlier job with
        # another world size (their items were redone by this job's ranks).
        report = merge(out, partial=True)
    except VlmflowError as err:
        meeting.publish_merge(" ".join(str(err).split()))
        raise
    meeting.publish_merge(DONE)
    return report


def resume_hint(out: Path) -> str:
    """The end of every distributed failure message: what to do next."""
    return (
        f"to resume, run the same command again (finished items are kept in "
        f"{out}/results.rank*.sqlite3)"
    )


def abandon(meeting: Meeting, why: str) -> None:
    """Tell the other ranks this one stops without finishing (they then exit too)."""
    with contextlib.suppress(Exception):  # the store is gone too: the others see the silence
        meeting.report(" ".join(why.split()) or "stopped")
