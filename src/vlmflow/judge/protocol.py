"""What a judge answers: object lists, matched pairs and counts, independent of the backend.

The paper compares a reference description (the model's original answer) with a candidate (its
answer under knockout): objects in both are true positives, objects only the reference mentions
are false negatives (dropped), objects only the candidate mentions are false positives
(hallucinated). Every backend returns the lists and the matches; the counts and scores are
computed here, in code, never parsed out of a model's prose.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vlmflow.errors import VlmflowError


class JudgeReplyError(VlmflowError):
    """A backend answered, but not with a usable verdict (malformed JSON, missing fields)."""

    def __init__(self, message: str, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw


@dataclass(frozen=True)
class Match:
    """One reference object matched to one candidate object (a true positive)."""

    reference: str
    candidate: str
    score: float = 1.0
    reason: str = ""


@dataclass(frozen=True)
class Verdict:
    """The objects of both texts and how they match; scores follow from these in code.

    Empty denominators: when neither text names an object, precision = recall = 1; when only
    one side does, the empty ratio is 0 (a candidate that names nothing has recall and F1 0, as
    the paper reports for image -> query knockout).
    """

    reference_objects: tuple[str, ...]
    candidate_objects: tuple[str, ...]
    matches: tuple[Match, ...]
    backend: str
    model: str
    prompt_version: str
    rationale: str = ""
    cached: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        ref, cand = set(self.reference_objects), set(self.candidate_objects)
        used_ref = [m.reference for m in self.matches]
        used_cand = [m.candidate for m in self.matches]
        if len(set(used_ref)) != len(used_ref) or len(set(used_cand)) != len(used_cand):
            raise ValueError("matches must pair each object at most once")
        if not set(used_ref) <= ref or not set(used_cand) <= cand:
            raise ValueError("matches must pair objects from the two lists")

    @property
    def tp(self) -> int:
        return len(self.matches)

    @property
    def fn(self) -> int:
        return len(self.reference_objects) - self.tp

    @property
    def fp(self) -> int:
        return len(self.candidate_objects) - self.tp

    @property
    def missing(self) -> tuple[str, ...]:
        """Reference objects the candidate dropped (false negatives)."""
        used = {m.reference for m in self.matches}
        return tuple(o for o in self.reference_objects if o not in used)

    @property
    def hallucinated(self) -> tuple[str, ...]:
        """Candidate objects the reference does not mention (false positives)."""
        used = {m.candidate for m in self.matches}
        return tuple(o for o in self.candidate_objects if o not in used)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float(self.fn == 0)

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float(self.fp == 0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Everything, counts and scores included (what `--json` prints and the cache stores)."""
        data = asdict(self)
        data["matches"] = [asdict(m) for m in self.matches]
        data["reference_objects"] = list(self.reference_objects)
        data["candidate_objects"] = list(self.candidate_objects)
        for name in ("tp", "fp", "fn", "precision", "recall", "f1", "missing", "hallucinated"):
            value = getattr(self, name)
            data[name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], cached: bool = False) -> Verdict:
        return cls(
            reference_objects=tuple(data["reference_objects"]),
            candidate_objects=tuple(data["candidate_objects"]),
            matches=tuple(Match(**m) for m in data["matches"]),
            backend=data["backend"],
            model=data["model"],
            prompt_version=data["prompt_version"],
            rationale=data.get("rationale", ""),
            cached=cached,
        )


@dataclass(frozen=True)
class Failure:
    """A comparison that produced no verdict, kept as an error and never counted as zeros."""

    reference: str
    candidate: str
    backend: str
    error: str
    raw: str = ""


class Backend(abc.ABC):
    """A judge: extracts objects from two texts and matches them.

    `name`, `model` and `prompt_version` identify its answers in the cache: change any of them
    (a new model, a revised prompt or rule set) and old verdicts are no longer reused.
    """

    name: str = "backend"
    model: str = ""
    prompt_version: str = ""

    @abc.abstractmethod
    def compare(self, reference: str, candidate: str) -> Verdict:
        """Objects of both texts and their one-to-one matches."""

    @abc.abstractmethod
    def mentions(self, text: str, objects: Sequence[str]) -> tuple[bool, ...]:
        """For each object name: does `text` mention that physical object (or a kind of it)?

        This is the question the paper's raters answered (Table A1), so the agreement harness
        asks it of every backend.
        """

    def verdict(
        self,
        reference_objects: Sequence[str],
        candidate_objects: Sequence[str],
        matches: Sequence[Match],
        rationale: str = "",
    ) -> Verdict:
        return Verdict(
            reference_objects=tuple(reference_objects),
            candidate_objects=tuple(candidate_objects),
            matches=tuple(matches),
            backend=self.name,
            model=self.model,
            prompt_version=self.prompt_version,
            rationale=rationale,
        )


def greedy_matches(scores: dict[tuple[str, str], float], threshold: float) -> list[Match]:
    """One-to-one matches, best score first (ties: list order), keeping scores >= threshold."""
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    used_ref: set[str] = set()
    used_cand: set[str] = set()
    matches = []
    for (ref, cand), score in ranked:
        if score < threshold or ref in used_ref or cand in used_cand:
            continue
        used_ref.add(ref)
        used_cand.add(cand)
        matches.append(Match(ref, cand, round(score, 4)))
    return matches
