"""Compares a `tuning` run without pruning with the same run under `--prune halving` (issue #23).

    python benchmarks/halving_compare.py RUN_UNPRUNED RUN_PRUNED

Prints, from the two run directories (results.jsonl and run.json only; no JAX):
- each run's wall time from run.json (start to finish) and, where a `RUN.time` file beside the
  run directory holds the whole command's seconds (`/usr/bin/time -f %e -o RUN.time ...`), that;
- the training epochs summed over the populations (each population counted once);
- the statuses (pruned ones with their rung);
- per optimizer, the learning rate chosen on validation as the reports choose it (the highest
  mean final validation accuracy over seeds, among configurations whose every seed is ok) and
  that rate's mean test accuracy, side by side.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line]


def wall_s(run: Path) -> tuple[float, float | None]:
    header = json.loads((run / "run.json").read_text())
    span = (datetime.fromisoformat(header["finished"]) - datetime.fromisoformat(header["started"]))
    timed = run.with_name(run.name + ".time")
    return span.total_seconds(), float(timed.read_text()) if timed.exists() else None


def population_epochs_s(recs: list[dict]) -> float:
    """Each population's epoch times once (its members share them), summed."""
    by_group: dict[str, list[float]] = {}
    for r in recs:
        population = r.get("population") or {}
        epochs = population.get("epoch_s") or r.get("epoch_s") or []
        group = population.get("group") or r["key"]
        if len(epochs) > len(by_group.get(group, [])):
            by_group[group] = epochs
    return sum(sum(epochs) for epochs in by_group.values())


def statuses(recs: list[dict]) -> dict[str, int]:
    return dict(Counter(r["status"] + (f" at epoch {r.get('pruned_at_epoch')}"
                                      if r["status"] == "pruned" else "") for r in recs))


def chosen(recs: list[dict]) -> dict[str, tuple[float, float, float]]:
    """optimizer -> (learning rate, mean validation accuracy, mean test accuracy)."""
    configurations = defaultdict(list)
    for r in recs:
        configurations[(r["config"]["optimizer"], r["config"]["learning_rate"])].append(r)
    best: dict[str, tuple[float, float, float]] = {}
    for (optimizer, rate), rs in configurations.items():
        if not all(r["status"] == "ok" for r in rs):
            continue  # pruned, diverged or failed on some seed: never chosen
        validation = statistics.mean(r["validation_accuracy"] for r in rs)
        test = statistics.mean(r["test_accuracy"] for r in rs)
        if optimizer not in best or validation > best[optimizer][1]:
            best[optimizer] = (rate, validation, test)
    return best


def main(unpruned: Path, pruned: Path) -> None:
    a, b = records(unpruned), records(pruned)
    (span_a, cmd_a), (span_b, cmd_b) = wall_s(unpruned), wall_s(pruned)
    if cmd_a and cmd_b:
        print(f"whole command: {cmd_a:.0f} s, pruned {cmd_b:.0f} s ({cmd_a / cmd_b:.2f}x)")
    print(f"run.json start to finish: {span_a:.0f} s, pruned {span_b:.0f} s ({span_a / span_b:.2f}x)")
    epochs_a, epochs_b = population_epochs_s(a), population_epochs_s(b)
    print(f"epochs summed over populations: {epochs_a:.1f} s, pruned {epochs_b:.1f} s "
          f"({epochs_a / epochs_b:.2f}x)")
    print(f"statuses: {statuses(a)}; pruned run: {statuses(b)}")
    choice_a, choice_b = chosen(a), chosen(b)
    for optimizer in sorted(choice_a.keys() | choice_b.keys()):
        rate_a, _, test_a = choice_a.get(optimizer, (None, 0.0, float("nan")))
        rate_b, _, test_b = choice_b.get(optimizer, (None, 0.0, float("nan")))
        print(f"{optimizer:10s} chosen rate {rate_a} / pruned {rate_b}; test accuracy "
              f"{100 * test_a:.2f}% / {100 * test_b:.2f}% ({100 * (test_b - test_a):+.2f} points)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
