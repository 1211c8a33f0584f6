#!/usr/bin/env bash
# Fetches ONNX Runtime's shared library from its PyPI wheel (the only download source) and
# unpacks it into the user's asfda cache, where asfda finds it at run time (src/runtime.rs):
# $ASFDA_CACHE_DIR, else $XDG_CACHE_HOME/asfda, else ~/.cache/asfda.
#   scripts/fetch_ort.sh cpu   -> CACHE/onnxruntime/cpu  (onnxruntime==VERSION)
#   scripts/fetch_ort.sh gpu   -> CACHE/onnxruntime/gpu  (onnxruntime-gpu==VERSION, CUDA 13 + cuDNN 9)
# VERSION comes from scripts/requirements-test.txt, the single place it is pinned.
set -euo pipefail
flavour=${1:-cpu}
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ASFDA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/asfda}
mkdir -p "$cache"
version=$(sed -n 's/^onnxruntime==//p' "$root/scripts/requirements-test.txt")
case "$flavour" in
  cpu) package=onnxruntime ;;
  gpu) package=onnxruntime-gpu ;;
  *) echo "usage: $0 cpu|gpu" >&2; exit 2 ;;
esac
dest=$cache/onnxruntime/$flavour
if [ -f "$dest/libonnxruntime.so.$version" ]; then
  echo "ONNX Runtime $version ($flavour) already in $dest"
  exit 0
fi
wheels=$cache/wheels
mkdir -p "$wheels"
python3 -m pip download --quiet --no-deps --only-binary :all: --dest "$wheels" "$package==$version"
wheel=$(ls "$wheels"/"${package//-/_}"-"$version"-*.whl | head -n 1)
tmp=$(mktemp -d "$cache/unpack.XXXXXX"); chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
python3 - "$wheel" "$tmp" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    libs = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime")]
    for name in libs:
        target = out + "/" + name.rsplit("/", 1)[1]
        with z.open(name) as src, open(target, "wb") as dst:
            dst.write(src.read())
    print("unpacked:", ", ".join(n.rsplit("/", 1)[1] for n in libs))
PY
# Publish atomically so a half-unpacked folder is never picked up.
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.old"; [ -d "$dest" ] && mv "$dest" "$dest.old"
mv "$tmp" "$dest"; trap - EXIT
rm -rf "$dest.old"
echo "ONNX Runtime $version ($flavour) in $dest"
