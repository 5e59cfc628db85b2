"""`vlmflow describe` under knockout equals an independent eager, cache-free implementation."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForImageTextToText

import vlmflow
from vlmflow.cli import main

from . import reference

CASES = [
    ("llava", "image-generated", "from:1"),
    ("llava", "image-query", "all"),
    ("llava", "image-query+generated", "except:1-2"),
    ("qwen2_vl", "image-query+generated", "only:1-2"),
    ("idefics3", "image-generated", "all"),
    ("internvl", "image-query+generated", "from:1"),
    ("llava_next", "image-query", "only:0-1"),
    # mllama: layers 1 and 3 are cross-attention layers, the others self-attention
    ("mllama", "image-generated", "from:1"),
    ("mllama", "image-query", "all"),
    ("mllama", "image-query+generated", "except:2-2"),
]
ROLES = {
    "image-generated": ("image", "generated"),
    "image-query": ("image", "query"),
    "image-query+generated": ("image", "query+generated"),
}


@pytest.mark.parametrize(("family", "setting", "spec"), CASES)
def test_describe_matches_reference(family, setting, spec, tiny_path, photo, tmp_path, capsys):
    path = str(tiny_path(family))
    image = tmp_path / "photo.png"
    photo.save(image)
    code = main(
        [
            "describe",
            str(image),
            "--model",
            path,
            "--max-new-tokens",
            "10",
            "--knockout",
            setting,
            "--layers",
            spec,
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)

    handle = vlmflow.load(path)
    prompt = handle.prepare(str(image))
    assert out["input_ids"] == prompt.input_ids[0].tolist()
    model = AutoModelForImageTextToText.from_pretrained(
        path, attn_implementation={"text_config": reference.NAME, "vision_config": "sdpa"}
    ).eval()
    tokens = handle.processor.tokenizer.convert_ids_to_tokens(out["input_ids"])
    src, tgt = ROLES[setting]
    layers = vlmflow.Layers.parse(spec).resolve(out["num_layers"])
    expected = reference.greedy_without_cache(
        model, prompt.inputs, tokens, 10, src.split("+"), tgt.split("+"), layers
    )
    assert out["generated_ids"] == expected
    plain = reference.greedy_without_cache(model, prompt.inputs, tokens, 10, [], [], [])
    assert out["roles"]["generated"] == 10
    # the knockout changes the text, so equality above is not a coincidence
    if setting != "image-generated":
        assert plain != expected
