"""The agreement harness (paper Table A1) and the shipped hand-labelled set."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from vlmflow.errors import VlmflowError
from vlmflow.judge import agreement


def test_shipped_set_is_large_and_varied() -> None:
    rows = [json.loads(line) for line in agreement.shipped_labels().read_text().splitlines()]
    assert len(rows) >= 40
    decisions = agreement.load_labels(agreement.shipped_labels())
    assert len(decisions) >= 400
    answers = Counter(d.human for d in decisions)
    assert answers[True] > 150 and answers[False] > 150  # both answers well represented
    assert {r["split"] for r in rows} == {"dev", "heldout"}
    assert len({r["id"] for r in rows}) == len(rows)


def test_confusion_matrix_and_rates() -> None:
    decisions = [
        agreement.Decision("t1", "dog", True),
        agreement.Decision("t1", "cat", False),
        agreement.Decision("t1", "car", True),
        agreement.Decision("t2", "sky", False),
    ]
    said = {"t1": {"dog": True, "cat": True, "car": False}, "t2": {"sky": False}}
    calls = []

    def ask(text: str, objects: Any) -> list[bool]:
        calls.append(text)
        return [said[text][o] for o in objects]

    result = agreement.measure(decisions, ask)
    assert calls == ["t1", "t2"]  # one question per text
    assert (result.judge_yes_human_yes, result.judge_yes_human_no) == (1, 1)
    assert (result.judge_no_human_yes, result.judge_no_human_no) == (1, 1)
    assert result.tpr == 0.5 and result.tnr == 0.5 and result.accuracy == 0.5
    assert len(result.disagreements) == 2
    assert "95.7%" in result.table()  # the paper's number, printed for reference


def test_failures_are_not_counted_as_no() -> None:
    from vlmflow.judge.protocol import JudgeReplyError

    def ask(text: str, objects: Any) -> list[bool]:
        raise JudgeReplyError("bad")

    result = agreement.measure([agreement.Decision("t", "dog", False)], ask)
    assert result.failed == 1 and result.total == 0


def test_both_file_forms_and_splits(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    lines = [
        {"text": "A dog.", "object": "dog", "mentioned": True},
        {
            "id": "p",
            "split": "dev",
            "reference": "A cat.",
            "candidate": "A car.",
            "objects": [{"object": "cat", "reference": True, "candidate": False}],
        },
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert len(agreement.load_labels(path)) == 3
    assert [d.item for d in agreement.load_labels(path, split="dev")] == [
        "p:reference",
        "p:candidate",
    ]
    path.write_text("{broken\n")
    with pytest.raises(VlmflowError, match=":1:"):
        agreement.load_labels(path)


def test_offline_judge_meets_the_acceptance_bar(offline_judge: Any) -> None:
    decisions = agreement.load_labels(agreement.shipped_labels())
    result = agreement.measure(decisions, offline_judge.mentions)
    assert result.accuracy >= 0.90, result.table()
    assert result.tpr >= 0.85 and result.tnr >= 0.85
