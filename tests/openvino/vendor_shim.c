/* Test harness only (tests/common/openvino.rs): lets the tests run asfda's OpenVINO device on
 * non-Intel x86 CPUs. The onnxruntime-ep-openvino plugin offers an OpenVINO device only for
 * hardware whose vendor id is Intel's (0x8086), although OpenVINO's CPU plugin itself runs on any
 * x86-64 CPU with SSE4.2 (it reports e.g. "AMD EPYC" as its FULL_DEVICE_NAME). This shim is an
 * execution provider library that forwards to the real plugin (REAL_PLUGIN), handing it a copy of
 * ONNX Runtime's API table in which HardwareDevice_VendorId answers 0x8086 for CPU devices. It is
 * never shipped: on a non-Intel machine asfda itself reports that the plugin offers no device.
 * Built by the tests with -DREAL_PLUGIN, -DAPI_WORDS (pointers in OrtApi), -DVENDOR_IDX and
 * -DTYPE_IDX (indices of HardwareDevice_VendorId / HardwareDevice_Type), taken from ort-sys. */
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const void *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} ApiBase;
typedef void *(*CreateFactories)(const char *, const ApiBase *, const void *, void **, size_t, size_t *);
typedef void *(*ReleaseFactory)(void *);

static const ApiBase *real_base;
static ApiBase patched_base;
static void *patched_api[API_WORDS];
static uint32_t (*real_vendor_id)(const void *);
static int (*real_type)(const void *);
static void *plugin;

static uint32_t vendor_id(const void *device) {
    return real_type(device) == 0 /* OrtHardwareDeviceType_CPU */ ? 0x8086u : real_vendor_id(device);
}

static const void *get_api(uint32_t version) {
    void *const *real = real_base->GetApi(version);
    if (real == NULL) return NULL;
    memcpy(patched_api, real, sizeof patched_api);
    real_vendor_id = (uint32_t (*)(const void *))real[VENDOR_IDX];
    real_type = (int (*)(const void *))real[TYPE_IDX];
    patched_api[VENDOR_IDX] = (void *)vendor_id;
    return patched_api;
}

void *CreateEpFactories(const char *name, const ApiBase *base, const void *logger, void **factories, size_t max,
                        size_t *count) {
    plugin = dlopen(REAL_PLUGIN, RTLD_NOW | RTLD_LOCAL);
    CreateFactories create = plugin ? (CreateFactories)dlsym(plugin, "CreateEpFactories") : NULL;
    if (create == NULL) {
        *count = 0;
        return NULL; /* no factories: asfda then reports that the plugin offers no device */
    }
    real_base = base;
    patched_base.GetApi = get_api;
    patched_base.GetVersionString = base->GetVersionString;
    return create(name, &patched_base, logger, factories, max, count);
}

void *ReleaseEpFactory(void *factory) {
    return ((ReleaseFactory)dlsym(plugin, "ReleaseEpFactory"))(factory);
}
