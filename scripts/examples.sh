#!/usr/bin/env bash
# The README's main command: installs lossdsl with its extras (scripts/setup.sh), then runs every example in
# turn (each finishes in under a minute on CPU). Printed results are also written to examples/out/NAME.txt,
# next to the files the examples produce (plots, the exported .py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
OUT=examples/out
mkdir -p "$OUT"
for ex in imbalanced_classification segmentation_shapes contrastive_pretraining paper_to_code; do
  echo "=== examples/$ex.py"
  start=$(date +%s)
  "$PY" "examples/$ex.py" | tee "$OUT/$ex.txt"
  echo "--- $ex: $(( $(date +%s) - start )) s"
done
echo "=== lossdsl plot: the textbook comparison of regression losses"
"$PY" -m lossdsl plot mse_loss l1_loss huber_loss smooth_l1_loss --range -3 3 -o "$OUT/regression_losses.png"
echo "outputs in $OUT/"
