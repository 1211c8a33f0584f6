#!/usr/bin/env bash
# Scoring benchmark (issue #4 item 8): asfda Engine::score vs its bare ORT session vs MONAI
# sliding_window_inference + PyTorch eager vs onnxruntime from Python, 2 threads everywhere,
# each method in its own process (peak RSS = VmHWM). Prints one markdown table.
#
#   scripts/bench_score.sh            # REPEATS=3 timed volumes per method after one warm-up
# Env: REPEATS (3), BENCH_DIR (.cache/bench), CASES ("brain ct"), CT_DIMS, CT_PATCH, CT_LEVELS.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${REPEATS:-3}
BENCH_DIR=${BENCH_DIR:-.cache/bench}
CASES=${CASES:-"brain ct"}
# Case 2: CT volume dims (x y z at 0.8 x 0.8 x 2.5 mm), model patch and U-Net levels.
CT_DIMS=${CT_DIMS:-"350 350 114"}
CT_PATCH=${CT_PATCH:-128}
CT_LEVELS=${CT_LEVELS:-6}
PY=.venv-torch/bin/python
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
RES="$BENCH_DIR/results"
mkdir -p "$RES"
started=$(date +%s)

# shellcheck disable=SC2086
$PY scripts/bench_score.py make-inputs --out "$BENCH_DIR" --ct-dims $CT_DIMS --ct-patch "$CT_PATCH" \
    --ct-levels "$CT_LEVELS" >&2
cargo build --release --example score_bench >&2
EX=target/release/examples/score_bench

result() { grep '^RESULT ' | tail -1 | sed 's/^RESULT //'; }

for case in $CASES; do
  if [ "$case" = brain ]; then
    bundle=models/demo_brain_unet; vol="$BENCH_DIR/brain_1mm.nii.gz"
    torch_args=(--weights models/demo_brain_unet/checkpoint.safetensors --arch 4 16 64)
  else
    bundle="$BENCH_DIR/ct_unet"; vol="$BENCH_DIR/ct.nii"
    torch_args=(--weights "$BENCH_DIR/ct_unet_weights.pt" --arch "$CT_LEVELS" 32 320)
  fi
  npy="$BENCH_DIR/${case}_prepared.npy"
  echo "== $case: dump / asfda / bare / monai / ort" >&2
  $EX dump "$bundle" "$vol" "$npy" | result > "$RES/${case}_input.json"
  $EX score "$bundle" "$vol" "$REPEATS" | result > "$RES/${case}_asfda.json"
  $EX bare "$bundle" "$vol" "$REPEATS" | result > "$RES/${case}_bare.json"
  $PY scripts/bench_score.py run --method monai --bundle "$bundle" --input "$npy" \
      "${torch_args[@]}" --repeats "$REPEATS" | result > "$RES/${case}_monai.json"
  $PY scripts/bench_score.py run --method ort --bundle "$bundle" --input "$npy" \
      --repeats "$REPEATS" | result > "$RES/${case}_ort.json"
  for f in "$RES/${case}"_*.json; do echo "$f: $(cat "$f")" >&2; done
done
echo "total bench wall time: $(( $(date +%s) - started )) s" >&2

$PY - "$RES" $CASES <<'PYEOF'
import json, sys
from pathlib import Path
res, cases = Path(sys.argv[1]), sys.argv[2:]
label = {"asfda": "A. asfda Engine::score (Rust, ORT)", "bare": "A'. bare ORT session, same tile batches (Model::run only)",
         "monai": "B. MONAI sliding_window_inference + PyTorch eager + numpy scoring",
         "ort": "C. onnxruntime (Python) + numpy tiles/blending + numpy scoring"}
print("| case | method | s / volume (median) | runs (s) | ratio to asfda | peak RSS MiB |")
print("|---|---|---:|---|---:|---:|")
for case in cases:
    r = {m: json.loads((res / f"{case}_{m}.json").read_text()) for m in label}
    inp = json.loads((res / f"{case}_input.json").read_text())
    a = r["asfda"]["median_s"]
    name = {"brain": "1: demo U-Net, ICBM152 1 mm -> 2 mm", "ct": "2: 3d_fullres-like U-Net, CT -> 1.5 mm"}[case]
    name += f" (grid {inp['shape_czyx'][1:]}, {r['bare']['tiles']} tiles)"
    for m in label:
        rss = f"({r[m]['peak_rss_mib']:.0f}, incl. profiling pass)" if m == "bare" else f"{r[m]['peak_rss_mib']:.0f}"
        runs = ", ".join(f"{t:.2f}" for t in r[m]["times_s"])
        print(f"| {name} | {label[m]} | {r[m]['median_s']:.2f} | {runs} | {r[m]['median_s'] / a:.2f} | {rss} |")
print()
for case in cases:
    r = {m: json.loads((res / f"{case}_{m}.json").read_text()) for m in label}
    b = r["bare"]
    print(f"- {case}: asfda/bare overhead ratio = {r['asfda']['median_s'] / b['median_s']:.3f}; "
          f"asfda stage profile (one pass, s): {b['profile_s']}; "
          f"MONAI profile: {r['monai']['profile_s']}; Python-ORT profile: {r['ort']['profile_s']}; "
          f"tiles asfda/MONAI/ORT-py: {b['tiles']}/{r['monai']['tiles']}/{r['ort']['tiles']}; "
          f"RSS after load MiB asfda/MONAI/ORT-py: {r['asfda']['rss_after_load_mib']:.0f}/"
          f"{r['monai']['rss_after_load_mib']:.0f}/{r['ort']['rss_after_load_mib']:.0f}")
PYEOF
