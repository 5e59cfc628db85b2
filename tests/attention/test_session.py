"""Sessions: no-op equality with transformers, cache consistency, exact knockout, capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

import vlmflow
from vlmflow.attention import backend
from vlmflow.models.tiny import CROSS_ATTENTION_FAMILIES, GENERIC_FAMILIES, TINY_FAMILIES

from .numerics import same

NEW = 8
# registered families, and model types that load through the generic resolver
FAMILIES = TINY_FAMILIES + GENERIC_FAMILIES


def _plain(path, impl):
    return AutoModelForImageTextToText.from_pretrained(path, attn_implementation=impl).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_session_equals_eager_and_sdpa(family, tiny_path, photo):
    path = str(tiny_path(family))
    handle = vlmflow.load(path)
    prompt = handle.prepare(photo)
    with vlmflow.session(handle, prompt) as s:
        ours = s.generate(max_new_tokens=NEW)
    n = prompt.layout.length
    text_config = handle.model.config.get_text_config()
    softcapped = getattr(text_config, "attn_logit_softcapping", None) is not None
    for impl in ("eager", "sdpa"):
        if impl == "sdpa" and softcapped:
            # transformers' SDPA cannot soft-cap (Gemma 2): it refuses the model
            with pytest.raises(ValueError, match="scaled_dot_product_attention"):
                _plain(path, impl)
            continue
        with torch.inference_mode():
            theirs = _plain(path, impl).generate(
                **prompt.inputs, do_sample=False, max_new_tokens=NEW
            )
        assert ours.tolist() == theirs[:, n:].tolist(), impl


@pytest.mark.parametrize("family", FAMILIES)
def test_image_cut_off_from_text_makes_the_image_irrelevant(family, tiny_path, photo):
    """Under image -> query+generated at all layers no text position reads an image key, so
    two different images give identical logits (the image only reaches text through attention)."""
    from PIL import Image

    handle = vlmflow.load(str(tiny_path(family)))
    inverted = Image.fromarray(255 - np.asarray(photo))  # same size: same token count
    first, second = handle.prepare(photo), handle.prepare(inverted)
    assert first.input_ids.tolist() == second.input_ids.tolist()
    # mllama's rows before <|image|> read the tiles too (transformers unmasks all-masked
    # cross-attention rows): its text is blind only when the prefix is cut off as well
    cut = "prefix+query+generated" if family in CROSS_ATTENTION_FAMILIES else "query+generated"
    ko = vlmflow.Knockout.parse(f"image->{cut}", "all")
    text = first.layout.codes[0] != int(vlmflow.Role.IMAGE)  # (n,) prefix and query positions

    def logits(prompt, knockout):
        with vlmflow.session(handle, prompt, knockout=knockout), torch.inference_mode():
            return handle.model(**prompt.inputs).logits[0, text]

    assert not torch.equal(logits(first, []), logits(second, []))  # the images do differ
    assert same(family, logits(first, ko), logits(second, ko))


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_equals_uncached(family, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    ko = vlmflow.Knockout.parse("image->generated", "from:1")
    for knockout in ([], [ko]):
        with vlmflow.session(handle, prompt, knockout=knockout) as s:
            cached = s.generate(max_new_tokens=NEW)
            uncached = s.generate(max_new_tokens=NEW, use_cache=False)
        assert cached.tolist() == uncached.tolist()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("setting", "spec", "rows"),
    [
        ("image-generated", "from:2", slice(1, None)),
        ("image-query", "only:1-2", slice(0, 1)),
        ("image-query+generated", "except:1-1", slice(0, None)),
    ],
)
def test_knocked_out_keys_get_exactly_zero(family, setting, spec, rows, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    ko = vlmflow.Knockout.parse(setting, spec)
    selected = ko.layers.resolve(handle.num_layers)
    with vlmflow.session(handle, prompt, knockout=ko, capture=vlmflow.Capture.of()) as s:
        s.generate(max_new_tokens=NEW)
    image = s.capture.role_fraction("image")[rows]  # (steps, layers, b)
    for layer in range(handle.num_layers):
        if layer in selected:
            assert bool((image[:, layer] == 0).all()), layer
        else:
            assert bool((image[:, layer] > 0).all()), layer
    # a row knocked out at a cross-attention layer reads nothing there: its fractions are 0
    expected = torch.ones(s.capture.fractions.shape[:-1])  # (steps, layers, b)
    for layer in sorted(selected & handle.roles.cross_attention_layers()):
        expected[rows, layer] = 0.0
    sums = s.capture.fractions.sum(-1)
    assert torch.allclose(sums, expected, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_layers_outside_the_set_are_bit_identical(family, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)

    def hidden(knockout):
        with vlmflow.session(handle, prompt, knockout=knockout), torch.inference_mode():
            return handle.model(**prompt.inputs, output_hidden_states=True).hidden_states

    base = hidden([])
    cut = hidden([vlmflow.Knockout.parse("image->query", "only:2-2")])
    # hidden_states[i] is the input of layer i: layers 0 and 1 ran untouched
    assert all(torch.equal(base[i], cut[i]) for i in range(3))
    assert not torch.equal(base[3], cut[3])
    # and the function itself is SDPA, untouched, at a layer the session does not select
    # (mllama's layer 1 is a cross-attention layer)
    layer = next(
        m
        for m in handle.model.modules()
        if getattr(m, "layer_idx", None) == 1 and hasattr(m, "q_proj")
    )
    q = torch.randn(1, 4, 5, 16)
    k, v = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    with vlmflow.session(
        handle, prompt, knockout=vlmflow.Knockout.parse("image->query", "only:2-2")
    ):
        ours, _ = backend.attention(layer, q, k, v, None, scaling=0.25)
    theirs, _ = backend.sdpa_attention_forward(layer, q, k, v, None, scaling=0.25)
    assert torch.equal(ours, theirs)


def _noise(w: int, h: int, seed: int):
    from PIL import Image

    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe"])
def test_deepstack_reaches_text_only_through_attention(family, tiny_path):
    """Deepstack adds visual features to the image positions' hidden states after the early
    decoder layers (and to no other position), so under image -> query+generated at all layers
    two different images give identical logits at every step, equal to those of a run with
    deepstack switched off; without the knockout the images, and deepstack, change them."""
    handle = vlmflow.load(str(tiny_path(family)))
    prompts = [handle.prepare(_noise(130, 90, seed)) for seed in (0, 1)]
    assert torch.equal(prompts[0].input_ids, prompts[1].input_ids)  # same positions, other pixels
    patches = prompts[0].layout.patch_positions()  # the <|image_pad|> positions
    seen: list[dict] = []
    drop = [False]

    def deepstack(module, args, kwargs):  # what the language model is given for the prompt
        if kwargs.get("deepstack_visual_embeds") is not None:
            seen.append(kwargs)
            if drop[0]:
                kwargs = {**kwargs, "deepstack_visual_embeds": None}
        return args, kwargs

    def logits(prompt, knockout, with_deepstack=True):  # (steps, 1, vocab)
        drop[0] = not with_deepstack
        with vlmflow.session(handle, prompt, knockout=knockout), torch.inference_mode():
            out = handle.model.generate(
                **prompt.inputs,
                do_sample=False,
                max_new_tokens=NEW,
                min_new_tokens=NEW,
                return_dict_in_generate=True,
                output_logits=True,
            )
        return torch.stack(out.logits)

    language_model = handle.model.model.language_model
    hook = language_model.register_forward_pre_hook(deepstack, with_kwargs=True)
    try:
        ko = vlmflow.Knockout.parse("image->query+generated", "all")
        cut = [logits(p, ko) for p in prompts]
        plain = [logits(p, []) for p in prompts]
        cut_without = logits(prompts[0], ko, with_deepstack=False)
        plain_without = logits(prompts[0], [], with_deepstack=False)
    finally:
        hook.remove()
    # deepstack was active: one feature map per deepstack layer, on the image pad positions
    # only, different for the two images
    layers = len(handle.model.config.vision_config.deepstack_visual_indexes)
    assert layers >= 1
    first, second = seen[0], seen[1]
    assert first["visual_pos_masks"][0].nonzero()[:, 0].tolist() == patches
    assert len(first["deepstack_visual_embeds"]) == layers
    pairs = zip(first["deepstack_visual_embeds"], second["deepstack_visual_embeds"], strict=True)
    for a, b in pairs:
        assert a.shape == (len(patches), handle.model.config.text_config.hidden_size)
        assert float(a.abs().mean()) > 0 and not torch.equal(a, b)
    assert not torch.equal(plain[0], plain_without)  # deepstack reaches the text ...
    assert not torch.equal(plain[0], plain[1])
    # ... only through attention to image keys: knocked out, neither image nor deepstack shows
    assert same(family, cut[0], cut[1])
    assert same(family, cut[0], cut_without)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_key_set_knockout_blocks_exactly_those_keys(family, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    patches = prompt.layout.patch_positions()
    blocked = patches[: len(patches) // 2]
    ko = vlmflow.Knockout.key_set({1: blocked})
    capture = vlmflow.Capture.of(image_layers="all")
    with vlmflow.session(handle, prompt, knockout=ko, capture=capture) as s:
        s.generate(max_new_tokens=4)
    rows = s.capture.image_rows
    index = s.capture.image_positions[0].tolist()
    cols = [index.index(p) for p in blocked]
    kept = [i for i, p in enumerate(index) if p not in blocked]
    assert bool((rows[1][1:, 0, cols] == 0).all())
    assert bool((rows[1][1:, 0, kept] > 0).all())
    assert bool((rows[0][1:, 0, cols] > 0).all())  # layer 0 untouched


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "smolvlm"])
def test_capture_does_not_change_generation(family, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    plain = handle.generate(prompt, max_new_tokens=NEW)
    capture = vlmflow.Capture.of(image_layers="from:2")
    with vlmflow.session(handle, prompt, capture=capture) as s:
        captured = s.generate(max_new_tokens=NEW)
    assert captured.tolist() == plain.tolist()
    result = s.capture
    assert result.num_steps == NEW
    assert sorted(result.image_rows) == [2, 3]
    n_image = prompt.layout.counts()["image"]
    assert result.image_rows[2].shape == (NEW, 1, n_image)
    assert result.image_rows[2].dtype == torch.float16
    # the image row is the image part of the same softmax row the fractions come from
    image_sum = result.image_rows[3].float().sum(-1)[:, 0]
    assert torch.allclose(image_sum, result.role_fraction("image")[:, 3, 0], atol=2e-3)
    # generated tokens exist as keys only from step 1 on
    assert float(result.role_fraction("generated")[0].max()) == 0.0
    assert bool((result.role_fraction("generated")[1:] > 0).all())


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3", "paligemma2", "mllama"])
def test_batch_with_padding_matches_single_prompts(family, tiny_path, photo, photo2):
    handle = vlmflow.load(str(tiny_path(family)))
    items = [([photo], "Describe the image."), ([photo2], "What is in this picture ?")]
    ko = vlmflow.Knockout.parse("image->generated", "from:1")
    batch = handle.prepare_batch(items)
    assert int((batch.inputs["attention_mask"] == 0).sum()) > 0  # really padded
    with vlmflow.session(handle, batch, knockout=ko) as s:
        together = s.generate(max_new_tokens=NEW)
    for row, (images, text) in enumerate(items):
        single = handle.prepare(images, text)
        with vlmflow.session(handle, single, knockout=ko) as s:
            alone = s.generate(max_new_tokens=NEW)
        assert together[row].tolist() == alone[0].tolist()


def test_session_state_does_not_leak(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("llava")))
    prompt = handle.prepare(photo)
    plain = handle.generate(prompt, max_new_tokens=NEW)
    with vlmflow.session(handle, prompt, knockout=vlmflow.Knockout.parse("image-query+generated")):
        cut = handle.generate(prompt, max_new_tokens=NEW)
    assert backend.ACTIVE.get() is None
    assert handle.generate(prompt, max_new_tokens=NEW).tolist() == plain.tolist()
    assert cut.tolist() != plain.tolist()


def test_flash_and_eager_handles_refuse_knockout(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("llava")), attn="eager")
    prompt = handle.prepare(photo)
    with (
        pytest.raises(vlmflow.VlmflowError, match="attn='sdpa'"),
        vlmflow.session(handle, prompt, knockout=vlmflow.Knockout.parse("image-query")),
    ):
        pass


def test_a_role_blocked_from_itself_is_refused_only_when_a_query_keeps_no_key(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("llava")))
    prompt = handle.prepare(photo, "Is there a cat?")
    # the first prompt position sees only itself: prefix -> prefix leaves it nothing
    with (
        pytest.raises(vlmflow.VlmflowError, match="nothing to attend to"),
        vlmflow.session(handle, prompt, knockout=vlmflow.Knockout.parse("prefix->prefix")),
    ):
        pass
    every = "prefix+image+query+generated"
    with (
        pytest.raises(vlmflow.VlmflowError, match="nothing to attend to"),
        vlmflow.session(handle, prompt, knockout=vlmflow.Knockout.parse(f"{every}->generated")),
    ):
        pass
    # generated tokens still see the prompt: generated -> generated blocks only their own keys
    plain = handle.generate(prompt, max_new_tokens=NEW)
    ko = vlmflow.Knockout.parse("generated->generated")
    with vlmflow.session(handle, prompt, knockout=ko):
        cut = handle.generate(prompt, max_new_tokens=NEW)
    assert cut.shape == plain.shape and cut.tolist() != plain.tolist()


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl", "internvl", "idefics3"])
@pytest.mark.parametrize("setting", ["image-query", "image-query+generated"])
def test_every_target_row_ignores_blocked_keys(family, setting, tiny_path, photo):
    """Exactly zero attention: changing the values of blocked keys leaves target rows unchanged."""
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    n = prompt.layout.length
    codes = prompt.layout.codes[0]
    image = codes == vlmflow.Role.IMAGE
    query = codes == vlmflow.Role.QUERY
    module = next(
        m
        for m in handle.model.modules()
        if getattr(m, "layer_idx", None) == 2 and hasattr(m, "num_key_value_groups")
    )
    torch.manual_seed(0)
    h, h_kv, d = 4, 2, 16
    q, k, v = torch.randn(1, h, n, d), torch.randn(1, h_kv, n, d), torch.randn(1, h_kv, n, d)
    v2 = v.clone()
    v2[:, :, image] += 10.0
    ko = vlmflow.Knockout.parse(setting, "only:2-2")
    with vlmflow.session(handle, prompt, knockout=ko):
        out, _ = backend.attention(module, q, k, v, None, scaling=0.25)  # (1, n, h, d)
        out2, _ = backend.attention(module, q, k, v2, None, scaling=0.25)
    assert torch.equal(out[0, query], out2[0, query])
    after = torch.arange(n) > int(image.nonzero().max())
    assert not torch.equal(out[0, after & ~query], out2[0, after & ~query]) or not bool(
        (after & ~query).any()
    )
    assert not torch.equal(out[0, image], out2[0, image])  # image rows still read the image


def test_knockouts_combine_and_capture_picks_steps(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("llava")))
    prompt = handle.prepare(photo)
    both = [
        vlmflow.Knockout.parse("image->query", "only:1-1"),
        vlmflow.Knockout.parse("image->generated", "only:3-3"),
    ]
    capture = vlmflow.Capture.of(image_layers="all", steps=[0, 2, 5])
    with vlmflow.session(handle, prompt, knockout=both, capture=capture) as s:
        s.generate(max_new_tokens=NEW, min_new_tokens=NEW)
    image = s.capture.role_fraction("image")[:, :, 0]  # (steps, layers)
    recorded = [t for t in range(s.capture.num_steps) if not torch.isnan(image[t]).all()]
    assert recorded == [0, 2, 5]
    assert float(image[0, 1]) == 0.0  # the query row at step 0, blocked at layer 1
    assert float(image[0, 3]) > 0.0  # image->generated does not touch the query row
    assert bool((image[[2, 5], 3] == 0).all())  # generated rows blocked at layer 3
    assert bool((image[[2, 5], 1] > 0).all())  # and not at layer 1
    rows = s.capture.image_rows[3]
    assert bool((rows[[1, 3, 4]] == 0).all())  # steps not chosen keep no image row
