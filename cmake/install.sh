#!/usr/bin/env bash
# Installs asfda into a prefix: the library, ONNX Runtime beside it (asfda finds it there at run
# time, see src/runtime.rs), the C and C++ headers, a CMake package config and a pkg-config file.
# The config files are generated from the templates next to this script; every path in them is
# relative to their own location, so the installed tree can be moved. The version comes from
# Cargo.toml (the one source of truth).
#
# usage: cmake/install.sh --prefix DIR [--lib-dir target/release] [--ort-dir CACHE/onnxruntime/cpu]
# (CACHE: the user's asfda cache that `make ort` fills, see scripts/fetch_ort.sh)
# DESTDIR is honoured for staged installs (packages).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
prefix=""
lib_dir="$root/target/release"
ort_dir="${ASFDA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/asfda}/onnxruntime/cpu"
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --lib-dir) lib_dir="$2"; shift 2 ;;
    --ort-dir) ort_dir="$2"; shift 2 ;;
    *) echo "install.sh: unknown argument '$1' (see the usage line at the top of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$prefix" ] || { echo "install.sh: --prefix DIR is required" >&2; exit 2; }
dest="${DESTDIR:-}$prefix"

lib="$lib_dir/libasfda.so"
[ -f "$lib" ] || { echo "install.sh: $lib not found: run 'cargo build' (or --release) first" >&2; exit 1; }
ort_libs=("$ort_dir"/libonnxruntime*.so*)
ort_core=""
for f in "${ort_libs[@]}"; do
  case "$(basename "$f")" in libonnxruntime.so*) ort_core="$(basename "$f")" ;; esac
done
[ -n "$ort_core" ] || { echo "install.sh: no libonnxruntime.so* in $ort_dir: run 'make ort' first" >&2; exit 1; }

# The [package] version of Cargo.toml.
version="$(sed -n '/^\[package\]/,/^\[/ s/^version *= *"\([^"]*\)".*/\1/p' "$root/Cargo.toml")"
[[ "$version" =~ ^([0-9]+)\.([0-9]+)\.([0-9]+) ]] || { echo "install.sh: no version in Cargo.toml" >&2; exit 1; }
major="${BASH_REMATCH[1]}"
minor="${BASH_REMATCH[2]}"

# build.rs gives the library a SONAME (libasfda.so.0.1 for 0.1.x): the file is installed under
# it, with the libasfda.so development link, and consumers record the SONAME as DT_NEEDED. A
# library built without one (another platform's toolchain) is installed as libasfda.so and
# linked by CMake with IMPORTED_NO_SONAME.
soname="$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"

mkdir -p "$dest/lib/cmake/asfda" "$dest/lib/pkgconfig" "$dest/include"
# `install` replaces files (new inode), so a process running the old library is not disturbed.
if [ -n "$soname" ]; then
  lib_file="$soname"
  soname_property="IMPORTED_SONAME \"$soname\""
  install -m 755 "$lib" "$dest/lib/$soname"
  ln -sfn "$soname" "$dest/lib/libasfda.so"
else
  lib_file="libasfda.so"
  soname_property="IMPORTED_NO_SONAME TRUE"
  install -m 755 "$lib" "$dest/lib/libasfda.so"
fi
for f in "${ort_libs[@]}"; do install -m 755 "$f" "$dest/lib/"; done
install -m 644 "$root/include/asfda.h" "$root/bindings/cpp/asfda.hpp" "$dest/include/"

generate() { # template output
  local tmp
  tmp="$(mktemp "$2.XXXXXX")"
  sed -e "s|@ASFDA_VERSION@|$version|g" -e "s|@ASFDA_VERSION_MAJOR@|$major|g" \
      -e "s|@ASFDA_VERSION_MINOR@|$minor|g" -e "s|@ASFDA_LIBRARY_FILE@|$lib_file|g" \
      -e "s|@ASFDA_SONAME_PROPERTY@|$soname_property|g" -e "s|@ORT_LIBRARY_FILE@|$ort_core|g" "$1" > "$tmp"
  if grep -q '@[A-Z_]*@' "$tmp"; then
    echo "install.sh: unreplaced placeholder in $2" >&2; rm -f "$tmp"; exit 1
  fi
  chmod 644 "$tmp"
  mv "$tmp" "$2"
}
generate "$root/cmake/asfdaConfig.cmake.in" "$dest/lib/cmake/asfda/asfdaConfig.cmake"
generate "$root/cmake/asfdaConfigVersion.cmake.in" "$dest/lib/cmake/asfda/asfdaConfigVersion.cmake"
generate "$root/cmake/asfda.pc.in" "$dest/lib/pkgconfig/asfda.pc"
echo "installed asfda $version into $dest"
