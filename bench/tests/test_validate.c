/* Validation by reduced problems must agree with the full reference (so a correct device
 * passes) and must catch a wrong row, a wrong mask and the injected error. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bench_tests.h"

typedef struct fake_device {
    const bench_point *p;
    const float *out; /* what the "device" computed, dense [B, Nq, Hq, d] */
    int reads;
} fake_device;

static int fetch(void *user, int b, int i, int h, float *dst)
{
    fake_device *f = user;
    const bench_point *p = f->p;
    const size_t d = (size_t)p->head_dim;
    memcpy(dst, f->out + (((size_t)b * p->seq_q + i) * p->heads_q + h) * d, d * sizeof(float));
    f->reads++;
    return 0;
}

/* The same for a --varlen twin: rows of its own layout (a packed batch is batch 0). */
static int fetch_layout(void *user, int b, int i, int h, float *dst)
{
    fake_device *f = user;
    const bench_point *p = f->p;
    const bench_layout l = bench_point_layout(p);
    const size_t d = (size_t)p->head_dim;
    memcpy(dst, f->out + (((size_t)b * l.rows_q + i) * p->heads_q + h) * d, d * sizeof(float));
    f->reads++;
    return 0;
}

static float *inputs(size_t n, unsigned seed)
{
    float *x = malloc(n * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < n; i++)
        x[i] = sinf(0.7f * (float)i + (float)seed) * 1.5f;
    return x;
}

static float *full_reference(const bench_point *p, const bench_host_inputs *in, int causal)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = p->variant;
    d.batch = p->batch, d.heads_q = p->heads_q, d.heads_kv = p->heads_kv;
    d.seq_q = p->seq_q, d.seq_k = p->seq_k, d.head_dim = p->head_dim;
    d.causal = causal;
    float *out = malloc(sizeof(float) * (size_t)p->batch * p->seq_q * p->heads_q * p->head_dim);
    ck_assert_ptr_nonnull(out);
    ck_assert_int_eq(dipole_reference(&d, in->q, in->k, in->v, in->v2, out), DIPOLE_SUCCESS);
    return out;
}

START_TEST(agrees_with_full_reference)
{
    static const int shapes[][3] = {{33, 33, 1}, {5, 40, 1}, {40, 5, 1}, {17, 29, 0}, {1, 64, 1}};
    const int variant = _i;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        bench_point p = {0};
        p.variant = (dipole_variant)variant;
        p.batch = 2, p.heads_q = 4, p.heads_kv = 2, p.head_dim = 16;
        p.seq_q = shapes[s][0], p.seq_k = shapes[s][1], p.causal = shapes[s][2];
        const size_t nq = (size_t)2 * p.seq_q * 4 * 16, nk = (size_t)2 * p.seq_k * 2 * 16;
        float *q = inputs(nq, 1), *k = inputs(nk, 2), *v = inputs(nk, 3), *v2 = inputs(nk, 4);
        bench_host_inputs in = {q, k, v, v2, NULL};
        float *out = full_reference(&p, &in, p.causal);
        fake_device dev = {&p, out, 0};
        bench_row r;
        memset(&r, 0, sizeof r);
        /* Every row of the problem, so the whole output is compared. */
        const int all = p.batch * p.heads_q * p.seq_q;
        ck_assert_msg(bench_validate(&p, &in, fetch, &dev, 4 * all, 1e-6, 1e-6, false, &r),
                      "variant %d shape %zu: %s", variant, s, r.reason);
        ck_assert_int_eq(r.checked_rows, all);
        ck_assert_double_le(r.max_abs_err, 1e-6);
        free(out);
        free(q), free(k), free(v), free(v2);
    }
}
END_TEST

/* DIFF (q, k with two heads a head) and head_dim_v != head_dim, forward (out rows of dv) and
 * backward (dq rows of both pole heads), against the full references; a wrong column of the
 * second pole's dq is caught. */
START_TEST(diff_and_head_dim_v)
{
    for (int c = 0; c < 4; c++) {
        bench_point p = {0};
        p.variant = c < 2 ? DIPOLE_DIFF : DIPOLE_TWO_POLE;
        p.pass = c % 2 ? BENCH_BWD : BENCH_FWD;
        p.batch = 2, p.heads_q = 4, p.heads_kv = 2, p.head_dim = 8, p.head_dim_v = 12;
        p.seq_q = 9, p.seq_k = 13, p.causal = 1;
        const int ns = bench_score_maps(p.variant), dv = 12;
        const size_t nq = (size_t)2 * 9 * 4 * ns * 8, nk = (size_t)2 * 13 * 2 * ns * 8;
        const size_t nv = (size_t)2 * 13 * 2 * dv, no = (size_t)2 * 9 * 4 * dv;
        float *q = inputs(nq, 1), *k = inputs(nk, 2), *v = inputs(nv, 3), *v2 = inputs(nv, 4);
        float *dout = inputs(no, 5);
        bench_host_inputs in = {q, k, v, v2, dout};
        dipole_attn_desc d;
        dipole_attn_desc_default(&d);
        d.variant = p.variant;
        d.batch = 2, d.heads_q = 4, d.heads_kv = 2, d.seq_q = 9, d.seq_k = 13, d.head_dim = 8;
        d.head_dim_v = dv, d.causal = 1;
        const bool bwd = p.pass == BENCH_BWD;
        float *got = malloc(sizeof(float) * (bwd ? nq : no));
        float *gk = malloc(sizeof(float) * nk), *gv = malloc(sizeof(float) * nv * 2);
        ck_assert(got && gk && gv);
        if (bwd)
            ck_assert_int_eq(dipole_reference_backward(&d, q, k, v, v2, dout, got, gk, gv,
                                                       gv + nv, NULL, NULL),
                             DIPOLE_SUCCESS);
        else
            ck_assert_int_eq(dipole_reference(&d, q, k, v, v2, got), DIPOLE_SUCCESS);
        /* the "device" rows: out of dv, or dq of ns head_dim per head */
        bench_point fp = p;
        fp.head_dim = bwd ? ns * 8 : dv;
        fake_device dev = {&fp, got, 0};
        bench_row r;
        memset(&r, 0, sizeof r);
        const int all = 2 * 4 * 9;
        ck_assert_msg(bench_validate(&p, &in, fetch, &dev, 4 * all, 1e-6, 1e-6, false, &r),
                      "case %d: %s", c, r.reason);
        ck_assert_int_eq(r.checked_rows, all);
        if (bwd && ns == 2) {
            for (size_t row = 0; row < (size_t)all; row++)
                got[row * 16 + 8 + 5] += 0.01f; /* column 5 of pole 1's dq, in every row */
            ck_assert(!bench_validate(&p, &in, fetch, &dev, 4 * all, 1e-6, 1e-6, false, &r));
            ck_assert_ptr_nonnull(strstr(r.reason, "column 13"));
        }
        free(got), free(gk), free(gv);
        free(q), free(k), free(v), free(v2), free(dout);
    }
}
END_TEST

START_TEST(catches_errors)
{
    bench_point p = {0};
    p.variant = DIPOLE_SIGNEXP;
    p.batch = 1, p.heads_q = 2, p.heads_kv = 2, p.head_dim = 8, p.seq_q = 24, p.seq_k = 24;
    p.causal = 1;
    const size_t n = (size_t)24 * 2 * 8;
    float *q = inputs(n, 5), *k = inputs(n, 6), *v = inputs(n, 7);
    bench_host_inputs in = {q, k, v, NULL, NULL};
    float *good = full_reference(&p, &in, 1);
    float *nomask = full_reference(&p, &in, 0);
    bench_row r;
    fake_device dev = {&p, good, 0};
    ck_assert(bench_validate(&p, &in, fetch, &dev, 16, 1e-5, 1e-5, false, &r));
    /* The injected error is caught and named. */
    ck_assert(!bench_validate(&p, &in, fetch, &dev, 16, 1e-5, 1e-5, true, &r));
    ck_assert_ptr_nonnull(strstr(r.reason, "mismatch at batch 0, head 0, row 0"));
    /* A device that ignored the causal mask: row 0 already differs. */
    dev.out = nomask;
    ck_assert(!bench_validate(&p, &in, fetch, &dev, 16, 1e-5, 1e-5, false, &r));
    /* One wrong value in the last row, which is always sampled. */
    good[n - 1] += 1e-3f;
    dev.out = good;
    ck_assert(!bench_validate(&p, &in, fetch, &dev, 2, 1e-5, 1e-5, false, &r));
    ck_assert_ptr_nonnull(strstr(r.reason, "row 23, column 7"));
    /* A NaN fails even though every comparison with it is false. */
    good[n - 1] = NAN;
    ck_assert(!bench_validate(&p, &in, fetch, &dev, 2, 1e-5, 1e-5, false, &r));
    free(good), free(nomask), free(q), free(k), free(v);
}
END_TEST

/* The full reference of a --varlen twin in its layout: packed through cu_seqlens, padded
 * through key_lengths; bounded = false drops them (a device that ignored the sequences). */
static float *varlen_reference(const bench_point *p, const bench_host_inputs *in, bool bounded)
{
    const bench_layout l = bench_point_layout(p);
    int *cu = bench_cu_seqlens(p), *kl = malloc(sizeof(int) * (size_t)p->batch);
    ck_assert(cu && kl);
    for (int b = 0; b < p->batch; b++)
        kl[b] = cu[b + 1] - cu[b];
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = p->variant;
    d.batch = bounded || p->batching == BENCH_PADDED ? p->batch : 1;
    d.heads_q = p->heads_q, d.heads_kv = p->heads_kv;
    d.seq_q = l.rows_q, d.seq_k = l.rows_k, d.head_dim = p->head_dim;
    d.causal = p->causal;
    if (bounded && p->batching == BENCH_PACKED)
        d.cu_seqlens_q = d.cu_seqlens_k = cu;
    if (bounded && p->batching == BENCH_PADDED)
        d.key_lengths = kl;
    float *out = malloc(sizeof(float) * (size_t)l.batch * l.rows_q * p->heads_q * p->head_dim);
    ck_assert_ptr_nonnull(out);
    ck_assert_int_eq(dipole_reference(&d, in->q, in->k, in->v, in->v2, out), DIPOLE_SUCCESS);
    free(cu), free(kl);
    return out;
}

/* A --varlen twin is validated in its own layout: a correct packed or padded output passes on
 * every row, one that ignores the sequences' bounds fails, and a packed mismatch names its
 * sequence. */
START_TEST(varlen_layouts)
{
    const int variant = _i;
    for (int t = BENCH_PACKED; t <= BENCH_PADDED; t++)
        for (int causal = 0; causal <= 1; causal++) {
            bench_point p = {0};
            p.variant = (dipole_variant)variant;
            p.batching = (bench_batching)t;
            p.varlen_seed = 5;
            p.batch = 3, p.heads_q = 4, p.heads_kv = 2, p.head_dim = 8;
            p.seq_q = p.seq_k = 24, p.causal = causal;
            const bench_layout l = bench_point_layout(&p);
            const size_t nq = (size_t)l.batch * l.rows_q * 4 * 8;
            const size_t nk = (size_t)l.batch * l.rows_k * 2 * 8;
            float *q = inputs(nq, 1), *k = inputs(nk, 2), *v = inputs(nk, 3), *v2 = inputs(nk, 4);
            bench_host_inputs in = {q, k, v, v2, NULL};
            float *good = varlen_reference(&p, &in, true);
            float *unbounded = varlen_reference(&p, &in, false);
            fake_device dev = {&p, good, 0};
            bench_row r;
            memset(&r, 0, sizeof r);
            const int all = l.batch * l.rows_q * p.heads_q;
            ck_assert_msg(bench_validate(&p, &in, fetch_layout, &dev, 4 * all, 1e-6, 1e-6, false,
                                         &r),
                          "variant %d batching %d causal %d: %s", variant, t, causal, r.reason);
            ck_assert_int_eq(r.checked_rows, all);
            dev.out = unbounded;
            ck_assert_msg(!bench_validate(&p, &in, fetch_layout, &dev, 4 * all, 1e-6, 1e-6,
                                          false, &r),
                          "variant %d batching %d causal %d: unbounded passed", variant, t,
                          causal);
            if (t == BENCH_PACKED) /* sequence 0 starts the packed rows: its row 0 is row 0 */
                ck_assert_msg(strstr(r.reason, "mismatch at sequence "), "%s", r.reason);
            free(good), free(unbounded), free(q), free(k), free(v), free(v2);
        }
}
END_TEST

/* x rounded to dt and widened back, as a device storing dt would return it. */
static void round_to(dipole_dtype dt, float *x, size_t n)
{
    uint16_t *h = malloc(n * sizeof *h);
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(dipole_convert(dt, h, DIPOLE_F32, x, n), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_convert(DIPOLE_F32, x, dt, h, n), DIPOLE_SUCCESS);
    free(h);
}

/* A half-precision output is the reference rounded: within its dtype's bound, not f32's. */
START_TEST(half_forward_tolerance)
{
    bench_point p = {0};
    p.variant = DIPOLE_SOFTMAX;
    p.batch = 1, p.heads_q = 2, p.heads_kv = 2, p.head_dim = 16, p.seq_q = 20, p.seq_k = 20;
    const size_t n = (size_t)20 * 2 * 16;
    float *q = inputs(n, 1), *k = inputs(n, 2), *v = inputs(n, 3);
    bench_host_inputs in = {q, k, v, NULL, NULL};
    float *f16 = full_reference(&p, &in, 0), *bf16 = full_reference(&p, &in, 0);
    round_to(DIPOLE_F16, f16, n);
    round_to(DIPOLE_BF16, bf16, n);
    bench_row r;
    fake_device dev = {&p, f16, 0};
    const int all = 40;
    p.dtype = DIPOLE_F16;
    ck_assert_msg(bench_validate(&p, &in, fetch, &dev, all, 1e-7, 1e-7, false, &r), "%s", r.reason);
    ck_assert_double_gt(r.worst_ratio, 0); /* the rounding is seen, and bounded */
    p.dtype = DIPOLE_F32;
    ck_assert(!bench_validate(&p, &in, fetch, &dev, all, 1e-7, 1e-7, false, &r));
    ck_assert_msg(strstr(r.reason, "rtol 1e-07 |ref|)"), "%s", r.reason);
    dev.out = bf16;
    p.dtype = DIPOLE_BF16;
    ck_assert_msg(bench_validate(&p, &in, fetch, &dev, all, 1e-7, 1e-7, false, &r), "%s", r.reason);
    p.dtype = DIPOLE_F16; /* bf16's rounding is coarser than f16's bound */
    ck_assert(!bench_validate(&p, &in, fetch, &dev, all, 1e-7, 1e-7, false, &r));
    ck_assert_msg(strstr(r.reason, "rtol 0.00098 |ref|, f16)"), "%s", r.reason);
    /* Two bf16 ulps off is an error even in bf16. */
    bf16[n - 1] *= 1 + 0x1p-6f;
    p.dtype = DIPOLE_BF16;
    ck_assert(!bench_validate(&p, &in, fetch, &dev, 2, 1e-7, 1e-7, false, &r));
    ck_assert_msg(strstr(r.reason, "row 19, column 15"), "%s", r.reason);
    /* A looser --rtol than the dtype's wins. */
    ck_assert(bench_validate(&p, &in, fetch, &dev, 2, 1e-7, 0.1, false, &r));
    free(f16), free(bf16), free(q), free(k), free(v);
}
END_TEST

/* Half-precision dq rows are bounded relative to the row's rms as well as each element. */
START_TEST(half_backward_tolerance)
{
    bench_point p = {0};
    p.variant = DIPOLE_SIGNEXP;
    p.pass = BENCH_BWD;
    p.batch = 1, p.heads_q = 1, p.heads_kv = 1, p.head_dim = 8, p.seq_q = 12, p.seq_k = 12;
    p.causal = 1;
    const size_t n = (size_t)12 * 8;
    float *q = inputs(n, 1), *k = inputs(n, 2), *v = inputs(n, 3), *dout = inputs(n, 4);
    float *dq = malloc(n * sizeof *dq), *dk = malloc(n * sizeof *dk), *dv = malloc(n * sizeof *dv);
    ck_assert(dq && dk && dv);
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = p.variant;
    d.batch = d.heads_q = d.heads_kv = 1;
    d.seq_q = d.seq_k = 12, d.head_dim = 8, d.causal = 1;
    ck_assert_int_eq(dipole_reference_backward(&d, q, k, v, NULL, dout, dq, dk, dv, NULL, NULL,
                                               NULL),
                     DIPOLE_SUCCESS);
    /* The last row (always sampled): shift its smallest element by 4 bf16 ulps of the row's rms,
     * far more than that element's own rounding. */
    float *row = dq + n - 8;
    double sq = 0;
    int small = 0;
    for (int c = 0; c < 8; c++) {
        sq += (double)row[c] * row[c];
        small = fabsf(row[c]) < fabsf(row[small]) ? c : small;
    }
    const double rms = sqrt(sq / 8);
    row[small] += (float)(4 * 0x1p-7 * rms);
    bench_host_inputs in = {q, k, v, NULL, dout};
    fake_device dev = {&p, dq, 0};
    bench_row r;
    p.dtype = DIPOLE_BF16;
    ck_assert_msg(bench_validate(&p, &in, fetch, &dev, 2, 1e-7, 1e-7, false, &r), "%s", r.reason);
    p.dtype = DIPOLE_F32; /* f32 rows keep the elementwise bound */
    ck_assert(!bench_validate(&p, &in, fetch, &dev, 2, 1e-7, 1e-7, false, &r));
    /* Beyond 8 rms it fails, and the message names the row's rms. */
    row[small] += (float)(8 * 0x1p-7 * rms);
    p.dtype = DIPOLE_BF16;
    ck_assert(!bench_validate(&p, &in, fetch, &dev, 2, 1e-7, 1e-7, false, &r));
    ck_assert_msg(strstr(r.reason, "(|ref| + 8 rms ") && strstr(r.reason, "bf16)"), "%s",
                  r.reason);
    free(q), free(k), free(v), free(dout), free(dq), free(dk), free(dv);
}
END_TEST

Suite *bench_validate_suite(void)
{
    Suite *s = suite_create("validate");
    TCase *tc = tcase_create("validate");
    tcase_add_loop_test(tc, agrees_with_full_reference, 0, 4);
    tcase_add_test(tc, catches_errors);
    tcase_add_test(tc, diff_and_head_dim_v);
    tcase_add_loop_test(tc, varlen_layouts, 0, 4);
    tcase_add_test(tc, half_forward_tolerance);
    tcase_add_test(tc, half_backward_tolerance);
    suite_add_tcase(s, tc);
    return s;
}
