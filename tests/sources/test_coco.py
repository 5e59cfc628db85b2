"""COCO images and masks, on a tiny COCO dataset written from the shipped scene world.

Each scene becomes a COCO image whose objects are annotated from their exact masks, once per
encoding COCO uses (compressed RLE, uncompressed RLE, polygons traced around the mask), so the
decoded masks can be checked against the truth.
"""

from __future__ import annotations

import json
import shutil
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from runs import run_into

import vlmflow
from vlmflow.errors import VlmflowError
from vlmflow.experiments import ImageSource, WorkItem, create
from vlmflow.experiments.localization import SceneMasks
from vlmflow.scenes import load_fixed_scene
from vlmflow.sources.coco import (
    CocoMasks,
    CocoSource,
    coco_vocabulary,
    decode_rle,
    paper_image_ids,
    rle_counts,
)
from vlmflow.store import ResultStore

# scene index -> (COCO image id, segmentation encoding); the first two ids are of the paper's 81
SCENES = {1: (480122, "rle"), 2: (256941, "counts"), 3: (7, "polygon")}


@pytest.fixture(autouse=True)
def _private_judge_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMFLOW_CACHE", str(tmp_path / "cache"))


def file_name(image_id: int) -> str:
    return f"COCO_val2014_{image_id:012d}.png"


# -- encoders (the inverse of what vlmflow decodes) ------------------------------------------


def runs(mask: np.ndarray) -> list[int]:
    """COCO RLE run lengths: column-major, 0s first."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    lengths = np.diff(bounds).tolist()
    return [0, *lengths] if flat[0] else lengths


def rle_string(counts: list[int]) -> str:
    """pycocotools' `rleToString`."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


NEIGHBOURS = [(0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1)]  # clockwise


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components, each as an (H, W) bool mask."""
    seen = np.zeros_like(mask, dtype=bool)
    found = []
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        part = np.zeros_like(seen)
        queue = deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            part[cy, cx] = True
            for dy, dx in NEIGHBOURS:
                ny, nx = cy + dy, cx + dx
                inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                if inside and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        found.append(part)
    return found


def contour(part: np.ndarray) -> list[tuple[int, int]]:
    """Moore-neighbour trace of one component's outer boundary, as (y, x) pixels."""
    ys, xs = np.nonzero(part)
    start = (int(ys[0]), int(xs[0]))  # topmost, then leftmost: its west is background
    height, width = part.shape
    path, current, back = [start], start, 0  # back: direction of the last background checked
    first_move = None
    while True:
        for i in range(1, 9):
            d = (back + i) % 8
            ny, nx = current[0] + NEIGHBOURS[d][0], current[1] + NEIGHBOURS[d][1]
            if 0 <= ny < height and 0 <= nx < width and part[ny, nx]:
                break
        else:
            return path  # a single pixel
        if first_move is None:
            first_move = (current, d)
        elif (current, d) == first_move:
            return path[:-1]
        step = NEIGHBOURS[(d - 1) % 8]
        previous = (current[0] + step[0] - ny, current[1] + step[1] - nx)
        back = NEIGHBOURS.index(previous)
        current = (ny, nx)
        path.append(current)


def polygons(mask: np.ndarray) -> list[list[float]]:
    """One COCO polygon per component through its boundary pixels' centres."""
    traced = [contour(part) for part in components(mask)]
    return [[v for y, x in path for v in (x + 0.5, y + 0.5)] for path in traced if len(path) >= 3]


def segmentation(mask: np.ndarray, encoding: str) -> Any:
    if encoding == "polygon":
        return polygons(mask)
    counts = runs(mask)
    return {"size": list(mask.shape), "counts": rle_string(counts) if encoding == "rle" else counts}


# -- the dataset ----------------------------------------------------------------------------


def write_coco(
    root: Path,
    scenes: dict[int, tuple[int, str]] = SCENES,
    rename: dict[str, str] | None = None,
) -> Path:
    """`root/annotations/instances_val2014.json` and the images in `root/val2014/`; `rename`:
    scene object name -> the COCO category name it is annotated as."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    names = sorted({o.name for i in scenes for o in load_fixed_scene(i).objects})
    category = {name: k + 1 for k, name in enumerate(names)}
    images, annotations = [], []
    for index, (image_id, encoding) in scenes.items():
        scene = load_fixed_scene(index)
        scene.image.save(root / "val2014" / file_name(image_id))
        width, height = scene.image.size
        images.append(
            {"id": image_id, "file_name": file_name(image_id), "height": height, "width": width}
        )
        for obj in scene.objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category[obj.name],
                    "segmentation": segmentation(obj.mask, encoding),
                    "area": int(obj.mask.sum()),
                    "iscrowd": int(encoding != "polygon"),
                }
            )
    path = root / "annotations" / "instances_val2014.json"
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i, "name": (rename or {}).get(n, n), "supercategory": "thing"}
            for n, i in category.items()
        ],
    }
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    return write_coco(tmp_path / "coco")


def item(ref: Any) -> WorkItem:
    return WorkItem(ref.id, {"image": ref})


def truth(scene_index: int, name: str) -> np.ndarray:
    return np.logical_or.reduce(
        [o.mask for o in load_fixed_scene(scene_index).objects if o.name == name]
    )


def one_line_error(call: Callable[[], Any], *needles: str) -> str:
    with pytest.raises(VlmflowError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# -- the source -----------------------------------------------------------------------------


def test_source_lists_annotated_images_by_file_name(coco: Path) -> None:
    folder = coco.parent.parent / "val2014"
    source = ImageSource.parse(f"coco:{coco}")
    assert isinstance(source, CocoSource) and source.kind == "coco"
    assert source.key == f"coco:{coco.resolve()}:{folder.resolve()}"
    refs = source.images()
    ids = sorted(file_name(image_id) for image_id, _ in SCENES.values())
    assert [r.id for r in refs] == ids
    assert [r.coco_id for r in refs] == [7, 256941, 480122]
    assert all(r.path == folder.resolve() / r.id for r in refs)
    assert refs[0].open().size == (448, 448)
    explicit = ImageSource.parse(f"coco:{coco}:{folder}")
    assert explicit == source and explicit.images() == refs
    (folder / file_name(7)).unlink()  # not downloaded: not listed
    assert [r.coco_id for r in source.images()] == [256941, 480122]


def test_images_folder_defaults_to_the_split_beside_the_file(tmp_path: Path, coco: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(coco, flat / "instances_val2014.json")
    shutil.copytree(coco.parent.parent / "val2014", flat / "val2014")
    source = ImageSource.parse(f"coco:{flat / 'instances_val2014.json'}")
    assert isinstance(source, CocoSource) and source.images_dir == (flat / "val2014").resolve()


def test_coco_paper_is_the_papers_81_images(coco: Path) -> None:
    ids = paper_image_ids()
    assert len(ids) == 81 == len(set(ids))
    assert ids[:3] == (480122, 256941, 414510) and ids[-1] == 96549
    source = ImageSource.parse(f"coco-paper:{coco}")
    assert source.kind == "coco-paper" and source.key.startswith("coco-paper:")
    assert [r.coco_id for r in source.images()] == [256941, 480122]


def test_errors_are_one_line_and_name_the_fix(tmp_path: Path, coco: Path) -> None:
    missing = tmp_path / "missing.json"
    one_line_error(lambda: ImageSource.parse(f"coco:{missing}"), "not found", "coco:")
    one_line_error(lambda: ImageSource.parse("coco:"), "coco:ANNOTATIONS.json")
    one_line_error(
        lambda: ImageSource.parse(f"coco:{coco}:{tmp_path / 'nowhere'}"),
        "images folder not found",
        ":IMAGES_DIR",
    )
    alone = tmp_path / "alone" / "instances_train2017.json"
    alone.parent.mkdir()
    shutil.copy(coco, alone)
    one_line_error(lambda: ImageSource.parse(f"coco:{alone}"), "train2017", ":IMAGES_DIR")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(
        lambda: ImageSource.parse(f"coco:{coco}:{empty}").images(), "none of the 3", "IMAGES_DIR"
    )
    (alone.parent / "train2017").mkdir()
    alone.write_text('{"images": [{"id": 1,')
    one_line_error(lambda: ImageSource.parse(f"coco:{alone}").images(), "cannot read", "intact")
    alone.write_text('{"annotations": []}')
    one_line_error(lambda: ImageSource.parse(f"coco:{alone}").images(), "not a COCO instances")
    alone.write_text('{"images": [{"id": 1}]}')
    one_line_error(lambda: ImageSource.parse(f"coco:{alone}").images(), "malformed", "intact")
    alone.write_text('{"images": [{"id": 1, "file_name": "a.jpg", "height": 2, "width": 2}]}')
    one_line_error(lambda: ImageSource.parse(f"coco-paper:{alone}").images(), "paper's 81", "split")


# -- masks ----------------------------------------------------------------------------------


def test_masks_match_the_scenes_exact_masks(coco: Path) -> None:
    source = ImageSource.parse(f"coco:{coco}")
    masks = CocoMasks()
    masks.check(source)
    by_id = {r.coco_id: r for r in source.images()}
    checked = set()
    for index, (image_id, encoding) in SCENES.items():
        ref = by_id[image_id]
        for name in {o.name for o in load_fixed_scene(index).objects}:
            mask = masks.mask(item(ref), name)
            expected = truth(index, name)
            assert mask is not None and mask.shape == expected.shape == (448, 448)
            if encoding == "polygon":
                iou = (mask & expected).sum() / (mask | expected).sum()
                assert iou > 0.95, (name, iou)
            else:
                assert np.array_equal(mask, expected), name
            checked.add(encoding)
    assert checked == {"rle", "counts", "polygon"}
    scene_2 = item(by_id[256941])
    books = masks.mask(scene_2, "books")  # plural; two instances -> their union
    assert books is not None and np.array_equal(books, truth(2, "book"))
    assert masks.mask(scene_2, "cow") is None  # a category, not in this image
    assert masks.mask(scene_2, "unicorn") is None  # no such category
    assert "books" in masks.forms("book") and masks.forms("unicorn") == ("unicorn", "unicorns")


def test_compressed_rle_follows_pycocotools() -> None:
    assert rle_counts("151L") == [1, 5, 1, 1]  # 4th run stored as 1 - 5 = -4
    mask = decode_rle({"size": [2, 4], "counts": "151L"})
    assert mask.tolist() == [[False, True, True, False], [True, True, True, True]]
    assert np.array_equal(decode_rle({"size": [2, 4], "counts": [1, 5, 1, 1]}), mask)
    rng = np.random.default_rng(0)
    big = rng.random((300, 200)) < 0.01  # long runs: several 5-bit groups, large differences
    counts = runs(big)
    assert rle_counts(rle_string(counts)) == counts
    assert np.array_equal(decode_rle({"size": [300, 200], "counts": rle_string(counts)}), big)
    one_line_error(lambda: decode_rle({"size": [3, 3], "counts": [1, 2]}), "3x3", "intact")


def test_names_reach_categories_through_synonyms_and_plurals(tmp_path: Path) -> None:
    vocabulary = coco_vocabulary(["person", "dog", "sports ball", "dining table"])
    for word, category in [
        ("women", "person"),
        ("people", "person"),
        ("boys", "person"),
        ("puppies", "dog"),
        ("balls", "sports ball"),
        ("tennis ball", "sports ball"),
        ("tables", "dining table"),
    ]:
        assert vocabulary.canonical(word) == category, word
    root = tmp_path / "people"
    (root / "val2017").mkdir(parents=True)
    load_fixed_scene(1).image.save(root / "val2017" / "1.png")
    data = {
        "images": [{"id": 1, "file_name": "1.png", "height": 448, "width": 448}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[10, 10, 30, 10, 30, 20]]}
        ],
    }
    (root / "instances_val2017.json").write_text(json.dumps(data))
    source = ImageSource.parse(f"coco:{root / 'instances_val2017.json'}")
    masks = CocoMasks()
    masks.check(source)
    assert masks.category("a young man") == "person" and masks.category("red kite") is None
    assert {"man", "women", "people", "children"} <= set(masks.forms("man"))
    mask = masks.mask(item(source.images()[0]), "men")
    assert mask is not None and mask[12, 20] and not mask[30, 20]
    assert masks.mask(item(source.images()[0]), "dog") is None


# -- localization ---------------------------------------------------------------------------


def test_localization_picks_masks_by_image_source(coco: Path) -> None:
    experiment = create("localization")
    assert experiment.config["masks"] == "auto"
    assert len(list(experiment.items(ImageSource.parse(f"coco-paper:{coco}")))) == 2
    assert isinstance(experiment.masks, CocoMasks)
    list(experiment.items(ImageSource.parse("scenes:1")))
    assert isinstance(experiment.masks, SceneMasks)
    one_line_error(
        lambda: create("localization", {"masks": "coco"}).items(ImageSource.parse("scenes:1")),
        "masks=coco",
        "coco:",
    )
    one_line_error(lambda: create("localization", {"masks": "sam"}), "module:callable")


def test_localization_on_coco_scores_like_on_scenes(
    tiny_path: Callable[[str], Path], coco: Path, tmp_path: Path
) -> None:
    handle = vlmflow.load(str(tiny_path("qwen2_vl")))
    results = {}
    for images, out in [(f"coco-paper:{coco}", "coco-run"), ("scenes:2", "scene-run")]:
        with ResultStore.open(tmp_path / out) as store:
            run_into(store, [create("localization", {"max_new_tokens": 32})], images, handle)
            assert store.failures() == []
            results.update({row.item: row for row in store.rows()})
    on_coco, on_scene = results[file_name(480122)], results["fixed-01"]
    assert on_coco.payload["details"], "no fine detail: the tiny model's description changed"
    for key in ("baseline", "knockout", "details", "skipped", "layers"):
        assert on_coco.payload[key] == on_scene.payload[key], key
    assert on_coco.metrics == on_scene.metrics


# -- the logit lens ---------------------------------------------------------------------------


def test_lens_names_objects_on_coco_as_on_the_scenes_they_were_drawn_from(
    tiny_path: Callable[[str], Path], tmp_path: Path
) -> None:
    from vlmflow.store import ResultKey

    # scene 1's ball is annotated as COCO's "sports ball": the lens word "ball" reaches it
    # through the synonym table, as the scene vocabulary reaches the scene's ball
    coco = write_coco(tmp_path / "coco", rename={"ball": "sports ball"})
    handle = vlmflow.load(str(tiny_path("llava")))
    seen: dict[str, tuple[Any, np.ndarray, np.ndarray]] = {}
    for images, out in [(f"coco:{coco}", "coco-lens"), ("scenes:4", "scene-lens")]:
        with ResultStore.open(tmp_path / out) as store:
            # 70 of the tiny vocabulary's 85 words per token: "ball" ranks 46-84 in the tiny
            # LLaVA's lens, so some tokens name the ball and some do not
            run_into(store, [create("lens", {"top_k": 70})], images, handle)
            assert store.failures() == []
            for row in store.rows():
                key = ResultKey(row.run_id, row.experiment, row.item, row.setting)
                seen[row.item] = (row, store.blob(key, "ids"), store.blob(key, "named"))
    for scene_index, (image_id, _) in SCENES.items():
        on_coco, ids_coco, named_coco = seen[file_name(image_id)]
        on_scene, ids_scene, named_scene = seen[f"fixed-{scene_index:02d}"]
        assert np.array_equal(ids_coco, ids_scene)  # the same picture, the same lens words
        names = [{"ball": "sports ball"}.get(n, n) for n in load_fixed_scene(scene_index).names]
        assert on_coco.payload["objects"] == names
        # the decoded instance masks put the same tokens on the same objects, and the COCO
        # categories are named by the same lens words
        for key in ("on", "off"):
            assert on_coco.payload[key] == on_scene.payload[key], (image_id, key)
        assert on_coco.metrics == on_scene.metrics
        assert np.array_equal(named_coco, named_scene)
        assert on_coco.metrics["on_tokens"] > 0 and on_coco.metrics["off_tokens"] > 0
    _, ids, named = seen[file_name(SCENES[1][0])]
    ball = handle.processor.tokenizer.convert_tokens_to_ids("ball")
    # some tokens name the ball, not all, and only tokens with "ball" among their words do
    assert named.any() and not named.all()
    assert not (named & ~(ids == ball).any(axis=-1)).any()
