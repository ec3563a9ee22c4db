"""The contract between bench's stages: sweep axes, trial configs, records. No JAX here.

Everything that reads results (`bench report`, `bench compare`, `bench list`,
`--help`) imports this module and never JAX, so reading a run costs no more than
reading its files.

- `AXES`: the table of sweep axes. The `bench run` flags, sweep-file validation,
  random-search sampling, `TrialConfig`'s fields and its label are all derived
  from it: adding an axis is one row here plus its use in a model or the program.
- `TrialConfig`: one value per axis, normalised to the axis's type, so `1` and
  `1.0` as a learning rate are the same trial with the same `key`.
- `Record`: one line of results.jsonl, the one type every writer and reader uses.
- `SCHEMA_VERSION`: written into run.json and every record; a file from a newer
  bench is refused, one from an older bench is migrated as it is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

from bench.contract import registry
from bench.contract.facts import FactsError, MachineFacts, PopulationFacts
from models import CELLS, IMPLS, MODELS

# 3: records carry `machine`; run.json lists the nodes that ran work. 4: run.json and a
# record's `population` and `machine` are typed (bench/contract/facts.py; the same keys), trial
# configs gain `pooling`, machines and run.json `cpu_kernel_target`: a bench of version 3 would
# refuse those fields, so it is told the file is newer.
SCHEMA_VERSION = 4
# `pruned`: stopped at a rung of successive halving (bench/contract/pruning.py); a finished
# trial, censored: its figures are those of the epochs it reached.
STATUSES = ("ok", "diverged", "failed", "pruned")
PLATFORMS = ("cpu", "gpu", "tpu", "auto")  # --device; bench.engine.devices resolves them


class SpecError(ValueError):
    """A sweep or trial description that cannot run; the message says what is valid."""


class SchemaError(ValueError):
    """A run.json or record this bench cannot read; the message says why and what to do."""


# ---------------------------------------------------------------- the axes table


@dataclass(frozen=True)
class Axis:
    """One sweep axis: a field of every TrialConfig.

    `default` is the default sweep's values; None in it means "resolved per
    trial" by `resolve` from the trial's other values (a family's reference
    width, an optimizer's own learning rate). An axis with `families` applies
    to those model families only and is None in the others' configs.
    `model_option` axes reach the model's constructor as keyword arguments; the
    others are used by the training program. `per_member` axes are the values that
    members of one population may differ in: inputs of its compiled program, never
    constants baked into it (bench/run/groups.py, bench/engine/steps.py). `label` formats the value in a
    trial's label ('{}' is the value), shown always if `label_always`, else only
    when it differs from the default. `keyed_at_default` False keeps an axis
    added later out of the trial key while it has its default value, so that
    the keys of existing runs and baselines do not change.
    """

    name: str
    kind: type  # int, float or str
    default: tuple
    help: str
    sweep_key: str = ""  # the sweep-file key and flag, when not `name` (e.g. plural "models")
    choices: Callable[[], Iterable[str]] | None = None
    low: float | None = None
    low_inclusive: bool = False
    high: float | None = None  # exclusive
    families: tuple[str, ...] | None = None
    model_option: bool = False
    per_member: bool = False
    resolve: Callable[[dict], object] | None = None
    label: str | None = None
    label_always: bool = False
    keyed_at_default: bool = True

    @property
    def key(self) -> str:
        """The sweep-file key ('models', 'learning_rate')."""
        return self.sweep_key or self.name

    @property
    def flag(self) -> str:
        """The `bench run` flag ('--models', '--learning-rate')."""
        return "--" + self.key.replace("_", "-")

    def keyed(self, value) -> bool:
        """Whether this axis's `value` enters a trial's key (and its group id): always where
        `keyed_at_default`; otherwise only where set and not the default, so that configs
        from before the axis (its default, or None in families without it) keep their keys."""
        return self.keyed_at_default or value not in (None, _plain_default(self))

    def applies_to(self, family: str) -> bool:
        return self.families is None or family in self.families

    def valid_names(self) -> list[str]:
        return list(self.choices()) if self.choices else []

    def normalise(self, value, known_names: bool = True):
        """`value` as this axis's type, checked against its choices and bounds; SpecError if not.

        None stays None where the axis resolves its default per trial. `known_names`
        False accepts any name (a results file may come from a bench with more of them).
        """
        if value is None and self.resolve is not None:
            return None
        if self.kind is str:
            if not isinstance(value, str):
                raise SpecError(f"{self.key}: {value!r} is not a name")
            if known_names and value not in self.valid_names():
                raise SpecError(f"{self.key}: unknown value {value!r}; "
                                f"valid: {', '.join(self.valid_names())}")
            return value
        number = _as_number(self, value)
        self._check_bounds(number)
        return number

    def _check_bounds(self, number) -> None:
        low, high = self.low, self.high
        too_low = low is not None and (number < low or (number == low and not self.low_inclusive))
        if too_low or (high is not None and number >= high):
            bound = f"{'>=' if self.low_inclusive else '>'} {low:g}" if low is not None else ""
            bound += (" and " if bound else "") + (f"< {high:g}" if high is not None else "")
            raise SpecError(f"{self.key}: {number!r} is out of range; must be {bound}")


def _as_number(axis: Axis, value) -> int | float:
    """An int or float of `value`: integral floats are integers on integer axes (64.0 -> 64)."""
    what = "an integer" if axis.kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{axis.key}: {value!r} is not {what}")
    if not math.isfinite(value):
        raise SpecError(f"{axis.key}: {value!r} is not a finite number")
    if axis.kind is int:
        if value != int(value):
            raise SpecError(f"{axis.key}: {value!r} is not an integer")
        return int(value)
    return float(value)


def _reference_units(point: dict) -> int:
    return MODELS[point["model"]].reference_units


def _default_lr(point: dict) -> float:
    return registry.OPTIMIZERS[point["optimizer"]].default_lr


# Row order is TrialConfig's field order, the order of a grid's expansion (the last
# axis varies fastest) and of a label's parts.
AXES: tuple[Axis, ...] = (
    Axis("model", str, ("dense", "conv", "recurrent"), "model families (see `bench list`)",
         sweep_key="models", choices=lambda: MODELS, label="{}", label_always=True),
    Axis("units", int, (None,), "width: dense layer width, conv filters, recurrent state size "
         "(default: each family's reference, dense 512, conv 32, recurrent 128)",
         low=0, resolve=_reference_units, label="-{}", label_always=True),
    Axis("depth", int, (2,), "dense hidden layers", low=0, families=("dense",),
         model_option=True, label="x{}"),
    Axis("cell", str, ("lstm",), "recurrent cell", choices=lambda: CELLS,
         families=("recurrent",), model_option=True, label="-{}"),
    Axis("pooling", str, ("avg",), "conv downsampling: avg (2x2 average pooling after each "
         "conv block), max (2x2 max pooling) or stride (stride-2 convolutions, no pooling)",
         choices=lambda: ("avg", "max", "stride"), families=("conv",), model_option=True,
         label=" pool={}", keyed_at_default=False),
    Axis("activation", str, ("relu", "tanh"), "activations (see `bench list`)",
         sweep_key="activations", choices=lambda: registry.ACTIVATIONS, label=" {}",
         label_always=True),
    Axis("optimizer", str, ("sgd", "adam"), "optimizers (see `bench list`)",
         sweep_key="optimizers", choices=lambda: registry.OPTIMIZERS, label=" {}",
         label_always=True),
    Axis("learning_rate", float, (None,), "default: each optimizer's own (see `bench list`)",
         low=0, resolve=_default_lr, per_member=True, label=" lr={:g}", label_always=True),
    Axis("batch_size", int, (128,), "training batch size", low=0, label=" bs={}"),
    Axis("epochs", int, (3,), "training epochs", low=0, label=" epochs={}"),
    Axis("dropout", float, (0.0,), "dropout rate after hidden layers", low=0, low_inclusive=True,
         high=1, model_option=True, per_member=True, label=" dropout={:g}"),
    Axis("l1", float, (0.0,), "L1 weight penalty on kernels", low=0, low_inclusive=True,
         per_member=True, label=" l1={:g}"),
    Axis("l2", float, (0.0,), "L2 weight penalty on kernels", low=0, low_inclusive=True,
         per_member=True, label=" l2={:g}"),
    Axis("seed", int, (0,), "random seeds; several seeds are aggregated (mean ± sd)",
         sweep_key="seeds", low=0, low_inclusive=True, per_member=True),
    Axis("impl", str, ("tuned",), "how each family is written: tuned (bench's own forms) or "
         "flax (stock Flax NNX layers); the same function", choices=lambda: IMPLS,
         label=" impl={}", keyed_at_default=False),
)

# The axes whose values members of one population may differ in (inputs of the training
# program), and those they share (bench/run/groups.py).
PER_MEMBER = tuple(a.name for a in AXES if a.per_member)
SHARED = tuple(a.name for a in AXES if not a.per_member)

AXIS_BY_KEY: dict[str, Axis] = {axis.key: axis for axis in AXES}


def axis(key: str) -> Axis:
    """The axis whose sweep key is `key`; SpecError listing the valid ones if none."""
    try:
        return AXIS_BY_KEY[key]
    except KeyError:
        raise SpecError(f"unknown axis {key!r}; valid: {', '.join(AXIS_BY_KEY)}") from None


def default_grid() -> dict[str, tuple]:
    """The default sweep (the `quick` preset's grid): axis key -> values."""
    return {a.key: a.default for a in AXES}


def model_options(family: str) -> tuple[str, ...]:
    """The keyword options the family's constructor takes (its `model_option` axes)."""
    return tuple(a.name for a in AXES if a.model_option and a.applies_to(family))


# ---------------------------------------------------------------- trial configs


def _hash_of(config, without: tuple[str, ...]) -> str:
    values = {a.name: getattr(config, a.name) for a in AXES
              if a.name not in without and a.keyed(getattr(config, a.name))}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


class _TrialConfigMethods:
    """What every TrialConfig can do; its fields come from AXES."""

    @cached_property
    def key(self) -> str:
        """A stable hash of the normalised values: the identity used to match and resume trials."""
        return _hash_of(self, without=())

    @cached_property
    def config_id(self) -> str:
        """The key without the seed: one id shared by a configuration's seeds (reports, CSV,
        summary.json group by it)."""
        return _hash_of(self, without=("seed",))

    def label(self, without: tuple[str, ...] = ()) -> str:
        """A short human-readable name, e.g. 'dense-512 relu adam lr=0.001' (the axes named
        in `without` left out)."""
        parts = []
        for a in AXES:
            value = getattr(self, a.name)
            if a.name in without:
                continue
            if a.label and value is not None and (a.label_always or value != _plain_default(a)):
                parts.append(a.label.format(value))
        return "".join(parts)

    def to_dict(self) -> dict:
        return {a.name: getattr(self, a.name) for a in AXES}

    @classmethod
    def from_dict(cls, data: dict) -> "TrialConfig":
        """A config as stored in a run, normalised; SpecError for unknown fields or bad values
        (names are not checked: a run may come from a bench that knows more of them)."""
        if not isinstance(data, dict):
            raise SpecError(f"a trial config is a table of axis values, not {data!r}")
        unknown = set(data) - {a.name for a in AXES}
        if unknown:
            raise SpecError(f"unknown config field(s) {', '.join(sorted(unknown))}; "
                            f"valid: {', '.join(a.name for a in AXES)}")
        return make_config({a.name: data[a.name] for a in AXES if a.name in data},
                           known_names=False)


def _plain_default(a: Axis):
    return a.default[0] if len(a.default) == 1 else None


def _field_default(a: Axis):
    """A constructor default: the axis's default where every family has it, else None."""
    return None if a.families else _plain_default(a)


TrialConfig = dataclasses.make_dataclass(
    "TrialConfig", [(a.name, f"{a.kind.__name__} | None", field(default=_field_default(a)))
                    for a in AXES],
    bases=(_TrialConfigMethods,), frozen=True, kw_only=True)
TrialConfig.__module__ = __name__  # pickled by reference (bench.contract.schema.TrialConfig)
TrialConfig.__doc__ = "Every value that decides what one trial trains: one field per axis of AXES."


def make_config(point: dict, known_names: bool = True) -> TrialConfig:
    """The TrialConfig of one value per axis (by field name): normalised, defaults resolved,
    options the family does not use cleared (None), so that equal trials get equal keys.

    An axis missing from `point` (or None) takes its default, raising SpecError for the
    axes that have none (model, activation, optimizer)."""
    values = {}
    for a in AXES:
        value = point.get(a.name)
        if value is None and len(a.default) == 1:
            value = a.default[0]  # None for the axes resolved per trial
        elif value is None:
            raise SpecError(f"a trial needs a value for {a.name!r}")
        # the model decides which axes apply; they are checked once it is known
        values[a.name] = a.normalise(value, known_names) if a.name == "model" else value
    for a in AXES:
        if not a.applies_to(values["model"]):
            values[a.name] = None
            continue
        values[a.name] = a.normalise(values[a.name], known_names)
    for a in AXES:
        if values[a.name] is None and a.resolve is not None and a.applies_to(values["model"]):
            try:
                values[a.name] = a.normalise(a.resolve(values))
            except KeyError as exc:  # an unknown name, read from a file
                raise SpecError(f"{a.key}: no default for unknown name {exc}") from None
    return TrialConfig(**values)


def unique(configs: Iterable[TrialConfig]) -> list[TrialConfig]:
    """`configs` without repeated keys, first occurrence kept."""
    trials: dict[str, TrialConfig] = {}
    for config in configs:
        trials.setdefault(config.key, config)
    return list(trials.values())


# ---------------------------------------------------------------- the timing protocol


@dataclass(frozen=True)
class TimingProtocol:
    """How each trial is measured; the same for every trial of a run (README, "Timing protocol")."""

    repeats: int = 5
    burn_in: int = 1
    round_steps: int = 20
    targets: tuple[float, ...] = (0.97, 0.98, 0.99)


# ---------------------------------------------------------------- records


def _figure(unit: str, default=None, *, aggregate: bool = False, optional: bool = False):
    """A scalar field of a record: `unit` says how it is shown; `aggregate`, averaged over seeds;
    `optional`, written (and given a results.csv column) only where some record has it, so
    runs that never set it keep their files as they were."""
    return field(default=default, metadata={"unit": unit, "aggregate": aggregate,
                                            "optional": optional})


@dataclass(slots=True)
class Record:
    """One results.jsonl line: a trial's config, status and figures. Times in seconds,
    accuracies as fractions of 1, memory in bytes.

    Built by the trial, then only read. The timing fields are documented in the
    README's "Timing protocol": `compile_s` is the epoch program's ahead-of-time
    compilation (never inside an epoch time); `epoch_s` each epoch's
    synchronised wall time; `rounds_s` the timed rounds of `round_steps` steps,
    from whose median come `step_ms` and `samples_per_s`.

    `population` says how the trial was trained: its group, the population's size
    and the member's index. A member of a population larger than one has no
    training clock of its own: the figures it shares with the other members
    (compile times, epoch times, throughput, time to accuracy on that clock) are
    under `population`, and its own fields hold only what is its own (accuracy,
    history, and the timed rounds it ran alone).

    `machine` is the facts of the machine (and Ray node) that produced the record:
    host, CPU, device kind and count, calibrated peak, bench/jax versions
    (bench.run.work.machine_facts). Older records have none.
    """

    config: TrialConfig
    status: str = field(default="ok", metadata={"unit": "text"})
    test_accuracy: float | None = _figure("pct", aggregate=True)
    test_loss: float | None = _figure("number")
    # The last epoch's figures on the validation split, in runs that hold one out (--validation).
    validation_accuracy: float | None = _figure("pct", aggregate=True, optional=True)
    validation_loss: float | None = _figure("number", optional=True)
    compile_s: float | None = _figure("s", aggregate=True)
    eval_compile_s: float | None = _figure("s")
    round_compile_s: float | None = _figure("s")
    compile_cache_hits: int = _figure("count", 0)
    first_epoch_s: float | None = _figure("s", aggregate=True)
    steady_epoch_s: float | None = _figure("s", aggregate=True)
    step_ms: float | None = _figure("ms", aggregate=True)
    samples_per_s: float | None = _figure("rate", aggregate=True)
    flops_per_step: float | None = _figure("count")
    achieved_flops: float | None = _figure("gflops", aggregate=True)
    peak_fraction: float | None = _figure("pct", aggregate=True)
    busy: bool = _figure("flag", False)
    other_cpu_cores: float | None = _figure("number")
    params: int | None = _figure("count", aggregate=True)
    steps_per_epoch: int | None = _figure("count")
    round_steps: int | None = _figure("count")
    train_examples: int | None = _figure("count")
    test_examples: int | None = _figure("count")
    validation_examples: int | None = _figure("count", optional=True)
    wall_s: float | None = _figure("s")
    epoch_s: list = field(default_factory=list)
    rounds_s: list = field(default_factory=list)
    round_stats: dict | None = None
    memory: dict = field(default_factory=dict)
    time_to_accuracy: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    reference: dict | None = None
    population: PopulationFacts | None = None
    machine: MachineFacts | None = None
    error: str | None = None
    traceback: str | None = None
    # In runs that prune (--prune): how (bench.contract.pruning.Pruning.to_json), on every
    # record; and on a `pruned` one, the rung (epoch) it stopped at.
    pruning: dict | None = field(default=None, metadata={"optional": True})
    pruned_at_epoch: int | None = _figure("count", optional=True)

    def __post_init__(self):
        """Facts given as their JSON tables (a results.jsonl line, a test) become typed."""
        self.population = PopulationFacts.from_json(self.population)
        self.machine = MachineFacts.from_json(self.machine)

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def train_s(self) -> float | None:
        """Training seconds: the sum of the epoch times (no compilation, no evaluation)."""
        times = [h.get("epoch_s") for h in self.history] or self.epoch_s
        times = [t for t in times if t is not None]
        return round(sum(times), 6) if times else None  # no float noise in files

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    def time_to(self, target: str) -> float | None:
        """Training seconds until test accuracy first reached `target` ('0.97'); None if never.

        A member of a population has no clock of its own: its population's is used."""
        clock = self.time_to_accuracy or (self.population and self.population.time_to_accuracy) or {}
        return (clock.get(target) or {}).get("train_s")

    def step_times(self, scale: float = 1.0) -> list[float]:
        """Seconds per training step of each timed round, times `scale`."""
        rounds = [t for t in self.rounds_s if t is not None]
        if not self.round_steps or not rounds:
            return []
        return [scale * t / self.round_steps for t in rounds]

    def to_json(self) -> dict:
        """The results.jsonl form: every field, the config as a table, the key and the version."""
        out = {"schema_version": SCHEMA_VERSION, "key": self.key}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in OPTIONAL_FIELDS:
                continue
            if f.name == "config":
                value = value.to_dict()
            elif f.name == "population" and value is not None:
                value = PopulationFacts.from_json(value).to_json()  # checked as it is written
            elif f.name == "machine" and value is not None:
                value = MachineFacts.from_json(value).to_json()
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Record":
        """A record from its results.jsonl form, migrated from older schema versions."""
        if not isinstance(data, dict):
            raise SchemaError("a record is a JSON object")
        data = migrate_record(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise SchemaError(f"unknown record field(s) {', '.join(sorted(unknown))}")
        if "config" not in data:
            raise SchemaError("a record needs its trial config ('config')")
        try:
            config = TrialConfig.from_dict(data["config"])
            return cls(**{**data, "config": config})
        except SpecError as exc:
            raise SchemaError(f"config: {exc}") from None
        except FactsError as exc:
            raise SchemaError(str(exc)) from None


SCALAR_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Record)
                                       if "unit" in f.metadata)
AGGREGATE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Record)
                                          if f.metadata.get("aggregate"))
UNITS: dict[str, str] = {f.name: f.metadata["unit"] for f in dataclasses.fields(Record)
                         if "unit" in f.metadata}
OPTIONAL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Record)
                                         if f.metadata.get("optional"))


def check_version(version, where: str) -> int:
    """`version` if this bench reads it; SchemaError saying what to do otherwise."""
    if version is None:
        return 1  # written before versions were recorded per line
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SchemaError(f"{where}: schema_version {version!r} is not a version number")
    if version > SCHEMA_VERSION:
        raise SchemaError(f"{where}: written by a newer bench (schema version {version}; this "
                          f"bench reads up to {SCHEMA_VERSION}); upgrade bench to read it")
    return version


def migrate_record(data: dict) -> dict:
    """A record of any readable version in the current version's shape (without the
    derived 'key' and 'schema_version' fields)."""
    data = dict(data)
    version = check_version(data.pop("schema_version", None), "record")
    data.pop("key", None)  # derived from the config, which is normalised as it is read
    if version == 1:
        data = _from_v1(data)
    return data


def _from_v1(data: dict) -> dict:
    """Version 1 recorded memory as process-wide maxima; they keep names that say so."""
    memory = dict(data.get("memory") or {})
    if "device_peak_bytes" in memory:
        memory["process_device_peak_bytes"] = memory.pop("device_peak_bytes")
    data["memory"] = memory
    return data
