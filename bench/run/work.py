"""A work unit as data: what any process, on any machine, needs to run it.

A `Job` is a unit (bench.run.groups.Unit: a population, or one trial) with plain,
picklable inputs: the trial configs, a `DataSpec` (which data, never the
arrays), the platform asked for, the device count, the timing protocol. The
serial executor and Ray's workers run it with the same function, `run_job`, so
a record means the same thing whichever executor produced it.

The process that runs a job loads the data, resolves the device and takes the
calibration of its own machine itself, once per process (`_Worker`), and
stamps every record with the facts of that machine (`machine_facts`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.contract.facts import MachineFacts, data_identity
from bench.contract.pruning import Pruning
from bench.contract.schema import Record, TimingProtocol
from bench.contract.units import Unit


@dataclass(frozen=True)
class DataSpec:
    """Which data set a job trains on: the arguments of bench.engine.data.load_dataset.

    A path must be absolute and readable on every node that runs work; TFDS data must
    already be prepared in `data_dir` (the driver prepares it; workers only read)."""

    data: str = "auto"
    dataset: str = "mnist"
    data_dir: str | None = None
    validation: float | None = None  # the fraction of training held out (hold_out_validation)

    @classmethod
    def of(cls, dataset) -> DataSpec:
        """The spec that loads exactly `dataset` (a bench.engine.data.Dataset) on any node: 'auto'
        resolved to what it found here, paths absolute, its validation split drawn alike."""
        held = getattr(dataset, "validation", None)
        fraction = held["fraction"] if held else None
        if dataset.source == "embedded":
            return cls("embedded", dataset.name, validation=fraction)
        if dataset.source == "tfds":
            return cls("tfds", dataset.name, dataset.location, fraction)
        return cls(dataset.location, dataset.name, validation=fraction)

    def load(self):
        """The data set this spec names, its validation split held out (a worker: TFDS data
        is read only if already prepared)."""
        from bench.engine import data as data_sources
        dataset = data_sources.load_dataset(self.data, self.dataset, data_dir=self.data_dir,
                                            prepare=False)
        if self.validation is None:
            return dataset
        return data_sources.hold_out_validation(dataset, self.validation)


@dataclass(frozen=True)
class Job:
    unit: Unit
    data: DataSpec
    device: str = "auto"  # the platform asked for: cpu, gpu, tpu or auto
    devices: int | None = None  # devices a population is sharded over (None: all)
    protocol: TimingProtocol = field(default_factory=TimingProtocol)
    recalibrate: bool = False
    compilation_cache: str | None = None
    # The driver's description of the data: a worker that finds other data fails the unit.
    expect_data: dict | None = None
    node: str | None = None  # the Ray node id of the process that runs it (None: serial)
    pruning: Pruning | None = None  # --prune: the unit is a halving group, pruned at its rungs


OnEpoch = Callable[[dict], None]


def run_job(job: Job, on_epoch: OnEpoch | None = None) -> list[dict]:
    """The unit's records, as results.jsonl lines; a failing trial is a record, never raised.

    Problems of the worker itself (its data differs from the driver's, say) raise: the
    executor turns them into `failed` records for the unit's trials."""
    worker = _worker(job)
    records = worker.run(job, on_epoch)
    facts = MachineFacts.from_json(worker.facts(job.node))
    for record in records:
        record.machine = facts
    return [r.to_json() for r in records]


def failed_records(job: Job, error: str, machine: dict | None = None) -> list[dict]:
    """`failed` records for every trial of `job` (its worker died, say), with the cause."""
    out = []
    for index, config in enumerate(job.unit.members):
        record = Record(config=config, status="failed", error=error, machine=machine,
                        population={"group": job.unit.group, "size": job.unit.size,
                                    "index": index})
        out.append(record.to_json())
    return out


def remember_dataset(spec: DataSpec, dataset) -> None:
    """Lets this process's worker reuse a data set the caller has already loaded."""
    _DATASETS[spec] = dataset


def cpu_kernel_statuses() -> dict[str, str]:
    """Which CPU kernels ran ('on', or why the XLA form ran instead), as run.json names them."""
    from models import fused_cells, fused_conv, fused_lstm  # imports JAX: not at module import
    from models.native_kernels import build_target
    return {"fused_lstm_cpu": fused_lstm.status(), "fused_cells_cpu": fused_cells.status(),
            "fused_conv_cpu": fused_conv.status(), "cpu_kernel_target": build_target()}


def machine_facts(node: str | None = None, *, device=None, calibration: dict | None = None) -> dict:
    """The facts a record carries about the machine that produced it; without a device,
    the host's alone (the driver of a Ray run)."""
    from bench.engine.devices import host_cpu, usable_cpu_count  # imports JAX: not at module import
    from bench.contract.results import package_versions
    versions = package_versions()
    facts = {"host": socket.gethostname(), "node": node, "cpu": host_cpu(),
             "cpu_count": os.cpu_count(), "usable_cpu_count": usable_cpu_count(),
             "bench": versions.get("bench"),
             "jax": versions.get("jax"), "jaxlib": versions.get("jaxlib")}
    if device is not None:
        import jax

        facts.update(platform=device.platform, device_kind=device.device_kind,
                     device_count=len(jax.devices(device.platform)))
        if device.platform == "cpu":
            facts.update(cpu_kernel_statuses())
    if calibration is not None:
        facts["peak_flops"] = calibration.get("peak_flops")
        facts["calibration"] = {k: calibration.get(k)
                                for k in ("peak_flops", "matrix_size", "measured", "cached")}
        if calibration.get("busy"):  # measured on a busy machine: not cached, likely too low
            facts["calibration"].update(busy=True,
                                        other_cpu_cores=calibration.get("other_cpu_cores"),
                                        warning=calibration.get("warning"))
    return facts


_DATASETS: dict = {}


class _Worker:
    """What one process keeps between jobs: the data set, the device and its calibration."""

    def __init__(self, device: str, recalibrate: bool, compilation_cache: str | None, *,
                 resolved=None, calibrated: dict | None = None):
        from bench.engine.calibrate import calibration
        from bench.engine.devices import resolve_device
        if compilation_cache:
            enable_compilation_cache(compilation_cache)
        self.device = resolved or resolve_device(device)
        self.calibration = calibrated or calibration(self.device, use_cache=not recalibrate)
        self._facts: dict = {}

    def facts(self, node: str | None) -> dict:
        if node not in self._facts:
            self._facts[node] = machine_facts(node, device=self.device,
                                              calibration=self.calibration)
        return self._facts[node]

    def dataset(self, job: Job):
        spec = job.data
        if spec not in _DATASETS:
            _DATASETS.clear()  # one data set resident per process
            _DATASETS[spec] = spec.load()
        dataset = _DATASETS[spec]
        if job.expect_data is not None:
            _check_same_data(job.expect_data, dataset.describe())
        return dataset

    def run(self, job: Job, on_epoch: OnEpoch | None):
        from bench.engine.devices import platform_devices
        from bench.engine.training import train_unit
        dataset = self.dataset(job)
        device_list = platform_devices(self.device, job.devices)
        return train_unit(job.unit, dataset, device_list, job.protocol,
                          peak_flops=self.calibration["peak_flops"], on_epoch=on_epoch,
                          pruning=job.pruning)


_WORKERS: dict = {}


def _worker(job: Job) -> _Worker:
    key = (job.device, job.recalibrate, job.compilation_cache)
    if key not in _WORKERS:
        _WORKERS[key] = _Worker(*key)
    return _WORKERS[key]


def adopt(job: Job, device, calibration: dict) -> None:
    """Lets this process's worker use a device and calibration the caller already has
    (the serial executor: the driver has resolved and calibrated them)."""
    key = (job.device, job.recalibrate, job.compilation_cache)
    _WORKERS[key] = _Worker(*key, resolved=device, calibrated=calibration)


def worker_facts(job: Job) -> dict:
    """The facts of this process's machine for `job`, its device resolved and calibrated
    (measured once, cached per machine) on the way: a Ray worker's start, before any unit."""
    return _worker(job).facts(job.node)


def _check_same_data(expected: dict, found: dict) -> None:
    want, have = data_identity(expected), data_identity(found)
    if want != have:
        raise RuntimeError(f"this node's data differs from the driver's: driver {want}, "
                           f"here {have}; give a --data every node reads alike")


def enable_compilation_cache(path: str) -> None:
    """JAX's persistent compilation cache in `path`, for every compile (hits are recorded)."""
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
