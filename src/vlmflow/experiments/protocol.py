"""What an experiment is: work items, settings per item, and one result per (item, setting).

The runner owns looping, resuming, failures, sharding and progress; an experiment only says
what the work is and how to do one unit of it. That split is what lets every analysis of the
paper resume after a kill and shard over GPUs without code of its own for either.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from vlmflow.errors import VlmflowError
from vlmflow.sources import ImageSource


@dataclass(frozen=True)
class WorkItem:
    """One unit of input, e.g. one image. `item_id` is its key in the store: keep it stable."""

    item_id: str
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """What one (item, setting) produced.

    `metrics`: flat numbers/text (they become table columns on export); `payload`: any JSON
    (descriptions, token ids, per-layer lists); `blobs`: small numpy arrays stored as .npy
    bytes (attention maps: cast to float16 first).
    """

    metrics: Mapping[str, Any] = field(default_factory=dict)
    payload: Mapping[str, Any] = field(default_factory=dict)
    blobs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """Where a unit of work runs: its run, its place in the item and setting order, its rank.

    `pending`: the settings of this item the run still has to do, this one first, so an
    experiment can compute several of them in one batch and serve the rest from memory.
    """

    run_id: str
    out_dir: Path
    model: str
    item_index: int
    setting_index: int
    rank: int = 0
    world_size: int = 1
    pending: tuple[str, ...] = ()


@runtime_checkable
class Experiment(Protocol):
    """An analysis the runner can execute.

    `config` is the experiment's resolved configuration (defaults filled in, JSON-able): it is
    part of the run id, so changing it starts a new run instead of mixing results.
    `needs_model` False lets the runner skip loading a model (checks of the data itself).
    `items` must be deterministic and cheap (list files, do not decode them): the runner lists
    every item to plan, skip and shard before doing any work.
    """

    name: str
    config: Mapping[str, Any]
    needs_model: bool

    def items(self, source: ImageSource) -> Iterable[WorkItem]: ...

    def settings(self, item: WorkItem) -> Sequence[str]: ...

    def run(self, handle: Any, item: WorkItem, setting: str, context: Context) -> Result: ...


C = TypeVar("C")
T = TypeVar("T")

# Options that count something (tokens, a stride, a batch): 0 or less would do nothing or fail
# late, so they are refused with the type check.
COUNT_OPTIONS = frozenset({"max_new_tokens", "answer_tokens", "step", "batch", "size", "top_k"})
# options holding one layer spec (`all`, `from:L`, ...), stored in its canonical spelling so
# that equal specs give the same run id
LAYER_OPTIONS = frozenset({"layers"})


def parse_config(config_type: type[C], options: Mapping[str, Any] | None, experiment: str) -> C:
    """A config dataclass from a mapping, with a one-line error for unknown or bad options."""
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(config_type)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise VlmflowError(
            f"unknown option(s) {', '.join(unknown)} for experiment {experiment}: "
            f"known options are {', '.join(sorted(known)) or 'none'}"
        )
    hints = typing.get_type_hints(config_type)
    for name, value in options.items():
        if not _fits(value, hints.get(name, Any)):
            shown = getattr(hints.get(name), "__name__", None) or str(hints.get(name))
            raise VlmflowError(
                f"option {name} = {value!r} of experiment {experiment} must be of type "
                f"{shown.replace('typing.', '')}: fix it in the config file"
            )
        if name in COUNT_OPTIONS and isinstance(value, int) and value < 1:
            raise VlmflowError(
                f"option {name} = {value} of experiment {experiment} must be at least 1: fix it "
                "in the config file"
            )
    for name in LAYER_OPTIONS & set(options):
        if isinstance(options[name], str):
            from vlmflow.attention.layers import Layers

            options[name] = Layers.parse(options[name]).spec
    try:
        return config_type(**options)
    except (TypeError, ValueError) as err:
        raise VlmflowError(f"bad options for experiment {experiment}: {err}") from None


def result_config(options: Any) -> dict[str, Any]:
    """The options that decide results (the run id); `batch` only decides speed, and an unset
    `question` is left out so that runs from before the option keep their ids."""
    return {
        k: v
        for k, v in asdict(options).items()
        if k != "batch" and not (k == "question" and v is None)
    }


def as_tuples(options: dict[str, Any], *names: str) -> dict[str, Any]:
    """JSON and TOML give lists; frozen configs hold tuples (hashable, same JSON)."""
    for name in names:
        if isinstance(options.get(name), list):
            options[name] = tuple(options[name])
    return options


def image_items(source: ImageSource) -> list[WorkItem]:
    """One work item per image, keyed by the source's stable image id."""
    return [WorkItem(ref.id, {"image": ref}) for ref in source.images()]


class ItemMemo:
    """Values computed once per work item in this process (baselines, captures, prompts).

    The runner runs all settings of an item one after the other, so only the current item is
    kept: memory stays bounded by one item whatever the size of the run.
    """

    def __init__(self) -> None:
        self._item: tuple[int, str, str] | None = None
        self._values: dict[Any, Any] = {}

    def get(self, handle: Any, item: WorkItem, key: Any, compute: Callable[[], T]) -> T:
        scope = (id(handle), str(getattr(handle, "name", "")), item.item_id)
        if scope != self._item:
            self._item, self._values = scope, {}
        if key not in self._values:
            self._values[key] = compute()
        value: T = self._values[key]
        return value

    def has(self, handle: Any, item: WorkItem, key: Any) -> bool:
        scope = (id(handle), str(getattr(handle, "name", "")), item.item_id)
        return scope == self._item and key in self._values

    def put(self, handle: Any, item: WorkItem, key: Any, value: Any) -> None:
        self.get(handle, item, key, lambda: value)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config value has the declared type; booleans are not numbers, 1.5 is no int,
    an int is a float. Lists stand for tuples (JSON and TOML have no tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, tuple | list):
            return False
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        if origin is tuple and args:
            return len(value) == len(args) and all(
                _fits(v, a) for v, a in zip(value, args, strict=True)
            )
        return all(_fits(v, args[0]) for v in value) if args else True
    if origin is typing.Literal:
        return value in args
    return True  # a type this check does not know: the dataclass itself decides
