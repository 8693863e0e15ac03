/* Half-precision storage (desc.dtype = DIPOLE_F16 / DIPOLE_BF16): the host conversions checked
 * against properties that define them (nearest representable value, ties to even) and an
 * exhaustive decode written here; then the device forward and backward, every variant x dtype x
 * mask kind x GQA x head dims by class on the context's layout (the suite runs again on the
 * group layout) and on the GEMM path, against the double reference run on the same rounded
 * inputs; overflow, large scores, NaN/inf and argument errors.
 *
 * Tolerances: the reference sees exactly the device's inputs (the rounded values, widened), so
 * what separates them is the device's float32 arithmetic (the fp32 suites' bounds) and the
 * rounding of every stored output: at most half an ulp, 2^-11 relative for fp16 and 2^-8 for
 * bf16. The bounds are twice that, rtol 2^-10 (fp16) and 2^-7 (bf16), on top of the fp32 atol.
 * The backward's gradients also carry the forward's rounded out through delta = rowsum(dout *
 * out): half an ulp of each out element, summed over head_dim terms, moves every dS of the row
 * by P * (that error), so a gradient element's error follows the size of the whole tensor, not
 * its own (it is largest where the element itself is near 0). There the bound is
 * atol + rtol (|ref| + BWD_RMS_WEIGHT rms of the tensor); the worst case measured over these
 * suites on both layouts and the GEMM path used 4.4 of the 8. lse is stored as float32 and gets
 * the fp32 bound. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define F32_ATOL 3e-5
#define F32_RTOL 3e-4
#define F16_RTOL (1.0 / 1024)
#define BF16_RTOL (1.0 / 128)
#define BWD_RMS_WEIGHT 8

static double dtype_rtol(dipole_dtype dt)
{
    return dt == DIPOLE_F16 ? F16_RTOL : BF16_RTOL;
}

/* ---------------------------------------------------------------- host conversions */

/* binary16 decoded from its fields, written from the format's definition. */
static double half_value(uint16_t h)
{
    const int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
    double v = exp == 0 ? ldexp(man, -24) : exp == 31 ? (man ? NAN : INFINITY)
                                                      : ldexp(1024 + man, exp - 25);
    return sign ? -v : v;
}

START_TEST(test_f16_widen_exhaustive)
{
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t bits = (uint16_t)h;
        float x;
        ck_assert_int_eq(dipole_convert(DIPOLE_F32, &x, DIPOLE_F16, &bits, 1), DIPOLE_SUCCESS);
        const double want = half_value(bits);
        if (isnan(want))
            ck_assert_msg(isnan(x), "f16 0x%04x widened to %g, want NaN", h, (double)x);
        else
            ck_assert_msg((double)x == want && !signbit(x) == !signbit(want),
                          "f16 0x%04x widened to %.9g, want %.9g", h, (double)x, want);
        uint16_t back;
        ck_assert_int_eq(dipole_convert(DIPOLE_F16, &back, DIPOLE_F32, &x, 1), DIPOLE_SUCCESS);
        if (!isnan(want))
            ck_assert_msg(back == bits, "f16 0x%04x round trip gave 0x%04x", h, back);
        else
            ck_assert_msg((back & 0x7c00) == 0x7c00 && (back & 0x3ff), "NaN 0x%04x lost", h);
    }
}
END_TEST

/* Whether h is the nearest binary16 to x, ties to the even pattern, 65520 and beyond to inf. */
static bool nearest_half(float x, uint16_t h)
{
    const double v = (double)x, got = half_value(h);
    if (fabs(v) >= 65520.0)
        return isinf(got) && signbit(got) == signbit(v);
    if (isinf(got) || signbit(got) != signbit(v))
        return v == 0 ? got == 0 : false;
    const double err = fabs(got - v);
    for (int step = -1; step <= 1; step += 2) {
        const int nb = (int)(h & 0x7fff) + step;
        if (nb < 0 || nb > 0x7bff)
            continue;
        const double other = half_value((uint16_t)((h & 0x8000) | nb));
        const double oerr = fabs(other - v);
        if (oerr < err || (oerr == err && (h & 1)))
            return false;
    }
    return true;
}

/* The same for bfloat16: a float's upper half; neighbours one pattern away. */
static bool nearest_bf16(float x, uint16_t b)
{
    float got, other;
    uint32_t u = (uint32_t)b << 16;
    memcpy(&got, &u, 4);
    uint32_t xa;
    memcpy(&xa, &x, 4);
    xa &= 0x7fffffffu;
    /* Halfway between the largest bfloat16 (0x7f7f, odd) and 2^128: from there on, inf. */
    if (xa >= 0x7f7f8000u)
        return isinf(got) && signbit(got) == signbit(x);
    if (isinf(got))
        return false;
    const double err = fabs((double)got - (double)x);
    for (int step = -1; step <= 1; step += 2) {
        const int nb = (int)(b & 0x7fff) + step;
        if (nb < 0 || nb > 0x7f80)
            continue;
        u = (uint32_t)((b & 0x8000) | nb) << 16;
        memcpy(&other, &u, 4);
        const double oerr = isinf(other) ? INFINITY : fabs((double)other - (double)x);
        if (oerr < err || (oerr == err && (b & 1)))
            return false;
    }
    return true;
}

START_TEST(test_narrow_nearest_even)
{
    /* Random bit patterns over every exponent, plus the cases a rounding gets wrong first:
     * exact ties (odd and even), the largest half, the overflow boundary, subnormal ties. */
    enum { N = 200000 };
    float *x = malloc(sizeof(float) * (N + 16));
    ck_assert_ptr_nonnull(x);
    uint64_t s = 12345;
    for (int i = 0; i < N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t u = (uint32_t)(s >> 32);
        if ((u & 0x7f800000u) == 0x7f800000u) /* NaN/inf have their own test */
            u &= 0xbfffffffu;
        memcpy(&x[i], &u, 4);
    }
    const float edge[16] = {65504.0f, 65519.99f, 65520.0f, -65520.0f, 1.0f + 0x1p-11f,
                            1.0f + 3 * 0x1p-11f, 0x1p-25f, 3 * 0x1p-25f, 0x1p-24f * 1.5f,
                            0x1p-14f, 0x1p-14f - 0x1p-25f, -0.0f, 0.0f, 1.0f + 0x1p-8f,
                            1.0f + 3 * 0x1p-8f, 3.3895314e38f};
    memcpy(x + N, edge, sizeof edge);
    uint16_t *h = malloc(2 * (N + 16)), *b = malloc(2 * (N + 16));
    ck_assert(h && b);
    ck_assert_int_eq(dipole_convert(DIPOLE_F16, h, DIPOLE_F32, x, N + 16), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_convert(DIPOLE_BF16, b, DIPOLE_F32, x, N + 16), DIPOLE_SUCCESS);
    for (int i = 0; i < N + 16; i++) {
        ck_assert_msg(nearest_half(x[i], h[i]), "f16(%.9g) = 0x%04x is not the nearest even",
                      (double)x[i], h[i]);
        ck_assert_msg(nearest_bf16(x[i], b[i]), "bf16(%.9g) = 0x%04x is not the nearest even",
                      (double)x[i], b[i]);
    }
    ck_assert_uint_eq(h[N + 0], 0x7bff);
    ck_assert_uint_eq(h[N + 2], 0x7c00);
    ck_assert_uint_eq(h[N + 4], 0x3c00); /* tie, kept part even: down */
    ck_assert_uint_eq(h[N + 5], 0x3c02); /* tie, kept part odd: up */
    ck_assert_uint_eq(h[N + 6], 0x0000); /* 2^-25: tie between 0 and the least subnormal */
    ck_assert_uint_eq(h[N + 7], 0x0002);
    ck_assert_uint_eq(b[N + 13], 0x3f80);
    ck_assert_uint_eq(b[N + 14], 0x3f82);
    free(x), free(h), free(b);
}
END_TEST

START_TEST(test_nonfinite_and_errors)
{
    const float x[4] = {INFINITY, -INFINITY, NAN, -NAN};
    uint16_t h[4], b[4];
    float back[4];
    ck_assert_int_eq(dipole_convert(DIPOLE_F16, h, DIPOLE_F32, x, 4), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_convert(DIPOLE_BF16, b, DIPOLE_F32, x, 4), DIPOLE_SUCCESS);
    ck_assert_uint_eq(h[0], 0x7c00);
    ck_assert_uint_eq(h[1], 0xfc00);
    ck_assert_uint_eq(b[0], 0x7f80);
    ck_assert_uint_eq(b[1], 0xff80);
    for (int dt = 0; dt < 2; dt++) {
        ck_assert_int_eq(dipole_convert(DIPOLE_F32, back, dt ? DIPOLE_BF16 : DIPOLE_F16, dt ? b : h, 4),
                         DIPOLE_SUCCESS);
        ck_assert(isinf(back[0]) && back[0] > 0 && isinf(back[1]) && back[1] < 0);
        ck_assert(isnan(back[2]) && isnan(back[3]));
    }
    /* f16 <-> bf16 directly, and in place. */
    uint16_t y[2] = {0x3c00, 0xc000}; /* 1, -2 */
    ck_assert_int_eq(dipole_convert(DIPOLE_BF16, y, DIPOLE_F16, y, 2), DIPOLE_SUCCESS);
    ck_assert_uint_eq(y[0], 0x3f80);
    ck_assert_uint_eq(y[1], 0xc000);
    ck_assert_int_eq(dipole_convert((dipole_dtype)7, h, DIPOLE_F32, x, 1), DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_thread_last_error(), "7"));
    ck_assert_int_eq(dipole_convert(DIPOLE_F16, NULL, DIPOLE_F32, x, 1), DIPOLE_ERR_INVALID_ARG);
    ck_assert_int_eq(dipole_convert(DIPOLE_F16, NULL, DIPOLE_F32, NULL, 0), DIPOLE_SUCCESS);
    ck_assert_str_eq(dipole_dtype_name(DIPOLE_BF16), "bf16");
    ck_assert_str_eq(dipole_dtype_name((dipole_dtype)-1), "unknown");
    ck_assert_uint_eq(dipole_dtype_size(DIPOLE_F16), 2);
    ck_assert_uint_eq(dipole_dtype_size((dipole_dtype)3), 0);
}
END_TEST

/* ---------------------------------------------------------------- device */

/* Inputs in storage form and the same values widened (what the reference sees). */
typedef struct stored {
    size_t n;
    void *bits;
    float *wide;
} stored;

static stored stored_random(dipole_dtype dt, size_t n, uint64_t seed, float mult)
{
    stored s = {n, NULL, tu_random(n, seed, mult)};
    s.bits = tu_round_to(dt, s.wide, n);
    return s;
}

static stored stored_empty(dipole_dtype dt, size_t n)
{
    stored s = {n, calloc(n ? n : 1, dipole_dtype_size(dt)), malloc(sizeof(float) * (n ? n : 1))};
    ck_assert(s.bits && s.wide);
    return s;
}

static void stored_widen(dipole_dtype dt, stored *s)
{
    ck_assert_int_eq(dipole_convert(DIPOLE_F32, s->wide, dt, s->bits, s->n), DIPOLE_SUCCESS);
}

static void stored_free(stored *s)
{
    free(s->bits), free(s->wide);
}

static void describe(const dipole_attn_desc *d, char *buf, size_t cap)
{
    char base[256];
    snprintf(buf, cap, "%s %s", dipole_dtype_name(d->dtype), tu_desc_str(d, base, sizeof base));
}

static void forward_vs_reference(const dipole_attn_desc *d, uint64_t seed, float mult)
{
    char what[320];
    describe(d, what, sizeof what);
    const size_t nq = tu_q_elems(d), nk = tu_kv_elems(d);
    const size_t nl = (size_t)dipole_lse_count(d->variant) * d->batch * d->heads_q * d->seq_q;
    stored q = stored_random(d->dtype, nq, seed, mult), k = stored_random(d->dtype, nk, seed + 1, mult);
    stored v = stored_random(d->dtype, nk, seed + 2, 1), v2 = stored_random(d->dtype, nk, seed + 3, 1);
    stored out = stored_empty(d->dtype, nq);
    float *ref = malloc(sizeof(float) * nq), *lse = malloc(sizeof(float) * nl),
          *ref_lse = malloc(sizeof(float) * nl);
    ck_assert(ref && lse && ref_lse);
    dipole_ctx *ctx = tu_ctx();
    dipole_status st = dipole_attention_host_lse(ctx, d, q.bits, k.bits, v.bits, v2.bits, out.bits, lse);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: %s: %s", what, dipole_status_string(st),
                  dipole_ctx_last_error(ctx));
    ck_assert_int_eq(dipole_reference_lse(d, q.wide, k.wide, v.wide, v2.wide, ref, ref_lse),
                     DIPOLE_SUCCESS);
    stored_widen(d->dtype, &out);
    tu_expect_within(what, "out", out.wide, ref, nq, F32_ATOL, dtype_rtol(d->dtype), 0);
    tu_expect_within(what, "lse", lse, ref_lse, nl, F32_ATOL, F32_RTOL, 0);
    stored_free(&q), stored_free(&k), stored_free(&v), stored_free(&v2), stored_free(&out);
    free(ref), free(lse), free(ref_lse);
}

static void backward_vs_reference(const dipole_attn_desc *d, uint64_t seed)
{
    char what[320];
    describe(d, what, sizeof what);
    const size_t nq = tu_q_elems(d), nk = tu_kv_elems(d);
    const dipole_dtype dt = d->dtype;
    stored q = stored_random(dt, nq, seed, 1), k = stored_random(dt, nk, seed + 1, 1);
    stored v = stored_random(dt, nk, seed + 2, 1), v2 = stored_random(dt, nk, seed + 3, 1);
    stored dout = stored_random(dt, nq, seed + 4, 1);
    stored g[4] = {stored_empty(dt, nq), stored_empty(dt, nk), stored_empty(dt, nk),
                   stored_empty(dt, nk)};
    float *ref[4];
    for (int i = 0; i < 4; i++)
        ck_assert_ptr_nonnull(ref[i] = malloc(sizeof(float) * g[i].n));
    float dpos[8], dneg[8], rpos[8], rneg[8];
    ck_assert_int_le(d->heads_q, 8);
    dipole_ctx *ctx = tu_ctx();
    dipole_status st = dipole_attention_backward_host(ctx, d, q.bits, k.bits, v.bits, v2.bits,
                                                      dout.bits, g[0].bits, g[1].bits, g[2].bits,
                                                      g[3].bits, dpos, dneg);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: %s: %s", what, dipole_status_string(st),
                  dipole_ctx_last_error(ctx));
    ck_assert_int_eq(dipole_reference_backward(d, q.wide, k.wide, v.wide, v2.wide, dout.wide,
                                               ref[0], ref[1], ref[2], ref[3], rpos, rneg),
                     DIPOLE_SUCCESS);
    static const char *const names[4] = {"dq", "dk", "dv", "dv2"};
    const bool reads_v2 = d->variant == DIPOLE_ROUTED || d->variant == DIPOLE_TWO_POLE;
    for (int i = 0; i < (reads_v2 ? 4 : 3); i++) {
        stored_widen(dt, &g[i]);
        tu_expect_within(what, names[i], g[i].wide, ref[i], g[i].n, F32_ATOL, dtype_rtol(dt),
                      BWD_RMS_WEIGHT);
    }
    if (d->variant == DIPOLE_TWO_POLE) { /* float32 sums over a head's rows of rounded terms */
        tu_expect_within(what, "dpos_weight", dpos, rpos, (size_t)d->heads_q, 10 * F32_ATOL,
                      dtype_rtol(dt), 1);
        tu_expect_within(what, "dneg_weight", dneg, rneg, (size_t)d->heads_q, 10 * F32_ATOL,
                      dtype_rtol(dt), 1);
    }
    stored_free(&q), stored_free(&k), stored_free(&v), stored_free(&v2), stored_free(&dout);
    for (int i = 0; i < 4; i++)
        stored_free(&g[i]), free(ref[i]);
}

/* Head dims by class (below a vector, a multiple of 8 only, of 16 but no power of two, the
 * common powers of two, the largest) and the mask kinds; a case picks one of each, rotating so
 * that each dtype meets every class and every mask kind, with GQA every other case. */
static const int dims[] = {1, 24, 64, 80, 128, 256};
#define N_DIMS (int)(sizeof dims / sizeof dims[0])
enum { MASK_NONE, MASK_CAUSAL, MASK_WINDOW, MASK_LENGTHS, MASK_DECODE, N_MASKS };
#define CASES_PER_VARIANT 3

static void make_case(int idx, dipole_dtype dt, dipole_attn_desc *d, int *kl, float *alpha,
                      float *beta)
{
    const int variant = idx % 4, rot = idx / 4;
    dipole_attn_desc_default(d);
    d->dtype = dt;
    d->variant = (dipole_variant)variant;
    d->head_dim = dims[(idx * 5 + dt) % N_DIMS];
    d->batch = 2;
    d->heads_q = 4;
    d->heads_kv = idx % 2 ? 2 : 4;
    d->seq_q = 37;
    d->seq_k = 45;
    d->path = DIPOLE_PATH_TILED;
    switch ((idx + rot + dt) % N_MASKS) {
    case MASK_CAUSAL: d->causal = 1; break;
    case MASK_WINDOW: d->window_left = 9, d->window_right = 2; break;
    case MASK_LENGTHS:
        kl[0] = 30, kl[1] = 45;
        d->key_lengths = kl;
        d->causal = 1;
        break;
    case MASK_DECODE: /* split-K on the CPU layout */
        d->seq_q = 1, d->seq_k = 700, d->heads_kv = 1;
        break;
    }
    for (int h = 0; h < 4; h++)
        alpha[h] = 0.5f + 0.25f * (float)h, beta[h] = 1.5f - 0.5f * (float)h;
    if (d->variant == DIPOLE_TWO_POLE)
        d->pos_weight = alpha, d->neg_weight = beta;
}

START_TEST(test_forward_matrix)
{
    const dipole_dtype dt = _i % 2 ? DIPOLE_BF16 : DIPOLE_F16;
    const int idx = _i / 2;
    dipole_attn_desc d;
    int kl[2];
    float alpha[4], beta[4];
    make_case(idx, dt, &d, kl, alpha, beta);
    forward_vs_reference(&d, 100 + (uint64_t)_i * 10, 1.0f);
}
END_TEST

START_TEST(test_backward_matrix)
{
    const dipole_dtype dt = _i % 2 ? DIPOLE_BF16 : DIPOLE_F16;
    const int idx = _i / 2;
    dipole_attn_desc d;
    int kl[2];
    float alpha[4], beta[4];
    make_case(idx, dt, &d, kl, alpha, beta);
    if (d.seq_q == 1) /* decode rows are a forward concern; keep the backward's sizes */
        d.seq_q = 9, d.seq_k = 64;
    backward_vs_reference(&d, 500 + (uint64_t)_i * 10);
}
END_TEST

/* The GEMM path converts into float32 scratch: both dtypes, every variant, a head dim the
 * tiled kernels take and one they do not. */
START_TEST(test_gemm_path)
{
    const dipole_dtype dt = _i % 2 ? DIPOLE_BF16 : DIPOLE_F16;
    dipole_attn_desc d;
    int kl[2];
    float alpha[4], beta[4];
    make_case(_i / 2, dt, &d, kl, alpha, beta);
    d.path = DIPOLE_PATH_GEMM;
    d.head_dim = _i / 8 ? 320 : 64;
    if (d.seq_q == 1)
        d.seq_q = 9, d.seq_k = 64;
    forward_vs_reference(&d, 900 + (uint64_t)_i * 10, 1.0f);
    backward_vs_reference(&d, 950 + (uint64_t)_i * 10);
}
END_TEST

/* Scores up to 1e4 in magnitude from fp16 q and k: float32 accumulation keeps them (an fp16
 * sum would round 1e4 to a multiple of 8) and the output matches the reference. */
START_TEST(test_large_scores)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.dtype = DIPOLE_F16;
    d.variant = (dipole_variant)_i;
    d.batch = 1, d.heads_q = d.heads_kv = 2, d.seq_q = 17, d.seq_k = 40, d.head_dim = 16;
    float alpha[2] = {1, 1}, beta[2] = {1, 1};
    d.pos_weight = alpha, d.neg_weight = beta;
    /* normal(0, 1) * 50: |q.k| / 4 reaches ~1e4 for aligned rows. */
    forward_vs_reference(&d, 4242 + (uint64_t)_i, 50.0f);
}
END_TEST

/* An output beyond 65504 is stored as inf, as vstore_half would: TWO_POLE with weights 2 on
 * values near the top of the fp16 range; bf16 holds it. */
START_TEST(test_f16_output_overflow)
{
    for (int dti = 0; dti < 2; dti++) {
        const dipole_dtype dt = dti ? DIPOLE_BF16 : DIPOLE_F16;
        dipole_attn_desc d;
        dipole_attn_desc_default(&d);
        d.dtype = dt;
        d.variant = DIPOLE_TWO_POLE;
        d.batch = 1, d.heads_q = d.heads_kv = 1, d.seq_q = 3, d.seq_k = 5, d.head_dim = 8;
        float alpha[1] = {2.0f}, beta[1] = {-2.0f};
        d.pos_weight = alpha, d.neg_weight = beta;
        float q[24], k[40], v[40], v2[40];
        for (int i = 0; i < 40; i++)
            k[i] = 0.01f * (float)(i % 7), v[i] = 60000.0f, v2[i] = -60000.0f;
        for (int i = 0; i < 24; i++)
            q[i] = 0.1f * (float)(i % 5);
        uint16_t hq[24], hk[40], hv[40], hv2[40], hout[24];
        dipole_convert(dt, hq, DIPOLE_F32, q, 24), dipole_convert(dt, hk, DIPOLE_F32, k, 40);
        dipole_convert(dt, hv, DIPOLE_F32, v, 40), dipole_convert(dt, hv2, DIPOLE_F32, v2, 40);
        dipole_status st = dipole_attention_host(tu_ctx(), &d, hq, hk, hv, hv2, hout);
        ck_assert_msg(st == DIPOLE_SUCCESS, "%s", dipole_ctx_last_error(tu_ctx()));
        float out[24];
        dipole_convert(DIPOLE_F32, out, dt, hout, 24);
        for (int i = 0; i < 24; i++) {
            if (dt == DIPOLE_F16)
                ck_assert_msg(isinf(out[i]) && out[i] > 0, "out[%d] = %g, want +inf", i,
                              (double)out[i]);
            else /* 2 * 60000 + 2 * 60000 = 240000, to bf16's 8 bits */
                ck_assert_msg(fabsf(out[i] - 240000.0f) <= 240000.0f / 128, "out[%d] = %g", i,
                              (double)out[i]);
        }
    }
}
END_TEST

/* NaN and inf inputs follow the fp32 rules: the same non-finite pattern as the reference on the
 * same (rounded) inputs. */
START_TEST(test_nonfinite_inputs)
{
    const dipole_dtype dt = (dipole_dtype)(_i % 3);
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.dtype = dt;
    d.variant = (dipole_variant)(_i / 3);
    d.batch = 1, d.heads_q = d.heads_kv = 1, d.seq_q = 4, d.seq_k = 6, d.head_dim = 8;
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    stored q = stored_random(dt, nq, 31, 1), k = stored_random(dt, nk, 32, 1);
    stored v = stored_random(dt, nk, 33, 1), v2 = stored_random(dt, nk, 34, 1);
    /* row 1 of q NaN in one lane, key 2 of v inf: every row sees key 2 */
    q.wide[8 + 3] = NAN;
    v.wide[2 * 8 + 5] = INFINITY;
    dipole_convert(dt, q.bits, DIPOLE_F32, q.wide, nq);
    dipole_convert(dt, v.bits, DIPOLE_F32, v.wide, nk);
    stored out = stored_empty(dt, nq);
    float ref[32];
    ck_assert_int_eq(dipole_attention_host(tu_ctx(), &d, q.bits, k.bits, v.bits, v2.bits, out.bits),
                     DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference(&d, q.wide, k.wide, v.wide, v2.wide, ref), DIPOLE_SUCCESS);
    stored_widen(dt, &out);
    for (size_t i = 0; i < nq; i++) {
        ck_assert_msg(isnan(out.wide[i]) == isnan(ref[i]) && isinf(out.wide[i]) == isinf(ref[i]),
                      "%s %s: out[%zu] = %g, reference %g", dipole_dtype_name(dt),
                      dipole_variant_name(d.variant), i, (double)out.wide[i], (double)ref[i]);
        if (isfinite(ref[i]))
            ck_assert(fabs(out.wide[i] - ref[i]) <= F32_ATOL + dtype_rtol(dt) * fabs(ref[i]));
    }
    stored_free(&q), stored_free(&k), stored_free(&v), stored_free(&v2), stored_free(&out);
}
END_TEST

/* Device tensors are checked in elements of the dtype; a bad dtype is refused by name. */
START_TEST(test_arguments)
{
    dipole_ctx *ctx = tu_ctx();
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.batch = 1, d.heads_q = d.heads_kv = 1, d.seq_q = d.seq_k = 4, d.head_dim = 8;
    d.dtype = (dipole_dtype)5;
    ck_assert_int_eq(dipole_attn_desc_validate(&d), DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_thread_last_error(), "desc.dtype = 5"));
    float x[32] = {0};
    ck_assert_int_eq(dipole_reference(&d, x, x, x, x, x), DIPOLE_ERR_INVALID_ARG);
    ck_assert_int_eq(dipole_attention_host(ctx, &d, x, x, x, x, x), DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "dtype"));

    /* 32 halves fit a 64-byte buffer; 32 floats do not. */
    cl_int err;
    cl_mem small = clCreateBuffer(dipole_ctx_cl_context(ctx), CL_MEM_READ_WRITE, 64, NULL, &err);
    cl_mem outb = clCreateBuffer(dipole_ctx_cl_context(ctx), CL_MEM_READ_WRITE, 128, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    const uint16_t zeros[32] = {0};
    clEnqueueWriteBuffer(dipole_ctx_queue(ctx), small, CL_TRUE, 0, 64, zeros, 0, NULL, NULL);
    dipole_tensor t = dipole_tensor_dense(small, 4, 1, 8), o = dipole_tensor_dense(outb, 4, 1, 8);
    d.dtype = DIPOLE_F16;
    ck_assert_int_eq(dipole_attention(ctx, &d, &t, &t, &t, NULL, &o, NULL, NULL), DIPOLE_SUCCESS);
    ck_assert_int_eq(clFinish(dipole_ctx_queue(ctx)), CL_SUCCESS);
    d.dtype = DIPOLE_F32;
    ck_assert_int_eq(dipole_attention(ctx, &d, &t, &t, &t, NULL, &o, NULL, NULL),
                     DIPOLE_ERR_BUFFER_RANGE);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "f32 elements"));
    clReleaseMemObject(small);
    clReleaseMemObject(outb);
}
END_TEST

Suite *dtype_suite(void)
{
    Suite *s = suite_create("dtype");
    TCase *conv = tcase_create("convert");
    tcase_add_test(conv, test_f16_widen_exhaustive);
    tcase_add_test(conv, test_narrow_nearest_even);
    tcase_add_test(conv, test_nonfinite_and_errors);
    suite_add_tcase(s, conv);

    TCase *dev = tcase_create("device");
    tcase_set_timeout(dev, 1200);
    tcase_add_loop_test(dev, test_forward_matrix, 0, 2 * 4 * CASES_PER_VARIANT);
    tcase_add_loop_test(dev, test_backward_matrix, 0, 2 * 4 * CASES_PER_VARIANT);
    tcase_add_loop_test(dev, test_large_scores, 0, 4);
    tcase_add_test(dev, test_f16_output_overflow);
    tcase_add_loop_test(dev, test_nonfinite_inputs, 0, 12);
    tcase_add_test(dev, test_arguments);
    suite_add_tcase(s, dev);

    /* Apart from the layout's cases: the GEMM path is the same on either layout, so the
     * group-layout run leaves it out (CK_RUN_CASE=device). */
    TCase *gemm = tcase_create("gemm");
    tcase_set_timeout(gemm, 1200);
    tcase_add_loop_test(gemm, test_gemm_path, 0, 16);
    suite_add_tcase(s, gemm);
    return s;
}
