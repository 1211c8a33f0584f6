/* C11 consumer of the fine-tuning C ABI: a few real SSFT steps on crops of synthetic target-site
 * volumes, save / resume (the resumed step equals the uninterrupted one), export, apply, and
 * every error path with the right status, a message, and out-parameters left untouched.
 * usage: c_finetune_test BUNDLE_DIR DATA_DIR WORK_DIR
 * (data: synthetic derivatives of real anatomy; site shifts simulated) */
#include <math.h>
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

static AsfdaVolume *load(const char *data_dir, const char *rel) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", data_dir, rel);
    AsfdaVolume *v = NULL;
    must(asfda_volume_load(path, NULL, &v), path);
    return v;
}

/* The block of `v` at voxel `origin` (x, y, z) of `size` voxels, its affine moved so world
 * positions stay put; `poke` >= 0 sets that voxel of the block to `value`. */
static AsfdaVolume *crop(const AsfdaVolume *v, const size_t origin[3], const size_t size[3], long poke, float value) {
    size_t dims[3], channels;
    must(asfda_volume_dims(v, dims, &channels), "dims");
    const float *src;
    size_t len;
    must(asfda_volume_data(v, &src, &len), "data");
    double a[16];
    must(asfda_volume_affine(v, ASFDA_RAS, a), "affine");
    size_t n = size[0] * size[1] * size[2];
    float *buf = malloc(n * sizeof *buf);
    if (!buf) exit(2);
    for (size_t k = 0; k < size[2]; k++)
        for (size_t j = 0; j < size[1]; j++)
            memcpy(buf + size[0] * (j + size[1] * k),
                   src + origin[0] + dims[0] * ((origin[1] + j) + dims[1] * (origin[2] + k)), size[0] * sizeof *buf);
    if (poke >= 0) buf[poke] = value;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 3; c++) a[4 * r + 3] += a[4 * r + c] * (double)origin[c];
    AsfdaVolume *out = NULL;
    must(asfda_volume_from_buffer((const uint8_t *)buf, n * sizeof *buf, ASFDA_DTYPE_F32, size, 1, NULL, a, ASFDA_RAS,
                                  NULL,
                                  &out),
         "from_buffer");
    free(buf);
    return out;
}

static const char *EXPORTED[] = {"manifest.json", "model.onnx", "checkpoint.safetensors", "train_step.onnx",
                                 "source_knowledge.safetensors", "adaptation.json"};

/* Removes an exported bundle folder (its known files, then the folder), if present. */
static void remove_bundle(const char *dir) {
    char path[4096];
    for (size_t i = 0; i < sizeof EXPORTED / sizeof *EXPORTED; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, EXPORTED[i]);
        remove(path);
    }
    remove(dir);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s BUNDLE_DIR DATA_DIR WORK_DIR\n", argv[0]);
        return 2;
    }
    const char *bundle = argv[1], *data = argv[2], *work = argv[3];
    char path[4096], cp_path[4096], export_dir[4096];

    AsfdaEngineOptions eo = asfda_engine_options_default();
    eo.bundle_path = bundle;
    eo.runtime.threads = 2;
    AsfdaEngine *engine = NULL;
    must(asfda_engine_new(&eo, &engine), "engine");

    AsfdaVolume *pool0 = load(data, "pd/pool/pd_pool_000_image.nii.gz");
    AsfdaVolume *lab0 = load(data, "pd/pool_labels/pd_pool_000_label.nii.gz");
    AsfdaVolume *pool2 = load(data, "pd/pool/pd_pool_002_image.nii.gz");
    const size_t origin[3] = {22, 30, 24}, size[3] = {56, 64, 48}, other_origin[3] = {20, 30, 24};
    AsfdaVolume *image = crop(pool0, origin, size, -1, 0);
    AsfdaVolume *label = crop(lab0, origin, size, -1, 0);
    AsfdaVolume *bad_value = crop(lab0, origin, size, 4321, 9.0f);
    AsfdaVolume *shifted = crop(lab0, other_origin, size, -1, 0);
    AsfdaVolume *unlabeled = crop(pool2, origin, size, -1, 0);
    asfda_volume_free(pool0);
    asfda_volume_free(lab0);
    asfda_volume_free(pool2);

    /* Options. */
    AsfdaFineTuneOptions o = asfda_finetune_options_default();
    CHECK(o.batch_size == 2 && o.total_steps == 100 && o.lr == 0.0 && o.weight_decay < 0);
    CHECK(fabs(o.pseudo_label_threshold - 0.9) < 1e-12 && fabs(o.foreground_fraction - 1.0 / 3.0) < 1e-12);
    CHECK(o.patch_size[0] == 0 && o.patch_size[1] == 0 && o.patch_size[2] == 0);
    CHECK(fabs(o.pseudo_label_min_dice - 0.5) < 1e-12);

    AsfdaFineTuner *sentinel = (AsfdaFineTuner *)&failures, *tuner = sentinel;
    EXPECT(asfda_finetuner_new(NULL, &o, &tuner), ASFDA_STATUS_INVALID_ARGUMENT, "engine");
    EXPECT(asfda_finetuner_new(engine, &o, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_tuner");
    o.batch_size = 0;
    EXPECT(asfda_finetuner_new(engine, &o, &tuner), ASFDA_STATUS_INVALID_ARGUMENT, "batch_size");
    o.batch_size = 1;
    o.patch_size[0] = 32;
    EXPECT(asfda_finetuner_new(engine, &o, &tuner), ASFDA_STATUS_INVALID_ARGUMENT, "patch_size");
    o.patch_size[1] = o.patch_size[2] = 30;
    EXPECT(asfda_finetuner_new(engine, &o, &tuner), ASFDA_STATUS_INVALID_ARGUMENT, "multiples of 8");
    o.pseudo_label_threshold = 2.0;
    o.patch_size[1] = o.patch_size[2] = 32;
    EXPECT(asfda_finetuner_new(engine, &o, &tuner), ASFDA_STATUS_INVALID_ARGUMENT, "pseudo_label_threshold");
    CHECK(tuner == sentinel);
    o.pseudo_label_threshold = 0.9;
    o.total_steps = 4;
    o.ramp_fraction = 0.5;
    o.seed = 3;
    must(asfda_finetuner_new(engine, &o, &tuner), "finetuner_new");

    /* Steps need an annotated volume. */
    AsfdaStepReport report = {0}, untouched = {0};
    untouched.loss = report.loss = -7.0;
    EXPECT(asfda_finetune_step(tuner, &report), ASFDA_STATUS_INVALID_ARGUMENT, "annotated");
    EXPECT(asfda_finetune_step(NULL, &report), ASFDA_STATUS_INVALID_ARGUMENT, "tuner");
    EXPECT(asfda_finetune_step(tuner, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_report");
    CHECK(memcmp(&report, &untouched, sizeof report) == 0);
    double fg_dice = -1;
    EXPECT(asfda_finetuner_check_pseudo_labels(tuner, NULL, 0, &fg_dice, NULL), ASFDA_STATUS_INVALID_ARGUMENT,
           "annotated");

    /* Adding volumes. */
    EXPECT(asfda_finetuner_add_labeled(NULL, "a", image, label), ASFDA_STATUS_INVALID_ARGUMENT, "tuner");
    EXPECT(asfda_finetuner_add_labeled(tuner, NULL, image, label), ASFDA_STATUS_INVALID_ARGUMENT, "id");
    EXPECT(asfda_finetuner_add_labeled(tuner, "a", NULL, label), ASFDA_STATUS_INVALID_ARGUMENT, "image");
    EXPECT(asfda_finetuner_add_labeled(tuner, "a", image, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "label");
    EXPECT(asfda_finetuner_add_labeled(tuner, "a", image, shifted), ASFDA_STATUS_GEOMETRY_MISMATCH, "grid");
    EXPECT(asfda_finetuner_add_labeled(tuner, "a", image, bad_value), ASFDA_STATUS_INVALID_DATA, "value 9");
    must(asfda_finetuner_add_labeled(tuner, "a", image, label), "add_labeled");
    EXPECT(asfda_finetuner_add_labeled(tuner, "a", image, label), ASFDA_STATUS_INVALID_ARGUMENT, "already added");
    double reliable = -1;
    EXPECT(asfda_finetuner_add_unlabeled(tuner, "u", NULL, &reliable), ASFDA_STATUS_INVALID_ARGUMENT, "image");
    EXPECT(asfda_finetuner_add_unlabeled(tuner, NULL, unlabeled, &reliable), ASFDA_STATUS_INVALID_ARGUMENT, "id");
    CHECK(reliable == -1);
    must(asfda_finetuner_add_unlabeled(tuner, "u", unlabeled, &reliable), "add_unlabeled");
    CHECK(reliable > 0.0 && reliable <= 1.0);

    /* Real steps. */
    for (uint64_t s = 1; s <= 2; s++) {
        must(asfda_finetune_step(tuner, &report), "step");
        CHECK(report.step == s);
        CHECK(isfinite(report.loss) && report.loss >= 0.0);
        CHECK(fabs(report.loss - (report.loss_ce + report.loss_dice)) < 1e-4 * (1.0 + report.loss));
        CHECK(report.labeled_in_batch + report.pseudo_in_batch == 1);
        CHECK(report.lr > 0 && report.lambda > 0 && report.lambda <= 1);
    }

    /* The pseudo-label check: the labelling model against the annotation of "a". */
    double check_dice[4] = {-1, -1, -1, -1};
    bool trusted = false;
    EXPECT(asfda_finetuner_check_pseudo_labels(NULL, NULL, 0, &fg_dice, NULL), ASFDA_STATUS_INVALID_ARGUMENT,
           "tuner");
    EXPECT(asfda_finetuner_check_pseudo_labels(tuner, NULL, 0, NULL, NULL), ASFDA_STATUS_INVALID_ARGUMENT,
           "out_foreground_dice");
    EXPECT(asfda_finetuner_check_pseudo_labels(tuner, check_dice, 3, &fg_dice, NULL),
           ASFDA_STATUS_INVALID_ARGUMENT, "4 classes");
    CHECK(fg_dice == -1 && check_dice[0] == -1);
    must(asfda_finetuner_check_pseudo_labels(tuner, check_dice, 4, &fg_dice, &trusted), "check_pseudo_labels");
    for (int c = 0; c < 4; c++) CHECK(check_dice[c] >= 0.0 && check_dice[c] <= 1.0);
    CHECK(fabs(fg_dice - (check_dice[1] + check_dice[2] + check_dice[3]) / 3) < 1e-12);
    CHECK(trusted == (fg_dice >= o.pseudo_label_min_dice));

    uint64_t steps = 0;
    must(asfda_finetuner_steps_done(tuner, &steps), "steps_done");
    CHECK(steps == 2);

    /* Evaluation. */
    size_t classes = 0;
    EXPECT(asfda_finetuner_classes(NULL, &classes), ASFDA_STATUS_INVALID_ARGUMENT, "tuner");
    EXPECT(asfda_finetuner_classes(tuner, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_classes");
    must(asfda_finetuner_classes(tuner, &classes), "classes");
    CHECK(classes == 4);
    const AsfdaVolume *images[1] = {image}, *labels[1] = {label}, *bad_labels[1] = {bad_value};
    double dice[4] = {-1, -1, -1, -1};
    EXPECT(asfda_finetuner_evaluate(tuner, NULL, labels, 1, dice, 4), ASFDA_STATUS_INVALID_ARGUMENT, "images");
    EXPECT(asfda_finetuner_evaluate(tuner, images, NULL, 1, dice, 4), ASFDA_STATUS_INVALID_ARGUMENT, "labels");
    EXPECT(asfda_finetuner_evaluate(tuner, images, labels, 0, dice, 4), ASFDA_STATUS_INVALID_ARGUMENT, "count");
    EXPECT(asfda_finetuner_evaluate(tuner, images, labels, 1, dice, 3), ASFDA_STATUS_INVALID_ARGUMENT, "4 classes");
    EXPECT(asfda_finetuner_evaluate(tuner, images, labels, 1, NULL, 4), ASFDA_STATUS_INVALID_ARGUMENT,
           "dice_per_class");
    EXPECT(asfda_finetuner_evaluate(tuner, images, bad_labels, 1, dice, 4), ASFDA_STATUS_INVALID_DATA, "value 9");
    CHECK(dice[0] == -1 && dice[3] == -1);
    must(asfda_finetuner_evaluate(tuner, images, labels, 1, dice, 4), "evaluate");
    for (int c = 0; c < 4; c++) CHECK(dice[c] >= 0.0 && dice[c] <= 1.0);

    /* Save, then resume: the resumed run's next step equals the uninterrupted run's. */
    snprintf(cp_path, sizeof cp_path, "%s/finetune.safetensors", work);
    EXPECT(asfda_finetuner_save_checkpoint(NULL, cp_path), ASFDA_STATUS_INVALID_ARGUMENT, "tuner");
    EXPECT(asfda_finetuner_save_checkpoint(tuner, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "path");
    EXPECT(asfda_finetuner_save_checkpoint(tuner, "/no/such/folder/x.safetensors"), ASFDA_STATUS_IO, "/no/such/folder");
    must(asfda_finetuner_save_checkpoint(tuner, cp_path), "save");

    AsfdaFineTuner *resumed = sentinel;
    EXPECT(asfda_finetuner_resume(NULL, cp_path, NULL, &resumed), ASFDA_STATUS_INVALID_ARGUMENT, "engine");
    EXPECT(asfda_finetuner_resume(engine, NULL, NULL, &resumed), ASFDA_STATUS_INVALID_ARGUMENT, "path");
    EXPECT(asfda_finetuner_resume(engine, cp_path, NULL, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_tuner");
    EXPECT(asfda_finetuner_resume(engine, "/no/such/file.safetensors", NULL, &resumed), ASFDA_STATUS_IO,
           "/no/such/file");
    snprintf(path, sizeof path, "%s/garbage.safetensors", work);
    FILE *f = fopen(path, "wb");
    if (!f) return 2;
    fputs("this is not a checkpoint", f);
    fclose(f);
    EXPECT(asfda_finetuner_resume(engine, path, NULL, &resumed), ASFDA_STATUS_FORMAT, "garbage");
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", bundle);
    EXPECT(asfda_finetuner_resume(engine, path, NULL, &resumed), ASFDA_STATUS_INVALID_DATA,
           "not an asfda fine-tuning checkpoint");
    CHECK(resumed == sentinel);
    must(asfda_finetuner_resume(engine, cp_path, NULL, &resumed), "resume");
    must(asfda_finetuner_steps_done(resumed, &steps), "steps_done");
    CHECK(steps == 2);
    must(asfda_finetuner_add_unlabeled(resumed, "u", unlabeled, NULL), "add_unlabeled (resumed)");
    must(asfda_finetuner_add_labeled(resumed, "a", image, label), "add_labeled (resumed)");
    AsfdaStepReport a, b;
    must(asfda_finetune_step(tuner, &a), "step 3");
    must(asfda_finetune_step(resumed, &b), "resumed step 3");
    CHECK(a.step == 3 && b.step == 3);
    CHECK(a.loss == b.loss && a.loss_ce == b.loss_ce && a.loss_dice == b.loss_dice && a.lr == b.lr);
    asfda_finetuner_free(resumed);

    /* Export: a complete bundle that loads; never over an existing folder. */
    snprintf(export_dir, sizeof export_dir, "%s/adapted", work);
    remove_bundle(export_dir);
    EXPECT(asfda_finetuner_export_bundle(NULL, export_dir), ASFDA_STATUS_INVALID_ARGUMENT, "tuner");
    EXPECT(asfda_finetuner_export_bundle(tuner, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "dir");
    must(asfda_finetuner_export_bundle(tuner, export_dir), "export");
    EXPECT(asfda_finetuner_export_bundle(tuner, export_dir), ASFDA_STATUS_INVALID_ARGUMENT, "already exists");
    AsfdaEngineOptions ao = eo;
    ao.bundle_path = export_dir;
    AsfdaEngine *adapted = NULL;
    must(asfda_engine_new(&ao, &adapted), "engine on the exported bundle");

    /* Apply: the engine then segments like the exported bundle. */
    EXPECT(asfda_finetuner_apply_to(NULL, engine), ASFDA_STATUS_INVALID_ARGUMENT, "tuner");
    EXPECT(asfda_finetuner_apply_to(tuner, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "engine");
    must(asfda_finetuner_apply_to(tuner, engine), "apply");
    AsfdaVolume *s1 = NULL, *s2 = NULL;
    must(asfda_segment_volume(engine, image, NULL, NULL, NULL, &s1, NULL, NULL), "segment (applied)");
    must(asfda_segment_volume(adapted, image, NULL, NULL, NULL, &s2, NULL, NULL), "segment (exported)");
    const float *d1, *d2;
    size_t n1, n2;
    must(asfda_volume_data(s1, &d1, &n1), "data");
    must(asfda_volume_data(s2, &d2, &n2), "data");
    CHECK(n1 == n2 && memcmp(d1, d2, n1 * sizeof *d1) == 0);
    asfda_volume_free(s1);
    asfda_volume_free(s2);
    asfda_engine_free(adapted);
    remove_bundle(export_dir);
    remove(cp_path);

    asfda_finetuner_free(tuner);
    asfda_finetuner_free(NULL);
    asfda_volume_free(image);
    asfda_volume_free(label);
    asfda_volume_free(bad_value);
    asfda_volume_free(shifted);
    asfda_volume_free(unlabeled);
    asfda_engine_free(engine);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("c_finetune_test: all checks passed\n");
    return 0;
}
