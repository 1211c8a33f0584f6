#!/usr/bin/env bash
# pkg-config consumer of an installed asfda: compiles consumer.c exactly as the README tells C
# users to (cc ... $(pkg-config --cflags --libs asfda)) and runs it.
# usage: pkgconfig_check.sh PREFIX WORK_DIR [CC]
set -euo pipefail
prefix="$1"
work="$2"
cc="${3:-cc}"
here="$(cd "$(dirname "$0")" && pwd)"
command -v pkg-config >/dev/null || { echo "pkg-config is not installed (apt-get install pkg-config)" >&2; exit 1; }
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
version="$(pkg-config --modversion asfda)"
expected="$(sed -n 's/^#define ASFDA_VERSION "\(.*\)"/\1/p' "$prefix/include/asfda.h")"
[ "$version" = "$expected" ] || { echo "asfda.pc says $version, asfda.h says $expected" >&2; exit 1; }
mkdir -p "$work"
# -Wno-comment: asfda.h's top comment contains "*_load/*_new" ("/*" in a comment, from
# cbindgen.toml); drop it once that text is fixed and the header regenerated.
# Sources before libraries, so linkers defaulting to --as-needed keep libasfda.
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Wextra -Werror -Wno-comment -pedantic -o "$work/consumer_pkgconfig" "$here/consumer.c" $(pkg-config --cflags --libs asfda)
"$here/check_soname.sh" "$prefix" "$work/consumer_pkgconfig"
# asfda.pc adds an rpath to its libdir: the program starts with no LD_LIBRARY_PATH.
env -u LD_LIBRARY_PATH "$work/consumer_pkgconfig" "$prefix"
