"""The run directory: a run.json header and results.jsonl, one line per finished trial.

Each record is appended, flushed and fsynced as its trial ends, so an
interruption loses at most the trial in flight. Readers skip a torn last line.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

SCHEMA_VERSION = 1
HEADER = "run.json"
RESULTS = "results.jsonl"


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now()
    return now.strftime("%Y%m%d-%H%M%S")


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def package_versions() -> dict:
    """Versions of Python and of the libraries that decide the numbers."""
    versions = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "scipy-openblas32", "bench"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the bench checkout in use ('+dirty' when it has local changes)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def make_header(run_id: str, *, device: dict, data: dict, argv: list[str] | None = None,
                extra: dict | None = None) -> dict:
    """The run.json contents: everything needed to say where the numbers came from."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "started": now_iso(),
        "command": " ".join(argv if argv is not None else sys.argv),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "device": device,
        "data": data,
        **(extra or {}),
    }


def write_header(run_dir: Path, header: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (HEADER + ".tmp")
    tmp.write_text(json.dumps(header, indent=2) + "\n")
    os.replace(tmp, run_dir / HEADER)  # atomic: a reader never sees half a header


def read_header(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / HEADER).read_text())


def append_result(run_dir: Path, record: dict) -> None:
    """Appends one record as a JSON line and forces it to disk."""
    _end_torn_line(Path(run_dir) / RESULTS)
    with open(Path(run_dir) / RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(_finite(record), allow_nan=False, default=_jsonable) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _end_torn_line(file: Path) -> None:
    """Drops a partial last line (an interrupted write) so the next record starts a line.

    Appending after it would glue the record onto the torn text: the record would be
    lost, and the broken line would no longer be the last one that readers skip.
    """
    if not file.exists() or file.stat().st_size == 0:
        return
    with open(file, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":  # the usual case: no need to read the records
            return
        f.seek(0)
        text = f.read()
        start = text.rfind(b"\n") + 1
        try:
            json.loads(text[start:])
            f.write(b"\n")  # a whole record whose newline was not written: keep it
        except ValueError:
            f.truncate(start)


def _finite(value):
    """NaN and infinities become null: JSON has no spelling for them (status says why)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_results(path: Path) -> list[dict]:
    """Records of a run directory or a results.jsonl file; a torn last line is skipped."""
    path = Path(path)
    file = path / RESULTS if path.is_dir() else path
    records = []
    if not file.exists():
        return records
    lines = file.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):  # only the last line may be torn by an interruption
                raise ValueError(f"{file}:{number}: not a JSON line") from None
    return records
