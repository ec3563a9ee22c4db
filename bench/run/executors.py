"""How work units are dispatched: serially in this process, or to a Ray cluster.

An executor implements the Executor protocol below: a context manager (it may start and
stop workers) that places the run's workers and runs its jobs, yielding `(job, records)`
as each job ends, in completion order, so the caller, the one writer of results.jsonl,
can store them at once. The executors are a table (EXECUTORS). A
job is a bench.run.work.Job: plain data, run by bench.run.work.run_job wherever it lands.
Neither executor ever retries a unit behind a timing figure: a unit that fails
comes back as `failed` records with the cause.

`progress` is told what happens (the Progress protocol below); the serial
executor also reports each epoch, Ray's workers do not (their units are too far
away for it to be worth the traffic).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from bench.contract.schema import SpecError
from bench.run.work import Job, run_job

RAY_INSTALL = "pip install 'bench[ray]' (in a checkout: pip install -e '.[ray]')"


class Progress(Protocol):
    def started(self, job: Job, where: str | None) -> None: ...
    def epoch(self, job: Job, entry: dict) -> None: ...
    def finished(self, job: Job, where: str | None, records: list[dict]) -> None: ...


@dataclass(frozen=True)
class Placement:
    """Where a run's units will train: the device facts and calibration its header records,
    and how (`{"devices": [...]}` in this process, `{"workers": n}` on a cluster)."""

    facts: dict
    calibration: dict
    where: dict


class Executor(Protocol):
    """What `bench run` asks of an executor; the runner never asks which one it has.

    Entering starts it (connects to a cluster, say) and leaving stops it. `place` readies
    the workers (this process, or a cluster's) for the run's jobs; `run` yields `(job,
    records)` as each job ends, in completion order; `describe` gives run.json's facts,
    `announce` the lines the run prints about it, `unit_times` what each unit cost on
    the way (none where no unit travels)."""

    def __enter__(self) -> Executor: ...
    def __exit__(self, *exc) -> None: ...
    def place(self, template: Job, dataset) -> Placement: ...
    def run(self, jobs: Iterable[Job], progress: Progress) -> Iterator[tuple[Job, list[dict]]]: ...
    def describe(self) -> dict: ...
    def announce(self, device: dict) -> list[str]: ...
    def unit_times(self) -> list[dict]: ...


class SerialExecutor:
    """Runs units one after another in this process (the honest way to time them)."""

    name = "serial"

    def __init__(self, *, platform: str = "auto", **_cluster_settings):
        self.platform, self.device = platform, None

    def __enter__(self) -> SerialExecutor:
        from bench.engine.devices import resolve_device  # imports JAX: not at module import
        self.device = resolve_device(self.platform)  # a bad --device fails before data is read
        return self

    def __exit__(self, *exc) -> None:
        return None

    def place(self, template: Job, dataset) -> Placement:
        """This process's device, calibrated here; the data set, device and calibration are
        handed to this process's worker so that it does not load or measure them again."""
        from bench.engine.calibrate import calibration  # imports JAX: not at module import
        from bench.engine.devices import device_facts, platform_devices
        from bench.run import work
        device = self.device
        peak = calibration(device, use_cache=not template.recalibrate)
        work.remember_dataset(template.data, dataset)
        work.adopt(template, device, peak)
        device_list = platform_devices(device, template.devices)
        return Placement(device_facts(device), peak, {"devices": [str(d) for d in device_list]})

    def describe(self) -> dict:
        return {"name": self.name}

    def announce(self, device: dict) -> list[str]:
        return []

    def unit_times(self) -> list[dict]:
        return []

    def run(self, jobs: Iterable[Job], progress: Progress) -> Iterator[tuple[Job, list[dict]]]:
        for job in jobs:
            progress.started(job, None)
            records = run_job(job, on_epoch=lambda entry, job=job: progress.epoch(job, entry))
            progress.finished(job, None, records)
            yield job, records


@dataclass(frozen=True)
class ExecutorEntry:
    """An executor: its class ("module:Class", imported only when used) and the module it
    needs installed, with how to install it."""

    target: str
    needs: str | None = None
    install: str | None = None


# Adding an executor: one module with a class that implements Executor, and one row here.
EXECUTORS: dict[str, ExecutorEntry] = {
    "serial": ExecutorEntry("bench.run.executors:SerialExecutor"),
    "ray": ExecutorEntry("bench.run.ray_executor:RayExecutor", "ray", RAY_INSTALL),
}
EXECUTOR_NAMES = tuple(EXECUTORS)


def check_executor(name: str) -> None:
    """SpecError, before anything is read, for an unknown executor or a missing engine."""
    if name not in EXECUTORS:
        raise SpecError(f"unknown executor {name!r}; valid: {', '.join(EXECUTOR_NAMES)}")
    entry = EXECUTORS[name]
    if entry.needs and importlib.util.find_spec(entry.needs) is None:
        raise SpecError(f"--executor {name} needs {entry.needs.capitalize()}, which is not "
                        f"installed here: {entry.install}")


def make_executor(name: str, *, ray_address: str | None = None,
                  tasks_per_node: int | None = None, platform: str = "auto") -> Executor:
    check_executor(name)
    module, _, cls = EXECUTORS[name].target.partition(":")
    executor_class = getattr(importlib.import_module(module), cls)
    return executor_class(address=ray_address, tasks_per_node=tasks_per_node, platform=platform)
