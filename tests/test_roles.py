"""Role labels and image grids for every family, single and multi-image, tiled and not."""

from __future__ import annotations

import pytest

import vlmflow
from attention.reference import IMAGE_TOKENS  # tokens that only exist because of an image
from vlmflow.models.tiny import TINY_FAMILIES
from vlmflow.roles import Role


def _tokens(handle, prompt, row=0):
    return handle.processor.tokenizer.convert_ids_to_tokens(prompt.input_ids[row].tolist())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_roles_follow_the_tokens(family, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo, "Describe the image.")
    tokens = _tokens(handle, prompt)
    codes = prompt.layout.codes[0].tolist()
    first = min(i for i, t in enumerate(tokens) if t in IMAGE_TOKENS)
    for i, (tok, code) in enumerate(zip(tokens, codes, strict=True)):
        if tok in IMAGE_TOKENS:
            assert code == Role.IMAGE, (i, tok)
        elif i < first:
            assert code == Role.PREFIX, (i, tok)
        else:
            assert code == Role.QUERY, (i, tok)
    assert tokens[:3] == ["<s>", "USER", ":"]
    assert prompt.layout.counts()["query"] >= 4  # "Describe the image ." + closing turn
    # every image token that carries patch features sits in exactly one tile cell
    span = prompt.layout.images[0][0]
    patches = span.patch_positions
    assert len(patches) == len(set(patches))
    feature_tokens = {"<image>", "<|image_pad|>", "<IMG_CONTEXT>"}
    feature_positions = {i for i, t in enumerate(tokens) if t in feature_tokens}
    assert set(patches) | (set(span.separators) & feature_positions) == feature_positions
    for tile in span.tiles:
        assert len(tile.positions) == tile.rows * tile.cols
        if tile.empty:  # no grid (mllama: its image has no patch tokens in the prompt)
            assert tile.unplaced
            continue
        x0, y0, x1, y1 = tile.box
        # default settings pad nothing, save LLaVA-NeXT's unpadding, which cuts whole cells:
        # a box reaches past the picture by less than one cell
        cell_w, cell_h = (x1 - x0) / tile.cols, (y1 - y0) / tile.rows
        assert -cell_w < x0 < x1 < 1 + cell_w and -cell_h < y0 < y1 < 1 + cell_h
        assert x0 <= 0 <= 1 <= x1 or 0 <= x0 < x1 <= 1


EXPECTED_TILES = {
    # 130x90 photo: wider than tall
    "llava": [("image", 4, 4)],
    "llava_next": [("base", 4, 4), ("grid", 6, 8)],
    "qwen2_vl": [("image", 3, 5)],
    "internvl": [("tile", 2, 2)] * 4 + [("thumbnail", 2, 2)],
    "idefics3": [("tile", 2, 2)] * 4 + [("thumbnail", 2, 2)],
}


@pytest.mark.parametrize("family", sorted(EXPECTED_TILES))
def test_tiled_geometry(family, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    span = handle.prepare(photo).layout.images[0][0]
    assert [(t.kind, t.rows, t.cols) for t in span.tiles] == EXPECTED_TILES[family]
    assert span.size == (130, 90)
    if family == "llava_next":  # one newline token after each row of the high-res grid
        assert len(span.separators) == span.tiles[1].rows
    if family in ("internvl", "idefics3"):  # tiles cover the image once, row-major
        boxes = [t.box for t in span.tiles if t.kind == "tile"]
        assert sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) == pytest.approx(1.0)
    if family == "llava":  # center crop of a wide image: 130x90 resized to 80x56, crop 12..68
        assert span.tiles[0].box == pytest.approx((12 / 80, 0.0, 68 / 80, 1.0))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_two_images_in_one_prompt(family, tiny_path, photo, photo2):
    handle = vlmflow.load(str(tiny_path(family)))
    one = handle.prepare(photo)
    two = handle.prepare([photo, photo2], "Compare the two pictures.")
    spans = two.layout.images[0]
    assert [s.index for s in spans] == [0, 1]
    assert spans[0].end <= spans[1].start
    assert spans[0].size == (130, 90) and spans[1].size == (70, 120)
    codes = two.layout.codes[0]
    for s in spans:
        assert bool((codes[s.start : s.end] == Role.IMAGE).all())
    # nothing before the first image is image; roles partition the prompt
    assert bool((codes[: spans[0].start] != Role.IMAGE).all())
    counts = two.layout.counts()
    assert sum(counts.values()) == two.layout.length
    assert counts["image"] == sum(s.end - s.start for s in spans)
    assert counts["image"] > one.layout.counts()["image"]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_batch_with_left_padding(family, tiny_path, photo, photo2):
    handle = vlmflow.load(str(tiny_path(family)))
    batch = handle.prepare_batch([([photo], "Describe the image."), ([photo2], "What is it?")])
    layout = batch.layout
    mask = batch.inputs["attention_mask"]
    assert bool(((layout.codes == Role.PAD) == (mask == 0)).all())
    for row in range(2):
        single = handle.prepare(
            [photo] if row == 0 else [photo2],
            "Describe the image." if row == 0 else "What is it?",
        ).layout
        counts = layout.counts(row)
        assert {k: counts[k] for k in ("prefix", "image", "query")} == {
            k: single.counts()[k] for k in ("prefix", "image", "query")
        }


def test_unsupported_family_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "blip-2"}')
    with pytest.raises(vlmflow.VlmflowError, match=r"llava_next.*qwen2_vl.*internvl"):
        vlmflow.load(str(tmp_path))
