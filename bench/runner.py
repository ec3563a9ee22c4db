"""`bench run`: validate everything, then run the sweep into a run directory.

Order matters: names, sizes, the data arguments and the device are all checked
before the data set is read or anything is compiled, so mistakes cost seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bench import data as data_sources
from bench import results
from bench.calibrate import calibration
from bench.devices import device_facts, resolve_device
from bench.executors import SerialExecutor
from bench.render import terminal
from bench.render.aggregate import group_trials, ranked
from bench.render.cells import data_line, device_line
from bench.render.report import render_run
from bench.render.runs import load_run
from bench.spec import SpecError, TrialConfig
from bench.sweepfile import Sweep
from bench.timing import TimingProtocol
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
    protocol: TimingProtocol = TimingProtocol()
    recalibrate: bool = False


def run_sweep(sweep: Sweep | None, options: RunOptions, argv: list[str]) -> int:
    """Runs the sweep's unfinished trials into the run directory; returns the exit status.

    `sweep` None continues the plan recorded in the run directory (--resume alone).
    """
    data_sources.check_data_args(options.data, options.dataset)
    device = resolve_device(options.device)
    run_dir = options.out or _fresh_dir(Path("reports") / results.new_run_id())
    previous = _previous_header(run_dir, options.resume_only)
    if sweep is None:
        sweep = _planned_sweep(previous)
    dataset = data_sources.load_dataset(options.data, options.dataset, data_dir=options.data_dir)
    peak = calibration(device, use_cache=not options.recalibrate)
    header = _header(previous, sweep, run_dir, device, dataset, peak, options, argv)
    results.write_header(run_dir, header)
    finished = {r["key"] for r in results.read_results(run_dir)}
    todo = [t for t in sweep.trials if t.key() not in finished]
    _announce(header, sweep, todo, peak)
    interrupted = _run_all(todo, lambda config, on_epoch: _with_reference(run_trial(
        config, dataset, device, options.protocol, peak_flops=peak["peak_flops"],
        on_epoch=on_epoch).to_dict(), sweep.references), run_dir)
    return _finish(run_dir, header, len(sweep.trials), interrupted)


def _previous_header(run_dir: Path, resume_only: bool) -> dict | None:
    """The header of the run being resumed, None for a new run."""
    if (run_dir / results.HEADER).exists():
        return results.read_header(run_dir)
    if resume_only:
        raise SpecError(f"--resume {run_dir}: no run to resume there (no {results.HEADER})")
    return None


def _planned_sweep(previous: dict | None) -> Sweep:
    plan = (previous or {}).get("plan")
    if not plan:
        raise SpecError("this run directory records no plan; give the sweep again (flags, --sweep or --preset)")
    trials = tuple(TrialConfig.from_dict(c) for c in plan)
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
                                            "protocol": dataclasses.asdict(options.protocol),
                                            "options": _recordable(options)})
        header["plan"], header["references"] = [], {}
    else:
        header = dict(previous)
        _check_same_data(header, dataset.describe(), run_dir)
        header.setdefault("resumed", []).append({"command": command, "at": results.now_iso()})
    planned = {TrialConfig.from_dict(c).key(): c for c in header["plan"]}
    planned.update({t.key(): t.to_dict() for t in sweep.trials if t.key() not in planned})
    header["plan"] = list(planned.values())
    header["references"] = {**header.get("references", {}), **sweep.references}
    return header


def _recordable(options: RunOptions) -> dict:
    """The options a resumed run must reuse (absolute data path: resuming may happen elsewhere)."""
    data = options.data
    if data not in data_sources.NAMED_SOURCES:
        data = str(Path(data).resolve())
    return {"device": options.device, "data": data, "dataset": options.dataset,
            "data_dir": options.data_dir}


def _check_same_data(header: dict, data: dict, run_dir: Path) -> None:
    keys = ("name", "source", "location", "train_examples", "test_examples")
    before, now = ({k: d.get(k) for k in keys} for d in (header["data"], data))
    if before != now:
        raise SpecError(f"{run_dir} was run on {before}; this data is {now}. Resume with the same "
                        f"--data, or give a new --out")


def _with_reference(record: dict, references: dict) -> dict:
    record["reference"] = references.get(record["key"])
    return record


def _announce(header: dict, sweep: Sweep, todo: list, peak: dict) -> None:
    console = terminal.console
    done = len(sweep.trials) - len(todo)
    console.print(f"[bold]bench[/] {sweep.name}: {len(sweep.trials)} trials"
                  + (f", {done} already finished" if done else "")
                  + f"; {device_line(header['device'])}")
    console.print(f"data: {data_line(header['data'])}")
    console.print(f"peak (fp32 {peak['matrix_size']}² matmul{', cached' if peak['cached'] else ''}): "
                  f"{peak['peak_flops'] / 1e9:,.0f} GFLOP/s")
    if header["device"]["platform"] == "cpu" and any(_is_lstm(t) for t in sweep.trials):
        console.print(f"LSTM time loop: fused CPU kernel {fused_lstm.status()}")


def _is_lstm(trial: TrialConfig) -> bool:
    return trial.model == "recurrent" and (trial.cell or "lstm") == "lstm"


def _finish(run_dir: Path, header: dict, planned: int, interrupted: bool) -> int:
    console = terminal.console
    run = load_run(run_dir)
    records = run.records
    leaderboard = sorted(records, key=lambda r: -(r.get("test_accuracy") or -1.0))
    console.print(terminal.results_table(
        leaderboard, title=f"leaderboard: test accuracy on {data_line(header['data'])}"))
    groups = group_trials([run])
    if any(len(g.records) > 1 for g in groups):
        top = ranked(groups)  # then those with no accuracy (every seed failed)
        ranked_ids = {id(g) for g in top}
        groups = top + [g for g in groups if id(g) not in ranked_ids]
        console.print(terminal.seeds_table(groups, title="by configuration: mean ± sd over seeds"))
    reports = render_run([run_dir])
    console.print(f"results: {run_dir / results.RESULTS}\nreport:  "
                  + ", ".join(str(path) for path in reports))
    if interrupted:
        console.print(f"[yellow]interrupted: {len(records)} of {planned} trials finished and saved; "
                      f"continue with: python -m bench run --resume {run_dir}")
        return 130
    return 0


def _run_all(configs, run_one_trial, run_dir: Path) -> bool:
    """Runs and stores each trial; returns True if interrupted by Ctrl-C."""
    with terminal.sweep_progress() as progress:
        sweep = progress.add_task("trials", total=len(configs))
        epochs = progress.add_task("epochs", total=None)

        def run_one(config):
            progress.update(sweep, description=f"[bold]{config.label()}")
            progress.reset(epochs, total=config.epochs, description="  epochs")
            on_epoch = lambda h: progress.update(  # noqa: E731
                epochs, advance=1, description=f"  epoch {h['epoch']}: test acc {100 * h['test_accuracy']:.2f}%")
            return run_one_trial(config, on_epoch)

        try:
            for record in SerialExecutor().map(run_one, configs):
                results.append_result(run_dir, record)
                progress.advance(sweep)
        except KeyboardInterrupt:
            return True
    return False


def _fresh_dir(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
