"""The scene judge: exact matching against the closed vocabulary of a generated scene world.

When the images come from a world with a known object set, the judge need not guess what is an
object: an object is a vocabulary entry named in the text by its name, a synonym or a plural, and
two texts agree on it when they name the same entry. Objects a text says are absent ("no dog",
"I cannot see a cat", "the cat is not visible") are not named: the phrasings and the noun-phrase
rule are the offline judge's (`negation`). Deterministic, instant, no dependencies.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlmflow.judge import lexicon, negation
from vlmflow.judge.protocol import Backend, Match, Verdict

VERSION = "scene-v2"  # v2: absence read from negation.PHRASINGS

_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*|[.,;:!?()]")
# Function words: never a modifier inside an absent noun phrase (determiners are read by word).
_CLOSED = lexicon.FUNCTION_WORDS | lexicon.CLAUSE_BREAKS


def plurals(name: str) -> tuple[str, ...]:
    """Regular English plurals of a (possibly multi-word) name: the last word inflects."""
    head, _, last = name.rpartition(" ")
    prefix = f"{head} " if head else ""
    if last.endswith(("s", "x", "z", "ch", "sh")):
        forms = [last + "es"]
    elif last.endswith("y") and last[-2:-1] not in tuple("aeiou"):
        forms = [last[:-1] + "ies"]
    elif last.endswith("f"):
        forms = [last[:-1] + "ves", last + "s"]
    elif last.endswith("fe"):
        forms = [last[:-2] + "ves", last + "s"]
    else:
        forms = [last + "s"]
        if last.endswith("o"):
            forms.append(last + "es")
    return tuple(prefix + f for f in forms)


@dataclass(frozen=True)
class SceneVocabulary:
    """Canonical object names and the words that name them (synonyms, plurals)."""

    names: tuple[str, ...]
    surface: Mapping[str, str]  # lower-case word or phrase -> canonical name

    @classmethod
    def from_mapping(cls, entries: Mapping[str, Iterable[str]]) -> SceneVocabulary:
        """`{"dog": ["puppy", "hound"], "car": ["automobile"]}`; plurals are added."""
        surface: dict[str, str] = {}
        for name, synonyms in entries.items():
            for word in (name, *synonyms):
                word = " ".join(word.lower().split())
                for form in (word, *plurals(word)):
                    surface.setdefault(form, name)
        return cls(tuple(entries), surface)

    @classmethod
    def from_types(cls, types: Iterable[Any]) -> SceneVocabulary:
        """From objects with `name`, `synonyms` and optionally `plural` (scene world types)."""
        entries: dict[str, list[str]] = {}
        for t in types:
            words = [*t.synonyms]
            if getattr(t, "plural", None):
                words.append(t.plural)
            entries[t.name] = words
        return cls.from_mapping(entries)

    def canonical(self, word: str) -> str | None:
        return self.surface.get(" ".join(word.lower().split()))

    def find(self, text: str) -> list[str]:
        """Canonical names a text names, first mention first, without the ones it says are
        absent ("no dog", "I cannot see a cat", "the cat is not visible": the table and the
        noun-phrase rule of `negation`, as the offline judge reads them)."""
        units = self._units(text)
        absent = negation.absent_positions([w for w, _ in units], _tags(units))
        found: list[str] = []
        for i, (_, name) in enumerate(units):
            if name is not None and i not in absent and name not in found:
                found.append(name)
        return found

    def _units(self, text: str) -> list[tuple[str, str | None]]:
        """(word, canonical name or None) per unit; the longest vocabulary phrase is one unit."""
        tokens = _WORD.findall(text.lower().replace("’", "'"))
        longest = max((len(s.split()) for s in self.surface), default=1)
        units: list[tuple[str, str | None]] = []
        i = 0
        while i < len(tokens):
            for n in range(min(longest, len(tokens) - i), 0, -1):
                phrase = " ".join(tokens[i : i + n])
                name = self.surface.get(phrase)
                if name is not None:
                    units.append((phrase, name))
                    i += n
                    break
            else:
                units.append((tokens[i], None))
                i += 1
        return units


def _tags(units: Sequence[tuple[str, str | None]]) -> list[str]:
    """`negation`'s tags without a tagger: "N" for a vocabulary entry; "A" for a colour, and for
    an open-class word that stands before a noun or modifier ("a fluffy cat", "no sign of a
    cat") but not right after a noun ("no cat chases a dog" keeps the dog); "F" otherwise."""
    tags = ["F"] * len(units)
    for i in range(len(units) - 1, -1, -1):
        word, name = units[i]
        if name is not None:
            tags[i] = "N"
        elif word in lexicon.COLOURS:
            tags[i] = "A"
        elif word not in _CLOSED and word[0].isalpha():
            after_noun = i > 0 and units[i - 1][1] is not None
            before_phrase = i + 1 < len(units) and (
                tags[i + 1] in ("N", "A") or units[i + 1][0] == "of"
            )
            if before_phrase and not after_noun:
                tags[i] = "A"
    return tags


class SceneJudge(Backend):
    """Objects are vocabulary entries; matches are equal canonical names."""

    name = "scene"
    prompt_version = VERSION

    def __init__(self, vocabulary: SceneVocabulary | Mapping[str, Iterable[str]]) -> None:
        if not isinstance(vocabulary, SceneVocabulary):
            vocabulary = SceneVocabulary.from_mapping(vocabulary)
        self.vocabulary = vocabulary
        # The vocabulary is part of the cache key: another world, another answer.
        blob = json.dumps(sorted(vocabulary.surface.items())).encode("utf-8")
        digest = hashlib.sha256(blob).hexdigest()[:12]
        self.model = f"vocabulary-{len(vocabulary.names)}-{digest}"

    def compare(self, reference: str, candidate: str) -> Verdict:
        refs, cands = self.vocabulary.find(reference), self.vocabulary.find(candidate)
        matches = [Match(n, n, 1.0, "same vocabulary entry") for n in refs if n in cands]
        return self.verdict(refs, cands, matches, "exact vocabulary matching")

    def mentions(self, text: str, objects: Sequence[str]) -> tuple[bool, ...]:
        found = set(self.vocabulary.find(text))
        return tuple(self.vocabulary.canonical(o) in found for o in objects)
