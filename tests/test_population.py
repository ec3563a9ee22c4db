"""Populations: which trials train together, and that training together changes nothing.

A member of a population must end where the same trial trained alone ends (to float
tolerance): same parameters, same per-epoch losses and accuracies, same key. The
program-level cases are expanded over the model families and over optimizers with
and without extra state; the run-level cases go through bench.engine.training itself.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.run import groups
from bench.engine import training as population
from bench.contract import registry
from bench.engine.data import Dataset
from bench.run.groups import Unit, group_id, plan_units, split_evenly
from bench.engine.training import train_unit as run_population, with_recompiles, worth_retiring
from bench.read.render.csv import render_csv
from bench.read.render.populations import _members_cell, populations_table
from bench.read.render.runs import Run
from bench.contract.facts import PopulationFacts, RunHeader
from bench.contract.schema import AXES, TimingProtocol, make_config
from bench.engine.steps import (Hyper, Penalty, build_member_program, build_program, injected,
                         population_program)
from bench.engine.training import build_model, run_trial
from models import MODELS
from conftest import quick_first
from test_training import X_TRAIN, Y_TRAIN, synthetic

REPO = Path(__file__).resolve().parents[1]
TINY_UNITS = {"dense": 8, "conv": 2, "recurrent": 4}
BATCH = 32


def config(model="dense", **values):
    base = {"model": model, "units": TINY_UNITS[model], "activation": "relu",
            "optimizer": "adam", "batch_size": BATCH, "epochs": 2}
    return make_config({**base, **values})


# ---------------------------------------------------------------- groups


@pytest.mark.parametrize("a, b, together", [
    ({}, {"seed": 1}, True),
    ({}, {"learning_rate": 0.1}, True),
    ({"l1": 0.0}, {"l1": 1e-4}, True),
    ({"l2": 1e-5}, {"l2": 1e-3}, True),
    ({"dropout": 0.1}, {"dropout": 0.3}, True),
    ({}, {"dropout": 0.2}, False),  # dropout on for one only: another program
    ({}, {"units": 16}, False),
    ({}, {"depth": 3}, False),
    ({}, {"activation": "tanh"}, False),
    ({}, {"optimizer": "sgd"}, False),
    ({}, {"batch_size": 64}, False),
    ({}, {"epochs": 3}, False),
    ({}, {"model": "conv", "units": 2}, False),
    ({"model": "recurrent"}, {"model": "recurrent", "cell": "gru"}, False),
])
def test_trials_share_a_group_iff_they_differ_only_in_per_member_values(a, b, together):
    first, second = config(**a), config(**b)
    assert (groups.group_of(first) == groups.group_of(second)) is together
    assert (group_id(first) == group_id(second)) is together


def test_the_per_member_axes_are_the_ones_the_program_takes_as_inputs():
    assert set(groups.PER_MEMBER) == {"seed", "learning_rate", "l1", "l2", "dropout"}
    assert set(groups.PER_MEMBER) == set(Hyper._fields) | {"seed"}
    assert {a.name for a in AXES} == set(groups.PER_MEMBER) | set(groups.SHARED)


def lr_sweep(n: int, **values) -> list:
    return [config(learning_rate=10 ** (-4 + 3 * i / max(n - 1, 1)), **values) for i in range(n)]


@pytest.mark.parametrize("setting, cap, sizes", [
    ("off", 64, [1] * 10),
    ("auto", 64, [10]),
    ("auto", 4, [4, 3, 3]),
    (3, 64, [3, 3, 2, 2]),
    (1, 64, [1] * 10),
    (100, 64, [10]),  # an explicit N beyond the platform's cap is the user's to ask for
])
def test_plan_units_splits_a_group_evenly(setting, cap, sizes):
    configs = lr_sweep(10)
    units = plan_units(configs, setting, cap)
    assert [u.size for u in units] == sizes
    assert [c for u in units for c in u.members] == configs  # every trial once, in order
    assert all(u.alone == (u.size == 1) for u in units)


def test_plan_units_keeps_groups_apart_in_order_of_first_trial():
    dense, conv = lr_sweep(3), lr_sweep(2, model="conv", units=2)
    units = plan_units([dense[0], conv[0], dense[1], conv[1], dense[2]], "auto", 64)
    assert [(u.members[0].model, u.size) for u in units] == [("dense", 3), ("conv", 2)]


@pytest.mark.parametrize("n, most", [(10, 4), (7, 7), (7, 1), (1, 5), (64, 64), (65, 64)])
def test_split_evenly(n, most):
    chunks = split_evenly(list(range(n)), most)
    assert sum(chunks, []) == list(range(n))
    assert all(len(c) <= most for c in chunks)
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("off", "off"), ("8", 8), (8, 8)])
def test_population_settings(text, expected):
    assert groups.parse_population(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "many", "", True, 2.5])
def test_bad_population_settings_name_the_valid_ones(text):
    with pytest.raises(ValueError, match="auto, off or a positive integer"):
        groups.parse_population(text)


# ---------------------------------------------------------------- the program: equal results


def solo_params(cfg, epochs: int, x=X_TRAIN, y=Y_TRAIN):
    """The trial trained alone, as the engine trains a unit of one (values baked into the program)."""
    model = build_model(cfg)
    program = build_program(model, registry.optimizer(cfg.optimizer, cfg.learning_rate), cfg.batch_size,
                            penalty=Penalty(cfg.l1, cfg.l2), uses_dropout=cfg.dropout > 0)
    epoch = jax.jit(program.train_epoch)
    state, key = program.init(), jax.random.key(cfg.seed)
    for index in range(epochs):
        state, _, _ = epoch(state, x, y, jax.random.fold_in(key, index))
    return state.params


def population_params(cfgs, epochs: int, active=None, x=X_TRAIN, y=Y_TRAIN):
    """The same trials trained as one population (values as inputs of one program)."""
    models = [build_model(c) for c in cfgs]
    from flax import nnx
    graphdef = nnx.split(models[0])[0]
    member = build_member_program(graphdef, injected(registry.OPTIMIZERS[cfgs[0].optimizer].make),
                                  cfgs[0].batch_size, penalized=any(c.l1 or c.l2 for c in cfgs),
                                  uses_dropout=cfgs[0].dropout > 0)
    program = population_program(member)
    column = lambda name: jnp.asarray([getattr(c, name) for c in cfgs], jnp.float32)  # noqa: E731
    hyper = Hyper(column("learning_rate"), column("l1"), column("l2"),
                  column("dropout") if cfgs[0].dropout > 0 else None)
    params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(nnx.split(m)[1] for m in models))
    state = jax.jit(program.init)(params, hyper)
    keys = jax.vmap(jax.random.key)(jnp.asarray([c.seed for c in cfgs]))
    active = jnp.ones(len(cfgs), bool) if active is None else jnp.asarray(active)
    epoch = jax.jit(program.train_epoch)
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    for index in range(epochs):
        state, _, _ = epoch(state, hyper, active, x, y, fold(keys, index))
    return [jax.tree.map(lambda leaf: leaf[i], state.params) for i in range(len(cfgs))]


def assert_same_params(a, b, rtol=2e-4, atol=2e-5):
    for left, right in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(left), np.asarray(right), rtol=rtol, atol=atol)


# Optimizers without state (sgd), with moments (adam) and with extra state (lion, adadelta).
@pytest.mark.parametrize("family", quick_first(MODELS))
@pytest.mark.parametrize("optimizer", quick_first(["adam", "sgd", "lion", "adadelta"]))
def test_a_member_ends_with_the_parameters_it_has_when_trained_alone(family, optimizer):
    default = registry.OPTIMIZERS[optimizer].default_lr
    cfgs = [config(family, optimizer=optimizer, learning_rate=default * scale, seed=seed)
            for scale, seed in ((1.0, 0), (0.3, 1), (3.0, 2))]
    together = population_params(cfgs, epochs=2)
    for cfg, params in zip(cfgs, together):
        assert_same_params(params, solo_params(cfg, epochs=2))


@pytest.mark.parametrize("family", quick_first(MODELS))
def test_a_stock_flax_member_ends_with_its_solo_parameters(family):
    """--impl flax: nnx.Conv, nnx.RNN's scan and nnx.Dropout under the population's vmap."""
    cfgs = [config(family, impl="flax", dropout=0.3, learning_rate=lr, seed=seed)
            for lr, seed in ((1e-3, 0), (3e-3, 1))]
    together = population_params(cfgs, epochs=1)
    for cfg, params in zip(cfgs, together):
        assert_same_params(params, solo_params(cfg, epochs=1))


@pytest.mark.parametrize("values", quick_first([
    {"l2": (1e-4, 1e-2)}, {"l1": (0.0, 1e-3)}, {"dropout": (0.2, 0.5)},
], ids=["l2", "l1", "dropout"]))
def test_per_member_penalties_and_dropout_rates_are_their_own(values):
    (name, pair), = values.items()
    cfgs = [config("dense", seed=i, **{name: v}) for i, v in enumerate(pair)]
    together = population_params(cfgs, epochs=1)
    for cfg, params in zip(cfgs, together):
        assert_same_params(params, solo_params(cfg, epochs=1))
    # and the values matter: the two members differ beyond their seeds' effect
    swapped = [dataclasses.replace(cfgs[0], **{name: pair[1]})]
    with pytest.raises(AssertionError):
        assert_same_params(together[0], solo_params(swapped[0], epochs=1))


def test_an_inactive_member_is_frozen_and_the_others_train_on():
    cfgs = lr_sweep(3)
    start = population_params(cfgs, epochs=0)
    trained = population_params(cfgs, epochs=1, active=[True, False, True])
    assert_same_params(trained[1], start[1], rtol=0, atol=0)
    assert_same_params(trained[0], solo_params(cfgs[0], epochs=1))
    assert_same_params(trained[2], solo_params(cfgs[2], epochs=1))


# ---------------------------------------------------------------- run_population: records


@pytest.fixture(scope="module")
def dataset():
    x_test, y_test = synthetic(64, seed=1)
    return Dataset("synthetic", "npz", "", np.asarray(X_TRAIN), np.asarray(Y_TRAIN),
                   np.asarray(x_test), np.asarray(y_test))


PROTOCOL = TimingProtocol(repeats=2, burn_in=0, round_steps=2)


def unit_of(cfgs) -> Unit:
    return Unit(group_id(cfgs[0]), tuple(cfgs))


def run(cfgs, dataset, devices=None):
    return run_population(unit_of(cfgs), dataset, devices or jax.devices("cpu")[:1], PROTOCOL,
                          peak_flops=1e11)


@pytest.mark.slow
def test_each_member_is_a_record_with_its_own_key_and_history(dataset):
    cfgs = [config(learning_rate=lr, seed=s) for lr, s in ((1e-3, 0), (1e-2, 1), (3e-3, 2))]
    records = run(cfgs, dataset)
    assert [r.key for r in records] == [c.key for c in cfgs]
    for index, (cfg, record) in enumerate(zip(cfgs, records)):
        alone = run_trial(cfg, dataset, jax.devices("cpu")[0], PROTOCOL, peak_flops=1e11)
        assert record.status == alone.status == "ok"
        for mine, theirs in zip(record.history, alone.history, strict=True):
            for field in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
                assert mine[field] == pytest.approx(theirs[field], rel=1e-4, abs=1e-5)
        pop = record.population
        assert (pop.group, pop.size, pop.index) == (group_id(cfg), 3, index)
        # shared figures live under `population`; the member's own fields hold only its own
        assert pop.compile_s > 0 and len(pop.epoch_s) == cfg.epochs
        assert record.compile_s is None and record.epoch_s == [] and record.train_s is None
        assert record.step_ms > 0 and len(record.rounds_s) == PROTOCOL.repeats  # timed alone
        assert record.flops_per_step == pytest.approx(alone.flops_per_step, rel=1e-4)  # + the lr read
        assert record.params == alone.params
    own_epochs = sum(r.steps_per_epoch * r.step_ms / 1000 for r in records)
    assert pop.speedup == pytest.approx(own_epochs / pop.steady_epoch_s, abs=0.01)


def test_a_diverged_member_is_recorded_and_masked_while_the_others_match_their_solo_runs(dataset):
    cfgs = [config(optimizer="sgd", learning_rate=lr, seed=0) for lr in (0.05, 1e30, 0.01)]
    records = run(cfgs, dataset)
    assert [r.status for r in records] == ["ok", "diverged", "ok"]
    assert len(records[1].history) == 1 and records[1].rounds_s == []
    pop = records[0].population
    # On this tiny data recompiling costs more than the masked rows: the member stays in.
    assert pop.retired == [] and pop.members_per_epoch == [3, 2]
    # Alone, the diverged trial would have stopped after its first epoch: the speed-up
    # over the steady (second) epoch counts the other two members only.
    own = [r.steps_per_epoch * r.step_ms / 1000 for r in (records[0], records[2])]
    assert pop.speedup == pytest.approx(sum(own) / pop.steady_epoch_s, abs=0.01)
    for index in (0, 2):
        alone = run_trial(cfgs[index], dataset, jax.devices("cpu")[0], PROTOCOL)
        assert records[index].test_loss == pytest.approx(alone.test_loss, rel=1e-4)


def test_diverged_members_retired_from_the_population_leave_the_others_as_alone(
        dataset, monkeypatch):
    """Once dropping the diverged rows pays, the population goes on without them: the
    others keep their own values, keys and state, and end as their solo runs."""
    monkeypatch.setattr(population, "worth_retiring", lambda *_: True)
    cfgs = [config(optimizer="sgd", learning_rate=lr, seed=s, epochs=3)
            for lr, s in ((1e30, 3), (0.05, 0), (1e30, 1), (0.01, 2))]
    records = run(cfgs, dataset)
    assert [r.status for r in records] == ["diverged", "ok", "diverged", "ok"]
    pop = records[1].population
    assert pop.members_per_epoch == [4, 2, 2] and pop.size == 4
    [retired] = pop.retired
    assert (retired["after_epoch"], retired["members"], retired["padded"]) == (1, 2, 2)
    assert retired["compile_s"] > 0
    for index in (1, 3):
        alone = run_trial(cfgs[index], dataset, jax.devices("cpu")[0], PROTOCOL)
        assert records[index].population.index == index
        assert records[index].step_ms > 0  # timed alone from its own row after retiring
        for mine, theirs in zip(records[index].history, alone.history, strict=True):
            assert mine["test_loss"] == pytest.approx(theirs["test_loss"], rel=1e-4)
        hit = records[index].population.time_to_accuracy
        for target in filter(None, hit.values()):  # the recompile is on the clock after epoch 1
            extra = retired["compile_s"] if target["epoch"] > 1 else 0
            assert target["with_compile_s"] == pytest.approx(
                target["train_s"] + pop.compile_s + extra, abs=1e-3)
    own = [r.steps_per_epoch * r.step_ms / 1000 for r in (records[1], records[3])]
    assert pop.speedup == pytest.approx(
        2 * sum(own) / (pop.epoch_s[1] + pop.epoch_s[2]), abs=0.01)
    # The reports say how many members were left, and from when.
    runs = [Run(Path("run"), RunHeader(run_id="r"), tuple(records), "run")]
    assert populations_table(runs).rows[0][1].text == "4, 2 from epoch 2"
    rows = csv.DictReader(io.StringIO(render_csv(runs)))
    assert {row["population_members_per_epoch"] for row in rows} == {"4 2 2"}


def test_recompiles_count_in_time_to_accuracy_from_the_epoch_after_them():
    tta = {"0.5": {"epoch": 1, "train_s": 1.0, "with_compile_s": 3.0},
           "0.9": {"epoch": 3, "train_s": 3.0, "with_compile_s": 5.0}, "0.99": None}
    retired = [{"after_epoch": 1, "compile_s": 0.5}, {"after_epoch": 2, "compile_s": 0.25}]
    assert with_recompiles(tta, retired) == {
        "0.5": {"epoch": 1, "train_s": 1.0, "with_compile_s": 3.0},
        "0.9": {"epoch": 3, "train_s": 3.0, "with_compile_s": 5.75}, "0.99": None}
    assert with_recompiles(tta, []) == tta


@pytest.mark.parametrize("rows_now, rows_after, epoch_s, epochs_left, compile_s, worth", [
    (27, 20, 120.0, 2, 4.0, True),    # a quarter of a long epoch, twice: recompile
    (27, 20, 1.0, 2, 4.0, False),     # short epochs: compiling costs more
    (27, 20, 120.0, 0, 4.0, False),   # no epoch left
    (4, 4, 120.0, 2, 0.0, False),     # padding back to the same rows: nothing saved
    (8, 6, 8.0, 1, 2.0, False),       # saves exactly the compile time: not worth it
    (8, 6, 8.0, 2, 2.0, True),
])
def test_worth_retiring(rows_now, rows_after, epoch_s, epochs_left, compile_s, worth):
    assert worth_retiring(rows_now, rows_after, epoch_s, epochs_left, compile_s) is worth


@pytest.mark.slow
def test_a_failing_population_is_retried_as_halves_before_anything_fails(dataset, monkeypatch):
    """A population that cannot run as a whole (e.g. out of memory) splits; its members
    are trained in smaller populations or alone, and nothing is recorded twice or lost."""
    real_run = population._Training.run

    def run_only_small(self):
        if self.unit.size > 2:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return real_run(self)

    monkeypatch.setattr(population._Training, "run", run_only_small)
    cfgs = lr_sweep(5)
    records = run(cfgs, dataset)
    assert sorted(r.key for r in records) == sorted(c.key for c in cfgs)
    assert all(r.status == "ok" for r in records)
    assert all("RESOURCE_EXHAUSTED" in r.population.retry for r in records)
    assert sorted(r.population.size for r in records) == [1, 2, 2, 2, 2]


@pytest.mark.parametrize("family, impl", quick_first(
    [(family, impl) for family in MODELS for impl in ("tuned", "flax")]))
def test_a_members_flop_count_is_the_same_trials_count_alone(dataset, family, impl,
                                                             monkeypatch):
    """One counting path for every unit size (training.COUNTED_FORM): a conv population on
    CPU used to be counted through the kernel's custom call, which XLA sees as no work."""
    cfgs = [config(family, impl=impl, learning_rate=lr, seed=s, epochs=1)
            for lr, s in ((1e-3, 0), (3e-3, 1))]
    for form in (population._Solo, population._Vmapped):  # the count needs no compiled program
        monkeypatch.setattr(form, "compile", lambda self: {"compile_s": 0.0})

    def counted(unit: Unit) -> list:
        """The records' FLOP counts once the unit is built (nothing compiled or trained)."""
        training = population._UnitTraining(unit, dataset, jax.devices("cpu")[:1], PROTOCOL,
                                            None)
        training._build_and_compile()
        return [r.flops_per_step for r in training.records]

    members = counted(unit_of(cfgs))
    [alone] = counted(Unit("alone", cfgs[:1], alone=True))
    assert members[0] == members[1] == alone > 0


def test_a_bug_in_a_population_records_every_member_failed_at_once(dataset, monkeypatch):
    """Only running out of memory is worth retrying smaller; any other exception is the same
    in a half, so the members are recorded failed, naming the error and where it arose."""
    calls = []

    def broken(self, rows_active, index):
        calls.append(len(self.rows))
        raise ValueError("shapes do not match")

    monkeypatch.setattr(population._Vmapped, "train_epoch", broken)
    records = run(lr_sweep(4), dataset)
    assert calls == [4]  # tried once, never as halves
    assert [r.status for r in records] == ["failed"] * 4
    for record in records:
        assert record.error.startswith("ValueError: shapes do not match (at bench/engine/")
        assert "in broken" not in record.error  # the innermost frame of bench's own code
        assert record.population.retry is None and record.population.size == 4


# ---------------------------------------------------------------- across devices


SCRIPT_PRELUDE = """
import json, sys
sys.path.insert(0, 'tests')
import jax, numpy as np
from bench.engine import training as population
from bench.engine.training import train_unit as run_population
from bench.contract.schema import TimingProtocol
from test_population import PROTOCOL, config, unit_of
from bench.engine.data import Dataset
from conftest import quick_first
from test_training import X_TRAIN, Y_TRAIN, synthetic
x_test, y_test = synthetic(64, seed=1)
data = Dataset("synthetic", "npz", "", np.asarray(X_TRAIN), np.asarray(Y_TRAIN),
               np.asarray(x_test), np.asarray(y_test))
"""

TWO_DEVICES = """
cfgs = [config(learning_rate=lr, seed=s) for lr, s in ((1e-3, 0), (1e-2, 1), (3e-3, 2))]
out = {}
for n in (1, 2):
    records = run_population(unit_of(cfgs), data, jax.devices("cpu")[:n], PROTOCOL)
    out[n] = [(r.key, r.population.devices, r.population.size, r.test_loss) for r in records]
print(json.dumps(out))
"""


def on_two_simulated_devices(body: str):
    """What `body` (after SCRIPT_PRELUDE) prints last, as JSON, run in a process whose CPU
    is split into two XLA devices."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SCRIPT_PRELUDE + body], cwd=REPO, env=env,
                         check=True, capture_output=True, text=True).stdout
    import json
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_devices_give_the_records_of_one(tmp_path):
    """Three members on two simulated CPU devices (padded to four): the same three
    records as on one device, to float tolerance, and no record for the padding."""
    result = on_two_simulated_devices(TWO_DEVICES)
    one, two = result["1"], result["2"]
    assert len(one) == len(two) == 3
    assert [r[:1] + r[2:3] for r in one] == [r[:1] + r[2:3] for r in two]
    assert {r[1] for r in one} == {1} and {r[1] for r in two} == {2}
    for a, b in zip(one, two):
        assert math.isclose(a[3], b[3], rel_tol=1e-4)


RETIRING_ON_TWO_DEVICES = """
from bench.engine.training import run_trial
population.worth_retiring = lambda *_: True
out = {}
for name, rates in (("two left", (1e-2, 1e30, 3e-3, 1e30)), ("one left", (1e-2, 1e30, 1e30))):
    cfgs = [config(optimizer="sgd", learning_rate=lr, seed=s, epochs=3)
            for s, lr in enumerate(rates)]
    records = run_population(unit_of(cfgs), data, jax.devices("cpu")[:2], PROTOCOL)
    out[name] = {"statuses": [r.status for r in records],
                 "retired": records[0].population.retired,
                 "losses": [r.test_loss for r in records if r.status == "ok"],
                 "alone": [run_trial(c, data, jax.devices("cpu")[0], PROTOCOL).test_loss
                           for c, r in zip(cfgs, records) if r.status == "ok"]}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_retiring_on_two_devices_shrinks_the_mesh_and_changes_no_result():
    """Four members on two devices, two diverge: the two left stay split over both devices.
    Three members, two diverge: the one left moves to one device. Either way the members
    left end as they do alone."""
    result = on_two_simulated_devices(RETIRING_ON_TWO_DEVICES)
    two, one = result["two left"], result["one left"]
    assert two["statuses"] == ["ok", "diverged", "ok", "diverged"]
    assert one["statuses"] == ["ok", "diverged", "diverged"]
    assert [(r["members"], r["padded"], r["devices"]) for r in two["retired"]] == [(2, 2, 2)]
    assert [(r["members"], r["padded"], r["devices"]) for r in one["retired"]] == [(1, 1, 1)]
    for case in (two, one):
        assert case["losses"] == pytest.approx(case["alone"], rel=1e-4)


@pytest.mark.slow
def test_a_population_too_large_for_free_memory_is_split(dataset, monkeypatch):
    """auto sizing: a population whose compiled program would not fit is split until it does."""
    from bench.engine import costs
    seen = []

    def free(device):  # a little less than four members need (the data set is shared)
        return 0.95 * seen[0] / costs.FITS_FRACTION if seen else None

    real_check = costs.check_fits

    def check(memory, device, what):
        needed = (memory["argument_size_in_bytes"] + memory["output_size_in_bytes"]
                  + memory["temp_size_in_bytes"] - memory["alias_size_in_bytes"])
        seen.append(needed)
        real_check(memory, device, what)
    monkeypatch.setattr(costs, "free_bytes", free)
    monkeypatch.setattr(costs, "check_fits", check)
    cfgs = lr_sweep(4)
    records = run(cfgs, dataset)
    assert sorted(r.key for r in records) == sorted(c.key for c in cfgs)
    assert all(r.status == "ok" for r in records)
    assert all("TooLarge" in r.population.retry for r in records)
    assert [r.population.size for r in records] == [2, 2, 2, 2]


def test_check_fits_compares_the_program_with_free_memory(monkeypatch):
    from bench.engine import costs
    monkeypatch.setattr(costs, "free_bytes", lambda device: 1000)
    memory = {"argument_size_in_bytes": 500, "output_size_in_bytes": 200,
              "temp_size_in_bytes": 200, "alias_size_in_bytes": 100}
    costs.check_fits(memory, None, "p")  # 800 <= 0.8 * 1000
    with pytest.raises(costs.TooLarge, match="p needs"):
        costs.check_fits({**memory, "temp_size_in_bytes": 201}, None, "p")
    monkeypatch.setattr(costs, "free_bytes", lambda device: None)
    costs.check_fits({**memory, "temp_size_in_bytes": 10**12}, None, "p")  # unknown: no verdict


@pytest.mark.parametrize("stats, expected", [
    ({"bytes_limit": 1000, "bytes_in_use": 300}, 700),
    ({"bytes_in_use": 300}, "host"),
])
def test_free_bytes_of_a_device(stats, expected):
    from bench.engine import costs

    class Device:
        def memory_stats(self):
            return stats
    free = costs.free_bytes(Device())
    assert free == expected if expected != "host" else free > 0


def test_auto_trains_conv_alone_on_cpu_and_populations_elsewhere():
    """The measured choice (docs/measurements.md): conv populations were slower on CPU."""
    from bench.run.runner import auto_cap
    conv, dense = lr_sweep(3, model="conv", units=2), lr_sweep(3)
    units = plan_units(conv + dense, "auto", lambda c: auto_cap("cpu", c.model))
    assert [u.size for u in units] == [1, 1, 1, 3]
    units = plan_units(conv, "auto", lambda c: auto_cap("gpu", c.model))
    assert [u.size for u in units] == [3]
    assert [u.size for u in plan_units(conv, 3, lambda c: auto_cap("cpu", c.model))] == [3]


def test_the_populations_table_says_how_many_members_were_left():
    assert _members_cell(PopulationFacts("g", 27)) == ("27", 27.0)
    retired = [{"after_epoch": 1, "members": 20}, {"after_epoch": 2, "members": 18}]
    assert _members_cell(PopulationFacts("g", 27, retired=retired)) == (
        "27, 20 from epoch 2, 18 from epoch 3", 27.0)
