"""Rich output for the terminal: live progress while a sweep runs, and the summary at its end.

The summary (end of `bench run`, and `bench report`) is the verdict, the top configurations
and where the reports are, in at most MAX_LINES lines at any width: the tables of every
trial and the populations' shared figures are left to the reports.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from rich import box
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from bench.read.render.cells import number, percent_interval
from bench.read.render.verdict import Standing, Verdict, verdict_lines

MAX_LINES = 30  # the whole summary, as printed (table rules and wrapped lines included)
TOP = 10        # configurations in its table, all families together
MISSING = "—"


def make_console() -> Console:
    """A console at the terminal's width; piped or logged, at $COLUMNS or else 160 columns."""
    out = Console()
    if not out.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        out = Console(width=160)  # a log file: no reason to squeeze tables into 80 columns
    return out


console = make_console()


def sweep_progress() -> Progress:
    """Two bars: trials of the sweep, epochs of the current trial."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=console, transient=False)


# ---------------------------------------------------------------- the top configurations


@dataclass(frozen=True)
class Column:
    title: str
    cell: Callable[[Standing], str]
    right: bool = True


def _acc(s: Standing) -> str:
    return MISSING if s.mean is None else f"{100 * s.mean:.2f}"


def _ci(s: Standing) -> str:
    return percent_interval(s.ci95) or MISSING


def _rank(s: Standing) -> str:
    return f"{s.rank}=" if s.tied else str(s.rank)


def _group_metric(name: str, kind: str) -> Callable[[Standing], str]:
    return lambda s: number(s.group.metric(name).mean, kind) or MISSING


# Every column, in display order. The configuration and its status are always shown.
KEPT = ("configuration", "status")
COLUMNS = (
    Column("#", _rank),
    Column("configuration", lambda s: s.label, right=False),
    Column("status", lambda s: s.ok_text, right=False),
    Column("acc %", _acc),
    Column("95% CI", _ci),
    Column("train s", lambda s: number(s.train_s, "s") or MISSING),
    Column("step ms", _group_metric("step_ms", "ms")),
    Column("params", _group_metric("params", "count")),
)
# As the terminal narrows, whole columns go in this order (numbers are never cut); past the
# last, the configuration label is shortened with an ellipsis.
DROP_ORDER = ("params", "step ms", "train s", "95% CI", "#", "acc %")


def top_standings(v: Verdict, count: int = TOP) -> list[Standing]:
    """The best `count` configurations: each family's best in turn, shown family by family."""
    queues = [list(f.standings) for f in v.families]
    taken = [0] * len(queues)
    while sum(taken) < count and any(t < len(q) for t, q in zip(taken, queues)):
        for i, queue in enumerate(queues):
            if taken[i] < len(queue) and sum(taken) < count:
                taken[i] += 1
    return [s for queue, n in zip(queues, taken) for s in queue[:n]]


def top_table(standings: list[Standing], width: int, console: Console) -> Table:
    """The standings as a table that fits `width`, dropping columns in DROP_ORDER."""
    shown = list(COLUMNS)
    for title in (None, *DROP_ORDER):
        shown = [c for c in shown if c.title != title]
        table = _table(shown, standings)
        excess = _natural_width(table, console) - width
        if excess <= 0:
            return table
    label = next(c for c in shown if c.title == "configuration")
    return _table(shown, standings, label_width=max(_widest(label, standings) - excess, 8))


def _table(columns: list[Column], standings: list[Standing], label_width: int | None = None) -> Table:
    """`label_width`: the configuration column's width, its labels shortened with an ellipsis;
    every other column is as wide as its widest cell, so no number is ever cut."""
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for c in columns:
        shortened = label_width is not None and c.title == "configuration"
        out.add_column(c.title, justify="right" if c.right else "left", no_wrap=True,
                       overflow="ellipsis" if shortened else "fold",
                       width=label_width if shortened else _widest(c, standings))
    for s in standings:
        out.add_row(*(Text(c.cell(s)) for c in columns))
    return out


def _widest(column: Column, standings: list[Standing]) -> int:
    return max([len(column.title), *(len(column.cell(s)) for s in standings)])


def _natural_width(table: Table, console: Console) -> int:
    return console.measure(table, options=console.options.update_width(10_000)).maximum


# ---------------------------------------------------------------- the summary


def summary(v: Verdict, footer: list[str | Text], console: Console) -> list[RenderableType]:
    """The verdict, the top configurations and `footer` (where the reports are), in at most
    MAX_LINES lines at the console's width. Verdict lines that do not fit are left to the
    report, with a line saying how many."""
    width = console.width
    standings = top_standings(v)
    table_part: list[RenderableType] = []
    if standings:
        configs = sum(len(f.standings) for f in v.families)
        title = f"top {len(standings)} of {configs} configurations" + (
            " (=: tied with its family's best)" if any(s.tied for s in standings) else "")
        table_part = [Text(title, style="bold"), top_table(standings, width, console)]
    tail = [Text(line) if isinstance(line, str) else line for line in footer]
    room = MAX_LINES - _lines(console, [*table_part, *tail])
    return [*_fitted(verdict_lines(v), room, console), *table_part, *tail]


def _fitted(lines: list[str], room: int, console: Console) -> list[Text]:
    """`lines` as printed, within `room` lines: past it, detail lines (indented ones, below a
    family's headline) go first, each family's last ones before any family's earlier ones,
    then headlines from the end; a last line says how many went to the report."""
    kept = list(range(len(lines)))
    for index in [*_drop_order(lines), None]:
        shown = [Text(lines[i]) for i in kept]
        if len(kept) < len(lines):
            shown.append(Text(f"… {len(lines) - len(kept)} more verdict lines in the report"))
        if _lines(console, shown) <= room:
            return shown
        if index is not None:
            kept.remove(index)
    return []


def _drop_order(lines: list[str]) -> list[int]:
    """Indices of `lines` in the order they are given up for room (see _fitted)."""
    depth, block, keys = 0, 0, {}
    for i, line in enumerate(lines):
        if line.startswith(" "):
            depth += 1
            keys[i] = (1, depth, block)
        else:
            depth, block = 0, block + 1
            keys[i] = (0, i, 0)
    return sorted(keys, key=keys.get, reverse=True)


def _lines(console: Console, parts: list[RenderableType]) -> int:
    """How many lines `parts` take when printed on `console`."""
    options = console.options
    return sum(len(console.render_lines(part, options, pad=False)) for part in parts)


def print_summary(v: Verdict, footer: list[str | Text], console: Console | None = None) -> None:
    console = console or make_console()
    for part in summary(v, footer, console):
        # A Text marked no_wrap (a path, a command) goes out whole, past the width if need be.
        console.print(part, soft_wrap=isinstance(part, Text) and bool(part.no_wrap))
