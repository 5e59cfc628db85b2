"""Which decoder layers run through vlmflow's attention function: probed, never assumed.

A knockout or capture acts inside `vlmflow.attention.backend.attention`. A decoder layer that
never calls it (linear attention, a state-space or convolution mixer, a module that computes
attention itself) would let a knockout pass silently: its keys stay visible and the capture has
no row for it. So before the first session on a model, one probe forward over two tokens of the
session's prompt records every layer that calls the function and the arguments it passes; a
session whose layers include one that did not call it, or one whose arguments the function cannot
honour exactly (chunked attention, attention sinks, keys that are not sequence positions, a layer
type other than full or sliding attention), is refused in one line naming the layers and the
reason, before any generation runs. Sliding-window layers are honoured (the function maps their
keys to absolute positions) and so are soft-capped scores (Gemma 2: computed as transformers'
eager attention computes them); see `vlmflow.attention.backend`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vlmflow.attention.layers import spans
from vlmflow.errors import VlmflowError

if TYPE_CHECKING:
    from vlmflow.models.loading import Handle, Prompt

# layer -> reason the attention function cannot act on it exactly ("" when it can); set while a
# probe forward runs
PROBE: ContextVar[dict[int, str] | None] = ContextVar("vlmflow_probe", default=None)


@dataclass(frozen=True)
class Coverage:
    """What the probe saw on one model.

    `calls`: decoder layer -> reason vlmflow cannot act there exactly ("" when it can), for
    every layer that called the attention function; `num_layers`: the decoder's layer count.
    """

    calls: dict[int, str]
    num_layers: int
    layer_types: tuple[str, ...] = ()  # the config's `layer_types`, when it lists them

    def problems(self, layers: Iterable[int]) -> dict[int, str]:
        """For each of `layers` that vlmflow cannot act on exactly, the reason."""
        out: dict[int, str] = {}
        for layer in sorted(set(layers)):
            reason = self.calls.get(layer)
            if reason is None:
                kind = self.layer_types[layer] if layer < len(self.layer_types) else ""
                what = f"{kind} layers" if kind else "not softmax attention"
                out[layer] = f"never calls the attention function ({what})"
            elif reason:
                out[layer] = reason
        return out


_COVERAGE: weakref.WeakKeyDictionary[torch.nn.Module, Coverage] = weakref.WeakKeyDictionary()


def record(module: torch.nn.Module, kwargs: dict[str, Any], queries: int, keys: int) -> None:
    """Called by the attention function on every call, with its query and key counts: notes
    the layer while a probe runs. The probe runs without a cache, so a layer attending over the
    sequence has as many keys as queries; other keys (cross-attention over image states, memory
    tokens) are not prompt positions, and the layer is refused."""
    calls = PROBE.get()
    if calls is None:
        return
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        return
    reason = unsupported(module, kwargs)
    if not reason and keys != queries:
        reason = (
            f"{NOT_POSITIONS} ({keys} keys for {queries} queries: cross-attention or memory tokens)"
        )
    # a later call at the same index (another module sharing it) never erases a refusal
    calls[int(layer)] = calls.get(int(layer)) or reason


# why the probe refuses a layer whose keys outnumber its queries
NOT_POSITIONS = "keys that are not the sequence's positions"

# decoder layer types (`config.layer_types`) whose attention the function computes exactly,
# save for the per-call checks below
_FULL = ("full_attention", "sliding_attention")


def layer_type(module: torch.nn.Module) -> str | None:
    """The layer type its config gives the layer of `module` (`config.layer_types`), or None
    when the config lists none."""
    config = getattr(module, "config", None)
    kinds = getattr(config, "layer_types", None)
    layer = getattr(module, "layer_idx", None)
    if not isinstance(kinds, list | tuple) or not isinstance(layer, int) or layer >= len(kinds):
        return None
    return str(kinds[layer])


def unsupported(module: torch.nn.Module, kwargs: dict[str, Any]) -> str:
    """Why the attention function cannot act exactly at this call ("" when it can).

    Chunked attention (Llama 4's `chunked_attention` layers) is refused whatever the length:
    its mask lets a query see only its own chunk of `attention_chunk_size` positions and its
    cache keeps only the last chunk's keys, so once prompt and generation pass one chunk the
    keys the function is given are no longer positions 0..kv-1.
    """
    kind = layer_type(module)
    if kind == "chunked_attention":
        size = getattr(getattr(module, "config", None), "attention_chunk_size", None)
        return (
            f"chunked attention (chunks of {size} tokens: its mask and cache drop the keys of "
            "earlier chunks)"
        )
    if kind is not None and kind not in _FULL:
        return f"{kind} layers (knockout and capture act on softmax attention over all keys)"
    if kwargs.get("s_aux") is not None or getattr(module, "sinks", None) is not None:
        return "attention sinks (capture cannot reproduce its weights)"
    return ""


@contextmanager
def probing() -> Iterator[dict[int, str]]:
    """Record the layers that call the attention function inside the block."""
    calls: dict[int, str] = {}
    token = PROBE.set(calls)
    try:
        yield calls
    finally:
        PROBE.reset(token)


def coverage(handle: Handle, prompt: Prompt) -> Coverage:
    """The probe's result for `handle`'s model, run once per model: a forward pass over the last
    two token ids of `prompt`'s first row (text positions in every supported family), with the
    family's `probe_inputs` (the image of a family that reads it through cross-attention
    layers only), outside any session. Raises VlmflowError when the probe itself cannot run."""
    model = handle.model
    known = _COVERAGE.get(model)
    if known is not None:
        return known
    from vlmflow.attention import backend

    ids = prompt.input_ids[:1, -2:].to(handle.device)  # (1, 2)
    extra = handle.roles.probe_inputs(prompt.inputs, int(prompt.input_ids.shape[1]))
    token = backend.ACTIVE.set(())  # plain attention: no session applies to the probe
    try:
        with probing() as calls, torch.inference_mode():
            model(input_ids=ids, use_cache=False, **extra)
    except Exception as err:
        raise VlmflowError(
            f"cannot check which layers of {handle.name} use vlmflow's attention function (a "
            f"two-token text forward failed: {type(err).__name__}): knockout and capture are "
            "unavailable for this model"
        ) from None
    finally:
        backend.ACTIVE.reset(token)
    kinds = getattr(model.config.get_text_config(), "layer_types", None) or ()
    # the family's own cross-attention layers (keys: the image's states), which the attention
    # function handles as such (`backend._cross_attention`)
    cross = handle.roles.cross_attention_layers()
    reasons = {
        layer: "" if layer in cross and reason.startswith(NOT_POSITIONS) else reason
        for layer, reason in calls.items()
    }
    found = Coverage(reasons, handle.num_layers, tuple(str(k) for k in kinds))
    _COVERAGE[model] = found
    return found


def check(handle: Handle, prompt: Prompt, layers: Iterable[int], what: str) -> None:
    """Refuse `what` (e.g. "knockout image->query") at `layers` if any of them is a layer the
    attention function does not reach exactly. Raises VlmflowError naming the layers and the
    reason."""
    layers = list(layers)
    if not layers:
        return
    problems = coverage(handle, prompt).problems(layers)
    if not problems:
        return
    by_reason: dict[str, list[int]] = {}
    for layer, reason in problems.items():
        by_reason.setdefault(reason, []).append(layer)
    told = "; ".join(f"layers {spans(ls)}: {reason}" for reason, ls in by_reason.items())
    ok = sorted(set(range(handle.num_layers)) - set(problems))
    hint = f"choose among layers {spans(ok)}" if ok else "no layer of this model allows it"
    raise VlmflowError(f"{what} cannot act exactly on {told}: {hint}")
