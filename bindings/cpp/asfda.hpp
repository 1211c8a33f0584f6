// asfda.hpp: header-only C++17 RAII wrapper over the asfda C API (asfda.h).
//
// - Every failing C call throws asfda::Error (a std::runtime_error) carrying the AsfdaStatus and
//   the library's thread-local message, read at once on the failing thread.
// - Handles (Volume, Model, Engine, Score, Cancel) own their C object through a std::unique_ptr with the
//   matching *_free as deleter: move-only, never leaked, never freed twice. A moved-from object
//   is empty; calling a method on it throws Error(ASFDA_STATUS_INVALID_ARGUMENT) because the C
//   API checks every pointer for NULL.
// - Option structs own their strings (std::string) and start from the library's *_default(),
//   so the defaults have one source of truth.
// - Progress callbacks are std::function<bool(double)>. An exception thrown by a callback never
//   crosses the C boundary (it would be undefined behaviour through Rust frames): it is caught,
//   the work is cancelled, and the exception is rethrown once the C call has returned.
// - Thread safety is the C API's: volumes and scores are immutable; an Engine or Model may be
//   used from several threads at once (the methods are const).
#ifndef ASFDA_HPP
#define ASFDA_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "asfda.h"

namespace asfda {

/// A failed asfda call: the status code and the library's explanation.
class Error : public std::runtime_error {
public:
    Error(AsfdaStatus status, const std::string &message) : std::runtime_error(message), status_(status) {}
    AsfdaStatus status() const noexcept { return status_; }
    /// E.g. "ASFDA_STATUS_IO".
    const char *status_name() const noexcept { return asfda_status_name(static_cast<int32_t>(status_)); }

private:
    AsfdaStatus status_;
};

/// Called with the fraction done in [0, 1]; return false to cancel (the call then throws
/// Error(ASFDA_STATUS_CANCELLED)). Runs on the calling thread.
using Progress = std::function<bool(double fraction)>;

enum class Convention : int32_t { RAS = ASFDA_RAS, LPS = ASFDA_LPS };
enum class OutputType : int32_t { U8 = ASFDA_OUTPUT_U8, U16 = ASFDA_OUTPUT_U16, F32 = ASFDA_OUTPUT_F32 };
enum class NonFinite : int32_t {
    Error = ASFDA_NONFINITE_ERROR,
    Replace = ASFDA_NONFINITE_REPLACE,
    Keep = ASFDA_NONFINITE_KEEP
};

using Dims = std::array<std::size_t, 3>;       // x, y, z
using Spacing = std::array<double, 3>;         // mm, x, y, z
using Affine = std::array<double, 16>;         // row-major voxel index -> world mm

namespace detail {

inline void check(AsfdaStatus status) {
    if (status != ASFDA_STATUS_OK) throw Error(status, asfda_last_error_message());
}

template <class T, void (*Free)(T *)>
struct Deleter {
    void operator()(T *p) const noexcept { Free(p); }
};

/// Base of every handle class: sole owner of one C object.
template <class T, void (*Free)(T *)>
class Owned {
public:
    /// The C handle, for calls this wrapper does not cover (ownership stays here).
    const T *get() const noexcept { return ptr_.get(); }
    T *get() noexcept { return ptr_.get(); }
    /// Gives up ownership: the caller must call the matching asfda_*_free.
    T *release() noexcept { return ptr_.release(); }
    /// False after a move or release.
    explicit operator bool() const noexcept { return ptr_ != nullptr; }

protected:
    Owned() = default;
    explicit Owned(T *p) noexcept : ptr_(p) {}

private:
    std::unique_ptr<T, Deleter<T, Free>> ptr_;
};

/// Reads a string through the C API's (buf, capacity, out_needed) pattern: ask the size, then
/// copy (again if it grew in between).
template <class Fn>
std::string read_string(Fn &&fn) {
    std::size_t needed = 0;
    check(fn(nullptr, 0, &needed));
    std::string text;
    for (;;) {
        text.resize(needed);
        std::size_t again = 0;
        check(fn(text.data(), text.size(), &again));
        if (again <= needed) {
            text.resize(again > 0 ? again - 1 : 0);  // drop the NUL
            return text;
        }
        needed = again;
    }
}

/// Runs a C call that takes an AsfdaProgressFn + user_data, keeping C++ exceptions on this side.
class ProgressBridge {
public:
    explicit ProgressBridge(const Progress &progress) noexcept : progress_(progress) {}
    AsfdaProgressFn callback() const noexcept { return progress_ ? &ProgressBridge::trampoline : nullptr; }
    void *user_data() noexcept { return progress_ ? this : nullptr; }
    /// Rethrows what the user's callback threw, if anything. Call after the C call returned and
    /// after its result is owned by RAII, so nothing leaks.
    void rethrow_if_thrown() {
        if (thrown_) std::rethrow_exception(std::exchange(thrown_, nullptr));
    }

private:
    static bool trampoline(void *user_data, double fraction) noexcept {
        auto *self = static_cast<ProgressBridge *>(user_data);
        if (self->thrown_) return false;  // keep cancelling; never call the failed callback again
        try {
            return self->progress_(fraction);
        } catch (...) {
            self->thrown_ = std::current_exception();
            return false;
        }
    }
    const Progress &progress_;
    std::exception_ptr thrown_;
};

inline const char *c_str_or_null(const std::string &s) noexcept { return s.empty() ? nullptr : s.c_str(); }

}  // namespace detail

/// The library's version, e.g. "0.1.0" (ASFDA_VERSION is the header's).
inline std::string version() { return asfda_version(); }

/// Loads ONNX Runtime for this process; an empty path follows the resolution order
/// (ASFDA_ORT_LIBRARY, ORT_DYLIB_PATH, next to libasfda, the project cache).
inline void load_runtime(const std::string &library_path = {}) {
    detail::check(asfda_runtime_load(detail::c_str_or_null(library_path)));
}

/// Runtime facts as JSON: asfda and ORT versions, library path and how it was found, providers.
inline std::string runtime_info_json() {
    return detail::read_string([](char *b, std::size_t c, std::size_t *n) { return asfda_runtime_info_json(b, c, n); });
}

/// Options for Volume::load; defaults from asfda_read_options_default().
struct ReadOptions {
    std::uint64_t max_voxels;
    NonFinite nonfinite;
    float replace_value;

    ReadOptions() {
        const AsfdaReadOptions d = asfda_read_options_default();
        max_voxels = d.max_voxels;
        nonfinite = static_cast<NonFinite>(d.nonfinite);
        replace_value = d.replace_value;
    }
    AsfdaReadOptions to_c() const noexcept {
        AsfdaReadOptions c{};
        c.max_voxels = max_voxels;
        c.nonfinite = static_cast<int32_t>(nonfinite);
        c.replace_value = replace_value;
        return c;
    }
};

/// Maps a C++ voxel type to its AsfdaDataType.
template <class T>
struct DataTypeOf;
template <> struct DataTypeOf<std::uint8_t> { static constexpr AsfdaDataType value = ASFDA_DTYPE_U8; };
template <> struct DataTypeOf<std::int8_t> { static constexpr AsfdaDataType value = ASFDA_DTYPE_I8; };
template <> struct DataTypeOf<std::int16_t> { static constexpr AsfdaDataType value = ASFDA_DTYPE_I16; };
template <> struct DataTypeOf<std::uint16_t> { static constexpr AsfdaDataType value = ASFDA_DTYPE_U16; };
template <> struct DataTypeOf<std::int32_t> { static constexpr AsfdaDataType value = ASFDA_DTYPE_I32; };
template <> struct DataTypeOf<std::uint32_t> { static constexpr AsfdaDataType value = ASFDA_DTYPE_U32; };
template <> struct DataTypeOf<std::int64_t> { static constexpr AsfdaDataType value = ASFDA_DTYPE_I64; };
template <> struct DataTypeOf<std::uint64_t> { static constexpr AsfdaDataType value = ASFDA_DTYPE_U64; };
template <> struct DataTypeOf<float> { static constexpr AsfdaDataType value = ASFDA_DTYPE_F32; };
template <> struct DataTypeOf<double> { static constexpr AsfdaDataType value = ASFDA_DTYPE_F64; };

/// A 3D image with channels: f32 voxels (x fastest, then y, z, channel) and an affine. Immutable.
class Volume : public detail::Owned<AsfdaVolume, asfda_volume_free> {
public:
    /// Takes ownership of a handle from the C API.
    explicit Volume(AsfdaVolume *adopt) noexcept : Owned(adopt) {}

    /// Reads a NIfTI-1/2 file (.nii or .nii.gz).
    static Volume load(const std::string &path, const ReadOptions &options = ReadOptions()) {
        const AsfdaReadOptions c = options.to_c();
        AsfdaVolume *out = nullptr;
        detail::check(asfda_volume_load(path.c_str(), &c, &out));
        return Volume(out);
    }

    /// Copies a caller buffer of `bytes` bytes holding `dtype` voxels (x fastest, then y, z,
    /// channel). `spacing`, when given, must agree with the affine.
    static Volume from_buffer(const void *data, std::size_t bytes, AsfdaDataType dtype, const Dims &dims,
                              std::size_t channels, const Affine &affine, Convention convention = Convention::RAS,
                              const std::optional<Spacing> &spacing = std::nullopt) {
        AsfdaVolume *out = nullptr;
        detail::check(asfda_volume_from_buffer(static_cast<const std::uint8_t *>(data), bytes,
                                               static_cast<int32_t>(dtype), dims.data(), channels,
                                               spacing ? spacing->data() : nullptr, affine.data(),
                                               static_cast<int32_t>(convention), &out));
        return Volume(out);
    }

    /// Typed form of from_buffer: the datatype follows T.
    template <class T>
    static Volume from_voxels(const std::vector<T> &voxels, const Dims &dims, std::size_t channels,
                              const Affine &affine, Convention convention = Convention::RAS,
                              const std::optional<Spacing> &spacing = std::nullopt) {
        return from_buffer(voxels.data(), voxels.size() * sizeof(T), DataTypeOf<T>::value, dims, channels, affine,
                           convention, spacing);
    }

    /// Writes atomically (temp file + rename).
    void save(const std::string &path, OutputType type = OutputType::F32) const {
        detail::check(asfda_volume_save(get(), path.c_str(), static_cast<int32_t>(type)));
    }

    Dims dims() const {
        Dims d{};
        std::size_t channels = 0;
        detail::check(asfda_volume_dims(get(), d.data(), &channels));
        return d;
    }
    std::size_t channels() const {
        Dims d{};
        std::size_t channels = 0;
        detail::check(asfda_volume_dims(get(), d.data(), &channels));
        return channels;
    }
    Spacing spacing() const {
        Spacing s{};
        detail::check(asfda_volume_spacing(get(), s.data()));
        return s;
    }
    Affine affine(Convention convention = Convention::RAS) const {
        Affine a{};
        detail::check(asfda_volume_affine(get(), static_cast<int32_t>(convention), a.data()));
        return a;
    }
    /// Read-only voxels, valid while this Volume lives.
    const float *data() const {
        const float *p = nullptr;
        std::size_t n = 0;
        detail::check(asfda_volume_data(get(), &p, &n));
        return p;
    }
    /// Voxel count, all channels.
    std::size_t size() const {
        const float *p = nullptr;
        std::size_t n = 0;
        detail::check(asfda_volume_data(get(), &p, &n));
        return n;
    }
    std::vector<float> voxels() const {
        const float *p = nullptr;
        std::size_t n = 0;
        detail::check(asfda_volume_data(get(), &p, &n));
        return std::vector<float>(p, p + n);
    }
    /// Closest canonical RAS orientation (nibabel's as_closest_canonical), as a new volume.
    Volume to_canonical() const {
        AsfdaVolume *out = nullptr;
        detail::check(asfda_volume_to_canonical(get(), &out));
        return Volume(out);
    }
    /// Throws Error(ASFDA_STATUS_GEOMETRY_MISMATCH) unless `other` lies on this volume's grid.
    void check_same_grid(const Volume &other) const { detail::check(asfda_volume_check_same_grid(get(), other.get())); }
};

/// Where to find ONNX Runtime and where to run a Model. Empty strings mean "default".
struct RuntimeOptions {
    std::string library_path;  // full path of libonnxruntime.so; empty: resolution order
    std::string device;        // "cpu" (empty), "auto", "cuda", "cuda:<id>"
    std::uint32_t threads = 0;  // 0: ONNX Runtime chooses

    /// The C view; valid while this object lives and is unchanged.
    AsfdaRuntimeOptions to_c() const noexcept {
        AsfdaRuntimeOptions c{};
        c.library_path = detail::c_str_or_null(library_path);
        c.device = detail::c_str_or_null(device);
        c.threads = threads;
        return c;
    }
};

/// An ONNX model with one image input. Thread-safe (runs are serialised).
class Model : public detail::Owned<AsfdaModel, asfda_model_free> {
public:
    explicit Model(AsfdaModel *adopt) noexcept : Owned(adopt) {}

    static Model load(const std::string &path, const RuntimeOptions &options = RuntimeOptions()) {
        const AsfdaRuntimeOptions c = options.to_c();
        AsfdaModel *out = nullptr;
        detail::check(asfda_model_load(path.c_str(), &c, &out));
        return Model(out);
    }
    /// "cpu" or "cuda:<id>".
    std::string device() const {
        return detail::read_string(
            [this](char *b, std::size_t c, std::size_t *n) { return asfda_model_device(get(), b, c, n); });
    }
    /// Runs on the whole volume; the first output as a volume on the same grid.
    Volume run(const Volume &input) const {
        AsfdaVolume *out = nullptr;
        detail::check(asfda_model_run_volume(get(), input.get(), &out));
        return Volume(out);
    }
};

/// Engine settings; defaults from asfda_engine_options_default().
struct EngineOptions {
    std::string bundle_path;   // folder holding manifest.json (required)
    std::string library_path;  // full path of libonnxruntime.so; empty: resolution order
    std::string device;        // "cpu" (empty), "auto", "cuda", "cuda:<id>"
    std::uint32_t threads;
    double tile_overlap;
    std::uint32_t tiles_per_batch;
    bool mirror;
    std::uint64_t memory_limit_bytes;

    explicit EngineOptions(std::string bundle = {}) : bundle_path(std::move(bundle)) {
        const AsfdaEngineOptions d = asfda_engine_options_default();
        threads = d.threads;
        tile_overlap = d.tile_overlap;
        tiles_per_batch = d.tiles_per_batch;
        mirror = d.mirror;
        memory_limit_bytes = d.memory_limit_bytes;
    }
    /// The C view; valid while this object lives and is unchanged.
    AsfdaEngineOptions to_c() const noexcept {
        AsfdaEngineOptions c = asfda_engine_options_default();
        c.bundle_path = detail::c_str_or_null(bundle_path);
        c.library_path = detail::c_str_or_null(library_path);
        c.device = detail::c_str_or_null(device);
        c.threads = threads;
        c.tile_overlap = tile_overlap;
        c.tiles_per_batch = tiles_per_batch;
        c.mirror = mirror;
        c.memory_limit_bytes = memory_limit_bytes;
        return c;
    }
};

/// The scores of one volume. Immutable.
class Score : public detail::Owned<AsfdaScore, asfda_score_free> {
public:
    explicit Score(AsfdaScore *adopt) noexcept : Owned(adopt) {}

    /// Reads a score from its JSON form (to_json's output).
    static Score from_json(const std::string &json) {
        AsfdaScore *out = nullptr;
        detail::check(asfda_score_from_json(json.c_str(), &out));
        return Score(out);
    }
    AsfdaScoreValues values() const {
        AsfdaScoreValues v{};
        detail::check(asfda_score_values(get(), &v));
        return v;
    }
    double gap_kl() const { return values().gap_kl; }
    double gap_anchor() const { return values().gap_anchor; }
    double asd() const { return values().asd; }
    double asd_threshold() const { return values().asd_threshold; }
    double confidence() const { return values().confidence; }
    double foreground_fraction() const { return values().foreground_fraction; }
    /// The L2-normalised embedding.
    std::vector<float> embedding() const {
        std::vector<float> e(values().embedding_len);
        detail::check(asfda_score_embedding(get(), e.data(), e.size()));
        return e;
    }
    /// Versioned JSON, exact round trip through from_json.
    std::string to_json() const {
        return detail::read_string(
            [this](char *b, std::size_t c, std::size_t *n) { return asfda_score_to_json(get(), b, c, n); });
    }
};

/// A cancellation token: cancel() stops the score/segment calls given it, also a model run in
/// flight (they throw Error(ASFDA_STATUS_CANCELLED)); callable from any thread, idempotent.
/// Stays triggered until reset(), which must not run while a call uses the token. Keep it alive
/// while calls use it.
class Cancel : public detail::Owned<AsfdaCancel, asfda_cancel_free> {
public:
    Cancel() : Owned(create()) {}
    void cancel() const { detail::check(asfda_cancel_trigger(get())); }
    void reset() const { detail::check(asfda_cancel_reset(get())); }
    bool triggered() const {
        bool out = false;
        detail::check(asfda_cancel_is_triggered(get(), &out));
        return out;
    }

private:
    static AsfdaCancel *create() {
        AsfdaCancel *out = nullptr;
        detail::check(asfda_cancel_new(&out));
        return out;
    }
};

/// Which optional maps Engine::segment_maps computes.
struct SegmentOutputs {
    bool probabilities = false;
    bool entropy = false;
};

/// A segmentation on the input volume's grid; the maps are present when asked for.
struct Segmentation {
    Volume labels;
    std::optional<Volume> probabilities;  // one channel per class, summing to 1 per voxel
    std::optional<Volume> entropy;        // normalised entropy in [0, 1]
};

/// A loaded model bundle. Thread-safe: score and segment from several threads at once.
class Engine : public detail::Owned<AsfdaEngine, asfda_engine_free> {
public:
    explicit Engine(AsfdaEngine *adopt) noexcept : Owned(adopt) {}
    explicit Engine(const EngineOptions &options) : Owned(create(options)) {}

    /// "cpu" or "cuda:<id>".
    std::string device() const {
        return detail::read_string(
            [this](char *b, std::size_t c, std::size_t *n) { return asfda_engine_device(get(), b, c, n); });
    }
    /// Scores `volume`; `id` names it in the score (file name, series UID). `cancel` may be null.
    Score score(const Volume &volume, const std::string &id, const Progress &progress = {},
                const Cancel *cancel = nullptr) const {
        detail::ProgressBridge bridge(progress);
        AsfdaScore *out = nullptr;
        const AsfdaStatus status = asfda_score_volume(get(), volume.get(), id.c_str(), bridge.callback(),
                                                      bridge.user_data(), cancel_of(cancel), &out);
        Score result(out);  // owned before anything can throw
        bridge.rethrow_if_thrown();
        detail::check(status);
        return result;
    }
    /// Label map (class index per voxel) on the volume's own grid. `cancel` may be null.
    Volume segment(const Volume &volume, const Progress &progress = {}, const Cancel *cancel = nullptr) const {
        return std::move(segment_maps(volume, SegmentOutputs{}, progress, cancel).labels);
    }
    /// Label map plus the maps asked for in `outputs`, all on the volume's own grid.
    Segmentation segment_maps(const Volume &volume, SegmentOutputs outputs, const Progress &progress = {},
                              const Cancel *cancel = nullptr) const {
        detail::ProgressBridge bridge(progress);
        AsfdaVolume *labels = nullptr;
        AsfdaVolume *probabilities = nullptr;
        AsfdaVolume *entropy = nullptr;
        const AsfdaStatus status = asfda_segment_volume(
            get(), volume.get(), bridge.callback(), bridge.user_data(), cancel_of(cancel), &labels,
            outputs.probabilities ? &probabilities : nullptr, outputs.entropy ? &entropy : nullptr);
        Segmentation result{Volume(labels), std::nullopt, std::nullopt};  // owned before anything can throw
        if (probabilities) result.probabilities.emplace(probabilities);
        if (entropy) result.entropy.emplace(entropy);
        bridge.rethrow_if_thrown();
        detail::check(status);
        return result;
    }

private:
    static const AsfdaCancel *cancel_of(const Cancel *cancel) noexcept { return cancel ? cancel->get() : nullptr; }
    static AsfdaEngine *create(const EngineOptions &options) {
        const AsfdaEngineOptions c = options.to_c();
        AsfdaEngine *out = nullptr;
        detail::check(asfda_engine_new(&c, &out));
        return out;
    }
};

}  // namespace asfda

// Adding a class for a new C handle (e.g. AsfdaSelection, the fine-tuner) in the same style:
//   class Selection : public detail::Owned<AsfdaSelection, asfda_selection_free> {
//   public:
//       explicit Selection(AsfdaSelection *adopt) noexcept : Owned(adopt) {}
//       static Selection from_json(const std::string &json);   // asfda_selection_from_json + check
//       std::string to_json() const;                           // detail::read_string(...)
//   };
// - An options struct owns its strings, starts from asfda_*_options_default() and has to_c().
// - Every C call goes through detail::check(status); out-handles are wrapped (Selection(out))
//   right after the call, before anything else can throw.
// - Long calls with an AsfdaProgressFn use detail::ProgressBridge exactly as Engine::score does:
//   call, wrap the result, bridge.rethrow_if_thrown(), then detail::check(status).
// - Functions taking several scores take `const std::vector<Score>&` and pass an array of
//   `const AsfdaScore *` built from Score::get() (ownership stays with the caller).

#endif  // ASFDA_HPP
