"""One writer per store file: a second run into the same --out waits, then resumes.

SQLite already serialises commits, but two runs into one store would both compute every item
(each sees it missing) and both report it done. An advisory `flock` on `STORE.lock`, held for
the whole run, makes the second run wait (saying once for whom) until the first ends; it then
opens the store, finds the first run's results and computes only what is still missing. With
`wait=False` (`vlmflow run --no-wait`) it refuses at once instead. The kernel drops the lock
when its holder ends, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from vlmflow.errors import VlmflowError


@contextlib.contextmanager
def run_lock(store: Path, wait: bool = True) -> Iterator[Path]:
    """Hold `STORE.lock` for the duration of the block; yields the lock file's path.

    When another process holds it: with `wait`, print one line to stderr naming the holder's
    pid and block until it is released (Ctrl-C raises KeyboardInterrupt; nothing was written);
    without, raise VlmflowError naming the holder's pid.
    """
    import fcntl

    path = store.with_name(store.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            if not wait:
                raise VlmflowError(
                    f"{store} is being written by another vlmflow run (pid {holder}): wait for "
                    "it to finish, then run again to resume, or choose another --out"
                ) from None
            print(
                f"vlmflow: waiting for pid {holder}, which is writing {store} (Ctrl-C to stop; "
                "nothing is lost)",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(fd, fcntl.LOCK_EX)  # a signal's handler (Ctrl-C) interrupts the wait
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
