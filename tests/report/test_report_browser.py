"""The report in headless Chromium: every image loads, the viewer responds, no console errors.

Needs Debian's Chromium and the Playwright driver (no browser download):
    apt-get install -y chromium
    pip install playwright
A missing browser or driver fails this test with that message; it is never skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.report.conftest import open_offline


def test_report_opens_offline_and_the_viewer_responds(browser: Any, report_path: Path) -> None:
    # the report must not need the network: any request that is not a local file fails
    opened = open_offline(browser, report_path)
    page, remote, problems = opened.page, opened.remote, opened.problems

    images = page.evaluate(
        "Array.from(document.images).map(i => [i.getAttribute('src').slice(0, 40),"
        " i.complete, i.naturalWidth])"
    )
    assert len(images) == 8  # seven figures and the viewer picture
    assert all(complete and width > 0 for _, complete, width in images), images

    label, canvas = page.locator("#viewer-layer-label"), page.locator("#viewer-canvas")

    def drawn() -> str:
        return str(canvas.evaluate("c => c.toDataURL()"))

    first_label, first_canvas = label.inner_text(), drawn()
    assert first_label.startswith("layer ")
    page.locator("#viewer-layer").focus()
    page.keyboard.press("Home")  # the slider moved by the keyboard, as a user would
    assert label.inner_text() != first_label and label.inner_text().startswith("layer 0 ")
    assert drawn() != first_canvas
    page.keyboard.press("ArrowRight")
    assert label.inner_text().startswith("layer 1 ")

    # generated tokens: the slider and a click on a token of the text pick the same map
    token_label = page.locator("#viewer-token-label")
    assert token_label.inner_text().startswith("all tokens")
    assert page.locator("#viewer-text .tok-on").count() == 0
    average = drawn()
    page.locator("#viewer-token").focus()
    page.keyboard.press("ArrowRight")
    assert token_label.inner_text().startswith("token 1 of ")
    first_token = drawn()
    assert first_token != average
    marked = page.locator("#viewer-text .tok-on")
    assert marked.count() == 1 and marked.get_attribute("title", timeout=1000).startswith(
        "token 1 of "
    )
    page.locator("#viewer-text .tok").nth(1).click()
    assert token_label.inner_text().startswith("token 2 of ")
    assert page.locator("#viewer-token").input_value() == "2"
    page.locator("#viewer-text .tok").nth(1).click()  # a second click goes back to the average
    assert token_label.inner_text().startswith("all tokens") and drawn() == average

    text = page.locator("#viewer-text").inner_text()
    options = page.locator("#viewer-image option").count()
    assert options == 2
    page.select_option("#viewer-image", index=1)
    assert page.locator("#viewer-text").inner_text() != text or drawn() != first_canvas
    assert not page.locator("#viewer-roles").is_hidden()  # fractions of the same picture

    before = drawn()
    page.select_option("#viewer-scale", "image")
    page.locator("#viewer-opacity").fill("30")
    assert drawn() != before
    page.locator("#viewer-play").click()
    page.wait_for_function(
        "t => document.getElementById('viewer-layer-label').textContent !== t",
        arg=label.inner_text(),
        timeout=5000,
    )
    page.locator("#viewer-play").click()
    assert page.locator("#viewer-play").inner_text() == "Play"

    assert remote == []
    assert problems == []
    page.context.close()
