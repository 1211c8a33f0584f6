#!/usr/bin/env bash
# Checks that a program linked against an installed asfda records the library's SONAME as
# DT_NEEDED (not a path, not the unversioned development link): libasfda.so.MAJOR, or
# libasfda.so.0.MINOR before 1.0, from the version macros of the installed asfda.h.
# usage: check_soname.sh PREFIX EXECUTABLE
set -euo pipefail
prefix="$1"
exe="$2"
macro() { sed -n "s/^#define ASFDA_VERSION_$1 \([0-9]*\)$/\1/p" "$prefix/include/asfda.h"; }
major="$(macro MAJOR)"
if [ "$major" = 0 ]; then want="libasfda.so.0.$(macro MINOR)"; else want="libasfda.so.$major"; fi
needed="$(readelf -d "$exe" | sed -n 's/.*(NEEDED).*\[\(libasfda[^]]*\)\]/\1/p')"
[ "$needed" = "$want" ] || { echo "$exe needs '$needed', expected the SONAME $want" >&2; exit 1; }
[ -e "$prefix/lib/$want" ] || { echo "the install has no $prefix/lib/$want" >&2; exit 1; }
