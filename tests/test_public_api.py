"""The top-level names of `vlmflow`: callable functions, real types for mypy, no torch import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return done.stdout.strip()


def test_compress_is_the_function_even_after_its_subpackage_was_imported() -> None:
    out = _python(
        "import vlmflow.compression.context, vlmflow.report.build, vlmflow.judge\n"
        "from vlmflow import compress, compare, build_report, load\n"
        "import vlmflow\n"
        "print(callable(compress), callable(compare), callable(build_report), callable(load),"
        " vlmflow.compress is compress)"
    )
    assert out == "True True True True True"


def test_import_vlmflow_stays_torch_free_and_every_export_resolves() -> None:
    out = _python(
        "import sys, vlmflow\n"
        "print('torch' in sys.modules)\n"
        "missing = [n for n in vlmflow.__all__ if getattr(vlmflow, n, None) is None]\n"
        "print(missing)"
    )
    assert out.splitlines() == ["False", "[]"]
    import vlmflow

    assert sorted(vlmflow.__all__) == sorted(vlmflow._EXPORTS)


def test_mypy_sees_the_real_types_of_the_lazy_exports(tmp_path: Path) -> None:
    from mypy import api

    # Only the modules on the path from `vlmflow` to the two functions are analysed (the rest
    # is skipped as Any), which keeps this to seconds; without the TYPE_CHECKING block of
    # vlmflow/__init__.py both would reveal `Any` (the lazy __getattr__'s return type).
    (tmp_path / "mypy.ini").write_text(
        "[mypy]\n"
        f"mypy_path = {SRC}\n"
        "follow_imports = skip\n"
        "ignore_missing_imports = True\n"
        "[mypy-vlmflow,vlmflow.models.loading,vlmflow.compression,vlmflow.compression.context]\n"
        "follow_imports = normal\n",
        encoding="utf-8",
    )
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "import vlmflow\nreveal_type(vlmflow.load)\nreveal_type(vlmflow.compress)\n",
        encoding="utf-8",
    )
    config = str(tmp_path / "mypy.ini")
    stdout, stderr, status = api.run(
        [
            "--config-file",
            config,
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(snippet),
        ]
    )
    assert status == 0, stdout + stderr
    revealed = [line for line in stdout.splitlines() if "Revealed type" in line]
    assert len(revealed) == 2, stdout
    assert revealed[0].endswith('-> vlmflow.models.loading.Handle"'), revealed[0]
    assert revealed[1].endswith('-> vlmflow.compression.context.CompressedContext"'), revealed[1]
