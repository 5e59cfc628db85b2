"""Take a PNG screenshot of a `vlmflow report` page in headless Chromium (the README's picture).

    python scripts/screenshot_report.py vlmflow-demo/report.html --out docs/report.png \
        [--element "#viewer"]

Drives Debian's Chromium through Playwright (no browser download: `apt-get install -y chromium`
and `pip install playwright`); the page is opened from the file system with every network
request refused, as the report must work offline. The report browser test launches Chromium
with the same settings (`launch`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get install -y chromium && pip install playwright"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def launch() -> Iterator[Any]:
    """Headless Debian Chromium under Playwright; RuntimeError naming the install if missing."""
    executable = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    if executable is None:
        raise RuntimeError(f"headless Chromium not found at {CHROMIUM}: {INSTALL}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise RuntimeError(f"the Playwright driver is missing: {INSTALL}") from None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(
    report: Path, out: Path, width: int = 1280, height: int = 960, element: str | None = None
) -> Path:
    """Save `report` (an HTML file) as PNG `out`: the top `width` x `height` CSS pixels of the
    page, or with `element` (a CSS selector, e.g. "#viewer") that element alone."""
    if not report.is_file():
        raise FileNotFoundError(f"{report}: build it first with `vlmflow report DIR`")
    with launch() as browser:
        context = browser.new_context(viewport={"width": width, "height": height})
        context.route(lambda url: not url.startswith(("file:", "data:")), lambda r: r.abort())
        page = context.new_page()
        page.goto(report.resolve().as_uri(), wait_until="load")
        page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        out.parent.mkdir(parents=True, exist_ok=True)
        if element:
            page.locator(element).screenshot(path=str(out))
        else:
            page.screenshot(path=str(out), full_page=False)
        context.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.html written by `vlmflow report`")
    parser.add_argument("--out", type=Path, default=Path("docs/report.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--element", help="CSS selector of one element to take, e.g. #viewer")
    args = parser.parse_args(argv)
    try:
        print(screenshot(args.report, args.out, args.width, args.height, args.element))
    except (RuntimeError, FileNotFoundError) as err:
        print(f"screenshot_report: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
