"""Seed aggregation: trials that differ only by seed become one group with mean, sd and n.

Figures of a group come from its `ok` trials only: a diverged or failed trial
has no meaningful accuracy or timing, and its status is counted instead.
"""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from bench.read.render.runs import Run
from bench.contract.schema import AGGREGATE_FIELDS, AXES, STATUSES, Record, TrialConfig


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (None below two values) of n values."""

    mean: float | None
    sd: float | None
    n: int


def stat(values) -> Stat:
    """The Stat of the non-None values."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return Stat(None, None, 0)
    sd = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), sd, len(values))


def time_to(target: str) -> Callable[[Record], float | None]:
    """Getter: training seconds until test accuracy first reached `target` (None if never)."""
    return lambda r: r.time_to(target)


# The figures averaged over seeds: the record's aggregate fields, and its training time.
METRICS: dict[str, Callable[[Record], object]] = {
    **{name: operator.attrgetter(name) for name in AGGREGATE_FIELDS},
    "train_s": operator.attrgetter("train_s"),
}


def seedless(config: TrialConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if k != "seed"}


FIELD_ORDER = [a.name for a in AXES]


def config_order(config: dict) -> tuple:
    """A total, type-safe sort key: TrialConfig field order (model, units, ...); None first."""
    names = [n for n in FIELD_ORDER if n in config] + sorted(set(config) - set(FIELD_ORDER))
    return tuple((n, *value_order(config[n])) for n in names)


def value_order(value) -> tuple:
    """A sort key of one axis value: None first, then numbers, then names."""
    if value is None:
        return (0, "", 0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, "", value)
    return (2, type(value).__name__, str(value))


@dataclass(frozen=True)
class Group:
    """The trials of one run whose configurations differ only by seed."""

    run: str
    run_index: int
    config: dict
    records: tuple[Record, ...]

    @property
    def label(self) -> str:
        return self.records[0].config.label()

    @property
    def family(self) -> str:
        return self.config["model"]

    @property
    def ok(self) -> tuple[Record, ...]:
        return tuple(r for r in self.records if r.ok)

    def metric(self, name: str) -> Stat:
        """The Stat of a METRICS name, or of any getter, over the ok trials."""
        get = METRICS[name] if isinstance(name, str) else name
        return stat(get(r) for r in self.ok)

    def status_counts(self) -> dict[str, int]:
        return status_counts(self.records)

    def status_summary(self) -> str:
        return status_summary(self.records)

    def seeds(self) -> list:
        return sorted(r.config.seed for r in self.records)

    def sort_key(self) -> tuple:
        return (self.run_index, config_order(self.config))


def status_counts(records) -> dict[str, int]:
    """status -> number of records, the known statuses first, absent ones left out."""
    statuses = [r.status for r in records]
    names = [*STATUSES, *sorted(set(statuses) - set(STATUSES))]
    return {s: statuses.count(s) for s in names if statuses.count(s)}


def status_summary(records) -> str:
    """'1 ok, 1 failed': how many records ended in each status."""
    return ", ".join(f"{n} {s}" for s, n in status_counts(records).items())


def group_trials(runs: list[Run]) -> list[Group]:
    """Every (run, configuration without seed) group, in run order then config order."""
    groups: dict[tuple, list[Record]] = {}
    for index, run in enumerate(runs):
        for record in run.records:
            key = (index, tuple(seedless(record.config).items()))
            groups.setdefault(key, []).append(record)
    out = [Group(runs[i].label, i, dict(items), tuple(sorted(recs, key=_record_order)))
           for (i, items), recs in groups.items()]
    return sorted(out, key=Group.sort_key)


def _record_order(record: Record) -> tuple:
    return (record.config.seed or 0, record.key)


def families(groups: list[Group]) -> list[str]:
    """Model families present, in name order."""
    return sorted({g.family for g in groups})


def targets(runs: list[Run]) -> list[str]:
    """The time-to-accuracy target keys ('0.97', ...) of the runs, ascending."""
    keys = {f"{t:g}" for run in runs for t in (run.header.protocol or {}).get("targets", [])}
    keys |= {k for run in runs for r in run.records for k in r.time_to_accuracy}
    return sorted(keys, key=float)
