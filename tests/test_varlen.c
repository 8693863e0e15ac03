/* Packed batches (desc.cu_seqlens_q/k), ALiBi, soft-capping and an additive bias, forward and
 * backward.
 *
 * Reference level (no device): dipole_reference_lse against a double forward written here
 * from the header's definitions (the score s = scale q.k, then softcap tanh(s / softcap), then
 * s - slope_h |i + lk - lq - j|, then + bias; a score of -inf drops its key from every pole;
 * a row with no key gives 0 and lse -inf), over packed and dense batches, every variant and
 * bias layout; a Cogformer document mask (one long sequence whose separators become a
 * block-diagonal causal bias of -inf) against the packed call over the documents; and
 * dipole_reference_backward against central differences of that double forward, which is first
 * checked to agree with dipole_reference (so the differences are of the library's definition).
 *
 * Library level, on three paths (tcases "cpu": the tiled path on the device's own layout, the
 * CPU layout on PoCL; "group": the tiled path on the work-group layout; "gemm": the GEMM path):
 * a sample of packed and dense cases (lengths drawn at random, with sequences of 0 and 1 rows or
 * keys; causal, window, none; MHA, GQA, MQA; every variant; ALiBi; soft-cap; a float32 bias
 * broadcast over batch and/or heads by stride 0, with -inf entries and a row of -inf; fp16
 * storage with an fp16 bias) — forward out and lse against dipole_reference_lse, gradients against
 * dipole_reference_backward — and the document mask through the library. Each case is its own
 * set of kernel builds, so the cases sample the combinations instead of taking their product,
 * and the group layout, whose builds cost most on PoCL, runs a subset of them.
 *
 * Refusals: every malformed packed or score-modifier field gives its status and a message
 * naming the field, from validation, the references, the host twins and the device calls.
 *
 * Tolerances, |got - ref| <= atol + rtol |ref|:
 *   reference vs the test's double forward: 1e-6 + 1e-6 |ref| (both double, rounded to float);
 *   reference backward vs central differences (step 1e-5, double): 1e-5 + 1e-4 |ref|, as the
 *     backward suite;
 *   device vs reference (float32 compute): 3e-5 + 3e-4 |ref| for out, lse and gradients, atol
 *     3e-4 for dα/dβ (sums over a head's rows), as the forward and backward suites; fp16
 *     storage: rtol 2^-10, and gradients atol + rtol (|ref| + 8 rms), as the dtype suite. */
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
#define MAX_KEYS 160
#define MAX_DIM 32

#define ASSERT_MSG_HAS(msg, text) \
    ck_assert_msg(strstr((msg), (text)) != NULL, "message '%s' lacks '%s'", (msg), (text))

static uint64_t rng_next(uint64_t *s)
{
    *s += 0x9e3779b97f4a7c15ull;
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---------------------------------------------------------------- problems */

typedef enum bias_kind {
    NO_BIAS = 0,
    BIAS_FULL,  /* every (batch, head, row, key) its own */
    BIAS_HEADS, /* stride_head 0: one [rows, keys] per batch shared by the heads */
    BIAS_BATCH, /* stride_batch 0: one [heads, rows, keys] shared by the batch (dense only) */
    BIAS_BOTH   /* both strides 0: one [rows, keys] */
} bias_kind;

/* A case. Packed: lq[b], lk[b] per sequence (-1: drawn from [2, 40]); dense: lq[0] x lk[0]. */
typedef struct spec {
    dipole_variant variant;
    int packed, batch;
    int lq[MAX_SEQS], lk[MAX_SEQS];
    int heads_q, heads_kv, head_dim;
    int causal, window_left, window_right;
    float softcap;
    int alibi;
    bias_kind bias;
    int neg_inf;        /* bias: about one entry in eight -inf, and one row -inf throughout */
    dipole_dtype dtype; /* storage of the tensors; an fp16 case stores its bias in fp16 too */
} spec;

/* A descriptor and the host arrays it points at. */
typedef struct problem {
    dipole_attn_desc d;
    int cu_q[MAX_SEQS + 1], cu_k[MAX_SEQS + 1];
    float slopes[MAX_HEADS], alpha[MAX_HEADS], beta[MAX_HEADS];
    dipole_bias bias;
    void *bias_bits;  /* the bias as stored (bias.host) */
    float *bias_wide; /* its values as float32 (for the test's own forward) */
    size_t bias_n;
    int tb; /* the tensors' batch: 1 when packed */
} problem;

static size_t q_elems(const problem *pb)
{
    return (size_t)pb->tb * pb->d.seq_q * pb->d.heads_q * pb->d.head_dim;
}

static size_t kv_elems(const problem *pb)
{
    return (size_t)pb->tb * pb->d.seq_k * pb->d.heads_kv * pb->d.head_dim;
}

static size_t lse_elems(const problem *pb)
{
    return (size_t)dipole_lse_count(pb->d.variant) * pb->tb * pb->d.heads_q * pb->d.seq_q;
}

static void problem_free(problem *pb)
{
    free(pb->bias_bits);
    free(pb->bias_wide);
    pb->bias_bits = NULL;
    pb->bias_wide = NULL;
}

/* Fills a bias for pb (its strides from kind) with normal values, -inf entries and a -inf row
 * where asked. The row stride is padded past seq_k; a packed bias gets a stride_batch that
 * must go unused (its one batch is 0). */
static void bias_make(problem *pb, bias_kind kind, int neg_inf, dipole_dtype dtype, uint64_t seed)
{
    const dipole_attn_desc *d = &pb->d;
    dipole_bias *b = &pb->bias;
    memset(b, 0, sizeof *b);
    b->dtype = dtype;
    b->offset = 5;
    b->stride_row = (size_t)d->seq_k + 3;
    b->stride_head = kind == BIAS_HEADS || kind == BIAS_BOTH ? 0 : (size_t)d->seq_q * b->stride_row;
    const size_t per_batch = (size_t)d->heads_q * d->seq_q * b->stride_row;
    b->stride_batch = pb->d.cu_seqlens_q                      ? 7
                      : kind == BIAS_BATCH || kind == BIAS_BOTH ? 0
                                                                : per_batch;
    pb->bias_n = b->offset + (size_t)(pb->tb - 1) * b->stride_batch +
                 (size_t)(d->heads_q - 1) * b->stride_head +
                 (size_t)(d->seq_q - 1) * b->stride_row + (size_t)d->seq_k;
    float *x = tu_random(pb->bias_n, seed, 1.0f);
    uint64_t s = seed ^ 0x5555;
    if (neg_inf) {
        for (size_t e = 0; e < pb->bias_n; e++)
            if (rng_next(&s) % 8 == 0)
                x[e] = -INFINITY;
        const int row = d->seq_q / 2; /* every key of this (packed) row, in every head */
        for (int bb = 0; bb < pb->tb; bb++)
            for (int h = 0; h < d->heads_q; h++)
                for (int j = 0; j < d->seq_k; j++)
                    x[b->offset + bb * b->stride_batch + h * b->stride_head +
                      (size_t)row * b->stride_row + (size_t)j] = -INFINITY;
    }
    pb->bias_bits = tu_round_to(dtype, x, pb->bias_n); /* x now holds the stored values */
    pb->bias_wide = x;
    b->host = pb->bias_bits;
    pb->d.bias = b;
}

static void problem_make(const spec *c, uint64_t seed, problem *pb)
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
    d->causal = c->causal;
    d->window_left = c->window_left;
    d->window_right = c->window_right;
    d->softcap = c->softcap;
    ck_assert_int_le(c->batch, MAX_SEQS);
    ck_assert_int_le(c->heads_q, MAX_HEADS);
    ck_assert_int_le(c->head_dim, MAX_DIM);
    uint64_t s = seed * 31 + 7;
    if (c->packed) {
        for (int b = 0; b < c->batch; b++) {
            const int lq = c->lq[b] >= 0 ? c->lq[b] : 2 + (int)(rng_next(&s) % 39);
            const int lk = c->lk[b] >= 0 ? c->lk[b] : 2 + (int)(rng_next(&s) % 39);
            pb->cu_q[b + 1] = pb->cu_q[b] + lq;
            pb->cu_k[b + 1] = pb->cu_k[b] + lk;
            ck_assert_int_le(lk, MAX_KEYS);
        }
        d->seq_q = pb->cu_q[c->batch];
        d->seq_k = pb->cu_k[c->batch];
        d->cu_seqlens_q = pb->cu_q;
        d->cu_seqlens_k = pb->cu_k;
        pb->tb = 1;
    } else {
        d->seq_q = c->lq[0] >= 0 ? c->lq[0] : 2 + (int)(rng_next(&s) % 39);
        d->seq_k = c->lk[0] >= 0 ? c->lk[0] : 2 + (int)(rng_next(&s) % 39);
        pb->tb = c->batch;
        ck_assert_int_le(d->seq_k, MAX_KEYS);
    }
    for (int h = 0; h < c->heads_q; h++) {
        pb->slopes[h] = (float)pow(2.0, -8.0 * (h + 1) / c->heads_q); /* ALiBi's geometric slopes */
        pb->alpha[h] = 0.75f + 0.25f * (float)h;
        pb->beta[h] = h % 2 ? -0.5f : 1.25f;
    }
    if (c->alibi)
        d->alibi_slopes = pb->slopes;
    if (c->variant == DIPOLE_TWO_POLE) {
        d->pos_weight = pb->alpha;
        d->neg_weight = pb->beta;
    }
    if (c->bias)
        bias_make(pb, c->bias, c->neg_inf, c->dtype == DIPOLE_F16 ? DIPOLE_F16 : DIPOLE_F32,
                  seed + 99);
}

static const char *describe(const problem *pb, char *buf, size_t cap)
{
    const dipole_attn_desc *d = &pb->d;
    int n = snprintf(buf, cap, "%s %s %s Hq=%d Hkv=%d d=%d causal=%d win=(%d,%d) softcap=%g "
                               "alibi=%d bias=%s",
                     dipole_variant_name(d->variant), dipole_dtype_name(d->dtype),
                     d->cu_seqlens_q ? "packed" : "dense", d->heads_q, d->heads_kv, d->head_dim,
                     d->causal, d->window_left, d->window_right, (double)d->softcap,
                     d->alibi_slopes != NULL,
                     !d->bias ? "none"
                     : d->bias->stride_head == 0 && (d->bias->stride_batch == 0 || d->cu_seqlens_q)
                         ? "[rows,keys]"
                     : d->bias->stride_head == 0 ? "heads-broadcast"
                     : d->bias->stride_batch == 0 ? "batch-broadcast"
                                                  : "full");
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

/* Runs the forward in double from the header's definitions. out [tensor rows, Hq, D] and lse
 * [poles, tb, Hq, seq_q] may be NULL; min_abs (may be NULL) receives the smallest |score| over
 * the pairs that count (the kink of |s| and sign(s) that central differences must not straddle).
 * Returns sum(dout * out) when dout is given. */
static double my_forward(const problem *pb, const dinputs *in, const float *dout, double *out,
                         double *lse, double *min_abs)
{
    const dipole_attn_desc *d = &pb->d;
    const int Hq = d->heads_q, Hkv = d->heads_kv, D = d->head_dim, Nq = d->seq_q, Nk = d->seq_k;
    const double scale = d->scale != 0 ? d->scale : 1.0 / sqrt((double)D);
    const int np = d->variant == DIPOLE_TWO_POLE ? 2 : 1;
    const bool packed = d->cu_seqlens_q != NULL;
    const int *cu_q = d->cu_seqlens_q, *cu_k = d->cu_seqlens_k;
    double total = 0, s[MAX_KEYS], e[MAX_KEYS], o[MAX_DIM];
    bool in_row[MAX_KEYS];
    if (min_abs)
        *min_abs = INFINITY;
    for (int b = 0; b < d->batch; b++) {
        const int tb = packed ? 0 : b;
        const int q0 = packed ? cu_q[b] : 0, k0 = packed ? cu_k[b] : 0;
        const int lq = packed ? cu_q[b + 1] - q0 : Nq, lk = packed ? cu_k[b + 1] - k0 : Nk;
        ck_assert_int_le(lk, MAX_KEYS);
        for (int h = 0; h < Hq; h++)
            for (int i = 0; i < lq; i++) {
                const int hk = h / (Hq / Hkv);
                const size_t qrow = (((size_t)tb * Nq + q0 + i) * Hq + h) * D;
                const long diag = (long)i + lk - lq; /* bottom-right within the sequence */
                int seen = 0;
                for (int j = 0; j < lk; j++) {
                    in_row[j] = (!d->causal || j <= diag) &&
                                (d->window_right < 0 || j <= diag + d->window_right) &&
                                (d->window_left < 0 || j >= diag - d->window_left);
                    if (!in_row[j])
                        continue;
                    const double *kj = in->k + (((size_t)tb * Nk + k0 + j) * Hkv + hk) * D;
                    double dot = 0;
                    for (int c = 0; c < D; c++)
                        dot += in->q[qrow + c] * kj[c];
                    double x = scale * dot;
                    if (d->softcap > 0)
                        x = d->softcap * tanh(x / d->softcap);
                    if (d->alibi_slopes)
                        x -= d->alibi_slopes[h] * fabs((double)(diag - j));
                    if (d->bias) {
                        const dipole_bias *bs = d->bias;
                        x += pb->bias_wide[bs->offset + (size_t)tb * bs->stride_batch +
                                           (size_t)h * bs->stride_head +
                                           (size_t)(q0 + i) * bs->stride_row + (size_t)(k0 + j)];
                    }
                    s[j] = x;
                    if (x == -INFINITY)
                        in_row[j] = false;
                    else {
                        seen++;
                        if (min_abs)
                            *min_abs = fmin(*min_abs, fabs(x));
                    }
                }
                for (int c = 0; c < D; c++)
                    o[c] = 0;
                for (int pole = 0; pole < np; pole++) {
                    double m = -INFINITY, l = 0;
                    for (int j = 0; j < lk; j++) {
                        switch (d->variant) {
                        case DIPOLE_SOFTMAX: e[j] = s[j]; break;
                        case DIPOLE_TWO_POLE: e[j] = pole ? -s[j] : s[j]; break;
                        default: e[j] = fabs(s[j]); break;
                        }
                        if (in_row[j])
                            m = fmax(m, e[j]);
                    }
                    for (int j = 0; j < lk; j++)
                        if (in_row[j])
                            l += (e[j] = exp(e[j] - m));
                    if (lse)
                        lse[(((size_t)pole * pb->tb + tb) * Hq + h) * Nq + q0 + i] =
                            seen ? m + log(l) : -INFINITY;
                    const double w = d->variant != DIPOLE_TWO_POLE ? 1.0
                                     : pole                        ? in->beta[h]
                                                                   : in->alpha[h];
                    for (int j = 0; j < lk; j++) {
                        if (!in_row[j])
                            continue;
                        const double sign = s[j] > 0 ? 1 : s[j] < 0 ? -1 : 0;
                        const double coef = d->variant == DIPOLE_SIGNEXP ? sign : 1.0;
                        const bool second = (d->variant == DIPOLE_ROUTED && !(s[j] > 0)) ||
                                            (d->variant == DIPOLE_TWO_POLE && pole == 1);
                        const double *u = (second ? in->v2 : in->v) +
                                          (((size_t)tb * Nk + k0 + j) * Hkv + hk) * D;
                        for (int c = 0; c < D; c++)
                            o[c] += w * coef * e[j] / l * u[c];
                    }
                }
                for (int c = 0; c < D; c++) {
                    if (out)
                        out[qrow + c] = o[c];
                    if (dout)
                        total += (double)dout[qrow + c] * o[c];
                }
            }
    }
    return total;
}

/* ---------------------------------------------------------------- comparisons */

typedef struct tensors {
    float *q, *k, *v, *v2, *dout; /* float32 values (rounded to the storage where it is narrower) */
    void *qs, *ks, *vs, *v2s, *douts; /* as stored */
} tensors;

static void tensors_make(tensors *t, const problem *pb, uint64_t seed, float mult)
{
    const size_t nq = q_elems(pb), nk = kv_elems(pb);
    const dipole_dtype dt = pb->d.dtype;
    t->q = tu_random(nq, seed, mult);
    t->k = tu_random(nk, seed + 1, mult);
    t->v = tu_random(nk, seed + 2, 1.0f);
    t->v2 = tu_random(nk, seed + 3, 1.0f);
    t->dout = tu_random(nq, seed + 4, 1.0f);
    t->qs = tu_round_to(dt, t->q, nq);
    t->ks = tu_round_to(dt, t->k, nk);
    t->vs = tu_round_to(dt, t->v, nk);
    t->v2s = tu_round_to(dt, t->v2, nk);
    t->douts = tu_round_to(dt, t->dout, nq);
}

static void tensors_free(tensors *t)
{
    free(t->q), free(t->k), free(t->v), free(t->v2), free(t->dout);
    free(t->qs), free(t->ks), free(t->vs), free(t->v2s), free(t->douts);
}

/* ---------------------------------------------------------------- reference level */

/* Cases for the reference against the test's forward, and for the finite differences. */
static const spec ref_specs[] = {
    /* packed, each variant, with every modifier and -inf entries; sequences of 0 and 1 */
    {DIPOLE_SOFTMAX, 1, 3, {4, 0, 9}, {6, 3, 9}, 4, 2, 8, 1, -1, -1, 2.0f, 1, BIAS_FULL, 1, DIPOLE_F32},
    {DIPOLE_SIGNEXP, 1, 3, {1, 7, 5}, {1, 8, 0}, 4, 2, 8, 0, 3, 1, 1.5f, 1, BIAS_HEADS, 1, DIPOLE_F32},
    {DIPOLE_ROUTED, 1, 3, {6, 1, 4}, {7, 0, 4}, 2, 1, 8, 1, 4, -1, 3.0f, 1, BIAS_FULL, 1, DIPOLE_F32},
    {DIPOLE_TWO_POLE, 1, 3, {5, 3, 0}, {5, 9, 2}, 4, 4, 8, 0, -1, -1, 2.5f, 1, BIAS_HEADS, 1, DIPOLE_F32},
    /* dense, the bias broadcast by stride 0, each modifier alone or together */
    {DIPOLE_SOFTMAX, 0, 2, {5}, {8}, 2, 2, 8, 1, -1, -1, 0.0f, 1, BIAS_BATCH, 1, DIPOLE_F32},
    {DIPOLE_SIGNEXP, 0, 2, {6}, {6}, 4, 2, 8, 0, 2, 2, 2.0f, 0, BIAS_BOTH, 1, DIPOLE_F32},
    {DIPOLE_ROUTED, 0, 1, {4}, {9}, 2, 1, 8, 1, -1, -1, 1.0f, 1, NO_BIAS, 0, DIPOLE_F32},
    {DIPOLE_TWO_POLE, 0, 2, {7}, {5}, 2, 2, 8, 0, -1, 1, 2.0f, 1, BIAS_FULL, 1, DIPOLE_F32},
    {DIPOLE_SIGNEXP, 0, 2, {5}, {7}, 4, 1, 8, 1, 1, -1, 2.0f, 1, BIAS_HEADS, 1, DIPOLE_F32},
    /* an fp16 bias (the reference reads it as stored) */
    {DIPOLE_SOFTMAX, 1, 2, {6, 5}, {6, 7}, 2, 1, 8, 1, -1, -1, 2.0f, 1, BIAS_HEADS, 1, DIPOLE_F16},
};
enum { N_REF = sizeof ref_specs / sizeof ref_specs[0] };

/* dipole_reference_lse against the test's forward: out and lse, the rows that see no key
 * included (out 0, lse -inf). */
START_TEST(test_reference_matches_formula)
{
    problem pb;
    problem_make(&ref_specs[_i], 100 + (uint64_t)_i, &pb);
    char what[320];
    describe(&pb, what, sizeof what);
    tensors t;
    tensors_make(&t, &pb, 200 + 7 * (uint64_t)_i, 1.5f);
    const size_t nq = q_elems(&pb), nk = kv_elems(&pb), nl = lse_elems(&pb);
    dinputs in = {tu_to_double(t.q, nq), tu_to_double(t.k, nk),
                  tu_to_double(t.v, nk), tu_to_double(t.v2, nk),
                  tu_to_double(pb.alpha, MAX_HEADS), tu_to_double(pb.beta, MAX_HEADS)};
    double *want = calloc(nq, sizeof(double)), *want_lse = calloc(nl, sizeof(double));
    float *got = malloc(sizeof(float) * nq), *got_lse = malloc(sizeof(float) * nl);
    ck_assert(want && want_lse && got && got_lse);
    my_forward(&pb, &in, NULL, want, want_lse, NULL);
    /* The reference reads float32 arrays whatever desc.dtype says. */
    ck_assert_int_eq(dipole_reference_lse(&pb.d, t.q, t.k, t.v, t.v2, got, got_lse),
                     DIPOLE_SUCCESS);
    float *w = tu_narrow(want, nq), *wl = tu_narrow(want_lse, nl);
    tu_expect_within(what, "out", got, w, nq, REF_ATOL, REF_RTOL, 0);
    tu_expect_within(what, "lse", got_lse, wl, nl, REF_ATOL, REF_RTOL, 0);
    /* The case must exercise what it says: some row sees no key (lse -inf) where the bias has a
     * -inf row, and the modifiers change the result. */
    if (ref_specs[_i].neg_inf) {
        size_t empty = 0;
        for (size_t e = 0; e < nl; e++)
            empty += got_lse[e] == -INFINITY;
        ck_assert_msg(empty > 0, "%s: no row without keys", what);
    }
    dipole_attn_desc plain = pb.d;
    plain.softcap = 0, plain.alibi_slopes = NULL, plain.bias = NULL;
    float *unmod = malloc(sizeof(float) * nq);
    ck_assert_ptr_nonnull(unmod);
    ck_assert_int_eq(dipole_reference(&plain, t.q, t.k, t.v, t.v2, unmod), DIPOLE_SUCCESS);
    tu_err diff = tu_compare(unmod, got, nq, 1e-3, 0);
    ck_assert_msg(diff.worst_ratio > 1.0, "%s: the modifiers change nothing", what);
    free(unmod), free(w), free(wl), free(want), free(want_lse), free(got), free(got_lse);
    free(in.q), free(in.k), free(in.v), free(in.v2), free(in.alpha), free(in.beta);
    tensors_free(&t);
    problem_free(&pb);
}
END_TEST

/* One score worked by hand: q.k = 4 and -2 with scale 1, cap 2, slope 0.5, bias (0, 0.25):
 * s = (2 tanh 2 - 0.5, 2 tanh(-1) + 0.25) for the last of 1 row against 2 keys. */
START_TEST(test_reference_by_hand)
{
    const float q[1] = {2.0f}, k[2] = {2.0f, -1.0f}, v[2] = {3.0f, -5.0f};
    const float slope[1] = {0.5f}, bias_v[2] = {0.0f, 0.25f};
    dipole_bias bias = {NULL, bias_v, DIPOLE_F32, 0, 0, 0, 2};
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.batch = 1, d.heads_q = d.heads_kv = 1, d.seq_q = 1, d.seq_k = 2, d.head_dim = 1;
    d.scale = 1.0f, d.softcap = 2.0f, d.alibi_slopes = slope, d.bias = &bias;
    const double s0 = 2 * tanh(2.0) - 0.5, s1 = 2 * tanh(-1.0) + 0.25;
    float out, lse;
    ck_assert_int_eq(dipole_reference_lse(&d, q, k, v, NULL, &out, &lse), DIPOLE_SUCCESS);
    const double m = fmax(s0, s1), l = exp(s0 - m) + exp(s1 - m);
    ck_assert_double_eq_tol(out, (3.0 * exp(s0 - m) - 5.0 * exp(s1 - m)) / l, 1e-6);
    ck_assert_double_eq_tol(lse, m + log(l), 1e-6);
    /* SIGNEXP ranks |s| and signs the weights: s1 < 0. */
    d.variant = DIPOLE_SIGNEXP;
    ck_assert_int_eq(dipole_reference_lse(&d, q, k, v, NULL, &out, &lse), DIPOLE_SUCCESS);
    const double ma = fmax(fabs(s0), fabs(s1)), la = exp(fabs(s0) - ma) + exp(fabs(s1) - ma);
    ck_assert_double_eq_tol(out, (3.0 * exp(fabs(s0) - ma) + 5.0 * exp(fabs(s1) - ma)) / la, 1e-6);
    /* A -inf bias drops the key in every variant, even where |-inf| would win. */
    const float bias_inf[2] = {0.0f, -INFINITY};
    bias.host = bias_inf;
    for (int var = 0; var < 4; var++) {
        d.variant = (dipole_variant)var;
        const float v2[2] = {7.0f, 11.0f};
        float lse2[2];
        ck_assert_int_eq(dipole_reference_lse(&d, q, k, v, v2, &out, lse2), DIPOLE_SUCCESS);
        const double want = var == DIPOLE_SOFTMAX || var == DIPOLE_SIGNEXP ? 3.0
                            : var == DIPOLE_ROUTED ? 3.0 /* s0 > 0: v */
                                                   : 3.0 + 7.0; /* alpha v0 + beta v2_0 */
        ck_assert_msg(fabs(out - want) < 1e-6, "%s: out %g want %g", dipole_variant_name(d.variant),
                      (double)out, want);
        ck_assert_double_eq_tol(lse2[0], s0, 1e-6);
        if (var == DIPOLE_TWO_POLE)
            ck_assert_double_eq_tol(lse2[1], -s0, 1e-6);
    }
}
END_TEST

/* ---- The document mask: separators in one long sequence. */

/* Tokens 0..N-1 with separators at these positions; each separator closes its document, the
 * last document runs to the end. */
static const int seps[] = {6, 7, 19, 24};
enum { DOC_N = 31, N_SEPS = sizeof seps / sizeof seps[0] };

/* The packed problem over the documents (one of length 0 added: cu repeats) and the single
 * sequence whose bias is 0 inside a document on and below the diagonal, -inf elsewhere. */
static void doc_problems(dipole_variant var, problem *packed, problem *single)
{
    memset(packed, 0, sizeof *packed);
    memset(single, 0, sizeof *single);
    int cu[MAX_SEQS + 3] = {0}, n = 0, start = 0;
    for (int s = 0; s < N_SEPS; s++) {
        cu[++n] = seps[s] + 1;
        if (s == 1)
            cu[n + 1] = cu[n], n++; /* an empty document */
        start = seps[s] + 1;
    }
    if (start < DOC_N)
        cu[++n] = DOC_N;
    ck_assert_int_le(n, MAX_SEQS + 2);
    static int cu_store[2][MAX_SEQS + 3];
    memcpy(cu_store[0], cu, sizeof cu);
    memcpy(cu_store[1], cu, sizeof cu);
    dipole_attn_desc *d = &packed->d;
    dipole_attn_desc_default(d);
    d->variant = var;
    d->batch = n;
    d->heads_q = 4;
    d->heads_kv = 2;
    d->seq_q = d->seq_k = DOC_N;
    d->head_dim = 16;
    d->causal = 1;
    d->softcap = 2.5f;
    d->cu_seqlens_q = cu_store[0];
    d->cu_seqlens_k = cu_store[1];
    packed->tb = 1;
    for (int h = 0; h < 4; h++) {
        packed->slopes[h] = (float)pow(2.0, -2.0 * (h + 1));
        packed->alpha[h] = 1.0f - 0.25f * (float)h;
        packed->beta[h] = 0.5f + 0.25f * (float)h;
    }
    d->alibi_slopes = packed->slopes;
    if (var == DIPOLE_TWO_POLE) {
        d->pos_weight = packed->alpha;
        d->neg_weight = packed->beta;
    }
    *single = *packed;
    dipole_attn_desc *s = &single->d;
    s->batch = 1;
    s->causal = 0; /* the bias does all the masking */
    s->cu_seqlens_q = s->cu_seqlens_k = NULL;
    s->alibi_slopes = single->slopes;
    if (var == DIPOLE_TWO_POLE) {
        s->pos_weight = single->alpha;
        s->neg_weight = single->beta;
    }
    int doc_of[DOC_N], doc = 0;
    for (int t = 0; t < DOC_N; t++) {
        doc_of[t] = doc;
        for (int x = 0; x < N_SEPS; x++)
            doc += seps[x] == t;
    }
    single->bias_n = (size_t)DOC_N * DOC_N;
    single->bias_wide = malloc(sizeof(float) * single->bias_n);
    ck_assert_ptr_nonnull(single->bias_wide);
    for (int i = 0; i < DOC_N; i++)
        for (int j = 0; j < DOC_N; j++)
            single->bias_wide[i * DOC_N + j] = doc_of[i] == doc_of[j] && j <= i ? 0.0f : -INFINITY;
    single->bias_bits = tu_round_to(DIPOLE_F32, single->bias_wide, single->bias_n);
    single->bias = (dipole_bias){NULL, single->bias_bits, DIPOLE_F32, 0, 0, 0, DOC_N};
    s->bias = &single->bias;
}

START_TEST(test_document_mask_reference)
{
    problem pk, sg;
    doc_problems((dipole_variant)_i, &pk, &sg);
    char what[320];
    describe(&pk, what, sizeof what);
    tensors t;
    tensors_make(&t, &pk, 300 + (uint64_t)_i, 1.0f);
    const size_t nq = q_elems(&pk), nk = kv_elems(&pk), nl = lse_elems(&pk);
    float *o1 = malloc(4 * nq), *o2 = malloc(4 * nq), *l1 = malloc(4 * nl), *l2 = malloc(4 * nl);
    ck_assert(o1 && o2 && l1 && l2);
    ck_assert_int_eq(dipole_reference_lse(&pk.d, t.q, t.k, t.v, t.v2, o1, l1), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference_lse(&sg.d, t.q, t.k, t.v, t.v2, o2, l2), DIPOLE_SUCCESS);
    tu_expect_within(what, "out (bias vs packed)", o2, o1, nq, REF_ATOL, REF_RTOL, 0);
    tu_expect_within(what, "lse (bias vs packed)", l2, l1, nl, REF_ATOL, REF_RTOL, 0);
    float *g1[4], *g2[4], dp1[4], dn1[4], dp2[4], dn2[4];
    for (int x = 0; x < 4; x++) {
        g1[x] = malloc(4 * (x ? nk : nq));
        g2[x] = malloc(4 * (x ? nk : nq));
        ck_assert(g1[x] && g2[x]);
    }
    ck_assert_int_eq(dipole_reference_backward(&pk.d, t.q, t.k, t.v, t.v2, t.dout, g1[0], g1[1],
                                               g1[2], g1[3], dp1, dn1),
                     DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference_backward(&sg.d, t.q, t.k, t.v, t.v2, t.dout, g2[0], g2[1],
                                               g2[2], g2[3], dp2, dn2),
                     DIPOLE_SUCCESS);
    static const char *const names[4] = {"dq", "dk", "dv", "dv2"};
    const bool v2 = _i == DIPOLE_ROUTED || _i == DIPOLE_TWO_POLE;
    for (int x = 0; x < (v2 ? 4 : 3); x++)
        tu_expect_within(what, names[x], g2[x], g1[x], x ? nk : nq, REF_ATOL, REF_RTOL, 0);
    if (_i == DIPOLE_TWO_POLE) {
        tu_expect_within(what, "dpos_weight", dp2, dp1, 4, REF_ATOL, REF_RTOL, 0);
        tu_expect_within(what, "dneg_weight", dn2, dn1, 4, REF_ATOL, REF_RTOL, 0);
    }
    for (int x = 0; x < 4; x++)
        free(g1[x]), free(g2[x]);
    free(o1), free(o2), free(l1), free(l2);
    tensors_free(&t);
    problem_free(&pk);
    problem_free(&sg);
}
END_TEST

/* ---- The reference backward against central differences of the test's forward. */

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
    problem_make(&ref_specs[_i], 400 + (uint64_t)_i, &pb);
    char what[320];
    describe(&pb, what, sizeof what);
    const size_t nq = q_elems(&pb), nk = kv_elems(&pb), nl = lse_elems(&pb);
    /* Draw inputs until no score that counts is near the |s| kink (a few draws at most). */
    tensors t;
    dinputs in;
    uint64_t seed = 5000 + 17 * (uint64_t)_i;
    for (int tries = 0;; tries++, seed += 101) {
        tensors_make(&t, &pb, seed, 1.0f);
        in = (dinputs){tu_to_double(t.q, nq), tu_to_double(t.k, nk), tu_to_double(t.v, nk),
                       tu_to_double(t.v2, nk), tu_to_double(pb.alpha, MAX_HEADS),
                       tu_to_double(pb.beta, MAX_HEADS)};
        double min_abs;
        my_forward(&pb, &in, NULL, NULL, NULL, &min_abs);
        if (min_abs > 1e-3)
            break;
        ck_assert_int_lt(tries, 50);
        free(in.q), free(in.k), free(in.v), free(in.v2), free(in.alpha), free(in.beta);
        tensors_free(&t);
    }
    /* The forward differentiated here is the library's: it matches dipole_reference. */
    double *want = calloc(nq, sizeof(double)), *want_lse = calloc(nl, sizeof(double));
    float *ref = malloc(sizeof(float) * nq);
    ck_assert(want && want_lse && ref);
    my_forward(&pb, &in, NULL, want, want_lse, NULL);
    ck_assert_int_eq(dipole_reference(&pb.d, t.q, t.k, t.v, t.v2, ref), DIPOLE_SUCCESS);
    float *w = tu_narrow(want, nq);
    tu_expect_within(what, "out (the test's forward)", ref, w, nq, REF_ATOL, REF_RTOL, 0);

    float *dq = malloc(4 * nq), *dk = malloc(4 * nk), *dv = malloc(4 * nk), *dv2 = malloc(4 * nk);
    float dpos[MAX_HEADS], dneg[MAX_HEADS];
    ck_assert(dq && dk && dv && dv2);
    ck_assert_int_eq(dipole_reference_backward(&pb.d, t.q, t.k, t.v, t.v2, t.dout, dq, dk, dv, dv2,
                                               dpos, dneg),
                     DIPOLE_SUCCESS);
    fd_check(what, "dq", &pb, &in, t.dout, in.q, dq, nq);
    fd_check(what, "dk", &pb, &in, t.dout, in.k, dk, nk);
    fd_check(what, "dv", &pb, &in, t.dout, in.v, dv, nk);
    const dipole_variant var = pb.d.variant;
    if (var == DIPOLE_ROUTED || var == DIPOLE_TWO_POLE)
        fd_check(what, "dv2", &pb, &in, t.dout, in.v2, dv2, nk);
    if (var == DIPOLE_TWO_POLE) {
        fd_check(what, "dpos_weight", &pb, &in, t.dout, in.alpha, dpos, (size_t)pb.d.heads_q);
        fd_check(what, "dneg_weight", &pb, &in, t.dout, in.beta, dneg, (size_t)pb.d.heads_q);
    }
    free(dq), free(dk), free(dv), free(dv2), free(w), free(want), free(want_lse), free(ref);
    free(in.q), free(in.k), free(in.v), free(in.v2), free(in.alpha), free(in.beta);
    tensors_free(&t);
    problem_free(&pb);
}
END_TEST

/* ---------------------------------------------------------------- library level */

typedef enum run_mode { RUN_TABLE = 0, RUN_GROUP, RUN_GEMM } run_mode;
static const char *const mode_names[] = {"tiled (device's layout)", "tiled (group layout)", "gemm"};

/* Points the shared context and desc at a path: the tiled path on the table's layout (the CPU
 * layout on PoCL) or on the group layout, or the GEMM path. Set on every call, so that a failed
 * case leaves nothing behind for the next. */
static void use_mode(run_mode m, dipole_attn_desc *d)
{
    dipole_ctx *ctx = tu_ctx();
    ck_assert_int_eq(dipole_ctx_set_tile_config(
                         ctx, m == RUN_GROUP ? "layout=group,block_m=16,block_n=32" : NULL),
                     DIPOLE_SUCCESS);
    d->path = m == RUN_GEMM ? DIPOLE_PATH_GEMM : DIPOLE_PATH_TILED;
}

/* The plans name the path asked for (a refusal fails here, with its reason). */
static void expect_plans(const char *what, run_mode m, const dipole_attn_desc *d)
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
    st = dipole_attention_backward_plan(ctx, d, &plan);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: backward plan on %s: %s: %s", what, mode_names[m],
                  dipole_status_string(st), dipole_ctx_last_error(ctx));
    ck_assert_int_eq(plan.path, d->path);
}

static void widen(dipole_dtype dt, const void *bits, float *x, size_t n)
{
    ck_assert_int_eq(dipole_convert(DIPOLE_F32, x, dt, bits, n), DIPOLE_SUCCESS);
}

/* Forward (out, lse) and backward (every gradient) of pb through the library on path m
 * against the references; ref_of (may be NULL: pb itself) is the problem whose reference the
 * results must match (the document mask compares two formulations against one). */
static void device_vs_reference(const problem *pb, const problem *ref_of, run_mode m,
                                uint64_t seed)
{
    if (!ref_of)
        ref_of = pb;
    dipole_attn_desc d = pb->d;
    use_mode(m, &d);
    char what[400], base[320];
    snprintf(what, sizeof what, "%s on %s", describe(pb, base, sizeof base), mode_names[m]);
    expect_plans(what, m, &d);
    dipole_ctx *ctx = tu_ctx();
    const dipole_dtype dt = d.dtype;
    const size_t nq = q_elems(pb), nk = kv_elems(pb), nl = lse_elems(pb);
    const size_t es = dipole_dtype_size(dt);
    tensors t;
    tensors_make(&t, pb, seed, 1.5f);
    const double rtol = dt == DIPOLE_F16 ? F16_RTOL : DEV_RTOL;

    /* Forward. */
    void *out = malloc(nq * es);
    float *got = malloc(4 * nq), *ref = malloc(4 * nq);
    float *lse = malloc(4 * nl), *ref_lse = malloc(4 * nl);
    ck_assert(out && got && ref && lse && ref_lse);
    for (size_t e = 0; e < nl; e++)
        lse[e] = NAN; /* every element must be written */
    dipole_status st = dipole_attention_host_lse(ctx, &d, t.qs, t.ks, t.vs, t.v2s, out, lse);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: forward: %s: %s", what, dipole_status_string(st),
                  dipole_ctx_last_error(ctx));
    ck_assert_int_eq(dipole_reference_lse(&ref_of->d, t.q, t.k, t.v, t.v2, ref, ref_lse),
                     DIPOLE_SUCCESS);
    widen(dt, out, got, nq);
    tu_expect_within(what, "out", got, ref, nq, DEV_ATOL, rtol, 0);
    tu_expect_within(what, "lse", lse, ref_lse, nl, DEV_ATOL, DEV_RTOL, 0);

    /* Backward (the host twin runs its own forward). */
    void *gb[4];
    float *gw[4], *gr[4];
    for (int x = 0; x < 4; x++) {
        const size_t n = x ? nk : nq;
        gb[x] = malloc(n * es);
        gw[x] = malloc(4 * n);
        gr[x] = malloc(4 * n);
        ck_assert(gb[x] && gw[x] && gr[x]);
    }
    float dpos[MAX_HEADS], dneg[MAX_HEADS], rpos[MAX_HEADS], rneg[MAX_HEADS];
    st = dipole_attention_backward_host(ctx, &d, t.qs, t.ks, t.vs, t.v2s, t.douts, gb[0], gb[1],
                                        gb[2], gb[3], dpos, dneg);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: backward: %s: %s", what, dipole_status_string(st),
                  dipole_ctx_last_error(ctx));
    ck_assert_int_eq(dipole_reference_backward(&ref_of->d, t.q, t.k, t.v, t.v2, t.dout, gr[0],
                                               gr[1], gr[2], gr[3], rpos, rneg),
                     DIPOLE_SUCCESS);
    static const char *const names[4] = {"dq", "dk", "dv", "dv2"};
    const bool reads_v2 = d.variant == DIPOLE_ROUTED || d.variant == DIPOLE_TWO_POLE;
    const double rms_w = dt == DIPOLE_F16 ? BWD_RMS_WEIGHT : 0;
    for (int x = 0; x < (reads_v2 ? 4 : 3); x++) {
        widen(dt, gb[x], gw[x], x ? nk : nq);
        tu_expect_within(what, names[x], gw[x], gr[x], x ? nk : nq, DEV_ATOL, rtol, rms_w);
    }
    if (d.variant == DIPOLE_TWO_POLE) { /* float32 sums over every row of a head */
        const double w = dt == DIPOLE_F16 ? 1 : 0;
        tu_expect_within(what, "dpos_weight", dpos, rpos, (size_t)d.heads_q, 10 * DEV_ATOL, rtol, w);
        tu_expect_within(what, "dneg_weight", dneg, rneg, (size_t)d.heads_q, 10 * DEV_ATOL, rtol, w);
    }
    for (int x = 0; x < 4; x++)
        free(gb[x]), free(gw[x]), free(gr[x]);
    free(out), free(got), free(ref), free(lse), free(ref_lse);
    tensors_free(&t);
}

/* The sample: every variant packed and dense; causal, window, none; MHA, GQA, MQA; each
 * modifier alone and together; each bias layout; lengths 0 and 1 on either side, a decode-like
 * batch (one query row a sequence), fp16 storage with an fp16 bias twice. -1: a length drawn
 * from [2, 40]. */
static const spec dev_specs[] = {
    {DIPOLE_SOFTMAX, 1, 3, {5, 0, -1}, {9, 1, -1}, 4, 2, 16, 1, 7, -1, 3.0f, 1, BIAS_HEADS, 1, DIPOLE_F32},
    {DIPOLE_SIGNEXP, 1, 3, {1, -1, -1}, {-1, 0, -1}, 2, 2, 32, 0, 4, 1, 2.0f, 0, BIAS_FULL, 1, DIPOLE_F32},
    {DIPOLE_ROUTED, 0, 2, {-1}, {-1}, 4, 1, 16, 1, -1, -1, 0.0f, 1, BIAS_BATCH, 1, DIPOLE_F32},
    {DIPOLE_TWO_POLE, 1, 3, {-1, 1, -1}, {-1, 1, 0}, 4, 2, 32, 0, -1, -1, 2.5f, 1, BIAS_BOTH, 1, DIPOLE_F32},
    {DIPOLE_SOFTMAX, 1, 2, {-1, 1}, {-1, -1}, 2, 1, 16, 1, -1, -1, 0.0f, 1, BIAS_FULL, 1, DIPOLE_F16},
    {DIPOLE_ROUTED, 1, 3, {0, -1, -1}, {3, -1, -1}, 2, 2, 16, 1, 6, -1, 0.0f, 0, NO_BIAS, 0, DIPOLE_F32},
    {DIPOLE_SIGNEXP, 0, 3, {6}, {11}, 4, 2, 32, 0, -1, -1, 3.0f, 1, BIAS_HEADS, 1, DIPOLE_F32},
    {DIPOLE_TWO_POLE, 1, 3, {1, 1, 1}, {0, -1, -1}, 4, 2, 16, 1, -1, -1, 0.0f, 1, BIAS_HEADS, 0, DIPOLE_F16},
};
enum { N_DEV = sizeof dev_specs / sizeof dev_specs[0] };

static void device_case(int idx, run_mode m)
{
    problem pb;
    problem_make(&dev_specs[idx], 700 + (uint64_t)idx, &pb);
    device_vs_reference(&pb, NULL, m, 800 + 13 * (uint64_t)idx);
    problem_free(&pb);
}

/* The document mask through the library: the packed call and the single call with the
 * block-diagonal bias, each against the packed problem's reference (shown above to equal the
 * bias formulation's). SIGNEXP, Cogformer's variant, alone: each formulation is its own set
 * of kernel builds. */
static void device_document_mask(run_mode m)
{
    problem pk, sg;
    doc_problems(DIPOLE_SIGNEXP, &pk, &sg);
    device_vs_reference(&pk, NULL, m, 900);
    device_vs_reference(&sg, &pk, m, 900);
    problem_free(&pk);
    problem_free(&sg);
}

START_TEST(test_table_cases)
{
    device_case(_i, RUN_TABLE);
}
END_TEST

/* The group layout's builds take several times the CPU layout's on PoCL (20 s for a forward and
 * backward here): it runs a sample of the sample — a packed sliding window with every modifier,
 * a dense MQA batch under a batch-broadcast bias, the decode-like batch in fp16 — and the
 * document mask (SIGNEXP, packed and as one [rows, keys] bias): every variant, causal, window
 * and none, a bias with and without per-head entries (only a dense batch's own stride_batch is
 * left to the other layouts), an fp16 bias. */
static const int group_sample[] = {0, 2, 7};
enum { N_GROUP = sizeof group_sample / sizeof group_sample[0] };

START_TEST(test_group_cases)
{
    device_case(group_sample[_i], RUN_GROUP);
}
END_TEST

START_TEST(test_gemm_cases)
{
    device_case(_i, RUN_GEMM);
}
END_TEST

START_TEST(test_table_document_mask)
{
    device_document_mask(RUN_TABLE);
}
END_TEST

START_TEST(test_group_document_mask)
{
    device_document_mask(RUN_GROUP);
}
END_TEST

START_TEST(test_gemm_document_mask)
{
    device_document_mask(RUN_GEMM);
}
END_TEST

/* ---------------------------------------------------------------- refusals */

/* A valid packed descriptor with every modifier, on host arrays that outlive the test. */
static int ok_cu_q[4] = {0, 3, 3, 8}, ok_cu_k[4] = {0, 4, 6, 11};
static float ok_slopes[2] = {0.5f, 0.25f};
static float ok_bias_host[2 * 8 * 11];

static dipole_attn_desc packed_desc(dipole_bias *bias)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.batch = 3, d.heads_q = 2, d.heads_kv = 1, d.seq_q = 8, d.seq_k = 11, d.head_dim = 16;
    d.cu_seqlens_q = ok_cu_q, d.cu_seqlens_k = ok_cu_k;
    d.alibi_slopes = ok_slopes, d.softcap = 4.0f;
    *bias = (dipole_bias){NULL, ok_bias_host, DIPOLE_F32, 0, 0, 8 * 11, 11};
    d.bias = bias;
    return d;
}

/* A descriptor change that validation refuses with INVALID_ARG and a message naming the field;
 * the references refuse it the same way. */
#define REFUSED(text, stmt)                                                                     \
    do {                                                                                        \
        dipole_bias bias_;                                                                      \
        dipole_attn_desc d = packed_desc(&bias_);                                               \
        int cu_q_[4], cu_k_[4];                                                                 \
        memcpy(cu_q_, ok_cu_q, sizeof cu_q_);                                                   \
        memcpy(cu_k_, ok_cu_k, sizeof cu_k_);                                                   \
        d.cu_seqlens_q = cu_q_, d.cu_seqlens_k = cu_k_;                                         \
        (void)cu_q_, (void)cu_k_;                                                               \
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
    static float buf[8 * 2 * 16 * 4], out[8 * 2 * 16 * 4], g[8 * 2 * 16 * 4];
    static const int kl[3] = {4, 2, 5};
    {
        dipole_bias b;
        dipole_attn_desc ok = packed_desc(&b);
        ck_assert_int_eq(dipole_attn_desc_validate(&ok), DIPOLE_SUCCESS);
    }
    REFUSED("desc.cu_seqlens_q[2] = 2 is less than desc.cu_seqlens_q[1] = 3", cu_q_[2] = 2);
    REFUSED("desc.cu_seqlens_k[3] = 5 is less than", cu_k_[3] = 5);
    REFUSED("desc.cu_seqlens_q[0] = 1", cu_q_[0] = 1);
    REFUSED("desc.cu_seqlens_k[0] = -1", cu_k_[0] = -1);
    REFUSED("desc.cu_seqlens_q[batch = 3] = 7 differs from desc.seq_q = 8", cu_q_[3] = 7);
    REFUSED("desc.cu_seqlens_k[batch = 3] = 11 differs from desc.seq_k = 12", d.seq_k = 12);
    REFUSED("desc.cu_seqlens_q is set without desc.cu_seqlens_k", d.cu_seqlens_k = NULL);
    REFUSED("desc.cu_seqlens_k is set without desc.cu_seqlens_q", d.cu_seqlens_q = NULL);
    REFUSED("desc.key_lengths", d.key_lengths = kl);
    REFUSED("desc.softcap = -1", d.softcap = -1.0f);
    REFUSED("desc.softcap = nan", d.softcap = NAN);
    REFUSED("desc.softcap = inf", d.softcap = INFINITY);
    float nan_slopes[2] = {0.5f, NAN};
    REFUSED("desc.alibi_slopes[1] = nan", d.alibi_slopes = nan_slopes);
    float inf_slopes[2] = {-INFINITY, 0.5f};
    REFUSED("desc.alibi_slopes[0] = -inf", d.alibi_slopes = inf_slopes);
    REFUSED("desc.bias->dtype = 2", bias_.dtype = DIPOLE_BF16);
    REFUSED("desc.bias->dtype = 1", bias_.dtype = DIPOLE_F16);
    REFUSED("desc.bias->dtype = 9", bias_.dtype = (dipole_dtype)9);
    REFUSED("desc.bias->dtype = 2; a bias is float32 or desc.dtype (f16)",
            (d.dtype = DIPOLE_F16, bias_.dtype = DIPOLE_BF16));
    /* An fp16 bias goes with fp16 storage. */
    dipole_bias b;
    dipole_attn_desc d = packed_desc(&b);
    d.dtype = DIPOLE_F16, b.dtype = DIPOLE_F16;
    ck_assert_int_eq(dipole_attn_desc_validate(&d), DIPOLE_SUCCESS);
}
END_TEST

/* The references read the bias from host memory and say so when it is missing. */
START_TEST(test_refusals_reference_bias_host)
{
    static float buf[8 * 2 * 16 * 4], out[8 * 2 * 16 * 4], g[8 * 2 * 16 * 4];
    dipole_bias b;
    dipole_attn_desc d = packed_desc(&b);
    b.host = NULL;
    ck_assert_int_eq(dipole_attn_desc_validate(&d), DIPOLE_SUCCESS); /* a device call's bias */
    ck_assert_int_eq(dipole_reference(&d, buf, buf, buf, buf, out), DIPOLE_ERR_INVALID_ARG);
    ASSERT_MSG_HAS(dipole_thread_last_error(), "desc.bias->host is NULL");
    ck_assert_int_eq(dipole_reference_backward(&d, buf, buf, buf, buf, buf, g, g, g, g, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ASSERT_MSG_HAS(dipole_thread_last_error(),
                   "dipole_reference_backward: desc.bias->host is NULL");
}
END_TEST

static cl_mem buffer_of(size_t bytes)
{
    cl_int err;
    cl_mem m =
        clCreateBuffer(dipole_ctx_cl_context(tu_ctx()), CL_MEM_READ_WRITE, bytes, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    return m;
}

/* The context's calls refuse the same descriptors, with the message on the context; a device
 * bias outside its buffer is BUFFER_RANGE naming desc.bias, before any kernel runs. */
START_TEST(test_refusals_calls)
{
    dipole_ctx *ctx = tu_ctx();
    static float buf[8 * 2 * 16 * 4], g[8 * 2 * 16 * 4];
    {
        dipole_bias b;
        dipole_attn_desc d = packed_desc(&b);
        int cu[4] = {0, 3, 2, 8};
        d.cu_seqlens_q = cu;
        ck_assert_int_eq(dipole_attention_host(ctx, &d, buf, buf, buf, NULL, g),
                         DIPOLE_ERR_INVALID_ARG);
        ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "desc.cu_seqlens_q[2]");
        d.cu_seqlens_q = ok_cu_q;
        d.softcap = NAN;
        ck_assert_int_eq(dipole_attention_backward_host(ctx, &d, buf, buf, buf, NULL, buf, g, g, g,
                                                        NULL, NULL, NULL),
                         DIPOLE_ERR_INVALID_ARG);
        ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "desc.softcap");
        d.softcap = 0;
        b.host = NULL;
        ck_assert_int_eq(dipole_attention_host(ctx, &d, buf, buf, buf, NULL, g),
                         DIPOLE_ERR_INVALID_ARG);
        ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "desc.bias->host");
        ASSERT_MSG_HAS(dipole_thread_last_error(), "desc.bias->host");
    }
    /* Device calls: a bias buffer too small for the view, one pushed out by its offset, and
     * none at all. */
    dipole_bias b;
    dipole_attn_desc d = packed_desc(&b);
    const size_t nq = 8 * 2 * 16, nk = 11 * 1 * 16, nl = 2 * 8;
    cl_mem bq = buffer_of(4 * nq), bk = buffer_of(4 * nk), bv = buffer_of(4 * nk);
    cl_mem bo = buffer_of(4 * nq), bl = buffer_of(4 * nl), bd = buffer_of(4 * nq);
    cl_mem gq = buffer_of(4 * nq), gk = buffer_of(4 * nk), gv = buffer_of(4 * nk);
    const size_t span = (2 - 1) * 8 * 11 + (8 - 1) * 11 + 11; /* heads, rows, keys */
    cl_mem small = buffer_of(4 * (span - 1)), exact = buffer_of(4 * span);
    const dipole_tensor tq = dipole_tensor_dense(bq, 8, 2, 16);
    const dipole_tensor to = dipole_tensor_dense(bo, 8, 2, 16);
    const dipole_tensor td = dipole_tensor_dense(bd, 8, 2, 16);
    const dipole_tensor tgq = dipole_tensor_dense(gq, 8, 2, 16);
    const dipole_tensor tk = dipole_tensor_dense(bk, 11, 1, 16);
    const dipole_tensor tv = dipole_tensor_dense(bv, 11, 1, 16);
    const dipole_tensor tgk = dipole_tensor_dense(gk, 11, 1, 16);
    const dipole_tensor tgv = dipole_tensor_dense(gv, 11, 1, 16);
    struct {
        cl_mem buffer;
        size_t offset;
        dipole_status want;
        const char *text;
    } tries[] = {
        {small, 0, DIPOLE_ERR_BUFFER_RANGE, "desc.bias"},
        {exact, 1, DIPOLE_ERR_BUFFER_RANGE, "desc.bias"},
        {NULL, 0, DIPOLE_ERR_INVALID_ARG, "desc.bias->buffer is NULL"},
    };
    for (size_t x = 0; x < sizeof tries / sizeof tries[0]; x++) {
        b.buffer = tries[x].buffer;
        b.offset = tries[x].offset;
        cl_event ev = (cl_event)1;
        dipole_status st = dipole_attention(ctx, &d, &tq, &tk, &tv, NULL, &to, bl, &ev);
        ck_assert_msg(st == tries[x].want, "try %zu: forward %s: %s", x, dipole_status_string(st),
                      dipole_ctx_last_error(ctx));
        ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), tries[x].text);
        ck_assert_ptr_null(ev);
        st = dipole_attention_backward(ctx, &d, &tq, &tk, &tv, NULL, &to, &td, bl, &tgq, &tgk,
                                       &tgv, NULL, NULL, NULL, NULL);
        ck_assert_msg(st == tries[x].want, "try %zu: backward %s: %s", x, dipole_status_string(st),
                      dipole_ctx_last_error(ctx));
        ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), tries[x].text);
    }
    /* A bias of another dtype than f32 or desc.dtype, on a device call. */
    b.buffer = exact, b.offset = 0, b.dtype = DIPOLE_BF16;
    ck_assert_int_eq(dipole_attention(ctx, &d, &tq, &tk, &tv, NULL, &to, bl, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "desc.bias->dtype");
    cl_mem all[] = {bq, bk, bv, bo, bl, bd, gq, gk, gv, small, exact};
    for (size_t x = 0; x < sizeof all / sizeof all[0]; x++)
        clReleaseMemObject(all[x]);
}
END_TEST


Suite *varlen_suite(void)
{
    Suite *s = suite_create("varlen");
    TCase *ref = tcase_create("reference");
    tcase_add_loop_test(ref, test_reference_matches_formula, 0, N_REF);
    tcase_add_test(ref, test_reference_by_hand);
    tcase_add_loop_test(ref, test_document_mask_reference, 0, 4);
    tcase_add_loop_test(ref, test_reference_backward_vs_fd, 0, N_REF);
    suite_add_tcase(s, ref);
    TCase *bad = tcase_create("refusals");
    tcase_add_test(bad, test_refusals_desc);
    tcase_add_test(bad, test_refusals_reference_bias_host);
    tcase_add_test(bad, test_refusals_calls);
    suite_add_tcase(s, bad);
    /* One tcase per path (CK_RUN_CASE=cpu|group|gemm runs one). */
    TCase *cpu = tcase_create("cpu");
    tcase_set_timeout(cpu, 1800);
    tcase_add_loop_test(cpu, test_table_cases, 0, N_DEV);
    tcase_add_test(cpu, test_table_document_mask);
    suite_add_tcase(s, cpu);
    TCase *group = tcase_create("group");
    tcase_set_timeout(group, 1800);
    tcase_add_loop_test(group, test_group_cases, 0, N_GROUP);
    tcase_add_test(group, test_group_document_mask);
    suite_add_tcase(s, group);
    TCase *gemm = tcase_create("gemm");
    tcase_set_timeout(gemm, 1800);
    tcase_add_loop_test(gemm, test_gemm_cases, 0, N_DEV);
    tcase_add_test(gemm, test_gemm_document_mask);
    suite_add_tcase(s, gemm);
    return s;
}
