/* C11 consumer of the asfda C ABI: loads a real NIfTI, runs the tiny model, and checks that every
 * error path returns the right status, a message, and leaves out-parameters untouched.
 * usage: c_api_test IMAGE.nii MODEL.onnx WORK_DIR BUNDLE_DIR */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asfda.h"

#include "check.h"

static void write_file(const char *path, const void *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(bytes, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    fclose(f);
}

static void test_load_real_volume(const char *image) {
    AsfdaVolume *vol = NULL;
    CHECK(asfda_volume_load(image, NULL, &vol) == ASFDA_STATUS_OK);
    CHECK(strcmp(asfda_last_error_message(), "") == 0);
    size_t dims[3] = {0, 0, 0}, channels = 0;
    CHECK(asfda_volume_dims(vol, dims, &channels) == ASFDA_STATUS_OK);
    CHECK(dims[0] == 33 && dims[1] == 41 && dims[2] == 25 && channels == 1);
    double spacing[3];
    CHECK(asfda_volume_spacing(vol, spacing) == ASFDA_STATUS_OK);
    CHECK(fabs(spacing[0] - 2.0) < 1e-6 && fabs(spacing[1] - 2.0) < 1e-6 && fabs(spacing[2] - 2.0) < 1e-6);
    double ras[16], lps[16];
    CHECK(asfda_volume_affine(vol, ASFDA_RAS, ras) == ASFDA_STATUS_OK);
    CHECK(asfda_volume_affine(vol, ASFDA_LPS, lps) == ASFDA_STATUS_OK);
    CHECK(ras[0] < 0 && lps[0] > 0 && fabs(ras[0] + lps[0]) < 1e-12); /* LAS file: x runs left */
    const float *data = NULL;
    size_t len = 0;
    CHECK(asfda_volume_data(vol, &data, &len) == ASFDA_STATUS_OK);
    CHECK(len == 33 * 41 * 25 && data != NULL);
    double sum = 0;
    for (size_t i = 0; i < len; i++) sum += data[i];
    CHECK(sum > 0);

    AsfdaVolume *canon = NULL;
    CHECK(asfda_volume_to_canonical(vol, &canon) == ASFDA_STATUS_OK);
    double cras[16];
    CHECK(asfda_volume_affine(canon, ASFDA_RAS, cras) == ASFDA_STATUS_OK);
    CHECK(cras[0] > 0); /* now x runs right */
    asfda_volume_free(canon);
    asfda_volume_free(vol);
}

static void test_load_errors(const char *image, const char *work) {
    AsfdaVolume *sentinel = (AsfdaVolume *)&failures; /* must survive every failed call */
    AsfdaVolume *out = sentinel;
    char path[4096];

    EXPECT(asfda_volume_load(NULL, NULL, &out), ASFDA_STATUS_INVALID_ARGUMENT, "path");
    EXPECT(asfda_volume_load(image, NULL, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_volume");
    EXPECT(asfda_volume_load("/no/such/file.nii", NULL, &out), ASFDA_STATUS_IO, "/no/such/file.nii");

    snprintf(path, sizeof path, "%s/garbage.nii", work);
    char garbage[600];
    memset(garbage, 'x', sizeof garbage);
    write_file(path, garbage, sizeof garbage);
    EXPECT(asfda_volume_load(path, NULL, &out), ASFDA_STATUS_FORMAT, "garbage.nii");

    snprintf(path, sizeof path, "%s/corrupt.nii.gz", work);
    unsigned char gz[64] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3};
    memset(gz + 10, 0xff, sizeof gz - 10);
    write_file(path, gz, sizeof gz);
    EXPECT(asfda_volume_load(path, NULL, &out), ASFDA_STATUS_FORMAT, "corrupt.nii.gz");

    /* The real file cut short: header intact, voxels missing. */
    FILE *f = fopen(image, "rb");
    static unsigned char head[2000];
    size_t n = f ? fread(head, 1, sizeof head, f) : 0;
    if (f) fclose(f);
    CHECK(n == sizeof head);
    snprintf(path, sizeof path, "%s/truncated.nii", work);
    write_file(path, head, n);
    EXPECT(asfda_volume_load(path, NULL, &out), ASFDA_STATUS_FORMAT, "truncated.nii");

    AsfdaReadOptions opts = asfda_read_options_default();
    opts.max_voxels = 1000;
    EXPECT(asfda_volume_load(image, &opts, &out), ASFDA_STATUS_TOO_LARGE, "1000");
    opts = asfda_read_options_default();
    opts.nonfinite = 42;
    EXPECT(asfda_volume_load(image, &opts, &out), ASFDA_STATUS_INVALID_ARGUMENT, "nonfinite");

    CHECK(out == sentinel);
    asfda_volume_free(NULL); /* no-op */
}

static void test_from_buffer(void) {
    float voxels[2 * 3 * 4];
    for (int i = 0; i < 24; i++) voxels[i] = (float)i;
    size_t dims[3] = {2, 3, 4};
    double affine[16] = {2, 0, 0, 10, 0, 2, 0, 20, 0, 0, 3, 30, 0, 0, 0, 1};
    double spacing[3] = {2, 2, 3};
    AsfdaVolume *sentinel = (AsfdaVolume *)&failures;
    AsfdaVolume *out = sentinel;

    CHECK(asfda_volume_from_buffer((const uint8_t *)voxels, sizeof voxels, ASFDA_DTYPE_F32, dims, 1, spacing, affine,
                                   ASFDA_LPS, NULL, &out) == ASFDA_STATUS_OK);
    double ras[16];
    CHECK(asfda_volume_affine(out, ASFDA_RAS, ras) == ASFDA_STATUS_OK);
    CHECK(ras[0] == -2 && ras[3] == -10 && ras[5] == -2 && ras[7] == -20 && ras[10] == 3); /* LPS -> RAS */
    asfda_volume_free(out);
    out = sentinel;

    EXPECT(asfda_volume_from_buffer(NULL, sizeof voxels, ASFDA_DTYPE_F32, dims, 1, NULL, affine, ASFDA_RAS, NULL, &out),
           ASFDA_STATUS_INVALID_ARGUMENT, "data");
    EXPECT(asfda_volume_from_buffer((const uint8_t *)voxels, sizeof voxels - 4, ASFDA_DTYPE_F32, dims, 1, NULL, affine,
                                    ASFDA_RAS, NULL, &out),
           ASFDA_STATUS_INVALID_ARGUMENT, "92");
    EXPECT(asfda_volume_from_buffer((const uint8_t *)voxels, sizeof voxels, 3, dims, 1, NULL, affine, ASFDA_RAS, NULL, &out),
           ASFDA_STATUS_INVALID_ARGUMENT, "dtype");
    EXPECT(asfda_volume_from_buffer((const uint8_t *)voxels, sizeof voxels, ASFDA_DTYPE_F32, dims, 1, NULL, affine, 7, NULL,
                                    &out),
           ASFDA_STATUS_INVALID_ARGUMENT, "convention");
    EXPECT(asfda_volume_from_buffer((const uint8_t *)voxels, sizeof voxels, ASFDA_DTYPE_F32, NULL, 1, NULL, affine,
                                    ASFDA_RAS, NULL, &out),
           ASFDA_STATUS_INVALID_ARGUMENT, "dims");
    double singular[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    EXPECT(asfda_volume_from_buffer((const uint8_t *)voxels, sizeof voxels, ASFDA_DTYPE_F32, dims, 1, NULL, singular,
                                    ASFDA_RAS, NULL, &out),
           ASFDA_STATUS_INVALID_DATA, "affine");
    double wrong_spacing[3] = {1, 1, 1};
    EXPECT(asfda_volume_from_buffer((const uint8_t *)voxels, sizeof voxels, ASFDA_DTYPE_F32, dims, 1, wrong_spacing,
                                    affine, ASFDA_RAS, NULL, &out),
           ASFDA_STATUS_GEOMETRY_MISMATCH, "spacing");
    /* Size limits, checked before allocating: dims whose voxel count overflows, and a byte limit. */
    size_t huge[3] = {SIZE_MAX, 1, 1};
    EXPECT(asfda_volume_from_buffer((const uint8_t *)voxels, sizeof voxels, ASFDA_DTYPE_F32, huge, 1, NULL, affine,
                                    ASFDA_RAS, NULL, &out),
           ASFDA_STATUS_TOO_LARGE, "");
    AsfdaReadOptions small = asfda_read_options_default();
    CHECK(small.max_bytes > 0);
    small.max_bytes = sizeof voxels - 1;
    EXPECT(asfda_volume_from_buffer((const uint8_t *)voxels, sizeof voxels, ASFDA_DTYPE_F32, dims, 1, NULL, affine,
                                    ASFDA_RAS, &small, &out),
           ASFDA_STATUS_TOO_LARGE, "max_bytes");
    small.max_bytes = sizeof voxels;
    CHECK(asfda_volume_from_buffer((const uint8_t *)voxels, sizeof voxels, ASFDA_DTYPE_F32, dims, 1, NULL, affine,
                                   ASFDA_RAS, &small, &out) == ASFDA_STATUS_OK);
    asfda_volume_free(out);
    out = sentinel;
    small.nonfinite = 9;
    EXPECT(asfda_volume_from_buffer((const uint8_t *)voxels, sizeof voxels, ASFDA_DTYPE_F32, dims, 1, NULL, affine,
                                    ASFDA_RAS, &small, &out),
           ASFDA_STATUS_INVALID_ARGUMENT, "nonfinite");
    CHECK(out == sentinel);
}

static void test_save_and_model(const char *image, const char *model_path, const char *work) {
    AsfdaVolume *vol = NULL;
    CHECK(asfda_volume_load(image, NULL, &vol) == ASFDA_STATUS_OK);
    char path[4096];
    snprintf(path, sizeof path, "%s/roundtrip.nii.gz", work);
    CHECK(asfda_volume_save(vol, path, ASFDA_OUTPUT_F32) == ASFDA_STATUS_OK);
    EXPECT(asfda_volume_save(vol, path, 9), ASFDA_STATUS_INVALID_ARGUMENT, "output type");
    EXPECT(asfda_volume_save(NULL, path, ASFDA_OUTPUT_F32), ASFDA_STATUS_INVALID_ARGUMENT, "volume");
    AsfdaVolume *back = NULL;
    CHECK(asfda_volume_load(path, NULL, &back) == ASFDA_STATUS_OK);
    const float *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    CHECK(asfda_volume_data(vol, &a, &na) == ASFDA_STATUS_OK && asfda_volume_data(back, &b, &nb) == ASFDA_STATUS_OK);
    CHECK(na == nb && memcmp(a, b, na * sizeof(float)) == 0);
    CHECK(asfda_volume_check_same_grid(vol, back) == ASFDA_STATUS_OK);
    asfda_volume_free(back);

    /* Paths are bytes on Unix: a Latin-1 file name (not UTF-8) saves and loads. */
    snprintf(path, sizeof path, "%s/caf\xe9.nii.gz", work);
    CHECK(asfda_volume_save(vol, path, ASFDA_OUTPUT_F32) == ASFDA_STATUS_OK);
    CHECK(asfda_volume_load(path, NULL, &back) == ASFDA_STATUS_OK);
    CHECK(asfda_volume_data(back, &b, &nb) == ASFDA_STATUS_OK && na == nb && memcmp(a, b, na * sizeof(float)) == 0);
    asfda_volume_free(back);
    back = NULL;

    /* A label map on another grid (the canonical, x-flipped one) is refused. */
    AsfdaVolume *other = NULL;
    CHECK(asfda_volume_to_canonical(vol, &other) == ASFDA_STATUS_OK);
    EXPECT(asfda_volume_check_same_grid(vol, other), ASFDA_STATUS_GEOMETRY_MISMATCH, "label map");
    EXPECT(asfda_volume_check_same_grid(vol, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "label");
    asfda_volume_free(other);

    size_t needed = 0;
    CHECK(asfda_runtime_info_json(NULL, 0, &needed) == ASFDA_STATUS_OK && needed > 10);
    char *json = malloc(needed);
    CHECK(json && asfda_runtime_info_json(json, needed, &needed) == ASFDA_STATUS_OK);
    CHECK(json && strstr(json, "\"ort_version\":\"1.31.1\"") != NULL);
    free(json);

    AsfdaRuntimeOptions opts = asfda_runtime_options_default();
    CHECK(opts.library_path == NULL && opts.device == NULL && opts.threads == 0);
    opts.device = "cpu";
    AsfdaModel *model = NULL;
    CHECK(asfda_model_load(model_path, &opts, &model) == ASFDA_STATUS_OK);
    char device[32];
    CHECK(asfda_model_device(model, device, sizeof device, &needed) == ASFDA_STATUS_OK && strcmp(device, "cpu") == 0);
    AsfdaVolume *probs = NULL;
    CHECK(asfda_model_run_volume(model, vol, &probs) == ASFDA_STATUS_OK);
    size_t dims[3], channels = 0;
    CHECK(asfda_volume_dims(probs, dims, &channels) == ASFDA_STATUS_OK && channels == 2 && dims[0] == 33);
    const float *p = NULL;
    size_t np = 0;
    CHECK(asfda_volume_data(probs, &p, &np) == ASFDA_STATUS_OK && np == 2 * na);
    for (size_t i = 0; p && i < na; i += 97) CHECK(fabsf(p[i] + p[i + na] - 1.0f) < 1e-5f); /* softmax */
    asfda_volume_free(probs);

    opts.device = "tpu";
    AsfdaModel *none = NULL;
    EXPECT(asfda_model_load(model_path, &opts, &none), ASFDA_STATUS_INVALID_ARGUMENT, "cuda:<id>");
    opts.device = "cpu";
    EXPECT(asfda_model_load("/no/model.onnx", &opts, &none), ASFDA_STATUS_IO, "/no/model.onnx");
    snprintf(path, sizeof path, "%s/garbage.nii", work); /* not an ONNX model */
    EXPECT(asfda_model_load(path, &opts, &none), ASFDA_STATUS_MODEL, "garbage.nii");
    CHECK(none == NULL);
    asfda_model_free(model);
    asfda_model_free(NULL);
    asfda_volume_free(vol);
}

static bool count_progress(void *user_data, double fraction) {
    int *calls = (int *)user_data;
    (*calls)++;
    return fraction >= 0.0 && fraction <= 1.0;
}

static bool stop_at_once(void *user_data, double fraction) {
    (void)user_data;
    (void)fraction;
    return false;
}

/* Probability and entropy maps: on the volume's grid, probabilities sum to 1 per voxel,
 * entropy in [0, 1], and (the 2 mm volume is reoriented, not resampled) the argmax of the
 * probabilities is the label map. */
static void test_segment_maps(const AsfdaEngine *engine, const AsfdaVolume *vol, const AsfdaVolume *labels) {
    AsfdaVolume *l2 = NULL, *probs = NULL, *entropy = NULL;
    CHECK(asfda_segment_volume(engine, vol, NULL, NULL, NULL, &l2, &probs, &entropy) == ASFDA_STATUS_OK);
    CHECK(asfda_volume_check_same_grid(vol, probs) == ASFDA_STATUS_OK);
    CHECK(asfda_volume_check_same_grid(vol, entropy) == ASFDA_STATUS_OK);
    size_t dims[3], channels = 0, np = 0, nh = 0, nl = 0, nl2 = 0;
    CHECK(asfda_volume_dims(probs, dims, &channels) == ASFDA_STATUS_OK && channels == 4);
    CHECK(asfda_volume_dims(entropy, dims, &channels) == ASFDA_STATUS_OK && channels == 1);
    const float *p = NULL, *h = NULL, *l = NULL, *lb = NULL;
    CHECK(asfda_volume_data(probs, &p, &np) == ASFDA_STATUS_OK);
    CHECK(asfda_volume_data(entropy, &h, &nh) == ASFDA_STATUS_OK);
    CHECK(asfda_volume_data(l2, &l, &nl) == ASFDA_STATUS_OK);
    CHECK(asfda_volume_data(labels, &lb, &nl2) == ASFDA_STATUS_OK);
    CHECK(np == 4 * nh && nl == nh && nl2 == nh);
    int bad_sum = 0, bad_entropy = 0, bad_argmax = 0, bad_labels = 0;
    for (size_t i = 0; p && h && l && lb && np == 4 * nh && nl == nh && nl2 == nh && i < nh; i++) {
        float sum = 0;
        int best = 0;
        for (int c = 0; c < 4; c++) {
            sum += p[c * nh + i];
            if (p[c * nh + i] > p[best * nh + i]) best = c;
        }
        bad_sum += fabsf(sum - 1.0f) > 1e-5f;
        bad_entropy += !(h[i] >= 0.0f && h[i] <= 1.0f);
        bad_argmax += (float)best != l[i];
        bad_labels += l[i] != lb[i];
    }
    CHECK(bad_sum == 0 && bad_entropy == 0 && bad_argmax == 0 && bad_labels == 0);
    asfda_volume_free(l2);
    asfda_volume_free(probs);
    asfda_volume_free(entropy);

    /* Only the entropy: the probability out-parameter stays NULL (not asked for). */
    AsfdaVolume *l3 = NULL;
    entropy = NULL;
    CHECK(asfda_segment_volume(engine, vol, NULL, NULL, NULL, &l3, NULL, &entropy) == ASFDA_STATUS_OK);
    CHECK(l3 != NULL && entropy != NULL);
    asfda_volume_free(l3);
    asfda_volume_free(entropy);
    /* A failing call writes no out-parameter. */
    AsfdaVolume *sentinel = (AsfdaVolume *)&failures, *a = sentinel, *b = sentinel, *c = sentinel;
    EXPECT(asfda_segment_volume(NULL, vol, NULL, NULL, NULL, &a, &b, &c), ASFDA_STATUS_INVALID_ARGUMENT, "engine");
    EXPECT(asfda_segment_volume(engine, vol, NULL, NULL, NULL, NULL, &b, &c), ASFDA_STATUS_INVALID_ARGUMENT,
           "out_labels");
    CHECK(a == sentinel && b == sentinel && c == sentinel);

    /* Score and segment in one inference: the score of asfda_score_volume and its labels. */
    AsfdaScore *both_score = NULL, *alone = NULL, *s_sentinel = (AsfdaScore *)&failures, *s = s_sentinel;
    AsfdaVolume *l4 = NULL;
    CHECK(asfda_score_and_segment_volume(engine, "anatomical", vol, NULL, NULL, NULL, &both_score, &l4, NULL, NULL) ==
          ASFDA_STATUS_OK);
    CHECK(asfda_score_volume(engine, "anatomical", vol, NULL, NULL, NULL, &alone) == ASFDA_STATUS_OK);
    char j1[8192], j2[8192];
    size_t n1 = 0, n2 = 0;
    CHECK(asfda_score_to_json(both_score, j1, sizeof j1, &n1) == ASFDA_STATUS_OK);
    CHECK(asfda_score_to_json(alone, j2, sizeof j2, &n2) == ASFDA_STATUS_OK);
    CHECK(n1 == n2 && strcmp(j1, j2) == 0);
    const float *l4d = NULL;
    size_t n4 = 0;
    CHECK(asfda_volume_data(l4, &l4d, &n4) == ASFDA_STATUS_OK && n4 == nl2 && memcmp(l4d, lb, n4 * sizeof *l4d) == 0);
    asfda_score_free(both_score);
    asfda_score_free(alone);
    asfda_volume_free(l4);
    EXPECT(asfda_score_and_segment_volume(engine, "x", vol, NULL, NULL, NULL, NULL, &a, NULL, NULL),
           ASFDA_STATUS_INVALID_ARGUMENT, "out_score");
    EXPECT(asfda_score_and_segment_volume(engine, "x", vol, NULL, NULL, NULL, &s, NULL, NULL, NULL),
           ASFDA_STATUS_INVALID_ARGUMENT, "out_labels");
    EXPECT(asfda_score_and_segment_volume(engine, NULL, vol, NULL, NULL, NULL, &s, &a, &b, NULL),
           ASFDA_STATUS_INVALID_ARGUMENT, "'id'");
    CHECK(a == sentinel && b == sentinel && s == s_sentinel);
}

/* A pthread cancels the token once the first of 8 mirrored passes has reported progress; the
 * call stops before the last pass (no timing involved: the cancel waits for a condition). */
struct cancel_ctx {
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    int reports;
    double last;
    const AsfdaCancelToken *token;
    AsfdaStatus cancel_status;
};

static bool report_progress(void *user_data, double fraction) {
    struct cancel_ctx *ctx = (struct cancel_ctx *)user_data;
    pthread_mutex_lock(&ctx->mutex);
    ctx->reports++;
    ctx->last = fraction;
    pthread_cond_signal(&ctx->cond);
    pthread_mutex_unlock(&ctx->mutex);
    return true;
}

static void *cancel_after_first_report(void *arg) {
    struct cancel_ctx *ctx = (struct cancel_ctx *)arg;
    pthread_mutex_lock(&ctx->mutex);
    while (ctx->reports == 0) pthread_cond_wait(&ctx->cond, &ctx->mutex);
    pthread_mutex_unlock(&ctx->mutex);
    ctx->cancel_status = asfda_cancel_token_cancel(ctx->token);
    return NULL;
}

static void test_cancel_token(const AsfdaEngine *engine, const AsfdaVolume *vol, const char *bundle) {
    AsfdaCancelToken *sentinel = (AsfdaCancelToken *)&failures, *token = sentinel;
    EXPECT(asfda_cancel_token_new(NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_token");
    EXPECT(asfda_cancel_token_cancel(NULL), ASFDA_STATUS_INVALID_ARGUMENT, "token");
    EXPECT(asfda_cancel_token_reset(NULL), ASFDA_STATUS_INVALID_ARGUMENT, "token");
    asfda_cancel_token_free(NULL);
    CHECK(asfda_cancel_token_new(&token) == ASFDA_STATUS_OK && token != sentinel);
    bool cancelled = true;
    CHECK(asfda_cancel_token_is_cancelled(token, &cancelled) == ASFDA_STATUS_OK && !cancelled);
    EXPECT(asfda_cancel_token_is_cancelled(token, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_cancelled");

    /* Cancelled before the call (twice: idempotent): cancelled at once, nothing written. */
    CHECK(asfda_cancel_token_cancel(token) == ASFDA_STATUS_OK && asfda_cancel_token_cancel(token) == ASFDA_STATUS_OK);
    CHECK(asfda_cancel_token_is_cancelled(token, &cancelled) == ASFDA_STATUS_OK && cancelled);
    AsfdaScore *score_sentinel = (AsfdaScore *)&failures, *score = score_sentinel;
    EXPECT(asfda_score_volume(engine, "x", vol, token, NULL, NULL, &score), ASFDA_STATUS_CANCELLED, "cancel");
    AsfdaVolume *labels = NULL;
    EXPECT(asfda_segment_volume(engine, vol, token, NULL, NULL, &labels, NULL, NULL), ASFDA_STATUS_CANCELLED,
           "cancel");
    CHECK(score == score_sentinel && labels == NULL);

    /* Reset: the same token serves a whole call. */
    CHECK(asfda_cancel_token_reset(token) == ASFDA_STATUS_OK);
    CHECK(asfda_score_volume(engine, "x", vol, token, NULL, NULL, &score) == ASFDA_STATUS_OK);
    asfda_score_free(score);

    /* From another thread while the call runs: 8 mirrored passes, one ORT run each. */
    AsfdaEngineOptions opts = asfda_engine_options_default();
    opts.bundle_path = bundle;
    opts.mirror = true;
    AsfdaEngine *mirrored = NULL;
    CHECK(asfda_engine_new(&opts, &mirrored) == ASFDA_STATUS_OK);
    struct cancel_ctx ctx = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0.0, token, ASFDA_STATUS_INTERNAL};
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, cancel_after_first_report, &ctx) == 0);
    score = score_sentinel;
    EXPECT(asfda_score_volume(mirrored, "x", vol, token, report_progress, &ctx, &score), ASFDA_STATUS_CANCELLED,
           "cancel");
    CHECK(pthread_join(thread, NULL) == 0);
    CHECK(ctx.cancel_status == ASFDA_STATUS_OK);
    CHECK(score == score_sentinel);
    CHECK(ctx.reports >= 1 && ctx.last < 1.0); /* stopped before the last pass */
    /* The engine stays usable (with the token reset). */
    CHECK(asfda_cancel_token_reset(token) == ASFDA_STATUS_OK);
    CHECK(asfda_segment_volume(mirrored, vol, token, NULL, NULL, &labels, NULL, NULL) == ASFDA_STATUS_OK);
    asfda_volume_free(labels);
    asfda_engine_free(mirrored);
    asfda_cancel_token_free(token);
}

static void test_engine_and_scores(const char *image, const char *bundle) {
    AsfdaEngineOptions opts = asfda_engine_options_default();
    AsfdaEngine *sentinel = (AsfdaEngine *)&failures;
    AsfdaEngine *engine = sentinel;
    EXPECT(asfda_engine_new(&opts, &engine), ASFDA_STATUS_INVALID_ARGUMENT, "bundle_path");
    EXPECT(asfda_engine_new(NULL, &engine), ASFDA_STATUS_INVALID_ARGUMENT, "options");
    opts.bundle_path = "/no/such/bundle";
    EXPECT(asfda_engine_new(&opts, &engine), ASFDA_STATUS_IO, "/no/such/bundle");
    opts.bundle_path = bundle;
    opts.tile_overlap = 1.5;
    EXPECT(asfda_engine_new(&opts, &engine), ASFDA_STATUS_INVALID_ARGUMENT, "overlap");
    opts.tile_overlap = 0.5;
    opts.runtime.device = "gpu";
    EXPECT(asfda_engine_new(&opts, &engine), ASFDA_STATUS_INVALID_ARGUMENT, "cuda:<id>");
    CHECK(engine == sentinel);
    opts.runtime.device = "auto";
    CHECK(asfda_engine_new(&opts, &engine) == ASFDA_STATUS_OK);
    char device[32];
    size_t needed = 0;
    CHECK(asfda_engine_device(engine, device, sizeof device, &needed) == ASFDA_STATUS_OK);
    CHECK(strcmp(device, "cpu") == 0 || strcmp(device, "openvino") == 0 || strncmp(device, "cuda:", 5) == 0);
    /* The classes as the demo manifest describes them: names, colours, SNOMED CT codes. */
    size_t classes = 0;
    CHECK(asfda_engine_class_count(engine, &classes) == ASFDA_STATUS_OK && classes == 4);
    AsfdaClassInfo background, wm;
    CHECK(asfda_engine_class_info(engine, 0, &background) == ASFDA_STATUS_OK);
    CHECK(strcmp(background.name, "background") == 0 && !background.has_color && !background.has_code);
    CHECK(background.category.scheme == NULL && background.kind.meaning == NULL);
    CHECK(asfda_engine_class_info(engine, 3, &wm) == ASFDA_STATUS_OK);
    CHECK(strcmp(wm.name, "wm") == 0 && wm.has_color && wm.color[0] == 245 && wm.has_code);
    CHECK(strcmp(wm.kind.scheme, "SCT") == 0 && strcmp(wm.kind.value, "389080008") == 0);
    CHECK(strcmp(wm.kind.meaning, "White Matter") == 0 && strcmp(wm.category.value, "91723000") == 0);

    AsfdaVolume *vol = NULL;
    CHECK(asfda_volume_load(image, NULL, &vol) == ASFDA_STATUS_OK);
    int calls = 0;
    AsfdaScore *score = NULL;
    CHECK(asfda_score_volume(engine, "anatomical", vol, NULL, count_progress, &calls, &score) == ASFDA_STATUS_OK);
    CHECK(calls >= 1);
    AsfdaScoreValues values;
    CHECK(asfda_score_values(score, &values) == ASFDA_STATUS_OK);
    CHECK(values.gap_kl >= 0 && values.gap_anchor >= 0 && values.asd >= 0 && values.asd <= 1);
    CHECK(values.confidence >= 0 && values.confidence <= 1 && values.embedding_len == 64);
    float embedding[64];
    CHECK(asfda_score_embedding(score, embedding, 64) == ASFDA_STATUS_OK);
    double norm = 0;
    for (int i = 0; i < 64; i++) norm += embedding[i] * embedding[i];
    CHECK(fabs(norm - 1.0) < 1e-4);
    EXPECT(asfda_score_embedding(score, embedding, 10), ASFDA_STATUS_INVALID_ARGUMENT, "64");

    /* JSON round trip, sized with a first call. */
    CHECK(asfda_score_to_json(score, NULL, 0, &needed) == ASFDA_STATUS_OK);
    char *json = malloc(needed);
    CHECK(json && asfda_score_to_json(score, json, needed, &needed) == ASFDA_STATUS_OK);
    AsfdaScore *back = NULL;
    CHECK(json && asfda_score_from_json(json, &back) == ASFDA_STATUS_OK);
    AsfdaScoreValues again;
    CHECK(asfda_score_values(back, &again) == ASFDA_STATUS_OK && again.asd == values.asd && again.gap_kl == values.gap_kl);
    free(json);
    asfda_score_free(back);
    EXPECT(asfda_score_from_json("{\"format_version\": 99}", &back), ASFDA_STATUS_UNSUPPORTED, "99");
    EXPECT(asfda_score_from_json("not json", &back), ASFDA_STATUS_FORMAT, "");

    /* Cancellation through the callback; the engine stays usable. */
    AsfdaScore *none = NULL;
    EXPECT(asfda_score_volume(engine, "x", vol, NULL, stop_at_once, NULL, &none), ASFDA_STATUS_CANCELLED, "cancel");
    CHECK(none == NULL);
    EXPECT(asfda_score_volume(engine, NULL, vol, NULL, NULL, NULL, &none), ASFDA_STATUS_INVALID_ARGUMENT, "id");
    AsfdaVolume *labels = NULL;
    CHECK(asfda_segment_volume(engine, vol, NULL, NULL, NULL, &labels, NULL, NULL) == ASFDA_STATUS_OK);
    CHECK(asfda_volume_check_same_grid(vol, labels) == ASFDA_STATUS_OK);
    test_segment_maps(engine, vol, labels);
    test_cancel_token(engine, vol, bundle);

    asfda_volume_free(labels);
    asfda_score_free(score);
    asfda_score_free(NULL);
    asfda_volume_free(vol);
    asfda_engine_free(engine);
    asfda_engine_free(NULL);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s IMAGE.nii MODEL.onnx WORK_DIR BUNDLE_DIR\n", argv[0]);
        return 2;
    }
    CHECK(strcmp(asfda_version(), ASFDA_VERSION) == 0);
    test_load_real_volume(argv[1]);
    test_load_errors(argv[1], argv[3]);
    test_from_buffer();
    test_save_and_model(argv[1], argv[2], argv[3]);
    test_engine_and_scores(argv[1], argv[4]);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("c_api_test: all checks passed\n");
    return 0;
}
