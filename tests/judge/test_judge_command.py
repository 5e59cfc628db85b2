"""`vlmflow judge ...` through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vlmflow.cli import main


def test_compare_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "judge",
            "A cyclist next to a fridge.",
            "A person next to a refrigerator and a cat.",
            "--json",
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("tp", "fp", "fn", "precision", "recall", "f1"):
        assert key in data
    assert data["reference_objects"] == ["cyclist", "fridge"]
    assert data["candidate_objects"] == ["person", "refrigerator", "cat"]
    assert (data["tp"], data["fp"], data["fn"]) == (2, 1, 0)


def test_compare_text_output_and_at_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = tmp_path / "ref.txt"
    ref.write_text("Two dogs and a ball on the grass.")
    assert main(["judge", f"@{ref}", "A dog.", "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "missing (FN 1): ball" in out and "F1 0.667" in out


def test_scene_backend_from_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"dog": ["puppy"], "ball": []}))
    args = ["judge", "A puppy with balls.", "A dog.", "--backend", "scene"]
    assert main([*args, "--vocabulary", str(vocab), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tp"] == 1 and data["fn"] == 1
    assert main([*args]) == 1
    assert "--vocabulary" in capsys.readouterr().err


def test_agreement_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.jsonl"
    rows = [
        {"text": "A puppy on a sofa.", "object": "dog", "mentioned": True},
        {"text": "A puppy on a sofa.", "object": "couch", "mentioned": True},
        {"text": "A puppy on a sofa.", "object": "sky", "mentioned": False},
        {"text": "A red bus under the sky.", "object": "red", "mentioned": False},
    ]
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["judge", "agreement", str(labels), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["decisions"] == 4 and data["accuracy"] == 1.0
    assert data["confusion"]["judge_yes_human_yes"] == 2


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["judge", "only one text"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "REFERENCE" in err
    assert main(["judge", "a", "b", "--backend", "llm", "--no-cache"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "VLMFLOW_JUDGE_API_KEY" in err


def test_unreachable_llm_endpoint_from_cli(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["judge", "a", "b", "--backend", "llm", "--base-url", f"http://127.0.0.1:{port}/v1"]
    assert main([*args, "--retries", "0", "--no-cache"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach" in err and "--base-url" in err


def test_llm_from_cli_against_stub(chat_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    chat_server.answer(
        {
            "reference_objects": ["dog"],
            "candidate_objects": ["dog", "cat"],
            "matches": [{"reference": "dog", "candidate": "dog"}],
        }
    )
    args = ["judge", "A dog.", "A dog and a cat.", "--backend", "llm", "--json"]
    assert main([*args, "--base-url", chat_server.url, "--model", "stub"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fp"] == 1 and data["model"] == "stub"
    # The same question again is answered from the cache: the stub has no reply left.
    assert main([*args, "--base-url", chat_server.url, "--model", "stub"]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] is True


def test_command_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, vlmflow.judge.command, vlmflow.judge; "
        "heavy = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
