// The plugin's settings: the "Asfda" section of Orthanc's configuration file.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace asfda_orthanc {

struct Config {
    std::string bundle;           // "Bundle": model bundle folder (required)
    std::string device = "cpu";   // "Device": "cpu", "auto", "cuda", "cuda:N"
    std::uint32_t threads = 0;    // "Threads": ONNX Runtime intra-op threads, 0 = ONNX Runtime chooses
    std::uint64_t memory_limit_mb = 0;  // "MemoryLimit": MB of asfda working memory per call, 0 = none
    std::string onnxruntime;      // "OnnxRuntime": libonnxruntime.so path, "" = asfda's resolution order
    double tile_overlap = -1;     // "TileOverlap": < 0 = asfda's default
    bool mirror = false;          // "Mirror": average 8 mirrored passes
    std::string score_metadata = "4870";  // "ScoreMetadata": Orthanc metadata (index or declared name)
    std::string temporary_directory;      // "TemporaryDirectory": "" = the system's
    int job_priority = 0;         // "JobPriority": priority of the submitted jobs
    std::uint64_t max_voxels = 0;  // "MaxVoxels": refuse larger series before reading, 0 = asfda's default
};

/// Reads the "Asfda" section of Orthanc's whole configuration (as OrthancPluginGetConfiguration
/// returns it). Throws std::invalid_argument naming the key for a missing bundle, a value of the
/// wrong type or range, or an unknown key (a typo would otherwise be ignored silently).
Config parse_config(const nlohmann::json &orthanc_configuration);

/// The settings as JSON (for GET /asfda/info and the log).
nlohmann::json config_to_json(const Config &config);

}  // namespace asfda_orthanc
