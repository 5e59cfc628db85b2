"""Families that read the image only through cross-attention layers (mllama): knockout there
zeroes the target rows' cross-attention, nothing else; capture reads the tiles; what needs
image keys at prompt positions (image rows, localization) is refused in one line.

These adapt the shared matrix where it assumes image keys in self-attention: "knocked-out keys
get exactly zero" becomes "knocked rows read nothing at every selected cross-attention layer,
every other row and every earlier layer bit-identical"."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

import vlmflow
from vlmflow.attention import guard
from vlmflow.errors import VlmflowError
from vlmflow.experiments.localization import TokenGrid
from vlmflow.experiments.maps import render
from vlmflow.models.tiny import CROSS_ATTENTION_FAMILIES
from vlmflow.roles import Role

from . import reference

NEW = 4
SETTINGS = [
    ("image-generated", "from:1"),
    ("image-query", "only:1-1"),
    ("image-query+generated", "except:2-2"),
]


def _cross_modules(handle):
    """{layer: cross-attention module} of the decoder."""
    cross = handle.roles.cross_attention_layers()
    return {
        int(m.layer_idx): m
        for m in handle.model.modules()
        if getattr(m, "layer_idx", None) in cross and hasattr(m, "q_proj")
    }


def _run(handle, prompt, knockout):
    """Greedy generation under `knockout`, with every cross-attention output row (positions,
    hidden) per layer, prefill and decode steps joined, and the prefill's hidden states."""
    outputs: dict[int, list[torch.Tensor]] = {}
    with vlmflow.session(handle, prompt, knockout=knockout) as s:  # (the guard's probe ran)
        hooks = [
            module.register_forward_hook(
                lambda m, args, out, layer=layer: outputs.setdefault(layer, []).append(out[0][0])
            )
            for layer, module in _cross_modules(handle).items()
        ]
        try:
            ids = s.generate(max_new_tokens=NEW)
            with torch.inference_mode():
                hidden = handle.model(**prompt.inputs, output_hidden_states=True).hidden_states
        finally:
            for hook in hooks:
                hook.remove()
    # the last call per layer is the hidden-states pass: drop it from the generation's rows
    rows = {layer: torch.cat(calls[:-1], dim=0) for layer, calls in outputs.items()}
    return ids, rows, hidden


@pytest.mark.parametrize("family", CROSS_ATTENTION_FAMILIES)
@pytest.mark.parametrize(("setting", "spec"), SETTINGS)
def test_knocked_rows_read_nothing_at_cross_layers(family, setting, spec, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    ko = vlmflow.Knockout.parse(setting, spec)
    selected = ko.layers.resolve(handle.num_layers)
    cross = handle.roles.cross_attention_layers()
    _, base_rows, base_hidden = _run(handle, prompt, [])
    ids, rows, hidden = _run(handle, prompt, ko)
    n = prompt.layout.length
    total = n + NEW - 1  # positions that ran: the prompt, then each fed-back generated token
    roles = prompt.layout.codes[0].tolist() + [int(Role.GENERATED)] * (NEW - 1)
    target = torch.tensor([Role(r) in ko.tgt for r in roles])  # (total,)
    assert ids.shape == (1, NEW)
    for layer in sorted(cross):
        out = rows[layer]  # (total, hidden)
        assert out.shape[0] == total
        assert not bool(out.isnan().any())
        if layer in selected:
            assert bool(target.any())
            assert bool((out[target] == 0).all()), layer
            assert bool((out[~target].abs().sum(-1) > 0).all()), layer
        else:
            assert bool((out.abs().sum(-1) > 0).all()), layer
    # prefill: the layers before the first selected one ran untouched, and at the first selected
    # cross-attention layer the rows outside the target are the model's own, bit for bit
    first = min(selected)
    assert all(torch.equal(base_hidden[i], hidden[i]) for i in range(first + 1))
    if first in cross:
        keep = ~target[:n]
        assert torch.equal(base_rows[first][:n][keep], rows[first][:n][keep])
    if target[:n].any():
        assert not torch.equal(base_hidden[first + 1], hidden[first + 1])


@pytest.mark.parametrize("family", CROSS_ATTENTION_FAMILIES)
def test_capture_reads_the_tiles_at_cross_layers(family, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    cross = sorted(handle.roles.cross_attention_layers())
    own = [layer for layer in range(handle.num_layers) if layer not in cross]
    plain = handle.generate(prompt, max_new_tokens=NEW)
    capture = vlmflow.Capture.of(tile_layers="all", dtype="float32")
    with vlmflow.session(handle, prompt, capture=capture) as s:
        assert s.generate(max_new_tokens=NEW).tolist() == plain.tolist()
    tiles = s.capture.tile_rows  # layer -> (steps, b, v)
    assert sorted(tiles) == cross
    # the prefill's last row over the tiles equals the independent reference's (heads averaged)
    model = AutoModelForImageTextToText.from_pretrained(
        str(tiny_path(family)),
        attn_implementation={"text_config": reference.NAME, "vision_config": "sdpa"},
    ).eval()
    tokens = handle.processor.tokenizer.convert_ids_to_tokens(prompt.input_ids[0])
    reference.greedy_without_cache(model, prompt.inputs, tokens, 1, [], [], [])
    for layer in cross:
        expected = reference.STATE["weights"][layer][0, :, -1].mean(0)  # (v,)
        assert tiles[layer].shape == (NEW, 1, expected.shape[0])
        torch.testing.assert_close(tiles[layer][0, 0], expected, atol=1e-5, rtol=1e-4)
        sums = tiles[layer][:, 0].sum(-1)  # (steps,) every step's row is one softmax
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    image = s.capture.role_fraction("image")  # (steps, layers, b)
    assert torch.allclose(image[:, cross], torch.ones_like(image[:, cross]), atol=1e-6)
    # self-attention layers: the <|image|> position is the one image key there
    assert bool((image[:, own] > 0).all()) and bool((image[:, own] < 1).all())
    # knocked rows read nothing: every fraction 0 at the knocked cross-attention layer
    ko = vlmflow.Knockout.parse("image->generated", f"only:{cross[0]}")
    with vlmflow.session(handle, prompt, knockout=ko, capture=vlmflow.Capture.of()) as s:
        s.generate(max_new_tokens=NEW)
    sums = s.capture.fractions.sum(-1)[:, :, 0]  # (steps, layers)
    assert bool((sums[1:, cross[0]] == 0).all())
    assert torch.allclose(sums[0], torch.ones_like(sums[0]), atol=1e-5)  # step 0: a query row


@pytest.mark.parametrize("family", CROSS_ATTENTION_FAMILIES)
def test_every_text_role_knocked_out_makes_the_text_blind(family, tiny_path, photo, photo2):
    """Under image -> prefix+query+generated at all layers two different images give identical
    logits at every text position and identical generations. The paper's image ->
    query+generated leaves one path open in this family: prefix rows have no tile in the
    model's mask, and transformers gives their all-masked softmax the tiles' mean."""
    handle = vlmflow.load(str(tiny_path(family)))
    one, other = handle.prepare(photo), handle.prepare(photo2)
    assert torch.equal(one.input_ids, other.input_ids)
    text = one.layout.codes[0] != int(Role.IMAGE)  # (n,)
    prefix = one.layout.codes[0] == int(Role.PREFIX)

    def run(setting):
        out = []
        for prompt in (one, other):
            knockout = vlmflow.Knockout.parse(setting, "all") if setting else []
            with vlmflow.session(handle, prompt, knockout=knockout) as s:
                ids = s.generate(max_new_tokens=NEW)
                with torch.inference_mode():
                    logits = handle.model(**prompt.inputs).logits[0]  # (n, vocab)
            out.append((ids, logits))
        return out

    (ids_a, a), (ids_b, b) = run("image->prefix+query+generated")
    assert torch.equal(a[text], b[text])
    assert ids_a.tolist() == ids_b.tolist()
    (_, a), (_, b) = run("")
    assert not torch.equal(a[text], b[text])
    (_, a), (_, b) = run("image->query+generated")
    assert not torch.equal(a[prefix], b[prefix])  # the prefix path named above


@pytest.mark.parametrize("family", CROSS_ATTENTION_FAMILIES)
def test_expanded_rows_are_blind_too(family, tiny_path, photo, photo2):
    """Beams and returned sequences of a padded two-row batch: each expanded row follows its
    prompt row's roles at cross-attention layers too (identical scores for other images)."""
    handle = vlmflow.load(str(tiny_path(family)))
    ko = vlmflow.Knockout.parse("image->prefix+query+generated", "all")
    runs = []
    for image in (photo, photo2):
        items = [([image], "Describe the image."), ([image], "What is in this picture ?")]
        prompt = handle.prepare_batch(items)
        with vlmflow.session(handle, prompt, knockout=ko) as s:
            runs.append(
                s.generate(
                    max_new_tokens=NEW,
                    num_beams=2,
                    num_return_sequences=2,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
            )
    one, other = runs
    assert one.sequences.shape[0] == 4
    assert one.sequences.tolist() == other.sequences.tolist()
    assert all(torch.equal(a, b) for a, b in zip(one.scores, other.scores, strict=True))


@pytest.mark.parametrize("family", CROSS_ATTENTION_FAMILIES)
def test_what_needs_prompt_image_keys_is_refused(family, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    span = prompt.layout.images[0][0]
    assert span.patch_positions == ()
    refusals = [
        (lambda: vlmflow.session(handle, prompt, capture=vlmflow.Capture.of(image_layers="all"))),
        (lambda: vlmflow.session(handle, prompt, vlmflow.Knockout.key_set({1: [span.start]}))),
    ]
    for open_session in refusals:
        with pytest.raises(VlmflowError) as err, open_session():
            pass
        assert "\n" not in str(err.value) and "cross-attention layers 1" in str(err.value)
    no_cross = vlmflow.Capture.of(tile_layers="only:2")
    with (
        pytest.raises(VlmflowError, match="holds none") as err,
        vlmflow.session(handle, prompt, capture=no_cross),
    ):
        pass
    assert "\n" not in str(err.value)
    # maps lie over the vision states: rows over the <|image|> position cannot be drawn
    with pytest.raises(VlmflowError, match="maps cannot place") as err:
        render(np.zeros((1, 1)), [span.start], span, 8)
    assert "\n" not in str(err.value) and "vision states" in str(err.value)
    with pytest.raises(VlmflowError, match="cross-attention") as err:
        TokenGrid.of(prompt.layout)
    assert "\n" not in str(err.value)
    # image rows at self-attention layers hold the <|image|> position's attention
    with vlmflow.session(handle, prompt, capture=vlmflow.Capture.of(image_layers="only:2")) as s:
        s.generate(max_new_tokens=2)
    assert s.capture.image_rows[2].shape == (2, 1, 1)


@pytest.mark.parametrize("family", CROSS_ATTENTION_FAMILIES)
def test_the_probe_reaches_the_cross_layers(family, tiny_path, photo):
    """The guard's probe runs the cross-attention layers (which a text-only forward skips), and
    a cross-attention module that does not call the attention function is refused."""
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    found = guard.coverage(handle, prompt)
    assert set(handle.roles.cross_attention_layers()) <= set(found.calls)
    fresh = vlmflow.load(str(tiny_path(family)))
    layer, module = next(iter(sorted(_cross_modules(fresh).items())))

    class Own(torch.nn.Module):  # reads the tiles without the attention function
        def forward(self, hidden_states, cross_attention_states=None, **kwargs):
            return module.o_proj(module.q_proj(hidden_states)), None

    parent = fresh.model.get_decoder().layers[layer]
    parent.cross_attn = Own()
    knockout = vlmflow.Knockout.parse("image->query")
    refused = pytest.raises(VlmflowError, match=f"layers {layer}: never calls")
    with refused as err, vlmflow.session(fresh, fresh.prepare(photo), knockout):
        pass
    assert "\n" not in str(err.value)
