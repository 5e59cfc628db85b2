from PIL import Image

from vlmflow.cli import main


def test_show_prints_description_and_questions(capsys):
    assert main(["scenes", "show", "3"]) == 0
    out = capsys.readouterr().out
    assert "fixed-03" in out and "There are four objects" in out
    assert out.count("[") == 8


def test_render_writes_the_image_and_mask_overlay(tmp_path, capsys):
    out, masks = tmp_path / "scene.png", tmp_path / "masks.png"
    assert main(["scenes", "render", "1000001", "--out", str(out), "--masks", str(masks)]) == 0
    assert Image.open(out).size == (448, 448)
    assert Image.open(masks).size == (448, 448)
    assert "scene-1000001" in capsys.readouterr().out


def test_list_and_errors(capsys):
    assert main(["scenes", "list"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 80
    assert main(["scenes", "list", "--types"]) == 0
    assert "teddy bear" in capsys.readouterr().out
    assert main(["scenes", "show", "80"]) == 1
    assert "out of range" in capsys.readouterr().err
