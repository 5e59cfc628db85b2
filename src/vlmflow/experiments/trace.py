"""`trace`: answer tracing per image and question (Zhang et al. CVPR 2025), through
`vlmflow.analysis.trace`.

Settings per image, each one unit that traces every question of its kind:
- `yesno`: the image's yes/no questions (scene world, MME: `ImageRef.questions`);
- `open`: short-answer questions of the scene world (where each type is, how many there are:
  `vlmflow.scenes.questions.open_questions`);
- `ask`: the questions of the `ask` option, asked of every image (any `--images` source).

Per question the result keeps the model's answer (first `answer_tokens` greedy tokens), its
probability and, per group pair and window start layer, its probability under the window
knockout; the report draws the relative change per pair and question category.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlmflow.analysis import DEFAULT_PAIRS, PAIR_NAMES
from vlmflow.errors import VlmflowError
from vlmflow.experiments import protocol
from vlmflow.sources import ImageRef, ImageSource
from vlmflow.sources.scenes import SceneRef

KINDS = ("yesno", "open", "ask")
DIGITS = 6


@dataclass(frozen=True)
class TraceConfig:
    """Options of `trace`.

    `questions`: kinds to trace (of KINDS; `ask` needs `ask`); `ask`: questions asked of every
    image; `limit`: at most this many questions per kind and image (None: all); `window`:
    layers per window (None: 9% of the layers); `pairs`: group pairs, of PAIR_NAMES (default the
    three flows; `pairs = ["last->last"]` traces only the paper's control); `answer_tokens`:
    greedy answer tokens scored; `batch`: rows per forward pass (speed only, not in the run id).
    """

    questions: tuple[str, ...] = ("yesno", "open")
    ask: tuple[str, ...] = ()
    limit: int | None = None
    window: int | None = None
    pairs: tuple[str, ...] = DEFAULT_PAIRS
    answer_tokens: int = 1
    batch: int = 16

    def __post_init__(self) -> None:
        for kind in self.questions:
            if kind not in KINDS:
                raise ValueError(f"question kind {kind!r} is not one of {', '.join(KINDS)}")
        if not self.questions or len(set(self.questions)) != len(self.questions):
            raise ValueError("questions must name at least one kind, each once")
        if "ask" in self.questions and not self.ask:
            raise ValueError("questions includes ask but ask lists no question")
        if self.ask and "ask" not in self.questions:
            object.__setattr__(self, "questions", (*self.questions, "ask"))
        for pair in self.pairs:
            if pair not in PAIR_NAMES:
                raise ValueError(f"pair {pair!r} is not one of {', '.join(PAIR_NAMES)}")
        if not self.pairs or len(set(self.pairs)) != len(self.pairs):
            raise ValueError("pairs must name at least one pair, each once")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit {self.limit} must be at least 1")
        if self.window is not None and self.window < 0:
            raise ValueError(f"window {self.window} must be >= 0")
        if self.answer_tokens < 1 or self.batch < 1:
            raise ValueError("answer_tokens and batch must be at least 1")


def questions_of(ref: ImageRef, kind: str, options: TraceConfig) -> list[tuple[str, str, str]]:
    """(text, category, expected answer) of one kind for one image, at most `limit`."""
    out: list[tuple[str, str, str]] = []
    if kind == "yesno":
        out = [(q.text, q.category, q.answer) for q in ref.questions()]
    elif kind == "open" and isinstance(ref, SceneRef):
        from vlmflow.scenes import load_fixed_scene
        from vlmflow.scenes.questions import open_questions

        for text, answer in open_questions(load_fixed_scene(ref.scene_index).objects):
            category = "open-count" if text.startswith("How many") else "open-where"
            out.append((text, category, answer))
    elif kind == "ask":
        out = [(text, "ask", "") for text in options.ask]
    return out[: options.limit] if options.limit is not None else out


class TraceExperiment:
    """Answer tracing over window knockouts, per image and question kind."""

    name = "trace"
    needs_model = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        opts = protocol.as_tuples(dict(options or {}), "questions", "ask", "pairs")
        self.options = protocol.parse_config(TraceConfig, opts, self.name)
        self.config = protocol.result_config(self.options)

    def items(self, source: ImageSource) -> Iterable[protocol.WorkItem]:
        items = protocol.image_items(source)
        asks = "ask" in self.options.questions
        if not asks and not all(item.payload["image"].has_questions for item in items):
            raise VlmflowError(
                f"trace needs questions: {source.key} has images without any; use --images "
                "scenes or mme:FOLDER, or set ask = [...] in the [trace] config"
            )
        return items

    def settings(self, item: protocol.WorkItem) -> Sequence[str]:
        ref: ImageRef = item.payload["image"]
        kinds = []
        for kind in self.options.questions:
            if kind == "open" and not isinstance(ref, SceneRef):
                continue  # open questions come from the scene world's objects
            if kind == "yesno" and not ref.has_questions:
                continue
            kinds.append(kind)
        return kinds

    def run(
        self, handle: Any, item: protocol.WorkItem, setting: str, context: protocol.Context
    ) -> protocol.Result:
        from vlmflow.analysis.trace import trace

        ref: ImageRef = item.payload["image"]
        image = ref.open()
        questions = questions_of(ref, setting, self.options)
        if not questions:
            raise VlmflowError(f"{item.item_id} has no {setting} questions")
        records: list[dict[str, Any]] = []
        for text, category, expected in questions:
            t = trace(
                handle,
                image,
                text,
                window=self.options.window,
                pairs=self.options.pairs,
                answer_tokens=self.options.answer_tokens,
                batch=self.options.batch,
            )
            records.append(
                {
                    "question": text,
                    "category": category,
                    "expected": expected,
                    "answer": list(t.answer),
                    "answer_text": t.answer_text,
                    "probability": round(t.probability, DIGITS),
                    "change": {k: [round(c, DIGITS) for c in v] for k, v in t.change.items()},
                }
            )
        starts = list(t.starts)
        metrics: dict[str, Any] = {
            "questions": len(records),
            "probability": round(sum(r["probability"] for r in records) / len(records), DIGITS),
            "window": t.window,
        }
        for pair in self.options.pairs:
            lows = [min(r["change"][pair]) for r in records]
            metrics[f"{pair} min change"] = round(sum(lows) / len(lows), DIGITS)
        return protocol.Result(
            metrics=metrics,
            payload={"starts": starts, "window": t.window, "questions": records},
        )
