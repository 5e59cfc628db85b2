"""Per-family `TokenRoles` resolvers: which prompt positions are image tokens, and their grid.

Everything else in vlmflow is family-agnostic; a new family needs one small class here that
finds its image spans in `input_ids` and lays their tokens out over the picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vlmflow.errors import VlmflowError
from vlmflow.models.layout import ImageSpan, PromptLayout, Tile, label_roles
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


def _grid(kind: str, positions: list[int], rows: int, cols: int, box: Any = None) -> Tile:
    return Tile(kind, rows, cols, tuple(positions), box or (0.0, 0.0, 1.0, 1.0))


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


class LlavaRoles(TokenRoles):
    """LLaVA-1.5: one square grid of `<image>` tokens per image (center crop of the image)."""

    family = "llava"
    model_types = ("llava",)

    def _per_image(self, image: ImageInput) -> int:
        n = self.processor.num_additional_image_tokens
        h, w = image.processed or (self.processor.image_processor.crop_size["height"],) * 2
        n += (h // self.processor.patch_size) * (w // self.processor.patch_size)
        if self.processor.vision_feature_select_strategy == "default":
            n -= 1
        return n

    def _box(self, image: ImageInput) -> tuple[float, float, float, float]:
        ip = self.processor.image_processor
        w, h = image.size
        if not getattr(ip, "do_center_crop", False) or w == h:
            return (0.0, 0.0, 1.0, 1.0)
        if w > h:
            f = h / w
            return ((1 - f) / 2, 0.0, (1 + f) / 2, 1.0)
        f = w / h
        return (0.0, (1 - f) / 2, 1.0, (1 + f) / 2)

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        spans, cursor = [], 0
        for k, image in enumerate(images):
            n = self._per_image(image)
            chunk = positions[cursor : cursor + n]
            cursor += n
            if len(chunk) < n:
                break
            side = _square(n, "llava")
            tile = _grid("image", chunk, side, side, self._box(image))
            spans.append(ImageSpan(k, chunk[0], chunk[-1] + 1, (tile,), (), image.size))
        return spans


class LlavaNextRoles(LlavaRoles):
    """LLaVA-NeXT: a base view, then the unpadded high-res grid with a newline after each row."""

    family = "llava_next"
    model_types = ("llava_next",)

    def _shape(self, image: ImageInput) -> tuple[int, int, int]:
        from transformers.image_processing_utils import select_best_resolution

        proc = self.processor
        w, h = image.size
        ch, cw = image.processed or (proc.image_processor.crop_size["height"],) * 2
        best_h, best_w = select_best_resolution((h, w), proc.image_processor.image_grid_pinpoints)
        ph, pw = ch // proc.patch_size, cw // proc.patch_size
        unpadded, rows = proc._get_unpadded_features(h, w, ph, pw, best_h // ch, best_w // cw)
        return ph * pw, rows, unpadded // rows

    def _per_image(self, image: ImageInput) -> int:
        base, rows, cols = self._shape(image)
        return base + rows * (cols + 1)

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        spans, cursor = [], 0
        for k, image in enumerate(images):
            base, rows, cols = self._shape(image)
            n = base + rows * (cols + 1)
            chunk = positions[cursor : cursor + n]
            cursor += n
            if len(chunk) < n:
                break
            side = _square(base, "llava_next base view")
            tiles = [_grid("base", chunk[:base], side, side)]
            grid, newlines = [], []
            for r in range(rows):
                row = chunk[base + r * (cols + 1) : base + (r + 1) * (cols + 1)]
                grid.extend(row[:cols])
                newlines.append(row[cols])
            tiles.append(_grid("grid", grid, rows, cols))
            spans.append(
                ImageSpan(k, chunk[0], chunk[-1] + 1, tuple(tiles), tuple(newlines), image.size)
            )
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

        ip = self.processor.image_processor
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
