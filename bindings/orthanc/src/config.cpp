#include "config.hpp"

#include <limits>
#include <set>
#include <stdexcept>

namespace asfda_orthanc {

namespace {

using Json = nlohmann::json;

[[noreturn]] void bad(const std::string &key, const std::string &what) {
    throw std::invalid_argument("configuration \"Asfda\": \"" + key + "\" " + what);
}

std::string get_string(const Json &section, const std::string &key, const std::string &fallback) {
    if (!section.contains(key)) return fallback;
    const Json &v = section.at(key);
    if (!v.is_string()) bad(key, "must be a string, not " + v.dump());
    return v.get<std::string>();
}

std::uint64_t get_unsigned(const Json &section, const std::string &key, std::uint64_t fallback, std::uint64_t max) {
    if (!section.contains(key)) return fallback;
    const Json &v = section.at(key);
    if (!v.is_number_integer() || (v.is_number_integer() && !v.is_number_unsigned() && v.get<std::int64_t>() < 0))
        bad(key, "must be an integer >= 0, not " + v.dump());
    const std::uint64_t value = v.get<std::uint64_t>();
    if (value > max) bad(key, "must be at most " + std::to_string(max) + ", not " + v.dump());
    return value;
}

}  // namespace

Config parse_config(const Json &orthanc_configuration) {
    if (!orthanc_configuration.is_object() || !orthanc_configuration.contains("Asfda"))
        throw std::invalid_argument(
            "the configuration has no \"Asfda\" section: add \"Asfda\": {\"Bundle\": \"<model bundle folder>\"} "
            "(see bindings/orthanc/README.md)");
    const Json &section = orthanc_configuration.at("Asfda");
    if (!section.is_object()) throw std::invalid_argument("configuration \"Asfda\" must be a JSON object");

    static const std::set<std::string> known = {"Bundle",         "Device",      "Threads",       "MemoryLimit",
                                                "OnnxRuntime",    "TileOverlap", "Mirror",        "ScoreMetadata",
                                                "TemporaryDirectory", "JobPriority", "MaxVoxels"};
    for (const auto &item : section.items()) {
        if (known.count(item.key()) == 0) {
            std::string list;
            for (const std::string &k : known) list += (list.empty() ? "" : ", ") + k;
            bad(item.key(), "is not a setting of the asfda plugin (known: " + list + ")");
        }
    }

    Config c;
    c.bundle = get_string(section, "Bundle", "");
    if (c.bundle.empty()) bad("Bundle", "is required: the folder of the model bundle (holds manifest.json)");
    c.device = get_string(section, "Device", c.device);
    if (c.device.empty()) bad("Device", "must be \"cpu\", \"auto\", \"cuda\" or \"cuda:N\", not \"\"");
    c.threads = static_cast<std::uint32_t>(get_unsigned(section, "Threads", 0, 1024));
    c.memory_limit_mb = get_unsigned(section, "MemoryLimit", 0, std::numeric_limits<std::uint64_t>::max() >> 20);
    c.onnxruntime = get_string(section, "OnnxRuntime", "");
    c.temporary_directory = get_string(section, "TemporaryDirectory", "");
    c.max_voxels = get_unsigned(section, "MaxVoxels", 0, std::numeric_limits<std::uint64_t>::max());
    c.job_priority = static_cast<int>(get_unsigned(section, "JobPriority", 0, 1000000));

    if (section.contains("TileOverlap")) {
        const Json &v = section.at("TileOverlap");
        if (!v.is_number() || v.get<double>() < 0 || v.get<double>() >= 1)
            bad("TileOverlap", "must be a number in [0, 1), not " + v.dump());
        c.tile_overlap = v.get<double>();
    }
    if (section.contains("Mirror")) {
        const Json &v = section.at("Mirror");
        if (!v.is_boolean()) bad("Mirror", "must be true or false, not " + v.dump());
        c.mirror = v.get<bool>();
    }
    if (section.contains("ScoreMetadata")) {
        const Json &v = section.at("ScoreMetadata");
        if (v.is_number_integer()) {
            const std::int64_t index = v.get<std::int64_t>();
            // Orthanc's user-defined metadata live in [1024, 65535].
            if (index < 1024 || index > 65535) bad("ScoreMetadata", "must be a metadata index in [1024, 65535], not " + v.dump());
            c.score_metadata = std::to_string(index);
        } else if (v.is_string() && !v.get<std::string>().empty() &&
                   v.get<std::string>().find_first_of("/?#% ") == std::string::npos) {
            c.score_metadata = v.get<std::string>();
            const Json *declared = orthanc_configuration.contains("UserMetadata")
                                       ? &orthanc_configuration.at("UserMetadata")
                                       : nullptr;
            if (declared == nullptr || !declared->is_object() || !declared->contains(c.score_metadata))
                bad("ScoreMetadata", "names metadata \"" + c.score_metadata +
                                         "\" that the configuration's \"UserMetadata\" does not declare (declare it "
                                         "there with an index in [1024, 65535], or give the index itself)");
        } else {
            bad("ScoreMetadata",
                "must be a metadata index in [1024, 65535] or a name declared in \"UserMetadata\", not " + v.dump());
        }
    }
    return c;
}

nlohmann::json config_to_json(const Config &c) {
    Json j = {{"Bundle", c.bundle},
              {"Device", c.device},
              {"Threads", c.threads},
              {"MemoryLimit", c.memory_limit_mb},
              {"OnnxRuntime", c.onnxruntime},
              {"Mirror", c.mirror},
              {"ScoreMetadata", c.score_metadata},
              {"TemporaryDirectory", c.temporary_directory},
              {"JobPriority", c.job_priority},
              {"MaxVoxels", c.max_voxels}};
    if (c.tile_overlap >= 0) j["TileOverlap"] = c.tile_overlap;
    return j;
}

}  // namespace asfda_orthanc
