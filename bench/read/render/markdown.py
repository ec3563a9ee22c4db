"""report.md: the report as GitHub-flavoured Markdown."""

from __future__ import annotations

import re
from pathlib import Path

from bench.read.render.document import Facts, Para, Report, Section, Table

# Markdown punctuation that could start markup, an HTML tag or an entity: text stays text.
_SPECIAL = re.compile(r"([\\`*_\[\]<>|&~])")


def md_escape(text: str) -> str:
    """Plain text made safe for a Markdown paragraph or table cell (one line)."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))


def md_table(t: Table) -> list[str]:
    lines = ["| " + " | ".join(md_escape(c) for c in t.columns) + " |",
             "|" + "|".join("---:" if r else "---" for r in t.right) + "|"]
    lines += ["| " + " | ".join(md_escape(c.text) for c in row) + " |" for row in t.rows]
    return lines


def _block(block) -> list[str]:
    if isinstance(block, Table):
        head = [f"### {md_escape(block.title)}", ""] if block.title else []
        tail = ["", md_escape(block.caption)] if block.caption else []
        return head + md_table(block) + tail
    if isinstance(block, Facts):
        return [f"- **{md_escape(k)}**: {md_escape(v)}" for k, v in block.items]
    if isinstance(block, Para):
        return [md_escape(block.text)]
    raise TypeError(f"no Markdown for {type(block).__name__}")


def md_section(section: Section) -> list[str]:
    lines = [f"## {md_escape(section.title)}", ""]
    for block in section.blocks:
        lines += _block(block) + [""]
    return lines


def render_markdown(report: Report) -> str:
    """The report as one Markdown document."""
    lines = [f"# {md_escape(report.title)}", ""]
    for section in report.sections:
        lines += md_section(section)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_markdown(report: Report, out_dir: Path) -> Path:
    path = Path(out_dir) / "report.md"
    path.write_text(render_markdown(report), encoding="utf-8")
    return path
