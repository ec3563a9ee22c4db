"""results.csv: one flat row per trial (config fields, every scalar metric, time to accuracy)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from bench.read.render.aggregate import FIELD_ORDER, config_order, targets
from bench.read.render.runs import Run
from bench.contract.schema import SCALAR_FIELDS, Record

RUN_COLUMNS = ["run", "run_id", "platform", "device_kind", "data_name", "data_source",
               "data_train_examples", "data_test_examples"]
# The record's scalar fields, then what is derived from its history.
DERIVED = {"train_s": lambda r: r.train_s, "epochs_run": lambda r: r.epochs_run}
METRIC_COLUMNS = ["key", *SCALAR_FIELDS, *DERIVED]
TTA_FIELDS = ("epoch", "train_s", "with_compile_s")
# The population a trial trained in, and the figures its members share (README, "Populations").
POPULATION_COLUMNS = ("group", "size", "index", "devices", "compile_s", "first_epoch_s",
                      "steady_epoch_s", "member_samples_per_s", "achieved_flops", "peak_fraction",
                      "speedup", "retry")
# The machine (and Ray node) that produced the trial.
MACHINE_COLUMNS = ["machine_host", "machine_node", "machine_cpu", "machine_device_kind",
                   "machine_peak_flops", "machine_bench", "machine_jax"]
TAIL_COLUMNS = ["reference_name", "reference_published_test_accuracy", "reference_source", "error"]
# A text cell starting with one of these is a formula to a spreadsheet (an error message
# such as "=..." or "@..." would run); a leading apostrophe makes it text (OWASP's advice).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _flat(prefix: str, value) -> dict:
    """Nested dicts as prefix_key columns."""
    if not isinstance(value, dict):
        return {prefix: value}
    out = {}
    for k, v in value.items():
        out |= _flat(f"{prefix}_{k}", v)
    return out


def _run_fields(run: Run) -> dict:
    device, data = (run.header.device or {}), (run.header.data or {})
    return {"run": run.label, "run_id": run.header.run_id,
            "platform": device.get("platform"), "device_kind": device.get("device_kind"),
            "data_name": data.get("name"), "data_source": data.get("source"),
            "data_train_examples": data.get("train_examples"),
            "data_test_examples": data.get("test_examples")}


def _tta(clock: dict, keys: list[str], prefix: str = "") -> dict:
    out = {}
    for t in keys:
        hit = clock.get(t) or {}
        out |= {f"{prefix}to_{t}_{k}": hit.get(k) for k in TTA_FIELDS}
    return out


def flat_row(run: Run, record: Record, keys: list[str]) -> dict:
    """One trial as a flat dict of column -> scalar."""
    ref = record.reference or {}
    row = _run_fields(run) | record.config.to_dict() | {"key": record.key}
    row |= {name: getattr(record, name) for name in SCALAR_FIELDS}
    row |= {name: get(record) for name, get in DERIVED.items()}
    row |= _flat("round", record.round_stats or {})
    row |= _flat("memory", record.memory)
    row |= _tta(record.time_to_accuracy, keys)
    population = record.population.to_json() if record.population else {}
    row |= {f"population_{k}": v for k, v in population.items() if k in POPULATION_COLUMNS}
    if "members_per_epoch" in population:  # e.g. "27 20 20" once diverged members were dropped
        row["population_members_per_epoch"] = " ".join(map(str, population["members_per_epoch"]))
    if "time_to_accuracy" in population:  # on the population's clock, shared by its members
        row |= _tta(population["time_to_accuracy"], keys, prefix="population_")
    machine = record.machine
    row |= {f"machine_{k}": getattr(machine, k) if machine else None for k in
            ("host", "node", "cpu", "device_kind", "peak_flops", "bench", "jax")}
    row |= {"reference_name": ref.get("name"), "reference_source": ref.get("source"),
            "reference_published_test_accuracy": ref.get("published_test_accuracy"),
            "error": record.error}
    return row


def spreadsheet_safe(value):
    """`value` for a CSV cell: None as empty, formula-like text as text, numbers unchanged."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def render_csv(runs: list[Run]) -> str:
    """Every trial of `runs`, in run order then configuration order, as CSV text."""
    keys = targets(runs)
    order = lambda r: (config_order(r.config.to_dict()), r.key)  # noqa: E731
    rows = [flat_row(run, r, keys) for run in runs for r in sorted(run.records, key=order)]
    extra = sorted({c for row in rows for c in row if c.startswith(("round_", "memory_"))}
                   - set(METRIC_COLUMNS))
    shared = [*(f"population_{k}" for k in POPULATION_COLUMNS), "population_members_per_epoch",
              *(f"population_to_{t}_{k}" for t in keys for k in TTA_FIELDS)]
    population = [c for c in shared if any(c in row for row in rows)]
    columns = [*RUN_COLUMNS, *FIELD_ORDER, *METRIC_COLUMNS, *extra,
               *(f"to_{t}_{k}" for t in keys for k in TTA_FIELDS), *population, *MACHINE_COLUMNS, *TAIL_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: spreadsheet_safe(row.get(c)) for c in columns} for row in rows)
    return buffer.getvalue()


def write_csv(runs: list[Run], out_dir: Path) -> Path:
    path = Path(out_dir) / "results.csv"
    path.write_text(render_csv(runs), encoding="utf-8", newline="")
    return path
