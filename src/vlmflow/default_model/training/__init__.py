"""Training of the default model's projector (and a rank-8 LoRA) on the scene world.

Why it is built this way (measured on 2 CPU cores):
- the DINOv2 tower is frozen, so its features are computed once per scene and cached on disk;
- a caption loss alone barely moves a 135M language model in minutes, so every image token
  also gets a *grounding* loss: its projection is classified (cosine, temperature) against the
  language model's own input embeddings of the object names, with targets from the scene's
  exact masks; a small auxiliary head asks the same tokens for their 3x3 grid cell, so
  position stays readable; yes/no answers are trained alongside the description;
- the frozen language model runs in bfloat16 under CPU autocast; only the answer positions go
  through the 49k-word output layer;
- a first, cheap phase trains the grounding and position losses alone (no language-model
  pass, ~0.2 s a step), so the expensive phase starts from tokens already near the words;
- a third, *focus* phase (its own warm-up and decay) draws most batch slots from the
  yes/no questions, weighted by category towards the weak ones (position, count); it can extend
  a finished run, since everything before it is unchanged; it may also ask short-answer
  "where is / how many" questions (a 9-way or counted answer says more about which cells hold
  which type than a yes or no does) and ask questions as a second user turn after the describe
  prompt, the layout `vlmflow.compress` answers follow-up questions in;
- later optional phases (`PHASES`) each extend a finished state the same way: *quiz* (several
  questions about one image in turn, one image pass for several answers), *where* (image
  tokens also classified against the row and column words) and *check* (several yes/no
  questions about one image in one sequence under a block mask, each answered as if alone, so
  no answer can be read off another);
- batches are a pure function of (seed, step), and state is saved atomically every few steps,
  so a killed run resumes exactly where it stopped.

Modules, each named for what it holds:
- `config`: `TrainConfig` (every setting that decides the result), `PHASES`, sizes and texts;
- `features`: the on-disk cache of frozen DINOv2 features and per-cell labels;
- `modules`: `Projector`, `LoraLinear`, `Heads` and `add_lora`;
- `batches`: `Example` and the per-step batch draws (captions, yes/no, quizzes, checks);
- `sequences`: `Prompts` (token ids through the chat template), `collate`, `collate_alone`;
- `losses`: `StepLosses` and the 3x3 `cell_loss`;
- `trainer`: `Trainer` (the losses of a step, its learning-rate schedule, state, generation);
- `evaluation`: `evaluate` and `EvalResult`, progress figures as `vlmflow scenes evaluate`
  reads texts.
"""

from __future__ import annotations

from vlmflow.default_model.training.batches import (
    Example,
    check_example,
    draw_turns,
    empty_cell_question,
    examples_for_step,
    grounding_scenes_for_step,
    quiz_example,
    yes_no_pool,
)
from vlmflow.default_model.training.config import (
    ANSWERS,
    CAPTION_PROMPT,
    PHASES,
    TEXT_DIM,
    VISION_DIM,
    TrainConfig,
)
from vlmflow.default_model.training.evaluation import EvalResult, evaluate
from vlmflow.default_model.training.features import (
    FEATURE_FORMAT,
    FeatureCache,
    build_feature_cache,
    cell_labels,
    eta,
    scene_record,
    vocabulary_names,
)
from vlmflow.default_model.training.losses import StepLosses, cell_loss
from vlmflow.default_model.training.modules import (
    Heads,
    LoraLinear,
    Projector,
    add_lora,
    lora_modules,
)
from vlmflow.default_model.training.sequences import Prompts, collate, collate_alone
from vlmflow.default_model.training.trainer import Trainer

__all__ = [
    "ANSWERS",
    "CAPTION_PROMPT",
    "FEATURE_FORMAT",
    "PHASES",
    "TEXT_DIM",
    "VISION_DIM",
    "EvalResult",
    "Example",
    "FeatureCache",
    "Heads",
    "LoraLinear",
    "Projector",
    "Prompts",
    "StepLosses",
    "TrainConfig",
    "Trainer",
    "add_lora",
    "build_feature_cache",
    "cell_labels",
    "cell_loss",
    "check_example",
    "collate",
    "collate_alone",
    "draw_turns",
    "empty_cell_question",
    "eta",
    "evaluate",
    "examples_for_step",
    "grounding_scenes_for_step",
    "lora_modules",
    "quiz_example",
    "scene_record",
    "vocabulary_names",
    "yes_no_pool",
]
