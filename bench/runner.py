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
from bench.render import markdown, table, terminal
from bench.spec import SweepSpec, expand
from bench.timing import TimingProtocol
from bench.trial import run_trial


@dataclass(frozen=True)
class RunOptions:
    device: str = "auto"
    data: str = "auto"
    dataset: str = "mnist"
    data_dir: str | None = None
    out: Path | None = None
    protocol: TimingProtocol = TimingProtocol()
    recalibrate: bool = False


def run_sweep(spec: SweepSpec, options: RunOptions, argv: list[str]) -> int:
    """Runs every trial of `spec`; returns the process exit status."""
    configs = expand(spec)
    data_sources.check_data_args(options.data, options.dataset)
    device = resolve_device(options.device)
    dataset = data_sources.load_dataset(options.data, options.dataset, data_dir=options.data_dir)
    run_id = results.new_run_id()
    run_dir = options.out or _fresh_dir(Path("reports") / run_id)
    peak = calibration(device, use_cache=not options.recalibrate)
    header = results.make_header(run_id, device=device_facts(device), data=dataset.describe(),
                                 argv=["python -m bench", *argv],
                                 extra={"calibration": peak,
                                        "protocol": dataclasses.asdict(options.protocol)})
    results.write_header(run_dir, header)
    console = terminal.console
    console.print(f"[bold]bench[/] {len(configs)} trials on {table.device_line(header['device'])}")
    console.print(f"data: {table.data_line(header['data'])}")
    console.print(f"peak (fp32 {peak['matrix_size']}² matmul{', cached' if peak['cached'] else ''}): "
                  f"{peak['peak_flops'] / 1e9:,.0f} GFLOP/s")
    interrupted = _run_all(configs, lambda config, on_epoch: run_trial(
        config, dataset, device, options.protocol, peak_flops=peak["peak_flops"],
        on_epoch=on_epoch).to_dict(), run_dir)
    records = results.read_results(run_dir)
    console.print(terminal.results_table(records, title=f"results ({table.data_line(header['data'])})"))
    report = markdown.write_markdown(run_dir)
    console.print(f"results: {run_dir / results.RESULTS}\nreport:  {report}")
    if interrupted:
        console.print(f"[yellow]interrupted: {len(records)} of {len(configs)} trials finished and saved")
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
