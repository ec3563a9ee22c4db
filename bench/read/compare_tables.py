"""The tables of `bench compare`: Markdown for a pull-request comment, rich for the terminal."""

from __future__ import annotations

from bench.read.compare import Comparison, MetricVerdict

TITLES = ["trial", "metric", "baseline", "candidate", "change", "p-value", "verdict", "notes"]
RIGHT = [False, False, True, True, True, True, False, False]


def _metric_name(metric: str, normalized: bool) -> str:
    unit = "GFLOP at peak" if normalized else None
    return {"status": "status", "accuracy": "test acc %",
            "step_time": f"step time ({unit or 'ms'})",
            "compile": f"compile ({unit or 's'})"}[metric]


def _value(v: MetricVerdict, value, normalized: bool) -> str:
    if value is None or isinstance(value, str):
        return "" if value is None else value
    if v.metric == "accuracy":
        return f"{100 * value:.2f}"
    if normalized:
        return f"{value / 1e9:.4g}"
    return f"{1000 * value:.4g}" if v.metric == "step_time" else f"{value:.3g}"


def verdict_cells(v: MetricVerdict, normalized: bool) -> list[str]:
    """The table cells of one verdict, in TITLES order."""
    if v.change is None:
        change = ""
    elif v.metric == "accuracy":
        change = f"{v.change:+.2f} pp"
    else:
        change = f"{100 * v.change:+.1f}%"
    p = "" if v.p_value is None else f"{v.p_value:.3g}"
    verdict = v.verdict if v.gating or v.verdict in ("same", "n/a") else f"{v.verdict} (not gating)"
    return [v.label, _metric_name(v.metric, normalized), _value(v, v.baseline, normalized),
            _value(v, v.candidate, normalized), change, p, verdict, ", ".join(v.notes)]


def summary_line(comparison: Comparison) -> str:
    """'no regression' or 'N regressions', with the counts of unmatched trials."""
    n = len(comparison.regressions)
    head = "no regression" if n == 0 else f"{n} regression{'s' if n > 1 else ''}"
    trials = len({v.key for v in comparison.verdicts})
    return (f"{head} ({trials} trials compared, {len(comparison.missing)} missing, "
            f"{len(comparison.extra)} extra)")


def _md_escape(cell: str) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def render_markdown(comparison: Comparison, title: str = "bench compare") -> str:
    """The comparison as GitHub-flavoured Markdown, fit for a pull-request comment."""
    lines = [f"## {title}", ""]
    if comparison.normalized:
        lines += ["Times are normalized: seconds × each run's calibrated peak FLOP/s.", ""]
    lines += [f"> warning: {w}" for w in comparison.warnings] + ([""] if comparison.warnings else [])
    lines += ["| " + " | ".join(TITLES) + " |",
              "|" + "|".join("---:" if r else "---" for r in RIGHT) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in verdict_cells(v, comparison.normalized)) + " |"
              for v in comparison.verdicts]
    for name, labels in (("Missing trials (baseline only)", comparison.missing),
                         ("Extra trials (candidate only)", comparison.extra)):
        if labels:
            lines += ["", f"### {name}", ""] + [f"- {_md_escape(label)}" for label in labels]
    lines += ["", f"**{summary_line(comparison)}**", ""]
    return "\n".join(lines)


def render_rich(comparison: Comparison, console) -> None:
    """Prints the comparison to a rich Console: table, unmatched trials, summary."""
    from rich.table import Table

    table = Table(title="bench compare" + (" (normalized)" if comparison.normalized else ""))
    for name, right in zip(TITLES, RIGHT):
        table.add_column(name, justify="right" if right else "left")
    styles = {"regression": "red", "improvement": "green"}
    for v in comparison.verdicts:
        table.add_row(*verdict_cells(v, comparison.normalized),
                      style=styles.get(v.verdict, "") if v.gating else "")
    for warning in comparison.warnings:
        console.print(f"[yellow]warning:[/] {warning}", markup=True)
    console.print(table)
    for name, labels in (("missing (baseline only)", comparison.missing),
                         ("extra (candidate only)", comparison.extra)):
        for label in labels:
            console.print(f"{name}: {label}", markup=False)
    console.print(summary_line(comparison), style="bold red" if comparison.regressions else "bold")


