"""The Table-1 experiment (`reprompt`) through the runner, and its table arithmetic."""

from __future__ import annotations

import pytest
from runs import run_into

import vlmflow
from vlmflow.errors import VlmflowError
from vlmflow.experiments import ImageSource, create
from vlmflow.experiments.reprompt import table
from vlmflow.store import ResultStore


def test_reprompt_rows_on_a_tiny_model(tiny_path, tmp_path):
    handle = vlmflow.load(str(tiny_path("llava")))
    experiment = create("reprompt", {"ks": [1.0, 0.25], "k_only": 0.25, "max_new_tokens": 6})
    settings = ["naive", "describe-to-llm", "k=1.0", "k=0.25", "query-only", "k-only=0.25"]
    with ResultStore.open(tmp_path / "out") as store:
        summary = run_into(store, [experiment], "scenes:1", handle)
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


ENDPOINT_ONLY = {"ks": [], "k_only": None, "query_only": False, "naive": False, "max_new_tokens": 4}


def run_reprompt(handle, store, options):
    return run_into(store, [create("reprompt", options)], "scenes:1", handle)


def test_describe_to_llm_over_an_endpoint(chat_server, tiny_path, tmp_path):
    handle = vlmflow.load(str(tiny_path("llava")))
    for _ in range(8):
        chat_server.answer("Yes.")
    options = {**ENDPOINT_ONLY, "llm_url": chat_server.url, "llm_model": "stub-llm"}
    with ResultStore.open(tmp_path / "out") as store:
        own = run_reprompt(handle, store, ENDPOINT_ONLY)
        external = run_reprompt(handle, store, options)
        assert (external.done, external.failed) == (1, 0)
        assert own.run_ids == external.run_ids  # both rows land in one run
        rows = {r.setting: r for r in store.rows(experiment="reprompt")}
    assert sorted(rows) == ["describe-to-llm", "describe-to-llm@stub-llm"]
    row = rows["describe-to-llm@stub-llm"]
    questions = row.payload["questions"]
    assert len(chat_server.requests) == len(questions) == 8
    for body, q in zip(chat_server.requests, questions, strict=True):
        assert body["model"] == "stub-llm" and "response_format" not in body
        content = body["messages"][-1]["content"]
        assert row.payload["description"] in content and q["text"] in content
        assert (q["reply"], q["parsed"]) == ("Yes.", "yes")
        assert q["correct"] == (q["answer"] == "yes")
    assert row.metrics["acc"] == 0.5  # one yes and one no per category
    result = table([("describe-to-llm@stub-llm", row.payload)])["describe-to-llm@stub-llm"]
    assert (result["acc"], result["acc+"]) == (50.0, 0.0)


def test_unreachable_endpoint_is_a_recorded_one_line_failure(tiny_path, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    handle = vlmflow.load(str(tiny_path("llava")))
    url = f"http://127.0.0.1:{port}/v1"
    options = {**ENDPOINT_ONLY, "llm_url": url, "llm_model": "m", "llm_retries": 0}
    with ResultStore.open(tmp_path / "out") as store:
        summary = run_reprompt(handle, store, options)
        assert (summary.done, summary.failed) == (0, 1)
        (failure,) = store.failures(experiment="reprompt")
    assert failure.setting == "describe-to-llm@m"
    assert "cannot reach describe-to-llm endpoint" in failure.message
    assert "check llm_url in the reprompt config" in failure.message
    assert "\n" not in failure.message


def test_endpoint_options_are_checked(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(VlmflowError, match="llm_url needs llm_model"):
        create("reprompt", {"llm_url": "http://127.0.0.1:1/v1"})
    with pytest.raises(VlmflowError, match="set OPENAI_API_KEY"):
        create("reprompt", {"llm_model": "gpt-4o-mini"})
    monkeypatch.setenv("MY_KEY", "sk-test")
    experiment = create("reprompt", {"llm_model": "gpt-4o-mini", "llm_api_key_env": "MY_KEY"})
    assert "describe-to-llm@gpt-4o-mini" in experiment.settings(None)
    assert experiment.config == create("reprompt").config  # the row name carries the model
