// Small C++ helpers over Orthanc's plugin SDK (OrthancCPlugin.h): the plugin context, logging,
// calls into Orthanc's own REST API, HTTP answers. Every function here may be called from any
// thread (REST handler threads, job threads).
#pragma once

#include <orthanc/OrthancCPlugin.h>

#include <nlohmann/json.hpp>

#include <optional>
#include <stdexcept>
#include <string>

namespace asfda_orthanc {

using Json = nlohmann::json;

/// The context Orthanc gave OrthancPluginInitialize (set once, before any route is registered).
OrthancPluginContext *context();
void set_context(OrthancPluginContext *context);

void log_info(const std::string &message);
void log_warning(const std::string &message);
void log_error(const std::string &message);

/// A failed call into Orthanc: the SDK's error code and what was being done.
class OrthancError : public std::runtime_error {
public:
    OrthancError(OrthancPluginErrorCode code, const std::string &what);
    OrthancPluginErrorCode code() const noexcept { return code_; }

private:
    OrthancPluginErrorCode code_;
};

/// GET on Orthanc's REST API (e.g. "/series/<id>"); std::nullopt when the resource does not
/// exist; throws OrthancError on other failures.
std::optional<std::string> rest_get(const std::string &uri);
/// rest_get, parsed as JSON (throws std::runtime_error for a body that is not JSON).
std::optional<Json> rest_get_json(const std::string &uri);
/// POST `body` to Orthanc's REST API and parse the JSON answer.
Json rest_post_json(const std::string &uri, const std::string &body);
/// PUT `body` (e.g. a metadata value).
void rest_put(const std::string &uri, const std::string &body);

/// The DICOM file of instance `id` as Orthanc stores it.
std::string instance_dicom(const std::string &instance_id);

/// Answers `json` with status 200.
void answer_json(OrthancPluginRestOutput *output, const Json &json);
/// Answers {"Error": message, "HttpStatus": status} with `status` (4xx/5xx).
void answer_error(OrthancPluginRestOutput *output, uint16_t status, const std::string &message);

}  // namespace asfda_orthanc
