#!/usr/bin/env bash
# The reading side's start-up: median wall time of 5 runs of each command.
#   bash benchmarks/startup.sh BASELINE_RUN CANDIDATE_RUN [PYTHON]
# Run from the checkout to measure (a `git worktree` of an older commit measures that one).
set -euo pipefail
A=${1:?usage: startup.sh BASELINE_RUN CANDIDATE_RUN [PYTHON]}; B=${2:?}; PY=${3:-python3}
OUT=$(mktemp -d)
median() {  # median of 5 wall times of a command, in seconds
  for _ in 1 2 3 4 5; do
    start=$(date +%s.%N); "$@" > /dev/null 2>&1 || true; end=$(date +%s.%N)
    echo "$end - $start" | bc
  done | sort -n | sed -n 3p
}
echo "--help:  $(median "$PY" -m bench --help)"
echo "compare: $(median "$PY" -m bench compare "$A" "$B")"
echo "report:  $(median "$PY" -m bench report "$B" --out "$OUT/report")"
echo "list:    $(median "$PY" -m bench list)"
rm -rf "$OUT"
