"""Sweep files (TOML) and the presets that ship as sweep files.

A sweep file may hold any of:

    name = "my-sweep"
    description = "..."
    [grid]                      # Cartesian product; a scalar is a one-value axis
    models = ["dense", "conv"]
    learning_rate = [0.1, 0.01]
    # or several grids, [[grid]] tables, e.g. one per family with its own widths
    [random]                    # random search: `samples` draws, reproducible from `seed`
    samples = 20
    seed = 0
    learning_rate = {log_uniform = [1e-4, 1e-1]}
    activations = ["relu", "tanh", "gelu"]      # a list: drawn uniformly
    [[trial]]                   # explicit trials, e.g. published configurations
    models = "conv"
    reference = {name = "...", published_test_accuracy = 0.9917, source = "..."}
    [run]                       # run settings: data, dataset, device, repeats, ...

Axis keys are the `bench run` flags' names (bench.contract.schema.AXES). Flags given on
the command line replace the same axis everywhere in the file. Every key and
value is checked before anything is compiled; errors name the file and the key.
"""

from __future__ import annotations

import itertools
import math
import random
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from bench.contract.schema import AXES, SpecError, TrialConfig, axis, default_grid, make_config, unique

TOP_KEYS = ("name", "description", "grid", "random", "trial", "run")
RUN_KEYS = ("data", "dataset", "data_dir", "validation", "device", "devices", "population",
            "executor", "ray_address", "tasks_per_node", "repeats", "burn_in", "round_steps",
            "targets", "prune", "eta", "min_epochs")
DISTRIBUTIONS = ("log_uniform", "uniform")


@dataclass(frozen=True)
class Sweep:
    """What a sweep file (plus command-line overrides) expands to."""

    name: str
    trials: tuple[TrialConfig, ...]
    references: dict = field(default_factory=dict)  # trial key -> published figure
    run: dict = field(default_factory=dict)
    description: str = ""
    source: str = ""


def expand(grid: dict[str, tuple]) -> list[TrialConfig]:
    """The validated, de-duplicated trials of a grid (axis key -> values; missing axes take
    their defaults), in AXES order with the last axis varying fastest."""
    grid = {**default_grid(), **grid}
    for key, values in grid.items():
        axis(key)  # unknown keys fail with the valid ones
        if not values:
            raise SpecError(f"{key}: give at least one value")
        for value in values:
            axis(key).normalise(value)
    points = itertools.product(*(grid[a.key] for a in AXES))
    return unique(make_config({a.name: v for a, v in zip(AXES, values)}) for values in points)


def preset_names() -> list[str]:
    return sorted(p.stem for p in _preset_dir().iterdir() if p.suffix == ".toml")


def preset_path(name: str) -> Path:
    names = preset_names()
    if name not in names:
        raise SpecError(f"unknown preset {name!r}; valid: {', '.join(names)}")
    return _preset_dir() / f"{name}.toml"


def _preset_dir() -> Path:
    return Path(str(resources.files("bench") / "presets"))


def expected_runtime(path: Path, population_off: bool = False) -> str:
    """The '# expected runtime: ...' comment at the top of a sweep file, or with
    `population_off` its '# expected runtime, --population off: ...' one ('' if none)."""
    head = "# expected runtime, --population off:" if population_off else "# expected runtime:"
    for line in Path(path).read_text(encoding="utf-8").splitlines()[:10]:
        if line.lower().startswith(head):
            return line.split(":", 1)[1].strip()
    return ""


def load_sweep(path: Path, overrides: dict | None = None) -> Sweep:
    """Reads, validates and expands a sweep file; `overrides` are axis key -> tuple from flags."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); "
                        f"save it as UTF-8") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{path}: cannot read sweep file: {exc}") from None
    try:
        return _build(doc, overrides or {}, str(path))
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def _build(doc: dict, overrides: dict, source: str) -> Sweep:
    _check_keys("top level", doc, TOP_KEYS)
    check_overrides(overrides)
    run = doc.get("run", {})
    _check_table("[run]", run)
    _check_keys("[run]", run, RUN_KEYS)
    trials, references = [], {}
    grids = doc.get("grid", [])
    for index, grid in enumerate([grids] if isinstance(grids, dict) else grids, 1):
        trials += _grid_trials(f"[grid] #{index}" if isinstance(grids, list) else "[grid]",
                               grid, overrides)
    if "random" in doc:
        trials += _random_trials(doc["random"], overrides)
    for index, table in enumerate(doc.get("trial", []), 1):
        _check_table(f"[[trial]] #{index}", table)
        table = dict(table)
        reference = table.pop("reference", None)
        for config in _grid_trials(f"[[trial]] #{index}", table, overrides):
            trials.append(config)
            if reference is not None:
                references[config.key] = _check_reference(f"[[trial]] #{index}", reference)
    if not trials:
        raise SpecError("no trials: give a [grid], a [random] or [[trial]] tables")
    return Sweep(name=str(doc.get("name", Path(source).stem)), trials=tuple(unique(trials)),
                 references=references, run=run, description=str(doc.get("description", "")),
                 source=source)


def check_overrides(overrides: dict) -> None:
    """Checks command-line axis values up front (a [random] draw or [[trial]] might not use them)."""
    for key, values in overrides.items():
        _as_tuple("command line:", key, list(values))


def _check_table(where: str, table) -> None:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table, not {table!r}")


def _check_keys(where: str, table: dict, valid) -> None:
    for key in table:
        if key not in valid:
            raise SpecError(f"{where}: unknown key {key!r}; valid: {', '.join(valid)}")


def _as_tuple(where: str, key: str, value) -> tuple:
    """The values of one axis (a list, or a scalar for one value), each checked and normalised."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values:
        raise SpecError(f"{where} {key}: give at least one value")
    try:
        return tuple(axis(key).normalise(v) for v in values)
    except SpecError as exc:
        raise SpecError(f"{where} {exc}") from None


def _grid_trials(where: str, table: dict, overrides: dict) -> list[TrialConfig]:
    _check_table(where, table)
    _check_keys(where, table, AXIS_KEYS)
    grid = {key: _as_tuple(where, key, values) for key, values in table.items()}
    return expand({**grid, **overrides})


AXIS_KEYS = tuple(a.key for a in AXES)
SEEDS = next(a for a in AXES if a.name == "seed")


def _random_trials(table: dict, overrides: dict) -> list[TrialConfig]:
    _check_table("[random]", table)
    table = dict(table)
    samples, seed = table.pop("samples", None), table.pop("seed", 0)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise SpecError(f"[random] samples: give a positive integer, not {samples!r}")
    _check_keys("[random]", table, AXIS_KEYS)
    draws = {a: _sampler(a.key, table.get(a.key, a.default), overrides)
             for a in AXES if a is not SEEDS}
    seeds = overrides.get(SEEDS.key) or _as_tuple("[random]", SEEDS.key,
                                                   table.get(SEEDS.key, list(SEEDS.default)))
    rng = random.Random(seed)
    trials = []
    for _ in range(samples):
        point = {a.name: draw(rng) for a, draw in draws.items()}
        trials += [make_config({**point, SEEDS.name: s}) for s in seeds]
    return trials


def _sampler(key: str, spec, overrides: dict):
    """A function rng -> value for one axis of a random search."""
    if key in overrides:
        choices = overrides[key]
        return lambda rng: rng.choice(choices)
    if isinstance(spec, dict):
        return _distribution(key, spec)
    choices = _as_tuple("[random]", key, spec)
    return lambda rng: rng.choice(choices)


def _distribution(key: str, spec: dict):
    """A sampler for {log_uniform = [low, high]} or {uniform = [low, high]}; integers on an
    integer axis (both bounds included)."""
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise SpecError(f"[random] {key}: a distribution is one of "
                        f"{', '.join(f'{{{d} = [low, high]}}' for d in DISTRIBUTIONS)}")
    kind, bounds = next(iter(spec.items()))
    if axis(key).kind is str:
        raise SpecError(f"[random] {key}: {kind} needs a numeric axis; give a list to draw from")
    if not (isinstance(bounds, list) and len(bounds) == 2):
        raise SpecError(f"[random] {key}: {kind} needs [low, high]")
    low, high = (_as_tuple("[random]", key, b)[0] for b in bounds)
    if high < low or (kind == "log_uniform" and low <= 0):
        raise SpecError(f"[random] {key}: {kind} needs {'0 < ' if kind == 'log_uniform' else ''}"
                        f"low <= high")
    if kind == "log_uniform":
        draw = lambda rng: math.exp(rng.uniform(math.log(low), math.log(high)))  # noqa: E731
    else:
        draw = lambda rng: rng.uniform(low, high)  # noqa: E731
    if axis(key).kind is int:
        return lambda rng: min(high, max(low, round(draw(rng))))
    return draw


def _check_reference(where: str, reference) -> dict:
    if not isinstance(reference, dict):
        raise SpecError(f"{where} reference: expected a table")
    _check_keys(f"{where} reference", reference, ("name", "published_test_accuracy", "source"))
    acc = reference.get("published_test_accuracy")
    if not isinstance(acc, (int, float)) or not 0 < acc <= 1:
        raise SpecError(f"{where} reference: published_test_accuracy must be a fraction in (0, 1]")
    return dict(reference)
