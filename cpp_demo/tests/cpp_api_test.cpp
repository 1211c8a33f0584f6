// C++17 consumer of asfda through the RAII wrapper asfda.hpp, against an installed tree: every
// wrapper class, error paths throwing asfda::Error with the right status, move semantics, a
// cancelling and a throwing progress callback, and concurrent use. Also built with ASan+UBSan
// (cpp_api_asan), where LeakSanitizer fails the run if any handle is leaked.
// usage: cpp_api_test IMAGE.nii MODEL.onnx WORK_DIR BUNDLE_DIR
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "asfda.hpp"

namespace {

// Handles own their C object alone: no copies, cheap non-throwing moves.
static_assert(!std::is_copy_constructible_v<asfda::Volume> && !std::is_copy_assignable_v<asfda::Volume>);
static_assert(!std::is_copy_constructible_v<asfda::Engine> && !std::is_copy_constructible_v<asfda::Score>);
static_assert(!std::is_copy_constructible_v<asfda::Model>);
static_assert(std::is_nothrow_move_constructible_v<asfda::Volume> && std::is_nothrow_move_assignable_v<asfda::Volume>);
static_assert(std::is_nothrow_move_constructible_v<asfda::Engine> && std::is_nothrow_move_constructible_v<asfda::Score>);
static_assert(std::is_nothrow_move_constructible_v<asfda::Model>);
static_assert(std::is_base_of_v<std::runtime_error, asfda::Error>);

int failures = 0;
int checks = 0;

void expect(bool cond, const char *what, int line) {
    checks++;
    if (!cond) {
        std::fprintf(stderr, "line %d: FAILED: %s\n", line, what);
        failures++;
    }
}
#define EXPECT(cond) expect((cond), #cond, __LINE__)

// `fn` must throw asfda::Error with `status` and a message containing `needle`.
template <class Fn>
void expect_error(Fn &&fn, AsfdaStatus status, const std::string &needle, int line) {
    checks++;
    try {
        fn();
    } catch (const asfda::Error &e) {
        if (e.status() != status || std::string(e.what()).find(needle) == std::string::npos) {
            std::fprintf(stderr, "line %d: expected %s containing '%s', got %s: '%s'\n", line,
                         asfda_status_name(status), needle.c_str(), e.status_name(), e.what());
            failures++;
        }
        return;
    }
    std::fprintf(stderr, "line %d: expected %s, nothing was thrown\n", line, asfda_status_name(status));
    failures++;
}
#define EXPECT_ERROR(expr, status, needle) expect_error([&] { (void)(expr); }, (status), (needle), __LINE__)

void write_file(const std::string &path, const std::string &bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
}

void test_runtime() {
    EXPECT(asfda::version() == ASFDA_VERSION);
    EXPECT_ERROR(asfda::load_runtime("/no/such/libonnxruntime.so"), ASFDA_STATUS_RUNTIME_UNAVAILABLE,
                 "/no/such/libonnxruntime.so");
    asfda::load_runtime();  // resolution order: beside the installed libasfda.so
    const std::string info = asfda::runtime_info_json();
    EXPECT(info.find("\"ort_version\":\"") != std::string::npos);
    EXPECT(info.find("\"library_source\":\"beside_library\"") != std::string::npos);
    // One ONNX Runtime per process: another file is refused, naming the loaded one.
    EXPECT_ERROR(asfda::load_runtime("/tmp/other/libonnxruntime.so"), ASFDA_STATUS_RUNTIME_UNAVAILABLE,
                 "already loaded");
}

void test_volume(const std::string &image, const std::string &work) {
    const asfda::Volume vol = asfda::Volume::load(image);
    EXPECT(static_cast<bool>(vol));
    EXPECT((vol.dims() == asfda::Dims{33, 41, 25}) && vol.channels() == 1);
    const asfda::Spacing sp = vol.spacing();
    EXPECT(std::fabs(sp[0] - 2) < 1e-6 && std::fabs(sp[1] - 2) < 1e-6 && std::fabs(sp[2] - 2) < 1e-6);
    const asfda::Affine ras = vol.affine();
    const asfda::Affine lps = vol.affine(asfda::Convention::LPS);
    EXPECT(ras[0] < 0 && lps[0] > 0 && ras[0] == -lps[0]);  // LAS file: x runs left
    EXPECT(vol.size() == 33u * 41u * 25u && vol.data() != nullptr);
    const std::vector<float> voxels = vol.voxels();
    EXPECT(voxels.size() == vol.size() && std::memcmp(voxels.data(), vol.data(), voxels.size() * sizeof(float)) == 0);

    const asfda::Volume canon = vol.to_canonical();
    EXPECT(canon.affine()[0] > 0);
    EXPECT_ERROR(vol.check_same_grid(canon), ASFDA_STATUS_GEOMETRY_MISMATCH, "label map");

    const std::string path = work + "/roundtrip.nii.gz";
    vol.save(path);
    const asfda::Volume back = asfda::Volume::load(path);
    vol.check_same_grid(back);
    EXPECT(back.voxels() == voxels);
    EXPECT_ERROR(vol.save(path, static_cast<asfda::OutputType>(9)), ASFDA_STATUS_INVALID_ARGUMENT, "output type");

    // Load errors, each with its status and a message naming the problem.
    EXPECT_ERROR(asfda::Volume::load(work + "/missing.nii"), ASFDA_STATUS_IO, "missing.nii");
    write_file(work + "/garbage.nii", std::string(600, 'x'));
    EXPECT_ERROR(asfda::Volume::load(work + "/garbage.nii"), ASFDA_STATUS_FORMAT, "garbage.nii");
    asfda::ReadOptions small;
    small.max_voxels = 1000;
    EXPECT_ERROR(asfda::Volume::load(image, small), ASFDA_STATUS_TOO_LARGE, "1000");
    asfda::ReadOptions bad;
    bad.nonfinite = static_cast<asfda::NonFinite>(42);
    EXPECT_ERROR(asfda::Volume::load(image, bad), ASFDA_STATUS_INVALID_ARGUMENT, "nonfinite");
    // The defaults are the library's own.
    const AsfdaReadOptions c_defaults = asfda_read_options_default();
    const AsfdaReadOptions cpp_defaults = asfda::ReadOptions().to_c();
    EXPECT(cpp_defaults.max_voxels == c_defaults.max_voxels && cpp_defaults.nonfinite == c_defaults.nonfinite);
}

void test_from_buffer() {
    std::vector<float> f(2 * 3 * 4);
    for (std::size_t i = 0; i < f.size(); i++) f[i] = static_cast<float>(i);
    const asfda::Affine affine{2, 0, 0, 10, 0, 2, 0, 20, 0, 0, 3, 30, 0, 0, 0, 1};
    const asfda::Volume v = asfda::Volume::from_voxels(f, {2, 3, 4}, 1, affine, asfda::Convention::LPS,
                                                       asfda::Spacing{2, 2, 3});
    const asfda::Affine ras = v.affine();
    EXPECT(ras[0] == -2 && ras[3] == -10 && ras[5] == -2 && ras[7] == -20 && ras[10] == 3);  // LPS -> RAS
    EXPECT(v.voxels() == f);

    const std::vector<std::int16_t> s{-3, 0, 7, 1000, -32768, 32767};
    const asfda::Volume vs = asfda::Volume::from_voxels(s, {3, 2, 1}, 1, affine);
    EXPECT((vs.voxels() == std::vector<float>{-3, 0, 7, 1000, -32768, 32767}));

    EXPECT_ERROR(asfda::Volume::from_buffer(f.data(), f.size() * 4 - 4, ASFDA_DTYPE_F32, {2, 3, 4}, 1, affine),
                 ASFDA_STATUS_INVALID_ARGUMENT, "92");
    EXPECT_ERROR(asfda::Volume::from_buffer(f.data(), f.size() * 4, static_cast<AsfdaDataType>(3), {2, 3, 4}, 1,
                                            affine),
                 ASFDA_STATUS_INVALID_ARGUMENT, "dtype");
    EXPECT_ERROR(asfda::Volume::from_voxels(f, {2, 3, 4}, 1, affine, static_cast<asfda::Convention>(7)),
                 ASFDA_STATUS_INVALID_ARGUMENT, "convention");
    EXPECT_ERROR(asfda::Volume::from_voxels(f, {2, 3, 4}, 1, affine, asfda::Convention::RAS, asfda::Spacing{1, 1, 1}),
                 ASFDA_STATUS_GEOMETRY_MISMATCH, "spacing");
    const asfda::Affine singular{1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    EXPECT_ERROR(asfda::Volume::from_voxels(f, {2, 3, 4}, 1, singular), ASFDA_STATUS_INVALID_DATA, "affine");
}

void test_moves(const std::string &image) {
    asfda::Volume a = asfda::Volume::load(image);
    const AsfdaVolume *raw = a.get();
    asfda::Volume b = std::move(a);
    EXPECT(!a && a.get() == nullptr && b && b.get() == raw);
    // A moved-from handle is empty: using it is an error, not a crash.
    EXPECT_ERROR(a.dims(), ASFDA_STATUS_INVALID_ARGUMENT, "volume");
    EXPECT_ERROR(a.save("/tmp/never-written.nii"), ASFDA_STATUS_INVALID_ARGUMENT, "volume");

    // Move assignment frees the handle it replaces (LeakSanitizer checks that in cpp_api_asan).
    asfda::Volume c = b.to_canonical();
    c = std::move(b);
    EXPECT(c.get() == raw && !b);
    c = asfda::Volume::load(image);
    EXPECT(c && c.get() != nullptr);

    // Containers move handles when they grow.
    std::vector<asfda::Volume> many;
    for (int i = 0; i < 5; i++) many.push_back(asfda::Volume::load(image));
    for (const asfda::Volume &v : many) EXPECT(v.dims()[0] == 33);

    // release() hands ownership back to C.
    AsfdaVolume *released = many.back().release();
    EXPECT(released != nullptr && !many.back());
    asfda_volume_free(released);
    asfda::Volume adopted(asfda::Volume::load(image).release());
    EXPECT(adopted.channels() == 1);
}

void test_model(const std::string &image, const std::string &model_path, const std::string &work) {
    asfda::RuntimeOptions opts;
    opts.device = "cpu";
    const asfda::Model model = asfda::Model::load(model_path, opts);
    EXPECT(model.device() == "cpu");
    const asfda::Volume vol = asfda::Volume::load(image);
    const asfda::Volume probs = model.run(vol);
    EXPECT(probs.channels() == 2 && (probs.dims() == asfda::Dims{33, 41, 25}));
    const std::vector<float> p = probs.voxels();
    const std::size_t n = p.size() / 2;
    bool softmax = n > 0;
    for (std::size_t i = 0; i < n; i++) softmax = softmax && std::fabs(p[i] + p[i + n] - 1.0f) < 1e-5f;
    EXPECT(softmax);

    asfda::Model moved = asfda::Model::load(model_path, opts);
    asfda::Model target = std::move(moved);
    EXPECT(!moved && target.device() == "cpu");
    EXPECT_ERROR(moved.run(vol), ASFDA_STATUS_INVALID_ARGUMENT, "model");

    opts.device = "tpu";
    EXPECT_ERROR(asfda::Model::load(model_path, opts), ASFDA_STATUS_INVALID_ARGUMENT, "cuda:<id>");
    opts.device = "cpu";
    EXPECT_ERROR(asfda::Model::load("/no/model.onnx", opts), ASFDA_STATUS_IO, "/no/model.onnx");
    write_file(work + "/not-a-model.onnx", std::string(600, 'x'));
    EXPECT_ERROR(asfda::Model::load(work + "/not-a-model.onnx", opts), ASFDA_STATUS_MODEL, "not-a-model.onnx");
}

struct CallbackFailure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

void test_engine(const std::string &image, const std::string &bundle) {
    // Defaults come from the library.
    const asfda::EngineOptions defaults;
    const AsfdaEngineOptions c_defaults = asfda_engine_options_default();
    EXPECT(defaults.tile_overlap == c_defaults.tile_overlap && defaults.tiles_per_batch == c_defaults.tiles_per_batch);
    EXPECT(defaults.mirror == c_defaults.mirror && defaults.bundle_path.empty());

    EXPECT_ERROR(asfda::Engine{asfda::EngineOptions()}, ASFDA_STATUS_INVALID_ARGUMENT, "bundle_path");
    EXPECT_ERROR(asfda::Engine{asfda::EngineOptions("/no/such/bundle")}, ASFDA_STATUS_IO, "/no/such/bundle");
    asfda::EngineOptions opts(bundle);
    opts.tile_overlap = 1.5;
    EXPECT_ERROR(asfda::Engine{opts}, ASFDA_STATUS_INVALID_ARGUMENT, "overlap");
    opts.tile_overlap = 0.5;
    opts.device = "gpu";
    EXPECT_ERROR(asfda::Engine{opts}, ASFDA_STATUS_INVALID_ARGUMENT, "cuda:<id>");
    opts.device = "cpu";
    const asfda::Engine engine(opts);
    EXPECT(engine.device() == "cpu");

    const asfda::Volume vol = asfda::Volume::load(image);
    int calls = 0;
    bool in_range = true;
    const asfda::Score score = engine.score(vol, "anatomical", [&](double f) {
        calls++;
        in_range = in_range && f >= 0 && f <= 1;
        return true;
    });
    EXPECT(calls >= 1 && in_range);
    const AsfdaScoreValues v = score.values();
    EXPECT(v.gap_kl >= 0 && v.gap_anchor >= 0 && v.asd >= 0 && v.asd <= 1);
    EXPECT(v.confidence >= 0 && v.confidence <= 1 && v.embedding_len == 64);
    EXPECT(score.asd() == v.asd && score.gap_kl() == v.gap_kl && score.gap_anchor() == v.gap_anchor);
    EXPECT(score.confidence() == v.confidence && score.foreground_fraction() == v.foreground_fraction);
    EXPECT(score.asd_threshold() == v.asd_threshold);
    const std::vector<float> e = score.embedding();
    double norm = 0;
    for (float x : e) norm += double(x) * x;
    EXPECT(e.size() == 64 && std::fabs(norm - 1.0) < 1e-4);

    // JSON round trip is exact.
    const std::string json = score.to_json();
    EXPECT(json.find("anatomical") != std::string::npos);
    const asfda::Score back = asfda::Score::from_json(json);
    EXPECT(back.asd() == v.asd && back.gap_kl() == v.gap_kl && back.embedding() == e && back.to_json() == json);
    EXPECT_ERROR(asfda::Score::from_json("{\"format_version\": 99}"), ASFDA_STATUS_UNSUPPORTED, "99");
    EXPECT_ERROR(asfda::Score::from_json("not json"), ASFDA_STATUS_FORMAT, "");

    // A callback returning false cancels; the engine stays usable.
    EXPECT_ERROR(engine.score(vol, "x", [](double) { return false; }), ASFDA_STATUS_CANCELLED, "cancel");
    EXPECT_ERROR(engine.segment(vol, [](double) { return false; }), ASFDA_STATUS_CANCELLED, "cancel");

    // A callback that throws: the exception is caught before the C boundary, the work is
    // cancelled, and the very same exception reaches the caller after the C call returned.
    int throwing_calls = 0;
    try {
        (void)engine.score(vol, "x", [&](double) -> bool {
            throwing_calls++;
            throw CallbackFailure("host says stop");
        });
        EXPECT(!"a throwing callback must throw from score()");
    } catch (const CallbackFailure &err) {
        EXPECT(std::string(err.what()) == "host says stop");
    } catch (const asfda::Error &err) {
        std::fprintf(stderr, "got asfda::Error %s instead of the callback's exception\n", err.status_name());
        EXPECT(!"the callback's own exception type must come through");
    }
    EXPECT(throwing_calls == 1);  // never called again once it threw
    int segment_calls = 0;
    try {
        (void)engine.segment(vol, [&](double) -> bool {
            if (++segment_calls == 1) throw std::out_of_range("segment callback");
            return true;
        });
        EXPECT(!"a throwing callback must throw from segment()");
    } catch (const std::out_of_range &err) {
        EXPECT(std::string(err.what()) == "segment callback");
    }
    EXPECT(segment_calls == 1);

    // Still usable, and deterministic: the same volume scores the same.
    const asfda::Score again = engine.score(vol, "anatomical");
    EXPECT(again.to_json() == json);
    const asfda::Volume labels = engine.segment(vol);
    vol.check_same_grid(labels);
    bool classes_ok = labels.channels() == 1;
    for (float l : labels.voxels()) classes_ok = classes_ok && l >= 0 && l <= 3 && l == std::floor(l);
    EXPECT(classes_ok);

    // The optional maps: probabilities sum to 1, entropy in [0, 1], labels as before.
    const asfda::Segmentation maps = engine.segment_maps(vol, asfda::SegmentOutputs{true, true});
    EXPECT(maps.probabilities && maps.entropy && maps.probabilities->channels() == 4);
    EXPECT(maps.labels.voxels() == labels.voxels());
    if (maps.probabilities && maps.entropy) {
        const std::vector<float> p = maps.probabilities->voxels();
        const std::vector<float> h = maps.entropy->voxels();
        const std::size_t n = h.size();
        bool ok = p.size() == 4 * n;
        for (std::size_t i = 0; ok && i < n; i++)
            ok = std::fabs(p[i] + p[n + i] + p[2 * n + i] + p[3 * n + i] - 1.0f) < 1e-5f && h[i] >= 0 && h[i] <= 1;
        EXPECT(ok);
    }
    const asfda::Segmentation only_labels = engine.segment_maps(vol, asfda::SegmentOutputs{});
    EXPECT(!only_labels.probabilities && !only_labels.entropy);

    // A cancellation token: triggered before the call, the call throws CANCELLED; once reset,
    // the same token serves a call to the end.
    const asfda::Cancel token;
    token.cancel();
    EXPECT(token.triggered());
    EXPECT_ERROR(engine.score(vol, "x", {}, &token), ASFDA_STATUS_CANCELLED, "cancel");
    token.reset();
    EXPECT(!token.triggered() && engine.score(vol, "anatomical", {}, &token).to_json() == json);

    // Two threads scoring with one engine get the serial result.
    std::vector<std::string> results(2);
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; t++)
        threads.emplace_back([&, t] { results[t] = engine.score(vol, "anatomical").to_json(); });
    for (auto &th : threads) th.join();
    EXPECT(results[0] == json && results[1] == json);

    // Moves of scores and engines.
    asfda::Score s1 = asfda::Score::from_json(json);
    asfda::Score s2 = std::move(s1);
    EXPECT(!s1 && s2.asd() == v.asd);
    EXPECT_ERROR(s1.values(), ASFDA_STATUS_INVALID_ARGUMENT, "score");
    asfda::Engine e1(opts);
    asfda::Engine e2 = std::move(e1);
    EXPECT(!e1 && e2.device() == "cpu");
    EXPECT_ERROR(e1.score(vol, "x"), ASFDA_STATUS_INVALID_ARGUMENT, "engine");
}

// The thread-local last error: each thread's exception carries its own message.
void test_threads(const std::string &image) {
    const asfda::Volume vol = asfda::Volume::load(image);
    const std::vector<float> reference = vol.voxels();
    std::atomic<int> mismatches{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 10; i++) {
                if (vol.voxels() != reference) mismatches++;
                if (asfda::Volume::load(image).voxels() != reference) mismatches++;
                const std::string bad = "/nonexistent/thread-" + std::to_string(t) + ".nii";
                try {
                    (void)asfda::Volume::load(bad);
                    mismatches++;
                } catch (const asfda::Error &e) {
                    if (e.status() != ASFDA_STATUS_IO || std::string(e.what()).find(bad) == std::string::npos)
                        mismatches++;
                }
            }
        });
    }
    for (auto &th : threads) th.join();
    EXPECT(mismatches == 0);
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 5) {
        std::fprintf(stderr, "usage: %s IMAGE.nii MODEL.onnx WORK_DIR BUNDLE_DIR\n", argv[0]);
        return 2;
    }
    try {
        test_runtime();
        test_volume(argv[1], argv[3]);
        test_from_buffer();
        test_moves(argv[1]);
        test_model(argv[1], argv[2], argv[3]);
        test_engine(argv[1], argv[4]);
        test_threads(argv[1]);
    } catch (const asfda::Error &e) {
        std::fprintf(stderr, "unexpected asfda::Error %s: %s\n", e.status_name(), e.what());
        return 1;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "unexpected exception: %s\n", e.what());
        return 1;
    }
    if (failures) {
        std::fprintf(stderr, "%d of %d checks failed\n", failures, checks);
        return 1;
    }
    std::printf("cpp_api_test: all %d checks passed\n", checks);
    return 0;
}
