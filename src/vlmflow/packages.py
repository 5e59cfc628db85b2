"""Data files shipped inside installed packages, located without importing those packages
(their own imports can be heavy or pull optional dependencies)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_folder(module: str) -> Path | None:
    """The folder of installed package `module`, or None when it is not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
