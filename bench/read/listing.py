"""`bench list`: what can be swept, read from the same tables the runner uses."""

from __future__ import annotations

from rich.table import Table

from bench.contract import registry
from bench.read.render.terminal import console
from bench.contract.schema import AXES, model_options
from bench.contract.sweepfile import expected_runtime, load_sweep, preset_names, preset_path
from models import CELLS, IMPLS, MODELS


def show_list() -> int:
    models = Table(title="models (--models)")
    for col in ("name", "units means", "reference units", "options"):
        models.add_column(col)
    for name, entry in MODELS.items():
        models.add_row(name, entry.units_meaning, str(entry.reference_units),
                       ", ".join(model_options(name)))
    console.print(models)
    console.print(f"recurrent cells (--cell): {', '.join(CELLS)}")
    console.print("implementations (--impl): " + "; ".join(f"{k}: {v}" for k, v in IMPLS.items()))
    console.print(f"activations (--activations): {', '.join(registry.ACTIVATIONS)}")
    opts = Table(title="optimizers (--optimizers)")
    opts.add_column("name")
    opts.add_column("default learning rate", justify="right")
    for name, entry in registry.OPTIMIZERS.items():
        opts.add_row(name, f"{entry.default_lr:g}")
    console.print(opts)
    data = Table(title="data sources (--data)")
    data.add_column("name")
    data.add_column("what")
    for name, what in registry.DATA_SOURCES.items():
        data.add_row(name, what)
    console.print(data)
    console.print(f"tfds data sets (--dataset): {', '.join(registry.TFDS_DATASETS)}")
    console.print(_axes_table())
    console.print(_presets_table())
    return 0


def _axes_table() -> Table:
    axes = Table(title="sweep axes (flags of `bench run`, keys of a sweep file)")
    for col in ("flag", "sweep-file key", "type", "default", "families", "meaning"):
        axes.add_column(col)
    for axis in AXES:
        default = ", ".join("auto" if v is None else str(v) for v in axis.default)
        axes.add_row(axis.flag, axis.key, axis.kind.__name__, default,
                     ", ".join(axis.families or ("all",)), axis.help)
    return axes


def _presets_table() -> Table:
    presets = Table(title="presets (--preset)")
    for col in ("name", "trials", "expected runtime", "with --population off", "description"):
        presets.add_column(col)
    for name in preset_names():
        path = preset_path(name)
        sweep = load_sweep(path)
        presets.add_row(name, str(len(sweep.trials)), expected_runtime(path),
                        expected_runtime(path, population_off=True), sweep.description)
    return presets
