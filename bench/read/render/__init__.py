"""Rendering, always from run directories on disk (never from objects in memory).

  report.py     render_run(run_dirs, formats, out): the entry point (`bench report`, end of `bench run`)
  runs.py       run directories as read from run.json + results.jsonl, with their labels
  aggregate.py  seed aggregation (mean ± sd, n), ranking, Pareto front
  cells.py      number and cell formatting shared by every table
  document.py   the format-neutral report: sections, facts, tables of cells
  sections.py   what the report says: summary, leaderboard, pivots, full table, ...
  markdown.py   report.md          html.py   report.html (self-contained)
  csv.py        results.csv        plots.py  matplotlib figures as inline SVG
  populations.py  the populations' shared figures, one row per population
  (the tables of `bench compare` are bench/read/compare_tables.py)
  table.py, terminal.py            the per-trial table and progress bars in the terminal
"""
