"""`bench run`: validate everything, then run the sweep into a run directory.

Order matters: names, sizes, the data arguments and the device are all checked
before the data set is read or anything is compiled, so mistakes cost seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text

from bench.contract import results
from bench.contract.facts import RunHeader, data_identity
from bench.contract.pruning import Pruning
from bench.contract.schema import (SCHEMA_VERSION, SpecError, TimingProtocol, TrialConfig,
                                   make_config)
from bench.contract.sweepfile import Sweep
from bench.engine import data as data_sources
from bench.read.render import terminal
from bench.read.render.cells import data_line, device_line
from bench.read.render.report import render_reports
from bench.read.render.runs import read_records, read_run_header
from bench.run import work
from bench.run.executors import Executor, check_executor, make_executor
from bench.run.groups import Unit, plan_units
from bench.run.work import DataSpec, Job
from models import fused_cells, fused_conv, fused_lstm


@dataclass(frozen=True)
class RunOptions:
    device: str = "auto"
    data: str = "auto"
    dataset: str = "mnist"
    data_dir: str | None = None
    validation: float | None = None  # --validation: the fraction of training held out
    out: Path | None = None
    resume_only: bool = False  # --resume: `out` must hold a run to continue
    retry_failed: bool = False
    population: str | int = "auto"  # bench.run.groups: auto, off, or a cap on the size
    devices: int | None = None  # devices a population is sharded over (None: all)
    protocol: TimingProtocol = TimingProtocol()
    recalibrate: bool = False
    compilation_cache: str | None = None
    executor: str = "serial"  # bench.run.executors: serial or ray
    ray_address: str | None = None  # --ray-address (else RAY_ADDRESS, else a private Ray)
    tasks_per_node: int | None = None  # Ray workers per node on CPU (default 1: all its cores)
    pruning: Pruning | None = None  # --prune: each halving group one unit, pruned at its rungs


def run_sweep(sweep: Sweep | None, options: RunOptions, argv: list[str]) -> int:
    """Runs the sweep's unfinished trials into the run directory; returns the exit status.

    `sweep` None continues the plan recorded in the run directory (--resume alone).
    The run directory is locked for the whole run: one writer at a time.
    """
    check_executor(options.executor)  # a missing Ray fails before anything is read
    data_sources.check_data_args(options.data, options.dataset)
    if options.resume_only and not (options.out / results.HEADER).exists():
        raise SpecError(f"--resume {options.out}: no run to resume there (no {results.HEADER})")
    # Whether --out is new is decided by the lock's own mkdir, and a new directory in which
    # nothing was run is removed under the lock, by its creator only: a run that loses the
    # race into a new --out gets RunDirBusy and leaves the winner's directory alone.
    fresh = options.out is None
    run_dir = results.new_run_dir(Path("reports")) if fresh else options.out
    with results.lock_run_dir(run_dir, command=" ".join(["python -m bench", *argv]),
                              discard_unused=True, created=fresh):
        return _run_locked(sweep, options, argv, run_dir)


def _run_locked(sweep: Sweep | None, options: RunOptions, argv: list[str], run_dir: Path) -> int:
    previous = _previous_header(run_dir)
    if sweep is None:
        sweep = _planned_sweep(previous)
    done = read_records(run_dir)  # a bad results file stops the run before anything costs
    executor = make_executor(options.executor, ray_address=options.ray_address,
                             tasks_per_node=options.tasks_per_node, platform=options.device)
    with executor:
        dataset = _load_data(options, sweep)
        if previous is not None:
            _check_same_data(previous, dataset.describe(), run_dir)
        template = Job(unit=Unit("", ()), data=DataSpec.of(dataset), device=options.device,
                       devices=options.devices, protocol=options.protocol,
                       recalibrate=options.recalibrate, compilation_cache=options.compilation_cache,
                       expect_data=dataset.describe(), pruning=options.pruning)
        placed = executor.place(template, dataset)
        facts, peak = placed.facts, placed.calibration
        header = _header(previous, sweep, run_dir, facts, dataset, peak, options, argv)
        # How this invocation trains: a resumed run may change it (records say how each trained).
        how = {"population": options.population, "executor": executor.describe(), **placed.where}
        _record_how(header, how)
        results.write_header(run_dir, header)
        todo, kept_failed = _unfinished(sweep, done, options.retry_failed)
        units = plan_units(todo, options.population, lambda c: auto_cap(facts["platform"], c.model),
                           prune=options.pruning is not None)
        _announce(header, sweep, todo, peak, kept_failed=kept_failed, units=units, executor=executor)
        jobs = [dataclasses.replace(template, unit=unit) for unit in units]
        interrupted = _run_all(executor, jobs, sweep.references, run_dir, header)
    return _finish(run_dir, header, len(sweep.trials), interrupted)


def _load_data(options: RunOptions, sweep: Sweep):
    """The run's data set, its validation split held out (checked to leave every trial's
    batch to train on)."""
    dataset = data_sources.load_dataset(options.data, options.dataset, data_dir=options.data_dir)
    if options.validation is None:
        return dataset
    dataset = data_sources.hold_out_validation(dataset, options.validation)
    left, batch = len(dataset.y_train), max(t.batch_size for t in sweep.trials)
    if batch > left:
        raise SpecError(f"validation {options.validation:g} leaves {left:,} training examples, "
                        f"fewer than a batch of {batch}; hold out less or use smaller batches")
    return dataset


def _unfinished(sweep: Sweep, done: list, retry_failed: bool) -> tuple[list[TrialConfig], int]:
    """The sweep's trials to run now, and how many failed ones are kept as they are."""
    failed = {r.key for r in done if r.status == "failed"}
    finished = {r.key for r in done} - (failed if retry_failed else set())
    return [t for t in sweep.trials if t.key not in finished], 0 if retry_failed else len(failed)


# The largest population `--population auto` makes (it also splits what would not fit in
# memory): on CPU the members' steps share the same cores, so beyond this the compile
# savings no longer grow; accelerators take more.
POPULATION_CAP = {"cpu": 64, "gpu": 1024, "tpu": 1024}
# Families that `auto` trains alone on a platform, because there a population of them trained
# no faster than its members one at a time (docs/measurements.md, "Design measurements cited
# from the code").
ALONE_BY_DEFAULT = {("cpu", "conv")}


def auto_cap(platform: str, family: str) -> int:
    """The largest population `--population auto` makes of `family` on `platform`."""
    if (platform, family) in ALONE_BY_DEFAULT:
        return 1
    return POPULATION_CAP.get(platform, 64)


def _record_how(header: RunHeader, how: dict) -> None:
    """This invocation's population setting, executor and devices or workers: on the header
    of a new run, in the latest `resumed` entry of a resumed one."""
    if header.resumed:
        header.resumed[-1].update(how)
    else:
        for name, value in how.items():
            setattr(header, name, value)


def _previous_header(run_dir: Path) -> RunHeader | None:
    """The header of the run being resumed, None for a new run."""
    if (run_dir / results.HEADER).exists():
        return read_run_header(run_dir)
    return None


def _planned_sweep(previous: RunHeader | None) -> Sweep:
    plan = previous.plan if previous else []
    if not plan:
        raise SpecError("this run directory records no plan; give the sweep again (flags, --sweep or --preset)")
    trials = tuple(make_config(c) for c in plan)  # names checked: these trials will run
    return Sweep(name=previous.name or "", trials=trials, references=previous.references)


def _header(previous, sweep, run_dir, device_facts, dataset, peak, options, argv) -> RunHeader:
    """A new run's header, or the resumed run's with the new plan merged in."""
    command = " ".join(["python -m bench", *argv])
    if previous is None:
        header = results.make_header(run_dir.name, device=device_facts,
                                     data=dataset.describe(), argv=[command],
                                     extra={"name": sweep.name, "calibration": peak,
                                            **work.cpu_kernel_statuses(),
                                            "openblas_threads": fused_lstm.blas_threads(),
                                            "protocol": dataclasses.asdict(options.protocol),
                                            "options": _recordable(options),
                                            "driver": work.machine_facts(),
                                            "pruning": options.pruning and options.pruning.to_json()})
    else:
        header = dataclasses.replace(previous, schema_version=SCHEMA_VERSION)
        header.resumed.append({"command": command, "at": results.now_iso(),
                               "retry_failed": options.retry_failed})
    planned = {TrialConfig.from_dict(c).key: c for c in header.plan}
    planned.update({t.key: t.to_dict() for t in sweep.trials if t.key not in planned})
    header.plan = list(planned.values())
    header.references = {**header.references, **sweep.references}
    return header


def _recordable(options: RunOptions) -> dict:
    """The options a resumed run must reuse (absolute data path: resuming may happen elsewhere)."""
    data = options.data
    if data not in data_sources.NAMED_SOURCES:
        data = str(Path(data).expanduser().resolve())
    return {"device": options.device, "data": data, "dataset": options.dataset,
            "data_dir": options.data_dir, "validation": options.validation}


def _check_same_data(header: RunHeader, data: dict, run_dir: Path) -> None:
    before, now = data_identity(header.data), data_identity(data)
    if before != now:
        raise SpecError(f"{run_dir} was run on {before}; this data is {now}. Resume with the same "
                        f"--data, or give a new --out")


def _announce(header: RunHeader, sweep: Sweep, todo: list, peak: dict, kept_failed: int,
              units: list[Unit], executor: Executor) -> None:
    console = terminal.console
    done = len(sweep.trials) - len(todo)
    kept = (f" ({kept_failed} of them failed and are kept; --retry-failed runs them again)"
            if kept_failed else "")
    console.print(f"[bold]bench[/] {sweep.name}: {len(sweep.trials)} trials"
                  + (f", {done} already finished{kept}" if done else "")
                  + f"; {device_line(header.device)}")
    if peak.get("warning"):
        console.print(f"[yellow]{peak['warning']}")
    console.print(f"data: {data_line(header.data)}")
    console.print(f"peak (fp32 {peak['matrix_size']}² matmul{', cached' if peak['cached'] else ''}): "
                  f"{peak['peak_flops'] / 1e9:,.0f} GFLOP/s")
    if header.device.get("platform") == "cpu":
        target = header.cpu_kernel_target
        built_for = f" (built for {target})" if target not in (None, "native") else ""
        for label, kernel in _CPU_KERNELS:
            if any(kernel.used_by(t) for t in sweep.trials):
                status = kernel.status()
                console.print(f"{label}: fused CPU kernel {status}"
                              + (built_for if status == "on" else ""))
    population = header.population_setting
    console.print(f"populations ({population}): {_units_line(units)}")
    if header.pruning:
        epochs = max((t.epochs for t in todo), default=None)
        console.print(f"pruning: {Pruning.from_json(header.pruning).describe(epochs)} within "
                      f"{len(units)} halving groups, each one unit: its rungs wait for nothing else")
    for line in executor.announce(header.device):
        console.print(line)


def _units_line(units: list[Unit]) -> str:
    """E.g. '64 trials as 1 population of 64 on 1 device' or 'every trial alone'."""
    units = [part for unit in units for part in unit.programs]  # a halving group's parts
    together = [u.size for u in units if not u.alone]
    alone = sum(u.size for u in units if u.alone)
    if not together:
        return f"{alone} trials, each alone"
    sizes = ", ".join(map(str, together))
    return (f"{sum(together)} trials in {len(together)} populations ({sizes})"
            + (f", {alone} alone" if alone else ""))


# The CPU kernels a run says it used (each kernel's module says which trials run it: `used_by`).
_CPU_KERNELS = [("LSTM time loop", fused_lstm), ("GRU/simple-cell time loop", fused_cells),
                ("convolution blocks", fused_conv)]


def _finish(run_dir: Path, header: RunHeader, planned: int, interrupted: bool) -> int:
    """Writes the reports and prints the run's summary (bench.read.render.terminal.summary)."""
    rendered = render_reports([run_dir])
    names = ", ".join(str(p.relative_to(run_dir)) if p.is_relative_to(run_dir) else str(p)
                      for p in rendered.paths)
    # Lines that carry a path or a command are never broken, however narrow the terminal, so
    # that they can be copied whole.
    footer: list[str | Text] = [_unbroken(f"results: {run_dir / results.RESULTS}"),
                                _unbroken(f"reports in {run_dir}: {names}")]
    if interrupted:
        footer += [Text(f"interrupted: {rendered.verdict.trials} of {planned} trials finished "
                        "and saved; continue with:", style="yellow"),
                   _unbroken(f"python -m bench run --resume {run_dir}", style="yellow")]
    terminal.print_summary(rendered.verdict, footer, terminal.console)
    return 130 if interrupted else 0


def _unbroken(line: str, style: str = "") -> Text:
    return Text(line, style=style, no_wrap=True, overflow="ignore")


def _run_all(executor: Executor, jobs: list[Job], references: dict, run_dir: Path, header: RunHeader) -> bool:
    """Runs the jobs, storing each one's records as it ends; True if interrupted by Ctrl-C."""
    nodes = NodeLedger(header)
    with terminal.sweep_progress() as bars:
        display = SweepDisplay(bars, jobs)
        try:
            for job, records in executor.run(jobs, display):
                for record in records:
                    record["reference"] = references.get(record["key"])
                    results.append_result(run_dir, record)
                if nodes.add(job, records):
                    results.write_header(run_dir, header)
        except KeyboardInterrupt:
            return True
        finally:
            nodes.close(executor.unit_times())
            _mark_finished(header)
            results.write_header(run_dir, header)
    return False


def _mark_finished(header: RunHeader) -> None:
    """This invocation's end, for the sweep's wall time (bench/read/render/verdict.py)."""
    latest = header.current()
    if isinstance(latest, dict):
        latest["finished"] = results.now_iso()
    else:
        header.finished = results.now_iso()


class NodeLedger:
    """run.json's list of the nodes (machines) that ran work, with what each ran."""

    def __init__(self, header: RunHeader):
        self.header = header
        self.nodes = header.nodes

    def add(self, job: Job, records: list[dict]) -> bool:
        """Counts the unit; True if it came from a node not listed before."""
        machine = next((r.get("machine") for r in records if r.get("machine")), None)
        if machine is None:
            return False
        where = {"host": machine.get("host"), "node": machine.get("node")}
        entry = next((n for n in self.nodes if {k: n.get(k) for k in where} == where), None)
        if entry is None:
            entry = {**machine, "units": 0, "trials": 0}
            self.nodes.append(entry)
        entry["units"] += 1
        entry["trials"] += len(records)
        return entry["units"] == 1

    def close(self, units: list[dict]) -> None:
        """Adds the executor's per-unit times (Ray: seconds on the wire and at work)."""
        if units:
            self.header.executor_units.extend(units)


class SweepDisplay:
    """The terminal while a sweep runs (bench.run.executors.Progress): trials done, and what
    runs where (serially, the epochs of the current unit)."""

    def __init__(self, bars, jobs: list[Job]):
        self.bars = bars
        self.pending, self.running, self.done = len(jobs), {}, 0
        self.trials = bars.add_task("trials", total=sum(j.unit.size for j in jobs))
        self.epochs = None
        self.workers: dict = {}

    def started(self, job: Job, where: str | None) -> None:
        self.pending -= 1
        if where is None:  # serial: one unit at a time, with its epochs
            self.bars.update(self.trials, description=f"[bold]{_unit_label(job.unit)}")
            if self.epochs is None:
                self.epochs = self.bars.add_task("epochs", total=None)
            self.bars.reset(self.epochs, total=job.unit.members[0].epochs, description="  epochs")
            return
        self.running[where] = job
        if where not in self.workers:
            self.workers[where] = self.bars.add_task("", total=None)
        self.bars.update(self.workers[where], description=f"  {where}: {_unit_label(job.unit)}")
        self._status()

    def epoch(self, job: Job, entry: dict) -> None:
        best = "best test acc" if job.unit.size > 1 else "test acc"
        self.bars.update(self.epochs, advance=1,
                         description=f"  epoch {entry['epoch']}: {best} {100 * entry['test_accuracy']:.2f}%")

    def finished(self, job: Job, where: str | None, records: list[dict]) -> None:
        self.done += 1
        self.bars.advance(self.trials, len(records))
        if where is not None:
            self.running.pop(where, None)
            self.bars.update(self.workers[where], description=f"  {where}: idle")
            self._status()

    def _status(self) -> None:
        self.bars.update(self.trials, description=f"[bold]units: {self.done} finished, "
                         f"{len(self.running)} running, {self.pending} pending")


def _unit_label(unit: Unit) -> str:
    label = unit.members[0].label()
    if unit.parts:
        return f"halving group of {unit.size}: {label} ..."
    return label if unit.size == 1 else f"population of {unit.size}: {label} ..."
