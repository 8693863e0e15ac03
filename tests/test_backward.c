/* The backward pass: the CPU reference backward against central finite differences of an
 * independent double-precision forward written here, and the device backward against the
 * reference backward, across variant x mask x GQA x head_dim; pole-weight gradients,
 * determinism, masked rows, strided device tensors and argument errors. A second suite,
 * backward-gemm, runs the GEMM-path backward (CLBlast) against the same reference: head dims
 * beyond the tiled kernels, many chunks under a tiny workspace, determinism, agreement with the
 * tiled path, and the device tests above again under env DIPOLE_PATH=gemm. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* Reference backward (float results of double sums) vs double central differences with step
 * 1e-5: the differences are good to ~1e-9, so these bound the reference's own error. */
#define FD_ATOL 1e-5
#define FD_RTOL 1e-4
/* Device (fp32, recomputed weights, sums over up to ~200 terms) vs the double reference;
 * measured worst on PoCL: 4.5e-6 absolute (gradients), 1.7e-5 (pole-weight sums). */
#define DEV_ATOL 3e-5
#define DEV_RTOL 3e-4

/* ---- An independent double forward: L = sum(dout * out), the mask written from the README. */

static bool sees(const dipole_attn_desc *d, int b, int i, int j)
{
    const int kl = d->key_lengths ? d->key_lengths[b] : d->seq_k;
    const long diag = (long)i + kl - d->seq_q;
    return j < kl && (!d->causal || j <= diag) && (d->window_right < 0 || j <= diag + d->window_right) &&
           (d->window_left < 0 || j >= diag - d->window_left);
}

typedef struct inputs {
    double *q, *k, *v, *v2, *alpha, *beta;
} inputs;

static double loss(const dipole_attn_desc *d, const inputs *in, const float *dout)
{
    const int B = d->batch, Hq = d->heads_q, Hkv = d->heads_kv, Nq = d->seq_q, Nk = d->seq_k,
              D = d->head_dim;
    const double scale = d->scale != 0 ? d->scale : 1.0 / sqrt((double)D);
    const int np = d->variant == DIPOLE_TWO_POLE ? 2 : 1;
    double total = 0, s[64], e[64], o[256];
    ck_assert_int_le(Nk, 64);
    ck_assert_int_le(D, 256);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++)
            for (int i = 0; i < Nq; i++) {
                const int hk = h / (Hq / Hkv);
                const double *qi = in->q + (((size_t)b * Nq + i) * Hq + h) * D;
                for (int j = 0; j < Nk; j++) {
                    const double *kj = in->k + (((size_t)b * Nk + j) * Hkv + hk) * D;
                    double dot = 0;
                    for (int c = 0; c < D; c++)
                        dot += qi[c] * kj[c];
                    s[j] = scale * dot;
                }
                for (int c = 0; c < D; c++)
                    o[c] = 0;
                for (int pole = 0; pole < np; pole++) {
                    double m = -INFINITY, l = 0;
                    for (int j = 0; j < Nk; j++) {
                        switch (d->variant) {
                        case DIPOLE_SOFTMAX: e[j] = s[j]; break;
                        case DIPOLE_TWO_POLE: e[j] = pole ? -s[j] : s[j]; break;
                        default: e[j] = fabs(s[j]); break;
                        }
                        if (sees(d, b, i, j))
                            m = fmax(m, e[j]);
                    }
                    for (int j = 0; j < Nk; j++)
                        if (sees(d, b, i, j))
                            l += (e[j] = exp(e[j] - m));
                    const double w = d->variant != DIPOLE_TWO_POLE ? 1.0
                                     : pole                        ? in->beta[h]
                                                                   : in->alpha[h];
                    for (int j = 0; j < Nk; j++) {
                        if (!sees(d, b, i, j))
                            continue;
                        const double sign = s[j] > 0 ? 1 : s[j] < 0 ? -1 : 0;
                        const double coef = d->variant == DIPOLE_SIGNEXP ? sign : 1.0;
                        const bool second = (d->variant == DIPOLE_ROUTED && !(s[j] > 0)) ||
                                            (d->variant == DIPOLE_TWO_POLE && pole == 1);
                        const double *u =
                            (second ? in->v2 : in->v) + (((size_t)b * Nk + j) * Hkv + hk) * D;
                        for (int c = 0; c < D; c++)
                            o[c] += w * coef * e[j] / l * u[c];
                    }
                }
                const float *g = dout + (((size_t)b * Nq + i) * Hq + h) * D;
                for (int c = 0; c < D; c++)
                    total += (double)g[c] * o[c];
            }
    return total;
}

/* The smallest |s| over the visible (row, key) pairs: |s| and sign(s) have a kink at 0 that a
 * central difference must not straddle. */
static double min_abs_score(const dipole_attn_desc *d, const float *q, const float *k)
{
    const int Hq = d->heads_q, Hkv = d->heads_kv, D = d->head_dim;
    double best = INFINITY;
    for (int b = 0; b < d->batch; b++)
        for (int h = 0; h < Hq; h++)
            for (int i = 0; i < d->seq_q; i++)
                for (int j = 0; j < d->seq_k; j++) {
                    if (!sees(d, b, i, j))
                        continue;
                    double dot = 0;
                    for (int c = 0; c < D; c++)
                        dot += (double)q[(((size_t)b * d->seq_q + i) * Hq + h) * D + c] *
                               (double)k[(((size_t)b * d->seq_k + j) * Hkv + h / (Hq / Hkv)) * D + c];
                    best = fmin(best, fabs(dot) / sqrt((double)D));
                }
    return best;
}

/* ---- The test matrix shared by the finite-difference and device tests. */

static const int head_dims[] = {8, 64, 128};
enum { N_HD = 3, N_MASK = 3, N_GQA = 2, N_MATRIX = 4 * N_MASK * N_GQA * N_HD };

typedef struct bwd_case {
    dipole_attn_desc d;
    int key_lengths[2];
    float alpha[4], beta[4];
} bwd_case;

/* Case _i of the matrix: variant x mask {none, causal, window + key lengths} x {MHA, GQA}
 * x head_dim, on seq_q x seq_k. */
static void matrix_case(int idx, int seq_q, int seq_k, bwd_case *c)
{
    const int variant = idx / (N_MASK * N_GQA * N_HD);
    const int mask = idx / (N_GQA * N_HD) % N_MASK;
    const int gqa = idx / N_HD % N_GQA;
    const int hd = idx % N_HD;
    dipole_attn_desc *d = &c->d;
    dipole_attn_desc_default(d);
    d->variant = (dipole_variant)variant;
    d->batch = 2;
    d->heads_q = gqa ? 4 : 2;
    d->heads_kv = gqa ? 2 : 2;
    if (gqa && hd == 1)
        d->heads_kv = 1; /* MQA too */
    d->seq_q = seq_q;
    d->seq_k = seq_k;
    d->head_dim = head_dims[hd];
    d->causal = mask == 1;
    if (mask == 2) {
        d->window_left = seq_k / 3;
        d->window_right = 2;
        c->key_lengths[0] = seq_k;
        c->key_lengths[1] = seq_k * 2 / 3;
        d->key_lengths = c->key_lengths;
    }
    const float alpha[4] = {0.75f, 1.5f, -0.5f, 1.0f}, beta[4] = {1.25f, 0.5f, 2.0f, -1.0f};
    memcpy(c->alpha, alpha, sizeof alpha);
    memcpy(c->beta, beta, sizeof beta);
    if (d->variant == DIPOLE_TWO_POLE) {
        d->pos_weight = c->alpha;
        d->neg_weight = c->beta;
    }
}

typedef struct grads {
    float *dq, *dk, *dv, *dv2, dpos[4], dneg[4];
} grads;

static void grads_alloc(grads *g, const dipole_attn_desc *d)
{
    g->dq = malloc(sizeof(float) * tu_q_elems(d));
    g->dk = malloc(sizeof(float) * tu_kv_elems(d));
    g->dv = malloc(sizeof(float) * tu_kv_elems(d));
    g->dv2 = malloc(sizeof(float) * tu_kv_elems(d));
    ck_assert(g->dq && g->dk && g->dv && g->dv2);
    for (int h = 0; h < 4; h++)
        g->dpos[h] = g->dneg[h] = NAN;
}

static void grads_free(grads *g)
{
    free(g->dq), free(g->dk), free(g->dv), free(g->dv2);
}

typedef struct fwd_inputs {
    float *q, *k, *v, *v2, *dout;
} fwd_inputs;

static void inputs_make(fwd_inputs *x, const dipole_attn_desc *d, uint64_t seed)
{
    const size_t nq = tu_q_elems(d), nk = tu_kv_elems(d);
    x->q = tu_random(nq, seed, 1.0f);
    x->k = tu_random(nk, seed + 1, 1.0f);
    x->v = tu_random(nk, seed + 2, 1.0f);
    x->v2 = tu_random(nk, seed + 3, 1.0f);
    x->dout = tu_random(nq, seed + 4, 1.0f);
}

static void inputs_free(fwd_inputs *x)
{
    free(x->q), free(x->k), free(x->v), free(x->v2), free(x->dout);
}

/* Asserts got ~ want within (atol, rtol), naming the tensor and the case. */
static void expect_close(const char *what, const char *tensor, const float *got, const float *want,
                         size_t n, double atol, double rtol)
{
    tu_err e = tu_compare(got, want, n, atol, rtol);
    ck_assert_msg(e.worst_ratio <= 1.0,
                  "%s: %s[%zu] = %.9g, want %.9g (max abs err %.3g, %zu non-finite; atol %.0e "
                  "rtol %.0e)",
                  what, tensor, e.worst, (double)got[e.worst], (double)want[e.worst], e.max_abs,
                  e.nonfinite, atol, rtol);
}

/* ---- Reference backward vs finite differences. */

typedef struct fd_arg {
    const dipole_attn_desc *d;
    const inputs *in;
    const float *dout;
} fd_arg;

static double fd_loss(void *arg)
{
    const fd_arg *a = arg;
    return loss(a->d, a->in, a->dout);
}

/* grad (from the reference backward) against central differences at ~40 coordinates of x
 * spread over the tensor (every coordinate of a small one). */
static void fd_check(const char *what, const char *tensor, const dipole_attn_desc *d,
                     const inputs *in, const float *dout, double *x, const float *grad, size_t n)
{
    fd_arg a = {d, in, dout};
    tu_expect_gradient(what, tensor, fd_loss, &a, x, grad, n, 40, FD_ATOL, FD_RTOL);
}

START_TEST(test_reference_vs_fd)
{
    bwd_case c;
    matrix_case(_i, 5, 7, &c);
    const dipole_attn_desc *d = &c.d;
    char what[256];
    tu_desc_str(d, what, sizeof what);
    /* Draw inputs until no visible score is near the |s| kink (a few draws at most). */
    fwd_inputs x;
    uint64_t seed = 1000 + 17 * (uint64_t)_i;
    for (int tries = 0;; tries++, seed += 101) {
        inputs_make(&x, d, seed);
        if (min_abs_score(d, x.q, x.k) > 1e-3)
            break;
        ck_assert_int_lt(tries, 50);
        inputs_free(&x);
    }
    grads g;
    grads_alloc(&g, d);
    ck_assert_int_eq(dipole_reference_backward(d, x.q, x.k, x.v, x.v2, x.dout, g.dq, g.dk, g.dv,
                                               g.dv2, g.dpos, g.dneg),
                     DIPOLE_SUCCESS);
    const size_t nq = tu_q_elems(d), nk = tu_kv_elems(d);
    inputs in = {tu_to_double(x.q, nq),  tu_to_double(x.k, nk),     tu_to_double(x.v, nk),
                 tu_to_double(x.v2, nk), tu_to_double(c.alpha, 4), tu_to_double(c.beta, 4)};
    fd_check(what, "dq", d, &in, x.dout, in.q, g.dq, nq);
    fd_check(what, "dk", d, &in, x.dout, in.k, g.dk, nk);
    fd_check(what, "dv", d, &in, x.dout, in.v, g.dv, nk);
    if (d->variant == DIPOLE_ROUTED || d->variant == DIPOLE_TWO_POLE)
        fd_check(what, "dv2", d, &in, x.dout, in.v2, g.dv2, nk);
    if (d->variant == DIPOLE_TWO_POLE) {
        fd_check(what, "dpos_weight", d, &in, x.dout, in.alpha, g.dpos, (size_t)d->heads_q);
        fd_check(what, "dneg_weight", d, &in, x.dout, in.beta, g.dneg, (size_t)d->heads_q);
    }
    free(in.q), free(in.k), free(in.v), free(in.v2), free(in.alpha), free(in.beta);
    grads_free(&g);
    inputs_free(&x);
}
END_TEST

/* The test's own forward agrees with dipole_reference, so the FD test differentiates the
 * library's definition and not a private one. */
START_TEST(test_fd_forward_matches_reference)
{
    bwd_case c;
    matrix_case(_i, 5, 7, &c);
    const dipole_attn_desc *d = &c.d;
    fwd_inputs x;
    inputs_make(&x, d, 500 + (uint64_t)_i);
    const size_t nq = tu_q_elems(d), nk = tu_kv_elems(d);
    float *out = malloc(sizeof(float) * nq);
    ck_assert_ptr_nonnull(out);
    ck_assert_int_eq(dipole_reference(d, x.q, x.k, x.v, x.v2, out), DIPOLE_SUCCESS);
    double want = 0;
    for (size_t e = 0; e < nq; e++)
        want += (double)x.dout[e] * out[e];
    inputs in = {tu_to_double(x.q, nq),  tu_to_double(x.k, nk),     tu_to_double(x.v, nk),
                 tu_to_double(x.v2, nk), tu_to_double(c.alpha, 4), tu_to_double(c.beta, 4)};
    const double got = loss(d, &in, x.dout);
    ck_assert_msg(fabs(got - want) <= 1e-5 + 1e-5 * fabs(want), "case %d: loss %.9g vs %.9g", _i,
                  got, want);
    free(in.q), free(in.k), free(in.v), free(in.v2), free(in.alpha), free(in.beta);
    free(out);
    inputs_free(&x);
}
END_TEST

/* ---- Device backward vs the reference backward. */

static void device_vs_reference(const dipole_attn_desc *d, uint64_t seed, double atol, double rtol)
{
    char what[256];
    tu_desc_str(d, what, sizeof what);
    fwd_inputs x;
    inputs_make(&x, d, seed);
    grads got, want;
    grads_alloc(&got, d);
    grads_alloc(&want, d);
    dipole_ctx *ctx = tu_ctx();
    dipole_status st = dipole_attention_backward_host(ctx, d, x.q, x.k, x.v, x.v2, x.dout, got.dq,
                                                      got.dk, got.dv, got.dv2, got.dpos, got.dneg);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: %s: %s", what, dipole_status_string(st),
                  dipole_ctx_last_error(ctx));
    ck_assert_int_eq(dipole_reference_backward(d, x.q, x.k, x.v, x.v2, x.dout, want.dq, want.dk,
                                               want.dv, want.dv2, want.dpos, want.dneg),
                     DIPOLE_SUCCESS);
    const size_t nq = tu_q_elems(d), nk = tu_kv_elems(d);
    expect_close(what, "dq", got.dq, want.dq, nq, atol, rtol);
    expect_close(what, "dk", got.dk, want.dk, nk, atol, rtol);
    expect_close(what, "dv", got.dv, want.dv, nk, atol, rtol);
    if (d->variant == DIPOLE_ROUTED || d->variant == DIPOLE_TWO_POLE)
        expect_close(what, "dv2", got.dv2, want.dv2, nk, atol, rtol);
    if (d->variant == DIPOLE_TWO_POLE) {
        /* sums over every row of a head: a looser absolute bound */
        expect_close(what, "dpos_weight", got.dpos, want.dpos, (size_t)d->heads_q, 10 * atol, rtol);
        expect_close(what, "dneg_weight", got.dneg, want.dneg, (size_t)d->heads_q, 10 * atol, rtol);
    }
    grads_free(&got);
    grads_free(&want);
    inputs_free(&x);
}

START_TEST(test_device_matrix)
{
    bwd_case c;
    matrix_case(_i, 37, 45, &c);
    device_vs_reference(&c.d, 3000 + 31 * (uint64_t)_i, DEV_ATOL, DEV_RTOL);
}
END_TEST

/* Longer sequences across several tiles, seq_q != seq_k both ways, at head_dim 64. */
START_TEST(test_device_long)
{
    static const int sizes[][2] = {{130, 200}, {200, 130}, {1, 150}};
    for (int s = 0; s < 3; s++) {
        bwd_case c;
        matrix_case(_i * N_MASK * N_GQA * N_HD + 1 * N_GQA * N_HD + N_HD + 1, sizes[s][0],
                    sizes[s][1], &c); /* causal, GQA, head_dim 64 */
        device_vs_reference(&c.d, 9000 + 10 * (uint64_t)_i + (uint64_t)s, DEV_ATOL, DEV_RTOL);
        c.d.causal = 0;
        c.d.window_left = 20;
        c.d.window_right = 5;
        device_vs_reference(&c.d, 9500 + 10 * (uint64_t)_i + (uint64_t)s, DEV_ATOL, DEV_RTOL);
    }
}
END_TEST

/* The head-dim edges of the tiled kernels (1 and 256) and two odd sizes. */
START_TEST(test_device_head_dims)
{
    static const int dims[] = {1, 24, 96, 256};
    for (int i = 0; i < 4; i++) {
        bwd_case c;
        matrix_case(_i * N_MASK * N_GQA * N_HD + 1 * N_GQA * N_HD + N_HD, 33, 40, &c);
        c.d.head_dim = dims[i];
        device_vs_reference(&c.d, 8000 + 10 * (uint64_t)_i + (uint64_t)i, DEV_ATOL, DEV_RTOL);
    }
}
END_TEST

/* Scores of exactly 0 (q orthogonal to every other key): sign 0 and d|s|/ds = 0 there, and
 * ROUTED sends those keys to v2. The device must agree with the reference on each. */
START_TEST(test_exact_zero_scores)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = (dipole_variant)_i;
    d.batch = 1, d.heads_q = d.heads_kv = 1, d.seq_q = 3, d.seq_k = 8, d.head_dim = 16;
    const float alpha = 0.5f, beta = 2.0f;
    d.pos_weight = &alpha, d.neg_weight = &beta;
    fwd_inputs x;
    inputs_make(&x, &d, 4321);
    memset(x.q, 0, sizeof(float) * 3 * 16);
    memset(x.k, 0, sizeof(float) * 8 * 16);
    for (int i = 0; i < 3; i++)
        x.q[i * 16] = 1.0f + (float)i;
    for (int j = 0; j < 8; j++)
        x.k[j * 16 + (j % 2 ? 0 : 1)] = j % 4 == 1 ? -1.0f : 1.0f;
    grads got, want;
    grads_alloc(&got, &d);
    grads_alloc(&want, &d);
    ck_assert_int_eq(dipole_attention_backward_host(tu_ctx(), &d, x.q, x.k, x.v, x.v2, x.dout,
                                                    got.dq, got.dk, got.dv, got.dv2, got.dpos,
                                                    got.dneg),
                     DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference_backward(&d, x.q, x.k, x.v, x.v2, x.dout, want.dq, want.dk,
                                               want.dv, want.dv2, want.dpos, want.dneg),
                     DIPOLE_SUCCESS);
    const char *what = dipole_variant_name(d.variant);
    expect_close(what, "dq", got.dq, want.dq, 48, DEV_ATOL, DEV_RTOL);
    expect_close(what, "dk", got.dk, want.dk, 128, DEV_ATOL, DEV_RTOL);
    expect_close(what, "dv", got.dv, want.dv, 128, DEV_ATOL, DEV_RTOL);
    if (d.variant == DIPOLE_ROUTED || d.variant == DIPOLE_TWO_POLE)
        expect_close(what, "dv2", got.dv2, want.dv2, 128, DEV_ATOL, DEV_RTOL);
    /* SIGNEXP: a key with s = 0 for every row (even j) contributes nothing to dv. */
    if (d.variant == DIPOLE_SIGNEXP)
        for (int c = 0; c < 16; c++)
            ck_assert_float_eq(want.dv[0 * 16 + c], 0.0f);
    grads_free(&got);
    grads_free(&want);
    inputs_free(&x);
}
END_TEST

/* Two runs give bit-identical gradients (no atomics, fixed summation order). */
START_TEST(test_deterministic)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = (dipole_variant)_i;
    d.batch = 2, d.heads_q = 4, d.heads_kv = 1, d.seq_q = 100, d.seq_k = 120, d.head_dim = 32;
    d.causal = 1;
    const float alpha[4] = {0.5f, 1, 2, -1}, beta[4] = {1, -0.25f, 1, 3};
    d.pos_weight = alpha, d.neg_weight = beta;
    fwd_inputs x;
    inputs_make(&x, &d, 77);
    grads a, b;
    grads_alloc(&a, &d);
    grads_alloc(&b, &d);
    grads *runs[2] = {&a, &b};
    for (int r = 0; r < 2; r++)
        ck_assert_int_eq(dipole_attention_backward_host(tu_ctx(), &d, x.q, x.k, x.v, x.v2, x.dout,
                                                        runs[r]->dq, runs[r]->dk, runs[r]->dv,
                                                        runs[r]->dv2, runs[r]->dpos,
                                                        runs[r]->dneg),
                         DIPOLE_SUCCESS);
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    ck_assert(memcmp(a.dq, b.dq, nq * sizeof(float)) == 0);
    ck_assert(memcmp(a.dk, b.dk, nk * sizeof(float)) == 0);
    ck_assert(memcmp(a.dv, b.dv, nk * sizeof(float)) == 0);
    if (d.variant == DIPOLE_ROUTED || d.variant == DIPOLE_TWO_POLE)
        ck_assert(memcmp(a.dv2, b.dv2, nk * sizeof(float)) == 0);
    if (d.variant == DIPOLE_TWO_POLE) {
        ck_assert(memcmp(a.dpos, b.dpos, sizeof a.dpos) == 0);
        ck_assert(memcmp(a.dneg, b.dneg, sizeof a.dneg) == 0);
    }
    grads_free(&a);
    grads_free(&b);
    inputs_free(&x);
}
END_TEST

/* Rows that see no key (causal with seq_q > seq_k; key length 0) get dq = 0 and give nothing;
 * keys no row sees get dk = dv = 0 — all written, all finite. */
START_TEST(test_masked_rows_and_keys)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = (dipole_variant)_i;
    d.batch = 2, d.heads_q = 2, d.heads_kv = 1, d.seq_q = 20, d.seq_k = 5, d.head_dim = 8;
    d.causal = 1;
    const int kl[2] = {3, 0};
    d.key_lengths = kl;
    fwd_inputs x;
    inputs_make(&x, &d, 99);
    grads g;
    grads_alloc(&g, &d);
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    /* Poison the outputs: every element must be overwritten. */
    for (size_t e = 0; e < nq; e++)
        g.dq[e] = NAN;
    for (size_t e = 0; e < nk; e++)
        g.dk[e] = g.dv[e] = g.dv2[e] = NAN;
    ck_assert_int_eq(dipole_attention_backward_host(tu_ctx(), &d, x.q, x.k, x.v, x.v2, x.dout, g.dq,
                                                    g.dk, g.dv, g.dv2, g.dpos, g.dneg),
                     DIPOLE_SUCCESS);
    const bool v2 = d.variant == DIPOLE_ROUTED || d.variant == DIPOLE_TWO_POLE;
    for (int b = 0; b < 2; b++)
        for (int j = 0; j < 5; j++)
            for (int c = 0; c < 8; c++) {
                const size_t at = ((size_t)b * 5 + j) * 8 + c;
                ck_assert(isfinite(g.dk[at]) && isfinite(g.dv[at]) && (!v2 || isfinite(g.dv2[at])));
                if (j >= kl[b]) /* beyond the key length: nobody sees the key */
                    ck_assert(g.dk[at] == 0 && g.dv[at] == 0 && (!v2 || g.dv2[at] == 0));
            }
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 20; i++)
            for (int h = 0; h < 2; h++)
                for (int c = 0; c < 8; c++) {
                    const float dq = g.dq[(((size_t)b * 20 + i) * 2 + h) * 8 + c];
                    ck_assert(isfinite(dq));
                    if (!(b == 0 && i >= 17)) /* row i sees keys j <= i + 3 - 20 */
                        ck_assert_float_eq(dq, 0.0f);
                }
    grads_free(&g);
    inputs_free(&x);
    device_vs_reference(&d, 99, DEV_ATOL, DEV_RTOL);
}
END_TEST

/* Non-finite inputs reach exactly the gradients the reference gives non-finite: a NaN key, a
 * NaN query row and an infinite dout entry, each seen by some rows (or keys) and masked for
 * others, so that tiles mixing both take the kernels' lane-selecting paths; then the infinite
 * dout entry alone. Elsewhere the gradients stay finite and match. */
static void expect_same_nonfinite(const char *what, const char *tensor, const float *got,
                                  const float *want, size_t n)
{
    for (size_t e = 0; e < n; e++) {
        if (isnan(want[e]) || isinf(want[e])) {
            ck_assert_msg(!isfinite(got[e]), "%s: %s[%zu] = %g, the reference gives %g", what,
                          tensor, e, (double)got[e], (double)want[e]);
            continue;
        }
        expect_close(what, tensor, &got[e], &want[e], 1, DEV_ATOL, DEV_RTOL);
    }
}

START_TEST(test_nonfinite_inputs)
{
    for (int which = 0; which < 2; which++) {
        dipole_attn_desc d;
        dipole_attn_desc_default(&d);
        d.variant = (dipole_variant)_i;
        d.batch = 1, d.heads_q = 2, d.heads_kv = 1, d.seq_q = 70, d.seq_k = 70, d.head_dim = 16;
        d.causal = 1;
        fwd_inputs x;
        inputs_make(&x, &d, 555);
        if (which == 0) {
            x.k[50 * 16 + 3] = NAN;           /* key 50: rows < 50 do not see it */
            x.q[(10 * 2 + 1) * 16 + 5] = NAN; /* row 10 of head 1: keys > 10 do not see it */
        }
        /* row 40 of head 0; alone (which = 1), ROUTED's dv and dv2 stay finite for the keys
         * the row routes to the other value */
        x.dout[(40 * 2 + 0) * 16 + 2] = INFINITY;
        grads got, want;
        grads_alloc(&got, &d);
        grads_alloc(&want, &d);
        ck_assert_int_eq(dipole_attention_backward_host(tu_ctx(), &d, x.q, x.k, x.v, x.v2, x.dout,
                                                        got.dq, got.dk, got.dv, got.dv2, NULL,
                                                        NULL),
                         DIPOLE_SUCCESS);
        ck_assert_int_eq(dipole_reference_backward(&d, x.q, x.k, x.v, x.v2, x.dout, want.dq,
                                                   want.dk, want.dv, want.dv2, NULL, NULL),
                         DIPOLE_SUCCESS);
        const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
        size_t finite = 0;
        for (size_t e = 0; e < nq; e++)
            finite += isfinite(want.dq[e]) != 0;
        ck_assert_msg(finite > nq / 4 && finite < nq, "the case must mix finite and non-finite dq");
        char what[64];
        snprintf(what, sizeof what, "%s, case %d", dipole_variant_name(d.variant), which);
        expect_same_nonfinite(what, "dq", got.dq, want.dq, nq);
        expect_same_nonfinite(what, "dk", got.dk, want.dk, nk);
        expect_same_nonfinite(what, "dv", got.dv, want.dv, nk);
        if (d.variant == DIPOLE_ROUTED || d.variant == DIPOLE_TWO_POLE)
            expect_same_nonfinite(what, "dv2", got.dv2, want.dv2, nk);
        grads_free(&got);
        grads_free(&want);
        inputs_free(&x);
    }
}
END_TEST

/* The device API on packed, offset tensors: q, k, v, v2 interleaved in one buffer
 * [B, N, 4, H, d] after a 5-float offset, their gradients interleaved the same way in another,
 * out and dout in a third. */
START_TEST(test_device_strided)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = (dipole_variant)_i;
    d.batch = 2, d.heads_q = d.heads_kv = 2, d.seq_q = d.seq_k = 40, d.head_dim = 16;
    d.causal = 1;
    const float alpha[2] = {0.5f, 1.5f}, beta[2] = {-1, 0.75f};
    d.pos_weight = alpha, d.neg_weight = beta;
    enum { B = 2, N = 40, H = 2, D = 16, OFF = 5 };
    const size_t n = (size_t)B * N * H * D, packed = OFF + 4 * n;
    fwd_inputs x;
    inputs_make(&x, &d, 123);
    const float *src[4] = {x.q, x.k, x.v, x.v2};
    float *host = calloc(packed, sizeof(float)), *back = malloc(packed * sizeof(float));
    ck_assert(host && back);
    for (int t = 0; t < 4; t++)
        for (size_t row = 0; row < (size_t)B * N * H; row++) /* row = (b * N + s) * H + h */
            memcpy(host + OFF + ((row / H) * 4 + t) * H * D + (row % H) * D, src[t] + row * D,
                   D * sizeof(float));
    float *dout2 = calloc(2 * n, sizeof(float));
    ck_assert_ptr_nonnull(dout2);
    for (size_t row = 0; row < (size_t)B * N * H; row++) /* [B, N, 2, H, d]: out then dout */
        memcpy(dout2 + ((row / H) * 2 + 1) * H * D + (row % H) * D, x.dout + row * D,
               D * sizeof(float));
    dipole_ctx *ctx = tu_ctx();
    cl_context clc = dipole_ctx_cl_context(ctx);
    cl_int err;
    cl_mem in = clCreateBuffer(clc, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, packed * 4, host, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    cl_mem grad = clCreateBuffer(clc, CL_MEM_READ_WRITE, packed * 4, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    cl_mem od = clCreateBuffer(clc, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, 2 * n * 4, dout2, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    cl_mem lse = clCreateBuffer(clc, CL_MEM_READ_WRITE, 2 * B * H * N * 4, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    cl_mem dw = clCreateBuffer(clc, CL_MEM_READ_WRITE, 2 * H * 4, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    cl_mem dw2 = clCreateBuffer(clc, CL_MEM_READ_WRITE, 2 * H * 4, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    dipole_tensor t[4], g[4], to, tdo;
    for (int i = 0; i < 4; i++) {
        t[i] = (dipole_tensor){in, OFF + (size_t)i * H * D, (size_t)N * 4 * H * D, 4 * H * D, D};
        g[i] = t[i];
        g[i].buffer = grad;
    }
    to = (dipole_tensor){od, 0, (size_t)N * 2 * H * D, 2 * H * D, D};
    tdo = to;
    tdo.offset = H * D;
    dipole_status st = dipole_attention(ctx, &d, &t[0], &t[1], &t[2], &t[3], &to, lse, NULL);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s", dipole_ctx_last_error(ctx));
    st = dipole_attention_backward(ctx, &d, &t[0], &t[1], &t[2], &t[3], &to, &tdo, lse, &g[0],
                                   &g[1], &g[2], &g[3], dw, dw2, NULL);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s", dipole_ctx_last_error(ctx));
    ck_assert_int_eq(clEnqueueReadBuffer(dipole_ctx_queue(ctx), grad, CL_TRUE, 0, packed * 4, back,
                                         0, NULL, NULL),
                     CL_SUCCESS);
    float dpos[2], dneg[2];
    ck_assert_int_eq(clEnqueueReadBuffer(dipole_ctx_queue(ctx), dw, CL_TRUE, 0, sizeof dpos, dpos,
                                         0, NULL, NULL),
                     CL_SUCCESS);
    ck_assert_int_eq(clEnqueueReadBuffer(dipole_ctx_queue(ctx), dw2, CL_TRUE, 0, sizeof dneg, dneg,
                                         0, NULL, NULL),
                     CL_SUCCESS);
    grads want;
    grads_alloc(&want, &d);
    ck_assert_int_eq(dipole_reference_backward(&d, x.q, x.k, x.v, x.v2, x.dout, want.dq, want.dk,
                                               want.dv, want.dv2, want.dpos, want.dneg),
                     DIPOLE_SUCCESS);
    float *got = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(got);
    const float *ref[4] = {want.dq, want.dk, want.dv, want.dv2};
    const char *names[4] = {"dq", "dk", "dv", "dv2"};
    const int used = d.variant == DIPOLE_ROUTED || d.variant == DIPOLE_TWO_POLE ? 4 : 3;
    for (int i = 0; i < used; i++) {
        for (size_t row = 0; row < (size_t)B * N * H; row++)
            memcpy(got + row * D, back + OFF + ((row / H) * 4 + i) * H * D + (row % H) * D,
                   D * sizeof(float));
        expect_close(dipole_variant_name(d.variant), names[i], got, ref[i], n, DEV_ATOL, DEV_RTOL);
    }
    if (d.variant == DIPOLE_TWO_POLE) {
        expect_close("two_pole", "dpos_weight", dpos, want.dpos, 2, 10 * DEV_ATOL, DEV_RTOL);
        expect_close("two_pole", "dneg_weight", dneg, want.dneg, 2, 10 * DEV_ATOL, DEV_RTOL);
    }
    /* Gradients written over their own inputs are refused. */
    st = dipole_attention_backward(ctx, &d, &t[0], &t[1], &t[2], &t[3], &to, &tdo, lse, &t[0],
                                   &g[1], &g[2], &g[3], NULL, NULL, NULL);
    ck_assert_int_eq(st, DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "dq overlaps q"));
    /* lse is required, and must be large enough. */
    st = dipole_attention_backward(ctx, &d, &t[0], &t[1], &t[2], &t[3], &to, &tdo, NULL, &g[0],
                                   &g[1], &g[2], &g[3], NULL, NULL, NULL);
    ck_assert_int_eq(st, DIPOLE_ERR_INVALID_ARG);
    st = dipole_attention_backward(ctx, &d, &t[0], &t[1], &t[2], &t[3], &to, &tdo, dw, &g[0],
                                   &g[1], &g[2], &g[3], NULL, NULL, NULL);
    ck_assert_int_eq(st, DIPOLE_ERR_BUFFER_RANGE);
    clReleaseMemObject(in), clReleaseMemObject(grad), clReleaseMemObject(od);
    clReleaseMemObject(lse), clReleaseMemObject(dw), clReleaseMemObject(dw2);
    free(host), free(back), free(dout2), free(got);
    grads_free(&want);
    inputs_free(&x);
}
END_TEST

/* Bad arguments return a status and a message, on the device and the reference. */
START_TEST(test_errors)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = DIPOLE_ROUTED;
    d.batch = 1, d.heads_q = d.heads_kv = 1, d.seq_q = d.seq_k = 4, d.head_dim = 8;
    float buf[4][32] = {{0}}, gr[4][32];
    dipole_ctx *ctx = tu_ctx();
    /* ROUTED reads v2: both v2 and dv2 are required. */
    ck_assert_int_eq(dipole_attention_backward_host(ctx, &d, buf[0], buf[1], buf[2], NULL, buf[3],
                                                    gr[0], gr[1], gr[2], gr[3], NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "v2"));
    ck_assert_int_eq(dipole_reference_backward(&d, buf[0], buf[1], buf[2], buf[2], buf[3], gr[0],
                                               gr[1], gr[2], NULL, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_int_eq(dipole_reference_backward(&d, buf[0], buf[1], buf[2], buf[2], buf[3], NULL,
                                               gr[1], gr[2], gr[3], NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_int_eq(dipole_attention_backward(NULL, &d, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                               NULL, NULL, NULL, NULL, NULL, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    d.seq_q = 0;
    ck_assert_int_eq(dipole_attention_backward_host(ctx, &d, buf[0], buf[1], buf[2], buf[2], buf[3],
                                                    gr[0], gr[1], gr[2], gr[3], NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    /* head_dim beyond the tiled kernels on a forced tiled path: unsupported, said so, before
     * any forward runs (the default path takes the GEMM backward: backward-gemm suite). */
    d.seq_q = 1, d.seq_k = 1, d.head_dim = 300;
    d.path = DIPOLE_PATH_TILED;
    float big[5][300] = {{0}};
    ck_assert_int_eq(dipole_attention_backward_host(ctx, &d, big[0], big[1], big[2], big[2], big[3],
                                                    big[4], big[1], big[2], big[3], NULL, NULL),
                     DIPOLE_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "head_dim 300"));
}
END_TEST

Suite *backward_suite(void)
{
    Suite *s = suite_create("backward");
    TCase *ref = tcase_create("reference");
    tcase_set_timeout(ref, 1800);
    tcase_add_loop_test(ref, test_fd_forward_matches_reference, 0, N_MATRIX);
    tcase_add_loop_test(ref, test_reference_vs_fd, 0, N_MATRIX);
    suite_add_tcase(s, ref);
    TCase *dev = tcase_create("device");
    tcase_set_timeout(dev, 1800);
    tcase_add_loop_test(dev, test_device_matrix, 0, N_MATRIX);
    tcase_add_loop_test(dev, test_device_long, 0, 4);
    tcase_add_loop_test(dev, test_device_head_dims, 0, 4);
    tcase_add_loop_test(dev, test_exact_zero_scores, 0, 4);
    tcase_add_loop_test(dev, test_deterministic, 0, 4);
    tcase_add_loop_test(dev, test_masked_rows_and_keys, 0, 4);
    tcase_add_loop_test(dev, test_nonfinite_inputs, 0, 4);
    tcase_add_loop_test(dev, test_device_strided, 0, 4);
    tcase_add_test(dev, test_errors);
    suite_add_tcase(s, dev);
    return s;
}

/* ---- The GEMM-path backward. */

static const int gemm_head_dims[] = {8, 64, 320, 512};
enum { N_GEMM_HD = 4, N_GEMM_MATRIX = 4 * N_MASK * N_GQA * N_GEMM_HD };

/* Case _i: variant x mask x {MHA, GQA (MQA at head_dim 64 and 512)} x gemm_head_dims. */
static void gemm_case(int idx, int seq_q, int seq_k, bwd_case *c)
{
    const int hd = idx % N_GEMM_HD;
    matrix_case(idx / N_GEMM_HD * N_HD + hd % 2, seq_q, seq_k, c);
    c->d.head_dim = gemm_head_dims[hd];
    c->d.path = DIPOLE_PATH_GEMM;
}

/* Captures the backward's path line from the context log. */
static char gemm_log_line[512];

static void gemm_log(void *user, const char *message)
{
    (void)user;
    if (strncmp(message, "backward ", 9) == 0)
        snprintf(gemm_log_line, sizeof gemm_log_line, "%s", message);
}

/* Chunks the last backward ran in (from its log line), 0 when it took the tiled path. */
static long logged_chunks(void)
{
    const char *g = strstr(gemm_log_line, ": gemm, ");
    return g ? strtol(g + 8, NULL, 10) : 0;
}

static void run_backward(const dipole_attn_desc *d, const fwd_inputs *x, grads *g)
{
    dipole_ctx *ctx = tu_ctx();
    gemm_log_line[0] = '\0';
    dipole_ctx_set_log(ctx, gemm_log, NULL);
    dipole_status st = dipole_attention_backward_host(ctx, d, x->q, x->k, x->v, x->v2, x->dout,
                                                      g->dq, g->dk, g->dv, g->dv2, g->dpos,
                                                      g->dneg);
    dipole_ctx_set_log(ctx, NULL, NULL);
    char what[256];
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: %s: %s", tu_desc_str(d, what, sizeof what),
                  dipole_status_string(st), dipole_ctx_last_error(ctx));
}

/* Every gradient of a and b within (atol, rtol) of each other (b as the reference). */
static void grads_close(const char *what, const dipole_attn_desc *d, const grads *a,
                        const grads *b, double atol, double rtol)
{
    const size_t nq = tu_q_elems(d), nk = tu_kv_elems(d);
    expect_close(what, "dq", a->dq, b->dq, nq, atol, rtol);
    expect_close(what, "dk", a->dk, b->dk, nk, atol, rtol);
    expect_close(what, "dv", a->dv, b->dv, nk, atol, rtol);
    if (d->variant == DIPOLE_ROUTED || d->variant == DIPOLE_TWO_POLE)
        expect_close(what, "dv2", a->dv2, b->dv2, nk, atol, rtol);
    if (d->variant == DIPOLE_TWO_POLE) {
        expect_close(what, "dpos_weight", a->dpos, b->dpos, (size_t)d->heads_q, 10 * atol, rtol);
        expect_close(what, "dneg_weight", a->dneg, b->dneg, (size_t)d->heads_q, 10 * atol, rtol);
    }
}

static void grads_equal(const dipole_attn_desc *d, const grads *a, const grads *b)
{
    const size_t nq = tu_q_elems(d), nk = tu_kv_elems(d);
    ck_assert(memcmp(a->dq, b->dq, nq * sizeof(float)) == 0);
    ck_assert(memcmp(a->dk, b->dk, nk * sizeof(float)) == 0);
    ck_assert(memcmp(a->dv, b->dv, nk * sizeof(float)) == 0);
    if (d->variant == DIPOLE_ROUTED || d->variant == DIPOLE_TWO_POLE)
        ck_assert(memcmp(a->dv2, b->dv2, nk * sizeof(float)) == 0);
    if (d->variant == DIPOLE_TWO_POLE) {
        ck_assert(memcmp(a->dpos, b->dpos, (size_t)d->heads_q * sizeof(float)) == 0);
        ck_assert(memcmp(a->dneg, b->dneg, (size_t)d->heads_q * sizeof(float)) == 0);
    }
}

START_TEST(test_gemm_matrix)
{
    bwd_case c;
    gemm_case(_i, 21, 29, &c);
    device_vs_reference(&c.d, 12000 + 31 * (uint64_t)_i, DEV_ATOL, DEV_RTOL);
}
END_TEST

/* head_dim 320 / 576 with the default path: the GEMM backward, with no path set. */
START_TEST(test_gemm_auto_beyond_tiled)
{
    bwd_case c;
    gemm_case(_i * N_MASK * N_GQA * N_GEMM_HD + 1 * N_GQA * N_GEMM_HD + N_GEMM_HD + 2, 12, 17,
              &c); /* causal, GQA */
    c.d.path = DIPOLE_PATH_AUTO;
    c.d.head_dim = _i % 2 ? 576 : 320;
    fwd_inputs x;
    inputs_make(&x, &c.d, 600 + (uint64_t)_i);
    grads got, want;
    grads_alloc(&got, &c.d);
    grads_alloc(&want, &c.d);
    run_backward(&c.d, &x, &got);
    ck_assert_msg(logged_chunks() >= 1, "no GEMM backward logged: '%s'", gemm_log_line);
    ck_assert_int_eq(dipole_reference_backward(&c.d, x.q, x.k, x.v, x.v2, x.dout, want.dq,
                                               want.dk, want.dv, want.dv2, want.dpos, want.dneg),
                     DIPOLE_SUCCESS);
    grads_close(dipole_variant_name(c.d.variant), &c.d, &got, &want, DEV_ATOL, DEV_RTOL);
    grads_free(&got);
    grads_free(&want);
    inputs_free(&x);
}
END_TEST

/* A workspace limit of a few KiB forces many chunks of a few rows (and a key span per chunk):
 * the gradients still match the reference and the one-chunk run, and repeat bit for bit. */
START_TEST(test_gemm_tiny_workspace)
{
    static const int dims[] = {64, 320};
    for (int di = 0; di < 2; di++) {
        bwd_case c;
        /* window + key lengths, GQA, then causal, MHA */
        gemm_case(_i * N_MASK * N_GQA * N_GEMM_HD + (di ? 1 : 2) * N_GQA * N_GEMM_HD +
                      (di ? 0 : 1) * N_GEMM_HD,
                  37, 45, &c);
        c.d.head_dim = dims[di];
        char what[256];
        tu_desc_str(&c.d, what, sizeof what);
        fwd_inputs x;
        inputs_make(&x, &c.d, 700 + 10 * (uint64_t)_i + (uint64_t)di);
        grads one, many, again, want;
        grads_alloc(&one, &c.d);
        grads_alloc(&many, &c.d);
        grads_alloc(&again, &c.d);
        grads_alloc(&want, &c.d);
        dipole_ctx *ctx = tu_ctx();
        run_backward(&c.d, &x, &one);
        ck_assert_msg(logged_chunks() == 1, "%s: default workspace: '%s'", what, gemm_log_line);
        const size_t saved = dipole_ctx_workspace_limit(ctx);
        ck_assert_int_eq(dipole_ctx_set_workspace_limit(ctx, 4096), DIPOLE_SUCCESS);
        run_backward(&c.d, &x, &many);
        const long chunks = logged_chunks();
        run_backward(&c.d, &x, &again);
        ck_assert_int_eq(dipole_ctx_set_workspace_limit(ctx, saved), DIPOLE_SUCCESS);
        /* at least one chunk per (batch, head) slice, several per slice */
        ck_assert_msg(chunks > 2L * c.d.batch * c.d.heads_q, "%s: %ld chunks: '%s'", what,
                      chunks, gemm_log_line);
        ck_assert_int_eq(dipole_reference_backward(&c.d, x.q, x.k, x.v, x.v2, x.dout, want.dq,
                                                   want.dk, want.dv, want.dv2, want.dpos,
                                                   want.dneg),
                         DIPOLE_SUCCESS);
        grads_close(what, &c.d, &many, &want, DEV_ATOL, DEV_RTOL);
        grads_close(what, &c.d, &many, &one, DEV_ATOL, DEV_RTOL);
        grads_equal(&c.d, &many, &again);
        grads_free(&one);
        grads_free(&many);
        grads_free(&again);
        grads_free(&want);
        inputs_free(&x);
    }
}
END_TEST

/* Two runs give bit-identical gradients: GQA heads add into the same dK / dV in a fixed order. */
START_TEST(test_gemm_deterministic)
{
    bwd_case c;
    gemm_case(_i * N_MASK * N_GQA * N_GEMM_HD + 1 * N_GQA * N_GEMM_HD + N_GEMM_HD + 3, 50, 70,
              &c); /* causal, MQA, head_dim 512 */
    fwd_inputs x;
    inputs_make(&x, &c.d, 77);
    grads a, b;
    grads_alloc(&a, &c.d);
    grads_alloc(&b, &c.d);
    run_backward(&c.d, &x, &a);
    run_backward(&c.d, &x, &b);
    grads_equal(&c.d, &a, &b);
    grads_free(&a);
    grads_free(&b);
    inputs_free(&x);
}
END_TEST

/* The tiled and GEMM backward agree where both run (head_dim 8, 64 and 128). */
START_TEST(test_gemm_vs_tiled)
{
    bwd_case c;
    matrix_case(_i, 33, 41, &c);
    char what[256];
    tu_desc_str(&c.d, what, sizeof what);
    fwd_inputs x;
    inputs_make(&x, &c.d, 800 + (uint64_t)_i);
    grads tiled, gemm;
    grads_alloc(&tiled, &c.d);
    grads_alloc(&gemm, &c.d);
    c.d.path = DIPOLE_PATH_TILED;
    run_backward(&c.d, &x, &tiled);
    ck_assert_msg(logged_chunks() == 0, "%s: tiled ran '%s'", what, gemm_log_line);
    c.d.path = DIPOLE_PATH_GEMM;
    run_backward(&c.d, &x, &gemm);
    ck_assert_msg(logged_chunks() >= 1, "%s: gemm ran '%s'", what, gemm_log_line);
    grads_close(what, &c.d, &gemm, &tiled, DEV_ATOL, DEV_RTOL);
    grads_free(&tiled);
    grads_free(&gemm);
    inputs_free(&x);
}
END_TEST

/* The device tests of the tiled suite again, with the GEMM backward chosen by env DIPOLE_PATH
 * (forward too): strided and packed tensors, masked rows and keys, exact-zero scores. */
static void env_gemm_on(void)
{
    ck_assert_int_eq(setenv("DIPOLE_PATH", "gemm", 1), 0);
    tu_ctx_release(); /* a context reads the environment when it is created */
}

static void env_gemm_off(void)
{
    unsetenv("DIPOLE_PATH");
    tu_ctx_release();
}

/* The env line is honoured: a head_dim the tiled kernels take runs on the GEMM path. */
START_TEST(test_gemm_env_taken)
{
    bwd_case c;
    matrix_case(_i, 9, 11, &c);
    fwd_inputs x;
    inputs_make(&x, &c.d, 900 + (uint64_t)_i);
    grads g;
    grads_alloc(&g, &c.d);
    run_backward(&c.d, &x, &g);
    ck_assert_msg(logged_chunks() >= 1, "env DIPOLE_PATH=gemm not taken: '%s'", gemm_log_line);
    grads_free(&g);
    inputs_free(&x);
}
END_TEST

Suite *backward_gemm_suite(void)
{
    Suite *s = suite_create("backward-gemm");
    TCase *dev = tcase_create("gemm");
    tcase_set_timeout(dev, 1800);
    tcase_add_loop_test(dev, test_gemm_matrix, 0, N_GEMM_MATRIX);
    tcase_add_loop_test(dev, test_gemm_auto_beyond_tiled, 0, 4);
    tcase_add_loop_test(dev, test_gemm_tiny_workspace, 0, 4);
    tcase_add_loop_test(dev, test_gemm_deterministic, 0, 4);
    tcase_add_loop_test(dev, test_gemm_vs_tiled, 0, N_MATRIX);
    suite_add_tcase(s, dev);
    TCase *env = tcase_create("env");
    tcase_set_timeout(env, 1800);
    tcase_add_checked_fixture(env, env_gemm_on, env_gemm_off);
    tcase_add_loop_test(env, test_gemm_env_taken, 0, 4);
    tcase_add_loop_test(env, test_device_strided, 0, 4);
    tcase_add_loop_test(env, test_masked_rows_and_keys, 0, 4);
    tcase_add_loop_test(env, test_exact_zero_scores, 0, 4);
    tcase_add_loop_test(env, test_device_long, 0, 4);
    suite_add_tcase(s, env);
    return s;
}
