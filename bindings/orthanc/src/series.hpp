// A series in Orthanc as asfda sees it: its instances written to a temporary folder and read
// with asfda_volume_read_dicom (so the geometry rules are asfda's), and the score kept in the
// series' metadata.
#pragma once

#include "job.hpp"

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace asfda_orthanc {

struct SeriesInfo {
    std::string id;     // Orthanc's series id
    std::string study;  // Orthanc's id of the parent study
    std::string modality;
    std::vector<std::string> instances;  // Orthanc's instance ids
};

/// `text` with every `from` replaced by `to` (temporary paths in asfda's messages).
std::string replace_all(std::string text, const std::string &from, const std::string &to);

/// GET /series/<id>; std::nullopt when Orthanc has no such series.
std::optional<SeriesInfo> find_series(const std::string &id);
/// find_series, or std::invalid_argument "no series <id> in Orthanc".
SeriesInfo require_series(const std::string &id);

/// A fresh folder under the configured temporary directory, removed with everything in it when
/// this object goes.
class TempDir {
public:
    explicit TempDir(const Config &config);
    ~TempDir();
    TempDir(const TempDir &) = delete;
    TempDir &operator=(const TempDir &) = delete;
    const std::string &path() const { return path_; }

private:
    std::string path_;
};

/// Writes every instance's DICOM file into `dir` (named by instance id) and returns the paths.
/// `progress` gets the fraction written; `check_cancelled` runs before each instance.
std::vector<std::string> download_series(const SeriesInfo &series, const std::string &dir,
                                         const std::function<void(double)> &progress,
                                         const std::function<void()> &check_cancelled);

/// Throws std::runtime_error "series <id> (<modality>) is not an image" for the modalities of
/// non-image objects (SEG, SR, RTSTRUCT, PR, KO...).
void require_image_modality(const SeriesInfo &series);

/// Reads the downloaded series into a volume. asfda's errors (not an image, mixed orientations,
/// uneven slices beyond tolerance, unsupported transfer syntax...) are rethrown as
/// std::runtime_error "series <id>: <asfda's message>" with the temporary paths replaced by
/// "instance <id>".
asfda::Volume read_series(const Runtime &runtime, const SeriesInfo &series, const std::vector<std::string> &files,
                          const std::string &dir);

/// The scalar scores as JSON (GapKl, GapAnchor, Asd, AsdThreshold, Confidence, ForegroundFraction).
Json score_values(const asfda::Score &score);

/// Stores the score in the series' metadata (Config::score_metadata), with the bundle and the
/// series' instances it was computed from; returns the REST path of the metadata.
std::string store_score(const Runtime &runtime, const SeriesInfo &series, const asfda::Score &score);

/// A score read back from the series' metadata.
struct StoredScore {
    Json record;                       // the stored JSON (null when there is none)
    std::optional<asfda::Score> score;  // set when the record is usable for this bundle and series
    std::string unusable;              // why not, when score is empty
};
StoredScore load_score(const Runtime &runtime, const SeriesInfo &series);

}  // namespace asfda_orthanc
