#include "series.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>

namespace asfda_orthanc {

namespace fs = std::filesystem;

namespace {

constexpr const char *kScoreFormat = "asfda-orthanc-score/1";

/// FNV-1a over the sorted instance ids: identifies the set of instances a score was computed on.
std::string fingerprint(const SeriesInfo &series) {
    std::vector<std::string> ids = series.instances;
    std::sort(ids.begin(), ids.end());
    std::uint64_t h = 1469598103934665603ull;
    for (const std::string &id : ids) {
        for (unsigned char c : id) {
            h ^= c;
            h *= 1099511628211ull;
        }
        h ^= 0xff;  // separator
        h *= 1099511628211ull;
    }
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
}


std::string metadata_uri(const Runtime &runtime, const std::string &series_id) {
    return "/series/" + series_id + "/metadata/" + runtime.config.score_metadata;
}

}  // namespace

std::string replace_all(std::string text, const std::string &from, const std::string &to) {
    if (from.empty()) return text;
    for (std::size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
        text.replace(at, from.size(), to);
    return text;
}

std::optional<SeriesInfo> find_series(const std::string &id) {
    // Orthanc ids are hex groups and dashes; anything else cannot name a series (and must not
    // reach a REST path).
    if (id.empty() || id.find_first_not_of("0123456789abcdef-") != std::string::npos) return std::nullopt;
    std::optional<Json> json = rest_get_json("/series/" + id);
    if (!json) return std::nullopt;
    SeriesInfo info;
    info.id = id;
    info.study = json->value("ParentStudy", "");
    if (json->contains("MainDicomTags") && (*json)["MainDicomTags"].is_object())
        info.modality = (*json)["MainDicomTags"].value("Modality", "");
    if (json->contains("Instances") && (*json)["Instances"].is_array())
        for (const Json &i : (*json)["Instances"])
            if (i.is_string()) info.instances.push_back(i.get<std::string>());
    return info;
}

SeriesInfo require_series(const std::string &id) {
    std::optional<SeriesInfo> info = find_series(id);
    if (!info) throw std::invalid_argument("no series \"" + id + "\" in Orthanc (give Orthanc's series id, as in GET /series)");
    if (info->instances.empty()) throw std::invalid_argument("series " + id + " has no instances");
    return *info;
}

TempDir::TempDir(const Config &config) {
    fs::path base = config.temporary_directory.empty() ? fs::temp_directory_path() : fs::path(config.temporary_directory);
    fs::create_directories(base);
    std::string pattern = (base / "asfda-orthanc-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr)
        throw std::runtime_error("cannot create a temporary folder in " + base.string() +
                                 " (set \"Asfda\": {\"TemporaryDirectory\"} to a writable folder)");
    path_ = pattern;
}

TempDir::~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
}

std::vector<std::string> download_series(const SeriesInfo &series, const std::string &dir,
                                         const std::function<void(double)> &progress,
                                         const std::function<void()> &check_cancelled) {
    std::vector<std::string> files;
    files.reserve(series.instances.size());
    for (std::size_t i = 0; i < series.instances.size(); i++) {
        check_cancelled();
        const std::string &id = series.instances[i];
        const std::string dicom = instance_dicom(id);
        const std::string path = dir + "/" + id;
        std::ofstream out(path, std::ios::binary);
        out.write(dicom.data(), static_cast<std::streamsize>(dicom.size()));
        out.close();
        if (!out) throw std::runtime_error("cannot write instance " + id + " to " + path + " (disk full?)");
        files.push_back(path);
        progress(static_cast<double>(i + 1) / static_cast<double>(series.instances.size()));
    }
    return files;
}

void require_image_modality(const SeriesInfo &series) {
    // Objects that carry no image of their own; a SEG or an RT dose has pixels, but segmenting
    // them is never what was meant.
    static const std::set<std::string> not_images = {"SEG", "SR",  "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE",
                                                     "PR",  "KO",  "DOC",      "REG",    "FID",      "AU",
                                                     "ECG", "HD",  "PLAN",     "RWV",    "RESP"};
    if (not_images.count(series.modality) != 0)
        throw std::runtime_error("series " + series.id + " (" + series.modality + ") is not an image: Modality " +
                                 series.modality + " holds no image to score or segment");
}

asfda::Volume read_series(const Runtime &runtime, const SeriesInfo &series, const std::vector<std::string> &files,
                          const std::string &dir) {
    asfda::ReadOptions options;
    if (runtime.config.max_voxels > 0) options.max_voxels = runtime.config.max_voxels;
    try {
        return asfda::Volume::load_dicom(files, std::string(), options);
    } catch (const asfda::Error &e) {
        std::string message = replace_all(e.what(), dir + "/", "instance ");
        throw std::runtime_error("series " + series.id + (series.modality.empty() ? "" : " (" + series.modality + ")") +
                                 " cannot be read as one 3D image: " + message + " [" + e.status_name() + "]");
    }
}

Json score_values(const asfda::Score &score) {
    const AsfdaScoreValues v = score.values();
    return Json{{"GapKl", v.gap_kl},
                {"GapAnchor", v.gap_anchor},
                {"Asd", v.asd},
                {"AsdThreshold", v.asd_threshold},
                {"Confidence", v.confidence},
                {"ForegroundFraction", v.foreground_fraction}};
}

std::string store_score(const Runtime &runtime, const SeriesInfo &series, const asfda::Score &score) {
    const Json record = {{"Format", kScoreFormat},
                         {"Bundle", runtime.bundle},
                         {"Instances", fingerprint(series)},
                         {"InstanceCount", series.instances.size()},
                         {"Values", score_values(score)},
                         {"Score", Json::parse(score.to_json())}};
    const std::string uri = metadata_uri(runtime, series.id);
    rest_put(uri, record.dump(-1, ' ', false, Json::error_handler_t::replace));
    return uri;
}

StoredScore load_score(const Runtime &runtime, const SeriesInfo &series) {
    StoredScore out;
    std::optional<std::string> text = rest_get(metadata_uri(runtime, series.id));
    if (!text) {
        out.unusable = "no score stored";
        return out;
    }
    try {
        out.record = Json::parse(*text);
    } catch (const Json::exception &) {
        out.unusable = "metadata " + runtime.config.score_metadata + " does not hold JSON (is the index used by another plugin?)";
        return out;
    }
    try {
    if (!out.record.is_object() || out.record.value("Format", "") != kScoreFormat || !out.record.contains("Score")) {
        out.unusable = "metadata " + runtime.config.score_metadata + " does not hold an asfda score";
    } else if (out.record.value("Bundle", "") != runtime.bundle) {
        out.unusable = "the stored score was computed with another bundle (" + out.record.value("Bundle", "") + ")";
    } else if (out.record.value("Instances", "") != fingerprint(series)) {
        out.unusable = "the series' instances changed since it was scored";
    } else if (!out.record["Score"].is_object() || out.record["Score"].value("id", "") != series.id) {
        out.unusable = "the stored score names another volume than series " + series.id;
    } else {
        try {
            out.score.emplace(asfda::Score::from_json(out.record["Score"].dump()));
        } catch (const asfda::Error &e) {
            out.score.reset();
            out.unusable = std::string("the stored score does not read back: ") + e.what();
        }
    }
    } catch (const Json::exception &e) {
        out.score.reset();
        out.unusable = std::string("the stored score record is malformed: ") + e.what();
    }
    return out;
}

}  // namespace asfda_orthanc
