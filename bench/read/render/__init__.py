"""Rendering, always from run directories on disk (never from objects in memory).

  report.py     render_reports / render_run(run_dirs, formats, out): the entry point
                (`bench report`, end of `bench run`); summary.json
  runs.py       run directories as read from run.json + results.jsonl, with their labels
  aggregate.py  seed aggregation (mean ± sd, n)
  verdict.py    the one analysis every output shows: best, ties, importance, main effects,
                noise-aware Pareto front, warnings
  verdict_sections.py  the report's opening sections (verdict, what mattered, leaderboard, Pareto)
  columns.py    the columns of the configuration tables
  tuning_cost.py  the tuning report's training time spent (and, pruned, an estimate without)
  cells.py      number and cell formatting shared by every table
  document.py   the format-neutral report: sections, facts, tables of cells
  sections.py   what the report says: summary, leaderboard, pivots, full table, ...
  markdown.py   report.md          html.py   report.html (self-contained)
  csv.py        results.csv, history.csv          plots.py  matplotlib figures as inline SVG
  sweep_plots.py  what mattered, drawn: main-effect slices, parallel coordinates
  plot_kit.py   what every figure shares: settings, tooltips, axes, the SVG markup
  populations.py  the populations' shared figures, one row per population
  (the tables of `bench compare` are bench/read/compare_tables.py)
  terminal.py   progress bars while a sweep runs; the summary at its end (and `bench report`)
"""
