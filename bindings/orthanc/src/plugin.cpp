// asfda's Orthanc plugin: REST routes that score and segment series stored in Orthanc and select
// which to annotate, each long operation an Orthanc job (see README.md next to this folder).
//
//   GET  /asfda/info                      version, device, classes, settings
//   POST /asfda/series/{id}/score         job: score the series, keep the score in its metadata
//   GET  /asfda/series/{id}/score         the stored score
//   POST /asfda/series/{id}/segment       job: DICOM SEG of the series, stored in its study
//   POST /asfda/select                    job: pick series to annotate ({"Series", "Budget", ...})

#include "config.hpp"
#include "jobs.hpp"
#include "orthanc.hpp"
#include "series.hpp"

#include "asfda.hpp"

#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>

using namespace asfda_orthanc;

namespace {

std::mutex g_runtime_mutex;
std::shared_ptr<const Runtime> g_runtime;  // set by OrthancPluginInitialize, cleared by Finalize

std::shared_ptr<const Runtime> runtime() {
    std::lock_guard<std::mutex> lock(g_runtime_mutex);
    return g_runtime;
}

/// Runs a REST handler body; no exception reaches Orthanc: bad requests become 400 with the
/// message, anything else 500.
OrthancPluginErrorCode guarded(OrthancPluginRestOutput *output, const std::function<void()> &body) {
    try {
        try {
            body();
        } catch (const std::invalid_argument &e) {
            answer_error(output, 400, e.what());
        } catch (const std::exception &e) {
            log_error(std::string("request failed: ") + e.what());
            answer_error(output, 500, e.what());
        } catch (...) {
            log_error("request failed with an unknown exception");
            answer_error(output, 500, "unknown error");
        }
    } catch (...) {
        return OrthancPluginErrorCode_InternalError;  // even the error answer failed (out of memory)
    }
    return OrthancPluginErrorCode_Success;
}

std::string request_body(const OrthancPluginHttpRequest *request) {
    return request->bodySize == 0 ? std::string()
                                  : std::string(static_cast<const char *>(request->body), request->bodySize);
}

/// Score and segment take no options: the body must be empty or {}.
void require_empty_options(const OrthancPluginHttpRequest *request) {
    const std::string body = request_body(request);
    if (body.find_first_not_of(" \t\r\n") == std::string::npos) return;
    Json j;
    try {
        j = Json::parse(body);
    } catch (const Json::exception &e) {
        throw std::invalid_argument(std::string("the body is not JSON: ") + e.what());
    }
    if (!j.is_object() || !j.empty())
        throw std::invalid_argument("this route takes no options: send no body or {} (settings are in the \"Asfda\" configuration)");
}

Json job_answer(const std::string &id) { return Json{{"ID", id}, {"Path", "/jobs/" + id}}; }

std::shared_ptr<const Runtime> require_runtime() {
    std::shared_ptr<const Runtime> rt = runtime();
    if (!rt) throw std::runtime_error("the asfda plugin is not initialised");
    return rt;
}

OrthancPluginErrorCode info_route(OrthancPluginRestOutput *output, const char *, const OrthancPluginHttpRequest *request) {
    if (request->method != OrthancPluginHttpMethod_Get) {
        OrthancPluginSendMethodNotAllowed(context(), output, "GET");
        return OrthancPluginErrorCode_Success;
    }
    return guarded(output, [&] {
        std::shared_ptr<const Runtime> rt = require_runtime();
        Json classes = Json::array();
        std::size_t label = 0;
        for (const asfda::ClassInfo &c : rt->engine.classes()) {
            Json k = {{"Label", label++}, {"Name", c.name}};
            if (c.color) k["Color"] = {(*c.color)[0], (*c.color)[1], (*c.color)[2]};
            if (c.code)
                k["Code"] = {{"Category", {c.code->category.scheme, c.code->category.value, c.code->category.meaning}},
                             {"Type", {c.code->kind.scheme, c.code->kind.value, c.code->kind.meaning}}};
            classes.push_back(k);
        }
        answer_json(output, Json{{"Version", asfda::version()},
                                 {"Device", rt->engine.device()},
                                 {"Bundle", rt->bundle},
                                 {"Classes", classes},
                                 {"Configuration", config_to_json(rt->config)}});
    });
}

// The series routes' shared prologue: the method check, the runtime, and the series named by the
// URL (404 when Orthanc has none); `handle` answers for the series found.
template <typename Handle>
OrthancPluginErrorCode series_route(OrthancPluginRestOutput *output, const OrthancPluginHttpRequest *request,
                                    bool allow_get, Handle handle) {
    const bool allowed = request->method == OrthancPluginHttpMethod_Post ||
                         (allow_get && request->method == OrthancPluginHttpMethod_Get);
    if (!allowed) {
        OrthancPluginSendMethodNotAllowed(context(), output, allow_get ? "GET,POST" : "POST");
        return OrthancPluginErrorCode_Success;
    }
    return guarded(output, [&] {
        std::shared_ptr<const Runtime> rt = require_runtime();
        const std::string id = request->groupsCount > 0 ? request->groups[0] : "";
        std::optional<SeriesInfo> series = find_series(id);
        if (!series) {
            answer_error(output, 404, "no series \"" + id + "\" in Orthanc (give Orthanc's series id, as in GET /series)");
            return;
        }
        handle(rt, id, *series);
    });
}

OrthancPluginErrorCode score_route(OrthancPluginRestOutput *output, const char *, const OrthancPluginHttpRequest *request) {
    return series_route(output, request, true, [&](const std::shared_ptr<const Runtime> &rt, const std::string &id,
                                                   const SeriesInfo &series) {
        if (request->method == OrthancPluginHttpMethod_Get) {
            StoredScore stored = load_score(*rt, series);
            if (!stored.score) {
                answer_error(output, 404, "series " + id + ": " + stored.unusable + " (POST /asfda/series/" + id + "/score)");
                return;
            }
            answer_json(output, stored.record);
            return;
        }
        require_empty_options(request);
        if (series.instances.empty()) throw std::invalid_argument("series " + id + " has no instances");
        answer_json(output, job_answer(Job::submit(std::make_unique<ScoreJob>(rt, id), rt->config.job_priority)));
    });
}

OrthancPluginErrorCode segment_route(OrthancPluginRestOutput *output, const char *, const OrthancPluginHttpRequest *request) {
    return series_route(output, request, false, [&](const std::shared_ptr<const Runtime> &rt, const std::string &id,
                                                    const SeriesInfo &series) {
        require_empty_options(request);
        if (series.instances.empty()) throw std::invalid_argument("series " + id + " has no instances");
        answer_json(output, job_answer(Job::submit(std::make_unique<SegmentJob>(rt, id), rt->config.job_priority)));
    });
}

OrthancPluginErrorCode select_route(OrthancPluginRestOutput *output, const char *, const OrthancPluginHttpRequest *request) {
    if (request->method != OrthancPluginHttpMethod_Post) {
        OrthancPluginSendMethodNotAllowed(context(), output, "POST");
        return OrthancPluginErrorCode_Success;
    }
    return guarded(output, [&] {
        std::shared_ptr<const Runtime> rt = require_runtime();
        SelectRequest req = parse_select_request(request_body(request));
        for (const std::string &id : req.series)
            if (!find_series(id)) throw std::invalid_argument("\"Series\" names \"" + id + "\", which is not a series in Orthanc");
        answer_json(output, job_answer(Job::submit(std::make_unique<SelectJob>(rt, std::move(req)), rt->config.job_priority)));
    });
}

/// asfda's own log messages (device fallback, resampling, ...) into Orthanc's log.
void forward_asfda_log(asfda::LogLevel level, const std::string &message) {
    switch (level) {
        case asfda::LogLevel::Error: log_error(message); break;
        case asfda::LogLevel::Warn: log_warning(message); break;
        default: log_info(message); break;
    }
}

std::shared_ptr<const Runtime> make_runtime(const Config &config) {
    std::error_code ec;
    const std::filesystem::path bundle = std::filesystem::canonical(config.bundle, ec);
    if (ec)
        throw std::invalid_argument("configuration \"Asfda\": \"Bundle\": cannot open " + config.bundle + ": " +
                                    ec.message());
    asfda::EngineOptions options(bundle.string());
    options.runtime.device = config.device;
    options.runtime.threads = config.threads;
    options.runtime.library_path = config.onnxruntime;
    options.mirror = config.mirror;
    if (config.tile_overlap >= 0) options.tile_overlap = config.tile_overlap;
    options.memory_limit_bytes = config.memory_limit_mb << 20;
    return std::shared_ptr<const Runtime>(new Runtime{config, bundle.string(), asfda::Engine(options)});
}

}  // namespace

extern "C" {

ORTHANC_PLUGINS_API int32_t OrthancPluginInitialize(OrthancPluginContext *c) {
    set_context(c);
    try {
        if (!OrthancPluginCheckVersion(c)) {
            log_error("this Orthanc (" + std::string(c->orthancVersion) + ") is older than the SDK the plugin was built with (" +
                      std::to_string(ORTHANC_PLUGINS_MINIMAL_MAJOR_NUMBER) + "." +
                      std::to_string(ORTHANC_PLUGINS_MINIMAL_MINOR_NUMBER) + "." +
                      std::to_string(ORTHANC_PLUGINS_MINIMAL_REVISION_NUMBER) + ")");
            return -1;
        }
        OrthancPluginSetDescription(c, "asfda: score, segment (DICOM SEG) and select series to annotate");

        char *text = OrthancPluginGetConfiguration(c);
        if (text == nullptr) {
            log_error("cannot read Orthanc's configuration");
            return -1;
        }
        Json configuration;
        try {
            configuration = Json::parse(text);
        } catch (...) {
            OrthancPluginFreeString(c, text);
            throw;
        }
        OrthancPluginFreeString(c, text);

        const Config config = parse_config(configuration);
        asfda::set_log_callback(&forward_asfda_log, asfda::LogLevel::Info);
        std::shared_ptr<const Runtime> rt = make_runtime(config);
        {
            std::lock_guard<std::mutex> lock(g_runtime_mutex);
            g_runtime = rt;
        }
        log_warning("asfda " + asfda::version() + " ready: bundle " + rt->bundle + " on " + rt->engine.device() +
                    ", scores in metadata " + config.score_metadata);

        OrthancPluginRegisterRestCallbackNoLock(c, "/asfda/info", info_route);
        OrthancPluginRegisterRestCallbackNoLock(c, "/asfda/series/([^/]+)/score", score_route);
        OrthancPluginRegisterRestCallbackNoLock(c, "/asfda/series/([^/]+)/segment", segment_route);
        OrthancPluginRegisterRestCallbackNoLock(c, "/asfda/select", select_route);
        return 0;
    } catch (const asfda::Error &e) {
        log_error(std::string("cannot start: ") + e.what() + " [" + e.status_name() + "]");
    } catch (const std::exception &e) {
        log_error(std::string("cannot start: ") + e.what());
    } catch (...) {
        log_error("cannot start: unknown error");
    }
    return -1;
}

ORTHANC_PLUGINS_API void OrthancPluginFinalize() {
    try {
        Job::cancel_all();
        {
            std::lock_guard<std::mutex> lock(g_runtime_mutex);
            g_runtime.reset();  // the engine goes with the last job holding it
        }
        asfda::set_log_callback(nullptr);
    } catch (...) {
    }
    set_context(nullptr);
}

ORTHANC_PLUGINS_API const char *OrthancPluginGetName() { return "asfda"; }

ORTHANC_PLUGINS_API const char *OrthancPluginGetVersion() { return ASFDA_VERSION; }

}  // extern "C"
