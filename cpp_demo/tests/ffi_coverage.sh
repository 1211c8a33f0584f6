#!/usr/bin/env bash
# Fails, naming them, when an asfda_* function declared in asfda.h has no test under this folder.
#   - A function returning enum AsfdaStatus (fallible) needs an error-path test: a line of a C
#     test asserting its failure, `EXPECT(asfda_xxx(...), STATUS, "needle")` (the macro of the C
#     tests, which checks the status and the message).
#   - Any other function (defaults, _free, getters that cannot fail or answer NULL/0) needs a
#     call: its name followed by "(" in a .c or .cpp file here.
# C++ tests go through asfda.hpp and name no C function, so they do not count here.
# usage: ffi_coverage.sh HEADER TESTS_DIR
set -euo pipefail
header=${1:?usage: ffi_coverage.sh HEADER TESTS_DIR}
tests=${2:?usage: ffi_coverage.sh HEADER TESTS_DIR}
[ -f "$header" ] || { echo "ffi_coverage: no header $header" >&2; exit 2; }

# Prototypes in the generated header start at column 0: "<type> asfda_name(".
fallible=$(grep -oE '^(ASFDA_MUST_USE )?AsfdaStatus asfda_[a-z0-9_]+\(' "$header" | sed -E 's/.* (asfda_[a-z0-9_]+)\(/\1/' | sort -u)
all=$(grep -oE '^[A-Za-z].*[ *](asfda_[a-z0-9_]+)\(' "$header" | grep -oE 'asfda_[a-z0-9_]+\($' | tr -d '(' | sort -u)
[ -n "$all" ] || { echo "ffi_coverage: no asfda_* prototypes found in $header" >&2; exit 2; }

sources=$(find "$tests" -name '*.c' -o -name '*.cpp')
missing=0
for fn in $all; do
    if grep -qx "$fn" <<<"$fallible"; then
        # shellcheck disable=SC2086
        if ! grep -qE "EXPECT\(${fn}\(" $sources; then
            echo "ffi_coverage: $fn has no error-path test (EXPECT(${fn}(...), STATUS, \"...\") in $tests/*.c)"
            missing=$((missing + 1))
        fi
    else
        # shellcheck disable=SC2086
        if ! grep -qE "\b${fn}\(" $sources; then
            echo "ffi_coverage: $fn is never called by a test in $tests"
            missing=$((missing + 1))
        fi
    fi
done
total=$(wc -w <<<"$all")
if [ "$missing" -gt 0 ]; then
    echo "ffi_coverage: $missing of $total functions not covered"
    exit 1
fi
echo "ffi_coverage: all $total asfda_* functions covered ($(wc -w <<<"$fallible") fallible ones with an error-path test)"
