"""A model's quality on the scene world: object precision/recall and MME-style yes/no accuracy.

`evaluate(handle)` asks the model to describe each fixed scene and to answer its eight yes/no
questions, then scores the answers against the scene's exact ground truth:

- **Objects** (type level): the object types a description names (`mentioned_objects`: names,
  plurals and synonyms of the closed vocabulary) against the distinct types in the scene. A type
  counts once per scene, whatever its count: "an apple" for a scene with two apples is a true
  positive, and "three apples" is not penalised; counting is what the count questions measure.
  TP / FP / FN are summed over scenes and precision, recall and F1 are micro-averaged from
  the sums (0 where a denominator is 0, so a model that says nothing scores 0, not undefined).
  The match is lexical and ignores negation ("no dog" names a dog), like the training-time
  check, so the numbers compare with the training log; pass `extract` to change it.
- **Yes/no**: an answer is its first word, "yes" or "no" ("Yes.", "no, ..." ...); any other
  reply is wrong and counted as unparsed. ACC is the fraction of questions right; ACC+ is the
  fraction of (scene, category) pairs with both questions right (MME's definition: a model that
  always says "yes" gets ACC 0.5 and ACC+ 0); the score of a category is 100 * (ACC + ACC+),
  0-200, and the total score is their sum over the categories, 0-800 for four, as MME sums
  its subtasks.

Decoding is greedy, prompts are left-padded into batches. Questions are asked as they are
written (`QUESTION_PLAIN`), the form the default model was trained on; `QUESTION_HINTED`
appends "Answer yes or no." for general chat models that otherwise reply in sentences.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from vlmflow.defaults import DEFAULT_PROMPT
from vlmflow.scenes.questions import QUESTION_CATEGORIES
from vlmflow.scenes.scene import Scene
from vlmflow.scenes.vocabulary import mentioned_objects

QUESTION_PLAIN = "{question}"
QUESTION_HINTED = "{question} Answer yes or no."

_FIRST_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")


def parse_yes_no(reply: str) -> str | None:
    """The reply's first word when it is "yes" or "no", else None (unparsed, counted wrong).

    Leading punctuation, markup and case are ignored ("**Yes**.", "no, there is not"); a
    hyphenated or longer word is not an answer ("no-one", "yesterday", "None").
    """
    match = _FIRST_WORD.search(reply.lower())
    if match is None:
        return None
    word = match.group(0)
    return word if word in ("yes", "no") else None


@dataclass(frozen=True)
class AnswerRecord:
    """One yes/no question, its right answer and what the model replied."""

    text: str  # the question as written in the scene (without the prompt template)
    category: str
    answer: str  # "yes" or "no"
    reply: str  # the model's decoded reply

    @property
    def parsed(self) -> str | None:
        return parse_yes_no(self.reply)

    @property
    def correct(self) -> bool:
        return self.parsed == self.answer

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "category": self.category,
            "answer": self.answer,
            "reply": self.reply,
            "parsed": self.parsed,
            "correct": self.correct,
        }


@dataclass(frozen=True)
class SceneRecord:
    """A scene's description and answers, with its object-level TP / FP / FN."""

    scene: str  # scene id
    objects: tuple[str, ...]  # distinct object types in the scene (ground truth)
    description: str  # the model's reply to DEFAULT_PROMPT
    mentioned: tuple[str, ...]  # distinct types the description names
    questions: tuple[AnswerRecord, ...] = ()

    @property
    def true_positives(self) -> tuple[str, ...]:
        return tuple(n for n in self.mentioned if n in self.objects)

    @property
    def false_positives(self) -> tuple[str, ...]:
        return tuple(n for n in self.mentioned if n not in self.objects)

    @property
    def false_negatives(self) -> tuple[str, ...]:
        return tuple(n for n in self.objects if n not in self.mentioned)

    def to_json(self) -> dict[str, Any]:
        return {
            "scene": self.scene,
            "objects": list(self.objects),
            "description": self.description,
            "mentioned": list(self.mentioned),
            "tp": list(self.true_positives),
            "fp": list(self.false_positives),
            "fn": list(self.false_negatives),
            "questions": [q.to_json() for q in self.questions],
        }


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


@dataclass(frozen=True)
class ObjectScore:
    """Micro-averaged object precision / recall / F1 from summed type-level counts."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


@dataclass(frozen=True)
class YesNoScore:
    """ACC, ACC+ and the MME-style score of a set of questions grouped per (scene, category)."""

    questions: int
    correct: int
    unparsed: int
    said_yes: int  # replies parsed as "yes": shows a yes- or no-bias at a glance
    groups: int  # (scene, category) pairs
    groups_correct: int  # pairs with every question right

    @classmethod
    def of(cls, groups: Iterable[Sequence[AnswerRecord]]) -> YesNoScore:
        groups = [g for g in groups if g]
        answers = [a for g in groups for a in g]
        return cls(
            questions=len(answers),
            correct=sum(a.correct for a in answers),
            unparsed=sum(a.parsed is None for a in answers),
            said_yes=sum(a.parsed == "yes" for a in answers),
            groups=len(groups),
            groups_correct=sum(all(a.correct for a in g) for g in groups),
        )

    @property
    def accuracy(self) -> float:
        return _ratio(self.correct, self.questions)

    @property
    def acc_plus(self) -> float:
        return _ratio(self.groups_correct, self.groups)

    @property
    def score(self) -> float:
        """100 * (ACC + ACC+), 0-200, as MME scores a subtask."""
        return 100.0 * (self.accuracy + self.acc_plus)

    @property
    def yes_rate(self) -> float:
        return _ratio(self.said_yes, self.questions)

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "acc_plus": self.acc_plus,
            "score": self.score,
            "questions": self.questions,
            "correct": self.correct,
            "unparsed": self.unparsed,
            "yes_rate": self.yes_rate,
        }


@dataclass(frozen=True)
class SceneEvaluation:
    """Per-scene records and the aggregates computed from them (see the module docstring)."""

    records: tuple[SceneRecord, ...]
    objects: ObjectScore
    yes_no: YesNoScore  # every question; ACC+ over all (scene, category) pairs
    categories: Mapping[str, YesNoScore]  # in QUESTION_CATEGORIES order
    settings: Mapping[str, Any] = field(default_factory=dict)  # model, prompts, timing

    @classmethod
    def from_records(
        cls, records: Iterable[SceneRecord], settings: Mapping[str, Any] | None = None
    ) -> SceneEvaluation:
        """Aggregate per-scene records; all arithmetic lives here, so it is testable alone."""
        records = tuple(records)
        objects = ObjectScore(
            tp=sum(len(r.true_positives) for r in records),
            fp=sum(len(r.false_positives) for r in records),
            fn=sum(len(r.false_negatives) for r in records),
        )
        seen = {q.category for r in records for q in r.questions}
        names = [c for c in QUESTION_CATEGORIES if c in seen] + sorted(
            seen - set(QUESTION_CATEGORIES)
        )
        by_category = {
            c: [tuple(q for q in r.questions if q.category == c) for r in records] for c in names
        }
        return cls(
            records=records,
            objects=objects,
            yes_no=YesNoScore.of(g for groups in by_category.values() for g in groups),
            categories={c: YesNoScore.of(groups) for c, groups in by_category.items()},
            settings=dict(settings or {}),
        )

    @property
    def mme_score(self) -> float:
        """Sum of the per-category scores (0-200 each), as MME totals its subtasks."""
        return sum(s.score for s in self.categories.values())

    def to_json(self) -> dict[str, Any]:
        """The aggregates (records go to JSON lines separately, see `SceneRecord.to_json`)."""
        return {
            **self.settings,
            "scenes": len(self.records),
            "objects": self.objects.to_json(),
            # overall: no "score" of its own, the total is mme_score (sum over categories)
            "yes_no": {k: v for k, v in self.yes_no.to_json().items() if k != "score"},
            "categories": {c: s.to_json() for c, s in self.categories.items()},
            "mme_score": self.mme_score,
        }


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _generate(
    handle: Any,
    items: Sequence[tuple[Any, str]],
    max_new_tokens: int,
    batch_size: int,
    after_batch: Callable[[int], None] = lambda done: None,
) -> list[str]:
    """Greedy replies to (image, text) prompts, `batch_size` left-padded prompts at a time.

    `after_batch(n)` is called with the number of replies so far, to move a progress bar.
    """
    tokenizer = handle.processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    replies: list[str] = []
    for chunk in _chunks(items, batch_size):
        prompt = handle.prepare_batch([([image], text) for image, text in chunk])
        ids = handle.generate(prompt, max_new_tokens=max_new_tokens, pad_token_id=pad)
        replies.extend(handle.decode(ids))
        after_batch(len(replies))
    return replies


def evaluate(
    handle: Any,
    scenes: Sequence[Scene] | None = None,
    *,
    max_new_tokens: int = 96,
    answer_tokens: int = 4,
    batch_size: int = 8,
    question_template: str = QUESTION_PLAIN,
    extract: Callable[[str], Sequence[str]] = mentioned_objects,
    progress: bool = True,
) -> SceneEvaluation:
    """Describe and question every scene (default: the 80 fixed ones) and score the replies.

    `max_new_tokens` bounds a description (the longest fixed reference is 64 tokens of the
    default model); `answer_tokens` bounds a yes/no reply, whose first word is all that counts.
    `question_template` turns a question into the prompt (`QUESTION_PLAIN` or
    `QUESTION_HINTED`); `extract` lists the object types a description names. `progress`
    shows a bar with ETA on stderr.
    """
    from tqdm import tqdm

    from vlmflow.scenes.fixed import fixed_set

    if batch_size < 1 or max_new_tokens < 1 or answer_tokens < 1:
        raise ValueError("batch_size, max_new_tokens and answer_tokens must be >= 1")
    scenes = fixed_set() if scenes is None else list(scenes)
    start = time.perf_counter()
    records: list[SceneRecord] = []
    with tqdm(
        total=len(scenes), unit="scene", desc="evaluate", disable=not progress, leave=False
    ) as bar:
        # A chunk of scenes at a time: its descriptions in one batch, then its questions; the
        # bar moves as each scene's last question is answered, so its ETA holds.
        for chunk in _chunks(scenes, batch_size):
            descriptions = _generate(
                handle, [(s.image, DEFAULT_PROMPT) for s in chunk], max_new_tokens, batch_size
            )
            asked = [
                (s.image, question_template.format(question=q.text))
                for s in chunk
                for q in s.questions
            ]
            ends = list(accumulate(len(s.questions) for s in chunk))
            shown = bar.n

            def advance(answered: int, first: int = shown, ends: list[int] = ends) -> None:
                bar.update(first + sum(e <= answered for e in ends) - bar.n)

            replies = iter(_generate(handle, asked, answer_tokens, batch_size, advance))
            for scene, text in zip(chunk, descriptions, strict=True):
                answers = tuple(
                    AnswerRecord(q.text, q.category, q.answer, next(replies))
                    for q in scene.questions
                )
                mentioned = tuple(dict.fromkeys(extract(text)))
                records.append(SceneRecord(scene.id, scene.names, text, mentioned, answers))
            bar.update(len(records) - bar.n)  # scenes without questions
    seconds = time.perf_counter() - start
    settings = {
        "model": str(handle.name),
        "prompt": DEFAULT_PROMPT,
        "question_template": question_template,
        "max_new_tokens": max_new_tokens,
        "answer_tokens": answer_tokens,
        "batch_size": batch_size,
        "seconds": round(seconds, 2),
        "seconds_per_scene": round(seconds / len(scenes), 3) if scenes else 0.0,
    }
    return SceneEvaluation.from_records(records, settings)
