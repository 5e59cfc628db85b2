"""`localization`: do the attention peaks of fine details fall on their objects? (Fig. 6-7, A6)

Per image (paper Sec. 4.5 and App. C):
1. the baseline description, with the attention rows over the image captured at every layer,
   and the description under `image -> generated` knockout at all layers;
2. fine details: the objects of the baseline that the knocked-out description misses, from
   the judge (`details="mentioned"` takes every object of the baseline instead, a control);
3. for each detail with a mask, its generated tokens: tokens whose decoded text overlaps a
   mention of the object (its name, a synonym or a plural) in the baseline description;
4. per layer, the attention of those tokens over the image (heads averaged by the capture,
   then averaged over the tokens), its peak image token, and a hit when the peak's grid cell is
   within one cell (Chebyshev distance <= 1) of a cell the object's mask covers; the same for
   the attention averaged over a window of layers (default the middle quarter).

Which attention belongs to a token (`token_step`): the capture's step t is the forward pass that
produced generated token t, whose query is the previous token. `produced` (default) takes step t:
the attention paid while the model chose the object word, which is where the object has to be
read from the image. `query` takes step t + 1, where the object word itself is the query (the
last token has no such step and is dropped).

The peak is taken over the image tokens that have a place in the picture (the patch grids of
`layout.images[0][0].tiles`); separator and marker tokens of the image span have none. Each
tile's cells map to the picture through the tile's box, so base views, crops and thumbnails
are all scored against the same mask; a box reaching past the picture (padding) has cells no
mask pixel falls in. An empty tile (0 rows or 0 columns) holds no token and is never the peak;
an image whose tiles have no exact place for the processor's settings (`Tile.unplaced`) is
refused with a VlmflowError, and so is a model that reads its image through cross-attention only
(Llama 3.2 Vision: its maps lie over the tiles' vision states, `ImageSpan.states`).

Masks come from a `MaskSource`, chosen by the `masks` option. `auto` (default) follows the
image source: `scene` for `--images scenes` (the exact masks of the shipped scenes), `coco` for
`--images coco:...` (the union of the instance masks of the category the detail names,
`vlmflow.sources.coco`). `masks = "module:callable"` prompts your own text-prompted
segmenter with the detail's name, as the paper does with Grounded-SAM
(`vlmflow.experiments.segmenter`). Other sources plug in with
`register_mask_source(name, factory)`: they only have to return a boolean mask of the image for
an object name, and the words that name it.

Setting id: `details`, one result per image.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vlmflow.defaults import DEFAULT_PROMPT
from vlmflow.errors import VlmflowError
from vlmflow.experiments.description import Generation, describe
from vlmflow.experiments.knockout import JUDGES, Judge, scene_vocabulary
from vlmflow.experiments.prompts import check_question, item_prompt
from vlmflow.experiments.protocol import (
    Context,
    Result,
    WorkItem,
    image_items,
    parse_config,
    result_config,
)
from vlmflow.experiments.segmenter import SegmenterMasks, is_segmenter
from vlmflow.experiments.window import middle_window, parse_window
from vlmflow.sources import ImageRef, ImageSource
from vlmflow.sources.coco import CocoMasks, CocoSource
from vlmflow.sources.scenes import SceneRef, ScenesSource

if TYPE_CHECKING:
    from vlmflow.attention.capture import CaptureResult
    from vlmflow.models.layout import PromptLayout, Tile
    from vlmflow.models.loading import Handle, Prompt

SETTING = "details"
DETAILS = ("missed", "mentioned")
TOKEN_STEPS = ("produced", "query")
REACH = 1  # cells: "within one image-token distance" of the mask
AUTO = "auto"  # masks: the source that fits the images


# -- masks ----------------------------------------------------------------------------------


class MaskSource(Protocol):
    """Where object masks come from: the exact scene world, COCO annotations, a segmenter."""

    name: str

    def check(self, source: ImageSource) -> None:
        """Refuse, before any work, an image source this mask source cannot serve."""

    def forms(self, name: str) -> tuple[str, ...]:
        """Lower-case words and phrases that name the object in a description."""

    def mask(self, item: WorkItem, name: str) -> np.ndarray | None:
        """(H, W) bool over the image as given to the model; None if it shows no such object."""


def _union(scene: Any, name: str) -> np.ndarray:
    """(H, W) bool: every instance of object type `name` in `scene`."""
    return np.logical_or.reduce([o.mask for o in scene.objects if o.name == name])


class SceneMasks:
    """Exact masks of the shipped evaluation scenes; names through the scene vocabulary."""

    name = "scene"

    def __init__(self) -> None:
        self.vocabulary = scene_vocabulary()
        self._scene: tuple[int, Any] | None = None

    def check(self, source: ImageSource) -> None:
        if not isinstance(source, ScenesSource):
            raise VlmflowError(
                f"localization with masks=scene needs the scene world (got {source.key}): use "
                "--images scenes, --images coco:ANNOTATIONS.json or masks = 'module:callable'"
            )

    def forms(self, name: str) -> tuple[str, ...]:
        canonical = self.vocabulary.canonical(name) or name
        found = [s for s, n in self.vocabulary.surface.items() if n == canonical]
        return tuple(found) or (name.lower(),)

    def mask(self, item: WorkItem, name: str) -> np.ndarray | None:
        scene = self._scene_of(item)
        canonical = self.vocabulary.canonical(name)
        if canonical is None or canonical not in scene.names:
            return None
        return _union(scene, canonical)

    def objects(self, item: WorkItem) -> list[tuple[str, np.ndarray]]:
        """(name, (H, W) bool union of its instances) of every object type in the scene, in
        description order."""
        scene = self._scene_of(item)
        return [(name, _union(scene, name)) for name in scene.names]

    def _scene_of(self, item: WorkItem) -> Any:
        """The item's fixed scene (the last one is kept); VlmflowError if it is not a scene."""
        ref: ImageRef = item.payload["image"]
        if not isinstance(ref, SceneRef):
            raise VlmflowError(f"{item.item_id} is not a scene: masks=scene needs --images scenes")
        if self._scene is None or self._scene[0] != ref.scene_index:
            from vlmflow.scenes import load_fixed_scene

            self._scene = (ref.scene_index, load_fixed_scene(ref.scene_index))
        return self._scene[1]

    def canonical(self, word: str) -> str | None:
        """The object type a word or phrase names (name, synonym, plural), else None."""
        return self.vocabulary.canonical(word)


MASK_SOURCES: dict[str, Callable[[], MaskSource]] = {"scene": SceneMasks, "coco": CocoMasks}


class ObjectMasks(MaskSource, Protocol):
    """A mask source that knows every object of an image (annotated images, not a segmenter)."""

    def objects(self, item: WorkItem) -> list[tuple[str, np.ndarray]]:
        """(canonical name, (H, W) bool union of its instances) of every object in the image."""

    def canonical(self, word: str) -> str | None:
        """The canonical name a word or phrase names (synonyms, plurals), else None."""


def object_masks(images: ImageSource) -> ObjectMasks | None:
    """The masks of every object for images that have them: the scene world's exact masks for
    `--images scenes`, the instance masks of `--images coco:...`; None for other images."""
    found: ObjectMasks
    if isinstance(images, ScenesSource):
        found = SceneMasks()
    elif isinstance(images, CocoSource):
        found = CocoMasks()
    else:
        return None
    found.check(images)
    return found


def register_mask_source(name: str, factory: Callable[[], MaskSource]) -> None:
    """Make `masks=name` available to `localization` (e.g. another annotated dataset)."""
    MASK_SOURCES[name] = factory


def mask_source(spec: str, images: ImageSource | None = None) -> MaskSource:
    """The mask source `spec` names; `auto` picks by `images` (scene masks when unknown)."""
    if spec == AUTO:
        spec = "coco" if isinstance(images, CocoSource) else "scene"
    if spec in MASK_SOURCES:
        return MASK_SOURCES[spec]()
    return SegmenterMasks(spec)


# -- geometry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """A grid cell of one tile of the image's token layout."""

    tile: int
    row: int
    col: int


def tile_cells(mask: np.ndarray, tile: Tile) -> np.ndarray:
    """(rows, cols) bool: the cells of `tile` whose area holds at least one mask pixel.

    A pixel's top-left corner places it, as `SceneObject.grid_mask` does for a whole-image grid.
    """
    height, width = mask.shape
    x0, y0, x1, y1 = tile.box
    ys, xs = np.nonzero(mask)  # (n,) pixel coordinates
    fy, fx = ys / height, xs / width
    inside = (fy >= y0) & (fy < y1) & (fx >= x0) & (fx < x1)
    rows = np.floor((fy[inside] - y0) / (y1 - y0) * tile.rows + 1e-9).astype(np.int64)
    cols = np.floor((fx[inside] - x0) / (x1 - x0) * tile.cols + 1e-9).astype(np.int64)
    cells = np.zeros((tile.rows, tile.cols), dtype=bool)
    cells[np.clip(rows, 0, tile.rows - 1), np.clip(cols, 0, tile.cols - 1)] = True
    return cells


def is_hit(covered: np.ndarray, row: int, col: int, reach: int = REACH) -> bool:
    """True when cell (row, col) is within `reach` cells (Chebyshev) of a covered cell."""
    r0, c0 = max(0, row - reach), max(0, col - reach)
    return bool(covered[r0 : row + reach + 1, c0 : col + reach + 1].any())


@dataclass(frozen=True)
class TokenGrid:
    """The image's patch tokens as tiles of cells, indexed into the captured image row."""

    tiles: tuple[Tile, ...]
    index: tuple[tuple[int, ...], ...]  # per tile, row-major: indices into the image positions

    @classmethod
    def of(cls, layout: PromptLayout) -> TokenGrid:
        if len(layout.images[0]) != 1:
            raise VlmflowError("localization reads one image per prompt")
        if layout.images[0][0].states:
            raise VlmflowError(
                "localization scores image rows at prompt positions, and this model reads its"
                " image through cross-attention over its tiles: use maps for it"
            )
        layout.images[0][0].check_placed("localization")
        where = {p: i for i, p in enumerate(layout.image_positions(0))}
        tiles = layout.images[0][0].tiles
        return cls(tiles, tuple(tuple(where[p] for p in tile.positions) for tile in tiles))

    def peak(self, attention: np.ndarray) -> Cell:
        """The cell of the most attended patch token; attention: (n_image,) over the image."""
        best: tuple[float, int, int] | None = None
        for t, index in enumerate(self.index):
            if not index:  # an empty tile
                continue
            values = attention[list(index)]  # (rows * cols,)
            j = int(np.argmax(values))
            if best is None or float(values[j]) > best[0]:
                best = (float(values[j]), t, j)
        assert best is not None
        _, t, j = best
        return Cell(t, j // self.tiles[t].cols, j % self.tiles[t].cols)

    def covered(self, mask: np.ndarray) -> list[np.ndarray]:
        """Per tile, the (rows, cols) cells the mask covers."""
        return [tile_cells(mask, tile) for tile in self.tiles]

    def patches(self) -> list[int]:
        """Indices of the patch tokens, tile after tile (the layout of the stored maps)."""
        return [i for index in self.index for i in index]


# -- tokens of an object --------------------------------------------------------------------


def token_spans(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text and each token's character span in it (special tokens: empty spans)."""
    spans: list[tuple[int, int]] = []
    previous = ""
    for i in range(len(ids)):
        current = tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=True)
        start = 0
        while start < min(len(previous), len(current)) and previous[start] == current[start]:
            start += 1
        spans.append((start, len(current)))
        previous = current
    return previous, spans


def mention_tokens(text: str, spans: Sequence[tuple[int, int]], forms: Iterable[str]) -> list[int]:
    """Indices of the tokens whose text overlaps a whole-word mention of one of `forms`."""
    lowered = text.lower()
    mentions: list[tuple[int, int]] = []
    for form in sorted(set(forms), key=len, reverse=True):
        pattern = rf"(?<![a-z]){re.escape(form.lower())}(?![a-z])"
        mentions.extend(m.span() for m in re.finditer(pattern, lowered))
    found = []
    for i, (start, end) in enumerate(spans):
        for m0, m1 in mentions:
            if start < m1 and end > m0 and lowered[max(start, m0) : min(end, m1)].strip():
                found.append(i)
                break
    return found


# -- the experiment -------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalizationConfig:
    """Options of `localization`.

    `masks`: `auto` (by image source), `scene`, `coco`, a registered name, or
    `module:callable`, a segmenter (see the module doc). `details`: `missed` (the paper's fine
    details) or `mentioned`. `token_step`: `produced` or `query` (see the module doc).
    `window`: "A-B", the layers averaged for the window map; default the middle quarter.
    """

    masks: str = AUTO
    details: str = "missed"
    token_step: str = "produced"
    window: str | None = None
    max_new_tokens: int = 64
    prompt: str = DEFAULT_PROMPT
    question: str | None = None  # each image's own question instead (experiments.prompts)
    judge: str = "scene"
    judge_cache: bool = True

    def __post_init__(self) -> None:
        check_question(self.question)
        if self.masks != AUTO and self.masks not in MASK_SOURCES and not is_segmenter(self.masks):
            raise ValueError(
                f"masks {self.masks!r} is not one of {', '.join([AUTO, *MASK_SOURCES])} "
                "or module:callable"
            )
        if self.details not in DETAILS:
            raise ValueError(f"details {self.details!r} is not one of {', '.join(DETAILS)}")
        if self.token_step not in TOKEN_STEPS:
            raise ValueError(
                f"token_step {self.token_step!r} is not one of {', '.join(TOKEN_STEPS)}"
            )
        if self.window is not None:
            parse_window(self.window)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} must be at least 1")
        if self.judge not in JUDGES:
            raise ValueError(f"judge {self.judge!r} is not one of {', '.join(JUDGES)}")


@dataclass(frozen=True)
class Detail:
    """One fine detail scored at every layer and on the window map."""

    name: str
    tokens: tuple[int, ...]
    steps: tuple[int, ...]
    peaks: tuple[Cell, ...]  # per layer
    hits: tuple[int, ...]  # per layer, 0 or 1
    window_peak: Cell
    window_hit: int
    window_map: np.ndarray  # (n_patches,) float32, tiles in layout order

    def to_json(self) -> dict[str, Any]:
        return {
            "object": self.name,
            "tokens": list(self.tokens),
            "steps": list(self.steps),
            "peaks": [[c.tile, c.row, c.col] for c in self.peaks],
            "hits": list(self.hits),
            "window_peak": [self.window_peak.tile, self.window_peak.row, self.window_peak.col],
            "window_hit": self.window_hit,
        }


class Localization:
    """Per layer, does each fine detail's attention peak within one token of its object?"""

    name = "localization"
    needs_model = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = parse_config(LocalizationConfig, options, self.name)
        self.config = result_config(self.options)
        self.judge = Judge(self.options.judge, self.options.judge_cache)
        self.masks = mask_source(self.options.masks)

    def items(self, source: ImageSource) -> Iterable[WorkItem]:
        if self.options.masks == AUTO:
            self.masks = mask_source(AUTO, source)
        self.masks.check(source)
        return image_items(source)

    def settings(self, item: WorkItem) -> Sequence[str]:
        return [SETTING]

    def run(self, handle: Any, item: WorkItem, setting: str, context: Context) -> Result:
        from vlmflow.attention.knockout import Knockout

        opts = self.options
        ref: ImageRef = item.payload["image"]
        prompt = handle.prepare(ref.open(), item_prompt(opts.prompt, opts.question, ref))
        grid = TokenGrid.of(prompt.layout)  # refuses a layout it cannot score, before any run
        baseline, capture = self._baseline(handle, prompt)
        knocked, _ = describe(
            handle, prompt, opts.max_new_tokens, [Knockout.parse("image-generated", "all")]
        )
        verdict = self.judge.compare(baseline.text, knocked.text)
        names = verdict.missing if opts.details == "missed" else verdict.reference_objects
        num_layers = handle.num_layers
        a, b = parse_window(opts.window) if opts.window else middle_window(num_layers)
        if b >= num_layers:
            raise VlmflowError(f"window {a}-{b}: this model has layers 0-{num_layers - 1}")
        tokenizer = getattr(handle.processor, "tokenizer", handle.processor)
        text, spans = token_spans(tokenizer, baseline.ids)
        details: list[Detail] = []
        skipped: list[dict[str, str]] = []
        for name in names:
            mask = self.masks.mask(item, name)
            tokens = mention_tokens(text, spans, self.masks.forms(name))
            steps = self._steps(tokens, capture.num_steps)
            reason = (
                "not in the image"
                if mask is None
                else "no generated token names it"
                if not tokens
                else "no step has it as the query"
                if not steps
                else ""
            )
            if reason or mask is None:
                skipped.append({"object": name, "reason": reason})
                continue
            details.append(self._score(name, tokens, steps, mask, capture, grid, (a, b)))
        return self._result(baseline, knocked, details, skipped, grid, num_layers, (a, b))

    def _steps(self, tokens: list[int], num_steps: int) -> list[int]:
        if self.options.token_step == "produced":
            return [t for t in tokens if t < num_steps]
        return [t + 1 for t in tokens if t + 1 < num_steps]

    def _baseline(self, handle: Handle, prompt: Prompt) -> tuple[Generation, CaptureResult]:
        from vlmflow.attention.capture import Capture

        capture = Capture.of(fractions=False, image_layers="all", dtype="float32")
        generation, result = describe(handle, prompt, self.options.max_new_tokens, (), capture)
        assert result is not None
        return generation, result

    def _score(
        self,
        name: str,
        tokens: list[int],
        steps: list[int],
        mask: np.ndarray,
        capture: CaptureResult,
        grid: TokenGrid,
        window: tuple[int, int],
    ) -> Detail:
        covered = grid.covered(mask)
        maps: dict[int, np.ndarray] = {}
        for layer, rows in sorted(capture.image_rows.items()):  # rows: (steps, b, n_image)
            maps[layer] = rows[steps, 0].float().mean(0).numpy()  # (n_image,)
        peaks = [grid.peak(maps[layer]) for layer in sorted(maps)]
        hits = [int(is_hit(covered[c.tile], c.row, c.col)) for c in peaks]
        window_map = np.mean([maps[layer] for layer in range(window[0], window[1] + 1)], axis=0)
        window_peak = grid.peak(window_map)
        return Detail(
            name=name,
            tokens=tuple(tokens),
            steps=tuple(steps),
            peaks=tuple(peaks),
            hits=tuple(hits),
            window_peak=window_peak,
            window_hit=int(is_hit(covered[window_peak.tile], window_peak.row, window_peak.col)),
            window_map=window_map[grid.patches()].astype(np.float32),
        )

    def _result(
        self,
        baseline: Generation,
        knocked: Generation,
        details: list[Detail],
        skipped: list[dict[str, str]],
        grid: TokenGrid,
        num_layers: int,
        window: tuple[int, int],
    ) -> Result:
        n = len(details)
        per_layer = []
        for layer in range(num_layers):
            hits = sum(d.hits[layer] for d in details)
            per_layer.append(
                {"layer": layer, "hits": hits, "details": n, "accuracy": hits / n if n else None}
            )
        window_hits = sum(d.window_hit for d in details)
        n_patches = len(grid.patches())
        return Result(
            metrics={
                "details": n,
                "skipped": len(skipped),
                "window_hits": window_hits,
                "window_accuracy": window_hits / n if n else None,
            },
            payload={
                "baseline": baseline.text,
                "baseline_ids": list(baseline.ids),
                "knockout": knocked.text,
                "token_step": self.options.token_step,
                "window": list(window),
                "details": [d.to_json() for d in details],
                "skipped": skipped,
                "layers": per_layer,
                "tiles": [
                    {"kind": t.kind, "rows": t.rows, "cols": t.cols, "box": list(t.box)}
                    for t in grid.tiles
                ],
            },
            blobs={
                "hits": np.array([d.hits for d in details], dtype=np.uint8).reshape(n, num_layers),
                "window_maps": np.array([d.window_map for d in details], dtype=np.float16).reshape(
                    n, n_patches
                ),
            },
        )
