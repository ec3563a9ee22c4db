"""`bench ab`: sides built from a temporary git repository, the ABBA order, the decision rule
on planted rounds, the loop's budget on an injected clock, and the exit statuses.

The repository holds a tiny fake bench whose `python -m bench run --out DIR` writes a run
directory at once, its step times set by the revision (SLOWDOWN) and the round (NOISE), so
the gate runs for real in well under a second a round. No test reads the wall clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import cli
from bench.run.ab import build as ab_build
from bench.run.ab.decide import (IMPROVEMENT, NO_REGRESSION, REGRESSION, UNDECIDED, Rule, Sample,
                                 accuracy_call, judge, judge_trial, step_time_call)
from bench.run.ab.gate import BUDGET, SETTLED, measure
from bench.run.ab.requirements import Requirements, fit
from bench.run.ab.rounds import Round, read_samples
from bench.run.ab.schedule import round_order, wait_until_quiet

FAKE_MAIN = '''\
"""A fake `python -m bench run ... --out DIR`: one run directory, step times from SLOWDOWN."""
import json, sys
from pathlib import Path
from bench.speed import ACCURACY, NOISE, SLOWDOWN, STATUS

out = Path(sys.argv[sys.argv.index("--out") + 1])
number = int(out.name.split("-")[-1])
out.mkdir(parents=True)
noise = 1 + NOISE * (1 if number % 2 else -1) * (1 + number % 3)
(out / "run.json").write_text(json.dumps({"git_commit": "fake", "versions": {"jax": "0.0.1"},
                                          "fused_lstm_cpu": "on", "argv": sys.argv[1:]}))
rounds = [0.040 * SLOWDOWN * noise * (1 + 0.001 * i) for i in range(5)]
record = {"key": "k1", "config": {"model": "dense", "units": 8}, "status": STATUS,
          "test_accuracy": ACCURACY, "rounds_s": rounds, "round_steps": 40, "busy": False}
(out / "results.jsonl").write_text(json.dumps(record) + "\\n")
'''

FAKE_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "fake-bench-for-ab"
version = "0"
dependencies = []

[tool.setuptools]
packages = ["bench"]
'''

# A build that fails the way a kernel's compiler would, through pip, with no setuptools or
# network needed: an in-tree build backend whose every hook fails.
BROKEN_PYPROJECT = '''\
[build-system]
requires = []
build-backend = "planted_backend"
backend-path = ["."]

[project]
name = "fake-bench-for-ab"
version = "0"
'''
BROKEN_BACKEND = """\
def _fail(*args, **kwargs):
    raise RuntimeError("planted build failure: no compiler")

get_requires_for_build_editable = prepare_metadata_for_build_editable = build_editable = _fail
get_requires_for_build_wheel = prepare_metadata_for_build_wheel = build_wheel = build_sdist = _fail
"""


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _commit(repo: Path, message: str, files: dict[str, str]) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


def _speed(slowdown=1.0, noise=0.0, accuracy=0.95, status="ok") -> dict[str, str]:
    return {"bench/speed.py": f"SLOWDOWN, NOISE, ACCURACY, STATUS = {slowdown}, {noise}, "
                              f"{accuracy}, {status!r}\n"}


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository of the fake bench: a revision per tag below, each on 'base'."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    _commit(root, "base", {"pyproject.toml": FAKE_PYPROJECT, "bench/__init__.py": "",
                           "bench/cli.py": "", "bench/__main__.py": FAKE_MAIN, **_speed()})
    _git(root, "tag", "base")
    for tag, files in {"same": _speed(), "slow": _speed(slowdown=1.2),
                       "noisy": _speed(slowdown=1.04, noise=0.05),
                       "worse": _speed(accuracy=0.90),
                       "failing": _speed(status="failed"),
                       "broken": {"pyproject.toml": BROKEN_PYPROJECT, "planted_backend.py": BROKEN_BACKEND}
                       }.items():
        _commit(root, tag, files)
        _git(root, "tag", tag)
        _git(root, "checkout", "-q", "base")
    return root


def _no_install(plan, src, python, log):
    log.write("(install skipped by the test)\n")


@pytest.fixture
def gate(repo, tmp_path, monkeypatch, capsys):
    """Runs `bench ab` through the CLI on the fake repository; returns (status, stdout, stderr)."""
    monkeypatch.setattr(ab_build, "pip_install", _no_install)

    def run(*args: str, out: str = "out"):
        status = cli.main(["ab", *args, "--repo", str(repo), "--cache-dir", str(tmp_path / "cache"),
                           "--out", str(tmp_path / out), "--max-wait", "0"])
        captured = capsys.readouterr()
        return status, captured.out, captured.err
    return run


# ---------------------------------------------------------------- the order


def test_rounds_alternate_abba():
    assert round_order(3) == ["base", "head", "head", "base", "base", "head"]


def test_gate_runs_rounds_in_abba_order():
    ran = []

    def run(role, number):
        ran.append(role)
        return Round(role, number, Path("x"), {"k": Sample("ok", 0.01, 0.9)})
    measure(run, Rule(min_pairs=4), budget_s=1e9, clock=lambda: 0.0)
    assert ran[:8] == ["base", "head", "head", "base", "base", "head", "head", "base"]


def test_wait_until_quiet_waits_while_busy_and_gives_up_at_the_limit():
    loads, slept = iter([1.5, 0.9, 0.1]), []
    assert wait_until_quiet(60, measure=lambda: next(loads), sleep=slept.append, step_s=5) == 10
    assert slept == [5, 5]
    slept.clear()
    assert wait_until_quiet(12, measure=lambda: 2.0, sleep=slept.append, step_s=5) == 12
    assert slept == [5, 5, 2]


# ---------------------------------------------------------------- the rule


@pytest.mark.parametrize("ratios, verdict", [
    ([1.10, 1.11, 1.09, 1.10], REGRESSION),              # clear slowdown
    ([1.0, 1.003, 0.998, 1.001], NO_REGRESSION),         # no change
    ([1.03, 1.031, 1.029, 1.03], NO_REGRESSION),         # real but within the 5% threshold
    ([1.08, 0.97, 1.12, 0.99], UNDECIDED),               # noisy: the interval spans 1.05
    ([1.06, 1.062, 1.058, 1.06], REGRESSION),            # beyond 5%, and significant
    ([1.06, 0.99, 1.07, 1.00], UNDECIDED),               # beyond 5%, not significant
    ([0.80, 0.81, 0.79, 0.80], IMPROVEMENT),
    ([1.10, 1.11, 1.09], UNDECIDED),                     # clear, but fewer than 4 pairs
    ([1.5], UNDECIDED),                                  # one pair: no interval yet
])
def test_step_time_rule_on_planted_ratios(ratios, verdict):
    assert step_time_call(ratios, Rule(max_slowdown=0.05, min_pairs=4))[0] == verdict


def test_a_regression_is_tested_at_alpha_over_the_trials_timed():
    # p = 0.015: a regression for a trial tested alone (2.5%), not as one of three (0.83%).
    ratios = [1.025, 1.09, 1.04, 1.08]
    verdict, (estimate, _, _, p) = step_time_call(ratios, Rule(), trials=1)
    assert verdict == REGRESSION and 0.025 / 3 < p < 0.025 and estimate > 1.05
    assert step_time_call(ratios, Rule(), trials=3)[0] == UNDECIDED
    assert Rule(alpha=0.05).test_level(3) == pytest.approx(0.05 / 2 / 3)


def test_judge_counts_the_trials_timed_on_both_sides():
    fast, broken = Sample("ok", 0.01, 0.9), Sample("failed")
    ratios = [1.025, 1.09, 1.04, 1.08]  # p = 0.015
    pairs = [({"a": fast, "b": fast, "c": fast}, {"a": Sample("ok", 0.01 * r, 0.9), "b": fast, "c": broken})
             for r in ratios]
    by_trial = {v.key: v for v in judge(pairs, {}, Rule()) if v.metric == "step_time"}
    assert by_trial["c"].pairs == 0  # failed in HEAD: no ratio, so not a test of its own
    assert by_trial["a"].verdict == UNDECIDED  # two trials timed: tested at 0.025 / 2
    alone = [({"a": b["a"]}, {"a": h["a"]}) for b, h in pairs]
    assert next(v for v in judge(alone, {}, Rule()) if v.metric == "step_time").verdict == REGRESSION


def test_step_time_interval_contains_the_estimate():
    _, (estimate, low, high, p) = step_time_call([1.02, 1.05, 1.03, 1.04], Rule())
    assert low < estimate < high and 0 < p < 0.05
    assert estimate == pytest.approx(1.0349, abs=1e-3)


@pytest.mark.parametrize("changes, verdict", [([-2.0, -1.8], REGRESSION), ([-0.5, -0.4], NO_REGRESSION),
                                              ([0.0], NO_REGRESSION), ([2.5], IMPROVEMENT)])
def test_accuracy_rule(changes, verdict):
    assert accuracy_call(changes, Rule(max_accuracy_drop=1.0))[0] == verdict


def test_a_trial_that_fails_in_head_is_a_regression():
    samples = [(Sample("ok", 0.01, 0.9), Sample("failed")), (Sample("ok", 0.01, 0.9), Sample("ok", 0.01, 0.9))]
    verdicts = {v.metric: v.verdict for v in judge_trial("k", "k", samples, Rule())}
    assert verdicts["status"] == REGRESSION


# ---------------------------------------------------------------- the loop and its budget


class FakeClock:
    """Each round costs a minute of this clock; nothing sleeps."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _planted(ratio_of_pair, clock: FakeClock):
    def run(role, number):
        clock.now += 60
        step = 0.010 * (ratio_of_pair(number) if role == "head" else 1.0)
        return Round(role, number, Path(f"{role}-{number}"), {"k": Sample("ok", step, 0.9)})
    return run


@pytest.mark.parametrize("ratio_of_pair, verdict, stopped, pairs", [
    (lambda n: 1.20 + 0.001 * n, REGRESSION, SETTLED, 4),
    (lambda n: 1.0 + 0.001 * (-1) ** n, NO_REGRESSION, SETTLED, 4),
    # 12 rounds = 12 min of a 15-min budget: one more block (4 min) would not fit
    (lambda n: 1.04 + 0.08 * (-1) ** n, UNDECIDED, BUDGET, 6),
])
def test_loop_adds_pairs_until_sure_or_out_of_budget(ratio_of_pair, verdict, stopped, pairs):
    clock = FakeClock()
    outcome = measure(_planted(ratio_of_pair, clock), Rule(min_pairs=4), budget_s=15 * 60, clock=clock)
    step = next(v for v in outcome.verdicts if v.metric == "step_time")
    assert (step.verdict, outcome.stopped, outcome.pairs, step.pairs) == (verdict, stopped, pairs, pairs)
    if verdict == UNDECIDED:
        assert step.low < 1.05 < step.high  # the interval found so far is reported


def test_the_loop_looks_only_after_whole_abba_blocks():
    # With --min-pairs 3 a clear slowdown is still first judged at 4 pairs: each side first twice.
    clock = FakeClock()
    outcome = measure(_planted(lambda n: 1.2 + 0.001 * n, clock), Rule(min_pairs=3), budget_s=1e9, clock=clock)
    assert outcome.pairs == 4 and [r.role for r in outcome.rounds[:4]] == ["base", "head", "head", "base"]


def test_an_accuracy_regression_stops_the_loop_before_min_pairs():
    clock = FakeClock()

    def run(role, number):
        clock.now += 60
        return Round(role, number, Path(f"{role}-{number}"), {"k": Sample("ok", 0.01, 0.9 if role == "base" else 0.8)})
    outcome = measure(run, Rule(min_pairs=6), budget_s=1e9, clock=clock)
    assert outcome.stopped == SETTLED and outcome.pairs == 2
    assert {v.metric: v.verdict for v in outcome.verdicts}["accuracy"] == REGRESSION


# ---------------------------------------------------------------- building a side


def test_a_revision_is_built_into_a_worktree_once_and_reused(repo, tmp_path):
    installs = []

    def install(plan, src, python, log):
        installs.append((plan.overlay, src))
    commit = ab_build.resolve_commit(repo, "slow")
    first = ab_build.build_revision(repo, commit, tmp_path / "cache", install)
    assert not first.reused and first.python.exists() and installs == [(True, first.src)]
    assert _git(first.src, "rev-parse", "HEAD") == commit
    assert "SLOWDOWN, NOISE, ACCURACY, STATUS = 1.2" in (first.src / "bench/speed.py").read_text()
    again = ab_build.build_revision(repo, commit, tmp_path / "cache", install)
    assert again.reused and again.src == first.src and len(installs) == 1


def test_a_cached_build_for_another_environment_is_rebuilt(repo, tmp_path):
    commit = ab_build.resolve_commit(repo, "same")
    built = ab_build.build_revision(repo, commit, tmp_path / "cache", _no_install)
    marker = built.src.parent / "side.json"
    marker.write_text(marker.read_text().replace(sys.version.split()[0], "0.0.0"))
    assert not ab_build.build_revision(repo, commit, tmp_path / "cache", _no_install).reused


def test_install_commands_overlay_and_full(monkeypatch, tmp_path):
    commands = []
    monkeypatch.setattr(ab_build, "run_logged", lambda command, log, cwd=None: commands.append(command))
    overlay = ab_build.Plan(True, ("setuptools>=77",), (), {})
    ab_build.pip_install(overlay, tmp_path / "src", tmp_path / "py", None)
    ab_build.pip_install(ab_build.Plan(False, (), ("jax>=9",), {}), tmp_path / "src", tmp_path / "py", None)
    assert [c[-1] for c in commands] == ["setuptools>=77", str(tmp_path / "src"), str(tmp_path / "src")]
    assert "--no-build-isolation" in commands[1] and "--no-deps" in commands[1]
    assert "--no-build-isolation" not in commands[2]


def test_requirements_decide_between_overlay_and_full():
    versions = {"jax": "0.10.2", "setuptools": "65.5.0"}.get
    needs = fit(Requirements(runtime=("jax>=0.10,<0.11", "tomli; python_version < '3.0'"),
                             build=("setuptools>=77",)), version_of=versions)
    assert needs.shareable and needs.unmet_build == ("setuptools>=77",)
    assert not fit(Requirements(runtime=("jax>=0.12",)), version_of=versions).shareable


def test_a_side_that_does_not_build_is_exit_2_with_the_log_tail(repo, tmp_path, capsys):
    # The real installer: pip runs the revision's setup.py, which fails (no network needed).
    status = cli.main(["ab", "broken", "base", "--repo", str(repo), "--cache-dir",
                       str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--max-wait", "0"])
    err = capsys.readouterr().err
    assert status == 2
    assert "BASE 'broken' does not build" in err and "planted build failure: no compiler" in err
    assert not (tmp_path / "out" / "base").exists()


# ---------------------------------------------------------------- the command


def test_clear_slowdown_is_exit_1_with_outputs(gate, tmp_path):
    status, out, err = gate("base", "slow", "--markdown", str(tmp_path / "ab.md"),
                            "--json", str(tmp_path / "ab.json"))
    assert status == 1, err
    verdict = json.loads((tmp_path / "ab.json").read_text())
    step = next(t for t in verdict["trials"] if t["metric"] == "step_time")
    assert step["verdict"] == "regression" and step["ratio"] == pytest.approx(1.2, rel=1e-3)
    assert verdict["order"] == ["base:1", "head:1", "head:2", "base:2", "base:3", "head:3", "head:4", "base:4"]
    assert verdict["sides"]["base"]["environment"]["kernels"]["fused_lstm_cpu"] == "on"
    timed = sum(t["metric"] == "step_time" for t in verdict["trials"])
    assert verdict["rule"]["test_level"] == pytest.approx(0.025 / timed)
    table = (tmp_path / "ab.md").read_text()
    assert "**regression**" in table and "| BASE `base` |" in table and table in out
    # each round is a run directory of its own, run with the same flags
    argv = json.loads((tmp_path / "out/head/round-02/run.json").read_text())["argv"]
    assert argv[:3] == ["run", "--preset", "ci"]
    assert read_samples(tmp_path / "out/base/round-01")[0]["k1"].status == "ok"


def test_no_change_is_exit_0_and_the_cache_is_reused(gate):
    assert gate("base", "same")[0] == 0
    status, _, err = gate("base", "same", out="out2")
    assert status == 0 and "cached: overlay" in err


def test_accuracy_drop_is_exit_1(gate):
    status, out, _ = gate("base", "worse")
    assert status == 1 and "| test acc % | 95.00 | 90.00 | -5.00 pp |" in out


def test_undecided_within_the_budget_is_exit_3(gate):
    status, out, _ = gate("base", "noisy", "--budget", "0")  # one ABBA block (2 pairs), then out of budget
    assert status == 3 and "undecided (the budget ran out first)" in out


def test_working_tree_and_python_sides(gate, repo, tmp_path):
    # '.': the repository's working tree with this interpreter; python:PATH: an interpreter
    # that imports the fake bench (here through PYTHONPATH) and runs from the gate's folder.
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={repo} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    status, out, err = gate(f"python:{wrapper}", ".")
    assert status == 0, err
    assert "working tree" in err


@pytest.mark.parametrize("args, message", [
    (["nonesuch"], "'nonesuch': not a revision of"),
    (["failing", "failing"], "no trial ran ok on both sides"),
    (["python:/no/such/python"], "no executable interpreter"),
    (["base", "same", "--resume", "x"], "--resume cannot be used with `bench ab`"),
    (["base", "same", "--preset", "nonesuch"], "nonesuch"),
])
def test_unusable_input_is_exit_2(gate, args, message):
    status, _, err = gate(*args)
    assert status == 2 and message in err and "Traceback" not in err


def test_round_flags_are_passed_on_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["ab", "main", "--sweep", "s.toml", "--units", "64,auto",
                                          "--burn-in", "0", "--data", "d.npz", "--recalibrate"])
    assert cli.ab_round_flags(args) == (
        "--sweep", str(tmp_path / "s.toml"), "--units", "64,auto", "--data", str(tmp_path / "d.npz"),
        "--burn-in", "0", "--recalibrate")


def test_the_gate_imports_no_jax():
    code = "import sys, bench.cli, bench.run.ab.command; print('jax' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_busy_rounds_are_counted(tmp_path):
    # textwrap keeps the planted record readable; one busy record makes a busy round
    run = tmp_path / "r"
    run.mkdir()
    (run / "results.jsonl").write_text(textwrap.dedent("""\
        {"key": "a", "status": "ok", "rounds_s": [0.4, 0.5, 0.6], "round_steps": 10, "busy": true}
        {"key": "b", "status": "ok", "step_ms": 3.0}
        not json
        """))
    samples, labels = read_samples(run)
    assert samples["a"].step_s == pytest.approx(0.05) and samples["a"].busy
    assert samples["b"].step_s == pytest.approx(0.003) and labels == {"a": "a", "b": "b"}
