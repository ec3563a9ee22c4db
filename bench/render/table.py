"""The tables the terminal shows as a run ends: column titles and formatted cells.

One row per trial as it finished, and, when configurations ran with several seeds,
one row per configuration with mean ± sd over its seeds (as the report files show).
Numbers are formatted by bench.render.cells, like every other table, so the
terminal and the report files agree.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.render.aggregate import Group
from bench.render.cells import number, stat_cell
from bench.spec import TrialConfig


def _kind(kind: str) -> Callable:
    return lambda v: number(v, kind)


def _first_epoch(r: dict):
    return r["epoch_s"][0] if r.get("epoch_s") else None


# (title, value getter, formatter, right-aligned)
COLUMNS: list[tuple[str, Callable[[dict], object], Callable, bool]] = [
    ("trial", lambda r: _label(r["config"]), str, False),
    ("seed", lambda r: r["config"]["seed"], str, True),
    ("status", lambda r: r["status"], str, False),
    ("test acc %", lambda r: r.get("test_accuracy"), _kind("pct"), True),
    ("compile s", lambda r: r.get("compile_s"), _kind("s"), True),
    ("epoch 1 s", _first_epoch, _kind("s"), True),
    ("steady epoch s", lambda r: r.get("steady_epoch_s"), _kind("s"), True),
    ("ms/step", lambda r: r.get("step_ms"), _kind("ms"), True),
    ("samples/s", lambda r: r.get("samples_per_s"), _kind("rate"), True),
    ("params", lambda r: r.get("params"), _kind("count"), True),
]


def _label(config: dict) -> str:
    return TrialConfig.from_dict(config).label()


def titles() -> list[str]:
    return [c[0] for c in COLUMNS]


def right_aligned() -> list[bool]:
    return [c[3] for c in COLUMNS]


def rows(records: list[dict]) -> list[list[str]]:
    """One list of formatted cells per record, in COLUMNS order."""
    return [[fmt(get(r)) for _, get, fmt, _ in COLUMNS] for r in records]


# (title, aggregate metric name, number kind) of the per-configuration table
GROUP_METRICS: list[tuple[str, str, str]] = [
    ("test acc %", "test_accuracy", "pct"),
    ("steady epoch s", "steady_epoch_s", "s"),
    ("ms/step", "step_ms", "ms"),
    ("compile s", "compile_s", "s"),
]


def group_titles() -> list[str]:
    return ["configuration", "seeds", "status", *(title for title, _, _ in GROUP_METRICS)]


def group_right_aligned() -> list[bool]:
    return [False, True, False, *(True for _ in GROUP_METRICS)]


def group_rows(groups: list[Group]) -> list[list[str]]:
    """One list of formatted cells per configuration: mean ± sd over its ok seeds."""
    def row(g: Group) -> list[str]:
        stats = [stat_cell(g.metric(name), kind, len(g.records)).text
                 for _, name, kind in GROUP_METRICS]
        return [g.label, ",".join(str(s) for s in g.seeds()), g.status_summary(), *stats]
    return [row(g) for g in groups]
