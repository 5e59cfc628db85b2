"""`vlmflow reprompt`: what it prints is the context it answers from."""

from __future__ import annotations

from vlmflow.cli import main


def test_loaded_context_reports_its_own_k(tiny_path, photo, tmp_path, capsys):
    """A context saved at k = 1 and loaded with --context says k=1.0, not the --k default."""
    image = tmp_path / "photo.png"
    photo.save(image)
    model = str(tiny_path("llava"))
    saved = tmp_path / "ctx.pt"
    common = ["--model", model, "--question", "what ?", "--max-new-tokens", "2"]
    assert main(["reprompt", str(image), "--k", "1", "--save", str(saved), *common]) == 0
    first = capsys.readouterr().out
    assert main(["reprompt", str(image), "--context", str(saved), *common]) == 0
    second = capsys.readouterr().out
    for out in (first, second):
        assert "(k=1.0)" in out, out


def test_questions_that_spell_special_tokens_are_refused(tiny_path, photo, tmp_path, capsys):
    """A follow-up question goes through the same check as a prompt: `<image>` or `</s>` typed
    in it would become the image slot or an end of turn, not text (once answered silently)."""
    import pytest

    import vlmflow
    from vlmflow.compression import compress

    handle = vlmflow.load(str(tiny_path("llava")))
    context = compress(handle, photo, k=0.25, max_new_tokens=3)
    for token in (handle.processor.image_token, "</s>"):
        with pytest.raises(vlmflow.VlmflowError, match="special token"):
            context.ask(f"what is {token} ?")
    with pytest.raises(vlmflow.VlmflowError, match="at least 1 token"):
        context.ask("what ?", max_new_tokens=0)
    assert context.ask("what is shown ?", max_new_tokens=2).text is not None
    image = tmp_path / "photo.png"
    photo.save(image)
    argv = ["reprompt", str(image), "--model", str(tiny_path("llava")), "--max-new-tokens", "2"]
    capsys.readouterr()  # progress bars of the model build above
    assert main([*argv, "--question", "what is <image> ?"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # after the weights' loading bar
    assert last.startswith("vlmflow reprompt: error:") and "<image>" in last
