"""`lens`: the logit lens over each image's tokens (Neo et al. ICLR 2025; `vlmflow.analysis.lens`).

One setting per image (`lens`). Stored: per layer, each patch token's top-k words (as token ids
plus the words they decode to). On images with masks of every object (the scene world's exact
masks for `--images scenes`, the instance masks of `--images coco:...`:
`localization.object_masks`) also, per layer, the share of tokens on an object whose top-k words
name that object against the share of tokens on no object whose top-k words name any object of
the image. A token is on an object when its cell holds at least one pixel of the object's mask
(`localization.tile_cells`); a word names an object through the names, synonyms and plurals of
the mask source's vocabulary (the scene judge's for scenes, `knockout.scene_vocabulary`; COCO's
category names with `data/coco.json`'s synonyms, `coco.coco_vocabulary`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vlmflow.defaults import DEFAULT_PROMPT
from vlmflow.experiments.protocol import Context, Result, WorkItem, image_items, parse_config
from vlmflow.sources import ImageRef, ImageSource
from vlmflow.sources.coco import CocoRef
from vlmflow.sources.scenes import SceneRef

SETTING = "lens"
DIGITS = 6


@dataclass(frozen=True)
class LensConfig:
    """`prompt`: the text sent with the image; `top_k`: words per token and layer;
    `layers`: layer spec of the layers read."""

    prompt: str = DEFAULT_PROMPT
    top_k: int = 5
    layers: str = "all"


@dataclass(frozen=True)
class Naming:
    """Per layer, how often the lens names objects on and off their tokens."""

    on: list[float | None]  # (L,) share of on-object tokens naming their object
    off: list[float | None]  # (L,) share of off-object tokens naming an object of the image
    on_tokens: int
    off_tokens: int
    named: np.ndarray  # (L, p) bool: the token's top-k name an object (its own, when on one)


def naming(
    names: Sequence[Sequence[str | None]],  # (L * p, k) canonical name of each top-k word
    owners: Sequence[frozenset[str]],  # (p,) objects whose mask covers each token
    present: frozenset[str],
    layers: int,
) -> Naming:
    """Shares of tokens whose top-k words name an object, on and off the objects, per layer."""
    p = len(owners)
    named = np.zeros((layers, p), dtype=bool)
    for i, words in enumerate(names):
        layer, token = divmod(i, p)
        said = {w for w in words if w is not None}
        named[layer, token] = bool(said & owners[token]) if owners[token] else bool(said & present)
    on = np.array([bool(o) for o in owners])
    on_share = [float(named[l_, on].mean()) if on.any() else None for l_ in range(layers)]
    off_share = [float(named[l_, ~on].mean()) if (~on).any() else None for l_ in range(layers)]
    return Naming(on_share, off_share, int(on.sum()), int((~on).sum()), named)


class LensExperiment:
    """Top-k lens words of every image token per layer; on/off-object naming where the images
    have masks of every object (scene world, COCO)."""

    name = "lens"
    needs_model = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = parse_config(LensConfig, options, self.name)
        self.config = asdict(self.options)
        self._masks: Any = None  # localization.ObjectMasks of the listed source, if it has any

    def items(self, source: ImageSource) -> Iterable[WorkItem]:
        from vlmflow.experiments.localization import object_masks

        self._masks = object_masks(source)
        return image_items(source)

    def settings(self, item: WorkItem) -> Sequence[str]:
        return [SETTING]

    def run(self, handle: Any, item: WorkItem, setting: str, context: Context) -> Result:
        from vlmflow.analysis.lens import lens_prompt
        from vlmflow.experiments.localization import TokenGrid

        ref: ImageRef = item.payload["image"]
        prompt = handle.prepare(ref.open(), self.options.prompt)
        grid = TokenGrid.of(prompt.layout)
        where = prompt.layout.image_positions(0)
        positions = [where[i] for i in grid.patches()]  # tile after tile, row-major
        seen = lens_prompt(
            handle,
            prompt,
            top_k=self.options.top_k,
            layers=self.options.layers,
            positions=positions,
        )
        ids = seen.ids.numpy().astype(np.int32)  # (L, p, k)
        words = {int(i): w for i, w in zip(ids.ravel(), _flat(seen.words), strict=True)}
        tiles = [
            {"rows": t.rows, "cols": t.cols, "box": list(t.box), "kind": t.kind} for t in grid.tiles
        ]
        payload: dict[str, Any] = {
            "layers": list(seen.layers),
            "tiles": tiles,
            "words": {str(k): v for k, v in sorted(words.items())},
            "top_k": self.options.top_k,
        }
        metrics: dict[str, Any] = {"image_tokens": len(positions)}
        blobs: dict[str, Any] = {"ids": ids}
        masks = self._object_masks(ref)
        if masks is not None:
            result = _object_naming(masks, item, grid, ids, words, seen.layers)
            payload.update(
                on=_round(result.naming.on), off=_round(result.naming.off), objects=result.objects
            )
            blobs["named"] = result.naming.named
            metrics.update(result.metrics)
        return Result(metrics=metrics, payload=payload, blobs=blobs)

    def _object_masks(self, ref: ImageRef) -> Any:
        """The listed source's object masks for a scene or COCO image; None for others. A scene
        needs no listing first; a COCO image does (its masks refuse to run without a source)."""
        if not isinstance(ref, SceneRef | CocoRef):
            return None
        if self._masks is None:
            from vlmflow.experiments.localization import SceneMasks
            from vlmflow.sources.coco import CocoMasks

            self._masks = SceneMasks() if isinstance(ref, SceneRef) else CocoMasks()
        return self._masks


def _object_naming(
    masks: Any,  # localization.ObjectMasks
    item: WorkItem,
    grid: Any,
    ids: np.ndarray,  # (L, p, k)
    words: Mapping[int, str],
    layers_of: Sequence[int],
) -> _ObjectNaming:
    """On/off-object naming of one image from its object masks and their vocabulary."""
    objects = masks.objects(item)  # [(name, (H, W) bool)]
    owners: list[set[str]] = [set() for _ in grid.patches()]
    for name, mask in objects:
        covered = np.concatenate([c.ravel() for c in grid.covered(mask)])  # (p,)
        for i in np.nonzero(covered)[0]:
            owners[int(i)].add(name)
    canonical = {i: masks.canonical(w.strip()) for i, w in words.items()}
    layers, p, k = ids.shape
    names = [[canonical[int(i)] for i in row] for row in ids.reshape(layers * p, k)]
    present = [name for name, _ in objects]
    result = naming(names, [frozenset(o) for o in owners], frozenset(present), layers)
    return _ObjectNaming(result, present, layers_of)


@dataclass(frozen=True)
class _ObjectNaming:
    naming: Naming
    objects: list[str]
    layers: Sequence[int]

    @property
    def metrics(self) -> dict[str, Any]:
        on = [v if v is not None else -1.0 for v in self.naming.on]
        best = int(np.argmax(on)) if on else 0
        off = self.naming.off[best] if self.naming.off else None
        return {
            "on_tokens": self.naming.on_tokens,
            "off_tokens": self.naming.off_tokens,
            "best_layer": self.layers[best],
            "on_share_best": round(on[best], DIGITS) if on and on[best] >= 0 else None,
            "off_share_best": round(off, DIGITS) if off is not None else None,
        }


def _flat(words: Sequence[Sequence[Sequence[str]]]) -> list[str]:
    return [w for layer in words for token in layer for w in token]


def _round(values: Sequence[float | None]) -> list[float | None]:
    return [round(v, DIGITS) if v is not None else None for v in values]
