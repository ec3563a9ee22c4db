"""The gate's verdict as a Markdown table (a pull-request comment) and as JSON (for scripts)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.run.ab.decide import EXIT_REGRESSION, EXIT_UNDECIDED, Rule, Verdict, exit_status
from bench.run.ab.gate import BLOCK, BUDGET, Outcome
from bench.run.ab.sides import Side

JSON_FORMAT = 1
WORDS = {0: "no regression", EXIT_REGRESSION: "regression", EXIT_UNDECIDED: "undecided"}
ENVIRONMENT_TITLES = "| side | revision | python | jax | jaxlib | kernels (lstm, cells, conv; target) | build |"
KERNELS = ("fused_lstm_cpu", "fused_cells_cpu", "fused_conv_cpu")
METRIC_NAMES = {"step_time": "step time (ms)", "accuracy": "test acc %", "status": "status"}


@dataclass(frozen=True)
class Report:
    """Everything the outputs show: the sides and their environments, the outcome, the rule."""

    sides: tuple[Side, Side]
    environments: dict  # role -> rounds.environment() of its first round
    outcome: Outcome
    rule: Rule
    budget_s: float
    out: Path
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def status(self) -> int:
        return exit_status(list(self.outcome.verdicts))


def headline(report: Report) -> str:
    o = report.outcome
    out_of_budget = o.stopped == BUDGET and report.status == EXIT_UNDECIDED
    why = " (the budget ran out first)" if out_of_budget else ""
    return (f"{WORDS[report.status]}{why}: {o.pairs} pair(s) of rounds, interleaved ABBA, "
            f"{o.seconds / 60:.1f} min")


def render_markdown(report: Report) -> str:
    base, head = report.sides
    level = f"{100 * (1 - report.rule.alpha):g}%"
    lines = [f"### bench ab: {headline(report)}", "",
             f"BASE `{base.spec}` vs HEAD `{head.spec}`, both measured on this machine.", "",
             f"| trial | metric | BASE | HEAD | HEAD/BASE ({level} CI) | p | pairs | verdict |",
             "|---|---|--:|--:|--:|--:|--:|---|"]
    lines += [_row(v) for v in report.outcome.verdicts]
    lines += ["", _rule_text(report.rule, timed_trials(report.outcome.verdicts))]
    if report.warnings:
        lines += [""] + [f"- {w}" for w in report.warnings]
    lines += ["", ENVIRONMENT_TITLES, "|---|---|---|---|---|---|---|"]
    lines += [_environment_row(side, report.environments.get(side.role, {})) for side in report.sides]
    lines += ["", f"Run directories: `{report.out}/base/round-NN`, `{report.out}/head/round-NN` "
              "(`bench report`, `bench compare` read them)."]
    return "\n".join(lines) + "\n"


def _environment_row(side: Side, env: dict) -> str:
    kernels = env.get("kernels") or {}
    shown = ", ".join(_text(kernels.get(k)) for k in KERNELS)
    return (f"| {side.role.upper()} `{side.spec}` | `{env.get('git_commit') or side.revision}` | "
            f"{_text(env.get('python'))} | {_text(env.get('jax'))} | {_text(env.get('jaxlib'))} | "
            f"{shown}; {_text(kernels.get('cpu_kernel_target'))} | {side.how} |")


def _text(value) -> str:
    return "?" if value is None else str(value)


def _row(v: Verdict) -> str:
    verdict = f"**{v.verdict}**" if v.verdict == "regression" else v.verdict
    busy = f" ({v.busy_pairs} busy)" if v.busy_pairs else ""
    p = "" if v.p_value is None else f"{v.p_value:.3g}"
    return (f"| {v.label} | {METRIC_NAMES[v.metric]} | {_value(v, v.base)} | {_value(v, v.head)} | "
            f"{_change(v)} | {p} | {v.pairs}{busy} | {verdict} |")


def _value(v: Verdict, value) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    return f"{1000 * value:.4g}" if v.metric == "step_time" else f"{100 * value:.2f}"


def _change(v: Verdict) -> str:
    if v.estimate is None:
        return ""
    if v.metric == "accuracy":
        return f"{v.estimate:+.2f} pp"
    if v.low is None:
        return f"{v.estimate:.3f} (no interval yet)"
    return f"{v.estimate:.3f} ({v.low:.3f}–{v.high:.3f})"


def timed_trials(verdicts) -> int:
    """How many trials have a step-time ratio: the Bonferroni divisor of the t-test."""
    return sum(v.metric == "step_time" and v.pairs > 0 for v in verdicts)


def _rule_text(rule: Rule, trials: int) -> str:
    level = f"{100 * (1 - rule.alpha):g}%"
    return (f"Step time: ratio of the two sides' median step times per pair; {level} t-interval "
            f"on the log ratios; regression when a one-sided paired t-test gives p < "
            f"{rule.test_level(trials):.3g} ({rule.alpha / 2:g} over {trials} timed trial(s), "
            f"Bonferroni) and the ratio exceeds {1 + rule.max_slowdown:g}; no regression when "
            f"the interval ends below {1 + rule.max_slowdown:g}; else, or before "
            f"{rule.min_pairs} pairs, undecided; looks after every {BLOCK} pairs. Accuracy: "
            f"same seeds; regression when HEAD's mean drops by more than "
            f"{rule.max_accuracy_drop:g} pp. Exit status 0 no regression, 1 regression, "
            f"2 unusable input, 3 undecided.")


def to_json(report: Report) -> dict:
    o = report.outcome
    return {
        "format": JSON_FORMAT,
        "verdict": WORDS[report.status], "exit_status": report.status,
        "pairs": o.pairs, "seconds": round(o.seconds, 1), "stopped": o.stopped,
        "budget_s": report.budget_s,
        "rule": {"max_slowdown": report.rule.max_slowdown,
                 "max_accuracy_drop": report.rule.max_accuracy_drop, "alpha": report.rule.alpha,
                 "min_pairs": report.rule.min_pairs, "pairs_per_look": BLOCK,
                 "test": "one-sided paired t-test on the log step-time ratios",
                 "test_level": report.rule.test_level(timed_trials(o.verdicts)),
                 "interval": f"Student t-interval on the log ratios at {1 - report.rule.alpha:g}"},
        "sides": {s.role: {"spec": s.spec, "revision": s.revision, "python": str(s.python),
                           "build": s.how, "environment": report.environments.get(s.role, {})}
                  for s in report.sides},
        "trials": [_verdict_json(v) for v in o.verdicts],
        "order": [f"{r.role}:{r.number}" for r in o.rounds],
        "round_seconds": [round(r.seconds, 1) for r in o.rounds],
        "run_dirs": {"base": [str(r.run_dir) for r in o.rounds if r.role == "base"],
                     "head": [str(r.run_dir) for r in o.rounds if r.role == "head"]},
        "warnings": list(report.warnings),
    }


def _verdict_json(v: Verdict) -> dict:
    out = {"key": v.key, "label": v.label, "metric": v.metric, "verdict": v.verdict,
           "base": v.base, "head": v.head, "pairs": v.pairs, "busy_pairs": v.busy_pairs}
    if v.metric == "step_time":
        out.update(ratio=v.estimate, ci=None if v.low is None else [v.low, v.high], p_value=v.p_value)
    elif v.metric == "accuracy":
        out.update(change_pp=v.estimate)
    return out


def write(path: Path, text: str) -> None:
    Path(path).write_text(text, encoding="utf-8")


def json_text(report: Report) -> str:
    return json.dumps(to_json(report), indent=1) + "\n"
