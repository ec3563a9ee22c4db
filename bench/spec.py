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
from dataclasses import dataclass

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
    """A grid: one tuple per axis; `units` None means each family's reference width.

    Axis names are the `bench run` flags' (`--batch-size` is `batch_size`), and
    the keys of a sweep file's [grid] and [random] tables.
    """

    models: tuple[str, ...] = ("dense", "conv", "recurrent")
    activations: tuple[str, ...] = ("relu", "tanh")
    optimizers: tuple[str, ...] = ("sgd", "adam")
    units: tuple[int | None, ...] = (None,)
    depth: tuple[int, ...] = (2,)
    cell: tuple[str, ...] = ("lstm",)
    learning_rate: tuple[float | None, ...] = (None,)
    batch_size: tuple[int, ...] = (128,)
    epochs: tuple[int, ...] = (3,)
    dropout: tuple[float, ...] = (0.0,)
    l1: tuple[float, ...] = (0.0,)
    l2: tuple[float, ...] = (0.0,)
    seeds: tuple[int, ...] = (0,)


AXES = [f.name for f in dataclasses.fields(SweepSpec)]
NAME_AXES = {"models": MODELS, "activations": registry.ACTIVATIONS,
             "optimizers": registry.OPTIMIZERS, "cell": CELLS}
# axis -> (kind, lower bound, lower bound allowed, upper bound (exclusive) or None)
NUMBER_AXES = {
    "units": (int, 0, False, None), "depth": (int, 0, False, None),
    "batch_size": (int, 0, False, None), "epochs": (int, 0, False, None),
    "seeds": (int, 0, True, None), "learning_rate": (float, 0, False, None),
    "dropout": (float, 0, True, 1), "l1": (float, 0, True, None), "l2": (float, 0, True, None),
}


def check_value(axis: str, value) -> None:
    """Raises SpecError if `value` is not valid on `axis` (None: that axis's default)."""
    if axis not in NUMBER_AXES and axis not in NAME_AXES:
        raise SpecError(f"unknown axis {axis!r}; valid: {', '.join(AXES)}")
    if axis in NAME_AXES:
        if value not in NAME_AXES[axis]:
            raise SpecError(f"{axis}: unknown value {value!r}; valid: {', '.join(NAME_AXES[axis])}")
        return
    if value is None and axis in ("units", "learning_rate"):
        return
    kind, lo, lo_ok, hi = NUMBER_AXES[axis]
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise SpecError(f"{axis}: {value!r} is not {'a number' if kind is float else 'an integer'}")
    if value < lo or (value == lo and not lo_ok) or (hi is not None and value >= hi):
        bound = f"{'>=' if lo_ok else '>'} {lo}" + (f" and < {hi}" if hi is not None else "")
        raise SpecError(f"{axis}: {value!r} is out of range; must be {bound}")


def validate(spec: SweepSpec) -> None:
    """Raises SpecError naming the axis and the valid values for the first bad value."""
    for axis in AXES:
        values = getattr(spec, axis)
        if not values:
            raise SpecError(f"{axis}: give at least one value")
        for value in values:
            check_value(axis, value)


def make_trial(model: str, units, activation: str, optimizer: str, learning_rate=None,
               batch_size: int = 128, epochs: int = 3, depth: int = 2, cell: str = "lstm",
               dropout: float = 0.0, l1: float = 0.0, l2: float = 0.0, seed: int = 0) -> TrialConfig:
    """A TrialConfig with defaults resolved and options the family ignores cleared."""
    options = MODELS[model].options
    return TrialConfig(
        model=model, units=units or MODELS[model].reference_units, activation=activation,
        optimizer=optimizer, learning_rate=learning_rate or registry.OPTIMIZERS[optimizer].default_lr,
        batch_size=batch_size, epochs=epochs, seed=seed,
        depth=depth if "depth" in options else None, cell=cell if "cell" in options else None,
        dropout=float(dropout), l1=float(l1), l2=float(l2))


def expand(spec: SweepSpec) -> list[TrialConfig]:
    """The validated, de-duplicated trials of the grid `spec`, in axis order."""
    validate(spec)
    grid = itertools.product(*(getattr(spec, axis) for axis in AXES))
    return unique(make_trial(**trial_kwargs(dict(zip(AXES, values)))) for values in grid)


# sweep axis -> make_trial argument, where the names differ (plural axis, one value)
_SINGULAR = {"models": "model", "activations": "activation", "optimizers": "optimizer",
             "seeds": "seed"}


def trial_kwargs(point: dict) -> dict:
    """make_trial's keyword arguments for one value per sweep axis."""
    return {_SINGULAR.get(axis, axis): value for axis, value in point.items()}


def unique(configs) -> list[TrialConfig]:
    """`configs` without repeated keys, first occurrence kept."""
    trials: dict[str, TrialConfig] = {}
    for config in configs:
        trials.setdefault(config.key(), config)
    return list(trials.values())
