// The plugin's three jobs: score a series, segment a series (DICOM SEG stored back into its
// study), select series to annotate.
#pragma once

#include "job.hpp"

#include <string>
#include <vector>

namespace asfda_orthanc {

/// Scores one series and stores the score in its metadata.
class ScoreJob : public Job {
public:
    ScoreJob(std::shared_ptr<const Runtime> runtime, std::string series);

protected:
    Json run() override;
    Json describe() const override;

private:
    const std::string series_;
};

/// Segments one series (and scores it, from the same inference), writes the labels as a DICOM
/// Segmentation of the series, stores it in Orthanc (same study) and the score in the metadata.
class SegmentJob : public Job {
public:
    SegmentJob(std::shared_ptr<const Runtime> runtime, std::string series);

protected:
    Json run() override;
    Json describe() const override;

private:
    const std::string series_;
};

/// What POST /asfda/select asks for (validated before the job is submitted).
struct SelectRequest {
    std::vector<std::string> series;
    std::vector<std::string> labeled;
    std::size_t budget = 0;
    std::string method = "asfda";
    std::string gap = "kl";
    std::uint64_t seed = 0;
    bool score_missing = true;  // score series without a usable stored score (else fail)
};

/// Parses and checks the request body; throws std::invalid_argument naming the problem.
SelectRequest parse_select_request(const std::string &body);

/// Picks `budget` series to annotate among `series` (minus `labeled`), from the stored scores;
/// scores the series that have none first (unless ScoreMissing is false).
class SelectJob : public Job {
public:
    SelectJob(std::shared_ptr<const Runtime> runtime, SelectRequest request);

protected:
    Json run() override;
    Json describe() const override;

private:
    const SelectRequest request_;
};

}  // namespace asfda_orthanc
