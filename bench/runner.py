"""`bench run`: validate everything, then run the sweep into a run directory.

Order matters: names, sizes, the data arguments and the device are all checked
before the data set is read or anything is compiled, so mistakes cost seconds.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench import data as data_sources
from bench import results
from bench.calibrate import calibration
from bench.devices import device_facts, platform_devices, resolve_device
from bench.executors import SerialExecutor
from bench.groups import Unit, plan_units
from bench.population import run_population
from bench.render import terminal
from bench.render.aggregate import group_trials, ranked
from bench.render.cells import data_line, device_line
from bench.render.populations import populations_table
from bench.render.report import render_run
from bench.render.runs import load_run, read_records, read_run_header
from bench.schema import (SCHEMA_VERSION, Record, SpecError, TimingProtocol, TrialConfig,
                          make_config)
from bench.sweepfile import Sweep
from bench.trial import run_trial
from models import fused_lstm


@dataclass(frozen=True)
class RunOptions:
    device: str = "auto"
    data: str = "auto"
    dataset: str = "mnist"
    data_dir: str | None = None
    out: Path | None = None
    resume_only: bool = False  # --resume: `out` must hold a run to continue
    retry_failed: bool = False
    population: str | int = "auto"  # bench.groups: auto, off, or a cap on the size
    devices: int | None = None  # devices a population is sharded over (None: all)
    protocol: TimingProtocol = TimingProtocol()
    recalibrate: bool = False


def run_sweep(sweep: Sweep | None, options: RunOptions, argv: list[str]) -> int:
    """Runs the sweep's unfinished trials into the run directory; returns the exit status.

    `sweep` None continues the plan recorded in the run directory (--resume alone).
    The run directory is locked for the whole run: one writer at a time.
    """
    data_sources.check_data_args(options.data, options.dataset)
    if options.resume_only and not (options.out / results.HEADER).exists():
        raise SpecError(f"--resume {options.out}: no run to resume there (no {results.HEADER})")
    created = options.out is None or not options.out.exists()
    run_dir = results.new_run_dir(Path("reports")) if options.out is None else options.out
    try:
        with results.lock_run_dir(run_dir, command=" ".join(["python -m bench", *argv])):
            return _run_locked(sweep, options, argv, run_dir)
    finally:
        if created and not (run_dir / results.HEADER).exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing was run: leave no empty run


def _run_locked(sweep: Sweep | None, options: RunOptions, argv: list[str], run_dir: Path) -> int:
    previous = _previous_header(run_dir)
    if sweep is None:
        sweep = _planned_sweep(previous)
    done = read_records(run_dir)  # a bad results file stops the run before anything costs
    device = resolve_device(options.device)
    device_list = platform_devices(device, options.devices)
    dataset = data_sources.load_dataset(options.data, options.dataset, data_dir=options.data_dir)
    if previous is not None:
        _check_same_data(previous, dataset.describe(), run_dir)
    peak = calibration(device, use_cache=not options.recalibrate)
    header = _header(previous, sweep, run_dir, device, dataset, peak, options, argv)
    # How this invocation trains: a resumed run may change it (records say how each trained).
    how = {"population": options.population, "devices": [str(d) for d in device_list]}
    (header if previous is None else header["resumed"][-1]).update(how)
    results.write_header(run_dir, header)
    failed = {r.key for r in done if r.status == "failed"}
    finished = {r.key for r in done} - (failed if options.retry_failed else set())
    todo = [t for t in sweep.trials if t.key not in finished]
    units = plan_units(todo, options.population, lambda c: auto_cap(device.platform, c.model))
    _announce(header, sweep, todo, peak, kept_failed=0 if options.retry_failed else len(failed),
              units=units)

    def run_unit(unit: Unit, on_epoch) -> list[Record]:
        if unit.alone:
            record = run_trial(unit.members[0], dataset, device, options.protocol,
                               peak_flops=peak["peak_flops"], on_epoch=on_epoch)
            record.population = {"group": unit.group, "size": 1, "index": 0}
            records = [record]
        else:
            records = run_population(unit, dataset, device_list, options.protocol,
                                     peak_flops=peak["peak_flops"], on_epoch=on_epoch)
        return [_with_reference(r, sweep.references) for r in records]

    interrupted = _run_all(units, run_unit, run_dir)
    return _finish(run_dir, header, len(sweep.trials), interrupted)


# The largest population `--population auto` makes (it also splits what would not fit in
# memory): on CPU the members' steps share the same cores, so beyond this the compile
# savings no longer grow; accelerators take more.
POPULATION_CAP = {"cpu": 64, "gpu": 1024, "tpu": 1024}
# Families that `auto` trains alone on a platform, because there a population of them trained
# slower than its members one at a time (docs/measurements.md, "Populations": conv 32 on a
# 2-core CPU, 0.88x the whole sweep's speed at 16 members, parity at 4).
ALONE_BY_DEFAULT = {("cpu", "conv")}


def auto_cap(platform: str, family: str) -> int:
    """The largest population `--population auto` makes of `family` on `platform`."""
    if (platform, family) in ALONE_BY_DEFAULT:
        return 1
    return POPULATION_CAP.get(platform, 64)


def _previous_header(run_dir: Path) -> dict | None:
    """The header of the run being resumed, None for a new run."""
    if (run_dir / results.HEADER).exists():
        return read_run_header(run_dir)
    return None


def _planned_sweep(previous: dict | None) -> Sweep:
    plan = (previous or {}).get("plan")
    if not plan:
        raise SpecError("this run directory records no plan; give the sweep again (flags, --sweep or --preset)")
    trials = tuple(make_config(c) for c in plan)  # names checked: these trials will run
    return Sweep(name=previous.get("name", ""), trials=trials,
                 references=previous.get("references", {}))


def _header(previous, sweep, run_dir, device, dataset, peak, options, argv) -> dict:
    """A new run's header, or the resumed run's with the new plan merged in."""
    command = " ".join(["python -m bench", *argv])
    if previous is None:
        header = results.make_header(run_dir.name, device=device_facts(device),
                                     data=dataset.describe(), argv=[command],
                                     extra={"name": sweep.name, "calibration": peak,
                                            "fused_lstm_cpu": fused_lstm.status(),
                                            "openblas_threads": fused_lstm.blas_threads(),
                                            "protocol": dataclasses.asdict(options.protocol),
                                            "options": _recordable(options)})
        header["plan"], header["references"] = [], {}
    else:
        header = dict(previous, schema_version=SCHEMA_VERSION)
        header.setdefault("resumed", []).append({"command": command, "at": results.now_iso(),
                                                 "retry_failed": options.retry_failed})
    planned = {TrialConfig.from_dict(c).key: c for c in header["plan"]}
    planned.update({t.key: t.to_dict() for t in sweep.trials if t.key not in planned})
    header["plan"] = list(planned.values())
    header["references"] = {**header.get("references", {}), **sweep.references}
    return header


def _recordable(options: RunOptions) -> dict:
    """The options a resumed run must reuse (absolute data path: resuming may happen elsewhere)."""
    data = options.data
    if data not in data_sources.NAMED_SOURCES:
        data = str(Path(data).expanduser().resolve())
    return {"device": options.device, "data": data, "dataset": options.dataset,
            "data_dir": options.data_dir}


def _check_same_data(header: dict, data: dict, run_dir: Path) -> None:
    keys = ("name", "source", "location", "train_examples", "test_examples")
    before, now = ({k: d.get(k) for k in keys} for d in (header["data"], data))
    if before != now:
        raise SpecError(f"{run_dir} was run on {before}; this data is {now}. Resume with the same "
                        f"--data, or give a new --out")


def _with_reference(record: Record, references: dict) -> Record:
    record.reference = references.get(record.key)
    return record


def _announce(header: dict, sweep: Sweep, todo: list, peak: dict, kept_failed: int,
              units: list[Unit]) -> None:
    console = terminal.console
    done = len(sweep.trials) - len(todo)
    kept = (f" ({kept_failed} of them failed and are kept; --retry-failed runs them again)"
            if kept_failed else "")
    console.print(f"[bold]bench[/] {sweep.name}: {len(sweep.trials)} trials"
                  + (f", {done} already finished{kept}" if done else "")
                  + f"; {device_line(header['device'])}")
    if peak.get("warning"):
        console.print(f"[yellow]{peak['warning']}")
    console.print(f"data: {data_line(header['data'])}")
    console.print(f"peak (fp32 {peak['matrix_size']}² matmul{', cached' if peak['cached'] else ''}): "
                  f"{peak['peak_flops'] / 1e9:,.0f} GFLOP/s")
    if header["device"]["platform"] == "cpu" and any(_is_lstm(t) for t in sweep.trials):
        console.print(f"LSTM time loop: fused CPU kernel {fused_lstm.status()}")
    population = (header.get("resumed") or [header])[-1].get("population")
    console.print(f"populations ({population}): {_units_line(units)}")


def _units_line(units: list[Unit]) -> str:
    """E.g. '64 trials as 1 population of 64 on 1 device' or 'every trial alone'."""
    together = [u.size for u in units if not u.alone]
    alone = sum(u.size for u in units if u.alone)
    if not together:
        return f"{alone} trials, each alone"
    sizes = ", ".join(map(str, together))
    return (f"{sum(together)} trials in {len(together)} populations ({sizes})"
            + (f", {alone} alone" if alone else ""))


def _is_lstm(trial: TrialConfig) -> bool:
    return trial.model == "recurrent" and trial.cell == "lstm"


def _finish(run_dir: Path, header: dict, planned: int, interrupted: bool) -> int:
    console = terminal.console
    run = load_run(run_dir)
    records = run.records
    leaderboard = sorted(records, key=lambda r: -(r.test_accuracy or -1.0))
    console.print(terminal.results_table(
        leaderboard, title=f"leaderboard: test accuracy on {data_line(header['data'])}"))
    groups = group_trials([run])
    if any(len(g.records) > 1 for g in groups):
        top = ranked(groups)  # then those with no accuracy (every seed failed)
        ranked_ids = {id(g) for g in top}
        groups = top + [g for g in groups if id(g) not in ranked_ids]
        console.print(terminal.seeds_table(groups, title="by configuration: mean ± sd over seeds"))
    together = populations_table([run])
    if together is not None:
        console.print(terminal.document_table(
            together, "populations: figures shared by their members (see report)"))
    reports = render_run([run_dir])
    console.print(f"results: {run_dir / results.RESULTS}\nreport:  "
                  + ", ".join(str(path) for path in reports))
    if interrupted:
        console.print(f"[yellow]interrupted: {len(records)} of {planned} trials finished and saved; "
                      f"continue with: python -m bench run --resume {run_dir}")
        return 130
    return 0


def _run_all(units: list[Unit], run_unit, run_dir: Path) -> bool:
    """Runs each unit and stores its records as it ends; returns True if interrupted by Ctrl-C."""
    with terminal.sweep_progress() as progress:
        sweep = progress.add_task("trials", total=sum(u.size for u in units))
        epochs = progress.add_task("epochs", total=None)

        def run_one(unit: Unit):
            progress.update(sweep, description=f"[bold]{_unit_label(unit)}")
            progress.reset(epochs, total=unit.members[0].epochs, description="  epochs")
            best = "best test acc" if unit.size > 1 else "test acc"
            on_epoch = lambda h: progress.update(  # noqa: E731
                epochs, advance=1,
                description=f"  epoch {h['epoch']}: {best} {100 * h['test_accuracy']:.2f}%")
            return run_unit(unit, on_epoch)

        try:
            for records in SerialExecutor().map(run_one, units):
                for record in records:
                    results.append_result(run_dir, record.to_json())
                progress.advance(sweep, len(records))
        except KeyboardInterrupt:
            return True
    return False


def _unit_label(unit: Unit) -> str:
    label = unit.members[0].label()
    return label if unit.size == 1 else f"population of {unit.size}: {label} ..."
