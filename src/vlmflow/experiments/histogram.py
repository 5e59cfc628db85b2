"""`histogram`: per layer, the distribution of attention values over image tokens (Fig. 8).

The value of an image token at a layer is the attention it receives from the generated tokens,
averaged over heads and over the generated queries (capture steps >= 1, see `fractions`). That
is the quantity image tokens are ranked by for top-k pruning (paper Sec. 5), so the histogram
shows how long-tailed that ranking is. `per_token` histograms every (generated query, image
token) value instead. Image tokens are every position of the image span (patches, tiles,
thumbnail, newline and marker tokens), as in the `image` role.

Counts are over fixed log-spaced bins so histograms add up across images and models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from vlmflow.experiments.fractions import (
    DescribeConfig,
    DescribeExperiment,
)
from vlmflow.experiments.protocol import Context, Result, WorkItem


@dataclass(frozen=True)
class HistogramConfig(DescribeConfig):
    """`bins` log-spaced bins from `bin_min` to `bin_max` (attention values, in (0, 1]);
    `top`: the share of image tokens whose mass `top_share` reports (0.05: the top 5%);
    `per_token`: histogram each generated query's values rather than their mean.
    """

    bins: int = 32
    bin_min: float = 1e-8
    bin_max: float = 1.0
    top: float = 0.05
    per_token: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.bins, int) or self.bins < 1:
            raise ValueError(f"bins must be a positive integer, got {self.bins!r}")
        if not 0 < self.bin_min < self.bin_max:
            raise ValueError(f"need 0 < bin_min < bin_max, got {self.bin_min}, {self.bin_max}")
        if not 0 < self.top <= 1:
            raise ValueError(f"top must be in (0, 1], got {self.top}")

    def edges(self) -> np.ndarray:
        """(bins + 1,) bin edges, log-spaced."""
        return np.logspace(math.log10(self.bin_min), math.log10(self.bin_max), self.bins + 1)


def count(values: np.ndarray, edges: np.ndarray) -> list[int]:
    """Counts laid out as [below edges[0] (zeros too), bin 0 .. bin n-1, above edges[-1]].

    Bins are [e_i, e_i+1), the last one closed, so every value is counted exactly once.
    """
    lo, hi = float(edges[0]), float(edges[-1])
    inside = values[(values >= lo) & (values <= hi)]
    counts = np.histogram(inside, bins=edges)[0]
    return [int((values < lo).sum()), *map(int, counts), int((values > hi).sum())]


@dataclass(frozen=True)
class Summary:
    """Shape of one layer's mean attention row over the image tokens."""

    max: float  # highest value of one image token
    mass: float  # total attention to the image (the layer's image share)
    entropy: float  # of the row normalized to sum 1, in nats (log n for a uniform row)
    top_share: float  # share of `mass` held by the ceil(top * n) highest image tokens

    @classmethod
    def of(cls, row: np.ndarray, top: float) -> Summary:
        """`row`: (n_image,) non-negative attention values."""
        mass = float(row.sum())
        if mass <= 0:
            return cls(0.0, 0.0, 0.0, 0.0)
        p = row / mass
        nonzero = p[p > 0]
        entropy = float(-(nonzero * np.log(nonzero)).sum())
        k = max(1, math.ceil(top * row.size))
        top_mass = float(np.sort(row)[::-1][:k].sum())
        return cls(float(row.max()), mass, entropy, top_mass / mass)


class Histogram(DescribeExperiment):
    """Per layer, a histogram of attention values over image tokens, plus summary statistics.

    Result, for one image:
      metrics  `entropy`, `top_share` (means over the measured layers), `generated_tokens`,
               `image_tokens`.
      payload  `layers`; `edges`: the bins + 1 bin edges; `counts`: per measured layer, bins + 2
               integers [below edges[0], bin 0 .. bin n-1, above edges[-1]] summing to
               image_tokens (or image_tokens x queries with `per_token`); `max`, `mass`,
               `entropy`, `top_share`: per measured layer, from the mean row (see `Summary`);
               `top`, `per_token`, `queries`, `image_tokens`, `text`.
    """

    name = "histogram"
    config_type = HistogramConfig

    def run(self, handle: Any, item: WorkItem, setting: str, context: Context) -> Result:
        options = self.options
        described, layers = self.describe_image_rows(handle, item)
        edges = options.edges()
        counts, summaries = [], []
        for layer in layers:
            rows = described.generated_rows(layer).numpy()  # (queries, n_image)
            mean = rows.mean(axis=0)  # (n_image,)
            counts.append(count(rows.reshape(-1) if options.per_token else mean, edges))
            summaries.append(Summary.of(mean, options.top))
        stats = {f.name: [getattr(s, f.name) for s in summaries] for f in fields(Summary)}
        return Result(
            metrics={
                "entropy": float(np.mean(stats["entropy"])),
                "top_share": float(np.mean(stats["top_share"])),
                "generated_tokens": described.generated_tokens,
                "image_tokens": described.image_tokens,
            },
            payload={
                "layers": layers,
                "edges": [float(e) for e in edges],
                "counts": counts,
                **stats,
                "top": options.top,
                "per_token": options.per_token,
                "queries": described.queries,
                "image_tokens": described.image_tokens,
                "text": described.text,
            },
        )
