"""Training pieces: exact cell targets, reproducible batches, exact resume, metrics, export."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from vlmflow.default_model import training as tr
from vlmflow.errors import VlmflowError


@pytest.fixture(scope="module")
def scenes() -> list[Any]:
    scenes_module = pytest.importorskip("vlmflow.scenes")
    return [scenes_module.generate(seed) for seed in range(1_000_000, 1_000_006)]


def test_cell_labels_follow_the_masks(scenes: list[Any]) -> None:
    names = tr.vocabulary_names()
    for scene in scenes:
        cells = tr.cell_labels(scene, threshold=0.2).reshape(16, 16)
        step = scene.size // 16
        labelled = {names[v - 1] for v in np.unique(cells) if v > 0}
        assert labelled <= set(scene.names)
        for obj in scene.objects:
            cover = obj.mask.reshape(16, step, 16, step).mean(axis=(1, 3))
            # the cell this object covers most carries some object; a big object is found
            r, c = np.unravel_index(cover.argmax(), cover.shape)
            if cover[r, c] >= 0.5:
                assert cells[r, c] > 0
        assert (cells == 0).any()  # backgrounds exist in every scene


def _cache(tmp_path: Path, scenes: list[Any], count: int = 6) -> tr.FeatureCache:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(count, 256, 384)).astype(np.float16)
    cells = np.stack([tr.cell_labels(s, 0.2) for s in scenes[:count]])
    records = [tr.scene_record(s) for s in scenes[:count]]
    return tr.FeatureCache(folder=tmp_path, features=features, cells=cells, scenes=records)


def test_batches_are_a_function_of_seed_and_step(tmp_path: Path, scenes: list[Any]) -> None:
    cache = _cache(tmp_path, scenes)
    config = tr.TrainConfig(batch_size=2, scenes=6)
    assert tr.examples_for_step(cache, config, 4) == tr.examples_for_step(cache, config, 4)
    epoch = [e.scene for s in range(3) for e in tr.examples_for_step(cache, config, s)]
    assert sorted(epoch) == list(range(6))  # one epoch sees every scene once
    first = tr.examples_for_step(cache, config, 0)
    assert first[0].question == tr.CAPTION_PROMPT
    assert first[1].answer in ("Yes.", "No.")


class _ScriptedTrainer:
    """Stands in for a Trainer: fixed descriptions and first replies, no model."""

    def __init__(self, description: str, reply: str) -> None:
        self.description, self.reply = description, reply

    def describe(self, features: np.ndarray) -> list[str]:
        return [self.description] * len(features)

    def first_tokens(self, features: np.ndarray, questions: list[str]) -> list[str]:
        return [self.reply] * len(questions)


def test_training_figures_read_texts_as_the_scene_evaluator_does(tmp_path: Path) -> None:
    """'two puppies and a sofa' names a dog and a couch; 'no-one is there' is no answer."""
    from vlmflow.scenes.evaluate import parse_yes_no
    from vlmflow.scenes.vocabulary import mentioned_objects

    record = {"names": ["dog", "cat"], "questions": [["Is there a dog?", "no", "presence"]]}
    cache = tr.FeatureCache(
        folder=tmp_path,
        features=np.zeros((1, 256, 384), np.float16),
        cells=np.zeros((1, 256), np.int16),
        scenes=[record],
    )
    text = "two puppies and a sofa"
    assert mentioned_objects(text) == ("dog", "couch")
    result = tr.evaluate(_ScriptedTrainer(text, "no-one is there"), cache, progress=lambda _: None)  # type: ignore[arg-type]
    assert (result.precision, result.recall) == (0.5, 0.5)  # dog right, couch extra, cat missed
    assert parse_yes_no("no-one is there") is None
    assert result.yes_no_accuracy == 0.0  # an unparsed reply counts wrong, as in the evaluator
    result = tr.evaluate(_ScriptedTrainer(text, "No, there is not."), cache, progress=print)  # type: ignore[arg-type]
    assert result.yes_no_accuracy == 1.0


def test_projector_export_folds_the_standardisation() -> None:
    torch.manual_seed(0)
    mean, std = torch.randn(384), torch.rand(384) + 0.5
    projector = tr.Projector(mean, std)
    exported = projector.export()
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    class _Config:
        vision_feature_layer = -1
        projector_hidden_act = "gelu"
        multimodal_projector_bias = True

        class vision_config:  # mirrors the transformers attribute
            hidden_size = 384

        class text_config:
            hidden_size = 576

    llava = LlavaMultiModalProjector(cast(Any, _Config()))
    llava.load_state_dict(
        {k.removeprefix("multi_modal_projector."): v for k, v in exported.items()}
    )
    x = torch.randn(2, 256, 384) * 10
    torch.testing.assert_close(llava(x), projector(x), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_parts(pieces_installed: None) -> Any:
    """SmolLM2's real tokenizer with a 2-layer random Llama of the same width (fast steps)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlmflow.default_model.smollm2 import LanguageModelParts, load_smollm2

    real = load_smollm2(with_weights=False)
    values = real.config.to_dict()
    values.update(num_hidden_layers=2, intermediate_size=128)
    config = LlamaConfig(**{k: v for k, v in values.items() if k not in ("model_type",)})
    torch.manual_seed(0)
    state = {
        k: v for k, v in LlamaForCausalLM(config).state_dict().items() if k != "lm_head.weight"
    }
    return LanguageModelParts(config=config, state_dict=state, tokenizer=real.tokenizer)


def _params(trainer: tr.Trainer) -> dict[str, torch.Tensor]:
    state = trainer.trainable_state()
    flat = {f"projector.{k}": v for k, v in state["projector"].items()}
    for name, ab in state["lora"].items():
        flat[f"{name}.A"], flat[f"{name}.B"] = ab["A"], ab["B"]
    return {k: v.clone() for k, v in flat.items()}


def test_resume_continues_exactly(tmp_path: Path, scenes: list[Any], tiny_parts: Any) -> None:
    torch.set_num_threads(1)
    cache = _cache(tmp_path, scenes)
    # step 0 aligns the projector alone; steps 1-2 go through the language model
    config = tr.TrainConfig(batch_size=2, scenes=6, align_steps=1, steps=2, warmup=1)
    straight = tr.Trainer(config, cache, tiny_parts)
    for _ in range(3):
        straight.train_step()

    first = tr.Trainer(config, cache, tiny_parts)
    for _ in range(2):
        first.train_step()
    first.save(tmp_path / "checkpoint.pt", history=[])
    resumed = tr.Trainer(config, cache, tiny_parts)
    resumed.load(tmp_path / "checkpoint.pt")
    assert resumed.step == 2
    resumed.train_step()

    expected, got = _params(straight), _params(resumed)
    assert set(expected) == set(got)
    moved = _params(tr.Trainer(config, cache, tiny_parts))
    assert any(not torch.equal(expected[k], moved[k]) for k in expected)  # training did something
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0)


def test_focus_phase_extends_a_finished_run(
    tmp_path: Path, scenes: list[Any], tiny_parts: Any
) -> None:
    """A finished two-phase state continues into a focus phase; other changes are refused."""
    from collections import Counter

    torch.set_num_threads(1)
    cache = _cache(tmp_path, scenes)
    base = tr.TrainConfig(batch_size=4, scenes=6, align_steps=1, steps=1, warmup=1, focus_steps=0)
    finished = tr.Trainer(base, cache, tiny_parts)
    for _ in range(base.total_steps):
        finished.train_step()
    finished.save(tmp_path / "checkpoint.pt", history=[])

    weights = (0.0, 0.0, 1.0, 0.0)  # position questions only
    focus = replace(
        base,
        focus_steps=2,
        focus_caption_fraction=0.25,
        focus_weights=weights,
        focus_open_fraction=0.0,
        focus_followup_fraction=0.0,
    )
    extended = tr.Trainer(focus, cache, tiny_parts)
    extended.load(tmp_path / "checkpoint.pt")
    assert extended.step == base.total_steps and focus.total_steps == base.total_steps + 2
    before = _params(extended)
    while extended.step < focus.total_steps:
        extended.train_step()
    assert any(not torch.equal(before[k], v) for k, v in _params(extended).items())

    categories: Counter[str] = Counter()
    for step in range(focus.steps, focus.steps + 30):  # language-model steps of the focus phase
        batch = tr.examples_for_step(cache, focus, step)
        assert batch[0].question == tr.CAPTION_PROMPT  # 1 of 4 slots describes
        for example in batch[1:]:
            record = cache.scenes[example.scene]
            categories.update(c for t, _, c in record["questions"] if t == example.question)
    assert set(categories) == {"position"}
    assert tr.examples_for_step(cache, focus, 0) == tr.examples_for_step(cache, base, 0)

    other = tr.Trainer(replace(focus, lr_lora=1e-4), cache, tiny_parts)
    with pytest.raises(VlmflowError, match="other settings"):
        other.load(tmp_path / "checkpoint.pt")


def test_focus_phase_mixes_open_and_followup_questions(tmp_path: Path, scenes: list[Any]) -> None:
    from vlmflow.scenes.questions import open_questions

    cache = _cache(tmp_path, scenes)
    focus_only = tr.TrainConfig(batch_size=4, scenes=6, steps=0, focus_steps=40)
    config = replace(focus_only, focus_open_fraction=0.5, focus_followup_fraction=0.5)
    open_seen = followups = yes_no = 0
    for step in range(40):
        for example in tr.examples_for_step(cache, config, step)[1:]:
            scene = scenes[example.scene]
            followups += example.followup
            if example.answer in ("Yes.", "No."):
                yes_no += 1
                continue
            # an open question's answer is the scene's truth: its cells, or its count
            assert (example.question, example.answer) in open_questions(scene.objects)
            open_seen += 1
    assert open_seen > 20 and yes_no > 20 and 20 < followups < 100
    base = replace(config, focus_steps=0, focus_open_fraction=0.0, focus_followup_fraction=0.0)
    assert config.extends(base)  # the new mix may extend a finished run too


def test_quiz_phase_extends_a_finished_run_exactly(
    tmp_path: Path, scenes: list[Any], tiny_parts: Any
) -> None:
    """A finished three-phase state continues into the quiz phase, whose extra LoRA starts there:
    the result equals a run with the quiz phase from the start, step for step."""
    torch.set_num_threads(1)
    cache = _cache(tmp_path, scenes)
    base = tr.TrainConfig(
        batch_size=4, scenes=6, align_steps=1, steps=1, focus_steps=1, warmup=1, quiz_steps=0
    )
    quiz = replace(base, quiz_steps=2, quiz_turns=3, quiz_lora_modules=("o_proj", "down_proj"))
    assert quiz.extends(base) and not base.extends(quiz)
    assert not replace(quiz, quiz_turns=4).extends(quiz)  # a started phase keeps its settings

    finished = tr.Trainer(base, cache, tiny_parts)
    assert not any("o_proj" in n for n in finished.lora)  # no quiz phase, no extra modules
    for _ in range(base.total_steps):
        finished.train_step()
    finished.save(tmp_path / "checkpoint.pt", history=[])

    extended = tr.Trainer(quiz, cache, tiny_parts)
    extended.load(tmp_path / "checkpoint.pt")
    late = {n for n in extended.lora if n.endswith(("o_proj", "down_proj"))}
    assert len(late) == 2 * len(extended.lm.model.layers)
    start = _params(extended)
    assert all(not start[f"{n}.B"].any() for n in late)  # zero B: the model is unchanged
    while extended.step < quiz.total_steps:
        extended.train_step()

    straight = tr.Trainer(quiz, cache, tiny_parts)
    while straight.step < quiz.quiz_start:
        straight.train_step()
    assert all(not _params(straight)[f"{n}.B"].any() for n in late)  # frozen before the quiz
    while straight.step < quiz.total_steps:
        straight.train_step()

    got, expected = _params(extended), _params(straight)
    assert all(got[f"{n}.B"].any() for n in late)  # the quiz phase trained them
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0)


def _small_config(**phases: int) -> tr.TrainConfig:
    """One alignment and one language step, then the given later phases, on 6 scenes."""
    return tr.TrainConfig(
        batch_size=4,
        scenes=6,
        align_steps=1,
        steps=1,
        focus_steps=0,
        warmup=1,
        quiz_turns=2,
        quiz_lora_modules=("o_proj",),
        **phases,  # type: ignore[arg-type]
    )


def test_where_phase_extends_a_quiz_run_and_reads_cells_as_position_words(
    tmp_path: Path, scenes: list[Any], tiny_parts: Any
) -> None:
    """The where phase continues a finished quiz state exactly; its loss is off before it and
    targets, for every image token, the row and column words the questions use for its cell."""
    from vlmflow.scenes.layout import POSITIONS

    torch.set_num_threads(1)
    cache = _cache(tmp_path, scenes)
    base = _small_config(quiz_steps=1)
    where = replace(base, where_steps=2, where_caption_fraction=0.5)
    assert where.extends(base) and not base.extends(where)
    assert where.where_start == base.total_steps

    finished = tr.Trainer(base, cache, tiny_parts)
    while finished.step < base.total_steps:
        assert finished.train_step().where == 0.0  # no where phase, no where loss
    finished.save(tmp_path / "checkpoint.pt", history=[])
    extended = tr.Trainer(where, cache, tiny_parts)
    extended.load(tmp_path / "checkpoint.pt")
    while extended.step < where.total_steps:
        assert extended.train_step().where > 0.0

    straight = tr.Trainer(where, cache, tiny_parts)
    while straight.step < where.total_steps:
        straight.train_step()
    got, expected = _params(extended), _params(straight)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0)

    # the loss's word targets: image token i sits in cell (row, column) of the 3x3 grid, and
    # those are the words a question about that cell says ("center" alone for the middle one)
    decode = straight.prompts.tokenizer.decode
    rows, columns = [
        [decode(ids).strip() for ids in part]
        for part in (straight.where_ids[:3], straight.where_ids[3:])
    ]
    for token in range(256):
        r, c = (token // 16) * 3 // 16, (token % 16) * 3 // 16
        cell = POSITIONS[3 * r + c].split()
        assert columns[c] in cell and (rows[r] in cell or cell == ["center"])
    # a where-phase batch describes its first `where_caption_fraction` slots, quizzes the rest
    batch = tr.examples_for_step(cache, where, where.where_start - where.align_steps)
    assert [e.question == tr.CAPTION_PROMPT for e in batch] == [True, True, False, False]
    assert all(len(e.more) == where.quiz_turns - 1 for e in batch[2:])


def test_where_phase_moves_position_negatives_to_empty_cells(
    tmp_path: Path, scenes: list[Any]
) -> None:
    """With `where_empty_fraction` 1 every position "no" question of the where phase names a
    cell no object holds (and is still true); with 0 the batches are the quiz's own draws."""
    from vlmflow.scenes.questions import Question, true_answer

    cache = _cache(tmp_path, scenes)
    plain = tr.TrainConfig(
        batch_size=6, scenes=6, steps=0, focus_steps=0, where_steps=20, where_caption_fraction=0
    )
    empty = replace(plain, where_empty_fraction=1.0)
    moved = kept = 0
    for step in range(20):
        for ex_plain, ex_empty in zip(
            tr.examples_for_step(cache, plain, step),
            tr.examples_for_step(cache, empty, step),
            strict=True,
        ):
            objects = scenes[ex_empty.scene].objects
            held = {o.position for o in objects}
            for text, answer in [(ex_empty.question, ex_empty.answer), *ex_empty.more]:
                if not text.startswith("Is there") or " of the image?" not in text:
                    continue  # not a position question
                said = "yes" if answer == "Yes." else "no"
                assert true_answer(objects, Question(text, said, "position")) == said
                if said == "no":
                    assert not any(text.endswith(f"the {p} of the image?") for p in held)
                    moved += 1
            for text, answer in [(ex_plain.question, ex_plain.answer), *ex_plain.more]:
                kept += answer == "No." and any(
                    text.endswith(f"the {p} of the image?") for p in held
                )
    assert moved > 10 and kept > 0  # without the option, some negatives name a held cell


def test_check_phase_extends_a_where_run_exactly_at_its_own_lora_rate(
    tmp_path: Path, scenes: list[Any], tiny_parts: Any
) -> None:
    """A finished where state continues into the check phase step for step (atol 0); the
    phase's LoRA groups run at `check_lr_lora`, the projector at its usual rate."""
    torch.set_num_threads(1)
    cache = _cache(tmp_path, scenes)
    base = _small_config(where_steps=1)
    check = replace(base, check_steps=2, check_questions=3, check_lr_lora=5e-3)
    assert check.extends(base) and not base.extends(check)
    assert check.check_start == base.total_steps == check.total_steps - 2
    assert not replace(check, check_questions=4).extends(check)  # a started phase keeps them

    finished = tr.Trainer(base, cache, tiny_parts)
    while finished.step < base.total_steps:
        finished.train_step()
    finished.save(tmp_path / "checkpoint.pt", history=[])
    extended = tr.Trainer(check, cache, tiny_parts)
    extended.load(tmp_path / "checkpoint.pt")
    rates = []
    while extended.step < check.total_steps:
        assert extended.train_step().where > 0.0  # the where loss stays on
        rates.append([g["lr"] for g in extended.optimizer.param_groups])
    factor = extended.learning_rate_factor(check.check_start)
    assert rates[0][1:] == pytest.approx([5e-3 * factor] * 2)
    assert rates[0][0] == pytest.approx(check.lr_projector * factor)

    straight = tr.Trainer(check, cache, tiny_parts)
    while straight.step < check.total_steps:
        straight.train_step()
    got, expected = _params(extended), _params(straight)
    assert any(not torch.equal(got[k], _params(finished)[k]) for k in got)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0)


def test_check_questions_are_true_distinct_yes_no_questions(
    tmp_path: Path, scenes: list[Any]
) -> None:
    from vlmflow.scenes.questions import Question, true_answer

    cache = _cache(tmp_path, scenes)
    config = tr.TrainConfig(
        batch_size=4, scenes=6, steps=0, focus_steps=0, check_steps=20, check_caption_fraction=0.25
    )
    sizes = []
    answers: set[str] = set()
    for step in range(20):
        batch = tr.examples_for_step(cache, config, step)
        assert batch[0].question == tr.CAPTION_PROMPT and not batch[0].alone
        for example in batch[1:]:
            turns = [(example.question, example.answer), *example.more]
            assert example.alone and not example.followup
            assert len({q for q, _ in turns}) == len(turns) <= config.check_questions
            sizes.append(len(turns))
            objects = scenes[example.scene].objects
            for question, answer in turns:
                assert answer == tr.ANSWERS[true_answer(objects, Question(question, "", ""))]
                answers.add(answer)
    assert answers == {"Yes.", "No."}
    assert max(sizes) == config.check_questions


def test_checked_questions_are_answered_as_if_asked_alone(
    tmp_path: Path, scenes: list[Any], tiny_parts: Any
) -> None:
    """Under the block mask and restarted positions, each question of a check gets the logits
    it gets in a sequence of its own; a caption row in the same batch gets its plain ones."""
    torch.set_num_threads(1)
    cache = _cache(tmp_path, scenes)
    config = tr.TrainConfig(batch_size=2, scenes=6, check_steps=1)
    trainer = tr.Trainer(config, cache, tiny_parts, lm_dtype=torch.float32)
    turns = [(q.text, tr.ANSWERS[q.answer]) for q in scenes[2].questions[:5]]
    check = tr.Example(2, turns[0][0], turns[0][1], more=tuple(turns[1:]), alone=True)
    caption = tr.Example(3, tr.CAPTION_PROMPT, cache.scenes[3]["description"])
    ids, mask, positions, labels = tr.collate_alone(trainer.prompts, [check, caption], 0)
    assert mask.shape == (2, 1, ids.shape[1], ids.shape[1]) and mask.dtype == torch.bool

    def answer_logits(examples: list[tr.Example], **packed: torch.Tensor) -> torch.Tensor:
        image, _ = trainer.image_embeddings([e.scene for e in examples])
        if not packed:
            ids_, mask_, labels_ = tr.collate(trainer.prompts, examples, 0)
            packed = {"ids": ids_, "mask": mask_, "labels": labels_}
        with torch.no_grad():
            hidden = trainer.lm.model(
                inputs_embeds=trainer.embed(packed["ids"], image),
                attention_mask=packed["mask"],
                position_ids=packed.get("positions"),
            ).last_hidden_state
            keep = packed["labels"][:, 1:] != -100
            return trainer.lm.lm_head(hidden[:, :-1][keep])  # (answer tokens, vocab)

    got = answer_logits([check, caption], ids=ids, mask=mask, positions=positions, labels=labels)
    alone = [tr.Example(2, q, a) for q, a in turns] + [caption]
    expected = torch.cat([answer_logits([e]) for e in alone])
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # and a quiz (each turn sees the earlier ones) does differ
    quiz = tr.Example(2, turns[0][0], turns[0][1], more=tuple(turns[1:]))
    asked = int((labels[0] != -100).sum())  # the check's answer tokens
    quizzed = answer_logits([quiz])
    assert quizzed.shape[0] == asked
    assert not torch.allclose(quizzed, expected[:asked], atol=1e-3)


def test_quiz_questions_are_true_and_in_turns(tmp_path: Path, scenes: list[Any]) -> None:
    from vlmflow.scenes.questions import Question, open_questions, true_answer

    cache = _cache(tmp_path, scenes)
    config = tr.TrainConfig(batch_size=6, scenes=6, steps=0, focus_steps=0, quiz_steps=20)
    assert config.quiz_turns > 1
    kinds: set[str] = set()
    followups = 0
    for step in range(20):
        batch = tr.examples_for_step(cache, config, step)
        assert batch[0].question == tr.CAPTION_PROMPT and not batch[0].more  # 1 slot of 6
        for example in batch[1:]:
            turns = [(example.question, example.answer), *example.more]
            assert len(turns) == config.quiz_turns
            assert len({q for q, _ in turns}) == len(turns)  # no question asked twice
            followups += example.followup
            objects = scenes[example.scene].objects
            for question, answer in turns:
                if answer in ("Yes.", "No."):
                    truth = true_answer(objects, Question(question, "", ""))
                    assert answer == tr.ANSWERS[truth]
                    kinds.add(answer)
                else:
                    assert (question, answer) in open_questions(objects)
                    kinds.add("open")
    assert kinds == {"Yes.", "No.", "open"}
    assert 10 < followups < 100


def test_quiz_layout_is_the_chat_template(checkpoint: Path) -> None:
    """A quiz is token for token the processor's rendering of the conversation, and only the
    answers carry labels."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    prompts = tr.Prompts(processor.tokenizer)
    turns = [
        ("Is there a dog in the image?", "Yes."),
        ("Where is the dog in the image?", "In the top left."),
        ("Are there exactly two cups in the image?", "No."),
    ]
    example = tr.Example(0, *turns[0], more=tuple(turns[1:]))
    ids, _, labels = tr.collate(prompts, [example], pad_id=0)
    messages: list[dict[str, Any]] = []
    for i, (question, answer) in enumerate(turns):
        image = [{"type": "image"}] if i == 0 else []
        messages.append({"role": "user", "content": [*image, {"type": "text", "text": question}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    text = processor.apply_chat_template(messages)
    expected = list(processor(images=Image.new("RGB", (448, 448)), text=text)["input_ids"][0])
    got = ids[0].tolist()
    assert expected[: len(got)] == got
    assert processor.tokenizer.decode(expected[len(got) :]).strip() == ""
    labelled = processor.tokenizer.decode(ids[0][labels[0] != -100])
    assert labelled == "".join(f"{a}<|im_end|>" for _, a in turns)


def test_training_prompt_matches_the_processor(checkpoint: Path) -> None:
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    prompts = tr.Prompts(processor.tokenizer)
    question = "Is there a dog in the image?"
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor(images=Image.new("RGB", (448, 448)), text=text)["input_ids"][0]
    assert list(ids) == prompts.prompt(question)


def test_followup_prompt_is_the_layout_compress_continues(checkpoint: Path) -> None:
    """A follow-up training example is token for token what re-prompting feeds the model: the
    describe prompt's closed first turn, then the question as a second user turn."""
    from PIL import Image

    import vlmflow
    from vlmflow.compression.context import _context_text, continuation_ids

    handle = vlmflow.load(str(checkpoint))
    question = "Where is the dog in the image?"
    context = _context_text(handle, tr.CAPTION_PROMPT)
    first = handle.processor(images=Image.new("RGB", (448, 448)), text=context)["input_ids"][0]
    expected = [*list(first), *continuation_ids(handle, question)[0].tolist()]
    prompts = tr.Prompts(handle.processor.tokenizer)
    assert prompts.prompt(question, followup=True) == expected
    assert prompts.prompt(question) != expected


def test_trained_weights_survive_assembly(
    tmp_path: Path, scenes: list[Any], pieces_installed: None
) -> None:
    """Logits of the training path equal those of the assembled checkpoint (fold + LoRA merge)."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmflow.default_model import ensure_checkpoint
    from vlmflow.default_model.dinov2_onnx import load_dinov2
    from vlmflow.default_model.processor import image_processor

    scene = scenes[1]
    pixels = image_processor()([scene.image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = load_dinov2()(pixels, output_hidden_states=True).hidden_states[-1]
    features = hidden[:, 1:].numpy()  # (1, 256, 384)
    cells = tr.cell_labels(scene, 0.2)[None]
    cache = tr.FeatureCache(tmp_path, features, cells, [tr.scene_record(scene)])
    config = tr.TrainConfig(batch_size=1, scenes=1)
    trainer = tr.Trainer(config, cache, lm_dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    for module in trainer.lora.values():  # B starts at zero: make the merge visible
        module.lora_B.data.copy_(torch.randn(module.lora_B.shape, generator=generator) * 0.05)
    weights = tmp_path / "candidate.safetensors"
    trainer.export(weights, {"steps": "0"})

    folder = ensure_checkpoint(tmp_path / "cache", weights_file=weights)
    assert folder.name.startswith("vlmflow-tiny-1-")
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    question = "Is there a dog in the image?"
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    image: Image.Image = scene.image
    inputs = processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        got = model(**inputs).logits[0, -1]  # (vocab + 1,)
    expected = trainer.next_token_logits(features, [question])[0]  # (vocab,)
    torch.testing.assert_close(got[: expected.shape[0]], expected, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--quiz-turns", "0"),
        ("--quiz-steps", "-1"),
        ("--quiz-caption-fraction", "1.5"),
        ("--quiz-followup-fraction", "x"),
        ("--check-questions", "0"),
        ("--check-caption-fraction", "2"),
        ("--check-lr-lora", "-1"),
    ],
)
def test_training_script_refuses_bad_quiz_flags(flag: str, value: str) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "train_default.py"
    done = subprocess.run(
        [sys.executable, str(script), flag, value, "--eval-only"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train_default.py: error: argument {flag}: needs ")
