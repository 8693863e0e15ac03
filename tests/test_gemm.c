/* The GEMM path (CLBlast + the row-wise kernel) against the double-precision reference:
 * variant x mask x GQA x head_dim x sequence length, chunking under small workspace limits,
 * agreement with the tiled path, lse, strided/packed tensors, and the auto path's choice. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* fp32 GEMM accumulation over up to 700 keys and 512 dims vs a double reference. */
#define ATOL 2e-5
#define RTOL 2e-4

static const int head_dims[] = {8, 64, 128, 512};
static const int seqs[] = {1, 7, 129, 700};
static const int gqa[][2] = {{4, 1}, {4, 2}, {2, 2}}; /* heads_q, heads_kv: MQA, GQA, MHA */
enum { MASK_NONE, MASK_CAUSAL, MASK_WINDOW, N_MASKS };
#define N_HEAD_DIMS 4
#define N_SEQS 4
#define N_GQA 3

static float alpha_w[4] = {0.75f, 1.5f, -0.5f, 1.0f}, beta_w[4] = {1.25f, 0.5f, 2.0f, -1.0f};

static dipole_attn_desc gemm_desc(dipole_variant variant, int mask, int g, int head_dim,
                                  int seq_q, int seq_k)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = variant;
    d.batch = 1;
    d.heads_q = gqa[g][0];
    d.heads_kv = gqa[g][1];
    d.seq_q = seq_q;
    d.seq_k = seq_k;
    d.head_dim = head_dim;
    d.causal = mask == MASK_CAUSAL;
    if (mask == MASK_WINDOW) {
        d.window_left = 16;
        d.window_right = 2;
    }
    if (variant == DIPOLE_TWO_POLE) {
        d.pos_weight = alpha_w;
        d.neg_weight = beta_w;
    }
    d.path = DIPOLE_PATH_GEMM;
    return d;
}

/* SIGNEXP and ROUTED are discontinuous at s = 0: a key whose fp32 score lands on the other
 * side of 0 than the double reference's moves the output by up to 2 w |v| (SIGNEXP) or
 * w |v - v2| (ROUTED), whatever the path. An element that misses the plain tolerance may use
 * that allowance for keys whose |s| is within a typical fp32 dot-product error,
 * sqrt(d) 2^-24 scale sum|q_c k_c| (x4 margin); everything else must still be within
 * (atol, rtol). Returns the number of elements that needed the allowance. */
static size_t sign_allowance_check(const dipole_attn_desc *d, const float *q, const float *k,
                                   const float *v, const float *v2, const float *got,
                                   const float *ref)
{
    const int D = d->head_dim, hq = d->heads_q, hk = d->heads_kv, nq = d->seq_q, nk = d->seq_k;
    const double scale = d->scale != 0.0f ? d->scale : 1.0 / sqrt((double)D);
    const bool sign_variant = d->variant == DIPOLE_SIGNEXP || d->variant == DIPOLE_ROUTED;
    double *s = malloc(sizeof(double) * (size_t)nk), *tol = malloc(sizeof(double) * (size_t)nk);
    ck_assert_ptr_nonnull(s);
    ck_assert_ptr_nonnull(tol);
    size_t used = 0;
    char what[256];
    tu_desc_str(d, what, sizeof what);
    for (int b = 0; b < d->batch; b++)
        for (int i = 0; i < nq; i++)
            for (int h = 0; h < hq; h++) {
                const size_t row = (((size_t)b * nq + i) * hq + h) * D;
                tu_err e = tu_compare(got + row, ref + row, (size_t)D, ATOL, RTOL);
                if (e.worst_ratio <= 1)
                    continue;
                ck_assert_msg(sign_variant && e.nonfinite == 0,
                              "%s: b %d row %d head %d col %zu got %.9g want %.9g", what, b, i,
                              h, e.worst, (double)got[row + e.worst], (double)ref[row + e.worst]);
                /* This row's visible keys, scores and softmax(|s|) weights, in double. */
                const int kl = d->key_lengths ? d->key_lengths[b] : nk;
                const long diag = (long)i + kl - nq;
                const float *qr = q + row;
                double m = -INFINITY, sum = 0;
                for (int j = 0; j < nk; j++) {
                    bool vis = j < kl && (!d->causal || j <= diag) &&
                               (d->window_right < 0 || j <= diag + d->window_right) &&
                               (d->window_left < 0 || j >= diag - d->window_left);
                    const float *kr = k + (((size_t)b * nk + j) * hk + h / (hq / hk)) * D;
                    double dot = 0, mag = 0;
                    for (int c = 0; c < D; c++) {
                        dot += (double)qr[c] * kr[c];
                        mag += fabs((double)qr[c] * kr[c]);
                    }
                    s[j] = vis ? scale * dot : NAN;
                    tol[j] = 4.0 * sqrt((double)D) * ldexp(1.0, -24) * scale * mag;
                    if (vis)
                        m = fmax(m, fabs(s[j]));
                }
                for (int j = 0; j < nk; j++)
                    if (!isnan(s[j]))
                        sum += exp(fabs(s[j]) - m);
                for (int c = 0; c < D; c++) {
                    double allow = 0;
                    for (int j = 0; j < nk; j++) {
                        if (isnan(s[j]) || fabs(s[j]) > tol[j])
                            continue;
                        const size_t kv = (((size_t)b * nk + j) * hk + h / (hq / hk)) * D + c;
                        const double w = exp(fabs(s[j]) - m) / sum;
                        allow += d->variant == DIPOLE_SIGNEXP ? 2 * w * fabs((double)v[kv])
                                                              : w * fabs((double)v[kv] - v2[kv]);
                    }
                    const double err = fabs((double)got[row + c] - ref[row + c]);
                    ck_assert_msg(err <= ATOL + RTOL * fabs((double)ref[row + c]) + allow,
                                  "%s: b %d row %d head %d col %d got %.9g want %.9g (sign "
                                  "allowance %.3g)",
                                  what, b, i, h, c, (double)got[row + c],
                                  (double)ref[row + c], allow);
                }
                used++;
            }
    free(s);
    free(tol);
    return used;
}

/* tu_check_against_reference's inputs and tolerance, with the allowance above. */
static void check_gemm(const dipole_attn_desc *desc, uint64_t seed)
{
    const size_t nq = tu_q_elems(desc), nk = tu_kv_elems(desc);
    float *q = tu_random(nq, seed, 1.0f), *k = tu_random(nk, seed + 1, 1.0f);
    float *v = tu_random(nk, seed + 2, 1.0f), *v2 = tu_random(nk, seed + 3, 1.0f);
    float *got = malloc(sizeof(float) * nq), *ref = malloc(sizeof(float) * nq);
    ck_assert_ptr_nonnull(got);
    ck_assert_ptr_nonnull(ref);
    dipole_ctx *ctx = tu_ctx();
    char what[256];
    tu_desc_str(desc, what, sizeof what);
    dipole_status st = dipole_attention_host(ctx, desc, q, k, v, v2, got);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: %s: %s", what, dipole_status_string(st),
                  dipole_ctx_last_error(ctx));
    ck_assert_int_eq(dipole_reference(desc, q, k, v, v2, ref), DIPOLE_SUCCESS);
    const size_t used = sign_allowance_check(desc, q, k, v, v2, got, ref);
    if (used)
        fprintf(stderr, "%s: %zu row(s) within tolerance only with the sign allowance\n", what,
                used);
    free(q), free(k), free(v), free(v2), free(got), free(ref);
}

/* variant x mask x head_dim; each iteration runs two sequence lengths and one GQA layout,
 * rotated so that every variant meets every sequence length, head_dim, mask and layout. */
START_TEST(test_matrix)
{
    const int variant = _i / (N_MASKS * N_HEAD_DIMS);
    const int mask = (_i / N_HEAD_DIMS) % N_MASKS;
    const int hd = _i % N_HEAD_DIMS;
    const int g = (hd + mask) % N_GQA;
    for (int k = 0; k < 2; k++) {
        const int seq = seqs[(hd + mask + 2 * k) % N_SEQS];
        dipole_attn_desc d = gemm_desc((dipole_variant)variant, mask, g, head_dims[hd], seq, seq);
        d.batch = seq <= 129 ? 2 : 1;
        check_gemm(&d, (uint64_t)(_i * 10 + k));
    }
}
END_TEST

typedef struct shape {
    int batch, heads_q, heads_kv, seq_q, seq_k, causal, window_left, window_right, key_lengths;
} shape;

/* Shapes where the chunk key spans matter: seq_q != seq_k, padded batches, empty rows. */
static const shape shapes[] = {
    {1, 4, 2, 7, 300, 0, 5, 3, 0},     /* seq_q < seq_k, two-sided window */
    {2, 2, 2, 64, 7, 1, -1, -1, 1},    /* seq_q > seq_k: early causal rows see nothing */
    {3, 4, 1, 1, 1000, 0, -1, 0, 1},   /* decode, window_right 0, padded (one batch empty) */
    {2, 2, 1, 200, 260, 1, 40, -1, 1}, /* causal + left window + padding */
};
#define N_SHAPES (int)(sizeof shapes / sizeof shapes[0])

static dipole_attn_desc shape_desc(dipole_variant variant, const shape *s, int head_dim, int *kl)
{
    dipole_attn_desc d = gemm_desc(variant, MASK_NONE, 0, head_dim, s->seq_q, s->seq_k);
    d.batch = s->batch;
    d.heads_q = s->heads_q;
    d.heads_kv = s->heads_kv;
    d.causal = s->causal;
    d.window_left = s->window_left;
    d.window_right = s->window_right;
    const int pattern[3] = {s->seq_k * 2 / 3 + 1, s->seq_k, 0};
    for (int b = 0; b < 3; b++)
        kl[b] = pattern[b] > s->seq_k ? s->seq_k : pattern[b];
    if (s->key_lengths)
        d.key_lengths = kl;
    return d;
}

START_TEST(test_shapes)
{
    int kl[3];
    for (int s = 0; s < N_SHAPES; s++) {
        dipole_attn_desc d = shape_desc((dipole_variant)_i, &shapes[s], s % 2 ? 24 : 96, kl);
        check_gemm(&d, (uint64_t)(500 + _i * 10 + s));
    }
}
END_TEST

/* A 64 KiB workspace splits every problem into many chunks (of rows, and at seq 1 of heads);
 * the answer must not change. */
START_TEST(test_tiny_workspace)
{
    dipole_ctx *ctx = tu_ctx();
    const size_t saved = dipole_ctx_workspace_limit(ctx);
    const size_t limit = 64 << 10;
    ck_assert_int_eq(dipole_ctx_set_workspace_limit(ctx, limit), DIPOLE_SUCCESS);
    int kl[3];
    dipole_attn_desc descs[3];
    descs[0] = gemm_desc((dipole_variant)_i, MASK_CAUSAL, 1, 64, 300, 700);
    descs[0].batch = 2;
    descs[1] = shape_desc((dipole_variant)_i, &shapes[3], 40, kl);
    descs[2] = gemm_desc((dipole_variant)_i, MASK_NONE, 0, 32, 1, 4096); /* decode */
    descs[2].batch = 3;
    for (int i = 0; i < 3; i++) {
        dipole_plan plan;
        ck_assert_int_eq(dipole_attention_plan(ctx, &descs[i], &plan), DIPOLE_SUCCESS);
        ck_assert_int_eq(plan.path, DIPOLE_PATH_GEMM);
        ck_assert_msg(plan.workspace_bytes <= limit, "workspace %zu > %zu", plan.workspace_bytes,
                      limit);
        ck_assert_msg(plan.chunks > 1, "one chunk? %s", plan.reason);
        ck_assert_int_eq(plan.layout, DIPOLE_LAYOUT_NONE);
        ck_assert(plan.chunk_rows >= 1 && plan.chunk_slices >= 1);
        check_gemm(&descs[i], (uint64_t)(900 + _i * 10 + i));
    }
    ck_assert_int_eq(dipole_ctx_set_workspace_limit(ctx, saved), DIPOLE_SUCCESS);
}
END_TEST

/* A limit below one row of scores: DIPOLE_ERR_UNSUPPORTED with a reason, context still fine. */
START_TEST(test_workspace_too_small)
{
    dipole_ctx *ctx = tu_ctx();
    const size_t saved = dipole_ctx_workspace_limit(ctx);
    ck_assert_int_eq(dipole_ctx_set_workspace_limit(ctx, 1024), DIPOLE_SUCCESS);
    dipole_attn_desc d = gemm_desc(DIPOLE_SOFTMAX, MASK_NONE, 2, 16, 4, 700);
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    float *q = tu_random(nq, 1, 1), *k = tu_random(nk, 2, 1), *v = tu_random(nk, 3, 1);
    float *out = malloc(sizeof(float) * nq);
    dipole_plan plan;
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(plan.reason, "workspace limit"));
    ck_assert_int_eq(dipole_attention_host(ctx, &d, q, k, v, NULL, out), DIPOLE_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "workspace limit"));
    ck_assert_int_eq(dipole_ctx_set_workspace_limit(ctx, saved), DIPOLE_SUCCESS);
    tu_check_against_reference(&d, 77, 1.0f, ATOL, RTOL);
    free(q), free(k), free(v), free(out);
}
END_TEST

/* An output whose rows overlap (stride_seq < head_dim) used to reach CLBlast, which refused it
 * (-1014); validation now refuses it first, before anything is enqueued: no event is returned
 * and the context still computes afterwards. */
START_TEST(test_overlapping_out_refused)
{
    dipole_ctx *ctx = tu_ctx();
    dipole_attn_desc d = gemm_desc(DIPOLE_SOFTMAX, MASK_NONE, 2, 8, 4, 4);
    const size_t nq = tu_q_elems(&d);
    float *x = tu_random(nq, 5, 1.0f);
    cl_int err;
    cl_mem in = clCreateBuffer(dipole_ctx_cl_context(ctx), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                               nq * 4, x, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    cl_mem ob = clCreateBuffer(dipole_ctx_cl_context(ctx), CL_MEM_READ_WRITE, nq * 4, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    dipole_tensor t = dipole_tensor_dense(in, d.seq_k, d.heads_kv, d.head_dim);
    dipole_tensor to = dipole_tensor_dense(ob, d.seq_q, d.heads_q, d.head_dim);
    to.stride_seq = 1; /* rows overlap */
    cl_event ev = (cl_event)&ev;
    ck_assert_int_eq(dipole_attention(ctx, &d, &t, &t, &t, NULL, &to, NULL, &ev),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_null(ev);
    const char *msg = dipole_ctx_last_error(ctx);
    ck_assert_msg(strstr(msg, "out") && strstr(msg, "overlap"), "%s", msg);
    clFinish(dipole_ctx_queue(ctx));
    clReleaseMemObject(in);
    clReleaseMemObject(ob);
    free(x);
    check_gemm(&d, 6);
}
END_TEST

/* The two paths agree with each other (and each with the reference) on shapes both serve. */
START_TEST(test_tiled_equivalence)
{
    static const int dims[] = {1, 16, 80, 128, 256};
    const int variant = _i / 5, hd = dims[_i % 5];
    dipole_attn_desc d = gemm_desc((dipole_variant)variant, _i % 3, _i % 3, hd, 129, 150);
    d.batch = 2;
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    float *q = tu_random(nq, 31, 1), *k = tu_random(nk, 32, 1), *v = tu_random(nk, 33, 1),
          *v2 = tu_random(nk, 34, 1);
    float *og = malloc(sizeof(float) * nq), *ot = malloc(sizeof(float) * nq),
          *ref = malloc(sizeof(float) * nq);
    dipole_ctx *ctx = tu_ctx();
    ck_assert_int_eq(dipole_attention_host(ctx, &d, q, k, v, v2, og), DIPOLE_SUCCESS);
    d.path = DIPOLE_PATH_TILED;
    ck_assert_int_eq(dipole_attention_host(ctx, &d, q, k, v, v2, ot), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference(&d, q, k, v, v2, ref), DIPOLE_SUCCESS);
    tu_err e = tu_compare(og, ot, nq, 2 * ATOL, 2 * RTOL);
    ck_assert_msg(e.worst_ratio <= 1, "gemm %g vs tiled %g at %zu", (double)og[e.worst],
                  (double)ot[e.worst], e.worst);
    e = tu_compare(og, ref, nq, ATOL, RTOL);
    ck_assert_msg(e.worst_ratio <= 1, "gemm %g vs ref %g", (double)og[e.worst],
                  (double)ref[e.worst]);
    free(q), free(k), free(v), free(v2), free(og), free(ot), free(ref);
}
END_TEST

/* head_dim 512 on auto: the tiled kernel refuses it, the plan says so and takes GEMM. */
START_TEST(test_auto_takes_gemm_for_512)
{
    dipole_attn_desc d = gemm_desc(DIPOLE_SIGNEXP, MASK_CAUSAL, 1, 512, 33, 40);
    d.path = DIPOLE_PATH_AUTO;
    dipole_plan plan;
    ck_assert_int_eq(dipole_attention_plan(tu_ctx(), &d, &plan), DIPOLE_SUCCESS);
    ck_assert_int_eq(plan.path, DIPOLE_PATH_GEMM);
    ck_assert_msg(strstr(plan.reason, "tiled") && strstr(plan.reason, "gemm"), "%s", plan.reason);
    ck_assert_int_gt((int)plan.workspace_bytes, 0);
    tu_check_against_reference(&d, 512, 1.0f, ATOL, RTOL);
    /* Forcing the tiled path is refused with its reason. */
    d.path = DIPOLE_PATH_TILED;
    ck_assert_int_eq(dipole_attention_plan(tu_ctx(), &d, &plan), DIPOLE_ERR_UNSUPPORTED);
}
END_TEST

/* lse from the GEMM path matches the reference, -inf for rows that see no key (whose outputs
 * are exact zeros). */
START_TEST(test_lse)
{
    int kl[3];
    dipole_attn_desc d = shape_desc((dipole_variant)_i, &shapes[1], 40, kl); /* empty rows */
    for (int rep = 0; rep < 2; rep++) {
        if (rep == 1)
            d = gemm_desc((dipole_variant)_i, MASK_WINDOW, 1, 128, 129, 129);
        const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
        const size_t nl = (size_t)dipole_lse_count(d.variant) * d.batch * d.heads_q * d.seq_q;
        float *q = tu_random(nq, 41, 1), *k = tu_random(nk, 42, 1), *v = tu_random(nk, 43, 1),
              *v2 = tu_random(nk, 44, 1);
        float *out = malloc(nq * 4), *ref = malloc(nq * 4), *lse = malloc(nl * 4),
              *lse_ref = malloc(nl * 4);
        ck_assert_int_eq(dipole_attention_host_lse(tu_ctx(), &d, q, k, v, v2, out, lse),
                         DIPOLE_SUCCESS);
        ck_assert_int_eq(dipole_reference_lse(&d, q, k, v, v2, ref, lse_ref), DIPOLE_SUCCESS);
        tu_err e = tu_compare(lse, lse_ref, nl, 1e-5, 1e-5);
        ck_assert_msg(e.worst_ratio <= 1, "lse[%zu] = %g want %g", e.worst, (double)lse[e.worst],
                      (double)lse_ref[e.worst]);
        size_t empty = 0;
        for (size_t i = 0; i < nl; i++)
            empty += isinf(lse_ref[i]) && lse_ref[i] < 0;
        ck_assert(rep == 1 || empty > 0); /* the first shape has rows that see nothing */
        e = tu_compare(out, ref, nq, ATOL, RTOL);
        ck_assert_msg(e.worst_ratio <= 1, "out %g want %g", (double)out[e.worst],
                      (double)ref[e.worst]);
        for (size_t i = 0; i < nq; i++)
            if (ref[i] == 0.0f)
                ck_assert_float_eq(out[i], 0.0f);
        free(q), free(k), free(v), free(v2), free(out), free(ref), free(lse), free(lse_ref);
    }
}
END_TEST

/* Packed QKV(V2) in one buffer at offsets, GQA, output strided inside a larger buffer, lse in
 * a device buffer and the caller's event — on the GEMM path. */
START_TEST(test_packed_strided)
{
    dipole_ctx *ctx = tu_ctx();
    const int B = 2, N = 37, HQ = 4, HKV = 2, D = 24;
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = (dipole_variant)_i;
    d.batch = B, d.heads_q = HQ, d.heads_kv = HKV, d.seq_q = d.seq_k = N, d.head_dim = D;
    d.causal = 1;
    d.path = DIPOLE_PATH_GEMM;
    if (d.variant == DIPOLE_TWO_POLE) {
        d.pos_weight = alpha_w;
        d.neg_weight = beta_w;
    }
    /* packed[b][n]: q heads, then k, v, v2 heads, then 3 floats of padding */
    const size_t hw[4] = {HQ, HKV, HKV, HKV};
    const size_t per_token = (size_t)(HQ + 3 * HKV) * D + 3, total = (size_t)B * N * per_token + 5;
    float *packed = tu_random(total, 99 + _i, 1.0f);
    float *parts[4];
    size_t part_off[4], off = 5;
    for (int p = 0; p < 4; p++) {
        parts[p] = malloc(sizeof(float) * B * N * hw[p] * D);
        part_off[p] = off;
        off += hw[p] * D;
        for (size_t t = 0; t < (size_t)B * N; t++)
            memcpy(parts[p] + t * hw[p] * D, packed + part_off[p] + t * per_token,
                   sizeof(float) * hw[p] * D);
    }
    cl_int err;
    cl_context clc = dipole_ctx_cl_context(ctx);
    cl_mem buf = clCreateBuffer(clc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, total * 4, packed, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    /* out: [b][h][n][d] (heads outer) at offset 7 */
    const size_t out_total = 7 + (size_t)B * HQ * N * D;
    cl_mem obuf = clCreateBuffer(clc, CL_MEM_READ_WRITE, out_total * 4, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    const int np = dipole_lse_count(d.variant);
    const size_t nl = (size_t)np * B * HQ * N;
    cl_mem lbuf = clCreateBuffer(clc, CL_MEM_READ_WRITE, nl * 4, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    dipole_tensor t[4];
    for (int p = 0; p < 4; p++) {
        t[p].buffer = buf;
        t[p].offset = part_off[p];
        t[p].stride_batch = (size_t)N * per_token;
        t[p].stride_seq = per_token;
        t[p].stride_head = (size_t)D;
    }
    dipole_tensor to = {obuf, 7, (size_t)HQ * N * D, (size_t)D, (size_t)N * D};
    cl_event ev = NULL;
    ck_assert_int_eq(dipole_attention(ctx, &d, &t[0], &t[1], &t[2], &t[3], &to, lbuf, &ev),
                     DIPOLE_SUCCESS);
    ck_assert_ptr_nonnull(ev);
    ck_assert_int_eq(clWaitForEvents(1, &ev), CL_SUCCESS);
    clReleaseEvent(ev);
    float *raw = malloc(out_total * 4), *lse = malloc(nl * 4);
    ck_assert_int_eq(clEnqueueReadBuffer(dipole_ctx_queue(ctx), obuf, CL_TRUE, 0, out_total * 4,
                                         raw, 0, NULL, NULL),
                     CL_SUCCESS);
    ck_assert_int_eq(clEnqueueReadBuffer(dipole_ctx_queue(ctx), lbuf, CL_TRUE, 0, nl * 4, lse, 0,
                                         NULL, NULL),
                     CL_SUCCESS);
    const size_t nq = (size_t)B * N * HQ * D;
    float *out = malloc(nq * 4), *ref = malloc(nq * 4), *lse_ref = malloc(nl * 4);
    for (int b = 0; b < B; b++)
        for (int n = 0; n < N; n++)
            for (int h = 0; h < HQ; h++)
                memcpy(out + (((size_t)b * N + n) * HQ + h) * D,
                       raw + 7 + (((size_t)b * HQ + h) * N + n) * D, sizeof(float) * D);
    ck_assert_int_eq(dipole_reference_lse(&d, parts[0], parts[1], parts[2], parts[3], ref, lse_ref),
                     DIPOLE_SUCCESS);
    tu_err e = tu_compare(out, ref, nq, ATOL, RTOL);
    ck_assert_msg(e.worst_ratio <= 1, "packed: %g vs %g", (double)out[e.worst], (double)ref[e.worst]);
    e = tu_compare(lse, lse_ref, nl, 1e-5, 1e-5);
    ck_assert_msg(e.worst_ratio <= 1, "packed lse: %g vs %g", (double)lse[e.worst],
                  (double)lse_ref[e.worst]);
    clReleaseMemObject(buf);
    clReleaseMemObject(obuf);
    clReleaseMemObject(lbuf);
    for (int p = 0; p < 4; p++)
        free(parts[p]);
    free(packed), free(raw), free(lse), free(out), free(ref), free(lse_ref);
}
END_TEST

Suite *gemm_suite(void)
{
    Suite *s = suite_create("gemm");
    TCase *tc = tcase_create("gemm");
    tcase_set_timeout(tc, 1800);
    tcase_add_loop_test(tc, test_matrix, 0, 4 * N_MASKS * N_HEAD_DIMS);
    tcase_add_loop_test(tc, test_shapes, 0, 4);
    tcase_add_loop_test(tc, test_tiny_workspace, 0, 4);
    tcase_add_test(tc, test_workspace_too_small);
    tcase_add_test(tc, test_overlapping_out_refused);
    tcase_add_loop_test(tc, test_tiled_equivalence, 0, 4 * 5);
    tcase_add_test(tc, test_auto_takes_gemm_for_512);
    tcase_add_loop_test(tc, test_lse, 0, 4);
    tcase_add_loop_test(tc, test_packed_strided, 0, 4);
    suite_add_tcase(s, tc);
    return s;
}

/* ---------------------------------------------------------------- gemm-large */

/* N = 16384, d = 64, 8 heads, SIGNEXP on the GEMM path under the default 256 MiB limit: the
 * 8 GiB of scores must be chunked. 16 sampled rows are checked against the reference, each
 * computed alone (seq_q = 1 on that row's q, the head's full K and V; no mask, so the row's
 * position does not matter). */
START_TEST(test_large)
{
    const int N = 16384, H = 8, D = 64;
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = DIPOLE_SIGNEXP;
    d.batch = 1, d.heads_q = d.heads_kv = H, d.seq_q = d.seq_k = N, d.head_dim = D;
    d.path = DIPOLE_PATH_GEMM;
    dipole_ctx *ctx = tu_ctx();
    dipole_plan plan;
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_int_eq(plan.path, DIPOLE_PATH_GEMM);
    ck_assert_msg(plan.workspace_bytes <= dipole_ctx_workspace_limit(ctx), "%zu > %zu",
                  plan.workspace_bytes, dipole_ctx_workspace_limit(ctx));
    fprintf(stderr, "gemm-large: %s; workspace_bytes %zu (limit %zu)\n", plan.reason,
            plan.workspace_bytes, dipole_ctx_workspace_limit(ctx));
    const size_t n = (size_t)N * H * D;
    float *q = tu_random(n, 1601, 1), *k = tu_random(n, 1602, 1), *v = tu_random(n, 1603, 1);
    float *out = malloc(n * 4);
    ck_assert_ptr_nonnull(out);
    dipole_status st = dipole_attention_host(ctx, &d, q, k, v, NULL, out);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: %s", dipole_status_string(st),
                  dipole_ctx_last_error(ctx));

    dipole_attn_desc rd = d;
    rd.heads_q = rd.heads_kv = 1, rd.seq_q = 1;
    float *kh = malloc((size_t)N * D * 4), *vh = malloc((size_t)N * D * 4), ref[64];
    ck_assert_ptr_nonnull(kh);
    ck_assert_ptr_nonnull(vh);
    for (int sample = 0; sample < 16; sample++) {
        const int h = sample % H, i = (int)(((unsigned)sample * 2654435761u) % (unsigned)N);
        for (int j = 0; j < N; j++) {
            memcpy(kh + (size_t)j * D, k + ((size_t)j * H + h) * D, sizeof(float) * D);
            memcpy(vh + (size_t)j * D, v + ((size_t)j * H + h) * D, sizeof(float) * D);
        }
        const float *qi = q + ((size_t)i * H + h) * D, *oi = out + ((size_t)i * H + h) * D;
        ck_assert_int_eq(dipole_reference(&rd, qi, kh, vh, NULL, ref), DIPOLE_SUCCESS);
        tu_err e = tu_compare(oi, ref, D, ATOL, RTOL);
        ck_assert_msg(e.worst_ratio <= 1, "row %d head %d col %zu: %g want %g", i, h, e.worst,
                      (double)oi[e.worst], (double)ref[e.worst]);
    }
    free(q), free(k), free(v), free(out), free(kh), free(vh);
}
END_TEST

Suite *gemm_large_suite(void)
{
    Suite *s = suite_create("gemm-large");
    TCase *tc = tcase_create("gemm-large");
    tcase_set_timeout(tc, 3600);
    tcase_add_test(tc, test_large);
    suite_add_tcase(s, tc);
    return s;
}
