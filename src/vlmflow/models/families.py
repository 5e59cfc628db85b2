"""Per-family `TokenRoles` resolvers: which prompt positions are image tokens, and their grid.

Everything else in vlmflow is family-agnostic; a new family needs one small class here that
finds its image spans in `input_ids` and lays their tokens out over the picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from vlmflow.errors import VlmflowError
from vlmflow.models.layout import WHOLE, Box, ImageSpan, PromptLayout, Tile, crop_box, label_roles
from vlmflow.roles import Role


@dataclass(frozen=True)
class ImageInput:
    """What the processor did with one image: its original size and family-specific extras."""

    size: tuple[int, int]  # original (width, height)
    grid_thw: tuple[int, int, int] | None = None  # Qwen2-VL family
    processed: tuple[int, int] | None = None  # (height, width) of one processed crop


def _square(n: int, what: str) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise VlmflowError(f"{what}: {n} image tokens do not form a square grid")
    return side


def _grid(kind: str, positions: list[int], rows: int, cols: int, box: Box = WHOLE) -> Tile:
    return Tile(kind, rows, cols, tuple(positions), box)


class TokenRoles:
    """Labels prompt positions prefix / image / query and lays image tokens out on the image."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, processor: Any, config: Any) -> None:
        self.processor = processor
        self.config = config
        self.image_token_id = int(config.image_token_id)

    # -- per family -------------------------------------------------------------------------
    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------
    def layout(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        images: list[list[ImageInput]],
    ) -> PromptLayout:
        """Roles for a (b, n) batch; `images[row]` lists the images of that row in order."""
        rows, all_spans = [], []
        for r in range(input_ids.shape[0]):
            ids = input_ids[r].tolist()
            pad = 0
            if attention_mask is not None:
                mask = attention_mask[r].tolist()
                while pad < len(mask) and mask[pad] == 0:
                    pad += 1
            spans = self.spans(ids, images[r] if r < len(images) else [], 0)
            if len(spans) != len(images[r] if r < len(images) else []):
                raise VlmflowError(
                    f"found {len(spans)} image spans for {len(images[r])} images in row {r}: "
                    "build prompts with handle.prepare() so image tokens match the images"
                )
            rows.append(label_roles(len(ids), spans, pad))
            all_spans.append(tuple(spans))
        codes = torch.tensor(rows, dtype=torch.int8)
        return PromptLayout(codes=codes, images=tuple(all_spans))

    def _runs(self, ids: list[int], member: set[int]) -> list[list[int]]:
        """Maximal runs of consecutive positions whose ids are in `member`."""
        runs: list[list[int]] = []
        for i, t in enumerate(ids):
            if t in member:
                if runs and runs[-1][-1] == i - 1:
                    runs[-1].append(i)
                else:
                    runs.append([i])
        return runs


@dataclass(frozen=True)
class _Grid:
    """Where one grid of image tokens lies: rows x cols cells over `box` of the image."""

    rows: int
    cols: int
    box: Box
    unplaced: str = ""

    def tile(self, kind: str, positions: list[int]) -> Tile:
        return Tile(kind, self.rows, self.cols, tuple(positions), self.box, self.unplaced)


class _Options:
    """The image processor's settings as its processor applies them: the processor's own
    `images_kwargs` and the `_defaults` of its kwargs class win over the image processor's
    attributes (transformers' `ProcessorMixin._merge_kwargs`; InternVL forces
    `crop_to_patches=True` that way)."""

    def __init__(self, processor: Any) -> None:
        self.ip = processor.image_processor
        kwargs_class = getattr(processor, "valid_processor_kwargs", None)
        defaults = getattr(kwargs_class, "_defaults", {}) or {}
        self.overrides = {
            **(getattr(processor, "images_kwargs", None) or {}),
            **(defaults.get("images_kwargs", {}) or {}),
        }

    def __getattr__(self, name: str) -> Any:
        if name in self.overrides:
            return self.overrides[name]
        return getattr(self.ip, name)


def _shape(height: int, width: int) -> np.ndarray:
    """A (3, height, width) array of no memory: transformers' size helpers read only shapes."""
    return np.broadcast_to(np.zeros((), np.uint8), (3, height, width))


def _resized(ip: Any, height: int, width: int) -> tuple[int, int]:
    """(height, width) that the image processor's `resize` makes of a height x width picture,
    by the rules of transformers' `PilBackend.resize` / `TorchvisionBackend.resize`."""
    from transformers.image_transforms import (
        get_resize_output_image_size,
        get_size_with_aspect_ratio,
    )
    from transformers.image_utils import (
        ChannelDimension,
        SizeDict,
        get_image_size_for_max_height_width,
    )

    size = ip.size if isinstance(ip.size, SizeDict) else SizeDict(**ip.size)
    if size.shortest_edge and size.longest_edge:
        out = get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge)
    elif size.shortest_edge:
        out = get_resize_output_image_size(
            _shape(height, width),
            size=size.shortest_edge,
            default_to_square=False,
            input_data_format=ChannelDimension.FIRST,
        )
    elif size.max_height and size.max_width:
        out = get_image_size_for_max_height_width((height, width), size.max_height, size.max_width)
    elif size.height and size.width:
        out = (size.height, size.width)
    else:
        raise VlmflowError(f"image processor size {dict(size)} has no resize rule vlmflow knows")
    return int(out[0]), int(out[1])


def _crop_origin(ip: Any, length: int, crop: int) -> int:
    """First pixel of a center crop of `crop` pixels out of `length` (negative: padded)."""
    from transformers.image_processing_backends import PilBackend

    if crop <= length or isinstance(ip, PilBackend):
        return (length - crop) // 2  # PIL pads by ceil((crop - length) / 2) before
    return -((crop - length) // 2)  # torchvision pads by floor((crop - length) / 2)


def _standard_resize(ip: Any) -> bool:
    from transformers.image_processing_backends import PilBackend, TorchvisionBackend

    return type(ip).resize in (PilBackend.resize, TorchvisionBackend.resize)


def _resize_and_crop(opts: _Options, box: Box, width: int, height: int) -> tuple[Box, int, int]:
    """A CLIP-style image processor's resize then center crop of a width x height picture that
    shows `box` of the image: the box the result shows, and its width and height."""
    if opts.do_resize:
        height, width = _resized(opts, height, width)
    if opts.do_center_crop:
        ch, cw = int(opts.crop_size["height"]), int(opts.crop_size["width"])
        left, top = _crop_origin(opts.ip, width, cw), _crop_origin(opts.ip, height, ch)
        box = crop_box(box, (width, height), (left, top, left + cw, top + ch))
        width, height = cw, ch
    return box, width, height


def _cells(box: Box, height: int, width: int, patch: int) -> _Grid:
    """The patch grid of a height x width picture showing `box`: a remainder under one patch at
    the bottom or right is not seen by the vision tower."""
    rows, cols = height // patch, width // patch
    return _Grid(rows, cols, crop_box(box, (width, height), (0, 0, cols * patch, rows * patch)))


class LlavaRoles(TokenRoles):
    """LLaVA-1.5: one grid of `<image>` tokens per image.

    The grid lies where the image processor put the picture: `do_pad` (LLaVA's pad to square)
    widens the box past the image, the resize (shortest edge, height and width, longest edge,
    max height and width) keeps it, the center crop narrows it. Tokens the processor adds before
    the grid (CLS with `vision_feature_select_strategy="full"`) count as separators.
    """

    family = "llava"
    model_types = ("llava",)

    def _extra(self) -> int:
        n = int(self.processor.num_additional_image_tokens)
        return n - 1 if self.processor.vision_feature_select_strategy == "default" else n

    def _unplaced(self) -> str:
        ip = self.processor.image_processor
        if not _standard_resize(ip):
            return f"{type(ip).__name__} resizes by its own rules"
        return ""

    def _image_grid(self, image: ImageInput) -> _Grid:
        ip = _Options(self.processor)
        w, h = image.size
        box: Box = WHOLE
        if getattr(ip, "do_pad", False) and hasattr(ip.ip, "pad_to_square"):
            side = max(w, h)
            left, top = (side - w) // 2, (side - h) // 2
            box = crop_box(box, (w, h), (-left, -top, side - left, side - top))
            w = h = side
        if self._unplaced():
            return _Grid(0, 0, box, self._unplaced())
        box, w, h = _resize_and_crop(ip, box, w, h)
        ph, pw = image.processed or (h, w)
        if (ph, pw) != (h, w):  # the batch padding of `do_pad` (PilBackend): bottom and right
            box = crop_box(box, (w, h), (0, 0, pw, ph))
        return _cells(box, ph, pw, int(self.processor.patch_size))

    def _per_image(self, image: ImageInput) -> int:
        ip = _Options(self.processor)
        p = int(self.processor.patch_size)
        h, w = image.processed or (int(ip.crop_size["height"]), int(ip.crop_size["width"]))
        return self._extra() + (h // p) * (w // p)

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        spans, cursor, extra = [], 0, self._extra()
        for k, image in enumerate(images):
            n = self._per_image(image)
            chunk = positions[cursor : cursor + n]
            cursor += n
            if len(chunk) < n:
                break
            grid = self._image_grid(image)
            if grid.unplaced:
                side = _square(n - extra, "llava")
                grid = _Grid(side, side, WHOLE, grid.unplaced)
            elif grid.rows * grid.cols != n - extra:
                raise VlmflowError(
                    f"llava: {n - extra} image tokens for a {grid.rows} x {grid.cols} patch grid"
                )
            tile = grid.tile("image", chunk[extra:])
            spans.append(
                ImageSpan(k, chunk[0], chunk[-1] + 1, (tile,), tuple(chunk[:extra]), image.size)
            )
        return spans


class LlavaNextRoles(LlavaRoles):
    """LLaVA-NeXT: a base view, then the unpadded high-res grid with a newline after each row.

    The base view is the whole image squeezed to the processor's size (then resized and center
    cropped like every crop). The high-resolution grid: the image is resized into the best
    pinpoint resolution keeping its aspect ratio, padded to it (centered), cut into crops whose
    token grids join into one feature grid, and the model cuts the padded rows (or columns) off
    that grid again. A very thin image keeps 0 rows (or 0 columns): an empty grid, no tokens.
    """

    family = "llava_next"
    model_types = ("llava_next",)

    def _grids(self, image: ImageInput) -> tuple[_Grid, _Grid]:
        from transformers.image_processing_utils import (
            get_patch_output_size,
            select_best_resolution,
        )
        from transformers.image_utils import ChannelDimension

        proc, ip = self.processor, _Options(self.processor)
        p = int(proc.patch_size)
        w, h = image.size
        ch, cw = image.processed or (int(ip.crop_size["height"]), int(ip.crop_size["width"]))
        unplaced = self._unplaced()
        size = ip.size
        sh, sw = (
            (size["height"], size["width"])
            if size.get("height") and size.get("width")
            else (size["shortest_edge"],) * 2
        )
        base_box, bw, bh = (WHOLE, cw, ch) if unplaced else _resize_and_crop(ip, WHOLE, sw, sh)
        if (bh, bw) != (ch, cw):
            unplaced = unplaced or f"the base view is {bw} x {bh} px, the crops {cw} x {ch} px"
        base = _cells(base_box, ch, cw, p)
        base_unplaced = unplaced
        best_h, best_w = select_best_resolution((h, w), ip.image_grid_pinpoints)
        nh, nw = get_patch_output_size(_shape(h, w), (best_h, best_w), ChannelDimension.FIRST)
        (top, _), (left, _) = ip.ip._get_padding_size((nh, nw), (best_h, best_w))
        canvas = crop_box(WHOLE, (nw, nh), (-left, -top, best_w - left, best_h - top))
        tile = ip.crop_size["height"] if ip.crop_size else (size.get("height") or sh)
        tile_box, tw, th = (WHOLE, cw, ch) if unplaced else _resize_and_crop(ip, WHOLE, tile, tile)
        if tile_box != WHOLE or (th, tw) != (ch, cw) or (tile, tile) != (ch, cw):
            unplaced = unplaced or (
                f"each {tile} px crop of the grid becomes {tw} x {th} px showing {tile_box}"
            )
        if best_h % ch or best_w % cw or ch % p or cw % p:
            unplaced = unplaced or f"crops of {cw} x {ch} px do not tile {best_w} x {best_h}"
        scale_h, scale_w = best_h // ch, best_w // cw
        fh, fw = (ch // p) * scale_h, (cw // p) * scale_w  # the whole feature grid
        features = crop_box(canvas, (best_w, best_h), (0, 0, scale_w * cw, scale_h * ch))
        unpadded, rows = proc._get_unpadded_features(h, w, ch // p, cw // p, scale_h, scale_w)
        if rows < fh:  # rows cut off: columns all kept
            cols, cut_r, cut_c = fw, (fh - rows) // 2, 0
        else:
            cols = unpadded // rows
            cut_r, cut_c = 0, (fw - cols) // 2
        box = crop_box(features, (fw, fh), (cut_c, cut_r, fw - cut_c, fh - cut_r))
        return (
            _Grid(base.rows, base.cols, base.box, base_unplaced),
            _Grid(rows, cols, box, unplaced),
        )

    def _per_image(self, image: ImageInput) -> int:
        base, grid = self._grids(image)
        return self._extra() + base.rows * base.cols + grid.rows * (grid.cols + 1)

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        spans, cursor, extra = [], 0, self._extra()
        for k, image in enumerate(images):
            base, grid = self._grids(image)
            first = extra + base.rows * base.cols
            n = first + grid.rows * (grid.cols + 1)
            chunk = positions[cursor : cursor + n]
            cursor += n
            if len(chunk) < n:
                break
            cells, newlines = [], []
            for r in range(grid.rows):
                row = chunk[first + r * (grid.cols + 1) : first + (r + 1) * (grid.cols + 1)]
                cells.extend(row[: grid.cols])
                newlines.append(row[grid.cols])
            tiles = (base.tile("base", chunk[extra:first]), grid.tile("grid", cells))
            seps = (*chunk[:extra], *newlines)
            spans.append(ImageSpan(k, chunk[0], chunk[-1] + 1, tiles, seps, image.size))
        return spans


class QwenVLRoles(TokenRoles):
    """Qwen2-VL / Qwen2.5-VL: `<|vision_start|>`, merged patch tokens, `<|vision_end|>`."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        start_id = int(self.config.vision_start_token_id)
        end_id = int(self.config.vision_end_token_id)
        merge = int(self.config.vision_config.spatial_merge_size)
        runs = self._runs(ids, {self.image_token_id})
        spans = []
        for k, (run, image) in enumerate(zip(runs, images, strict=False)):
            if image.grid_thw is None:
                raise VlmflowError("qwen2_vl: image_grid_thw missing: build inputs with prepare()")
            t, gh, gw = image.grid_thw
            rows, cols = gh // merge, gw // merge
            seps = []
            start, end = run[0], run[-1] + 1
            if start > 0 and ids[start - 1] == start_id:
                start -= 1
                seps.append(start)
            if end < len(ids) and ids[end] == end_id:
                seps.append(end)
                end += 1
            tiles = tuple(
                _grid(
                    "image" if t == 1 else f"frame{f}",
                    run[f * rows * cols : (f + 1) * rows * cols],
                    rows,
                    cols,
                )
                for f in range(t)
            )
            spans.append(ImageSpan(k, start, end, tiles, tuple(seps), image.size))
        return spans


class InternVLRoles(TokenRoles):
    """InternVL: `<img>`, tiles of `<IMG_CONTEXT>` tokens (thumbnail last), `</img>`."""

    family = "internvl"
    model_types = ("internvl",)

    def _tiles(self, image: ImageInput) -> tuple[int, int]:
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
            get_optimal_tiled_canvas,
        )

        ip = _Options(self.processor)
        if not getattr(ip, "crop_to_patches", False) or ip.max_patches <= 1:
            return 1, 1
        w, h = image.size
        size = (ip.size["height"], ip.size["width"])
        cols, rows = get_optimal_tiled_canvas((h, w), size, ip.min_patches, ip.max_patches)
        return rows, cols

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        seq = int(self.processor.image_seq_length)
        side = _square(seq, "internvl tile")
        runs = self._runs(ids, {self.image_token_id})
        spans = []
        for k, (run, image) in enumerate(zip(runs, images, strict=False)):
            rows, cols = self._tiles(image)
            count = rows * cols + (1 if rows * cols > 1 else 0)
            if len(run) != count * seq:
                raise VlmflowError(
                    f"internvl: expected {count * seq} image tokens, found {len(run)}"
                )
            tiles = []
            for i in range(rows * cols):
                r, c = divmod(i, cols)
                box = (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows)
                kind = "tile" if count > 1 else "image"
                tiles.append(_grid(kind, run[i * seq : (i + 1) * seq], side, side, box))
            if count > 1:
                tiles.append(_grid("thumbnail", run[-seq:], side, side))
            start, end = run[0] - 1, run[-1] + 2  # <img> ... </img>
            spans.append(ImageSpan(k, start, end, tuple(tiles), (start, end - 1), image.size))
        return spans


class IdeficsRoles(TokenRoles):
    """Idefics3 / SmolVLM: `<row_i_col_j>` tiles then `<global-img>`, wrapped in fake tokens."""

    family = "idefics3"
    model_types = ("idefics3", "smolvlm")

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        tok = self.processor.tokenizer
        fake = tok.convert_tokens_to_ids("<fake_token_around_image>")
        glob = tok.convert_tokens_to_ids("<global-img>")
        tags = {
            tok.convert_tokens_to_ids(f"<row_{i + 1}_col_{j + 1}>"): (i, j)
            for i in range(6)
            for j in range(6)
        }
        spans: list[ImageSpan] = []
        i, n = 0, len(ids)
        while i < n and len(spans) < len(images):
            if ids[i] != fake or i + 1 >= n or (ids[i + 1] not in tags and ids[i + 1] != glob):
                i += 1
                continue
            start, cells, seps = i, [], []
            while i < n:
                if ids[i] == fake:
                    seps.append(i)
                    i += 1
                    if i < n and (ids[i] in tags or ids[i] == glob):
                        kind = tags.get(ids[i])
                        seps.append(i)
                        i += 1
                        run = []
                        while i < n and ids[i] == self.image_token_id:
                            run.append(i)
                            i += 1
                        cells.append((kind, run))
                        if kind is None:  # the global image closes the span with a fake token
                            if i < n and ids[i] == fake:
                                seps.append(i)
                                i += 1
                            break
                    elif cells and cells[-1][0] is None:
                        break
                elif ids[i] == self.image_token_id:
                    i += 1
                else:  # text between tiles (the processor's newlines)
                    seps.append(i)
                    i += 1
            split = [c for c in cells if c[0] is not None]
            nrows = max((c[0][0] for c in split if c[0]), default=-1) + 1
            ncols = max((c[0][1] for c in split if c[0]), default=-1) + 1
            tiles = []
            for kind, run in cells:
                side = _square(len(run), "idefics3 tile")
                if kind is None:
                    tiles.append(_grid("thumbnail" if split else "image", run, side, side))
                else:
                    r, c = kind
                    box = (c / ncols, r / nrows, (c + 1) / ncols, (r + 1) / nrows)
                    tiles.append(_grid("tile", run, side, side, box))
            image = images[len(spans)]
            spans.append(ImageSpan(len(spans), start, i, tuple(tiles), tuple(seps), image.size))
        return spans


RESOLVERS: tuple[type[TokenRoles], ...] = (
    LlavaRoles,
    LlavaNextRoles,
    QwenVLRoles,
    InternVLRoles,
    IdeficsRoles,
)
SUPPORTED_MODEL_TYPES = tuple(t for r in RESOLVERS for t in r.model_types)


def resolver_for(model_type: str) -> type[TokenRoles]:
    for cls in RESOLVERS:
        if model_type in cls.model_types:
            return cls
    raise VlmflowError(
        f"unsupported model family {model_type!r}: vlmflow supports "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}"
    )


__all__ = ["RESOLVERS", "SUPPORTED_MODEL_TYPES", "ImageInput", "Role", "TokenRoles", "resolver_for"]
