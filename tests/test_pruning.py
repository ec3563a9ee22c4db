"""Successive halving (--prune halving): the rungs and decisions on planted scores, the
halving groups, the engine pruning a planted group (seeds together, groups apart, survivors
as in an unpruned run), and what the CLI, resume, reports and compare make of `pruned`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from bench.cli import main
from bench.contract import results
from bench.contract.facts import PopulationFacts, RunHeader
from bench.contract.pruning import Entry, Pruning, parse_pruning, rungs, survivors, to_stop
from bench.contract.schema import Record, SpecError, TimingProtocol, make_config
from bench.engine import training
from bench.engine.data import Dataset, hold_out_validation
from bench.engine.training import train_unit
from bench.read.compare import compare_records
from bench.read.render.aggregate import group_trials
from bench.read.render.runs import Run
from bench.read.render.sections import build_report, tuning_cost_lines
from bench.read.render.tuning_cost import training_seconds, unpruned_seconds
from bench.read.render.verdict import verdict
from bench.run.groups import group_id, halving_units, plan_units
from conftest import write_npz
from test_training import synthetic

PROTOCOL = TimingProtocol(repeats=2, burn_in=0, round_steps=2)


# ---------------------------------------------------------------- rungs and decisions


@pytest.mark.parametrize("min_epochs, eta, epochs, expected", [
    (1, 3, 3, (1,)), (1, 3, 9, (1, 3)), (1, 3, 10, (1, 3, 9)), (2, 2, 9, (2, 4, 8)),
    (1, 3, 1, ()), (3, 3, 3, ()),
])
def test_rungs_are_min_epochs_times_powers_of_eta_below_the_epochs(min_epochs, eta, epochs,
                                                                   expected):
    assert rungs(min_epochs, eta, epochs) == expected
    assert Pruning("halving", eta, min_epochs).rungs(epochs) == expected


def test_survivors_are_the_best_ceil_n_over_eta_by_mean_over_seeds():
    scores = {"a": [0.5, 0.7], "b": [0.9, 0.1], "c": [0.8, 0.8], "d": [0.2, 0.3], "e": [0.6, 0.61]}
    assert survivors(scores, 3) == {"c", "e"}          # ceil(5/3) = 2: means .8, .605
    assert survivors(scores, 2) == {"c", "e", "a"}     # ceil(5/2) = 3: a .6 and b .5 next
    assert survivors({"only": [0.1]}, 3) == {"only"}


def test_a_configuration_that_lost_a_seed_ranks_below_every_complete_one():
    scores = {"lost one": [0.99, None], "nan": [0.99, float("nan")], "poor": [0.2, 0.2]}
    assert survivors(scores, 3) == {"poor"}
    assert survivors({"lost": [0.9, None], "lost more": [None, None]}, 2) == {"lost"}


def test_ties_go_to_the_configuration_listed_first():
    assert survivors({"x": [0.5], "y": [0.5], "z": [0.5]}, 3) == {"x"}


def test_seeds_are_stopped_together_and_stopped_configurations_do_not_race():
    entries = [Entry("good", True, 0.9), Entry("bad", True, 0.95), Entry("good", True, 0.8),
               Entry("bad", True, 0.1), Entry("gone", False, None), Entry("mid", True, 0.5),
               Entry("mid", False, None)]  # mid lost a seed (diverged)
    # good .85, bad .525, mid (lost a seed): ceil(3/3) = 1 survives; gone takes no part
    assert to_stop(entries, 3) == [1, 3, 5]


@pytest.mark.parametrize("args, message", [
    (("median",), "unknown method 'median'; valid: off, halving"),
    (("off", 3), "eta: only with --prune halving"),
    ((None, None, 2), "min_epochs: only with --prune halving"),
    (("halving", 1), "eta: 1 is not an integer >= 2"),
    (("halving", "3"), "eta: '3' is not an integer >= 2"),
    (("halving", 3, 0), "min_epochs: 0 is not an integer >= 1"),
])
def test_bad_pruning_settings_say_what_is_valid(args, message):
    with pytest.raises(SpecError, match=message):
        parse_pruning(*args)


def test_pruning_settings_and_their_defaults():
    assert parse_pruning(None) is None and parse_pruning("off") is None
    assert parse_pruning("halving") == Pruning("halving", 3, 1)
    assert parse_pruning("halving", 2, 3).to_json() == {"method": "halving", "eta": 2,
                                                        "min_epochs": 3}


# ---------------------------------------------------------------- halving groups


def config(**values):
    base = {"model": "dense", "units": 8, "activation": "relu", "optimizer": "sgd",
            "batch_size": 32, "epochs": 3}
    return make_config({**base, **values})


def test_halving_groups_never_mix_optimizers_activations_widths_or_families():
    cfgs = [config(optimizer=o, activation=a, units=u, learning_rate=lr, seed=s)
            for o in ("sgd", "adam") for a in ("relu", "tanh") for u in (8, 16)
            for lr in (0.1, 0.01) for s in (0, 1)]
    cfgs += [config(model="conv", units=2, learning_rate=lr) for lr in (0.1, 0.01)]
    units = plan_units(cfgs, "auto", 64, prune=True)
    assert len(units) == 2 * 2 * 2 + 1 and sum(u.size for u in units) == len(cfgs)
    for unit in units:
        shared = {(c.model, c.optimizer, c.activation, c.units) for c in unit.members}
        assert len(shared) == 1


def test_dropout_on_and_off_compete_in_one_unit_of_two_programs():
    cfgs = [config(dropout=d, learning_rate=lr) for d in (0.0, 0.3) for lr in (0.1, 0.01)]
    [unit] = halving_units(cfgs, "auto", 64)
    assert [p.size for p in unit.parts] == [2, 2] and not unit.alone
    assert unit.members == tuple(c for p in unit.parts for c in p.members)
    assert unit.group == group_id(cfgs[0])


def test_trials_trained_alone_become_one_unit_trained_in_turn():
    cfgs = [config(learning_rate=lr, seed=s) for lr in (0.1, 0.01, 0.001) for s in (0, 1)]
    for population, cap in (("off", 64), ("auto", 1)):
        [unit] = halving_units(cfgs, population, cap)
        assert unit.alone and [p.size for p in unit.parts] == [1] * 6


def test_a_group_over_the_cap_splits_between_configurations_never_within():
    cfgs = [config(learning_rate=lr, seed=s) for lr in (0.1, 0.03, 0.01, 0.003) for s in (0, 1, 2)]
    [unit] = halving_units(cfgs, 7, 64)
    for part in unit.parts:  # 7 // 3 seeds: two configurations a part
        assert part.size == 6 and len({c.config_id for c in part.members}) == 2
    [whole] = halving_units(cfgs, "auto", 64)
    assert whole.parts == () and whole.size == 12  # one population: an ordinary unit


def test_without_pruning_the_units_are_those_of_before():
    cfgs = [config(dropout=d, learning_rate=lr) for d in (0.0, 0.3) for lr in (0.1, 0.01)]
    assert [u.size for u in plan_units(cfgs, "auto", 64)] == [2, 2]
    assert all(u.parts == () for u in plan_units(cfgs, "auto", 64))


# ---------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def dataset():
    x, y = synthetic(512, seed=0)
    x_test, y_test = synthetic(64, seed=1)
    data = Dataset("synthetic", "npz", "", np.asarray(x), np.asarray(y), np.asarray(x_test),
                   np.asarray(y_test))
    return hold_out_validation(data, 0.25)


# Learning rates a decade apart on the planted bands: they rank clearly, from the top.
RATES = (0.3, 0.03, 0.003, 0.0003)
HALVING = Pruning("halving", eta=2, min_epochs=1)  # rungs at epochs 1 and 2 of 3


def planted(rates=RATES, seeds=(0, 1)):
    return [config(learning_rate=lr, seed=s) for lr in rates for s in seeds]


def train(cfgs, dataset, population="auto", pruning=HALVING, **kwargs):
    [unit] = plan_units(cfgs, population, 64, prune=pruning is not None)
    return train_unit(unit, dataset, jax.devices("cpu")[:1], PROTOCOL, peak_flops=1e11,
                      pruning=pruning, **kwargs)


@pytest.fixture(scope="module")
def unpruned(dataset):
    return {r.key: r for r in train(planted(), dataset, pruning=None)}


@pytest.fixture(scope="module")
def pruned(dataset):
    return train(planted(), dataset)


def outcome(records) -> dict:
    """learning rate -> (status, pruned_at_epoch) of each of its seeds."""
    out: dict = {}
    for r in records:
        out.setdefault(r.config.learning_rate, []).append((r.status, r.pruned_at_epoch))
    return out


def assert_same_history(mine: list, theirs: list) -> None:
    for a, b in zip(mine, theirs, strict=True):
        for name in ("train_loss", "test_loss", "test_accuracy", "validation_accuracy"):
            assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-5), name


EXPECTED = {0.3: [("ok", None)] * 2, 0.03: [("pruned", 2)] * 2, 0.003: [("pruned", 1)] * 2,
            0.0003: [("pruned", 1)] * 2}


def test_pruning_keeps_the_best_rates_at_each_rung_with_their_seeds(pruned):
    assert outcome(pruned) == EXPECTED
    assert all(r.pruning == HALVING.to_json() for r in pruned)
    assert [len(r.history) for r in pruned] == [3, 3, 2, 2, 1, 1, 1, 1]
    pop = pruned[0].population
    assert pop.members_per_epoch == [8, 4, 2]  # pruned members stop training at once
    assert all(r.rounds_s == [] and r.step_ms is None for r in pruned if r.status == "pruned")


def test_survivors_and_the_pruned_match_their_unpruned_runs(pruned, unpruned):
    for record in pruned:
        alone = unpruned[record.key]  # the same trial, the same key, pruned or not
        assert alone.status == "ok" and alone.pruning is None
        assert_same_history(record.history, alone.history[:len(record.history)])
        if record.status == "ok":
            assert record.test_accuracy == pytest.approx(alone.test_accuracy, abs=1e-6)


@pytest.mark.slow
def test_pruned_rows_leave_the_population_when_that_pays(dataset, unpruned, monkeypatch):
    monkeypatch.setattr(training, "worth_retiring", lambda *_: True)
    records = train(planted(), dataset)
    assert outcome(records) == EXPECTED
    pop = records[0].population
    assert [(r["after_epoch"], r["members"]) for r in pop.retired] == [(1, 4), (2, 2)]
    for record in records:
        assert_same_history(record.history, unpruned[record.key].history[:len(record.history)])


@pytest.mark.slow
def test_a_pruned_group_out_of_memory_splits_its_populations_and_still_decides_as_one(
        dataset, monkeypatch):
    real_run = training._Training.run

    def run_only_small(self):
        if max(p.size for p in self.unit.programs) > 2:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return real_run(self)

    monkeypatch.setattr(training._Training, "run", run_only_small)
    records = train(planted(), dataset)
    assert outcome(records) == EXPECTED  # seeds together, across the parts
    assert sorted(r.population.size for r in records) == [2] * 8  # whole configurations
    assert all("pruned together" in r.population.retry for r in records)


def test_trials_alone_are_trained_in_turn_and_pruned_alike(dataset, unpruned):
    """A unit of trials alone (population off): each its own program and clock, epoch by
    epoch in turn; the same decisions, the same histories."""
    records = train(planted(rates=(0.3, 0.003)), dataset, population="off", on_epoch=None)
    assert outcome(records) == {0.3: [("ok", None)] * 2, 0.003: [("pruned", 1)] * 2}
    for record in records:
        assert not record.population.together and record.compile_s > 0  # its own figures
        assert len(record.epoch_s) == len(record.history) and record.wall_s > 0
        assert_same_history(record.history, unpruned[record.key].history[:len(record.history)])
    assert records[0].memory["programs_resident"] == 4


def test_pruning_without_a_validation_split_fails_before_anything_compiles(dataset):
    data = Dataset("synthetic", "npz", "", dataset.x_train, dataset.y_train, dataset.x_test,
                   dataset.y_test)
    records = train(planted(rates=(0.3,), seeds=(0,)), data)
    assert records[0].status == "failed" and "validation split" in records[0].error


# ---------------------------------------------------------------- the command line and resume


@pytest.fixture
def tiny_run(isolated, fake_peak, monkeypatch, tmp_path):
    """run(*flags) -> exit status, on tiny.npz into out/, every trial replaced by `fake`:
    under --prune, lr 0.001 is pruned at epoch 1 and the others run on."""
    npz = write_npz(tmp_path / "tiny.npz", n_train=512)
    monkeypatch.setattr("bench.run.runner.render_reports", lambda run_dirs: _md_only(run_dirs))
    calls = []

    def fake(unit, dataset, device_list, protocol, *, peak_flops=None, on_epoch=None,
             pruning=None):
        calls.append((unit, pruning))
        out = []
        for index, c in enumerate(unit.members):
            entry = {"epoch": 1, "test_accuracy": 0.5, "validation_accuracy": 0.5, "epoch_s": 0.01}
            stopped = pruning is not None and c.learning_rate == 0.001
            out.append(Record(config=c, status="pruned" if stopped else "ok",
                              pruned_at_epoch=1 if stopped else None, test_accuracy=0.5,
                              validation_accuracy=0.5, history=[entry],
                              pruning=pruning and pruning.to_json(),
                              population=PopulationFacts(unit.group, 1, 0)))
        return out

    monkeypatch.setattr("bench.engine.training.train_unit", fake)

    def run(*flags, out="out"):
        return main(["run", "--models", "dense", "--units", "4", "--optimizers", "sgd",
                     "--activations", "relu", "--learning-rate", "0.1,0.01,0.001",
                     "--epochs", "2", "--repeats", "2", "--round-steps", "2", "--data", str(npz),
                     "--out", out, *flags])
    run.calls = calls
    return run


def _md_only(run_dirs):
    from bench.read.render.report import render_reports
    return render_reports(run_dirs, ("md",))


def test_prune_needs_a_validation_split(tiny_run, capsys):
    assert tiny_run("--prune", "halving") == 2
    assert ("--prune needs --validation FRACTION: pruning chooses on a validation split, never "
            "on the test figures it reports") in capsys.readouterr().err


def test_eta_without_prune_is_refused(tiny_run, capsys):
    assert tiny_run("--eta", "2") == 2
    assert "eta: only with --prune halving" in capsys.readouterr().err


def test_a_pruned_run_records_how_and_each_halving_group_is_one_job(tiny_run):
    assert tiny_run("--validation", "0.25", "--prune", "halving", "--eta", "2") == 0
    [(unit, pruning)] = tiny_run.calls
    assert unit.size == 3 and pruning == Pruning("halving", 2, 1)
    header = results.read_header(Path("out"))
    assert header["pruning"] == {"method": "halving", "eta": 2, "min_epochs": 1}
    lines = results.read_results(Path("out"))
    assert [r["status"] for r in lines] == ["ok", "ok", "pruned"]
    assert all(r["pruning"] == header["pruning"] for r in lines)
    report = (Path("out") / "report.md").read_text()
    assert "**Pruning**: successive halving (eta 2; rungs at epoch 1)" in report
    assert "1 pruned (at epoch 1: 1)" in report


def test_an_unpruned_run_records_nothing_of_pruning(tiny_run):
    assert tiny_run() == 0
    assert "pruning" not in results.read_header(Path("out"))
    assert all("pruning" not in r and "pruned_at_epoch" not in r
               for r in results.read_results(Path("out")))


def test_resume_skips_pruned_trials_and_keeps_the_runs_pruning(tiny_run, capsys):
    assert tiny_run("--validation", "0.25", "--prune", "halving") == 0
    assert main(["run", "--resume", "out"]) == 0
    assert main(["run", "--resume", "out", "--retry-failed"]) == 0
    assert len(tiny_run.calls) == 1  # nothing left to run: pruned trials are finished
    assert main(["run", "--resume", "out", "--prune", "off"]) == 2
    assert "prune: this run used 'halving', you asked for 'off'" in capsys.readouterr().err


def test_an_unpruned_run_is_not_resumed_with_pruning(tiny_run, capsys):
    assert tiny_run("--validation", "0.25") == 0
    assert main(["run", "--resume", "out", "--prune", "halving"]) == 2
    assert "prune: this run used 'off', you asked for 'halving'" in capsys.readouterr().err


def test_sweep_files_take_the_pruning_keys(tiny_run, tmp_path):
    sweep = tmp_path / "s.toml"
    sweep.write_text('[grid]\nmodels = "dense"\nunits = 4\nlearning_rate = [0.1, 0.001]\n'
                     'activations = "relu"\noptimizers = "sgd"\nepochs = 2\n'
                     '[run]\nvalidation = 0.25\nprune = "halving"\neta = 4\nmin_epochs = 1\n'
                     'repeats = 2\nround_steps = 2\n')
    assert main(["run", "--sweep", str(sweep), "--data", str(tmp_path / "tiny.npz"),
                 "--out", "s"]) == 0
    [(unit, pruning)] = tiny_run.calls
    assert pruning == Pruning("halving", 4, 1) and unit.size == 2


# ---------------------------------------------------------------- reports and compare


def record(lr, seed, status="ok", acc=0.9, pruned_at=None, **extra):
    history = [{"epoch": e, "test_accuracy": acc, "validation_accuracy": acc, "epoch_s": 1.0}
               for e in range(1, (pruned_at or 3) + 1)]
    return Record(config=config(learning_rate=lr, seed=seed), status=status, test_accuracy=acc,
                  validation_accuracy=acc, pruned_at_epoch=pruned_at, history=history,
                  steady_epoch_s=1.0, pruning=HALVING.to_json(),
                  population=PopulationFacts("g"), **extra)


def pruned_run() -> Run:
    # lr 0.5 was pruned with a higher accuracy at its rung than the survivor has at the end.
    records = (record(0.1, 0, acc=0.90), record(0.1, 1, acc=0.92),
               record(0.5, 0, "pruned", 0.99, 1), record(0.5, 1, "pruned", 0.99, 1),
               record(0.01, 0, "pruned", 0.5, 2), record(0.01, 1, "pruned", 0.5, 2))
    return Run(Path("run"), RunHeader(run_id="r", pruning=HALVING.to_json()), records, "run")


def test_a_pruned_configuration_is_never_best_and_the_verdict_counts_each_rung():
    runs = [pruned_run()]
    v = verdict(runs, group_trials(runs))
    [family] = v.families
    assert family.best.group.config["learning_rate"] == 0.1
    assert family.pruned == ((1, 2), (2, 2))
    losers = [s for s in family.standings if s.group.config["learning_rate"] != 0.1]
    assert all(s.mean is None and not s.complete for s in losers)
    assert sorted(s.ok_text for s in losers) == ["pruned at epoch 1", "pruned at epoch 2"]
    report = build_report(runs)
    errors = [s for s in report.sections if s.id == "errors"]
    assert errors == []  # pruned trials are finished, not errors


def test_the_tuning_cost_counts_what_pruning_saved():
    run = pruned_run()
    # six trials alone of 1 s epochs: 3 + 3 + 1 + 1 + 2 + 2 spent; 2 + 2 + 1 + 1 not run
    assert training_seconds(run.records) == 12.0
    assert unpruned_seconds(run.records) == 18.0
    [line] = tuning_cost_lines([run])
    assert "12.0 s of training" in line and "without pruning about 18.0 s" in line


def test_a_population_saves_only_the_epochs_after_its_pruned_rows_left():
    shared = dict(size=4, epoch_s=[4.0, 4.0, 2.0], retired=[{"after_epoch": 2, "padded": 2}])
    records = [Record(config=config(learning_rate=lr), status=status, pruned_at_epoch=at,
                      population=PopulationFacts("g", index=i, **shared))
               for i, (lr, status, at) in enumerate(((0.1, "ok", None), (0.2, "ok", None),
                                                     (0.3, "pruned", 1), (0.4, "pruned", 1)))]
    # 1 s per row and epoch; rows left after epoch 2: each pruned one saved epoch 3 only
    assert training_seconds(records) == 10.0
    assert unpruned_seconds(records) == 12.0


def test_compare_reports_a_trial_pruned_on_one_side_as_censored_not_a_regression():
    base = record(0.5, 0, acc=0.98)
    cand = record(0.5, 0, "pruned", 0.6, 1)
    comparison = compare_records([base], [cand])
    assert comparison.regressions == []
    status = next(v for v in comparison.verdicts if v.metric == "status")
    accuracy = next(v for v in comparison.verdicts if v.metric == "accuracy")
    assert (status.baseline, status.candidate, status.verdict) == ("ok", "pruned", "n/a")
    assert accuracy.verdict == "n/a"
    assert "pruned in the candidate at epoch 1: censored, not compared" in status.notes
    # pruned alike on both sides: compared as usual
    same = compare_records([cand], [record(0.5, 0, "pruned", 0.6, 1)])
    assert [v.verdict for v in same.verdicts if v.metric == "accuracy"] == ["same"]


def test_records_of_a_pruned_run_read_back_as_written():
    line = json.loads(json.dumps(record(0.5, 0, "pruned", 0.6, 1).to_json()))
    back = Record.from_json(line)
    assert (back.status, back.pruned_at_epoch, back.pruning) == ("pruned", 1, HALVING.to_json())
