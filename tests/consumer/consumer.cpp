// The C++ side of the installed-tree consumer: asfda.hpp from the install, a real engine call.
// usage: consumer_cpp PREFIX BUNDLE_DIR IMAGE.nii
#include <cstdio>
#include <string>

#include "asfda.hpp"

int main(int argc, char **argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s PREFIX BUNDLE_DIR IMAGE.nii\n", argv[0]);
        return 2;
    }
    try {
        const std::string info = asfda::runtime_info_json();
        if (info.find("\"library_source\":\"beside_library\"") == std::string::npos) {
            std::fprintf(stderr, "ONNX Runtime not found beside the installed library: %s\n", info.c_str());
            return 1;
        }
        asfda::Engine engine{asfda::EngineOptions(argv[2])};
        const asfda::Volume image = asfda::Volume::load(argv[3]);
        const asfda::Volume labels = engine.segment(image);
        image.check_same_grid(labels);
        std::printf("consumer_cpp: asfda %s segmented %s on %s\n", asfda::version().c_str(), argv[3],
                    engine.device().c_str());
    } catch (const asfda::Error &e) {
        std::fprintf(stderr, "%s: %s\n", e.status_name(), e.what());
        return 1;
    }
    return 0;
}
