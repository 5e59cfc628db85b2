"""Batched variants: per-row knockout, shared prefill, equality with one-by-one sessions."""

from __future__ import annotations

import pytest
import torch

import vlmflow
from vlmflow.attention.batch import first_changed, generate_variants
from vlmflow.models.tiny import TINY_FAMILIES

NEW = 8
K = vlmflow.Knockout


def _sweep(prompt):
    patches = prompt.layout.patch_positions()
    # a key set names patch positions: mllama's image has none in the prompt
    key_sets = [[K.key_set({1: patches[: len(patches) // 2], 2: patches[::3]})]] if patches else []
    return [
        [],
        [K.parse("image->generated", "from:1")],
        [K.parse("image->generated", "from:3")],
        [K.parse("image->query", "all")],
        *key_sets,
        [K.parse("image->query", "only:1-1"), K.parse("image->generated", "only:2-3")],
    ]


def _one_by_one(handle, prompt, variants, capture=None, **kwargs):
    ids, captures = [], []
    for variant in variants:
        with vlmflow.session(handle, prompt, knockout=variant, capture=capture) as s:
            ids.append(s.generate(**{"max_new_tokens": NEW, **kwargs})[0].tolist())
        captures.append(s.capture if capture is not None else None)
    return ids, captures


# every family but those whose sweep path (positions, cache, mask) another one already takes
SWEPT = [
    f
    for f in TINY_FAMILIES
    if f not in ("llava_next", "qwen2_5_vl", "internvl", "idefics3", "smolvlm")
]


@pytest.mark.parametrize("family", SWEPT)
@pytest.mark.parametrize("with_capture", [False, True])
def test_variants_equal_one_by_one(family, with_capture, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    variants = _sweep(prompt)
    # image rows exist at self-attention layers only (mllama: layers 1 and 3 are cross)
    own = "only:2-2" if handle.roles.cross_attention_layers() else "from:2"
    capture = vlmflow.Capture.of(image_layers=own) if with_capture else None
    alone, captures = _one_by_one(handle, prompt, variants, capture)
    run = generate_variants(handle, prompt, variants, max_new_tokens=NEW, capture=capture)
    assert [ids.tolist() for ids in run.ids] == alone
    assert len({tuple(ids) for ids in alone}) > 2  # the knockouts really change generations
    # the image->query rows recompute only the query positions: prefix and image are shared;
    # in a prefix-LM prompt (PaliGemma) the image reads the query too, and a cache that continues
    # only with cross-attention mask rows (mllama) is not shared: nothing is shared there
    first_query = prompt.layout.codes[0].tolist().index(int(vlmflow.Role.QUERY))
    block = handle.roles.bidirectional_end(prompt.inputs)
    shared = 0 if block > first_query or not handle.roles.text_continues else first_query
    assert run.shared == shared
    assert (block == prompt.layout.length) == (family in ("paligemma", "paligemma2"))
    if capture is None:
        assert run.capture is None
        return
    assert run.capture is not None
    for row, single in enumerate(captures):
        steps = single.num_steps
        ours = run.capture.fractions[:steps, :, row]  # (steps, layers, 4)
        assert torch.allclose(ours, single.fractions[:, :, 0], atol=1e-4, equal_nan=True)
        for layer, image_row in single.image_rows.items():
            got = run.capture.image_rows[layer][:steps, row].float()
            assert torch.allclose(got, image_row[:, 0].float(), atol=1e-3)


@pytest.fixture(params=["llava", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "paligemma2"])
def sweep(request, tiny_path, photo):
    """(handle, prompt, variants, each variant's tokens generated one by one) on a family."""
    handle = vlmflow.load(str(tiny_path(request.param)))
    prompt = handle.prepare(photo)
    variants = _sweep(prompt)
    alone, _ = _one_by_one(handle, prompt, variants)
    return handle, prompt, variants, alone


def test_unshared_and_prompt_untouched_batches_equal_one_by_one(sweep):
    handle, prompt, variants, alone = sweep
    unshared = generate_variants(handle, prompt, variants, max_new_tokens=NEW, share_prefill=False)
    assert [ids.tolist() for ids in unshared.ids] == alone
    assert unshared.shared == 0
    # no variant touches the prompt: every position but the last is computed once
    late = [variants[0], variants[1], variants[2], variants[4]]
    run = generate_variants(handle, prompt, late, max_new_tokens=NEW)
    assert run.shared == prompt.layout.length - 1
    assert [ids.tolist() for ids in run.ids] == [alone[0], alone[1], alone[2], alone[4]]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_chunked_prefill_batches_equal_one_by_one(family, tiny_path, photo):
    """`generate(prefill_chunk_size=N)` through the batch: the shared path continues the shared
    cache in chunks, the unshared one cuts the whole prompt; both give each variant's one-pass
    tokens."""
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    variants = _sweep(prompt)
    alone, _ = _one_by_one(handle, prompt, variants)
    # two positions a pass: cuts through the image, and through the query positions the shared
    # path computes per row
    chunk = 2
    assert prompt.layout.length - first_changed(prompt.layout, variants[3]) > chunk
    for share in (True, False):
        run = generate_variants(
            handle,
            prompt,
            variants,
            max_new_tokens=NEW,
            share_prefill=share,
            prefill_chunk_size=chunk,
        )
        assert [ids.tolist() for ids in run.ids] == alone, share
        assert (run.shared > 0) == share


def test_variants_that_change_the_image_rows_recompute_the_prompt(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("llava")))
    prompt = handle.prepare(photo)
    variants = [[], [K.parse("prefix->image", "all")], [K.parse("image->query", "only:2-2")]]
    assert first_changed(prompt.layout, variants[1]) == prompt.layout.image_positions()[0]
    alone, _ = _one_by_one(handle, prompt, variants)
    run = generate_variants(handle, prompt, variants, max_new_tokens=NEW)
    assert run.shared == 0  # a chunk cannot start inside the image
    assert [ids.tolist() for ids in run.ids] == alone
    assert alone[1] != alone[0]


def test_each_row_stops_at_its_own_eos(sweep):
    handle, prompt, variants, alone = sweep
    eos = alone[0][3]  # a token the baseline emits early: some rows stop, others run on
    settings = {"max_new_tokens": NEW, "eos_token_id": eos}
    stopped, _ = _one_by_one(handle, prompt, variants, **settings)
    assert len({len(ids) for ids in stopped}) > 1
    run = generate_variants(handle, prompt, variants, **settings)
    assert [ids.tolist() for ids in run.ids] == stopped
    forced = generate_variants(handle, prompt, variants, min_new_tokens=NEW, **settings)
    assert [ids.tolist() for ids in forced.ids] == _one_by_one(
        handle, prompt, variants, min_new_tokens=NEW, **settings
    )[0]


def test_per_row_knockout_leaves_other_rows_untouched(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("llava")))
    one = handle.prepare(photo)
    two = handle.prepare_batch([([photo], "Describe the image.")] * 2)
    plain = handle.generate(one, max_new_tokens=NEW)[0].tolist()
    ko = K.parse("image->query+generated", "from:1")
    with vlmflow.session(handle, one, knockout=ko) as s:
        cut = s.generate(max_new_tokens=NEW)[0].tolist()
    assert cut != plain
    with vlmflow.session(handle, two, knockout=ko.on_rows([1])) as s:
        rows = s.generate(max_new_tokens=NEW).tolist()
    assert rows == [plain, cut]
    assert str(ko.on_rows([1])) == "image->query+generated@from:1[rows 1]"


def test_bad_rows_are_refused(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("llava")))
    prompt = handle.prepare(photo)
    with (
        pytest.raises(vlmflow.VlmflowError, match="rows the prompt does not have"),
        vlmflow.session(handle, prompt, knockout=K.parse("image->query").on_rows([1])),
    ):
        pass
    with pytest.raises(vlmflow.VlmflowError, match="leave rows unset"):
        generate_variants(handle, prompt, [[K.parse("image->query").on_rows([0])]])
    with pytest.raises(vlmflow.VlmflowError, match="one prompt"):
        generate_variants(handle, handle.prepare_batch([([photo], "a")] * 2), [[]])
    with pytest.raises(vlmflow.VlmflowError, match="no variants"):
        generate_variants(handle, prompt, [])
