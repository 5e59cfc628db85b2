"""`vlmflow.defaults` owns the default model and prompt, and importing it loads no torch."""

from __future__ import annotations

import subprocess
import sys

from vlmflow.defaults import DEFAULT_MODEL, DEFAULT_PROMPT


def test_importing_the_defaults_imports_no_torch() -> None:
    code = "import sys, vlmflow.defaults; print('torch' in sys.modules, 'numpy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_every_user_reads_the_same_defaults() -> None:
    import argparse

    from vlmflow.commands import describe
    from vlmflow.default_model import NAME
    from vlmflow.experiments import command
    from vlmflow.experiments.fractions import FractionsConfig
    from vlmflow.experiments.reprompt import RepromptConfig
    from vlmflow.models.loading import load

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert parser.parse_args([]).model == DEFAULT_MODEL
    parser = argparse.ArgumentParser()
    describe.add_arguments(parser)
    args = parser.parse_args(["x.png"])
    assert (args.model, args.prompt) == (DEFAULT_MODEL, DEFAULT_PROMPT)
    assert NAME == DEFAULT_MODEL
    assert FractionsConfig().prompt == RepromptConfig().prompt == DEFAULT_PROMPT
    assert load.__defaults__ is not None and load.__defaults__[0] == DEFAULT_MODEL
