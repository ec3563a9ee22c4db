#!/usr/bin/env bash
# Every GPU check of bench in one prepared script, for a machine lent with an NVIDIA GPU and
# a preinstalled JAX with CUDA (jax 0.11 or newer), no network, bench not pip-installed.
#
#   bash benchmarks/gpu_check.sh OUT_DIR            # from the repository root, on the GPU machine
#   DEVICE=cpu SMALL=1 bash benchmarks/gpu_check.sh /tmp/gpu-check   # a dry run of the script on CPU
#
# Writes one run directory per check and OUT_DIR/summary.md (the figures to copy into
# docs/measurements.md), plus OUT_DIR/log.txt. Budget: under 8 minutes on an H200; each
# step has its own time limit so that one slow step cannot eat the rest.
set -uo pipefail

OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
DEVICE=${DEVICE:-gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XDG_CACHE_HOME="$OUT/cache"            # the calibration cache: this machine's own
export RAY_USAGE_STATS_ENABLED=0
LOG="$OUT/log.txt"
: > "$LOG"

# SMALL=1 shrinks every sweep so the script can be tried on a 2-core CPU in a few minutes.
if [ -n "${SMALL:-}" ]; then SIZES="1 4 8"; SEEDS=2; LRS=4; EPOCHS=1; else
  SIZES="1 8 64 256 1024"; SEEDS=4; LRS=16; EPOCHS=3; fi

step() {  # step NAME SECONDS CMD...: run a check with a time limit, log it, never stop the script
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date +%T), limit ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local status=$?
  echo "$name: exit $status, $((SECONDS - start)) s wall" | tee -a "$LOG" "$OUT/walls.txt"
}

lrs() {  # N learning rates log-spaced over 1e-4 ... 1e-1, comma-separated
  $PY -c "import sys; n = int(sys.argv[1]); print(','.join(f'{10 ** (-4 + 3 * i / (n - 1)):.3g}' for i in range(n)))" "$1"
}
seeds() { $PY -c "import sys; print(','.join(map(str, range(int(sys.argv[1])))))" "$1"; }

BENCH=("$PY" -m bench run --device "$DEVICE" --data embedded)

# 1. The machine, and bench importing at all (no tensorflow-datasets, no scipy-openblas32).
step facts 120 $PY -c "
import jax, sys, platform
print('python', platform.python_version(), 'jax', jax.__version__)
print('devices', jax.devices())
import bench.cli, bench.engine.training
print('bench imports')"

# 2. The quick preset (the default sweep) on the GPU.
step quick 150 "${BENCH[@]}" --preset quick --out "$OUT/quick"

# 3. The populations sweep of the issue: dense 128, relu, adam, LRS rates x SEEDS seeds,
#    populations on and off, back to back.
RATES=$(lrs "$LRS")
step dense-populations 120 "${BENCH[@]}" --models dense --units 128 --activations relu --optimizers adam \
  --learning-rate "$RATES" --seeds "$(seeds "$SEEDS")" --epochs "$EPOCHS" --out "$OUT/dense-auto"
step dense-one-at-a-time 240 "${BENCH[@]}" --models dense --units 128 --activations relu --optimizers adam \
  --learning-rate "$RATES" --seeds "$(seeds "$SEEDS")" --epochs "$EPOCHS" --population off \
  --out "$OUT/dense-off"

# 4. Member-samples/s of dense populations of growing size (one population per run; short
#    timed rounds, since every member is also timed alone).
for size in $SIZES; do
  step "dense-population-$size" 120 "${BENCH[@]}" --models dense --units 128 --activations relu \
    --optimizers adam --seeds "$(seeds "$size")" --epochs 2 --population "$size" \
    --repeats 2 --burn-in 1 --round-steps 5 --out "$OUT/dense-size-$size"
done

# 5. --impl tuned against --impl flax for the three reference configurations (each trial
#    alone, so that each form's own compile and epoch times are recorded).
IMPL_UNITS=()
if [ -n "${SMALL:-}" ]; then IMPL_UNITS=(--units 16); fi
step impl-tuned-vs-flax 180 "${BENCH[@]}" --models dense,conv,recurrent "${IMPL_UNITS[@]}" \
  --activations relu --optimizers adam --impl tuned,flax --epochs "$EPOCHS" --population off \
  --out "$OUT/impl"

# 6. The summary: wall times and the figures each check is for.
$PY - "$OUT" > "$OUT/summary.md" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("# gpu_check summary\n")
print("```\n" + (out / "walls.txt").read_text() + "```\n")
for run in sorted(p for p in out.iterdir() if (p / "results.jsonl").is_file()):
    records = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line]
    header = json.loads((run / "run.json").read_text())
    ok = [r for r in records if r["status"] == "ok"]
    acc = sum(r["test_accuracy"] for r in ok) / len(ok) if ok else float("nan")
    shared = {json.dumps({k: r["population"].get(k) for k in ("group", "compile_s", "steady_epoch_s",
              "member_samples_per_s", "size", "speedup")}) for r in records
              if (r.get("population") or {}).get("size", 1) > 1}
    print(f"## {run.name}\n\n{len(records)} trials ({len(ok)} ok) on {header['device']['device_kind']}"
          f", mean test accuracy {100 * acc:.2f}%; step ms (own, median of trials): "
          f"{sorted(r['step_ms'] for r in ok if r.get('step_ms'))[len(ok) // 2] if ok else None}")
    for line in sorted(shared):
        print(f"- population: {line}")
    if run.name == "impl":  # each family in both forms
        for r in records:
            c = r["config"]
            print(f"- {c['model']} {c['units']} impl={c.get('impl', 'tuned')}: {r['status']}, compile "
                  f"{r.get('compile_s')} s, steady epoch {r.get('steady_epoch_s')} s, step "
                  f"{r.get('step_ms')} ms, test acc {r.get('test_accuracy')}")
    print()
EOF
echo "summary: $OUT/summary.md" | tee -a "$LOG"
