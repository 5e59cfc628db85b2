"""The offline judge: WordNet decides what is a physical object, WordNet + MiniLM match them.

Pipeline for one text:
1. tokens, with WordNet noun compounds merged ("traffic light", "hot dogs" -> "hot dog");
2. a small rule tagger picks which tokens are used as nouns (after a determiner or preposition)
   rather than verbs ("a man waits", "sheep graze") or noun modifiers ("orange vests",
   "coffee mug"); quantity heads ("a pair of") and noun phrases said to be absent ("no cars",
   "I cannot see a cat", "the cat is not visible": `negation.PHRASINGS`) are dropped;
3. a noun is an object when one of its four most frequent WordNet senses lies in the artifact,
   animal, person, plant, food or natural-object files and under none of the setting classes
   (ways, rooms, land, bodies of water, beverages...), and the word is on no non-object list;
4. objects of two texts match when they share a sense (fridge / refrigerator), one is a kind of
   the other (cyclist / person, puppy / dog), or their MiniLM embeddings are close.

No network, deterministic; once WordNet (1 s) and MiniLM (3 s) are loaded, two paragraph-long
descriptions compare in about 10 ms plus 40 ms for the embeddings on one CPU core.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from vlmflow.judge import lexicon, negation
from vlmflow.judge.protocol import Backend, Match, Verdict, greedy_matches
from vlmflow.judge.wordnet import Synset, WordNet

if TYPE_CHECKING:
    from vlmflow.judge.embeddings import Embedder

VERSION = "offline-v2"  # v2: absence read from negation.PHRASINGS

PHYSICAL_LEXNAMES = frozenset({"animal", "artifact", "food", "object", "person", "plant"})
# (lemma, sense number) of WordNet classes that describe a setting, not an object in it.
SETTING_CLASSES = (
    ("way", 6),  # road, street, path, highway, crosswalk
    ("room", 1),
    ("area", 5),  # a part of a structure with a function (kitchen area, lobby)
    ("geological_formation", 1),
    ("body_of_water", 1),
    ("land", 4),  # ground, earth's surface
    ("tract", 1),  # field, park, meadow
    ("sky", 1),
    ("celestial_body", 1),
    ("beverage", 1),
    ("liquid", 3),
    ("facility", 1),  # station, airport, marina
    ("mark", 4),  # line, stripe
    ("excavation", 1),
)
# Classes too general to count as a match of two different objects ("object" ~ "dog").
TOO_GENERAL = ("entity", "physical_entity", "object", "whole", "artifact", "thing", "matter")
TOP_SENSES = 4
EMBEDDING_THRESHOLD = 0.8  # compare: names this close are one object (bike / bicycle)
MENTION_THRESHOLD = 0.85  # mentions: closer still, so "puppy" does not answer "dog"

_TOKEN = re.compile(r"[a-z]+(?:[-'][a-z]+)*|[.,;:!?()]")


@dataclass(frozen=True)
class Noun:
    """A physical object found in a text: its display name and its physical WordNet senses."""

    name: str
    senses: frozenset[int]


@dataclass
class _Unit:
    text: str  # surface form, words joined by spaces
    lemmas: list[str]  # WordNet noun lemmas (underscored), empty when none
    tag: str = ""  # N noun, V verb, A adjective/modifier, F function word, P punctuation
    negated: bool = False


class OfflineJudge(Backend):
    """Lexical judge over WordNet 3.0 with MiniLM for names WordNet lacks."""

    name = "offline"
    prompt_version = VERSION

    def __init__(self, use_embeddings: bool = True) -> None:
        self.use_embeddings = use_embeddings
        self.model = "wordnet-3.0" + ("+all-minilm-l6-v2" if use_embeddings else "")

    @cached_property
    def wordnet(self) -> WordNet:
        from vlmflow.judge import wordnet

        return wordnet.load()

    @cached_property
    def _setting(self) -> frozenset[int]:
        wn = self.wordnet
        return frozenset(wn.offset_of(lemma, sense) for lemma, sense in SETTING_CLASSES)

    @cached_property
    def _drinks(self) -> frozenset[int]:
        wn = self.wordnet
        return frozenset((wn.offset_of("beverage", 1), wn.offset_of("liquid", 3)))

    @cached_property
    def _too_general(self) -> frozenset[int]:
        wn = self.wordnet
        return frozenset(o for lemma in TOO_GENERAL for o in wn.index.get(lemma, ()))

    @cached_property
    def _object_or_food(self) -> frozenset[int]:
        """Heads under which a Tops-file sense is physical (person, animal, plant; food)."""
        wn = self.wordnet
        return frozenset((wn.offset_of("object", 1), *wn.index.get("food", ())))

    @cached_property
    def _embedder(self) -> Embedder:
        from vlmflow.judge import embeddings

        return embeddings.load()

    # ------------------------------------------------------------------ extraction

    def is_physical(self, synset: Synset) -> bool:
        wn = self.wordnet
        ancestors = wn.ancestors(synset.offset)
        if ancestors & self._setting:
            return False
        if synset.lexname in PHYSICAL_LEXNAMES:
            return True
        if synset.lexname == "Tops":
            general = synset.offset in self._too_general
            return bool(ancestors & self._object_or_food) and not general
        return False

    def physical_senses(self, lemma: str) -> frozenset[int]:
        """Physical senses among a lemma's most frequent ones (empty: not an object word)."""
        if lemma in lexicon.NON_OBJECTS or lemma.replace("_", " ") in lexicon.NON_OBJECTS:
            return frozenset()
        senses = self.wordnet.senses(lemma)[:TOP_SENSES]
        if not senses or senses[0].lexname == "body":
            return frozenset()  # "its mouth", "her hand": parts of a body, not objects
        if self.wordnet.ancestors(senses[0].offset) & self._drinks:
            return frozenset()  # mainly a drink: "coffee", "tea" (not the coffee tree)
        first_person = senses[0].lexname == "person"
        return frozenset(
            s.offset
            for s in senses
            if self.is_physical(s) and (s.lexname != "person" or first_person)
        )

    def _worth_merging(self, lemma: str) -> bool:
        """Keep a WordNet compound when it names an object or a setting, not an idiom
        ("traffic light", "living room"; not "silver spoon", "cup of tea")."""
        if lemma in lexicon.NON_OBJECTS or self.physical_senses(lemma):
            return True
        senses = self.wordnet.senses(lemma)[:TOP_SENSES]
        return any(
            s.lexname == "location" or self.wordnet.ancestors(s.offset) & self._setting
            for s in senses
        )

    def extract(self, text: str) -> list[Noun]:
        """Physical objects a text mentions (not negated), first mention first, no duplicates."""
        units = self._tag(self._units(text))
        found: dict[str, Noun] = {}
        for i, unit in enumerate(units):
            if unit.tag != "N" or unit.negated:
                continue
            word = unit.text.replace(" ", "_")
            if word.rsplit("_", 1)[-1] in lexicon.PEOPLE_GROUPS:
                noun = self.noun("person")
            else:
                nxt = units[i + 1].text if i + 1 < len(units) else ""
                if word in lexicon.PARTITIVES and nxt == "of":
                    continue
                noun = self._noun_from_lemmas(word, unit.lemmas)
            if noun is None and unit.tag == "N" and not unit.lemmas:
                noun = Noun(_singular(word), frozenset())  # not in WordNet: "smartphone"
            if noun is not None and noun.name not in found:
                found[noun.name] = noun
        nouns = list(found.values())
        return [n for n in nouns if not any(self._names_kind(o, n) for o in nouns if o is not n)]

    def _names_kind(self, specific: Noun, general: Noun) -> bool:
        """In one text, "a person ... the cyclist" name one object: keep the specific name."""
        return not (specific.senses & general.senses) and self.is_kind_of(specific, general)

    def noun(self, name: str) -> Noun | None:
        """A bare object name as a Noun (its head word when the phrase is not in WordNet)."""
        words = _TOKEN.findall(name.lower())
        if not words:
            return None
        joined = "_".join(words)
        lemmas = self.wordnet.lemmas(joined)
        if lemmas:
            return self._noun_from_lemmas(joined, lemmas, keep_name=True)
        head_lemmas = self.wordnet.lemmas(words[-1])
        if not head_lemmas and words[-1] not in lexicon.NON_OBJECTS:
            return Noun(" ".join(words), frozenset())  # unknown to WordNet: names only
        head = self._noun_from_lemmas(words[-1], head_lemmas)
        if head is None:
            return None
        return Noun(" ".join(words), head.senses)

    def _noun_from_lemmas(
        self, word: str, lemmas: Sequence[str], keep_name: bool = False
    ) -> Noun | None:
        if word in lexicon.NON_OBJECTS:
            return None
        senses: set[int] = set()
        name = ""
        for lemma in lemmas:
            physical = self.physical_senses(lemma)
            if physical and not name:
                name = lemma
            senses |= physical
        if not senses:
            return None
        return Noun((lemmas[0] if keep_name else name).replace("_", " "), frozenset(senses))

    def _units(self, text: str) -> list[_Unit]:
        tokens = _TOKEN.findall(text.lower().replace("’", "'"))
        units: list[_Unit] = []
        i = 0
        while i < len(tokens):
            for n in (3, 2):
                chunk = tokens[i : i + n]
                if len(chunk) < n or not all(_is_content(t) and not _closed_tag(t) for t in chunk):
                    continue
                lemmas = self.wordnet.lemmas("_".join(chunk))
                if lemmas and self._worth_merging(lemmas[0]):
                    units.append(_Unit(" ".join(chunk), lemmas))
                    i += n
                    break
            else:
                token = tokens[i]
                if token.endswith("'s"):
                    token = token[:-2]
                units.append(_Unit(token, self.wordnet.lemmas(token) if _is_content(token) else []))
                i += 1
        return units

    def _tag(self, units: list[_Unit]) -> list[_Unit]:
        wn = self.wordnet
        for i, unit in enumerate(units):
            word = unit.text
            prev = units[i - 1] if i else None
            unit.tag = _closed_tag(word)
            if unit.tag:
                continue
            verb = _verb_capable(wn, word)
            if not unit.lemmas:
                unit.tag = "V" if verb else "A"
                if not verb and _unknown_noun(wn, units, i):
                    unit.tag = "N"
                continue
            unit.tag = "N"
            if prev is None or prev.tag == "P":
                continue
            before = prev.text
            if before in lexicon.DETERMINERS or before in lexicon.PREPOSITIONS - {"to"}:
                continue
            if prev.tag == "A" or (before in lexicon.COLOURS and before in prev.lemmas):
                continue
            after_to = before == "to" and not word.endswith("s")
            if verb and (after_to or before in lexicon.SUBJECT_PRONOUNS):
                unit.tag = "V"
            elif before in lexicon.AUXILIARIES and (
                word.endswith(("ing", "ed")) or not _strong_noun(wn, unit)
            ):
                unit.tag = "V" if verb else "A"
            elif prev.tag in ("N", "V") and verb and _verb_form(wn, word, unit):
                unit.tag = "V"
            elif (
                prev.tag == "N"
                and verb
                and _plural_subject(units, i - 1)
                and _before_object(units, i)
                and _verbish(wn, unit)
            ):
                unit.tag = "V"  # "a knife and a fork rest on", "orange vests stand near"
            elif prev.tag == "F" and _is_adverb(before) and word in wn.adjectives:
                unit.tag = "A"  # "relatively empty"
            elif before in lexicon.CONJUNCTIONS or before in lexicon.ADVERBS:
                last = next((u for u in reversed(units[: i - 1]) if u.tag in "NVA"), None)
                if verb and last is not None and last.tag == "V":
                    unit.tag = "V"
        # Noun modifiers: "orange vests", "coffee mug", "chestnut horse".
        for i, unit in enumerate(units[:-1]):
            if unit.tag == "N" and units[i + 1].tag == "N" and unit.text in unit.lemmas:
                unit.tag = "A"  # a singular noun before a noun modifies it
            elif unit.tag == "N" and _coordinated_adjective(wn, units, i):
                unit.tag = "A"  # "a blue and yellow train", "a natural and scenic setting"
            elif unit.tag == "N" and unit.text in lexicon.COLOURS:
                plural = unit.text not in unit.lemmas  # "oranges" is fruit, "orange" a colour
                before = units[i - 1].text if i else ""
                if not plural and before not in lexicon.DETERMINERS:
                    unit.tag = "A"
        if units and units[-1].tag == "N" and units[-1].text in lexicon.COLOURS:
            units[-1].tag = "A"
        # Noun phrases said to be absent: "no cars", "I cannot see a cat", "the cat is absent".
        absent = negation.absent_positions([u.text for u in units], [u.tag for u in units])
        for i, unit in enumerate(units):
            unit.negated = i in absent
        return units

    # ------------------------------------------------------------------ matching

    def relation(self, a: Noun, b: Noun) -> float:
        """1 for a shared sense, 0.9 when one is a kind of the other, else 0."""
        if a.name == b.name or a.senses & b.senses:
            return 1.0
        if self.is_kind_of(a, b) or self.is_kind_of(b, a):
            return 0.9
        return 0.0

    def is_kind_of(self, specific: Noun, general: Noun) -> bool:
        """Some sense of `general` is a hypernym of some sense of `specific`."""
        targets = general.senses - self._too_general
        return any(self.wordnet.ancestors(s) & targets for s in specific.senses)

    def _scores(self, refs: list[Noun], cands: list[Noun]) -> dict[tuple[str, str], float]:
        scores = {(r.name, c.name): self.relation(r, c) for r in refs for c in cands}
        if self.use_embeddings and refs and cands:
            sims = self._embedder.similarity([r.name for r in refs], [c.name for c in cands])
            for i, r in enumerate(refs):
                for j, c in enumerate(cands):
                    if sims[i][j] >= EMBEDDING_THRESHOLD:
                        key = (r.name, c.name)
                        scores[key] = max(scores[key], min(sims[i][j], 0.95))
        return scores

    def compare(self, reference: str, candidate: str) -> Verdict:
        refs, cands = self.extract(reference), self.extract(candidate)
        matches = greedy_matches(self._scores(refs, cands), threshold=0.5)
        reasons = {1.0: "same object", 0.9: "one is a kind of the other"}
        matches = [
            Match(m.reference, m.candidate, m.score, reasons.get(m.score, "similar names"))
            for m in matches
        ]
        rationale = (
            f"reference objects: {', '.join(n.name for n in refs) or 'none'}; "
            f"candidate objects: {', '.join(n.name for n in cands) or 'none'}"
        )
        return self.verdict([n.name for n in refs], [n.name for n in cands], matches, rationale)

    def mentions(self, text: str, objects: Sequence[str]) -> tuple[bool, ...]:
        found = self.extract(text)
        answers: list[bool] = []
        unresolved: dict[int, str] = {}  # answer index -> name for the embedding fallback
        for name in objects:
            query = self.noun(name)
            if query is None or not found:
                answers.append(False)
                continue
            hit = any(
                o.name == query.name or o.senses & query.senses or self.is_kind_of(o, query)
                for o in found
            )
            if not hit and self.use_embeddings:
                unresolved[len(answers)] = query.name
            answers.append(hit)
        if unresolved:
            names = list(unresolved.values())
            sims = self._embedder.similarity(names, [o.name for o in found])
            for index, row in zip(unresolved, sims, strict=True):
                answers[index] = max(row) >= MENTION_THRESHOLD
        return tuple(answers)


_CLOSED = lexicon.FUNCTION_WORDS | {"him", "them", "us", "me", "that", "than", "if", "each", "ly"}


def _is_content(token: str) -> bool:
    return token.replace(" ", "").replace("-", "").replace("'", "").isalpha()


def _closed_tag(word: str) -> str:
    if not _is_content(word):
        return "P"
    if word in _CLOSED:
        return "F"
    if word.endswith("ly") and len(word) > 4 and word not in ("fly", "lily", "belly", "jelly"):
        return "F"
    return ""


def _verb_lemmas(word: str) -> list[str]:
    candidates = [word]
    for end, repl in (("ies", "y"), ("es", ""), ("s", ""), ("ied", "y"), ("ed", ""), ("ed", "e")):
        if word.endswith(end):
            candidates.append(word[: -len(end)] + repl)
    if word.endswith("ing"):
        stem = word[:-3]
        candidates += [stem, stem + "e"]
        if len(stem) > 2 and stem[-1] == stem[-2]:
            candidates.append(stem[:-1])
    if word.endswith("ed") and len(word) > 4 and word[-3] == word[-4]:
        candidates.append(word[:-3])
    return candidates


def _verb_capable(wn: WordNet, word: str) -> bool:
    return any(c in wn.verbs for c in _verb_lemmas(word))


def _verb_form(wn: WordNet, word: str, unit: _Unit) -> bool:
    """After a noun: inflected verb forms, or a word used far more as a verb than a noun."""
    if word.endswith(("ing", "ed")):
        return True
    lemma = unit.lemmas[0] if unit.lemmas else word
    if word.endswith("s") and word not in unit.lemmas:
        return wn.other_count(lemma) >= wn.noun_count(lemma)
    return wn.other_count(lemma) > 2 * max(wn.noun_count(lemma), 1)


def _unknown_noun(wn: WordNet, units: list[_Unit], i: int) -> bool:
    """A word WordNet lacks entirely, standing where a noun stands ("a smartphone.")."""
    word = units[i].text
    if " " in word or "-" in word or "'" in word or word.endswith(("ly", "ed", "ing", "ful")):
        return False
    if word in wn.adjectives or _singular(word) in wn.adjectives or len(word) < 4:
        return False
    prev = units[i - 1].text if i else ""
    nxt = units[i + 1] if i + 1 < len(units) else None
    after_det = prev in lexicon.DETERMINERS or prev in lexicon.COLOURS
    if nxt is None or _closed_tag(nxt.text) == "P":
        return after_det
    follows = lexicon.CONJUNCTIONS | lexicon.PREPOSITIONS | lexicon.AUXILIARIES
    return after_det and nxt.text in follows


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _before_object(units: list[_Unit], i: int) -> bool:
    """The next word starts a noun phrase or a prepositional phrase."""
    nxt = units[i + 1].text if i + 1 < len(units) else ""
    return nxt in lexicon.DETERMINERS or nxt in lexicon.PREPOSITIONS or nxt in lexicon.ADVERBS


def _verbish(wn: WordNet, unit: _Unit) -> bool:
    lemma = unit.lemmas[0]
    return 2 * wn.other_count(lemma) >= wn.noun_count(lemma)


def _coordinated_adjective(wn: WordNet, units: list[_Unit], i: int) -> bool:
    """An adjective joined to another: "blue and yellow", "natural and scenic"."""
    word = units[i].text
    if word not in wn.adjectives or i + 2 >= len(units) or units[i + 1].text not in ("and", "or"):
        return False
    other = units[i + 2]
    if other.text in lexicon.COLOURS and word in lexicon.COLOURS:
        return True
    return other.text in wn.adjectives and not other.lemmas


def _plural_subject(units: list[_Unit], j: int) -> bool:
    """The noun ending at j heads a plural subject: a plural, or "X and Y"."""
    if units[j].text not in units[j].lemmas:
        return True
    for unit in reversed(units[max(0, j - 4) : j]):
        if unit.text == "and":
            return True
        if unit.tag in ("P", "V"):
            return False
    return False


def _is_adverb(word: str) -> bool:
    return word in lexicon.ADVERBS or (word.endswith("ly") and len(word) > 4)


def _strong_noun(wn: WordNet, unit: _Unit) -> bool:
    lemma = unit.lemmas[0]
    return wn.noun_count(lemma) >= wn.other_count(lemma)
