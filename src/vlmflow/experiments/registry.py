"""The experiments vlmflow knows: one `ExperimentSpec` per experiment, resolved only when used.

A spec is the single place an experiment is named: `vlmflow run` (and `--list`, and the
config file's sections) read the name, factory and help from it; `vlmflow report` reads its
report section (title, paper reference, section builder) from it. Targets are import paths
("module:attribute"), so listing experiments or parsing `vlmflow run --help` imports no torch.

Adding an experiment: write its module (the experiment class, and its section builder if the
report should draw more than the generic table of means), then add one `ExperimentSpec` line to
`SPECS` below (or call `register(spec)` from code outside vlmflow). Nothing else lists names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlmflow.errors import VlmflowError
from vlmflow.targets import check, resolve

if TYPE_CHECKING:
    from vlmflow.experiments.protocol import Experiment


@dataclass(frozen=True)
class ReportSection:
    """How `vlmflow report` shows an experiment's runs.

    `title`: the section heading. `paper`: the figure or table of the paper it reproduces
    ("" for none); an experiment with a paper reference that has no results is named in the
    report's "Not in this store" note, and such sections come first, in `SPECS` order (the
    paper's order). `build`: "module:function" taking (report Context, RunInfo, rows of that
    run) and returning HTML blocks; "" draws the generic table of metric means. `closing`:
    "module:function" taking the report Context and returning one HTML block added after all
    runs of the experiment, or "" (the maps section's interactive viewer).
    """

    title: str
    paper: str = ""
    build: str = ""
    closing: str = ""


@dataclass(frozen=True)
class ExperimentSpec:
    """One experiment: its name, how to build it, its one-line help and its report section.

    `factory`: "module:attribute", a callable taking the experiment's options mapping (its
    table of the --config file, {} without one) and returning an `Experiment`; the experiment
    parses the options into its own config dataclass (`protocol.parse_config`), which is the
    one owner of its option names and defaults. `section`: None gives a section titled with
    the name and the generic table of metric means.
    """

    name: str
    factory: str
    help: str = ""
    section: ReportSection | None = None

    def __post_init__(self) -> None:
        for target in (self.factory, *self._section_targets()):
            check(target)

    def _section_targets(self) -> tuple[str, ...]:
        if self.section is None:
            return ()
        return tuple(t for t in (self.section.build, self.section.closing) if t)


_SECTIONS = "vlmflow.report.sections"

# In the paper's order (Fig. 1, Fig. 2, Fig. 4, Fig. 6-7, Fig. 8, Fig. 9, Table 1): the
# report's sections follow it.
SPECS: tuple[ExperimentSpec, ...] = (
    ExperimentSpec(
        "fractions",
        "vlmflow.experiments.fractions:Fractions",
        "per layer, share of generated tokens' attention to each role (paper Fig. 1 / A5)",
        ReportSection(
            "Where the generated tokens look", "paper Fig. 1 / A5", f"{_SECTIONS}:fractions"
        ),
    ),
    ExperimentSpec(
        "knockout",
        "vlmflow.experiments.knockout:KnockoutSweep",
        "baseline vs image knockouts over all / from:L / except:A-B, judged (Fig. 2, A4)",
        ReportSection("Attention knockout", "paper Fig. 2e-f / A4", f"{_SECTIONS}:knockout"),
    ),
    ExperimentSpec(
        "maps",
        "vlmflow.experiments.maps:Maps",
        "per layer, generated tokens' attention drawn over the picture (paper Fig. 4)",
        ReportSection(
            "Attention over the image",
            "paper Fig. 4",
            f"{_SECTIONS}:maps",
            closing=f"{_SECTIONS}:viewer_block",
        ),
    ),
    ExperimentSpec(
        "localization",
        "vlmflow.experiments.localization:Localization",
        "do fine details' attention peaks fall on their objects? accuracy per layer (Fig. 6-7)",
        ReportSection(
            "Localization of fine details", "paper Fig. 6-7 / A6", f"{_SECTIONS}:localization"
        ),
    ),
    ExperimentSpec(
        "histogram",
        "vlmflow.experiments.histogram:Histogram",
        "per layer, distribution of attention values over image tokens (paper Fig. 8)",
        ReportSection(
            "Distribution of attention over image tokens", "paper Fig. 8", f"{_SECTIONS}:histogram"
        ),
    ),
    ExperimentSpec(
        "topk",
        "vlmflow.experiments.topk:TopK",
        "generated tokens see only the top-k% image tokens per layer; F1 vs k (Fig. 9 / A7)",
        ReportSection("Top-k image tokens", "paper Fig. 9 / A7", f"{_SECTIONS}:topk"),
    ),
    ExperimentSpec(
        "reprompt",
        "vlmflow.experiments.reprompt:Reprompt",
        "Table 1: yes/no answers from the full image, the description, compressed contexts",
        ReportSection("Image re-prompting", "paper Table 1", f"{_SECTIONS}:reprompt"),
    ),
    ExperimentSpec(
        "check",
        "vlmflow.experiments.check:ImageCheck",
        "decode every image and record size and checksum (no model): tests data and set-up",
        ReportSection("Image check"),
    ),
    # beyond the paper: answer tracing and the logit lens (vlmflow.analysis)
    ExperimentSpec(
        "trace",
        "vlmflow.experiments.trace:TraceExperiment",
        "answer probability under sliding window knockouts per group pair (Zhang et al. 2025)",
        ReportSection("Answer tracing (Zhang et al. CVPR 2025)", "", "vlmflow.report.beyond:trace"),
    ),
    ExperimentSpec(
        "lens",
        "vlmflow.experiments.lens:LensExperiment",
        "logit lens over image tokens: top words per layer, on/off objects (Neo et al. 2025)",
        ReportSection(
            "Logit lens over image tokens (Neo et al. ICLR 2025)", "", "vlmflow.report.beyond:lens"
        ),
    ),
)

EXPERIMENTS: dict[str, ExperimentSpec] = {spec.name: spec for spec in SPECS}


def register(spec: ExperimentSpec) -> None:
    """Add (or replace) an experiment, e.g. one defined outside vlmflow, for this process."""
    EXPERIMENTS[spec.name] = spec


def names() -> list[str]:
    """Every experiment's name, sorted."""
    return sorted(EXPERIMENTS)


def spec(name: str) -> ExperimentSpec:
    """The spec of experiment `name`; VlmflowError naming the known ones if there is none."""
    if name not in EXPERIMENTS:
        raise VlmflowError(
            f"unknown experiment {name!r}: choose from {', '.join(names())} "
            "(vlmflow run --list shows them)"
        )
    return EXPERIMENTS[name]


def create(name: str, options: Mapping[str, Any] | None = None) -> Experiment:
    """Import and build experiment `name` with `options` (its table of the config file).

    Raises VlmflowError for an unknown name or bad options, TypeError if the factory does not
    build an `Experiment`.
    """
    from vlmflow.experiments.protocol import Experiment

    target = spec(name).factory
    experiment = resolve(target)(dict(options or {}))
    if not isinstance(experiment, Experiment):
        raise TypeError(f"{target} did not build an Experiment")
    return experiment


def report_order(present: Iterable[str]) -> list[str]:
    """The experiments among `present` in report order: those reproducing a paper figure in
    `SPECS` order, then the rest by name."""
    present = set(present)
    paper = [n for n in paper_experiments() if n in present]
    return paper + sorted(present - set(paper))


def paper_experiments() -> list[str]:
    """Experiments whose report section reproduces a figure or table of the paper, in order."""
    return [s.name for s in EXPERIMENTS.values() if s.section is not None and s.section.paper]


SectionBuilder = Callable[[Any, Any, Sequence[Any]], list[str]]


def section_of(
    name: str,
) -> tuple[ReportSection, SectionBuilder | None, Callable[[Any], str] | None]:
    """Experiment `name`'s report section with its builder and closing block resolved (None
    where the spec names none; an experiment without a spec gets its name as title)."""
    found = EXPERIMENTS.get(name)
    section = found.section if found is not None and found.section else ReportSection(name)
    build = resolve(section.build) if section.build else None
    closing = resolve(section.closing) if section.closing else None
    return section, build, closing


def bind_model(experiments: Iterable[Experiment], model: str | int) -> None:
    """Tell experiments whose settings depend on the model's depth (the knockout layer sweep)
    which model they run on, before any weights load: a path/hub id is read from its config,
    an int is the number of layers itself."""
    for experiment in experiments:
        bind = getattr(experiment, "bind_model", None)
        if bind is not None:
            bind(model)
