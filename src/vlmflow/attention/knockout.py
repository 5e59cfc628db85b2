"""Attention knockout (paper Eq. 3-4): block attention from target-role queries to source keys."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import torch

from vlmflow.attention.layers import ALL, Layers
from vlmflow.errors import VlmflowError
from vlmflow.roles import Role, parse_roles

# CLI names of the paper's three settings
SETTINGS = {
    "image-generated": ("image", "generated"),
    "image-query": ("image", "query"),
    "image-query+generated": ("image", "query+generated"),
}


@dataclass(frozen=True)
class Knockout:
    """At every layer in `layers`, queries with a role in `tgt` get no attention to keys with a
    role in `src` (added -inf on top of the causal mask): the paper's attention knockout,
    Sec. 4.1, Eq. 3-4. Layers are 0-indexed decoder layers of the language model. At a
    cross-attention layer (Llama 3.2 Vision), whose keys are all image, a knockout with `image`
    in `src` gives its target queries no cross-attention: their attention output there is 0.

    Build one with `Knockout.parse("image->query+generated", "from:12")` (the CLI's strings;
    VlmflowError for a bad setting or layer spec) or `Knockout.key_set({layer: positions})`.
    A layer spec outside the model's layers raises VlmflowError when a session resolves it.

    With `keys` set, the blocked keys are those explicit prompt positions per layer instead of a
    role set (top-k pruning blocks the image keys outside each layer's kept set).
    With `rows` set, only those batch rows are knocked out (None: every row), so one batch can
    hold several settings of the same prompt (`vlmflow.attention.batch`).
    """

    src: frozenset[Role] = frozenset({Role.IMAGE})
    tgt: frozenset[Role] = frozenset({Role.GENERATED})
    layers: Layers = ALL
    keys: tuple[tuple[int, tuple[int, ...]], ...] | None = None
    rows: frozenset[int] | None = None

    def on_rows(self, rows: Iterable[int]) -> Knockout:
        """The same knockout restricted to these batch rows."""
        return replace(self, rows=frozenset(int(r) for r in rows))

    @classmethod
    def parse(cls, setting: str, layers: str | Layers = "all") -> Knockout:
        """`"image->generated"`, `"image-query+generated"` (CLI names) -> Knockout."""
        text = setting.strip().lower()
        if text in SETTINGS:
            src, tgt = SETTINGS[text]
        elif "->" in text:
            src, tgt = text.split("->", 1)
        else:
            raise VlmflowError(
                f"bad knockout {setting!r}: use {', '.join(SETTINGS)} or SRC->TGT over roles"
            )
        return cls(parse_roles(src), parse_roles(tgt), Layers.parse(layers))

    @classmethod
    def key_set(
        cls,
        blocked: Mapping[int, Iterable[int]],
        tgt: str | frozenset[Role] = "generated",
    ) -> Knockout:
        """Block explicit key positions per layer: `{layer: positions}` for queries in `tgt`."""
        roles = parse_roles(tgt) if isinstance(tgt, str) else tgt
        keys = tuple(sorted((int(k), tuple(sorted(int(p) for p in v))) for k, v in blocked.items()))
        return cls(frozenset(), roles, Layers("all"), keys)

    def __str__(self) -> str:
        src = "+".join(r.name.lower() for r in sorted(self.src)) or "keys"
        tgt = "+".join(r.name.lower() for r in sorted(self.tgt))
        text = f"{src}->{tgt}@{self.layers}"
        if self.rows is not None:
            text += "[rows " + ",".join(str(r) for r in sorted(self.rows)) + "]"
        return text


@dataclass(frozen=True)
class ResolvedKnockout:
    """A knockout checked against a model: its layer indices and role lookup tables."""

    layers: frozenset[int]
    tgt: torch.Tensor  # (num_role_codes,) bool: query role blocked?
    src: torch.Tensor  # (num_role_codes,) bool: key role blocked?
    keys: dict[int, torch.Tensor]  # layer -> (k,) long positions
    rows: torch.Tensor | None = None  # (r,) long batch rows it applies to; None: all rows
    # layer -> first layer with the same key set: layers blocking the same positions share it
    # (one positions tensor, one split plan per step)
    key_set: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, knockout: Knockout, num_layers: int) -> ResolvedKnockout:
        def table(roles: frozenset[Role]) -> torch.Tensor:
            t = torch.zeros(len(Role), dtype=torch.bool)
            for r in roles:
                t[int(r)] = True
            return t

        keys: dict[int, torch.Tensor] = {}
        key_set: dict[int, int] = {}
        layers = knockout.layers.resolve(num_layers)
        if knockout.keys is not None:
            distinct: dict[tuple[int, ...], int] = {}  # positions -> first layer blocking them
            for layer, positions in knockout.keys:
                if not 0 <= layer < num_layers:
                    raise VlmflowError(
                        f"key set for layer {layer}: this model has layers 0-{num_layers - 1}"
                    )
                first = key_set[layer] = distinct.setdefault(positions, layer)
                # one tensor per distinct set
                keys[layer] = (
                    keys[first] if first != layer else torch.tensor(positions, dtype=torch.long)
                )
            layers = frozenset(keys)
        rows = None
        if knockout.rows is not None:
            if any(r < 0 for r in knockout.rows):
                raise VlmflowError(f"knockout rows {sorted(knockout.rows)} must be >= 0")
            rows = torch.tensor(sorted(knockout.rows), dtype=torch.long)
        return cls(layers, table(knockout.tgt), table(knockout.src), keys, rows, key_set)

    def blocked_keys(self, layer: int, key_roles: torch.Tensor) -> torch.Tensor:
        """(..., kv) bool on `key_roles`' device: the keys this knockout blocks at `layer`,
        from its key set there, else from its source roles; `key_roles` (..., kv) role codes."""
        if layer in self.keys:
            cols = torch.zeros(key_roles.shape, dtype=torch.bool, device=key_roles.device)
            pos = self.keys[layer].to(key_roles.device)
            cols[..., pos[pos < key_roles.shape[-1]]] = True
            return cols
        return self.src.to(key_roles.device)[key_roles.long()]


def blocked(
    knockouts: list[ResolvedKnockout],
    layer: int,
    query_roles: torch.Tensor,  # (b, q) int role codes
    key_roles: torch.Tensor,  # (b, kv) int role codes
    present: frozenset[int],  # role codes among the query rows, known on the host
    expand: int = 1,  # batch rows per prompt row (num_beams, num_return_sequences)
) -> torch.Tensor | None:
    """(b, q, kv) bool: True where attention is knocked out at `layer`; None if nothing is.

    `present` decides on the host whether a knockout can touch these rows at all, so decode
    steps never wait on the device to find out (e.g. `image -> query` while generating).
    Batch row r holds prompt row r // `expand`, which is what a knockout's `rows` name.
    """
    out: torch.Tensor | None = None
    for ko in knockouts:
        if layer not in ko.layers or not any(bool(ko.tgt[code]) for code in present):
            continue
        rows = ko.tgt.to(query_roles.device)[query_roles.long()]  # (b, q)
        if ko.rows is not None:
            prompt_rows = rows.shape[0] // expand
            chosen = torch.zeros(prompt_rows, dtype=torch.bool, device=rows.device)  # (b / e,)
            index = ko.rows.to(rows.device)
            chosen[index[index < prompt_rows]] = True
            rows = rows & chosen.repeat_interleave(expand)[:, None]
        cols = ko.blocked_keys(layer, key_roles)  # (b, kv)
        part = rows[:, :, None] & cols[:, None, :]
        out = part if out is None else out | part
    return out


@dataclass(frozen=True)
class Group:
    """Query rows of one attention call that share one set of kept keys."""

    rows: torch.Tensor  # (r,) long query indices within the call
    keys: torch.Tensor | None  # (k,) long kept key positions; None: every key, under `mask`
    mask: torch.Tensor | None  # (1, 1, r, k or kv) bool causal mask; None: all visible


@dataclass(frozen=True)
class Split:
    """A knockout computed without a (b, 1, q, kv) mask (`vlmflow.attention.backend`): the call
    runs plain causal attention, then recomputes each group's rows over its kept keys only and
    writes them over the plain rows. Exact: a row's output depends only on the keys it sees."""

    groups: tuple[Group, ...]  # empty: nothing is knocked out in this call
    last_row: torch.Tensor | None  # (1, 1, 1, kv) bool keys the last query sees; None: all
    covers: bool  # the groups hold every query row (no plain pass needed)


def row_groups(
    knockouts: list[ResolvedKnockout],
    layer: int,
    codes: torch.Tensor,  # (kv,) role codes of every key position, on the host
    start: int,  # position of the call's first query; its queries are [start, kv)
    rows: int,  # prompt rows of the batch
) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Query rows grouped by the keys knocked out for them at `layer`, when every batch row has
    the same ones: [(rows (r,) long absolute positions, blocked (kv,) bool)], one entry per
    distinct blocked key set (rows with nothing blocked are left out). None: the knockouts
    differ between batch rows (`rows` naming some rows only), so no shared grouping exists.
    """
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []  # per acting knockout: (q,), (kv,)
    queries = codes[start:].long()
    for ko in knockouts:
        if layer not in ko.layers:
            continue
        if ko.rows is not None and not set(range(rows)) <= set(ko.rows.tolist()):
            return None
        applies = ko.tgt[queries]  # (q,)
        if not bool(applies.any()):
            continue
        parts.append((applies, ko.blocked_keys(layer, codes)))  # (q,), (kv,)
    if not parts:
        return []
    signature = torch.zeros(queries.shape, dtype=torch.long)  # (q,) bit i: knockout i acts
    for i, (applies, _) in enumerate(parts):
        signature |= applies.long() << i
    groups = []
    for value in signature.unique().tolist():
        if value == 0:
            continue
        cols = torch.zeros(codes.shape, dtype=torch.bool)
        for i, (_, part) in enumerate(parts):
            if value >> i & 1:
                cols |= part
        groups.append(((signature == value).nonzero().flatten() + start, cols))
    return groups
