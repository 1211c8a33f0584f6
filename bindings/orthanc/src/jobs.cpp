#include "jobs.hpp"

#include "series.hpp"

#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

namespace asfda_orthanc {

namespace {

// Shares of the progress bar: writing the instances out, reading them, the model, storing.
constexpr double kDownloaded = 0.10;
constexpr double kRead = 0.12;

/// The class names of the engine's model (index = label value).
std::vector<std::string> class_names(const asfda::Engine &engine) {
    std::vector<std::string> names;
    for (const asfda::ClassInfo &c : engine.classes()) names.push_back(c.name);
    return names;
}

std::string read_file(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// Reads the series' files and scores it: the shared beginning of the score and select jobs.
/// Progress goes from `from` to `to` of the job's bar.
struct SeriesScorer {
    const Runtime &runtime;
    const asfda::CancelToken &cancel;
    std::function<void(double)> progress;
    std::function<void()> check_cancelled;
    std::function<void(const std::string &)> phase;

    asfda::Score score(const SeriesInfo &series, double from, double to) const {
        const double span = to - from;
        require_image_modality(series);
        TempDir dir(runtime.config);
        phase("writing " + std::to_string(series.instances.size()) + " instances of series " + series.id);
        const std::vector<std::string> files = download_series(
            series, dir.path(), [&](double f) { progress(from + span * kDownloaded * f); }, check_cancelled);
        phase("reading series " + series.id);
        const asfda::Volume volume = read_series(runtime, series, files, dir.path());
        progress(from + span * kRead);
        check_cancelled();
        phase("scoring series " + series.id);
        return runtime.engine.score(series.id, volume, &cancel, [&](double f) {
            progress(from + span * (kRead + (0.98 - kRead) * f));
            return true;
        });
    }
};

}  // namespace

// ---- score ---------------------------------------------------------------------------------------

ScoreJob::ScoreJob(std::shared_ptr<const Runtime> runtime, std::string series)
    : Job("AsfdaScore", std::move(runtime)), series_(std::move(series)) {}

Json ScoreJob::describe() const { return Json{{"Series", series_}}; }

Json ScoreJob::run() {
    const SeriesInfo series = require_series(series_);
    SeriesScorer scorer{runtime(), cancel_token(), [this](double f) { set_progress(f); },
                        [this] { check_cancelled(); }, [this](const std::string &p) { set_phase(p); }};
    const asfda::Score score = scorer.score(series, 0.0, 0.98);
    set_phase("storing the score");
    const std::string stored = store_score(runtime(), series, score);
    return Json{{"Score", score_values(score)}, {"StoredIn", stored}};
}

// ---- segment -------------------------------------------------------------------------------------

SegmentJob::SegmentJob(std::shared_ptr<const Runtime> runtime, std::string series)
    : Job("AsfdaSegment", std::move(runtime)), series_(std::move(series)) {}

Json SegmentJob::describe() const { return Json{{"Series", series_}}; }

Json SegmentJob::run() {
    const SeriesInfo series = require_series(series_);
    require_image_modality(series);
    const Runtime &rt = runtime();
    TempDir dir(rt.config);

    set_phase("writing " + std::to_string(series.instances.size()) + " instances");
    const std::vector<std::string> files = download_series(
        series, dir.path(), [this](double f) { set_progress(kDownloaded * f); }, [this] { check_cancelled(); });
    set_phase("reading the series");
    const asfda::Volume volume = read_series(rt, series, files, dir.path());
    set_progress(kRead);
    check_cancelled();

    set_phase("segmenting");
    constexpr double kModelDone = 0.85;
    asfda::ScoredSegmentation result =
        rt.engine.score_and_segment(series.id, volume, asfda::SegmentOutputs{}, &cancel_token(), [this](double f) {
            set_progress(kRead + (kModelDone - kRead) * f);
            return true;
        });
    check_cancelled();

    // Voxels per class, for the job's content.
    const std::vector<std::string> names = class_names(rt.engine);
    std::vector<std::uint64_t> counts(names.size(), 0);
    const float *labels = result.segmentation.labels.data();
    const std::size_t n = result.segmentation.labels.size();
    for (std::size_t i = 0; i < n; i++) {
        const long label = static_cast<long>(labels[i]);
        if (label >= 0 && static_cast<std::size_t>(label) < counts.size()) counts[static_cast<std::size_t>(label)]++;
    }
    Json segments = Json::array();
    for (std::size_t c = 1; c < names.size(); c++)
        segments.push_back(Json{{"Label", c}, {"Name", names[c]}, {"Voxels", counts[c]}});

    set_phase("writing the DICOM SEG");
    const std::string seg_path = dir.path() + "/segmentation.dcm";
    try {
        rt.engine.write_dicom_seg(result.segmentation.labels, files, seg_path);
    } catch (const asfda::Error &e) {
        throw asfda::Error(e.status(), "writing the DICOM SEG of series " + series.id + ": " +
                                           replace_all(e.what(), dir.path() + "/", "instance "));
    }
    set_progress(0.92);
    check_cancelled();

    set_phase("storing the DICOM SEG in Orthanc");
    const Json stored = rest_post_json("/instances", read_file(seg_path));
    const std::string seg_study = stored.value("ParentStudy", "");
    if (seg_study != series.study)
        throw std::runtime_error("Orthanc filed the DICOM SEG (instance " + stored.value("ID", "?") + ") under study " +
                                 seg_study + ", not under the source's study " + series.study);
    set_phase("storing the score");
    const std::string score_uri = store_score(rt, series, result.score);

    return Json{{"Study", series.study},
                {"SegInstance", stored.value("ID", "")},
                {"SegSeries", stored.value("ParentSeries", "")},
                {"Segments", segments},
                {"Score", score_values(result.score)},
                {"StoredIn", score_uri}};
}

// ---- select --------------------------------------------------------------------------------------

SelectRequest parse_select_request(const std::string &body) {
    Json j;
    try {
        j = Json::parse(body);
    } catch (const Json::exception &e) {
        throw std::invalid_argument(std::string("the body is not JSON: ") + e.what());
    }
    if (!j.is_object())
        throw std::invalid_argument("the body must be a JSON object: {\"Series\": [...], \"Budget\": N, ...}");
    static const std::set<std::string> known = {"Series", "Budget", "Method", "Labeled", "Seed", "Gap", "ScoreMissing"};
    for (const auto &item : j.items())
        if (known.count(item.key()) == 0)
            throw std::invalid_argument("unknown field \"" + item.key() +
                                        "\" (fields: Series, Budget, Method, Labeled, Seed, Gap, ScoreMissing)");

    auto ids = [&](const char *key, bool required) {
        std::vector<std::string> out;
        if (!j.contains(key)) {
            if (required) throw std::invalid_argument(std::string("\"") + key + "\" is required: a list of series ids");
            return out;
        }
        if (!j[key].is_array()) throw std::invalid_argument(std::string("\"") + key + "\" must be a list of series ids");
        std::set<std::string> seen;
        for (const Json &v : j[key]) {
            if (!v.is_string()) throw std::invalid_argument(std::string("\"") + key + "\" holds " + v.dump() + ", not a series id");
            if (!seen.insert(v.get<std::string>()).second)
                throw std::invalid_argument(std::string("\"") + key + "\" names series " + v.get<std::string>() + " twice");
            out.push_back(v.get<std::string>());
        }
        return out;
    };

    SelectRequest r;
    r.series = ids("Series", true);
    if (r.series.empty()) throw std::invalid_argument("\"Series\" is empty: give the series to choose from");
    r.labeled = ids("Labeled", false);
    const std::set<std::string> pool(r.series.begin(), r.series.end());
    for (const std::string &id : r.labeled)
        if (pool.count(id) == 0)
            throw std::invalid_argument("\"Labeled\" names series " + id + ", which is not in \"Series\" (list the labeled series in both)");
    const std::size_t unlabeled = r.series.size() - r.labeled.size();

    if (!j.contains("Budget")) throw std::invalid_argument("\"Budget\" is required: how many series to pick");
    if (!j["Budget"].is_number_unsigned() || j["Budget"].get<std::uint64_t>() < 1 ||
        j["Budget"].get<std::uint64_t>() > unlabeled)
        throw std::invalid_argument("\"Budget\" must be an integer from 1 to " + std::to_string(unlabeled) +
                                    " (the unlabeled series), not " + j["Budget"].dump());
    r.budget = j["Budget"].get<std::size_t>();

    if (j.contains("Method")) {
        if (!j["Method"].is_string()) throw std::invalid_argument("\"Method\" must be a string, not " + j["Method"].dump());
        r.method = j["Method"].get<std::string>();
    }
    try {
        (void)asfda::select_method_from_name(r.method);
    } catch (const asfda::Error &e) {
        throw std::invalid_argument(std::string("\"Method\": ") + e.what());
    }
    if (j.contains("Gap")) {
        if (!j["Gap"].is_string()) throw std::invalid_argument("\"Gap\" must be \"kl\" or \"anchor\", not " + j["Gap"].dump());
        r.gap = j["Gap"].get<std::string>();
    }
    try {
        (void)asfda::gap_kind_from_name(r.gap);
    } catch (const asfda::Error &e) {
        throw std::invalid_argument(std::string("\"Gap\": ") + e.what());
    }
    if (j.contains("Seed")) {
        if (!j["Seed"].is_number_unsigned()) throw std::invalid_argument("\"Seed\" must be an integer >= 0, not " + j["Seed"].dump());
        r.seed = j["Seed"].get<std::uint64_t>();
    }
    if (j.contains("ScoreMissing")) {
        if (!j["ScoreMissing"].is_boolean())
            throw std::invalid_argument("\"ScoreMissing\" must be true or false, not " + j["ScoreMissing"].dump());
        r.score_missing = j["ScoreMissing"].get<bool>();
    }
    return r;
}

SelectJob::SelectJob(std::shared_ptr<const Runtime> runtime, SelectRequest request)
    : Job("AsfdaSelect", std::move(runtime)), request_(std::move(request)) {}

Json SelectJob::describe() const {
    return Json{{"Series", request_.series}, {"Labeled", request_.labeled}, {"Budget", request_.budget},
                {"Method", request_.method}};
}

Json SelectJob::run() {
    const Runtime &rt = runtime();
    // The stored scores first, so that the progress bar is shared among the series to score.
    set_phase("reading the stored scores");
    std::vector<SeriesInfo> infos;
    std::vector<std::optional<asfda::Score>> scores;
    std::vector<std::string> missing_reasons;
    for (const std::string &id : request_.series) {
        check_cancelled();
        infos.push_back(require_series(id));
        StoredScore stored = load_score(rt, infos.back());
        missing_reasons.push_back(stored.unusable);
        scores.push_back(std::move(stored.score));
    }
    std::vector<std::string> to_score;
    for (std::size_t i = 0; i < infos.size(); i++)
        if (!scores[i]) to_score.push_back(infos[i].id + " (" + missing_reasons[i] + ")");
    if (!to_score.empty() && !request_.score_missing) {
        std::string list;
        for (const std::string &s : to_score) list += (list.empty() ? "" : ", ") + s;
        throw std::runtime_error("no usable score for series " + list +
                                 ": score them first (POST /asfda/series/<id>/score) or leave \"ScoreMissing\" true");
    }

    SeriesScorer scorer{rt, cancel_token(), [this](double f) { set_progress(f); }, [this] { check_cancelled(); },
                        [this](const std::string &p) { set_phase(p); }};
    Json scored = Json::array();
    Json reused = Json::array();
    const double share = to_score.empty() ? 0.0 : 0.95 / static_cast<double>(to_score.size());
    std::size_t done = 0;
    for (std::size_t i = 0; i < infos.size(); i++) {
        if (scores[i]) {
            reused.push_back(infos[i].id);
            continue;
        }
        scores[i].emplace(scorer.score(infos[i], share * static_cast<double>(done), share * static_cast<double>(done + 1)));
        store_score(rt, infos[i], *scores[i]);
        scored.push_back(infos[i].id);
        done++;
    }

    set_phase("selecting");
    set_progress(0.97);
    asfda::SelectOptions options(request_.budget);
    options.method = asfda::select_method_from_name(request_.method);
    options.gap = asfda::gap_kind_from_name(request_.gap);
    options.seed = request_.seed;
    std::vector<const asfda::Score *> handles;
    for (const std::optional<asfda::Score> &s : scores) handles.push_back(&*s);
    const asfda::Selection selection = asfda::select(handles, request_.labeled, options);

    Json picks = Json::array();
    for (const asfda::Pick &p : selection.picks()) {
        const AsfdaPick &c = p.components;
        picks.push_back(Json{{"Series", p.id},
                             {"Order", c.order},
                             {"Gap", c.gap},
                             {"GapRank", c.gap_rank},
                             {"Diversity", c.diversity},
                             {"Dkd", c.dkd},
                             {"DkdRank", c.dkd_rank},
                             {"Asd", c.asd},
                             {"AsdRank", c.asd_rank},
                             {"Combined", c.combined}});
    }
    return Json{{"Picks", picks},
                {"Reliable", selection.reliable_ids()},
                {"Scored", scored},
                {"Reused", reused},
                {"Selection", Json::parse(selection.to_json())}};
}

}  // namespace asfda_orthanc
