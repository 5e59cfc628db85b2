"""Every ```python block of README.md runs, in order and in one namespace, on a tiny model.

The blocks are written for a real model and a real photo. The test runs them as written except
for the substitutions below, each of which only swaps what would need a download or hardware:

- the hub id `llava-hf/llava-1.5-7b-hf` becomes a tiny random LLaVA-1.5 checkpoint built with
  `vlmflow.models.tiny` (same family, same code paths; 4 decoder layers instead of 32);
- `device="cuda"` becomes `device="cpu"`;
- the layer specs `except:12-20` and `only:10-20` become `except:1-2` and `only:1-3` (the same
  kinds of spec, inside the tiny model's layers 0-3).

`street.jpg` is a random RGB image written to the working directory (a temporary folder), where
the blocks also write their files (`street.ctx`). A block that truly cannot run starts with the
visible line `# not run by the tests: <reason>`; there are none at present.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP_MARK = "# not run by the tests:"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)

SUBSTITUTIONS = {
    '"llava-hf/llava-1.5-7b-hf"': "TINY_LLAVA",
    'device="cuda"': 'device="cpu"',
    '"except:12-20"': '"except:1-2"',
    '"only:10-20"': '"only:1-3"',
}


def blocks(text: str) -> list[str]:
    return [m.group(1) for m in BLOCK.finditer(text)]


def test_blocks_are_found_and_every_substitution_is_used() -> None:
    text = README.read_text(encoding="utf-8")
    found = blocks(text)
    assert len(found) == text.count("```python")
    assert len(found) >= 2
    joined = "\n".join(found)
    unused = [old for old in SUBSTITUTIONS if old not in joined]
    assert not unused, f"README no longer contains {unused}: update SUBSTITUTIONS"


def test_readme_python_blocks_run(
    tiny_path: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(90, 130, 3) * 255).astype("uint8")).save(tmp_path / "street.jpg")
    namespace: dict[str, object] = {"TINY_LLAVA": str(tiny_path("llava"))}
    ran = 0
    for n, source in enumerate(blocks(README.read_text(encoding="utf-8"))):
        if source.startswith(SKIP_MARK):
            continue
        for old, new in SUBSTITUTIONS.items():
            source = source.replace(old, new)
        exec(compile(source, f"README.md python block {n + 1}", "exec"), namespace)
        ran += 1
    assert ran >= 2
    # what the blocks computed is real: a decoded text, capture fractions, a saved context
    fractions = namespace["fractions"]
    assert fractions.shape[-1] == 4  # type: ignore[attr-defined]
    assert (tmp_path / "street.ctx").exists()
