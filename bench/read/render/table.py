"""The tables the terminal shows as a run ends: column titles and formatted cells.

One row per trial as it finished, and, when configurations ran with several seeds,
one row per configuration with mean ± sd over its seeds (as the report files show).
Numbers are formatted by bench.read.render.cells, like every other table, so the
terminal and the report files agree.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.read.render.aggregate import Group
from bench.read.render.cells import number, stat_cell
from bench.contract.schema import UNITS, Record


def _figure(title: str, name: str) -> tuple[str, Callable[[Record], object], Callable, bool]:
    """A column showing the record's field `name`, formatted by its unit."""
    unit = UNITS[name]
    return (title, lambda r: getattr(r, name), lambda v: number(v, unit), True)


# (title, value getter, formatter, right-aligned)
COLUMNS: list[tuple[str, Callable[[Record], object], Callable, bool]] = [
    ("trial", lambda r: r.config.label(), str, False),
    ("seed", lambda r: r.config.seed, str, True),
    ("status", lambda r: r.status, str, False),
    _figure("test acc %", "test_accuracy"),
    _figure("compile s", "compile_s"),
    _figure("epoch 1 s", "first_epoch_s"),
    _figure("steady epoch s", "steady_epoch_s"),
    _figure("ms/step", "step_ms"),
    _figure("samples/s", "samples_per_s"),
    _figure("params", "params"),
]


def titles() -> list[str]:
    return [c[0] for c in COLUMNS]


def right_aligned() -> list[bool]:
    return [c[3] for c in COLUMNS]


def rows(records: list[Record]) -> list[list[str]]:
    """One list of formatted cells per record, in COLUMNS order."""
    return [[fmt(get(r)) for _, get, fmt, _ in COLUMNS] for r in records]


# (title, aggregate metric) of the per-configuration table
GROUP_METRICS: list[tuple[str, str]] = [
    ("test acc %", "test_accuracy"),
    ("steady epoch s", "steady_epoch_s"),
    ("ms/step", "step_ms"),
    ("compile s", "compile_s"),
]


def group_titles() -> list[str]:
    return ["configuration", "seeds", "status", *(title for title, _ in GROUP_METRICS)]


def group_right_aligned() -> list[bool]:
    return [False, True, False, *(True for _ in GROUP_METRICS)]


def group_rows(groups: list[Group]) -> list[list[str]]:
    """One list of formatted cells per configuration: mean ± sd over its ok seeds."""
    def row(g: Group) -> list[str]:
        stats = [stat_cell(g.metric(name), UNITS[name], len(g.records)).text
                 for _, name in GROUP_METRICS]
        return [g.label, ",".join(str(s) for s in g.seeds()), g.status_summary(), *stats]
    return [row(g) for g in groups]
