"""Executors and the work they carry, without Ray: none of these tests imports or starts it.

What a Ray run depends on is checked here as plain data: the worker slots planned from a
`ray.nodes()` listing, the platform a cluster is given, jobs that survive pickling,
the `failed` records a lost unit becomes, the data spec a worker loads, a job run
in-process exactly as a worker runs it, the refusal of `--executor ray` where Ray is
missing, and run.json's ledger of the nodes that ran work.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.run import executors, runner, work
from bench.cli import main
from bench.engine.data import load_embedded
from bench.run.executors import (EXECUTOR_NAMES, RAY_INSTALL, SerialExecutor, check_executor,
                             make_executor)
from bench.run.groups import Unit, group_id
from bench.run.ray_executor import Slot, cluster_platform, plan_slots
from bench.run.runner import NodeLedger
from bench.contract.facts import MachineFacts, RunHeader
from bench.contract.schema import Record, SpecError, TimingProtocol, make_config
from bench.run.work import DataSpec, Job, failed_records, run_job
from conftest import FAKE_PEAK, isolated_env, write_npz

REPO = Path(__file__).resolve().parents[1]
QUICK = TimingProtocol(repeats=1, burn_in=0, round_steps=2)


def config(**values):
    base = {"model": "dense", "units": 16, "activation": "relu", "optimizer": "sgd", "epochs": 1}
    return make_config({**base, **values})


# ---------------------------------------------------------------- planning workers


def node(node_id: str, *, cpu: float = 8, gpu: float = 0, tpu: float = 0, alive: bool = True,
         host: str | None = "host") -> dict:
    """One entry of `ray.nodes()`, with the keys bench reads."""
    resources = {"CPU": cpu, "memory": 1e9, f"node:10.0.0.{len(node_id)}": 1.0}
    if gpu:
        resources["GPU"] = gpu
    if tpu:
        resources["TPU"] = tpu
    return {"NodeID": node_id, "Alive": alive, "NodeManagerHostname": host,
            "NodeManagerAddress": "10.0.0.9", "Resources": resources}


A, B, C = "a" * 56, "b" * 56, "c" * 56  # Ray node ids are 56 hex digits


# (nodes, platform, tasks_per_node) -> slots as (node, index, cpus, gpus)
PLANS = {
    "cpu: one slot per node, all its cores": (
        [node(A, cpu=8), node(B, cpu=4)], "cpu", None,
        [(A, 0, 8.0, 0.0), (B, 0, 4.0, 0.0)]),
    "cpu: three per node share its cores": (
        [node(A, cpu=12)], "cpu", 3,
        [(A, 0, 4.0, 0.0), (A, 1, 4.0, 0.0), (A, 2, 4.0, 0.0)]),
    "cpu: a dead node gets none": (
        [node(A, cpu=8, alive=False), node(B, cpu=2)], "cpu", None,
        [(B, 0, 2.0, 0.0)]),
    "cpu: a node without CPUs gets none": (
        [node(A, cpu=0), node(B, cpu=2)], "cpu", 2,
        [(B, 0, 1.0, 0.0), (B, 1, 1.0, 0.0)]),
    "gpu: one slot per GPU, CPUs split": (
        [node(A, cpu=8, gpu=2)], "gpu", None,
        [(A, 0, 4.0, 1.0), (A, 1, 4.0, 1.0)]),
    "gpu: tasks_per_node does not multiply GPU slots": (
        [node(A, cpu=8, gpu=2)], "gpu", 4,
        [(A, 0, 4.0, 1.0), (A, 1, 4.0, 1.0)]),
    "gpu: a node without GPUs gets none": (
        [node(A, cpu=16), node(B, cpu=6, gpu=1)], "gpu", None,
        [(B, 0, 6.0, 1.0)]),
    "gpu: a dead GPU node gets none": (
        [node(A, cpu=8, gpu=4, alive=False)], "gpu", None, []),
    "tpu: one slot per TPU host with all its chips, no GPUs asked": (
        [node(A, cpu=8, tpu=4), node(B, cpu=8)], "tpu", None,
        [(A, 0, 8.0, 0.0, 4.0)]),
    "no nodes": ([], "cpu", None, []),
}


@pytest.mark.parametrize("name", PLANS)
def test_plan_slots(name):
    nodes, platform, per_node, expected = PLANS[name]
    slots = plan_slots(nodes, platform, per_node)
    assert [(s.node, s.index, s.cpus, s.gpus, *((s.tpus,) if s.tpus else ())) for s in slots] == expected
    assert len(set(slots)) == len(slots)  # each slot is its own worker (a dict key)


def test_a_slot_is_named_by_host_and_node():
    slots = plan_slots([node(A, cpu=4, host="alpha"), node(B, cpu=4, host=None)], "cpu", 2)
    assert [s.host for s in slots] == ["alpha", "alpha", "10.0.0.9", "10.0.0.9"]
    assert [s.label for s in slots] == ["alpha:aaaaaa", "alpha:aaaaaa#1",
                                        "10.0.0.9:bbbbbb", "10.0.0.9:bbbbbb#1"]
    assert Slot("0123456789", "h", 3, 1.0).label == "h:012345#3"


@pytest.mark.parametrize("nodes, asked, expected", [
    ([node(A), node(B, gpu=1)], "auto", "gpu"),
    ([node(A, tpu=4)], "auto", "tpu"),
    ([node(A), node(B)], "auto", "cpu"),
    ([node(A), node(B, gpu=8, alive=False)], "auto", "cpu"),  # only alive nodes count
    ([node(A, gpu=1, tpu=4)], "auto", "gpu"),
    ([node(A, gpu=2)], "cpu", "cpu"),  # asked for: kept
    ([node(A)], "gpu", "gpu"),
    ([], "auto", "cpu"),
])
def test_cluster_platform(nodes, asked, expected):
    assert cluster_platform(nodes, asked) == expected


# ---------------------------------------------------------------- jobs as data


def a_population() -> Unit:
    members = tuple(config(seed=s, learning_rate=lr) for s, lr in ((0, 0.1), (1, 0.01), (2, 0.3)))
    return Unit(group_id(members[0]), members)


def test_a_job_and_its_unit_survive_pickling():
    unit = a_population()
    job = Job(unit=unit, data=DataSpec("/data/digits.npz", "digits"), device="cpu", devices=2,
              protocol=QUICK, recalibrate=True, compilation_cache="/tmp/cache",
              expect_data={"name": "digits", "train_examples": 256}, node=A)
    again = pickle.loads(pickle.dumps(job))
    assert again == job
    assert pickle.loads(pickle.dumps(unit)) == unit
    assert [m.key for m in again.unit.members] == [m.key for m in unit.members]
    assert again.unit.size == 3 and again.protocol.round_steps == 2


def test_failed_records_are_one_per_member_with_the_cause():
    unit = a_population()
    machine = {"host": "alpha", "node": A}
    job = Job(unit=unit, data=DataSpec("embedded"))
    lines = failed_records(job, "worker died on alpha:aaaaaa", machine)

    assert len(lines) == unit.size
    seeds = [(0, 0.1), (1, 0.01), (2, 0.3)]
    for index, (line, (seed, lr)) in enumerate(zip(lines, seeds, strict=True)):
        line = json.loads(json.dumps(line))  # what results.jsonl holds
        assert line["status"] == "failed"
        assert line["key"] == config(seed=seed, learning_rate=lr).key  # the key it has alone
        assert line["population"] == {"group": unit.group, "size": 3, "index": index}
        assert line["error"] == "worker died on alpha:aaaaaa"
        assert line["machine"] == machine
        record = Record.from_json(line)
        assert record.status == "failed" and record.config == unit.members[index]
    assert len({line["key"] for line in lines}) == 3


def test_failed_records_without_machine_facts():
    unit = Unit("g", (config(),), alone=True)
    (line,) = failed_records(Job(unit=unit, data=DataSpec()), "no Ray worker is left to run it")
    assert line["machine"] is None and line["population"]["size"] == 1
    assert Record.from_json(line).error == "no Ray worker is left to run it"


# ---------------------------------------------------------------- which data a worker loads


def test_data_spec_of_the_embedded_sample():
    spec = DataSpec.of(load_embedded())
    assert spec == DataSpec("embedded", "mnist", None)


def test_data_spec_of_an_npz_is_its_absolute_path(tmp_path, monkeypatch):
    from bench.engine.data import load_dataset
    write_npz(tmp_path / "digits.npz")
    monkeypatch.chdir(tmp_path)
    spec = DataSpec.of(load_dataset("digits.npz", "digits"))  # a relative --data
    assert spec == DataSpec(str(tmp_path / "digits.npz"), "digits", None)
    assert Path(spec.data).is_absolute()
    monkeypatch.chdir("/")  # a worker elsewhere loads the same data from the spec
    again = load_dataset(spec.data, spec.dataset, data_dir=spec.data_dir, prepare=False)
    assert again.describe() == load_dataset(str(tmp_path / "digits.npz"), "digits").describe()


def test_data_spec_of_tfds_data_names_its_directory():
    dataset = SimpleNamespace(source="tfds", name="fashion_mnist", location="/srv/tfds")
    assert DataSpec.of(dataset) == DataSpec("tfds", "fashion_mnist", "/srv/tfds")


# ---------------------------------------------------------------- a job run in-process


@pytest.fixture
def fresh_worker(monkeypatch):
    """Empty per-process caches of bench.run.work (workers and data sets), restored afterwards."""
    monkeypatch.setattr(work, "_WORKERS", {})
    monkeypatch.setattr(work, "_DATASETS", {})


def cpu_job(npz: Path, **changes) -> Job:
    trial = config()
    job = Job(unit=Unit(group_id(trial), (trial,), alone=True), data=DataSpec(str(npz), "tiny"),
              device="cpu", protocol=QUICK)
    return dataclasses.replace(job, **changes)


@pytest.mark.slow
def test_run_job_records_the_machine_that_ran_it(tmp_path, fresh_worker, monkeypatch):
    import jax

    from bench.contract.results import package_versions

    def no_calibration(*args, **kwargs):
        pytest.fail("measured a calibration although one was adopted")

    monkeypatch.setattr("bench.engine.calibrate.measure_peak", no_calibration)
    with isolated_env(tmp_path):
        npz = write_npz(tmp_path / "tiny.npz")
        job = cpu_job(npz, node="n1")
        calibration = {**FAKE_PEAK, "cached": True}
        work.adopt(job, jax.devices("cpu")[0], calibration)
        epochs = []
        (line,) = run_job(job, on_epoch=epochs.append)

    assert line["status"] == "ok", line.get("error")
    assert line["key"] == job.unit.members[0].key
    assert line["population"] == {"group": job.unit.group, "size": 1, "index": 0}
    assert [e["epoch"] for e in epochs] == [1]
    machine = line["machine"]
    assert machine["platform"] == "cpu" and machine["node"] == "n1"
    assert machine["host"] and machine["cpu_count"] >= 1
    assert machine["bench"] == package_versions()["bench"] is not None
    assert machine["peak_flops"] == FAKE_PEAK["peak_flops"]
    assert machine["calibration"]["matrix_size"] == FAKE_PEAK["matrix_size"]
    assert machine["calibration"]["cached"] is True
    assert line["peak_fraction"] is not None  # the adopted peak is the one the trial used
    record = Record.from_json(json.loads(json.dumps(line)))
    assert record.machine == MachineFacts(**machine) and record.machine.node == "n1"


def test_a_worker_with_other_data_refuses_the_job(tmp_path, fresh_worker, monkeypatch):
    import jax

    def no_trial(*args, **kwargs):
        pytest.fail("trained on data the driver does not have")

    monkeypatch.setattr("bench.engine.training.train_unit", no_trial)
    npz = write_npz(tmp_path / "tiny.npz", n_train=256)
    driver = {"name": "tiny", "source": "npz", "location": str(npz), "train_examples": 512,
              "test_examples": 64}
    job = cpu_job(npz, expect_data=driver)
    work.adopt(job, jax.devices("cpu")[0], dict(FAKE_PEAK))
    with pytest.raises(RuntimeError, match="differs from the driver") as raised:
        run_job(job)
    message = str(raised.value)
    assert "'train_examples': 512" in message and "'train_examples': 256" in message
    assert message.index("512") < message.index("256")  # driver first, then this node


# ---------------------------------------------------------------- choosing the executor


def test_an_unknown_executor_lists_the_valid_ones():
    with pytest.raises(SpecError, match="'dask'") as raised:
        check_executor("dask")
    assert all(name in str(raised.value) for name in EXECUTOR_NAMES)
    assert EXECUTOR_NAMES == ("serial", "ray")
    with pytest.raises(SpecError, match="'dask'"):
        make_executor("dask")


def test_the_serial_executor_needs_no_ray(monkeypatch):
    monkeypatch.setattr("bench.run.executors.importlib.util.find_spec", without_ray(monkeypatch))
    check_executor("serial")
    with make_executor("serial") as executor:
        assert isinstance(executor, SerialExecutor)
        assert executor.describe() == {"name": "serial"}


INLINE_EXECUTOR = """
from bench.run.executors import SerialExecutor


class InlineExecutor(SerialExecutor):
    name = "inline"
    jobs = []

    def run(self, jobs, progress):
        for job, records in super().run(jobs, progress):
            InlineExecutor.jobs.append(job.unit.size)
            yield job, records

    def describe(self):
        return {"name": self.name, "jobs_so_far": len(InlineExecutor.jobs)}

    def announce(self, device):
        return ["executor: inline, in this process"]
"""


@pytest.mark.slow
def test_an_executor_is_one_module_and_one_table_row(tmp_path, isolated, fake_peak, monkeypatch,
                                                      capsys):
    """The runner works through the Executor protocol alone: a new executor needs its module
    and a row of EXECUTORS, and nothing in the runner asks which executor it has."""
    (tmp_path / "inline_executor.py").write_text(INLINE_EXECUTOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(executors.EXECUTORS, "inline",
                        executors.ExecutorEntry("inline_executor:InlineExecutor"))
    npz = write_npz(tmp_path / "tiny.npz")
    argv = ["run", "--models", "dense", "--units", "4", "--epochs", "1", "--activations",
            "relu,tanh", "--optimizers", "adam", "--data", str(npz), "--out",
            str(tmp_path / "out"), "--executor",
            "inline", "--repeats", "1", "--round-steps", "1"]
    assert main(argv) == 0
    assert "executor: inline, in this process" in capsys.readouterr().out
    header = json.loads((tmp_path / "out" / "run.json").read_text())
    assert header["executor"] == {"name": "inline", "jobs_so_far": 0}
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 2
    assert "executor.name" not in inspect.getsource(runner)


def without_ray(monkeypatch):
    """importlib.util.find_spec as where Ray is not installed (other names as they are)."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "ray" or name.startswith("ray.") else real(name, *args, **kwargs)

    def no_ray(*args, **kwargs):
        pytest.fail("went on to import Ray")

    monkeypatch.setattr("bench.run.ray_executor._import_ray", no_ray)
    return find_spec


def test_ray_missing_is_refused_before_anything_is_read(tmp_path, monkeypatch, capsys):
    def no_data(*args, **kwargs):
        pytest.fail("loaded a data set although the executor cannot run")

    with isolated_env(tmp_path) as mp:
        mp.setattr("bench.run.executors.importlib.util.find_spec", without_ray(mp))
        mp.setattr("bench.engine.data.load_dataset", no_data)
        npz = write_npz(tmp_path / "tiny.npz")
        with pytest.raises(SpecError, match=r"bench\[ray\]"):
            check_executor("ray")
        before = sorted(p.name for p in tmp_path.iterdir())
        status = main(["run", "--models", "dense", "--units", "4", "--epochs", "1",
                       "--data", str(npz), "--executor", "ray", "--out", str(tmp_path / "out")])
        status_default_out = main(["run", "--models", "dense", "--data", str(npz),
                                   "--executor", "ray"])
    out, err = capsys.readouterr()

    assert status == status_default_out == 2
    assert "Traceback" not in out + err and out == ""
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1], err
    assert lines[0].startswith("bench run: error: --executor ray needs Ray")
    assert RAY_INSTALL in lines[0] and RAY_INSTALL.startswith("pip install 'bench[ray]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no out/, no reports/


# ---------------------------------------------------------------- run.json's nodes


def machine_lines(host: str, node_id: str | None, count: int) -> list[dict]:
    facts = {"host": host, "node": node_id, "platform": "cpu", "peak_flops": 1e11}
    return [{"key": f"k{i}", "status": "ok", "machine": dict(facts)} for i in range(count)]


def test_the_node_ledger_counts_units_and_trials_per_node():
    header = RunHeader()
    ledger = NodeLedger(header)
    job = Job(unit=a_population(), data=DataSpec())

    assert ledger.add(job, machine_lines("alpha", A, 3)) is True
    assert ledger.add(job, machine_lines("alpha", A, 2)) is False  # same node: counted in
    assert header.nodes == [{"host": "alpha", "node": A, "platform": "cpu",
                                "peak_flops": 1e11, "units": 2, "trials": 5}]
    assert ledger.add(job, machine_lines("alpha", B, 1)) is True  # same host, other node
    assert ledger.add(job, machine_lines("beta", None, 1)) is True  # serial, another machine
    assert ledger.add(job, [{"key": "k", "status": "failed", "machine": None}]) is False
    assert ledger.add(job, [{"key": "k", "status": "ok"}]) is False  # a record without machine
    assert [(n["host"], n["node"], n["units"], n["trials"]) for n in header.nodes] == [
        ("alpha", A, 2, 5), ("alpha", B, 1, 1), ("beta", None, 1, 1)]


def test_the_node_ledger_keeps_a_resumed_runs_nodes_and_the_unit_times():
    header = RunHeader(nodes=[{"host": "alpha", "node": None, "units": 4, "trials": 4}])
    ledger = NodeLedger(header)
    job = Job(unit=a_population(), data=DataSpec())
    assert ledger.add(job, machine_lines("alpha", None, 3)) is False  # listed by the first run
    assert header.nodes == [{"host": "alpha", "node": None, "units": 5, "trials": 7}]
    ledger.close([])
    assert "executor_units" not in header.to_json()
    ledger.close([{"node": "alpha:aaaaaa", "trials": 3, "round_trip_s": 1.5, "work_s": 1.2}])
    assert header.executor_units == [{"node": "alpha:aaaaaa", "trials": 3,
                                         "round_trip_s": 1.5, "work_s": 1.2}]


# ---------------------------------------------------------------- dispatch, with Ray faked
# RayExecutor's own logic (start the workers, hand out units, turn a failure into `failed`
# records) driven by a stand-in for the few calls of Ray it makes; each "actor" is a
# bench.run.ray_executor.UnitWorker in this process, so its jobs run through bench.run.work as on
# a node, with the trials themselves replaced by instant records.


class RayError(Exception):
    pass


class RayTaskError(RayError):
    """What ray.get raises for an exception inside a task: the exception as `cause`."""

    def __init__(self, cause):
        super().__init__(f"task failed: {cause}")
        self.cause = cause


class ActorDiedError(RayError):
    pass


class FakeRef:
    def __init__(self, call):
        try:
            self.value, self.error = call(), None
        except ActorDiedError as died:
            self.value, self.error = None, died
        except Exception as exc:  # noqa: BLE001 - as Ray wraps it
            self.value, self.error = None, RayTaskError(exc)


class FakeActor:
    def __init__(self, slot, dies_on: str | None = None):
        from bench.run.ray_executor import UnitWorker
        worker, self.slot = UnitWorker(), slot

        def run(job):
            if job.unit.group == dies_on:
                raise ActorDiedError("The actor died unexpectedly (out of memory)")
            return worker.run(job)

        self.facts = SimpleNamespace(remote=lambda job: FakeRef(lambda: worker.facts(job)))
        self.run = SimpleNamespace(remote=lambda job: FakeRef(lambda: run(job)))


class FakeRay:
    exceptions = SimpleNamespace(RayTaskError=RayTaskError, RayError=RayError)

    def __init__(self, nodes):
        self._nodes, self.killed = nodes, []

    def nodes(self):
        return self._nodes

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        if ref.error is not None:
            raise ref.error
        return ref.value

    def kill(self, actor, no_restart=True):
        self.killed.append(actor)

    def is_initialized(self):
        return False


class Events:
    """A Progress that remembers what it was told."""

    def __init__(self):
        self.seen = []

    def started(self, job, where):
        self.seen.append(("started", job.unit.group, where))

    def epoch(self, job, entry):
        self.seen.append(("epoch", job.unit.group))

    def finished(self, job, where, records):
        self.seen.append(("finished", job.unit.group, where, len(records)))


@pytest.fixture
def fake_ray(isolated, tmp_path, fresh_worker, fake_peak, monkeypatch):
    """A RayExecutor on a fake two-node cluster, its trials instant; yields (executor,
    template job, the fake peak's calls, the actors made)."""
    from bench.engine.data import load_dataset
    from bench.run.ray_executor import RayExecutor

    def instant(unit, dataset, device_list, protocol, *, peak_flops=None, on_epoch=None,
                pruning=None):
        if unit.group == "raises":
            raise ValueError("a bug in the trial runner")
        return [Record(config=c, status="ok", test_accuracy=0.5,
                       population={"group": unit.group, "size": unit.size, "index": i})
                for i, c in enumerate(unit.members)]

    monkeypatch.setattr("bench.engine.training.train_unit", instant)
    monkeypatch.setitem(sys.modules, "ray", FakeRay)  # `from ray import exceptions`
    npz = write_npz(tmp_path / "tiny.npz")
    dataset = load_dataset(str(npz), "tiny")
    template = Job(unit=Unit("", ()), data=DataSpec.of(dataset), device="auto", protocol=QUICK,
                   recalibrate=True, expect_data=dataset.describe())
    executor = RayExecutor(platform="auto")
    executor._ray = FakeRay([node(A, cpu=2, host="alpha"), node(B, cpu=2, host="beta")])
    actors = []

    def new_actor(slot):
        actors.append(FakeActor(slot, dies_on="crash"))
        return actors[-1]

    monkeypatch.setattr(executor, "_new_actor", new_actor)
    return executor, template, fake_peak, actors


def unit_named(group: str, seed: int) -> Unit:
    return Unit(group, (config(seed=seed),), alone=True)


def test_a_worker_calibrates_once_for_the_units_it_runs(fake_ray):
    """The start-up probe and the units use one worker per process: one calibration, and the
    facts the run reports at start are the ones its records carry."""
    executor, template, calls, _ = fake_ray
    facts = executor.start_workers(template)
    assert executor.platform == "cpu" and len(facts) == 2
    assert len(calls) == 1  # --recalibrate: measured once (the two fake nodes share a process)
    jobs = [dataclasses.replace(template, unit=unit_named(f"u{i}", i)) for i in range(3)]
    done = list(executor.run(jobs, Events()))

    assert len(calls) == 1, "the units' worker calibrated again: not the probe's worker"
    assert len(work._WORKERS) == 1
    for _, records in done:
        assert records[0]["status"] == "ok"
        assert records[0]["machine"]["peak_flops"] == FAKE_PEAK["peak_flops"]
        assert records[0]["machine"]["calibration"] == facts[0]["calibration"]


def test_units_go_to_the_workers_and_failures_become_records(fake_ray):
    executor, template, _, actors = fake_ray
    executor.start_workers(template)
    assert [a.slot.label for a in actors] == ["alpha:aaaaaa", "beta:bbbbbb"]
    jobs = [dataclasses.replace(template, unit=unit_named(g, i))
            for i, g in enumerate(["ok1", "raises", "crash", "ok2"])]
    events = Events()
    done = {job.unit.group: records for job, records in executor.run(jobs, events)}

    assert set(done) == {"ok1", "raises", "crash", "ok2"}
    assert done["ok1"][0]["status"] == done["ok2"][0]["status"] == "ok"
    (raised,) = done["raises"]  # an exception in the unit: its worker lives on
    assert raised["status"] == "failed"
    assert raised["error"] == "on beta:bbbbbb: ValueError: a bug in the trial runner"
    assert raised["machine"]["host"] and raised["machine"]["node"] == B
    (crashed,) = done["crash"]  # the worker died: failed, not retried, replaced
    assert crashed["status"] == "failed" and crashed["key"] == jobs[2].unit.members[0].key
    assert "worker died on alpha:aaaaaa" in crashed["error"] and "not retried" in crashed["error"]
    assert "ActorDiedError" in crashed["error"]
    assert len(actors) == 3 and actors[2].slot.node == A  # a new worker on the same node
    assert [e for e in events.seen if e[0] == "started"] == [
        ("started", "ok1", "alpha:aaaaaa"), ("started", "raises", "beta:bbbbbb"),
        ("started", "crash", "alpha:aaaaaa"), ("started", "ok2", "beta:bbbbbb")]
    assert [e[3] for e in events.seen if e[0] == "finished"] == [1, 1, 1, 1]
    assert [u["node"] for u in executor.units] == ["alpha:aaaaaa", "beta:bbbbbb",
                                                   "alpha:aaaaaa", "beta:bbbbbb"]


class LazyRef:
    """A FakeRef whose call runs when the driver first looks at it (ray.get), as a real
    actor's facts are computed while the driver goes on."""

    def __init__(self, call):
        self._call, self._ref = call, None

    def _done(self) -> FakeRef:
        if self._ref is None:
            self._ref = FakeRef(self._call)
        return self._ref

    @property
    def value(self):
        return self._done().value

    @property
    def error(self):
        return self._done().error


def test_a_nodes_first_worker_calibrates_before_its_others_start(fake_ray, monkeypatch):
    """--tasks-per-node 2 on two nodes: each node's second worker is created only once the
    first workers have their facts (calibrated), and reads the cached peak instead of
    measuring again, --recalibrate or not; the run still reports the first worker's."""
    executor, template, calls, _ = fake_ray
    executor.tasks_per_node = 2
    log, jobs = [], []

    def new_actor(slot):
        actor = FakeActor(slot)
        probe = actor.facts.remote

        def facts(job):
            jobs.append((slot.label, job.recalibrate))
            return LazyRef(lambda: log.append(("facts", slot.label)) or probe(job).value)

        actor.facts = SimpleNamespace(remote=facts)
        log.append(("new", slot.label))
        return actor

    monkeypatch.setattr(executor, "_new_actor", new_actor)
    facts = executor.start_workers(template)

    firsts, seconds = ["alpha:aaaaaa", "beta:bbbbbb"], ["alpha:aaaaaa#1", "beta:bbbbbb#1"]
    assert log == ([("new", w) for w in firsts] + [("facts", w) for w in firsts]
                   + [("new", w) for w in seconds] + [("facts", w) for w in seconds])
    assert jobs == [(w, True) for w in firsts] + [(w, False) for w in seconds]
    assert len(calls) == 1  # measured by the first workers' (shared, here) process only
    assert [f["calibration"]["cached"] for f in facts] == [False, False, True, True]
    assert executor.warnings == []


def test_workers_that_calibrated_on_a_busy_machine_are_named(fake_ray, monkeypatch):
    """The run shows its first worker's calibration warning; the other workers' busy
    calibrations become executor warnings naming the worker."""
    executor, template, calls, _ = fake_ray
    busy = {**FAKE_PEAK, "busy": True, "other_cpu_cores": 0.9}
    monkeypatch.setattr("bench.engine.calibrate.measure_peak", lambda device, **_: dict(busy))
    monkeypatch.setattr(work, "_WORKERS", {})
    facts = executor.start_workers(dataclasses.replace(template, recalibrate=False))
    assert facts[0]["calibration"]["busy"] is True
    assert "measured while the machine was busy" in facts[0]["calibration"]["warning"]
    (warning,) = executor.warnings  # the second node's (one process here: the same figure)
    assert warning.startswith("worker on beta:bbbbbb: peak measured while the machine was busy")


def test_no_node_to_run_on_is_an_error_naming_the_resources(fake_ray):
    from bench.run.ray_executor import RayExecutorError
    executor, template, _, actors = fake_ray
    executor._ray = FakeRay([node(A, cpu=0), node(B, cpu=4, alive=False)])
    with pytest.raises(RayExecutorError, match="no node with a cpu resource"):
        executor.start_workers(template)
    assert actors == []


# ---------------------------------------------------------------- what imports Ray


@pytest.mark.slow
def test_the_executors_import_no_ray():
    """Ray is imported only when a Ray executor starts, so that a serial run never pays for it."""
    probe = ("import sys, bench.cli, bench.run.executors, bench.run.ray_executor, bench.run.work\n"
             "bench.run.executors.check_executor('serial')\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout
    assert out.strip() == "[]"
