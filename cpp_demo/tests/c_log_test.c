/* C11 test of the log callback: asfda_set_log_callback validates its level, forwards the
 * decisions asfda makes on its own (here: device "auto" falling back to the CPU, with the CPU
 * ONNX Runtime of the test install) with the caller's user_data, filters by level, and stops
 * when removed. Reads ASFDA_TEST_ROOT and ASFDA_TEST_BUNDLE (set by ctest). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asfda.h"

#include "check.h"

typedef struct {
    int calls;
    int auto_fallbacks; /* messages about device 'auto' falling back to the CPU */
    AsfdaLogLevel last_level;
    char last_auto[1024];
} Seen;

static void on_log(void *user_data, AsfdaLogLevel level, const char *message) {
    Seen *seen = (Seen *)user_data;
    seen->calls++;
    if (message != NULL && strstr(message, "device 'auto'") != NULL) {
        /* "falls back to the CPU: ..." or, where the OpenVINO plugin offers a device,
         * "runs on openvino (CUDA: ...)": either way the choice and why not CUDA. */
        seen->auto_fallbacks += strstr(message, "falls back to the CPU") != NULL || strstr(message, "runs on openvino") != NULL;
        seen->last_level = level;
        snprintf(seen->last_auto, sizeof seen->last_auto, "%s", message);
    }
}

static void must(AsfdaStatus s, const char *what) {
    if (s != ASFDA_STATUS_OK) {
        fprintf(stderr, "%s failed: %s: %s\n", what, asfda_status_name((int)s), asfda_last_error_message());
        exit(2);
    }
}

static const char *env(const char *name) {
    const char *value = getenv(name);
    if (value == NULL || *value == '\0') {
        fprintf(stderr, "%s is not set (ctest sets it)\n", name);
        exit(2);
    }
    return value;
}

int main(void) {
    char model_path[4096];
    snprintf(model_path, sizeof model_path, "%s/models/tiny_conv3d/tiny_conv3d.onnx", env("ASFDA_TEST_ROOT"));
    const char *bundle = env("ASFDA_TEST_BUNDLE");
    Seen seen;
    memset(&seen, 0, sizeof seen);

    /* Unknown levels are refused, naming the argument. */
    EXPECT(asfda_set_log_callback(on_log, &seen, 0), ASFDA_STATUS_INVALID_ARGUMENT, "max_level");
    EXPECT(asfda_set_log_callback(on_log, &seen, ASFDA_LOG_DEBUG + 1), ASFDA_STATUS_INVALID_ARGUMENT, "max_level");

    /* Only WARN and ERROR: the INFO fallback message is filtered out. */
    must(asfda_set_log_callback(on_log, &seen, ASFDA_LOG_WARN), "set_log_callback(WARN)");
    AsfdaRuntimeOptions ro = {0};
    ro.device = "auto";
    ro.threads = 1;
    AsfdaModel *model = NULL;
    must(asfda_model_load(model_path, &ro, &model), "model_load");
    asfda_model_free(model);
    CHECK(seen.auto_fallbacks == 0);

    /* INFO: an engine on device "auto" reports that it runs on the CPU, and why. */
    must(asfda_set_log_callback(on_log, &seen, ASFDA_LOG_INFO), "set_log_callback(INFO)");
    AsfdaEngineOptions eo = asfda_engine_options_default();
    eo.bundle_path = bundle;
    eo.runtime.device = "auto";
    eo.runtime.threads = 1;
    AsfdaEngine *engine = NULL;
    must(asfda_engine_new(&eo, &engine), "engine_new");
    char device[32];
    size_t needed = 0;
    must(asfda_engine_device(engine, device, sizeof device, &needed), "engine_device");
    CHECK(strcmp(device, "cpu") == 0 || strcmp(device, "openvino") == 0);
    CHECK(seen.auto_fallbacks >= 1);
    CHECK((strcmp(device, "cpu") == 0) == (strstr(seen.last_auto, "falls back to the CPU") != NULL));
    CHECK(seen.last_level == ASFDA_LOG_INFO);
    CHECK(strstr(seen.last_auto, "libonnxruntime_providers_cuda.so") != NULL);
    printf("logged: %s\n", seen.last_auto);
    asfda_engine_free(engine);

    /* Removed: nothing more arrives. */
    must(asfda_set_log_callback(NULL, NULL, 0), "set_log_callback(NULL)");
    const int calls = seen.calls;
    model = NULL;
    must(asfda_model_load(model_path, &ro, &model), "model_load");
    asfda_model_free(model);
    CHECK(seen.calls == calls);

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("c_log_test: all checks passed\n");
    return 0;
}
