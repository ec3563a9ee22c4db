"""The validation split (--validation, [run] validation): held out of the training split,
stratified, the same for every trial of a run; evaluated every epoch; what chooses (the
verdict's best, the tuning table's best rate) chooses on it and reports test.

The run-level checks train nothing (the engine is replaced by test_resume's recorder); the
engine's own checks train tiny dense units for an epoch."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from bench.cli import main
from bench.contract import results
from bench.contract.facts import RunHeader
from bench.contract.schema import Record, TimingProtocol, make_config
from bench.contract.sweepfile import load_sweep, preset_path
from bench.contract.units import Unit
from bench.engine import data as data_sources
from bench.engine.data import Dataset, hold_out_validation, validation_indices
from bench.read.render.aggregate import group_trials
from bench.read.render.csv import render_csv, render_history
from bench.read.render.report import render_reports
from bench.read.render.runs import Run
from bench.read.render.sections import best_rates
from bench.read.render.verdict import summary_json, verdict, verdict_lines
from bench.read.render.verdict_sections import family_leaderboard
from bench.run.work import DataSpec
from conftest import quick_first, write_npz
from test_resume import SWEEP, Recorder, each_member, keys_in

# MNIST's official training labels per class (60,000 in all).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def rows(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


@pytest.fixture
def tiny(tmp_path) -> Dataset:
    return data_sources.load_dataset(str(write_npz(tmp_path / "tiny.npz")), "tiny")


# ---------------------------------------------------------------- the split


def test_validation_is_disjoint_from_training_and_test_and_comes_from_training(tiny):
    split = hold_out_validation(tiny, 0.25)
    assert len(split.y_val) == 64 and len(split.y_train) == 192
    assert not rows(split.x_val) & rows(split.x_train)
    assert not rows(split.x_val) & rows(split.x_test)
    assert rows(split.x_val) | rows(split.x_train) == rows(tiny.x_train)
    assert split.x_test is tiny.x_test  # the test split is untouched


def test_the_split_is_stratified_by_label(tiny):
    split = hold_out_validation(tiny, 0.3)
    before, held = np.bincount(tiny.y_train, minlength=10), np.bincount(split.y_val, minlength=10)
    assert held.sum() == round(0.3 * len(tiny.y_train))
    assert np.all(np.abs(held - 0.3 * before) < 1)  # each class its share, rounded


def test_the_classic_mnist_split_holds_out_ten_thousand():
    labels = np.repeat(np.arange(10), MNIST_TRAIN_COUNTS)
    held = validation_indices(labels, 1 / 6, seed=0)
    assert len(held) == 10_000 and len(np.unique(held)) == 10_000
    assert np.all(np.abs(np.bincount(labels[held]) - np.array(MNIST_TRAIN_COUNTS) / 6) < 1)


def test_the_tuning_preset_holds_out_a_sixth():
    fraction = load_sweep(preset_path("tuning")).run["validation"]
    assert fraction == pytest.approx(1 / 6)
    embedded = hold_out_validation(data_sources.load_embedded(), fraction)
    assert (len(embedded.y_val), len(embedded.y_train)) == (1_667, 8_333)


def test_the_split_is_the_same_whoever_draws_it(tiny, tmp_path):
    """A worker (serial or Ray) draws it from the DataSpec: the same examples as the driver."""
    first = hold_out_validation(tiny, 0.2)
    spec = DataSpec.of(first)
    assert spec.validation == 0.2
    again = spec.load()
    for name in ("x_train", "y_train", "x_val", "y_val"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    assert again.describe() == first.describe()


def test_the_split_is_recorded_with_its_size_and_how_it_was_drawn(tiny):
    about = hold_out_validation(tiny, 0.25).describe()
    assert (about["train_examples"], about["validation_examples"]) == (192, 64)
    assert about["validation"]["fraction"] == 0.25 and about["validation"]["examples"] == 64
    assert "stratified" in about["validation"]["drawn"]
    assert "validation" not in tiny.describe() and "validation_examples" not in tiny.describe()


# ---------------------------------------------------------------- a run


@pytest.fixture
def bench_run(isolated, fake_peak, monkeypatch, tmp_path):
    """bench_run(*flags) -> (exit status, Recorder, the data sets the units got)."""
    npz = write_npz(tmp_path / "tiny.npz")
    monkeypatch.setattr("bench.run.runner.render_reports",
                        lambda run_dirs: render_reports(run_dirs, ("csv",)))

    def run(*flags, data=str(npz), out="out"):
        recorder, seen = Recorder(), []
        train_unit = each_member(recorder)

        def spy(unit, dataset, *args, **kwargs):
            seen.append(dataset)
            return train_unit(unit, dataset, *args, **kwargs)

        monkeypatch.setattr("bench.engine.training.train_unit", spy)
        argv = ["run", *flags] + (["--data", data] if data else []) + (["--out", out] if out else [])
        return main(argv), recorder, seen
    return run


def test_run_json_records_the_split_and_every_unit_trains_on_the_same(bench_run, tmp_path):
    status, recorder, seen = bench_run(*SWEEP, "--seeds", "0,1", "--population", "off",
                                       "--validation", "0.25")
    assert status == 0 and len(seen) == 6  # every trial a unit of its own
    header = results.read_header(tmp_path / "out")
    assert header["options"]["validation"] == 0.25
    assert header["data"]["validation_examples"] == 64 and header["data"]["train_examples"] == 192
    first = seen[0]
    for dataset in seen[1:]:  # every trial and seed: one split
        assert np.array_equal(dataset.y_val, first.y_val)
        assert np.array_equal(dataset.x_val, first.x_val)
    assert all(r["train_examples"] == 192 for r in results.read_results(tmp_path / "out"))


def test_keys_and_files_are_unchanged_without_validation(bench_run, tmp_path):
    bench_run(*SWEEP, "--validation", "0.25", out="with")
    status, _, seen = bench_run(*SWEEP, out="without")
    assert status == 0 and seen[0].x_val is None and len(seen[0].y_train) == 256
    assert keys_in(tmp_path / "with") == keys_in(tmp_path / "without")
    header = results.read_header(tmp_path / "without")
    assert "validation_examples" not in header["data"] and header["options"]["validation"] is None


def test_a_sweep_file_run_table_may_hold_out_validation(bench_run, tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('[grid]\nmodels = "dense"\nunits = 4\nepochs = 1\n'
                     '[run]\nvalidation = 0.5\nrepeats = 2\n')
    status, _, seen = bench_run("--sweep", str(sweep))
    assert status == 0 and len(seen[0].y_val) == 128


@pytest.mark.parametrize("first, then, named", [
    (["--validation", "0.25"], ["--validation", "0.5"], "validation: this run used 0.25, you asked for 0.5"),
    ([], ["--validation", "0.5"], "validation: this run used None, you asked for 0.5"),
])
def test_resuming_with_another_split_is_refused(bench_run, tmp_path, capsys, first, then, named):
    out = tmp_path / "out"
    bench_run(*SWEEP, *first)
    before = (out / "results.jsonl").read_text()
    status, recorder, _ = bench_run("--resume", str(out), *then, data=None, out=None)
    err = capsys.readouterr().err
    assert status == 2 and recorder.keys == [] and named in err
    assert (out / "results.jsonl").read_text() == before


def test_resuming_a_run_recorded_before_validation_existed_refuses_one(bench_run, tmp_path, capsys):
    out = tmp_path / "out"
    bench_run(*SWEEP)
    header = json.loads((out / "run.json").read_text())
    del header["options"]["validation"]
    (out / "run.json").write_text(json.dumps(header))
    status, _, _ = bench_run("--resume", str(out), "--validation", "0.5", data=None, out=None)
    assert status == 2 and "you asked for 0.5" in capsys.readouterr().err


def test_a_plain_resume_keeps_the_split(bench_run, tmp_path):
    out = tmp_path / "out"
    bench_run(*SWEEP, "--validation", "0.25")
    (out / "results.jsonl").write_text("")  # as if nothing had finished
    status, recorder, seen = bench_run("--resume", str(out), data=None, out=None)
    assert status == 0 and len(recorder.keys) == 3 and len(seen[0].y_val) == 64


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1", "abc", "nan"])
def test_a_bad_fraction_on_the_command_line_is_refused(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--validation", value])
    assert exit_.value.code == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["2", "true", '"0.2"', "0"])
def test_a_bad_fraction_in_a_sweep_file_is_refused(bench_run, tmp_path, capsys, value):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'[grid]\nmodels = "dense"\n[run]\nvalidation = {value}\n')
    status, recorder, _ = bench_run("--sweep", str(sweep))
    err = capsys.readouterr().err.strip()
    assert status == 2 and recorder.keys == []
    assert "validation:" in err and "strictly between 0 and 1" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("flags, said", [
    (["--validation", "0.001"], "holds out no example"),
    (["--validation", "0.9", "--batch-size", "32"], "leaves 26 training examples, fewer than a batch of 32"),
])
def test_a_fraction_that_leaves_a_split_empty_is_refused(bench_run, capsys, flags, said):
    status, recorder, _ = bench_run(*SWEEP, *flags)
    err = capsys.readouterr().err
    assert status == 2 and recorder.keys == [] and said in err


@pytest.mark.parametrize("worker_fraction, same", [(0.25, True), (0.5, False)])
def test_a_worker_draws_the_drivers_split_from_the_data_spec(tiny, monkeypatch, worker_fraction,
                                                              same):
    """What a Ray worker does: load the data named by the job's DataSpec, the fraction with it,
    and refuse a job whose driver described other data."""
    from bench.run import work

    driver = hold_out_validation(tiny, 0.25)
    seen = []
    monkeypatch.setattr(work, "_WORKERS", {})
    monkeypatch.setattr(work, "_DATASETS", {})
    monkeypatch.setattr("bench.engine.training.train_unit",
                        lambda unit, dataset, *a, **k: seen.append(dataset) or [])
    config = make_config(BASE)
    spec = dataclasses.replace(DataSpec.of(driver), validation=worker_fraction)
    job = work.Job(unit=Unit("g", (config,), alone=True), data=spec, device="cpu",
                   expect_data=driver.describe())
    work.adopt(job, jax.devices("cpu")[0], {"peak_flops": 1e11})
    if not same:
        with pytest.raises(RuntimeError, match="differs from the driver"):
            work.run_job(job)
        return
    assert work.run_job(job) == []
    [loaded] = seen
    assert loaded is not driver and np.array_equal(loaded.x_val, driver.x_val)


# ---------------------------------------------------------------- the engine

PROTOCOL = TimingProtocol(repeats=2, burn_in=0, round_steps=2)
BASE = {"model": "dense", "units": 4, "activation": "relu", "optimizer": "adam",
        "batch_size": 32, "epochs": 2}


@pytest.fixture(scope="module")
def synthetic():
    from test_training import X_TRAIN, Y_TRAIN, synthetic as draw
    x_test, y_test = (np.asarray(a) for a in draw(64, seed=1))
    return Dataset("synthetic", "npz", "", np.asarray(X_TRAIN), np.asarray(Y_TRAIN), x_test, y_test)


def with_validation(dataset: Dataset, x_val, y_val) -> Dataset:
    return dataclasses.replace(dataset, x_val=x_val, y_val=y_val,
                               validation={"fraction": 0.2, "examples": len(y_val)})


def train(dataset, configs):
    from bench.engine.training import train_unit
    alone = len(configs) == 1
    unit = Unit("alone" if alone else "together", tuple(configs), alone=alone)
    return train_unit(unit, dataset, jax.devices("cpu")[:1], PROTOCOL, peak_flops=1e11)


@pytest.mark.parametrize("members, copies", quick_first(
    [(1, 1), (2, 2)], ids=["alone, the test program shared", "population, its own program"]))
def test_every_epoch_is_evaluated_on_the_validation_split(synthetic, members, copies):
    """The validation split made of the test split (once, or twice over: other shapes, so a
    program of its own) must give every member the test split's figures, epoch by epoch."""
    x_val = np.concatenate([synthetic.x_test] * copies)
    y_val = np.concatenate([synthetic.y_test] * copies)
    configs = [make_config({**BASE, "learning_rate": lr}) for lr in (1e-2, 1e-3)[:members]]
    records = train(with_validation(synthetic, x_val, y_val), configs)
    for record in records:
        assert record.status == "ok" and record.validation_examples == 64 * copies
        assert len(record.history) == 2
        for entry in record.history:
            assert entry["validation_accuracy"] == pytest.approx(entry["test_accuracy"], abs=1e-6)
            assert entry["validation_loss"] == pytest.approx(entry["test_loss"], rel=1e-5)
        last = record.history[-1]
        assert (record.validation_accuracy, record.validation_loss) == (
            last["validation_accuracy"], last["validation_loss"])
    if members > 1:  # the members' rows are their own
        assert records[0].history[-1]["validation_loss"] != records[1].history[-1]["validation_loss"]


@pytest.mark.slow
def test_validation_goes_on_after_diverged_members_leave_the_population(synthetic, monkeypatch):
    """Retiring rows compiles the evaluations again, the validation one with them."""
    monkeypatch.setattr("bench.engine.training.worth_retiring", lambda *_: True)
    doubled = [np.concatenate([a, a]) for a in (synthetic.x_test, synthetic.y_test)]
    configs = [make_config({**BASE, "optimizer": "sgd", "learning_rate": lr, "epochs": 3})
               for lr in (1e30, 0.05, 0.01)]
    records = train(with_validation(synthetic, *doubled), configs)
    assert [r.status for r in records] == ["diverged", "ok", "ok"]
    assert records[1].population.retired  # the survivors trained on as a smaller population
    for record in records[1:]:
        assert len(record.history) == 3
        for entry in record.history:
            assert entry["validation_accuracy"] == pytest.approx(entry["test_accuracy"], abs=1e-6)


def test_without_validation_histories_and_records_are_as_before(synthetic):
    [record] = train(synthetic, [make_config({**BASE, "epochs": 1})])
    assert list(record.history[0]) == ["epoch", "train_loss", "train_accuracy", "test_loss",
                                       "test_accuracy", "epoch_s"]
    stored = record.to_json()
    assert not {"validation_accuracy", "validation_loss", "validation_examples"} & set(stored)


# ---------------------------------------------------------------- what chooses


def planted(lr: float, test: float, validation: float | None, seeds=(0, 1, 2),
            optimizer: str = "adam") -> list[Record]:
    config = {"model": "dense", "units": 64, "activation": "relu", "optimizer": optimizer,
              "learning_rate": lr}
    return [Record(config=make_config({**config, "seed": s}), test_accuracy=test + 0.001 * s,
                   validation_accuracy=None if validation is None else validation + 0.001 * s,
                   epoch_s=[1.0]) for s in seeds]


def judged(records):
    run = Run(Path("run"), RunHeader(), tuple(records), "test")
    groups = group_trials([run])
    return groups, verdict([run], groups)


def test_the_verdict_chooses_on_validation_and_reports_test():
    """1e-2 wins on test, 1e-3 on validation: the choice is 1e-3, shown at its test accuracy."""
    groups, v = judged(planted(1e-2, 0.97, 0.90) + planted(1e-3, 0.95, 0.96)
                       + planted(1e-4, 0.93, 0.94, optimizer="sgd")
                       + planted(1e-1, 0.96, 0.80, optimizer="sgd"))
    [dense] = v.families
    assert dense.chosen_on == "validation"
    assert dense.best.group.config["learning_rate"] == 1e-3
    assert dense.best.mean == pytest.approx(0.951) and dense.best.validation_mean == pytest.approx(0.961)
    family = summary_json(v)["families"]["dense"]
    assert family["chosen_on"] == "validation" and family["best"]["mean"] == pytest.approx(0.951)
    assert any("chosen on validation" in line for line in verdict_lines(v))
    [(best_of)] = best_rates(groups, v).values()  # each optimizer's rate, chosen on validation
    assert {g.config["optimizer"]: g.config["learning_rate"] for g, _ in best_of} == {
        "adam": 1e-3, "sgd": 1e-4}
    board = family_leaderboard(dense, [Run(Path("run"), RunHeader(), (), "test")], v.tie_test)
    assert "validation acc %" in board.columns
    assert "on validation accuracy" in board.caption


def test_without_validation_everywhere_the_verdict_chooses_on_test():
    _, v = judged(planted(1e-2, 0.97, None) + planted(1e-3, 0.95, 0.96))
    [dense] = v.families
    assert dense.chosen_on == "test" and dense.best.group.config["learning_rate"] == 1e-2
    assert summary_json(v)["families"]["dense"]["chosen_on"] == "test"
    assert not any("chosen on validation" in line for line in verdict_lines(v))


def test_ties_are_tested_on_the_split_that_chooses():
    """On test the two are far apart; on validation indistinguishable: tied."""
    _, v = judged(planted(1e-2, 0.90, 0.95) + planted(1e-3, 0.80, 0.9495))
    [dense] = v.families
    assert [s.group.config["learning_rate"] for s in dense.tied] == [1e-3]


def test_results_and_history_csv_show_validation_in_percent():
    record = planted(1e-3, 0.95, 0.96, seeds=(0,))[0]
    record.validation_loss = 0.2
    record.history = [{"epoch": 1, "train_loss": 0.3, "train_accuracy": 0.9, "test_loss": 0.25,
                       "test_accuracy": 0.95, "validation_loss": 0.2,
                       "validation_accuracy": 0.96, "epoch_s": 1.0}]
    run = Run(Path("run"), RunHeader(run_id="r"), (record,), "test")
    header, line = render_history([run]).splitlines()
    assert header.endswith("test_loss,test_accuracy_pct,validation_loss,validation_accuracy_pct,epoch_s")
    assert line.endswith(",0.25,95.0,0.2,96.0,1.0")
    table = dict(zip(*(r.split(",") for r in render_csv([run]).splitlines())))
    assert (table["validation_accuracy_pct"], table["validation_loss"]) == ("96.0", "0.2")
    plain = planted(1e-3, 0.95, None, seeds=(0,))
    plain_run = Run(Path("run"), RunHeader(run_id="r"), tuple(plain), "test")
    assert "validation" not in render_csv([plain_run]).splitlines()[0]
