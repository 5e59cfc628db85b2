"""Rows read straight from the b-tree pages of an SQLite file, around any number of damaged pages.

A query stops at the first damaged page it meets, so SQL alone reads a table only up to its
first damaged region (and, backwards, down to its last one): rows between two damaged regions
would be lost. `salvage` instead walks every table's b-tree from its root page and decodes each
cell on each sound page (the file format: https://www.sqlite.org/fileformat2.html), skipping
only the pages and cells that do not parse. Pages cut off from their tree by a damaged interior
page are found afterwards, as pages that no tree and no freelist reaches, and their rows go to
the table whose page kind and column count they match.

Only what a results store uses is read: UTF-8 text, no auto-vacuum pointer maps. A file outside
that (or without a sound header page) yields None, and repair falls back to SQL alone.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_HEADER = b"SQLite format 3\x00"
_INTERIOR_INDEX, _INTERIOR_TABLE, _LEAF_INDEX, _LEAF_TABLE = 0x02, 0x05, 0x0A, 0x0D
_KINDS = (_INTERIOR_INDEX, _INTERIOR_TABLE, _LEAF_INDEX, _LEAF_TABLE)
_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}
_LOCK_BYTE = 1 << 30  # the page holding this file offset is never part of a b-tree


@dataclass
class Salvage:
    """Rows found per table (column values in schema order), and what could not be read:
    `damaged_pages` pages of the file that are not sound b-tree pages (nor overflow pages of a
    row that was read), and `damaged_cells` single cells (rows) on sound pages that did not
    decode."""

    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    damaged_pages: int = 0
    damaged_cells: int = 0


def salvage(data: bytes | memoryview, tables: dict[str, tuple[int, bool]]) -> Salvage | None:
    """Every readable row of `tables` (name -> (column count, WITHOUT ROWID)) in the SQLite
    file whose bytes are `data`; None when the file's header page cannot be read."""
    try:
        file = _File(data)
        master = Salvage()
        reached: set[int] = set()
        file.walk(1, master, "sqlite_master", reached)
    except (ValueError, IndexError):
        return None
    roots = {
        row[1]: row[3]
        for row in master.rows.get("sqlite_master", [])
        if len(row) == 5 and row[0] in ("table", "index") and isinstance(row[3], int)
    }
    found = Salvage(damaged_pages=master.damaged_pages, damaged_cells=master.damaged_cells)
    for name in tables:
        found.rows[name] = []
    for name, root in roots.items():  # indexes too: their pages are reached, not orphans
        if root > 1:
            file.walk(root, found, name if name in tables else None, reached)
    # Pages no tree reaches: cut off by a damaged interior page. Attribute by signature.
    signature: dict[tuple[bool, int], str | None] = {}
    for name, (width, without_rowid) in tables.items():
        key = (without_rowid, width)
        signature[key] = None if key in signature else name  # ambiguous: attribute to none
    unparsed = []
    for number in sorted(set(range(2, file.pages + 1)) - reached - file.free_pages()):
        if number != file.lock_page and not file.orphan(number, found, signature, reached):
            unparsed.append(number)
    # overflow pages of orphan rows were reached meanwhile; the rest cannot be read
    found.damaged_pages += sum(1 for number in unparsed if number not in reached)
    widths = {name: width for name, (width, _) in tables.items()}
    for name, rows in found.rows.items():
        kept = [row for row in rows if len(row) == widths[name]]
        found.damaged_cells += len(rows) - len(kept)
        found.rows[name] = kept
    return found


class _File:
    def __init__(self, data: bytes | memoryview) -> None:
        if bytes(data[:16]) != _HEADER:
            raise ValueError("not an SQLite file")
        size = int.from_bytes(data[16:18], "big")
        self.page_size = 65536 if size == 1 else size
        if self.page_size < 512 or self.page_size & (self.page_size - 1):
            raise ValueError("bad page size")
        self.usable = self.page_size - data[20]
        if int.from_bytes(data[52:56], "big") or int.from_bytes(data[56:60], "big") > 1:
            raise ValueError("auto-vacuum or a text encoding other than UTF-8")
        self.data = data
        pages = len(data) // self.page_size
        declared = int.from_bytes(data[28:32], "big")
        valid = data[24:28] == data[92:96]  # the header's page count is current
        self.pages = min(pages, declared) if declared and valid else pages
        self.lock_page = _LOCK_BYTE // self.page_size + 1

    def page(self, number: int) -> bytes:
        if not 1 <= number <= self.pages:
            raise ValueError(f"page {number} is outside the file")
        start = (number - 1) * self.page_size
        return bytes(self.data[start : start + self.page_size])

    def free_pages(self) -> set[int]:
        """Trunk and leaf pages of the freelist (stale rows live there: never read them)."""
        free: set[int] = set()
        trunk = int.from_bytes(self.data[32:36], "big")
        try:
            while trunk and trunk not in free:
                free.add(trunk)
                page = self.page(trunk)
                count = int.from_bytes(page[4:8], "big")
                for i in range(min(count, self.usable // 4 - 2)):
                    free.add(int.from_bytes(page[8 + 4 * i : 12 + 4 * i], "big"))
                trunk = int.from_bytes(page[:4], "big")
        except ValueError:
            pass  # a broken freelist: the pages it would name stay orphans (signature-checked)
        return free

    def walk(self, root: int, found: Salvage, table: str | None, reached: set[int]) -> None:
        """Rows of the b-tree at `root` into `found.rows[table]` (None: only mark pages)."""
        stack = [root]
        while stack:
            number = stack.pop()
            if number in reached:  # a page met twice: a damaged child pointer
                found.damaged_pages += 1
                continue
            reached.add(number)
            try:
                page, kind, cells, right = self._header(number)
            except (ValueError, IndexError):
                found.damaged_pages += 1
                continue
            children = []
            for child, record in self._cells(page, kind, cells, reached, found):
                if child:
                    children.append(child)
                if record is not None and table is not None:
                    found.rows.setdefault(table, []).append(record)
            if right:
                children.append(right)
            stack.extend(reversed(children))

    def orphan(
        self,
        number: int,
        found: Salvage,
        signature: dict[tuple[bool, int], str | None],
        reached: set[int],
    ) -> bool:
        """The rows on a page no tree reaches, given to the table they match, if one does;
        False when it is not a b-tree page."""
        try:
            page, kind, cells, _ = self._header(number)
        except (ValueError, IndexError):
            return False
        for _, record in self._cells(page, kind, cells, reached, found):
            if record is None:
                continue  # an interior page of a rowid table holds no rows
            table = signature.get((kind in (_LEAF_INDEX, _INTERIOR_INDEX), len(record)))
            if table is not None:
                found.rows[table].append(record)
        return True

    def _cells(
        self, page: bytes, kind: int, cells: list[int], reached: set[int], found: Salvage
    ) -> Iterator[tuple[int, tuple[Any, ...] | None]]:
        """(child page or 0, record or None) of each cell that decodes; the others are counted
        in `found.damaged_cells`."""
        for offset in cells:
            try:
                yield self._cell(page, kind, offset, reached)
            except (ValueError, IndexError, UnicodeDecodeError, struct.error):
                found.damaged_cells += 1

    def _header(self, number: int) -> tuple[bytes, int, list[int], int]:
        """(page, kind, cell offsets, right-most child or 0) of a b-tree page."""
        page = self.page(number)
        at = 100 if number == 1 else 0
        kind = page[at]
        if kind not in _KINDS:
            raise ValueError(f"page {number} is not a b-tree page")
        count = int.from_bytes(page[at + 3 : at + 5], "big")
        interior = kind in (_INTERIOR_INDEX, _INTERIOR_TABLE)
        pointers = at + (12 if interior else 8)
        end = pointers + 2 * count
        if end > self.usable:
            raise ValueError(f"page {number} claims too many cells")
        cells = [int.from_bytes(page[p : p + 2], "big") for p in range(pointers, end, 2)]
        if any(not end <= c < self.usable for c in cells):
            raise ValueError(f"page {number} points outside itself")
        right = int.from_bytes(page[at + 8 : at + 12], "big") if interior else 0
        if interior and not 2 <= right <= self.pages:
            raise ValueError(f"page {number} has a bad right child")
        return page, kind, cells, right

    def _cell(
        self, page: bytes, kind: int, at: int, reached: set[int]
    ) -> tuple[int, tuple[Any, ...] | None]:
        """(left child or 0, the cell's record or None) of the cell at offset `at`."""
        child = 0
        if kind in (_INTERIOR_INDEX, _INTERIOR_TABLE):
            child = int.from_bytes(page[at : at + 4], "big")
            if not 2 <= child <= self.pages:
                raise ValueError("bad child page")
            at += 4
            if kind == _INTERIOR_TABLE:
                return child, None
        size, at = _varint(page, at)
        if kind == _LEAF_TABLE:
            _, at = _varint(page, at)  # the rowid
        return child, _record(self._payload(page, at, size, kind == _LEAF_TABLE, reached))

    def _payload(self, page: bytes, at: int, size: int, table: bool, reached: set[int]) -> bytes:
        usable = self.usable
        most = usable - 35 if table else (usable - 12) * 64 // 255 - 23
        local = size
        if size > most:
            least = (usable - 12) * 32 // 255 - 23
            local = least + (size - least) % (usable - 4)
            local = local if local <= most else least
        if at + local > usable:
            raise ValueError("cell runs past its page")
        out = bytearray(page[at : at + local])
        if local < size:
            following = int.from_bytes(page[at + local : at + local + 4], "big")
            chain: list[int] = []
            while len(out) < size:
                if following in chain or following in reached or following < 2:
                    raise ValueError("broken overflow chain")
                overflow = self.page(following)
                chain.append(following)
                out += overflow[4 : 4 + min(size - len(out), usable - 4)]
                following = int.from_bytes(overflow[:4], "big")
            reached.update(chain)
        return bytes(out)


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = buf[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | buf[at + 8], at + 9


def _record(payload: bytes) -> tuple[Any, ...]:
    """The column values of one record (the record format of the file format's section 2.1)."""
    header, at = _varint(payload, 0)
    if not at <= header <= len(payload):
        raise ValueError("bad record header")
    types = []
    while at < header:
        serial, at = _varint(payload, at)
        types.append(serial)
    if at != header:
        raise ValueError("bad record header")
    values: list[Any] = []
    for serial in types:
        if serial == 0:
            values.append(None)
        elif serial in _INT_SIZES:
            n = _INT_SIZES[serial]
            values.append(int.from_bytes(payload[at : at + n], "big", signed=True))
            at += n
        elif serial == 7:
            values.append(struct.unpack(">d", payload[at : at + 8])[0])
            at += 8
        elif serial in (8, 9):
            values.append(serial - 8)
        elif serial >= 12:
            n = (serial - 12) // 2
            chunk = payload[at : at + n]
            values.append(chunk.decode("utf-8") if serial % 2 else chunk)
            at += n
        else:
            raise ValueError("reserved serial type")
    if at != len(payload):
        raise ValueError("record length does not match its header")
    return tuple(values)
