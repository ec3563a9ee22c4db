"""`--executor ray`: a sweep's work units run by Ray workers, on one machine or a cluster.

Ray is used for what it is good at (placing work on nodes by their resources,
reusing worker processes, telling a dead worker from a failed task); bench
keeps the rest: the driver is the only writer of the run directory, and
figures are never retried behind the user's back (max_restarts=0,
max_task_retries=0: a unit whose worker dies ends as `failed` records).

Each worker is a long-lived Ray actor pinned to one node (NodeAffinity). On CPU
an actor asks for all of its node's cores, so two units never time each
other's noise; `--tasks-per-node N` packs N actors per node (each with 1/N of
its cores) when timing does not matter. On GPU an actor asks for one GPU. An
actor keeps its data set, device and calibration between units
(bench.run.work._Worker), so a node loads and calibrates once. A node's first
actor calibrates before its other actors start, and they then read its cached
figure: a peak measured while the node's other actors start up (or measure too)
would be too low (bench.engine.calibrate also lets one process of a node measure
at a time, and caches no measurement made on a busy machine).

Without an address (`--ray-address`, else RAY_ADDRESS) a private Ray is started
for the run, on the loopback interface only, and stopped at its end.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from bench.contract.schema import SpecError
from bench.run.executors import Placement
from bench.run.work import Job, failed_records, machine_facts, run_job, worker_facts

START_TIMEOUT_S = 180.0  # a worker that has not started by then is left out (its node is busy?)
CONNECT_TIMEOUT_S = 5.0
WAIT_POLL_S = 0.5
# HTTP through a proxy on a closed loopback port (it refuses at once), loopback itself direct.
LOOPBACK_HTTP = {"http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
                 "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}


class RayExecutorError(SpecError):
    """The cluster cannot be reached or cannot run this sweep; the message says why."""


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: a node, and the resources its actor asks for."""

    node: str  # Ray node id (hex)
    host: str
    index: int  # of the node's workers
    cpus: float
    gpus: float = 0.0
    tpus: float = 0.0  # a TPU host's chips, taken by one worker (one JAX process per host)

    @property
    def label(self) -> str:
        return f"{self.host}:{self.node[:6]}" + (f"#{self.index}" if self.index else "")


def cluster_platform(nodes: list[dict], asked: str) -> str:
    """The platform the workers use: `asked`, or for 'auto' the best one the cluster has."""
    if asked != "auto":
        return asked
    totals = _totals(nodes)
    return "gpu" if totals.get("GPU") else "tpu" if totals.get("TPU") else "cpu"


def plan_slots(nodes: list[dict], platform: str, tasks_per_node: int | None) -> list[Slot]:
    """The workers to start, from `ray.nodes()`: on CPU `tasks_per_node` (default 1) per
    node sharing its cores; on GPU one per GPU; on TPU one per host with all its chips (a
    host's chips belong to one process). Nodes without the platform's resource (a head
    started with --num-cpus=0, say) get none."""
    slots = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        res, host = node.get("Resources") or {}, node.get("NodeManagerHostname") or node.get("NodeManagerAddress", "?")
        cpus = float(res.get("CPU", 0))
        accelerators = int(res.get({"gpu": "GPU", "tpu": "TPU"}.get(platform, ""), 0))
        if platform == "cpu":
            count = tasks_per_node or 1
            slots += [Slot(node["NodeID"], host, i, cpus / count) for i in range(count)] if cpus else []
        elif accelerators and platform == "gpu":
            slots += [Slot(node["NodeID"], host, i, cpus / accelerators, gpus=1.0)
                      for i in range(accelerators)]
        elif accelerators:
            slots.append(Slot(node["NodeID"], host, 0, cpus, tpus=float(accelerators)))
    return slots


def _totals(nodes: list[dict]) -> dict:
    totals: dict = {}
    for node in nodes:
        if node.get("Alive"):
            for name, value in (node.get("Resources") or {}).items():
                totals[name] = totals.get(name, 0) + value
    return totals


class UnitWorker:
    """The Ray actor: runs jobs in one long-lived process on one node."""

    def facts(self, job: Job) -> dict:
        return worker_facts(job)  # the device resolved and calibrated before any unit is timed

    def run(self, job: Job) -> dict:
        start = time.perf_counter()
        records = run_job(job)
        return {"records": records, "seconds": time.perf_counter() - start}


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, tasks_per_node: int | None = None,
                 platform: str = "auto"):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.tasks_per_node = tasks_per_node
        self.asked_platform = platform
        self.platform = platform
        self.private = self.address is None
        self.workers: dict[Slot, object] = {}
        self.facts_of: dict[Slot, dict] = {}
        self.warnings: list[str] = []
        self.units: list[dict] = []  # per unit: node, size, seconds on the wire and at work
        self._recalibrating: set[Slot] = set()  # workers that measure afresh (--recalibrate)
        self._ray = None
        self._actor_class = None

    # ------------------------------------------------------------ the cluster
    def __enter__(self) -> RayExecutor:
        self._ray = _import_ray(private=self.private)
        if not self.private:
            _check_reachable(self.address)
        try:
            with _loopback_only() if self.private else nullcontext():
                self._ray.init(address=self.address or "local", include_dashboard=False,
                               log_to_driver=False, logging_level="ERROR",
                               configure_logging=True)
        except Exception as exc:  # noqa: BLE001 - any failure to join is the user's to fix
            where = f"the Ray cluster at {self.address}" if self.address else "a private local Ray"
            raise RayExecutorError(f"cannot start or join {where}: {type(exc).__name__}: "
                                   f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
        return self

    def __exit__(self, *exc) -> None:
        self.stop_workers()
        if self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()  # a private Ray stops with its driver's shutdown

    def describe(self) -> dict:
        return {"name": self.name, "address": self.address or "private local Ray",
                "tasks_per_node": self.tasks_per_node or 1, "platform": self.platform}

    def place(self, template: Job, dataset) -> Placement:
        """The cluster's workers, started; each loads the data and calibrates its own node."""
        workers = self.start_workers(template)
        facts, peak = cluster_facts(workers)
        return Placement(facts, peak, {"workers": len(workers)})

    def announce(self, device: dict) -> list[str]:
        about, nodes = self.describe(), device.get("nodes")
        return [f"executor: ray at {about['address']}: {device.get('workers')} workers on "
                f"{nodes} node{'s' if nodes != 1 else ''} ({about['tasks_per_node']} per node)",
                *(f"[yellow]{warning}" for warning in self.warnings)]

    def unit_times(self) -> list[dict]:
        return self.units

    # ------------------------------------------------------------ workers
    def start_workers(self, template: Job) -> list[dict]:
        """Starts one worker per slot and waits until each has resolved its device and
        calibrated; returns their machine facts. Workers that fail to start are left out
        with a warning; none at all is a RayExecutorError.

        Each node's first worker starts (and calibrates) before the node's others, which
        then read its cached figure; with --recalibrate only the first ones measure."""
        ray = self._ray
        nodes = ray.nodes()
        self.platform = cluster_platform(nodes, self.asked_platform)
        slots = plan_slots(nodes, self.platform, self.tasks_per_node)
        if not slots:
            raise RayExecutorError(f"the Ray cluster has no node with a {self.platform} resource "
                                   f"to run units on (resources: {_totals(nodes)})")
        firsts = [s for s in slots if s.index == 0]
        if template.recalibrate:
            self._recalibrating.update(firsts)
        self._start(firsts, template)
        self._start([s for s in slots if s.index != 0], template)
        if not self.workers:
            raise RayExecutorError("no Ray worker could start: " + "; ".join(self.warnings))
        self._check_versions()
        self._check_calibrations()
        return [self.facts_of[s] for s in self.workers]

    def _start(self, slots: list[Slot], template: Job) -> None:
        """Starts `slots`' workers and waits until each has its facts, or is left out."""
        if not slots:
            return
        ray = self._ray
        probes = {}
        for slot in slots:
            actor = self._new_actor(slot)
            self.workers[slot] = actor
            probes[actor.facts.remote(self._job_for(template, slot))] = slot
        deadline = time.monotonic() + START_TIMEOUT_S
        remaining = list(probes)
        while remaining and time.monotonic() < deadline:
            ready, remaining = ray.wait(remaining, num_returns=1, timeout=WAIT_POLL_S)
            for ref in ready:
                slot = probes[ref]
                try:
                    self.facts_of[slot] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - this worker is left out, with the cause
                    self._drop(slot, f"worker on {slot.label} could not start: {_cause(exc)}")
        for ref in remaining:
            self._drop(probes[ref], f"worker on {probes[ref].label} did not start within "
                                    f"{START_TIMEOUT_S:.0f} s (are its node's resources taken?)")

    def stop_workers(self) -> None:
        """Kills every worker: running units are cancelled, pending ones never start."""
        for actor in self.workers.values():
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001, S110 - already gone
                pass
        self.workers.clear()

    def _new_actor(self, slot: Slot):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        if self._actor_class is None:
            self._actor_class = self._ray.remote(UnitWorker)
        return self._actor_class.options(
            num_cpus=slot.cpus, num_gpus=slot.gpus, resources={"TPU": slot.tpus} if slot.tpus else None,
            max_restarts=0, max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=slot.node, soft=False),
        ).remote()

    def _drop(self, slot: Slot, warning: str) -> None:
        actor = self.workers.pop(slot, None)
        if actor is not None:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001, S110
                pass
        self.warnings.append(warning)

    def _replace(self, slot: Slot) -> Slot | None:
        """A new worker in place of a dead one, if its node is still alive (it reads the
        node's cached calibration: measuring while the others run would be too low)."""
        self.workers.pop(slot, None)
        self._recalibrating.discard(slot)
        alive = {n["NodeID"] for n in self._ray.nodes() if n.get("Alive")}
        if slot.node not in alive:
            self.warnings.append(f"node {slot.label} is gone; its units go to the other nodes")
            return None
        self.workers[slot] = self._new_actor(slot)
        return slot

    def _check_versions(self) -> None:
        mine = machine_facts().get("bench")
        other = sorted({f.get("bench") for f in self.facts_of.values()} - {mine}, key=str)
        if other:
            self.warnings.append(f"workers run bench {', '.join(map(str, other))}, the driver "
                                 f"{mine}; records say which produced them")

    def _check_calibrations(self) -> None:
        """A warning for each worker but the first (whose calibration the run shows) that
        measured its peak on a busy machine: its records' % of peak are too high."""
        for slot in list(self.workers)[1:]:
            warning = (self.facts_of[slot].get("calibration") or {}).get("warning")
            if warning:
                self.warnings.append(f"worker on {slot.label}: {warning}")

    def _job_for(self, job: Job, slot: Slot) -> Job:
        """`job` as `slot`'s worker runs it: on the cluster's platform, so that the start-up
        probe and the units share one bench.run.work worker (one device, one calibration);
        only a node's first worker recalibrates, the others read what it measured."""
        return dataclasses.replace(job, node=slot.node, device=self.platform,
                                   recalibrate=slot in self._recalibrating)

    # ------------------------------------------------------------ dispatch
    def run(self, jobs: Iterable[Job], progress) -> Iterator[tuple[Job, list[dict]]]:
        """Yields each job's records as it ends, in completion order."""
        ray = self._ray
        pending, running = deque(jobs), {}
        idle = list(self.workers)
        try:
            while pending or running:
                while pending and idle:
                    slot = idle.pop(0)
                    job = self._job_for(pending.popleft(), slot)
                    running[self.workers[slot].run.remote(job)] = (job, slot, time.perf_counter())
                    progress.started(job, slot.label)
                if not running:  # every worker is gone
                    for job in pending:
                        yield job, failed_records(job, "no Ray worker is left to run it: "
                                                  + "; ".join(self.warnings[-3:]))
                    return
                ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_POLL_S)
                for ref in ready:
                    job, slot, sent = running.pop(ref)
                    records, alive, work_s = self._collect(ref, job, slot)
                    self._account(slot, job, time.perf_counter() - sent, work_s)
                    if alive:
                        idle.append(slot)
                    elif self._replace(slot) is not None:
                        idle.append(slot)
                    progress.finished(job, slot.label, records)
                    yield job, records
        finally:
            if running or pending:
                self.stop_workers()  # interrupted: cancel what runs, start nothing more

    def _collect(self, ref, job: Job, slot: Slot) -> tuple[list[dict], bool, float | None]:
        """The job's records, whether its worker is still alive, and the seconds the worker
        spent on the job (None when it failed)."""
        from ray import exceptions
        try:
            done = self._ray.get(ref)
            return done["records"], True, done["seconds"]
        except exceptions.RayTaskError as exc:  # raised inside the job: the worker lives on
            return failed_records(job, f"on {slot.label}: {_cause(exc)}",
                                  self.facts_of.get(slot)), True, None
        except exceptions.RayError as exc:  # the worker died (crash, out of memory, node lost)
            cause = (f"worker died on {slot.label} ({type(exc).__name__}: {_cause(exc)}); "
                     "not retried")
            return failed_records(job, cause, self.facts_of.get(slot)), False, None

    def _account(self, slot: Slot, job: Job, seconds: float, work: float | None) -> None:
        """What the unit cost: seconds from submission to its records in the driver, and
        seconds the worker spent running it (their difference is Ray's overhead)."""
        self.units.append({"node": slot.label, "trials": job.unit.size,
                           "round_trip_s": round(seconds, 3),
                           "work_s": None if work is None else round(work, 3)})


def _import_ray(*, private: bool):
    """Ray, imported so that a private Ray binds the loopback interface only.

    On Linux Ray replaces 127.0.0.1 with the machine's outward address unless this
    variable is 0 when it is imported (it then treats the machine as one that runs
    no multi-machine clusters)."""
    if private and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    return ray


@contextmanager
def _loopback_only():
    """The environment a private Ray's processes start with: Ray's dashboard asks cloud
    metadata services (169.254.169.254) which cloud it runs on, usage statistics off or
    not; a loopback-only Ray has no business on the network, so its HTTP goes to a proxy
    that refuses at once, loopback excepted."""
    saved = {name: os.environ.get(name) for name in LOOPBACK_HTTP}
    os.environ.update(LOOPBACK_HTTP)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _check_reachable(address: str) -> None:
    """Fails fast (seconds, not Ray's minute of retries) when HOST:PORT does not answer."""
    if address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        raise RayExecutorError(f"--ray-address {address}: no Ray cluster answers there "
                               f"({getattr(exc, 'strerror', None) or exc}); start one with "
                               "`ray start --head` or check the address") from None


def _cause(exc: BaseException) -> str:
    """One line: the exception raised inside a task, or Ray's own error."""
    inner = getattr(exc, "cause", None)
    if inner is not None and inner is not exc:
        return f"{type(inner).__name__}: {inner}".splitlines()[0]
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def cluster_facts(workers: list[dict]) -> tuple[dict, dict]:
    """The run's device facts and calibration from its workers' (the first one's, with
    the number of workers); each record carries its own node's."""
    first = workers[0]
    facts = {"platform": first["platform"], "device_kind": first["device_kind"],
             "device_count": first["device_count"], "host_cpu": first["cpu"],
             "host_cpu_count": first["cpu_count"], "usable_cpu_count": first["usable_cpu_count"],
             "workers": len(workers),
             "nodes": len({w["node"] for w in workers})}
    peak = {**(first.get("calibration") or {}), "node": first["node"],
            "per_node": "each record's machine.peak_flops is its own node's"}
    return facts, peak
