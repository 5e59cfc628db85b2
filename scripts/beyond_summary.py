"""Print the figures README's "Beyond the paper" tables give, from the stores of its commands.

    python scripts/beyond_summary.py runs/beyond-80 runs/beyond-80-lens

Tracing: per pair and question category, the mean relative change of P(answer) over the
questions at every window start, and its minimum. Lens: per layer, the share of on-object tokens
naming their object and of off-object tokens naming any object of the image, pooled over
tokens (as `vlmflow report` pools them), and how many images name an object at layers 0 and last.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np

from vlmflow.store import ResultStore


def trace(out: Path) -> None:
    with ResultStore(out / "results.sqlite3", create=False) as store:
        rows = [r for r in store.rows() if r.experiment == "trace"]
    records = [q for r in rows for q in r.payload["questions"]]
    width = rows[0].payload["window"]
    for run in sorted({r.run_id for r in rows}):  # the flows' run and the control's
        asked = [q for r in rows if r.run_id == run for q in r.payload["questions"]]
        answers = Counter(q["answer_text"] for q in asked).most_common()
        mean = np.mean([q["probability"] for q in asked])
        print(f"run {run}: {len(asked)} questions, answers {answers}, mean P(answer) {mean:.3f}")
    print(f"window {width} layers")
    starts_of = {id(q): r.payload["starts"] for r in rows for q in r.payload["questions"]}
    for category in sorted({q["category"] for q in records}):
        chosen = [q for q in records if q["category"] == category]
        for pair in sorted({p for q in chosen for p in q["change"]}):
            with_pair = [q for q in chosen if pair in q["change"]]
            starts = starts_of[id(with_pair[0])]
            mean = np.array([q["change"][pair] for q in with_pair]).mean(0)
            low = int(mean.argmin())
            print(
                f"{pair:16s} {category:12s} n={len(with_pair):3d} min {mean[low]:+.3f} at layers "
                f"{starts[low]}-{starts[low] + width - 1}: " + " ".join(f"{x:+.3f}" for x in mean)
            )


def lens(out: Path) -> None:
    with ResultStore(out / "results.sqlite3", create=False) as store:
        rows = [r for r in store.rows() if r.experiment == "lens" and "on" in r.payload]
    on_tokens = np.array([r.metrics["on_tokens"] for r in rows], dtype=np.float64)
    off_tokens = np.array([r.metrics["off_tokens"] for r in rows], dtype=np.float64)
    on = np.array([[np.nan if v is None else v for v in r.payload["on"]] for r in rows])
    off = np.array([[np.nan if v is None else v for v in r.payload["off"]] for r in rows])
    on_pooled = np.nansum(on * on_tokens[:, None], 0) / on_tokens.sum()
    off_pooled = np.nansum(off * off_tokens[:, None], 0) / off_tokens.sum()
    print(f"{len(rows)} images, {int(on_tokens.sum())} on-object, {int(off_tokens.sum())} off")
    for layer, (a, b) in enumerate(zip(on_pooled, off_pooled, strict=True)):
        print(f"layer {rows[0].payload['layers'][layer]:3d}  on {a:.4f}  off {b:.4f}")
    print(
        f"images naming an object on its tokens: layer 0 {int((on[:, 0] > 0).sum())}, "
        f"last layer {int((on[:, -1] > 0).sum())} of {len(rows)}"
    )


if __name__ == "__main__":
    trace(Path(sys.argv[1]))
    lens(Path(sys.argv[2]))
