/* A small kernel sweep meant to run under oclgrind (meson test --setup=oclgrind): every
 * variant and mask on the tiled path, with both layouts and several tile shapes forced through
 * DIPOLE_TILE_CONFIG, forward and backward, in float and (fewer cases) half storage, on shapes
 * tiny enough for a simulator. oclgrind reports
 * out-of-bounds accesses, data races, uninitialised reads and API misuse; the wrapper
 * (tools/oclgrind-check.sh) fails the test on any report. Runs natively too. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "testutil.h"

START_TEST(test_small_sweep)
{
    static const int kl[2] = {6, 10};
    static const struct {
        const char *config;
        int block_m;
    } blocks[] = {
        {"layout=group,block_m=1,block_n=1", 1},
        {"layout=group,block_m=4,block_n=3", 4},
        {"layout=group,block_m=8,block_n=16", 8},
        {"layout=cpu,block_m=16,block_n=3,splitk_q=0", 16},
        {"layout=cpu,block_m=32,block_n=8,splitk_q=0", 32},
        /* split-K decode over every row of these shapes: chunks of 4 keys, merged; on the
         * group layout the 2 heads x 7 rows that share a KV head in one 16-row tile */
        {"layout=cpu,splitk_q=8,splitk_chunk=4", 1},
        {"layout=group,block_m=8,block_n=4,splitk_q=8,splitk_chunk=4", 16},
    };
    for (size_t b = 0; b < sizeof blocks / sizeof blocks[0]; b++) {
        setenv("DIPOLE_TILE_CONFIG", blocks[b].config, 1);
        tu_ctx_release(); /* the next context reads the setting */
        for (int variant = 0; variant < 4; variant++)
            for (int mask = 0; mask < 4; mask++) {
                dipole_attn_desc d;
                dipole_attn_desc_default(&d);
                d.variant = (dipole_variant)variant;
                d.batch = 2, d.heads_q = 2, d.heads_kv = 1, d.seq_q = 7, d.seq_k = 10;
                d.head_dim = 4;
                d.path = DIPOLE_PATH_TILED;
                d.causal = mask == 1 || mask == 3;
                if (mask == 2)
                    d.window_left = 2, d.window_right = 1;
                if (mask == 3)
                    d.key_lengths = kl;
                dipole_plan plan;
                ck_assert_int_eq(dipole_attention_plan(tu_ctx(), &d, &plan), DIPOLE_SUCCESS);
                ck_assert_msg(plan.block_m == blocks[b].block_m, "%s: %s", blocks[b].config, plan.reason);
                tu_check_against_reference(&d, 700 + (uint64_t)(variant * 4 + mask), 1.0f, 1e-5,
                                           1e-4);
            }
    }
    unsetenv("DIPOLE_TILE_CONFIG");
    tu_ctx_release();
}
END_TEST

/* A device buffer of n elements of dt holding host rounded to dt (NULL: uninitialised, written
 * by a kernel); host is rounded in place, so that the reference sees what the device reads. */
static cl_mem buffer_of(dipole_dtype dt, float *host, size_t n)
{
    const size_t es = dipole_dtype_size(dt);
    void *bits = host ? tu_round_to(dt, host, n) : NULL;
    cl_int err;
    cl_mem m = clCreateBuffer(dipole_ctx_cl_context(tu_ctx()),
                              host ? CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR : CL_MEM_READ_WRITE,
                              n * es, bits, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    free(bits);
    return m;
}

/* One tiled backward on the context's layout, gradients against the reference backward on the
 * same (rounded) inputs: fp32 bound 3e-5 + 3e-4 |ref|; in half storage the dtype suite's bound
 * (rtol 2^-10 / 2^-7, plus 8 rtol rms for the rounded out that delta reads). */
static void backward_case(const char *layout, dipole_variant variant, int mask, dipole_dtype dt)
{
    static const int kl[2] = {30, 9};
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = variant;
    d.dtype = dt;
    d.batch = 2, d.heads_q = 2, d.heads_kv = 1, d.seq_q = 11, d.seq_k = 35;
    d.head_dim = 3;
    d.path = DIPOLE_PATH_TILED;
    d.causal = mask == 1 || mask == 3;
    if (mask == 2)
        d.window_left = 4, d.window_right = 1;
    if (mask == 3)
        d.key_lengths = kl;
    const float alpha[2] = {0.5f, -1.0f}, beta[2] = {2.0f, 0.25f};
    d.pos_weight = alpha, d.neg_weight = beta;
    char what[256];
    tu_desc_str(&d, what, sizeof what);
    const int np = variant == DIPOLE_TWO_POLE ? 2 : 1;
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d), nl = (size_t)np * 2 * 2 * 11;
    const uint64_t seed = 900 + (uint64_t)(variant * 4 + mask);
    float *q = tu_random(nq, seed, 1.0f), *k = tu_random(nk, seed + 1, 1.0f);
    float *v = tu_random(nk, seed + 2, 1.0f), *v2 = tu_random(nk, seed + 3, 1.0f);
    float *dout = tu_random(nq, seed + 4, 1.0f);
    float *out = malloc(sizeof(float) * nq), *lse = malloc(sizeof(float) * nl);
    /* dq, dk, dv, dv2 back to back; device and reference */
    float *got = malloc(sizeof(float) * (nq + 3 * nk));
    float *want = malloc(sizeof(float) * (nq + 3 * nk));
    ck_assert(out && lse && got && want);
    float *host[7] = {q, k, v, v2, out, dout, lse};
    const size_t sizes[11] = {nq, nk, nk, nk, nq, nq, nl, nq, nk, nk, nk};
    cl_mem m[11];
    /* Inputs first (rounded in place), then the reference on them; out and lse come from the
     * reference forward, so that the backward kernels are checked on their own. */
    for (int i = 0; i < 4; i++)
        m[i] = buffer_of(dt, host[i], sizes[i]);
    m[5] = buffer_of(dt, dout, nq);
    ck_assert_int_eq(dipole_reference_lse(&d, q, k, v, v2, out, lse), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference_backward(&d, q, k, v, v2, dout, want, want + nq,
                                               want + nq + nk, want + nq + 2 * nk, NULL, NULL),
                     DIPOLE_SUCCESS);
    m[4] = buffer_of(dt, out, nq);
    m[6] = buffer_of(DIPOLE_F32, lse, nl);
    for (int i = 7; i < 11; i++)
        m[i] = buffer_of(dt, NULL, sizes[i]);
    dipole_tensor t[11];
    for (int i = 0; i < 11; i++)
        if (i != 6) {
            const bool query = sizes[i] == nq;
            t[i] = dipole_tensor_dense(m[i], query ? 11 : 35, query ? 2 : 1, 3);
        }
    const dipole_status st = dipole_attention_backward(tu_ctx(), &d, &t[0], &t[1], &t[2], &t[3],
                                                       &t[4], &t[5], m[6], &t[7], &t[8], &t[9],
                                                       &t[10], NULL, NULL, NULL);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s %s: %s", layout, what,
                  dipole_ctx_last_error(tu_ctx()));
    const size_t es = dipole_dtype_size(dt);
    void *bits = malloc((nq + 3 * nk) * es);
    ck_assert_ptr_nonnull(bits);
    size_t at = 0;
    for (int i = 7; i < 11; i++) {
        ck_assert_int_eq(clEnqueueReadBuffer(dipole_ctx_queue(tu_ctx()), m[i], CL_TRUE, 0,
                                             sizes[i] * es, (char *)bits + at * es, 0, NULL,
                                             NULL),
                         CL_SUCCESS);
        at += sizes[i];
    }
    ck_assert_int_eq(dipole_convert(DIPOLE_F32, got, dt, bits, at), DIPOLE_SUCCESS);
    const size_t n = nq + (variant >= 2 ? 3 : 2) * nk;
    const double rtol = dt == DIPOLE_F32 ? 3e-4 : dt == DIPOLE_F16 ? 1.0 / 1024 : 1.0 / 128;
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += (double)want[i] * want[i];
    const double atol = 3e-5 + (dt == DIPOLE_F32 ? 0 : 8 * rtol * sqrt(ss / (double)n));
    const tu_err e = tu_compare(got, want, n, atol, rtol);
    ck_assert_msg(e.worst_ratio <= 1 && e.nonfinite == 0,
                  "%s %s %s: gradient element %zu: %g vs %g (%zu non-finite)", layout,
                  dipole_dtype_name(dt), what, e.worst, got[e.worst], want[e.worst], e.nonfinite);
    for (int i = 0; i < 11; i++)
        clReleaseMemObject(m[i]);
    free(q), free(k), free(v), free(v2), free(dout), free(out), free(lse);
    free(got), free(want), free(bits);
}

static void set_backward_layout(const char *layout)
{
    setenv("DIPOLE_TILE_CONFIG", layout, 1);
    setenv("DIPOLE_BWD_BLOCK_M", "4", 1);
    setenv("DIPOLE_BWD_BLOCK_N", "8", 1);
    tu_ctx_release();
}

static void unset_layout(void)
{
    unsetenv("DIPOLE_TILE_CONFIG");
    unsetenv("DIPOLE_BWD_BLOCK_M");
    unsetenv("DIPOLE_BWD_BLOCK_N");
    tu_ctx_release();
}

/* The tiled backward on both layouts: every variant but TWO_POLE x every mask, float storage
 * (through the host twin, oclgrind also reports uninitialised values in out as written by the
 * forward CPU kernel, after other kernels ran in the process, not yet traced; hence out from
 * the reference). TWO_POLE is left out: oclgrind reports pole 1's
 * delta as uninitialised on both layouts (written by dipole_bwd_pre and by dipole_bwd_dq_cpu's
 * first walk), not yet traced; natively both match the reference in the backward suites.
 * Shapes cross the CPU kernels' 32-lane blocks and 8-row register blocks partly. */
START_TEST(test_backward_sweep)
{
    static const char *const layouts[] = {"layout=group", "layout=cpu"};
    for (size_t l = 0; l < sizeof layouts / sizeof layouts[0]; l++) {
        set_backward_layout(layouts[l]);
        for (int variant = 0; variant < 3; variant++)
            for (int mask = 0; mask < 4; mask++)
                backward_case(layouts[l], (dipole_variant)variant, mask, DIPOLE_F32);
    }
    unset_layout();
}
END_TEST

/* Half storage: the loads and stores of fp16 and bf16 on both layouts, forward (every variant,
 * causal with key lengths, through the host twin) and backward (as above, causal). */
START_TEST(test_half_sweep)
{
    static const int kl[2] = {6, 10};
    static const char *const layouts[] = {"layout=group,block_m=4,block_n=3",
                                          "layout=cpu,block_m=16,block_n=3,splitk_q=0"};
    for (size_t l = 0; l < sizeof layouts / sizeof layouts[0]; l++)
        for (int dti = 1; dti <= 2; dti++) {
            const dipole_dtype dt = (dipole_dtype)dti;
            set_backward_layout(layouts[l]);
            for (int variant = 0; variant < 4; variant++) {
                dipole_attn_desc d;
                dipole_attn_desc_default(&d);
                d.variant = (dipole_variant)variant;
                d.dtype = dt;
                d.batch = 2, d.heads_q = 2, d.heads_kv = 1, d.seq_q = 7, d.seq_k = 10;
                d.head_dim = 5;
                d.path = DIPOLE_PATH_TILED;
                d.causal = 1;
                d.key_lengths = kl;
                const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
                float *in[4];
                void *bits[5];
                for (int i = 0; i < 4; i++) {
                    const size_t n = i ? nk : nq;
                    in[i] = tu_random(n, 40 + (uint64_t)(variant * 4 + i), 1.0f);
                    bits[i] = tu_round_to(dt, in[i], n);
                }
                ck_assert_ptr_nonnull(bits[4] = malloc(nq * 2));
                float *got = malloc(nq * sizeof(float)), *want = malloc(nq * sizeof(float));
                ck_assert(got && want);
                ck_assert_int_eq(dipole_attention_host(tu_ctx(), &d, bits[0], bits[1], bits[2],
                                                       bits[3], bits[4]),
                                 DIPOLE_SUCCESS);
                dipole_convert(DIPOLE_F32, got, dt, bits[4], nq);
                ck_assert_int_eq(dipole_reference(&d, in[0], in[1], in[2], in[3], want),
                                 DIPOLE_SUCCESS);
                const tu_err e =
                    tu_compare(got, want, nq, 3e-5, dt == DIPOLE_F16 ? 1.0 / 1024 : 1.0 / 128);
                ck_assert_msg(e.worst_ratio <= 1, "%s %s variant %d: out[%zu] %g vs %g",
                              layouts[l], dipole_dtype_name(dt), variant, e.worst,
                              (double)got[e.worst], (double)want[e.worst]);
                for (int i = 0; i < 5; i++)
                    free(i < 4 ? in[i] : NULL), free(bits[i]);
                free(got), free(want);
                if (variant < 3)
                    backward_case(layouts[l], (dipole_variant)variant, 1, dt);
            }
        }
    unset_layout();
}
END_TEST

/* The paged forward reads no key past a sequence's length: pools hold exactly the pages in
 * use, the lengths are whole pages and every later column of the block table is -1, so a read
 * of key j >= key_lengths[b] (a tile's padding, a prefetch) would fall outside every buffer,
 * which oclgrind reports. Both layouts, with and without split decode; against the reference. */
START_TEST(test_paged_sweep)
{
    static const char *const layouts[] = {"layout=cpu,splitk_q=8,splitk_chunk=4",
                                          "layout=cpu,block_m=16,block_n=3,splitk_q=0",
                                          "layout=group,block_m=8,block_n=4,splitk_q=8,splitk_chunk=4",
                                          "layout=group,block_m=4,block_n=3,splitk_q=0"};
    enum { B = 2, PS = 4, PAGES = 4, COLS = 4, HKV = 1, D = 4 };
    int kl[B] = {12, 4};
    const int table[B * COLS] = {2, 0, 3, -1, 1, -1, -1, -1};
    for (size_t l = 0; l < sizeof layouts / sizeof layouts[0]; l++) {
        setenv("DIPOLE_TILE_CONFIG", layouts[l], 1);
        tu_ctx_release();
        dipole_ctx *ctx = tu_ctx();
        for (int variant = 0; variant < 4; variant += 2)
            for (int nq = 1; nq <= 3; nq += 2) {
                dipole_attn_desc d;
                dipole_attn_desc_default(&d);
                d.variant = (dipole_variant)variant;
                d.batch = B, d.heads_q = 2, d.heads_kv = HKV, d.seq_q = nq, d.seq_k = 12;
                d.head_dim = D;
                d.causal = 1;
                d.key_lengths = kl;
                d.path = DIPOLE_PATH_TILED;
                const size_t nqe = tu_q_elems(&d), row = HKV * D, pool_n = PAGES * PS * row;
                float *q = tu_random(nqe, 60 + (uint64_t)nq, 1.0f), *pool[3], *dense[3];
                for (int i = 0; i < 3; i++) {
                    pool[i] = tu_random(pool_n, 61 + (uint64_t)i, 1.0f);
                    dense[i] = calloc(tu_kv_elems(&d), sizeof(float));
                    ck_assert_ptr_nonnull(dense[i]);
                    for (int b = 0; b < B; b++)
                        for (int j = 0; j < kl[b]; j++)
                            memcpy(dense[i] + ((size_t)b * d.seq_k + j) * row,
                                   pool[i] + ((size_t)table[b * COLS + j / PS] * PS + j % PS) * row,
                                   row * sizeof(float));
                }
                cl_mem bq = buffer_of(DIPOLE_F32, q, nqe), bt, bo = buffer_of(DIPOLE_F32, NULL, nqe);
                cl_mem bp[3];
                dipole_tensor tp[3];
                for (int i = 0; i < 3; i++) {
                    bp[i] = buffer_of(DIPOLE_F32, pool[i], pool_n);
                    tp[i] = dipole_tensor_dense(bp[i], PS, HKV, D);
                }
                cl_int err;
                bt = clCreateBuffer(dipole_ctx_cl_context(ctx), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                                    sizeof table, (void *)table, &err);
                ck_assert_int_eq(err, CL_SUCCESS);
                const dipole_paged_kv pg = {bt, COLS, PS};
                const dipole_tensor tq = dipole_tensor_dense(bq, nq, 2, D);
                const dipole_tensor to = dipole_tensor_dense(bo, nq, 2, D);
                ck_assert_msg(dipole_attention_paged(ctx, &d, &tq, &tp[0], &tp[1], &tp[2], &pg, &to,
                                                     NULL, NULL) == DIPOLE_SUCCESS,
                              "%s: %s", layouts[l], dipole_ctx_last_error(ctx));
                float *got = malloc(nqe * sizeof(float)), *want = malloc(nqe * sizeof(float));
                ck_assert(got && want);
                ck_assert_int_eq(clEnqueueReadBuffer(dipole_ctx_queue(ctx), bo, CL_TRUE, 0,
                                                     nqe * sizeof(float), got, 0, NULL, NULL),
                                 CL_SUCCESS);
                ck_assert_int_eq(dipole_reference(&d, q, dense[0], dense[1], dense[2], want),
                                 DIPOLE_SUCCESS);
                const tu_err e = tu_compare(got, want, nqe, 1e-5, 1e-4);
                ck_assert_msg(e.worst_ratio <= 1, "%s variant %d nq %d: out[%zu] %g vs %g",
                              layouts[l], variant, nq, e.worst, (double)got[e.worst],
                              (double)want[e.worst]);
                for (int i = 0; i < 3; i++) {
                    clReleaseMemObject(bp[i]);
                    free(pool[i]);
                    free(dense[i]);
                }
                clReleaseMemObject(bq), clReleaseMemObject(bt), clReleaseMemObject(bo);
                free(q), free(got), free(want);
            }
    }
    unset_layout();
}
END_TEST

/* Packed sequences (lengths 5, 0, 9 against 7, 1, 9 keys) with soft-capping, ALiBi and a bias
 * with -inf entries and a row of them, on both layouts, forward and backward through the host
 * twins against the references: the kernels' sequence offsets, the bias's and ALiBi's indices
 * (clamped lanes and padding keys included) must stay inside every buffer. */
START_TEST(test_varlen_sweep)
{
    static const char *const layouts[] = {"layout=cpu,block_m=16,block_n=3",
                                          "layout=group,block_m=4,block_n=3"};
    static const int cuq[4] = {0, 5, 5, 14}, cuk[4] = {0, 7, 8, 17};
    static const float slopes[2] = {0.5f, 0.125f};
    enum { HQ = 2, HKV = 1, D = 4, NQ = 14, NK = 17 };
    for (size_t l = 0; l < sizeof layouts / sizeof layouts[0]; l++) {
        set_backward_layout(layouts[l]);
        for (int variant = 0; variant < 3; variant++) {
            dipole_attn_desc d;
            dipole_attn_desc_default(&d);
            d.variant = (dipole_variant)variant;
            d.batch = 3, d.heads_q = HQ, d.heads_kv = HKV, d.seq_q = NQ, d.seq_k = NK;
            d.head_dim = D;
            d.path = DIPOLE_PATH_TILED;
            d.causal = variant != 1;
            d.cu_seqlens_q = cuq, d.cu_seqlens_k = cuk;
            d.softcap = 2.0f;
            d.alibi_slopes = slopes;
            /* [1, 1 (every head), NQ, NK] */
            float *bias = tu_random((size_t)NQ * NK, 70 + (uint64_t)variant, 1.0f);
            for (int j = 0; j < NK; j++)
                bias[(size_t)3 * NK + j] = j % 3 ? bias[(size_t)3 * NK + j] : -INFINITY;
            for (int j = 0; j < NK; j++)
                bias[(size_t)12 * NK + j] = -INFINITY;
            const dipole_bias bs = {NULL, bias, DIPOLE_F32, 0, 0, 0, NK};
            d.bias = &bs;
            const size_t nq = (size_t)NQ * HQ * D, nk = (size_t)NK * HKV * D, nl = (size_t)HQ * NQ;
            const uint64_t seed = 80 + (uint64_t)variant * 8;
            float *q = tu_random(nq, seed, 1.0f), *k = tu_random(nk, seed + 1, 1.0f);
            float *v = tu_random(nk, seed + 2, 1.0f), *v2 = tu_random(nk, seed + 3, 1.0f);
            float *dout = tu_random(nq, seed + 4, 1.0f);
            float *got = malloc(sizeof(float) * (2 * nq + 3 * nk + nl));
            float *want = malloc(sizeof(float) * (2 * nq + 3 * nk + nl));
            ck_assert(got && want);
            ck_assert_msg(dipole_attention_host_lse(tu_ctx(), &d, q, k, v, v2, got, got + nq) ==
                              DIPOLE_SUCCESS,
                          "%s: %s", layouts[l], dipole_ctx_last_error(tu_ctx()));
            ck_assert_int_eq(dipole_reference_lse(&d, q, k, v, v2, want, want + nq),
                             DIPOLE_SUCCESS);
            tu_err e = tu_compare(got, want, nq + nl, 1e-5, 1e-4);
            ck_assert_msg(e.worst_ratio <= 1, "%s variant %d: out/lse[%zu] %g vs %g", layouts[l],
                          variant, e.worst, (double)got[e.worst], (double)want[e.worst]);
            float *g = got + nq + nl, *w = want + nq + nl;
            ck_assert_msg(dipole_attention_backward_host(tu_ctx(), &d, q, k, v, v2, dout, g,
                                                         g + nq, g + nq + nk, g + nq + 2 * nk,
                                                         NULL, NULL) == DIPOLE_SUCCESS,
                          "%s: %s", layouts[l], dipole_ctx_last_error(tu_ctx()));
            ck_assert_int_eq(dipole_reference_backward(&d, q, k, v, v2, dout, w, w + nq,
                                                       w + nq + nk, w + nq + 2 * nk, NULL, NULL),
                             DIPOLE_SUCCESS);
            e = tu_compare(g, w, nq + (variant >= 2 ? 3 : 2) * nk, 3e-5, 3e-4);
            ck_assert_msg(e.worst_ratio <= 1 && e.nonfinite == 0,
                          "%s variant %d: gradient[%zu] %g vs %g", layouts[l], variant, e.worst,
                          (double)g[e.worst], (double)w[e.worst]);
            free(q), free(k), free(v), free(v2), free(dout), free(bias), free(got), free(want);
        }
    }
    unset_layout();
}
END_TEST

Suite *oclgrind_small_suite(void)
{
    Suite *s = suite_create("oclgrind-small");
    TCase *tc = tcase_create("sweep");
    tcase_set_timeout(tc, 1200);
    tcase_add_test(tc, test_small_sweep);
    tcase_add_test(tc, test_backward_sweep);
    tcase_add_test(tc, test_half_sweep);
    suite_add_tcase(s, tc);
    TCase *paged = tcase_create("paged");
    tcase_set_timeout(paged, 1200);
    tcase_add_test(paged, test_paged_sweep);
    suite_add_tcase(s, paged);
    TCase *varlen = tcase_create("varlen");
    tcase_set_timeout(varlen, 1200);
    tcase_add_test(varlen, test_varlen_sweep);
    suite_add_tcase(s, varlen);
    return s;
}
