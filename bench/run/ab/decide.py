"""The A/B decision rule, per trial and metric, on paired rounds (pure: no I/O, no clock).

A pair is one round of each side: one `bench run` of BASE and one of HEAD.

Step time. Each pair gives one ratio HEAD/BASE of the two runs' median step times. On the
log ratios: the estimate is their mean (a geometric-mean ratio), the interval a Student
t-interval at 1 - alpha (95% by default), and the test a one-sided paired t-test (HEAD
slower). With m = --max-slowdown and T the number of trials timed on both sides:
  regression     the t-test's p < alpha / 2 / T (significant, Bonferroni over the T trials,
                 since any one of them fails the gate) and the estimate exceeds 1 + m;
  no regression  the interval's upper end is below 1 + m ('improvement' when the interval
                 lies below 1 and the estimate is below 1 - m);
  undecided      neither, or fewer than `min_pairs` pairs: more pairs are needed, or the
                 budget ran out first.
The gate looks again after every two pairs (gate.py), so the looks are not corrected for
one by one; `min_pairs` (4) and the threshold carry that. With the spreads measured on the
2-vCPU VM, benchmarks/ab_rule_sim.py puts the chance of a false regression in a whole A/A
gate (3 trials, up to 12 pairs) at 0.7% (3.3% for the first rule: from 2 pairs, every pair
a look, no correction over trials), and finds a dense trial 8% slower in 98.5% of gates.
A t-test, not a rank test: with a handful of pairs (a pair costs a minute or so on CPU) a
rank test cannot reach these levels (Wilcoxon's smallest one-sided p with 4 pairs is 1/16).

Accuracy. Both sides train the same trials from the same seeds on the same data, so a
change is the code's: the mean over pairs of HEAD - BASE test accuracy, in points; a drop
beyond --max-accuracy-drop is a regression. Decided from the first pair.

Status. A trial ok in BASE but diverged or failed in HEAD, in any pair, is a regression.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

REGRESSION, NO_REGRESSION, IMPROVEMENT, UNDECIDED, NA = (
    "regression", "no regression", "improvement", "undecided", "n/a")
# Exit statuses of `bench ab` (2: unusable input, set by the command).
EXIT_OK, EXIT_REGRESSION, EXIT_UNUSABLE, EXIT_UNDECIDED = 0, 1, 2, 3


@dataclass(frozen=True)
class Sample:
    """One trial in one round of one side, as its run directory recorded it."""

    status: str
    step_s: float | None = None  # the median of the run's timed rounds, seconds per step
    accuracy: float | None = None  # test accuracy, a fraction
    busy: bool = False


@dataclass(frozen=True)
class Rule:
    max_slowdown: float = 0.05  # a fraction: 0.05 = HEAD 5% slower
    max_accuracy_drop: float = 1.0  # percentage points
    alpha: float = 0.05  # the interval is at 1 - alpha; the test at alpha / 2 / T, one-sided
    min_pairs: int = 4  # pairs before a step-time verdict (gate.py looks after every 2)

    def test_level(self, trials: int) -> float:
        """The one-sided t-test's level for a regression when `trials` trials are timed."""
        return self.alpha / 2 / max(trials, 1)


@dataclass(frozen=True)
class Verdict:
    """One metric of one trial. For step time `estimate`, `low` and `high` are ratios
    HEAD/BASE; for accuracy `estimate` is the change in points. `base` and `head` are each
    side's median step seconds, or mean accuracy (a fraction), or status."""

    key: str
    label: str
    metric: str  # "step_time", "accuracy" or "status"
    verdict: str
    base: float | str | None = None
    head: float | str | None = None
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    pairs: int = 0
    busy_pairs: int = 0


Pair = tuple[dict[str, Sample], dict[str, Sample]]  # (BASE's trials by key, HEAD's)


def ratio_interval(ratios: list[float], alpha: float) -> tuple[float, float, float, float]:
    """(estimate, low, high, one-sided p that HEAD is slower) of paired ratios HEAD/BASE,
    from a t-interval and a t-test on their logs; needs two ratios or more."""
    from scipy.stats import t as student_t  # slow to import: only a decision pays for it

    logs = [math.log(r) for r in ratios]
    n, mean = len(logs), statistics.fmean(logs)
    spread = statistics.stdev(logs) / math.sqrt(n)
    if spread == 0:  # identical ratios: the estimate is exact
        return math.exp(mean), math.exp(mean), math.exp(mean), 0.0 if mean > 0 else 1.0
    half = student_t.ppf(1 - alpha / 2, n - 1) * spread
    p = float(student_t.sf(mean / spread, n - 1))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half), p


def step_time_call(ratios: list[float], rule: Rule, trials: int = 1) -> tuple[str, tuple]:
    """(verdict, (estimate, low, high, p)) of the rule above on a trial's paired ratios, one
    of `trials` trials tested at once."""
    if len(ratios) < 2:
        estimate = ratios[0] if ratios else None
        return UNDECIDED if ratios else NA, (estimate, None, None, None)
    estimate, low, high, p = interval = ratio_interval(ratios, rule.alpha)
    if len(ratios) < rule.min_pairs:
        return UNDECIDED, interval
    limit = 1 + rule.max_slowdown
    if p < rule.test_level(trials) and estimate > limit:
        return REGRESSION, interval
    if high < 1 and estimate < 1 - rule.max_slowdown:
        return IMPROVEMENT, interval
    if high < limit:
        return NO_REGRESSION, interval
    return UNDECIDED, interval


def accuracy_call(changes_pp: list[float], rule: Rule) -> tuple[str, float | None]:
    """(verdict, mean change in points) of a trial's paired accuracy changes HEAD - BASE."""
    if not changes_pp:
        return NA, None
    change = statistics.fmean(changes_pp)
    if change < -rule.max_accuracy_drop:
        return REGRESSION, change
    return (IMPROVEMENT if change > rule.max_accuracy_drop else NO_REGRESSION), change


def judge_trial(key: str, label: str, samples: list[tuple[Sample, Sample]],
                rule: Rule, trials: int = 1) -> list[Verdict]:
    """The trial's verdicts (status if it broke, step time, accuracy) on its paired samples,
    one of `trials` trials judged together."""
    row = dict(key=key, label=label, busy_pairs=sum(b.busy or h.busy for b, h in samples))
    broke = [(b, h) for b, h in samples if b.status == "ok" and h.status != "ok"]
    out = []
    if broke:
        out.append(Verdict(metric="status", verdict=REGRESSION, base="ok", head=broke[0][1].status,
                           pairs=len(samples), **row))
    both_ok = [(b, h) for b, h in samples if b.status == "ok" and h.status == "ok"]
    timed = [(b.step_s, h.step_s) for b, h in samples if _timed(b, h)]
    verdict, (estimate, low, high, p) = step_time_call([h / b for b, h in timed], rule, trials)
    out.append(Verdict(metric="step_time", verdict=verdict, estimate=estimate, low=low, high=high,
                       p_value=p, pairs=len(timed), **_medians(timed), **row))
    scored = [(b.accuracy, h.accuracy) for b, h in both_ok
              if b.accuracy is not None and h.accuracy is not None]
    verdict, change = accuracy_call([100 * (h - b) for b, h in scored], rule)
    out.append(Verdict(metric="accuracy", verdict=verdict, estimate=change, pairs=len(scored),
                       **_means(scored), **row))
    return out


def _medians(pairs: list[tuple[float, float]]) -> dict:
    if not pairs:
        return {}
    return {"base": statistics.median(b for b, _ in pairs),
            "head": statistics.median(h for _, h in pairs)}


def _means(pairs: list[tuple[float, float]]) -> dict:
    if not pairs:
        return {}
    return {"base": statistics.fmean(b for b, _ in pairs),
            "head": statistics.fmean(h for _, h in pairs)}


def common_keys(pairs: list[Pair]) -> tuple[list[str], list[str], list[str]]:
    """(keys both sides ran, keys only BASE ran, keys only HEAD ran), in BASE's order."""
    base = list(dict.fromkeys(k for b, _ in pairs for k in b))
    head = list(dict.fromkeys(k for _, h in pairs for k in h))
    return ([k for k in base if k in head], [k for k in base if k not in head],
            [k for k in head if k not in base])


def judge(pairs: list[Pair], labels: dict[str, str], rule: Rule) -> list[Verdict]:
    """Every verdict of every trial that both sides ran, on the pairs where both ran it."""
    keys, _, _ = common_keys(pairs)
    samples = {k: [(b[k], h[k]) for b, h in pairs if k in b and k in h] for k in keys}
    trials = sum(any(_timed(b, h) for b, h in s) for s in samples.values())
    return [v for k in keys for v in judge_trial(k, labels.get(k, k), samples[k], rule, trials)]


def _timed(base: Sample, head: Sample) -> bool:
    return base.status == head.status == "ok" and bool(base.step_s and head.step_s)


def settled(verdicts: list[Verdict]) -> bool:
    """True when more pairs cannot change the exit status: a regression, or nothing undecided."""
    return (any(v.verdict == REGRESSION for v in verdicts)
            or not any(v.verdict == UNDECIDED for v in verdicts))


def exit_status(verdicts: list[Verdict]) -> int:
    """1 on any regression, else 3 if any verdict is undecided, else 0."""
    if any(v.verdict == REGRESSION for v in verdicts):
        return EXIT_REGRESSION
    return EXIT_UNDECIDED if any(v.verdict == UNDECIDED for v in verdicts) else EXIT_OK
