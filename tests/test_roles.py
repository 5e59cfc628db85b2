"""Role labels and image grids for every family, single and multi-image, tiled and not."""

from __future__ import annotations

import re

import pytest

import vlmflow
from attention.reference import IMAGE_TOKENS  # tokens that only exist because of an image
from vlmflow.models.tiny import CROSS_ATTENTION_FAMILIES, TINY_FAMILIES
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
    if handle.processor.chat_template:
        assert tokens[:3] == ["<s>", "USER", ":"]
    else:  # PaliGemma: the image, BOS, the text and the processor's newline
        words = handle.processor.tokenizer.tokenize("Describe the image.")
        assert tokens[first + 16 :] == ["<s>", *words, "\n"]
    assert prompt.layout.counts()["query"] >= 4  # "Describe the image ." + closing turn
    # every image token that carries patch features sits in exactly one tile cell
    span = prompt.layout.images[0][0]
    patches = span.patch_positions
    assert len(patches) == len(set(patches))
    feature_tokens = {"<image>", "<|image_pad|>", "<IMG_CONTEXT>", "<image_soft_token>", "[IMG]"}
    feature_positions = {i for i, t in enumerate(tokens) if t in feature_tokens}
    assert set(patches) | (set(span.separators) & feature_positions) == feature_positions
    for tile in span.tiles:
        assert len(tile.positions) == tile.rows * tile.cols
        if tile.empty:  # a grid with no tokens
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
    "qwen3_vl": [("image", 3, 4)],  # 16 px patches merged 2x2: 96 x 128 px
    "internvl": [("tile", 2, 2)] * 4 + [("thumbnail", 2, 2)],
    "idefics3": [("tile", 2, 2)] * 4 + [("thumbnail", 2, 2)],
    "gemma3": [("image", 4, 4)],  # squashed: the whole picture
    "paligemma": [("image", 4, 4)],  # squashed to 56 x 56: the grid covers the whole image
    "llava_onevision": [("base", 4, 4), ("grid", 6, 8)],
    "mistral3": [("image", 3, 4)],  # 130x90 -> 112x77 -> 112x84: 28 px merged patches
}


@pytest.mark.parametrize("family", CROSS_ATTENTION_FAMILIES)
def test_vision_states_lie_over_the_tiles(family, tiny_path, photo):
    """Llama 3.2 Vision: the 130x90 photo fits a canvas of 1 x 2 tiles of 28 px (scale
    28 / 90, no upscaling), resized to 40 x 28 px and padded to 56 x 28: tile 0 covers x in
    [0, 28/40], tile 1 [28/40, 56/40] (past the picture: padding); per tile a CLS state, then
    2 x 2 patch states. The prompt's one <|image|> position carries no grid."""
    handle = vlmflow.load(str(tiny_path(family)))
    span = handle.prepare(photo).layout.images[0][0]
    assert span.tiles == () and span.patch_positions == ()
    assert [(t.kind, t.rows, t.cols) for t in span.grids] == [("tile", 2, 2)] * 2
    assert span.grids[0].box == pytest.approx((0.0, 0.0, 0.7, 1.0))
    assert span.grids[1].box == pytest.approx((0.7, 0.0, 1.4, 1.0))
    assert [t.positions for t in span.grids] == [(1, 2, 3, 4), (6, 7, 8, 9)]
    assert span.state_keys == tuple(range(10))


@pytest.mark.parametrize("family", ["paligemma", "paligemma2"])
def test_paligemma_prompts_are_the_processors_own(family, tiny_path, photo, photo2):
    """No chat template: `prepare` gives the model what PaliGemma's processor makes of the plain
    text (it adds the image tokens, BOS after them and the closing newline)."""
    handle = vlmflow.load(str(tiny_path(family)))
    for images, text in (([photo], "Describe the image."), ([photo, photo2], "Compare them.")):
        prompt = handle.prepare(images, text)
        plain = handle.processor(images=[images], text=[text], return_tensors="pt")
        assert prompt.input_ids.tolist() == plain["input_ids"].tolist()
        assert prompt.inputs["token_type_ids"].tolist() == plain["token_type_ids"].tolist()
        assert "labels" not in prompt.inputs
        assert prompt.texts == ("<image>" * len(images) + "<s>" + text + "\n",)
        codes = prompt.layout.codes[0].tolist()
        n_image = 16 * len(images)
        assert codes == [int(Role.IMAGE)] * n_image + [int(Role.QUERY)] * (len(codes) - n_image)


@pytest.mark.parametrize("family", sorted(EXPECTED_TILES))
def test_tiled_geometry(family, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    span = handle.prepare(photo).layout.images[0][0]
    assert [(t.kind, t.rows, t.cols) for t in span.tiles] == EXPECTED_TILES[family]
    assert span.size == (130, 90)
    if family in ("llava_next", "llava_onevision"):  # a newline after each high-res grid row
        assert len(span.separators) == span.tiles[1].rows
    if family == "mistral3":  # [IMG_BREAK] after each row but the last, [IMG_END] after it
        assert len(span.separators) == span.tiles[0].rows
    if family in ("internvl", "idefics3"):  # tiles cover the image once, row-major
        boxes = [t.box for t in span.tiles if t.kind == "tile"]
        assert sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) == pytest.approx(1.0)
    if family == "paligemma":
        assert span.tiles[0].box == (0.0, 0.0, 1.0, 1.0)
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
    if family == "llava_onevision":  # each image among several: one padded view, one newline
        grids = [[(t.kind, t.rows, t.cols) for t in s.tiles] for s in spans]
        assert grids == [[("image", 4, 4)]] * 2
        assert [len(s.separators) for s in spans] == [1, 1]
    else:
        assert counts["image"] > one.layout.counts()["image"]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3", "paligemma"])
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
    # BLIP-2 feeds query tokens, not image tokens: its config names none, nor has it a processor
    (tmp_path / "config.json").write_text('{"model_type": "blip-2"}')
    with pytest.raises(vlmflow.VlmflowError) as err:
        vlmflow.load(str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("unsupported model family 'blip-2': vlmflow supports llava, ")
    assert re.search(r"llava_next.*qwen2_vl.*internvl", message)
    assert message.endswith(
        "and other model types whose image token it finds (config image_token_id / "
        "image_token_index, or the processor's image_token)"
    )


def test_pad_tokens_that_disagree_with_the_merge_size_are_refused(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("qwen3_vl")))
    handle.processor.image_processor.merge_size = 1  # the model merges 2 x 2 patches
    with pytest.raises(vlmflow.VlmflowError, match=r"qwen3_vl: image 0 has 48 image tokens"):
        handle.prepare(photo)


def test_rotary_positions_need_the_token_types(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("qwen3_vl")))
    inputs = dict(handle.prepare(photo).inputs)
    positions, deltas = handle.roles.rope_index(handle.model, inputs)
    assert positions.shape == (3, 1, inputs["input_ids"].shape[1]) and int(deltas) < 0
    del inputs["mm_token_type_ids"]
    with pytest.raises(vlmflow.VlmflowError, match="mm_token_type_ids missing"):
        handle.roles.rope_index(handle.model, inputs)
