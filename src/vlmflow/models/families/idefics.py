"""Idefics3 and SmolVLM: `<row_i_col_j>` tiles then `<global-img>`, wrapped in
`<fake_token_around_image>` tokens."""

from __future__ import annotations

from typing import Any

from vlmflow.models.families.geometry import _grid, _square
from vlmflow.models.families.registry import ImageInput, TokenRoles, register
from vlmflow.models.layout import ImageSpan


@register
class IdeficsRoles(TokenRoles):
    """Idefics3 / SmolVLM: `<row_i_col_j>` tiles then `<global-img>`, wrapped in fake tokens."""

    family = "idefics3"
    model_types = ("idefics3", "smolvlm")

    def processor_images(self, per_row: list[list[Any]]) -> list[Any]:
        """The processor takes one list of images per row."""
        return per_row

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
