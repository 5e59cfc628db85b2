"""`build_report` on a store written by the real runner: sections, figures, viewer data, errors."""

from __future__ import annotations

import argparse
import base64
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from vlmflow.errors import VlmflowError
from vlmflow.report import build_report
from vlmflow.report.viewer import quantise, script_json
from vlmflow.store import ResultKey, ResultStore

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPERIMENTS = ("fractions", "knockout", "maps", "localization", "histogram", "topk", "reprompt")


class Page(HTMLParser):
    """Section ids, image sources and the viewer's JSON of a report."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.scripts: dict[str, str] = {}
        self._script: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and a.get("id"):
            self.sections.append(str(a["id"]))
        if tag == "img":
            self.images.append(str(a.get("src")))
        if tag == "script":
            self._script = a.get("id") or ""
            self.scripts[self._script] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self.scripts[self._script] += data


def test_report_has_every_section_and_valid_figures(report_path: Path, results_dir: Path) -> None:
    assert report_path == results_dir / "report.html"
    text = report_path.read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == [*EXPERIMENTS, "runs", "failures"]  # paper order, nothing absent
    assert "Not in this store" not in text
    figures = [src for src in page.images if not src.startswith("data:")]
    assert all(src.startswith("figures/") for src in figures)
    # one figure per experiment but reprompt (a table), two for knockout (bars and sweep)
    assert len(figures) == 7 and len(set(figures)) == 7
    assert sorted(p.name for p in (results_dir / "figures").iterdir()) == sorted(
        Path(src).name for src in figures
    )
    from PIL import Image

    for src in figures:
        path = results_dir / src
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.verify()
            assert image.size[0] > 200 and image.size[1] > 100
    # no network: nothing is fetched from elsewhere
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    # failures: the corrupt picture, once per capture experiment, with its error
    failures = text[text.index('id="failures"') :]
    assert failures.count("broken.png") >= 3 and "intact PNG" in failures
    runs = text[text.index('id="runs"') :]
    assert "tiny-llava" in runs and "scenes:2" in runs
    # the Table-1 rows and their accuracy columns
    reprompt = text[text.index('id="reprompt"') : text.index('id="runs"')]
    for row in ("naive", "describe-to-llm", "k=0.25", "query-only", "k-only=0.25"):
        assert f"<td>{row}</td>" in reprompt
    assert "existence ACC+" in reprompt and "tokens per re-prompt" in reprompt
    # the knockout summary has the all-layer and except-window rows
    knockout = text[text.index('id="knockout"') : text.index('id="maps"')]
    assert "<td>image-query@all</td>" in knockout and "@except:" in knockout


def test_viewer_data_gives_the_stored_maps_back(report_path: Path, results_dir: Path) -> None:
    page = Page(report_path.read_text(encoding="utf-8"))
    data = json.loads(page.scripts["viewer-data"])
    items = {item["label"].split(" · ")[0]: item for item in data["items"]}
    assert set(items) == {"scene.png", "wide.png"}  # the broken picture has no maps result
    assert len(data["colormap"]) == 256
    with ResultStore.open(results_dir) as store:
        rows = {r.item: r for r in store.rows(experiment="maps")}
        for name, item in items.items():
            r = rows[name]
            blob = store.blob(ResultKey(r.run_id, r.experiment, r.item, r.setting), "maps")
            levels = np.frombuffer(base64.b64decode(item["maps"]), np.uint8).reshape(blob.shape)
            peaks = np.array(item["peaks"])[:, :, None, None]
            restored = levels * peaks / 255
            np.testing.assert_allclose(restored, blob.astype(np.float64), atol=peaks.max() / 254)
            assert item["layers"] == r.payload["layers"] and item["text"] == r.payload["text"]
            assert item["hasPicture"] and item["picture"].startswith("data:image/jpeg;base64,")
            # fractions ran on the same pictures: the viewer shows their shares per layer
            assert item["shares"] is not None
            for shares in item["shares"].values():
                assert len(shares) == 4 and abs(sum(shares) - 1) < 1e-3
    assert page.scripts[""].strip().startswith("(function")


def test_quantise_keeps_each_map_to_its_peak() -> None:
    rng = np.random.RandomState(0)
    maps = rng.rand(3, 2, 4, 4).astype(np.float16)
    maps[1, 0] = 0  # an empty map stays empty
    levels, peaks = quantise(maps)
    q = np.frombuffer(levels, np.uint8).reshape(maps.shape)
    assert q[1, 0].max() == 0 and peaks[1][0] == 0
    assert q[0, 0].max() == 255
    back = q * np.array(peaks)[:, :, None, None] / 255
    np.testing.assert_allclose(back, maps.astype(np.float64), atol=1 / 255)


def test_embedded_json_cannot_close_its_script() -> None:
    text = script_json({"text": "</script><script>alert(1)</script> & <!--"})
    assert "<" not in text and ">" not in text
    assert json.loads(text) == {"text": "</script><script>alert(1)</script> & <!--"}


def test_a_store_without_paper_experiments_says_what_is_missing(tmp_path: Path) -> None:
    from vlmflow.experiments import ImageSource, Runner, create

    with ResultStore.open(tmp_path) as store:
        Runner([create("check")], ImageSource.parse("scenes:1"), store, progress=False).run()
    path = build_report(tmp_path)
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == ["check", "absent", "runs", "failures"]
    assert "vlmflow run fractions knockout maps localization histogram topk reprompt" in text
    assert "viewer-data" not in text and "<script>" not in text  # no maps: no viewer
    assert not (tmp_path / "figures").exists() or not any((tmp_path / "figures").iterdir())


def test_errors_name_the_fix(tmp_path: Path) -> None:
    from vlmflow.report import command

    with pytest.raises(VlmflowError, match="--out folder"):
        build_report(tmp_path / "missing")
    with pytest.raises(VlmflowError, match="vlmflow run fractions maps --out"):
        command.run(argparse.Namespace(out=str(tmp_path)))
    (tmp_path / "results.rank0.sqlite3").write_bytes(b"")
    with pytest.raises(VlmflowError, match="--merge"):
        build_report(tmp_path)
    (tmp_path / "results.rank0.sqlite3").unlink()
    ResultStore.open(tmp_path).close()
    with pytest.raises(VlmflowError, match="no results yet"):
        build_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_the_command_module_imports_no_torch_or_matplotlib() -> None:
    code = (
        "import sys, argparse, vlmflow.report.command as c; "
        "c.add_arguments(argparse.ArgumentParser()); "
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_localization_pools_details_over_images(tmp_path: Path) -> None:
    """Accuracy per layer is hits over details summed over images (images without any count 0)."""
    from vlmflow.report.figures import Figures
    from vlmflow.report.sections import Context, localization
    from vlmflow.store import Row, RunInfo

    def row(item: str, hits: list[list[int]], window_hits: int) -> Row:
        n = len(hits)
        layers = [{"layer": i, "hits": sum(h[i] for h in hits), "details": n} for i in range(3)]
        details = [
            {"object": f"obj{j}", "hits": h, "window_hit": int(j < window_hits)}
            for j, h in enumerate(hits)
        ]
        payload = {"layers": layers, "details": details, "skipped": [], "window": [1, 1]}
        metrics = {"details": n, "window_hits": window_hits}
        return Row("r", "localization", item, "details", 0, 0, metrics, payload, (), 0.0, 0.0)

    rows = [row("a", [[0, 1, 1], [0, 1, 0]], 2), row("b", [[1, 1, 0]], 0), row("c", [], 0)]
    run = RunInfo("r" * 16, "localization", "m", "scenes:3", {}, "0", 0.0)
    with ResultStore.open(tmp_path) as store:
        blocks = localization(Context(store, Figures(tmp_path)), run, rows)
    html = "".join(blocks)
    # 3 details: layer 1 has 3 hits -> 1.000 best; window 2 of 3
    assert '<td class="num">3</td>' in html and '<td class="num">1.000</td>' in html
    assert '<td class="num">0.667</td>' in html
    assert "·●●" in html and (tmp_path / "figures").is_dir()


def test_the_command_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vlmflow import cli

    monkeypatch.setitem(cli.COMMANDS, "report", ("vlmflow.report.command", "build DIR/report.html"))
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlmflow report: error: no folder") and "\n" not in err


def test_pictures_come_back_from_the_recorded_source(tmp_path: Path) -> None:
    from PIL import Image

    from vlmflow.report.pictures import open_picture, placeholder

    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "list.txt").write_text("a.png\n")
    assert open_picture(f"folder:{tmp_path}", "a.png").size == (40, 20)  # type: ignore[union-attr]
    assert open_picture(f"list:{tmp_path / 'list.txt'}", "a.png") is not None
    assert open_picture(f"file:{tmp_path / 'a.png'}", "a.png") is not None
    assert open_picture("scenes:2", "fixed-01").size == (448, 448)  # type: ignore[union-attr]
    # moved or corrupt pictures only lose the thumbnail: a grey stand-in of the same shape
    assert open_picture(f"folder:{tmp_path / 'gone'}", "a.png") is None
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert open_picture(f"folder:{tmp_path}", "bad.png") is None
    assert open_picture("scenes:2", "street.jpg") is None
    assert placeholder(2.0).size == (96, 48) and placeholder(0.5).size == (48, 96)
