"""The paper's figures drawn with matplotlib from plain arrays, saved as PNG files.

Figures are written next to the report (`figures/*.png`) and referenced by relative path
rather than embedded: they are then reusable as they are (slides, papers), the HTML stays small
enough to open quickly, and the only embedded images are the viewer's thumbnails, which belong
to the viewer's data. Moving the report means moving the `figures` folder with it.

matplotlib is imported on first use with the Agg backend (no display needed); it is an
optional dependency (`pip install 'vlmflow[report]'`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmflow.errors import VlmflowError
from vlmflow.report.page import esc

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURES = "figures"
DPI = 110
# paper Fig. 1: image blue, query orange, generated green; the prefix grey
ROLE_COLORS = {"prefix": "#8c8c8c", "image": "#1f77b4", "query": "#ff7f0e", "generated": "#2ca02c"}
KNOCKOUT_COLORS = {
    "image-generated": "#1f77b4",
    "image-query": "#d62728",
    "image-query+generated": "#9467bd",
}
METRIC_COLORS = {"f1": "#222222", "precision": "#1f77b4", "recall": "#ff7f0e"}
METRIC_LABELS = {"f1": "F1", "precision": "precision", "recall": "recall"}


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or an error naming the install."""
    try:
        import matplotlib
    except ImportError:
        raise VlmflowError(
            "the report draws its figures with matplotlib: pip install 'vlmflow[report]'"
            " (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class Stat:
    """Mean, standard error of the mean and count of one quantity over images."""

    mean: float
    sem: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        data = np.array([v for v in values if v is not None], dtype=np.float64)
        if data.size == 0:
            return cls(float("nan"), float("nan"), 0)
        sem = float(data.std(ddof=1) / np.sqrt(data.size)) if data.size > 1 else 0.0
        return cls(float(data.mean()), sem, int(data.size))


# The report's own list of the figures it wrote, so a rebuild deletes only those.
MANIFEST = ".vlmflow-figures.json"


class Figures:
    """Saves figures into `out_dir/figures` and returns the HTML that shows each one."""

    def __init__(self, out_dir: Path) -> None:
        self.folder = out_dir / FIGURES
        self.folder.mkdir(parents=True, exist_ok=True)
        self.manifest = out_dir / MANIFEST
        self.written: list[Path] = []
        self.plt = pyplot()

    def save(self, fig: Figure, name: str, caption: str) -> str:
        path = self.folder / f"{name}.png"
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        self.plt.close(fig)
        self.written.append(path)
        return (
            f'<figure><img src="{FIGURES}/{esc(path.name)}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )

    def remove_stale(self) -> None:
        """Delete figures an earlier build wrote (listed in its manifest) that this build did
        not write again (runs since removed); then list this build's figures in the manifest.
        Files vlmflow did not write are never touched."""
        import json

        keep = {p.name for p in self.written}
        try:
            earlier = json.loads(self.manifest.read_text(encoding="utf-8")).get("figures", [])
        except (OSError, ValueError, AttributeError):
            earlier = []  # no manifest (first build) or a damaged one: delete nothing
        for name in earlier:
            path = self.folder / str(name)
            if str(name) not in keep and path.parent == self.folder and path.suffix == ".png":
                path.unlink(missing_ok=True)
        temporary = self.manifest.with_name(self.manifest.name + ".tmp")
        temporary.write_text(json.dumps({"figures": sorted(keep)}, indent=1), encoding="utf-8")
        temporary.replace(self.manifest)


def _layer_ticks(ax: Any, layers: Sequence[int], positions: Sequence[float] | np.ndarray) -> None:
    step = max(1, int(np.ceil(len(layers) / 16)))
    ax.set_xticks(list(positions)[::step])
    ax.set_xticklabels([str(x) for x in list(layers)[::step]])


def role_boxes(layers: Sequence[int], shares: np.ndarray, roles: Sequence[str]) -> Figure:
    """Fig. 1 / A5: per layer, box plots over images of each role's share of attention.

    `shares`: (images, layers, roles). One panel per role, sharing the layer axis, so deep
    models stay readable (the paper overlays three colours on one axis for 32 layers).
    """
    plt = pyplot()
    n_roles = len(roles)
    width = min(14.0, max(7.0, 0.3 * len(layers) + 2))
    fig, axes = plt.subplots(
        n_roles, 1, figsize=(width, 1.5 * n_roles + 1.0), sharex=True, squeeze=False
    )
    base = np.arange(len(layers), dtype=float)
    for r, role in enumerate(roles):
        ax = axes[r][0]
        color = ROLE_COLORS.get(role, "#cccccc")
        box = ax.boxplot(
            [shares[:, i, r] for i in range(len(layers))],
            positions=base,
            widths=0.6,
            patch_artist=True,
            flierprops={"markersize": 2, "markeredgecolor": color},
            medianprops={"color": "black", "linewidth": 0.8},
            whiskerprops={"linewidth": 0.7},
            capprops={"linewidth": 0.7},
        )
        for patch in box["boxes"]:
            patch.set_facecolor(color)
            patch.set_alpha(0.85)
            patch.set_linewidth(0.5)
        ax.set_ylim(-0.02, 1.02)
        ax.set_yticks([0, 0.5, 1])
        ax.set_ylabel(role, color=color, fontweight="bold")
        ax.grid(axis="y", alpha=0.3)
    bottom = axes[-1][0]
    _layer_ticks(bottom, layers, base)
    bottom.set_xlim(-0.6, len(layers) - 0.4)
    bottom.set_xlabel("layer")
    fig.suptitle(
        f"Share of the generated tokens' attention per token role ({shares.shape[0]} images)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def histogram_map(
    layers: Sequence[int],
    edges: Sequence[float],
    counts: np.ndarray,
    top_share: np.ndarray,
    top: float,
) -> Figure:
    """Fig. 8: per layer, the distribution of attention values over image tokens.

    `counts`: (layers, bins + 2) summed over images ([below, bins..., above]);
    `top_share`: (images, layers), share of the image attention held by the top `top` tokens.
    """
    from matplotlib.colors import LogNorm

    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.5, 1]})
    totals = counts.sum(axis=1, keepdims=True).astype(np.float64)
    frac = counts / np.where(totals > 0, totals, 1)  # (layers, bins + 2)
    log_edges = np.log10(np.asarray(edges, dtype=np.float64))
    step = log_edges[1] - log_edges[0]
    # rows: below the first edge, the bins, and above the last edge only when it is used
    y_edges = np.concatenate([[log_edges[0] - step], log_edges])
    grid = frac[:, :-1]
    if frac[:, -1].any():
        y_edges = np.append(y_edges, log_edges[-1] + step)
        grid = frac
    x_edges = np.arange(len(layers) + 1) - 0.5
    positive = grid[grid > 0]
    vmin = max(float(positive.min()) if positive.size else 1e-4, 1e-4)
    mesh = ax.pcolormesh(
        x_edges, y_edges, np.where(grid > 0, grid, np.nan).T, cmap="magma", norm=LogNorm(vmin, 1)
    )
    fig.colorbar(mesh, ax=ax, label="share of image tokens")
    _layer_ticks(ax, layers, np.arange(len(layers)))
    ax.set_xlabel("layer")
    ax.set_ylabel("log10 attention from generated tokens")
    ax.set_title("Distribution of attention over image tokens")
    ax.axhline(log_edges[0], color="white", linewidth=0.6, linestyle=":")
    used = np.flatnonzero(grid.sum(axis=0) > 0)
    if used.size:  # show the occupied bins, one spare on each side
        ax.set_ylim(y_edges[max(0, used[0] - 1)], y_edges[min(len(y_edges) - 1, used[-1] + 2)])

    x = np.arange(len(layers))
    median = np.median(top_share, axis=0)
    lo, hi = np.percentile(top_share, 25, axis=0), np.percentile(top_share, 75, axis=0)
    ax2.fill_between(x, lo, hi, color="#1f77b4", alpha=0.25, label="interquartile range")
    ax2.plot(x, median, color="#1f77b4", marker="o", markersize=3, label="median over images")
    ax2.axhline(top, color="grey", linestyle="--", linewidth=0.8, label="uniform attention")
    _layer_ticks(ax2, layers, x)
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("layer")
    ax2.set_ylabel(f"share held by the top {top:.0%} image tokens")
    ax2.set_title("How concentrated the image attention is")
    ax2.legend(fontsize=8, frameon=False)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class MapRow:
    """One image of the maps figure: its name, picture (or None) and combined maps (L, S, S)."""

    name: str
    picture: np.ndarray | None
    aspect: float  # width / height of the original image
    maps: np.ndarray


def attention_maps(rows: Sequence[MapRow], layers: Sequence[int], chosen: Sequence[int]) -> Figure:
    """Fig. 4: each image, then its attention map at the `chosen` layer indices (into `layers`).

    Every map is scaled to its own maximum, as in the paper: the figure shows where the
    attention goes at each layer, not how much of it reaches the image.
    """
    plt = pyplot()
    cols = len(chosen) + 1
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.7 * cols, 1.8 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        width, height = row.aspect, 1.0
        extent = (0.0, width, height, 0.0)
        ax = axes[r][0]
        if row.picture is not None:
            ax.imshow(row.picture, extent=extent)
        else:
            ax.text(0.5 * width, 0.5, "no picture", ha="center", va="center", fontsize=7)
            ax.set_xlim(0, width)
            ax.set_ylim(height, 0)
        ax.set_ylabel(row.name, fontsize=7)
        for c, index in enumerate(chosen, start=1):
            ax = axes[r][c]
            grid = row.maps[index].astype(np.float64)
            peak = float(grid.max())
            ax.imshow(grid / peak if peak > 0 else grid, extent=extent, cmap="inferno", vmin=0)
            if r == 0:
                ax.set_title(f"layer {layers[index]}", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
    fig.suptitle("Generated tokens' attention over the image, per layer", fontsize=10)
    fig.tight_layout()
    return fig


def knockout_bars(
    knockouts: Sequence[str], stats: Mapping[tuple[str, str], Stat], window: str | None
) -> Figure:
    """Fig. 2e / A4: F1, precision and recall per knockout at all layers, and F1 when the
    knockout spares the middle window (`except:A-B`, hatched).

    `stats`: (knockout, metric or "except_f1") -> Stat over images.
    """
    plt = pyplot()
    metrics = ["f1", "precision", "recall"] + (["except_f1"] if window else [])
    fig, ax = plt.subplots(figsize=(max(6.0, 2.4 * len(knockouts)), 3.8))
    width = 0.8 / len(metrics)
    for m, metric in enumerate(metrics):
        xs, means, errs = [], [], []
        for k, name in enumerate(knockouts):
            stat = stats.get((name, metric))
            if stat is None or stat.n == 0:
                continue
            xs.append(k + (m - (len(metrics) - 1) / 2) * width)
            means.append(stat.mean)
            errs.append(stat.sem)
        label = f"F1, {window}" if metric == "except_f1" else METRIC_LABELS[metric]
        color = METRIC_COLORS["f1"] if metric == "except_f1" else METRIC_COLORS[metric]
        ax.bar(
            xs,
            means,
            width * 0.92,
            yerr=errs,
            capsize=2,
            color="white" if metric == "except_f1" else color,
            edgecolor=color,
            hatch="///" if metric == "except_f1" else None,
            label=label,
        )
    ax.set_xticks(range(len(knockouts)))
    ax.set_xticklabels(knockouts)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("vs. the model's own description")
    ax.set_title("Descriptions under image knockout at all layers")
    ax.legend(fontsize=8, frameon=False, ncol=len(metrics))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def knockout_sweep(
    curves: Mapping[str, tuple[Sequence[int], Sequence[Stat]]],
    window: tuple[int, int] | None,
    num_layers: int | None,
) -> Figure:
    """Fig. 2f: F1 when each knockout acts from layer L on, against L (mean ± s.e. over images)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    if window is not None:
        ax.axvspan(
            window[0] - 0.5, window[1] + 0.5, color="#f2c14e", alpha=0.25, label="middle window"
        )
    for name, (starts, stats) in curves.items():
        x = np.array(starts)
        mean = np.array([s.mean for s in stats])
        sem = np.array([s.sem for s in stats])
        color = KNOCKOUT_COLORS.get(name)
        ax.plot(x, mean, marker="o", markersize=3, color=color, label=name)
        ax.fill_between(
            x, np.clip(mean - sem, 0, 1), np.clip(mean + sem, 0, 1), color=color, alpha=0.15
        )
    ax.xaxis.get_major_locator().set_params(integer=True)
    if num_layers:
        ax.set_xlim(-0.5, num_layers - 0.5)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("knockout from layer L to the last layer")
    ax.set_ylabel("F1 vs. the model's own description")
    ax.set_title("Knocking out the image from layer L on")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def topk_curve(ks: Sequence[float], stats: Mapping[str, Sequence[Stat]]) -> Figure:
    """Fig. 9 / A7: F1 (and precision, recall) against the kept share k of image tokens.

    k is placed on evenly spaced positions (the sweep is roughly geometric and may include 0).
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    x = np.arange(len(ks))
    for metric, values in stats.items():
        mean = np.array([s.mean for s in values])
        sem = np.array([s.sem for s in values])
        color = METRIC_COLORS.get(metric)
        style = "-" if metric == "f1" else "--"
        label = METRIC_LABELS.get(metric, metric)
        ax.plot(x, mean, style, marker="o", markersize=4, color=color, label=label)
        if metric == "f1":
            ax.fill_between(
                x, np.clip(mean - sem, 0, 1), np.clip(mean + sem, 0, 1), color=color, alpha=0.12
            )
    ax.set_xticks(x)
    ax.set_xticklabels([f"{100 * k:g}%" for k in ks])
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("image tokens kept per layer (top-k by attention)")
    ax.set_ylabel("vs. the model's own description")
    ax.set_title("Generated tokens see only the top-k image tokens")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def localization_curve(
    layers: Sequence[int],
    accuracy: np.ndarray,
    details: int,
    window: tuple[int, int] | None,
    window_accuracy: float | None,
) -> Figure:
    """Fig. 6-7 / A6: per layer, the share of fine details whose attention peak is on the object.

    `accuracy`: (layers,), NaN where no detail was scored.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    if window is not None:
        ax.axvspan(window[0] - 0.5, window[1] + 0.5, color="#f2c14e", alpha=0.25, label="window")
    if details:
        ax.plot(layers, accuracy, marker="o", markersize=3, color="#1f77b4", label="per layer")
        if window_accuracy is not None:
            ax.axhline(
                window_accuracy,
                color="#d62728",
                linestyle="--",
                linewidth=1,
                label="window-averaged attention",
            )
    else:
        ax.text(
            0.5,
            0.5,
            "no fine detail was found in these images",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#5f6b76",
        )
    ax.set_xlim(min(layers, default=0) - 0.5, max(layers, default=0) + 0.5)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("layer")
    ax.set_ylabel("peak within one token of the object")
    ax.set_title(f"Localization of fine details ({details} details)")
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
