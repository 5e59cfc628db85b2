"""One report section per experiment: stored rows -> the paper's figure, tables and notes.

Each builder takes the rows of one run (one experiment, model, image source and config) and
returns HTML blocks. Aggregates are means over images with their standard error; a value an
image lacks (a failed item) is left out of that mean rather than counted as zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from vlmflow.report import figures as fig
from vlmflow.report.figures import Figures, Stat
from vlmflow.report.page import Column, collapsed, esc, number, paragraph, table
from vlmflow.report.pictures import Pictures, thumbnail
from vlmflow.report.viewer import (
    MAX_IMAGES,
    MAX_TOKEN_IMAGES,
    ROLE_ORDER,
    ViewerImage,
    viewer_html,
)
from vlmflow.store import Failure, ResultKey, ResultStore, Row, RunInfo

# paper order: Fig. 1, Fig. 2, Fig. 4, Fig. 6-7, Fig. 8, Fig. 9, Table 1
ORDER = ("fractions", "knockout", "maps", "localization", "histogram", "topk", "reprompt")
TITLES = {
    "fractions": "Where the generated tokens look",
    "knockout": "Attention knockout",
    "maps": "Attention over the image",
    "localization": "Localization of fine details",
    "histogram": "Distribution of attention over image tokens",
    "topk": "Top-k image tokens",
    "reprompt": "Image re-prompting",
    "check": "Image check",
}
PAPER = {
    "fractions": "paper Fig. 1 / A5",
    "knockout": "paper Fig. 2e-f / A4",
    "maps": "paper Fig. 4",
    "localization": "paper Fig. 6-7 / A6",
    "histogram": "paper Fig. 8",
    "topk": "paper Fig. 9 / A7",
    "reprompt": "paper Table 1",
}
MAX_MAP_ROWS = 4  # images in the maps figure (the viewer shows more)
MAX_MAP_LAYERS = 8  # layers shown per image in the maps figure


@dataclass
class Context:
    """What the section builders share: the store, the figure writer and the pictures."""

    store: ResultStore
    figures: Figures
    pictures: Pictures = field(default_factory=Pictures)
    viewer: list[tuple[RunInfo, ViewerImage]] = field(default_factory=list)
    viewer_left_out: int = 0
    shares: dict[tuple[str, str], dict[int, list[float]]] = field(default_factory=dict)


def run_label(run: RunInfo) -> str:
    from vlmflow.experiments.runner import NO_MODEL

    model = "no model" if run.model == NO_MODEL else run.model
    return f"{model} on {run.source} (run {run.run_id})"


def figure_name(run: RunInfo, kind: str) -> str:
    return f"{run.experiment}-{run.run_id[:8]}-{kind}"


def _created(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _stat_cell(stat: Stat) -> str:
    if stat.n == 0:
        return "–"
    return f"{stat.mean:.3f} ± {stat.sem:.3f}"


# -- fractions -------------------------------------------------------------------------------


def fractions(ctx: Context, run: RunInfo, rows: Sequence[Row]) -> list[str]:
    layers = list(rows[0].payload["layers"])
    roles = list(rows[0].payload["roles"])
    usable = [r for r in rows if list(r.payload["layers"]) == layers]
    shares = np.array([r.payload["shares"] for r in usable], dtype=np.float64)  # (n, L, 4)
    for r in usable:  # the viewer shows these shares next to the maps of the same image
        ctx.shares[(run.model, r.item)] = {
            layer: [row[roles.index(role)] for role in ROLE_ORDER]
            for layer, row in zip(layers, r.payload["shares"], strict=True)
        }
    shown = [role for role in ("image", "query", "generated", "prefix") if role in roles]
    index = [roles.index(role) for role in shown]
    blocks = [
        ctx.figures.save(
            fig.role_boxes(layers, shares[:, :, index], shown),
            figure_name(run, "roles"),
            "Per layer, the share of the generated tokens' attention (heads and generated "
            "tokens averaged) that goes to image, query, generated and prefix tokens; boxes "
            f"over {len(usable)} images.",
        )
    ]
    mean = shares.mean(axis=0)  # (L, 4)
    first = np.array([r.payload["first"] for r in usable], dtype=np.float64).mean(axis=0)
    table_rows = []
    for role, i in zip(shown, index, strict=True):
        best = int(mean[:, i].argmax())
        table_rows.append(
            [
                role,
                float(mean[:, i].mean()),
                layers[best],
                float(mean[best, i]),
                float(first[:, i].mean()),
            ]
        )
    blocks.append(
        table(
            [
                "role",
                Column("mean share", True),
                Column("layer of largest share", True),
                Column("largest share", True),
                Column("share at the last prompt position", True),
            ],
            table_rows,
        )
    )
    tokens = np.mean([r.metrics["generated_tokens"] for r in usable])
    image_tokens = np.mean([r.metrics["image_tokens"] for r in usable])
    blocks.append(
        paragraph(
            f"{len(usable)} images, {image_tokens:.0f} image tokens and {tokens:.1f} generated "
            "tokens per image on average. The last column is the prefill's last prompt "
            "position, which predicts the first generated token.",
            "muted",
        )
    )
    return blocks


# -- knockout --------------------------------------------------------------------------------


def _parse_setting(setting: str) -> tuple[str, str, str]:
    name, _, spec = setting.partition("@")
    return name, spec.split(":", 1)[0], spec


def knockout(ctx: Context, run: RunInfo, rows: Sequence[Row]) -> list[str]:
    from vlmflow.experiments.knockout import BASELINE, KNOCKOUTS

    by_setting: dict[str, list[Row]] = {}
    for r in rows:
        by_setting.setdefault(r.setting, []).append(r)
    names = [k for k in KNOCKOUTS if any(s.startswith(k + "@") for s in by_setting)]
    names += sorted({_parse_setting(s)[0] for s in by_setting if s != BASELINE} - set(names))
    stats: dict[tuple[str, str], Stat] = {}
    curves: dict[str, tuple[list[int], list[Stat]]] = {}
    window: tuple[int, int] | None = None
    window_spec: str | None = None
    summary_rows: list[list[Any]] = []
    sweep_rows: list[list[Any]] = []
    for setting in sorted(by_setting, key=lambda s: by_setting[s][0].setting_index):
        group = by_setting[setting]
        f1, precision, recall = (
            Stat.of([r.metrics.get(m) for r in group]) for m in ("f1", "precision", "recall")
        )
        blocked = group[0].metrics.get("blocked_layers")
        line = [setting, blocked, _stat_cell(f1), _stat_cell(precision), _stat_cell(recall), f1.n]
        if setting == BASELINE:
            summary_rows.append(line)
            continue
        name, scope, spec = _parse_setting(setting)
        if scope == "all":
            stats[(name, "f1")], stats[(name, "precision")], stats[(name, "recall")] = (
                f1,
                precision,
                recall,
            )
            summary_rows.append(line)
        elif scope == "except":
            stats[(name, "except_f1")] = f1
            window_spec = spec
            a, _, b = spec.split(":", 1)[1].partition("-")
            window = (int(a), int(b))
            summary_rows.append(line)
        elif scope == "from":
            starts, values = curves.setdefault(name, ([], []))
            starts.append(int(spec.split(":", 1)[1]))
            values.append(f1)
            sweep_rows.append(line)
    blocks: list[str] = []
    if any(key[1] in ("f1", "except_f1") for key in stats):
        blocks.append(
            ctx.figures.save(
                fig.knockout_bars(names, stats, window_spec),
                figure_name(run, "settings"),
                "F1, precision and recall of the description under each knockout at all layers "
                "against the model's own description (mean ± s.e. over images); hatched: F1 "
                f"when the knockout spares the middle layers ({window_spec or 'not run'}).",
            )
        )
    for name, (starts, values) in curves.items():
        order = np.argsort(starts)
        curves[name] = ([starts[i] for i in order], [values[i] for i in order])
    if curves:
        blocks.append(
            ctx.figures.save(
                fig.knockout_sweep(curves, window, run.config.get("num_layers")),
                figure_name(run, "sweep"),
                "F1 when the knockout acts from layer L to the last layer, against L (mean ± "
                "s.e. over images). The shaded band is the middle window the except setting "
                "leaves open.",
            )
        )
    columns: list[Column | str] = [
        "setting",
        Column("blocked layers", True),
        Column("F1", True),
        Column("precision", True),
        Column("recall", True),
        Column("images", True),
    ]
    blocks.append(table(columns, summary_rows))
    if sweep_rows:
        blocks.append(
            collapsed(f"All {len(sweep_rows)} from:L settings", table(columns, sweep_rows))
        )
    base = by_setting.get(BASELINE, [])
    if base:
        objects = np.mean([r.metrics.get("objects", 0) for r in base])
        blocks.append(
            paragraph(
                f"{len(base)} images; the model's own descriptions name {objects:.1f} objects "
                f"on average (judge: {base[0].payload.get('judge', run.config.get('judge'))}).",
                "muted",
            )
        )
        example = base[0].item
        lines = []
        for setting in sorted(by_setting, key=lambda s: by_setting[s][0].setting_index):
            found = next((x for x in by_setting[setting] if x.item == example), None)
            if found is None or _parse_setting(setting)[1] == "from":
                continue
            lines.append([setting, found.payload.get("description", ""), found.metrics.get("f1")])
        blocks.append(
            collapsed(
                f"Descriptions of {example}",
                table(["setting", "description", Column("F1", True)], lines),
            )
        )
    return blocks


# -- maps ------------------------------------------------------------------------------------


def _aspect(row: Row) -> float:
    size = row.payload.get("image_size")
    if size and size[1]:
        return float(size[0]) / float(size[1])
    return 1.0


def maps(ctx: Context, run: RunInfo, rows: Sequence[Row]) -> list[str]:
    layers = list(rows[0].payload["layers"])
    loaded: list[tuple[Row, np.ndarray]] = []
    for r in rows:
        key = ResultKey(r.run_id, r.experiment, r.item, r.setting)
        loaded.append((r, ctx.store.blob(key, "maps")))  # (L, V, S, S)
    count = max(1, min(len(layers), MAX_MAP_LAYERS))
    chosen = sorted({round(float(x)) for x in np.linspace(0, len(layers) - 1, count)})
    figure_rows: list[fig.MapRow] = []
    for r, blob in loaded:
        if len(figure_rows) == MAX_MAP_ROWS:
            break
        if list(r.payload["layers"]) != layers:
            continue
        picture = ctx.pictures.get(run.source, r.item)
        small = np.asarray(thumbnail(picture, 160)) if picture is not None else None
        figure_rows.append(
            fig.MapRow(r.item, small, _aspect(r), blob.astype(np.float64).sum(axis=1))
        )
    blocks = [
        ctx.figures.save(
            fig.attention_maps(figure_rows, layers, chosen),
            figure_name(run, "maps"),
            "The image, then the generated tokens' attention over it (heads and generated "
            "tokens averaged, every view summed) at evenly spaced layers; each map is scaled to "
            f"its own maximum. {len(figure_rows)} of {len(rows)} images.",
        )
    ]
    table_rows = []
    for r, _ in loaded:
        p = r.payload
        table_rows.append(
            [
                r.item,
                r.metrics.get("image_tokens"),
                r.metrics.get("generated_tokens"),
                float(np.mean(p["image_share"])),
                float(np.mean(p["separator_share"])),
                ", ".join(p["views"]),
                p.get("text", ""),
            ]
        )
        if len(ctx.viewer) < MAX_IMAGES:
            blob = next(b for row, b in loaded if row is r)
            token_maps = None
            if len(ctx.viewer) < MAX_TOKEN_IMAGES and "token_maps" in r.blobs and p.get("tokens"):
                key = ResultKey(r.run_id, r.experiment, r.item, r.setting)
                token_maps = ctx.store.blob(key, "token_maps")  # (Q, L, V, T, T)
            image = ViewerImage(
                label=r.item,
                layers=list(p["layers"]),
                views=list(p["views"]),
                size=int(p["size"]),
                maps=blob,
                text=str(p.get("text", "")),
                aspect=_aspect(r),
                picture=ctx.pictures.get(run.source, r.item),
                image_share=list(p["image_share"]),
                separator_share=list(p["separator_share"]),
                shares=None,
                tokens=list(p["tokens"]) if token_maps is not None else None,
                token_maps=token_maps,
            )
            ctx.viewer.append((run, image))
        else:
            ctx.viewer_left_out += 1
    blocks.append(
        collapsed(
            f"Per image ({len(rows)})",
            table(
                [
                    "image",
                    Column("image tokens", True),
                    Column("generated tokens", True),
                    Column("image share", True),
                    Column("separator share", True),
                    "views",
                    "description",
                ],
                table_rows,
            ),
        )
    )
    return blocks


def _short(model: str) -> str:
    """The last part of a model path or hub id: enough to tell runs apart in a menu."""
    return model.rstrip("/").rsplit("/", 1)[-1]


def viewer_block(ctx: Context) -> str:
    """The viewer over the maps images collected, with the fractions of the same images."""
    several = len({run.run_id for run, _ in ctx.viewer}) > 1
    images = [
        replace(
            image,
            label=f"{image.label} · {_short(run.model)} · {run.run_id[:8]}"
            if several
            else image.label,
            shares=ctx.shares.get((run.model, image.label)),
        )
        for run, image in ctx.viewer
    ]
    return "<h3>Interactive viewer</h3>" + viewer_html(images, ctx.viewer_left_out)


# -- localization ----------------------------------------------------------------------------


def localization(ctx: Context, run: RunInfo, rows: Sequence[Row]) -> list[str]:
    layer_ids = [rec["layer"] for rec in rows[0].payload["layers"]]
    hits = np.zeros(len(layer_ids))
    details = np.zeros(len(layer_ids))
    window_hits = 0
    skipped: dict[str, int] = {}
    detail_rows: list[list[Any]] = []
    for r in rows:
        for i, rec in enumerate(r.payload["layers"][: len(layer_ids)]):
            hits[i] += rec["hits"]
            details[i] += rec["details"]
        window_hits += int(r.metrics.get("window_hits", 0))
        for s in r.payload.get("skipped", []):
            skipped[s["reason"]] = skipped.get(s["reason"], 0) + 1
        for d in r.payload.get("details", []):
            marks = "".join("●" if h else "·" for h in d["hits"])
            detail_rows.append([r.item, d["object"], marks, d["window_hit"]])
    total = int(details.max()) if details.size else 0
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(details > 0, hits / np.where(details > 0, details, 1), np.nan)
    span = rows[0].payload.get("window") or []
    window = (int(span[0]), int(span[1])) if len(span) == 2 else None
    window_acc = window_hits / total if total else None
    blocks = [
        ctx.figures.save(
            fig.localization_curve(
                layer_ids,
                accuracy,
                total,
                window,
                window_acc,
            ),
            figure_name(run, "accuracy"),
            "Per layer, the share of fine details (objects of the description that the image -> "
            "generated knockout loses) whose attention peak lies within one image token of the "
            "object's mask; dashed: the same for attention averaged over the window of layers.",
        )
    ]
    blocks.append(
        table(
            [
                Column("images", True),
                Column("fine details", True),
                Column("best layer", True),
                Column("best accuracy", True),
                Column("window accuracy", True),
            ],
            [
                [
                    len(rows),
                    total,
                    layer_ids[int(np.nanargmax(accuracy))] if total else None,
                    float(np.nanmax(accuracy)) if total else None,
                    window_acc,
                ]
            ],
        )
    )
    if skipped:
        reasons = "; ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items()))
        blocks.append(paragraph(f"Objects not scored: {reasons}.", "muted"))
    if detail_rows:
        blocks.append(
            collapsed(
                f"Every fine detail ({len(detail_rows)}): hit per layer",
                table(
                    ["image", "object", "layers 0..L-1", Column("window hit", True)], detail_rows
                ),
            )
        )
    return blocks


# -- histogram -------------------------------------------------------------------------------


def histogram(ctx: Context, run: RunInfo, rows: Sequence[Row]) -> list[str]:
    first = rows[0].payload
    layers, edges = list(first["layers"]), list(first["edges"])
    usable = [r for r in rows if r.payload["layers"] == layers and r.payload["edges"] == edges]
    counts = np.sum([np.array(r.payload["counts"], dtype=np.float64) for r in usable], axis=0)
    top_share = np.array([r.payload["top_share"] for r in usable], dtype=np.float64)
    entropy = np.array([r.payload["entropy"] for r in usable], dtype=np.float64)
    peak = np.array([r.payload["max"] for r in usable], dtype=np.float64)
    top = float(first.get("top", 0.05))
    per = "generated token" if first.get("per_token") else "image token (generated tokens averaged)"
    blocks = [
        ctx.figures.save(
            fig.histogram_map(layers, edges, counts, top_share, top),
            figure_name(run, "distribution"),
            f"Left: per layer, the distribution of attention values per {per} over "
            f"{len(usable)} images, log-spaced bins (the bottom row holds values below "
            f"{edges[0]:g}). Right: the share of the image attention held by the top "
            f"{top:.0%} of image tokens.",
        )
    ]
    table_rows = [
        [
            layer,
            float(top_share[:, i].mean()),
            float(entropy[:, i].mean()),
            float(peak[:, i].mean()),
        ]
        for i, layer in enumerate(layers)
    ]
    blocks.append(
        collapsed(
            "Per layer: concentration of the image attention",
            table(
                [
                    Column("layer", True),
                    Column(f"top {top:.0%} share", True),
                    Column("entropy (nats)", True),
                    Column("largest value", True),
                ],
                table_rows,
                digits=4,
            ),
        )
    )
    return blocks


# -- topk ------------------------------------------------------------------------------------


def topk(ctx: Context, run: RunInfo, rows: Sequence[Row]) -> list[str]:
    by_k: dict[float, list[Row]] = {}
    for r in rows:
        by_k.setdefault(float(r.metrics["k"]), []).append(r)
    ks = sorted(by_k)
    metrics = ("f1", "precision", "recall")
    stats = {m: [Stat.of([r.metrics.get(m) for r in by_k[k]]) for k in ks] for m in metrics}
    blocks = [
        ctx.figures.save(
            fig.topk_curve(ks, stats),
            figure_name(run, "f1"),
            "F1 (precision, recall) of the description when generated tokens see only the "
            "top-k image tokens of each layer, ranked by the attention the model's own "
            "description paid them, against that description (mean ± s.e. over images).",
        )
    ]
    table_rows = [
        [
            f"{100 * k:g}%",
            float(np.mean([r.metrics.get("kept", 0) for r in by_k[k]])),
            *(_stat_cell(stats[m][i]) for m in metrics),
            stats["f1"][i].n,
        ]
        for i, k in enumerate(ks)
    ]
    blocks.append(
        table(
            [
                "k",
                Column("image tokens kept", True),
                Column("F1", True),
                Column("precision", True),
                Column("recall", True),
                Column("images", True),
            ],
            table_rows,
            digits=1,
        )
    )
    return blocks


# -- reprompt --------------------------------------------------------------------------------


def reprompt(ctx: Context, run: RunInfo, rows: Sequence[Row]) -> list[str]:
    from vlmflow.experiments.reprompt import table as reprompt_table
    from vlmflow.scenes.questions import QUESTION_CATEGORIES

    order: dict[str, int] = {}
    for r in rows:
        order.setdefault(r.setting, r.setting_index)
    cells = reprompt_table((r.setting, r.payload) for r in rows)
    found = {key.split(".", 1)[1] for c in cells.values() for key in c if "." in key}
    categories = [c for c in QUESTION_CATEGORIES if c in found] + sorted(
        found - set(QUESTION_CATEGORIES)
    )
    columns: list[Column | str] = ["setting"]
    for category in categories:
        columns += [Column(f"{category} ACC", True), Column(f"{category} ACC+", True)]
    columns += [Column("ACC", True), Column("ACC+", True), Column("tokens per re-prompt", True)]
    table_rows = []
    for setting in sorted(cells, key=lambda s: order.get(s, 0)):
        c = cells[setting]
        line: list[Any] = [setting]
        for category in categories:
            line += [c.get(f"acc.{category}"), c.get(f"acc+.{category}")]
        line += [c["acc"], c["acc+"], c["tokens"]]
        table_rows.append(line)
    images = len({r.item for r in rows})
    return [
        table(columns, table_rows, digits=1),
        paragraph(
            f"Yes/no questions of {images} images ({run.source}), one yes and one no per "
            "category. ACC: share of questions answered correctly; ACC+: share of images where "
            "both questions of a category are right; tokens: positions the answer was computed "
            "from (for the compressed contexts, the kept prompt plus the question). Rows: naive "
            "(full image prompt per question), describe-to-llm (the model's description, text "
            "only, to its own LLM, or @ an external chat model), k= (compressed context with "
            "the top-k image tokens), query-only, k-only= (no query tokens).",
            "muted",
        ),
    ]


# -- anything else ---------------------------------------------------------------------------


def generic(ctx: Context, run: RunInfo, rows: Sequence[Row]) -> list[str]:
    """Experiments the report has no figure for: the mean of each numeric metric."""
    names = sorted({k for r in rows for k, v in r.metrics.items() if isinstance(v, int | float)})
    table_rows = []
    for name in names:
        values = [
            float(r.metrics[name])
            for r in rows
            if isinstance(r.metrics.get(name), int | float)
            and not isinstance(r.metrics[name], bool)
        ]
        table_rows.append([name, float(np.mean(values)) if values else None, len(values)])
    return [
        paragraph(f"{len(rows)} results; the report draws no figure for this experiment.", "muted"),
        table(["metric", Column("mean", True), Column("results", True)], table_rows),
    ]


BUILDERS: dict[str, Callable[[Context, RunInfo, Sequence[Row]], list[str]]] = {
    "fractions": fractions,
    "knockout": knockout,
    "maps": maps,
    "localization": localization,
    "histogram": histogram,
    "topk": topk,
    "reprompt": reprompt,
}


# -- runs and failures -------------------------------------------------------------------------


def runs_table(runs: Sequence[RunInfo], counts: dict[str, tuple[int, int]]) -> str:
    rows = []
    for run in runs:
        done, failed = counts.get(run.run_id, (0, 0))
        rows.append(
            [
                run.experiment,
                run.model,
                run.source,
                run.run_id,
                run.version,
                _created(run.created),
                done,
                failed,
            ]
        )
    configs = "".join(
        f"<p><b>{esc(run.experiment)}</b> <code>{esc(run.run_id)}</code></p>"
        f"<pre>{esc(_config_text(run.config))}</pre>"
        for run in runs
    )
    return table(
        [
            "experiment",
            "model",
            "images",
            "run",
            "vlmflow",
            "started",
            Column("results", True),
            Column("failures", True),
        ],
        rows,
    ) + collapsed("Configuration of each run", configs)


def _config_text(config: Any) -> str:
    import json

    return json.dumps(config, indent=2, sort_keys=True)


def failures_table(failures: Sequence[Failure]) -> str:
    rows = []
    for f in failures:
        message = f"{f.error_type}: {f.message}"
        rows.append([f.experiment, f.item, f.setting, message[:400], f.attempts])
    return table(["experiment", "item", "setting", "error", Column("attempts", True)], rows)


__all__ = ["BUILDERS", "ORDER", "PAPER", "TITLES", "Context", "number"]


# -- beyond the paper: answer tracing and the logit lens (vlmflow.report.beyond) --------------

from vlmflow.report import beyond  # noqa: E402  (it reads this module's helpers lazily)

BUILDERS.update(beyond.BUILDERS)
TITLES.update(beyond.TITLES)
PAPER.update(beyond.PAPER)
