"""What a trial is, and how a sweep expands into trials.

`SweepSpec` holds one tuple of values per axis; `expand` takes their Cartesian
product into `TrialConfig`s. Every name and size is checked by `validate`
before anything is compiled, and options that a model family ignores (depth of
a conv net, cell of a dense net) are cleared so that equal trials get equal keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field

from bench import registry
from models import CELLS, MODELS


class SpecError(ValueError):
    """A sweep or trial description that cannot run; the message says what is valid."""


@dataclass(frozen=True)
class TrialConfig:
    """Every field that decides what one trial trains. `learning_rate` is resolved."""

    model: str
    units: int
    activation: str
    optimizer: str
    learning_rate: float
    batch_size: int = 128
    epochs: int = 3
    seed: int = 0
    depth: int | None = None  # dense only
    cell: str | None = None  # recurrent only
    dropout: float = 0.0
    l1: float = 0.0
    l2: float = 0.0

    def key(self) -> str:
        """A stable hash of the fields: the identity used to match and resume trials."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def label(self) -> str:
        """A short human-readable name, e.g. 'dense-512 relu adam lr=0.001'."""
        shape = f"{self.model}-{self.units}"
        if self.depth is not None and self.depth != 2:
            shape += f"x{self.depth}"
        if self.cell is not None and self.cell != "lstm":
            shape += f"-{self.cell}"
        extras = [f"{name}={value:g}" for name, value in
                  (("dropout", self.dropout), ("l1", self.l1), ("l2", self.l2)) if value]
        return " ".join([shape, self.activation, self.optimizer, f"lr={self.learning_rate:g}", *extras])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrialConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class SweepSpec:
    """One tuple per axis; `units` None means each family's reference width."""

    models: tuple[str, ...] = ("dense", "conv", "recurrent")
    activations: tuple[str, ...] = ("relu", "tanh")
    optimizers: tuple[str, ...] = ("sgd", "adam")
    units: tuple[int | None, ...] = (None,)
    learning_rates: tuple[float | None, ...] = (None,)
    batch_sizes: tuple[int, ...] = (128,)
    epochs: tuple[int, ...] = (3,)
    depths: tuple[int, ...] = (2,)
    cells: tuple[str, ...] = ("lstm",)
    dropouts: tuple[float, ...] = (0.0,)
    l1: tuple[float, ...] = (0.0,)
    l2: tuple[float, ...] = (0.0,)
    seeds: tuple[int, ...] = (0,)


AXES = [f.name for f in dataclasses.fields(SweepSpec)]


def validate(spec: SweepSpec) -> None:
    """Raises SpecError naming the axis and the valid values for the first bad value."""
    _check_names("models", spec.models, MODELS)
    _check_names("activations", spec.activations, registry.ACTIVATIONS)
    _check_names("optimizers", spec.optimizers, registry.OPTIMIZERS)
    _check_names("cells", spec.cells, CELLS)
    for axis in AXES:
        if not getattr(spec, axis):
            raise SpecError(f"{axis}: give at least one value")
    _check_numbers("units", [u for u in spec.units if u is not None], int, lo=0)
    _check_numbers("batch_sizes", spec.batch_sizes, int, lo=0)
    _check_numbers("epochs", spec.epochs, int, lo=0)
    _check_numbers("depths", spec.depths, int, lo=0)
    _check_numbers("seeds", spec.seeds, int, lo=0, lo_open=False)
    _check_numbers("learning_rates", [r for r in spec.learning_rates if r is not None], float, lo=0)
    _check_numbers("dropouts", spec.dropouts, float, lo=0, lo_open=False, hi=1)
    _check_numbers("l1", spec.l1, float, lo=0, lo_open=False)
    _check_numbers("l2", spec.l2, float, lo=0, lo_open=False)


def _check_names(axis: str, values, table) -> None:
    for value in values:
        if value not in table:
            raise SpecError(f"{axis}: unknown value {value!r}; valid: {', '.join(table)}")


def _check_numbers(axis, values, kind, *, lo, lo_open=True, hi=None) -> None:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise SpecError(f"{axis}: {value!r} is not {'a number' if kind is float else 'an integer'}")
        if value < lo or (lo_open and value == lo) or (hi is not None and value >= hi):
            bound = f"{'>' if lo_open else '>='} {lo}" + (f" and < {hi}" if hi is not None else "")
            raise SpecError(f"{axis}: {value!r} is out of range; must be {bound}")


def expand(spec: SweepSpec) -> list[TrialConfig]:
    """The validated, de-duplicated trials of `spec`, in axis order."""
    validate(spec)
    trials: dict[str, TrialConfig] = {}
    grid = itertools.product(spec.models, spec.units, spec.activations, spec.optimizers,
                             spec.learning_rates, spec.batch_sizes, spec.epochs, spec.depths,
                             spec.cells, spec.dropouts, spec.l1, spec.l2, spec.seeds)
    for model, units, act, opt, lr, batch, epochs, depth, cell, drop, l1, l2, seed in grid:
        config = TrialConfig(
            model=model, units=units or MODELS[model].reference_units, activation=act,
            optimizer=opt, learning_rate=lr or registry.OPTIMIZERS[opt].default_lr,
            batch_size=batch, epochs=epochs, seed=seed,
            depth=depth if "depth" in MODELS[model].options else None,
            cell=cell if "cell" in MODELS[model].options else None,
            dropout=drop, l1=l1, l2=l2)
        trials.setdefault(config.key(), config)
    return list(trials.values())
