"""The capture experiments (`fractions`, `histogram`, `maps`) through the runner, on tiny models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import vlmflow
from vlmflow.errors import VlmflowError
from vlmflow.experiments import Context, ImageSource, Runner, WorkItem, create
from vlmflow.experiments.histogram import count
from vlmflow.experiments.maps import coverage, render
from vlmflow.store import ResultStore
from vlmflow.store.results import ResultKey, Row

NAMES = ("fractions", "histogram", "maps")
OPTIONS = {"max_new_tokens": 4}
SIZE = 16
TOKEN_SIZE = 8


def _images(folder: Path) -> ImageSource:
    from PIL import Image

    folder.mkdir()
    rng = np.random.RandomState(3)
    for name, (w, h) in {"a.png": (130, 90), "b.png": (40, 70), "c.jpg": (64, 64)}.items():
        Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return ImageSource.parse(str(folder))


@dataclass(frozen=True)
class Stored:
    """What one run of the three experiments left in the store."""

    rows: dict[str, list[Row]]
    maps: dict[str, np.ndarray]  # item -> maps blob
    token_maps: dict[str, np.ndarray]  # item -> maps' per-token blob
    steps: dict[str, np.ndarray]  # item -> fractions' per-step blob


def _run(tmp_path: Path, handle: Any) -> Stored:
    experiments = [
        create("fractions", {**OPTIONS, "per_step": True}),
        create("histogram", OPTIONS),
        create("maps", {**OPTIONS, "size": SIZE, "token_size": TOKEN_SIZE}),
    ]
    with ResultStore.open(tmp_path / "out") as store:
        summary = Runner(
            experiments,
            _images(tmp_path / "images"),
            store,
            model="tiny",
            handle_factory=lambda: handle,
            progress=False,
        ).run()
        assert (summary.done, summary.failed) == (9, 3)
        failures = store.failures()
        assert {(f.experiment, f.item) for f in failures} == {(n, "broken.png") for n in NAMES}
        assert all("intact PNG" in f.message for f in failures)
        rows = {name: store.rows(experiment=name) for name in NAMES}

        def blobs(experiment: str, name: str) -> dict[str, np.ndarray]:
            return {
                r.item: store.blob(ResultKey(r.run_id, r.experiment, r.item, r.setting), name)
                for r in rows[experiment]
            }

        return Stored(
            rows,
            blobs("maps", "maps"),
            blobs("maps", "token_maps"),
            blobs("fractions", "steps"),
        )


@pytest.mark.parametrize(("family", "views"), [("llava", 1), ("internvl", 2)])
def test_capture_experiments_through_the_runner(
    family: str, views: int, tiny_path: Callable[[str], Path], tmp_path: Path
) -> None:
    handle = vlmflow.load(str(tiny_path(family)))
    out = _run(tmp_path, handle)
    items = ["a.png", "b.png", "c.jpg"]
    assert [r.item for r in out.rows["fractions"]] == items
    image_share: dict[tuple[str, int], float] = {}

    for row in out.rows["fractions"]:
        p = row.payload
        assert p["layers"] == list(range(handle.num_layers)) and isinstance(p["text"], str)
        assert p["queries"] == row.metrics["generated_tokens"] - 1 >= 1
        for layer, shares in zip(p["layers"], p["shares"], strict=True):
            assert len(shares) == 4 and abs(sum(shares) - 1) < 1e-4
            assert all(0 <= s <= 1 for s in shares)
            image_share[(row.item, layer)] = shares[1]
        assert all(abs(sum(s) - 1) < 1e-4 for s in p["first"])
        assert out.steps[row.item].shape == (p["queries"], handle.num_layers, 4)
        assert row.metrics["image_share"] == pytest.approx(
            np.mean([s[1] for s in p["shares"]]), abs=1e-5
        )

    for row in out.rows["histogram"]:
        p = row.payload
        assert len(p["edges"]) == 33 and all(len(c) == 34 for c in p["counts"])
        assert all(sum(c) == row.metrics["image_tokens"] for c in p["counts"])
        for layer, mass, top in zip(p["layers"], p["mass"], p["top_share"], strict=True):
            assert mass == pytest.approx(image_share[(row.item, layer)], abs=1e-4)
            assert 0 < top <= 1
        assert all(0 < m <= 1 for m in p["max"])

    seen_views: set[int] = set()
    for row in out.rows["maps"]:
        p, maps = row.payload, out.maps[row.item]
        n_views = len({t["view"] for t in p["tiles"]})  # a square image may get a single tile
        assert maps.dtype == np.float16 and maps.shape == (handle.num_layers, n_views, SIZE, SIZE)
        assert (maps >= 0).all() and len(p["views"]) == n_views
        seen_views.add(n_views)
        total = (
            maps.astype(np.float64).sum(axis=(1, 2, 3))
            + np.array(p["separator_share"])
            + np.array(p["outside_share"])  # cells' parts on padding past the picture
        )
        expected = np.array([image_share[(row.item, layer)] for layer in p["layers"]])
        np.testing.assert_allclose(total, expected, rtol=2e-3, atol=5e-5)
        np.testing.assert_allclose(p["image_share"], expected, atol=1e-4)
        # each generated query's own maps: their mean over queries carries the averaged mass
        tokens = out.token_maps[row.item].astype(np.float64)
        assert tokens.shape == (p["queries"], handle.num_layers, n_views, TOKEN_SIZE, TOKEN_SIZE)
        assert len(p["tokens"]) == p["queries"] and all(isinstance(t, str) for t in p["tokens"])
        np.testing.assert_allclose(
            tokens.mean(axis=0).sum(axis=(2, 3)),
            maps.astype(np.float64).sum(axis=(2, 3)),
            rtol=5e-3,
            atol=1e-4,
        )
        if family == "llava":
            assert p["separator_share"] == [0.0] * handle.num_layers  # no separators
    assert max(seen_views) == views


def test_maps_of_a_cross_attention_model_lie_over_its_tiles(
    tiny_path: Callable[[str], Path], tmp_path: Path
) -> None:
    """Llama 3.2 Vision: maps of the cross-attention layers' rows over the vision states; the
    generated tokens read only the image's tiles there, so map + CLS + padding share = 1."""
    handle = vlmflow.load(str(tiny_path("mllama")))
    cross = sorted(handle.roles.cross_attention_layers())
    out = _run(tmp_path, handle)
    for row in out.rows["maps"]:
        p, maps = row.payload, out.maps[row.item]
        assert p["layers"] == cross and p["views"] == ["detail"]
        assert maps.shape == (len(cross), 1, SIZE, SIZE) and (maps >= 0).all()
        assert {t["kind"] for t in p["tiles"]} == {"tile"}
        total = (
            maps.astype(np.float64).sum(axis=(1, 2, 3))
            + np.array(p["separator_share"])  # the tiles' CLS states: read, not drawn
            + np.array(p["outside_share"])  # patches on the padding of the tile canvas
        )
        np.testing.assert_allclose(total, 1.0, rtol=2e-3, atol=5e-5)
        np.testing.assert_allclose(p["image_share"], 1.0, atol=1e-4)
        assert all(0 < s < 1 for s in p["separator_share"])
        tiles = len(p["tiles"])
        assert row.metrics["image_tokens"] == tiles * (1 + p["tiles"][0]["rows"] ** 2)
    for row in out.rows["histogram"]:
        assert row.payload["layers"] == cross
        assert all(sum(c) == row.metrics["image_tokens"] for c in row.payload["counts"])
    with pytest.raises(VlmflowError, match="no cross-attention layer"):
        create("maps", {"layers": "only:2"}).describe_image_rows(handle, WorkItem("x", {}))


@pytest.mark.parametrize("family", ["llava", "llava_next", "internvl", "mllama"])
def test_each_token_lands_in_its_tile(
    family: str, tiny_path: Callable[[str], Path], photo: Any
) -> None:
    """A row that is 1 on one token peaks inside that token's cell of its tile's box (for
    Llama 3.2 Vision: one vision state, rows over the image's states)."""
    handle = vlmflow.load(str(tiny_path(family)))
    span = handle.prepare(photo).layout.images[0][0]
    positions = list(span.state_keys) if span.states else list(range(span.start, span.end))
    for tile in span.grids:
        for k in (0, len(tile.positions) - 1):
            row = np.zeros((1, len(positions)))
            row[0, positions.index(tile.positions[k])] = 1.0
            out = render(row, positions, span, SIZE)
            assert out.maps.sum() + out.outside[0] == pytest.approx(1.0)
            assert out.separators[0] == pytest.approx(0)
            y, x = np.unravel_index(out.maps[0].sum(axis=0).argmax(), (SIZE, SIZE))
            r, c = divmod(k, tile.cols)
            x0, y0, x1, y1 = tile.box
            cell = (
                x0 + (x1 - x0) * c / tile.cols,
                y0 + (y1 - y0) * r / tile.rows,
                x0 + (x1 - x0) * (c + 1) / tile.cols,
                y0 + (y1 - y0) * (r + 1) / tile.rows,
            )
            if cell[0] >= 1 or cell[1] >= 1:  # a cell on the padding past the picture
                assert out.maps.sum() == 0 and out.outside[0] == pytest.approx(1.0)
                continue
            # the peak pixel overlaps the token's cell
            assert x / SIZE < cell[2] and (x + 1) / SIZE > cell[0], (tile.kind, k)
            assert y / SIZE < cell[3] and (y + 1) / SIZE > cell[1], (tile.kind, k)
        views = out.views
        if span.states:  # tiles of one view, no whole-image view
            assert views == ("detail",)
        else:
            assert views == (("global", "detail") if len(span.tiles) > 1 else ("global",))
    # a separator's (a CLS state's) attention is reported, not drawn
    separator = span.state_keys[0] if span.states else next(iter(span.separators), None)
    if separator is not None:
        row = np.zeros((1, len(positions)))
        row[0, positions.index(separator)] = 0.5
        out = render(row, positions, span, SIZE)
        assert out.maps.sum() == 0 and out.separators[0] == pytest.approx(0.5)


def test_coverage_preserves_mass() -> None:
    w = coverage(0.25, 0.75, 3, 8)  # 3 cells over the middle half of 8 pixels
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    assert (w[:2] == 0).all() and (w[6:] == 0).all()


def test_histogram_counts_every_value_once() -> None:
    edges = np.logspace(-4, 0, 5)
    values = np.array([0.0, 1e-5, 1e-4, 5e-3, 0.5, 1.0, 2.0])
    assert count(values, edges) == [2, 1, 1, 0, 2, 1]  # 1.0 falls in the closed last bin


def test_per_token_histogram_counts_every_query(
    tiny_path: Callable[[str], Path], photo: Any, tmp_path: Path
) -> None:
    photo.save(tmp_path / "photo.png")
    from vlmflow.sources import ImageRef

    handle = vlmflow.load(str(tiny_path("llava")))
    experiment = create("histogram", {"max_new_tokens": 3, "per_token": True, "layers": "only:1"})
    item = WorkItem("photo.png", {"image": ImageRef("photo.png", tmp_path / "photo.png")})
    context = Context("run", tmp_path, "tiny", 0, 0)
    result = experiment.run(handle, item, "describe", context)
    p = result.payload
    assert p["layers"] == [1] and p["per_token"] is True
    assert sum(p["counts"][0]) == p["image_tokens"] * p["queries"]


def test_bad_options_are_refused() -> None:
    with pytest.raises(VlmflowError, match="max_new_tokens must be an integer >= 2"):
        create("fractions", {"max_new_tokens": 1})
    with pytest.raises(VlmflowError, match="bad layer spec"):
        create("maps", {"layers": "some"})
    with pytest.raises(VlmflowError, match="bin_min < bin_max"):
        create("histogram", {"bin_min": 1.0, "bin_max": 0.1})
    with pytest.raises(VlmflowError, match=r"unknown option.*bins"):
        create("fractions", {"bins": 3})
    assert create("maps", {"layers": " ONLY:1-2 "}).config["layers"] == "only:1-2"
