"""bench compare: verdicts from the pure functions, exit codes and output through the CLI.

Every run here is synthetic: a run.json and a results.jsonl written into tmp_path,
with timed rounds drawn from a seeded normal distribution.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.read.compare import (CompareError, Thresholds, compare_records, compare_runs, load_run,
                           parse_threshold, timing_verdict)
from bench.read.compare_tables import TITLES, render_markdown
from bench.contract.facts import MachineFacts
from bench.contract.schema import Record, TrialConfig

STEPS = 20  # round_steps of every synthetic record


def config(seed: int = 0, model: str = "dense") -> TrialConfig:
    return TrialConfig(model=model, units=8, activation="relu", optimizer="adam",
                       learning_rate=1e-3, seed=seed)


def draw_rounds(step_s: float, *, n: int = 8, noise: float = 0.02, seed: int = 0) -> list[float]:
    """Seconds of n rounds of STEPS steps, each step ~ Normal(step_s, noise * step_s)."""
    rng = np.random.default_rng(seed)
    return [float(t) for t in STEPS * step_s * (1 + noise * rng.standard_normal(n))]


def record(cfg: TrialConfig | None = None, *, step_s: float = 0.001, rounds: list[float] | None = None,
           accuracy: float | None = 0.98, status: str = "ok", compile_s: float | None = 2.0,
           busy: bool = False, seed: int = 0) -> Record:
    """A record with the fields compare reads."""
    cfg = cfg or config()
    if rounds is None:
        rounds = draw_rounds(step_s, seed=seed) if status == "ok" else []
    return Record(config=cfg, status=status, test_accuracy=accuracy, compile_s=compile_s,
                  round_steps=STEPS, rounds_s=rounds, busy=busy)


def write_run(path: Path, records: list, peak_flops: float | None = None) -> Path:
    """A run directory: run.json (with calibration if given) and results.jsonl."""
    path.mkdir(parents=True, exist_ok=True)
    header = {"schema_version": 1, "run_id": path.name}
    if peak_flops is not None:
        header["calibration"] = {"peak_flops": peak_flops}
    (path / "run.json").write_text(json.dumps(header))
    lines = (json.dumps(r.to_json() if isinstance(r, Record) else r) + "\n" for r in records)
    (path / "results.jsonl").write_text("".join(lines))
    return path


def run_cli(tmp_path: Path, baseline: list[dict], candidate: list[dict], *flags: str,
            peaks: tuple[float | None, float | None] = (None, None)) -> int:
    base = write_run(tmp_path / "base", baseline, peaks[0])
    cand = write_run(tmp_path / "cand", candidate, peaks[1])
    return main(["compare", str(base), str(cand), "--format", "md", *flags])


def verdict_of(comparison, metric: str) -> str:
    (match,) = [v for v in comparison.verdicts if v.metric == metric]
    return match.verdict


# ---------------------------------------------------------------- step time


def test_20_percent_slowdown_is_a_regression(tmp_path):
    base, cand = [record(seed=1)], [record(step_s=0.0012, seed=2)]
    comparison = compare_records(base, cand)
    (step,) = [v for v in comparison.verdicts if v.metric == "step_time"]
    assert step.verdict == "regression"
    assert step.change == pytest.approx(0.2, abs=0.03) and step.p_value < 0.05
    assert run_cli(tmp_path, base, cand) == 1


def test_20_percent_speedup_is_an_improvement(tmp_path):
    base, cand = [record(step_s=0.0012, seed=1)], [record(seed=2)]
    assert verdict_of(compare_records(base, cand), "step_time") == "improvement"
    assert run_cli(tmp_path, base, cand) == 0


def test_2_percent_wobble_is_not_flagged(tmp_path, capsys):
    base, cand = [record(seed=1)], [record(step_s=0.00102, seed=2)]
    assert verdict_of(compare_records(base, cand), "step_time") == "same"
    assert run_cli(tmp_path, base, cand) == 0
    assert "no regression" in capsys.readouterr().out


@pytest.mark.parametrize("noise, shift, expected", [
    (0.001, 1.02, "same"),        # significant, but below the 10% threshold
    (0.60, 1.15, "same"),         # beyond the threshold, but not significant
    (0.001, 1.15, "regression"),  # both
])
def test_step_time_needs_significance_and_size(noise, shift, expected):
    base = draw_rounds(0.001, n=6, noise=noise, seed=3)
    cand = draw_rounds(0.001 * shift, n=6, noise=noise, seed=4)
    assert timing_verdict(base, cand, threshold=0.10, alpha=0.05)[2] == expected


@pytest.mark.parametrize("cand, expected", [([1.3, 1.4], "regression"), ([0.9, 1.4], "same")])
def test_too_few_rounds_fall_back_to_range_overlap(cand, expected):
    change, p, verdict = timing_verdict([1.0, 1.1], cand, threshold=0.10, alpha=0.05)
    assert p is None  # 2 vs 2 rounds can never reach p <= 0.05
    assert verdict == expected


def test_per_metric_threshold_override_changes_the_verdict(tmp_path):
    base, cand = [record(seed=1)], [record(step_s=0.00107, seed=2)]
    assert verdict_of(compare_records(base, cand), "step_time") == "same"
    assert verdict_of(compare_records(base, cand, Thresholds(step_time=0.05)), "step_time") == "regression"
    assert run_cli(tmp_path / "a", base, cand) == 0
    assert run_cli(tmp_path / "b", base, cand, "--threshold", "step_time=0.05") == 1
    assert run_cli(tmp_path / "c", base, cand, "--threshold", "step_time=5%") == 1
    assert run_cli(tmp_path / "d", base, cand, "--max-slowdown", "0.05") == 1


def test_threshold_option_reads_percentages_and_rejects_unknown_metrics():
    """Through the CLI an unknown metric is a usage error (test_errors.py)."""
    assert parse_threshold("compile=50%") == ("compile", 0.5)
    with pytest.raises(ValueError, match="step_time, accuracy, compile"):
        parse_threshold("speed=0.1")


# ---------------------------------------------------------------- accuracy and status


@pytest.mark.parametrize("candidate_accuracy, expected, status", [
    (0.965, "regression", 1),  # -1.5 pp
    (0.975, "same", 0),        # -0.5 pp
])
def test_accuracy_drop_against_threshold(tmp_path, candidate_accuracy, expected, status):
    base, cand = [record(seed=1)], [record(accuracy=candidate_accuracy, seed=1)]
    assert verdict_of(compare_records(base, cand), "accuracy") == expected
    assert run_cli(tmp_path, base, cand) == status


def test_accuracy_threshold_override(tmp_path):
    base, cand = [record(seed=1)], [record(accuracy=0.965, seed=1)]
    assert verdict_of(compare_records(base, cand, Thresholds(accuracy=2.0)), "accuracy") == "same"
    assert run_cli(tmp_path, base, cand, "--threshold", "accuracy=2") == 0


@pytest.mark.parametrize("status", ["failed", "diverged"])
def test_ok_to_failed_or_diverged_is_a_regression(tmp_path, capsys, status):
    base, cand = [record(seed=1)], [record(status=status, accuracy=None, compile_s=None)]
    assert verdict_of(compare_records(base, cand), "status") == "regression"
    assert run_cli(tmp_path, base, cand) == 1
    assert f"| status | ok | {status} |" in capsys.readouterr().out


def test_failed_to_ok_is_not_a_regression(tmp_path):
    base, cand = [record(status="failed", accuracy=None)], [record(seed=1)]
    assert verdict_of(compare_records(base, cand), "status") == "improvement"
    assert run_cli(tmp_path, base, cand) == 0


# ---------------------------------------------------------------- compile time


def test_compile_time_reported_but_gating_only_on_request(tmp_path):
    base, cand = [record(seed=1)], [record(seed=1, compile_s=4.0)]
    (comp,) = [v for v in compare_records(base, cand).verdicts if v.metric == "compile"]
    assert comp.verdict == "regression" and not comp.gating
    assert run_cli(tmp_path / "a", base, cand) == 0
    assert run_cli(tmp_path / "b", base, cand, "--gate-compile") == 1
    assert run_cli(tmp_path / "c", base, cand, "--gate-compile", "--threshold", "compile=1.5") == 0


# ---------------------------------------------------------------- normalization


def test_normalize_cancels_a_machine_twice_as_slow(tmp_path):
    base = [record(step_s=0.001, seed=1, compile_s=2.0)]
    cand = [record(step_s=0.002, seed=2, compile_s=4.0)]
    peaks = (2e12, 1e12)  # the candidate's machine is half as fast
    assert run_cli(tmp_path / "raw", base, cand, peaks=peaks) == 1
    assert run_cli(tmp_path / "norm", base, cand, "--normalize", "--gate-compile", peaks=peaks) == 0
    comparison = compare_runs(load_run(tmp_path / "norm" / "base"), load_run(tmp_path / "norm" / "cand"),
                              normalize=True)
    assert verdict_of(comparison, "step_time") == "same"
    assert verdict_of(comparison, "compile") == "same"


# ---------------------------------------------------------------- unusable input


@pytest.mark.parametrize("line, message", [
    ("[1, 2]", "not an object"),
    ('{"status": "ok"}', "record 1: a record needs its trial config"),
    ('{"config": {"model": "dense", "activation": "relu", "optimizer": "adam", "units": -4}}',
     "record 1: config: units: -4 is out of range"),
    ('{"config": {"model": "dense", "activation": 3, "optimizer": "adam"}}',
     "record 1: config: activations: 3 is not a name"),
    ('{"config": {"model": "dense", "activation": "relu", "optimizer": "adam"}, "colour": 1}',
     "unknown record field(s) colour"),
    ('{"schema_version": 99, "config": {}}', "newer bench"),
])
def test_load_run_rejects_records_that_are_not_trials(tmp_path, line, message):
    run = write_run(tmp_path / "run", [])
    (run / "results.jsonl").write_text(line + "\n")
    with pytest.raises(CompareError, match=re.escape(message)):
        load_run(run)


def test_a_bare_results_file_without_header_is_accepted(tmp_path):
    base = write_run(tmp_path / "base", [record(seed=1)])
    cand = write_run(tmp_path / "cand", [record(seed=2)])
    (cand / "run.json").unlink()
    assert main(["compare", str(base / "results.jsonl"), str(cand / "results.jsonl")]) == 0


# ---------------------------------------------------------------- output


def test_missing_and_extra_trials_are_listed(tmp_path, capsys):
    kept, gone, new = config(seed=0), config(seed=1, model="conv"), config(seed=2, model="recurrent")
    base = [record(kept, seed=1), record(gone, seed=2)]
    cand = [record(kept, seed=3), record(new, seed=4)]
    assert run_cli(tmp_path, base, cand) == 0
    out = capsys.readouterr().out
    missing = out.split("### Missing trials")[1].split("###")[0]
    extra = out.split("### Extra trials")[1]
    assert f"- {gone.label()} seed=1" in missing and new.label() not in missing
    assert f"- {new.label()} seed=2" in extra and gone.label() not in extra
    assert "1 missing, 1 extra" in out


def test_markdown_is_a_valid_table_with_verdicts(tmp_path):
    base = [record(config(seed=0), seed=1), record(config(seed=1), seed=2, busy=True)]
    cand = [record(config(seed=0), step_s=0.0012, seed=3), record(config(seed=1), seed=4)]
    out_file = tmp_path / "compare.md"
    assert run_cli(tmp_path, base, cand, "--markdown", str(out_file)) == 1
    rows = [line for line in out_file.read_text().splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    assert cells[0] == TITLES
    assert all(re.fullmatch(r"-{3,}:?", c) for c in cells[1])
    assert all(len(row) == len(TITLES) for row in cells)
    body = {(row[0], row[1]): row for row in cells[2:]}
    assert len(body) == 6  # 2 trials x (step time, accuracy, compile)
    slow = body[(f"{config(seed=0).label()} seed=0", "step time (ms)")]
    assert slow[TITLES.index("verdict")] == "regression" and slow[TITLES.index("change")].startswith("+")
    busy = body[(f"{config(seed=1).label()} seed=1", "step time (ms)")]
    assert busy[TITLES.index("verdict")] == "same" and busy[TITLES.index("notes")] == "baseline busy"
    assert "**1 regression" in out_file.read_text()


def test_terminal_table_is_the_default(tmp_path, capsys):
    base = write_run(tmp_path / "base", [record(seed=1)])
    cand = write_run(tmp_path / "cand", [record(seed=2)])
    assert main(["compare", str(base), str(cand)]) == 0
    out = capsys.readouterr().out
    assert "bench compare" in out and "no regression" in out and "| ---" not in out


def test_render_markdown_escapes_pipes_in_labels():
    odd = TrialConfig(model="dense", units=8, activation="a|b", optimizer="adam", learning_rate=1e-3)
    text = render_markdown(compare_records([record(odd, seed=1)], [record(odd, seed=2)]))
    assert "a\\|b" in text
    assert all(line.count("|") - line.count("\\|") == len(TITLES) + 1
               for line in text.splitlines() if line.startswith("|"))


def on(machine: dict, rec: Record) -> Record:
    rec.machine = MachineFacts.from_json(machine)
    return rec


NODE_A = {"host": "box-a", "node": "a1b2c3d4e5", "cpu": "Xeon"}
NODE_B = {"host": "box-b", "node": "f6e5d4c3b2", "cpu": "EPYC"}


def test_a_run_from_several_machines_is_flagged_by_compare_and_the_report(tmp_path):
    cfgs = [config(seed=s) for s in range(3)]
    mixed = [on(NODE_A, record(cfgs[0])), on(NODE_B, record(cfgs[1], seed=1)),
             on(NODE_A, record(cfgs[2], seed=2))]
    single = [on(NODE_A, record(c, seed=i)) for i, c in enumerate(cfgs)]
    base = load_run(write_run(tmp_path / "base", single))
    cand = load_run(write_run(tmp_path / "cand", mixed))
    warnings = compare_runs(base, cand).warnings
    [flag] = [w for w in warnings if "machines" in w]
    assert flag.startswith("the candidate's trials came from 2 nodes on 2 machines")
    assert "box-a (node a1b2c3), Xeon: 2 trials" in flag and "box-b (node f6e5d4), EPYC: 1 trial" in flag
    assert not any("baseline" in w for w in warnings)  # one machine: nothing to say
    from bench.read.render.report import render_run
    [report] = render_run([tmp_path / "cand"], ("md",), tmp_path / "report")
    assert "- **Machines**: 2 nodes on 2 machines: box-a (node a1b2c3)" in report.read_text()
