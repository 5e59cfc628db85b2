"""Sessions under every way of calling generate(): greedy, sampling, beams, several returned
sequences, batches with beams, transformers' streaming recipe in a thread, explicit keywords."""

from __future__ import annotations

import contextvars
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, TextIteratorStreamer, TextStreamer

import vlmflow
from vlmflow.attention import backend

from . import reference
from .numerics import same
from .runs import generated_with_logits, refused_in_one_line

NEW = 6
FAMILIES = ["llava", "qwen2_vl", "idefics3"]
# keywords of each generate() mode, and whether it runs on the two-row batch
MODES = {
    "greedy": {},
    "greedy_explicit": {"do_sample": False},
    "sampling": {"do_sample": True, "top_k": 0},
    "beams": {"num_beams": 2},
    "beams_sequences": {"num_beams": 3, "num_return_sequences": 2},
    "sampled_sequences": {"do_sample": True, "top_k": 0, "num_return_sequences": 2},
}
KO = vlmflow.Knockout.parse("image->query+generated", "all")


def _noise(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def _batch(handle, seed: int = 0):
    """Two rows of different lengths (left padding), images of fixed sizes drawn from `seed`."""
    return handle.prepare_batch(
        [
            ([_noise(130, 90, seed)], "Describe the image."),
            ([_noise(70, 120, seed + 100)], "What is in this picture ?"),
        ]
    )


def _run(model, prompt, mode: str, **extra):
    """(rows, new) ids and the per-step logits of `model.generate` in `mode` (seeded)."""
    return generated_with_logits(model, prompt, NEW, **MODES[mode], **extra)


def _in_thread(target) -> None:
    """Run `target` in a plain `threading.Thread` (no context copied) and re-raise its error."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            target()
        except BaseException as e:  # handed to the calling thread
            errors.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


_HANDLES: dict[str, vlmflow.Handle] = {}


def _load(tiny_path, family: str) -> vlmflow.Handle:
    """One handle per family for this module (sessions leave a handle as it was)."""
    if family not in _HANDLES:
        _HANDLES[family] = vlmflow.load(str(tiny_path(family)))
    return _HANDLES[family]


# (family, rows): every family on the padded two-row batch, one family on a single row too
SHAPES = [("llava", 1), ("llava", 2), ("qwen2_vl", 2), ("idefics3", 2)]


@pytest.mark.parametrize(
    ("family", "rows", "mode", "where"),
    [(family, rows, mode, "here") for family, rows in SHAPES for mode in MODES]
    + [(family, 1, "greedy", "thread") for family in FAMILIES]
    + [(family, 2, "beams_sequences", "thread") for family in FAMILIES],
)
def test_empty_session_equals_plain_generate(family, rows, mode, where, tiny_path, photo):
    """Token for token (and logit for logit) what transformers' own SDPA model generates, in
    the session's thread and in a plain `threading.Thread` started inside it."""
    path = str(tiny_path(family))
    handle = _load(tiny_path, family)
    prompt = handle.prepare(photo) if rows == 1 else _batch(handle)
    plain = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="sdpa").eval()
    theirs, their_logits = _run(plain, prompt, mode)
    got = []
    with vlmflow.session(handle, prompt):
        if where == "here":
            got.append(_run(handle.model, prompt, mode))
        else:
            _in_thread(lambda: got.append(_run(handle.model, prompt, mode)))
    ours, our_logits = got[0]
    assert ours.tolist() == theirs.tolist()
    assert torch.allclose(our_logits, their_logits, atol=1e-5)
    expected_rows = rows * MODES[mode].get("num_return_sequences", 1)
    assert ours.shape == (expected_rows, NEW)


@pytest.mark.parametrize(
    ("family", "mode"),
    [("llava", mode) for mode in MODES]
    + [("qwen2_vl", mode) for mode in MODES]
    + [("idefics3", "sampled_sequences"), ("idefics3", "beams_sequences")]
    + [("qwen3_vl", "beams_sequences"), ("qwen3_vl_moe", "greedy")]
    + [("gemma3", "greedy"), ("gemma3", "beams_sequences")]
    + [("aya_vision", "greedy"), ("aya_vision", "beams")]  # the generic resolver
    + [("llava_onevision", "greedy"), ("mistral3", "greedy"), ("mistral3", "beams_sequences")],
)
def test_knockout_makes_every_row_blind_to_the_image(family, mode, tiny_path):
    """Under image -> query+generated at all layers, every row (beams and returned sequences
    included, each reading its own prompt row's image positions) gives identical logits for
    two different images; without the knockout they differ."""
    handle = _load(tiny_path, family)
    one, other = _batch(handle, 0), _batch(handle, 1)
    assert torch.equal(one.input_ids, other.input_ids)  # same positions, other pixels
    runs = {}
    for name, prompt in (("one", one), ("other", other)):
        with vlmflow.session(handle, prompt, knockout=KO):
            runs[name] = _run(handle.model, prompt, mode)
        runs[name + "_plain"] = _run(handle.model, prompt, mode)
    assert runs["one"][0].tolist() == runs["other"][0].tolist()
    assert same(family, runs["one"][1], runs["other"][1])
    assert not torch.equal(runs["one_plain"][1], runs["other_plain"][1])


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("mode", ["beams", "beams_sequences", "sampled_sequences"])
def test_row_knockout_follows_expanded_rows(family, mode, tiny_path):
    """A knockout on prompt row 1 acts on exactly the expanded rows of prompt row 1."""
    handle = _load(tiny_path, family)
    prompt = _batch(handle)
    k = MODES[mode].get("num_return_sequences", 1)
    plain, plain_logits = _run(handle.model, prompt, mode)
    with vlmflow.session(handle, prompt, knockout=KO):
        every, every_logits = _run(handle.model, prompt, mode)
    with vlmflow.session(handle, prompt, knockout=KO.on_rows([1])):
        ours, _ = _run(handle.model, prompt, mode)
    assert ours[:k].tolist() == plain[:k].tolist()
    assert ours[k:].tolist() == every[k:].tolist()
    assert not torch.equal(plain_logits, every_logits)


@pytest.mark.parametrize(
    ("family", "setting", "spec"),
    [
        ("llava", "image-query+generated", "all"),
        ("qwen2_vl", "image-generated", "from:1"),
        ("idefics3", "image-query", "only:0-1"),
        ("mllama", "image-query+generated", "from:1"),
    ],
)
def test_streaming_thread_knockout_equals_reference(family, setting, spec, tiny_path, photo):
    """transformers' streaming recipe (generate in a Thread, TextIteratorStreamer) inside a
    session applies the knockout: equal to the independent cache-free reference."""
    path = str(tiny_path(family))
    handle = vlmflow.load(path)
    prompt = handle.prepare(photo)
    n = prompt.layout.length
    ko = vlmflow.Knockout.parse(setting, spec)
    streamer = TextIteratorStreamer(handle.processor.tokenizer, skip_prompt=True, timeout=60)
    out: dict[str, list[int]] = {}

    def work() -> None:
        with torch.inference_mode():
            ids = handle.model.generate(
                **prompt.inputs, do_sample=False, max_new_tokens=NEW, streamer=streamer
            )
        out["ids"] = ids[0, n:].tolist()

    with vlmflow.session(handle, prompt, knockout=ko) as s:
        same_thread = s.generate(max_new_tokens=NEW)[0].tolist()
        thread = threading.Thread(target=work)
        thread.start()
        "".join(streamer)
        thread.join()
    model = AutoModelForImageTextToText.from_pretrained(
        path, attn_implementation={"text_config": reference.NAME, "vision_config": "sdpa"}
    ).eval()
    tokens = handle.processor.tokenizer.convert_ids_to_tokens(prompt.input_ids[0])
    src, tgt = setting.split("-")
    layers = ko.layers.resolve(handle.num_layers)
    expected = reference.greedy_without_cache(
        model, prompt.inputs, tokens, NEW, [src], tgt.split("+"), layers
    )
    assert out["ids"] == same_thread == expected[: len(same_thread)]
    plain = reference.greedy_without_cache(model, prompt.inputs, tokens, NEW, [], [], [])
    if setting != "image-generated":
        assert plain != expected  # the knockout changes the text: equality is no coincidence


def test_thread_capture_equals_same_thread_capture(tiny_path, photo):
    handle = _load(tiny_path, "llava")
    prompt = handle.prepare(photo)
    capture = vlmflow.Capture.of(image_layers="from:2")
    with vlmflow.session(handle, prompt, capture=capture) as s:
        s.generate(max_new_tokens=NEW)
    here = s.capture
    with vlmflow.session(handle, prompt, capture=capture) as s:
        _in_thread(
            lambda: handle.model.generate(**prompt.inputs, do_sample=False, max_new_tokens=NEW)
        )
    there = s.capture
    assert there.num_steps == here.num_steps == NEW
    assert torch.equal(there.fractions, here.fractions)
    assert torch.equal(there.image_rows[3], here.image_rows[3])


def test_streamer_in_same_thread_and_copied_context(tiny_path, photo):
    """`streamer=` passes through s.generate; a copied context carries the session."""
    handle = _load(tiny_path, "llava")
    prompt = handle.prepare(photo)
    with vlmflow.session(handle, prompt, knockout=KO) as s:
        expected = s.generate(max_new_tokens=NEW)
        streamed = s.generate(max_new_tokens=NEW, streamer=TextStreamer(handle.processor.tokenizer))
        copied: list[torch.Tensor] = []
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(lambda: copied.append(s.generate(max_new_tokens=NEW)),)
        )
        thread.start()
        thread.join()
    assert streamed.tolist() == expected.tolist() == copied[0].tolist()
    assert expected.tolist() != handle.generate(prompt, max_new_tokens=NEW).tolist()
    # after the block, the copied context still holds the ended session: refused
    with pytest.raises(vlmflow.VlmflowError, match="has ended"):
        context.run(handle.generate, prompt, max_new_tokens=NEW)


def test_generate_keywords_pass_through(tiny_path, photo):
    """`do_sample=False` given explicitly (once a TypeError), the defaults overridable."""
    handle = _load(tiny_path, "llava")
    prompt = handle.prepare(photo)
    with vlmflow.session(handle, prompt, knockout=KO) as s:
        default = s.generate(max_new_tokens=8)
        explicit = s.generate(do_sample=False, max_new_tokens=8)
        longer = s.generate(min_new_tokens=10, max_new_tokens=10)
        out = s.generate(max_new_tokens=3, return_dict_in_generate=True)
        with pytest.raises(vlmflow.VlmflowError, match="drop input_ids"):
            s.generate(input_ids=prompt.input_ids)
    assert explicit.tolist() == default.tolist()
    assert longer.shape == (1, 10)
    assert out.sequences.tolist() == default[:, :3].tolist()
    plain = handle.generate(prompt, max_new_tokens=8)
    assert handle.generate(prompt, do_sample=False, max_new_tokens=8).tolist() == plain.tolist()
    with pytest.raises(vlmflow.VlmflowError, match="drop pixel_values"):
        handle.generate(prompt, pixel_values=prompt.inputs["pixel_values"])
    with pytest.raises(vlmflow.VlmflowError, match="at least 1 new token"):
        handle.generate(prompt, max_new_tokens=0)


def test_capture_holds_the_latest_run(tiny_path, photo):
    """A second s.generate() in one session starts its capture anew: a longer run then a
    shorter one captures what a fresh session running only the shorter one captures."""
    handle = _load(tiny_path, "llava")
    prompt = handle.prepare(photo)
    capture = vlmflow.Capture.of(image_layers="all")
    with vlmflow.session(handle, prompt, capture=capture) as s:
        s.generate(max_new_tokens=8, min_new_tokens=8)
        s.generate(max_new_tokens=3, min_new_tokens=3)
        twice = s.capture
    with vlmflow.session(handle, prompt, capture=capture) as s:
        s.generate(max_new_tokens=3, min_new_tokens=3)
        once = s.capture
    assert twice.num_steps == once.num_steps == 3
    assert torch.equal(twice.fractions.nan_to_num(-1), once.fractions.nan_to_num(-1))
    assert twice.image_rows.keys() == once.image_rows.keys()
    for layer, rows in once.image_rows.items():
        assert torch.equal(twice.image_rows[layer], rows)


def test_capture_with_beams_is_refused(tiny_path, photo):
    """Beams reorder rows at every step: capture refuses expanded batches in one line, from
    s.generate before running and from a direct model.generate (then s.capture refuses too)."""
    handle = _load(tiny_path, "llava")
    prompt = handle.prepare(photo)
    ko = vlmflow.Knockout.parse("image->generated", "all")
    with vlmflow.session(handle, prompt, knockout=ko, capture=vlmflow.Capture.of()) as s:
        with pytest.raises(vlmflow.VlmflowError, match="num_beams=2") as error:
            s.generate(max_new_tokens=NEW, num_beams=2)
        assert "\n" not in str(error.value)
    with (
        vlmflow.session(handle, prompt, capture=vlmflow.Capture.of()) as s,
        pytest.raises(vlmflow.VlmflowError, match="capture records one row"),
    ):
        _in_thread(
            lambda: handle.model.generate(
                **prompt.inputs, do_sample=True, num_return_sequences=2, max_new_tokens=NEW
            )
        )
    with pytest.raises(vlmflow.VlmflowError, match="capture records one row"):
        s.capture  # noqa: B018 - the property raises


def test_batch_with_beams_and_knockout_runs(tiny_path):
    """Two rows with num_beams=2 under a knockout (once a RuntimeError): equal to each row
    alone with beams."""
    handle = _load(tiny_path, "llava")
    batch = _batch(handle)
    ko = vlmflow.Knockout.parse("image->generated", "all")
    with vlmflow.session(handle, batch, knockout=ko) as s:
        together = s.generate(max_new_tokens=NEW, num_beams=2)
    assert together.shape == (2, NEW)
    items = [
        ([_noise(130, 90, 0)], "Describe the image."),
        ([_noise(70, 120, 100)], "What is in this picture ?"),
    ]
    for row, (images, text) in enumerate(items):
        single = handle.prepare(images, text)
        with vlmflow.session(handle, single, knockout=ko) as s:
            alone = s.generate(max_new_tokens=NEW, num_beams=2)
        assert together[row].tolist() == alone[0].tolist()


def test_another_prompt_is_refused(tiny_path, photo, photo2):
    handle = _load(tiny_path, "llava")
    prompt = handle.prepare(photo)
    other = handle.prepare(photo, "What is in this picture ?")
    batch = _batch(handle)
    with vlmflow.session(handle, prompt, knockout=KO):
        with pytest.raises(vlmflow.VlmflowError, match="other input ids") as error:
            handle.generate(other, max_new_tokens=NEW)
        assert "\n" not in str(error.value)
        with pytest.raises(vlmflow.VlmflowError, match="other input ids"):
            handle.generate(batch, max_new_tokens=NEW)  # 2 rows: not 2 beams of the prompt
        # the same token ids with another image of the same size: same roles, allowed
        same_ids = handle.prepare(_noise(130, 90, 7))
        assert torch.equal(same_ids.input_ids, prompt.input_ids)
        handle.generate(same_ids, max_new_tokens=NEW)
    with (
        vlmflow.session(handle, batch, knockout=KO),
        pytest.raises(vlmflow.VlmflowError, match="batch of 1 row"),
    ):
        handle.generate(prompt, max_new_tokens=NEW)
    # a session on another model leaves this one alone
    second = _load(tiny_path, "qwen2_vl")
    second_prompt = second.prepare(photo2)
    plain = handle.generate(prompt, max_new_tokens=NEW)
    with vlmflow.session(second, second_prompt, knockout=KO):
        assert handle.generate(prompt, max_new_tokens=NEW).tolist() == plain.tolist()


def test_sessions_in_two_threads_refuse_a_thread_without_one(tiny_path, photo):
    """A thread with no session of its own, with sessions on the model open in two threads,
    is ambiguous: refused. A thread with its own (empty) session runs plain."""
    handle = _load(tiny_path, "llava")
    prompt = handle.prepare(photo)
    plain = handle.generate(prompt, max_new_tokens=NEW)
    opened, release = threading.Event(), threading.Event()

    def hold() -> None:
        with vlmflow.session(handle, prompt, knockout=KO):
            opened.set()
            release.wait(60)

    holder = threading.Thread(target=hold, name="holder")
    holder.start()
    opened.wait(60)
    try:
        with vlmflow.session(handle, prompt, knockout=KO):
            with pytest.raises(vlmflow.VlmflowError, match="open in threads") as error:
                _in_thread(lambda: handle.generate(prompt, max_new_tokens=NEW))
            assert "holder" in str(error.value)
            got: list[torch.Tensor] = []

            def own() -> None:
                with vlmflow.session(handle, prompt) as s:
                    got.append(s.generate(max_new_tokens=NEW))

            _in_thread(own)
            assert got[0].tolist() == plain.tolist()
    finally:
        release.set()
        holder.join()
    assert backend.ACTIVE.get() is None
    assert not backend._OPEN


def test_session_ending_under_a_running_thread_is_refused(tiny_path, photo):
    """The with block left while a thread still generates under the session: the thread's next
    step raises instead of finishing with plain attention."""
    handle = _load(tiny_path, "llava")
    prompt = handle.prepare(photo)
    first, leave = threading.Event(), threading.Event()

    class Blocking(TextStreamer):
        def put(self, value: torch.Tensor) -> None:
            if value.dim() == 1 or value.shape[-1] == 1:  # a generated token
                first.set()
                leave.wait(60)

    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                handle.model.generate(
                    **prompt.inputs,
                    do_sample=False,
                    max_new_tokens=NEW,
                    streamer=Blocking(handle.processor.tokenizer),
                )
        except vlmflow.VlmflowError as e:
            errors.append(e)

    with vlmflow.session(handle, prompt, knockout=KO):
        thread = threading.Thread(target=work)
        thread.start()
        first.wait(60)
    leave.set()
    thread.join()
    assert len(errors) == 1
    assert "join the thread" in str(errors[0])


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_a_static_cache_is_refused_in_one_line(family, tiny_path, photo):
    """A static cache's keys are preallocated slots, not positions: refused, never mapped."""
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo)
    sessions = [
        {"knockout": vlmflow.Knockout.parse("image->generated", "all")},
        {"capture": vlmflow.Capture.of()},
    ]
    refused_in_one_line(
        handle, prompt, sessions, "static KV cache", max_new_tokens=4, cache_implementation="static"
    )
    plain = handle.generate(prompt, max_new_tokens=4, cache_implementation="static")
    assert plain.shape == (1, 4)  # outside a session the model runs as transformers runs it
