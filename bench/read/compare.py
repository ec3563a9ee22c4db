"""Baseline vs candidate: per-trial regression checks between two runs.

Trials are matched by key. Step time is judged on the repeated timed rounds: a
change counts only if a one-sided Mann-Whitney U test finds it (as asv does)
AND the medians differ by more than the threshold, so noise never gates and
significant-but-tiny changes don't either. Accuracy and compile time are single
samples and are judged against a threshold alone. Compile time is reported but
does not gate unless asked: one sample, and a compilation-cache hit makes it
near zero.

Layout: loading (`load_run`), then pure checks returning frozen verdicts
(`compare_records`); the tables are drawn by bench/read/compare_tables.py and the
command itself is bench/read/compare_command.py.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.read.render.cells import machines_line
from bench.read.render.runs import read_records, read_run_header
from bench.contract.facts import RunHeader, data_identity
from bench.contract.results import HEADER
from bench.contract.schema import Record

# metric name -> what its threshold means (shown by --help and in errors)
METRICS: dict[str, str] = {
    "step_time": "relative change of the median step time (0.10 = 10%)",
    "accuracy": "change of test accuracy in percentage points (1.0 = 1 pp)",
    "compile": "relative change of the compile time (0.5 = 50%)",
}
VERDICTS = ("regression", "improvement", "same", "n/a")


class CompareError(ValueError):
    """Input that cannot be compared (exit status 2); the message says why."""


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class Run:
    """One side of a comparison: where it came from, its header (if any) and records."""

    path: Path
    header: RunHeader | None
    records: tuple[Record, ...]


def load_run(path: Path | str) -> Run:
    """Reads a run directory or a results.jsonl file (run.json beside it is optional)."""
    path = Path(path)
    if not path.exists():
        raise CompareError(f"{path}: no such file or directory")
    header_file = (path if path.is_dir() else path.parent) / HEADER
    try:
        header = read_run_header(header_file.parent) if header_file.exists() else None
        records = read_records(path)
    except (ValueError, OSError) as exc:  # SchemaError, RunDirError, JSONDecodeError are ValueErrors
        raise CompareError(f"unreadable: {exc}") from None
    if not records:
        raise CompareError(f"{path}: no trial results")
    return Run(path, header, tuple(records))


def peak_flops(run: Run) -> float:
    """The run's calibrated fp32 peak FLOP/s; CompareError if it has none."""
    calibration = run.header.calibration if run.header else {}
    peak = calibration.get("peak_flops") if isinstance(calibration, dict) else None
    if not isinstance(peak, (int, float)) or not peak > 0:
        raise CompareError(f"{run.path}: no calibration.peak_flops in {HEADER}; "
                           "--normalize needs both runs calibrated")
    return float(peak)


# ---------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Thresholds:
    """Per-metric thresholds (see METRICS), the significance level, and what gates."""

    step_time: float = 0.10
    accuracy: float = 1.0
    compile: float = 0.50
    alpha: float = 0.05
    gate_compile: bool = False


@dataclass(frozen=True)
class MetricVerdict:
    """One metric of one matched trial. `change`: a fraction for times, pp for accuracy."""

    key: str
    label: str
    metric: str  # "status" or a METRICS name
    baseline: float | str | None
    candidate: float | str | None
    change: float | None = None
    p_value: float | None = None
    verdict: str = "same"
    gating: bool = True
    notes: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return self.gating and self.verdict == "regression"


@dataclass(frozen=True)
class Comparison:
    """Every verdict, the unmatched trials (as labels) and run-level warnings."""

    verdicts: tuple[MetricVerdict, ...]
    missing: tuple[str, ...]
    extra: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    normalized: bool = False

    @property
    def regressions(self) -> list[MetricVerdict]:
        return [v for v in self.verdicts if v.is_regression]


def parse_threshold(text: str) -> tuple[str, float]:
    """'step_time=0.05' or 'step_time=5%' -> ('step_time', 0.05); ValueError if malformed."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or name not in METRICS:
        raise ValueError(f"{text!r}: expected METRIC=VALUE with METRIC one of {', '.join(METRICS)}")
    value = value.strip()
    number = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    if not number >= 0 or math.isinf(number):
        raise ValueError(f"{text!r}: the threshold must be a finite number >= 0")
    return name, number


def min_p_value(n_baseline: int, n_candidate: int) -> float:
    """The smallest one-sided p the exact Mann-Whitney U test can give for these sizes."""
    if not (n_baseline and n_candidate):
        return 1.0
    return 1 / math.comb(n_baseline + n_candidate, n_baseline)


def timing_verdict(baseline: list[float], candidate: list[float], threshold: float,
                   alpha: float) -> tuple[float | None, float | None, str]:
    """(relative change of medians, p-value, verdict) for two samples of times; lower is better.

    Uses the one-sided Mann-Whitney U test when the sample sizes can reach `alpha`,
    otherwise non-overlapping [min, max] ranges (p-value None).
    """
    if not baseline or not candidate:
        return None, None, "n/a"
    base, cand = statistics.median(baseline), statistics.median(candidate)
    if base <= 0:
        return None, None, "n/a"
    change = (cand - base) / base
    if min_p_value(len(baseline), len(candidate)) <= alpha:
        p = _mann_whitney(baseline, candidate, slower=change >= 0)
        significant = p <= alpha
    else:
        p = None
        significant = min(candidate) > max(baseline) or max(candidate) < min(baseline)
    if significant and change > threshold:
        return change, p, "regression"
    if significant and change < -threshold:
        return change, p, "improvement"
    return change, p, "same"


def _mann_whitney(baseline: list[float], candidate: list[float], slower: bool) -> float:
    """One-sided p-value that the candidate is slower (or, if not `slower`, faster)."""
    from scipy.stats import mannwhitneyu  # slow to import: only a comparison pays for it

    p = mannwhitneyu(candidate, baseline, alternative="greater" if slower else "less").pvalue
    return 1.0 if math.isnan(p) else float(p)


def threshold_verdict(change: float | None, threshold: float, *, lower_is_better: bool) -> str:
    """Verdict of a single-sample metric: beyond the threshold in the bad/good direction."""
    if change is None:
        return "n/a"
    worse = change > threshold if lower_is_better else change < -threshold
    better = change < -threshold if lower_is_better else change > threshold
    return "regression" if worse else "improvement" if better else "same"


def compare_status(base: Record, cand: Record) -> str:
    """ok -> diverged/failed is a regression, the reverse an improvement (see `censored`
    for a trial pruned on one side)."""
    if base.status == cand.status:
        return "same"
    if base.ok:
        return "regression"
    return "improvement" if cand.ok else "same"


def censored(base: Record, cand: Record) -> str | None:
    """A note where one side pruned the trial (--prune) and the other did not stop it at the
    same rung: its status and accuracy are then not comparable (a pruned trial is finished,
    stopped at a rung by successive halving: neither a failure nor a regression)."""
    if "pruned" not in (base.status, cand.status):
        return None
    if (base.status, base.pruned_at_epoch) == (cand.status, cand.pruned_at_epoch):
        return None
    sides = [f"pruned in the {side} at epoch {r.pruned_at_epoch}"
             for side, r in (("baseline", base), ("candidate", cand)) if r.status == "pruned"]
    return " and ".join(sides) + ": censored, not compared"


def compare_trial(base: Record, cand: Record, label: str, thresholds: Thresholds,
                  scales: tuple[float, float] = (1.0, 1.0)) -> list[MetricVerdict]:
    """Verdicts on status (if it changed), step time, accuracy and compile time of one trial."""
    notes = tuple(f"{side} busy" for side, r in (("baseline", base), ("candidate", cand)) if r.busy)
    row = dict(key=base.key, label=label, notes=notes)
    pruned = censored(base, cand)
    out = []
    if base.status != cand.status:
        out.append(MetricVerdict(metric="status", baseline=base.status, candidate=cand.status,
                                 verdict="n/a" if pruned else compare_status(base, cand),
                                 **{**row, "notes": notes + ((pruned,) if pruned else ())}))
    out.append(_step_time_verdict(base, cand, thresholds, scales, row))
    accuracy = _accuracy_verdict(base, cand, thresholds, row)
    if pruned:
        accuracy = dataclasses.replace(accuracy, change=None, verdict="n/a",
                                       notes=notes + (pruned,))
    out.append(accuracy)
    out.append(_compile_verdict(base, cand, thresholds, scales, row))
    return out


def _step_time_verdict(base, cand, thresholds: Thresholds, scales, row: dict) -> MetricVerdict:
    b, c = base.step_times(scales[0]), cand.step_times(scales[1])
    change, p, verdict = timing_verdict(b, c, thresholds.step_time, thresholds.alpha)
    return MetricVerdict(metric="step_time", baseline=statistics.median(b) if b else None,
                         candidate=statistics.median(c) if c else None, change=change,
                         p_value=p, verdict=verdict, **row)


def _accuracy_verdict(base, cand, thresholds: Thresholds, row: dict) -> MetricVerdict:
    b, c = base.test_accuracy, cand.test_accuracy
    change = 100 * (c - b) if b is not None and c is not None else None
    verdict = threshold_verdict(change, thresholds.accuracy, lower_is_better=False)
    return MetricVerdict(metric="accuracy", baseline=b, candidate=c, change=change,
                         verdict=verdict, **row)


def _compile_verdict(base, cand, thresholds: Thresholds, scales, row: dict) -> MetricVerdict:
    b, c = base.compile_s, cand.compile_s
    b, c = (None if v is None else v * s for v, s in zip((b, c), scales))
    change = (c - b) / b if b and c is not None else None
    verdict = threshold_verdict(change, thresholds.compile, lower_is_better=True)
    cached = base.compile_cache_hits or cand.compile_cache_hits
    notes = row["notes"] + (("compile cache hit",) if cached else ())
    return MetricVerdict(metric="compile", baseline=b, candidate=c, change=change, verdict=verdict,
                         gating=thresholds.gate_compile, **{**row, "notes": notes})


def trial_labels(records: list[Record]) -> dict[str, str]:
    """key -> 'label seed=N'; labels that still collide get the key appended."""
    labels = {r.key: f"{r.config.label()} seed={r.config.seed}" for r in records}
    counts = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {k: (f"{v} [{k}]" if counts[v] > 1 else v) for k, v in labels.items()}


def compare_records(baseline: list[Record], candidate: list[Record],
                    thresholds: Thresholds = Thresholds(),
                    scales: tuple[float, float] = (1.0, 1.0)) -> Comparison:
    """Matches trials by key (a repeated key: the last record wins) and judges each pair."""
    base = {r.key: r for r in baseline}
    cand = {r.key: r for r in candidate}
    labels = trial_labels([*base.values(), *cand.values()])
    common = [k for k in base if k in cand]
    if not common:
        raise CompareError("no trial in common between baseline and candidate "
                           "(trials are matched by the key of their configuration)")
    verdicts = [v for k in common for v in compare_trial(base[k], cand[k], labels[k], thresholds, scales)]
    return Comparison(verdicts=tuple(verdicts),
                      missing=tuple(labels[k] for k in base if k not in cand),
                      extra=tuple(labels[k] for k in cand if k not in base),
                      normalized=scales != (1.0, 1.0))


def compare_runs(baseline: Run, candidate: Run, thresholds: Thresholds = Thresholds(),
                 normalize: bool = False) -> Comparison:
    """compare_records on two loaded runs, with timings × peak FLOP/s if `normalize`."""
    scales = (peak_flops(baseline), peak_flops(candidate)) if normalize else (1.0, 1.0)
    result = compare_records(list(baseline.records), list(candidate.records), thresholds, scales)
    warnings = run_warnings(baseline.header or RunHeader(), candidate.header or RunHeader(),
                            normalize)
    warnings += machine_warnings(baseline, candidate)
    return dataclasses.replace(result, warnings=warnings, normalized=normalize)


def machine_warnings(baseline: Run, candidate: Run) -> tuple[str, ...]:
    """A run whose trials came from several machines (Ray nodes) compares them as well."""
    out = []
    for role, run in (("baseline", baseline), ("candidate", candidate)):
        machines = machines_line(run.records)
        if machines:
            out.append(f"the {role}'s trials came from {machines}; a verdict on a trial compares "
                       "the machines that ran it as well as the code")
    return tuple(out)


def run_warnings(base: RunHeader, cand: RunHeader, normalize: bool) -> tuple[str, ...]:
    """Header differences that make the comparison suspect: data set, and device unless normalized."""
    out = []
    ident = lambda h: tuple(data_identity(h.data).values())  # noqa: E731
    if base.data and cand.data and ident(base) != ident(cand):
        out.append(f"different data sets: {ident(base)} vs {ident(cand)}; accuracies are not comparable")
    where = lambda h: tuple(h.device.get(k) for k in ("device_kind", "host_cpu"))  # noqa: E731
    if not normalize and base.device and cand.device and where(base) != where(cand):
        out.append(f"different devices: {where(base)} vs {where(cand)}; consider --normalize")
    return tuple(out)
