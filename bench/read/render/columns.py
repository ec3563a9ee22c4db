"""Table columns and captions shared by the report's section builders.

A column is (title, right-aligned, cell of a seed group); accuracies always name the
data that produced them.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.read.render import cells
from bench.read.render.aggregate import Group
from bench.read.render.cells import Cell, stat_cell, text_cell
from bench.read.render.document import Table, table
from bench.read.render.runs import Run, data_identity
from bench.contract.schema import UNITS

Column = tuple[str, bool, Callable[[Group], Cell]]


def same_data(runs: list[Run]) -> bool:
    return len({data_identity(run.header) for run in runs}) == 1


def acc_title(runs: list[Run], head: str = "test acc %") -> str:
    """E.g. 'test acc % (mnist, 2,000 test)': an accuracy always names its data."""
    if same_data(runs):
        return f"{head} ({cells.data_short(runs[0].header.data or {})})"
    return f"{head} (each run's own data)"


def accuracy_caption(runs: list[Run]) -> str:
    """Which data set and how many test examples produced the accuracies."""
    if same_data(runs):
        data = runs[0].header.data or {}
        return (f"Test accuracy: % of the {cells.count(data.get('test_examples'))} test examples of "
                f"{cells.data_name(data)} classified correctly; mean ± sd over seeds.")
    each = "; ".join(f"{run.label}: {cells.data_line(run.header.data or {})}" for run in runs)
    return (f"Test accuracy is on each run's own test split ({each}); mean ± sd over seeds. "
            f"These runs used different data, so their accuracies are not comparable.")


def seeds(g: Group) -> int:
    return len(g.records)


def metric(title: str, name, kind: str | None = None, missing: str = cells.MISSING) -> Column:
    """A column of a seed statistic; `kind` defaults to the record field's unit."""
    kind = kind or UNITS[name]
    return (title, True, lambda g: stat_cell(g.metric(name), kind, seeds(g), missing))


def group_label(g: Group, runs: list[Run]) -> str:
    """The configuration's label, with its run when several runs share the report."""
    return g.label if len(runs) == 1 else f"{g.label} · {g.run}"


RUN: Column = ("run", False, lambda g: text_cell(g.run))
CONFIG: Column = ("configuration", False, lambda g: text_cell(g.label))
FAMILY: Column = ("family", False, lambda g: text_cell(g.family))
SEEDS: Column = ("n", True, lambda g: Cell(str(seeds(g)), seeds(g)))
TRAIN_S = metric("train s", "train_s", "s")


def with_run(runs: list[Run], *columns: Column) -> list[Column]:
    """`columns`, preceded by the run column when several runs share the tables."""
    return [RUN, *columns] if len(runs) > 1 else list(columns)


def rows_table(title: str, columns: list[Column], groups: list[Group], caption: str = "",
               wrap: tuple[str, ...] = ()) -> Table:
    rows = [[get(g) for _, _, get in columns] for g in groups]
    return table(title, [(t, r) for t, r, _ in columns], rows, caption, wrap)
