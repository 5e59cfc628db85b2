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
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vlmflow.default_model.processor import GRID, IMAGE_TOKEN, NUM_IMAGE_TOKENS
from vlmflow.default_model.smollm2 import LanguageModelParts
from vlmflow.errors import VlmflowError

if TYPE_CHECKING:
    from vlmflow.scenes.describe import Described
    from vlmflow.scenes.questions import Question

VISION_DIM = 384
TEXT_DIM = 576
FEATURE_FORMAT = 1
CAPTION_PROMPT = "Describe the image."
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


# ----------------------------------------------------------------------------- features


@dataclass(frozen=True)
class FeatureCache:
    """Frozen DINOv2 features and exact per-cell labels of a list of scenes, on disk."""

    folder: Path
    features: np.ndarray  # (n, 256, 384) float16, memory-mapped
    cells: np.ndarray  # (n, 256) int16: 0 background, 1 + vocabulary index of the object
    scenes: list[dict[str, Any]]  # description, questions, names

    def __len__(self) -> int:
        return len(self.scenes)


def vocabulary_names() -> list[str]:
    from vlmflow.scenes import VOCABULARY

    return list(VOCABULARY)


def cell_labels(scene: Any, threshold: float) -> np.ndarray:
    """(256,) int16: per 14 px patch of the 224 px input, the object covering most of it."""
    index = {name: i for i, name in enumerate(vocabulary_names())}
    size = scene.size
    if size % GRID:
        raise VlmflowError(f"scene size {size} is not a multiple of {GRID}")
    step = size // GRID
    labels = scene.label_map()  # (size, size) uint8: 0 or 1 + object index
    best = np.zeros((GRID, GRID), dtype=np.float64)
    out = np.zeros((GRID, GRID), dtype=np.int16)
    for i, obj in enumerate(scene.objects):
        cover = (labels == i + 1).reshape(GRID, step, GRID, step).mean(axis=(1, 3))  # (16, 16)
        take = (cover > best) & (cover >= threshold)
        out[take] = 1 + index[obj.name]
        best = np.maximum(best, cover)
    return out.reshape(-1)


def scene_record(scene: Any) -> dict[str, Any]:
    return {
        "id": scene.id,
        "description": scene.description,
        "names": list(scene.names),
        "objects": [[o.name, o.position] for o in scene.objects],
        "questions": [[q.text, q.answer, q.category] for q in scene.questions],
    }


def build_feature_cache(
    folder: Path,
    scenes: Callable[[int, int], Iterable[Any]],
    count: int,
    *,
    threshold: float,
    chunk: int = 32,
    progress: Callable[[str], None] = print,
) -> FeatureCache:
    """Compute (or finish computing) the cache for scenes 0..count-1; resumable per chunk.

    `scenes(start, n)` yields scenes `start .. start + n - 1` of a fixed list.
    """
    from vlmflow.default_model.dinov2_onnx import load_dinov2
    from vlmflow.default_model.processor import image_processor

    folder.mkdir(parents=True, exist_ok=True)
    info_path = folder / "progress.json"
    fingerprint = {"format": FEATURE_FORMAT, "count": count, "threshold": threshold}
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    mode = "r+"
    if info is None or info.get("fingerprint") != fingerprint:
        info = {"fingerprint": fingerprint, "done": 0}
        mode = "w+"
    features = np.lib.format.open_memmap(
        folder / "features.npy",
        mode=mode,
        dtype=np.float16,
        shape=(count, NUM_IMAGE_TOKENS, VISION_DIM),
    )
    cells = np.lib.format.open_memmap(
        folder / "cells.npy", mode=mode, dtype=np.int16, shape=(count, NUM_IMAGE_TOKENS)
    )
    records_path = folder / "scenes.jsonl"
    done = int(info["done"])
    lines = records_path.read_text().splitlines()[:done] if records_path.is_file() else []
    records_path.write_text("".join(line + "\n" for line in lines))
    if done < count:
        tower = load_dinov2()
        processor = image_processor()
        started = time.perf_counter()
        first = done
        while done < count:
            batch = list(scenes(done, min(chunk, count - done)))
            pixels = processor([s.image for s in batch], return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                hidden = tower(pixels, output_hidden_states=True).hidden_states[-1]  # (b, 257, d)
            features[done : done + len(batch)] = hidden[:, 1:].numpy().astype(np.float16)
            cells[done : done + len(batch)] = np.stack([cell_labels(s, threshold) for s in batch])
            features.flush()
            cells.flush()
            with records_path.open("a") as handle:
                for s in batch:
                    handle.write(json.dumps(scene_record(s)) + "\n")
            done += len(batch)
            info["done"] = done
            _atomic_write_text(info_path, json.dumps(info))
            rate = (time.perf_counter() - started) / (done - first)
            progress(
                f"features {done}/{count}  {rate:.3f} s/scene  ETA {_eta(rate * (count - done))}"
            )
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    if any("objects" not in r for r in records):  # written before records kept positions
        progress("adding object positions to the cached scene records")
        records = [scene_record(s) for s in scenes(0, count)]
        _atomic_write_text(records_path, "".join(json.dumps(r) + "\n" for r in records))
    return FeatureCache(
        folder=folder,
        features=np.load(folder / "features.npy", mmap_mode="r"),
        cells=np.load(folder / "cells.npy", mmap_mode="r"),
        scenes=records,
    )


# ----------------------------------------------------------------------------- modules


class Projector(nn.Module):
    """llava's projector (linear-GELU-linear) on standardised features.

    Standardising DINOv2's pre-norm features (a few channels are 10-50x larger than the rest)
    makes optimisation well-conditioned; `export()` folds it into `linear_1`, so the shipped
    projector reads raw features exactly like transformers' `LlavaMultiModalProjector`.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())  # (384,)
        self.register_buffer("std", std.clone())  # (384,)
        self.linear_1 = nn.Linear(VISION_DIM, TEXT_DIM)
        self.linear_2 = nn.Linear(TEXT_DIM, TEXT_DIM)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (b, n, 384) -> (b, n, 576)
        z = (features - self.mean) / self.std
        return self.linear_2(F.gelu(self.linear_1(z)))

    def export(self) -> dict[str, torch.Tensor]:
        w = self.linear_1.weight / self.std[None, :]  # (576, 384)
        b = self.linear_1.bias - w @ self.mean
        return {
            "multi_modal_projector.linear_1.weight": w.detach().clone(),
            "multi_modal_projector.linear_1.bias": b.detach().clone(),
            "multi_modal_projector.linear_2.weight": self.linear_2.weight.detach().clone(),
            "multi_modal_projector.linear_2.bias": self.linear_2.bias.detach().clone(),
        }


class LoraLinear(nn.Module):
    """`base(x) + scale * B(A(x))` with a frozen base; B starts at zero (no change at step 0)."""

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        bound = 1.0 / math.sqrt(base.in_features)
        a = (torch.rand(rank, base.in_features, generator=generator) * 2 - 1) * bound
        self.lora_A = nn.Parameter(a)  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # (out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return self.base(x) + self.scale * delta


class Heads(nn.Module):
    """Training-only parts: background prototype for grounding, 3x3 position head."""

    def __init__(self) -> None:
        super().__init__()
        self.background = nn.Parameter(torch.zeros(TEXT_DIM))
        self.position = nn.Linear(TEXT_DIM, 6)  # 3 rows + 3 columns


def lora_modules(lm: Any) -> dict[str, LoraLinear]:
    """LoRA wrappers by module name relative to `LlamaModel` (`layers.3.self_attn.q_proj`)."""
    return {
        name.removeprefix("model."): module
        for name, module in lm.named_modules()
        if isinstance(module, LoraLinear)
    }


def add_lora(
    lm: Any, rank: int, alpha: float, seed: int, more: Sequence[str] = ()
) -> dict[str, LoraLinear]:
    """LoRA on every layer's q_proj and v_proj, then on the `more` projections (attention or
    MLP), drawn after them so q/v start the same whatever `more` holds."""
    generator = torch.Generator().manual_seed(seed + 1)
    for layer in lm.model.layers:
        attn = layer.self_attn
        attn.q_proj = LoraLinear(attn.q_proj, rank, alpha, generator)
        attn.v_proj = LoraLinear(attn.v_proj, rank, alpha, generator)
    for layer in lm.model.layers:
        for name in more:
            owner = layer.self_attn if hasattr(layer.self_attn, name) else layer.mlp
            setattr(owner, name, LoraLinear(getattr(owner, name), rank, alpha, generator))
    return lora_modules(lm)


# ----------------------------------------------------------------------------- batches


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


class Prompts:
    """Token ids of prompts and answers, built with the checkpoint's own chat template."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.image_token_id: int = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.end_id: int = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._prompts: dict[tuple[str, bool], list[int]] = {}
        self._turns: dict[str, list[int]] = {}

    def prompt(self, question: str, followup: bool = False) -> list[int]:
        """The image prompt asking `question`; with `followup`, the image goes with the describe
        prompt and `question` is a second user turn (how `vlmflow.compress` continues)."""
        key = (question, followup)
        if key not in self._prompts:
            image: list[dict[str, str]] = [{"type": "image"}]
            turns = (
                [(image, question)] if not followup else [(image, CAPTION_PROMPT), ([], question)]
            )
            messages = [
                {"role": "user", "content": [*extra, {"type": "text", "text": words}]}
                for extra, words in turns
            ]
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            text = text.replace(IMAGE_TOKEN, IMAGE_TOKEN * NUM_IMAGE_TOKENS)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._prompts[key] = list(ids)
        return self._prompts[key]

    def turn(self, question: str) -> list[int]:
        """Ids between one answer's `<|im_end|>` and the next answer: `question` as a new user
        turn, as the chat template writes it after an assistant reply."""
        if question not in self._turns:
            said = [
                {"role": "user", "content": [{"type": "text", "text": "?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
            ]
            asked = [*said, {"role": "user", "content": [{"type": "text", "text": question}]}]
            render = self.tokenizer.apply_chat_template
            before = render(said[:1], add_generation_prompt=True, tokenize=False) + "A<|im_end|>"
            after = render(asked, add_generation_prompt=True, tokenize=False)
            if not after.startswith(before):
                raise VlmflowError("the chat template does not extend a conversation by appending")
            text = after[len(before) :]
            self._turns[question] = list(
                self.tokenizer(text, add_special_tokens=False)["input_ids"]
            )
        return self._turns[question]

    def answer(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [*ids, self.end_id]


def collate(
    prompts: Prompts, examples: Sequence[Example], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded `(input_ids, attention_mask, labels)`, each `(b, t)`; -100 off answers."""
    rows = []
    for ex in examples:
        p, a = prompts.prompt(ex.question, ex.followup), prompts.answer(ex.answer)
        seq, lab = p + a, [-100] * len(p) + a
        for question, answer in ex.more:
            p, a = prompts.turn(question), prompts.answer(answer)
            seq, lab = seq + p + a, lab + [-100] * len(p) + a
        rows.append((seq, lab))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (seq, lab) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, : len(lab)] = torch.tensor(lab)
    return ids, mask, labels


def collate_alone(
    prompts: Prompts, examples: Sequence[Example], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded `(input_ids, attention_mask, position_ids, labels)` with a block mask:
    ids, positions and labels `(b, t)`, mask `(b, 1, t, t)` bool (True: may attend). The turns
    of an `alone` example share its prompt up to the last image token and each continue from
    there: they see that prefix and themselves, at the positions they would have if alone.
    Other examples are plain causal rows, as `collate` lays them out."""
    rows = []
    for ex in examples:
        if not ex.alone:
            ids, _, labels = collate(prompts, [ex], pad_id)
            n = ids.shape[1]
            rows.append((ids[0].tolist(), labels[0].tolist(), list(range(n)), [0] * n))
            continue
        full = prompts.prompt(ex.question)
        cut = max(i for i, t in enumerate(full) if t == prompts.image_token_id) + 1
        seq, lab, pos, owner = full[:cut], [-100] * cut, list(range(cut)), [0] * cut
        for k, (question, answer) in enumerate([(ex.question, ex.answer), *ex.more]):
            asked = prompts.prompt(question)
            if asked[:cut] != full[:cut]:
                raise VlmflowError("the chat template puts question text before the image")
            p, a = asked[cut:], prompts.answer(answer)
            seq, lab = seq + p + a, lab + [-100] * len(p) + a
            pos += range(cut, cut + len(p) + len(a))
            owner += [k + 1] * (len(p) + len(a))
        rows.append((seq, lab, pos, owner))
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
    mask[:, 0, :, 0] = True  # padding rows see the first token, so no row is all -inf
    for i, (seq, lab, pos, owner) in enumerate(rows):
        n = len(seq)
        ids[i, :n], labels[i, :n] = torch.tensor(seq), torch.tensor(lab)
        positions[i, :n] = torch.tensor(pos)
        who = torch.tensor(owner)  # (n,): 0 shared prefix, k the k-th turn
        visible = (who[:, None] == who[None, :]) | (who[None, :] == 0)
        mask[i, 0, :n, :n] = torch.tril(visible)
    return ids, mask, positions, labels


# ----------------------------------------------------------------------------- trainer


@dataclass(frozen=True)
class StepLosses:
    total: float
    text: float
    grounding: float
    position: float
    where: float = 0.0  # the where phase's position-word loss


def cell_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `(n, 256, 6)` per-token logits, 3 rows then 3 columns, against each
    image token's cell of the 3x3 grid."""
    grid = torch.arange(NUM_IMAGE_TOKENS)
    row, col = (grid // GRID) * 3 // GRID, (grid % GRID) * 3 // GRID  # (256,)
    rows = F.cross_entropy(logits[..., :3].flatten(0, 1), row.repeat(len(logits)))
    return rows + F.cross_entropy(logits[..., 3:].flatten(0, 1), col.repeat(len(logits)))


class Trainer:
    """Frozen SmolLM2 (bf16) + trainable projector, LoRA and training-only heads."""

    def __init__(
        self,
        config: TrainConfig,
        cache: FeatureCache,
        parts: LanguageModelParts | None = None,
        lm_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        from transformers import LlamaForCausalLM

        from vlmflow.default_model.processor import add_image_token, build_processor
        from vlmflow.default_model.smollm2 import load_smollm2
        from vlmflow.scenes.layout import COLUMNS, ROWS

        self.config = config
        self.cache = cache
        parts = parts or load_smollm2()
        add_image_token(parts.tokenizer)
        build_processor(parts.tokenizer)  # sets the chat template
        self.prompts = Prompts(parts.tokenizer)
        self.pad_id = int(parts.config.pad_token_id)
        lm: Any = LlamaForCausalLM(parts.config)  # on CPU: rotary buffers are not in the state dict
        lm.load_state_dict(parts.state_dict, strict=False)
        lm.tie_weights()
        self.vocab = int(parts.config.vocab_size)
        lm.requires_grad_(False)
        self.lm = lm.to(lm_dtype).eval()
        self.lm_dtype = lm_dtype
        torch.manual_seed(config.seed)
        sample = torch.from_numpy(np.asarray(cache.features[: min(len(cache), 256)], np.float32))
        flat = sample.reshape(-1, VISION_DIM)
        self.projector = Projector(flat.mean(0), flat.std(0).clamp_min(1e-3))
        self.heads = Heads()
        self.lora: dict[str, LoraLinear] = {}
        more = config.quiz_lora
        if config.lora_rank > 0:
            self.lora = add_lora(self.lm, config.lora_rank, config.lora_alpha, config.seed, more)
        # LoRA from the start, and LoRA that joins in the quiz phase: no gradient (so no
        # optimizer state) before it
        joins: dict[bool, list[LoraLinear]] = {False: [], True: []}
        for name, module in self.lora.items():
            joins[name.rsplit(".", 1)[-1] in more].append(module)
        self.quiz_lora = joins[True]
        self.name_ids = self._name_prototype_ids()
        self.where_ids = self._word_ids([*ROWS, *COLUMNS])  # rows, then columns
        groups: list[dict[str, Any]] = [
            {
                "params": [*self.projector.parameters(), *self.heads.parameters()],
                "lr": config.lr_projector,
            },
        ]
        for modules in (joins[False], joins[True]):
            if modules:
                params = [p for m in modules for p in (m.lora_A, m.lora_B)]
                groups.append({"params": params, "lr": config.lr_lora})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        self.base_lrs = [float(g["lr"]) for g in groups]
        self.step = 0
        self.elapsed = 0.0

    def autocast(self) -> torch.autocast:
        """bfloat16 compute for a bfloat16 language model; plain float32 otherwise."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.lm_dtype == torch.bfloat16)

    def _name_prototype_ids(self) -> list[list[int]]:
        return self._word_ids(vocabulary_names())

    def _word_ids(self, words: Iterable[str]) -> list[list[int]]:
        """Token ids of each word as it appears mid-sentence (with its leading space)."""
        tok = self.prompts.tokenizer
        return [tok(" " + word, add_special_tokens=False)["input_ids"] for word in words]

    def _mean_embeddings(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """(len(ids), 576): mean input embedding of each word's tokens."""
        table = self.lm.model.embed_tokens.weight.float()
        return torch.stack([table[list(i)].mean(0) for i in ids])

    def prototypes(self) -> torch.Tensor:
        """(1 + types, 576): background prototype, then mean input embedding of each name."""
        return torch.cat([self.heads.background[None], self._mean_embeddings(self.name_ids)])

    # -- state

    def trainable_state(self) -> dict[str, Any]:
        return {
            "projector": self.projector.state_dict(),
            "heads": self.heads.state_dict(),
            "lora": {n: {"A": m.lora_A.data, "B": m.lora_B.data} for n, m in self.lora.items()},
        }

    def save(self, path: Path, history: list[dict[str, float]]) -> None:
        state = {
            "config": self.config.to_json(),
            "step": self.step,
            "elapsed": self.elapsed,
            "trainable": self.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "history": history,
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load(self, path: Path) -> list[dict[str, float]]:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not self.config.extends(TrainConfig.from_json(state["config"])):
            raise VlmflowError(
                f"{path} was written with other settings: use the same flags (a finished run "
                "may add --focus-steps) or a new --state"
            )
        trainable = state["trainable"]
        self.projector.load_state_dict(trainable["projector"])
        self.heads.load_state_dict(trainable["heads"])
        saved_lora = trainable["lora"]
        for name, module in self.lora.items():
            if name not in saved_lora and module in self.quiz_lora:
                continue  # saved before the quiz phase: starts from its initial value
            module.lora_A.data.copy_(saved_lora[name]["A"])
            module.lora_B.data.copy_(saved_lora[name]["B"])
        optimizer = state["optimizer"]
        missing = len(self.optimizer.param_groups) - len(optimizer["param_groups"])
        if missing:  # the quiz-phase LoRA group, which the saved state never had
            groups = [dict(g) for g in optimizer["param_groups"]]
            start = sum(len(g["params"]) for g in groups)
            for group in self.optimizer.param_groups[-missing:]:
                count = len(group["params"])
                fresh = {k: v for k, v in group.items() if k != "params"}
                groups.append({**fresh, "params": list(range(start, start + count))})
                start += count
            optimizer = {"state": optimizer["state"], "param_groups": groups}
        self.optimizer.load_state_dict(optimizer)
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        history: list[dict[str, float]] = state["history"]
        return history

    # -- one step

    def learning_rate_factor(self, step: int) -> float:
        """Per phase: linear warm-up; then constant (alignment) or cosine decay to 10%."""
        cfg = self.config
        if step < cfg.align_steps:
            return min(1.0, (step + 1) / cfg.warmup)
        step -= cfg.align_steps
        length = cfg.steps
        later_phases = (cfg.focus_steps, cfg.quiz_steps, cfg.where_steps, cfg.check_steps)
        for later in later_phases:  # each its own schedule
            if step < length:
                break
            step, length = step - length, later
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, length - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def image_embeddings(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected image tokens `(b, 256, 576)` and their cell labels `(b, 256)`."""
        feats = torch.from_numpy(np.asarray(self.cache.features[list(indices)], np.float32))
        cells = torch.from_numpy(np.asarray(self.cache.cells[list(indices)], np.int64))
        return self.projector(feats), cells

    def embed(self, ids: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Text embeddings with the image tokens' rows replaced by projected features."""
        table = self.lm.model.embed_tokens
        is_image = ids == self.prompts.image_token_id  # (b, t)
        embeds = table(ids.clamp(max=self.vocab - 1)).to(image.dtype)  # (b, t, 576)
        return embeds.masked_scatter(is_image[..., None], image.reshape(-1, image.shape[-1]))

    def losses(
        self, examples: Sequence[Example], extra: Sequence[int] = ()
    ) -> tuple[torch.Tensor, StepLosses]:
        """Text loss on `examples`; grounding and position losses on them plus `extra` scenes."""
        cfg = self.config
        scenes = [e.scene for e in examples]
        every, cells = self.image_embeddings([*scenes, *extra])  # (b + e, 256, 576)
        text = self._text_loss(examples, every[: len(scenes)]) if examples else torch.zeros(())
        # grounding: cosine of each image token with the name prototypes
        protos = F.normalize(self.prototypes(), dim=-1)  # (1 + k, 576)
        sims = F.normalize(every, dim=-1) @ protos.T / cfg.temperature  # (b + e, 256, 1 + k)
        per_cell = F.cross_entropy(sims.flatten(0, 1), cells.flatten(), reduction="none")
        weight = torch.where(cells.flatten() > 0, 1.0, cfg.background_weight)
        grounding = (per_cell * weight).sum() / weight.sum()
        # position: each token's 3x3 cell, so positions stay linearly readable
        position = cell_loss(self.heads.position(every))
        total = text + cfg.grounding_weight * grounding + cfg.position_weight * position
        where = torch.zeros(())
        if cfg.where_steps and self.step >= cfg.where_start:
            # the same cells, read against the position words' embeddings (see TrainConfig)
            words = F.normalize(self._mean_embeddings(self.where_ids), dim=-1)  # (6, 576)
            where = cell_loss(F.normalize(every, dim=-1) @ words.T / cfg.temperature)
            total = total + cfg.where_weight * where
        losses = (total, text, grounding, position, where)
        return total, StepLosses(*(float(x.item()) for x in losses))

    def _text_loss(self, examples: Sequence[Example], image: torch.Tensor) -> torch.Tensor:
        """Answer cross-entropy for `(b, 256, 576)` image tokens, through the language model."""
        positions = None
        if any(e.alone for e in examples):
            ids, mask, positions, labels = collate_alone(self.prompts, examples, self.pad_id)
        else:
            ids, mask, labels = collate(self.prompts, examples, self.pad_id)
        with self.autocast():
            hidden = self.lm.model(
                inputs_embeds=self.embed(ids, image), attention_mask=mask, position_ids=positions
            ).last_hidden_state  # (b, t, 576)
            targets = labels[:, 1:]
            keep = targets != -100
            logits = self.lm.lm_head(hidden[:, :-1][keep])  # (answer tokens, vocab)
        # mean per answer, then over answers: a 3-token "Yes." weighs as much as a description
        per_token = F.cross_entropy(logits.float(), targets[keep], reduction="none")
        owner = torch.arange(len(examples))[:, None].expand_as(targets)[keep]  # (answer tokens,)
        sums = torch.zeros(len(examples)).index_add(0, owner, per_token)
        counts = torch.zeros(len(examples)).index_add(0, owner, torch.ones_like(per_token))
        return (sums / counts.clamp_min(1)).mean()

    @property
    def in_language_phase(self) -> bool:
        return self.step >= self.config.align_steps

    def train_step(self) -> StepLosses:
        factor = self.learning_rate_factor(self.step)
        bases = self.base_lrs
        if self.config.check_steps and self.step >= self.config.check_start:
            bases = [bases[0], *[self.config.check_lr_lora] * (len(bases) - 1)]  # LoRA groups
        for group, base in zip(self.optimizer.param_groups, bases, strict=True):
            group["lr"] = base * factor
        examples: list[Example] = []
        if self.in_language_phase:
            examples = examples_for_step(
                self.cache, self.config, self.step - self.config.align_steps
            )
        extra = grounding_scenes_for_step(self.cache, self.config, self.step)
        for module in self.quiz_lora:  # not the frozen base layer inside it
            module.lora_A.requires_grad_(self.step >= self.config.quiz_start)
            module.lora_B.requires_grad_(self.step >= self.config.quiz_start)
        self.optimizer.zero_grad(set_to_none=True)
        total, parts = self.losses(examples, extra)
        total.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.optimizer.step()
        self.step += 1
        return parts

    # -- export and evaluation

    def export(
        self, path: Path, metadata: dict[str, str], lora_dtype: torch.dtype = torch.float32
    ) -> str:
        from vlmflow.default_model.weights import save_weights

        lora = {name: (m.lora_A.data, m.lora_B.data) for name, m in self.lora.items()}
        scale = next(iter(self.lora.values())).scale if self.lora else 1.0
        return save_weights(path, self.projector.export(), lora, scale, metadata, lora_dtype)

    @torch.no_grad()
    def describe(self, features: np.ndarray, max_new_tokens: int = 128) -> list[str]:
        """Greedy answers to "Describe the image." for `(b, 256, 384)` features."""
        return self.generate(features, [CAPTION_PROMPT] * len(features), max_new_tokens)

    @torch.no_grad()
    def next_token_logits(self, features: np.ndarray, questions: Sequence[str]) -> torch.Tensor:
        """`(b, vocab)` logits of the first answer token for `(b, 256, 384)` features."""
        image = self.projector(torch.from_numpy(np.asarray(features, np.float32)))
        examples = [Example(0, q, "") for q in questions]
        ids, mask, _ = collate(self.prompts, examples, self.pad_id)  # right-padded
        last = mask.sum(1) - 2  # the answer "" still adds <|im_end|>: drop it
        with self.autocast():
            hidden = self.lm.model(inputs_embeds=self.embed(ids, image), attention_mask=mask)
            rows = hidden.last_hidden_state[torch.arange(len(ids)), last]  # (b, 576)
            logits: torch.Tensor = self.lm.lm_head(rows).float()
        return logits

    def first_tokens(self, features: np.ndarray, questions: Sequence[str]) -> list[str]:
        """The greedy first answer token per question (enough to read a yes/no answer)."""
        best = self.next_token_logits(features, questions).argmax(-1)  # (b,)
        return [self.prompts.tokenizer.decode([int(t)]) for t in best]

    @torch.no_grad()
    def generate(
        self, features: np.ndarray, questions: Sequence[str], max_new_tokens: int
    ) -> list[str]:
        image = self.projector(torch.from_numpy(np.asarray(features, np.float32)))
        prompts = [self.prompts.prompt(q) for q in questions]
        width = max(len(p) for p in prompts)
        # left padding, so every row's next token comes right after its prompt
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        with self.autocast():
            out = self.lm.generate(
                inputs_embeds=self.embed(ids, image),
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=self.prompts.end_id,
                pad_token_id=self.pad_id,
            )
        return [self.prompts.tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]


# ----------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class EvalResult:
    scenes: int
    precision: float
    recall: float
    yes_no_accuracy: float
    yes_no_by_category: dict[str, float]

    def line(self) -> str:
        cats = " ".join(f"{k}={v:.2f}" for k, v in sorted(self.yes_no_by_category.items()))
        return (
            f"scenes={self.scenes} object P={self.precision:.3f} R={self.recall:.3f} "
            f"yes/no={self.yes_no_accuracy:.3f} ({cats})"
        )


def evaluate(
    trainer: Trainer,
    cache: FeatureCache,
    *,
    batch_size: int = 8,
    progress: Callable[[str], None] = print,
) -> EvalResult:
    """Object precision/recall of descriptions and yes/no accuracy on the cached scenes.

    Descriptions and replies are read by the scene evaluator's own parsers
    (`vlmflow.scenes.vocabulary.mentioned_objects`, `vlmflow.scenes.evaluate.parse_yes_no`),
    so these progress figures measure what `vlmflow scenes evaluate` reports.
    """
    from vlmflow.scenes.evaluate import parse_yes_no
    from vlmflow.scenes.vocabulary import mentioned_objects

    tp = n_pred = n_true = 0
    right: dict[str, list[bool]] = {}
    for start in range(0, len(cache), batch_size):
        stop = min(len(cache), start + batch_size)
        feats = np.asarray(cache.features[start:stop])
        for record, text in zip(cache.scenes[start:stop], trainer.describe(feats), strict=True):
            pred, true = set(mentioned_objects(text)), set(record["names"])
            tp, n_pred, n_true = tp + len(pred & true), n_pred + len(pred), n_true + len(true)
        for i, record in enumerate(cache.scenes[start:stop]):
            questions = record["questions"]
            replies = trainer.first_tokens(
                np.repeat(feats[i : i + 1], len(questions), axis=0), [q[0] for q in questions]
            )
            for (_, answer, category), reply in zip(questions, replies, strict=True):
                right.setdefault(category, []).append(parse_yes_no(reply) == answer)
        progress(f"eval {stop}/{len(cache)}")
    every = [r for rs in right.values() for r in rs]
    return EvalResult(
        scenes=len(cache),
        precision=tp / n_pred if n_pred else 0.0,
        recall=tp / n_true if n_true else 0.0,
        yes_no_accuracy=sum(every) / len(every) if every else 0.0,
        yes_no_by_category={k: sum(v) / len(v) for k, v in right.items()},
    )


# ----------------------------------------------------------------------------- helpers


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
