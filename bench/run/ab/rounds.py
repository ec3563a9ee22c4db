"""One round: one side's `python -m bench run ... --out DIR`, and its run directory read back.

What a round asks of a side is what every revision of bench already has: the `bench run`
command line and the run directory it writes. So BASE may be any older bench, `ab` or not.
Each record is read for the few fields the decision needs (key, config, status,
test_accuracy, rounds_s, round_steps, step_ms, busy), leniently, so that a record of an older
or newer schema still counts; run.json is read the same way for each side's environment.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.contract.results import HEADER, RESULTS
from bench.run.ab.decide import Sample
from bench.run.ab.sides import Side

OUTPUT_TAIL_LINES = 15
KERNELS = ("fused_lstm_cpu", "fused_cells_cpu", "fused_conv_cpu", "cpu_kernel_target")


class RoundError(Exception):
    """A round whose run failed or left nothing to read (exit status 2)."""


@dataclass(frozen=True)
class Round:
    """One side's run: its trials' samples by key, their labels, and where it lies."""

    role: str
    number: int
    run_dir: Path
    samples: dict[str, Sample]
    labels: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # the whole `bench run`: start-up, compiles, training, reports


def round_dir(out: Path, role: str, number: int) -> Path:
    return Path(out) / role / f"round-{number:02d}"


def run_round(side: Side, run_flags: list[str], out: Path, number: int) -> Round:
    """Runs one round of `side` into out/<role>/round-NN (its output in round-NN.log)."""
    run_dir = round_dir(out, side.role, number)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.with_suffix(".log")
    command = [str(side.python), "-m", "bench", "run", *run_flags, "--out", str(run_dir)]
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(f"$ (cd {side.cwd or run_dir.parent}) {' '.join(command)}\n")
        handle.flush()
        done = subprocess.run(command, cwd=side.cwd or run_dir.parent, stdout=handle,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RoundError(f"{side.role.upper()} ({side.spec}) round {number}: `bench run` exited "
                         f"with status {done.returncode}; the end of {log}:\n{tail(log)}")
    samples, labels = read_samples(run_dir)
    if not samples:
        raise RoundError(f"{side.role.upper()} ({side.spec}) round {number}: no trial results in "
                         f"{run_dir}; the end of {log}:\n{tail(log)}")
    return Round(side.role, number, run_dir, samples, labels, time.monotonic() - started)


def tail(path: Path, lines: int = OUTPUT_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def read_samples(run_dir: Path) -> tuple[dict[str, Sample], dict[str, str]]:
    """Each trial's sample (the last record of a key counts) and label, from results.jsonl."""
    records: dict[str, dict] = {}
    try:
        lines = (Path(run_dir) / RESULTS).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}, {}
    for line in lines:
        try:
            data = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash: the others still count
        if isinstance(data, dict) and isinstance(data.get("key"), str):
            records.pop(data["key"], None)
            records[data["key"]] = data
    return ({k: sample_of(r) for k, r in records.items()},
            unique_labels({k: label_of(r) for k, r in records.items()}))


def sample_of(record: dict) -> Sample:
    """A record's status, median step time (s), test accuracy and busy flag."""
    rounds = [t for t in record.get("rounds_s") or () if isinstance(t, (int, float))]
    steps = record.get("round_steps")
    if rounds and isinstance(steps, int) and steps > 0:
        step_s = statistics.median(rounds) / steps
    else:
        step_ms = record.get("step_ms")
        step_s = step_ms / 1000 if isinstance(step_ms, (int, float)) else None
    accuracy = record.get("test_accuracy")
    return Sample(status=str(record.get("status", "failed")), step_s=step_s,
                  accuracy=accuracy if isinstance(accuracy, (int, float)) else None,
                  busy=bool(record.get("busy")))


def label_of(record: dict) -> str:
    """'dense-256 relu adam seed=0' where this bench can read the config, else the key."""
    from bench.contract.schema import TrialConfig  # the contract: no JAX

    config = record.get("config")
    try:
        return f"{TrialConfig.from_dict(config).label()} seed={config.get('seed')}"
    except (ValueError, TypeError, AttributeError):  # another schema's config: the key still names it
        return record["key"]


def unique_labels(labels: dict[str, str]) -> dict[str, str]:
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {k: (f"{v} [{k}]" if counts[v] > 1 else v) for k, v in labels.items()}


def environment(run_dir: Path) -> dict:
    """What a side ran on, from its run.json: commit, versions, kernels and device."""
    try:
        header = json.loads((Path(run_dir) / HEADER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    versions = header.get("versions") or {}
    device = header.get("device") or {}
    return {"git_commit": header.get("git_commit"),
            **{name: versions.get(name) for name in ("python", "jax", "jaxlib", "bench")},
            "kernels": {name: header.get(name) for name in KERNELS},
            "device": device.get("device_kind") or device.get("platform"),
            "host_cpu": device.get("host_cpu")}
