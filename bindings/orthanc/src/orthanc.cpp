#include "orthanc.hpp"

#include <atomic>

namespace asfda_orthanc {

namespace {

std::atomic<OrthancPluginContext *> g_context{nullptr};

/// Owns an OrthancPluginMemoryBuffer the SDK filled.
class Buffer {
public:
    Buffer() { buffer_.data = nullptr, buffer_.size = 0; }
    ~Buffer() {
        if (buffer_.data != nullptr) OrthancPluginFreeMemoryBuffer(context(), &buffer_);
    }
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;
    OrthancPluginMemoryBuffer *get() { return &buffer_; }
    std::string str() const {
        return buffer_.data == nullptr ? std::string()
                                       : std::string(static_cast<const char *>(buffer_.data), buffer_.size);
    }

private:
    OrthancPluginMemoryBuffer buffer_;
};

std::string describe(OrthancPluginErrorCode code) {
    const char *text = OrthancPluginGetErrorDescription(context(), code);
    return std::string(text != nullptr ? text : "unknown error") + " (Orthanc error " +
           std::to_string(static_cast<int>(code)) + ")";
}

}  // namespace

OrthancPluginContext *context() { return g_context.load(); }
void set_context(OrthancPluginContext *c) { g_context.store(c); }

void log_info(const std::string &message) {
    if (context() != nullptr) OrthancPluginLogInfo(context(), ("asfda: " + message).c_str());
}
void log_warning(const std::string &message) {
    if (context() != nullptr) OrthancPluginLogWarning(context(), ("asfda: " + message).c_str());
}
void log_error(const std::string &message) {
    if (context() != nullptr) OrthancPluginLogError(context(), ("asfda: " + message).c_str());
}

OrthancError::OrthancError(OrthancPluginErrorCode code, const std::string &what)
    : std::runtime_error(what + ": " + describe(code)), code_(code) {}

std::optional<std::string> rest_get(const std::string &uri) {
    Buffer answer;
    const OrthancPluginErrorCode code = OrthancPluginRestApiGet(context(), answer.get(), uri.c_str());
    if (code == OrthancPluginErrorCode_UnknownResource || code == OrthancPluginErrorCode_InexistentItem)
        return std::nullopt;
    if (code != OrthancPluginErrorCode_Success) throw OrthancError(code, "GET " + uri);
    return answer.str();
}

std::optional<Json> rest_get_json(const std::string &uri) {
    std::optional<std::string> body = rest_get(uri);
    if (!body) return std::nullopt;
    try {
        return Json::parse(*body);
    } catch (const Json::exception &e) {
        throw std::runtime_error("GET " + uri + " did not answer JSON: " + e.what());
    }
}

Json rest_post_json(const std::string &uri, const std::string &body) {
    Buffer answer;
    const OrthancPluginErrorCode code =
        OrthancPluginRestApiPost(context(), answer.get(), uri.c_str(), body.data(), static_cast<uint32_t>(body.size()));
    if (code != OrthancPluginErrorCode_Success) throw OrthancError(code, "POST " + uri);
    try {
        return Json::parse(answer.str());
    } catch (const Json::exception &e) {
        throw std::runtime_error("POST " + uri + " did not answer JSON: " + e.what());
    }
}

void rest_put(const std::string &uri, const std::string &body) {
    Buffer answer;
    const OrthancPluginErrorCode code =
        OrthancPluginRestApiPut(context(), answer.get(), uri.c_str(), body.data(), static_cast<uint32_t>(body.size()));
    if (code != OrthancPluginErrorCode_Success) throw OrthancError(code, "PUT " + uri);
}

std::string instance_dicom(const std::string &instance_id) {
    Buffer answer;
    const OrthancPluginErrorCode code = OrthancPluginGetDicomForInstance(context(), answer.get(), instance_id.c_str());
    if (code != OrthancPluginErrorCode_Success) throw OrthancError(code, "reading instance " + instance_id);
    return answer.str();
}

void answer_json(OrthancPluginRestOutput *output, const Json &json) {
    const std::string body = json.dump(2, ' ', false, Json::error_handler_t::replace);
    OrthancPluginAnswerBuffer(context(), output, body.data(), static_cast<uint32_t>(body.size()), "application/json");
}

void answer_error(OrthancPluginRestOutput *output, uint16_t status, const std::string &message) {
    const std::string body =
        Json{{"Error", message}, {"HttpStatus", status}}.dump(2, ' ', false, Json::error_handler_t::replace);
    OrthancPluginSendHttpStatus(context(), output, status, body.data(), static_cast<uint32_t>(body.size()));
}

}  // namespace asfda_orthanc
