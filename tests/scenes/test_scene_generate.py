from collections import Counter

import numpy as np
import pytest

from vlmflow.errors import VlmflowError
from vlmflow.scenes import (
    FIXED_SEEDS,
    POSITIONS,
    QUESTION_CATEGORIES,
    SIZE_CLASSES,
    TRAINING_SEEDS,
    VALIDATION_SEEDS,
    VOCABULARY,
    Scene,
    generate,
    training_scenes,
    true_answer,
    validation_scenes,
)
from vlmflow.scenes.background import render_background
from vlmflow.scenes.layout import cell_of, position_name
from vlmflow.scenes.sprites import scaled_sprite

SEEDS = [1_000_000 + i for i in range(24)]


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [generate(seed) for seed in SEEDS]


def test_generate_is_deterministic_per_seed(scenes):
    again = generate(SEEDS[3])
    assert again.to_json() == scenes[3].to_json()
    assert np.array_equal(np.asarray(again.image), np.asarray(scenes[3].image))
    assert np.array_equal(again.label_map(), scenes[3].label_map())
    assert scenes[3].to_json() != scenes[4].to_json()


def test_scene_shape_and_object_counts(scenes):
    counts = Counter(len(s.objects) for s in scenes)
    assert min(counts) >= 1 and max(counts) <= 8 and len(counts) >= 4
    for scene in scenes:
        assert scene.image.mode == "RGB" and scene.image.size == (448, 448)
        assert scene.seed in SEEDS and scene.id == f"scene-{scene.seed}"
    small = generate(5, size=224, min_objects=3, max_objects=3)
    assert small.image.size == (224, 224) and len(small.objects) == 3


def test_masks_are_nonempty_disjoint_and_inside_their_boxes(scenes):
    for scene in scenes:
        union = np.zeros((scene.size, scene.size), dtype=np.int32)
        for obj in scene.objects:
            assert obj.mask.dtype == bool and obj.mask.shape == (scene.size, scene.size)
            assert obj.mask.sum() > 50
            x0, y0, x1, y1 = obj.box
            inside = np.zeros_like(obj.mask)
            inside[y0:y1, x0:x1] = True
            assert not (obj.mask & ~inside).any()
            # the box is tight: every edge row/column holds a mask pixel
            assert obj.mask[y0].any() and obj.mask[y1 - 1].any()
            assert obj.mask[:, x0].any() and obj.mask[:, x1 - 1].any()
            union += obj.mask
        assert union.max() <= 1


def test_masks_match_rendered_pixels_exactly(scenes):
    for scene in scenes[:8]:
        pixels = np.asarray(scene.image)
        labels = scene.label_map()
        background = np.asarray(render_background(scene.background, scene.size))
        assert np.array_equal(pixels[labels == 0], background[labels == 0])
        for obj in scene.objects:
            p = obj.placement
            picture = np.asarray(scaled_sprite(p.name, p.width, p.height, p.flipped))
            canvas = np.zeros((scene.size, scene.size, 4), dtype=np.uint8)
            canvas[p.y : p.y + p.height, p.x : p.x + p.width] = picture
            drawn = canvas[..., 3] > 0
            assert np.array_equal(drawn, obj.mask)  # nothing overlaps, so all of it is visible
            assert np.array_equal(pixels[obj.mask], canvas[obj.mask][:, :3])


def test_positions_and_sizes_agree_with_the_masks(scenes):
    for scene in scenes:
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert position_name(*cell_of((x0 + x1) / 2, (y0 + y1) / 2, scene.size)) == obj.position
            assert obj.position in POSITIONS
            low, high = SIZE_CLASSES[obj.size_class]
            longest = max(obj.placement.width, obj.placement.height) / scene.size
            assert low - 0.01 <= longest <= high + 0.01
        assert len({o.position for o in scene.objects}) == len(scene.objects)


def test_descriptions_mention_every_object_and_position(scenes):
    for scene in scenes:
        text = scene.description
        assert text.startswith("There ") and text.endswith(".")
        for obj in scene.objects:
            kind = VOCABULARY[obj.name]
            assert kind.name in text or kind.plural in text
            assert f"in the {obj.position}" in text
        if any(o.size_class == "small" for o in scene.objects):
            assert "small" in text or any(
                Counter(o.name for o in scene.objects)[o.name] > 1 for o in scene.objects
            )
    assert generate(7, min_objects=1, max_objects=1).description.startswith("There is one object")


def test_questions_are_paired_per_category_and_answered_right(scenes):
    for scene in scenes:
        assert len(scene.questions) == 2 * len(QUESTION_CATEGORIES)
        for category in QUESTION_CATEGORIES:
            answers = sorted(q.answer for q in scene.questions_of(category))
            assert answers == ["no", "yes"]
        for question in scene.questions:
            assert question.text.endswith("?")
            assert true_answer(scene.objects, question) == question.answer, question.text


def test_json_round_trip_rerenders_identical_pixels(scenes):
    scene = scenes[5]
    data = scene.to_json()
    again = Scene.from_json(data)
    assert again.to_json() == data
    assert np.array_equal(np.asarray(again.image), np.asarray(scene.image))
    assert np.array_equal(again.label_map(), scene.label_map())
    import json

    assert Scene.from_json(json.dumps(data)).description == scene.description
    with pytest.raises(VlmflowError):
        Scene.from_json({**data, "format": 999})


def test_seed_ranges_are_disjoint_and_training_never_yields_fixed_seeds():
    ranges = [FIXED_SEEDS, VALIDATION_SEEDS, TRAINING_SEEDS]
    for i, a in enumerate(ranges):
        for b in ranges[i + 1 :]:
            assert a.stop <= b.start or b.stop <= a.start
    first = [s.seed for s in training_scenes(0, 3)]
    assert first == [TRAINING_SEEDS[0], TRAINING_SEEDS[1], TRAINING_SEEDS[2]]
    assert [s.seed for s in training_scenes(2, 1)] == [TRAINING_SEEDS[2]]
    assert next(iter(validation_scenes(0, 1))).seed == VALIDATION_SEEDS[0]
    with pytest.raises(VlmflowError):
        list(training_scenes(-1, 1))


def test_bad_arguments_raise_a_user_error():
    with pytest.raises(VlmflowError, match="max-objects"):
        generate(1, max_objects=9)
    with pytest.raises(VlmflowError):
        generate(1, min_objects=3, max_objects=2)
    with pytest.raises(VlmflowError):
        generate(1, size=32)


def test_grid_mask_marks_the_cells_an_object_covers(scenes):
    obj = scenes[0].objects[0]
    grid = obj.grid_mask(16)
    assert grid.shape == (16, 16) and grid.any()
    x0, y0, x1, y1 = obj.box
    cell = scenes[0].size / 16
    rows, columns = np.nonzero(grid)
    assert rows.min() == int(y0 // cell) and rows.max() == int((y1 - 1) // cell)
    assert columns.min() == int(x0 // cell) and columns.max() == int((x1 - 1) // cell)
    assert obj.grid_mask(16, min_fraction=0.5).sum() <= grid.sum()
    assert obj.grid_mask(8, 4).shape == (8, 4)
    with pytest.raises(ValueError):
        obj.mask[0, 0] = True  # masks are read-only


def test_training_scenes_take_object_bounds():
    scene = next(iter(training_scenes(0, 1, min_objects=2, max_objects=2)))
    assert len(scene.objects) == 2
