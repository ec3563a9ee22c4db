"""How work units are dispatched: serially in this process, or to a Ray cluster.

An executor is a context manager (it may start and stop workers) with one method,
`run(jobs, progress)`, that yields `(job, records)` as each job ends, in completion
order, so the caller, the one writer of results.jsonl, can store them at once. A
job is a bench.run.work.Job: plain data, run by bench.run.work.run_job wherever it lands.
Neither executor ever retries a unit behind a timing figure: a unit that fails
comes back as `failed` records with the cause.

`progress` is told what happens (the Progress protocol below); the serial
executor also reports each epoch, Ray's workers do not (their units are too far
away for it to be worth the traffic).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from typing import Protocol

from bench.contract.schema import SpecError
from bench.run.work import Job, run_job

EXECUTOR_NAMES = ("serial", "ray")
RAY_INSTALL = "pip install 'bench[ray]' (in a checkout: pip install -e '.[ray]')"


class Progress(Protocol):
    def started(self, job: Job, where: str | None) -> None: ...
    def epoch(self, job: Job, entry: dict) -> None: ...
    def finished(self, job: Job, where: str | None, records: list[dict]) -> None: ...


class SerialExecutor:
    """Runs units one after another in this process (the honest way to time them)."""

    name = "serial"

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def describe(self) -> dict:
        return {"name": self.name}

    def run(self, jobs: Iterable[Job], progress: Progress) -> Iterator[tuple[Job, list[dict]]]:
        for job in jobs:
            progress.started(job, None)
            records = run_job(job, on_epoch=lambda entry, job=job: progress.epoch(job, entry))
            progress.finished(job, None, records)
            yield job, records


def check_executor(name: str) -> None:
    """SpecError, before anything is read, for an unknown executor or a missing engine."""
    if name not in EXECUTOR_NAMES:
        raise SpecError(f"unknown executor {name!r}; valid: {', '.join(EXECUTOR_NAMES)}")
    if name == "ray" and importlib.util.find_spec("ray") is None:
        raise SpecError(f"--executor ray needs Ray, which is not installed here: {RAY_INSTALL}")


def make_executor(name: str, *, ray_address: str | None = None,
                  tasks_per_node: int | None = None, platform: str = "auto"):
    check_executor(name)
    if name == "serial":
        return SerialExecutor()
    from bench.run.ray_executor import RayExecutor
    return RayExecutor(address=ray_address, tasks_per_node=tasks_per_node, platform=platform)
