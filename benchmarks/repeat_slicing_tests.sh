#!/usr/bin/env bash
# Runs the CPU kernels' thread-slicing tests N times in a row (default 20) and counts the runs
# that failed: their cuts depend on the thread count, so they must not flake (issue #19).
# Usage: bash benchmarks/repeat_slicing_tests.sh [N] [PYTHON]
# To test the AVX2 build on an AVX-512 machine, install with BENCH_CPU_TARGET=x86-64-v3 and
# run with OPENBLAS_CORETYPE=Haswell (OpenBLAS's AVX2 products).
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
python="${2:-python}"
selection="row_slices or fewer_than_threads or any_number_of_threads or vmapped_kernel"
failed=0
for run in $(seq 1 "$runs"); do
  if ! JAX_PLATFORMS=cpu "$python" -m pytest -q -p no:cacheprovider -k "$selection" \
      tests/test_fused_lstm.py tests/test_fused_cells.py > "/tmp/slicing-run-$run.log" 2>&1; then
    failed=$((failed + 1))
    echo "run $run failed: /tmp/slicing-run-$run.log"
  fi
  echo "run $run: $(tail -n 1 "/tmp/slicing-run-$run.log")"
done
echo "$failed of $runs runs failed"
[ "$failed" -eq 0 ]
