"""Cached frozen DINOv2 features and exact per-cell object labels of the training scenes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmflow.default_model.processor import GRID, NUM_IMAGE_TOKENS
from vlmflow.default_model.training.config import VISION_DIM
from vlmflow.errors import VlmflowError

FEATURE_FORMAT = 1  # version of the cache files: another value rebuilds them


@dataclass(frozen=True)
class FeatureCache:
    """Frozen DINOv2 features and exact per-cell labels of a list of scenes, on disk."""

    folder: Path
    features: np.ndarray  # (n, 256, 384) float16, memory-mapped
    cells: np.ndarray  # (n, 256) int16: 0 background, 1 + vocabulary index of the object
    scenes: list[dict[str, Any]]  # description, questions, names

    def __len__(self) -> int:
        return len(self.scenes)


def vocabulary_names() -> list[str]:
    from vlmflow.scenes import VOCABULARY

    return list(VOCABULARY)


def cell_labels(scene: Any, threshold: float) -> np.ndarray:
    """(256,) int16: per 14 px patch of the 224 px input, the object covering most of it."""
    index = {name: i for i, name in enumerate(vocabulary_names())}
    size = scene.size
    if size % GRID:
        raise VlmflowError(f"scene size {size} is not a multiple of {GRID}")
    step = size // GRID
    labels = scene.label_map()  # (size, size) uint8: 0 or 1 + object index
    best = np.zeros((GRID, GRID), dtype=np.float64)
    out = np.zeros((GRID, GRID), dtype=np.int16)
    for i, obj in enumerate(scene.objects):
        cover = (labels == i + 1).reshape(GRID, step, GRID, step).mean(axis=(1, 3))  # (16, 16)
        take = (cover > best) & (cover >= threshold)
        out[take] = 1 + index[obj.name]
        best = np.maximum(best, cover)
    return out.reshape(-1)


def scene_record(scene: Any) -> dict[str, Any]:
    return {
        "id": scene.id,
        "description": scene.description,
        "names": list(scene.names),
        "objects": [[o.name, o.position] for o in scene.objects],
        "questions": [[q.text, q.answer, q.category] for q in scene.questions],
    }


def build_feature_cache(
    folder: Path,
    scenes: Callable[[int, int], Iterable[Any]],
    count: int,
    *,
    threshold: float,
    chunk: int = 32,
    progress: Callable[[str], None] = print,
) -> FeatureCache:
    """Compute (or finish computing) the cache for scenes 0..count-1; resumable per chunk.

    `scenes(start, n)` yields scenes `start .. start + n - 1` of a fixed list.
    """
    from vlmflow.default_model.dinov2_onnx import load_dinov2
    from vlmflow.default_model.processor import image_processor

    folder.mkdir(parents=True, exist_ok=True)
    info_path = folder / "progress.json"
    fingerprint = {"format": FEATURE_FORMAT, "count": count, "threshold": threshold}
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    mode = "r+"
    if info is None or info.get("fingerprint") != fingerprint:
        info = {"fingerprint": fingerprint, "done": 0}
        mode = "w+"
    features = np.lib.format.open_memmap(
        folder / "features.npy",
        mode=mode,
        dtype=np.float16,
        shape=(count, NUM_IMAGE_TOKENS, VISION_DIM),
    )
    cells = np.lib.format.open_memmap(
        folder / "cells.npy", mode=mode, dtype=np.int16, shape=(count, NUM_IMAGE_TOKENS)
    )
    records_path = folder / "scenes.jsonl"
    done = int(info["done"])
    lines = records_path.read_text().splitlines()[:done] if records_path.is_file() else []
    records_path.write_text("".join(line + "\n" for line in lines))
    if done < count:
        tower = load_dinov2()
        processor = image_processor()
        started = time.perf_counter()
        first = done
        while done < count:
            batch = list(scenes(done, min(chunk, count - done)))
            pixels = processor([s.image for s in batch], return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                hidden = tower(pixels, output_hidden_states=True).hidden_states[-1]  # (b, 257, d)
            features[done : done + len(batch)] = hidden[:, 1:].numpy().astype(np.float16)
            cells[done : done + len(batch)] = np.stack([cell_labels(s, threshold) for s in batch])
            features.flush()
            cells.flush()
            with records_path.open("a") as handle:
                for s in batch:
                    handle.write(json.dumps(scene_record(s)) + "\n")
            done += len(batch)
            info["done"] = done
            _atomic_write_text(info_path, json.dumps(info))
            rate = (time.perf_counter() - started) / (done - first)
            progress(
                f"features {done}/{count}  {rate:.3f} s/scene  ETA {eta(rate * (count - done))}"
            )
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    if any("objects" not in r for r in records):  # written before records kept positions
        progress("adding object positions to the cached scene records")
        records = [scene_record(s) for s in scenes(0, count)]
        _atomic_write_text(records_path, "".join(json.dumps(r) + "\n" for r in records))
    return FeatureCache(
        folder=folder,
        features=np.load(folder / "features.npy", mmap_mode="r"),
        cells=np.load(folder / "cells.npy", mmap_mode="r"),
        scenes=records,
    )


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def eta(seconds: float) -> str:
    """Seconds as `0h00m00s`, for progress lines."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
