"""train_unit: the one training engine. It trains a work unit of any size (a population of
trials, or a trial alone as a unit of one) into one record per trial.

One loop for every size: build each member from its seed, compile ahead of time, train the
epochs (evaluating between them, outside the timed region), record each member's history
and whether it diverged, drop diverged members' rows when that pays, then time each ok
member's own rounds alone, after training. What differs by size is the compiled program
only (`_Solo`, `_Vmapped`):

- a unit of one runs bench's specialised program: its values (learning rate, penalties,
  dropout rate) baked in as constants and no member axis. It measures faster than a
  population program of one, and it is what a trial's own step time has always been
  measured with, so solo figures stay comparable with earlier runs and baselines;
- a population runs one program whose members sit on a vmapped axis (sharded over the
  devices), their per-member values as inputs.

Honest figures: what members share (compile times, epoch wall times, member-samples per
second, time to accuracy on that clock) is recorded under the record's `population`, never
as a member's own; a unit of one records them as its own. A failure that is the whole unit
running out of memory retries the unit as two halves; any other exception records every
member `failed` at once, naming the exception and the innermost frame of bench's code.

Pruning (--prune halving, bench/contract/pruning.py): a unit is then a whole halving group,
and it may hold several programs (`Unit.parts`: populations, or trials alone that it trains
in turn, each its own `_Solo` with its own clock). The loop trains every program's epoch,
then, at a rung, stops the configurations that lose on validation accuracy: a pruned
member stops training at once (masked, like a diverged one) and its rows leave its
population when that pays (`worth_retiring`); a trial alone simply stops. Every program
reaches a rung before its decision, so the decision needs nothing from outside the unit.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models
from bench.contract import registry
from bench.contract.facts import PopulationFacts
from bench.contract.pruning import Entry, Pruning, to_stop
from bench.contract.schema import Record, TimingProtocol, TrialConfig, model_options
from bench.contract.units import Unit, split_evenly
from bench.engine import costs, devices
from bench.engine.data import Dataset
from bench.engine.hostload import LoadMeter
from bench.engine.steps import (Hyper, Penalty, build_member_program, build_program, injected,
                                population_program)
from bench.engine.timing import (CacheHits, compile_ahead, summarize, time_rounds,
                                 time_to_accuracy, timed_call)
from models import MODELS

OnEpoch = Callable[[dict], None]

# ---------------------------------------------------------------- a member, its data and keys


def build_model(config: TrialConfig) -> nnx.Module:
    """The configured Flax model, initialised from the trial's seed."""
    options = {name: getattr(config, name) for name in model_options(config.model)}
    act = registry.activation(config.activation)
    family = MODELS[config.model].build_impl(config.impl or "tuned")
    return family(config.units, act, 10, nnx.Rngs(config.seed), **options)


_DEVICE_DATA: dict = {}


def place_dataset(dataset: Dataset, device: jax.Device) -> tuple:
    """The data set's arrays on `device`, transferred once per process: x and y of training
    and test, then of validation where one is held out (EVALUATED says where each split is)."""
    cached = _DEVICE_DATA.get(str(device))
    # Matched by identity, not id(): a freed data set's id is often reused by the next one.
    if cached is None or cached[0] is not dataset:
        _DEVICE_DATA.clear()  # keep one data set resident, not every one ever seen
        arrays = (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
        if dataset.x_val is not None:
            arrays += (dataset.x_val, dataset.y_val)
        _DEVICE_DATA[str(device)] = (dataset, tuple(jax.device_put(jnp.asarray(a), device)
                                                    for a in arrays))
    return _DEVICE_DATA[str(device)][1]


def seed_key(config: TrialConfig) -> jax.Array:
    """A member's PRNG key: from its seed alone, the same in a population as alone. Epoch
    `i` trains with fold_in(key, i); its timed rounds with ROUND_KEY folded in."""
    return jax.random.key(config.seed)


def seed_keys(configs: list[TrialConfig]) -> jax.Array:
    """Each member's `seed_key`, stacked on the member axis."""
    return jax.vmap(jax.random.key)(jnp.asarray([c.seed for c in configs]))


ROUND_KEY = 1_000_003

# The splits evaluated after each epoch: where their (x, y) sit in `place_dataset`'s tuple.
EVALUATED = {"test": slice(2, 4), "validation": slice(4, 6)}


def compile_evaluations(evaluate, params, data: tuple) -> tuple[dict, float]:
    """split -> the evaluation program compiled for it (test; validation where the data
    holds one), and the seconds compiling took. Splits of the same shapes share one program
    (MNIST's 10,000 validation and 10,000 test), as a jit call would."""
    programs, by_shape, seconds = {}, {}, 0.0
    for split, where in EVALUATED.items():
        arrays = data[where]
        if not arrays:
            continue
        shapes = tuple((a.shape, a.dtype) for a in arrays)
        if shapes not in by_shape:
            by_shape[shapes], spent = compile_ahead(evaluate, params, *arrays)
            seconds += spent
        programs[split] = by_shape[shapes]
    return programs, seconds


def _solo_program(model: nnx.Module, config: TrialConfig, protocol: TimingProtocol):
    """The specialised program of one trial: its values baked in, no member axis."""
    tx = registry.optimizer(config.optimizer, config.learning_rate)
    return build_program(model, tx, config.batch_size, penalty=Penalty(config.l1, config.l2),
                         uses_dropout=config.dropout > 0, round_steps=protocol.round_steps)


# What a model is switched to for its FLOP count: loops unrolled (XLA counts a loop's body
# once), XLA forms instead of CPU kernels (XLA cannot count inside a custom call).
COUNTED_FORM = {"unroll": True, "fused_kernel": False}


def step_flops(config: TrialConfig, protocol: TimingProtocol, x, y) -> float | None:
    """FLOPs of one training step of `config`: XLA's count for a round of its specialised
    program (a scan, so its body: one step), the model in its COUNTED_FORM. Lowered only,
    never compiled or run; the same count for a member of a population as alone."""
    model = build_model(config)
    for name, value in COUNTED_FORM.items():
        if hasattr(model, name):
            setattr(model, name, value)
    program = _solo_program(model, config, protocol)
    return costs.flops(jax.jit(program.train_round).lower(program.init(), x, y, seed_key(config)))


# ---------------------------------------------------------------- entry points and failures


def train_unit(unit: Unit, dataset: Dataset, device_list: list[jax.Device],
               protocol: TimingProtocol = TimingProtocol(), *, peak_flops: float | None = None,
               on_epoch: OnEpoch | None = None, pruning: Pruning | None = None) -> list[Record]:
    """The records of `unit`'s trials; failures come back as records, never raised.

    `peak_flops` is one device's measured FLOP/s (bench.engine.calibrate), for % of peak;
    `on_epoch`, if given, is called after each epoch (for progress displays); `pruning`,
    if given, prunes the unit's configurations at its rungs (the unit is a halving group)."""
    training = _Training(unit, dataset, device_list, protocol, peak_flops,
                         on_epoch or (lambda _: None), pruning)
    try:
        return training.run()
    except Exception as exc:  # noqa: BLE001 - the members are retried or recorded
        if unit.size > 1 and out_of_memory(exc):
            retry = _retry_in_parts if pruning else _retry_as_halves
            return retry(unit, exc, dataset, device_list, protocol, peak_flops, on_epoch,
                         pruning) or training.failed(exc)
        return training.failed(exc)


def run_trial(config: TrialConfig, dataset: Dataset, device: jax.Device,
              protocol: TimingProtocol = TimingProtocol(), *, peak_flops: float | None = None,
              on_epoch: OnEpoch | None = None) -> Record:
    """One trial trained alone: a unit of one."""
    unit = Unit("alone", (config,), alone=True)
    [record] = train_unit(unit, dataset, [device], protocol, peak_flops=peak_flops,
                          on_epoch=on_epoch)
    return record


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is the unit running out of device or host memory (worth retrying smaller)."""
    text = str(exc)
    return (isinstance(exc, (MemoryError, costs.TooLarge)) or "RESOURCE_EXHAUSTED" in text
            or "out of memory" in text.lower())


def failure_text(exc: BaseException) -> str:
    """The exception's type and message, and the innermost frame of bench's own code."""
    roots = [Path(__file__).resolve().parents[1], Path(models.__file__).resolve().parent]
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if any(Path(f.filename).resolve().is_relative_to(root) for root in roots)]
    where = ""
    if frames:
        frame = frames[-1]
        path = Path(frame.filename).resolve()
        root = next(r for r in roots if path.is_relative_to(r))
        where = f" (at {root.name}/{path.relative_to(root)}:{frame.lineno} in {frame.name})"
    return f"{type(exc).__name__}: {exc}{where}"


def _retry_as_halves(unit, exc, dataset, device_list, protocol, peak_flops, on_epoch, _pruning):
    halves = split_evenly(list(unit.members), math.ceil(unit.size / 2))
    note = (f"population of {unit.size} ran out of memory ({type(exc).__name__}: {exc}); "
            f"retried as {' and '.join(str(len(h)) for h in halves)}")
    out = []
    for half in halves:
        part = Unit(unit.group, tuple(half), alone=len(half) == 1)
        for record in train_unit(part, dataset, device_list, protocol, peak_flops=peak_flops,
                                 on_epoch=on_epoch):
            record.population.retry = note
            out.append(record)
    return out


def _retry_in_parts(unit, exc, dataset, device_list, protocol, peak_flops, on_epoch, pruning):
    """A pruned unit out of memory: every population in it split in two (by configuration),
    still one unit, so its rungs still decide over the whole halving group; None where
    every part is a trial alone already."""
    parts = [Unit(part.group, tuple(half), alone=len(half) == 1)
             for part in unit.programs for half in _halves(list(part.members))]
    if len(parts) == len(unit.programs):
        return None
    sizes = " + ".join(str(p.size) for p in unit.programs)
    note = (f"programs of {sizes} ran out of memory ({type(exc).__name__}: {exc}); retried as "
            f"{' + '.join(str(p.size) for p in parts)}, pruned together")
    smaller = Unit(unit.group, tuple(c for p in parts for c in p.members),
                   alone=all(p.alone for p in parts), parts=tuple(parts))
    records = train_unit(smaller, dataset, device_list, protocol, peak_flops=peak_flops,
                         on_epoch=on_epoch, pruning=pruning)
    for record in records:
        record.population.retry = note
    return records


def _halves(members: list[TrialConfig]) -> list[list[TrialConfig]]:
    """`members` in two halves of whole configurations (a configuration's seeds together),
    or of seeds where they are one configuration; one list for a single member."""
    configurations: dict[str, list[TrialConfig]] = {}
    for config in members:
        configurations.setdefault(config.config_id, []).append(config)
    if len(configurations) == 1:
        return split_evenly(members, math.ceil(len(members) / 2))
    halves = split_evenly(list(configurations.values()), math.ceil(len(configurations) / 2))
    return [[c for seeds in half for c in seeds] for half in halves]


# ---------------------------------------------------------------- the two program forms


class _Solo:
    """One trial's specialised program (values baked in, no member axis): one row."""

    def __init__(self, configs: list[TrialConfig], dataset: Dataset,
                 device_list: list[jax.Device], protocol: TimingProtocol):
        [self.config] = configs
        self.device, self.protocol, self.dataset = device_list[0], protocol, dataset
        self.rows = [0]
        self.device_count = 1
        self.data = place_dataset(dataset, self.device)
        self.program = _solo_program(build_model(self.config), self.config, protocol)
        self.state = jax.device_put(self.program.init(), self.device)
        self.key = seed_key(self.config)

    def compile(self) -> dict:
        x, y = self.data[:2]
        self.epoch_program, compile_s = compile_ahead(self.program.train_epoch, self.state,
                                                      x, y, self.key, donate_argnums=0)
        self.evaluations, eval_s = compile_evaluations(self.program.evaluate, self.state.params,
                                                       self.data)
        self.round_program, round_s = compile_ahead(self.program.train_round, self.state, x, y,
                                                    self.key, donate_argnums=0)
        self.program_memory = costs.program_memory(self.epoch_program)
        return {"compile_s": compile_s, "eval_compile_s": eval_s, "round_compile_s": round_s}

    def train_epoch(self, rows_active: np.ndarray, index: int):
        x, y = self.data[:2]
        (self.state, loss, acc), seconds = timed_call(
            self.epoch_program, self.state, x, y, jax.random.fold_in(self.key, index))
        return np.atleast_1d(loss), np.atleast_1d(acc), seconds

    def evaluate(self, split: str = "test"):
        losses, accs = self.evaluations[split](self.state.params, *self.data[EVALUATED[split]])
        return np.atleast_1d(losses), np.atleast_1d(accs)

    def member_round(self, member: int):
        """(a round program taking (state, x, y, key), the member's trained state)."""
        return self.round_program, self.state

    def params(self) -> int:
        return sum(p.size for p in jax.tree.leaves(self.state.params))


class _Vmapped:
    """A population's program: the members on a vmapped axis sharded over the devices, their
    per-member values as inputs; rows are members, then padding up to the mesh."""

    def __init__(self, configs: list[TrialConfig], dataset: Dataset,
                 device_list: list[jax.Device], protocol: TimingProtocol):
        self.members, self.first, self.protocol = configs, configs[0], protocol
        self.dataset, self.device_list, self.device = dataset, device_list, device_list[0]
        self._lay_out(list(range(len(configs))))
        padded = self._padded_members()
        models = [build_model(c) for c in padded]  # each member's seed: its initial weights
        # The CPU LSTM kernel takes the population axis itself (models/fused_lstm.py): the
        # one form measured faster than training the members one at a time.
        self.member = self._member_program(models[0])
        self.program = population_program(self.member)
        params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(nnx.split(m)[1] for m in models))
        hyper = self._hyper(padded)
        self._members_hyper = self._hyper(configs)  # each member's own values, for its rounds
        keys = seed_keys(padded)
        state = jax.jit(self.program.init)(params, hyper)
        self.data = devices.replicate(place_dataset(dataset, self.device), self.mesh)
        self.state, self.hyper, self.keys = devices.shard_members((state, hyper, keys), self.mesh)
        self._fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))

    def _lay_out(self, members: list[int]) -> None:
        """The program's rows: these members (indices into `self.members`) in order, then
        padding up to a multiple of the mesh's devices."""
        self.rows = members
        self.mesh = devices.population_mesh(self.device_list, len(members))
        self.padded = devices.padded_size(len(members), self.mesh)

    @property
    def device_count(self) -> int:
        return self.mesh.size if self.mesh else 1

    def _padded_members(self) -> list[TrialConfig]:
        """The members, then copies of the last one up to a multiple of the devices (never
        recorded: they only fill the mesh)."""
        return list(self.members) + [self.members[-1]] * (self.padded - len(self.members))

    def _hyper(self, configs) -> Hyper:
        """The members' per-member values as arrays."""
        column = lambda name: jnp.asarray([getattr(c, name) for c in configs], jnp.float32)  # noqa: E731
        return Hyper(learning_rate=column("learning_rate"), l1=column("l1"), l2=column("l2"),
                     dropout=column("dropout") if self.first.dropout > 0 else None)

    def _member_program(self, model: nnx.Module):
        graphdef, _ = nnx.split(model)
        tx_of = injected(registry.OPTIMIZERS[self.first.optimizer].make)
        return build_member_program(graphdef, tx_of, self.first.batch_size,
                                    penalized=any(c.l1 or c.l2 for c in self.members),
                                    uses_dropout=self.first.dropout > 0,
                                    round_steps=self.protocol.round_steps)

    def compile(self) -> dict:
        figures = self._compile_population()
        one = self._member_state(0)
        x, y = place_dataset(self.dataset, self.device)[:2]
        key = jax.device_put(self.keys[0], self.device)
        self.round_program, figures["round_compile_s"] = compile_ahead(
            self.member.train_round, one, self._member_hyper(0), x, y, key, donate_argnums=0)
        self.program_memory = costs.program_memory(self.epoch_program)
        costs.check_fits(self.program_memory, self.device, f"a population of {self.padded}")
        return figures

    def _compile_population(self) -> dict:
        """The epoch and evaluation programs for the current rows, and their compile seconds."""
        x, y = self.data[:2]
        active = devices.shard_members(jnp.ones(self.padded, bool), self.mesh)
        self.epoch_program, compile_s = compile_ahead(self.program.train_epoch, self.state,
                                                      self.hyper, active, x, y, self.keys,
                                                      donate_argnums=0)
        self.evaluations, eval_s = compile_evaluations(self.program.evaluate, self.state.params,
                                                       self.data)
        return {"compile_s": compile_s, "eval_compile_s": eval_s}

    def train_epoch(self, rows_active: np.ndarray, index: int):
        padding = np.ones(self.padded - len(self.rows), bool)  # trains on: a real member's values
        active = devices.shard_members(jnp.asarray(np.concatenate([rows_active, padding])),
                                       self.mesh)
        keys = devices.shard_members(self._fold(self.keys, index), self.mesh)
        (self.state, losses, accs), seconds = timed_call(
            self.epoch_program, self.state, self.hyper, active, *self.data[:2], keys)
        return np.asarray(losses), np.asarray(accs), seconds

    def evaluate(self, split: str = "test"):
        return tuple(np.asarray(v) for v in self.evaluations[split](
            self.state.params, *self.data[EVALUATED[split]]))

    def shrink(self, live: list[int]) -> dict:
        """The population of `live` members only: their rows of the state, values and keys
        gathered, laid out anew (the data placed again only if the devices changed), and the
        two programs compiled for it; returns their compile figures."""
        rows = np.asarray([self.rows.index(m) for m in live])
        devices_before = self.device_count
        self._lay_out(live)
        rows = np.concatenate([rows, np.repeat(rows[-1], self.padded - len(live))])
        self.state, self.hyper, self.keys = (
            self._place(jax.tree.map(lambda leaf: leaf[rows], tree))
            for tree in (self.state, self.hyper, self.keys))
        if self.device_count != devices_before:  # else the data is in place already
            self.data = devices.replicate(place_dataset(self.dataset, self.device), self.mesh)
        return self._compile_population()

    def _place(self, tree):
        if self.mesh is None:
            return jax.device_put(tree, self.device)
        return devices.shard_members(tree, self.mesh)

    def _member_state(self, row: int):
        return jax.device_put(jax.tree.map(lambda leaf: leaf[row], self.state), self.device)

    def _member_hyper(self, member: int) -> Hyper:
        """Member `member`'s values alone (not padded), on the first device."""
        return jax.device_put(jax.tree.map(lambda leaf: leaf[member], self._members_hyper),
                              self.device)

    def member_round(self, member: int):
        one_hyper = self._member_hyper(member)
        train_round = lambda s, xs, ys, k: self.round_program(s, one_hyper, xs, ys, k)  # noqa: E731
        return train_round, self._member_state(self.rows.index(member))

    def params(self) -> int:
        """One member's parameter count, from the stacked shapes (no copy of a member)."""
        return sum(math.prod(leaf.shape[1:]) for leaf in jax.tree.leaves(self.state.params))


# ---------------------------------------------------------------- the one training loop


class _Training:
    """The one training loop: a unit's programs (one, or a halving group's several) built,
    trained epoch by epoch in turn, pruned at the rungs, then each finished on its own."""

    def __init__(self, unit: Unit, dataset: Dataset, device_list: list[jax.Device],
                 protocol: TimingProtocol, peak_flops: float | None, on_epoch: OnEpoch,
                 pruning: Pruning | None):
        self.unit, self.dataset, self.device_list = unit, dataset, device_list
        self.on_epoch, self.pruning = on_epoch, pruning
        self.programs = [_UnitTraining(part, dataset, device_list, protocol, peak_flops)
                         for part in unit.programs]
        for program in self.programs:
            for record in program.records:
                record.pruning = pruning.to_json() if pruning else None

    def run(self) -> list[Record]:
        first = self.unit.members[0]
        if first.batch_size > len(self.dataset.y_train):
            raise ValueError(f"batch size {first.batch_size} exceeds the "
                             f"{len(self.dataset.y_train)} training examples")
        if self.pruning and self.dataset.y_val is None:
            raise ValueError("pruning chooses on a validation split, and this data holds none")
        with jax.default_device(self.device_list[0]), \
                costs.TrialMemory(self.device_list[0]) as memory:
            for program in self.programs:
                program.build_and_compile()
            self._train(first.epochs)
        figures = memory.figures()
        if len(self.programs) > 1:  # the unit's memory: its programs were resident together
            figures["programs_resident"] = len(self.programs)
        for program in self.programs:
            program.close(figures)
        return [r for program in self.programs for r in program.records]

    def failed(self, exc: BaseException) -> list[Record]:
        """Every member of every program recorded `failed`, with what it had done so far."""
        return [r for program in self.programs for r in program.failed(exc)]

    def _train(self, epochs: int) -> None:
        rungs = set(self.pruning.rungs(epochs)) if self.pruning else set()
        for index in range(epochs):
            live = [p for p in self.programs if p.active.any()]
            if not live:
                break
            test_accs = [acc for p in live for acc in p.train_epoch(index)]
            self._report_epoch(index, test_accs)
            if index + 1 in rungs:
                self._prune(index + 1)
            for program in live:
                program.maybe_retire(index)
        for program in self.programs:
            program.end_training()

    def _prune(self, epoch: int) -> None:
        """Stops the members of the configurations that lose at this rung (bench.contract.pruning)."""
        members = [(p, m) for p in self.programs for m in range(len(p.records))]
        entries = [Entry(p.records[m].config.config_id, bool(p.active[m]),
                         p.records[m].history[-1].get("validation_accuracy")
                         if p.active[m] else None) for p, m in members]
        for index in to_stop(entries, self.pruning.eta):
            program, member = members[index]
            program.prune(member, epoch)

    def _report_epoch(self, index: int, test_accs: list) -> None:
        [program, *others] = self.programs
        if program.alone and not others:
            self.on_epoch(program.records[0].history[-1])
        else:
            self.on_epoch({"epoch": index + 1, "members": len(test_accs),
                           "test_accuracy": float(max(test_accs))})


class _UnitTraining:
    """One program's compiles, epochs, divergence, pruning, retiring and members' timed rounds."""

    def __init__(self, unit: Unit, dataset: Dataset, device_list: list[jax.Device],
                 protocol: TimingProtocol, peak_flops: float | None):
        self.unit, self.members, self.protocol = unit, list(unit.members), protocol
        self.first, self.dataset, self.device_list = unit.members[0], dataset, device_list
        self.peak_flops = peak_flops
        self.alone = unit.size == 1
        self.active = np.ones(unit.size, bool)  # per member: trains on (not diverged, not pruned)
        self.epoch_s, self.samples, self.trained = [], [], []
        self.spent_s = 0.0  # this program's own time: its wall time beside a unit's others
        self.validating = dataset.y_val is not None  # a validation split, evaluated each epoch
        self.records = [Record(config=c, train_examples=len(dataset.y_train),
                               test_examples=len(dataset.y_test),
                               validation_examples=len(dataset.y_val) if self.validating else None,
                               steps_per_epoch=len(dataset.y_train) // c.batch_size)
                        for c in self.members]
        self.shared: dict = {"group": unit.group, "size": unit.size}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def _clock(self):
        """Adds the block's seconds to this program's own time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spent_s += time.perf_counter() - start

    def close(self, memory: dict) -> None:
        """After training: the memory figures, each ok member's timed rounds, the wall time
        (this program's own time) and the records' shared figures."""
        self.shared["memory"] = {"program": self.form.program_memory, **memory}
        with self._clock():
            self._time_members()
        self.shared["wall_s"] = round(self.spent_s, 3)
        self._finish()

    def failed(self, exc: BaseException) -> list[Record]:
        """Every member recorded `failed`, with what it had done so far."""
        for record in self.records:
            record.status, record.error = "failed", failure_text(exc)
            record.traceback = "".join(traceback.format_exception(exc, limit=8))
            record.population = PopulationFacts(self.unit.group, self.unit.size,
                                                self.records.index(record))
        if self.alone:
            self.records[0].wall_s = round(time.perf_counter() - self.start, 3)
        return self.records

    # ------------------------------------------------------------ building

    def build_and_compile(self) -> None:
        with self._clock():
            self._build_and_compile()

    def _build_and_compile(self) -> None:
        form = _Solo if self.alone else _Vmapped
        self.form = form(self.members, self.dataset, self.device_list, self.protocol)
        self.shared["devices"] = self.form.device_count
        with CacheHits() as cache:
            compiled = self.form.compile()
        self.shared |= {name: round(seconds, 4) for name, seconds in compiled.items()}
        self.shared["compile_cache_hits"] = cache.hits
        x, y = place_dataset(self.dataset, self.device_list[0])[:2]
        flops = step_flops(self.first, self.protocol, x, y)
        params = self.form.params()
        for record in self.records:
            record.params, record.flops_per_step = params, flops

    # ------------------------------------------------------------ training

    def train_epoch(self, index: int) -> list[float]:
        """Trains and evaluates epoch `index` of the members still training; their test
        accuracies (for progress displays)."""
        with self._clock():
            return self._train_epoch(index)

    def _train_epoch(self, index: int) -> list[float]:
        active, training = self.active, self.active.copy()
        losses, accs, seconds = self.form.train_epoch(training[self.form.rows], index)
        test_losses, test_accs = self.form.evaluate()
        val = self.form.evaluate("validation") if self.validating else None
        val = None if val is None else np.stack(val, axis=-1)  # row -> (loss, accuracy)
        self.epoch_s.append(round(seconds, 4))
        self.trained.append(int(training.sum()))
        self.samples.append(self.trained[-1] * self.records[0].steps_per_epoch
                            * self.first.batch_size / seconds)
        rows = [(row, m) for row, m in enumerate(self.form.rows) if training[m]]
        for row, member in rows:
            active[member] = self._after_epoch(
                self.records[member], index, float(losses[row]), float(accs[row]),
                float(test_losses[row]), float(test_accs[row]), seconds,
                validation=None if val is None else tuple(map(float, val[row])))
        return [float(test_accs[row]) for row, _ in rows]

    def prune(self, member: int, epoch: int) -> None:
        """Stops `member` at this rung: it trains no more, and is recorded `pruned` there."""
        self.active[member] = False
        self.records[member].status = "pruned"
        self.records[member].pruned_at_epoch = epoch

    def end_training(self) -> None:
        epoch_s, samples = self.epoch_s, self.samples
        self.shared |= {"epoch_s": epoch_s, "first_epoch_s": epoch_s[0],
                        "steady_epoch_s": steady(epoch_s), "members_per_epoch": self.trained,
                        "member_samples_per_s": round(float(np.median(samples[1:] or samples)), 1)}

    def _after_epoch(self, record: Record, index: int, loss: float, acc: float,
                     test_loss: float, test_acc: float, seconds: float, *,
                     validation: tuple[float, float] | None = None) -> bool:
        """Appends the member's epoch (with its validation loss and accuracy where the run
        holds a split out); returns whether it trains on (False once diverged)."""
        clock = "epoch_s" if self.alone else "population_epoch_s"  # shared time says so
        entry = {"epoch": index + 1, "train_loss": loss, "train_accuracy": acc,
                 "test_loss": test_loss, "test_accuracy": test_acc}
        if validation is not None:
            record.validation_loss, record.validation_accuracy = validation
            entry |= {"validation_loss": validation[0], "validation_accuracy": validation[1]}
        record.history.append({**entry, clock: round(seconds, 4)})
        record.test_loss, record.test_accuracy = test_loss, test_acc
        if not (math.isfinite(loss) and math.isfinite(test_loss)):
            record.status = "diverged"
            return False
        return True

    def maybe_retire(self, index: int) -> None:
        """Drops the rows of members that stopped (diverged or pruned) where the epochs left
        would cost more than compiling the programs again for fewer rows (a trial alone has
        simply stopped)."""
        live = [m for m in self.form.rows if self.active[m]]
        if not live or self.alone or len(live) == len(self.form.rows):
            return
        with self._clock():
            self._retire(live, self.epoch_s[-1], index)

    def _retire(self, live: list[int], seconds: float, index: int) -> None:
        form = self.form
        after = devices.padded_size(len(live), devices.population_mesh(self.device_list,
                                                                         len(live)))
        latest = (self.shared.get("retired") or [self.shared])[-1]
        if not worth_retiring(form.padded, after, seconds, self.first.epochs - index - 1,
                              latest["compile_s"] + latest["eval_compile_s"]):
            return
        with CacheHits() as cache:
            compiled = form.shrink(live)
        self.shared.setdefault("retired", []).append(
            {"after_epoch": index + 1, "members": len(live), "padded": form.padded,
             "devices": form.device_count, "compile_s": round(compiled["compile_s"], 4),
             "eval_compile_s": round(compiled["eval_compile_s"], 4),
             "compile_cache_hits": cache.hits})

    # ------------------------------------------------------------ members alone

    def _time_members(self) -> None:
        """Each ok member's own timed rounds, alone, after training and evaluation."""
        x, y = place_dataset(self.dataset, self.device_list[0])[:2]
        for index, record in enumerate(self.records):
            if record.status != "ok":
                continue
            train_round, state = self.form.member_round(index)
            time_alone(train_round, state, x, y, seed_key(record.config), self.protocol, record)
            round_figures(record, record.config, self.protocol, self.peak_flops)

    def _finish(self) -> None:
        """A unit of one keeps its figures as its own; a population's members get the shared
        ones under `population`, with their index, their clock's time to accuracy and the
        group's speed-up over training one at a time."""
        if self.alone:
            self._finish_alone(self.records[0])
            return
        shared = dict(self.shared, speedup=self._speedup(), **self._throughput())
        for index, record in enumerate(self.records):
            clock = [{**h, "epoch_s": h["population_epoch_s"]} for h in record.history]
            tta = time_to_accuracy(clock, self.protocol.targets, shared["compile_s"])
            tta = with_recompiles(tta, shared.get("retired", []))
            record.population = PopulationFacts(**shared, index=index, time_to_accuracy=tta)

    def _finish_alone(self, record: Record) -> None:
        shared = self.shared
        record.compile_s, record.eval_compile_s = shared["compile_s"], shared["eval_compile_s"]
        record.round_compile_s = shared["round_compile_s"]
        record.compile_cache_hits = shared["compile_cache_hits"]
        record.memory = dict(shared["memory"])
        record.epoch_s = list(shared["epoch_s"])
        record.first_epoch_s, record.steady_epoch_s = shared["first_epoch_s"], shared["steady_epoch_s"]
        record.time_to_accuracy = time_to_accuracy(record.history, self.protocol.targets,
                                                   record.compile_s or 0.0)
        record.wall_s = shared["wall_s"]
        record.population = PopulationFacts(self.unit.group)

    def _steady_epochs(self) -> tuple[list[int], float]:
        """The epochs the steady figures cover, those after the first (else the only one),
        and their wall time."""
        epochs = list(range(1, len(self.shared["epoch_s"]))) or [0]
        return epochs, sum(self.shared["epoch_s"][e] for e in epochs)

    def _throughput(self) -> dict:
        """The population's FLOP/s over its steady epochs, counting the members that trained
        in each (not masked or padding rows), and their share of the peak of every device
        it ran on (the calibrated peak is one device's)."""
        flops = self.records[0].flops_per_step
        epochs, seconds = self._steady_epochs()
        if not (flops and seconds):
            return {}
        member_epochs = sum(self.shared["members_per_epoch"][e] for e in epochs)
        achieved = round(flops * self.records[0].steps_per_epoch * member_epochs / seconds, 1)
        peak = self.peak_flops * self.shared["devices"] if self.peak_flops else None
        return {"achieved_flops": achieved,
                "peak_fraction": round(achieved / peak, 4) if peak else None}

    def _speedup(self) -> float | None:
        """How much faster the population's steady epochs went than its members would have
        one at a time: each member's own epoch time (steps x its median step time, from its
        timed rounds) for every steady epoch it trained in, summed, over the epochs' wall
        time. Alone, a diverged member stops after the epoch it diverged in, so it counts
        for the epochs up to that one only, at the timed members' mean (it has no timed
        rounds); the population's cost of carrying it on, masked, shows as a lower figure."""
        own = [r.steps_per_epoch * r.step_ms / 1000 if r.step_ms else None for r in self.records]
        timed = [t for t in own if t is not None]
        epochs, seconds = self._steady_epochs()
        if not timed or not seconds:
            return None
        mean = sum(timed) / len(timed)
        alone = sum(mean if t is None else t
                    for t, record in zip(own, self.records) for e in epochs
                    if e < len(record.history))
        return round(alone / seconds, 2)


# ---------------------------------------------------------------- figures and policies


def time_alone(train_round, state, x, y, key, protocol: TimingProtocol, record: Record) -> None:
    """Burn-in, then `repeats` synchronised rounds on the trained state (after evaluation)."""
    box = [state]
    round_key = jax.random.fold_in(key, ROUND_KEY)

    def one_round():
        box[0], loss, _ = train_round(box[0], x, y, round_key)
        return box[0], loss

    with LoadMeter() as load:
        record.rounds_s = [round(t, 5) for t in
                           time_rounds(one_round, repeats=protocol.repeats, burn_in=protocol.burn_in)]
    record.other_cpu_cores, record.busy = load.other_cores(), load.busy()


def steady(epoch_s: list[float]) -> float:
    """The steady epoch time: the median of the epochs after the first (the first alone)."""
    return round(statistics.median(epoch_s[1:] or epoch_s), 4)


def round_figures(record: Record, config: TrialConfig, protocol: TimingProtocol,
                  peak_flops: float | None) -> None:
    """Round statistics, step time, samples/s, FLOP/s and % of peak from the timed rounds."""
    record.round_steps = min(protocol.round_steps, record.steps_per_epoch)
    if not record.rounds_s:
        return
    record.round_stats = {k: (round(v, 6) if isinstance(v, float) else v)
                          for k, v in summarize(record.rounds_s).items()}
    step_s = record.round_stats["median"] / record.round_steps
    record.step_ms = round(1000 * step_s, 4)
    record.samples_per_s = round(config.batch_size / step_s, 1)
    if record.flops_per_step:
        record.achieved_flops = round(record.flops_per_step / step_s, 1)
        if peak_flops:
            record.peak_fraction = round(record.achieved_flops / peak_flops, 4)


def worth_retiring(rows_now: int, rows_after: int, epoch_s: float, epochs_left: int,
                   compile_s: float) -> bool:
    """Whether to drop diverged members' rows for the epochs left: the epoch time they
    cost (taken as proportional to the rows, as on a CPU; an accelerator with room to
    spare saves less) against compiling the two programs again for fewer rows."""
    if epochs_left <= 0 or rows_after >= rows_now:
        return False
    return epoch_s * (1 - rows_after / rows_now) * epochs_left > compile_s


def with_recompiles(tta: dict, retired: list[dict]) -> dict:
    """Time to accuracy on the population's clock, the recompiles after retiring members
    added to `with_compile_s` of each target first reached after them."""
    def hit_after(hit: dict | None) -> dict | None:
        if hit is None:
            return None
        extra = sum(r["compile_s"] for r in retired if r["after_epoch"] < hit["epoch"])
        return {**hit, "with_compile_s": round(hit["with_compile_s"] + extra, 4)}
    return {target: hit_after(hit) for target, hit in tta.items()}
