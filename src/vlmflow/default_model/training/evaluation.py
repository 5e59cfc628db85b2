"""Progress figures on cached scenes, read with the scene evaluator's parsers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vlmflow.default_model.training.features import FeatureCache
from vlmflow.default_model.training.trainer import Trainer


@dataclass(frozen=True)
class EvalResult:
    scenes: int
    precision: float
    recall: float
    yes_no_accuracy: float
    yes_no_by_category: dict[str, float]

    def line(self) -> str:
        cats = " ".join(f"{k}={v:.2f}" for k, v in sorted(self.yes_no_by_category.items()))
        return (
            f"scenes={self.scenes} object P={self.precision:.3f} R={self.recall:.3f} "
            f"yes/no={self.yes_no_accuracy:.3f} ({cats})"
        )


def evaluate(
    trainer: Trainer,
    cache: FeatureCache,
    *,
    batch_size: int = 8,
    progress: Callable[[str], None] = print,
) -> EvalResult:
    """Object precision/recall of descriptions and yes/no accuracy on the cached scenes.

    Descriptions and replies are read by the scene evaluator's own parsers
    (`vlmflow.scenes.vocabulary.mentioned_objects`, `vlmflow.scenes.evaluate.parse_yes_no`),
    so these progress figures measure what `vlmflow scenes evaluate` reports.
    """
    from vlmflow.scenes.evaluate import parse_yes_no
    from vlmflow.scenes.vocabulary import mentioned_objects

    tp = n_pred = n_true = 0
    right: dict[str, list[bool]] = {}
    for start in range(0, len(cache), batch_size):
        stop = min(len(cache), start + batch_size)
        feats = np.asarray(cache.features[start:stop])
        for record, text in zip(cache.scenes[start:stop], trainer.describe(feats), strict=True):
            pred, true = set(mentioned_objects(text)), set(record["names"])
            tp, n_pred, n_true = tp + len(pred & true), n_pred + len(pred), n_true + len(true)
        for i, record in enumerate(cache.scenes[start:stop]):
            questions = record["questions"]
            replies = trainer.first_tokens(
                np.repeat(feats[i : i + 1], len(questions), axis=0), [q[0] for q in questions]
            )
            for (_, answer, category), reply in zip(questions, replies, strict=True):
                right.setdefault(category, []).append(parse_yes_no(reply) == answer)
        progress(f"eval {stop}/{len(cache)}")
    every = [r for rs in right.values() for r in rs]
    return EvalResult(
        scenes=len(cache),
        precision=tp / n_pred if n_pred else 0.0,
        recall=tp / n_true if n_true else 0.0,
        yes_no_accuracy=sum(every) / len(every) if every else 0.0,
        yes_no_by_category={k: sum(v) / len(v) for k, v in right.items()},
    )
