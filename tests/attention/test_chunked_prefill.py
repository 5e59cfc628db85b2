"""Sessions under transformers' chunked prefill (`generate(prefill_chunk_size=N)`): the prompt
runs as several forward passes, each continuing the KV cache. Knockout, capture and the empty
session give what one pass gives, on every family; a cut through a block of positions that
attend both ways (PaliGemma's prefix, a Gemma 3 image) is refused in one line."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

import vlmflow
from vlmflow.models.tiny import (
    BIDIRECTIONAL_FAMILIES,
    CROSS_ATTENTION_FAMILIES,
    GENERIC_FAMILIES,
    TINY_FAMILIES,
)

from . import reference
from .runs import generated_with_logits, refused_in_one_line

NEW = 6
# transformers cannot chunk a prompt whose image enters through cross-attention (mllama's
# pixels are not pre-encoded per placeholder): its own error, tested below
CHUNKED = [
    f
    for f in TINY_FAMILIES + GENERIC_FAMILIES
    if f not in CROSS_ATTENTION_FAMILIES and f not in BIDIRECTIONAL_FAMILIES
] + ["gemma3"]  # Gemma 3 cut outside its image block
SETTINGS = [("image", "query+generated", "all"), ("image", "query", "from:1")]


def _chunk(family: str, prompt: vlmflow.Prompt) -> int:
    """A chunk size whose cuts fall inside the image (causal families) or just after Gemma 3's
    soft tokens (the only cut its block allows)."""
    n = prompt.layout.length
    if family == "gemma3":
        types = prompt.inputs["token_type_ids"][0]
        return int((types == 1).nonzero()[-1]) + 1
    image = prompt.layout.image_positions(0)
    size = max(2, (image[0] + image[-1]) // 2)
    assert 0 < size < n and image[0] < size <= image[-1]  # a cut inside the image
    return size


@pytest.mark.parametrize("family", CHUNKED)
def test_chunked_prefill_equals_one_pass(family, tiny_path, photo):
    """Empty session = transformers' own chunked generate, logit for logit; knockout = the
    independent cache-free reference, token for token; capture = the one-pass capture."""
    path = str(tiny_path(family))
    handle = vlmflow.load(path)
    prompt = handle.prepare(photo)
    chunk = {"prefill_chunk_size": _chunk(family, prompt)}
    plain = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="sdpa").eval()
    theirs, their_logits = generated_with_logits(plain, prompt, NEW, do_sample=False, **chunk)
    with vlmflow.session(handle, prompt):
        ours, our_logits = generated_with_logits(
            handle.model, prompt, NEW, do_sample=False, **chunk
        )
    assert ours.tolist() == theirs.tolist()
    assert torch.allclose(our_logits, their_logits, rtol=0, atol=1e-5)

    model = AutoModelForImageTextToText.from_pretrained(
        path, attn_implementation={"text_config": reference.NAME, "vision_config": "sdpa"}
    ).eval()
    tokens = handle.processor.tokenizer.convert_ids_to_tokens(prompt.input_ids[0])
    # an image token generated would be read as an image slot when the reference reruns it
    suppress = [handle.roles.image_token_id]
    for src, tgt, spec in SETTINGS:
        ko = vlmflow.Knockout.parse(f"{src}->{tgt}", spec)
        with vlmflow.session(handle, prompt, knockout=ko) as s:
            got = s.generate(
                max_new_tokens=NEW, min_new_tokens=NEW, suppress_tokens=suppress, **chunk
            )[0].tolist()
        layers = ko.layers.resolve(handle.num_layers)
        expected = reference.greedy_without_cache(
            model, prompt.inputs, tokens, NEW, [src], tgt.split("+"), layers, suppress=suppress
        )
        assert got == expected, (src, tgt, spec)

    captured = []
    for kwargs in ({}, chunk):
        with vlmflow.session(handle, prompt, capture=vlmflow.Capture.of(image_layers="all")) as s:
            s.generate(max_new_tokens=NEW, min_new_tokens=NEW, **kwargs)
        captured.append(s.capture)
    one, chunked = captured
    assert chunked.fractions.shape == one.fractions.shape == (NEW, handle.num_layers, 1, 4)
    assert torch.allclose(chunked.fractions, one.fractions, rtol=0, atol=1e-5)
    assert sorted(chunked.image_rows) == sorted(one.image_rows)
    for layer, rows in one.image_rows.items():  # kept in float16: equal to its rounding
        assert chunked.image_rows[layer].dtype == rows.dtype == torch.float16
        assert torch.allclose(chunked.image_rows[layer], rows, rtol=2**-10, atol=1e-6)


@pytest.mark.parametrize("family", BIDIRECTIONAL_FAMILIES)
def test_chunks_through_a_bidirectional_block_are_refused(family, tiny_path, photo):
    """A chunk boundary inside PaliGemma's prefix or a Gemma 3 image: refused in one line
    (empty session, knockout, capture); transformers itself runs it, as another computation
    than its one pass. A chunk as long as the prompt runs."""
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    image = prompt.layout.image_positions(0)
    inside = {"prefill_chunk_size": image[0] + 2}  # the first cut falls in the image
    sessions = [
        {},
        {"knockout": vlmflow.Knockout.parse("image->query", "all")},
        {"capture": vlmflow.Capture.of()},
    ]
    messages = refused_in_one_line(
        handle, prompt, sessions, "prefill_chunk_size", max_new_tokens=NEW, **inside
    )
    assert all(f"position {image[0] + 2} " in m for m in messages)
    whole = {"prefill_chunk_size": prompt.layout.length}
    with vlmflow.session(handle, prompt, capture=vlmflow.Capture.of()) as s:
        ours = s.generate(max_new_tokens=NEW, min_new_tokens=NEW, **whole)
    assert ours.tolist() == handle.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW).tolist()
    assert s.capture.fractions.shape[0] == NEW


@pytest.mark.parametrize("family", CROSS_ATTENTION_FAMILIES)
def test_cross_attention_chunks_fail_as_in_transformers(family, tiny_path, photo):
    """transformers refuses to chunk mllama's raw pixels; a session passes its error on."""
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    chunk = {"prefill_chunk_size": 4}
    with pytest.raises(ValueError, match="Chunked prefill cannot split"):
        handle.generate(prompt, max_new_tokens=2, **chunk)
    with (
        vlmflow.session(handle, prompt, capture=vlmflow.Capture.of()) as s,
        pytest.raises(ValueError, match="Chunked prefill cannot split"),
    ):
        s.generate(max_new_tokens=2, **chunk)
