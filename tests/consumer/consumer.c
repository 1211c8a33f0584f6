/* A consumer of an installed asfda (built through CMake's asfda::asfda and through pkg-config).
 * Checks the header matches the library and that ONNX Runtime is found beside the installed
 * libasfda.so, i.e. inside PREFIX, not in the source tree's cache.
 * usage: consumer_c PREFIX */
#define _XOPEN_SOURCE 700 /* realpath, PATH_MAX under -std=c11 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asfda.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PREFIX\n", argv[0]);
        return 2;
    }
    char prefix[PATH_MAX];
    if (!realpath(argv[1], prefix)) {
        fprintf(stderr, "no such prefix: %s\n", argv[1]);
        return 2;
    }
    if (strcmp(asfda_version(), ASFDA_VERSION) != 0) {
        fprintf(stderr, "header %s but library %s\n", ASFDA_VERSION, asfda_version());
        return 1;
    }
    size_t needed = 0;
    if (asfda_runtime_info_json(NULL, 0, &needed) != ASFDA_STATUS_OK) {
        fprintf(stderr, "runtime: %s\n", asfda_last_error_message());
        return 1;
    }
    char *json = malloc(needed);
    if (!json || asfda_runtime_info_json(json, needed, &needed) != ASFDA_STATUS_OK) return 1;
    char expected[PATH_MAX + 64];
    snprintf(expected, sizeof expected, "\"library_path\":\"%s/lib/libonnxruntime.so", prefix);
    int ok = strstr(json, "\"library_source\":\"beside_library\"") != NULL && strstr(json, expected) != NULL;
    printf("%s\n", json);
    free(json);
    if (!ok) {
        fprintf(stderr, "ONNX Runtime was not loaded from beside the installed library (%s/lib)\n", prefix);
        return 1;
    }
    printf("consumer_c: asfda %s, ONNX Runtime from %s/lib\n", asfda_version(), prefix);
    return 0;
}
