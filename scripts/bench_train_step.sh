#!/usr/bin/env bash
# Train-step benchmark (issue #5 item 4): one fine-tuning step (forward + DiceCE + backward +
# AdamW) of the demo U-Net, asfda's Rust Trainer running train_step.onnx on ONNX Runtime vs
# PyTorch eager, same weights (the bundle checkpoint), same synthetic batch, same optimiser,
# each in its own process, one after the other (peak RSS = VmHWM). Median of REPEATS steps after
# one warm-up step. Also checks that the two agree on every step's loss. Prints a markdown table.
#
#   scripts/bench_train_step.sh        # 64^3 and 48^3 patches, batch 2, 2 threads, 5 steps
# Env: REPEATS (5), THREADS (2), SIZES ("64 48"), BATCH (2), BUNDLE (models/demo_brain_unet),
# PNG (unset; a file to plot the results into, e.g. docs/bench-train-step.png).
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${REPEATS:-5}
THREADS=${THREADS:-2}
SIZES=${SIZES:-"64 48"}
BATCH=${BATCH:-2}
BUNDLE=${BUNDLE:-models/demo_brain_unet}
PY=.venv-torch/bin/python
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS

cargo build --release --example train_step_time >&2
EX=target/release/examples/train_step_time
result() { grep '^RESULT ' | tail -1 | sed 's/^RESULT //'; }

lines=()
for size in $SIZES; do
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  ort=$($EX "$BUNDLE" "$BATCH" "$size" "$REPEATS" "$THREADS" | result)
  echo "asfda:   $ort" >&2
  torch=$($PY scripts/train_step_time.py "$BUNDLE" "$BATCH" "$size" "$REPEATS" "$THREADS" | result)
  echo "pytorch: $torch" >&2
  lines+=("$load_before|$(cut -d' ' -f1 /proc/loadavg)|$ort|$torch")
done

# The table; PNG=FILE also draws it (matplotlib, from .venv: scripts/requirements-bench.txt).
if [ -n "${PNG:-}" ]; then
  printf '%s\n' "${lines[@]}" | .venv/bin/python scripts/train_step_report.py --png "$PNG"
else
  printf '%s\n' "${lines[@]}" | python3 scripts/train_step_report.py
fi
