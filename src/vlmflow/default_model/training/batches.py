"""Training batches: which scenes and which questions each step asks, a pure function of
(seed, step)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vlmflow.default_model.training.config import ANSWERS, CAPTION_PROMPT, TrainConfig
from vlmflow.default_model.training.features import FeatureCache

if TYPE_CHECKING:
    from vlmflow.scenes.describe import Described
    from vlmflow.scenes.questions import Question


@dataclass(frozen=True)
class Example:
    scene: int  # index into the feature cache
    question: str
    answer: str
    followup: bool = False  # asked as a second user turn after the describe prompt
    more: tuple[tuple[str, str], ...] = ()  # (question, answer) turns after the first answer
    alone: bool = False  # every turn sees the image but no other turn (the check phase)


def examples_for_step(cache: FeatureCache, config: TrainConfig, step: int) -> list[Example]:
    """The batch of language-model step `step` (counted from the end of the alignment phase):
    a pure function of (seed, step), so resuming repeats nothing."""
    from vlmflow.scenes import QUESTION_CATEGORIES
    from vlmflow.scenes.describe import Placed
    from vlmflow.scenes.questions import open_questions

    per_epoch = len(cache) // config.batch_size
    epoch, slot = divmod(step, per_epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(len(cache))
    picks = order[slot * config.batch_size : (slot + 1) * config.batch_size]
    rng = np.random.default_rng([config.seed, step, 1])
    quiz = config.steps + config.focus_steps
    if config.check_steps and step >= config.check_start - config.align_steps:
        return [check_example(cache, config, int(i), rng, k) for k, i in enumerate(picks)]
    if (config.quiz_steps or config.where_steps) and step >= quiz:  # the quiz and where phases
        where = config.where_steps > 0 and step >= quiz + config.quiz_steps
        captions = config.where_caption_fraction if where else config.quiz_caption_fraction
        empty = config.where_empty_fraction if where else 0.0
        return [
            quiz_example(cache, config, int(i), rng, k, captions, empty)
            for k, i in enumerate(picks)
        ]
    focus = step >= config.steps
    captions = config.focus_caption_fraction if focus else config.caption_fraction
    weight = dict(zip(QUESTION_CATEGORIES, config.focus_weights, strict=True))
    out = []
    for i, index in enumerate(picks):
        record = cache.scenes[int(index)]
        if i < round(captions * config.batch_size):
            out.append(Example(int(index), CAPTION_PROMPT, record["description"]))
            continue
        questions = record["questions"]
        if not focus:
            text, answer, _ = questions[int(rng.integers(len(questions)))]
            out.append(Example(int(index), text, ANSWERS[answer]))
            continue
        draw = rng.random()
        followup = bool(rng.random() < config.focus_followup_fraction)
        if draw < config.focus_open_fraction:
            pairs = open_questions([Placed(n, p) for n, p in record["objects"]])
            text, reply = pairs[int(rng.integers(len(pairs)))]
            out.append(Example(int(index), text, reply, followup))
            continue
        odds = np.array([weight[category] for _, _, category in questions], dtype=np.float64)
        text, answer, _ = questions[int(rng.choice(len(questions), p=odds / odds.sum()))]
        out.append(Example(int(index), text, ANSWERS[answer], followup))
    return out


def quiz_example(
    cache: FeatureCache,
    config: TrainConfig,
    index: int,
    rng: np.random.Generator,
    slot: int,
    captions: float,
    empty: float = 0.0,
) -> Example:
    """A caption (the first `captions` share of a batch's slots) or a quiz: `quiz_turns`
    questions about scene `index` drawn from two fresh MME-style question sets (an `empty`
    share of their position "no" questions moved to an empty cell) and its short-answer
    questions."""
    from vlmflow.scenes.describe import Placed
    from vlmflow.scenes.questions import open_questions

    record = cache.scenes[index]
    if slot < round(captions * config.batch_size):
        return Example(index, CAPTION_PROMPT, record["description"])
    objects = [Placed(n, p) for n, p in record["objects"]]
    pool = yes_no_pool(objects, config.focus_weights, 2, rng, empty)
    # a short-answer question weighs `focus_open_fraction` of the mean category's weight
    for text, reply in open_questions(objects):
        pool[text] = (reply, config.focus_open_fraction * sum(config.focus_weights) / 4)
    (first, answer), *more = draw_turns(pool, config.quiz_turns, rng)
    followup = bool(rng.random() < config.quiz_followup_fraction)
    return Example(index, first, answer, followup, tuple(more))


def check_example(
    cache: FeatureCache, config: TrainConfig, index: int, rng: np.random.Generator, slot: int
) -> Example:
    """A caption (the first `check_caption_fraction` of a batch's slots) or a check: up to
    `check_questions` yes/no questions about scene `index`, drawn by `check_weights` from four
    fresh MME-style question sets, each to be answered as if asked alone."""
    from vlmflow.scenes.describe import Placed

    record = cache.scenes[index]
    if slot < round(config.check_caption_fraction * config.batch_size):
        return Example(index, CAPTION_PROMPT, record["description"])
    objects = [Placed(n, p) for n, p in record["objects"]]
    # four sets: several position and count pairs per image
    pool = yes_no_pool(objects, config.check_weights, 4, rng)
    (first, answer), *more = draw_turns(pool, config.check_questions, rng)
    return Example(index, first, answer, more=tuple(more), alone=True)


def yes_no_pool(
    objects: Sequence[Described],
    weights: tuple[float, float, float, float],
    sets: int,
    rng: np.random.Generator,
    empty: float = 0.0,
) -> dict[str, tuple[str, float]]:
    """Question -> (answer, sampling weight by category) over `sets` fresh MME-style question
    sets, an `empty` share of position "no" questions moved to an empty cell."""
    from vlmflow.scenes import QUESTION_CATEGORIES
    from vlmflow.scenes.questions import ask
    from vlmflow.scenes.rng import StableRandom

    weight = dict(zip(QUESTION_CATEGORIES, weights, strict=True))
    pool: dict[str, tuple[str, float]] = {}
    for _ in range(sets):
        for q in ask(objects, StableRandom(int(rng.integers(2**31)))):
            if empty and q.category == "position" and q.answer == "no" and rng.random() < empty:
                q = empty_cell_question(objects, rng) or q
            pool[q.text] = (ANSWERS[q.answer], weight[q.category])
    return pool


def draw_turns(
    pool: dict[str, tuple[str, float]], limit: int, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """Up to `limit` distinct (question, answer) pairs from `pool` (question -> (answer,
    sampling weight)), drawn without replacement by weight."""
    texts = list(pool)
    odds = np.array([pool[t][1] for t in texts], dtype=np.float64)
    size = min(limit, int((odds > 0).sum()))
    take = rng.choice(len(texts), size=size, replace=False, p=odds / odds.sum())
    return [(texts[int(t)], pool[texts[int(t)]][0]) for t in take]


def empty_cell_question(objects: Sequence[Described], rng: np.random.Generator) -> Question | None:
    """A position question about a present type at a cell no object holds (None if none is free)."""
    from vlmflow.scenes.layout import POSITIONS
    from vlmflow.scenes.questions import Question, position_text

    cells = [p for p in POSITIONS if all(o.position != p for o in objects)]
    if not cells:
        return None
    names = sorted({o.name for o in objects})
    name, cell = names[int(rng.integers(len(names)))], cells[int(rng.integers(len(cells)))]
    return Question(position_text(name, cell), "no", "position")


def grounding_scenes_for_step(cache: FeatureCache, config: TrainConfig, step: int) -> list[int]:
    """Extra scenes for the cheap grounding/position losses (projector only, no language model).

    The alignment phase has no text batch, so it takes `batch_size` more of them.
    """
    rng = np.random.default_rng([config.seed, step, 2])
    wanted = config.grounding_batch + (config.batch_size if step < config.align_steps else 0)
    count = min(wanted, len(cache))
    return [int(i) for i in rng.choice(len(cache), size=count, replace=False)]
