#!/usr/bin/env bash
# OpenVINO benchmark (issue 18 item 3), one run of each variant, one process each, one after the
# other: scoring one volume (asfda Engine::score: preprocess + sliding window + softmax + score)
# on the CPU provider vs on OpenVINO, and one train step (forward + DiceCE + backward + AdamW,
# batch 2, 64^3) on the CPU provider vs OpenVINO vs PyTorch eager (.venv-torch). Prints a markdown
# table with ratios, the CPU model and the load average before and after each run (the machines
# are shared: read the ratios, not the seconds).
#
#   scripts/bench_openvino.sh
# Env: THREADS (2), REPEATS (3 scoring runs, 2 train steps, each after one warm-up), VOLUME (pd
# pool volume 0), BUNDLE (models/demo_brain_unet), PROFILE (debug: the examples' own code is
# light next to ONNX Runtime / OpenVINO / PyTorch; `release` for a release build).
# OpenVINO: the plugin of `make ort-openvino`; on a non-Intel CPU the plugin offers no device, so
# this script runs it through the test harness's shim (tests/openvino/vendor_shim.c,
# docs/openvino.md), which is stated in the table.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
REPEATS=${REPEATS:-}
BUNDLE=${BUNDLE:-models/demo_brain_unet}
VOLUME=${VOLUME:-.cache/data/synthetic-v1/pd/pool/pd_pool_000_image.nii.gz}
PROFILE=${PROFILE:-debug}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS
make --no-print-directory ort ort-openvino >&2
cache=${ASFDA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/asfda}
plugin=$(ls "$cache"/onnxruntime-ep-openvino/libonnxruntime_providers_openvino_plugin.so.* | sort | tail -1)
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
via="the plugin as shipped"
if ! grep -q GenuineIntel /proc/cpuinfo; then
  # ONNX Runtime 1.31's OrtApi: 470 entries, HardwareDevice_Type 307, HardwareDevice_VendorId 308
  # (ort-sys 2.0.0-rc.15's declaration; tests/common/openvino.rs computes the indices).
  shim=$(mktemp -d)/openvino_vendor_shim.so
  cc -O1 -shared -fPIC -Wall -Werror -DREAL_PLUGIN="\"$plugin\"" -DAPI_WORDS=470 -DVENDOR_IDX=308 -DTYPE_IDX=307 \
    -o "$shim" tests/openvino/vendor_shim.c -ldl
  plugin=$shim
  via="the test harness's vendor shim (non-Intel CPU)"
fi
export ASFDA_OPENVINO_LIBRARY=$plugin
flag=; [ "$PROFILE" = release ] && flag=--release
cargo build -q $flag --example score_bench --example train_step_time >&2
EX=target/$PROFILE/examples
load() { cut -d' ' -f1-3 /proc/loadavg; }
result() { grep '^RESULT ' | tail -1 | sed 's/^RESULT //'; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }
kv() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

rows=()
for device in cpu openvino; do
  before=$(load)
  r=$(ASFDA_BENCH_DEVICE=$device $EX/score_bench score "$BUNDLE" "$VOLUME" "${REPEATS:-3}" 2>/dev/null | result)
  rows+=("score|$device|$(field "$r" median_s)|$(field "$r" peak_rss_mib)|$before|$(load)")
  echo "score $device: $r" >&2
done
for device in cpu openvino; do
  before=$(load)
  r=$(ASFDA_BENCH_DEVICE=$device $EX/train_step_time "$BUNDLE" 2 64 "${REPEATS:-2}" "$THREADS" | result)
  rows+=("train|$device|$(kv "$r" median_s)|$(kv "$r" peak_rss_mib)|$before|$(load)")
  echo "train $device: $r" >&2
done
if [ -x .venv-torch/bin/python ]; then
  before=$(load)
  r=$(.venv-torch/bin/python scripts/train_step_time.py "$BUNDLE" 2 64 "${REPEATS:-2}" "$THREADS" | result)
  rows+=("train|pytorch|$(kv "$r" median_s)|$(kv "$r" peak_rss_mib)|$before|$(load)")
  echo "train pytorch: $r" >&2
else
  echo "PyTorch eager: not run (.venv-torch missing: \`make venv-torch\`)" >&2
  rows+=("train|pytorch|nan|nan|-|-")
fi

echo "CPU: $cpu; $THREADS threads; OpenVINO through $via; $PROFILE build; $(date -u +%Y-%m-%dT%H:%MZ)"
echo
printf '%s\n' "${rows[@]}" | python3 -c '
import sys
rows = [l.strip().split("|") for l in sys.stdin if l.strip()]
base = {t: float(s) for t, d, s, *_ in rows if d == "cpu"}
print("| task | variant | median s | vs CPU provider | peak RSS MiB | load avg before | after |")
print("|---|---|---:|---:|---:|---|---|")
for task, dev, s, rss, before, after in rows:
    name = {"score": "scoring one volume", "train": "train step (2 x 64^3)"}[task]
    var = {"cpu": "asfda, CPU provider", "openvino": "asfda, OpenVINO (f32)", "pytorch": "PyTorch eager"}[dev]
    if s == "nan":
        print(f"| {name} | {var} | not run (no .venv-torch) | | | | |")
        continue
    print(f"| {name} | {var} | {float(s):.3f} | {base[task] / float(s):.2f}x faster | {float(rss):.0f} | {before} | {after} |")
'
