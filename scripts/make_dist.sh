#!/usr/bin/env bash
# The binary release: one tarball that runs where it is unpacked, with nothing else installed.
#
#   asfda-VERSION-linux-ARCH/
#     bin/asfda                          the CLI (finds ONNX Runtime in ../lib, the bundle in ../share)
#     lib/libasfda.so.0.1, libasfda.so   the C library, with ONNX Runtime's libraries beside it
#     lib/cmake/asfda/, lib/pkgconfig/   find_package(asfda) and pkg-config (which adds an rpath)
#     include/asfda.h, asfda.hpp         the C header and the C++ wrapper
#     share/asfda/models/demo_brain_unet the demo bundle (the CLI's default --bundle)
#     share/doc/asfda/                   README and the model card
#
# Made from an existing build (`cargo build --release`, or --profile debug for a quick test) and
# `make ort`; debug symbols are stripped. Nothing in it points at this tree (tests/consumer/dist_check.sh).
# usage: scripts/make_dist.sh [--profile release|debug] [--out DIR]   (prints the tarball's path)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
profile=release
out="$root/dist"
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "make_dist.sh: unknown argument '$1' (see the usage line at the top of $0)" >&2; exit 2 ;;
  esac
done
target="$root/target/$profile"
for f in "$target/asfda" "$target/libasfda.so"; do
  [ -f "$f" ] || { echo "make_dist.sh: $f not found: run 'cargo build --profile $profile' first" >&2; exit 1; }
done
version="$(sed -n '/^\[package\]/,/^\[/ s/^version *= *"\([^"]*\)".*/\1/p' "$root/Cargo.toml")"
name="asfda-$version-linux-$(uname -m)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
prefix="$stage/$name"

"$root/cmake/install.sh" --prefix "$prefix" --lib-dir "$target" >/dev/null
install -D -m 755 "$target/asfda" "$prefix/bin/asfda"
# A release ships without debug sections (the debug build's library is ~45 MB with them).
strip --strip-debug "$prefix/bin/asfda"
find "$prefix/lib" -maxdepth 1 -type f -name 'libasfda.so*' -exec strip --strip-debug {} +
mkdir -p "$prefix/share/asfda/models" "$prefix/share/doc/asfda"
cp -R "$root/models/demo_brain_unet" "$prefix/share/asfda/models/"
cp "$root/README.md" "$prefix/share/doc/asfda/"
cp "$root/models/demo_brain_unet/MODEL_CARD.md" "$prefix/share/doc/asfda/"

mkdir -p "$out"
tar -C "$stage" -czf "$out/$name.tar.gz.tmp" "$name"
mv "$out/$name.tar.gz.tmp" "$out/$name.tar.gz"
echo "$out/$name.tar.gz"
