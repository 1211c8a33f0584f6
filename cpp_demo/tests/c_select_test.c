/* C11 consumer of the selection C ABI: builds scores from JSON text, runs asfda_select with
 * several methods and rounds, reads picks, components, reliable ids and JSON, and checks that
 * every error path returns the right status, a message, and leaves out-parameters untouched.
 * usage: c_select_test (no arguments, no model needed) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asfda.h"

#include "check.h"

/* The Score JSON format (format_version 1) with a 2-bin histogram holding no voxels. */
static void score_json(char *buf, size_t cap, const char *id, const char *embedding, double gap, double asd,
                       double confidence, double fg) {
    int n = snprintf(buf, cap,
                     "{\"format_version\":1,\"id\":\"%s\",\"embedding\":[%s],\"gap_kl\":%.17g,\"gap_anchor\":%.17g,"
                     "\"asd\":%.17g,\"asd_threshold\":0.0,\"confidence\":%.17g,\"foreground_fraction\":%.17g,"
                     "\"entropy_histogram\":[0,0],\"voxels\":1000,\"foreground_voxels\":0,\"options\":{"
                     "\"foreground_dilation\":2,\"threshold\":\"first_peak\",\"histogram_bins\":2,"
                     "\"peak_smoothing\":5,\"class_balanced\":false,\"variance_floor\":0.01}}",
                     id, embedding, gap, gap / 10.0, asd, confidence, fg);
    if (n < 0 || (size_t)n >= cap) {
        fprintf(stderr, "score JSON too long\n");
        exit(2);
    }
}

static AsfdaScore *make_score(const char *id, const char *embedding, double gap, double asd, double confidence,
                              double fg) {
    char json[1024];
    score_json(json, sizeof json, id, embedding, gap, asd, confidence, fg);
    AsfdaScore *s = NULL;
    if (asfda_score_from_json(json, &s) != ASFDA_STATUS_OK) {
        fprintf(stderr, "cannot read score %s: %s\n", id, asfda_last_error_message());
        exit(2);
    }
    return s;
}

#define N 7
/* a: best; a_dup: near-copy of a; lab: labeled in round 2; b..d distinct, lower scores; z: no foreground. */
static const char *IDS[N] = {"a", "a_dup", "b", "c", "d", "lab", "z"};

static void make_pool(AsfdaScore *scores[N]) {
    scores[0] = make_score("a", "1,0,0,0,0,0", 9.0, 0.9, 0.95, 0.2);
    scores[1] = make_score("a_dup", "1,0.001,0,0,0,0", 8.9, 0.89, 0.94, 0.2);
    scores[2] = make_score("b", "0,1,0,0,0,0", 5.0, 0.8, 0.5, 0.2);
    scores[3] = make_score("c", "0,0,1,0,0,0", 4.0, 0.7, 0.6, 0.2);
    scores[4] = make_score("d", "0,0,0,1,0,0", 3.0, 0.6, 0.7, 0.2);
    scores[5] = make_score("lab", "0,0,0,0,1,0", 1.0, 0.1, 0.9, 0.2);
    scores[6] = make_score("z", "0,0,0,0,0.7,0.7", 2.0, 0.5, 0.99, 0.0);
}

static const char *pick_id(const AsfdaSelection *sel, size_t i) {
    const char *id = asfda_selection_pick_id(sel, i);
    return id ? id : "(null)";
}

static void test_score_json_format(void) {
    /* The JSON written here must read back and re-serialise to the same values. */
    AsfdaScore *s = make_score("x", "0.6,0.8", 1.5, 0.25, 0.75, 0.125);
    AsfdaScoreValues v;
    CHECK(asfda_score_values(s, &v) == ASFDA_STATUS_OK);
    CHECK(v.gap_kl == 1.5 && v.asd == 0.25 && v.confidence == 0.75 && v.foreground_fraction == 0.125);
    CHECK(v.embedding_len == 2);
    asfda_score_free(s);
    /* JSON has no NaN or infinity: such scores cannot be built through JSON (the Rust tests cover
     * NaN/Inf in select). The parser refuses them as FORMAT. */
    char json[1024];
    score_json(json, sizeof json, "nan", "1,0", 1.0, 0.5, 0.5, 0.1);
    char *at = strstr(json, "\"asd\":0.5");
    CHECK(at != NULL);
    if (at) memcpy(at + 6, "NaN", 3);
    AsfdaScore *bad = (AsfdaScore *)0x1;
    EXPECT(asfda_score_from_json(json, &bad), ASFDA_STATUS_FORMAT, "malformed");
    CHECK(bad == (AsfdaScore *)0x1);
}

static void test_asfda_round1_and_round2(AsfdaScore *const scores[N]) {
    AsfdaSelectOptions o = asfda_select_options_default();
    CHECK(o.method == ASFDA_SELECT_ASFDA && o.gap == ASFDA_GAP_KL && o.budget == 1);
    CHECK(o.w_dkd == 1.0 && o.w_asd == 1.0 && o.reliable_confidence_quantile == 0.5);
    o.budget = 3;
    const AsfdaScore *const *list = (const AsfdaScore *const *)scores;

    /* Round 1: a is best; a_dup (a near-copy with the next-best scores) is passed over. */
    AsfdaSelection *sel = NULL;
    CHECK(asfda_select(list, N, NULL, 0, &o, &sel) == ASFDA_STATUS_OK);
    CHECK(asfda_selection_count(sel) == 3);
    CHECK(strcmp(pick_id(sel, 0), "a") == 0);
    CHECK(strcmp(pick_id(sel, 1), "b") == 0);
    for (size_t i = 0; i < asfda_selection_count(sel); i++) CHECK(strcmp(pick_id(sel, i), "a_dup") != 0);
    AsfdaPick p;
    CHECK(asfda_selection_pick(sel, 0, &p) == ASFDA_STATUS_OK);
    CHECK(p.index == 0 && p.order == 0 && p.gap == 9.0 && p.asd == 0.9);
    CHECK(p.diversity == 1.0 && p.gap_rank == 1.0 && p.asd_rank == 1.0 && p.combined == 2.0);
    CHECK(asfda_selection_pick(sel, 1, &p) == ASFDA_STATUS_OK);
    CHECK(p.index == 2 && p.order == 1 && fabs(p.diversity - 1.0) < 1e-12);
    CHECK(fabs(p.dkd - p.gap_rank * p.diversity) < 1e-15);
    CHECK(fabs(p.combined - (p.dkd_rank + p.asd_rank)) < 1e-15);

    /* Reliable ids are sorted, not picked, and out of range is NULL. */
    size_t nr = asfda_selection_reliable_count(sel);
    CHECK(nr > 0 && nr < (size_t)N - 3);
    for (size_t i = 0; i < nr; i++) {
        const char *r = asfda_selection_reliable_id(sel, i);
        CHECK(r != NULL);
        for (size_t k = 0; r && k < asfda_selection_count(sel); k++) CHECK(strcmp(r, pick_id(sel, k)) != 0);
        if (r && i > 0) CHECK(strcmp(asfda_selection_reliable_id(sel, i - 1), r) < 0);
    }
    CHECK(asfda_selection_reliable_id(sel, nr) == NULL);
    CHECK(strstr(asfda_last_error_message(), "out of range") != NULL);
    CHECK(asfda_selection_pick_id(sel, 3) == NULL);

    /* JSON, sized with a first call of capacity 0. */
    size_t needed = 0;
    CHECK(asfda_selection_to_json(sel, NULL, 0, &needed) == ASFDA_STATUS_OK);
    char *json = malloc(needed);
    CHECK(json != NULL);
    size_t again = 0;
    CHECK(json && asfda_selection_to_json(sel, json, needed, &again) == ASFDA_STATUS_OK && again == needed);
    CHECK(json && strlen(json) + 1 == needed);
    CHECK(json && strstr(json, "\"method\":\"asfda\"") && strstr(json, "\"format_version\":1"));
    /* Read back: the same picks and the same JSON (exact round trip). */
    AsfdaSelection *back = NULL;
    CHECK(json && asfda_selection_from_json(json, &back) == ASFDA_STATUS_OK);
    CHECK(asfda_selection_count(back) == asfda_selection_count(sel));
    CHECK(back && strcmp(asfda_selection_pick_id(back, 0), asfda_selection_pick_id(sel, 0)) == 0);
    char *json2 = malloc(needed);
    CHECK(json2 && asfda_selection_to_json(back, json2, needed, &again) == ASFDA_STATUS_OK && again == needed);
    CHECK(json && json2 && strcmp(json, json2) == 0);
    free(json2);
    asfda_selection_free(back);
    AsfdaSelection *none = NULL;
    EXPECT(asfda_selection_from_json("{\"format_version\":99}", &none), ASFDA_STATUS_UNSUPPORTED, "format_version 99");
    EXPECT(asfda_selection_from_json("{\"format_version\":1", &none), ASFDA_STATUS_FORMAT, "malformed");
    EXPECT(asfda_selection_from_json(NULL, &none), ASFDA_STATUS_INVALID_ARGUMENT, "'json' is NULL");
    EXPECT(asfda_selection_from_json(json, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_selection");
    CHECK(none == NULL);
    free(json);
    asfda_selection_free(sel);

    /* Round 2: lab and a are labeled; they are neither picked nor reliable, and a_dup (close to a)
     * is passed over while distinct volumes remain. */
    const char *labeled[] = {"lab", "a"};
    o.budget = 2;
    sel = NULL;
    CHECK(asfda_select(list, N, labeled, 2, &o, &sel) == ASFDA_STATUS_OK);
    CHECK(asfda_selection_count(sel) == 2);
    for (size_t i = 0; i < 2; i++) {
        const char *id = pick_id(sel, i);
        CHECK(strcmp(id, "lab") != 0 && strcmp(id, "a") != 0 && strcmp(id, "a_dup") != 0);
    }
    for (size_t i = 0; i < asfda_selection_reliable_count(sel); i++) {
        const char *r = asfda_selection_reliable_id(sel, i);
        CHECK(r && strcmp(r, "lab") != 0 && strcmp(r, "a") != 0);
    }
    asfda_selection_free(sel);
}

static void test_baselines(AsfdaScore *const scores[N]) {
    const AsfdaScore *const *list = (const AsfdaScore *const *)scores;
    AsfdaSelectOptions o = asfda_select_options_default();
    o.budget = N;

    /* Entropy: ASD descending. */
    AsfdaSelectMethod m = ASFDA_SELECT_ASFDA;
    CHECK(asfda_select_method_from_name("entropy", &m) == ASFDA_STATUS_OK && m == ASFDA_SELECT_ENTROPY);
    o.method = (int32_t)m;
    AsfdaSelection *sel = NULL;
    CHECK(asfda_select(list, N, NULL, 0, &o, &sel) == ASFDA_STATUS_OK);
    const char *by_asd[N] = {"a", "a_dup", "b", "c", "d", "z", "lab"};
    for (size_t i = 0; i < N; i++) CHECK(strcmp(pick_id(sel, i), by_asd[i]) == 0);
    asfda_selection_free(sel);

    /* Random and foreground random: same seed, same picks; z (no foreground) comes last. */
    int32_t methods[2] = {ASFDA_SELECT_RANDOM, ASFDA_SELECT_FOREGROUND_RANDOM};
    for (int k = 0; k < 2; k++) {
        o.method = methods[k];
        o.seed = 42;
        AsfdaSelection *s1 = NULL, *s2 = NULL;
        CHECK(asfda_select(list, N, NULL, 0, &o, &s1) == ASFDA_STATUS_OK);
        CHECK(asfda_select(list, N, NULL, 0, &o, &s2) == ASFDA_STATUS_OK);
        for (size_t i = 0; i < N; i++) CHECK(strcmp(pick_id(s1, i), pick_id(s2, i)) == 0);
        if (methods[k] == ASFDA_SELECT_FOREGROUND_RANDOM) CHECK(strcmp(pick_id(s1, N - 1), "z") == 0);
        asfda_selection_free(s1);
        asfda_selection_free(s2);
    }

    /* Core-set and DKD run and pick every volume once. */
    int32_t greedy[2] = {ASFDA_SELECT_CORESET, ASFDA_SELECT_DKD};
    for (int k = 0; k < 2; k++) {
        o.method = greedy[k];
        CHECK(asfda_select(list, N, NULL, 0, &o, &sel) == ASFDA_STATUS_OK);
        int seen[N] = {0};
        for (size_t i = 0; i < N; i++) {
            AsfdaPick p;
            CHECK(asfda_selection_pick(sel, i, &p) == ASFDA_STATUS_OK && p.index < N);
            if (p.index < N) {
                seen[p.index]++;
                CHECK(strcmp(pick_id(sel, i), IDS[p.index]) == 0);
            }
        }
        for (size_t i = 0; i < N; i++) CHECK(seen[i] == 1);
        asfda_selection_free(sel);
    }
    AsfdaGapKind g = ASFDA_GAP_KL;
    CHECK(asfda_gap_kind_from_name("anchor", &g) == ASFDA_STATUS_OK && g == ASFDA_GAP_ANCHOR);
    EXPECT(asfda_select_method_from_name("kcenter", &m), ASFDA_STATUS_INVALID_ARGUMENT, "kcenter");
    EXPECT(asfda_select_method_from_name(NULL, &m), ASFDA_STATUS_INVALID_ARGUMENT, "'name' is NULL");
}

static void test_errors(AsfdaScore *const scores[N]) {
    const AsfdaScore *const *list = (const AsfdaScore *const *)scores;
    AsfdaSelectOptions o = asfda_select_options_default();
    o.budget = 2;
    AsfdaSelection *untouched = (AsfdaSelection *)0x1;
    AsfdaSelection *out = untouched;

    EXPECT(asfda_select(list, N, NULL, 0, &o, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_selection");
    EXPECT(asfda_select(list, N, NULL, 0, NULL, &out), ASFDA_STATUS_INVALID_ARGUMENT, "'options' is NULL");
    EXPECT(asfda_select(NULL, N, NULL, 0, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "'scores' is NULL");
    EXPECT(asfda_select(list, 0, NULL, 0, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "pool is empty");
    EXPECT(asfda_select(list, N, NULL, 1, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "'labeled_ids' is NULL");
    const AsfdaScore *with_null[2] = {scores[0], NULL};
    EXPECT(asfda_select(with_null, 2, NULL, 0, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "scores[1]");
    const char *null_id[] = {NULL};
    EXPECT(asfda_select(list, N, null_id, 1, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "labeled_ids[0]");

    o.budget = N + 1;
    EXPECT(asfda_select(list, N, NULL, 0, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "exceeds the pool of 7");
    const char *labeled[] = {"a", "b"};
    o.budget = N - 1;
    EXPECT(asfda_select(list, N, labeled, 2, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "exceeds the pool of 5");
    o.budget = 0;
    EXPECT(asfda_select(list, N, NULL, 0, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "budget is 0");
    o.budget = 1;
    o.method = 99;
    EXPECT(asfda_select(list, N, NULL, 0, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "options->method = 99");
    o.method = ASFDA_SELECT_ASFDA;
    o.gap = 7;
    EXPECT(asfda_select(list, N, NULL, 0, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "options->gap = 7");
    o.gap = ASFDA_GAP_ANCHOR;
    o.w_dkd = -1.0;
    EXPECT(asfda_select(list, N, NULL, 0, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "w_dkd");
    o.w_dkd = 1.0;
    o.reliable_distance_quantile = 1.5;
    EXPECT(asfda_select(list, N, NULL, 0, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "reliable_distance_quantile");
    o.reliable_distance_quantile = 0.5;
    o.w_asd = NAN;
    EXPECT(asfda_select(list, N, NULL, 0, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "w_asd is NaN");
    o.w_asd = 1.0;

    const char *unknown[] = {"nope"};
    EXPECT(asfda_select(list, N, unknown, 1, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "'nope'");
    const AsfdaScore *dup[3] = {scores[0], scores[2], scores[0]};
    EXPECT(asfda_select(dup, 3, NULL, 0, &o, &out), ASFDA_STATUS_INVALID_ARGUMENT, "'a' appears twice");
    AsfdaScore *wide = make_score("wide", "1,0,0", 1.0, 0.5, 0.5, 0.1);
    const AsfdaScore *mixed[2] = {scores[0], wide};
    EXPECT(asfda_select(mixed, 2, NULL, 0, &o, &out), ASFDA_STATUS_INVALID_DATA, "'wide' has 3");
    asfda_score_free(wide);
    CHECK(out == untouched);

    /* Accessors on NULL. */
    AsfdaPick p;
    EXPECT(asfda_selection_pick(NULL, 0, &p), ASFDA_STATUS_INVALID_ARGUMENT, "'selection' is NULL");
    CHECK(asfda_selection_count(NULL) == 0 && asfda_selection_reliable_count(NULL) == 0);
    CHECK(asfda_selection_pick_id(NULL, 0) == NULL);
    size_t needed = 0;
    EXPECT(asfda_selection_to_json(NULL, NULL, 0, &needed), ASFDA_STATUS_INVALID_ARGUMENT, "'selection' is NULL");
    asfda_selection_free(NULL);

    /* Out-of-range pick and NULL out-parameter on a real selection. */
    o.budget = 1;
    AsfdaSelection *sel = NULL;
    CHECK(asfda_select(list, N, NULL, 0, &o, &sel) == ASFDA_STATUS_OK);
    EXPECT(asfda_selection_pick(sel, 1, &p), ASFDA_STATUS_INVALID_ARGUMENT, "pick index 1 is out of range");
    EXPECT(asfda_selection_pick(sel, 0, NULL), ASFDA_STATUS_INVALID_ARGUMENT, "out_pick");
    asfda_selection_free(sel);
}

int main(int argc, char **argv) {
    (void)argv;
    if (argc != 1) {
        fprintf(stderr, "usage: c_select_test (no arguments)\n");
        return 2;
    }
    AsfdaScore *scores[N];
    make_pool(scores);
    test_score_json_format();
    test_asfda_round1_and_round2(scores);
    test_baselines(scores);
    test_errors(scores);
    for (size_t i = 0; i < N; i++) asfda_score_free(scores[i]);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("c_select_test: all checks passed\n");
    return 0;
}
