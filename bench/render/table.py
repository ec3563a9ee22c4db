"""The results table every renderer shows: column titles and formatted cells.

One place decides what a column means and how it is formatted, so the terminal,
Markdown and other renderers agree.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.spec import TrialConfig


def _num(fmt: str) -> Callable:
    return lambda v: "" if v is None else format(v, fmt)


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def _first_epoch(r: dict):
    return r["epoch_s"][0] if r.get("epoch_s") else None


# (title, value getter, formatter, right-aligned)
COLUMNS: list[tuple[str, Callable[[dict], object], Callable, bool]] = [
    ("trial", lambda r: _label(r["config"]), str, False),
    ("seed", lambda r: r["config"]["seed"], str, True),
    ("status", lambda r: r["status"], str, False),
    ("test acc %", lambda r: r.get("test_accuracy"), _pct, True),
    ("compile s", lambda r: r.get("compile_s"), _num(".2f"), True),
    ("epoch 1 s", _first_epoch, _num(".2f"), True),
    ("steady epoch s", lambda r: r.get("steady_epoch_s"), _num(".3f"), True),
    ("ms/step", lambda r: r.get("step_ms"), _num(".3f"), True),
    ("samples/s", lambda r: r.get("samples_per_s"), _num(",.0f"), True),
    ("params", lambda r: r.get("params"), _num(","), True),
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


def data_line(data: dict) -> str:
    """E.g. 'mnist (embedded): 10,000 train / 2,000 test examples'."""
    return (f"{data['name']} ({data['source']}{', ' + data['location'] if data.get('location') else ''}): "
            f"{data['train_examples']:,} train / {data['test_examples']:,} test examples")


def device_line(device: dict) -> str:
    return (f"{device['platform']} x{device['device_count']} ({device['device_kind']}); "
            f"host CPU {device['host_cpu']}, {device.get('usable_cpu_count')} usable cores")
