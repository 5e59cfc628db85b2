"""Shared fixtures: tiny random checkpoints of every family, built once per test run."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """family -> folder of a tiny random checkpoint (built on first use)."""
    from vlmflow.models.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def photo() -> object:
    """A deterministic non-square RGB test image (wider than tall, so tiling kicks in)."""
    from PIL import Image

    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(90, 130, 3) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def photo2() -> object:
    from PIL import Image

    rng = np.random.RandomState(1)
    return Image.fromarray((rng.rand(120, 70, 3) * 255).astype("uint8"))
