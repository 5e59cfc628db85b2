"""Three checks of the descriptions in a `vlmflow scenes evaluate --out RECORDS` file, against
the shipped fixed scenes: whether each description names the scene's largest object, how many
of its "<name> in the <cell>" phrases put the object in a cell it occupies, and how many
position questions its description answers right (yes when it places that type in the asked
cell), beside how many the model's own yes/no replies got right: where a model places objects
well but answers position questions at chance, it cannot check a named cell in one answer.

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
from vlmflow.scenes.questions import position_text
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


def position_asked(question: str) -> tuple[str, str] | None:
    """(type, cell) of a position question's text, None for other questions."""
    for name in VOCABULARY:
        for cell in POSITIONS:
            if question == position_text(name, cell):
                return name, cell
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", type=Path, help="JSON lines of `vlmflow scenes evaluate --out`")
    args = parser.parse_args()
    try:
        records = [json.loads(line) for line in args.records.read_text().splitlines() if line]
    except (OSError, ValueError) as error:
        parser.error(f"{args.records}: {error}; write it with `vlmflow scenes evaluate --out`")
    largest_named = placed = placed_right = asked = read_right = replied_right = 0
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
        for question in record["questions"]:
            if (where := position_asked(question["text"])) is None:
                continue
            said = "yes" if where[1] in placements(text, where[0]) else "no"
            asked += 1
            read_right += said == question["answer"]
            replied_right += bool(question["correct"])
    print(f"largest object named: {largest_named} of {len(records)} descriptions")
    print(f"placements in an occupied cell: {placed_right} of {placed}")
    print(
        f"position questions right: {read_right} of {asked} read from the description, "
        f"{replied_right} of {asked} in the model's replies"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
