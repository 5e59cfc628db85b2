"""The Table-1 experiment (`reprompt`) through the runner, and its table arithmetic."""

from __future__ import annotations

import pytest

import vlmflow
from vlmflow.errors import VlmflowError
from vlmflow.experiments import ImageSource, Runner, create
from vlmflow.experiments.reprompt import table
from vlmflow.store import ResultStore


def test_reprompt_rows_on_a_tiny_model(tiny_path, tmp_path):
    handle = vlmflow.load(str(tiny_path("llava")))
    experiment = create("reprompt", {"ks": [1.0, 0.25], "k_only": 0.25, "max_new_tokens": 6})
    settings = ["naive", "describe-to-llm", "k=1.0", "k=0.25", "query-only", "k-only=0.25"]
    with ResultStore.open(tmp_path / "out") as store:
        summary = Runner(
            [experiment],
            ImageSource.parse("scenes:1"),
            store,
            model="tiny",
            handle_factory=lambda: handle,
            progress=False,
        ).run()
        assert (summary.done, summary.failed) == (len(settings), 0)
        rows = {r.setting: r for r in store.rows(experiment="reprompt")}
    assert sorted(rows) == sorted(settings)
    for row in rows.values():
        questions = row.payload["questions"]
        assert len(questions) == 8  # one yes and one no in each of four categories
        assert {q["answer"] for q in questions} == {"yes", "no"}
        assert 0.0 <= row.metrics["acc"] <= 1.0
    tokens = {s: rows[s].metrics["tokens"] for s in settings}
    # the compressed contexts are smaller than the full one, the query-free one smallest
    assert tokens["k=0.25"] < tokens["k=1.0"]
    assert tokens["query-only"] < tokens["k=0.25"]
    assert tokens["k-only=0.25"] < tokens["k=0.25"]
    # k = 1 answers from the whole first turn: as long as the naive prompt plus that turn
    assert tokens["k=1.0"] > tokens["naive"]
    result = table((s, r.payload) for s, r in rows.items())
    assert set(result) == set(settings)
    assert all(0 <= result[s]["acc+"] <= result[s]["acc"] <= 100 for s in settings)


def test_table_counts_acc_plus_per_category():
    def q(category, answer, correct):
        return {"category": category, "answer": answer, "correct": correct, "tokens": 10}

    scene_a = {"questions": [q("count", "yes", True), q("count", "no", True)]}
    scene_b = {"questions": [q("count", "yes", True), q("count", "no", False)]}
    result = table([("k", scene_a), ("k", scene_b)])["k"]
    assert result["acc.count"] == 75.0
    assert result["acc+.count"] == 50.0
    assert result["tokens"] == 10


def test_reprompt_refuses_sources_without_questions(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(VlmflowError, match="scenes"):
        list(create("reprompt").items(ImageSource.parse(str(tmp_path))))
    with pytest.raises(VlmflowError, match="k must be"):
        create("reprompt", {"ks": [0.0]})
