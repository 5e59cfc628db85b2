"""The scene judge: exact matching against the closed vocabulary of a generated scene world.

When the images come from a world with a known object set, the judge need not guess what is an
object: an object is a vocabulary entry named in the text by its name, a synonym or a plural, and
two texts agree on it when they name the same entry. Deterministic, instant, no dependencies.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlmflow.judge import lexicon
from vlmflow.judge.protocol import Backend, Match, Verdict

VERSION = "scene-v1"

_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*|[.,;:!?()]")


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
        """Canonical names a text names, first mention first; negated phrases ("no dog") skipped."""
        tokens = _WORD.findall(text.lower().replace("’", "'"))
        longest = max((len(s.split()) for s in self.surface), default=1)
        found: list[str] = []
        negating = False
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token in lexicon.NEGATORS:
                negating = True
            elif token in lexicon.CLAUSE_BREAKS:
                negating = False
            for n in range(min(longest, len(tokens) - i), 0, -1):
                name = self.surface.get(" ".join(tokens[i : i + n]))
                if name is not None:
                    if not negating and name not in found:
                        found.append(name)
                    i += n
                    break
            else:
                i += 1
        return found


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
