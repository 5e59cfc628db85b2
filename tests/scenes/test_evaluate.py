import json

import pytest

from vlmflow.scenes.evaluate import (
    QUESTION_HINTED,
    AnswerRecord,
    SceneEvaluation,
    SceneRecord,
    evaluate,
    parse_yes_no,
)


@pytest.mark.parametrize(
    ("reply", "parsed"),
    [
        ("Yes.", "yes"),
        ("yes, there is a dog", "yes"),
        ("No", "no"),
        ("  **NO**.", "no"),
        ('"Yes"', "yes"),
        ("Maybe.", None),
        ("There is a dog.", None),
        ("yesterday", None),
        ("None of them", None),
        ("no-one", None),
        ("", None),
    ],
)
def test_parse_yes_no(reply, parsed):
    assert parse_yes_no(reply) == parsed


def _q(category, answer, reply):
    return AnswerRecord(f"{category} {answer}?", category, answer, reply)


def _records():
    first = SceneRecord(
        "a",
        objects=("dog", "apple", "car"),
        description="two puppies and an apple and a bus",
        mentioned=("dog", "apple", "bus"),
        questions=(
            _q("existence", "yes", "Yes."),
            _q("existence", "no", "No."),
            _q("count", "yes", "Yes."),
            _q("count", "no", "Yes."),  # wrong: this pair fails ACC+
        ),
    )
    second = SceneRecord(
        "b",
        objects=("cat",),
        description="a cat",
        mentioned=("cat",),
        questions=(
            _q("existence", "yes", "Yes"),
            _q("existence", "no", "I cannot tell."),  # unparsed, counted wrong
            _q("count", "yes", "yes"),
            _q("count", "no", "no"),
        ),
    )
    return [first, second]


def test_object_counts_are_type_level_and_micro_averaged():
    first, second = _records()
    assert first.true_positives == ("dog", "apple")
    assert first.false_positives == ("bus",)
    assert first.false_negatives == ("car",)
    result = SceneEvaluation.from_records([first, second])
    o = result.objects
    assert (o.tp, o.fp, o.fn) == (3, 1, 1)
    assert o.precision == pytest.approx(3 / 4)
    assert o.recall == pytest.approx(3 / 4)
    assert o.f1 == pytest.approx(3 / 4)
    empty = SceneEvaluation.from_records([SceneRecord("c", ("dog",), "", ())]).objects
    assert (empty.precision, empty.recall, empty.f1) == (0.0, 0.0, 0.0)


def test_acc_acc_plus_and_mme_score_per_category():
    result = SceneEvaluation.from_records(_records())
    assert list(result.categories) == ["existence", "count"]
    existence, count = result.categories["existence"], result.categories["count"]
    # existence: 3 of 4 right (one unparsed); scene a's pair right, scene b's not
    assert (existence.accuracy, existence.acc_plus, existence.unparsed) == (0.75, 0.5, 1)
    assert existence.score == pytest.approx(125.0)
    # count: 3 of 4 right; scene a has one of its two questions wrong
    assert (count.accuracy, count.acc_plus, count.unparsed) == (0.75, 0.5, 0)
    assert result.mme_score == pytest.approx(250.0)
    overall = result.yes_no
    assert (overall.questions, overall.correct, overall.unparsed) == (8, 6, 1)
    assert (overall.groups, overall.groups_correct) == (4, 2)
    assert overall.yes_rate == pytest.approx(5 / 8)
    data = json.loads(json.dumps(result.to_json()))
    assert data["categories"]["count"]["acc_plus"] == 0.5
    assert data["objects"]["tp"] == 3 and data["scenes"] == 2


def test_smoke_on_a_tiny_random_model(tiny_path):
    import vlmflow
    from vlmflow.scenes import load_fixed_scene

    handle = vlmflow.load(str(tiny_path("llava")))
    scenes = [load_fixed_scene(0), load_fixed_scene(1)]
    result = evaluate(
        handle,
        scenes,
        max_new_tokens=4,
        answer_tokens=2,
        batch_size=4,
        question_template=QUESTION_HINTED,
        progress=False,
    )
    assert [r.scene for r in result.records] == [s.id for s in scenes]
    for record, scene in zip(result.records, scenes, strict=True):
        assert record.objects == scene.names
        assert [q.text for q in record.questions] == [q.text for q in scene.questions]
        assert set(record.true_positives) | set(record.false_negatives) == set(scene.names)
        json.dumps(record.to_json())
    o, y = result.objects, result.yes_no
    assert o.tp + o.fn == sum(len(s.names) for s in scenes)
    assert o.tp + o.fp == sum(len(r.mentioned) for r in result.records)
    assert y.questions == 16 and y.groups == 8
    assert y.correct == sum(q.correct for r in result.records for q in r.questions)
    for value in (o.precision, o.recall, o.f1, y.accuracy, y.acc_plus, y.yes_rate):
        assert 0.0 <= value <= 1.0
    assert list(result.categories) == ["existence", "count", "position", "category"]
    assert 0.0 <= result.mme_score <= 800.0
    assert result.settings["question_template"] == QUESTION_HINTED


def test_cli_rejects_bad_scene_count(capsys):
    from vlmflow.cli import main

    assert main(["scenes", "evaluate", "--scenes", "0"]) == 1
    assert "out of range" in capsys.readouterr().err


def test_cli_prints_json_and_writes_records(tiny_path, tmp_path, capsys):
    from vlmflow.cli import main

    out = tmp_path / "records.jsonl"
    argv = ["scenes", "evaluate", "--model", str(tiny_path("llava")), "--scenes", "1"]
    argv += ["--max-new-tokens", "2", "--answer-tokens", "1", "--json", "--out", str(out)]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["scenes"] == 1 and set(data["categories"]) == {
        "existence",
        "count",
        "position",
        "category",
    }
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["scene"] for r in records] == ["fixed-00"] and len(records[0]["questions"]) == 8
    assert data["yes_no"]["correct"] == sum(q["correct"] for q in records[0]["questions"])
