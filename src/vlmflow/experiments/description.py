"""Descriptions of an image under knockouts, and the judge's verdict on one as result fields.

What the `knockout`, `topk` and `localization` experiments share: a greedy description of a
one-row prompt under a session (paper Sec. 4.2 compares such descriptions object by object),
the same for several knockout variants in one batch, and a `Verdict` of `vlmflow.judge` turned
into flat metrics (table columns) and a payload (object lists and matches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmflow.attention.capture import Capture, CaptureResult
    from vlmflow.attention.knockout import Knockout
    from vlmflow.judge import Verdict
    from vlmflow.models.loading import Handle, Prompt


@dataclass(frozen=True)
class Generation:
    """One greedy description: the generated ids (EOS included when reached) and the text."""

    ids: tuple[int, ...]
    text: str


def describe(
    handle: Handle,
    prompt: Prompt,
    max_new_tokens: int,
    knockouts: Sequence[Knockout] = (),
    capture: Capture | None = None,
) -> tuple[Generation, CaptureResult | None]:
    """Greedy description of a one-row prompt under knockouts, with what `capture` asked for."""
    import vlmflow

    with vlmflow.session(handle, prompt, knockout=list(knockouts), capture=capture) as s:
        ids = s.generate(max_new_tokens=max_new_tokens)  # (1, new)
    generation = Generation(tuple(int(i) for i in ids[0].tolist()), handle.decode(ids)[0])
    return generation, (s.capture if capture is not None else None)


def describe_variants(
    handle: Handle,
    prompt: Prompt,
    max_new_tokens: int,
    variants: Sequence[Sequence[Knockout]],
    batch: int,
) -> list[Generation]:
    """Greedy descriptions of a one-row prompt under each variant (a knockout list), `batch`
    variants per `generate_variants` call: the same tokens as `describe` per variant, one
    shared prefill and one decode loop per batch. `batch` 1 runs them one by one."""
    if batch <= 1:
        return [describe(handle, prompt, max_new_tokens, v)[0] for v in variants]
    from vlmflow.attention.batch import generate_variants

    out: list[Generation] = []
    for start in range(0, len(variants), batch):
        run = generate_variants(handle, prompt, variants[start : start + batch], max_new_tokens)
        for ids in run.ids:  # (new,)
            text = handle.decode(ids.unsqueeze(0))[0]
            out.append(Generation(tuple(int(i) for i in ids.tolist()), text))
    return out


def verdict_metrics(verdict: Verdict) -> dict[str, Any]:
    """The counts and scores of a verdict as flat metrics (table columns on export)."""
    return {
        "tp": verdict.tp,
        "fp": verdict.fp,
        "fn": verdict.fn,
        "precision": verdict.precision,
        "recall": verdict.recall,
        "f1": verdict.f1,
    }


def verdict_payload(verdict: Verdict) -> dict[str, Any]:
    """The judge's object lists and matches: what a figure or a report needs to explain a score."""
    return {
        "reference_objects": list(verdict.reference_objects),
        "candidate_objects": list(verdict.candidate_objects),
        "matches": [[m.reference, m.candidate] for m in verdict.matches],
        "missing": list(verdict.missing),
        "hallucinated": list(verdict.hallucinated),
        "judge": f"{verdict.backend}:{verdict.model}",
    }
