#!/usr/bin/env bash
# Pool-scoring throughput (issue 18, item 5): `asfda score` over N volumes with reading and
# preprocessing of the next volume overlapped with inference on the current one (`--prefetch`)
# against one volume at a time (the default), runs interleaved so load drifts hit both.
# Prints one markdown table: wall seconds per run, per volume, peak RSS, and the ratio.
#
#   scripts/bench_pool.sh                  # N=12 volumes of the pd pool, ROUNDS=2
# Env: N (12), ROUNDS (2), SITE (pd), CLI (target/release/asfda, built if missing), THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-12}
ROUNDS=${ROUNDS:-2}
SITE=${SITE:-pd}
THREADS=${THREADS:-2}
CLI=${CLI:-target/release/asfda}
DATA=.cache/data/synthetic-v1
[ -x "$CLI" ] || cargo build --release >&2
[ -f "$DATA/manifest.json" ] || make data >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/pool"
# N volumes of the site's pool (cycled when the pool is smaller), as separate files.
mapfile -t files < <(ls "$DATA/$SITE/pool/"*_image.nii.gz)
for i in $(seq 0 $((N - 1))); do
  cp "${files[$((i % ${#files[@]}))]}" "$work/pool/v$(printf %02d "$i").nii.gz"
done
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A total rss
for mode in overlap sequential; do total[$mode]=0; rss[$mode]=0; done
for round in $(seq 1 "$ROUNDS"); do
  for mode in overlap sequential; do
    flag=(); [ "$mode" = overlap ] && flag=(--prefetch)
    rm -f "$work/scores.jsonl"
    start=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$work/rss" "$CLI" score --bundle models/demo_brain_unet --folder "$work/pool" \
      --out "$work/scores.jsonl" \
      --threads "$THREADS" "${flag[@]}" > /dev/null 2>&1
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    echo "round $round $mode: ${secs}s" >&2
    total[$mode]=$(echo "${total[$mode]} + $secs" | bc)
    kb=$(cat "$work/rss"); [ "$kb" -gt "${rss[$mode]}" ] && rss[$mode]=$kb
    [ "$(wc -l < "$work/scores.jsonl")" -eq "$N" ] || { echo "run $mode scored fewer than $N volumes" >&2; exit 1; }
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
echo
echo "| $N volumes ($SITE), $THREADS threads, mean of $ROUNDS runs | wall s | s / volume | peak RSS MiB |"
echo "|---|---:|---:|---:|"
for mode in overlap sequential; do
  mean=$(echo "scale=2; ${total[$mode]} / $ROUNDS" | bc)
  per=$(echo "scale=3; $mean / $N" | bc)
  echo "| $mode | $mean | $per | $((rss[$mode] / 1024)) |"
done
echo
echo "overlap / sequential wall time: $(echo "scale=3; ${total[overlap]} / ${total[sequential]}" | bc)"
echo "load average (1, 5, 15 min) before: $load_before; after: $load_after; $(nproc) cores"
