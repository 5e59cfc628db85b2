"""Bad input ends in one line on stderr that names the fix, a non-zero exit and no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _vlmflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vlmflow", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def cases(tiny_path, photo, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    good = root / "photo.png"
    photo.save(good)
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    other = root / "other_family"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "blip-2"}')
    llava = str(tiny_path("llava"))

    def knocked(*options: str) -> list[str]:
        return ["describe", str(good), "--model", llava, "--knockout", "image-query", *options]

    return {
        "missing image": (
            ["describe", str(root / "nope.png"), "--model", llava],
            "image not found",
        ),
        "corrupt image": (["describe", str(corrupt), "--model", llava], "intact PNG or JPEG"),
        "unknown model": (["describe", str(good), "--model", str(root / "no-model")], "checkpoint"),
        "unsupported family": (["describe", str(good), "--model", str(other)], "supports llava"),
        "layer out of range": (
            knocked("--layers", "from:7"),
            "layers 0-3",
        ),
        "bad layer spec": (
            knocked("--layers", "middle"),
            "from:L",
        ),
        "knockout with flash": (
            [
                "describe",
                str(good),
                "--model",
                llava,
                "--knockout",
                "image-generated",
                "--attn",
                "flash_attention_2",
            ],
            "--attn sdpa",
        ),
        "flash not installed": (
            ["describe", str(good), "--model", llava, "--attn", "flash_attention_2"],
            "attn='sdpa'",
        ),
    }


NAMES = [
    "missing image",
    "corrupt image",
    "unknown model",
    "unsupported family",
    "layer out of range",
    "bad layer spec",
    "knockout with flash",
    "flash not installed",
]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_one_line(name, cases):
    args, hint = cases[name]
    done = _vlmflow(*args)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("vlmflow describe: error: ")
    assert hint in lines[0]
    assert done.stdout == ""


def test_help_does_not_import_torch():
    code = (
        "import sys; from vlmflow.cli import build_parser; build_parser([]); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"
