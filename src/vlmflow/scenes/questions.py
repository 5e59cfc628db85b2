"""MME-style yes/no questions: per scene, one "yes" and one "no" in each of four categories.

Categories: existence (is there a dog?), count (are there exactly two dogs?), position (is there
a dog in the top left?) and category (is there an animal?). Pairs let an evaluation report
ACC (per question) and ACC+ (both questions of an image right) like MME. "No" questions are
chosen to be hard where possible: an absent type of a category that is present, a wrong count
off by one, a position held by another object.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from vlmflow.scenes.describe import Described, by_type, join_words
from vlmflow.scenes.layout import POSITIONS
from vlmflow.scenes.rng import StableRandom
from vlmflow.scenes.vocabulary import CATEGORIES, UNASKED_CATEGORIES, VOCABULARY, number_word

QUESTION_CATEGORIES = ("existence", "count", "position", "category")


@dataclass(frozen=True)
class Question:
    """A yes/no question about one scene, its right answer and its category."""

    text: str
    answer: str  # "yes" or "no"
    category: str  # one of QUESTION_CATEGORIES

    def to_json(self) -> dict[str, str]:
        return {"text": self.text, "answer": self.answer, "category": self.category}


def existence_text(name: str) -> str:
    return f"Is there {VOCABULARY[name].article} {name} in the image?"


def count_text(name: str, count: int) -> str:
    if count == 1:
        return f"Is there exactly one {name} in the image?"
    return f"Are there exactly {number_word(count)} {VOCABULARY[name].plural} in the image?"


def position_text(name: str, position: str) -> str:
    return f"Is there {VOCABULARY[name].article} {name} in the {position} of the image?"


def category_text(category: str) -> str:
    return f"Is there {CATEGORIES[category]} in the image?"


def ask(objects: Sequence[Described], rng: StableRandom) -> tuple[Question, ...]:
    """Eight questions: (yes, no) for existence, count, position and category, in that order."""
    if not objects:
        raise ValueError("questions need at least one object")
    counts = Counter(o.name for o in objects)
    present = list(counts)
    out: list[Question] = []

    # existence: a present type / an absent one, from a present category when possible
    out.append(Question(existence_text(rng.choice(present)), "yes", "existence"))
    absent = [n for n in VOCABULARY if n not in counts]
    present_categories = {VOCABULARY[n].category for n in present}
    near = [n for n in absent if VOCABULARY[n].category in present_categories]
    out.append(
        Question(
            existence_text(rng.choice(near if near and rng.chance(0.5) else absent)),
            "no",
            "existence",
        )
    )

    # count: the true count of a type (repeated types preferred) / off by one
    repeated = [n for n in present if counts[n] > 1]
    name = rng.choice(repeated if repeated and rng.chance(0.7) else present)
    out.append(Question(count_text(name, counts[name]), "yes", "count"))
    name = rng.choice(present)
    wrong = counts[name] + 1 if counts[name] == 1 or rng.chance(0.5) else counts[name] - 1
    out.append(Question(count_text(name, wrong), "no", "count"))

    # position: where an object is / a cell its type does not hold, preferably another's
    obj = rng.choice(objects)
    out.append(Question(position_text(obj.name, obj.position), "yes", "position"))
    name = rng.choice(present)
    held = {o.position for o in objects if o.name == name}
    others = [p for p in POSITIONS if p not in held and any(o.position == p for o in objects)]
    empty = [p for p in POSITIONS if not any(o.position == p for o in objects)]
    cells = others if others and (not empty or rng.chance(0.7)) else empty
    out.append(Question(position_text(name, rng.choice(cells)), "no", "position"))

    # category: a present category (clear ones preferred) / an absent clear one
    clear = [c for c in CATEGORIES if c not in UNASKED_CATEGORIES]
    shown = [c for c in clear if c in present_categories] or sorted(present_categories)
    out.append(Question(category_text(rng.choice(shown)), "yes", "category"))
    missing = [c for c in clear if c not in present_categories]
    out.append(Question(category_text(rng.choice(missing)), "no", "category"))
    return tuple(out)


def true_answer(objects: Sequence[Described], question: Question) -> str:
    """Re-derive a question's answer from the objects alone (a check on `ask`)."""
    counts = Counter(o.name for o in objects)
    text = question.text
    for name in VOCABULARY:
        if text == existence_text(name):
            return "yes" if counts[name] else "no"
        for n in range(1, 10):
            if text == count_text(name, n):
                return "yes" if counts[name] == n else "no"
        for position in POSITIONS:
            if text == position_text(name, position):
                hit = any(o.name == name and o.position == position for o in objects)
                return "yes" if hit else "no"
    for category in CATEGORIES:
        if text == category_text(category):
            hit = any(VOCABULARY[o.name].category == category for o in objects)
            return "yes" if hit else "no"
    raise ValueError(f"not a scene question: {text!r}")


def open_questions(objects: Sequence[Described]) -> list[tuple[str, str]]:
    """Short-answer (question, answer) pairs for training: where each type is, how many.

    A 9-way or counted answer carries more about binding a type to its cells than a yes/no
    one, which is why training asks these too.
    """
    out = []
    for name, members in by_type(objects).items():
        kind = VOCABULARY[name]
        where = [m.position for m in members]
        places = join_words([f"in the {p}" for p in where])
        ask = f"Where is the {name}" if len(where) == 1 else f"Where are the {kind.plural}"
        out.append((f"{ask} in the image?", f"{places[0].upper()}{places[1:]}."))
        word = number_word(len(where))
        out.append((f"How many {kind.plural} are there in the image?", f"{word.capitalize()}."))
    return out
