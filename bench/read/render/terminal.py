"""Rich output for the terminal: live progress while a sweep runs, tables at the end."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from bench.read.render import table
from bench.read.render.aggregate import Group
from bench.read.render.document import Table as DocumentTable
from bench.contract.schema import Record

console = Console()
if not console.is_terminal:  # piped or logged: don't squeeze tables into 80 columns
    console = Console(width=160)


def results_table(records: list[Record], title: str = "results") -> Table:
    """One row per trial, coloured by status."""
    styles = {"ok": "", "diverged": "yellow", "failed": "red"}
    return _table(title, table.titles(), table.right_aligned(), table.rows(records),
                  [styles.get(r.status, "") for r in records])


def seeds_table(groups: list[Group], title: str) -> Table:
    """One row per configuration, its seeds aggregated (mean ± sd)."""
    rows = table.group_rows(groups)
    return _table(title, table.group_titles(), table.group_right_aligned(), rows)


def _table(title: str, titles: list[str], right: list[bool], rows: list[list[str]],
           styles: list[str] | None = None) -> Table:
    out = Table(title=title, show_lines=False)
    for name, right_aligned in zip(titles, right):
        out.add_column(name, justify="right" if right_aligned else "left", no_wrap=right_aligned)
    for cells, style in zip(rows, styles or [""] * len(rows)):
        out.add_row(*cells, style=style)
    return out


def sweep_progress() -> Progress:
    """Two bars: trials of the sweep, epochs of the current trial."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=console, transient=False)


def document_table(source: DocumentTable, title: str) -> Table:
    """A report table (bench.read.render.document) as a rich table, its caption left out."""
    return _table(title, list(source.columns), list(source.right),
                  [[cell.text for cell in row] for row in source.rows])
