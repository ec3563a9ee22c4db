"""Interrupting and resuming a run: nothing finished is lost or run twice.

The trials themselves are replaced by a recorder (through bench.engine.training.train_unit, which
runs every unit of one trial), so
these tests check the run directory bookkeeping without compiling anything; a
real trial is exercised in test_cli.py.
"""

from __future__ import annotations

import json

import pytest

from bench.contract import results
from bench.cli import main
from bench.read.render.report import render_reports
from bench.contract.facts import PopulationFacts
from bench.contract.schema import Record, TrialConfig
from conftest import write_npz

SWEEP = ["--models", "dense", "--units", "4", "--activations", "relu,tanh,sigmoid",
         "--optimizers", "sgd", "--epochs", "1", "--repeats", "2", "--round-steps", "2"]


class Recorder:
    """Stands in for run_trial: records each config, raises KeyboardInterrupt on chosen calls."""

    def __init__(self, interrupt_on: int | None = None, fail: tuple = ()):
        self.configs, self.protocols, self.interrupt_on, self.fail = [], [], interrupt_on, fail

    def __call__(self, config, dataset, device, protocol, *, peak_flops=None, on_epoch=None):
        self.configs.append(config)
        self.protocols.append(protocol)
        if len(self.configs) == self.interrupt_on:
            raise KeyboardInterrupt
        entry = {"epoch": 1, "test_accuracy": 0.5, "epoch_s": 0.01}
        on_epoch(entry)
        if config.activation in self.fail:
            return Record(config=config, status="failed", error="RuntimeError: boom")
        return Record(config=config, test_accuracy=0.5, epoch_s=[0.01], history=[entry],
                      train_examples=len(dataset.y_train), test_examples=len(dataset.y_test))

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.configs]


def each_member(recorder: Recorder):
    """The engine's train_unit with each member of a unit trained by `recorder`."""
    def train_unit(unit, dataset, device_list, protocol, *, peak_flops=None, on_epoch=None,
                   pruning=None):
        records = [recorder(c, dataset, device_list[0], protocol, peak_flops=peak_flops,
                            on_epoch=on_epoch) for c in unit.members]
        for index, record in enumerate(records):
            record.population = PopulationFacts(unit.group, unit.size, index)
        return records
    return train_unit


@pytest.fixture
def bench_run(isolated, fake_peak, monkeypatch, tmp_path):
    """bench_run(*flags, interrupt_on=None) -> (exit status, Recorder), on tiny.npz into out/.

    The run's report is rendered as Markdown and CSV only: the HTML's plots would cost
    most of each run's time here, and test_report.py checks them."""
    npz = write_npz(tmp_path / "tiny.npz")
    monkeypatch.setattr("bench.run.runner.render_reports",
                        lambda run_dirs: render_reports(run_dirs, ("md", "csv")))

    def run(*flags, interrupt_on=None, data=str(npz), out="out", fail=()):
        recorder = Recorder(interrupt_on, fail)
        monkeypatch.setattr("bench.engine.training.train_unit", each_member(recorder))
        argv = ["run", *flags] + (["--data", data] if data else []) + (["--out", out] if out else [])
        return main(argv), recorder
    return run


def keys_in(run_dir) -> list[str]:
    return [r["key"] for r in results.read_results(run_dir)]


def planned_keys(run_dir) -> list[str]:
    return [TrialConfig.from_dict(c).key for c in results.read_header(run_dir)["plan"]]


def test_interrupted_run_keeps_the_finished_trials(bench_run, tmp_path):
    status, recorder = bench_run(*SWEEP, interrupt_on=2)
    out = tmp_path / "out"
    assert status == 130
    assert keys_in(out) == recorder.keys[:1]
    assert len(planned_keys(out)) == 3
    assert (out / "report.md").exists()


def test_rerunning_the_command_runs_only_what_is_left(bench_run, tmp_path):
    out = tmp_path / "out"
    _, first = bench_run(*SWEEP, interrupt_on=2)
    plan = planned_keys(out)

    status, second = bench_run(*SWEEP)
    assert status == 0
    assert second.keys == plan[1:]  # the interrupted trial runs again, the finished one not
    assert keys_in(out) == plan  # exactly one record per trial
    assert len(results.read_header(out)["resumed"]) == 1

    status, third = bench_run(*SWEEP)
    assert (status, third.keys, keys_in(out)) == (0, [], plan)


def test_resume_flag_alone_continues_the_recorded_plan(bench_run, tmp_path):
    out = tmp_path / "out"
    status, _ = bench_run(*SWEEP, interrupt_on=3, data="embedded")
    assert status == 130 and len(keys_in(out)) == 2

    status, resumed = bench_run("--resume", str(out), data=None, out=None)
    assert status == 0
    assert resumed.keys == planned_keys(out)[2:]
    assert keys_in(out) == planned_keys(out)


def test_resume_flag_alone_keeps_the_recorded_protocol(bench_run, tmp_path):
    out = tmp_path / "out"
    _, first = bench_run(*SWEEP, interrupt_on=3, data="embedded")
    _, resumed = bench_run("--resume", str(out), data=None, out=None)
    assert resumed.protocols == first.protocols[:1]


def test_a_changed_configuration_is_a_new_trial(bench_run, tmp_path):
    out = tmp_path / "out"
    _, first = bench_run(*SWEEP)
    status, second = bench_run(*SWEEP, "--learning-rate", "0.05")
    assert status == 0
    assert len(second.keys) == 3 and not set(second.keys) & set(first.keys)
    assert all(c.learning_rate == 0.05 for c in second.configs)
    assert keys_in(out) == first.keys + second.keys
    assert planned_keys(out) == first.keys + second.keys


def test_a_torn_last_line_is_skipped_and_the_trial_runs_again(bench_run, tmp_path):
    out = tmp_path / "out"
    _, first = bench_run(*SWEEP)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:2]) + lines[2][:40])  # killed mid-write
    assert keys_in(out) == first.keys[:2]

    status, second = bench_run(*SWEEP)
    assert status == 0 and second.keys == first.keys[2:]
    assert keys_in(out) == first.keys
    assert all(json.loads(line) for line in (out / "results.jsonl").read_text().splitlines())


@pytest.mark.parametrize("tail, kept", [
    ('{"key": "c", "sta', ["a", "b"]),  # torn: dropped
    ('{"key": "c"}', ["a", "b", "c"]),  # whole record, only its newline lost: kept
])
def test_appending_after_a_torn_line_keeps_the_file_readable(tmp_path, tail, kept):
    file = tmp_path / results.RESULTS
    file.write_text('{"key": "a"}\n{"key": "b"}\n' + tail)
    results.append_result(tmp_path, {"key": "d"})
    results.append_result(tmp_path, {"key": "e"})
    assert [r["key"] for r in results.read_results(tmp_path)] == [*kept, "d", "e"]


def test_read_results_skips_only_a_torn_last_line(tmp_path):
    file = tmp_path / results.RESULTS
    file.write_text('{"key": "a"}\n\n{"key": "b"}\n{"key": "c", "sta')
    assert [r["key"] for r in results.read_results(tmp_path)] == ["a", "b"]
    assert [r["key"] for r in results.read_results(file)] == ["a", "b"]
    file.write_text('{"key": "a"}\n{"key": "b", "sta\n{"key": "c"}\n')
    with pytest.raises(ValueError, match=":2: not a JSON line"):
        results.read_results(tmp_path)
    assert results.read_results(tmp_path / "absent") == []


def test_non_finite_numbers_are_stored_as_null(tmp_path):
    results.append_result(tmp_path, {"key": "a", "loss": float("nan"), "h": [{"x": float("inf")}]})
    assert results.read_results(tmp_path) == [{"key": "a", "loss": None, "h": [{"x": None}]}]


def test_resuming_with_other_data_is_refused(bench_run, tmp_path, capsys):
    out = tmp_path / "out"
    bench_run(*SWEEP, interrupt_on=2)
    before = (out / "results.jsonl").read_text()
    other = write_npz(tmp_path / "other.npz", n_train=128, n_test=32)

    status, recorder = bench_run(*SWEEP, data=str(other))
    err = capsys.readouterr().err
    assert status == 2 and recorder.keys == []
    assert "data: this run used" in err and "tiny.npz" in err and "other.npz" in err
    assert (out / "results.jsonl").read_text() == before


def test_resuming_onto_other_data_at_the_same_path_is_refused(bench_run, tmp_path, capsys):
    """The recorded data identity is checked too: the same file name, other contents."""
    bench_run(*SWEEP, interrupt_on=2)
    write_npz(tmp_path / "tiny.npz", n_train=128, n_test=32)
    status, recorder = bench_run(*SWEEP)
    err = capsys.readouterr().err
    assert status == 2 and recorder.keys == []
    assert "same --data" in err and "128" in err and "256" in err


def test_resume_alone_reuses_the_recorded_data(bench_run, tmp_path):
    """A run on an .npz, resumed with no --data, continues on that .npz, not the default data."""
    out = tmp_path / "out"
    bench_run(*SWEEP, interrupt_on=2)
    status, recorder = bench_run("--resume", str(out), data=None, out=None)
    assert status == 0
    assert recorder.keys == planned_keys(out)[1:]
    assert keys_in(out) == planned_keys(out)


@pytest.mark.parametrize("flags, named", [
    (["--repeats", "3"], ["repeats: this run used 2, you asked for 3"]),
    (["--round-steps", "5", "--burn-in", "0"],
     ["round_steps: this run used 2, you asked for 5", "burn_in: this run used 1, you asked for 0"]),
    (["--device", "cpu"], ["device: this run used 'auto', you asked for 'cpu'"]),
    (["--targets", "0.5"], ["targets: this run used (0.97, 0.98, 0.99), you asked for (0.5,)"]),
])
def test_resuming_with_other_settings_is_refused_naming_each(bench_run, tmp_path, capsys, flags,
                                                              named):
    out = tmp_path / "out"
    bench_run(*SWEEP, interrupt_on=2)
    before = (out / "run.json").read_text(), (out / "results.jsonl").read_text()
    for resume in ([*SWEEP, *flags], ["--resume", str(out), *flags]):
        status, recorder = bench_run(*resume, out=None if "--resume" in resume else "out")
        err = capsys.readouterr().err
        assert status == 2 and recorder.keys == []
        assert all(text in err for text in named), err
        assert len(err.strip().splitlines()) == 1
    assert ((out / "run.json").read_text(), (out / "results.jsonl").read_text()) == before


def test_resuming_with_the_same_settings_spelled_out_is_accepted(bench_run, tmp_path):
    out = tmp_path / "out"
    bench_run(*SWEEP, interrupt_on=2)
    status, recorder = bench_run(*SWEEP, "--repeats", "2", "--burn-in", "1")
    assert status == 0 and recorder.keys == planned_keys(out)[1:]


def test_a_plain_resume_keeps_failed_trials_and_says_so(bench_run, tmp_path, capsys):
    bench_run(*SWEEP, fail=("tanh",))
    capsys.readouterr()
    status, again = bench_run(*SWEEP)
    assert status == 0 and again.keys == []
    assert "1 of them failed and are kept; --retry-failed runs them again" in capsys.readouterr().out


def test_retry_failed_runs_the_failed_trials_only(bench_run, tmp_path):
    out = tmp_path / "out"
    _, first = bench_run(*SWEEP, fail=("tanh",))
    (tanh,) = [c.key for c in first.configs if c.activation == "tanh"]
    status, retry = bench_run("--resume", str(out), "--retry-failed", data=None, out=None)
    assert status == 0 and retry.keys == [tanh]
    from bench.read.render.runs import read_records
    records = {r.key: r for r in read_records(out)}
    assert records[tanh].status == "ok"  # the new record counts; the failed one stays in the file
    assert len(results.read_results(out)) == 4 and len(records) == 3
    assert results.read_header(out)["resumed"][-1]["retry_failed"] is True


@pytest.mark.slow
def test_a_second_run_into_a_held_directory_is_refused_naming_the_holder(bench_run, tmp_path,
                                                                           capsys):
    """Another process holds the run directory's lock: refused at once, nothing written."""
    import subprocess
    import sys
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from bench.contract import results\n"
         "with results.lock_run_dir(Path(sys.argv[1])):\n    print('held', flush=True)\n"
         "    sys.stdin.readline()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        status, recorder = bench_run(*SWEEP)
        err = capsys.readouterr().err
        assert status == 2 and recorder.keys == []
        assert f"pid {holder.pid}" in err and len(err.strip().splitlines()) == 1
        assert not (out / "results.jsonl").exists()
    finally:
        holder.communicate("\n", timeout=30)
    status, recorder = bench_run(*SWEEP)  # released: the run goes ahead
    assert status == 0 and len(recorder.keys) == 3


def test_runs_started_in_the_same_second_get_their_own_directories(bench_run, tmp_path,
                                                                    monkeypatch):
    import datetime as dt
    fixed = dt.datetime(2026, 1, 1, 12, 0, 0)
    monkeypatch.setattr(results, "new_run_id", lambda now=None: fixed.strftime("%Y%m%d-%H%M%S"))
    for _ in range(3):
        assert bench_run(*SWEEP, out=None)[0] == 0
    made = sorted(p.name for p in (tmp_path / "reports").iterdir())
    assert made == ["20260101-120000", "20260101-120000-2", "20260101-120000-3"]
