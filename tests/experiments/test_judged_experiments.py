"""knockout, topk and localization through the real runner on tiny random models.

Tiny models write word salad from a small English vocabulary (dog, cat, ball, ...), so the
judges see real object words and every invariant below is checked on real generations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from runs import run_into

import vlmflow
from vlmflow.errors import VlmflowError
from vlmflow.experiments import ImageSource, create
from vlmflow.experiments.description import describe
from vlmflow.experiments.knockout import KNOCKOUTS, resolve_knockout
from vlmflow.experiments.localization import (
    TokenGrid,
    is_hit,
    mention_tokens,
    tile_cells,
    token_spans,
)
from vlmflow.experiments.topk import rank_image_tokens
from vlmflow.experiments.window import middle_window
from vlmflow.models.layout import Tile
from vlmflow.scenes import load_fixed_scene
from vlmflow.store import ResultStore


@pytest.fixture(autouse=True)
def _private_judge_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMFLOW_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def handles(tiny_path: Callable[[str], Path]) -> Callable[[str], Any]:
    loaded: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in loaded:
            loaded[family] = vlmflow.load(str(tiny_path(family)))
        return loaded[family]

    return get


def run(experiment: Any, images: str, handle: Any, out: Path) -> tuple[list[Any], list[Any]]:
    with ResultStore.open(out) as store:
        run_into(store, [experiment], images, handle)
        return store.rows(), store.failures()


# -- knockout -------------------------------------------------------------------------------


def test_knockout_sweep_is_judged_against_its_baseline(handles: Any, tmp_path: Path) -> None:
    handle = handles("llava")
    options = {"num_layers": 4, "layers": [0, 2], "max_new_tokens": 8}
    rows, failures = run(create("knockout", options), "scenes:1", handle, tmp_path)
    assert failures == []
    expected = ["baseline"] + [
        f"{name}@{spec}" for name in KNOCKOUTS for spec in ("all", "from:0", "from:2", "except:1-1")
    ]
    assert [r.setting for r in rows] == expected
    by = {r.setting: r for r in rows}
    base = by["baseline"]
    # the baseline judged against itself: everything matched
    assert (base.metrics["f1"], base.metrics["precision"], base.metrics["recall"]) == (1, 1, 1)
    assert base.metrics["tp"] == base.metrics["objects"] == len(base.payload["objects"])
    assert base.metrics["fp"] == base.metrics["fn"] == 0
    assert base.metrics["objects"] >= 1  # the seeded tiny LLaVA names a ball: the checks bite
    for row in rows[1:]:
        m, p = row.metrics, row.payload
        assert 0.0 <= m["f1"] <= 1.0 and 0.0 <= m["precision"] <= 1.0
        # every verdict sees the same baseline objects: TP + FN is the baseline's object count
        assert m["tp"] + m["fn"] == base.metrics["objects"]
        assert m["tp"] + m["fp"] == len(p["candidate_objects"])
        assert p["reference_objects"] == base.payload["objects"]
        assert m["blocked_layers"] == len(p["layers"]) > 0
    assert by["image-query@from:2"].payload["layers"] == [2, 3]
    assert by["image-query@except:1-1"].payload["layers"] == [0, 2, 3]
    assert by["image-generated@from:2"].metrics["start"] == 2
    # from:0 is all layers: the same knockout, so the same description
    for name in KNOCKOUTS:
        assert by[f"{name}@all"].payload["ids"] == by[f"{name}@from:0"].payload["ids"]
    # image -> generated cannot change the first token: it is predicted at a query position
    ko = by["image-generated@all"].payload["ids"]
    assert ko[0] == base.payload["ids"][0]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_batched_sweep_equals_one_by_one(handles: Any, tmp_path: Path, family: str) -> None:
    """The sweep generates an item's pending settings as rows of one batch; each row must
    be the description that setting gets alone, and the batch size must not change the run."""
    handle = handles(family)
    options = {"num_layers": 4, "layers": [0, 1, 3], "max_new_tokens": 8, "judge": "scene"}
    single, fails = run(
        create("knockout", {**options, "batch": 1}), "scenes:2", handle, tmp_path / "a"
    )
    assert fails == []
    batched, fails = run(
        create("knockout", {**options, "batch": 5}), "scenes:2", handle, tmp_path / "b"
    )
    assert fails == []
    assert len(single) == len(batched) == 2 * (1 + 3 * 5)
    for one, many in zip(single, batched, strict=True):
        assert (one.run_id, one.item, one.setting) == (many.run_id, many.item, many.setting)
        assert one.payload["ids"] == many.payload["ids"]
    # some knockout changes some description, so equality above is not trivially all-baseline
    assert any(r.payload["ids"] != batched[0].payload["ids"] for r in batched[1:16])
    topk = {"k": [0.0, 0.25, 0.5, 1.0], "max_new_tokens": 8, "judge": "scene"}
    single, _ = run(create("topk", {**topk, "batch": 1}), "scenes:1", handle, tmp_path / "c")
    batched, _ = run(create("topk", {**topk, "batch": 3}), "scenes:1", handle, tmp_path / "d")
    assert [r.payload["ids"] for r in single] == [r.payload["ids"] for r in batched]
    assert len(batched) == 4


def test_a_knockout_at_zero_layers_cannot_be_configured(tiny_path: Any) -> None:
    with pytest.raises(VlmflowError, match="zero layers"):
        create("knockout", {"num_layers": 4, "window": "0-3"})
    with pytest.raises(VlmflowError, match="zero of this model's 4 layers"):
        resolve_knockout("image-generated", "except:0-3", 4)
    with pytest.raises(VlmflowError, match="layers 0-3"):
        create("knockout", {"num_layers": 4, "layers": [4]})
    with pytest.raises(VlmflowError, match="unknown option"):
        create("knockout", {"layer": [1]})
    with pytest.raises(VlmflowError, match="not one of"):
        create("knockout", {"settings": ["image-text"]})
    assert middle_window(1) == (0, 0)
    with pytest.raises(VlmflowError, match="no layer outside"):
        create("knockout", {"num_layers": 1, "layers": [0]}).settings(None)  # type: ignore[arg-type]
    # without the model's depth the sweep cannot be listed; binding the model reads it
    sweep = create("knockout", {"settings": ["image-query"], "scopes": ["from", "except"]})
    with pytest.raises(VlmflowError, match="num_layers"):
        sweep.settings(None)  # type: ignore[arg-type]
    sweep.bind_model(str(tiny_path("llava")))  # type: ignore[attr-defined]
    assert sweep.config["num_layers"] == 4
    assert list(sweep.settings(None)) == [  # type: ignore[arg-type]
        "baseline",
        *(f"image-query@from:{layer}" for layer in range(4)),
        "image-query@except:1-1",
    ]


# -- topk -----------------------------------------------------------------------------------


def test_topk_keeps_the_baseline_at_k_one(handles: Any, tmp_path: Path) -> None:
    handle = handles("llava")
    options = {"k": [0.0, 0.25, 1.0], "max_new_tokens": 10, "judge": "scene"}
    rows, failures = run(create("topk", options), "scenes:1", handle, tmp_path)
    assert failures == []
    assert [r.setting for r in rows] == ["k=0.0", "k=0.25", "k=1.0"]
    by = {r.setting: r for r in rows}
    full = by["k=1.0"]
    assert full.payload["description"] == full.payload["reference"]
    assert full.metrics["f1"] == 1.0 and full.metrics["fp"] == full.metrics["fn"] == 0
    assert full.metrics["kept"] == full.metrics["image_tokens"] == 16
    assert by["k=0.25"].metrics["kept"] == 4 and by["k=0.0"].metrics["kept"] == 0
    assert all(r.payload["reference"] == full.payload["reference"] for r in rows)
    # k = 0 blocks every image position from generated queries: image -> generated everywhere
    prompt = handle.prepare(load_fixed_scene(0).image)
    ko = vlmflow.Knockout.parse("image-generated", "all")
    generation, _ = describe(handle, prompt, 10, [ko])
    assert by["k=0.0"].payload["ids"] == list(generation.ids)


def test_topk_ranks_by_attention_from_generated_tokens() -> None:
    rows = torch.tensor(
        [[[9.0, 0.0, 0.0, 0.0]], [[0.1, 0.2, 0.7, 0.0]], [[0.1, 0.5, 0.4, 0.0]]]
    )  # (steps, b, n_image); step 0 (the prompt's last position) must not count
    capture = vlmflow.CaptureResult(
        fractions=torch.zeros(3, 1, 1, 4),
        image_rows={0: rows},
        image_positions=torch.tensor([[5, 6, 7, 8]]),
    )
    ranking = rank_image_tokens(capture, [5, 6, 7, 8])
    assert ranking.order[0] == (7, 6, 5, 8)  # 1.1, 0.7, 0.2, 0.0
    assert ranking.blocked(0.5) == {0: [5, 8]}
    assert ranking.blocked(1.0) == {}


def _baseline_ranking(handle: Any, max_new_tokens: int) -> tuple[Any, Any, Any]:
    """topk's baseline on fixed scene 0: its generation, capture and ranking."""
    from vlmflow.attention.capture import Capture

    prompt = handle.prepare(load_fixed_scene(0).image)
    capture = Capture.of(fractions=False, image_layers="all", dtype="float32")
    generation, result = describe(handle, prompt, max_new_tokens, (), capture)
    assert result is not None
    return generation, result, rank_image_tokens(result, prompt.layout.image_positions(0))


def _compressed_image_keys(handle: Any, k: float, max_new_tokens: int) -> list[list[int]]:
    """Per layer, the image positions `vlmflow.compress` keeps at fraction k (sum ranking)."""
    from vlmflow.compression import compress

    context = compress(handle, load_fixed_scene(0).image, k=k, max_new_tokens=max_new_tokens)
    image = set(context.image_positions)
    return [[p for p in kept if p in image] for kept in context.kept]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_topk_ranking_is_the_old_rule_for_real_descriptions(handles: Any, family: str) -> None:
    """Descriptions of two or more tokens rank exactly as before the ranking was shared with
    compress (sum of the generated tokens' rows, stable sort), and compress keeps their top k."""
    handle = handles(family)
    generation, capture, ranking = _baseline_ranking(handle, 8)
    assert len(generation.ids) >= 2
    positions = ranking.positions
    assert sorted(ranking.order) == list(range(handle.num_layers))
    for layer, rows in capture.image_rows.items():  # (steps, b, n_image)
        assert rows.shape[0] == len(generation.ids)
        old = torch.sort(rows[1:, 0].float().sum(0), descending=True, stable=True).indices
        assert ranking.order[layer] == tuple(positions[i] for i in old.tolist()), layer
    kept = _compressed_image_keys(handle, 0.25, 8)
    n_keep = round(0.25 * len(positions))
    assert [sorted(ranking.order[layer][:n_keep]) for layer in range(len(kept))] == kept


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_topk_ranks_a_one_token_description_as_compress_does(handles: Any, family: str) -> None:
    """A one-token description has no generated query: the last prompt position's row ranks the
    image tokens (it used to score all of them 0 and keep prompt order), as in compress."""
    handle = handles(family)
    generation, capture, ranking = _baseline_ranking(handle, 1)
    assert len(generation.ids) == 1
    positions = ranking.positions
    for layer, rows in capture.image_rows.items():  # (1, b, n_image)
        assert rows.shape[0] == 1
        row = rows[0, 0].float()  # (n_image,) the last prompt position's attention
        expected = sorted(range(len(positions)), key=lambda i: (-float(row[i]), i))
        assert ranking.order[layer] == tuple(positions[i] for i in expected), layer
    assert any(order != positions for order in ranking.order.values())
    for k in (0.125, 0.5):
        n_keep = round(k * len(positions))
        kept = _compressed_image_keys(handle, k, 1)
        assert [sorted(ranking.order[layer][:n_keep]) for layer in range(len(kept))] == kept


def test_topk_equal_scores_keep_the_earlier_image_position() -> None:
    rows = torch.tensor(
        [[[0.0, 0.75, 0.0, 0.0]], [[0.25, 0.125, 0.25, 0.5]], [[0.25, 0.125, 0.25, 0.0]]]
    )  # (steps, b, n_image): exact binary fractions, so the equal sums are equal
    capture = vlmflow.CaptureResult(
        fractions=torch.zeros(3, 1, 1, 4),
        image_rows={0: rows, 1: rows[:1]},  # layer 1: a one-token description's row only
        image_positions=torch.tensor([[5, 6, 7, 8]]),
    )
    ranking = rank_image_tokens(capture, [5, 6, 7, 8])
    assert ranking.order[0] == (5, 7, 8, 6)  # 0.5, 0.5, 0.5, 0.25
    assert ranking.order[1] == (6, 5, 7, 8)  # 0.75, then zeros in prompt order
    assert ranking.blocked(0.25) == {0: [6, 7, 8], 1: [5, 7, 8]}


# -- localization ---------------------------------------------------------------------------


def test_hit_rule_is_one_cell_chebyshev() -> None:
    covered = np.zeros((6, 6), dtype=bool)
    covered[2, 2] = True
    assert is_hit(covered, 2, 2)  # on the mask
    assert is_hit(covered, 1, 3) and is_hit(covered, 3, 2)  # adjacent, diagonal included
    assert not is_hit(covered, 0, 2) and not is_hit(covered, 4, 4)  # two cells away
    assert not is_hit(np.zeros((3, 3), dtype=bool), 1, 1)  # no mask, no hit


def test_mask_cells_follow_the_tile_box() -> None:
    obj = load_fixed_scene(5).objects[0]
    for n in (4, 7, 16):
        whole = Tile("image", n, n, tuple(range(n * n)))
        assert (tile_cells(obj.mask, whole) == obj.grid_mask(n)).all()
    mask = np.zeros((8, 8), dtype=bool)
    mask[0, 6] = True  # top row, right half
    right = Tile("tile", 2, 2, (0, 1, 2, 3), (0.5, 0.0, 1.0, 1.0))
    left = Tile("tile", 2, 2, (0, 1, 2, 3), (0.0, 0.0, 0.5, 1.0))
    assert tile_cells(mask, right).tolist() == [[False, True], [False, False]]
    assert not tile_cells(mask, left).any()


def test_object_tokens_are_found_through_synonyms_and_plurals() -> None:
    words = ["a", " small", " puppy", " near", " two", " teddy", " bears", "."]
    text = "".join(words)
    spans, at = [], 0
    for w in words:
        spans.append((at, at + len(w)))
        at += len(w)
    assert mention_tokens(text, spans, ["dog", "puppy"]) == [2]
    assert mention_tokens(text, spans, ["teddy bear", "teddy bears", "bear"]) == [5, 6]
    assert mention_tokens(text, spans, ["ear"]) == []  # whole words only


def test_localization_scores_fine_details_per_layer(handles: Any, tmp_path: Path) -> None:
    handle = handles("qwen2_vl")
    options = {"max_new_tokens": 32}
    rows, failures = run(create("localization", options), "scenes:2", handle, tmp_path)
    assert failures == []
    assert [(r.item, r.setting) for r in rows] == [("fixed-00", "details"), ("fixed-01", "details")]
    layers = handle.num_layers
    total = 0
    with ResultStore.open(tmp_path) as store:
        for row in rows:
            m, p = row.metrics, row.payload
            n = m["details"]
            total += n
            assert [rec["layer"] for rec in p["layers"]] == list(range(layers))
            for rec in p["layers"]:
                assert rec["details"] == n and 0 <= rec["hits"] <= n
                assert rec["accuracy"] is None if n == 0 else 0.0 <= rec["accuracy"] <= 1.0
            for detail in p["details"]:
                assert set(detail["hits"]) <= {0, 1} and len(detail["hits"]) == layers
                assert detail["steps"] == detail["tokens"]  # token_step=produced
                assert detail["object"] not in mention_names(p["knockout"])
                words = handle.processor.tokenizer.decode(
                    [p["baseline_ids"][t] for t in detail["tokens"]]
                )
                assert detail["object"] in words
            from vlmflow.store.results import ResultKey

            key = ResultKey(row.run_id, row.experiment, row.item, row.setting)
            hits = store.blob(key, "hits")
            assert hits.shape == (n, layers)
            assert hits.tolist() == [d["hits"] for d in p["details"]]
            assert store.blob(key, "window_maps").shape[0] == n
            if n:
                assert 0.0 <= m["window_accuracy"] <= 1.0
    # The seeded tiny Qwen2-VL names the ball of scene 1 and drops it under knockout.
    assert total >= 1, "no fine detail: the tiny model's description changed"


def mention_names(text: str) -> tuple[str, ...]:
    from vlmflow.scenes.vocabulary import mentioned_objects

    return mentioned_objects(text)


def test_localization_refuses_images_without_masks(tmp_path: Path, photo: Any) -> None:
    photo.save(tmp_path / "photo.png")
    experiment = create("localization")
    with pytest.raises(VlmflowError, match="--images scenes"):
        list(experiment.items(ImageSource.parse(str(tmp_path / "photo.png"))))
    with pytest.raises(VlmflowError, match="token_step"):
        create("localization", {"token_step": "next"})


def test_token_grid_peaks_on_patches_only(handles: Any) -> None:
    handle = handles("qwen2_vl")
    prompt = handle.prepare(load_fixed_scene(1).image)
    grid = TokenGrid.of(prompt.layout)
    positions = prompt.layout.image_positions(0)
    attention = np.zeros(len(positions), dtype=np.float32)
    separators = prompt.layout.images[0][0].separators
    for s in separators:
        attention[positions.index(s)] = 10.0  # markers have no place in the picture
    tile = grid.tiles[0]
    attention[grid.index[0][tile.cols + 2]] = 1.0  # row 1, col 2
    cell = grid.peak(attention)
    assert (cell.tile, cell.row, cell.col) == (0, 1, 2)


def test_token_spans_cover_the_decoded_text(handles: Any) -> None:
    tokenizer = handles("qwen2_vl").processor.tokenizer
    ids = tokenizer("a dog near the ball", add_special_tokens=False)["input_ids"]
    text, spans = token_spans(tokenizer, ids)
    assert text == tokenizer.decode(ids) and len(spans) == len(ids)
    assert [text[a:b].strip() for a, b in spans] == ["a", "dog", "near", "the", "ball"]
    assert mention_tokens(text, spans, ["ball", "balls"]) == [4]
