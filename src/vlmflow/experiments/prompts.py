"""The text sent with each image by `knockout`, `topk` and `localization`: their `prompt`, or,
with `question` set, each image's own question (scene world, MME: `ImageRef.questions`).

`question` names the question: a category (`existence`, `count`, `position`, `category`, or an
MME category) picks the image's first question of that category; a number `N` picks its N-th
question (0-indexed). Both options are part of the experiment's config, so of its run id.
"""

from __future__ import annotations

from vlmflow.errors import VlmflowError
from vlmflow.sources import ImageRef


def check_question(question: str | None) -> None:
    """Refuse an empty `question` option (ValueError, read as a bad config option)."""
    if question is not None and not str(question).strip():
        raise ValueError("question must name a category or a question number, not be empty")


def item_prompt(prompt: str, question: str | None, ref: ImageRef) -> str:
    """`prompt`, or the image's question that `question` names; raises VlmflowError when the
    image has no such question (recorded as a failure of that image)."""
    if question is None:
        return prompt
    questions = ref.questions()
    if not questions:
        raise VlmflowError(
            f"{ref.id} has no questions of its own: use --images scenes or mme:FOLDER, or drop"
            " the question option"
        )
    text = str(question).strip()
    if text.isdigit():
        if int(text) >= len(questions):
            raise VlmflowError(
                f"{ref.id} has {len(questions)} questions: question {text} is past them"
            )
        return questions[int(text)].text
    for q in questions:
        if q.category == text:
            return q.text
    categories = ", ".join(sorted({q.category for q in questions}))
    raise VlmflowError(f"{ref.id} has no {text!r} question: its categories are {categories}")
