// asfda.hpp: header-only C++17 RAII wrapper over the asfda C API (asfda.h).
//
// - Every failing C call throws asfda::Error (a std::runtime_error) carrying the AsfdaStatus and
//   the library's thread-local message, read at once on the failing thread.
// - Handles (Volume, Model, Engine, Score, CancelToken, Selection, FineTuner) own their C object
//   through a std::unique_ptr with the matching *_free as deleter: move-only, never leaked, never
//   freed twice. A moved-from object is empty; calling a method on it throws
//   Error(ASFDA_STATUS_INVALID_ARGUMENT) because the C
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
#include <mutex>
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
/// (ASFDA_ORT_LIBRARY, ORT_DYLIB_PATH, next to libasfda, the user cache).
inline void load_runtime(const std::string &library_path = {}) {
    detail::check(asfda_runtime_load(detail::c_str_or_null(library_path)));
}

/// Runtime facts as JSON: asfda and ORT versions, library path and how it was found, providers.
inline std::string runtime_info_json() {
    return detail::read_string([](char *b, std::size_t c, std::size_t *n) { return asfda_runtime_info_json(b, c, n); });
}

/// Options for Volume::load and Volume::from_buffer; defaults from asfda_read_options_default().
struct ReadOptions {
    std::uint64_t max_voxels;
    NonFinite nonfinite;
    float replace_value;
    std::uint64_t max_bytes;  // of the f32 voxels

    ReadOptions() {
        const AsfdaReadOptions d = asfda_read_options_default();
        max_voxels = d.max_voxels;
        nonfinite = static_cast<NonFinite>(d.nonfinite);
        replace_value = d.replace_value;
        max_bytes = d.max_bytes;
    }
    AsfdaReadOptions to_c() const noexcept {
        AsfdaReadOptions c{};
        c.max_voxels = max_voxels;
        c.nonfinite = static_cast<int32_t>(nonfinite);
        c.replace_value = replace_value;
        c.max_bytes = max_bytes;
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

    /// Reads one DICOM series: `paths` are series folders and/or files of the series (any
    /// order); `series_uid` chooses one when they hold several (empty: there must be one).
    /// See asfda_volume_read_dicom.
    static Volume load_dicom(const std::vector<std::string> &paths, const std::string &series_uid = std::string(),
                             const ReadOptions &options = ReadOptions()) {
        std::vector<const char *> c_paths;
        c_paths.reserve(paths.size());
        for (const std::string &p : paths) c_paths.push_back(p.c_str());
        const AsfdaReadOptions c = options.to_c();
        AsfdaVolume *out = nullptr;
        detail::check(asfda_volume_read_dicom(c_paths.data(), c_paths.size(),
                                              series_uid.empty() ? nullptr : series_uid.c_str(), &c, &out));
        return Volume(out);
    }

    /// Copies a caller buffer of `bytes` bytes holding `dtype` voxels (x fastest, then y, z,
    /// channel). `spacing`, when given, must agree with the affine. `options` limits the size
    /// (max_voxels, max_bytes; checked before allocating).
    static Volume from_buffer(const void *data, std::size_t bytes, AsfdaDataType dtype, const Dims &dims,
                              std::size_t channels, const Affine &affine, Convention convention = Convention::RAS,
                              const std::optional<Spacing> &spacing = std::nullopt,
                              const ReadOptions &options = ReadOptions()) {
        const AsfdaReadOptions c = options.to_c();
        AsfdaVolume *out = nullptr;
        detail::check(asfda_volume_from_buffer(static_cast<const std::uint8_t *>(data), bytes,
                                               static_cast<int32_t>(dtype), dims.data(), channels,
                                               spacing ? spacing->data() : nullptr, affine.data(),
                                               static_cast<int32_t>(convention), &c, &out));
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
    std::string device;        // "cpu" (empty), "openvino", "auto", "cuda", "cuda:<id>"
    std::uint32_t threads;     // 0: ONNX Runtime chooses

    RuntimeOptions() : threads(asfda_runtime_options_default().threads) {}
    /// The C view; valid while this object lives and is unchanged.
    AsfdaRuntimeOptions to_c() const noexcept {
        AsfdaRuntimeOptions c = asfda_runtime_options_default();
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
    /// "cpu", "openvino" or "cuda:<id>".
    std::string device() const {
        return detail::read_string(
            [this](char *b, std::size_t c, std::size_t *n) { return asfda_model_device(get(), b, c, n); });
    }
    /// Runs on the whole volume; the first output as a volume on the same grid.
    Volume run_volume(const Volume &input) const {
        AsfdaVolume *out = nullptr;
        detail::check(asfda_model_run_volume(get(), input.get(), &out));
        return Volume(out);
    }
};

/// Engine settings; defaults from asfda_engine_options_default().
struct EngineOptions {
    std::string bundle_path;  // folder holding manifest.json (required)
    RuntimeOptions runtime;   // where to find ONNX Runtime and where to run
    double tile_overlap;
    std::uint32_t tiles_per_batch;
    bool mirror;
    std::uint64_t memory_limit_bytes;

    explicit EngineOptions(std::string bundle = {}) : bundle_path(std::move(bundle)) {
        const AsfdaEngineOptions d = asfda_engine_options_default();
        tile_overlap = d.tile_overlap;
        tiles_per_batch = d.tiles_per_batch;
        mirror = d.mirror;
        memory_limit_bytes = d.memory_limit_bytes;
    }
    /// The C view; valid while this object lives and is unchanged.
    AsfdaEngineOptions to_c() const noexcept {
        AsfdaEngineOptions c = asfda_engine_options_default();
        c.bundle_path = detail::c_str_or_null(bundle_path);
        c.runtime = runtime.to_c();
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

/// A cancel token: cancel() stops the score/segment calls given it, also a model run in
/// flight (they throw Error(ASFDA_STATUS_CANCELLED)); callable from any thread, idempotent.
/// Stays cancelled until reset(), which must not run while a call uses the token. Keep it alive
/// while calls use it.
class CancelToken : public detail::Owned<AsfdaCancelToken, asfda_cancel_token_free> {
public:
    CancelToken() : Owned(create()) {}
    void cancel() const { detail::check(asfda_cancel_token_cancel(get())); }
    void reset() const { detail::check(asfda_cancel_token_reset(get())); }
    bool is_cancelled() const {
        bool out = false;
        detail::check(asfda_cancel_token_is_cancelled(get(), &out));
        return out;
    }

private:
    static AsfdaCancelToken *create() {
        AsfdaCancelToken *out = nullptr;
        detail::check(asfda_cancel_token_new(&out));
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

/// What Engine::score_and_segment returns: the score and the maps of one inference.
struct ScoredSegmentation {
    Score score;
    Segmentation segmentation;
};

/// A code as DICOM writes one: scheme ("SCT"), value ("389080008"), meaning ("White Matter").
struct CodedConcept {
    std::string scheme, value, meaning;
};

/// What a class is: DICOM SEG's segmented property category and type (`kind`: the manifest's
/// `code.type`).
struct ClassCode {
    CodedConcept category, kind;
};

/// One output class of the model, from the bundle's manifest (see AsfdaClassInfo).
struct ClassInfo {
    std::string name;
    std::optional<std::array<std::uint8_t, 3>> color;  // sRGB 0-255
    std::optional<ClassCode> code;
};

/// A loaded model bundle. Thread-safe: score and segment from several threads at once.
class Engine : public detail::Owned<AsfdaEngine, asfda_engine_free> {
public:
    explicit Engine(AsfdaEngine *adopt) noexcept : Owned(adopt) {}
    explicit Engine(const EngineOptions &options) : Owned(create(options)) {}

    /// "cpu", "openvino" or "cuda:<id>".
    std::string device() const {
        return detail::read_string(
            [this](char *b, std::size_t c, std::size_t *n) { return asfda_engine_device(get(), b, c, n); });
    }
    /// The model's output classes (index 0 is background), in the order of label values.
    std::vector<ClassInfo> classes() const {
        std::size_t n = 0;
        detail::check(asfda_engine_class_count(get(), &n));
        std::vector<ClassInfo> out;
        out.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
            AsfdaClassInfo c;
            detail::check(asfda_engine_class_info(get(), i, &c));
            ClassInfo info{c.name, std::nullopt, std::nullopt};
            if (c.has_color) info.color = std::array<std::uint8_t, 3>{c.color[0], c.color[1], c.color[2]};
            auto concept_of = [](const AsfdaCodedConcept &k) { return CodedConcept{k.scheme, k.value, k.meaning}; };
            if (c.has_code) info.code = ClassCode{concept_of(c.category), concept_of(c.kind)};
            out.push_back(std::move(info));
        }
        return out;
    }
    /// Scores `volume`; `id` names it in the score (file name, series UID). `cancel` may be null.
    /// Argument order of Rust's Engine::score and asfda_score_volume: id, volume, cancel, progress.
    Score score(const std::string &id, const Volume &volume, const CancelToken *cancel = nullptr,
                const Progress &progress = {}) const {
        detail::ProgressBridge bridge(progress);
        AsfdaScore *out = nullptr;
        const AsfdaStatus status = asfda_score_volume(get(), id.c_str(), volume.get(), cancel_of(cancel),
                                                      bridge.callback(), bridge.user_data(), &out);
        Score result(out);  // owned before anything can throw
        bridge.rethrow_if_thrown();
        detail::check(status);
        return result;
    }
    /// Label map (class index per voxel) on the volume's own grid. `cancel` may be null.
    Volume segment(const Volume &volume, const CancelToken *cancel = nullptr, const Progress &progress = {}) const {
        return std::move(segment_maps(volume, SegmentOutputs{}, cancel, progress).labels);
    }
    /// Label map plus the maps asked for in `outputs`, all on the volume's own grid.
    Segmentation segment_maps(const Volume &volume, SegmentOutputs outputs, const CancelToken *cancel = nullptr,
                              const Progress &progress = {}) const {
        detail::ProgressBridge bridge(progress);
        AsfdaVolume *labels = nullptr;
        AsfdaVolume *probabilities = nullptr;
        AsfdaVolume *entropy = nullptr;
        const AsfdaStatus status = asfda_segment_volume(
            get(), volume.get(), cancel_of(cancel), bridge.callback(), bridge.user_data(), &labels,
            outputs.probabilities ? &probabilities : nullptr, outputs.entropy ? &entropy : nullptr);
        Segmentation result{Volume(labels), std::nullopt, std::nullopt};  // owned before anything can throw
        if (probabilities) result.probabilities.emplace(probabilities);
        if (entropy) result.entropy.emplace(entropy);
        bridge.rethrow_if_thrown();
        detail::check(status);
        return result;
    }

    /// Writes `labels` (segment()'s label map of the DICOM series read from `sources`: folders or
    /// files) as a binary DICOM Segmentation object at `path` (asfda_volume_write_dicom_seg).
    void write_dicom_seg(const Volume &labels, const std::vector<std::string> &sources, const std::string &path) const {
        std::vector<const char *> c_sources;
        c_sources.reserve(sources.size());
        for (const std::string &s : sources) c_sources.push_back(s.c_str());
        detail::check(asfda_volume_write_dicom_seg(labels.get(), get(), c_sources.data(), c_sources.size(), path.c_str()));
    }

    /// score() and segment_maps() from one inference (asfda_score_and_segment_volume): the same
    /// score and maps, in about half the time of the two calls.
    ScoredSegmentation score_and_segment(const std::string &id, const Volume &volume, SegmentOutputs outputs = {},
                                         const CancelToken *cancel = nullptr, const Progress &progress = {}) const {
        detail::ProgressBridge bridge(progress);
        AsfdaScore *score = nullptr;
        AsfdaVolume *labels = nullptr;
        AsfdaVolume *probabilities = nullptr;
        AsfdaVolume *entropy = nullptr;
        const AsfdaStatus status = asfda_score_and_segment_volume(
            get(), id.c_str(), volume.get(), cancel_of(cancel), bridge.callback(), bridge.user_data(), &score, &labels,
            outputs.probabilities ? &probabilities : nullptr, outputs.entropy ? &entropy : nullptr);
        // Owned before anything can throw.
        ScoredSegmentation result{Score(score), Segmentation{Volume(labels), std::nullopt, std::nullopt}};
        if (probabilities) result.segmentation.probabilities.emplace(probabilities);
        if (entropy) result.segmentation.entropy.emplace(entropy);
        bridge.rethrow_if_thrown();
        detail::check(status);
        return result;
    }

private:
    static const AsfdaCancelToken *cancel_of(const CancelToken *cancel) noexcept { return cancel ? cancel->get() : nullptr; }
    static AsfdaEngine *create(const EngineOptions &options) {
        const AsfdaEngineOptions c = options.to_c();
        AsfdaEngine *out = nullptr;
        detail::check(asfda_engine_new(&c, &out));
        return out;
    }
};

/// Selection method (AsfdaSelectMethod).
enum class SelectMethod : int32_t {
    Asfda = ASFDA_SELECT_ASFDA,
    Random = ASFDA_SELECT_RANDOM,
    ForegroundRandom = ASFDA_SELECT_FOREGROUND_RANDOM,
    Entropy = ASFDA_SELECT_ENTROPY,
    Dkd = ASFDA_SELECT_DKD,
    Coreset = ASFDA_SELECT_CORESET
};
/// Which knowledge gap feeds DKD (AsfdaGapKind).
enum class GapKind : int32_t { Kl = ASFDA_GAP_KL, Anchor = ASFDA_GAP_ANCHOR };

/// "asfda", "random", "foreground_random", "entropy", "dkd", "coreset" (for command lines and
/// configuration files).
inline SelectMethod select_method_from_name(const std::string &name) {
    AsfdaSelectMethod m = ASFDA_SELECT_ASFDA;
    detail::check(asfda_select_method_from_name(name.c_str(), &m));
    return static_cast<SelectMethod>(m);
}
/// "kl" or "anchor".
inline GapKind gap_kind_from_name(const std::string &name) {
    AsfdaGapKind g = ASFDA_GAP_KL;
    detail::check(asfda_gap_kind_from_name(name.c_str(), &g));
    return static_cast<GapKind>(g);
}

/// Selection settings; defaults from asfda_select_options_default() (budget 1: set it).
struct SelectOptions {
    SelectMethod method;
    std::size_t budget;
    std::uint64_t seed;
    double w_dkd;
    double w_asd;
    GapKind gap;
    double duplicate_fraction;
    double reliable_confidence_quantile;
    double reliable_distance_quantile;

    SelectOptions() : SelectOptions(asfda_select_options_default().budget) {}
    explicit SelectOptions(std::size_t budget_) {
        const AsfdaSelectOptions d = asfda_select_options_default();
        method = static_cast<SelectMethod>(d.method);
        budget = budget_;
        seed = d.seed;
        w_dkd = d.w_dkd;
        w_asd = d.w_asd;
        gap = static_cast<GapKind>(d.gap);
        duplicate_fraction = d.duplicate_fraction;
        reliable_confidence_quantile = d.reliable_confidence_quantile;
        reliable_distance_quantile = d.reliable_distance_quantile;
    }
    AsfdaSelectOptions to_c() const noexcept {
        AsfdaSelectOptions c = asfda_select_options_default();
        c.method = static_cast<int32_t>(method);
        c.budget = budget;
        c.seed = seed;
        c.w_dkd = w_dkd;
        c.w_asd = w_asd;
        c.gap = static_cast<int32_t>(gap);
        c.duplicate_fraction = duplicate_fraction;
        c.reliable_confidence_quantile = reliable_confidence_quantile;
        c.reliable_distance_quantile = reliable_distance_quantile;
        return c;
    }
};

/// One pick: the volume's id and its score components when it was picked (see AsfdaPick).
struct Pick {
    std::string id;
    AsfdaPick components;  // index (into the scores given to select), order, gap, ranks, combined
};

/// The result of select(): ordered picks and the reliable set. Immutable.
class Selection : public detail::Owned<AsfdaSelection, asfda_selection_free> {
public:
    explicit Selection(AsfdaSelection *adopt) noexcept : Owned(adopt) {}
    /// Reads the JSON of to_json() (or the CLI's `asfda select`); exact round trip.
    static Selection from_json(const std::string &json) {
        AsfdaSelection *out = nullptr;
        detail::check(asfda_selection_from_json(json.c_str(), &out));
        return Selection(out);
    }

    /// Number of picks.
    std::size_t size() const {
        require();
        return asfda_selection_count(get());
    }
    /// Pick `i` (0 = picked first); Error(ASFDA_STATUS_INVALID_ARGUMENT) when out of range.
    Pick pick(std::size_t i) const {
        Pick p{};
        detail::check(asfda_selection_pick(get(), i, &p.components));
        p.id = borrowed(asfda_selection_pick_id(get(), i));
        return p;
    }
    std::vector<Pick> picks() const {
        std::vector<Pick> out;
        const std::size_t n = size();
        out.reserve(n);
        for (std::size_t i = 0; i < n; i++) out.push_back(pick(i));
        return out;
    }
    /// Ids of the reliable volumes (sorted): unpicked, confident and close to the labeled set,
    /// for FineTuner::add_unlabeled.
    std::vector<std::string> reliable_ids() const {
        require();
        std::vector<std::string> out;
        const std::size_t n = asfda_selection_reliable_count(get());
        for (std::size_t i = 0; i < n; i++) out.push_back(borrowed(asfda_selection_reliable_id(get(), i)));
        return out;
    }
    /// Versioned JSON: method, options, picks with components, reliable ids.
    std::string to_json() const {
        return detail::read_string(
            [this](char *b, std::size_t c, std::size_t *n) { return asfda_selection_to_json(get(), b, c, n); });
    }

private:
    // The count functions answer 0 for NULL; an empty handle is still an error here, as for the
    // other classes.
    void require() const {
        if (!get()) throw Error(ASFDA_STATUS_INVALID_ARGUMENT, "selection is NULL (moved from or released)");
    }
    // The C accessors return a NULL id on error, with the reason in the last error message.
    static std::string borrowed(const char *id) {
        if (!id) throw Error(ASFDA_STATUS_INVALID_ARGUMENT, asfda_last_error_message());
        return id;
    }
};

/// Picks `options.budget` volumes to annotate among the scores whose id is not in `labeled_ids`,
/// and the reliable set of the rest: (scores, labeled, options), the order of Rust's `select`
/// and C's `asfda_select`. `scores` holds every volume of the site, labeled ones included (their
/// embeddings count for diversity); the caller keeps ownership.
inline Selection select(const std::vector<const Score *> &scores, const std::vector<std::string> &labeled_ids,
                        const SelectOptions &options) {
    std::vector<const AsfdaScore *> handles;
    handles.reserve(scores.size());
    for (const Score *s : scores) handles.push_back(s ? s->get() : nullptr);
    std::vector<const char *> ids;
    ids.reserve(labeled_ids.size());
    for (const std::string &id : labeled_ids) ids.push_back(id.c_str());
    const AsfdaSelectOptions c = options.to_c();
    AsfdaSelection *out = nullptr;
    detail::check(asfda_select(handles.data(), handles.size(), ids.empty() ? nullptr : ids.data(), ids.size(), &c,
                               &out));
    return Selection(out);
}
inline Selection select(const std::vector<Score> &scores, const std::vector<std::string> &labeled_ids,
                        const SelectOptions &options) {
    std::vector<const Score *> ptrs;
    ptrs.reserve(scores.size());
    for (const Score &s : scores) ptrs.push_back(&s);
    return select(ptrs, labeled_ids, options);
}
/// Nothing labeled yet.
inline Selection select(const std::vector<const Score *> &scores, const SelectOptions &options) {
    return select(scores, {}, options);
}
inline Selection select(const std::vector<Score> &scores, const SelectOptions &options) {
    return select(scores, {}, options);
}
/// The default ASFDA selection with `budget` picks, nothing labeled yet.
inline Selection select(const std::vector<Score> &scores, std::size_t budget) {
    return select(scores, {}, SelectOptions(budget));
}

/// Fine-tuning settings; defaults from asfda_finetune_options_default().
struct FineTuneOptions {
    std::array<std::size_t, 3> patch_size;  // z, y, x model-grid voxels; all 0: the model's own
    std::size_t batch_size;
    std::uint64_t total_steps;  // length of the lr and pseudo-weight schedules
    double lr;                  // 0: the manifest's
    double weight_decay;        // negative: the manifest's
    double poly_exponent;
    double foreground_fraction;
    double labeled_fraction;
    double pseudo_label_threshold;
    double ramp_fraction;
    std::uint64_t pseudo_label_refresh_every;  // 0: never
    double pseudo_label_min_dice;              // 0: always use pseudo-labels
    std::uint64_t seed;

    FineTuneOptions() {
        const AsfdaFineTuneOptions d = asfda_finetune_options_default();
        patch_size = {d.patch_size[0], d.patch_size[1], d.patch_size[2]};
        batch_size = d.batch_size;
        total_steps = d.total_steps;
        lr = d.lr;
        weight_decay = d.weight_decay;
        poly_exponent = d.poly_exponent;
        foreground_fraction = d.foreground_fraction;
        labeled_fraction = d.labeled_fraction;
        pseudo_label_threshold = d.pseudo_label_threshold;
        ramp_fraction = d.ramp_fraction;
        pseudo_label_refresh_every = d.pseudo_label_refresh_every;
        pseudo_label_min_dice = d.pseudo_label_min_dice;
        seed = d.seed;
    }
    AsfdaFineTuneOptions to_c() const noexcept {
        AsfdaFineTuneOptions c = asfda_finetune_options_default();
        for (int i = 0; i < 3; i++) c.patch_size[i] = patch_size[static_cast<std::size_t>(i)];
        c.batch_size = batch_size;
        c.total_steps = total_steps;
        c.lr = lr;
        c.weight_decay = weight_decay;
        c.poly_exponent = poly_exponent;
        c.foreground_fraction = foreground_fraction;
        c.labeled_fraction = labeled_fraction;
        c.pseudo_label_threshold = pseudo_label_threshold;
        c.ramp_fraction = ramp_fraction;
        c.pseudo_label_refresh_every = pseudo_label_refresh_every;
        c.pseudo_label_min_dice = pseudo_label_min_dice;
        c.seed = seed;
        return c;
    }
};

/// What one FineTuner::step did (loss, loss_ce, loss_dice, lr, lambda, step, patches by kind).
using StepReport = AsfdaStepReport;

/// How well the model making the pseudo-labels segments the annotated volumes
/// (FineTuner::check_pseudo_labels).
struct PseudoLabelCheck {
    std::vector<double> dice;  // per class, index 0 = background
    double foreground_dice;    // mean over the foreground classes
    bool trusted;              // foreground_dice >= pseudo_label_min_dice: pseudo-labels are used
};

/// A fine-tuning run on an engine's bundle (independent of the engine afterwards). Not
/// thread-safe: use one FineTuner from one thread at a time.
class FineTuner : public detail::Owned<AsfdaFineTuner, asfda_finetuner_free> {
public:
    explicit FineTuner(AsfdaFineTuner *adopt) noexcept : Owned(adopt) {}
    /// Starts from the bundle's checkpoint.
    explicit FineTuner(const Engine &engine, const FineTuneOptions &options = FineTuneOptions())
        : Owned(create(engine, options)) {}

    /// Continues a run saved with save(); no options = the saved ones. Add the same volumes again.
    static FineTuner resume(const Engine &engine, const std::string &path,
                            const std::optional<FineTuneOptions> &options = std::nullopt) {
        AsfdaFineTuneOptions c{};
        if (options) c = options->to_c();
        AsfdaFineTuner *out = nullptr;
        detail::check(asfda_finetuner_resume(engine.get(), path.c_str(), options ? &c : nullptr, &out));
        return FineTuner(out);
    }
    /// An annotated volume; `label` on `image`'s grid, class indices 0..classes-1; `id` unique.
    void add_labeled(const std::string &id, const Volume &image, const Volume &label) {
        detail::check(asfda_finetuner_add_labeled(get(), id.c_str(), image.get(), label.get()));
    }
    /// An unannotated (reliable) volume, pseudo-labelled now; returns the share of voxels kept.
    double add_unlabeled(const std::string &id, const Volume &image) {
        double kept = 0;
        detail::check(asfda_finetuner_add_unlabeled(get(), id.c_str(), image.get(), &kept));
        return kept;
    }
    /// One AdamW step on a batch of patches.
    StepReport step() {
        StepReport r{};
        detail::check(asfda_finetune_step(get(), &r));
        return r;
    }
    /// Classes of the model, background included.
    std::size_t classes() const {
        std::size_t n = 0;
        detail::check(asfda_finetuner_classes(get(), &n));
        return n;
    }
    /// Steps taken in this run (resumed ones included).
    std::uint64_t steps_done() const {
        std::uint64_t n = 0;
        detail::check(asfda_finetuner_steps_done(get(), &n));
        return n;
    }
    /// Dice per class (index 0 = background) of the current weights, averaged over the pairs
    /// images[i] / labels[i].
    std::vector<double> evaluate(const std::vector<const Volume *> &images,
                                 const std::vector<const Volume *> &labels) const {
        if (images.size() != labels.size())
            throw Error(ASFDA_STATUS_INVALID_ARGUMENT, "evaluate: " + std::to_string(images.size()) + " images but " +
                                                           std::to_string(labels.size()) + " labels");
        std::vector<const AsfdaVolume *> im, lb;
        for (const Volume *v : images) im.push_back(v ? v->get() : nullptr);
        for (const Volume *v : labels) lb.push_back(v ? v->get() : nullptr);
        std::vector<double> dice(classes());
        detail::check(asfda_finetuner_evaluate(get(), im.data(), lb.data(), im.size(), dice.data(), dice.size()));
        return dice;
    }
    std::vector<double> evaluate(const std::vector<Volume> &images, const std::vector<Volume> &labels) const {
        std::vector<const Volume *> im, lb;
        for (const Volume &v : images) im.push_back(&v);
        for (const Volume &v : labels) lb.push_back(&v);
        return evaluate(im, lb);
    }
    /// Segments the annotated volumes with the model that makes the pseudo-labels and compares
    /// with the annotations; step() makes this check itself and uses pseudo-labels only if
    /// trusted.
    PseudoLabelCheck check_pseudo_labels() {
        PseudoLabelCheck c{std::vector<double>(classes()), 0.0, false};
        detail::check(asfda_finetuner_check_pseudo_labels(get(), c.dice.data(), c.dice.size(), &c.foreground_dice,
                                                          &c.trusted));
        return c;
    }
    /// Saves the run crash-safely (temp file + rename).
    void save_checkpoint(const std::string &path) const { detail::check(asfda_finetuner_save_checkpoint(get(), path.c_str())); }
    /// Writes the adapted bundle to the new folder `dir` (must not exist).
    void export_bundle(const std::string &dir) const {
        detail::check(asfda_finetuner_export_bundle(get(), dir.c_str()));
    }
    /// Switches `engine` (same bundle) to the fine-tuned weights.
    void apply_to(Engine &engine) const { detail::check(asfda_finetuner_apply_to(get(), engine.get())); }

private:
    static AsfdaFineTuner *create(const Engine &engine, const FineTuneOptions &options) {
        const AsfdaFineTuneOptions c = options.to_c();
        AsfdaFineTuner *out = nullptr;
        detail::check(asfda_finetuner_new(engine.get(), &c, &out));
        return out;
    }
};

// ---- Log callback ------------------------------------------------------------------------------
// The decisions asfda makes on its own (device "auto" falling back to the CPU, pseudo-labels
// withheld, a volume resampled, the ONNX Runtime loaded, memory estimates) as log messages; see
// asfda_set_log_callback in asfda.h.

/// Severity of a log message; lower is more severe.
enum class LogLevel : int32_t {
    Error = ASFDA_LOG_ERROR,
    Warn = ASFDA_LOG_WARN,
    Info = ASFDA_LOG_INFO,
    Debug = ASFDA_LOG_DEBUG
};

/// Receives one message (an English sentence; its wording is not an API). Runs on the thread that
/// made the decision, which may be any thread calling asfda, possibly on several at once; it must
/// return quickly and must not call asfda. An exception it throws is swallowed (it must not
/// cross the C boundary).
using LogCallback = std::function<void(LogLevel level, const std::string &message)>;

namespace detail {

struct LogState {
    std::mutex mutex;             // orders set_log_callback calls
    LogCallback *current = nullptr;
};

/// Never destroyed: a thread still inside asfda at exit may log.
inline LogState &log_state() {
    static LogState *state = new LogState();
    return *state;
}

inline void log_trampoline(void *user_data, AsfdaLogLevel level, const char *message) noexcept {
    try {
        (*static_cast<const LogCallback *>(user_data))(static_cast<LogLevel>(level), message ? message : "");
    } catch (...) {
    }
}

}  // namespace detail

/// Sends asfda's log messages of `max_level` or more severe to `callback`, for the whole process
/// (every engine and model), replacing the previous callback; an empty callback turns logging
/// off. The callback is kept alive here until it is replaced.
inline void set_log_callback(LogCallback callback, LogLevel max_level = LogLevel::Debug) {
    detail::LogState &state = detail::log_state();
    std::lock_guard<std::mutex> lock(state.mutex);
    std::unique_ptr<LogCallback> next(callback ? new LogCallback(std::move(callback)) : nullptr);
    detail::check(asfda_set_log_callback(next ? &detail::log_trampoline : nullptr, next.get(),
                                         static_cast<int32_t>(max_level)));
    // Once asfda_set_log_callback has returned, asfda never calls the previous callback again.
    delete state.current;
    state.current = next.release();
}
// ---- end of the log callback block --------------------------------------------------------------

}  // namespace asfda

// Adding a class for a new C handle in the same style (see Selection, FineTuner):
// - derive from detail::Owned<CType, asfda_ctype_free>, with an explicit adopting constructor;
// - an options struct owns its strings, starts from asfda_*_options_default() and has to_c();
// - every C call goes through detail::check(status); out-handles are wrapped (Selection(out))
//   right after the call, before anything else can throw;
// - long calls with an AsfdaProgressFn use detail::ProgressBridge exactly as Engine::score does:
//   call, wrap the result, bridge.rethrow_if_thrown(), then detail::check(status);
// - functions taking several handles take `const std::vector<T>&` (and `const std::vector<const
//   T *>&`) and pass an array of C pointers built from get() (ownership stays with the caller).

#endif  // ASFDA_HPP
