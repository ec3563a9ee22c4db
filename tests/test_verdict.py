"""The verdict (bench/read/render/verdict.py) on records with planted effects: what wins, what
ties, which axes mattered, the noise-aware Pareto front, the warnings, and summary.json."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

import report_data
from bench.contract.facts import RunHeader
from bench.contract.results import load_header
from bench.contract.schema import Record, make_config
from bench.read.render.aggregate import group_trials
from bench.read.render.report import render_reports
from bench.read.render.runs import Run
from bench.read.render.verdict import (GRID_METHOD, SURROGATE_METHOD, TIE_TEST, summary_json,
                                       verdict, verdict_lines)
from bench.run.runner import _mark_finished


def trial(acc: float | None, *, lr: float = 1e-3, optimizer: str = "adam", activation: str = "relu",
          units: int = 64, seed: int = 0, status: str = "ok", train_s: float = 1.0,
          busy: bool = False) -> Record:
    """One dense trial; a diverged one keeps the last finite accuracy as bench records it."""
    config = make_config({"model": "dense", "units": units, "activation": activation,
                          "optimizer": optimizer, "learning_rate": lr, "seed": seed})
    accuracy = {"ok": acc, "diverged": 0.098, "failed": None}[status]
    return Record(config=config, status=status, test_accuracy=accuracy,
                  epoch_s=[] if status == "failed" else [train_s], busy=busy)


def seeds(accs, status=None, train=None, **config) -> list[Record]:
    """One configuration's trials: seed i has accuracy accs[i] (status and time likewise)."""
    status = status or ["ok"] * len(accs)
    train = train or [1.0] * len(accs)
    return [trial(a, seed=i, status=s, train_s=t, **config)
            for i, (a, s, t) in enumerate(zip(accs, status, train))]


def judge(records: list[Record], header: RunHeader | None = None):
    run = Run(Path("run"), header or RunHeader(), tuple(records), "test")
    return verdict([run], group_trials([run]))


def family(records, header=None):
    [dense] = judge(records, header).families
    return dense


def by_lr(standings):
    return {s.group.config["learning_rate"]: s for s in standings}


def codes(v) -> list[str]:
    return [w.code for w in v.warnings]


# ---------------------------------------------------------------- what mattered


def accuracy_of(lr: float) -> float:
    """Peaks at 1e-3 and falls off on either side, in decades: only the learning rate matters."""
    return 0.98 - 0.04 * (math.log10(lr) + 3) ** 2


def test_learning_rate_alone_ranks_first_on_a_full_grid():
    records = [t for lr in (1e-4, 1e-3, 1e-2, 1e-1) for act in ("relu", "tanh")
               for opt in ("adam", "sgd") for t in
               seeds([accuracy_of(lr) + 0.0005 * i for i in range(2)], lr=lr, activation=act,
                     optimizer=opt)]
    dense = family(records)
    assert dense.importance.method == GRID_METHOD
    (first, share), *rest = dense.importance.axes
    assert first == "learning_rate" and share > 0.99
    assert all(score < 0.01 for _, score in rest)
    assert set(dense.swept) == {"activation", "optimizer", "learning_rate"}


def test_learning_rate_alone_ranks_first_on_a_random_search():
    rng = random.Random(0)
    records = []
    for _ in range(30):
        lr = 10 ** rng.uniform(-5, -1)
        records += [trial(accuracy_of(lr), lr=lr, units=rng.choice((32, 64, 128)),
                          activation=rng.choice(("relu", "tanh")),
                          optimizer=rng.choice(("adam", "sgd")))]
    dense = family(records)
    assert dense.importance.method == SURROGATE_METHOD
    [first, *rest] = dense.importance.axes
    assert first[0] == "learning_rate"
    assert all(first[1] > 5 * score for _, score in rest)


def test_an_axis_that_follows_another_does_not_break_a_full_grid():
    """The default sweep: each optimizer at its own learning rate, crossed with activations."""
    records = [t for act, bonus in (("relu", 0.01), ("tanh", 0.0))
               for opt, lr, acc in (("sgd", 0.1, 0.95), ("adam", 1e-3, 0.97))
               for t in seeds([acc + bonus, acc + bonus + 0.001], lr=lr, optimizer=opt,
                              activation=act)]
    importance = family(records).importance
    assert importance.method == GRID_METHOD
    assert [axis for axis, _ in importance.axes][:2] == ["optimizer", "learning_rate"]
    # one effect under two names: said so wherever the scores are shown
    assert importance.follows == (("learning_rate", "optimizer"),)
    assert importance.name("learning_rate") == "learning_rate (follows optimizer)"
    assert any("learning_rate (follows optimizer)" in line
               for line in verdict_lines(judge(records)))
    assert summary_json(judge(records))["families"]["dense"]["importance"]["follows"] == {
        "learning_rate": "optimizer"}


def test_main_effects_count_divergence_at_chance_and_leave_failures_out():
    records = [*seeds([0.97, 0.97], lr=1e-3), *seeds([0.96, 0.98], lr=1e-2),
               *seeds([None, None], status=["diverged"] * 2, lr=1.0),
               *seeds([0.90, None], status=["ok", "failed"], lr=1e-4)]
    [effect] = family(records).effects
    assert effect.axis == "learning_rate" and effect.log_scale
    means = {level.value: level.mean for level in effect.levels}
    assert means == pytest.approx({1e-4: 0.90, 1e-3: 0.97, 1e-2: 0.97, 1.0: 0.1})
    assert [level.value for level in effect.levels] == [1e-4, 1e-3, 1e-2, 1.0]


def test_main_effect_intervals_and_linear_axes():
    records = [t for units in (64, 128) for lr in (1e-3, 2e-3)
               for t in seeds([0.9 + units / 10_000], units=units, lr=lr)]
    effects = {e.axis: e for e in family(records).effects}
    assert not effects["units"].log_scale and not effects["learning_rate"].log_scale
    level = effects["units"].levels[0]
    assert (level.value, level.n, level.ci95) == (64, 2, pytest.approx((0.9064, 0.9064)))


# ---------------------------------------------------------------- rankings and ties


def test_a_planted_tie_is_called_a_tie_and_a_clear_loser_is_not():
    records = [*seeds([0.975, 0.978, 0.981], lr=1e-3), *seeds([0.974, 0.979, 0.980], lr=2e-3),
               *seeds([0.950, 0.951, 0.952], lr=4e-3)]
    dense = family(records)
    ranks = by_lr(dense.standings)
    assert dense.best is ranks[1e-3]
    assert [s.group.config["learning_rate"] for s in dense.tied] == [2e-3]
    assert (ranks[1e-3].rank, ranks[2e-3].rank, ranks[4e-3].rank) == (1, 1, 3)
    assert ranks[2e-3].tied and not ranks[4e-3].tied and not ranks[1e-3].tied
    lo, hi = dense.best.ci95
    assert lo < 0.978 < hi and hi - lo == pytest.approx(2 * 4.303 * 0.003 / math.sqrt(3), rel=1e-3)
    assert any("tied: 1 (Welch's t-test" in line for line in verdict_lines(judge(records)))


def test_a_clear_winner_is_not_tied():
    dense = family([*seeds([0.980, 0.981, 0.982], lr=1e-3), *seeds([0.960, 0.961, 0.962], lr=1e-2)])
    assert dense.tied == () and [s.rank for s in dense.standings] == [1, 2]


def test_a_noisy_configuration_below_a_clearly_worse_one_is_not_tied():
    # Tested alone against the best, the noisy 96.7% is "not significantly different"
    # (Welch, 2 seeds); but 97.6% above it is significantly worse, so a tie would rank it
    # above 97.6%: the tie stops at the first configuration, by mean, that is not tied.
    records = [*seeds([0.9795, 0.9799], lr=1e-3), *seeds([0.9756, 0.9760], lr=2e-3),
               *seeds([0.9585, 0.9761], lr=4e-3)]
    dense = family(records)
    ranks = by_lr(dense.standings)
    assert dense.tied == ()
    assert [s.group.config["learning_rate"] for s in dense.standings] == [1e-3, 2e-3, 4e-3]
    assert [s.rank for s in dense.standings] == [1, 2, 3]
    from bench.read.render.verdict import is_tied
    assert is_tied(ranks[1e-3], ranks[4e-3])  # what a test against the best alone would say


def test_identical_seeds_neither_crash_nor_give_nan():
    same = family([*seeds([0.97, 0.97], lr=1e-3), *seeds([0.97, 0.97], lr=1e-2)])
    assert len(same.tied) == 1 and same.best.ci95 == (0.97, 0.97)
    apart = family([*seeds([0.97, 0.97], lr=1e-3), *seeds([0.96, 0.96], lr=1e-2)])
    assert apart.tied == ()


def test_one_seed_of_three_ok_does_not_win_even_when_it_is_the_most_accurate():
    records = [*seeds([0.99, None, None], status=["ok", "diverged", "failed"], lr=1e-2),
               *seeds([0.970, 0.971, 0.972], lr=1e-3)]
    v = judge(records)
    [dense] = v.families
    lucky = by_lr(dense.standings)[1e-2]
    assert dense.best.group.config["learning_rate"] == 1e-3
    assert (lucky.ok_text, lucky.complete, lucky.rank, lucky.tied) == ("1/3 ok", False, 2, False)
    assert (dense.trials, dense.diverged, dense.failed) == (6, 1, 1)
    assert "unstable" in codes(v)


def test_a_family_without_a_complete_configuration_names_no_best():
    v = judge(seeds([0.97, None], status=["ok", "failed"]))
    assert v.families[0].best is None and codes(v) == ["no_complete", "unstable"]
    assert "no best" in verdict_lines(v)[1]


def test_single_seed_is_said_plainly_and_nothing_is_tied():
    v = judge([trial(0.97, lr=1e-3), trial(0.97, lr=1e-2)])
    assert v.families[0].tied == () and v.families[0].best.ci95 is None
    assert "single_seed" in codes(v)
    warning = next(w for w in v.warnings if w.code == "single_seed")
    assert "--seeds 0,1,2" in warning.message
    assert any("not tested (one seed" in line for line in verdict_lines(v))


# ---------------------------------------------------------------- the Pareto front


def test_pareto_drops_a_noise_level_edge_and_keeps_a_clear_one():
    """The issue's case: 90.4% on the front only because 0.1627 s edged out 0.163 s."""
    accurate = seeds([0.975, 0.978, 0.981], train=[0.159, 0.163, 0.167], lr=1e-3)
    edge = seeds([0.902, 0.904, 0.906], train=[0.1575, 0.1625, 0.1675], lr=1e-2)
    fast = seeds([0.850, 0.851, 0.852], train=[0.080, 0.081, 0.082], lr=1e-1)
    dense = family([*accurate, *edge, *fast])
    assert [s.group.config["learning_rate"] for s in dense.pareto] == [1e-1, 1e-3]
    run = Run(Path("r"), RunHeader(), (*accurate, *edge, *fast), "r")
    means = [(g.config["learning_rate"], g.metric("test_accuracy").mean, g.metric("train_s").mean)
             for g in group_trials([run])]
    plain = [lr for lr, acc, t in means  # the plain rule: no other both more accurate and faster
             if not any(a > acc and u < t for _, a, u in means)]
    assert 1e-2 in plain


def test_pareto_with_one_seed_counts_only_strict_differences():
    dense = family([trial(0.97, lr=1e-3, train_s=1.0), trial(0.96, lr=1e-2, train_s=1.0),
                    trial(0.95, lr=1e-1, train_s=0.999)])
    assert [s.group.config["learning_rate"] for s in dense.pareto] == [1e-1, 1e-3]


# ---------------------------------------------------------------- warnings


@pytest.mark.parametrize("best_lr, fires", [(1e-2, True), (1e-4, True), (1e-3, False)])
def test_lr_at_edge_fires_at_the_edge_of_the_grid_only(best_lr, fires):
    records = [t for lr in (1e-4, 1e-3, 1e-2)
               for t in seeds([0.98 if lr == best_lr else 0.90] * 2, lr=lr)]
    v = judge(records)
    assert ("lr_at_edge" in codes(v)) is fires
    if fires:
        message = next(w.message for w in v.warnings if w.code == "lr_at_edge")
        edge = "largest" if best_lr == 1e-2 else "smallest"
        assert f"{best_lr:g}" in message and edge in message


def test_lr_at_edge_needs_three_rates():
    two_rates = [*seeds([0.98] * 2, lr=1e-3), *seeds([0.9] * 2, lr=1e-2)]
    assert "lr_at_edge" not in codes(judge(two_rates))


def test_busy_trials_and_a_wide_interval_are_warned_about():
    v = judge([trial(0.97, seed=0, busy=True), trial(0.93, seed=1), trial(0.99, seed=2)])
    assert codes(v) == ["unstable", "busy"]
    assert "1 of 3 trials" in v.warnings[1].message


# ---------------------------------------------------------------- wall time and summary.json


def test_wall_time_from_run_json_start_to_finish_of_each_invocation():
    header = RunHeader(started="2025-01-01T12:00:00+00:00", finished="2025-01-01T12:01:30+00:00")
    assert judge([trial(0.97)], header).wall_s == 90
    header.resumed = [{"at": "2025-01-02T08:00:00+00:00", "finished": "2025-01-02T08:00:10+00:00"}]
    v = judge([trial(0.97)], header)
    assert v.wall_s == 100 and "resumed" in v.wall_note


def test_an_old_run_json_without_finish_sums_the_trials_wall_times():
    header = load_header(Path(__file__).parent / "golden" / "run")
    assert header.finished is None
    records = [trial(0.97), trial(0.96, lr=1e-2)]
    for r, wall in zip(records, (3.0, 4.5)):
        r.wall_s = wall
    v = judge(records, header)
    assert v.wall_s == 7.5 and "sum of the trials' wall times" in v.wall_note


def test_the_runner_marks_the_end_of_each_invocation():
    header = RunHeader(started="2025-01-01T12:00:00+00:00")
    _mark_finished(header)
    assert header.finished is not None and RunHeader.from_json(header.to_json()) == header
    first = header.finished
    header.resumed.append({"command": "bench run --resume", "at": "2025-01-02T08:00:00+00:00"})
    _mark_finished(header)
    assert header.finished == first and header.resumed[0]["finished"] >= first


def test_summary_json_holds_the_documented_fields_and_round_trips(tmp_path):
    run_dir = report_data.write_run(tmp_path / "run", report_data.header(),
                                    report_data.golden_records())
    rendered = render_reports([run_dir], ("csv",), tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert tmp_path / "out" / "summary.json" in rendered.paths
    assert summary == summary_json(rendered.verdict)
    assert summary["trials"] == 16 and summary["tie_test"] == TIE_TEST
    dense = summary["families"]["dense"]
    best = dense["best"]
    assert set(best) >= {"config_id", "label", "mean", "ci95", "seeds", "ok"}
    assert best["label"] == "dense-64 relu adam lr=0.001" and (best["seeds"], best["ok"]) == (2, 2)
    assert best["ci95"][0] < best["mean"] < best["ci95"][1] < 1
    assert all(isinstance(i, str) for i in dense["tied"])
    assert dense["importance"]["method"] == GRID_METHOD
    scores = [a["score"] for a in dense["importance"]["axes"]]
    assert scores == sorted(scores, reverse=True)
    assert set(dense["importance"]["axes"][0]) == {"axis", "score"}
    assert (dense["trials"], dense["diverged"], dense["failed"]) == (8, 1, 0)
    assert {e["axis"] for e in dense["main_effects"]} == {"activation", "optimizer",
                                                          "learning_rate"}
    assert {w["code"] for w in summary["warnings"]} == {"unstable"}
    assert all(set(w) >= {"code", "message"} for w in summary["warnings"])


def test_summary_json_has_no_nan_where_figures_are_missing():
    v = judge([trial(None, status="failed"), trial(0.97, lr=1e-2)])
    text = json.dumps(summary_json(v), allow_nan=False)
    assert json.loads(text)["families"]["dense"]["standings"][1]["mean"] is None


def test_a_pruned_run_judges_what_mattered_at_the_last_epoch_every_configuration_reached():
    """Survivors alone are the configurations pruning kept, all good: over them the learning
    rate would seem not to matter. At the rung, every configuration has a figure."""
    records = []
    for optimizer in ("adam", "sgd"):
        for lr, first_epoch in ((1e-3, 0.90), (1e-2, 0.60), (1e-1, 0.30)):
            record = trial(0.95 if lr == 1e-3 else first_epoch, lr=lr, optimizer=optimizer)
            record.history = [{"epoch": 1, "test_accuracy": first_epoch}]
            if lr != 1e-3:  # pruned at the rung after epoch 1
                record.status, record.pruned_at_epoch = "pruned", 1
            else:
                record.history.append({"epoch": 2, "test_accuracy": 0.95})
            records.append(record)
    dense = family(records)
    assert "at epoch 1" in dense.importance.method
    assert dense.importance.axes[0][0] == "learning_rate" and dense.importance.axes[0][1] > 0.9
    [lr_effect] = [e for e in dense.effects if e.axis == "learning_rate"]
    assert [round(level.mean, 2) for level in lr_effect.levels] == [0.90, 0.60, 0.30]
    assert dense.best.group.config["learning_rate"] == 1e-3 and dense.pruned == ((1, 4),)


def test_pruned_configurations_rank_by_the_rung_they_reached_then_their_accuracy_there():
    """Halving's own judgement: one stopped at epoch 2 above those stopped at epoch 1, and
    among those the better at the rung first, whatever the sweep's order."""
    def pruned(lr: float, at: int, accuracy: float) -> Record:
        record = trial(None, lr=lr)
        record.status, record.pruned_at_epoch = "pruned", at
        record.history = [{"epoch": e, "test_accuracy": accuracy} for e in range(1, at + 1)]
        return record
    records = [trial(0.95, lr=1e-3), pruned(1e-4, 1, 0.40), pruned(3e-3, 1, 0.70),
               pruned(1e-2, 2, 0.60), pruned(3e-2, 1, 0.55)]
    assert list(by_lr(family(records).standings)) == [1e-3, 1e-2, 3e-3, 3e-2, 1e-4]
