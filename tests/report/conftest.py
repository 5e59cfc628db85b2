"""A results folder holding every paper experiment, run for real on a tiny random LLaVA.

Built once per test session (about 25 s on two cores): the capture experiments run on a folder
of pictures that includes a corrupt file (so the store holds failures), the others on two
shipped scenes (they need masks and questions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

EXPERIMENTS = ("fractions", "knockout", "maps", "localization", "histogram", "topk", "reprompt")


@pytest.fixture(scope="session")
def results_dir(tiny_path: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    import vlmflow
    from vlmflow.experiments import ImageSource, Runner, create
    from vlmflow.scenes import load_fixed_scene
    from vlmflow.store import ResultStore

    root = tmp_path_factory.mktemp("report")
    pictures = root / "pictures"
    pictures.mkdir()
    load_fixed_scene(3).image.save(pictures / "scene.png")
    rng = np.random.RandomState(3)
    Image.fromarray((rng.rand(90, 130, 3) * 255).astype("uint8")).save(pictures / "wide.png")
    (pictures / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")

    handle = vlmflow.load(str(tiny_path("llava")))
    capture = {"max_new_tokens": 6}
    judged = {"max_new_tokens": 8, "judge": "scene", "judge_cache": False}
    out = root / "out"
    plan = [
        (
            [
                create("fractions", capture),
                create("histogram", capture),
                create("maps", {**capture, "size": 16}),
            ],
            str(pictures),
        ),
        (
            [
                create("knockout", {**judged, "num_layers": handle.num_layers}),
                create("topk", {**judged, "k": [0.0, 0.25, 1.0]}),
                create("localization", judged),
                create("reprompt", {"ks": [0.25], "k_only": 0.25, "max_new_tokens": 6}),
            ],
            "scenes:2",
        ),
    ]
    with ResultStore.open(out) as store:
        for experiments, source in plan:
            Runner(
                experiments,
                ImageSource.parse(source),
                store,
                model="tiny-llava",
                handle_factory=lambda: handle,
                progress=False,
            ).run()
        assert {r.experiment for r in store.rows()} == set(EXPERIMENTS)
        assert {(f.experiment, f.item) for f in store.failures()} == {
            (name, "broken.png") for name in ("fractions", "histogram", "maps")
        }
    return out


@pytest.fixture(scope="session")
def report_path(results_dir: Path) -> Path:
    """The report of `results_dir`, built once."""
    from vlmflow.report import build_report

    return build_report(results_dir)


@pytest.fixture(scope="module")
def browser(repo_script: Callable[[str], Any]) -> Iterator[Any]:
    """Debian's headless Chromium through Playwright; Chromium's path and flags have one owner,
    the README screenshot script. A missing browser or driver fails with the install to run."""
    stack = ExitStack()
    try:
        instance = stack.enter_context(repo_script("screenshot_report").launch())
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)
    with stack:
        yield instance


@dataclass
class OfflinePage:
    """A page that may load only local files: `remote` lists every other request (refused),
    `problems` every console error or warning, page error and failed load."""

    page: Any
    remote: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def open_offline(browser: Any, path: Path) -> OfflinePage:
    """Open `path` in a fresh 1200 x 900 context that refuses the network."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = OfflinePage(None)

    def refuse(route: Any) -> None:
        opened.remote.append(route.request.url)
        route.abort()

    context.route(lambda url: not url.startswith(("file:", "data:")), refuse)
    page = opened.page = context.new_page()
    problems = opened.problems
    page.on(
        "console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}"))
    page.goto(path.as_uri(), wait_until="load")
    return opened
