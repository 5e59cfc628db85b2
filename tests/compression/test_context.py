"""Compressed contexts: k=100% equals the full prompt, save/load round trip, bad files refused."""

from __future__ import annotations

import pytest
import torch

import vlmflow
from vlmflow.compression import compress, load_context
from vlmflow.compression.context import continuation_ids
from vlmflow.models.tiny import CROSS_ATTENTION_FAMILIES, GENERIC_FAMILIES, TINY_FAMILIES
from vlmflow.roles import Role

QUESTIONS = ("Is there a dog in the image?", "How many objects are there?")


def _full_prompt_answer(handle, image, context, question, new):
    """Greedy answer of the uncompressed prompt: context tokens + question, with the image."""
    batch = handle.prepare(image)
    n = context.full_tokens
    qids = continuation_ids(handle, question)
    ids = torch.cat([batch.input_ids[:, :n], qids], 1)
    inputs = dict(batch.inputs)
    inputs["input_ids"] = ids
    inputs["attention_mask"] = torch.ones_like(ids)
    if "mm_token_type_ids" in inputs:
        types = inputs["mm_token_type_ids"][:, :n]
        inputs["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(qids)], 1)
    if "cross_attention_mask" in inputs:  # Llama 3.2 Vision: the question reads the image's
        mask = inputs["cross_attention_mask"][:, :n]  # tiles as the last context token does
        rows = mask[:, -1:].expand(-1, qids.shape[1], -1, -1)
        inputs["cross_attention_mask"] = torch.cat([mask, rows], 1)
    if "token_type_ids" in inputs:
        # text is type 0 (Gemma 3: 1 marks image tokens), except after PaliGemma's prefix-LM
        # block, where the question is the causal suffix (type 1)
        suffix = int(handle.roles.bidirectional_end(batch.inputs) > 0)
        types = inputs["token_type_ids"][:, :n]
        inputs["token_type_ids"] = torch.cat([types, torch.full_like(qids, suffix)], 1)
    with torch.inference_mode():
        out = handle.model.generate(**inputs, do_sample=False, max_new_tokens=new)
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("family", TINY_FAMILIES + GENERIC_FAMILIES)
def test_full_context_answers_like_the_full_prompt(family, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    context = compress(handle, photo, k=1.0, max_new_tokens=8)
    assert context.context_tokens == context.full_tokens
    for question in QUESTIONS:
        answer = context.ask(question, max_new_tokens=8)
        expected = _full_prompt_answer(handle, photo, context, question, 8)
        assert list(answer.ids) == expected[: len(answer.ids)]
        assert len(answer.ids) == 8 or answer.ids[-1] in (3,)  # ran to the end or stopped at EOS


@pytest.mark.parametrize("family", CROSS_ATTENTION_FAMILIES)
def test_full_context_of_a_padded_tiling_answers_like_the_full_prompt(family, tiny_path):
    """A square picture fills one tile of two: the padding tile's states, masked for every
    token of the full prompt, are no state of the image and are never kept."""
    from PIL import Image

    handle = vlmflow.load(str(tiny_path(family)))
    image = Image.radial_gradient("L").convert("RGB").resize((40, 40))
    inputs = handle.prepare(image).inputs
    assert int(inputs["aspect_ratio_mask"][0, 0].sum()) < inputs["pixel_values"].shape[2]
    context = compress(handle, image, k=1.0, max_new_tokens=8)
    cross = handle.roles.cross_attention_layers()
    per_tile = len(context.state_keys or []) // int(inputs["aspect_ratio_mask"][0, 0].sum())
    assert per_tile * int(inputs["pixel_values"].shape[2]) > len(context.state_keys or [])
    assert all(context.kept[layer] == list(range(per_tile)) for layer in cross)  # tile 0
    for question in QUESTIONS:
        answer = context.ask(question, max_new_tokens=8)
        expected = _full_prompt_answer(handle, image, context, question, 8)
        assert list(answer.ids) == expected[: len(answer.ids)]
        assert len(answer.ids) == 8 or answer.ids[-1] in (3,)


@pytest.mark.parametrize("family", CROSS_ATTENTION_FAMILIES)
def test_pruned_context_keeps_the_top_vision_states(family, tiny_path, photo):
    """Cross-attention models: each cross-attention layer keeps the top k of the image's vision
    states by the description's cross-attention rows (captured independently here), every
    self-attention layer the whole prompt; a context cut from the full one is the same."""
    handle = vlmflow.load(str(tiny_path(family)))
    cross = handle.roles.cross_attention_layers()
    prompt = handle.prepare(photo)
    span = prompt.layout.images[0][0]
    states = list(span.state_keys)
    vision = handle.model.config.vision_config
    per_tile = 1 + (vision.image_size // vision.patch_size) ** 2  # CLS + patches
    assert len(states) == int(prompt.inputs["aspect_ratio_mask"][0, 0].sum()) * per_tile
    capture = vlmflow.Capture.of(fractions=False, tile_layers="all", dtype="float32")
    with vlmflow.session(handle, prompt, capture=capture) as s:
        s.generate(max_new_tokens=8)
    full = compress(handle, photo, k=1.0, max_new_tokens=8, rank="max")
    for k in (0.25, 0.0):
        small = compress(handle, photo, k=k, max_new_tokens=8, rank="max")
        n_keep = round(k * len(states))
        for layer in range(handle.num_layers):
            positions = small.kept[layer]
            assert small.keys[layer].shape[2] == len(positions)
            if layer not in cross:
                assert positions == list(range(small.full_tokens))
                assert torch.equal(small.keys[layer], full.keys[layer])
                continue
            rows = s.capture.tile_rows[layer][1:, 0, states]  # (generated, v_image)
            torch.testing.assert_close(small.scores[layer], rows.max(0).values)
            order = sorted(range(len(states)), key=lambda i: (-float(rows[:, i].max()), i))
            assert positions == sorted(states[i] for i in order[:n_keep]), (k, layer)
            assert full.kept[layer] == states
            index = [states.index(p) for p in positions]
            assert torch.equal(small.keys[layer], full.keys[layer][:, :, index])
        cut = full.pruned(k)
        assert cut.kept == small.kept
        assert all(torch.equal(a, b) for a, b in zip(cut.keys, small.keys, strict=True))
        answer = small.ask(QUESTIONS[0], max_new_tokens=4)
        assert answer.ids == cut.ask(QUESTIONS[0], max_new_tokens=4).ids
        assert answer.context_tokens == small.full_tokens  # the self-attention cache is whole
    assert small.kv_bytes() < full.kv_bytes()


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "internvl", "smolvlm", "paligemma2"])
def test_pruned_context_keeps_the_top_image_tokens(family, tiny_path, photo, tmp_path):
    handle = vlmflow.load(str(tiny_path(family)))
    full = compress(handle, photo, k=1.0, max_new_tokens=8)
    small = compress(handle, photo, k=0.25, max_new_tokens=8)
    none = compress(handle, photo, k=0.0, max_new_tokens=8)
    layout = handle.prepare(photo).layout
    codes = layout.codes[0]
    n_image = int((codes[: full.full_tokens] == Role.IMAGE).sum())
    not_image = full.full_tokens - n_image
    assert none.context_tokens == not_image  # query-only context: prefix + query
    assert small.context_tokens == not_image + round(0.25 * n_image)
    for positions in small.kept:
        assert len(positions) == small.context_tokens
        image_kept = [p for p in positions if codes[p] == Role.IMAGE]
        assert len(image_kept) == round(0.25 * n_image)
    assert small.kv_bytes() < full.kv_bytes()
    # a pruned context answers too, and the image-free one differs from the full one somewhere
    assert small.ask(QUESTIONS[0], max_new_tokens=4).context_tokens == small.context_tokens


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "idefics3", "mllama"])
def test_saved_context_answers_identically(family, tiny_path, photo, tmp_path):
    handle = vlmflow.load(str(tiny_path(family)))
    context = compress(handle, photo, k=0.25, max_new_tokens=8, rank="max")
    path = tmp_path / "context.safetensors"
    context.save(path)
    again = load_context(path, handle)
    assert again.kept == context.kept and again.rank == "max"
    for question in QUESTIONS:
        assert again.ask(question, max_new_tokens=8).ids == context.ask(question, 8).ids


def test_bad_context_files_are_refused(tiny_path, photo, tmp_path):
    llava = vlmflow.load(str(tiny_path("llava")))
    other = vlmflow.load(str(tiny_path("llava_next")))
    path = tmp_path / "context.safetensors"
    compress(llava, photo, k=0.25, max_new_tokens=4).save(path)
    with pytest.raises(vlmflow.VlmflowError, match="made with model"):
        load_context(path, other)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(vlmflow.VlmflowError, match="not a readable context"):
        load_context(corrupt, llava)
    with pytest.raises(vlmflow.VlmflowError, match="no saved context"):
        load_context(tmp_path / "missing.safetensors", llava)
    with pytest.raises(vlmflow.VlmflowError, match="fraction"):
        compress(llava, photo, k=5)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_pruning_a_full_context_equals_compressing_directly(family, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    full = compress(handle, photo, k=1.0, max_new_tokens=8)
    direct = compress(handle, photo, k=0.25, max_new_tokens=8)
    cut = full.pruned(0.25)
    assert cut.kept == direct.kept
    assert all(torch.equal(a, b) for a, b in zip(cut.keys, direct.keys, strict=True))
    question = QUESTIONS[0]
    assert cut.ask(question, 6).ids == direct.ask(question, 6).ids
    # without the query tokens only the prefix and the image tokens stay
    bare = full.pruned(0.25, keep_query=False)
    codes = handle.prepare(photo).layout.codes[0]
    for positions in bare.kept:
        assert all(codes[p] in (Role.PREFIX, Role.IMAGE) for p in positions)
    assert bare.context_tokens < cut.context_tokens


def test_a_custom_first_prompt_still_takes_questions(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("llava")))
    context = compress(handle, photo, k=1.0, prompt="What is in this picture ?", max_new_tokens=4)
    answer = context.ask(QUESTIONS[0], max_new_tokens=4)
    assert 0 < len(answer.ids) <= 4


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_rankings_aggregate_the_generated_tokens_attention(family, tiny_path, photo):
    """`sum` / `max` scores are the total / largest attention each image token got from a
    generated token (captured independently), and the kept tokens are the top ones by them."""
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    capture = vlmflow.Capture.of(fractions=False, image_layers="all", dtype="float32")
    with vlmflow.session(handle, prompt, capture=capture) as s:
        s.generate(max_new_tokens=8)
    rows = [s.capture.image_rows[layer][1:, 0] for layer in range(handle.num_layers)]
    image_positions = s.capture.image_positions[0].tolist()
    contexts = {
        rank: compress(handle, photo, k=0.25, max_new_tokens=8, rank=rank)
        for rank in ("sum", "max")
    }
    for layer, r in enumerate(rows):  # r: (generated, n_image)
        torch.testing.assert_close(contexts["sum"].scores[layer], r.sum(0))
        torch.testing.assert_close(contexts["max"].scores[layer], r.max(0).values)
        for rank, context in contexts.items():
            n_keep = round(0.25 * len(image_positions))
            top = torch.topk(context.scores[layer], n_keep).indices.tolist()
            kept = [p for p in context.kept[layer] if p in set(image_positions)]
            assert kept == sorted(image_positions[i] for i in top), (rank, layer)
    assert contexts["max"].kept != contexts["sum"].kept  # the two rankings keep other tokens
    assert contexts["max"].rank == "max"
    with pytest.raises(vlmflow.VlmflowError, match="rank"):
        compress(handle, photo, k=0.25, rank="mean")


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_one_token_description_ranks_by_the_last_prompt_position(family, tiny_path, photo):
    """A description of one token has no generated query: the image tokens are ranked by the
    attention of the last prompt position (which predicted that token), computed here from an
    eager model's attentions, and the kept set is exactly its top k per layer."""
    from transformers import AutoModelForImageTextToText

    path = str(tiny_path(family))
    handle = vlmflow.load(path)
    prompt = handle.prepare(photo)
    codes = prompt.layout.codes[0]
    image_positions = [p for p in range(prompt.layout.length) if codes[p] == Role.IMAGE]
    eager = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
    with torch.inference_mode():
        out = eager(**prompt.inputs, output_attentions=True)
    first_token = int(out.logits[0, -1].argmax())
    n_keep = round(0.25 * len(image_positions))
    n_half = round(0.125 * len(image_positions))
    rows, expected, expected_half = [], [], []
    for layer_attention in out.attentions:  # (1, h, n, n) per layer
        row = layer_attention[0, :, -1, image_positions].float().mean(0)  # (n_image,)
        order = sorted(range(len(image_positions)), key=lambda i: (-float(row[i]), i))
        rows.append(row)
        expected.append(sorted(image_positions[i] for i in order[:n_keep]))
        expected_half.append(sorted(image_positions[i] for i in order[:n_half]))
    assert len(rows) == handle.num_layers

    contexts = [
        compress(handle, photo, k=0.25, max_new_tokens=1, rank=rank) for rank in ("sum", "max")
    ]
    # the model ends its description at once: its first token is the end of sequence
    handle.model.generation_config.eos_token_id = first_token
    contexts.append(compress(handle, photo, k=0.25, max_new_tokens=8, rank="max"))
    for context in contexts:
        for layer, row in enumerate(rows):
            torch.testing.assert_close(context.scores[layer], row, atol=1e-5, rtol=1e-4)
            kept = [p for p in context.kept[layer] if codes[p] == Role.IMAGE]
            assert kept == expected[layer], (context.rank, layer)
        # a context cut from it keeps the same ranking
        half = context.pruned(0.125)
        for layer in range(handle.num_layers):
            kept = [p for p in half.kept[layer] if codes[p] == Role.IMAGE]
            assert kept == expected_half[layer], (context.rank, layer)
    with pytest.raises(vlmflow.VlmflowError, match="max_new_tokens"):
        compress(handle, photo, k=0.25, max_new_tokens=0)


def test_equal_scores_keep_the_earlier_image_token():
    from vlmflow.compression.context import image_scores, top_indices

    assert top_indices(torch.tensor([0.1, 0.3, 0.3, 0.0, 0.3]), 2).tolist() == [1, 2]
    rows = torch.tensor([[0.5, 0.1, 0.2], [0.1, 0.4, 0.0], [0.3, 0.1, 0.0]])  # (steps, n_image)
    torch.testing.assert_close(image_scores(rows, "sum"), torch.tensor([0.4, 0.5, 0.0]))
    torch.testing.assert_close(image_scores(rows, "max"), torch.tensor([0.3, 0.4, 0.0]))
    for rank in ("sum", "max"):  # one row: the last prompt position's
        torch.testing.assert_close(image_scores(rows[:1], rank), rows[0])
    with pytest.raises(vlmflow.VlmflowError, match="max_new_tokens"):
        image_scores(rows[:0], "sum")


def test_flipped_bytes_in_a_saved_context_are_refused(tiny_path, photo, tmp_path):
    llava = vlmflow.load(str(tiny_path("llava")))
    path = tmp_path / "context.safetensors"
    compress(llava, photo, k=0.25, max_new_tokens=4).save(path)
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    for at in (header + 5, len(data) - 3):  # inside the first and the last tensor's bytes
        flipped = bytearray(data)
        flipped[at] ^= 0x10
        damaged = tmp_path / f"damaged-{at}.safetensors"
        damaged.write_bytes(bytes(flipped))
        with pytest.raises(vlmflow.VlmflowError) as err:
            load_context(damaged, llava)
        assert "checksum" in str(err.value) and "\n" not in str(err.value)
    assert load_context(path, llava).kept  # the intact file still loads
