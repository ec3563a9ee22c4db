"""run_unit: train a work unit (one trial alone, or a population) into records.

A population is trials of one group (bench/run/groups.py) trained together: one
compiled program whose members sit on a vmapped axis, their per-member values
(learning rate, penalties, dropout rate, data order and initial parameters from
their seeds) as inputs, the data set resident once and shared. Each member ends
as its own record with the key it has when trained alone.

Honest figures: what the members share (compile times, epoch wall times,
member-samples per second, time to accuracy on that clock) is recorded under
the record's `population`, never as the member's own. Each member's own step
time comes from timed rounds it runs alone, after training, with a one-member
program compiled once for the group.

A member whose loss becomes NaN/inf is recorded `diverged` at that epoch and
frozen while the others train on; where the epochs left would take longer than
compiling the programs again, its rows are dropped from the population
(`population.retired`). A population that fails as a whole (out of
memory, say) is retried as two halves before any member is recorded `failed`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.engine import costs, devices
from bench.contract import registry
from bench.engine.data import Dataset
from bench.contract.units import Unit, split_evenly
from bench.contract.schema import Record, TimingProtocol, TrialConfig
from bench.engine.steps import Hyper, build_member_program, injected, population_program
from bench.engine.timing import CacheHits, compile_ahead, time_to_accuracy, timed_call
from bench.engine.trial import (build_model, place_dataset, round_figures, run_trial, steady,
                         time_alone)

OnEpoch = Callable[[dict], None]


def run_unit(unit: Unit, dataset: Dataset, device_list: list[jax.Device],
             protocol: TimingProtocol = TimingProtocol(), *, peak_flops: float | None = None,
             on_epoch: OnEpoch | None = None) -> list[Record]:
    """The records of `unit`'s trials; failures come back as records, never raised."""
    if unit.alone:
        record = run_trial(unit.members[0], dataset, device_list[0], protocol,
                           peak_flops=peak_flops, on_epoch=on_epoch)
        record.population = {"group": unit.group, "size": 1, "index": 0}
        return [record]
    return run_population(unit, dataset, device_list, protocol, peak_flops=peak_flops,
                          on_epoch=on_epoch)


def run_population(unit: Unit, dataset: Dataset, device_list: list[jax.Device],
                   protocol: TimingProtocol, *, peak_flops: float | None = None,
                   on_epoch: OnEpoch | None = None) -> list[Record]:
    """Trains `unit`'s members together; a failure of the whole retries two halves."""
    try:
        return _Population(unit, dataset, device_list, protocol, peak_flops,
                           on_epoch or (lambda _: None)).run()
    except Exception as exc:  # noqa: BLE001 - the members are retried, then recorded
        halves = split_evenly(list(unit.members), math.ceil(unit.size / 2))
        note = f"population of {unit.size} failed ({type(exc).__name__}: {exc}); retried as " \
               f"{' and '.join(str(len(h)) for h in halves)}"
        out = []
        for half in halves:
            part = Unit(unit.group, tuple(half), alone=len(half) == 1)
            for record in run_unit(part, dataset, device_list, protocol, peak_flops=peak_flops,
                                   on_epoch=on_epoch):
                record.population = {**(record.population or {}), "retry": note}
                out.append(record)
        return out


class _Population:
    """One population's training, evaluation and members' timed rounds."""

    def __init__(self, unit: Unit, dataset: Dataset, device_list: list[jax.Device],
                 protocol: TimingProtocol, peak_flops: float | None, on_epoch: OnEpoch):
        self.unit, self.members, self.protocol = unit, unit.members, protocol
        self.first = unit.members[0]
        self.dataset, self.peak_flops, self.on_epoch = dataset, peak_flops, on_epoch
        self.device_list, self.device = device_list, device_list[0]
        self._lay_out(list(range(unit.size)))
        self.shared: dict = {"group": unit.group, "size": unit.size,
                             "devices": self._device_count}

    def _lay_out(self, members: list[int]) -> None:
        """The program's rows: these members (indices into `self.members`) in order, then
        padding up to a multiple of the mesh's devices."""
        self.row_members = members
        self.mesh = devices.population_mesh(self.device_list, len(members))
        self.padded = devices.padded_size(len(members), self.mesh)

    @property
    def _device_count(self) -> int:
        return self.mesh.size if self.mesh else 1

    def run(self) -> list[Record]:
        start = time.perf_counter()
        records = [self._record(i, c) for i, c in enumerate(self.members)]
        with costs.TrialMemory(self.device) as memory:
            state, arrays = self._compile(records)
            state = self._train(state, arrays, records)
        self.shared["memory"] = {"program": self.memory_of_program, **memory.figures()}
        self._time_members(state, records)
        self.shared["wall_s"] = round(time.perf_counter() - start, 3)
        self._finish(records)
        return records

    # ------------------------------------------------------------ building

    def _record(self, index: int, config: TrialConfig) -> Record:
        return Record(config=config, train_examples=len(self.dataset.y_train),
                      test_examples=len(self.dataset.y_test),
                      steps_per_epoch=len(self.dataset.y_train) // config.batch_size)

    def _hyper(self, configs) -> Hyper:
        """The members' per-member values as arrays (padding repeats the last member)."""
        column = lambda name: jnp.asarray([getattr(c, name) for c in configs], jnp.float32)  # noqa: E731
        return Hyper(learning_rate=column("learning_rate"), l1=column("l1"), l2=column("l2"),
                     dropout=column("dropout") if self._uses_dropout else None)

    @property
    def _uses_dropout(self) -> bool:
        return self.first.dropout > 0

    def _member_program(self, model: nnx.Module):
        graphdef, _ = nnx.split(model)
        tx_of = injected(registry.OPTIMIZERS[self.first.optimizer].make)
        return build_member_program(graphdef, tx_of, self.first.batch_size,
                                    penalized=any(c.l1 or c.l2 for c in self.members),
                                    uses_dropout=self._uses_dropout,
                                    round_steps=self.protocol.round_steps)

    def _padded_members(self) -> list[TrialConfig]:
        """The members, then copies of the last one up to a multiple of the devices (never
        recorded: they only fill the mesh)."""
        return list(self.members) + [self.members[-1]] * (self.padded - self.unit.size)

    def _row_mask(self, members: np.ndarray) -> np.ndarray:
        """Per row of the program: whether it trains, from a per-member mask. Padding keeps
        training (its values are a real member's; it is never recorded)."""
        padding = np.ones(self.padded - len(self.row_members), bool)
        return np.concatenate([members[self.row_members], padding])

    def _compile(self, records: list[Record]):
        """Places data and the stacked initial states, and compiles the population's
        programs and the one-member round program."""
        if self.members[0].batch_size > len(self.dataset.y_train):
            raise ValueError(f"batch size {self.first.batch_size} exceeds the "
                             f"{len(self.dataset.y_train)} training examples")
        configs = self._padded_members()
        models = [build_model(c) for c in configs]  # each member's seed: its initial weights
        # The CPU LSTM kernel takes the population axis itself (models/fused_lstm.py): the
        # one form measured faster than training the members one at a time.
        self.member = self._member_program(models[0])
        self.program = population_program(self.member)
        params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(nnx.split(m)[1] for m in models))
        hyper = self._hyper(configs)
        keys = jax.vmap(jax.random.key)(jnp.asarray([c.seed for c in configs]))
        state = jax.jit(self.program.init)(params, hyper)
        data = devices.replicate(place_dataset(self.dataset, self.device), self.mesh)
        state, hyper, keys = devices.shard_members((state, hyper, keys), self.mesh)
        with CacheHits() as cache:
            compile_s, eval_compile_s = self._compile_population(state, hyper, keys, data)
            one = self._member_state(state, 0)
            key = jax.device_put(keys[0], self.device)
            self.train_round, round_compile_s = compile_ahead(
                self.member.train_round, one, self._member_hyper(hyper, 0),
                *place_dataset(self.dataset, self.device)[:2], key, donate_argnums=0)
        self.memory_of_program = costs.program_memory(self.epoch)
        costs.check_fits(self.memory_of_program, self.device, f"a population of {self.padded}")
        self.shared |= {"compile_s": round(compile_s, 4), "eval_compile_s": round(eval_compile_s, 4),
                        "round_compile_s": round(round_compile_s, 4),
                        "compile_cache_hits": cache.hits}
        n_params = sum(leaf.size for leaf in jax.tree.leaves(one.params))
        flops = self._step_flops(configs[0], one, self._member_hyper(hyper, 0), key)
        for record in records:
            record.params, record.flops_per_step = n_params, flops
        return state, (hyper, keys, data)

    def _compile_population(self, state, hyper, keys, data) -> tuple[float, float]:
        """Compiles the population's epoch and evaluation programs for the current rows;
        returns their compile seconds."""
        x, y, x_test, y_test = data
        active = devices.shard_members(jnp.ones(self.padded, bool), self.mesh)
        self.epoch, compile_s = compile_ahead(self.program.train_epoch, state, hyper, active,
                                              x, y, keys, donate_argnums=0)
        self.evaluate, eval_compile_s = compile_ahead(self.program.evaluate, state.params,
                                                      x_test, y_test)
        return compile_s, eval_compile_s

    def _step_flops(self, config, state, hyper, key) -> float | None:
        """One member's FLOPs per step, its time loop (if any) unrolled for the count."""
        model = build_model(config)
        if hasattr(model, "unroll"):
            model.unroll = True
        program = self._member_program(model)
        x, y = place_dataset(self.dataset, self.device)[:2]
        return costs.flops(jax.jit(program.train_round).lower(state, hyper, x, y, key))

    # ------------------------------------------------------------ training

    def _train(self, state, arrays, records: list[Record]):
        hyper, keys, data = arrays
        active = np.ones(self.unit.size, bool)  # per member: trains on (False once diverged)
        epoch_s, samples, trained = [], [], []
        fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))
        for index in range(self.first.epochs):
            training = active.copy()
            row_active = devices.shard_members(jnp.asarray(self._row_mask(training)), self.mesh)
            epoch_keys = devices.shard_members(fold(keys, index), self.mesh)
            (state, losses, accs), seconds = timed_call(self.epoch, state, hyper, row_active,
                                                        data[0], data[1], epoch_keys)
            test_losses, test_accs = (np.asarray(v)
                                      for v in self.evaluate(state.params, *data[2:]))
            epoch_s.append(round(seconds, 4))
            trained.append(int(training.sum()))
            samples.append(trained[-1] * records[0].steps_per_epoch * self.first.batch_size
                           / seconds)
            rows = [(row, m) for row, m in enumerate(self.row_members) if training[m]]
            for row, member in rows:
                active[member] = self._after_epoch(
                    records[member], index, float(losses[row]), float(accs[row]),
                    float(test_losses[row]), float(test_accs[row]), seconds)
            self.on_epoch({"epoch": index + 1, "members": trained[-1],
                           "test_accuracy": float(max(test_accs[row] for row, _ in rows))})
            if not active.any():
                break
            live = [m for m in self.row_members if active[m]]
            if len(live) < len(self.row_members) and worth_retiring(
                    self.padded, self._padded_size(len(live)), seconds,
                    self.first.epochs - index - 1, self._last_compile_s):
                state, hyper, keys, data = self._retire(live, state, hyper, keys, data,
                                                         index + 1)
        self.shared |= {"epoch_s": epoch_s, "first_epoch_s": epoch_s[0],
                        "steady_epoch_s": steady(epoch_s), "members_per_epoch": trained,
                        "member_samples_per_s": round(float(np.median(samples[1:] or samples)), 1)}
        return state

    # ------------------------------------------------------------ retiring diverged members

    def _padded_size(self, members: int) -> int:
        return devices.padded_size(members, devices.population_mesh(self.device_list, members))

    @property
    def _last_compile_s(self) -> float:
        """What the population's programs took to compile last (a smaller population's
        cost about as much)."""
        latest = (self.shared.get("retired") or [self.shared])[-1]
        return latest["compile_s"] + latest["eval_compile_s"]

    def _retire(self, live: list[int], state, hyper, keys, data, after_epoch: int):
        """The population of `live` members only: their rows of the state, values and keys
        gathered, laid out anew (the data placed again only if the devices changed), and
        the two programs compiled for it. A diverged member's rows are dropped (its record
        is already complete); the others' values are theirs."""
        rows = np.asarray([self.row_members.index(m) for m in live])
        devices_before = self._device_count
        self._lay_out(live)
        rows = np.concatenate([rows, np.repeat(rows[-1], self.padded - len(live))])
        state, hyper, keys = (self._place(jax.tree.map(lambda leaf: leaf[rows], tree))
                              for tree in (state, hyper, keys))
        if self._device_count != devices_before:  # else the data is in place already
            data = devices.replicate(place_dataset(self.dataset, self.device), self.mesh)
        with CacheHits() as cache:
            compile_s, eval_compile_s = self._compile_population(state, hyper, keys, data)
        self.shared.setdefault("retired", []).append(
            {"after_epoch": after_epoch, "members": len(live), "padded": self.padded,
             "devices": self._device_count, "compile_s": round(compile_s, 4),
             "eval_compile_s": round(eval_compile_s, 4), "compile_cache_hits": cache.hits})
        return state, hyper, keys, data

    def _place(self, tree):
        """`tree`'s member-axis arrays sharded over the current mesh, or on the one device."""
        if self.mesh is None:
            return jax.device_put(tree, self.device)
        return devices.shard_members(tree, self.mesh)

    def _after_epoch(self, record: Record, index: int, loss: float, acc: float,
                     test_loss: float, test_acc: float, seconds: float) -> bool:
        """Appends the member's epoch; returns whether it trains on (False once diverged)."""
        record.history.append({"epoch": index + 1, "train_loss": loss, "train_accuracy": acc,
                               "test_loss": test_loss, "test_accuracy": test_acc,
                               "population_epoch_s": round(seconds, 4)})
        record.test_loss, record.test_accuracy = test_loss, test_acc
        if not (math.isfinite(loss) and math.isfinite(test_loss)):
            record.status = "diverged"
            return False
        return True

    # ------------------------------------------------------------ members alone

    def _member_state(self, state, row: int):
        """The state in `row`, on the first device, as a program of one member takes it."""
        return jax.device_put(jax.tree.map(lambda leaf: leaf[row], state), self.device)

    def _member_hyper(self, hyper: Hyper, index: int) -> Hyper:
        return jax.device_put(jax.tree.map(lambda leaf: leaf[index], hyper), self.device)

    def _time_members(self, state, records: list[Record]) -> None:
        """Each ok member's own timed rounds, alone, with the group's one-member program."""
        x, y = place_dataset(self.dataset, self.device)[:2]
        hyper = self._hyper(self.members)
        for index, record in enumerate(records):
            if record.status != "ok":
                continue
            one_hyper = self._member_hyper(hyper, index)
            train_round = lambda s, xs, ys, k, h=one_hyper: self.train_round(s, h, xs, ys, k)  # noqa: E731
            key = jax.random.key(record.config.seed)
            own = self._member_state(state, self.row_members.index(index))
            time_alone(train_round, own, x, y, key, self.protocol, record)
            round_figures(record, record.config, self.protocol, self.peak_flops)

    def _finish(self, records: list[Record]) -> None:
        """Each member's population figures: the shared ones, its index, its clock's
        time to accuracy, and the group's speed-up over training one at a time."""
        shared = dict(self.shared, speedup=self._speedup(records), **self._throughput(records))
        for index, record in enumerate(records):
            clock = [{**h, "epoch_s": h["population_epoch_s"]} for h in record.history]
            tta = time_to_accuracy(clock, self.protocol.targets, shared["compile_s"])
            tta = with_recompiles(tta, shared.get("retired", []))
            record.population = {**shared, "index": index, "time_to_accuracy": tta}

    def _steady_epochs(self) -> tuple[list[int], float]:
        """The epochs the steady figures cover, those after the first (else the only one),
        and their wall time."""
        epochs = list(range(1, len(self.shared["epoch_s"]))) or [0]
        return epochs, sum(self.shared["epoch_s"][e] for e in epochs)

    def _throughput(self, records: list[Record]) -> dict:
        """The population's FLOP/s over its steady epochs, counting the members that trained
        in each (not masked or padding rows), and their share of the peak of every device
        it ran on (the calibrated peak is one device's)."""
        flops = records[0].flops_per_step
        epochs, seconds = self._steady_epochs()
        if not (flops and seconds):
            return {}
        member_epochs = sum(self.shared["members_per_epoch"][e] for e in epochs)
        steps = records[0].steps_per_epoch * member_epochs
        achieved = round(flops * steps / seconds, 1)
        peak = self.peak_flops * self.shared["devices"] if self.peak_flops else None
        return {"achieved_flops": achieved,
                "peak_fraction": round(achieved / peak, 4) if peak else None}

    def _speedup(self, records: list[Record]) -> float | None:
        """How much faster the population's steady epochs went than its members would have
        one at a time: each member's own epoch time (steps x its median step time, from its
        timed rounds) for every steady epoch it trained in, summed, over the epochs' wall
        time. Alone, a diverged member stops after the epoch it diverged in, so it counts
        for the epochs up to that one only, at the timed members' mean (it has no timed
        rounds); the population's cost of carrying it on, masked, shows as a lower figure."""
        own = [r.steps_per_epoch * r.step_ms / 1000 if r.step_ms else None for r in records]
        timed = [t for t in own if t is not None]
        epochs, seconds = self._steady_epochs()
        if not timed or not seconds:
            return None
        mean = sum(timed) / len(timed)
        alone = sum(mean if t is None else t
                    for t, record in zip(own, records) for e in epochs if e < len(record.history))
        return round(alone / seconds, 2)


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
