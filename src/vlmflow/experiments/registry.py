"""Experiment names -> import paths, resolved only when an experiment is used.

Lazy like the CLI, so listing experiments or parsing `vlmflow run --help` imports no torch.
A target is "module:attribute", a callable taking the experiment's options mapping and
returning an `Experiment` (usually the class itself).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from vlmflow.errors import VlmflowError
from vlmflow.experiments.protocol import Experiment

# name -> (target, one-line help)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "check": (
        "vlmflow.experiments.check:ImageCheck",
        "decode every image and record size and checksum (no model): tests data and set-up",
    ),
    "fractions": (
        "vlmflow.experiments.fractions:Fractions",
        "per layer, share of generated tokens' attention to each role (paper Fig. 1 / A5)",
    ),
    "histogram": (
        "vlmflow.experiments.histogram:Histogram",
        "per layer, distribution of attention values over image tokens (paper Fig. 8)",
    ),
    "maps": (
        "vlmflow.experiments.maps:Maps",
        "per layer, generated tokens' attention drawn over the picture (paper Fig. 4)",
    ),
    "knockout": (
        "vlmflow.experiments.knockout:KnockoutSweep",
        "baseline vs image knockouts over all / from:L / except:A-B, judged (Fig. 2, A4)",
    ),
    "topk": (
        "vlmflow.experiments.topk:TopK",
        "generated tokens see only the top-k% image tokens per layer; F1 vs k (Fig. 9 / A7)",
    ),
    "reprompt": (
        "vlmflow.experiments.reprompt:Reprompt",
        "Table 1: yes/no answers from the full image, the description, compressed contexts",
    ),
    "localization": (
        "vlmflow.experiments.localization:Localization",
        "do fine details' attention peaks fall on their objects? accuracy per layer (Fig. 6-7)",
    ),
    # beyond the paper: answer tracing and the logit lens (vlmflow.analysis)
    "trace": (
        "vlmflow.experiments.trace:TraceExperiment",
        "answer probability under sliding window knockouts per group pair (Zhang et al. 2025)",
    ),
    "lens": (
        "vlmflow.experiments.lens:LensExperiment",
        "logit lens over image tokens: top words per layer, on/off objects (Neo et al. 2025)",
    ),
}


def register(name: str, target: str, help_text: str = "") -> None:
    """Add (or replace) an experiment; `target` is "module:attribute"."""
    if ":" not in target:
        raise ValueError(f"experiment target {target!r} must look like 'package.module:Name'")
    EXPERIMENTS[name] = (target, help_text)


def names() -> list[str]:
    return sorted(EXPERIMENTS)


def create(name: str, options: Mapping[str, Any] | None = None) -> Experiment:
    """Import and build experiment `name` with `options` (from the config file)."""
    if name not in EXPERIMENTS:
        raise VlmflowError(
            f"unknown experiment {name!r}: choose from {', '.join(names())} "
            "(vlmflow run --list shows them)"
        )
    module_path, _, attribute = EXPERIMENTS[name][0].partition(":")
    factory = getattr(importlib.import_module(module_path), attribute)
    experiment = factory(dict(options or {}))
    if not isinstance(experiment, Experiment):
        raise TypeError(f"{EXPERIMENTS[name][0]} did not build an Experiment")
    return experiment


def bind_model(experiments: Iterable[Experiment], model: str | int) -> None:
    """Tell experiments whose settings depend on the model's depth (the knockout layer sweep)
    which model they run on, before any weights load: a path/hub id is read from its config,
    an int is the number of layers itself."""
    for experiment in experiments:
        bind = getattr(experiment, "bind_model", None)
        if bind is not None:
            bind(model)
