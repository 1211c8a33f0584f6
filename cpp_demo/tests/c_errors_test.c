/* C11 error paths of the functions the other C tests only call on their happy path (ffi_coverage
 * lists them): each must return the right status, leave a message naming the problem, and leave
 * its out-parameters untouched. Also asfda_last_error_copy.
 * usage: c_errors_test IMAGE.nii MODEL.onnx BUNDLE_DIR */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asfda.h"

#include "check.h"

static void must(AsfdaStatus s, const char *what) {
    if (s != ASFDA_STATUS_OK) {
        fprintf(stderr, "%s failed: %s: %s\n", what, asfda_status_name((int)s), asfda_last_error_message());
        exit(2);
    }
}

static bool cancel_at_once(void *user_data, double fraction) {
    (void)fraction;
    (*(int *)user_data)++;
    return false;
}

/* Runs first: a path that does not exist must be refused before ONNX Runtime is loaded. */
static void test_runtime_and_last_error(void) {
    EXPECT(asfda_runtime_load("/no/such/dir/libonnxruntime.so"), ASFDA_STATUS_RUNTIME_UNAVAILABLE, "/no/such/dir");

    /* asfda_last_error_copy: size needed (NUL included), truncation, always NUL-terminated. */
    const char *msg = asfda_last_error_message();
    const size_t len = strlen(msg);
    CHECK(len > 0);
    CHECK(asfda_last_error_copy(NULL, 0) == len + 1);
    char small[8];
    memset(small, 'x', sizeof small);
    CHECK(asfda_last_error_copy(small, sizeof small) == len + 1);
    CHECK(small[7] == '\0' && strncmp(small, msg, 7) == 0);
    char *full = malloc(len + 1);
    if (!full) exit(2);
    CHECK(asfda_last_error_copy(full, len + 1) == len + 1 && strcmp(full, msg) == 0);
    free(full);

    must(asfda_runtime_load(NULL), "runtime_load");
    /* A success clears the message. */
    CHECK(asfda_last_error_copy(NULL, 0) == 1 && strcmp(asfda_last_error_message(), "") == 0);

    size_t needed = 12345;
    char buf[16];
    EXPECT(asfda_runtime_info_json(buf, sizeof buf, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_needed");
    must(asfda_runtime_info_json(NULL, 0, &needed), "runtime_info_json");
    CHECK(needed > 16 && needed != 12345);
}

static void test_volume(const AsfdaVolume *vol) {
    size_t dims[3] = {7, 7, 7}, channels = 7;
    EXPECT(asfda_volume_dims(NULL, dims, &channels), ASFDA_STATUS_INVALID_ARGUMENT, "'volume'");
    EXPECT(asfda_volume_dims(vol, NULL, &channels), ASFDA_STATUS_INVALID_ARGUMENT, "out_dims");
    EXPECT(asfda_volume_dims(vol, dims, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_channels");
    CHECK(dims[0] == 7 && dims[2] == 7 && channels == 7);

    double spacing[3] = {-1, -1, -1};
    EXPECT(asfda_volume_spacing(NULL, spacing), ASFDA_STATUS_INVALID_ARGUMENT, "'volume'");
    EXPECT(asfda_volume_spacing(vol, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_spacing");
    CHECK(spacing[0] == -1);

    double affine[16] = {-1};
    EXPECT(asfda_volume_affine(NULL, ASFDA_RAS, affine), ASFDA_STATUS_INVALID_ARGUMENT, "'volume'");
    EXPECT(asfda_volume_affine(vol, 7, affine), ASFDA_STATUS_INVALID_ARGUMENT, "convention");
    EXPECT(asfda_volume_affine(vol, ASFDA_LPS, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_affine");
    CHECK(affine[0] == -1);

    const float *data = (const float *)&failures;
    size_t len = 99;
    EXPECT(asfda_volume_data(NULL, &data, &len), ASFDA_STATUS_INVALID_ARGUMENT, "'volume'");
    EXPECT(asfda_volume_data(vol, NULL, &len), ASFDA_STATUS_INVALID_ARGUMENT, "out_data");
    EXPECT(asfda_volume_data(vol, &data, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_len");
    CHECK(data == (const float *)&failures && len == 99);

    AsfdaVolume *sentinel = (AsfdaVolume *)&failures, *out = sentinel;
    EXPECT(asfda_volume_to_canonical(NULL, &out), ASFDA_STATUS_INVALID_ARGUMENT, "'volume'");
    EXPECT(asfda_volume_to_canonical(vol, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_volume");
    CHECK(out == sentinel);
}

static void test_model(const char *model_path, const AsfdaVolume *vol) {
    AsfdaModel *model = NULL;
    must(asfda_model_load(model_path, NULL, &model), "model_load");
    char buf[32] = "untouched";
    size_t needed = 77;
    EXPECT(asfda_model_device(NULL, buf, sizeof buf, &needed), ASFDA_STATUS_INVALID_ARGUMENT, "'model'");
    EXPECT(asfda_model_device(model, buf, sizeof buf, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_needed");
    CHECK(needed == 77 && strcmp(buf, "untouched") == 0);

    AsfdaVolume *sentinel = (AsfdaVolume *)&failures, *out = sentinel;
    EXPECT(asfda_model_run_volume(NULL, vol, &out), ASFDA_STATUS_INVALID_ARGUMENT, "'model'");
    EXPECT(asfda_model_run_volume(model, NULL, &out), ASFDA_STATUS_INVALID_ARGUMENT, "'input'");
    EXPECT(asfda_model_run_volume(model, vol, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_volume");
    CHECK(out == sentinel);
    asfda_model_free(model);
}

static void test_engine_and_score(const char *bundle, const AsfdaVolume *vol) {
    AsfdaEngineOptions eo = asfda_engine_options_default();
    eo.bundle_path = bundle;
    eo.runtime.threads = 2;
    AsfdaEngine *engine = NULL;
    must(asfda_engine_new(&eo, &engine), "engine_new");

    char buf[32] = "untouched";
    size_t needed = 77;
    EXPECT(asfda_engine_device(NULL, buf, sizeof buf, &needed), ASFDA_STATUS_INVALID_ARGUMENT, "'engine'");
    EXPECT(asfda_engine_device(engine, buf, sizeof buf, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_needed");
    CHECK(needed == 77 && strcmp(buf, "untouched") == 0);

    size_t count = 77;
    AsfdaClassInfo info;
    memset(&info, 0xab, sizeof info);
    EXPECT(asfda_engine_class_count(NULL, &count), ASFDA_STATUS_INVALID_ARGUMENT, "'engine'");
    EXPECT(asfda_engine_class_count(engine, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_count");
    EXPECT(asfda_engine_class_info(engine, 4, &info), ASFDA_STATUS_INVALID_ARGUMENT, "index 4 is out of range");
    EXPECT(asfda_engine_class_info(engine, 0, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_info");
    EXPECT(asfda_engine_class_info(NULL, 0, &info), ASFDA_STATUS_INVALID_ARGUMENT, "'engine'");
    CHECK(count == 77 && info.color[0] == 0xab); /* nothing written on failure */

    const char *sources[] = {"/nonexistent/series"};
    EXPECT(asfda_volume_write_dicom_seg(NULL, engine, sources, 1, "seg.dcm"), ASFDA_STATUS_INVALID_ARGUMENT, "'labels'");
    EXPECT(asfda_volume_write_dicom_seg(vol, NULL, sources, 1, "seg.dcm"), ASFDA_STATUS_INVALID_ARGUMENT, "'engine'");
    EXPECT(asfda_volume_write_dicom_seg(vol, engine, NULL, 0, "seg.dcm"), ASFDA_STATUS_INVALID_ARGUMENT, "'sources'");

    AsfdaVolume *sentinel = (AsfdaVolume *)&failures, *labels = sentinel;
    EXPECT(asfda_segment_volume(NULL, vol, NULL, NULL, NULL, &labels, NULL, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "'engine'");
    EXPECT(asfda_segment_volume(engine, NULL, NULL, NULL, NULL, &labels, NULL, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "'volume'");
    EXPECT(asfda_segment_volume(engine, vol, NULL, NULL, NULL, NULL, NULL, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_labels");
    int calls = 0;
    EXPECT(asfda_segment_volume(engine, vol, NULL, cancel_at_once, &calls, &labels, NULL, NULL), ASFDA_STATUS_CANCELLED, "cancel");
    CHECK(calls == 1 && labels == sentinel);

    /* Scores: from JSON, so no model run is needed. */
    const char *json =
        "{\"format_version\":1,\"id\":\"s\",\"embedding\":[0.6,0.8],\"gap_kl\":1.5,\"gap_anchor\":0.5,"
        "\"asd\":0.25,\"asd_threshold\":0.0,\"confidence\":0.75,\"foreground_fraction\":0.125,"
        "\"entropy_histogram\":[0,0],\"voxels\":1000,\"foreground_voxels\":0,\"options\":{"
        "\"foreground_dilation\":2,\"threshold\":\"first_peak\",\"histogram_bins\":2,"
        "\"peak_smoothing\":5,\"class_balanced\":false,\"variance_floor\":0.01}}";
    AsfdaScore *score = NULL;
    must(asfda_score_from_json(json, &score), "score_from_json");
    AsfdaScoreValues v, untouched;
    memset(&v, 0x5a, sizeof v);
    untouched = v;
    EXPECT(asfda_score_values(NULL, &v), ASFDA_STATUS_INVALID_ARGUMENT, "'score'");
    EXPECT(asfda_score_values(score, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_values");
    CHECK(memcmp(&v, &untouched, sizeof v) == 0);
    needed = 77;
    EXPECT(asfda_score_to_json(NULL, buf, sizeof buf, &needed), ASFDA_STATUS_INVALID_ARGUMENT, "'score'");
    EXPECT(asfda_score_to_json(score, buf, sizeof buf, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_needed");
    CHECK(needed == 77);
    asfda_score_free(score);

    /* Fine-tuner step count. */
    AsfdaFineTuneOptions fo = asfda_finetune_options_default();
    AsfdaFineTuner *tuner = NULL;
    must(asfda_finetuner_new(engine, &fo, &tuner), "finetuner_new");
    uint64_t steps = 99;
    EXPECT(asfda_finetuner_steps_done(NULL, &steps), ASFDA_STATUS_INVALID_ARGUMENT, "'tuner'");
    EXPECT(asfda_finetuner_steps_done(tuner, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_steps");
    CHECK(steps == 99);
    must(asfda_finetuner_steps_done(tuner, &steps), "steps_done");
    CHECK(steps == 0);
    asfda_finetuner_free(tuner);
    asfda_engine_free(engine);
}

static void test_gap_kind(void) {
    AsfdaGapKind gap = (AsfdaGapKind)42;
    EXPECT(asfda_gap_kind_from_name("l2", &gap), ASFDA_STATUS_INVALID_ARGUMENT, "l2");
    EXPECT(asfda_gap_kind_from_name(NULL, &gap), ASFDA_STATUS_INVALID_ARGUMENT, "'name'");
    EXPECT(asfda_gap_kind_from_name("kl", NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_gap");
    CHECK(gap == (AsfdaGapKind)42);
    must(asfda_gap_kind_from_name("anchor", &gap), "gap_kind_from_name");
    CHECK(gap == ASFDA_GAP_ANCHOR);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s IMAGE.nii MODEL.onnx BUNDLE_DIR\n", argv[0]);
        return 2;
    }
    test_runtime_and_last_error();
    AsfdaVolume *vol = NULL;
    must(asfda_volume_load(argv[1], NULL, &vol), "volume_load");
    test_volume(vol);
    test_model(argv[2], vol);
    test_engine_and_score(argv[3], vol);
    test_gap_kind();
    asfda_volume_free(vol);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("c_errors_test: all checks passed\n");
    return 0;
}
