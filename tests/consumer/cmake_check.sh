#!/usr/bin/env bash
# CMake consumer of an installed asfda: configures and builds this folder's project against
# PREFIX with find_package(asfda CONFIG), checks the SONAME the C program records, then runs its
# C and C++ programs.
# usage: cmake_check.sh PREFIX WORK_DIR CMAKE BUNDLE_DIR IMAGE.nii [extra cmake -D options...]
set -euo pipefail
prefix="$1"; work="$2"; cmake="$3"; bundle="$4"; image="$5"
shift 5
here="$(cd "$(dirname "$0")" && pwd)"
rm -rf "$work"
"$cmake" -S "$here" -B "$work" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Debug "$@" > "$work.configure.log" \
  || { cat "$work.configure.log" >&2; exit 1; }
"$cmake" --build "$work"
"$here/check_soname.sh" "$prefix" "$work/consumer_c"
"$work/consumer_c" "$prefix"
"$work/consumer_cpp" "$prefix" "$bundle" "$image"
