"""The experiment registry: one spec per experiment is all `vlmflow run` and `vlmflow report`
need. The toy experiment (tests/experiments/toy_experiment.py) is registered by its own module
only, with its own report section, and goes through both commands end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import toy_experiment

from vlmflow.cli import main
from vlmflow.errors import VlmflowError
from vlmflow.experiments import registry
from vlmflow.store import MAIN_FILE, ResultStore
from vlmflow.targets import resolve


def test_a_registered_experiment_runs_and_gets_its_report_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "toy.json"
    config.write_text(json.dumps({"toy": {"count": 4, "fail_item": "none"}}))
    out = tmp_path / "out"

    assert main(["run", "--list"]) == 0
    assert re.search(r"^toy +test experiment$", capsys.readouterr().out, re.MULTILINE)

    args = ["run", "toy", "--images", "scenes:1", "--out", str(out), "--config", str(config)]
    assert main([*args, "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0

    with ResultStore(out / MAIN_FILE, create=False) as store:
        rows = store.rows()
    assert len(rows) == 8  # 4 items x settings a, b
    mean = sum(float(r.metrics["value"]) for r in rows) / len(rows)
    page = (out / "report.html").read_text(encoding="utf-8")
    section = re.search(r'<section id="toy" data-section="toy">(.*?)</section>', page, re.S)
    assert section is not None
    assert f"<h2>{toy_experiment.SECTION_TITLE}</h2>" in section.group(1)
    assert f"toy section: 8 results, mean value {mean:.6f}" in section.group(1)
    assert "the report draws no figure" not in section.group(1)  # its builder, not the generic


def test_specs_resolve_and_the_report_follows_the_paper_order() -> None:
    for spec in registry.SPECS:
        assert callable(resolve(spec.factory))
        assert spec.section is not None
        for target in (spec.section.build, spec.section.closing):
            if target:
                assert callable(resolve(target))
    assert registry.report_order({"check", "zzz", "reprompt", "fractions", "maps"}) == [
        "fractions",
        "maps",
        "reprompt",
        "check",
        "zzz",
    ]
    assert "check" not in registry.paper_experiments()


def test_unknown_names_and_bad_targets_are_refused() -> None:
    with pytest.raises(VlmflowError, match=r"unknown experiment 'nope': choose from .*fractions"):
        registry.create("nope")
    with pytest.raises(ValueError, match=r"must look like 'package.module:name'"):
        registry.ExperimentSpec("bad", "no_colon_here")


def test_listing_experiments_and_image_sources_imports_no_torch() -> None:
    code = (
        "import sys; from vlmflow import sources; from vlmflow.experiments import registry; "
        "registry.names(); sources.parse('scenes:1').images(); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
