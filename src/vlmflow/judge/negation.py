"""Absence as people write it: the table of phrasings that say an object is not in the picture.

A phrasing is a run of words, written with `{a|b}` for alternatives, and the side of it on which
the absent noun phrase stands:
- `after`: the phrasing opens the absent phrase ("no cats", "without a hat", "I cannot see a
  cat", "there isn't any dog", "no sign of a bus", "neither a cat nor a dog", "lacks a handle");
- `before`: it closes one ("the cat is not visible", "a dog is absent", "cars cannot be seen").

The absent phrase is one noun phrase, or several joined by "or" / "nor", by "and" before a bare
noun ("no chairs and tables") or by commas in a list that ends with one of those ("no cars,
trucks or buses"); it ends at anything else (a verb, a preposition other than "of", a clause
break), so "there is no cat on the sofa" keeps the sofa and "a man without a hat and a dog"
keeps the dog. Words that only look negative are no phrasing: "no-one", "nothing", "none of",
"not only ... but also".
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

from vlmflow.judge import lexicon

_BE = "{is|are|was|were}"
_BE_NOT = "{is not|are not|was not|were not|isn't|aren't|wasn't|weren't}"
_DO_NOT = "{do not|does not|did not|don't|doesn't|didn't}"
_CAN_NOT = "{cannot|can not|can't|could not|couldn't}"
_SEE = "{see|spot|find|notice|observe|detect|identify|make out}"
_HAVE = "{have|has|wear|hold|carry|contain|include|show|feature|depict}"
_HAVING = "{wearing|holding|carrying|having|containing|including|showing|featuring}"
_ADVERB = "{|really|clearly|quite|actually|even|definitely}"  # optional: "cannot really see"
_VISIBLE = (
    "{visible|present|seen|shown|pictured|depicted|included|there|in sight|in view"
    "|in the image|in the picture|in the photo|in the scene|anywhere}"
)

# (phrasing, side of the absent noun phrase)
PHRASINGS: tuple[tuple[str, str], ...] = (
    ("{" + "|".join(sorted(lexicon.NEGATORS)) + "}", "after"),  # no, without, neither, nor
    ("{lacks|lack|lacking|lacked|missing}", "after"),
    ("{absence|lack} of", "after"),
    ("{free|devoid} of", "after"),
    (f"there {_BE_NOT}", "after"),
    ("not {a|an|any}", "after"),  # "a dog on the grass, not a cat"
    (f"{_CAN_NOT} {_ADVERB} {_SEE}", "after"),
    (f"{_DO_NOT} {_ADVERB} {_SEE}", "after"),
    (f"{_DO_NOT} {_HAVE}", "after"),
    (f"{_BE_NOT} {_HAVING}", "after"),
    (f"{_BE_NOT} {_VISIBLE}", "before"),
    (f"{_BE} {{absent|missing|gone|nowhere to be seen|not to be seen}}", "before"),
    (f"{_CAN_NOT} be {{seen|found|spotted|made out}}", "before"),
    (f"{_DO_NOT} {{appear|appear to be present}}", "before"),
)
SIDES = ("after", "before")

_ALTERNATIVES = re.compile(r"\{([^{}]*)\}")


def expand(phrasing: str) -> list[tuple[str, ...]]:
    """Every word sequence a phrasing stands for: "{is|are} absent" -> [(is, absent), (are,
    absent)]. Raises ValueError on an unbalanced brace."""
    parts = _ALTERNATIVES.split(phrasing)  # literal, alternatives, literal, ...
    choices = [[p] if i % 2 == 0 else p.split("|") for i, p in enumerate(parts)]
    out: list[tuple[str, ...]] = []
    for combo in itertools.product(*choices):
        text = "".join(combo)
        if "{" in text or "}" in text:
            raise ValueError(f"unbalanced braces in phrasing {phrasing!r}")
        out.append(tuple(text.split()))
    return out


def _cues() -> dict[tuple[str, ...], str]:
    cues: dict[tuple[str, ...], str] = {}
    for phrasing, side in PHRASINGS:
        if side not in SIDES:
            raise ValueError(f"phrasing {phrasing!r}: side {side!r} is not one of {SIDES}")
        for words in expand(phrasing):
            cues[words] = side
    return cues


CUES = _cues()  # word sequence -> side
_LONGEST = max(len(words) for words in CUES)

_CONTINUE = frozenset({"or", "nor", "either", "of"})
_LIST_ENDS = frozenset({"and", "or", "nor"})
_LIST_STARTS = frozenset({"neither", "both", "either"})


def absent_positions(words: Sequence[str], tags: Sequence[str]) -> set[int]:
    """Indices of the words of phrasings of absence and of the noun phrases they say are absent
    (the phrasing's own words are no objects either: "does not wear a hat" names no wear).

    `words`: lower-case words (a multi-word unit such as "traffic light" counts as one);
    `tags`: one per word, "N" noun, "A" adjective or modifier, anything else otherwise
    (determiners are recognised by word). Returns a set of indices into `words`.
    """
    if len(words) != len(tags):
        raise ValueError(f"{len(words)} words but {len(tags)} tags")
    absent: set[int] = set()
    i = 0
    while i < len(words):
        for n in range(min(_LONGEST, len(words) - i), 0, -1):
            side = CUES.get(tuple(words[i : i + n]))
            if side is None:
                continue
            absent.update(range(i, i + n))
            if side == "after":
                absent |= _phrase_after(words, tags, i + n)
            else:
                absent |= _phrase_before(words, tags, i)
            i += n - 1
            break
        i += 1
    return absent


def _in_phrase(word: str, tag: str) -> bool:
    return tag in ("N", "A") or word in lexicon.DETERMINERS


def _phrase_after(words: Sequence[str], tags: Sequence[str], start: int) -> set[int]:
    """The noun phrase (or coordinated list of them) that starts at `start`."""
    out: set[int] = set()
    for i in range(start, len(words)):
        word = words[i]
        if _in_phrase(word, tags[i]) or word in _CONTINUE:
            out.add(i)
        elif word == "and" and i + 1 < len(words) and tags[i + 1] in ("N", "A"):
            out.add(i)  # "no chairs and tables"; "no cat and a dog" ends at "and"
        elif word == "," and _list_continues(words, tags, i + 1):
            out.add(i)  # "no cars, trucks or buses"
        else:
            break
    return out


def _list_continues(words: Sequence[str], tags: Sequence[str], start: int) -> bool:
    """After a comma: more noun phrases follow, the last joined by "and" / "or" / "nor"."""
    for i in range(start, len(words)):
        if words[i] in _LIST_ENDS:
            return i > start
        if not (_in_phrase(words[i], tags[i]) or words[i] == ","):
            return False
    return False


def _phrase_before(words: Sequence[str], tags: Sequence[str], end: int) -> set[int]:
    """The noun phrase, or list of them, that ends just before `end`: "the cat and the dog are
    absent". Phrases before an "and", "or" or comma count only when the clause starts with
    them ("a dog sits on a bench and a cat is absent" keeps the bench)."""
    last: set[int] = set()  # the phrase next to the phrasing
    earlier: set[int] = set()  # phrases before a list word
    i = end - 1
    while i >= 0:
        word = words[i]
        if word in _LIST_ENDS or word == ",":
            earlier.add(i)
        elif _in_phrase(word, tags[i]) or word in _CONTINUE or word in _LIST_STARTS:
            (earlier if earlier else last).add(i)
        else:
            break
        i -= 1
    starts_clause = i < 0 or words[i] in lexicon.CLAUSE_BREAKS
    return last | earlier if starts_clause else last
