"""One writer per store file: a second run into the same --out refuses instead of redoing work.

SQLite already serialises commits, but two runs into one store would both compute every item
(each sees it missing) and both report it done. An advisory `flock` on `STORE.lock`, held for
the whole run, makes the second run stop at once; the kernel drops it when the process ends,
so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from vlmflow.errors import VlmflowError


@contextlib.contextmanager
def run_lock(store: Path) -> Iterator[Path]:
    """Hold `STORE.lock` for the duration of the block; yields the lock file's path.

    Raises VlmflowError (naming the holder's pid) when another process holds it.
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
            raise VlmflowError(
                f"{store} is being written by another vlmflow run (pid {holder}): wait for it "
                "to finish, then run again to resume, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
