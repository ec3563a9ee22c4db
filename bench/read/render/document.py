"""The format-neutral report: sections of facts, paragraphs and tables of cells.

Builders (bench.read.render.sections) decide what is shown; renderers (markdown,
html) decide only how. Every string here is plain text: renderers escape it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Cell(NamedTuple):
    """A table cell: its text, and the value it sorts by (None sorts last)."""

    text: str
    sort: float | str | None = None


@dataclass(frozen=True)
class Table:
    """Columns, their alignment, and rows of cells; `caption` says what the numbers are.

    `wrap` names the columns of prose (errors, command lines) that may wrap onto several
    lines; every other cell, a configuration's label above all, stays on one line.
    """

    title: str
    columns: tuple[str, ...]
    right: tuple[bool, ...]
    rows: tuple[tuple[Cell, ...], ...]
    caption: str = ""
    wrap: tuple[str, ...] = ()


@dataclass(frozen=True)
class Facts:
    """A bulleted list of 'name: value' lines."""

    items: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Para:
    text: str


Block = Table | Facts | Para


@dataclass(frozen=True)
class Section:
    """A titled part of the report; `id` anchors it (HTML) and lets renderers add to it."""

    id: str
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Report:
    title: str
    sections: tuple[Section, ...]


def table(title: str, columns: list[tuple[str, bool]], rows: list[list[Cell]],
          caption: str = "", wrap: tuple[str, ...] = ()) -> Table:
    """A Table from (title, right-aligned) column pairs."""
    return Table(title, tuple(c for c, _ in columns), tuple(r for _, r in columns),
                 tuple(tuple(row) for row in rows), caption, wrap)
