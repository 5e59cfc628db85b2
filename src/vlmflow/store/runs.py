"""Run identity: what makes two invocations "the same run", so the second one resumes the first.

A run is one experiment applied to one model and one image source under one configuration. Its
id is a hash of exactly those four things in a canonical form, so the id survives key order in a
config file, a different working directory or a restart on another rank.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUN_ID_LENGTH = 16


def to_jsonable(value: Any) -> Any:
    """`value` with numpy scalars/arrays, tuples and sets turned into plain JSON types.

    Results come from numpy and torch code; converting here keeps `json.dumps` deterministic
    instead of failing on the first `np.float32`.
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(to_jsonable(v) for v in value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays, torch tensors
    if callable(tolist):
        return to_jsonable(tolist())
    raise TypeError(f"cannot store a {type(value).__name__} as JSON: convert it to numbers/text")


def canonical_json(value: Any) -> str:
    """Deterministic JSON text: sorted keys, no spaces; equal values give equal text."""
    return json.dumps(to_jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=True)


@dataclass(frozen=True)
class RunSpec:
    """The four things a run id is made of."""

    experiment: str
    model: str
    source: str
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def config_json(self) -> str:
        return canonical_json(self.config)

    @property
    def run_id(self) -> str:
        text = canonical_json(
            {
                "experiment": self.experiment,
                "model": self.model,
                "source": self.source,
                "config": self.config,
            }
        )
        return hashlib.sha256(text.encode()).hexdigest()[:RUN_ID_LENGTH]


@dataclass(frozen=True)
class RunInfo:
    """A run as recorded in a store."""

    run_id: str
    experiment: str
    model: str
    source: str
    config: Mapping[str, Any]
    version: str
    created: float


# Files whose change makes a checkpoint folder another model: weights, their index, configs,
# tokenizer files.
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model")
_HEADER_LIMIT = 100 * 2**20  # a safetensors header is a few MB at most; larger is damage


def checkpoint_digest(folder: str | Path) -> str:
    """A cheap identity of a local checkpoint folder's contents (12 hex digits).

    Every weights, index, config and tokenizer file counts by name, size and modification time,
    and each `.safetensors` file also by its header (tensor names, dtypes, shapes and offsets),
    read without touching the tensor data: milliseconds for a 70B checkpoint. Replaced weights
    therefore make a new run id instead of counting the old results as done.
    """
    import struct

    root = Path(folder)
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*")):
        if not file.is_file() or file.suffix not in _CHECKPOINT_SUFFIXES:
            continue
        if any(part.startswith(".") for part in file.relative_to(root).parts):
            continue
        info = file.stat()
        digest.update(f"{file.relative_to(root)}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
        if file.suffix == ".safetensors":
            with open(file, "rb") as f:
                head = f.read(8)
                if len(head) == 8:
                    (length,) = struct.unpack("<Q", head)
                    digest.update(f.read(min(length, _HEADER_LIMIT)))
    return digest.hexdigest()[:12]
