"""Answer tracing (Zhang et al., "Cross-modal Information Flow in Multimodal Large Language
Models", CVPR 2025, Sec. 3-4): how the probability of the model's own answer changes when
attention between two token groups is blocked over a window of layers, as the window slides.

Groups: `image` (the image span), `question` (the prompt positions after the image but the last:
the instruction and the chat template's closing tokens) and `last` (the last prompt position,
which predicts the first answer token, and, for answers of several tokens, the positions of the
answer tokens before the last, which predict the rest). Pairs: `image->last`,
`image->question`, `question->last`, and the control `last->last` (the last position's attention
to itself, which Zhang et al. draw beside the flows into the last position); each blocks
attention from the second group's queries to the first group's keys, at the layers of a window
`[s, s + w - 1]`, for every start `s`. With several answer tokens `last->last` blocks attention
among all of `last` (each position to itself and to the earlier ones of the group).

Mechanism: the prompt's roles are relabelled so that the last prompt position takes the
`generated` role, which is what `last` means here; then each pair is an ordinary `Knockout`
(`image -> generated`, `image -> query`, `query -> generated`, `generated -> generated`) and
every window is one row of a batch (`Knockout.rows`). The positions no row changes (the prefix
and the image, for every pair here) are computed once with batch 1 and their KV cache is copied
to every row; only the question, the last position and the answer tokens run per row. Forward
passes only: the answer is the model's greedy answer (its first `answer_tokens` tokens), read
once, then scored under teacher forcing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vlmflow.analysis import DEFAULT_PAIRS, PAIR_NAMES
from vlmflow.attention.knockout import Knockout
from vlmflow.attention.layers import Layers
from vlmflow.errors import VlmflowError
from vlmflow.roles import Role

if TYPE_CHECKING:
    from vlmflow.models.loading import Handle, Prompt

# pair name -> (source role, target role) in the relabelled prompt (last position: generated)
PAIRS: dict[str, tuple[Role, Role]] = dict(
    zip(
        PAIR_NAMES,
        [
            (Role.IMAGE, Role.GENERATED),
            (Role.IMAGE, Role.QUERY),
            (Role.QUERY, Role.GENERATED),
            (Role.GENERATED, Role.GENERATED),
        ],
        strict=True,
    )
)
# default window: 9% of the layers, rounded, at least one (a narrow window on any depth; the
# authors' released code blocks 9 layers centred on each layer of 32- and 40-layer models)
WINDOW_SHARE = 0.09


def default_window(num_layers: int) -> int:
    """9% of the layers, rounded, at least 1 (30 layers: 3; 32: 3; 80: 7)."""
    return max(1, round(WINDOW_SHARE * num_layers))


def window_starts(num_layers: int, window: int) -> list[int]:
    """Start layers of the windows `[s, s + window - 1]` that fit in the model (window 0: every
    layer, each an empty window)."""
    if window < 0 or window > num_layers:
        raise VlmflowError(f"trace window {window}: use 0-{num_layers} layers (0 blocks nothing)")
    return list(range(num_layers - max(window, 1) + 1))


@dataclass(frozen=True)
class Trace:
    """The answer's probability under each window knockout of each pair.

    `answer`: greedy answer token ids (1 to `answer_tokens`); `probability`: their joint
    probability without knockout (product over the answer tokens); `probabilities[pair]`: per
    start layer, the same under that pair's window knockout; `change[pair]`: relative change
    `(p - probability) / probability` per start layer (-1: the answer is gone; 0: no effect).
    """

    question: str
    answer: tuple[int, ...]
    answer_text: str
    probability: float
    window: int
    starts: tuple[int, ...]
    probabilities: dict[str, tuple[float, ...]]

    @property
    def change(self) -> dict[str, tuple[float, ...]]:
        p0 = self.probability
        return {k: tuple((p - p0) / p0 for p in v) for k, v in self.probabilities.items()}

    def to_json(self) -> dict[str, Any]:
        """The trace as JSON-able values (lists and floats), as the `trace` experiment stores it."""
        return {
            "question": self.question,
            "answer": list(self.answer),
            "answer_text": self.answer_text,
            "probability": self.probability,
            "window": self.window,
            "starts": list(self.starts),
            "probabilities": {k: list(v) for k, v in self.probabilities.items()},
        }


def trace(
    handle: Handle,
    image: Any,
    question: str,
    *,
    window: int | None = None,
    pairs: Sequence[str] = DEFAULT_PAIRS,
    answer_tokens: int = 1,
    knockout: Knockout | Sequence[Knockout] = (),
    batch: int = 16,
) -> Trace:
    """Trace the model's own answer to `question` about `image` (Zhang et al. CVPR 2025).

    `window`: layers per knockout window (default `default_window`: 9% of the layers, >= 1;
    0 blocks nothing, so every value equals `probability`); every start layer whose window fits
    is run. `pairs`: of PAIRS (default: the three flows, DEFAULT_PAIRS; add `last->last` for the
    control). `answer_tokens`: how many greedy answer tokens are scored (fewer
    when the answer ends earlier). `knockout`: standing knockouts applied in every row, the
    baseline included (over the relabelled roles, `generated` = the last position). `batch`:
    rows per forward pass; 1 runs each window on its own, with nothing shared (same values up
    to float rounding).

    Cost: one greedy pass for the answer, then `len(pairs) * starts + 1` rows of the question
    and answer positions only. Raises VlmflowError for an unknown or repeated pair, a window
    outside 0..num_layers, `answer_tokens` < 1 or `batch` < 1, and a prompt with no question
    position (the last prompt position must follow at least one other text position after the
    image).
    """
    for pair in pairs:
        if pair not in PAIRS:
            raise VlmflowError(f"unknown trace pair {pair!r}: choose from {', '.join(PAIRS)}")
    if len(set(pairs)) != len(pairs):
        raise VlmflowError(f"trace pairs {list(pairs)} repeat a pair: name each pair once")
    if answer_tokens < 1:
        raise VlmflowError(f"answer_tokens={answer_tokens}: score at least one answer token")
    if batch < 1:
        raise VlmflowError(f"batch={batch}: run at least one row per forward pass")
    prompt = handle.prepare(image, question)
    standing = [knockout] if isinstance(knockout, Knockout) else list(knockout)
    num_layers = handle.num_layers
    width = default_window(num_layers) if window is None else int(window)
    starts = window_starts(num_layers, width)
    marked = mark_last(prompt)
    answer = greedy_answer(handle, marked, standing, answer_tokens)
    variants: list[list[Knockout]] = [list(standing)]
    for pair in pairs:
        src, tgt = PAIRS[pair]
        for s in starts:
            extra = []
            if width > 0:
                layers = Layers(f"only:{s}-{s + width - 1}")
                extra = [Knockout(frozenset({src}), frozenset({tgt}), layers)]
            variants.append([*standing, *extra])
    logp = score_variants(handle, marked, variants, answer, batch)  # (rows, a)
    probs = logp.sum(dim=1).exp().tolist()
    out: dict[str, tuple[float, ...]] = {}
    for i, pair in enumerate(pairs):
        row = 1 + i * len(starts)
        out[pair] = tuple(probs[row : row + len(starts)])
    text = handle.decode(torch.tensor([answer]))[0]
    return Trace(prompt.texts[0], answer, text, probs[0], width, tuple(starts), out)


def mark_last(prompt: Prompt) -> Prompt:
    """The prompt with its last position relabelled `generated` (the group `last`)."""
    from vlmflow.models.layout import PromptLayout
    from vlmflow.models.loading import Prompt as PromptType

    codes = prompt.layout.codes.clone()  # (1, n)
    n = codes.shape[1]
    query = (codes[0, : n - 1] == int(Role.QUERY)).nonzero()
    if codes[0, -1] != int(Role.QUERY) or len(query) == 0:
        raise VlmflowError(
            "trace needs a question after the image: the prompt's last position must be text"
            " following at least one other text position after the image"
        )
    codes[0, -1] = int(Role.GENERATED)
    return PromptType(prompt.inputs, PromptLayout(codes, prompt.layout.images), prompt.texts)


def greedy_answer(
    handle: Handle, prompt: Prompt, knockouts: Sequence[Knockout], count: int
) -> tuple[int, ...]:
    """The first `count` greedy answer tokens under `knockouts` (up to and including EOS)."""
    import vlmflow
    from vlmflow.attention.batch import _cut

    with vlmflow.session(handle, prompt, knockout=list(knockouts)) as s:
        ids = s.generate(max_new_tokens=count)  # (1, new)
    return tuple(int(t) for t in _cut(handle, ids, {})[0].tolist())


def score_variants(
    handle: Handle,
    prompt: Prompt,
    variants: Sequence[Sequence[Knockout]],
    answer: Sequence[int],
    batch: int = 16,
) -> torch.Tensor:
    """(variants, a) float32 log-probabilities of the `a` answer tokens (teacher forced) at the
    positions that predict them, one row per variant (a list of knockouts, no `rows` set).

    The prompt positions before the first one any variant targets are computed once (batch 1,
    no knockout) and their cache copied to each row; rows that change only the last position
    share every position before it. `batch` 1 computes every row from position 0 on its own.
    """
    from transformers import DynamicCache

    from vlmflow.attention import backend
    from vlmflow.attention.batch import (
        _chunk,
        _layers,
        _positions,
        _prefix,
        chunk_start,
        first_changed,
    )

    model = handle.model
    n = prompt.layout.length
    codes = prompt.layout.codes[0]
    firsts = [min(first_changed(prompt.layout, v), n - 1) for v in variants]
    # late rows change only the last position: they share every position before it
    late = [r for r, f in enumerate(firsts) if f == n - 1]
    early = [r for r, f in enumerate(firsts) if f < n - 1]
    split = chunk_start(handle, prompt, min((firsts[r] for r in early), default=n - 1))
    if batch <= 1 or bool((codes[split:] == int(Role.IMAGE)).any()):
        split = 0
    answer_ids = torch.tensor([list(answer)], dtype=torch.long, device=handle.device)  # (1, a)
    out = torch.empty(len(variants), len(answer))
    outer = backend.ACTIVE.set(())  # the shared part runs plain, whatever encloses this call
    try:
        with torch.inference_mode():
            groups: list[tuple[list[int], Any, int]] = []
            if split == 0:
                groups.append((list(range(len(variants))), None, 0))
            else:
                base = _prefix(model, prompt.inputs, split)  # positions [0, split), batch 1
                if late:
                    shared = DynamicCache(ddp_cache_data=_layers(base, 1))
                    if split < n - 1:
                        positions = _positions(handle, prompt)
                        _chunk(model, prompt.input_ids, shared, split, n - 1, positions)
                    groups.append((late, shared, n - 1))
                if early:
                    groups.append((early, base, split))
            for rows, cache, start in groups:
                for i in range(0, len(rows), batch):
                    chunk = rows[i : i + batch]
                    part = [variants[r] for r in chunk]
                    out[chunk] = _score_rows(handle, prompt, part, answer_ids, cache, start)
    finally:
        backend.ACTIVE.reset(outer)
    return out


def _score_rows(
    handle: Handle,
    prompt: Prompt,
    variants: Sequence[Sequence[Knockout]],
    answer: torch.Tensor,  # (1, a)
    cache: Any,  # positions [0, split) for one row, or None (split 0)
    split: int,
) -> torch.Tensor:  # (rows, a) float32
    from transformers import DynamicCache

    import vlmflow
    from vlmflow.attention.batch import _layers, _positions, _repeat_prompt

    model = handle.model
    count = len(variants)
    n = prompt.layout.length
    a = int(answer.shape[1])
    rows = _repeat_prompt(prompt, count)
    knockouts = [ko.on_rows([r]) for r, v in enumerate(variants) for ko in v]
    positions = _positions(handle, prompt)  # (1, n) or (3, 1, n)
    device = handle.device
    with vlmflow.session(handle, rows, knockouts):
        if cache is None:
            out = model(**rows.inputs, use_cache=a > 1, logits_to_keep=1)
        else:
            own = DynamicCache(ddp_cache_data=_layers(cache, count))
            out = model(
                input_ids=rows.input_ids[:, split:],
                attention_mask=torch.ones(count, n, dtype=torch.long, device=device),
                position_ids=_expand(positions[..., split:n], count).to(device),
                past_key_values=own,
                use_cache=a > 1,
                logits_to_keep=1,
            )
        logits = [out.logits[:, -1, :].float()]  # (rows, V) predicting answer[0]
        if a > 1:
            after = positions[..., -1:] + torch.arange(1, a, device=positions.device)
            more = model(
                input_ids=answer[:, :-1].expand(count, -1),
                attention_mask=torch.ones(count, n + a - 1, dtype=torch.long, device=device),
                position_ids=_expand(after, count).to(device),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            logits.extend(more.logits[:, i, :].float() for i in range(a - 1))
    logp = torch.stack(logits, dim=1).log_softmax(dim=-1)  # (rows, a, V)
    target = answer.to(logp.device).expand(count, -1)[..., None]  # (rows, a, 1)
    return logp.gather(-1, target)[..., 0].cpu()


def _expand(pos: torch.Tensor, rows: int) -> torch.Tensor:
    """(1, q) or (3, 1, q) position ids -> (rows, q) or (3, rows, q)."""
    return pos.expand(rows, -1) if pos.dim() == 2 else pos.expand(-1, rows, -1)
