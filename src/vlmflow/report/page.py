"""The report's HTML: escaping, tables, figures and the page around the sections.

Everything the page needs is inline (CSS here, the viewer's script in `viewer.py`), so the
report opens from the file system with no network. Figures are separate PNG files referenced
by relative path (see `figures.py` for why).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

CSS = """
:root { --ink: #1d232a; --muted: #5f6b76; --line: #d9dee3; --soft: #f4f6f8; --accent: #1f77b4; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0; background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 1.5rem 1.5rem 4rem; }
h1 { font-size: 1.7rem; margin: 0 0 .3rem; }
h2 { font-size: 1.3rem; margin: 2.5rem 0 .4rem; padding-top: .8rem;
     border-top: 2px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; }
p.lead, .muted { color: var(--muted); }
nav.toc { background: var(--soft); padding: .6rem 1rem; border-radius: 6px; margin: 1rem 0;
          display: flex; flex-wrap: wrap; gap: .3rem 1.2rem; }
nav.toc a { white-space: nowrap; }
a { color: var(--accent); }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: .9rem; margin-top: .3rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .88rem; }
th, td { border-bottom: 1px solid var(--line); padding: .25rem .6rem; text-align: left;
         vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
.note { background: #fff8e1; border-left: 4px solid #f2c14e; padding: .5rem .8rem;
        margin: .8rem 0; }
details > summary { cursor: pointer; color: var(--accent); }
pre { background: var(--soft); padding: .5rem .7rem; overflow-x: auto; font-size: .8rem;
      white-space: pre-wrap; word-break: break-word; }
code { font-size: .9em; }
.viewer { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.viewer-stage { position: relative; width: 384px; line-height: 0; background: #222; }
.viewer-stage img, .viewer-stage canvas { width: 384px; display: block; }
.viewer-stage canvas { position: absolute; left: 0; top: 0; height: 100%; }
.viewer-panel { flex: 1 1 320px; min-width: 280px; }
.viewer-panel label { display: block; margin: .5rem 0 .15rem; font-weight: 600; }
.viewer-panel input[type=range] { width: 100%; }
.viewer-layer-label { font-size: 1.2rem; font-weight: 600; margin: .4rem 0; }
.viewer-text { background: var(--soft); padding: .5rem .7rem; border-radius: 4px;
               white-space: pre-wrap; }
.viewer-text .tok { cursor: pointer; border-radius: 2px; }
.viewer-text .tok:hover { outline: 1px solid var(--line); }
.viewer-text .tok-on { background: #ffd54f; }
.shares { display: flex; height: 14px; width: 100%; border-radius: 3px; overflow: hidden;
          margin: .3rem 0; background: var(--line); }
.shares span { display: block; height: 100%; }
.legend span { display: inline-block; margin-right: .8rem; font-size: .85rem; }
.legend i { display: inline-block; width: .8rem; height: .8rem; margin-right: .25rem;
            vertical-align: -1px; border-radius: 2px; }
"""


def esc(value: Any) -> str:
    """HTML-escaped text of `value` (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 3) -> str:
    """A table cell's text for a number: fixed digits, '–' for missing values."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN: no data, not a number to read
            return "–"
        return f"{value:.{digits}f}"
    return esc(value)


@dataclass(frozen=True)
class Column:
    """A table column: header text, and whether its cells are numbers (right-aligned)."""

    title: str
    numeric: bool = False


def table(columns: Sequence[Column | str], rows: Iterable[Sequence[Any]], digits: int = 3) -> str:
    """An HTML table; numeric cells are formatted with `number`, others escaped."""
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    head = "".join(
        f'<th class="num">{esc(c.title)}</th>' if c.numeric else f"<th>{esc(c.title)}</th>"
        for c in cols
    )
    body = []
    for row in rows:
        cells = []
        for col, value in zip(cols, row, strict=True):
            if col.numeric:
                cells.append(f'<td class="num">{number(value, digits)}</td>')
            else:
                cells.append(f"<td>{esc(value) if value is not None else '–'}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def paragraph(text: str, css: str = "") -> str:
    attr = f' class="{css}"' if css else ""
    return f"<p{attr}>{esc(text)}</p>"


def collapsed(summary: str, body_html: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body_html}</details>"


@dataclass
class Section:
    """One part of the report: an anchor, a heading, the paper reference and HTML blocks."""

    anchor: str
    title: str
    paper: str = ""
    blocks: list[str] = field(default_factory=list)

    def add(self, block: str) -> None:
        self.blocks.append(block)

    def html(self) -> str:
        paper = f' <span class="muted">({esc(self.paper)})</span>' if self.paper else ""
        return (
            f'<section id="{esc(self.anchor)}" data-section="{esc(self.anchor)}">'
            f"<h2>{esc(self.title)}{paper}</h2>{''.join(self.blocks)}</section>"
        )


def document(title: str, intro: Sequence[str], sections: Sequence[Section], script: str) -> str:
    """The whole page: header, table of contents, sections, inline script."""
    toc = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(s.html() for s in sections)
    script_tag = f"<script>{script}</script>" if script else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body><main><h1>{esc(title)}</h1>{''.join(intro)}"
        f'<nav class="toc">{toc}</nav>{body}</main>{script_tag}</body></html>\n'
    )
