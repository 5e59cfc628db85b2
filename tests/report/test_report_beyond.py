"""The trace and lens sections: built from real runs on a tiny LLaVA, checked in headless
Chromium (the same browser set-up as test_report_browser)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.report.conftest import open_offline


@pytest.fixture(scope="module")
def beyond_report(
    tiny_path: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    import vlmflow
    from vlmflow.experiments import ImageSource, Runner, create
    from vlmflow.report import build_report
    from vlmflow.store import ResultStore

    handle = vlmflow.load(str(tiny_path("llava")))
    out = tmp_path_factory.mktemp("beyond") / "out"
    with ResultStore.open(out) as store:
        summary = Runner(
            [create("trace", {"limit": 1}), create("lens", {"top_k": 3})],
            ImageSource.parse("scenes:2"),
            store,
            model="tiny-llava",
            handle_factory=lambda: handle,
            progress=False,
        ).run()
        assert summary.failed == 0 and summary.done == 6  # 2 images x (yesno, open, lens)
        rows = {(r.experiment, r.item, r.setting): r for r in store.rows()}
    trace_row = rows[("trace", "fixed-00", "yesno")]
    record = trace_row.payload["questions"][0]
    assert record["category"] == "existence" and len(record["change"]["image->last"]) == 4
    lens_row = rows[("lens", "fixed-00", "lens")]
    assert len(lens_row.payload["on"]) == handle.num_layers
    assert lens_row.metrics["on_tokens"] + lens_row.metrics["off_tokens"] == 16
    return build_report(out)


def test_trace_and_lens_sections_are_in_the_report(beyond_report: Path) -> None:
    page = beyond_report.read_text(encoding="utf-8")
    assert 'id="trace"' in page and 'id="lens"' in page
    assert "Answer tracing" in page and "Logit lens over image tokens" in page
    figures = sorted(p.name for p in (beyond_report.parent / "figures").glob("*.png"))
    assert any(n.startswith("trace-") and n.endswith("-curves.png") for n in figures)
    assert any(n.startswith("lens-") and n.endswith("-naming.png") for n in figures)


def test_lens_viewer_steps_through_layers_in_chromium(
    browser: Any,
    beyond_report: Path,
) -> None:
    opened = open_offline(browser, beyond_report)
    page, remote, problems = opened.page, opened.remote, opened.problems
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(images) == 2 and all(done and width > 0 for done, width in images)

    label, canvas = page.locator("#lens-layer-label"), page.locator("#lens-canvas")

    def drawn() -> str:
        return str(canvas.evaluate("c => c.toDataURL()"))

    assert label.inner_text().startswith("layer 3: ")
    last = drawn()
    page.locator("#lens-layer").focus()
    page.keyboard.press("Home")
    assert label.inner_text().startswith("layer 0: ")
    assert drawn() != last
    first_image = drawn()
    page.select_option("#lens-image", index=1)
    assert drawn() != first_image
    assert remote == [] and problems == []
    page.context.close()
