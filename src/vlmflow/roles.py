"""The four token roles of the paper (Sec. 3) and their integer codes in role tensors."""

from __future__ import annotations

from enum import IntEnum

from vlmflow.errors import VlmflowError


class Role(IntEnum):
    """The role of a sequence position (paper Sec. 3), stored as its integer code in role
    tensors (`(b, kv)` int, one code per key position) and used to name knockout sources and
    targets (`"image->query+generated"`, `vlmflow.roles.parse_roles`).

    Prompt positions are PREFIX, IMAGE or QUERY; decode steps are GENERATED; PAD marks batch
    padding, which no query attends to.
    """

    PREFIX = 0  # prompt positions before the first image position (BOS, system prompt, "USER:")
    IMAGE = 1  # image tokens, including separators and markers inside the image span
    QUERY = 2  # prompt positions after the first image position that are not image
    GENERATED = 3  # generated tokens: the queries of decode steps
    PAD = 4  # padding, never attended


ROLE_NAMES = ("prefix", "image", "query", "generated")


def parse_roles(text: str | set[str] | frozenset[str] | tuple[str, ...]) -> frozenset[Role]:
    """`"query+generated"` or `{"query", "generated"}` -> role set."""
    names = text.split("+") if isinstance(text, str) else list(text)
    roles = set()
    for name in names:
        name = name.strip().lower()
        if name not in ROLE_NAMES:
            raise VlmflowError(f"unknown role {name!r}: use one of {', '.join(ROLE_NAMES)}")
        roles.add(Role(ROLE_NAMES.index(name)))
    if not roles:
        raise VlmflowError("empty role set: name at least one of prefix, image, query, generated")
    return frozenset(roles)
