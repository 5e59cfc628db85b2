"""The judge prompt of the paper (Appendix B, Fig. A2), asking for JSON instead of prose.

The instructions keep the paper's wording: tangible physical objects, no colours, attributes or
positions, the first caption is the ground truth. Three worked examples follow, as the paper used:
its printed cyclist example plus two more (a kitchen with hallucinated objects, a street with
hypernyms and a negation). The model returns object lists and matches; precision, recall and F1
are counted in code. (The paper's printed evaluation lists "The horses" among both the false
negatives and the true positives; the JSON version here lists them only as missing.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

PROMPT_VERSION = "paper-a2-json-v1"

INSTRUCTIONS = """\
You are an expert in evaluating the quality of image captions. You will be given two image \
captions. Your task is to compare them in terms of the physical objects they mention, using the \
first caption as the groundtruth and the second caption as the prediction.

Evaluation steps:
1. Extract for each caption the list of *physical objects* that are present in it. Detect only \
tangible objects that can be interacted with. Ignore colors or other attributes, or even \
positioning of objects in the scene. Places and surfaces (room, kitchen, street, road, sidewalk, \
field, grass, ground, wall, floor), water, sky, clouds, weather, light, lines and markings are not \
physical objects. Body parts are not separate objects. Objects that a caption says are absent \
("no cars are visible") are not present in it. List each kind of object once, by the caption's \
own word in singular form.
2. Match the two lists: a groundtruth object and a predicted object match when they refer to the \
same object, even if worded differently: synonyms ("fridge" / "refrigerator"), a more general \
or more specific name ("cyclist" / "person", "puppy" / "dog"). Each object is matched at most once.
3. Unmatched groundtruth objects are false negatives; unmatched predicted objects are false \
positives (hallucinated).

Think step by step, then answer with one JSON object and nothing else, with the keys:
"reasoning" (a short string), "reference_objects" (list of strings), "reference_ignored" (list of \
strings: mentioned things that are not physical objects), "candidate_objects", \
"candidate_ignored", and "matches" (list of {"reference": ..., "candidate": ...}, using names \
exactly as in the two object lists)."""


def _pair_message(reference: str, candidate: str) -> str:
    return f"Groundtruth caption:\n{reference}\n\nPredicted caption:\n{candidate}"


EXAMPLES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "The image depicts a cyclist riding a road bike on a paved road. The cyclist is wearing a "
        "red helmet, black and white cycling jersey, black shorts, and white cycling shoes. They "
        "are also carrying a black backpack. The road is marked with a double yellow line down "
        "the center and a white line along the edges. On the left side of the road, there are two "
        "horses walking in the same direction as the cyclist. The surrounding area is green with "
        "trees and bushes on both sides of the road. The sky is clear and blue, indicating good "
        "weather conditions.",
        "The image depicts a person riding a bicycle on a road. The cyclist is wearing a helmet "
        "and a backpack, and is facing away from the camera, looking ahead. The road is "
        "surrounded by trees and vegetation on both sides, creating a natural and scenic "
        "environment. The sky is clear and blue, indicating good weather conditions. The road "
        "appears to be relatively empty, with no other vehicles or cyclists visible. The overall "
        "scene conveys a sense of tranquility and outdoor activity.",
        {
            "reasoning": "The prediction keeps the rider, the bicycle, the helmet, the backpack "
            "and the trees, and drops the clothing, the horses and the bushes. It names the rider "
            "both 'person' and 'cyclist': one object. 'No other vehicles' is an absence. The "
            "camera is the viewpoint, not an object in the scene.",
            "reference_objects": [
                "cyclist",
                "bike",
                "helmet",
                "jersey",
                "shorts",
                "shoe",
                "backpack",
                "horse",
                "tree",
                "bush",
            ],
            "reference_ignored": ["road", "double yellow line", "white line", "sky", "weather"],
            "candidate_objects": ["person", "bicycle", "helmet", "backpack", "tree"],
            "candidate_ignored": ["road", "vegetation", "sky", "weather", "camera"],
            "matches": [
                {"reference": "cyclist", "candidate": "person"},
                {"reference": "bike", "candidate": "bicycle"},
                {"reference": "helmet", "candidate": "helmet"},
                {"reference": "backpack", "candidate": "backpack"},
                {"reference": "tree", "candidate": "tree"},
            ],
        },
    ),
    (
        "A kitchen counter with a cutting board, a chef's knife and a pile of chopped carrots. A "
        "pot is simmering on the stove, and sunlight comes through the window above the sink.",
        "A kitchen with a wooden table holding a knife, some carrots and a bowl. A cat sits on "
        "the windowsill next to a potted plant.",
        {
            "reasoning": "Only the knife and the carrots appear in both. The table is not the "
            "counter and the windowsill is not the window. The bowl, the cat and the plant are "
            "hallucinated. Kitchen is a place and sunlight is light.",
            "reference_objects": [
                "counter",
                "cutting board",
                "knife",
                "carrot",
                "pot",
                "stove",
                "window",
                "sink",
            ],
            "reference_ignored": ["kitchen", "sunlight"],
            "candidate_objects": ["table", "knife", "carrot", "bowl", "cat", "windowsill", "plant"],
            "candidate_ignored": ["kitchen", "wooden"],
            "matches": [
                {"reference": "knife", "candidate": "knife"},
                {"reference": "carrot", "candidate": "carrot"},
            ],
        },
    ),
    (
        "A man in a gray suit walks his poodle past a parked taxi. A fire hydrant stands on the "
        "sidewalk in front of a brick building, and a pigeon sits on a bench nearby.",
        "A person is walking a small dog along a city street. A yellow car is parked by the curb "
        "next to a building. There are no other people or animals around.",
        {
            "reasoning": "The person is the man, the dog is the poodle and the car is the taxi "
            "(more general names of the same objects). The suit, the hydrant, the pigeon and the "
            "bench are missing. 'No other people or animals' is an absence, not an object.",
            "reference_objects": [
                "man",
                "suit",
                "poodle",
                "taxi",
                "fire hydrant",
                "building",
                "pigeon",
                "bench",
            ],
            "reference_ignored": ["sidewalk", "brick", "gray"],
            "candidate_objects": ["person", "dog", "car", "building"],
            "candidate_ignored": ["city street", "curb", "yellow"],
            "matches": [
                {"reference": "man", "candidate": "person"},
                {"reference": "poodle", "candidate": "dog"},
                {"reference": "taxi", "candidate": "car"},
                {"reference": "building", "candidate": "building"},
            ],
        },
    ),
)


def compare_messages(reference: str, candidate: str) -> list[dict[str, str]]:
    """Chat messages: instructions, three worked examples, then the pair to judge."""
    messages = [{"role": "system", "content": INSTRUCTIONS}]
    for ref, cand, answer in EXAMPLES:
        messages.append({"role": "user", "content": _pair_message(ref, cand)})
        messages.append({"role": "assistant", "content": json.dumps(answer)})
    messages.append({"role": "user", "content": _pair_message(reference, candidate)})
    return messages


MENTIONS_INSTRUCTIONS = """\
You are an expert in reading image captions. You will be given one caption and a list of object \
names. First extract the *physical objects* the caption mentions: tangible objects that can be \
interacted with, not colors, attributes, positions, places, surfaces, water, sky, weather, light \
or body parts, and not objects the caption says are absent. Then, for each listed name, answer \
whether the caption mentions that physical object: yes for the same word, a synonym, a plural or \
a more specific kind ("puppy" answers "dog", "cyclist" answers "person"); no for a more general \
word only ("animal" does not answer "dog"), for a non-physical use (the color "orange" is not the \
fruit) and for absent objects.

Answer with one JSON object and nothing else, with the keys "caption_objects" (list of strings) \
and "answers" (list of {"object": name as given, "mentioned": true or false}, one per listed \
name, in the given order)."""

MENTIONS_EXAMPLE = (
    "A golden retriever puppy lies on the grass next to an orange frisbee. No people are around.",
    ["dog", "frisbee", "orange", "grass", "animal", "person", "retriever puppy"],
    {
        "caption_objects": ["golden retriever puppy", "frisbee"],
        "answers": [
            {"object": "dog", "mentioned": True},
            {"object": "frisbee", "mentioned": True},
            {"object": "orange", "mentioned": False},
            {"object": "grass", "mentioned": False},
            {"object": "animal", "mentioned": True},
            {"object": "person", "mentioned": False},
            {"object": "retriever puppy", "mentioned": True},
        ],
    },
)


def _mentions_message(text: str, objects: Sequence[str]) -> str:
    return f"Caption:\n{text}\n\nObject names:\n{json.dumps(list(objects))}"


def mentions_messages(text: str, objects: Sequence[str]) -> list[dict[str, str]]:
    caption, names, answer = MENTIONS_EXAMPLE
    return [
        {"role": "system", "content": MENTIONS_INSTRUCTIONS},
        {"role": "user", "content": _mentions_message(caption, names)},
        {"role": "assistant", "content": json.dumps(answer)},
        {"role": "user", "content": _mentions_message(text, objects)},
    ]
