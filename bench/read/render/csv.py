"""results.csv (one flat row per trial) and history.csv (one tidy row per trial and epoch).

Figures are in the reports' units and each column's name says which: accuracies and the
fraction of peak in percent (`_pct`), FLOP/s in GFLOP/s (`_gflop_per_s`), times as stored,
in seconds (`_s`) or milliseconds (`_ms`). `config_id` (the key without the seed) groups a
configuration's seeds. A trial that did not finish ok has a blank accuracy, so a plain mean
over a configuration's rows is the report's mean over its ok seeds; its last finite
accuracy is in a column of its own.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from pathlib import Path

from bench.read.render.aggregate import FIELD_ORDER, config_order, targets
from bench.read.render.cells import KINDS
from bench.read.render.runs import Run
from bench.contract.schema import OPTIONAL_FIELDS, SCALAR_FIELDS, UNITS, Record

RESULTS = "results.csv"
HISTORY = "history.csv"

# unit (schema.UNITS) -> the column name that says it; the scale is the reports' (cells.KINDS)
RENAMED = {"pct": lambda name: f"{name}_pct",
           "gflops": lambda name: name.removesuffix("_flops") + "_gflop_per_s"}
LAST_FINITE = "last_finite_test_accuracy_pct"
LOSSES = ("train_loss", "test_loss")

RUN_COLUMNS = ["run", "run_id", "config_id", "label", "platform", "device_kind", "data_name",
               "data_source", "data_train_examples", "data_test_examples"]
# The record's scalar fields, then what is derived from its history.
DERIVED = {"train_s": lambda r: r.train_s, "epochs_run": lambda r: r.epochs_run}
TTA_FIELDS = ("epoch", "train_s", "with_compile_s")
# The population a trial trained in, and the figures its members share (README, "Populations").
POPULATION_COLUMNS = ("group", "size", "index", "devices", "compile_s", "first_epoch_s",
                      "steady_epoch_s", "member_samples_per_s", "achieved_flops", "peak_fraction",
                      "speedup", "retry")
# The machine (and Ray node) that produced the trial.
MACHINE_FIELDS = ("host", "node", "cpu", "device_kind", "peak_flops", "bench", "jax")
TAIL_COLUMNS = ["reference_name", "reference_published_test_accuracy_pct", "reference_source", "error"]

HISTORY_ID_COLUMNS = ["run", "run_id", "key", "config_id", "label", "seed", "status", "epoch"]
# The per-epoch figures in their usual order; any others a history holds follow, by name.
EPOCH_FIGURES = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "validation_loss",
                 "validation_accuracy", "epoch_s", "population_epoch_s")

# A text cell starting with one of these is a formula to a spreadsheet (an error message
# such as "=..." or "@..." would run); a leading apostrophe makes it text (OWASP's advice).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


# ---------------------------------------------------------------- units


def column(name: str, unit: str | None = None) -> str:
    """The column of a stored figure: its name, with the unit it is shown in where that differs."""
    unit = unit or UNITS.get(name)
    return RENAMED[unit](name) if unit in RENAMED else name


def shown(value, unit: str | None):
    """A stored number as the reports show it (a fraction as percent, FLOP/s as GFLOP/s)."""
    if unit not in RENAMED or not isinstance(value, (int, float)) or isinstance(value, bool):
        return value
    return float(f"{value * KINDS[unit][0]:.12g}")  # no float noise (0.9799 -> 97.99)


def _figure(name: str, value, unit: str | None = None) -> dict:
    """{column: value} of one stored figure, in the reports' units."""
    unit = unit or UNITS.get(name)
    return {column(name, unit): shown(value, unit)}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def last_finite_accuracy(record: Record) -> float | None:
    """The test accuracy of the last epoch whose losses were finite (None if none): the epoch
    a trial diverged in reports the accuracy of a broken model, about chance."""
    for entry in reversed(record.history):
        accuracy = entry.get("test_accuracy")
        if _finite(accuracy) and all(_finite(entry[k]) for k in LOSSES if k in entry):
            return accuracy
    return None


# ---------------------------------------------------------------- results.csv


def _flat(prefix: str, value) -> dict:
    """Nested dicts as prefix_key columns."""
    if not isinstance(value, dict):
        return {prefix: value}
    out = {}
    for k, v in value.items():
        out |= _flat(f"{prefix}_{k}", v)
    return out


def _identity(run: Run, record: Record) -> dict:
    return {"run": run.label, "run_id": run.header.run_id, "config_id": record.config.config_id,
            "label": record.config.label()}


def _run_fields(run: Run) -> dict:
    device, data = (run.header.device or {}), (run.header.data or {})
    return {"platform": device.get("platform"), "device_kind": device.get("device_kind"),
            "data_name": data.get("name"), "data_source": data.get("source"),
            "data_train_examples": data.get("train_examples"),
            "data_test_examples": data.get("test_examples")}


def _figures(record: Record) -> dict:
    """The scalar fields in the reports' units; a trial not ok has no accuracy but its last
    finite one (its final accuracy is a broken model's, e.g. 0.098, or none)."""
    out = {}
    for name in SCALAR_FIELDS:
        out |= _figure(name, getattr(record, name))
    if not record.ok:
        out |= {column("test_accuracy"): None, column("validation_accuracy"): None,
                LAST_FINITE: shown(last_finite_accuracy(record), "pct")}
    out |= {name: get(record) for name, get in DERIVED.items()}
    # summarize() of the timed rounds: a count and figures in seconds
    out |= {f"round_{k}" + ("" if k == "n" else "_s"): v for k, v in (record.round_stats or {}).items()}
    return out


def _tta(clock: dict, keys: list[str], prefix: str = "") -> dict:
    out = {}
    for t in keys:
        hit = clock.get(t) or {}
        out |= {f"{prefix}to_{t}_{k}": hit.get(k) for k in TTA_FIELDS}
    return out


def _population(record: Record, keys: list[str]) -> dict:
    population = record.population.to_json() if record.population else {}
    out = {}
    for k in POPULATION_COLUMNS:
        if k in population:
            out |= {f"population_{c}": v for c, v in _figure(k, population[k]).items()}
    if "members_per_epoch" in population:  # e.g. "27 20 20" once diverged members were dropped
        out["population_members_per_epoch"] = " ".join(map(str, population["members_per_epoch"]))
    if "time_to_accuracy" in population:  # on the population's clock, shared by its members
        out |= _tta(population["time_to_accuracy"], keys, prefix="population_")
    return out


def _machine(record: Record) -> dict:
    machine, out = record.machine, {}
    for k in MACHINE_FIELDS:
        value = getattr(machine, k) if machine else None
        out |= _figure(f"machine_{k}", value, "gflops" if k == "peak_flops" else None)
    return out


def flat_row(run: Run, record: Record, keys: list[str]) -> dict:
    """One trial as a flat dict of column -> scalar, in the reports' units."""
    ref = record.reference or {}
    row = _identity(run, record) | _run_fields(run) | record.config.to_dict() | {"key": record.key}
    row |= _figures(record)
    row |= _flat("memory", record.memory)
    row |= _tta(record.time_to_accuracy, keys)
    row |= _population(record, keys)
    row |= _machine(record)
    row |= {"reference_name": ref.get("name"), "reference_source": ref.get("source"),
            "error": record.error}
    row |= _figure("reference_published_test_accuracy", ref.get("published_test_accuracy"), "pct")
    return row


def _metric_columns(records: list[Record]) -> list[str]:
    """key, then the scalar fields (the last finite accuracy beside the accuracy; an optional
    one only where some record has it), then DERIVED."""
    out = ["key"]
    for name in SCALAR_FIELDS:
        if name in OPTIONAL_FIELDS and all(getattr(r, name) is None for r in records):
            continue
        out += [column(name), LAST_FINITE] if name == "test_accuracy" else [column(name)]
    return out + list(DERIVED)


def _results_columns(rows: list[dict], keys: list[str], records: list[Record]) -> list[str]:
    metrics = _metric_columns(records)
    extra = sorted({c for row in rows for c in row if c.startswith(("round_", "memory_"))}
                   - set(metrics))
    shared = [*(f"population_{column(k)}" for k in POPULATION_COLUMNS), "population_members_per_epoch",
              *(f"population_to_{t}_{k}" for t in keys for k in TTA_FIELDS)]
    population = [c for c in shared if any(c in row for row in rows)]
    machine = [column(f"machine_{k}", "gflops" if k == "peak_flops" else None) for k in MACHINE_FIELDS]
    return [*RUN_COLUMNS, *FIELD_ORDER, *metrics, *extra,
            *(f"to_{t}_{k}" for t in keys for k in TTA_FIELDS), *population, *machine, *TAIL_COLUMNS]


def _trials(runs: list[Run]) -> Iterator[tuple[Run, Record]]:
    """Every trial of `runs`, in run order then configuration order (a configuration's seeds
    together)."""
    order = lambda r: (config_order(r.config.to_dict()), r.key)  # noqa: E731
    for run in runs:
        for record in sorted(run.records, key=order):
            yield run, record


def render_csv(runs: list[Run]) -> str:
    """results.csv: every trial of `runs` as CSV text."""
    keys = targets(runs)
    trials = list(_trials(runs))
    rows = [flat_row(run, record, keys) for run, record in trials]
    return _csv_text(_results_columns(rows, keys, [r for _, r in trials]), rows)


# ---------------------------------------------------------------- history.csv


def _epoch_unit(name: str) -> str | None:
    return "pct" if name.endswith("accuracy") else None


def history_rows(run: Run, record: Record) -> list[dict]:
    """One row per epoch of the trial's history: who it is, then the epoch's figures."""
    who = {"run": run.label, "run_id": run.header.run_id, "key": record.key,
           "config_id": record.config.config_id, "label": record.config.label(),
           "seed": record.config.seed, "status": record.status}
    rows = []
    for number, entry in enumerate(record.history, start=1):
        row = who | {"epoch": entry.get("epoch", number)}
        for name, value in entry.items():
            if name != "epoch":
                row |= _figure(name, value, _epoch_unit(name))
        rows.append(row)
    return rows


def render_history(runs: list[Run]) -> str:
    """history.csv: every epoch of every trial of `runs` as CSV text."""
    rows = [row for run, record in _trials(runs) for row in history_rows(run, record)]
    usual = [column(n, _epoch_unit(n)) for n in EPOCH_FIGURES]
    present = {c for row in rows for c in row} - set(HISTORY_ID_COLUMNS)
    figures = [c for c in usual if c in present] + sorted(present - set(usual))
    return _csv_text([*HISTORY_ID_COLUMNS, *figures], rows)


# ---------------------------------------------------------------- writing


def spreadsheet_safe(value):
    """`value` for a CSV cell: None as empty, formula-like text as text, numbers unchanged."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: spreadsheet_safe(row.get(c)) for c in columns} for row in rows)
    return buffer.getvalue()


def write_csv(runs: list[Run], out_dir: Path) -> list[Path]:
    """results.csv and history.csv in `out_dir`; their paths."""
    paths = []
    for name, render in ((RESULTS, render_csv), (HISTORY, render_history)):
        path = Path(out_dir) / name
        path.write_text(render(runs), encoding="utf-8", newline="")
        paths.append(path)
    return paths
