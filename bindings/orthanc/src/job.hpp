// An Orthanc job whose work runs on a thread of its own, so that Orthanc's "cancel" and "pause"
// reach asfda while a model run is in flight.
//
// Orthanc calls a plugin job's callbacks from one thread, and checks for cancel/pause only between
// two step() calls. A step that ran a whole inference would make a cancel wait for the end of
// it. So the first step() starts a worker thread running run(), and every step() waits at most
// kStepWait for it before answering "continue"; Orthanc's stop(Canceled / Paused) then cancels the
// asfda cancel token (which stops a model run in flight) and joins the worker. Progress is an
// atomic the worker sets (from asfda's progress callback) and Orthanc reads after every step.
//
// No exception leaves a callback: every entry point from Orthanc and the worker's body catch
// everything and turn it into a failed job with the message in the job's content ("Error").
#pragma once

#include "config.hpp"
#include "orthanc.hpp"

#include "asfda.hpp"

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace asfda_orthanc {

/// What every job shares: the settings and the engine (kept alive by the jobs that use it, also
/// after the plugin was finalized).
struct Runtime {
    Config config;
    std::string bundle;  // the bundle folder, absolute and canonical (identifies stored scores)
    asfda::Engine engine;
};

/// Thrown by Job::check_cancelled when the job was cancelled or paused.
struct Cancelled : std::runtime_error {
    Cancelled() : std::runtime_error("cancelled") {}
};

class Job {
public:
    Job(std::string type, std::shared_ptr<const Runtime> runtime);
    virtual ~Job();
    Job(const Job &) = delete;
    Job &operator=(const Job &) = delete;

    /// Hands the job to Orthanc's jobs engine; returns the Orthanc job id. Throws on failure.
    static std::string submit(std::unique_ptr<Job> job, int priority);

    /// Cancels the work of every job still alive and waits until their workers stopped (plugin
    /// finalization: no worker may run once Orthanc unloads the plugin).
    static void cancel_all();

protected:
    /// The work, on the worker thread: returns what the job's content shows on success; throws
    /// (any exception) to fail with its message.
    virtual Json run() = 0;
    /// The fields the job's content always shows (e.g. the series).
    virtual Json describe() const = 0;

    void set_progress(double fraction) { progress_.store(static_cast<float>(fraction)); }
    void set_phase(const std::string &phase);
    /// Throws Cancelled once Orthanc cancelled or paused the job.
    void check_cancelled() const;
    const asfda::CancelToken &cancel_token() const { return cancel_; }
    const Runtime &runtime() const { return *runtime_; }

private:
    enum class State { Idle, Running, Finished };

    static void finalize_cb(void *job);
    static float progress_cb(void *job);
    static const char *content_cb(void *job);
    static const char *serialized_cb(void *job);
    static OrthancPluginJobStepStatus step_cb(void *job);
    static OrthancPluginErrorCode stop_cb(void *job, OrthancPluginJobStopReason reason);
    static OrthancPluginErrorCode reset_cb(void *job);

    OrthancPluginJobStepStatus step();
    void stop(OrthancPluginJobStopReason reason);
    void reset();
    const char *content();
    void work();
    /// Cancels the worker (when `cancel`) and joins it.
    void stop_worker(bool cancel);
    /// Waits (up to `timeout_ms`) until the worker finished; true if it did.
    bool wait_done(int timeout_ms);

    const std::string type_;
    const std::shared_ptr<const Runtime> runtime_;
    asfda::CancelToken cancel_;
    std::atomic<float> progress_{0};
    std::atomic<bool> stop_requested_{false};

    State state_ = State::Idle;  // used by Orthanc's job thread only
    std::thread worker_;

    mutable std::mutex mutex_;  // guards what follows (shared with the worker)
    std::condition_variable done_cv_;
    bool done_ = false;
    bool active_ = false;  // a worker thread runs (or is about to)
    bool failed_ = false;
    bool cancelled_ = false;
    std::string phase_ = "pending";
    std::string error_;
    Json result_;

    std::string content_;  // what content_cb returned last (must outlive the call)
};

}  // namespace asfda_orthanc
