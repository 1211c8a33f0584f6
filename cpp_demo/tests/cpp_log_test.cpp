// asfda::set_log_callback: a std::function receives the decisions asfda makes on its own (here:
// device "auto" falling back to the CPU on the CPU ONNX Runtime of the test install), an
// exception it throws stays on this side, and an empty callback turns logging off.
// Reads ASFDA_TEST_ROOT (set by ctest).
#include <asfda.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

int main() try {
    const char *root = std::getenv("ASFDA_TEST_ROOT");
    if (root == nullptr) return std::fprintf(stderr, "ASFDA_TEST_ROOT is not set (ctest sets it)\n"), 2;
    const std::string model = std::string(root) + "/models/tiny_conv3d/tiny_conv3d.onnx";
    asfda::RuntimeOptions options;
    options.device = "auto";
    options.threads = 1;
    int failures = 0;
    auto check = [&](bool ok, const char *what) {
        if (!ok) std::fprintf(stderr, "CHECK failed: %s\n", what), failures++;
    };

    std::mutex mutex;
    std::vector<std::pair<asfda::LogLevel, std::string>> seen;
    asfda::set_log_callback([&](asfda::LogLevel level, const std::string &message) {
        std::lock_guard<std::mutex> lock(mutex);
        seen.emplace_back(level, message);
    });
    check(asfda::Model::load(model, options).device() == "cpu", "auto runs on the CPU");
    bool fallback = false;
    for (const auto &[level, message] : seen) {
        if (message.find("device 'auto' falls back to the CPU") != std::string::npos) {
            fallback = level == asfda::LogLevel::Info;
            std::printf("logged: %s\n", message.c_str());
        }
    }
    check(fallback, "the fallback is logged at Info");

    // A throwing callback neither crosses the C boundary nor fails the call.
    std::atomic<int> thrown{0};
    asfda::set_log_callback([&](asfda::LogLevel, const std::string &) {
        thrown++;
        throw std::runtime_error("from the callback");
    }, asfda::LogLevel::Info);
    asfda::Model::load(model, options);
    check(thrown > 0, "the throwing callback was called");

    // Off: nothing more arrives.
    asfda::set_log_callback(nullptr);
    const int before = thrown;
    asfda::Model::load(model, options);
    check(thrown == before, "no call after removal");

    if (failures) return std::fprintf(stderr, "%d check(s) failed\n", failures), 1;
    std::printf("cpp_log_test: all checks passed\n");
    return 0;
} catch (const std::exception &e) {
    std::fprintf(stderr, "cpp_log_test: %s\n", e.what());
    return 1;
}
