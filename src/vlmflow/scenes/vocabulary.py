"""The object types of the scene world, with the words a description or a question may use.

Types were picked from OpenMoji for being everyday things that look unlike one another at
60-200 px, so a small model can learn them; every name takes "a"/"an" and a regular count noun
phrase, so descriptions and count questions read naturally. Synonyms are hand-written for the
judge (a candidate saying "puppy" names the scene's "dog").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class ObjectType:
    """One kind of object: canonical name, synonyms, its emoji and its category."""

    name: str
    synonyms: tuple[str, ...]
    codepoints: str  # OpenMoji file stem, e.g. "1F415" or "1F408-200D-2B1B"
    category: str
    plural: str

    @property
    def article(self) -> str:
        return "an" if self.name[0] in "aeiou" else "a"

    @property
    def emoji(self) -> str:
        return "".join(chr(int(part, 16)) for part in self.codepoints.split("-"))

    def count_phrase(self, count: int) -> str:
        """'a dog', 'two dogs', ... as a description or a count question says it."""
        if count == 1:
            return f"{self.article} {self.name}"
        return f"{number_word(count)} {self.plural}"


# category -> the noun phrase a category question uses ("Is there an animal in the image?")
CATEGORIES: Mapping[str, str] = MappingProxyType(
    {
        "animal": "an animal",
        "fruit": "a fruit",
        "vegetable": "a vegetable",
        "vehicle": "a vehicle",
        "furniture": "a piece of furniture",
        "tool": "a tool",
        "electronic device": "an electronic device",
        "clothing": "a piece of clothing",
        "musical instrument": "a musical instrument",
        "plant": "a plant",
        "toy": "a toy",
        "household item": "a household item",
    }
)

# Categories whose membership is fuzzy (a laptop is arguably a household item) get no
# category questions; their objects still appear everywhere else.
UNASKED_CATEGORIES = frozenset({"household item"})

_TYPES = (
    # name, synonyms, OpenMoji codepoints, category, plural
    ("dog", ("puppy", "doggy", "hound"), "1F415", "animal", "dogs"),
    ("cat", ("kitten", "kitty", "black cat"), "1F408-200D-2B1B", "animal", "cats"),
    ("horse", ("pony", "stallion", "mare"), "1F40E", "animal", "horses"),
    ("cow", ("cattle", "calf", "dairy cow"), "1F404", "animal", "cows"),
    ("pig", ("piglet", "hog", "swine"), "1F416", "animal", "pigs"),
    ("rabbit", ("bunny", "hare"), "1F407", "animal", "rabbits"),
    ("elephant", ("pachyderm", "elephant calf"), "1F418", "animal", "elephants"),
    ("bird", ("sparrow", "songbird"), "1F426", "animal", "birds"),
    ("fish", ("blue fish", "goldfish"), "1F41F", "animal", "fish"),
    ("turtle", ("tortoise", "sea turtle"), "1F422", "animal", "turtles"),
    ("apple", ("red apple",), "1F34E", "fruit", "apples"),
    ("banana", ("plantain",), "1F34C", "fruit", "bananas"),
    ("strawberry", ("berry",), "1F353", "fruit", "strawberries"),
    ("lemon", ("citrus fruit", "lime"), "1F34B", "fruit", "lemons"),
    ("watermelon", ("melon", "watermelon slice"), "1F349", "fruit", "watermelons"),
    ("pineapple", ("ananas",), "1F34D", "fruit", "pineapples"),
    ("carrot", ("root vegetable",), "1F955", "vegetable", "carrots"),
    ("broccoli", ("broccoli floret", "green vegetable"), "1F966", "vegetable", "broccolis"),
    ("mushroom", ("toadstool", "fungus"), "1F344", "vegetable", "mushrooms"),
    ("car", ("automobile", "vehicle", "sedan"), "1F697", "vehicle", "cars"),
    ("bus", ("coach", "school bus"), "1F68D", "vehicle", "buses"),
    ("bicycle", ("bike", "cycle"), "1F6B2", "vehicle", "bicycles"),
    ("airplane", ("plane", "aeroplane", "jet", "aircraft"), "2708", "vehicle", "airplanes"),
    ("boat", ("sailboat", "sailing boat", "ship", "yacht"), "26F5", "vehicle", "boats"),
    ("truck", ("lorry", "semi truck", "trailer truck"), "1F69B", "vehicle", "trucks"),
    ("train", ("locomotive", "steam engine"), "1F682", "vehicle", "trains"),
    ("chair", ("seat",), "1FA91", "furniture", "chairs"),
    ("bed", ("single bed",), "1F6CF", "furniture", "beds"),
    ("couch", ("sofa", "settee"), "1F6CB", "furniture", "couches"),
    ("hammer", ("mallet",), "1F528", "tool", "hammers"),
    ("wrench", ("spanner",), "1F527", "tool", "wrenches"),
    ("saw", ("handsaw",), "1FA9A", "tool", "saws"),
    ("phone", ("cellphone", "mobile phone", "smartphone"), "1F4F1", "electronic device", "phones"),
    ("laptop", ("notebook computer", "computer"), "1F4BB", "electronic device", "laptops"),
    ("television", ("tv", "television set", "screen"), "1F4FA", "electronic device", "televisions"),
    ("hat", ("top hat",), "1F3A9", "clothing", "hats"),
    ("shoe", ("sneaker", "trainer", "running shoe"), "1F45F", "clothing", "shoes"),
    ("shirt", ("t-shirt", "polo shirt"), "1F455", "clothing", "shirts"),
    ("guitar", ("electric guitar",), "1F3B8", "musical instrument", "guitars"),
    ("trumpet", ("horn", "bugle"), "1F3BA", "musical instrument", "trumpets"),
    ("drum", ("snare drum",), "1F941", "musical instrument", "drums"),
    ("tree", ("oak tree", "deciduous tree"), "1F333", "plant", "trees"),
    ("cactus", ("saguaro", "succulent"), "1F335", "plant", "cacti"),
    ("sunflower", ("flower",), "1F33B", "plant", "sunflowers"),
    ("ball", ("soccer ball", "football"), "26BD", "toy", "balls"),
    ("kite", ("paper kite",), "1FA81", "toy", "kites"),
    ("teddy bear", ("teddy", "stuffed animal", "toy bear"), "1F9F8", "toy", "teddy bears"),
    ("key", ("door key",), "1F511", "household item", "keys"),
    ("umbrella", ("parasol",), "2602", "household item", "umbrellas"),
    ("book", ("red book", "textbook"), "1F4D5", "household item", "books"),
    ("clock", ("alarm clock", "timepiece"), "23F0", "household item", "clocks"),
    ("cup", ("coffee cup", "teacup"), "2615", "household item", "cups"),
)

VOCABULARY: Mapping[str, ObjectType] = MappingProxyType(
    {name: ObjectType(name, syn, cp, cat, plural) for name, syn, cp, cat, plural in _TYPES}
)

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def number_word(n: int) -> str:
    """'three' for 3: descriptions and count questions spell small numbers out."""
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def object_type(name: str) -> ObjectType:
    """The type of a canonical name, with an error that lists where the names are."""
    from vlmflow.errors import VlmflowError

    try:
        return VOCABULARY[name]
    except KeyError:
        raise VlmflowError(
            f"unknown object type {name!r}: use a name of vlmflow.scenes.VOCABULARY "
            "(`vlmflow scenes list --types`)"
        ) from None


def _plural_of(word: str) -> str:
    if word.endswith(("s", "sh", "ch", "x")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        return word[:-1] + "ies"
    return word + "s"


def _terms() -> list[tuple[str, str]]:
    """(phrase, canonical name) for names, plurals and synonyms, longest phrase first."""
    terms: dict[str, str] = {}
    for kind in VOCABULARY.values():
        for phrase in (kind.name, kind.plural):
            terms[phrase] = kind.name
        for synonym in kind.synonyms:
            terms.setdefault(synonym, kind.name)
            terms.setdefault(_plural_of(synonym), kind.name)
    return sorted(terms.items(), key=lambda item: (-len(item[0]), item[0]))


def mentioned_objects(text: str) -> tuple[str, ...]:
    """Canonical names of the vocabulary objects a text mentions, in order of first mention.

    Matches names, plurals and synonyms as whole words, longest first ("teddy bear" before
    "bear"), so "two puppies and a sofa" gives ("dog", "couch"). A lexical check for scene
    descriptions; the LLM judge handles free paraphrase.
    """
    import re

    lowered = text.lower()
    taken = [False] * len(lowered)
    found: list[tuple[int, str]] = []
    for phrase, name in _terms():
        for match in re.finditer(rf"\b{re.escape(phrase)}\b", lowered):
            start, end = match.span()
            if any(taken[start:end]):
                continue
            taken[start:end] = [True] * (end - start)
            found.append((start, name))
    return tuple(dict.fromkeys(name for _, name in sorted(found)))
