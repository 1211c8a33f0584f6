// C++17 consumer of asfda through the RAII wrapper asfda.hpp, against an installed tree: every
// wrapper class, error paths throwing asfda::Error with the right status, move semantics, a
// cancelling and a throwing progress callback, and concurrent use. Also built with ASan+UBSan
// (cpp_api_asan), where LeakSanitizer fails the run if any handle is leaked.
// Selection runs on scores read from JSON; fine-tuning takes a few steps on crops of synthetic
// target-site volumes (data folder from ASFDA_TEST_DATA, set by ctest).
// usage: cpp_api_test IMAGE.nii MODEL.onnx WORK_DIR BUNDLE_DIR
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
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
static_assert(!std::is_copy_constructible_v<asfda::Selection> && !std::is_copy_constructible_v<asfda::FineTuner>);
static_assert(std::is_nothrow_move_constructible_v<asfda::Selection> &&
              std::is_nothrow_move_assignable_v<asfda::FineTuner>);
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
    EXPECT_ERROR(asfda::Volume::load_dicom({work + "/missing_series"}), ASFDA_STATUS_IO, "missing_series");
    EXPECT_ERROR(asfda::Volume::load_dicom({}), ASFDA_STATUS_INVALID_ARGUMENT, "n_paths is 0");
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
    const asfda::Volume probs = model.run_volume(vol);
    EXPECT(probs.channels() == 2 && (probs.dims() == asfda::Dims{33, 41, 25}));
    const std::vector<float> p = probs.voxels();
    const std::size_t n = p.size() / 2;
    bool softmax = n > 0;
    for (std::size_t i = 0; i < n; i++) softmax = softmax && std::fabs(p[i] + p[i + n] - 1.0f) < 1e-5f;
    EXPECT(softmax);

    asfda::Model moved = asfda::Model::load(model_path, opts);
    asfda::Model target = std::move(moved);
    EXPECT(!moved && target.device() == "cpu");
    EXPECT_ERROR(moved.run_volume(vol), ASFDA_STATUS_INVALID_ARGUMENT, "model");

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
    EXPECT(defaults.runtime.threads == c_defaults.runtime.threads && defaults.runtime.device.empty());

    EXPECT_ERROR(asfda::Engine{asfda::EngineOptions()}, ASFDA_STATUS_INVALID_ARGUMENT, "bundle_path");
    EXPECT_ERROR(asfda::Engine{asfda::EngineOptions("/no/such/bundle")}, ASFDA_STATUS_IO, "/no/such/bundle");
    asfda::EngineOptions opts(bundle);
    opts.tile_overlap = 1.5;
    EXPECT_ERROR(asfda::Engine{opts}, ASFDA_STATUS_INVALID_ARGUMENT, "overlap");
    opts.tile_overlap = 0.5;
    opts.runtime.device = "gpu";
    EXPECT_ERROR(asfda::Engine{opts}, ASFDA_STATUS_INVALID_ARGUMENT, "cuda:<id>");
    opts.runtime.device = "cpu";
    const asfda::Engine engine(opts);
    EXPECT(engine.device() == "cpu");
    const std::vector<asfda::ClassInfo> classes = engine.classes();
    EXPECT(classes.size() == 4 && classes[0].name == "background" && !classes[0].color && !classes[0].code);
    EXPECT(classes[2].name == "gm" && classes[2].color && (*classes[2].color)[0] == 205);
    EXPECT(classes[2].code && classes[2].code->kind.value == "389081007" && classes[2].code->kind.meaning == "Gray Matter");

    const asfda::Volume vol = asfda::Volume::load(image);
    int calls = 0;
    bool in_range = true;
    const asfda::Score score = engine.score("anatomical", vol, nullptr, [&](double f) {
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
    EXPECT_ERROR(engine.score("x", vol, nullptr, [](double) { return false; }), ASFDA_STATUS_CANCELLED, "cancel");
    EXPECT_ERROR(engine.segment(vol, nullptr, [](double) { return false; }), ASFDA_STATUS_CANCELLED, "cancel");

    // A callback that throws: the exception is caught before the C boundary, the work is
    // cancelled, and the very same exception reaches the caller after the C call returned.
    int throwing_calls = 0;
    try {
        (void)engine.score("x", vol, nullptr, [&](double) -> bool {
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
        (void)engine.segment(vol, nullptr, [&](double) -> bool {
            if (++segment_calls == 1) throw std::out_of_range("segment callback");
            return true;
        });
        EXPECT(!"a throwing callback must throw from segment()");
    } catch (const std::out_of_range &err) {
        EXPECT(std::string(err.what()) == "segment callback");
    }
    EXPECT(segment_calls == 1);

    // Still usable, and deterministic: the same volume scores the same.
    const asfda::Score again = engine.score("anatomical", vol);
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
    // One inference for both: the same labels, and the score of score().
    const asfda::ScoredSegmentation both = engine.score_and_segment("anatomical", vol, asfda::SegmentOutputs{false, true});
    EXPECT(both.segmentation.labels.voxels() == labels.voxels() && both.segmentation.entropy);
    EXPECT(both.score.to_json() == engine.score("anatomical", vol).to_json());

    // A cancel token: cancelled before the call, the call throws CANCELLED; once reset,
    // the same token serves a call to the end.
    const asfda::CancelToken token;
    token.cancel();
    EXPECT(token.is_cancelled());
    EXPECT_ERROR(engine.score("x", vol, &token), ASFDA_STATUS_CANCELLED, "cancel");
    token.reset();
    EXPECT(!token.is_cancelled() && engine.score("anatomical", vol, &token).to_json() == json);

    // Two threads scoring with one engine get the serial result.
    std::vector<std::string> results(2);
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; t++)
        threads.emplace_back([&, t] { results[t] = engine.score("anatomical", vol).to_json(); });
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
    EXPECT_ERROR(e1.score("x", vol), ASFDA_STATUS_INVALID_ARGUMENT, "engine");
}

// A score in the JSON form (format_version 1) with a 2-bin histogram holding no voxels.
asfda::Score make_score(const std::string &id, const std::string &embedding, double gap, double asd,
                        double confidence) {
    char json[1024];
    std::snprintf(json, sizeof json,
                  "{\"format_version\":1,\"id\":\"%s\",\"embedding\":[%s],\"gap_kl\":%.17g,\"gap_anchor\":%.17g,"
                  "\"asd\":%.17g,\"asd_threshold\":0.0,\"confidence\":%.17g,\"foreground_fraction\":0.2,"
                  "\"entropy_histogram\":[0,0],\"voxels\":1000,\"foreground_voxels\":0,\"options\":{"
                  "\"foreground_dilation\":2,\"threshold\":\"first_peak\",\"histogram_bins\":2,"
                  "\"peak_smoothing\":5,\"class_balanced\":false,\"variance_floor\":0.01}}",
                  id.c_str(), embedding.c_str(), gap, gap / 10.0, asd, confidence);
    return asfda::Score::from_json(json);
}

void test_select() {
    // Defaults are the library's; the budget constructor sets only the budget.
    const AsfdaSelectOptions c = asfda_select_options_default();
    const asfda::SelectOptions d(3);
    EXPECT(d.budget == 3 && static_cast<int32_t>(d.method) == c.method && d.w_dkd == c.w_dkd);
    EXPECT(d.duplicate_fraction == c.duplicate_fraction && static_cast<int32_t>(d.gap) == c.gap);
    EXPECT(asfda::SelectOptions().budget == c.budget);
    EXPECT(asfda::select_method_from_name("coreset") == asfda::SelectMethod::Coreset);
    EXPECT(asfda::gap_kind_from_name("anchor") == asfda::GapKind::Anchor);
    EXPECT_ERROR(asfda::select_method_from_name("best"), ASFDA_STATUS_INVALID_ARGUMENT, "best");
    EXPECT_ERROR(asfda::gap_kind_from_name("l2"), ASFDA_STATUS_INVALID_ARGUMENT, "l2");

    std::vector<asfda::Score> pool;
    pool.push_back(make_score("a", "1,0,0,0", 9.0, 0.9, 0.95));
    pool.push_back(make_score("b", "0,1,0,0", 5.0, 0.8, 0.5));
    pool.push_back(make_score("c", "0,0,1,0", 4.0, 0.7, 0.6));
    pool.push_back(make_score("d", "0,0,0,1", 3.0, 0.6, 0.7));
    pool.push_back(make_score("lab", "0.7,0.7,0,0", 1.0, 0.1, 0.9));

    // Round 1: "a" has the largest gap and ASD, so it is picked first, with its components.
    const asfda::Selection sel = asfda::select(pool, 2);
    EXPECT(sel.size() == 2);
    const std::vector<asfda::Pick> picks = sel.picks();
    EXPECT(picks.size() == 2 && picks[0].id == "a" && picks[0].components.index == 0);
    EXPECT(picks[0].components.order == 0 && picks[1].components.order == 1 && picks[1].id != "a");
    EXPECT(picks[0].components.diversity == 1.0 && picks[0].components.gap == 9.0);
    EXPECT(std::fabs(picks[0].components.combined -
                     (picks[0].components.dkd_rank + picks[0].components.asd_rank)) < 1e-12);
    const std::vector<std::string> reliable = sel.reliable_ids();
    for (const std::string &id : reliable) EXPECT(id != picks[0].id && id != picks[1].id);
    const std::string json = sel.to_json();
    EXPECT(json.find("\"a\"") != std::string::npos && json.find("reliable") != std::string::npos);
    EXPECT(asfda::Selection::from_json(json).to_json() == json);
    EXPECT_ERROR(asfda::Selection::from_json("{}"), ASFDA_STATUS_FORMAT, "format_version");
    EXPECT_ERROR(sel.pick(2), ASFDA_STATUS_INVALID_ARGUMENT, "2");

    // Round 2 with "a" and "lab" labeled: neither is picked again. Pointer form, other method.
    std::vector<const asfda::Score *> ptrs;
    for (const asfda::Score &s : pool) ptrs.push_back(&s);
    asfda::SelectOptions entropy(1);
    entropy.method = asfda::SelectMethod::Entropy;
    const asfda::Selection round2 = asfda::select(ptrs, {"a", "lab"}, entropy);
    EXPECT(round2.size() == 1 && round2.pick(0).id == "b");  // highest ASD among the rest

    // Error paths: status and a message naming the problem.
    EXPECT_ERROR(asfda::select(pool, 0), ASFDA_STATUS_INVALID_ARGUMENT, "budget");
    EXPECT_ERROR(asfda::select(pool, 6), ASFDA_STATUS_INVALID_ARGUMENT, "budget");
    EXPECT_ERROR(asfda::select(std::vector<asfda::Score>{}, 1), ASFDA_STATUS_INVALID_ARGUMENT, "");
    EXPECT_ERROR(asfda::select(pool, {"nobody"}, asfda::SelectOptions(1)), ASFDA_STATUS_INVALID_ARGUMENT, "nobody");
    EXPECT_ERROR(asfda::select(pool, {"a", "a"}, asfda::SelectOptions(1)), ASFDA_STATUS_INVALID_ARGUMENT, "a");
    asfda::SelectOptions bad(1);
    bad.method = static_cast<asfda::SelectMethod>(77);
    EXPECT_ERROR(asfda::select(pool, bad), ASFDA_STATUS_INVALID_ARGUMENT, "method");
    bad = asfda::SelectOptions(1);
    bad.w_dkd = bad.w_asd = 0;
    EXPECT_ERROR(asfda::select(pool, bad), ASFDA_STATUS_INVALID_ARGUMENT, "w_");
    std::vector<const asfda::Score *> with_null = ptrs;
    with_null.push_back(nullptr);
    EXPECT_ERROR(asfda::select(with_null, asfda::SelectOptions(1)), ASFDA_STATUS_INVALID_ARGUMENT, "");
    pool.push_back(make_score("short", "1,0", 1.0, 0.5, 0.5));
    EXPECT_ERROR(asfda::select(pool, 1), ASFDA_STATUS_INVALID_DATA, "embedding");

    // Moves: a moved-from selection is empty and every method throws.
    asfda::Selection moved = asfda::select(ptrs, asfda::SelectOptions(1));
    asfda::Selection kept = std::move(moved);
    EXPECT(!moved && kept.size() == 1);
    EXPECT_ERROR(moved.size(), ASFDA_STATUS_INVALID_ARGUMENT, "selection");
    EXPECT_ERROR(moved.reliable_ids(), ASFDA_STATUS_INVALID_ARGUMENT, "selection");
    EXPECT_ERROR(moved.pick(0), ASFDA_STATUS_INVALID_ARGUMENT, "selection");
    EXPECT_ERROR(moved.to_json(), ASFDA_STATUS_INVALID_ARGUMENT, "selection");
}

// The block of `v` at voxel `origin` (x, y, z) of `size` voxels; the affine moves with it so
// world positions stay put.
asfda::Volume crop(const asfda::Volume &v, const asfda::Dims &origin, const asfda::Dims &size) {
    const asfda::Dims dims = v.dims();
    const float *src = v.data();
    std::vector<float> out(size[0] * size[1] * size[2]);
    for (std::size_t k = 0; k < size[2]; k++)
        for (std::size_t j = 0; j < size[1]; j++)
            for (std::size_t i = 0; i < size[0]; i++)
                out[i + size[0] * (j + size[1] * k)] =
                    src[origin[0] + i + dims[0] * ((origin[1] + j) + dims[1] * (origin[2] + k))];
    asfda::Affine a = v.affine();
    for (std::size_t r = 0; r < 3; r++)
        for (std::size_t c = 0; c < 3; c++) a[4 * r + 3] += a[4 * r + c] * static_cast<double>(origin[c]);
    return asfda::Volume::from_voxels(out, size, 1, a);
}

void test_finetune(const std::string &bundle, const std::string &data, const std::string &work) {
    const asfda::FineTuneOptions defaults;
    const AsfdaFineTuneOptions c = asfda_finetune_options_default();
    EXPECT(defaults.batch_size == c.batch_size && defaults.total_steps == c.total_steps && defaults.lr == c.lr);
    EXPECT(defaults.patch_size[0] == c.patch_size[0] && defaults.seed == c.seed);

    asfda::EngineOptions eo(bundle);
    eo.runtime.threads = 2;
    asfda::Engine engine(eo);
    const asfda::Dims origin{22, 30, 24}, size{56, 64, 48};
    const asfda::Volume image = crop(asfda::Volume::load(data + "/pd/pool/pd_pool_000_image.nii.gz"), origin, size);
    const asfda::Volume label =
        crop(asfda::Volume::load(data + "/pd/pool_labels/pd_pool_000_label.nii.gz"), origin, size);
    const asfda::Volume shifted =
        crop(asfda::Volume::load(data + "/pd/pool_labels/pd_pool_000_label.nii.gz"), {20, 30, 24}, size);
    const asfda::Volume other = crop(asfda::Volume::load(data + "/pd/pool/pd_pool_002_image.nii.gz"), origin, size);

    asfda::FineTuneOptions o;
    o.batch_size = 0;
    EXPECT_ERROR(asfda::FineTuner(engine, o), ASFDA_STATUS_INVALID_ARGUMENT, "batch_size");
    o.batch_size = 1;
    o.patch_size = {32, 30, 30};
    EXPECT_ERROR(asfda::FineTuner(engine, o), ASFDA_STATUS_INVALID_ARGUMENT, "multiples of 8");
    o.patch_size = {32, 32, 32};
    o.total_steps = 4;
    o.lr = 1e-3;
    o.seed = 5;
    asfda::FineTuner tuner(engine, o);
    EXPECT(tuner.classes() == 4 && tuner.steps_done() == 0);
    EXPECT_ERROR(tuner.step(), ASFDA_STATUS_INVALID_ARGUMENT, "annotated");
    EXPECT_ERROR(tuner.add_labeled("a", image, shifted), ASFDA_STATUS_GEOMETRY_MISMATCH, "grid");
    tuner.add_labeled("a", image, label);
    EXPECT_ERROR(tuner.add_labeled("a", image, label), ASFDA_STATUS_INVALID_ARGUMENT, "already added");
    const double kept = tuner.add_unlabeled("u", other);
    EXPECT(kept > 0 && kept <= 1);

    const std::vector<double> before = tuner.evaluate({&image}, {&label});
    EXPECT(before.size() == 4);
    for (double x : before) EXPECT(x >= 0 && x <= 1);
    for (std::uint64_t s = 1; s <= 2; s++) {
        const asfda::StepReport r = tuner.step();
        EXPECT(r.step == s && std::isfinite(r.loss) && r.loss >= 0 && r.lr > 0);
        EXPECT(r.labeled_in_batch + r.pseudo_in_batch == 1);
    }
    EXPECT(tuner.steps_done() == 2);
    // The unadapted model labels: its check is on the annotation of "a" (model grid).
    const asfda::PseudoLabelCheck check = tuner.check_pseudo_labels();
    EXPECT(check.dice.size() == 4 && check.foreground_dice >= 0 && check.foreground_dice <= 1);
    EXPECT(check.trusted == (check.foreground_dice >= o.pseudo_label_min_dice));
    EXPECT_ERROR(tuner.evaluate({&image}, {}), ASFDA_STATUS_INVALID_ARGUMENT, "1 images but 0 labels");
    EXPECT_ERROR(tuner.evaluate(std::vector<const asfda::Volume *>{}, {}), ASFDA_STATUS_INVALID_ARGUMENT, "count");
    EXPECT_ERROR(tuner.evaluate({&image}, {&shifted}), ASFDA_STATUS_GEOMETRY_MISMATCH, "");

    // Save and resume: the next step of both runs is the same.
    const std::string cp = work + "/cpp_finetune.safetensors";
    EXPECT_ERROR(tuner.save_checkpoint("/no/such/folder/x.safetensors"), ASFDA_STATUS_IO, "/no/such/folder");
    tuner.save_checkpoint(cp);
    EXPECT_ERROR(asfda::FineTuner::resume(engine, "/no/such/cp.safetensors"), ASFDA_STATUS_IO, "/no/such/cp");
    write_file(work + "/not-a-checkpoint.safetensors", "garbage");
    EXPECT_ERROR(asfda::FineTuner::resume(engine, work + "/not-a-checkpoint.safetensors"), ASFDA_STATUS_FORMAT,
                 "not-a-checkpoint");
    asfda::FineTuner resumed = asfda::FineTuner::resume(engine, cp);
    EXPECT(resumed.steps_done() == 2);
    resumed.add_unlabeled("u", other);
    resumed.add_labeled("a", image, label);
    const asfda::StepReport a = tuner.step(), b = resumed.step();
    EXPECT(a.step == 3 && b.step == 3 && a.loss == b.loss && a.lr == b.lr);
    std::remove(cp.c_str());

    // Export refuses an existing folder; apply switches the engine to the tuned weights.
    EXPECT_ERROR(tuner.export_bundle(work), ASFDA_STATUS_INVALID_ARGUMENT, "already exists");
    const std::vector<float> seg_before = engine.segment(image).voxels();
    tuner.apply_to(engine);
    const std::vector<double> after = tuner.evaluate({&image}, {&label});
    EXPECT(after.size() == 4);
    EXPECT(engine.segment(image).voxels().size() == seg_before.size());

    // Moves: the moved-from tuner throws; an empty engine is refused.
    asfda::FineTuner taken = std::move(resumed);
    EXPECT(!resumed && taken.steps_done() == 3);
    EXPECT_ERROR(resumed.step(), ASFDA_STATUS_INVALID_ARGUMENT, "tuner");
    EXPECT_ERROR(resumed.classes(), ASFDA_STATUS_INVALID_ARGUMENT, "tuner");
    asfda::Engine gone = std::move(engine);
    EXPECT_ERROR(asfda::FineTuner(engine, o), ASFDA_STATUS_INVALID_ARGUMENT, "engine");
    EXPECT_ERROR(tuner.apply_to(engine), ASFDA_STATUS_INVALID_ARGUMENT, "engine");
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
        test_select();
        const char *data = std::getenv("ASFDA_TEST_DATA");
        if (!data || !*data) {
            std::fprintf(stderr, "ASFDA_TEST_DATA is not set (ctest sets it; the data comes from `make data`)\n");
            return 1;
        }
        test_finetune(argv[4], data, argv[3]);
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
