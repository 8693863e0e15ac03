/* Differential attention (DIPOLE_DIFF) and a value head dim of its own (desc.head_dim_v), forward
 * and backward.
 *
 * Reference level (no device): dipole_reference_lse against a double forward written here from
 * the Diff Transformer paper's definition (out_h = alpha_h softmax(s0) V + beta_h softmax(s1) V,
 * s_p = scale q_p.k_p with q_p query head 2h + p and k_p key head 2hk + p, then the score
 * modifiers on each pole's own score; lse per pole), and head_dim_v != head_dim for every other
 * variant against the same forward; the paper's own layout (head_dim_v = 2 head_dim, alpha 1,
 * beta -lambda) against two SOFTMAX references on the pole-p heads, forward and backward (the
 * SOFTMAX backward is linear in dout, so pole p's gradients are its call's with dout w_p dO);
 * dipole_reference_backward against central differences of the test's forward, weight gradients
 * included, after checking that forward against dipole_reference.
 *
 * Library level, on three paths (tcases "cpu": the tiled path on the device's own layout, the
 * CPU layout on PoCL; "group": the tiled path on the work-group layout; "gemm": the GEMM path):
 * DIFF with head_dim_v = head_dim (causal GQA, alpha and beta given), = 2 head_dim (the paper's
 * layout, key lengths), packed, in fp16 storage and as split-K decode (1 row against 600 keys,
 * on "cpu"); head_dim_v != head_dim for SOFTMAX (window), TWO_POLE (soft-cap, ALiBi) and ROUTED
 * — forward out and lse against dipole_reference_lse, gradients against
 * dipole_reference_backward. DIFF and the variants without v2 pass v2 = NULL. Each case is its
 * own set of kernel builds: few cases, and the group layout, whose builds cost most on PoCL,
 * runs three of them.
 *
 * Refusals: head_dim_v out of range, DIFF's heads_q past half an int, non-finite DIFF pole
 * weights (validation and the references); DIFF tensors (q, k, dq, an lse of one pole) or
 * head_dim_v tensors (v, out) too small for their shape (BUFFER_RANGE naming the tensor, before
 * any kernel), and the paged calls' pools, out and new-token sources too small for theirs;
 * v2 not read by DIFF (the references take NULL).
 *
 * Tolerances, |got - ref| <= atol + rtol |ref|:
 *   reference vs the test's double forward: 1e-6 + 1e-6 |ref| (both double, rounded to float);
 *   reference backward vs central differences (step 1e-5, double): 1e-5 + 1e-4 |ref|, as the
 *     backward and varlen suites;
 *   device vs reference (float32 compute): 3e-5 + 3e-4 |ref| for out, lse and gradients, atol
 *     3e-4 for dalpha/dbeta (sums over a head's rows), as the varlen suite; fp16 storage: rtol
 *     2^-10, and gradients atol + rtol (|ref| + 8 rms), as the dtype suite. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define REF_ATOL 1e-6
#define REF_RTOL 1e-6
#define FD_ATOL 1e-5
#define FD_RTOL 1e-4
#define DEV_ATOL 3e-5
#define DEV_RTOL 3e-4
#define F16_RTOL (1.0 / 1024)
#define BWD_RMS_WEIGHT 8

#define MAX_SEQS 4
#define MAX_HEADS 4
#define MAX_KEYS 64
#define MAX_DIM_V 64

#define ASSERT_MSG_HAS(msg, text) \
    ck_assert_msg(strstr((msg), (text)) != NULL, "message '%s' lacks '%s'", (msg), (text))

/* ---------------------------------------------------------------- problems */

typedef enum weights_kind {
    W_NONE = 0, /* pos_weight, neg_weight NULL (all 1) */
    W_GIVEN,    /* alpha_h, beta_h of both signs */
    W_LAMBDA    /* the Diff Transformer's alpha 1, beta -lambda_h */
} weights_kind;

/* A case. Packed: lq[b], lk[b] per sequence; dense: lq[0] x lk[0]. */
typedef struct spec {
    dipole_variant variant;
    int packed, batch;
    int lq[MAX_SEQS], lk[MAX_SEQS];
    int heads_q, heads_kv, head_dim, head_dim_v;
    int causal, window_left, window_right;
    int key_lengths; /* dense: batch b sees seq_k - 3 b keys */
    float softcap;
    int alibi;
    weights_kind weights;
    dipole_dtype dtype;
} spec;

typedef struct problem {
    dipole_attn_desc d;
    int cu_q[MAX_SEQS + 1], cu_k[MAX_SEQS + 1], kl[MAX_SEQS];
    float slopes[MAX_HEADS], alpha[MAX_HEADS], beta[MAX_HEADS];
    int tb; /* the tensors' batch: 1 when packed */
    int ns; /* score maps: q and k hold ns heads per head */
} problem;

/* Element counts of q (and dq), k (dk), v (v2, dv, dv2), out (dout) and lse. */
static size_t q_elems(const problem *pb)
{
    return (size_t)pb->tb * pb->d.seq_q * pb->ns * pb->d.heads_q * pb->d.head_dim;
}
static size_t k_elems(const problem *pb)
{
    return (size_t)pb->tb * pb->d.seq_k * pb->ns * pb->d.heads_kv * pb->d.head_dim;
}
static size_t v_elems(const problem *pb)
{
    return (size_t)pb->tb * pb->d.seq_k * pb->d.heads_kv * pb->d.head_dim_v;
}
static size_t o_elems(const problem *pb)
{
    return (size_t)pb->tb * pb->d.seq_q * pb->d.heads_q * pb->d.head_dim_v;
}
static size_t lse_elems(const problem *pb)
{
    return (size_t)dipole_lse_count(pb->d.variant) * pb->tb * pb->d.heads_q * pb->d.seq_q;
}

static bool reads_v2(dipole_variant v)
{
    return v == DIPOLE_ROUTED || v == DIPOLE_TWO_POLE;
}

static bool weighted(dipole_variant v)
{
    return v == DIPOLE_TWO_POLE || v == DIPOLE_DIFF;
}

static void problem_make(const spec *c, problem *pb)
{
    memset(pb, 0, sizeof *pb);
    dipole_attn_desc *d = &pb->d;
    dipole_attn_desc_default(d);
    d->variant = c->variant;
    d->dtype = c->dtype;
    d->batch = c->batch;
    d->heads_q = c->heads_q;
    d->heads_kv = c->heads_kv;
    d->head_dim = c->head_dim;
    d->head_dim_v = c->head_dim_v;
    d->causal = c->causal;
    d->window_left = c->window_left;
    d->window_right = c->window_right;
    d->softcap = c->softcap;
    pb->ns = c->variant == DIPOLE_DIFF ? 2 : 1;
    ck_assert_int_le(c->batch, MAX_SEQS);
    ck_assert_int_le(c->heads_q, MAX_HEADS);
    ck_assert_int_le(c->head_dim_v, MAX_DIM_V);
    if (c->packed) {
        for (int b = 0; b < c->batch; b++) {
            pb->cu_q[b + 1] = pb->cu_q[b] + c->lq[b];
            pb->cu_k[b + 1] = pb->cu_k[b] + c->lk[b];
        }
        d->seq_q = pb->cu_q[c->batch];
        d->seq_k = pb->cu_k[c->batch];
        d->cu_seqlens_q = pb->cu_q;
        d->cu_seqlens_k = pb->cu_k;
        pb->tb = 1;
    } else {
        d->seq_q = c->lq[0];
        d->seq_k = c->lk[0];
        pb->tb = c->batch;
    }
    if (c->key_lengths) {
        for (int b = 0; b < c->batch; b++)
            pb->kl[b] = d->seq_k - 3 * b > 0 ? d->seq_k - 3 * b : 0;
        d->key_lengths = pb->kl;
    }
    for (int h = 0; h < c->heads_q; h++) {
        pb->slopes[h] = (float)pow(2.0, -8.0 * (h + 1) / c->heads_q);
        /* the paper's lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1)) at layer l, here l - 1 = h */
        const float lambda = 0.8f - 0.6f * expf(-0.3f * (float)h);
        pb->alpha[h] = c->weights == W_LAMBDA ? 1.0f : c->weights == W_GIVEN ? 0.75f + 0.25f * h
                                                                             : 1.0f;
        pb->beta[h] = c->weights == W_LAMBDA ? -lambda : c->weights == W_GIVEN ? (h % 2 ? -0.5f : 1.25f)
                                                                               : 1.0f;
    }
    if (c->alibi)
        d->alibi_slopes = pb->slopes;
    if (c->weights != W_NONE) {
        d->pos_weight = pb->alpha;
        d->neg_weight = pb->beta;
    }
}

static const char *describe(const problem *pb, char *buf, size_t cap)
{
    const dipole_attn_desc *d = &pb->d;
    int n = snprintf(buf, cap,
                     "%s %s %s Hq=%d Hkv=%d d=%d dv=%d causal=%d win=(%d,%d) kl=%d softcap=%g "
                     "alibi=%d weights=%s",
                     dipole_variant_name(d->variant), dipole_dtype_name(d->dtype),
                     d->cu_seqlens_q ? "packed" : "dense", d->heads_q, d->heads_kv, d->head_dim,
                     d->head_dim_v, d->causal, d->window_left, d->window_right,
                     d->key_lengths != NULL, (double)d->softcap, d->alibi_slopes != NULL,
                     !d->pos_weight ? "none" : d->pos_weight[0] == 1.0f ? "1,-lambda" : "given");
    if (d->cu_seqlens_q)
        for (int b = 0; b < d->batch && n > 0 && (size_t)n < cap; b++)
            n += snprintf(buf + n, cap - (size_t)n, " %dx%d",
                          d->cu_seqlens_q[b + 1] - d->cu_seqlens_q[b],
                          d->cu_seqlens_k[b + 1] - d->cu_seqlens_k[b]);
    else if (n > 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, " B=%d %dx%d", d->batch, d->seq_q, d->seq_k);
    return buf;
}

/* ---------------------------------------------------------------- the test's own forward */

typedef struct dinputs {
    double *q, *k, *v, *v2, *alpha, *beta;
} dinputs;

static void dinputs_free(dinputs *in)
{
    free(in->q), free(in->k), free(in->v), free(in->v2), free(in->alpha), free(in->beta);
}

/* The forward in double. Score map m of query head h is q head ns h + m against key head
 * ns hk + m; pole p ranks score map (DIFF ? p : 0) by its logit (s; TWO_POLE's pole 1: -s;
 * SIGNEXP, ROUTED: |s|), weighs it by alpha_h / beta_h (TWO_POLE, DIFF; else 1) and sends each
 * key's weight to v, or v2 where ROUTED's s <= 0 or TWO_POLE's pole 1, signed by sign(s) for
 * SIGNEXP. out [tensor rows, Hq, DV] and lse [poles, tb, Hq, seq_q] may be NULL; min_abs (may be
 * NULL) receives the smallest |score| that counts (the kink central differences must not
 * straddle). Returns sum(dout * out) when dout is given. */
static double my_forward(const problem *pb, const dinputs *in, const float *dout, double *out,
                         double *lse, double *min_abs)
{
    const dipole_attn_desc *d = &pb->d;
    const int Hq = d->heads_q, Hkv = d->heads_kv, D = d->head_dim, DV = d->head_dim_v;
    const int Nq = d->seq_q, Nk = d->seq_k, NS = pb->ns;
    const dipole_variant var = d->variant;
    const double scale = d->scale != 0 ? d->scale : 1.0 / sqrt((double)D);
    const int np = dipole_lse_count(var);
    const bool packed = d->cu_seqlens_q != NULL;
    double total = 0, s[2][MAX_KEYS], e[MAX_KEYS], o[MAX_DIM_V];
    bool in_row[MAX_KEYS];
    if (min_abs)
        *min_abs = INFINITY;
    for (int b = 0; b < d->batch; b++) {
        const int tb = packed ? 0 : b;
        const int q0 = packed ? d->cu_seqlens_q[b] : 0, k0 = packed ? d->cu_seqlens_k[b] : 0;
        const int lq = packed ? d->cu_seqlens_q[b + 1] - q0 : Nq;
        const int lk = packed                 ? d->cu_seqlens_k[b + 1] - k0
                       : d->key_lengths != NULL ? d->key_lengths[b]
                                              : Nk;
        ck_assert_int_le(lk, MAX_KEYS);
        for (int h = 0; h < Hq; h++) {
            const int hk = h / (Hq / Hkv);
            for (int i = 0; i < lq; i++) {
                const long diag = (long)i + lk - lq; /* bottom-right */
                int seen = 0;
                for (int j = 0; j < lk; j++) {
                    in_row[j] = (!d->causal || j <= diag) &&
                                (d->window_right < 0 || j <= diag + d->window_right) &&
                                (d->window_left < 0 || j >= diag - d->window_left);
                    s[0][j] = s[1][j] = 0;
                    if (!in_row[j])
                        continue;
                    seen++;
                    for (int m = 0; m < NS; m++) {
                        const double *qi = in->q + (((size_t)tb * Nq + q0 + i) * NS * Hq + NS * h + m) * D;
                        const double *kj = in->k + (((size_t)tb * Nk + k0 + j) * NS * Hkv + NS * hk + m) * D;
                        double dot = 0;
                        for (int c = 0; c < D; c++)
                            dot += qi[c] * kj[c];
                        double x = scale * dot;
                        if (d->softcap > 0)
                            x = d->softcap * tanh(x / d->softcap);
                        if (d->alibi_slopes)
                            x -= d->alibi_slopes[h] * fabs((double)(diag - j));
                        s[m][j] = x;
                        if (min_abs)
                            *min_abs = fmin(*min_abs, fabs(x));
                    }
                }
                for (int c = 0; c < DV; c++)
                    o[c] = 0;
                for (int pole = 0; pole < np; pole++) {
                    const double *sp = s[var == DIPOLE_DIFF ? pole : 0];
                    double m = -INFINITY, l = 0;
                    for (int j = 0; j < lk; j++) {
                        e[j] = var == DIPOLE_SOFTMAX || var == DIPOLE_DIFF ? sp[j]
                               : var == DIPOLE_TWO_POLE                    ? (pole ? -sp[j] : sp[j])
                                                                           : fabs(sp[j]);
                        if (in_row[j])
                            m = fmax(m, e[j]);
                    }
                    for (int j = 0; j < lk; j++)
                        if (in_row[j])
                            l += (e[j] = exp(e[j] - m));
                    if (lse)
                        lse[(((size_t)pole * pb->tb + tb) * Hq + h) * Nq + q0 + i] =
                            seen ? m + log(l) : -INFINITY;
                    const double w = !weighted(var) ? 1.0 : pole ? in->beta[h] : in->alpha[h];
                    for (int j = 0; j < lk; j++) {
                        if (!in_row[j])
                            continue;
                        const double sign = sp[j] > 0 ? 1 : sp[j] < 0 ? -1 : 0;
                        const double coef = var == DIPOLE_SIGNEXP ? sign : 1.0;
                        const bool second = (var == DIPOLE_ROUTED && !(sp[j] > 0)) ||
                                            (var == DIPOLE_TWO_POLE && pole == 1);
                        const double *u = (second ? in->v2 : in->v) +
                                          (((size_t)tb * Nk + k0 + j) * Hkv + hk) * DV;
                        for (int c = 0; c < DV; c++)
                            o[c] += w * coef * e[j] / l * u[c];
                    }
                }
                const size_t orow = (((size_t)tb * Nq + q0 + i) * Hq + h) * DV;
                for (int c = 0; c < DV; c++) {
                    if (out)
                        out[orow + c] = o[c];
                    if (dout)
                        total += (double)dout[orow + c] * o[c];
                }
            }
        }
    }
    return total;
}

/* ---------------------------------------------------------------- inputs */

typedef struct tensors {
    float *q, *k, *v, *v2, *dout;     /* float32 values (rounded to the storage) */
    void *qs, *ks, *vs, *v2s, *douts; /* as stored */
} tensors;

static void tensors_make(tensors *t, const problem *pb, uint64_t seed, float mult)
{
    const size_t nq = q_elems(pb), nk = k_elems(pb), nv = v_elems(pb), no = o_elems(pb);
    const dipole_dtype dt = pb->d.dtype;
    t->q = tu_random(nq, seed, mult);
    t->k = tu_random(nk, seed + 1, mult);
    t->v = tu_random(nv, seed + 2, 1.0f);
    t->v2 = tu_random(nv, seed + 3, 1.0f);
    t->dout = tu_random(no, seed + 4, 1.0f);
    t->qs = tu_round_to(dt, t->q, nq);
    t->ks = tu_round_to(dt, t->k, nk);
    t->vs = tu_round_to(dt, t->v, nv);
    t->v2s = tu_round_to(dt, t->v2, nv);
    t->douts = tu_round_to(dt, t->dout, no);
}

static void tensors_free(tensors *t)
{
    free(t->q), free(t->k), free(t->v), free(t->v2), free(t->dout);
    free(t->qs), free(t->ks), free(t->vs), free(t->v2s), free(t->douts);
}

static dinputs dinputs_of(const tensors *t, const problem *pb)
{
    return (dinputs){tu_to_double(t->q, q_elems(pb)),     tu_to_double(t->k, k_elems(pb)),
                     tu_to_double(t->v, v_elems(pb)),     tu_to_double(t->v2, v_elems(pb)),
                     tu_to_double(pb->alpha, MAX_HEADS), tu_to_double(pb->beta, MAX_HEADS)};
}

/* ---------------------------------------------------------------- reference level */

/* DIFF in each of its forms, and head_dim_v != head_dim for every other variant; small enough
 * for central differences over every coordinate. */
static const spec ref_specs[] = {
    /* DIFF packed (sequences of 0 rows and of fewer keys than rows), GQA, causal, soft-cap,
     * ALiBi, weights of both signs */
    {DIPOLE_DIFF, 1, 3, {4, 0, 5}, {6, 3, 2}, 4, 2, 8, 8, 1, -1, -1, 0, 2.0f, 1, W_GIVEN, DIPOLE_F32},
    /* the paper's layout: head_dim_v = 2 head_dim, alpha 1, beta -lambda; key lengths, window */
    {DIPOLE_DIFF, 0, 2, {5}, {7}, 2, 1, 4, 8, 0, 2, 1, 1, 0.0f, 0, W_LAMBDA, DIPOLE_F32},
    /* DIFF MQA, no weights given (alpha = beta = 1), head_dim_v < head_dim */
    {DIPOLE_DIFF, 0, 1, {4}, {6}, 4, 1, 8, 3, 0, -1, -1, 0, 0.0f, 0, W_NONE, DIPOLE_F32},
    /* the other variants with head_dim_v != head_dim */
    {DIPOLE_SOFTMAX, 0, 2, {5}, {6}, 2, 2, 8, 12, 0, 3, 0, 0, 0.0f, 0, W_NONE, DIPOLE_F32},
    {DIPOLE_SIGNEXP, 0, 2, {4}, {5}, 4, 2, 8, 4, 1, -1, -1, 0, 1.5f, 0, W_NONE, DIPOLE_F32},
    {DIPOLE_ROUTED, 1, 2, {3, 4}, {5, 4}, 2, 1, 6, 10, 1, -1, -1, 0, 0.0f, 1, W_NONE, DIPOLE_F32},
    {DIPOLE_TWO_POLE, 0, 1, {5}, {6}, 2, 2, 8, 5, 0, -1, -1, 1, 2.5f, 0, W_GIVEN, DIPOLE_F32},
};
enum { N_REF = sizeof ref_specs / sizeof ref_specs[0] };

START_TEST(test_reference_matches_formula)
{
    problem pb;
    problem_make(&ref_specs[_i], &pb);
    char what[320];
    describe(&pb, what, sizeof what);
    tensors t;
    tensors_make(&t, &pb, 200 + 7 * (uint64_t)_i, 1.5f);
    const size_t no = o_elems(&pb), nl = lse_elems(&pb);
    dinputs in = dinputs_of(&t, &pb);
    double *want = calloc(no, sizeof(double)), *want_lse = calloc(nl, sizeof(double));
    float *got = malloc(sizeof(float) * no), *got_lse = malloc(sizeof(float) * nl);
    ck_assert(want && want_lse && got && got_lse);
    my_forward(&pb, &in, NULL, want, want_lse, NULL);
    /* DIFF reads no v2: NULL it where the variant does not. */
    ck_assert_int_eq(dipole_reference_lse(&pb.d, t.q, t.k, t.v,
                                          reads_v2(pb.d.variant) ? t.v2 : NULL, got, got_lse),
                     DIPOLE_SUCCESS);
    float *w = tu_narrow(want, no), *wl = tu_narrow(want_lse, nl);
    tu_expect_within(what, "out", got, w, no, REF_ATOL, REF_RTOL, 0);
    tu_expect_within(what, "lse", got_lse, wl, nl, REF_ATOL, REF_RTOL, 0);
    free(w), free(wl), free(want), free(want_lse), free(got), free(got_lse);
    dinputs_free(&in);
    tensors_free(&t);
}
END_TEST

/* One DIFF row worked by hand: d = 1, scale 1, two keys; pole 0's scores (2, -1) from q0 = 1
 * and k0 = (2, -1), pole 1's (0, 3) from q1 = 3 and k1 = (0, 1); v = (1, 5), alpha 2, beta -0.5. */
START_TEST(test_reference_by_hand)
{
    const float q[2] = {1.0f, 3.0f}, k[4] = {2.0f, 0.0f, -1.0f, 1.0f}, v[2] = {1.0f, 5.0f};
    const float alpha = 2.0f, beta = -0.5f;
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = DIPOLE_DIFF;
    d.batch = 1, d.heads_q = d.heads_kv = 1, d.seq_q = 1, d.seq_k = 2, d.head_dim = 1;
    d.scale = 1.0f, d.pos_weight = &alpha, d.neg_weight = &beta;
    float out, lse[2];
    ck_assert_int_eq(dipole_reference_lse(&d, q, k, v, NULL, &out, lse), DIPOLE_SUCCESS);
    const double p0 = 1 / (1 + exp(-3.0)), p1 = 1 / (1 + exp(3.0)); /* softmax(2, -1), (0, 3) */
    const double want = 2 * (p0 * 1 + (1 - p0) * 5) - 0.5 * (p1 * 1 + (1 - p1) * 5);
    ck_assert_double_eq_tol(out, want, 1e-6);
    ck_assert_double_eq_tol(lse[0], log(exp(2.0) + exp(-1.0)), 1e-6);
    ck_assert_double_eq_tol(lse[1], log(1 + exp(3.0)), 1e-6);
}
END_TEST

/* The pole-p heads of a DIFF tensor [tb, n, 2 heads, dim] as a dense [tb, n, heads, dim]. */
static float *pole_heads(const float *x, int tb, int n, int heads, int dim, int p)
{
    float *r = malloc(sizeof(float) * (size_t)tb * n * heads * dim);
    ck_assert_ptr_nonnull(r);
    for (size_t row = 0; row < (size_t)tb * n; row++)
        for (int h = 0; h < heads; h++)
            memcpy(r + (row * heads + h) * dim, x + (row * 2 * heads + 2 * h + p) * dim,
                   sizeof(float) * dim);
    return r;
}

/* The Diff Transformer's layout (head_dim_v = 2 head_dim, alpha 1, beta -lambda) against two
 * SOFTMAX references on the pole-p heads: out = O_0 - lambda O_1, lse pole p = call p's lse;
 * dq, dk at pole p's heads = call p's with dout w_p dO, dv = the sum of both calls' dv, and
 * dalpha_h, dbeta_h = sum over head h's rows of dO . O_p. */
START_TEST(test_diff_transformer_layout)
{
    const spec c = {DIPOLE_DIFF, 0, 2, {6}, {9}, 4, 2, 8, 16, 1, -1, -1, 0, 0.0f, 0, W_LAMBDA,
                    DIPOLE_F32};
    problem pb;
    problem_make(&c, &pb);
    char what[320];
    describe(&pb, what, sizeof what);
    tensors t;
    tensors_make(&t, &pb, 77, 1.5f);
    const dipole_attn_desc *d = &pb.d;
    const int B = d->batch, Nq = d->seq_q, Nk = d->seq_k, Hq = d->heads_q, Hkv = d->heads_kv;
    const int D = d->head_dim, DV = d->head_dim_v;
    const size_t nq = q_elems(&pb), nk = k_elems(&pb), nv = v_elems(&pb), no = o_elems(&pb);
    const size_t nl = lse_elems(&pb), nl1 = nl / 2, nq1 = nq / 2, nk1 = nk / 2;
    float *out = malloc(4 * no), *lse = malloc(4 * nl);
    ck_assert(out && lse);
    ck_assert_int_eq(dipole_reference_lse(d, t.q, t.k, t.v, NULL, out, lse), DIPOLE_SUCCESS);
    float *dq = malloc(4 * nq), *dk = malloc(4 * nk), *dv = malloc(4 * nv), dpos[MAX_HEADS],
          dneg[MAX_HEADS];
    ck_assert(dq && dk && dv);
    ck_assert_int_eq(dipole_reference_backward(d, t.q, t.k, t.v, NULL, t.dout, dq, dk, dv, NULL,
                                               dpos, dneg),
                     DIPOLE_SUCCESS);

    dipole_attn_desc sd = *d;
    sd.variant = DIPOLE_SOFTMAX, sd.pos_weight = sd.neg_weight = NULL;
    float *o[2], *l[2], *gq[2], *gk[2], *gv[2];
    float *want = calloc(no, 4), *want_dv = calloc(nv, 4), dw[2][MAX_HEADS];
    double want_dw[2][MAX_HEADS] = {{0}};
    ck_assert(want && want_dv);
    for (int p = 0; p < 2; p++) {
        float *qp = pole_heads(t.q, B, Nq, Hq, D, p), *kp = pole_heads(t.k, B, Nk, Hkv, D, p);
        const float *wp = p ? pb.beta : pb.alpha;
        float *dout_p = malloc(4 * no);
        o[p] = malloc(4 * no), l[p] = malloc(4 * nl1);
        gq[p] = malloc(4 * nq1), gk[p] = malloc(4 * nk1), gv[p] = malloc(4 * nv);
        ck_assert(dout_p && o[p] && l[p] && gq[p] && gk[p] && gv[p]);
        ck_assert_int_eq(dipole_reference_lse(&sd, qp, kp, t.v, NULL, o[p], l[p]),
                         DIPOLE_SUCCESS);
        for (size_t e = 0; e < no; e++) {
            const int h = (int)(e / DV % Hq);
            want[e] += wp[h] * o[p][e];
            dout_p[e] = wp[h] * t.dout[e];
            want_dw[p][h] += (double)t.dout[e] * o[p][e];
        }
        ck_assert_int_eq(dipole_reference_backward(&sd, qp, kp, t.v, NULL, dout_p, gq[p], gk[p],
                                                   gv[p], NULL, NULL, NULL),
                         DIPOLE_SUCCESS);
        for (size_t e = 0; e < nv; e++)
            want_dv[e] += gv[p][e];
        for (int h = 0; h < Hq; h++)
            dw[p][h] = (float)want_dw[p][h];
        free(qp), free(kp), free(dout_p);
    }
    ck_assert_float_eq(pb.alpha[1], 1.0f); /* the layout asked for */
    ck_assert_float_lt(pb.beta[1], 0.0f);
    tu_expect_within(what, "out (two softmax calls)", out, want, no, REF_ATOL, REF_RTOL, 0);
    for (int p = 0; p < 2; p++) {
        char name[64];
        snprintf(name, sizeof name, "lse pole %d", p);
        tu_expect_within(what, name, lse + p * nl1, l[p], nl1, REF_ATOL, REF_RTOL, 0);
        float *mq = pole_heads(dq, B, Nq, Hq, D, p), *mk = pole_heads(dk, B, Nk, Hkv, D, p);
        snprintf(name, sizeof name, "dq pole %d", p);
        tu_expect_within(what, name, mq, gq[p], nq1, REF_ATOL, REF_RTOL, 0);
        snprintf(name, sizeof name, "dk pole %d", p);
        tu_expect_within(what, name, mk, gk[p], nk1, REF_ATOL, REF_RTOL, 0);
        free(mq), free(mk);
    }
    tu_expect_within(what, "dv", dv, want_dv, nv, REF_ATOL, REF_RTOL, 0);
    tu_expect_within(what, "dpos_weight", dpos, dw[0], (size_t)Hq, 1e-5, REF_RTOL, 0);
    tu_expect_within(what, "dneg_weight", dneg, dw[1], (size_t)Hq, 1e-5, REF_RTOL, 0);
    for (int p = 0; p < 2; p++)
        free(o[p]), free(l[p]), free(gq[p]), free(gk[p]), free(gv[p]);
    free(want), free(want_dv), free(out), free(lse), free(dq), free(dk), free(dv);
    tensors_free(&t);
}
END_TEST

typedef struct fd_arg {
    const problem *pb;
    const dinputs *in;
    const float *dout;
} fd_arg;

static double fd_forward(void *arg)
{
    const fd_arg *a = arg;
    return my_forward(a->pb, a->in, a->dout, NULL, NULL, NULL);
}

/* Every coordinate of x. */
static void fd_check(const char *what, const char *tensor, const problem *pb, const dinputs *in,
                     const float *dout, double *x, const float *grad, size_t n)
{
    fd_arg a = {pb, in, dout};
    tu_expect_gradient(what, tensor, fd_forward, &a, x, grad, n, 0, FD_ATOL, FD_RTOL);
}

START_TEST(test_reference_backward_vs_fd)
{
    problem pb;
    problem_make(&ref_specs[_i], &pb);
    char what[320];
    describe(&pb, what, sizeof what);
    const size_t nq = q_elems(&pb), nk = k_elems(&pb), nv = v_elems(&pb), no = o_elems(&pb);
    /* Draw until no score that counts is near the |s| kink (SIGNEXP, ROUTED). */
    tensors t;
    dinputs in;
    uint64_t seed = 5000 + 17 * (uint64_t)_i;
    for (int tries = 0;; tries++, seed += 101) {
        tensors_make(&t, &pb, seed, 1.0f);
        in = dinputs_of(&t, &pb);
        double min_abs;
        my_forward(&pb, &in, NULL, NULL, NULL, &min_abs);
        if (min_abs > 1e-3)
            break;
        ck_assert_int_lt(tries, 50);
        dinputs_free(&in);
        tensors_free(&t);
    }
    /* The forward differentiated here is the library's. */
    double *want = calloc(no, sizeof(double));
    float *ref = malloc(sizeof(float) * no);
    ck_assert(want && ref);
    my_forward(&pb, &in, NULL, want, NULL, NULL);
    const bool v2 = reads_v2(pb.d.variant);
    ck_assert_int_eq(dipole_reference(&pb.d, t.q, t.k, t.v, v2 ? t.v2 : NULL, ref),
                     DIPOLE_SUCCESS);
    float *w = tu_narrow(want, no);
    tu_expect_within(what, "out (the test's forward)", ref, w, no, REF_ATOL, REF_RTOL, 0);

    float *dq = malloc(4 * nq), *dk = malloc(4 * nk), *dv = malloc(4 * nv), *dv2 = malloc(4 * nv);
    float dpos[MAX_HEADS], dneg[MAX_HEADS];
    ck_assert(dq && dk && dv && dv2);
    ck_assert_int_eq(dipole_reference_backward(&pb.d, t.q, t.k, t.v, v2 ? t.v2 : NULL, t.dout,
                                               dq, dk, dv, v2 ? dv2 : NULL, dpos, dneg),
                     DIPOLE_SUCCESS);
    fd_check(what, "dq", &pb, &in, t.dout, in.q, dq, nq);
    fd_check(what, "dk", &pb, &in, t.dout, in.k, dk, nk);
    fd_check(what, "dv", &pb, &in, t.dout, in.v, dv, nv);
    if (v2)
        fd_check(what, "dv2", &pb, &in, t.dout, in.v2, dv2, nv);
    if (weighted(pb.d.variant)) {
        fd_check(what, "dpos_weight", &pb, &in, t.dout, in.alpha, dpos, (size_t)pb.d.heads_q);
        fd_check(what, "dneg_weight", &pb, &in, t.dout, in.beta, dneg, (size_t)pb.d.heads_q);
    }
    free(dq), free(dk), free(dv), free(dv2), free(w), free(want), free(ref);
    dinputs_free(&in);
    tensors_free(&t);
}
END_TEST

/* ---------------------------------------------------------------- library level */

typedef enum run_mode { RUN_TABLE = 0, RUN_GROUP, RUN_GEMM } run_mode;
static const char *const mode_names[] = {"tiled (device's layout)", "tiled (group layout)", "gemm"};

/* Points the shared context and desc at a path, on every call (a failed case leaves nothing
 * behind for the next). */
static void use_mode(run_mode m, dipole_attn_desc *d)
{
    dipole_ctx *ctx = tu_ctx();
    ck_assert_int_eq(dipole_ctx_set_tile_config(
                         ctx, m == RUN_GROUP ? "layout=group,block_m=16,block_n=32" : NULL),
                     DIPOLE_SUCCESS);
    d->path = m == RUN_GEMM ? DIPOLE_PATH_GEMM : DIPOLE_PATH_TILED;
}

static bool device_is_cpu(void)
{
    cl_device_type type = 0;
    ck_assert_int_eq(clGetDeviceInfo(dipole_ctx_device(tu_ctx()), CL_DEVICE_TYPE, sizeof type,
                                     &type, NULL),
                     CL_SUCCESS);
    return (type & CL_DEVICE_TYPE_CPU) != 0;
}

/* The plans name the path asked for (a refusal fails here, with its reason); a decode case on
 * a CPU device's own layout is split-K. */
static void expect_plans(const char *what, run_mode m, const dipole_attn_desc *d, bool decode)
{
    dipole_ctx *ctx = tu_ctx();
    dipole_plan plan;
    dipole_status st = dipole_attention_plan(ctx, d, &plan);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: forward plan on %s: %s: %s", what, mode_names[m],
                  dipole_status_string(st), dipole_ctx_last_error(ctx));
    ck_assert_int_eq(plan.path, d->path);
    if (m == RUN_GROUP)
        ck_assert_msg(plan.layout == DIPOLE_LAYOUT_GROUP || plan.layout == DIPOLE_LAYOUT_SPLITK,
                      "%s: layout %d", what, (int)plan.layout);
    if (decode && m == RUN_TABLE && device_is_cpu())
        ck_assert_msg(plan.layout == DIPOLE_LAYOUT_SPLITK, "%s: layout %d, not split-K (%s)",
                      what, (int)plan.layout, plan.reason);
    st = dipole_attention_backward_plan(ctx, d, &plan);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: backward plan on %s: %s: %s", what, mode_names[m],
                  dipole_status_string(st), dipole_ctx_last_error(ctx));
    ck_assert_int_eq(plan.path, d->path);
}

static void widen(dipole_dtype dt, const void *bits, float *x, size_t n)
{
    ck_assert_int_eq(dipole_convert(DIPOLE_F32, x, dt, bits, n), DIPOLE_SUCCESS);
}

/* Forward (out, lse) and backward (every gradient) of pb through the library on path m against
 * the references. */
static void device_vs_reference(const problem *pb, run_mode m, uint64_t seed)
{
    dipole_attn_desc d = pb->d;
    use_mode(m, &d);
    char what[400], base[320];
    snprintf(what, sizeof what, "%s on %s", describe(pb, base, sizeof base), mode_names[m]);
    expect_plans(what, m, &d, d.seq_q == 1 && d.seq_k > 256);
    dipole_ctx *ctx = tu_ctx();
    const dipole_dtype dt = d.dtype;
    const size_t nq = q_elems(pb), nk = k_elems(pb), nv = v_elems(pb), no = o_elems(pb);
    const size_t nl = lse_elems(pb), es = dipole_dtype_size(dt);
    const bool v2 = reads_v2(d.variant);
    tensors t;
    tensors_make(&t, pb, seed, 1.5f);
    const double rtol = dt == DIPOLE_F16 ? F16_RTOL : DEV_RTOL;

    void *out = malloc(no * es);
    float *got = malloc(4 * no), *ref = malloc(4 * no);
    float *lse = malloc(4 * nl), *ref_lse = malloc(4 * nl);
    ck_assert(out && got && ref && lse && ref_lse);
    for (size_t e = 0; e < nl; e++)
        lse[e] = NAN; /* every element must be written */
    dipole_status st = dipole_attention_host_lse(ctx, &d, t.qs, t.ks, t.vs, v2 ? t.v2s : NULL,
                                                 out, lse);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: forward: %s: %s", what, dipole_status_string(st),
                  dipole_ctx_last_error(ctx));
    ck_assert_int_eq(dipole_reference_lse(&pb->d, t.q, t.k, t.v, v2 ? t.v2 : NULL, ref, ref_lse),
                     DIPOLE_SUCCESS);
    widen(dt, out, got, no);
    tu_expect_within(what, "out", got, ref, no, DEV_ATOL, rtol, 0);
    tu_expect_within(what, "lse", lse, ref_lse, nl, DEV_ATOL, DEV_RTOL, 0);

    const size_t n[4] = {nq, nk, nv, nv};
    void *gb[4];
    float *gw[4], *gr[4];
    for (int x = 0; x < 4; x++) {
        gb[x] = malloc(n[x] * es);
        gw[x] = malloc(4 * n[x]);
        gr[x] = malloc(4 * n[x]);
        ck_assert(gb[x] && gw[x] && gr[x]);
    }
    float dpos[MAX_HEADS], dneg[MAX_HEADS], rpos[MAX_HEADS], rneg[MAX_HEADS];
    st = dipole_attention_backward_host(ctx, &d, t.qs, t.ks, t.vs, v2 ? t.v2s : NULL, t.douts,
                                        gb[0], gb[1], gb[2], v2 ? gb[3] : NULL, dpos, dneg);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: backward: %s: %s", what, dipole_status_string(st),
                  dipole_ctx_last_error(ctx));
    ck_assert_int_eq(dipole_reference_backward(&pb->d, t.q, t.k, t.v, v2 ? t.v2 : NULL, t.dout,
                                               gr[0], gr[1], gr[2], v2 ? gr[3] : NULL, rpos, rneg),
                     DIPOLE_SUCCESS);
    static const char *const names[4] = {"dq", "dk", "dv", "dv2"};
    const double rms_w = dt == DIPOLE_F16 ? BWD_RMS_WEIGHT : 0;
    for (int x = 0; x < (v2 ? 4 : 3); x++) {
        widen(dt, gb[x], gw[x], n[x]);
        tu_expect_within(what, names[x], gw[x], gr[x], n[x], DEV_ATOL, rtol, rms_w);
    }
    if (weighted(d.variant)) {
        const double w = dt == DIPOLE_F16 ? 1 : 0;
        tu_expect_within(what, "dpos_weight", dpos, rpos, (size_t)d.heads_q, 10 * DEV_ATOL, rtol, w);
        tu_expect_within(what, "dneg_weight", dneg, rneg, (size_t)d.heads_q, 10 * DEV_ATOL, rtol, w);
    }
    for (int x = 0; x < 4; x++)
        free(gb[x]), free(gw[x]), free(gr[x]);
    free(out), free(got), free(ref), free(lse), free(ref_lse);
    tensors_free(&t);
}

/* The sample. Split-K decode last: the "cpu" tcase alone runs it. */
static const spec dev_specs[] = {
    /* DIFF, head_dim_v = head_dim, causal GQA, alpha and beta of both signs */
    {DIPOLE_DIFF, 0, 2, {37}, {45}, 4, 2, 32, 32, 1, -1, -1, 0, 0.0f, 0, W_GIVEN, DIPOLE_F32},
    /* the Diff Transformer's layout, key lengths (the last batch 6 keys short) */
    {DIPOLE_DIFF, 0, 3, {20}, {33}, 2, 2, 16, 32, 0, -1, -1, 1, 0.0f, 0, W_LAMBDA, DIPOLE_F32},
    /* head_dim_v != head_dim for the other variants */
    {DIPOLE_SOFTMAX, 0, 2, {25}, {30}, 2, 1, 32, 48, 0, 7, 2, 0, 0.0f, 0, W_NONE, DIPOLE_F32},
    {DIPOLE_TWO_POLE, 0, 1, {19}, {27}, 4, 2, 24, 16, 0, -1, -1, 0, 3.0f, 1, W_GIVEN, DIPOLE_F32},
    {DIPOLE_ROUTED, 0, 2, {17}, {17}, 2, 1, 16, 24, 1, -1, -1, 0, 0.0f, 0, W_NONE, DIPOLE_F32},
    /* DIFF packed (a sequence of 1 row, one of 0 keys), causal GQA with ALiBi */
    {DIPOLE_DIFF, 1, 3, {9, 1, 14}, {12, 0, 20}, 4, 2, 16, 16, 1, -1, -1, 0, 0.0f, 1, W_GIVEN, DIPOLE_F32},
    /* DIFF in fp16 storage, the paper's layout */
    {DIPOLE_DIFF, 0, 2, {12}, {20}, 2, 1, 16, 32, 0, -1, -1, 0, 0.0f, 0, W_LAMBDA, DIPOLE_F16},
    /* DIFF decode: one row against 600 keys (split-K on a CPU device) */
    {DIPOLE_DIFF, 0, 2, {1}, {600}, 4, 2, 32, 32, 0, -1, -1, 0, 0.0f, 0, W_GIVEN, DIPOLE_F32},
};
enum { N_DEV = sizeof dev_specs / sizeof dev_specs[0] };

static void device_case(int idx, run_mode m)
{
    problem pb;
    problem_make(&dev_specs[idx], &pb);
    device_vs_reference(&pb, m, 800 + 13 * (uint64_t)idx);
}

START_TEST(test_table_cases)
{
    device_case(_i, RUN_TABLE);
}
END_TEST

/* The group layout's builds cost several times the CPU layout's on PoCL: the paper's layout
 * with key lengths, SOFTMAX's head_dim_v with a window, and DIFF packed and causal GQA. */
static const int group_sample[] = {1, 2, 5};
enum { N_GROUP = sizeof group_sample / sizeof group_sample[0] };

START_TEST(test_group_cases)
{
    device_case(group_sample[_i], RUN_GROUP);
}
END_TEST

/* Every case but decode, which the GEMM path runs as any other shape. */
START_TEST(test_gemm_cases)
{
    device_case(_i, RUN_GEMM);
}
END_TEST

/* ---------------------------------------------------------------- refusals */

static float ok_alpha[2] = {1.0f, 0.5f}, ok_beta[2] = {-0.25f, -0.75f};

/* A valid DIFF descriptor with the paper's layout. */
static dipole_attn_desc diff_desc(void)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = DIPOLE_DIFF;
    d.batch = 1, d.heads_q = 2, d.heads_kv = 1, d.seq_q = 8, d.seq_k = 11, d.head_dim = 16;
    d.head_dim_v = 32;
    d.pos_weight = ok_alpha, d.neg_weight = ok_beta;
    return d;
}

/* Validation refuses the change with INVALID_ARG and a message with text; the references
 * refuse it the same way. */
#define REFUSED(text, stmt)                                                                     \
    do {                                                                                        \
        dipole_attn_desc d = diff_desc();                                                       \
        stmt;                                                                                   \
        ck_assert_int_eq(dipole_attn_desc_validate(&d), DIPOLE_ERR_INVALID_ARG);                \
        ASSERT_MSG_HAS(dipole_thread_last_error(), text);                                       \
        ck_assert_int_eq(dipole_reference(&d, buf, buf, buf, buf, out), DIPOLE_ERR_INVALID_ARG); \
        ASSERT_MSG_HAS(dipole_thread_last_error(), text);                                       \
        ck_assert_int_eq(dipole_reference_backward(&d, buf, buf, buf, buf, buf, g, g, g, g,     \
                                                   NULL, NULL),                                 \
                         DIPOLE_ERR_INVALID_ARG);                                               \
        ASSERT_MSG_HAS(dipole_thread_last_error(), text);                                       \
    } while (0)

START_TEST(test_refusals_desc)
{
    static float buf[8 * 4 * 32], out[8 * 2 * 32], g[8 * 4 * 32];
    {
        dipole_attn_desc ok = diff_desc();
        ck_assert_int_eq(dipole_attn_desc_validate(&ok), DIPOLE_SUCCESS);
        ok.head_dim_v = 0; /* head_dim */
        ck_assert_int_eq(dipole_attn_desc_validate(&ok), DIPOLE_SUCCESS);
        ok.head_dim_v = 65536;
        ck_assert_int_eq(dipole_attn_desc_validate(&ok), DIPOLE_SUCCESS);
    }
    REFUSED("desc.head_dim_v = -1 is out of range [1, 65536]", d.head_dim_v = -1);
    REFUSED("desc.head_dim_v = 65537 is out of range [1, 65536]", d.head_dim_v = 65537);
    REFUSED("desc.head_dim_v = -3 is out of range",
            (d.variant = DIPOLE_SOFTMAX, d.head_dim_v = -3));
    float nan_w[2] = {1.0f, NAN}, inf_w[2] = {-INFINITY, 1.0f};
    REFUSED("desc.pos_weight[1] = nan is not finite", d.pos_weight = nan_w);
    REFUSED("desc.neg_weight[0] = -inf is not finite", d.neg_weight = inf_w);
    REFUSED("desc.heads_q = 1073741824: DIFF's q holds 2 heads_q heads",
            (d.heads_q = INT_MAX / 2 + 1, d.heads_kv = 1));
    /* Half an int of heads is fine where q holds one head per head. */
    {
        dipole_attn_desc d = diff_desc();
        d.variant = DIPOLE_SOFTMAX, d.heads_q = INT_MAX / 2 + 1, d.heads_kv = 1;
        ck_assert_int_eq(dipole_attn_desc_validate(&d), DIPOLE_SUCCESS);
    }
}
END_TEST

/* DIFF reads no v2: the references take v2 (and dv2) NULL. */
START_TEST(test_diff_no_v2)
{
    dipole_attn_desc d = diff_desc();
    const size_t nq = 8 * 4 * 16, nk = 11 * 2 * 16, nv = 11 * 32, no = 8 * 2 * 32;
    float *q = tu_random(nq, 1, 1.0f), *k = tu_random(nk, 2, 1.0f), *v = tu_random(nv, 3, 1.0f);
    float *dout = tu_random(no, 4, 1.0f), *out = malloc(4 * no), lse[2 * 2 * 8];
    float *dq = malloc(4 * nq), *dk = malloc(4 * nk), *dv = malloc(4 * nv), dp[2], dn[2];
    ck_assert(out && dq && dk && dv);
    ck_assert_int_eq(dipole_reference_lse(&d, q, k, v, NULL, out, lse), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference_backward(&d, q, k, v, NULL, dout, dq, dk, dv, NULL, dp, dn),
                     DIPOLE_SUCCESS);
    /* alpha NULL is 1: against beta -1, with each pole's q and k heads equal, the poles
     * cancel and out is 0. */
    const float minus[2] = {-1.0f, -1.0f};
    d.pos_weight = NULL, d.neg_weight = minus;
    for (int r = 0; r < 8 * 2; r++)
        memcpy(q + (size_t)(2 * r + 1) * 16, q + (size_t)(2 * r) * 16, 16 * sizeof(float));
    for (int r = 0; r < 11; r++)
        memcpy(k + (size_t)(2 * r + 1) * 16, k + (size_t)(2 * r) * 16, 16 * sizeof(float));
    ck_assert_int_eq(dipole_reference(&d, q, k, v, NULL, out), DIPOLE_SUCCESS);
    for (size_t e = 0; e < no; e++)
        ck_assert_msg(fabsf(out[e]) < 1e-6f, "out[%zu] = %g", e, (double)out[e]);
    free(q), free(k), free(v), free(dout), free(out), free(dq), free(dk), free(dv);
}
END_TEST

static cl_mem buffer_of(size_t floats)
{
    cl_int err;
    cl_mem m = clCreateBuffer(dipole_ctx_cl_context(tu_ctx()), CL_MEM_READ_WRITE,
                              4 * (floats ? floats : 1), NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    return m;
}

/* Device calls check each tensor against its DIFF / head_dim_v shape before any kernel runs:
 * a buffer holding heads_q q heads (or heads_kv k heads, or head_dim values) is too small. */
START_TEST(test_refusals_buffers)
{
    dipole_ctx *ctx = tu_ctx();
    dipole_attn_desc d = diff_desc();
    const int Nq = 8, Nk = 11, Hq = 2, Hkv = 1, D = 16, DV = 32;
    /* the right sizes, and the sizes of a SOFTMAX call with head_dim_v = head_dim */
    cl_mem q = buffer_of((size_t)Nq * 2 * Hq * D), q1 = buffer_of((size_t)Nq * Hq * D);
    cl_mem k = buffer_of((size_t)Nk * 2 * Hkv * D), k1 = buffer_of((size_t)Nk * Hkv * D);
    cl_mem v = buffer_of((size_t)Nk * Hkv * DV), v1 = buffer_of((size_t)Nk * Hkv * D);
    cl_mem o = buffer_of((size_t)Nq * Hq * DV), o1 = buffer_of((size_t)Nq * Hq * D);
    cl_mem lse = buffer_of((size_t)2 * Hq * Nq), lse1 = buffer_of((size_t)Hq * Nq);
    cl_mem dout = buffer_of((size_t)Nq * Hq * DV), dq = buffer_of((size_t)Nq * 2 * Hq * D);
    cl_mem dk = buffer_of((size_t)Nk * 2 * Hkv * D), dv = buffer_of((size_t)Nk * Hkv * DV);
    cl_mem dq1 = buffer_of((size_t)Nq * Hq * D);
    const dipole_tensor tq = dipole_tensor_dense(q, Nq, 2 * Hq, D);
    const dipole_tensor tq1 = dipole_tensor_dense(q1, Nq, 2 * Hq, D);
    const dipole_tensor tk = dipole_tensor_dense(k, Nk, 2 * Hkv, D);
    const dipole_tensor tk1 = dipole_tensor_dense(k1, Nk, 2 * Hkv, D);
    const dipole_tensor tv = dipole_tensor_dense(v, Nk, Hkv, DV);
    const dipole_tensor tv1 = dipole_tensor_dense(v1, Nk, Hkv, DV);
    const dipole_tensor to = dipole_tensor_dense(o, Nq, Hq, DV);
    const dipole_tensor to1 = dipole_tensor_dense(o1, Nq, Hq, DV);
    const dipole_tensor tdo = dipole_tensor_dense(dout, Nq, Hq, DV);
    const dipole_tensor tdq = dipole_tensor_dense(dq, Nq, 2 * Hq, D);
    const dipole_tensor tdq1 = dipole_tensor_dense(dq1, Nq, 2 * Hq, D);
    const dipole_tensor tdk = dipole_tensor_dense(dk, Nk, 2 * Hkv, D);
    const dipole_tensor tdv = dipole_tensor_dense(dv, Nk, Hkv, DV);
    struct {
        const dipole_tensor *q, *k, *v, *out;
        cl_mem lse;
        const char *text;
    } fwd[] = {
        {&tq1, &tk, &tv, &to, lse, "q needs 512 f32 elements but its buffer holds 1024 bytes"},
        {&tq, &tk1, &tv, &to, lse, "k needs 352 f32 elements but its buffer holds 704 bytes"},
        {&tq, &tk, &tv1, &to, lse, "v needs 352 f32 elements but its buffer holds 704 bytes"},
        {&tq, &tk, &tv, &to1, lse, "out needs 512 f32 elements but its buffer holds 1024 bytes"},
        {&tq, &tk, &tv, &to, lse1, "lse needs 32 floats but its buffer holds 64 bytes"},
    };
    for (size_t x = 0; x < sizeof fwd / sizeof fwd[0]; x++) {
        dipole_status st = dipole_attention(ctx, &d, fwd[x].q, fwd[x].k, fwd[x].v, NULL,
                                            fwd[x].out, fwd[x].lse, NULL);
        ck_assert_msg(st == DIPOLE_ERR_BUFFER_RANGE, "try %zu: forward %s: %s", x,
                      dipole_status_string(st), dipole_ctx_last_error(ctx));
        ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), fwd[x].text);
    }
    dipole_status st = dipole_attention_backward(ctx, &d, &tq, &tk, &tv, NULL, &to, &tdo, lse,
                                                 &tdq1, &tdk, &tdv, NULL, NULL, NULL, NULL);
    ck_assert_msg(st == DIPOLE_ERR_BUFFER_RANGE, "backward %s: %s", dipole_status_string(st),
                  dipole_ctx_last_error(ctx));
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx),
                   "dq needs 512 f32 elements but its buffer holds 1024 bytes");
    st = dipole_attention_backward(ctx, &d, &tq, &tk, &tv, NULL, &to, &tdo, lse1, &tdq, &tdk, &tdv,
                                   NULL, NULL, NULL, NULL);
    ck_assert_int_eq(st, DIPOLE_ERR_BUFFER_RANGE);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "lse needs 32 floats");
    cl_mem all[] = {q, q1, k, k1, v, v1, o, o1, lse, lse1, dout, dq, dk, dv, dq1};
    for (size_t x = 0; x < sizeof all / sizeof all[0]; x++)
        clReleaseMemObject(all[x]);
}
END_TEST

/* The paged calls check each pool against its own shape before any kernel runs: a DIFF key pool
 * of heads_kv heads (not 2 heads_kv), a value pool or a new-token source of head_dim values
 * (not head_dim_v), and an out of head_dim are too small, named with what they need. */
START_TEST(test_refusals_paged)
{
    dipole_ctx *ctx = tu_ctx();
    dipole_attn_desc d = diff_desc();
    static const int kl[1] = {11}, table[2] = {1, 0};
    d.key_lengths = kl;
    const int Nq = 8, Hq = 2, Hkv = 1, D = 16, DV = 32, PS = 8, PAGES = 2;
    cl_mem q = buffer_of((size_t)Nq * 2 * Hq * D), o = buffer_of((size_t)Nq * Hq * DV);
    cl_mem o1 = buffer_of((size_t)Nq * Hq * D);
    cl_mem kp = buffer_of((size_t)PAGES * PS * 2 * Hkv * D);
    /* a page of the right shape would not fit in these: a page of the wrong one does */
    cl_mem kp1 = buffer_of((size_t)PS * Hkv * D);
    cl_mem vp = buffer_of((size_t)PAGES * PS * Hkv * DV);
    cl_mem vp1 = buffer_of((size_t)PS * Hkv * D);
    cl_int err;
    cl_mem tab = clCreateBuffer(dipole_ctx_cl_context(ctx),
                                CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof table,
                                (void *)table, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    const dipole_paged_kv paged = {tab, PAGES, PS};
    const dipole_tensor tq = dipole_tensor_dense(q, Nq, 2 * Hq, D);
    const dipole_tensor to = dipole_tensor_dense(o, Nq, Hq, DV);
    const dipole_tensor to1 = dipole_tensor_dense(o1, Nq, Hq, DV);
    const dipole_tensor tk = dipole_tensor_dense(kp, PS, 2 * Hkv, D);
    const dipole_tensor tk1 = dipole_tensor_dense(kp1, PS, 2 * Hkv, D);
    const dipole_tensor tv = dipole_tensor_dense(vp, PS, Hkv, DV);
    const dipole_tensor tv1 = dipole_tensor_dense(vp1, PS, Hkv, DV);
    ck_assert_msg(dipole_attention_paged(ctx, &d, &tq, &tk, &tv, NULL, &paged, &to, NULL, NULL) ==
                      DIPOLE_SUCCESS,
                  "%s", dipole_ctx_last_error(ctx));
    static const struct {
        int k1, v1, o1;
        const char *text;
    } tries[] = {
        {1, 0, 0, "k_pages needs 256 f32 elements but its buffer holds 512 bytes"},
        {0, 1, 0, "v_pages needs 256 f32 elements but its buffer holds 512 bytes"},
        {0, 0, 1, "out needs 512 f32 elements but its buffer holds 1024 bytes"},
    };
    for (size_t x = 0; x < sizeof tries / sizeof tries[0]; x++) {
        const dipole_status st = dipole_attention_paged(
            ctx, &d, &tq, tries[x].k1 ? &tk1 : &tk, tries[x].v1 ? &tv1 : &tv, NULL, &paged,
            tries[x].o1 ? &to1 : &to, NULL, NULL);
        ck_assert_msg(st == DIPOLE_ERR_BUFFER_RANGE, "try %zu: %s: %s", x,
                      dipole_status_string(st), dipole_ctx_last_error(ctx));
        ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), tries[x].text);
    }
    /* the cache write: k_new of 2 heads_kv heads, v_new of head_dim_v */
    cl_mem kn = buffer_of((size_t)2 * Hkv * D), vn = buffer_of((size_t)Hkv * DV);
    cl_mem vn1 = buffer_of((size_t)Hkv * D);
    const dipole_tensor tkn = dipole_tensor_dense(kn, 1, 2 * Hkv, D);
    const dipole_tensor tvn = dipole_tensor_dense(vn, 1, Hkv, DV);
    const dipole_tensor tvn1 = dipole_tensor_dense(vn1, 1, Hkv, DV);
    const int pos[1] = {10};
    ck_assert_msg(dipole_paged_kv_write(ctx, &d, &paged, 1, pos, &tkn, &tvn, NULL, &tk, &tv, NULL,
                                        NULL) == DIPOLE_SUCCESS,
                  "%s", dipole_ctx_last_error(ctx));
    ck_assert_int_eq(dipole_paged_kv_write(ctx, &d, &paged, 1, pos, &tkn, &tvn1, NULL, &tk, &tv,
                                           NULL, NULL),
                     DIPOLE_ERR_BUFFER_RANGE);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx),
                   "v_new needs 32 f32 elements but its buffer holds 64 bytes");
    cl_mem all[] = {q, o, o1, kp, kp1, vp, vp1, tab, kn, vn, vn1};
    for (size_t x = 0; x < sizeof all / sizeof all[0]; x++)
        clReleaseMemObject(all[x]);
}
END_TEST

Suite *diff_suite(void)
{
    Suite *s = suite_create("diff");
    TCase *ref = tcase_create("reference");
    tcase_add_loop_test(ref, test_reference_matches_formula, 0, N_REF);
    tcase_add_test(ref, test_reference_by_hand);
    tcase_add_test(ref, test_diff_transformer_layout);
    tcase_add_loop_test(ref, test_reference_backward_vs_fd, 0, N_REF);
    suite_add_tcase(s, ref);
    TCase *bad = tcase_create("refusals");
    tcase_add_test(bad, test_refusals_desc);
    tcase_add_test(bad, test_diff_no_v2);
    tcase_add_test(bad, test_refusals_buffers);
    tcase_add_test(bad, test_refusals_paged);
    suite_add_tcase(s, bad);
    /* One tcase per path (CK_RUN_CASE=cpu|group|gemm runs one). */
    TCase *cpu = tcase_create("cpu");
    tcase_set_timeout(cpu, 1800);
    tcase_add_loop_test(cpu, test_table_cases, 0, N_DEV);
    suite_add_tcase(s, cpu);
    TCase *group = tcase_create("group");
    tcase_set_timeout(group, 1800);
    tcase_add_loop_test(group, test_group_cases, 0, N_GROUP);
    suite_add_tcase(s, group);
    TCase *gemm = tcase_create("gemm");
    tcase_set_timeout(gemm, 1800);
    tcase_add_loop_test(gemm, test_gemm_cases, 0, N_DEV - 1);
    suite_add_tcase(s, gemm);
    return s;
}
