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

Axis keys are the `bench run` flags' names (see bench.spec.AXES). Flags given on
the command line replace the same axis everywhere in the file. Every key and
value is checked before anything is compiled; errors name the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import random
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from bench.spec import (AXES, SpecError, SweepSpec, TrialConfig, check_value, expand, make_trial,
                        trial_kwargs, unique)

TOP_KEYS = ("name", "description", "grid", "random", "trial", "run")
RUN_KEYS = ("data", "dataset", "data_dir", "device", "repeats", "burn_in", "round_steps", "targets")
DISTRIBUTIONS = ("log_uniform", "uniform")
DEFAULT = SweepSpec()


@dataclass(frozen=True)
class Sweep:
    """What a sweep file (plus command-line overrides) expands to."""

    name: str
    trials: tuple[TrialConfig, ...]
    references: dict = field(default_factory=dict)  # trial key -> published figure
    run: dict = field(default_factory=dict)
    description: str = ""
    source: str = ""


def preset_names() -> list[str]:
    return sorted(p.stem for p in _preset_dir().iterdir() if p.suffix == ".toml")


def preset_path(name: str) -> Path:
    names = preset_names()
    if name not in names:
        raise SpecError(f"unknown preset {name!r}; valid: {', '.join(names)}")
    return _preset_dir() / f"{name}.toml"


def _preset_dir() -> Path:
    return Path(str(resources.files("bench") / "presets"))


def expected_runtime(path: Path) -> str:
    """The '# expected runtime: ...' comment at the top of a sweep file ('' if none)."""
    for line in Path(path).read_text().splitlines()[:10]:
        if line.lower().startswith("# expected runtime:"):
            return line.split(":", 1)[1].strip()
    return ""


def load_sweep(path: Path, overrides: dict | None = None) -> Sweep:
    """Reads, validates and expands a sweep file; `overrides` are axis -> tuple from flags."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{path}: cannot read sweep file: {exc}") from None
    try:
        return _build(doc, overrides or {}, str(path))
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def _build(doc: dict, overrides: dict, source: str) -> Sweep:
    _check_keys("top level", doc, TOP_KEYS)
    for axis, values in overrides.items():  # a [random] draw or [[trial]] would not check them
        _as_tuple("command line:", axis, list(values))
    run = doc.get("run", {})
    _check_keys("[run]", run, RUN_KEYS)
    trials, references = [], {}
    grids = doc.get("grid", [])
    for index, grid in enumerate([grids] if isinstance(grids, dict) else grids, 1):
        trials += _grid_trials(f"[grid] #{index}" if isinstance(grids, list) else "[grid]",
                               grid, overrides)
    if "random" in doc:
        trials += _random_trials(doc["random"], overrides)
    for index, table in enumerate(doc.get("trial", []), 1):
        table = dict(table)
        reference = table.pop("reference", None)
        for config in _grid_trials(f"[[trial]] #{index}", table, overrides):
            trials.append(config)
            if reference is not None:
                references[config.key()] = _check_reference(f"[[trial]] #{index}", reference)
    if not trials:
        raise SpecError("no trials: give a [grid], a [random] or [[trial]] tables")
    return Sweep(name=str(doc.get("name", Path(source).stem)), trials=tuple(unique(trials)),
                 references=references, run=run, description=str(doc.get("description", "")),
                 source=source)


def _check_keys(where: str, table: dict, valid) -> None:
    for key in table:
        if key not in valid:
            raise SpecError(f"{where}: unknown key {key!r}; valid: {', '.join(valid)}")


def _as_tuple(where: str, axis: str, value) -> tuple:
    values = tuple(value) if isinstance(value, list) else (value,)
    for v in values:
        try:
            check_value(axis, v)
        except SpecError as exc:
            raise SpecError(f"{where} {exc}") from None
    if not values:
        raise SpecError(f"{where} {axis}: give at least one value")
    return values


def _grid_trials(where: str, table: dict, overrides: dict) -> list[TrialConfig]:
    _check_keys(where, table, AXES)
    axes = {axis: _as_tuple(where, axis, table[axis]) for axis in table}
    spec = dataclasses.replace(DEFAULT, **{**axes, **overrides})
    return expand(spec)


def _random_trials(table: dict, overrides: dict) -> list[TrialConfig]:
    table = dict(table)
    samples, seed = table.pop("samples", None), table.pop("seed", 0)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise SpecError(f"[random] samples: give a positive integer, not {samples!r}")
    _check_keys("[random]", table, AXES)
    draws = {axis: _sampler(axis, table.get(axis, getattr(DEFAULT, axis)), overrides)
             for axis in AXES if axis != "seeds"}
    seeds = overrides.get("seeds") or _as_tuple("[random]", "seeds", table.get("seeds", [0]))
    rng = random.Random(seed)
    trials = []
    for _ in range(samples):
        point = {axis: draw(rng) for axis, draw in draws.items()}
        trials += [make_trial(**trial_kwargs(point), seed=s) for s in seeds]
    return trials


def _sampler(axis: str, spec, overrides: dict):
    """A function rng -> value for one axis of a random search."""
    if axis in overrides:
        choices = overrides[axis]
        return lambda rng: rng.choice(choices)
    if isinstance(spec, dict):
        return _distribution(axis, spec)
    choices = _as_tuple("[random]", axis, list(spec) if isinstance(spec, (list, tuple)) else spec)
    return lambda rng: rng.choice(choices)


def _distribution(axis: str, spec: dict):
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise SpecError(f"[random] {axis}: a distribution is one of "
                        f"{', '.join(f'{{{d} = [low, high]}}' for d in DISTRIBUTIONS)}")
    kind, bounds = next(iter(spec.items()))
    if not (isinstance(bounds, list) and len(bounds) == 2):
        raise SpecError(f"[random] {axis}: {kind} needs [low, high]")
    low, high = (_as_tuple("[random]", axis, b)[0] for b in bounds)
    if kind == "log_uniform":
        if low <= 0 or high < low:
            raise SpecError(f"[random] {axis}: log_uniform needs 0 < low <= high")
        return lambda rng: math.exp(rng.uniform(math.log(low), math.log(high)))
    return lambda rng: rng.uniform(low, high)


def _check_reference(where: str, reference) -> dict:
    if not isinstance(reference, dict):
        raise SpecError(f"{where} reference: expected a table")
    _check_keys(f"{where} reference", reference, ("name", "published_test_accuracy", "source"))
    acc = reference.get("published_test_accuracy")
    if not isinstance(acc, (int, float)) or not 0 < acc <= 1:
        raise SpecError(f"{where} reference: published_test_accuracy must be a fraction in (0, 1]")
    return dict(reference)
