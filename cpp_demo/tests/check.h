/* Shared by the C tests: a failure counter, CHECK for conditions and EXPECT for calls that must
 * fail with a given status and a message naming the problem (cpp_demo/tests/ffi_coverage.sh
 * looks for EXPECT(asfda_...) lines). One test program per translation unit, so `static` is fine. */
#ifndef ASFDA_TEST_CHECK_H
#define ASFDA_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

#include "asfda.h"

static int failures = 0;

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                             \
        }                                                                           \
    } while (0)

/* A call must fail with `expected` and leave a message mentioning `needle`. */
static void expect_status(AsfdaStatus got, AsfdaStatus expected, const char *needle, int line) {
    const char *msg = asfda_last_error_message();
    if (got != expected || msg == NULL || strstr(msg, needle) == NULL) {
        fprintf(stderr, "line %d: expected %s containing '%s', got %s: '%s'\n", line, asfda_status_name((int)expected),
                needle, asfda_status_name((int)got), msg ? msg : "(null)");
        failures++;
    }
}
#define EXPECT(call, status, needle) expect_status((call), (status), (needle), __LINE__)

#endif
