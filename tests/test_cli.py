"""`bench run` and `bench list` end to end through bench.cli.main, on tiny .npz data.

Compiling is what costs time here, so the real runs are few and shared: one
module-scoped run of two tiny dense trials (with the real calibration) and one of
a failing and a diverging trial; the tests that use them are marked slow. Input
errors are in test_errors.py.
"""

from __future__ import annotations

import json

import pytest

from bench.contract import registry, results
from bench.cli import main
from bench.contract.schema import TrialConfig
from bench.contract.sweepfile import preset_names
from bench.engine.timing import summarize
from conftest import isolated_env, write_npz
from models import MODELS, fused_cells, fused_conv, fused_lstm, native_kernels

TINY = ["--models", "dense", "--units", "4", "--optimizers", "adam", "--batch-size", "32",
        "--repeats", "2", "--round-steps", "2"]
EPOCHS = 2  # so that "one time per epoch" is checked on more than one; an epoch here is ~10 ms


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(exit status, run dir, npz path) of one real two-trial run with real calibration."""
    root = tmp_path_factory.mktemp("cli-run")
    npz = write_npz(root / "tiny.npz")
    out = root / "out"
    with isolated_env(root):
        status = main(["run", *TINY, "--activations", "relu,tanh", "--epochs", str(EPOCHS),
                       "--targets", "0.01,1.0", "--data", str(npz), "--out", str(out)])
    return status, out, npz


@pytest.fixture(scope="module")
def records(run):
    return results.read_results(run[1])


@pytest.fixture(scope="module")
def header(run):
    return results.read_header(run[1])


@pytest.mark.slow
def test_run_succeeds_and_writes_the_run_directory(run):
    status, out, _ = run
    assert status == 0
    assert {"run.json", "results.jsonl", "report.md"} <= {p.name for p in out.iterdir()}


@pytest.mark.slow
def test_header_says_where_the_numbers_came_from(run, header):
    _, out, npz = run
    assert header["schema_version"] == results.SCHEMA_VERSION == 4
    assert header["command"].startswith("python -m bench run --models dense")
    assert f"--out {out}" in header["command"]
    for package in ("python", "jax", "jaxlib", "flax", "optax", "scipy-openblas32"):
        assert header["versions"][package], package
    assert header["fused_lstm_cpu"] == fused_lstm.status()  # which LSTM loop timed the trials
    assert header["fused_conv_cpu"] == fused_conv.status()  # which convolution form
    assert header["fused_cells_cpu"] == fused_cells.status()
    assert header["cpu_kernel_target"] == native_kernels.build_target()  # native, or the install's
    assert header["device"]["platform"] == "cpu"
    assert header["device"]["host_cpu"] and header["device"]["usable_cpu_count"] >= 1
    assert header["data"] == {"name": npz.stem, "source": "npz", "location": str(npz),
                              "train_examples": 256, "test_examples": 64,
                              "image_shape": [28, 28], "num_classes": 10}
    assert header["protocol"] == {"repeats": 2, "burn_in": 1, "round_steps": 2,
                                  "targets": [0.01, 1.0]}
    assert len(header["plan"]) == 2


@pytest.mark.slow
def test_header_holds_the_real_calibration(header):
    calibration = header["calibration"]
    assert calibration["peak_flops"] > 1e8  # any CPU does more than 0.1 GFLOP/s
    assert calibration["matrix_size"] == 2048
    assert calibration["seconds"] > 0
    assert calibration["peak_flops"] == pytest.approx(2 * 2048**3 / calibration["seconds"], rel=1e-3)
    assert calibration["cached"] is False and calibration["machine_key"].startswith("cpu|")
    assert calibration["measured"]


@pytest.mark.slow
def test_one_record_per_trial(records, header):
    assert [r["key"] for r in records] == [TrialConfig.from_dict(c).key for c in header["plan"]]
    assert [r["config"]["activation"] for r in records] == ["relu", "tanh"]
    for r in records:
        assert r["config"] == {"model": "dense", "units": 4, "activation": r["config"]["activation"],
                               "optimizer": "adam", "learning_rate": 1e-3, "batch_size": 32,
                               "epochs": EPOCHS, "seed": 0, "depth": 2, "cell": None, "pooling": None,
                               "dropout": 0.0, "l1": 0.0, "l2": 0.0, "impl": "tuned"}


@pytest.mark.slow
def test_records_hold_the_measurements(records, header):
    peak = header["calibration"]["peak_flops"]
    for r in records:
        assert (r["status"], r["error"], r["traceback"]) == ("ok", None, None)
        assert 0 <= r["test_accuracy"] <= 1 and r["test_loss"] > 0
        assert r["compile_s"] > 0 and r["eval_compile_s"] > 0 and r["round_compile_s"] > 0
        assert len(r["epoch_s"]) == EPOCHS and all(s > 0 for s in r["epoch_s"])
        assert [h["epoch"] for h in r["history"]] == list(range(1, EPOCHS + 1))
        assert [h["epoch_s"] for h in r["history"]] == r["epoch_s"]
        assert r["history"][-1]["test_accuracy"] == r["test_accuracy"]
        assert (r["train_examples"], r["test_examples"], r["steps_per_epoch"]) == (256, 64, 8)
        assert r["round_steps"] == 2 and len(r["rounds_s"]) == 2
        assert r["round_stats"]["n"] == 2
        assert r["round_stats"]["median"] == pytest.approx(summarize(r["rounds_s"])["median"], abs=1e-6)
        step_s = r["round_stats"]["median"] / 2
        assert r["samples_per_s"] == pytest.approx(32 / step_s, rel=1e-3)
        assert r["flops_per_step"] > 0
        assert r["peak_fraction"] == pytest.approx(r["achieved_flops"] / peak, abs=1e-4)
        assert r["params"] == (784 * 4 + 4) + (4 * 4 + 4) + (4 * 10 + 10)
        assert isinstance(r["busy"], bool)


@pytest.mark.slow
def test_records_hold_time_to_accuracy(records):
    for r in records:
        tta = r["time_to_accuracy"]
        assert set(tta) == {"0.01", "1"}
        assert tta["1"] is None  # perfect accuracy on random labels: never
        hit = tta["0.01"]  # one right answer in 64: at the first epoch
        assert hit["epoch"] == 1
        assert hit["train_s"] == pytest.approx(r["epoch_s"][0], abs=1e-4)
        assert hit["with_compile_s"] == pytest.approx(r["epoch_s"][0] + r["compile_s"], abs=1e-3)


@pytest.mark.slow
def test_results_are_strict_json_lines(run):
    lines = (run[1] / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


@pytest.mark.slow
def test_report_names_the_data_and_the_trials(run):
    report = (run[1] / "report.md").read_text()
    name = results.read_header(run[1])["data"]["name"]  # an .npz is labelled by its file name
    assert name != "mnist" and name in report and "npz" in report
    assert "256" in report and "64" in report
    assert "dense-4 relu adam" in report and "dense-4 tanh adam" in report


def test_list_shows_what_can_be_swept(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*MODELS, *registry.ACTIVATIONS, *registry.OPTIMIZERS, *preset_names()]:
        assert name in out, name


@pytest.fixture(scope="module")
def troubled(tmp_path_factory):
    """A run of two trials: a batch larger than the training set, then sgd at lr 1e30."""
    root = tmp_path_factory.mktemp("cli-troubled")
    npz = write_npz(root / "tiny.npz")
    out = root / "out"
    with isolated_env(root) as mp:
        mp.setattr("bench.engine.calibrate.measure_peak", lambda device, **_: {
            "peak_flops": 1e11, "matrix_size": 2048, "seconds": 0.17, "measured": "t"})
        status = main(["run", "--models", "dense", "--units", "4", "--activations", "relu",
                       "--optimizers", "sgd", "--learning-rate", "1e30", "--epochs", "1",
                       "--batch-size", "512,32", "--repeats", "2", "--round-steps", "2",
                       "--data", str(npz), "--out", str(out)])
    return status, out, results.read_results(out)


@pytest.mark.slow
def test_a_failing_trial_becomes_a_record_and_the_sweep_goes_on(troubled):
    status, out, (failed, diverged) = troubled
    assert status == 0
    assert failed["config"]["batch_size"] == 512 and failed["status"] == "failed"
    assert "batch size 512" in failed["error"] and "256" in failed["error"]
    assert failed["traceback"]
    assert failed["compile_s"] is None and failed["test_accuracy"] is None
    assert failed["epoch_s"] == [] and failed["rounds_s"] == []
    assert diverged["config"]["batch_size"] == 32  # the next trial ran
    assert "failed" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_diverging_trial_is_marked_and_not_timed(troubled):
    diverged = troubled[2][1]
    assert diverged["status"] == "diverged" and diverged["error"] is None
    assert diverged["compile_s"] > 0
    (only,) = diverged["history"]  # at lr 1e30 both losses overflow in the first epoch
    assert (only["train_loss"], only["test_loss"]) == (None, None)  # NaN/inf stored as null
    assert 0 <= only["train_accuracy"] <= 1 and 0 <= only["test_accuracy"] <= 1
    assert diverged["rounds_s"] == [] and diverged["round_stats"] is None
    assert diverged["samples_per_s"] is None
    assert all(v is None for v in diverged["time_to_accuracy"].values())


def test_a_new_data_set_in_the_same_process_gets_its_own_arrays(monkeypatch):
    """Device copies are cached per data set; a freed data set's id() is often reused by the
    next one, so the cache must not go by id(). Here every id() is made to collide."""
    import jax
    import numpy as np

    from bench.engine import training
    from bench.engine.data import Dataset

    monkeypatch.setattr(training, "id", lambda obj: 42, raising=False)
    device = jax.devices()[0]
    for n in (8, 16):
        x, y = np.full((n, 28, 28), n, np.float32), np.zeros(n, np.int32)
        dataset = Dataset("m", "npz", "", x, y, x[:2], y[:2])
        placed = training.place_dataset(dataset, device)
        assert placed[0].shape == x.shape and float(placed[0][0, 0, 0]) == n
        assert training.place_dataset(dataset, device)[0] is placed[0]  # cached while in use


@pytest.mark.slow  # trains an LSTM
def test_run_says_which_lstm_loop_it_times(isolated, tiny_npz, fake_peak, capsys):
    status = main(["run", "--models", "recurrent", "--units", "2", "--activations", "relu",
                   "--optimizers", "sgd", "--batch-size", "64", "--epochs", "1",
                   "--data", str(tiny_npz), "--out", "out"])
    assert status == 0
    assert f"LSTM time loop: fused CPU kernel {fused_lstm.status()}" in capsys.readouterr().out
