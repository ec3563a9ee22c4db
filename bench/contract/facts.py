"""Typed facts: a run's header (`RunHeader`, run.json), how a trial was trained
(`PopulationFacts`) and the machine that produced it (`MachineFacts`), and the data set's
identity. Written and read through these classes (the runner, the engine and the workers
build them; their JSON forms convert them), so a field is named once; the files keep the
keys they had before they were typed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


class FactsError(ValueError):
    """A facts table with a field this bench does not know; the message names it."""


def _from_json(cls, data: dict | None, what: str):
    if data is None:
        return None
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise FactsError(f"{what} must be a table, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise FactsError(f"unknown {what} field(s) {', '.join(unknown)}")
    return cls(**data)


def _to_json(facts) -> dict:
    """The set fields (None and empty left out, as the files had them before typing)."""
    return {f.name: getattr(facts, f.name) for f in dataclasses.fields(facts)
            if getattr(facts, f.name) not in (None, [], {})}


@dataclass(slots=True)
class PopulationFacts:
    """How a trial was trained: its group, the population's size and the member's index;
    for a population of more than one, the figures its members share (compile and epoch
    times, throughput, time to accuracy on its clock), never any member's own."""

    group: str
    size: int = 1
    index: int = 0
    devices: int | None = None
    compile_s: float | None = None
    eval_compile_s: float | None = None
    round_compile_s: float | None = None
    compile_cache_hits: int | None = None
    memory: dict = field(default_factory=dict)
    epoch_s: list = field(default_factory=list)
    first_epoch_s: float | None = None
    steady_epoch_s: float | None = None
    members_per_epoch: list = field(default_factory=list)
    member_samples_per_s: float | None = None
    wall_s: float | None = None
    speedup: float | None = None
    achieved_flops: float | None = None
    peak_fraction: float | None = None
    retired: list = field(default_factory=list)  # {after_epoch, members, padded, devices, ...}
    time_to_accuracy: dict = field(default_factory=dict)
    retry: str | None = None  # why the unit was retried as halves (it ran out of memory)

    @property
    def together(self) -> bool:
        """Trained with others: the shared figures are the population's."""
        return self.size > 1

    def to_json(self) -> dict:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: dict | None) -> PopulationFacts | None:
        return _from_json(cls, data, "population")


@dataclass(slots=True)
class MachineFacts:
    """The machine (and Ray node) that produced a record (bench.run.work.machine_facts)."""

    host: str | None = None
    node: str | None = None
    cpu: str | None = None
    cpu_count: int | None = None
    usable_cpu_count: int | None = None
    bench: str | None = None
    jax: str | None = None
    jaxlib: str | None = None
    platform: str | None = None
    device_kind: str | None = None
    device_count: int | None = None
    fused_lstm_cpu: str | None = None
    fused_cells_cpu: str | None = None
    fused_conv_cpu: str | None = None
    cpu_kernel_target: str | None = None
    peak_flops: float | None = None
    calibration: dict | None = None

    def to_json(self) -> dict:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: dict | None) -> MachineFacts | None:
        return _from_json(cls, data, "machine")


# What makes two data sets the same for bench: a resumed run and its first part, a Ray worker
# and its driver, two runs whose accuracies a report compares. Not where the files lie: a
# node reads them from its own path. A validation split held out of training changes what
# trains (`train_examples` counts the rest), so test figures are not comparable across
# different splits; runs without one have no `validation_examples` (None), as before.
DATA_IDENTITY = ("name", "source", "train_examples", "test_examples", "validation_examples")


def data_identity(data: dict) -> dict:
    """The fields of a data set's description (Dataset.describe) that identify it."""
    return {name: data.get(name) for name in DATA_IDENTITY}


@dataclass(slots=True)
class RunHeader:
    """run.json: everything needed to say where a run's numbers came from, and its plan.

    Written by the runner (bench/run/runner.py) through bench/contract/results.py, read by
    the reports and `bench compare` (bench/read). A resumed run keeps its first header and
    lists each later invocation under `resumed`."""

    run_id: str | None = None
    schema_version: int | None = None
    started: str | None = None
    finished: str | None = None                      # the end (a resume's: in its `resumed`)
    command: str | None = None
    git_commit: str | None = None
    versions: dict = field(default_factory=dict)    # package -> version
    device: dict = field(default_factory=dict)      # platform, device kind and count, host CPU
    data: dict = field(default_factory=dict)        # Dataset.describe(): identity and provenance
    name: str | None = None                         # the sweep's (preset's) name
    tags: list = field(default_factory=list)
    calibration: dict = field(default_factory=dict)  # the peak every % of peak divides by
    fused_lstm_cpu: str | None = None                # each CPU kernel's status ('on' or why not)
    fused_cells_cpu: str | None = None
    fused_conv_cpu: str | None = None
    cpu_kernel_target: str | None = None             # what the kernels were compiled for
    openblas_threads: int | None = None
    protocol: dict = field(default_factory=dict)     # the timing protocol
    options: dict = field(default_factory=dict)      # device and data options a resume must keep
    driver: dict | None = None                       # the driving process's machine
    plan: list = field(default_factory=list)         # every planned trial's config
    references: dict = field(default_factory=dict)   # key -> published reference
    nodes: list = field(default_factory=list)        # machines that ran units, with counts
    population: str | int | None = None              # how this invocation grouped trials
    executor: dict | None = None                     # the executor's description
    devices: list | None = None                      # the devices a serial run used
    workers: int | None = None                       # a cluster's workers
    resumed: list = field(default_factory=list)      # later invocations: command, time, how
    pruning: dict | None = None                      # --prune: bench.contract.pruning.Pruning
    executor_units: list = field(default_factory=list)  # per unit: node, seconds on the wire

    def current(self) -> dict | RunHeader:
        """Where this invocation's settings go: the latest `resumed` entry, else the header."""
        return self.resumed[-1] if self.resumed else self

    @property
    def population_setting(self) -> str | int | None:
        latest = self.current()
        return latest.get("population") if isinstance(latest, dict) else self.population

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        for name in ("resumed", "executor_units", "tags", "pruning"):  # written once set
            if not out[name]:
                del out[name]
        return out

    @classmethod
    def from_json(cls, data: dict | None) -> RunHeader | None:
        return _from_json(cls, data, "run.json")
