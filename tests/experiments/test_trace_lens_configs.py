"""`trace` and `lens` options: run ids of existing configs stay, the control pair runs alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from runs import run_into

from vlmflow.analysis import DEFAULT_PAIRS
from vlmflow.errors import VlmflowError
from vlmflow.experiments import create
from vlmflow.store import ResultStore, RunSpec


def test_run_ids_of_existing_configs_are_unchanged() -> None:
    # runs stored before the control pair and COCO masks existed resume under the same ids
    trace = create("trace", {"questions": ["yesno", "open"], "limit": 1})
    assert trace.config == {
        "questions": ("yesno", "open"),
        "ask": (),
        "limit": 1,
        "window": None,
        "pairs": ("image->last", "image->question", "question->last"),
        "answer_tokens": 1,
    }
    lens = create("lens", {"top_k": 5})
    assert lens.config == {"prompt": "Describe the image.", "top_k": 5, "layers": "all"}
    model, source = "vlmflow-tiny@1-81e16d127a", "scenes:80"
    assert RunSpec("trace", model, source, trace.config).run_id == "ddb1ad8145732b13"
    assert RunSpec("lens", model, source, lens.config).run_id == "e86a08e21a64f4ec"


def test_shipped_configs_give_the_readme_runs() -> None:
    # README's commands: configs/beyond.toml resumes the stored runs, the control runs alone
    from vlmflow.experiments.command import _read_config

    root = Path(__file__).resolve().parents[2] / "configs"
    both = _read_config(str(root / "beyond.toml"), ["trace", "lens"])
    model, source = "vlmflow-tiny@1-81e16d127a", "scenes:80"
    trace = create("trace", both["trace"]).config
    assert RunSpec("trace", model, source, trace).run_id == "ddb1ad8145732b13"
    assert RunSpec("lens", model, source, create("lens", both["lens"]).config).run_id == (
        "e86a08e21a64f4ec"
    )
    control = create("trace", _read_config(str(root / "beyond-control.toml"), ["trace"])["trace"])
    assert control.config == {**trace, "pairs": ("last->last",)}


def test_bad_pairs_are_refused_in_one_line() -> None:
    for pairs, needle in [([], "at least one pair"), (["image->prefix"], "not one of")]:
        with pytest.raises(VlmflowError, match=needle) as err:
            create("trace", {"pairs": pairs})
        assert "\n" not in str(err.value)


def test_trace_runs_only_the_control_and_the_report_draws_it(
    tiny_path: Callable[[str], Path], tmp_path: Path
) -> None:
    import vlmflow
    from vlmflow.report import build_report

    handle = vlmflow.load(str(tiny_path("llava")))
    control = create("trace", {"pairs": ["last->last"], "limit": 1, "questions": ["yesno"]})
    assert control.config["pairs"] == ("last->last",)
    with ResultStore.open(tmp_path / "out") as store:
        summary = run_into(store, [control], "scenes:1", handle)
        assert summary.failed == 0 and summary.done == 1
        (row,) = store.rows()
    (record,) = row.payload["questions"]
    assert set(record["change"]) == {"last->last"}
    assert len(record["change"]["last->last"]) == len(row.payload["starts"])
    assert "last->last min change" in row.metrics
    assert not any(f"{p} min change" in row.metrics for p in DEFAULT_PAIRS)
    page = build_report(tmp_path / "out").read_text(encoding="utf-8")
    assert "last-&gt;last" in page and "is the control" in page
