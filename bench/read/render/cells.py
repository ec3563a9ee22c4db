"""Cell formatting shared by every renderer: numbers, seed statistics, data and device lines.

A seed statistic reads "mean ± sd"; "(n=k)" is added only when k is fewer than
the configuration's seeds (some did not finish ok or never reached a target): a
configuration run with one seed shows its one value plainly.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.contract.facts import MachineFacts
from bench.contract.schema import Record
from bench.read.render.aggregate import Stat
from bench.read.render.document import Cell

MISSING = ""
NEVER = "—"


def _decimals(reference: float) -> int:
    size = abs(reference)
    return 0 if size >= 100 else 1 if size >= 10 else 2 if size >= 1 else 3


def auto(value: float, reference: float) -> str:
    """About three significant figures, chosen by `reference` so mean and sd align."""
    return f"{value:,.{_decimals(reference)}f}"


def fixed(decimals: int) -> Callable[[float, float], str]:
    return lambda value, _reference: f"{value:,.{decimals}f}"


# kind -> (scale, formatter): what a stored number becomes in a table
KINDS: dict[str, tuple[float, Callable[[float, float], str]]] = {
    "pct": (100.0, fixed(2)),
    "s": (1.0, auto),
    "ms": (1.0, auto),
    "rate": (1.0, fixed(0)),
    "gflops": (1e-9, auto),
    "count": (1.0, fixed(0)),
}


def number(value: float | None, kind: str) -> str:
    """One stored number as shown in tables ('' when absent)."""
    if value is None:
        return MISSING
    scale, fmt = KINDS[kind]
    return fmt(scale * value, scale * value)


def stat_cell(s: Stat, kind: str, seeds: int, missing: str = MISSING) -> Cell:
    """'mean ± sd', with '(n=k)' when only k of the configuration's `seeds` count."""
    if s.n == 0:
        return Cell(missing, None)
    scale, fmt = KINDS[kind]
    mean = scale * s.mean
    text = fmt(mean, mean)
    if s.sd is not None:
        text += f" ± {fmt(scale * s.sd, mean)}"
    if s.n < seeds:
        text += f" (n={s.n})"
    return Cell(text, mean)


def plural(n: int, noun: str) -> str:
    """'1 trial', '3 trials'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def percent_interval(ci: tuple[float, float] | None) -> str:
    """A 95% interval of an accuracy (fractions) as '97.70–98.24' percent ('' when absent)."""
    return "" if ci is None else f"{number(ci[0], 'pct')}–{number(ci[1], 'pct')}"


def duration(seconds: float | None) -> str:
    """E.g. '12.3 s', '4 min 05 s', '2 h 03 min': a wall time a reader takes in at a glance."""
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def text_cell(text) -> Cell:
    return Cell("" if text is None else str(text), None if text is None else str(text))


def number_cell(value: float | None, kind: str) -> Cell:
    return Cell(number(value, kind), None if value is None else float(value))


def data_line(data: dict) -> str:
    """E.g. 'mnist (embedded): 10,000 train / 2,000 test examples', and the validation split
    held out of training where there is one."""
    held = data.get("validation_examples")
    validation = f" / {count(held)} validation (held out of training)" if held else ""
    return (f"{data_name(data)}: {count(data.get('train_examples'))} train{validation} / "
            f"{count(data.get('test_examples'))} test examples")


def data_name(data: dict) -> str:
    """E.g. 'mnist (embedded)' or 'mnist (idx, /data/mnist)'."""
    where = f", {data['location']}" if data.get("location") else ""
    return f"{data.get('name')} ({data.get('source')}{where})"


def data_short(data: dict) -> str:
    """E.g. 'mnist, 2,000 test': enough to say what produced an accuracy."""
    return f"{data.get('name')}, {count(data.get('test_examples'))} test"


def device_line(device: dict) -> str:
    """E.g. 'cpu x1 (cpu); host CPU Intel Xeon, 2 usable cores'."""
    return (f"{device.get('platform')} x{device.get('device_count')} "
            f"({device.get('device_kind')}); "
            f"host CPU {device.get('host_cpu')}, {device.get('usable_cpu_count')} usable cores")


def machine_name(machine: MachineFacts) -> str:
    """E.g. 'gpu-box-3' or, for a Ray node, 'vm (node 85b17b)'."""
    node = machine.node
    return f"{machine.host}" + (f" (node {node[:6]})" if node else "")


def machines_line(records: list[Record]) -> str | None:
    """Which machines produced the records, with how many trials each, when more than one
    did (a Ray run on several nodes); None when one machine (or none recorded) did."""
    tally: dict[str, list] = {}
    for record in records:
        if record.machine:
            entry = tally.setdefault(machine_name(record.machine), [0, record.machine])
            entry[0] += 1
    if len(tally) <= 1:
        return None
    hosts = {m.host for _, m in tally.values()}
    what = (f"{len(tally)} nodes" + (f" on {len(hosts)} machines" if len(hosts) > 1 else " of one machine"))
    parts = [f"{name}, {m.cpu or m.device_kind}: {n} trial{'s' if n != 1 else ''}"
             for name, (n, m) in sorted(tally.items())]
    return f"{what}: " + "; ".join(parts)


def count(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)
