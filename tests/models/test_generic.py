"""The generic resolver: a model type without a family module loads from its image token alone
(roles only), says so in one warning, and refuses what needs a grid or the model's positions."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vlmflow
from vlmflow.cli import main
from vlmflow.experiments.localization import TokenGrid
from vlmflow.experiments.maps import render
from vlmflow.models.families import SUPPORTED_MODEL_TYPES, GenericResolverWarning, GenericRoles
from vlmflow.models.families.generic import image_token
from vlmflow.models.tiny import GENERIC_FAMILIES, REFUSED_FAMILIES, TINY_FAMILIES
from vlmflow.roles import Role

FAMILY = "aya_vision"


@pytest.fixture(scope="module")
def aya(tiny_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GenericResolverWarning)
        return vlmflow.load(str(tiny_path(FAMILY)))


def test_the_generic_types_have_no_family_module():
    assert set(GENERIC_FAMILIES + REFUSED_FAMILIES).isdisjoint(SUPPORTED_MODEL_TYPES)
    # tiny builders are named for what they build; their configs' model types are registered
    assert set(TINY_FAMILIES) - {"paligemma2"} <= set(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("family", GENERIC_FAMILIES + REFUSED_FAMILIES)
def test_load_says_in_one_warning_that_it_used_the_generic_resolver(family, tiny_path):
    with pytest.warns(GenericResolverWarning) as caught:
        handle = vlmflow.load(str(tiny_path(family)))
    messages = [str(w.message) for w in caught if w.category is GenericResolverWarning]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert f"model type {family!r} has no family module" in messages[0]
    assert handle.family == "generic" and isinstance(handle.roles, GenericRoles)


def test_a_supported_family_loads_without_that_warning(tiny_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", GenericResolverWarning)
        assert vlmflow.load(str(tiny_path("llava"))).family == "llava"


def test_each_run_of_image_tokens_is_one_image(aya, photo, photo2):
    two = aya.prepare([photo, photo2], "what is in this picture ?")
    tokens = aya.processor.tokenizer.convert_ids_to_tokens(two.input_ids[0].tolist())
    patches = [i for i, t in enumerate(tokens) if t == "<|IMG_PATCH|>"]
    spans = two.layout.images[0]
    assert [s.index for s in spans] == [0, 1]
    assert [s.size for s in spans] == [(130, 90), (70, 120)]
    assert [p for s in spans for p in range(s.start, s.end)] == patches
    codes = two.layout.codes[0].tolist()
    first = patches[0]
    for i, code in enumerate(codes):
        # the begin / end markers around each run are text to the generic resolver
        expected = Role.IMAGE if i in patches else Role.PREFIX if i < first else Role.QUERY
        assert code == expected, (i, tokens[i])
    for span in spans:
        (tile,) = span.tiles
        assert tile.positions == tuple(range(span.start, span.end)) and tile.unplaced


def test_maps_and_localization_are_refused_in_one_line(aya, photo):
    prompt = aya.prepare(photo)
    span = prompt.layout.images[0][0]
    positions = prompt.layout.image_positions(0)
    rows = np.ones((aya.num_layers, len(positions)))
    with pytest.raises(vlmflow.VlmflowError) as err:
        render(rows, positions, span, 32)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("maps cannot place the image tokens")
    assert "'aya_vision' loads through the generic resolver" in message
    with pytest.raises(vlmflow.VlmflowError, match=r"^localization cannot place"):
        TokenGrid.of(prompt.layout)


def test_knocked_out_image_keys_get_exactly_zero_and_change_the_answer(aya, photo):
    prompt = aya.prepare(photo)
    knock = vlmflow.Knockout.parse("image->query+generated", "all")
    with vlmflow.session(aya, prompt, knock, capture=vlmflow.Capture.of()) as s:
        s.generate(max_new_tokens=6)
    image = s.capture.role_fraction("image")  # (steps, layers, b)
    assert bool((image == 0).all())
    with vlmflow.session(aya, prompt, capture=vlmflow.Capture.of()) as s:
        s.generate(max_new_tokens=6)
    assert bool((s.capture.role_fraction("image") > 0).all())


def test_image_from_the_processor_when_the_config_names_none(aya):
    bare = SimpleNamespace(model_type="aya_vision")
    assert image_token(bare, aya.processor) == aya.processor.image_token_id
    assert image_token(bare, None) is None
    text_only = SimpleNamespace(image_token="<|IMG_PATCH|>", tokenizer=aya.processor.tokenizer)
    assert image_token(bare, text_only) == aya.roles.image_token_id
    unknown = SimpleNamespace(image_token="<nothing>", tokenizer=aya.processor.tokenizer)
    assert image_token(bare, unknown) is None


def test_compress_needs_positions_the_generic_resolver_knows(aya, tiny_path, photo):
    assert aya.roles.rope_index(aya.model, {}) is None  # numbered 0..n-1, checked
    with pytest.warns(GenericResolverWarning):
        qwen = vlmflow.load(str(tiny_path("qwen3_5")))
    prompt = qwen.prepare(photo)
    with pytest.raises(vlmflow.VlmflowError) as err:
        vlmflow.generate_variants(qwen, prompt, [[]], max_new_tokens=2)
    message = str(err.value)
    assert "\n" not in message
    assert "'qwen3_5' numbers image positions by multimodal rotary axes" in message


def test_positions_other_than_0_to_n_are_refused(aya, monkeypatch):
    roles = GenericRoles(aya.processor, aya.model.config)
    model = aya.model
    plain = type(model).forward

    def shifted(self, *args, position_ids=None, **kwargs):
        if position_ids is None:  # the model's own numbering starts at 1
            n = kwargs["input_ids"].shape[1]
            position_ids = torch.arange(1, n + 1)[None]
        return plain(self, *args, position_ids=position_ids, **kwargs)

    monkeypatch.setattr(type(model), "forward", shifted)
    with pytest.raises(vlmflow.VlmflowError, match=r"numbers positions other than 0\.\.n-1"):
        roles.rope_index(model, {})


def test_encoder_decoder_types_are_refused_before_weights_load(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "florence2"}))
    with pytest.raises(vlmflow.VlmflowError) as err:
        vlmflow.load(str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert "'florence2' is an encoder-decoder" in message and "cross-attention" in message


def test_the_cli_prints_the_warning_as_one_line(tiny_path, photo, tmp_path, capsys):
    image = tmp_path / "photo.png"
    photo.save(image)
    path = str(tiny_path(FAMILY))
    code = main(["describe", str(image), "--model", path, "--max-new-tokens", "2", "--json"])
    assert code == 0
    err = capsys.readouterr().err.splitlines()
    notes = [line for line in err if "generic resolver" in line]
    assert notes == [
        "vlmflow describe: warning: model type 'aya_vision' has no family module: loaded with "
        "the generic resolver (image token '<|IMG_PATCH|>'; roles only, maps and localization "
        "refused)"
    ]
