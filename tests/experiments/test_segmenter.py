"""A user's text-prompted segmenter as localization's mask source (`masks = "module:callable"`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from runs import run_into

import vlmflow
from vlmflow.errors import VlmflowError
from vlmflow.experiments import ImageSource, create
from vlmflow.experiments.localization import is_hit, mention_tokens, tile_cells
from vlmflow.experiments.segmenter import SegmenterMasks
from vlmflow.models.layout import Tile
from vlmflow.store import ResultStore

SPEC = f"{Path(__file__)}:box_segmenter"


def box_segmenter(image: Any, name: str) -> np.ndarray | None:
    """A stand-in for Grounded-SAM: any ball is in the top-left quarter, nothing else exists."""
    if name != "ball":
        return None
    mask = np.zeros((image.height, image.width), dtype=bool)  # (H, W)
    mask[: image.height // 2, : image.width // 2] = True
    return mask


@pytest.fixture(autouse=True)
def _private_judge_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMFLOW_CACHE", str(tmp_path / "cache"))


def test_segmenter_masks_feed_the_localization_mask_path() -> None:
    experiment = create("localization", {"masks": SPEC})
    items = list(experiment.items(ImageSource.parse("scenes:2")))
    masks = experiment.masks
    assert isinstance(masks, SegmenterMasks) and experiment.config["masks"] == SPEC
    mask = masks.mask(items[1], "ball")
    assert mask is not None and mask.shape == (448, 448) and mask[:224, :224].all()
    assert mask.sum() == 224 * 224
    assert masks.mask(items[1], "lemon") is None
    cells = tile_cells(mask, Tile("image", 4, 4, tuple(range(16))))  # (rows, cols)
    assert cells.tolist() == [[c < 2 and r < 2 for c in range(4)] for r in range(4)]
    assert is_hit(cells, 2, 2) and not is_hit(cells, 3, 3)
    text = "A red ball and two balls."
    spans = [(0, 2), (2, 6), (6, 11), (11, 15), (15, 19), (19, 25), (25, 26)]
    assert mention_tokens(text, spans, masks.forms("Ball")) == [2, 5]


def test_a_module_on_the_path_plugs_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "vlmflow_test_seg.py").write_text(
        "import numpy as np\n"
        "class Segmenter:\n"
        "    def __call__(self, image, name):\n"
        "        return np.ones((image.height, image.width), dtype=np.uint8)\n"
        "segment = Segmenter()\n"
        "def wrong(image, name):\n"
        "    return np.ones((3, 3), dtype=bool)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vlmflow_test_seg", raising=False)
    experiment = create("localization", {"masks": "vlmflow_test_seg:segment"})
    item = next(iter(experiment.items(ImageSource.parse("scenes:1"))))
    mask = experiment.masks.mask(item, "trumpet")
    assert mask is not None and mask.dtype == bool and mask.all()
    wrong = create("localization", {"masks": "vlmflow_test_seg:wrong"})
    with pytest.raises(VlmflowError, match=r"shape \(3, 3\).*\(H, W\)"):
        wrong.masks.mask(item, "trumpet")


def test_a_segmenter_that_cannot_load_says_how_to_fix_it(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def segment(image, name)\n    return None\n")
    cases = [
        ("vlmflow_no_such_module:segment", "PYTHONPATH"),
        (f"{broken}:segment", "SyntaxError"),
        (f"{tmp_path / 'absent.py'}:segment", "file.py:callable"),
        (f"{Path(__file__)}:no_such_function", "has no no_such_function"),
        (f"{Path(__file__)}:SPEC", "not callable"),
    ]
    for spec, needle in cases:
        with pytest.raises(VlmflowError) as err:
            create("localization", {"masks": spec})
        assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_localization_scores_details_on_segmenter_masks(
    tiny_path: Callable[[str], Path], tmp_path: Path
) -> None:
    handle = vlmflow.load(str(tiny_path("qwen2_vl")))
    with ResultStore.open(tmp_path) as store:
        localization = create("localization", {"masks": SPEC, "max_new_tokens": 32})
        run_into(store, [localization], "scenes:2", handle)
        assert store.failures() == []
        rows = {row.item: row for row in store.rows()}
    # The seeded tiny Qwen2-VL names the ball of scene 1 and drops it under knockout.
    payload = rows["fixed-01"].payload
    assert [d["object"] for d in payload["details"]] == ["ball"]
    box = box_segmenter(Image.new("RGB", (448, 448)), "ball")
    assert box is not None
    cells = [
        tile_cells(box, Tile(t["kind"], t["rows"], t["cols"], (), tuple(t["box"])))
        for t in payload["tiles"]
    ]
    for detail in payload["details"]:  # a hit: the peak is within one cell of the box
        for (tile, row, col), hit in zip(detail["peaks"], detail["hits"], strict=True):
            assert hit == int(is_hit(cells[tile], row, col))
