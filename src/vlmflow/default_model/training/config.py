"""Training settings (`TrainConfig`), the phases and the fixed sizes and texts they use."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from vlmflow.defaults import DEFAULT_PROMPT

VISION_DIM = 384
TEXT_DIM = 576
CAPTION_PROMPT = DEFAULT_PROMPT  # the instruction the reference descriptions answer
ANSWERS = {"yes": "Yes.", "no": "No."}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the result; a resumed run must use the same values."""

    seed: int = 0
    scenes: int = 6000  # training scenes whose features are cached
    align_steps: int = 1500  # first phase: grounding/position losses only (no language model)
    steps: int = 900  # second phase: all losses, through the language model
    batch_size: int = 8
    grounding_batch: int = 24  # extra scenes per step for the grounding loss only
    lr_projector: float = 1e-3
    lr_lora: float = 3e-4
    warmup: int = 50
    lora_rank: int = 8  # 0: projector only
    lora_alpha: float = 16.0
    caption_fraction: float = 0.5  # share of batch slots asked to describe; the rest yes/no
    grounding_weight: float = 1.0
    position_weight: float = 0.2
    background_weight: float = 0.2
    temperature: float = 0.07
    cell_threshold: float = 0.2  # an image cell belongs to an object covering this fraction
    focus_steps: int = 360  # third phase: question-heavy steps through the language model
    focus_caption_fraction: float = 0.25
    # sampling weight of each question category in the focus phase (QUESTION_CATEGORIES order:
    # existence, count, position, category)
    focus_weights: tuple[float, float, float, float] = (1.0, 2.0, 3.0, 1.0)
    # shares of the focus phase's question slots asked as short-answer "where is / how many"
    # questions, and as a follow-up: a second user turn after the describe prompt, the layout
    # `vlmflow.compress` answers in
    focus_open_fraction: float = 0.35
    focus_followup_fraction: float = 0.4
    # fourth phase: each question slot becomes a quiz, several questions about one image asked
    # turn after turn, so one pass through the image tokens trains several answers
    quiz_steps: int = 0
    quiz_turns: int = 6
    quiz_caption_fraction: float = 0.125
    quiz_followup_fraction: float = 0.3  # quizzes whose first question follows the describe prompt
    # modules that get LoRA (same rank) from the quiz phase on, beside q_proj and v_proj
    quiz_lora_modules: tuple[str, ...] = ("k_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # fifth phase: quizzes as above (quiz LoRA included), plus a *where* loss that classifies
    # each image token against the language model's own input embeddings of the row and column
    # words of its cell ("top", "left", ...): attention values carry no rotary position, so a
    # yes/no answer about a cell can only check it if the image tokens' content says where
    where_steps: int = 0
    where_caption_fraction: float = 0.375
    where_weight: float = 0.5
    # share of the where phase's position "no" questions moved to an empty cell (the rest stay
    # as `ask` picks them, mostly a cell another type holds): an empty cell is answered by
    # looking the cell up alone, a first step towards checking which type is there
    where_empty_fraction: float = 0.0
    # sixth phase: each question slot becomes a *check*, up to `check_questions` yes/no
    # questions about one image in one sequence, each seeing the image but none of the others
    # (a block mask, positions restarting after the image: each is asked exactly as if alone).
    # In a quiz a later answer can be read off earlier turns; in a check only off the image.
    # Its LoRA learning rate is its own (`check_lr_lora`); the where loss stays on if that
    # phase ran.
    check_steps: int = 0
    check_caption_fraction: float = 0.25
    check_questions: int = 8
    check_weights: tuple[float, float, float, float] = (1.0, 3.0, 4.0, 1.0)
    check_lr_lora: float = 1e-3

    @property
    def total_steps(self) -> int:
        return self.check_start + self.check_steps

    @property
    def check_start(self) -> int:
        """First step of the check phase, counted like `Trainer.step`."""
        return self.where_start + self.where_steps

    @property
    def quiz_start(self) -> int:
        """First step of the quiz phase, counted like `Trainer.step`."""
        return self.align_steps + self.steps + self.focus_steps

    @property
    def where_start(self) -> int:
        """First step of the where phase, counted like `Trainer.step`."""
        return self.quiz_start + self.quiz_steps

    @property
    def quiz_lora(self) -> tuple[str, ...]:
        """Modules that get LoRA from the quiz phase on (none when no phase has quizzes)."""
        later = self.quiz_steps or self.where_steps or self.check_steps
        return self.quiz_lora_modules if later else ()

    def extends(self, earlier: TrainConfig) -> bool:
        """Whether a run with these settings may continue a state saved with `earlier`: equal
        up to the settings of later phases (`PHASES`) that `earlier` did not have."""
        unstarted = [p for p in PHASES if getattr(earlier, f"{p}_steps") == 0]
        later = [f.name for f in fields(self) if f.name.split("_")[0] in unstarted]
        return replace(self, **{f: getattr(earlier, f) for f in later}) == earlier

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for name in ("focus_weights", "quiz_lora_modules", "check_weights"):
            if name in values:
                values[name] = tuple(values[name])
        for phase in PHASES:  # saved before the phase existed: the run did not have it
            values.setdefault(f"{phase}_steps", 0)
        return cls(**values)


# the optional phases after alignment and the first language phase
PHASES = ("focus", "quiz", "where", "check")
