"""Which decoder layers run through vlmflow's attention function: probed, never assumed.

A knockout or capture acts inside `vlmflow.attention.backend.attention`. A decoder layer that
never calls it (linear attention, a state-space or convolution mixer, a module that computes
attention itself) would let a knockout pass silently: its keys stay visible and the capture has
no row for it. So before the first session on a model, one probe forward over two tokens of the
session's prompt records every layer that calls the function and the arguments it passes; a
session whose layers include one that did not call it, or one whose arguments the function cannot
honour exactly (attention sinks; a sliding window narrower than the session's prompt), is refused
in one line naming the layers and the reason, before any generation runs. Soft-capped scores
(Gemma 2) are computed exactly (`backend.softcapped_attention`). A sliding window as wide as the
keys drops nothing, so it is exact: the prompt must fit it before generation, and each call
checks its own key count as the generation grows (`Session.check_layer`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from vlmflow.attention.layers import spans
from vlmflow.errors import VlmflowError

if TYPE_CHECKING:
    from vlmflow.models.loading import Handle, Prompt

# layer -> (reason the attention function cannot act on it exactly, "" when it can; its
# sliding window or None); set while a probe forward runs
PROBE: ContextVar[dict[int, tuple[str, int | None]] | None] = ContextVar(
    "vlmflow_probe", default=None
)


@dataclass(frozen=True)
class Coverage:
    """What the probe saw on one model.

    `calls`: decoder layer -> reason vlmflow cannot act there exactly ("" when it can), for
    every layer that called the attention function; `num_layers`: the decoder's layer count;
    `windows`: layer -> sliding window in key positions, for the layers that have one.
    """

    calls: dict[int, str]
    num_layers: int
    windows: dict[int, int] = field(default_factory=dict)

    def problems(self, layers: Iterable[int], keys: int = 0) -> dict[int, str]:
        """For each of `layers` that vlmflow cannot act on exactly over `keys` key positions
        (a sliding window narrower than them drops some), the reason."""
        out: dict[int, str] = {}
        for layer in sorted(set(layers)):
            reason = self.calls.get(layer)
            if reason is None:
                out[layer] = "never calls the attention function (not softmax attention)"
            elif reason:
                out[layer] = reason
            elif layer in self.windows:
                out[layer] = narrow_window(self.windows[layer], keys)
                if not out[layer]:
                    del out[layer]
        return out


_COVERAGE: weakref.WeakKeyDictionary[torch.nn.Module, Coverage] = weakref.WeakKeyDictionary()


def record(module: torch.nn.Module, kwargs: dict[str, Any]) -> None:
    """Called by the attention function on every call: notes the layer while a probe runs."""
    calls = PROBE.get()
    if calls is None:
        return
    layer = getattr(module, "layer_idx", None)
    if layer is not None:
        calls[int(layer)] = (unsupported(module, kwargs), window(module, kwargs))


def window(module: torch.nn.Module, kwargs: dict[str, Any]) -> int | None:
    """The layer's sliding window in key positions, None for full attention."""
    size = getattr(module, "sliding_window", None) or kwargs.get("sliding_window")
    return int(size) if size else None


def narrow_window(size: int, keys: int) -> str:
    """Why a sliding window of `size` is not exact over `keys` key positions ("" when it is
    as wide as them: nothing is dropped or masked by it)."""
    if keys <= size:
        return ""
    return f"sliding-window attention (window {size} < {keys} keys: its cache drops key positions)"


def unsupported(module: torch.nn.Module, kwargs: dict[str, Any]) -> str:
    """Why the attention function cannot act exactly at this layer, whatever its key count
    ("" when it can; a sliding window depends on the keys: `narrow_window`)."""
    if kwargs.get("s_aux") is not None or getattr(module, "sinks", None) is not None:
        return "attention sinks (capture cannot reproduce its weights)"
    return ""


@contextmanager
def probing() -> Iterator[dict[int, tuple[str, int | None]]]:
    """Record the layers that call the attention function inside the block."""
    calls: dict[int, tuple[str, int | None]] = {}
    token = PROBE.set(calls)
    try:
        yield calls
    finally:
        PROBE.reset(token)


def coverage(handle: Handle, prompt: Prompt) -> Coverage:
    """The probe's result for `handle`'s model, run once per model: a forward pass over the last
    two token ids of `prompt`'s first row (text positions in every supported family), outside
    any session. Raises VlmflowError when the probe itself cannot run."""
    model = handle.model
    known = _COVERAGE.get(model)
    if known is not None:
        return known
    from vlmflow.attention import backend

    ids = prompt.input_ids[:1, -2:].to(handle.device)  # (1, 2)
    token = backend.ACTIVE.set(())  # plain attention: no session applies to the probe
    try:
        with probing() as calls, torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    except Exception as err:
        raise VlmflowError(
            f"cannot check which layers of {handle.name} use vlmflow's attention function (a "
            f"two-token text forward failed: {type(err).__name__}): knockout and capture are "
            "unavailable for this model"
        ) from None
    finally:
        backend.ACTIVE.reset(token)
    found = Coverage(
        {layer: reason for layer, (reason, _) in calls.items()},
        handle.num_layers,
        {layer: size for layer, (_, size) in calls.items() if size is not None},
    )
    _COVERAGE[model] = found
    return found


def check(handle: Handle, prompt: Prompt, layers: Iterable[int], what: str) -> None:
    """Refuse `what` (e.g. "knockout image->query") at `layers` if any of them is a layer the
    attention function does not reach exactly. Raises VlmflowError naming the layers and the
    reason."""
    layers = list(layers)
    if not layers:
        return
    problems = coverage(handle, prompt).problems(layers, prompt.layout.length)
    if not problems:
        return
    by_reason: dict[str, list[int]] = {}
    for layer, reason in problems.items():
        by_reason.setdefault(reason, []).append(layer)
    told = "; ".join(f"layers {spans(ls)}: {reason}" for reason, ls in by_reason.items())
    ok = sorted(set(range(handle.num_layers)) - set(problems))
    hint = f"choose among layers {spans(ok)}" if ok else "no layer of this model allows it"
    raise VlmflowError(f"{what} cannot act exactly on {told}: {hint}")
