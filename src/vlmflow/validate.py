"""Checks of user input made before the expensive part (loading a model, computing results).

One owner per rule: numbers in range, output and input paths of the right kind, the device and
dtype a model is loaded with. Each check raises a one-line `VlmflowError` that names the flag
(or option) and the fix; none imports torch unless the check is about torch.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

from vlmflow.errors import VlmflowError

# The largest canvas side a scene is rendered at: 8192 px is 192 MiB of RGB, well past any
# model's input resolution.
MAX_CANVAS_SIDE = 8192


def whole_number(value: Any, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum]; booleans and fractions are refused.

    Raises VlmflowError naming `name` (a flag or option) and the allowed range.
    """
    span = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise VlmflowError(f"{name} {value!r}: give a whole number {span}")
    if value < minimum or (maximum is not None and value > maximum):
        raise VlmflowError(f"{name} {value}: give a whole number {span}")
    return value


def positive_seconds(value: Any, name: str) -> float:
    """`value` as a finite number of seconds > 0 (a timeout); raises VlmflowError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise VlmflowError(f"{name} {value!r}: give a number of seconds > 0")
    if not math.isfinite(value) or value <= 0:
        raise VlmflowError(f"{name} {value}: give a number of seconds > 0")
    return float(value)


def _is_special(path: Path) -> bool:
    """A device, pipe or socket (`/dev/null`, a FIFO): never a place for vlmflow's files."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _writable_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor of `path` must be a folder this process can write in."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise VlmflowError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VlmflowError(f"{flag} {path}: {parent} is not writable; choose a writable folder")


def output_folder(path: str | Path, flag: str = "--out") -> Path:
    """A folder vlmflow may create or write into: not a file, not a device, writable.

    Raises VlmflowError naming `flag` and what to choose instead.
    """
    folder = Path(path).expanduser()
    if _is_special(folder):
        raise VlmflowError(f"{flag} {folder} is a device or pipe: give a folder")
    if folder.exists():
        if not folder.is_dir():
            raise VlmflowError(f"{flag} {folder} is a file: give a folder (it may not exist yet)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise VlmflowError(f"{flag} {folder} is not writable: choose a writable folder")
        return folder
    _writable_parent(folder, flag)
    return folder


def output_file(
    path: str | Path,
    flag: str,
    force: bool | None = None,
    suffixes: tuple[str, ...] = (),
    missing_parent_ok: bool = False,
) -> Path:
    """A file vlmflow may write: a regular file or nothing yet, in a writable folder.

    `suffixes`: the accepted endings. `force`: None lets an existing file be replaced (files
    vlmflow owns); False refuses it and names `--force`. `missing_parent_ok`: the folder may be
    created. Raises VlmflowError naming `flag` and the fix.
    """
    file = Path(path).expanduser()
    if suffixes and file.suffix.lower() not in suffixes:
        raise VlmflowError(f"{flag} {file}: name a {' or '.join(suffixes)} file")
    if _is_special(file):
        raise VlmflowError(f"{flag} {file} is a device or pipe: give a regular file path")
    if file.is_dir():
        raise VlmflowError(f"{flag} {file} is a folder: give a file path inside it")
    if file.exists():
        if force is False:
            raise VlmflowError(f"{flag} {file} exists: pass --force to replace it")
        if not os.access(file, os.W_OK):
            raise VlmflowError(f"{flag} {file} is read-only: choose another file")
    if not file.parent.exists() and not missing_parent_ok:
        raise VlmflowError(f"{flag} {file}: folder {file.parent} does not exist; create it first")
    _writable_parent(file, flag)
    return file


def input_file(path: str | Path, flag: str, what: str = "file") -> Path:
    """An existing regular file to read; raises VlmflowError naming `flag` otherwise."""
    file = Path(path).expanduser()
    if not file.exists():
        raise VlmflowError(f"{flag} {file}: no such {what}; check the path")
    if not file.is_file():
        kind = "a folder" if file.is_dir() else "not a regular file"
        raise VlmflowError(f"{flag} {file} is {kind}: give a {what}")
    if not os.access(file, os.R_OK):
        raise VlmflowError(f"{flag} {file} is not readable: check its permissions")
    return file


def torch_device(device: Any) -> Any:
    """`device` as a `torch.device` that exists on this machine (cuda:N, mps, cpu, ...).

    Raises VlmflowError for a malformed name or a device this machine lacks, before any model
    loads.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise VlmflowError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VlmflowError(f"device {device!r}: this machine has no CUDA GPU; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VlmflowError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s);"
                " pick an index below that"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise VlmflowError(f"device {device!r}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps", "meta", "xpu"):
        raise VlmflowError(f"device {device!r} is not supported: use cpu, cuda, cuda:N or mps")
    return dev


def torch_dtype(dtype: Any) -> Any:
    """ "auto", a `torch.dtype`, or the name of a floating torch dtype ("bfloat16", ...).

    Raises VlmflowError for any other name, before any model loads.
    """
    import torch

    if dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None) if isinstance(dtype, str) else None
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise VlmflowError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return value
