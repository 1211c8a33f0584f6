#!/usr/bin/env bash
# Fetches the OpenVINO execution provider plugin for ONNX Runtime from its PyPI wheel
# (onnxruntime-ep-openvino, which bundles OpenVINO and TBB) and unpacks its CPU parts into the
# user's asfda cache, where asfda finds it at run time (src/runtime.rs, device `openvino`):
#   CACHE/onnxruntime-ep-openvino/libonnxruntime_providers_openvino_plugin.so (+ OpenVINO, TBB)
# CACHE is $ASFDA_CACHE_DIR, else $XDG_CACHE_HOME/asfda, else ~/.cache/asfda (as scripts/fetch_ort.sh).
# VERSION comes from scripts/requirements-openvino.txt, the single place it is pinned.
# OpenVINO's GPU and NPU plugins and the GPU kernel cache (115 of the wheel's 158 MB unpacked) are
# left out: asfda's `openvino` device is the CPU (ov_device CPU).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ASFDA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/asfda}
mkdir -p "$cache"
package=onnxruntime-ep-openvino
version=$(sed -n "s/^$package==//p" "$root/scripts/requirements-openvino.txt")
dest=$cache/$package
plugin=libonnxruntime_providers_openvino_plugin.so
if [ -f "$dest/$plugin.$version" ]; then
  echo "OpenVINO EP plugin $version already in $dest"
  exit 0
fi
wheels=$cache/wheels
mkdir -p "$wheels"
python3 -m pip download --quiet --no-deps --only-binary :all: --dest "$wheels" "$package==$version"
wheel=$(ls "$wheels"/"${package//-/_}"-"$version"-*.whl | head -n 1)
tmp=$(mktemp -d "$cache/unpack.XXXXXX"); chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
python3 - "$wheel" "$tmp" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
skip = ("libopenvino_intel_gpu_plugin", "libopenvino_intel_npu_plugin", "cache.json", "__init__.py")
names = []
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        folder, _, base = info.filename.rpartition("/")
        if folder != "onnxruntime_ep_openvino" or not base or base.startswith(skip):
            continue
        target = os.path.join(out, base)
        with z.open(info) as src, open(target, "wb") as dst:
            dst.write(src.read())
        os.chmod(target, 0o755 if ".so" in base else 0o644)
        names.append(base)
print("unpacked:", ", ".join(sorted(names)))
PY
# Publish atomically so a half-unpacked folder is never picked up.
rm -rf "$dest.old"; [ -d "$dest" ] && mv "$dest" "$dest.old"
mv "$tmp" "$dest"; trap - EXIT
rm -rf "$dest.old"
echo "OpenVINO EP plugin $version in $dest"
