#!/usr/bin/env bash
# The Python wheel with everything inside: libasfda.so, the `asfda` command line program and the
# demo bundle (see bindings/python/_build/asfda_build.py), tagged manylinux_2_N for the glibc it
# needs, depending on the onnxruntime wheel whose library it loads. Debug symbols are stripped.
# Made from an existing build (`cargo build --release`, or --profile debug for a quick test).
# usage: scripts/make_wheel.sh [--profile release|debug] [--out DIR] [--python PYTHON]   (prints the wheel's path)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
profile=release
out="$root/dist"
python="$root/.venv/bin/python"
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    *) echo "make_wheel.sh: unknown argument '$1' (see the usage line at the top of $0)" >&2; exit 2 ;;
  esac
done
target="$root/target/$profile"
for f in "$target/asfda" "$target/libasfda.so"; do
  [ -f "$f" ] || { echo "make_wheel.sh: $f not found: run 'cargo build --profile $profile' first" >&2; exit 1; }
done
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
strip --strip-debug -o "$stage/libasfda.so" "$target/libasfda.so"
strip --strip-debug -o "$stage/asfda" "$target/asfda"
mkdir -p "$out"
# The in-tree backend needs nothing: no build isolation, no download.
ASFDA_WHEEL_LIBRARY="$stage/libasfda.so" ASFDA_WHEEL_CLI="$stage/asfda" \
  ASFDA_WHEEL_BUNDLE="$root/models/demo_brain_unet" \
  "$python" -m pip wheel --quiet --no-deps --no-build-isolation --no-index -w "$stage/wheel" "$root/bindings/python"
wheel="$(ls "$stage"/wheel/asfda-*.whl)"
mv "$wheel" "$out/"
echo "$out/$(basename "$wheel")"
