"""Run directories as readers see them: header, records and the label they are shown under."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.contract import facts
from bench.contract.facts import RunHeader
from bench.contract.results import HEADER, RESULTS, load_header, read_results
from bench.contract.schema import Record, SchemaError


class ReportError(ValueError):
    """A path that is not a readable run directory; the message says which and why."""


@dataclass(frozen=True)
class Run:
    """One run directory, read from its files."""

    path: Path
    header: RunHeader
    records: tuple[Record, ...]
    label: str


def run_dir_of(path: Path) -> Path:
    """The run directory of `path` (a run directory or the results.jsonl inside one)."""
    path = Path(path)
    return path.parent if path.name in (RESULTS, HEADER) else path


def read_records(path: Path) -> list[Record]:
    """The records of a run directory or results.jsonl, migrated to this schema version.

    A trial run again (--retry-failed) has several records; the last one counts.
    """
    path = Path(path)
    latest: dict[str, Record] = {}
    for number, data in enumerate(read_results(path), 1):
        try:
            record = Record.from_json(data)
        except (SchemaError, TypeError) as exc:
            raise SchemaError(f"{path}: record {number}: {exc}") from None
        latest.pop(record.key, None)  # re-inserted: the order is that of the last records
        latest[record.key] = record
    return list(latest.values())


def read_run_header(run_dir: Path) -> RunHeader:
    """run.json of `run_dir`, checked to be a version this bench reads."""
    return load_header(run_dir)


def base_label(header: RunHeader) -> str:
    """'name (platform)' or 'run-id (platform)': how trials of this run are labelled."""
    name = header.name or header.run_id or "run"
    return f"{name} ({header.device.get('platform', '?')})"


def load_run(path: Path, label: str | None = None) -> Run:
    """Reads one run directory; raises ReportError when it has no run.json."""
    run_dir = run_dir_of(path)
    if not (run_dir / HEADER).is_file():
        raise ReportError(f"{run_dir}: not a run directory (no {HEADER})")
    header = read_run_header(run_dir)
    return Run(run_dir, header, tuple(read_records(run_dir)), label or base_label(header))


def load_runs(paths: list[Path]) -> list[Run]:
    """The runs of `paths` in the order given, with unique labels ('#2' added to repeats)."""
    runs = [load_run(p) for p in paths]
    seen: dict[str, int] = {}
    out = []
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        label = run.label if seen[run.label] == 1 else f"{run.label} #{seen[run.label]}"
        out.append(Run(run.path, run.header, run.records, label))
    return out


def data_identity(header: RunHeader) -> tuple:
    """What makes two runs' accuracies comparable: the identity of their data sets."""
    return tuple(facts.data_identity(header.data).values())
