#!/usr/bin/env bash
# The A/B gate measured (issue #22), on this machine, with a warm cache:
#   aa     the same revision as BASE and HEAD: false regressions (goal 0), wall time (goal <= 10 min)
#   big    a planted slowdown of the dense `ci` trial's step (an extra K_BIG x K_BIG matrix product
#          in Dense.__call__, target 5-8%): detection rate (goal >= 9 of 10)
#   small  the same with K_SMALL (target ~3%): detection rate
# and, on the same runs, the committed-baseline gate (`bench compare` of HEAD's first round against
# reports/baselines/ci-cpu-2core with 15% slack, what `tox -e regression` did before `bench ab`).
#
#   bash benchmarks/ab_gate.sh                      # 10 runs of each case, budget 10 min (hours)
#   RUNS=1 BUDGET=0 CASES=aa bash benchmarks/ab_gate.sh   # a smoke test: one ABBA block (2 pairs)
#
# Env: BASE_REV (HEAD: the commit measured, and planted on), RUNS (10), BUDGET minutes (10),
# CASES ("aa big small"), K_BIG (160), K_SMALL (100), PY (the checkout's .venv/bin/python),
# WORK (a new temporary folder), CACHE (built sides, default $WORK/cache), EXTRA (more
# `bench ab` flags, e.g. "--models dense" for a quicker smoke test).
# Everything happens in a temporary clone of this checkout (the planted commits too) and the
# cache; this checkout is only read. Results: $WORK/results.md (and runs.tsv, each run's files).
# An existing WORK is added to: its clone is reused, the new runs are numbered after the ones
# in runs.tsv, and results.md counts them all (each session's machine is a comment line there),
# so that the hours of a full measurement can be spread over several sessions.
# K: 128 measured 4.9%, 150 6.7%, 160 8.6% (2026-12-05; the cost grows faster than K^2); 100 aims at
# ~3%.
set -uo pipefail
ROOT=$(git rev-parse --show-toplevel)
PY=${PY:-$ROOT/.venv/bin/python}
RUNS=${RUNS:-10}; BUDGET=${BUDGET:-10}; CASES=${CASES:-aa big small}
K_BIG=${K_BIG:-160}; K_SMALL=${K_SMALL:-100}; EXTRA=${EXTRA:-}
WORK=${WORK:-$(mktemp -d /tmp/ab_gate.XXXXXX)}
CLONE=$WORK/clone; CACHE=${CACHE:-$WORK/cache}; TABLE=$WORK/runs.tsv
mkdir -p "$WORK"
[ -d "$CLONE" ] || git clone -q "$ROOT" "$CLONE"
git -C "$CLONE" fetch -q origin  # origin: this checkout
BASE=$(git -C "$ROOT" rev-parse "${BASE_REV:-HEAD}^{commit}")

plant() {  # plant K: a commit on BASE whose dense forward pass does an extra K x K product
  git -C "$CLONE" checkout -q --detach "$BASE"
  "$PY" - "$CLONE/models/dense.py" "$1" <<'EOF'
import sys
path, k = sys.argv[1], int(sys.argv[2])
text = open(path).read()
text = text.replace("import jax\n", "import jax\nimport jax.numpy as jnp\n", 1)
anchor = "        return self.out(x)\n"
assert text.count(anchor) == 1, "Dense.__call__ changed: update benchmarks/ab_gate.sh"
planted = (f"        k = min({k}, x.shape[1])  # planted by benchmarks/ab_gate.sh: an extra product\n"
           "        x = x.at[:, :k].add(1e-20 * (x[:, :k] @ jnp.full((k, k), 1.0 / k, x.dtype)))\n")
open(path, "w").write(text.replace(anchor, planted + anchor))
EOF
  git -C "$CLONE" -c user.name=ab_gate -c user.email=ab_gate@localhost commit -q -am "planted: extra ${1}x${1} product in Dense" >&2
  git -C "$CLONE" rev-parse HEAD
}

declare -A HEADS=([aa]=$BASE)
[[ " $CASES " == *" big "* ]] && HEADS[big]=$(plant "$K_BIG")
[[ " $CASES " == *" small "* ]] && HEADS[small]=$(plant "$K_SMALL")
git -C "$CLONE" checkout -q --detach "$BASE"

echo "warming the cache (one build per commit)" >&2
for commit in $(printf '%s\n' "${HEADS[@]}" | sort -u); do
  "$PY" -c 'import sys; from pathlib import Path; from bench.run.ab.build import build_revision
print(build_revision(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])).how)' "$CLONE" "$commit" "$CACHE" >&2 \
    || { echo "build of $commit failed: see $CACHE/$commit/build.log" >&2; exit 2; }
done

[ -f "$TABLE" ] || printf 'case\trun\texit\twall_s\tjson\tcompare_exit\n' > "$TABLE"
echo "# $(date -Is) $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load $(cut -d' ' -f1-3 /proc/loadavg); base $BASE; K_BIG=$K_BIG K_SMALL=$K_SMALL; budget $BUDGET min" >> "$TABLE"
DONE=$(awk -F'\t' '!/^(#|case)/ && $2 > n {n = $2} END {print n + 0}' "$TABLE")  # runs so far
cd "$ROOT"  # `python -m bench` is this checkout's bench: the gate under test
for run in $(seq $((DONE + 1)) $((DONE + RUNS))); do
  for case in $CASES; do  # cases interleaved, so that the machine's drift hits them alike
    out=$WORK/$case-$run
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$PY" -m bench ab "$BASE" "${HEADS[$case]}" --repo "$CLONE" --cache-dir "$CACHE" --out "$out" \
      --budget "$BUDGET" --json "$out.json" $EXTRA > "$out.md" 2> "$out.log"
    status=$?
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    "$PY" -m bench compare reports/baselines/ci-cpu-2core "$out/head/round-01" --max-slowdown 0.15 \
      --format md > "$out.compare.md" 2>&1
    compare=$?
    printf '%s\t%s\t%s\t%.0f\t%s\t%s\n' "$case" "$run" "$status" "$wall" "$out.json" "$compare" >> "$TABLE"
    echo "$case run $run: bench ab exit $status in ${wall%.*} s; bench compare exit $compare" >&2
  done
done

"$PY" - "$TABLE" > "$WORK/results.md" <<'EOF'
"""Per case: bench ab's exit statuses, wall times and the dense trial's measured ratio; compare's."""
import json, statistics, sys
from collections import defaultdict
lines = open(sys.argv[1]).read().splitlines()
print("\n".join(line.lstrip("# ") for line in lines if line.startswith("#")), "\n")
titles = lines[0].split("\t")
rows = [dict(zip(titles, line.split("\t"))) for line in lines[1:] if not line.startswith("#")]
by_case = defaultdict(list)
for row in rows:
    by_case[row["case"]].append(row)
print("| case | runs | ab: 0 / 1 regression / 3 undecided / 2 | ab wall s (median, max) | pairs (median) "
      "| dense-256 ratio (median; each run) | compare (15%): runs exit 1 |")
print("|---|--:|---|---|--:|---|--:|")
for case, rs in by_case.items():
    codes = [int(r["exit"]) for r in rs]
    walls = [float(r["wall_s"]) for r in rs]
    ratios, pairs = [], []
    for r in rs:
        try:
            verdict = json.load(open(r["json"]))
        except (OSError, ValueError):
            continue
        pairs.append(verdict["pairs"])
        ratios += [t["ratio"] for t in verdict["trials"] if t["metric"] == "step_time"
                   and t["label"].startswith("dense-256 ") and t["ratio"] is not None]
    shown = ", ".join(f"{x:.3f}" for x in ratios)
    median = f"{statistics.median(ratios):.3f}" if ratios else "?"
    print(f"| {case} | {len(rs)} | {codes.count(0)} / {codes.count(1)} / {codes.count(3)} / {codes.count(2)} "
          f"| {statistics.median(walls):.0f}, {max(walls):.0f} | {statistics.median(pairs) if pairs else '?'} "
          f"| {median}; {shown} | {sum(int(r['compare_exit']) == 1 for r in rs)} of {len(rs)} |")
EOF
cat "$WORK/results.md"
echo "runs, verdicts and run directories: $WORK" >&2
