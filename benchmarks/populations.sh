#!/usr/bin/env bash
# Populations on and off, back to back, one process at a time: whole-command wall times.
#   bash benchmarks/populations.sh OUT_DIR [dense|conv|recurrent ...]   (default: all three)
# Each sweep runs with --population auto, then --population off, on the embedded data;
# OUT_DIR/walls.txt gets one line per command (with the load average after it).
set -uo pipefail
OUT=${1:?usage: populations.sh OUT_DIR [dense|conv|recurrent ...]}; shift
PY=${PYTHON:-python3}
mkdir -p "$OUT"
rates() {  # n learning rates log-spaced over 1e-4 ... 1e-1
  "$PY" -c "import sys; n = int(sys.argv[1]); print(','.join(f'{10 ** (-4 + 3 * i / (n - 1)):.3g}' for i in range(n)))" "$1"
}
sweep() {
  case $1 in
    dense) echo "--models dense --units 128 --learning-rate $(rates 16) --seeds 0,1,2,3" ;;
    conv) echo "--models conv --units 32 --learning-rate $(rates 8) --seeds 0,1" ;;
    recurrent) echo "--models recurrent --units 128 --learning-rate $(rates 8) --seeds 0,1" ;;
  esac
}
families=("$@")
[ ${#families[@]} -gt 0 ] || families=(dense conv recurrent)
for family in "${families[@]}"; do
  for population in auto off; do
    name="$family-$population"; rm -rf "${OUT:?}/$name"
    start=$(date +%s.%N)
    # shellcheck disable=SC2046
    "$PY" -m bench run $(sweep "$family") --activations relu --optimizers adam --epochs 3 \
      --data embedded --population "$population" --out "$OUT/$name" > "$OUT/$name.log" 2>&1
    end=$(date +%s.%N)
    echo "$name $(echo "$end - $start" | bc) s wall, load $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$OUT/walls.txt"
  done
done
