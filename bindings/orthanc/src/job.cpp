#include "job.hpp"

#include <chrono>
#include <set>

namespace asfda_orthanc {

namespace {

/// How long one step() waits for the worker before answering "continue": bounds how late
/// Orthanc sees a cancel or a pause, and how often it reads the progress.
constexpr int kStepWaitMs = 200;

std::mutex g_registry_mutex;
std::set<Job *> g_registry;  // every job alive
bool g_shutting_down = false;  // guarded by g_registry_mutex

std::string describe_exception(const std::exception_ptr &e) {
    try {
        std::rethrow_exception(e);
    } catch (const asfda::Error &err) {
        return std::string(err.what()) + " [" + err.status_name() + "]";
    } catch (const std::exception &err) {
        return err.what();
    } catch (...) {
        return "unknown error (a non-standard exception)";
    }
}

}  // namespace

Job::Job(std::string type, std::shared_ptr<const Runtime> runtime) : type_(std::move(type)), runtime_(std::move(runtime)) {
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    g_registry.insert(this);
}

Job::~Job() {
    {
        std::lock_guard<std::mutex> lock(g_registry_mutex);
        g_registry.erase(this);
    }
    // finalize_cb already stopped the worker (before the derived object was destroyed); this is
    // only a safety net.
    try {
        stop_worker(true);
    } catch (...) {
    }
}

std::string Job::submit(std::unique_ptr<Job> job, int priority) {
    Job *raw = job.get();
    OrthancPluginJob *orthanc_job = OrthancPluginCreateJob(context(), raw, &Job::finalize_cb, raw->type_.c_str(),
                                                           &Job::progress_cb, &Job::content_cb, &Job::serialized_cb,
                                                           &Job::step_cb, &Job::stop_cb, &Job::reset_cb);
    if (orthanc_job == nullptr) throw std::runtime_error("Orthanc could not create the " + raw->type_ + " job");
    job.release();  // Orthanc owns it now and calls finalize_cb
    char *id = OrthancPluginSubmitJob(context(), orthanc_job, priority);
    if (id == nullptr) throw std::runtime_error("Orthanc did not accept the " + raw->type_ + " job");
    std::string result(id);
    OrthancPluginFreeString(context(), id);
    return result;
}

void Job::cancel_all() {
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    g_shutting_down = true;
    for (Job *job : g_registry) {
        try {
            job->cancel_.cancel();
        } catch (...) {
        }
    }
    for (Job *job : g_registry) {
        std::unique_lock<std::mutex> job_lock(job->mutex_);
        job->done_cv_.wait(job_lock, [job] { return !job->active_; });
    }
}

void Job::set_phase(const std::string &phase) {
    std::lock_guard<std::mutex> lock(mutex_);
    phase_ = phase;
}

void Job::check_cancelled() const {
    if (cancel_.is_cancelled()) throw Cancelled();
}

bool Job::wait_done(int timeout_ms) {
    std::unique_lock<std::mutex> lock(mutex_);
    return done_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [this] { return done_; });
}

void Job::work() {
    Json result;
    std::string error;
    bool ok = false;
    bool cancelled = false;
    try {
        result = run();
        ok = true;
    } catch (const Cancelled &) {
        cancelled = true;
    } catch (const asfda::Error &e) {
        if (e.status() == ASFDA_STATUS_CANCELLED) {
            cancelled = true;
        } else {
            error = describe_exception(std::current_exception());
        }
    } catch (...) {
        error = describe_exception(std::current_exception());
    }
    try {
        std::lock_guard<std::mutex> lock(mutex_);
        failed_ = !ok;
        cancelled_ = cancelled;
        error_ = cancelled ? "cancelled" : error;
        if (ok) result_ = std::move(result);
        phase_ = ok ? "done" : (cancelled ? "cancelled" : "failed");
        done_ = true;
        active_ = false;
    } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        failed_ = true;
        done_ = true;
        active_ = false;
    }
    done_cv_.notify_all();
}

void Job::stop_worker(bool cancel) {
    if (cancel && worker_.joinable()) {
        try {
            cancel_.cancel();
        } catch (...) {
        }
    }
    if (worker_.joinable()) worker_.join();
}

OrthancPluginJobStepStatus Job::step() {
    if (state_ == State::Idle) {
        {
            std::lock_guard<std::mutex> registry_lock(g_registry_mutex);
            if (g_shutting_down) {
                std::lock_guard<std::mutex> lock(mutex_);
                failed_ = true;
                error_ = "the asfda plugin is shutting down";
                return OrthancPluginJobStepStatus_Failure;
            }
        }
        cancel_.reset();  // no worker uses the token now
        progress_.store(0);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            done_ = false;
            failed_ = false;
            cancelled_ = false;
            error_.clear();
            result_ = Json();
            phase_ = "starting";
            active_ = true;
        }
        try {
            worker_ = std::thread(&Job::work, this);
        } catch (const std::exception &e) {
            std::lock_guard<std::mutex> lock(mutex_);
            active_ = false;
            done_ = true;
            failed_ = true;
            error_ = std::string("could not start a worker thread: ") + e.what();
            state_ = State::Finished;
            log_error(type_ + " job failed: " + error_);
            return OrthancPluginJobStepStatus_Failure;
        }
        state_ = State::Running;
    }
    if (state_ == State::Running) {
        if (!wait_done(kStepWaitMs)) return OrthancPluginJobStepStatus_Continue;
        worker_.join();
        state_ = State::Finished;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (failed_) {
        log_error(type_ + " job failed: " + error_);
        return OrthancPluginJobStepStatus_Failure;
    }
    progress_.store(1);
    return OrthancPluginJobStepStatus_Success;
}

void Job::stop(OrthancPluginJobStopReason reason) {
    if (state_ != State::Running) return;  // success/failure: the worker has ended already
    stop_worker(true);
    state_ = State::Idle;  // a paused job starts over when resumed; a cancelled one when resubmitted
    std::lock_guard<std::mutex> lock(mutex_);
    phase_ = reason == OrthancPluginJobStopReason_Paused ? "paused" : "cancelled";
    if (reason != OrthancPluginJobStopReason_Paused) {
        failed_ = true;
        cancelled_ = true;
        error_ = "cancelled";
    }
}

void Job::reset() {
    if (state_ == State::Running) stop_worker(true);
    state_ = State::Idle;
    progress_.store(0);
    std::lock_guard<std::mutex> lock(mutex_);
    phase_ = "pending";
    error_.clear();
    failed_ = false;
    cancelled_ = false;
    result_ = Json();
}

const char *Job::content() {
    Json c = describe();
    {
        std::lock_guard<std::mutex> lock(mutex_);
        c["Phase"] = phase_;
        if (done_ && !failed_ && result_.is_object()) {
            for (auto &item : result_.items()) c[item.key()] = item.value();
        }
        if (failed_) c["Error"] = error_;
    }
    content_ = c.dump(-1, ' ', false, Json::error_handler_t::replace);  // asfda messages may quote non-UTF-8 paths
    return content_.c_str();
}

// ---- C callbacks: nothing may throw out of them ----------------------------------------------

void Job::finalize_cb(void *job) {
    auto *self = static_cast<Job *>(job);
    try {
        self->stop_worker(true);  // before the derived object's members go away
    } catch (...) {
    }
    delete self;
}

float Job::progress_cb(void *job) { return static_cast<Job *>(job)->progress_.load(); }

const char *Job::content_cb(void *job) {
    auto *self = static_cast<Job *>(job);
    try {
        return self->content();
    } catch (...) {
        self->content_ = "{\"Error\": \"could not describe the job\"}";
        return self->content_.c_str();
    }
}

const char *Job::serialized_cb(void *) {
    return nullptr;  // not kept across restarts of Orthanc: resubmit the request
}

OrthancPluginJobStepStatus Job::step_cb(void *job) {
    auto *self = static_cast<Job *>(job);
    try {
        return self->step();
    } catch (...) {
        try {
            const std::string message = describe_exception(std::current_exception());
            std::lock_guard<std::mutex> lock(self->mutex_);
            self->failed_ = true;
            self->error_ = message;
            log_error(self->type_ + " job failed: " + message);
        } catch (...) {
        }
        return OrthancPluginJobStepStatus_Failure;
    }
}

OrthancPluginErrorCode Job::stop_cb(void *job, OrthancPluginJobStopReason reason) {
    try {
        static_cast<Job *>(job)->stop(reason);
        return OrthancPluginErrorCode_Success;
    } catch (...) {
        return OrthancPluginErrorCode_Plugin;
    }
}

OrthancPluginErrorCode Job::reset_cb(void *job) {
    try {
        static_cast<Job *>(job)->reset();
        return OrthancPluginErrorCode_Success;
    } catch (...) {
        return OrthancPluginErrorCode_Plugin;
    }
}

}  // namespace asfda_orthanc
