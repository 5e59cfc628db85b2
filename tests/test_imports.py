"""Every module of vlmflow imports: mypy runs with `ignore_missing_imports`, so an import of a
module that was moved or removed would otherwise only fail when that code path runs."""

from __future__ import annotations

import importlib
import pkgutil

import vlmflow


def test_every_module_imports() -> None:
    names = [
        m.name
        for m in pkgutil.walk_packages(vlmflow.__path__, "vlmflow.")
        if not m.name.endswith("__main__")  # runs the CLI
    ]
    failed = {}
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # every failure is reported, not only the first
            failed[name] = f"{type(err).__name__}: {err}"
    assert len(names) > 100
    assert failed == {}
