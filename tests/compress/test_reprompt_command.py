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
