#!/usr/bin/env bash
# The binary release works where it is unpacked, with nothing of the source tree and no
# environment: unpacks TARBALL into WORK_DIR and, with HOME and the caches pointing at an empty
# folder, runs `asfda --version`, `asfda info` (ONNX Runtime from the release's lib/), `asfda
# segment` with the default bundle (share/asfda/), and builds the C and C++ consumers against the
# release with pkg-config and with CMake, then runs them (no LD_LIBRARY_PATH).
# usage: dist_check.sh TARBALL WORK_DIR CMAKE IMAGE.nii [extra cmake -D options...]
set -euo pipefail
tarball="$1"; work="$2"; cmake="$3"; image="$4"
shift 4
here="$(cd "$(dirname "$0")" && pwd)"
rm -rf "$work"
mkdir -p "$work/home"
tar -C "$work" -xzf "$tarball"
prefix="$(cd "$work"/asfda-*/ && pwd)"
cp "$image" "$work/image.nii"
cd "$work"
unset ASFDA_ORT_LIBRARY ORT_DYLIB_PATH ASFDA_CACHE_DIR LD_LIBRARY_PATH ASFDA_LIBRARY
export HOME="$work/home" XDG_CACHE_HOME="$work/home/.cache"
fail() { echo "dist_check: $*" >&2; exit 1; }

version="$("$prefix/bin/asfda" --version)"
[[ "$version" == "asfda "* ]] || fail "--version printed '$version'"
info="$("$prefix/bin/asfda" info --json)"
grep -Eq '"library_source": *"beside_library"' <<<"$info" || fail "ONNX Runtime not found beside the release: $info"
grep -Eq "\"library_path\": *\"$prefix/lib/libonnxruntime" <<<"$info" || fail "ONNX Runtime not from $prefix/lib: $info"
"$prefix/bin/asfda" segment --threads 2 image.nii --out labels.nii.gz --json > segment.json \
  || fail "asfda segment failed"
[ -s labels.nii.gz ] && [ -s labels.ctbl ] || fail "asfda segment wrote no labels.nii.gz / labels.ctbl"

"$here/pkgconfig_check.sh" "$prefix" "$work/consumer-pkgconfig" "${CC:-cc}"
"$here/cmake_check.sh" "$prefix" "$work/consumer-cmake" "$cmake" "$prefix/share/asfda/models/demo_brain_unet" \
  "$work/image.nii" "$@"
echo "dist_check: $(basename "$tarball") runs from $prefix"
