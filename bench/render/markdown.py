"""report.md: the run's results as GitHub-flavoured Markdown, rendered from its files."""

from __future__ import annotations

from pathlib import Path

from bench.render import table
from bench.results import read_header, read_results


def _md_table(titles: list[str], rows: list[list[str]], right: list[bool]) -> list[str]:
    esc = lambda cell: str(cell).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(t) for t in titles) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(run_dir: Path) -> str:
    """The Markdown report of one run directory."""
    header, records = read_header(run_dir), read_results(run_dir)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "diverged", "failed")}
    lines = [f"# bench run {header['run_id']}", "",
             f"- **Data**: {table.data_line(header['data'])}. Every accuracy below is on the "
             f"test split of this data set.",
             f"- **Device**: {table.device_line(header['device'])}",
             f"- **Trials**: {len(records)} ({', '.join(f'{n} {s}' for s, n in counts.items())})",
             f"- **Command**: `{header['command']}`",
             f"- **Started**: {header['started']}; git commit {header.get('git_commit')}",
             "", "Compile time is measured ahead of time and is not part of any epoch time. "
             "Steady epoch time is the median of the epochs after the first.", "",
             "## Results", ""]
    lines += _md_table(table.titles(), table.rows(records), table.right_aligned())
    errors = [r for r in records if r.get("error")]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- {table.TrialConfig.from_dict(r['config']).label()}: `{r['error']}`" for r in errors]
    versions = ", ".join(f"{k} {v}" for k, v in header["versions"].items())
    lines += ["", "## Environment", "", versions, ""]
    return "\n".join(lines)


def write_markdown(run_dir: Path) -> Path:
    path = Path(run_dir) / "report.md"
    path.write_text(render_markdown(run_dir), encoding="utf-8")
    return path
