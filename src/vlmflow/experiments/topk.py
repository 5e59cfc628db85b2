"""`topk`: generated tokens see only the top-k% most attended image tokens per layer (Fig. 9, A7).

Per image: the baseline description is generated once with the attention rows over the image
captured at every layer. At each layer the image positions are ranked by the attention they
received from the baseline's generated tokens (capture steps >= 1, whose queries are generated
positions; step 0's query is the last prompt position and is left out), summed over steps and
averaged over heads; a one-token baseline has no generated query, and the last prompt
position's attention ranks them. Scores and ties are `vlmflow.compress`'s ranking
(`compression.context.image_scores` with "sum", `top_indices`): equal scores keep the earlier
image position. The description is then generated again with generated-token queries
blocked from every image position outside that layer's top `round(k * n)`, and judged against
the baseline.

What counts as an image token: every position of the image role, separators included
(LLaVA-NeXT's row newlines, Qwen2-VL's vision start/end, InternVL's and Idefics3's tile
markers). They are part of the image span the model reads, they can draw much of the
attention, and `vlmflow.compress` ranks the same set, so F1 vs k here describes exactly the
contexts that image re-prompting keeps.

As with `image-generated` knockout, the first generated token is predicted at the last prompt
position (a query position) and still sees the whole image. At k = 1 nothing is blocked, no
knockout is installed, and the description is the baseline's token for token.

Setting ids: `k=0.01`, `k=0.05`, ..., `k=1.0` (the configured fractions, in order).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlmflow.defaults import DEFAULT_PROMPT
from vlmflow.experiments import description, protocol
from vlmflow.experiments.knockout import JUDGES, Judge
from vlmflow.experiments.prompts import check_question, item_prompt
from vlmflow.sources import ImageRef, ImageSource

if TYPE_CHECKING:
    from vlmflow.attention.capture import CaptureResult
    from vlmflow.models.loading import Handle, Prompt

DEFAULT_KS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def setting_id(k: float) -> str:
    return f"k={float(k)!r}"


@dataclass(frozen=True)
class TopKConfig:
    """Options of `topk`: the kept fractions `k` (0 <= k <= 1), generation and judge."""

    k: tuple[float, ...] = DEFAULT_KS
    max_new_tokens: int = 64
    prompt: str = DEFAULT_PROMPT
    question: str | None = None  # each image's own question instead (experiments.prompts)
    judge: str = "offline"
    judge_cache: bool = True
    batch: int = 8  # k values generated together (`generate_variants`); 1: one by one

    def __post_init__(self) -> None:
        check_question(self.question)
        if self.batch < 1:
            raise ValueError(f"batch {self.batch} must be at least 1")
        if not self.k:
            raise ValueError("k is empty: give at least one fraction of image tokens to keep")
        if any(not 0.0 <= float(k) <= 1.0 for k in self.k):
            raise ValueError(f"k {list(self.k)} must be fractions in [0, 1] (0.05 keeps 5%)")
        if len({setting_id(k) for k in self.k}) != len(self.k):
            raise ValueError(f"k {list(self.k)} repeats a value")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} must be at least 1")
        if self.judge not in JUDGES:
            raise ValueError(f"judge {self.judge!r} is not one of {', '.join(JUDGES)}")


@dataclass(frozen=True)
class Ranking:
    """Per layer, the item's image positions ordered by attention from generated tokens."""

    positions: tuple[int, ...]  # every image position of the prompt, in prompt order
    order: dict[int, tuple[int, ...]]  # layer -> positions, most attended first

    def blocked(self, k: float) -> dict[int, list[int]]:
        """layer -> image positions outside the top `round(k * n)`; layers with none left out."""
        keep = round(k * len(self.positions))
        out = {layer: sorted(ranked[keep:]) for layer, ranked in self.order.items()}
        return {layer: positions for layer, positions in out.items() if positions}


def rank_image_tokens(capture: CaptureResult, positions: Sequence[int]) -> Ranking:
    """Rank image positions per layer by the attention the generated tokens paid them.

    The scores and the order are `vlmflow.compress`'s (`image_scores` with "sum",
    `top_indices`), so top-k here keeps exactly the image tokens a compressed context keeps:
    summed over the generated tokens' rows (for a one-token description, the last prompt
    position's row), heads averaged; equal scores keep the earlier image position. Raises
    RuntimeError when `capture` holds other image positions than `positions`.
    """
    from vlmflow.compression.context import image_scores, top_indices

    captured = [int(p) for p in capture.image_positions[0].tolist()]
    if captured != list(positions):
        raise RuntimeError("captured image positions differ from the prompt's image positions")
    order: dict[int, tuple[int, ...]] = {}
    for layer, rows in capture.image_rows.items():  # rows: (steps, b, n_image)
        score = image_scores(rows[:, 0], "sum")  # (n_image,)
        ranked = top_indices(score, len(positions)).tolist()  # (n_image,) most attended first
        order[layer] = tuple(int(positions[i]) for i in ranked)
    return Ranking(tuple(positions), order)


class TopK:
    """F1 of descriptions whose generated tokens see only each layer's top-k image tokens."""

    name = "topk"
    needs_model = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        opts = protocol.as_tuples(dict(options or {}), "k")
        if isinstance(opts.get("k"), tuple):
            # ints as floats (one run id for 1 and 1.0); anything else is left to the type check
            opts["k"] = tuple(
                float(k) if isinstance(k, int) and not isinstance(k, bool) else k for k in opts["k"]
            )
        self.options = protocol.parse_config(TopKConfig, opts, self.name)
        self.config = protocol.result_config(self.options)
        self.judge = Judge(self.options.judge, self.options.judge_cache)
        self._memo = protocol.ItemMemo()
        self._by_id = {setting_id(k): float(k) for k in self.options.k}

    def items(self, source: ImageSource) -> Iterable[protocol.WorkItem]:
        return protocol.image_items(source)

    def settings(self, item: protocol.WorkItem) -> Sequence[str]:
        return list(self._by_id)

    def run(
        self, handle: Any, item: protocol.WorkItem, setting: str, context: protocol.Context
    ) -> protocol.Result:
        k = self._by_id[setting]
        prompt = self._prompt(handle, item)
        baseline, ranking = self._memo.get(
            handle, item, "baseline", lambda: self._baseline(handle, prompt)
        )
        pending = [s for s in context.pending or (setting,) if s in self._by_id]
        if setting not in pending:
            pending.insert(0, setting)
        if not self._memo.has(handle, item, ("k", setting)):
            variants = [_knockouts(ranking, self._by_id[s]) for s in pending]
            generations = description.describe_variants(
                handle, prompt, self.options.max_new_tokens, variants, self.options.batch
            )
            for name, made in zip(pending, generations, strict=True):
                self._memo.put(handle, item, ("k", name), made)
        generation: description.Generation = self._memo.get(handle, item, ("k", setting), _missing)
        verdict = self.judge.compare(baseline.text, generation.text)
        n_image = len(ranking.positions)
        return protocol.Result(
            metrics={
                **description.verdict_metrics(verdict),
                "k": k,
                "kept": round(k * n_image),
                "image_tokens": n_image,
            },
            payload={
                "description": generation.text,
                "ids": list(generation.ids),
                "reference": baseline.text,
                **description.verdict_payload(verdict),
            },
        )

    def _prompt(self, handle: Handle, item: protocol.WorkItem) -> Prompt:
        ref: ImageRef = item.payload["image"]
        return self._memo.get(
            handle,
            item,
            "prompt",
            lambda: handle.prepare(
                ref.open(), item_prompt(self.options.prompt, self.options.question, ref)
            ),
        )

    def _baseline(self, handle: Handle, prompt: Prompt) -> tuple[description.Generation, Ranking]:
        from vlmflow.attention.capture import Capture

        capture = Capture.of(fractions=False, image_layers="all", dtype="float32")
        generation, result = description.describe(
            handle, prompt, self.options.max_new_tokens, (), capture
        )
        assert result is not None
        return generation, rank_image_tokens(result, prompt.layout.image_positions(0))


def _knockouts(ranking: Ranking, k: float) -> list[Any]:
    """The key-set knockout of fraction k; none when nothing is blocked (k = 1 is the baseline)."""
    from vlmflow.attention.knockout import Knockout

    blocked = ranking.blocked(k)
    return [Knockout.key_set(blocked, tgt="generated")] if blocked else []


def _missing() -> description.Generation:
    raise RuntimeError("the batch did not generate this setting")
