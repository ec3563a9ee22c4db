"""results.csv and history.csv read with pandas: grouped by config_id they give the report's
seed means, trials not ok have a blank accuracy and their last finite one, and the units are
the reports'."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import report_data
from bench.read.render.aggregate import group_trials
from bench.read.render.report import render_run
from bench.read.render.runs import load_runs

# The report's seed metrics -> (the results.csv column, its scale from the stored value)
METRIC_COLUMNS = {"test_accuracy": ("test_accuracy_pct", 100), "compile_s": ("compile_s", 1),
                  "first_epoch_s": ("first_epoch_s", 1), "steady_epoch_s": ("steady_epoch_s", 1),
                  "step_ms": ("step_ms", 1), "samples_per_s": ("samples_per_s", 1),
                  "achieved_flops": ("achieved_gflop_per_s", 1e-9),
                  "peak_fraction": ("peak_fraction_pct", 100), "params": ("params", 1),
                  "train_s": ("train_s", 1)}
IDS = {"config_id": str, "key": str}


def _flaky_records() -> list[dict]:
    """Three seeds per configuration: one with a diverged and a failed seed, one all diverged."""
    out = []
    for seed in (0, 1, 2):
        cfg = report_data.config("dense", 32, "relu", "adam", seed)
        status = {1: "diverged", 2: "failed"}.get(seed, "ok")
        error = "OSError: disk full" if status == "failed" else None
        out.append(report_data.record(cfg, status=status, error=error))
        out.append(report_data.record(report_data.config("dense", 32, "relu", "sgd", seed)))
        out.append(report_data.record(report_data.config("conv", 16, "tanh", "sgd", seed),
                                      status="diverged"))
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """(runs, groups, raw records by key, results.csv and history.csv as DataFrames)."""
    root = tmp_path_factory.mktemp("csv")
    golden = report_data.write_run(root / "golden", report_data.header(), report_data.golden_records())
    flaky_header = report_data.header(name="flaky", run_id="20250102-000000")
    flaky = report_data.write_run(root / "flaky", flaky_header, _flaky_records())
    trials, epochs = render_run([golden, flaky], ("csv",), root / "out")
    assert [trials.name, epochs.name] == ["results.csv", "history.csv"]
    runs = load_runs([golden, flaky])
    raw = {(run.label, r["key"]): r for run, records in zip(runs, (report_data.golden_records(),
                                                                    _flaky_records())) for r in records}
    return (runs, group_trials(runs), raw, pd.read_csv(trials, dtype=IDS),
            pd.read_csv(epochs, dtype=IDS))


def _close(a, b) -> bool:
    if b is None:
        return math.isnan(a)
    return a == pytest.approx(b, rel=1e-9)


def test_each_configuration_is_one_config_id_with_its_label(rendered):
    _, groups, _, results, _ = rendered
    by_config = results.groupby(["run", "config_id"])
    assert by_config.ngroups == len(groups)
    for g in groups:
        rows = by_config.get_group((g.run, g.records[0].config.config_id))
        assert sorted(rows["key"]) == sorted(r.key for r in g.records)
        assert set(rows["label"]) == {g.label}


def test_plain_means_per_config_id_are_the_reports_seed_means(rendered):
    _, groups, _, results, _ = rendered
    accuracy = results.groupby(["run", "config_id"])["test_accuracy_pct"].mean()
    for g in groups:
        expected = g.metric("test_accuracy").mean
        assert _close(accuracy[(g.run, g.records[0].config.config_id)],
                      None if expected is None else 100 * expected), g.label


def test_means_of_ok_trials_are_the_reports_for_every_seed_metric(rendered):
    _, groups, _, results, _ = rendered
    ok = results[results["status"] == "ok"].groupby(["run", "config_id"])
    for g in (g for g in groups if g.ok):
        rows = ok.get_group((g.run, g.records[0].config.config_id))
        for name, (col, scale) in METRIC_COLUMNS.items():
            expected = g.metric(name).mean
            expected = None if expected is None else scale * expected
            assert _close(rows[col].mean(), expected), (g.label, col)


def test_trials_not_ok_have_a_blank_accuracy_and_their_last_finite_one(rendered):
    _, _, raw, results, _ = rendered
    assert {"diverged", "failed"} <= set(results["status"])
    for _, row in results.iterrows():
        record = raw[(row["run"], row["key"])]
        if row["status"] == "ok":
            assert row["test_accuracy_pct"] == pytest.approx(100 * record["test_accuracy"])
            assert math.isnan(row["last_finite_test_accuracy_pct"])
            continue
        assert math.isnan(row["test_accuracy_pct"])
        if row["status"] == "diverged":  # report_data diverges in epoch 2, at 0.098: chance
            assert record["test_accuracy"] == 0.098 and record["history"][-1]["test_loss"] is None
            expected = 100 * record["history"][0]["test_accuracy"]
            assert row["last_finite_test_accuracy_pct"] == pytest.approx(expected)
        else:  # failed before its first epoch
            assert math.isnan(row["last_finite_test_accuracy_pct"])


def test_units_are_the_reports(rendered):
    _, _, raw, results, _ = rendered
    row = results[results["status"] == "ok"].iloc[0]
    record = raw[(row["run"], row["key"])]
    assert row["peak_fraction_pct"] == pytest.approx(100 * record["peak_fraction"])
    assert row["achieved_gflop_per_s"] == pytest.approx(record["achieved_flops"] / 1e9)
    assert row["step_ms"] == record["step_ms"] and row["compile_s"] == record["compile_s"]
    assert row["round_median_s"] == record["round_stats"]["median"]
    published = results["reference_published_test_accuracy_pct"].dropna()
    assert set(published) == {100 * report_data.REFERENCE["published_test_accuracy"]}
    assert not any(c in results for c in ("test_accuracy", "peak_fraction", "achieved_flops"))


def test_history_has_one_row_per_trial_and_epoch(rendered):
    runs, _, raw, results, history = rendered
    assert len(history) == sum(len(r.history) for run in runs for r in run.records)
    assert not history.duplicated(["run", "key", "epoch"]).any()
    for (run, key), rows in history.groupby(["run", "key"]):
        record = raw[(run, key)]
        assert list(rows["epoch"]) == [h["epoch"] for h in record["history"]]
        assert list(rows["test_accuracy_pct"]) == pytest.approx([100 * h["test_accuracy"]
                                                                 for h in record["history"]])
    # the trial's identity agrees with results.csv
    columns = ["run", "key", "config_id", "label", "seed", "status"]
    joined = history[columns].drop_duplicates().merge(results[columns], how="left", indicator=True)
    assert (joined["_merge"] == "both").all()


def test_history_final_epoch_means_per_config_id_are_the_trials(rendered):
    _, groups, _, results, history = rendered
    ok = history[history["status"] == "ok"]
    final = ok[ok["epoch"] == ok.groupby(["run", "key"])["epoch"].transform("max")]
    from_history = final.groupby(["run", "config_id"])["test_accuracy_pct"].mean()
    from_results = results.dropna(subset=["test_accuracy_pct"]).groupby(
        ["run", "config_id"])["test_accuracy_pct"].mean()
    assert from_history.to_dict() == pytest.approx(from_results.to_dict())
    assert len(from_history) == sum(1 for g in groups if g.ok)


def test_history_of_a_population_member_keeps_its_shared_epoch_time(tmp_path):
    rec = report_data.record(report_data.config("dense", 8, "relu", "sgd", 0))
    rec["history"] = [{k if k != "epoch_s" else "population_epoch_s": v for k, v in h.items()}
                      for h in rec["history"]]
    run = report_data.write_run(tmp_path / "run", report_data.header(), [rec])
    _, epochs = render_run([run], ("csv",), tmp_path / "out")
    history = pd.read_csv(epochs)
    assert "epoch_s" not in history
    assert list(history["population_epoch_s"]) == [h["population_epoch_s"] for h in rec["history"]]
