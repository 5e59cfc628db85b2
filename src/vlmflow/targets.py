"""Import paths as the registries write them ("package.module:name"), resolved only when used.

The experiment and image-source registries name their entries this way so that listing them
(`vlmflow run --list`, `--help`) imports no module of an entry, and so no torch.
"""

from __future__ import annotations

import importlib
from typing import Any


def check(target: str) -> str:
    """`target` itself; ValueError unless it looks like "package.module:name"."""
    module, _, attribute = target.partition(":")
    if not module or not attribute:
        raise ValueError(f"target {target!r} must look like 'package.module:name'")
    return target


def resolve(target: str) -> Any:
    """The object `target` names, importing its module. Raises ValueError for a malformed
    target, ImportError / AttributeError when the module or the name does not exist."""
    module, _, attribute = check(target).partition(":")
    return getattr(importlib.import_module(module), attribute)
