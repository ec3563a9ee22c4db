"""Rich output for the terminal: live progress while a sweep runs, tables at the end."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from bench.render import table
from bench.render.aggregate import Group

console = Console()
if not console.is_terminal:  # piped or logged: don't squeeze tables into 80 columns
    console = Console(width=160)


def results_table(records: list[dict], title: str = "results") -> Table:
    out = Table(title=title, show_lines=False)
    for name, right in zip(table.titles(), table.right_aligned()):
        out.add_column(name, justify="right" if right else "left", no_wrap=right)
    styles = {"ok": "", "diverged": "yellow", "failed": "red"}
    for record, cells in zip(records, table.rows(records)):
        out.add_row(*cells, style=styles.get(record["status"], ""))
    return out


def seeds_table(groups: list[Group], title: str) -> Table:
    """One row per configuration, its seeds aggregated (mean ± sd)."""
    out = Table(title=title, show_lines=False)
    for name in table.group_titles():
        left = name in ("configuration", "status")
        out.add_column(name, justify="left" if left else "right", no_wrap=not left)
    for cells in table.group_rows(groups):
        out.add_row(*cells)
    return out


def sweep_progress() -> Progress:
    """Two bars: trials of the sweep, epochs of the current trial."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=console, transient=False)
