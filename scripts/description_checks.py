"""Two checks of the descriptions in a `vlmflow scenes evaluate --out RECORDS` file, against the
shipped fixed scenes: whether each description names the scene's largest object, and how many
of its "<name> in the <cell>" phrases put the object in a cell it occupies.

    vlmflow scenes evaluate --model M --json --out records.jsonl
    python scripts/description_checks.py records.jsonl

Reads only the records and the stored scenes, so it takes seconds and no model.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from vlmflow.scenes.fixed import load_fixed_scene
from vlmflow.scenes.layout import POSITIONS
from vlmflow.scenes.vocabulary import VOCABULARY, mentioned_objects

CELLS = "|".join(sorted(POSITIONS, key=len, reverse=True))


def placements(description: str, name: str) -> list[str]:
    """Cells that `description` places objects of type `name` in ("a cat in the top left",
    "two cats in the top left and in the center")."""
    kind = VOCABULARY[name]
    words = "|".join(re.escape(w) for w in sorted({name, kind.plural}, key=len, reverse=True))
    out = []
    for match in re.finditer(rf"\b(?:{words}) ((?:(?:,| and)? ?in the (?:{CELLS}))+)", description):
        out += re.findall(rf"in the ({CELLS})", match.group(1))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", type=Path, help="JSON lines of `vlmflow scenes evaluate --out`")
    args = parser.parse_args()
    records = [json.loads(line) for line in args.records.read_text().splitlines() if line]
    largest_named = placed = placed_right = 0
    for record in records:
        scene = load_fixed_scene(int(record["scene"].removeprefix("fixed-")))
        text = record["description"]
        largest = max(scene.objects, key=lambda o: o.area)
        largest_named += largest.name in mentioned_objects(text)
        for name in {o.name for o in scene.objects}:
            held = {o.position for o in scene.objects if o.name == name}
            cells = placements(text, name)
            placed += len(cells)
            placed_right += sum(cell in held for cell in cells)
    print(f"largest object named: {largest_named} of {len(records)} descriptions")
    print(f"placements in an occupied cell: {placed_right} of {placed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
