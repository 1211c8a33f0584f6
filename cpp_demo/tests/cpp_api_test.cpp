// C++17 consumer of the asfda C ABI: RAII ownership, exceptions carrying status + message, and
// thread safety of volumes and of the thread-local last error.
// usage: cpp_api_test IMAGE.nii MODEL.onnx WORK_DIR
#include <atomic>
#include <cmath>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "asfda.h"

namespace {

struct Error : std::runtime_error {
    AsfdaStatus status;
    Error(AsfdaStatus s, const std::string &msg) : std::runtime_error(msg), status(s) {}
};

void check(AsfdaStatus s) {
    if (s != ASFDA_STATUS_OK) throw Error(s, asfda_last_error_message());
}

struct VolumeDeleter {
    void operator()(AsfdaVolume *v) const noexcept { asfda_volume_free(v); }
};
using VolumePtr = std::unique_ptr<AsfdaVolume, VolumeDeleter>;

VolumePtr load(const std::string &path) {
    AsfdaVolume *v = nullptr;
    check(asfda_volume_load(path.c_str(), nullptr, &v));
    return VolumePtr(v);
}

std::vector<float> voxels(const AsfdaVolume *v) {
    const float *data = nullptr;
    size_t n = 0;
    check(asfda_volume_data(v, &data, &n));
    return std::vector<float>(data, data + n);
}

int failures = 0;
void expect(bool cond, const char *what) {
    if (!cond) {
        std::fprintf(stderr, "FAILED: %s\n", what);
        failures++;
    }
}

void test_exceptions(const std::string &work) {
    try {
        load(work + "/does-not-exist.nii.gz");
        expect(false, "missing file must throw");
    } catch (const Error &e) {
        expect(e.status == ASFDA_STATUS_IO, "missing file -> ASFDA_STATUS_IO");
        expect(std::string(e.what()).find("does-not-exist.nii.gz") != std::string::npos, "message names the file");
    }
}

void test_concurrent_reads(const std::string &image) {
    VolumePtr vol = load(image);
    const std::vector<float> reference = voxels(vol.get());
    std::atomic<int> mismatches{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 20; i++) {
                // Shared volume read from many threads, plus a fresh load and a failing call per thread:
                // each thread's last-error message must stay its own.
                if (voxels(vol.get()) != reference) mismatches++;
                if (voxels(load(image).get()) != reference) mismatches++;
                AsfdaVolume *out = nullptr;
                std::string bad = "/nonexistent/thread-" + std::to_string(t) + ".nii";
                if (asfda_volume_load(bad.c_str(), nullptr, &out) != ASFDA_STATUS_IO ||
                    std::string(asfda_last_error_message()).find(bad) == std::string::npos)
                    mismatches++;
            }
        });
    }
    for (auto &th : threads) th.join();
    expect(mismatches == 0, "concurrent reads and thread-local errors");
}

void test_model_raii(const std::string &image, const std::string &model_path) {
    AsfdaRuntimeOptions opts{};
    opts.device = "auto";
    AsfdaModel *raw = nullptr;
    check(asfda_model_load(model_path.c_str(), &opts, &raw));
    std::unique_ptr<AsfdaModel, void (*)(AsfdaModel *)> model(raw, asfda_model_free);
    VolumePtr vol = load(image);
    AsfdaVolume *out = nullptr;
    check(asfda_model_run_volume(model.get(), vol.get(), &out));
    VolumePtr probs(out);
    size_t dims[3], channels = 0;
    check(asfda_volume_dims(probs.get(), dims, &channels));
    expect(channels == 2 && dims[0] == 33 && dims[1] == 41 && dims[2] == 25, "model output grid");
    std::vector<float> p = voxels(probs.get());
    size_t n = p.size() / 2;
    bool softmax = true;
    for (size_t i = 0; i < n; i++) softmax = softmax && std::fabs(p[i] + p[i + n] - 1.0f) < 1e-5f;
    expect(softmax, "probabilities sum to one");
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s IMAGE.nii MODEL.onnx WORK_DIR\n", argv[0]);
        return 2;
    }
    try {
        expect(std::string(asfda_version()) == ASFDA_VERSION, "version macro matches the library");
        test_exceptions(argv[3]);
        test_concurrent_reads(argv[1]);
        test_model_raii(argv[1], argv[2]);
    } catch (const Error &e) {
        std::fprintf(stderr, "unexpected error %s: %s\n", asfda_status_name(static_cast<int>(e.status)), e.what());
        return 1;
    }
    if (failures) return 1;
    std::printf("cpp_api_test: all checks passed\n");
    return 0;
}
