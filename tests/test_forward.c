/* The tiled forward against the double-precision reference, across the matrix:
 * variant x head_dim x causal x window x GQA x sequence lengths x seq_q != seq_k x key_lengths. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* fp32 accumulation over up to 1000 keys and 256 dims vs a double reference. */
#define ATOL 2e-5
#define RTOL 2e-4

static const int head_dims[] = {1, 8, 16, 24, 32, 64, 80, 96, 128, 256};
#define N_HEAD_DIMS (int)(sizeof head_dims / sizeof head_dims[0])
/* By class (indices into head_dims): below any vector width (1), a multiple of 8 but not of 16
 * (24), a multiple of 16 that is no power of two (80), the common power of two (128), the
 * largest (256); 64 runs every shape in test_all_shapes_d64. A class sweep runs exactly the
 * cases (shapes, seeds) the whole sweep runs at those head dims. */
static const int class_dims[] = {0, 3, 6, 8, 9};
static const int all_dims[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
static const int *swept = all_dims;
static int n_swept = N_HEAD_DIMS;

typedef struct shape {
    int batch, heads_q, heads_kv, seq_q, seq_k;
    int window_left, window_right;
    int key_lengths; /* nonzero: a per-batch key length pattern */
} shape;

static const shape shapes[] = {
    {1, 2, 2, 1, 1, -1, -1, 0},
    {1, 2, 2, 2, 2, -1, -1, 0},
    {2, 4, 1, 7, 7, -1, -1, 0},       /* MQA */
    {1, 4, 2, 64, 64, 16, -1, 0},     /* GQA, left window */
    {2, 2, 2, 129, 129, -1, -1, 1},   /* padded batch */
    {1, 4, 2, 7, 64, 5, 3, 0},        /* seq_q < seq_k, two-sided window */
    {1, 2, 1, 129, 1000, -1, -1, 0},  /* long keys, MQA */
    {2, 2, 2, 64, 7, -1, -1, 1},      /* seq_q > seq_k: early causal rows see nothing */
    {1, 1, 1, 1000, 1000, -1, -1, 0},
    {3, 4, 1, 1, 1000, -1, 0, 1},     /* decode, window_right 0, padded */
    {1, 2, 2, 129, 64, 0, 8, 0},      /* window_left 0 */
};
#define N_SHAPES (int)(sizeof shapes / sizeof shapes[0])

static void run_shape(dipole_variant variant, int head_dim, int causal, const shape *s, uint64_t seed)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = variant;
    d.batch = s->batch;
    d.heads_q = s->heads_q;
    d.heads_kv = s->heads_kv;
    d.seq_q = s->seq_q;
    d.seq_k = s->seq_k;
    d.head_dim = head_dim;
    d.causal = causal;
    d.window_left = s->window_left;
    d.window_right = s->window_right;
    d.path = DIPOLE_PATH_TILED;
    int kl[3];
    /* Lengths that cut tiles mid-way, a full one, and (for the third batch) none at all. */
    const int pattern[3] = {s->seq_k * 2 / 3 + 1, s->seq_k, 0};
    for (int b = 0; b < 3; b++)
        kl[b] = pattern[b] > s->seq_k ? s->seq_k : pattern[b];
    if (s->key_lengths)
        d.key_lengths = kl;
    float alpha[4] = {0.75f, 1.5f, -0.5f, 1.0f}, beta[4] = {1.25f, 0.5f, 2.0f, -1.0f};
    if (variant == DIPOLE_TWO_POLE) {
        d.pos_weight = alpha;
        d.neg_weight = beta;
    }
    tu_check_against_reference(&d, seed, 1.0f, ATOL, RTOL);
}

/* variant x head_dim x causal, each running a rotating third of the shapes so that every shape
 * meets every variant and many head dims. */
START_TEST(test_matrix)
{
    const int variant = _i / (n_swept * 2);
    const int hd = swept[(_i / 2) % n_swept];
    const int causal = _i % 2;
    const int whole_i = (variant * N_HEAD_DIMS + hd) * 2 + causal; /* _i of the whole sweep */
    for (int s = 0; s < N_SHAPES; s++)
        if ((s + hd + variant) % 3 == 0)
            run_shape((dipole_variant)variant, head_dims[hd], causal, &shapes[s],
                      (uint64_t)(whole_i * 100 + s));
}
END_TEST

/* Every shape for every variant at head_dim 64, causal on and off. */
START_TEST(test_all_shapes_d64)
{
    const int variant = _i / 2, causal = _i % 2;
    for (int s = 0; s < N_SHAPES; s++)
        run_shape((dipole_variant)variant, 64, causal, &shapes[s], (uint64_t)(7000 + _i * 100 + s));
}
END_TEST

/* Scores of exactly 0: sign 0 for SIGNEXP (no contribution, but exp(0) in the denominator),
 * routed to v2 for ROUTED. q = e0, k_j = e1 for even j (orthogonal), e0 for odd j. */
START_TEST(test_exact_zero_scores)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.batch = 1, d.heads_q = d.heads_kv = 1, d.seq_q = 3, d.seq_k = 8, d.head_dim = 16;
    d.path = DIPOLE_PATH_TILED;
    const int D = 16, Nk = 8;
    float q[3 * 16] = {0}, k[8 * 16] = {0}, v[8 * 16], v2[8 * 16], out[3 * 16], ref[3 * 16];
    for (int i = 0; i < 3; i++)
        q[i * D] = 1.0f;
    for (int j = 0; j < Nk; j++) {
        k[j * D + (j % 2 ? 0 : 1)] = 1.0f;
        for (int c = 0; c < D; c++) {
            v[j * D + c] = (float)(j + 1);
            v2[j * D + c] = (float)(-10 * (j + 1));
        }
    }
    const float s_pos = 0.25f; /* scale 1/sqrt(16) times q.k = 1 */
    for (int variant = DIPOLE_SOFTMAX; variant <= DIPOLE_TWO_POLE; variant++) {
        d.variant = (dipole_variant)variant;
        ck_assert_int_eq(dipole_attention_host(tu_ctx(), &d, q, k, v, v2, out), DIPOLE_SUCCESS);
        ck_assert_int_eq(dipole_reference(&d, q, k, v, v2, ref), DIPOLE_SUCCESS);
        tu_err e = tu_compare(out, ref, 3 * 16, 1e-6, 1e-6);
        ck_assert_msg(e.worst_ratio <= 1, "%s: %g vs %g", dipole_variant_name(d.variant),
                      (double)out[e.worst], (double)ref[e.worst]);
    }
    /* Closed form for SIGNEXP: 4 keys with s = 0.25 (values 2,4,6,8), 4 with s = 0. */
    const double w1 = exp(s_pos), w0 = 1.0;
    const double want = w1 * (2 + 4 + 6 + 8) / (4 * w1 + 4 * w0);
    d.variant = DIPOLE_SIGNEXP;
    ck_assert_int_eq(dipole_attention_host(tu_ctx(), &d, q, k, v, v2, out), DIPOLE_SUCCESS);
    ck_assert_double_eq_tol(out[0], want, 1e-5);
    /* ROUTED: the s = 0 keys take v2 (values -10, -30, -50, -70). */
    const double want_routed = (w1 * (2 + 4 + 6 + 8) + w0 * (-10 - 30 - 50 - 70)) / (4 * w1 + 4 * w0);
    d.variant = DIPOLE_ROUTED;
    ck_assert_int_eq(dipole_attention_host(tu_ctx(), &d, q, k, v, v2, out), DIPOLE_SUCCESS);
    ck_assert_double_eq_tol(out[0], want_routed, 1e-4);
}
END_TEST

/* Inputs x100 make |s| ~ 1e4: the running max must keep every exp in range. */
START_TEST(test_large_scores)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = (dipole_variant)_i;
    d.batch = 1, d.heads_q = 2, d.heads_kv = 1, d.seq_q = 33, d.seq_k = 150, d.head_dim = 32;
    d.causal = 1;
    d.path = DIPOLE_PATH_TILED;
    /* Near-one-hot weights: fp32 score error (~1e-7 |s| sqrt(d)) moves outputs by ~1e-3. */
    tu_err e = tu_check_against_reference(&d, 4242, 100.0f, 5e-3, 1e-3);
    ck_assert_int_eq((int)e.nonfinite, 0);
}
END_TEST

/* Rows that see no key output exact zeros: causal with seq_q > seq_k, and key length 0. */
START_TEST(test_fully_masked_rows)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = (dipole_variant)_i;
    d.batch = 2, d.heads_q = 2, d.heads_kv = 2, d.seq_q = 20, d.seq_k = 5, d.head_dim = 8;
    d.causal = 1;
    d.path = DIPOLE_PATH_TILED;
    const int kl[2] = {5, 0};
    d.key_lengths = kl;
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    float *q = tu_random(nq, 1, 1), *k = tu_random(nk, 2, 1), *v = tu_random(nk, 3, 1),
          *v2 = tu_random(nk, 4, 1), *out = malloc(nq * sizeof(float));
    const int np = dipole_lse_count(d.variant);
    float *lse = malloc(sizeof(float) * (size_t)np * 2 * 2 * 20);
    ck_assert_int_eq(dipole_attention_host_lse(tu_ctx(), &d, q, k, v, v2, out, lse), DIPOLE_SUCCESS);
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 20; i++)
            for (int h = 0; h < 2; h++) {
                const bool sees = b == 0 && i >= 15; /* key j <= i + 5 - 20 */
                for (int c = 0; c < 8; c++) {
                    float o = out[(((size_t)b * 20 + i) * 2 + h) * 8 + c];
                    ck_assert(isfinite(o));
                    if (!sees)
                        ck_assert_float_eq(o, 0.0f);
                }
                for (int p = 0; p < np; p++) {
                    float l = lse[(((size_t)p * 2 + b) * 2 + h) * 20 + i];
                    ck_assert(sees ? isfinite(l) : (isinf(l) && l < 0));
                }
            }
    free(q), free(k), free(v), free(v2), free(out), free(lse);
}
END_TEST

/* The log-sum-exp statistics match the reference's. */
START_TEST(test_lse_matches_reference)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = (dipole_variant)_i;
    d.batch = 2, d.heads_q = 4, d.heads_kv = 2, d.seq_q = 70, d.seq_k = 90, d.head_dim = 40;
    d.causal = 1;
    d.path = DIPOLE_PATH_TILED;
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    const size_t nl = (size_t)dipole_lse_count(d.variant) * 2 * 4 * 70;
    float *q = tu_random(nq, 11, 1), *k = tu_random(nk, 12, 1), *v = tu_random(nk, 13, 1),
          *v2 = tu_random(nk, 14, 1);
    float *out = malloc(nq * 4), *ref = malloc(nq * 4), *lse = malloc(nl * 4), *lse_ref = malloc(nl * 4);
    ck_assert_int_eq(dipole_attention_host_lse(tu_ctx(), &d, q, k, v, v2, out, lse), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference_lse(&d, q, k, v, v2, ref, lse_ref), DIPOLE_SUCCESS);
    tu_err e = tu_compare(lse, lse_ref, nl, 1e-5, 1e-5);
    ck_assert_msg(e.worst_ratio <= 1, "lse[%zu] = %g want %g", e.worst, (double)lse[e.worst],
                  (double)lse_ref[e.worst]);
    free(q), free(k), free(v), free(v2), free(out), free(ref), free(lse), free(lse_ref);
}
END_TEST

Suite *forward_suite(void)
{
    Suite *s = suite_create("forward");
    if (tu_sweep_classes()) {
        swept = class_dims;
        n_swept = (int)(sizeof class_dims / sizeof class_dims[0]);
    }
    TCase *tc = tcase_create("tiled");
    tcase_set_timeout(tc, 1800);
    tcase_add_loop_test(tc, test_matrix, 0, 4 * n_swept * 2);
    tcase_add_loop_test(tc, test_all_shapes_d64, 0, 4 * 2);
    tcase_add_test(tc, test_exact_zero_scores);
    tcase_add_loop_test(tc, test_large_scores, 0, 4);
    tcase_add_loop_test(tc, test_fully_masked_rows, 0, 4);
    tcase_add_loop_test(tc, test_lse_matches_reference, 0, 4);
    suite_add_tcase(s, tc);
    return s;
}
