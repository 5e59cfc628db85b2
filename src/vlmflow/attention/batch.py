"""Many knockout settings of one prompt as the rows of one batch, sharing what they share.

A knockout sweep runs one image under many settings (baseline, `image->generated` from each
layer, top-k key sets, `image->query` ...). Run one by one, every setting pays the vision tower,
the prefill of the whole prompt and a decode loop of batch 1, where the weights are read once
per token for a single row. Here the settings are the rows of one batch: each row's knockouts
apply to that row only (`Knockout.rows`), and every decode step serves all rows at once.

What is shared: a knockout changes the outputs of exactly the positions whose role is in its
`tgt`, and of nothing before them (attention is causal; inside a bidirectional prompt block,
PaliGemma's prefix-LM, of the whole block, which is never split: `chunk_start`). So the prompt
positions before the first position any variant targets are computed once, with batch 1, and
their KV cache is copied to every row. For `image->generated` and top-k key sets (targets:
generated) that is the whole prompt but its last position, which the batched `generate()`
computes per row as its first step (cheap: one position); for `image->query` it is the prefix
and the image (the long part), and only the query positions are computed per row, under each
row's knockouts. Rows whose knockouts leave the whole prompt alone share the query positions
too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vlmflow.attention import backend
from vlmflow.attention.capture import Capture, CaptureResult
from vlmflow.attention.knockout import Knockout
from vlmflow.attention.session import session
from vlmflow.errors import VlmflowError
from vlmflow.models.layout import PromptLayout
from vlmflow.roles import Role

if TYPE_CHECKING:
    from vlmflow.models.loading import Handle, Prompt

# inputs with one entry per prompt position: cut to the positions a forward pass computes
_PER_POSITION = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclass(frozen=True)
class VariantRun:
    """Generations of every variant of one prompt, in the order the variants were given."""

    ids: list[torch.Tensor]  # per variant (new,) greedy ids, up to and including EOS
    capture: CaptureResult | None  # batch index = variant index
    shared: int  # prompt positions computed once for every row (0: nothing shared)


def generate_variants(
    handle: Handle,
    prompt: Prompt,
    variants: Sequence[Sequence[Knockout]],
    max_new_tokens: int = 32,
    capture: Capture | None = None,
    share_prefill: bool = True,
    **kwargs: Any,
) -> VariantRun:
    """Greedy generation of a one-row prompt under each variant (a list of knockouts; empty for
    the baseline), all variants in one batch; each result equals that variant's own
    `vlmflow.session(handle, prompt, knockout=variant).generate(...)` token for token.

    `kwargs` go to `model.generate` (e.g. `min_new_tokens`). `share_prefill=False` computes the
    whole prompt per row (same results, no sharing).

    Paper Sec. 4.1-4.2: the knockout sweep (one setting per row) of one image.

    Args:
        handle: the loaded model (`vlmflow.load`).
        prompt: a one-row prompt (`Handle.prepare`).
        variants: per variant a list of `Knockout`s (without `rows`); [] is the baseline.
        max_new_tokens: length limit of every generation.
        capture: record attention for every row (batch index = variant index).
        share_prefill: compute the prompt positions no variant changes once (families whose
            cache cannot be continued with text ids alone, `TokenRoles.text_continues`, always
            compute the whole prompt per row).

    Returns:
        A `VariantRun`: `ids` per variant (new,) up to and including the first EOS, the
        capture (`fractions` (steps, layers, variants, 4)), and how many positions were shared.

    Raises:
        VlmflowError: a prompt of more than one row, no variants, or a knockout that already
            names rows.
    """
    if prompt.input_ids.shape[0] != 1:
        raise VlmflowError("variants run on one prompt: prepare a single image and text")
    if not variants:
        raise VlmflowError("no variants given: pass at least one list of knockouts ([] = none)")
    for variant in variants:
        for ko in variant:
            if ko.rows is not None:
                raise VlmflowError(
                    f"knockout {ko} already names rows: each variant's knockouts apply to its"
                    " own row, leave rows unset"
                )
    n = prompt.layout.length
    count = len(variants)
    knockouts = [ko.on_rows([r]) for r, variant in enumerate(variants) for ko in variant]
    rows = _repeat_prompt(prompt, count)
    settings = {"do_sample": False, "max_new_tokens": max_new_tokens, **kwargs}
    model = handle.model
    outer = backend.ACTIVE.set(())  # prefills below are plain, whatever encloses this call
    try:
        with torch.inference_mode():
            if not share_prefill or n < 2 or not handle.roles.text_continues:
                with session(handle, rows, knockouts, capture) as s:
                    out = model.generate(**rows.inputs, **settings)  # (count, n + new)
                return VariantRun(_cut(handle, out[:, n:], kwargs), _result(s, capture), 0)
            cache, shared = _shared_cache(handle, prompt, variants)  # (count, h_kv, n - 1, d)
            handle.roles.set_rope_deltas(model, prompt.inputs)
            ids = prompt.input_ids.repeat(count, 1)  # (count, n)
            with session(handle, rows, knockouts, capture) as s:
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    past_key_values=cache,
                    **settings,
                )
            return VariantRun(_cut(handle, out[:, n:], kwargs), _result(s, capture), shared)
    finally:
        backend.ACTIVE.reset(outer)


def first_changed(layout: PromptLayout, variant: Sequence[Knockout]) -> int:
    """First prompt position whose output the variant's knockouts can change (length if none)."""
    codes = layout.codes[0]  # (n,)
    first = layout.length
    for ko in variant:
        hit = torch.zeros_like(codes, dtype=torch.bool)
        for role in ko.tgt:
            hit |= codes == int(role)
        if bool(hit.any()):
            first = min(first, int(hit.nonzero()[0]))
    return first


def _shared_cache(
    handle: Handle, prompt: Prompt, variants: Sequence[Sequence[Knockout]]
) -> tuple[Any, int]:
    """A cache of the first n - 1 prompt positions for every row, and how many were shared.

    Rows that change no prompt position but the last ("late") all take one batch-1 prefill;
    the others ("early") share the positions before the first one any of them targets and
    compute the rest per row under their own knockouts. The last position is left to
    `generate()`, which computes it per row as its first step.
    """
    from transformers import DynamicCache

    model = handle.model
    layout = prompt.layout
    n = layout.length
    starts = [first_changed(layout, v) for v in variants]
    late = [r for r, s in enumerate(starts) if s >= n - 1]
    early = [r for r, s in enumerate(starts) if s < n - 1]
    split = chunk_start(handle, prompt, min((starts[r] for r in early), default=n - 1))
    if bool((layout.codes[0, split : n - 1] == int(Role.IMAGE)).any()):
        split = 0  # a chunk cannot hold part of an image: compute those rows from the start
    positions = _positions(handle, prompt)  # (1, n) or (3, 1, n)
    # a bidirectional prompt is computed whole and cut back to n - 1 positions: the last one,
    # recomputed by generate() as a decode step, sees every prompt key as it did in the block
    block = handle.roles.bidirectional_end(prompt.inputs)

    cache: Any = _prefix(model, prompt.inputs, split, block) if split > 0 else None
    parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    if early:
        sub = _repeat_prompt(prompt, len(early))
        kos = [ko.on_rows([i]) for i, r in enumerate(early) for ko in variants[r]]
        with session(handle, sub, kos):
            if cache is None:
                own = _prefix(model, sub.inputs, n - 1, block)
            else:
                own = DynamicCache(ddp_cache_data=_layers(cache, len(early)))
                _chunk(model, sub.input_ids, own, split, n - 1, positions)
        parts.append(_layers(own))  # (early, h_kv, n - 1, d) per layer
    if late:
        if cache is None:
            cache = _prefix(model, prompt.inputs, n - 1, block)
        elif split < n - 1:
            _chunk(model, prompt.input_ids, cache, split, n - 1, positions)
        parts.insert(0, _layers(cache))  # (1, h_kv, n - 1, d) per layer
    # row r of the batch reads row index[r] of [late's shared row, early rows...]
    index = torch.tensor(
        [0 if r in late else (1 if late else 0) + early.index(r) for r in range(len(variants))],
    )
    joined = [
        tuple(
            torch.cat(kv, dim=0).index_select(0, index.to(kv[0].device))  # (rows, h_kv, kv, d)
            for kv in zip(*layer, strict=True)
        )
        for layer in zip(*parts, strict=True)
    ]
    shared = split if early else n - 1
    return DynamicCache(ddp_cache_data=joined), shared


def whole_cache() -> Any:
    """An empty KV cache whose every layer keeps every position, so that a position's keys can
    be copied or sliced by its absolute index: transformers' own cache for a model with
    sliding-window layers keeps only their last window - 1 positions. On those layers the
    window then lives in the mask alone (transformers builds it over all cached positions)."""
    from transformers import DynamicCache

    return DynamicCache()


def _prefix(model: Any, inputs: Any, stop: int, block: int = 0) -> Any:
    """Forward the first `stop` prompt positions (with the image inputs); returns the cache,
    every position kept at every layer (`whole_cache`).

    Positions inside a bidirectional block [0, `block`) read the whole block: when `stop` ends
    inside it, the block is computed whole and the cache cut back to `stop` positions."""
    run = block if 0 < stop < block else stop
    cut = {
        k: v[:, :run] if k in _PER_POSITION and isinstance(v, torch.Tensor) else v
        for k, v in inputs.items()
    }
    cache = model(**cut, past_key_values=whole_cache(), use_cache=True, logits_to_keep=1)
    cache = cache.past_key_values
    if run > stop:
        from transformers import DynamicCache

        kept = [(k[:, :, :stop], v[:, :, :stop]) for k, v in _layers(cache)]  # (b, h_kv, stop, d)
        cache = DynamicCache(ddp_cache_data=kept)
    return cache


def _chunk(
    model: Any,
    input_ids: torch.Tensor,  # (b, n)
    cache: Any,  # holds positions [0, start) for all b rows
    start: int,
    stop: int,
    positions: torch.Tensor,  # (1, n) or (3, 1, n)
) -> None:
    """Extend `cache` with text-only prompt positions [start, stop), at their own positions."""
    b = input_ids.shape[0]
    pos = positions[..., start:stop]
    pos = pos.expand(b, -1) if pos.dim() == 2 else pos.expand(-1, b, -1)  # (b, q) | (3, b, q)
    model(
        input_ids=input_ids[:, start:stop],
        attention_mask=torch.ones(b, stop, dtype=torch.long, device=input_ids.device),
        position_ids=pos.to(input_ids.device),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )


def _layers(cache: Any, repeat: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values), each (b, h_kv, kv, d) as they are, or new tensors holding
    `repeat` copies of the batch, (b * repeat, h_kv, kv, d)."""
    if repeat is None:
        return [(k, v) for k, v, *_ in cache]
    return [(k.repeat(repeat, 1, 1, 1), v.repeat(repeat, 1, 1, 1)) for k, v, *_ in cache]


def _positions(handle: Handle, prompt: Prompt) -> torch.Tensor:
    """Position ids of the one-row prompt (`TokenRoles.positions`): (1, n), or (3, 1, n) for
    multimodal rotary positions."""
    return handle.roles.positions(handle.model, prompt.inputs)


def chunk_start(handle: Handle, prompt: Prompt, split: int) -> int:
    """Where a chunk of the one-row prompt that should start at `split` may start: `split`, or
    0 when `split` cuts a block of positions that read later ones too (`TokenRoles.
    cuts_bidirectional_block`: PaliGemma's prefix-LM, a Gemma 3 image)."""
    return 0 if handle.roles.cuts_bidirectional_block(prompt.inputs, split) else split


def _repeat_prompt(prompt: Prompt, count: int) -> Prompt:
    """The one-row prompt as `count` identical rows (every tensor input repeated on dim 0: for
    every family that is one copy of the row, or of its image's patches or tiles, per row)."""
    from vlmflow.models.loading import Prompt

    inputs = {
        k: v.repeat(count, *([1] * (v.dim() - 1))) if isinstance(v, torch.Tensor) else v
        for k, v in prompt.inputs.items()
    }
    layout = PromptLayout(prompt.layout.codes.repeat(count, 1), prompt.layout.images * count)
    return Prompt(inputs, layout, prompt.texts * count)


def _cut(handle: Handle, new: torch.Tensor, kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """(b, new) padded generations -> per row (new_r,), up to and including the first EOS, as
    a batch-1 `generate()` stops."""
    eos = handle.eos_ids(kwargs)
    out = []
    for row in new:
        ids = row.tolist()
        end = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
        out.append(row[:end].clone())
    return out


def _result(s: Any, capture: Capture | None) -> CaptureResult | None:
    return s.capture if capture is not None else None
