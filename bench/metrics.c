/* What a point costs: flops, bytes, and the row helpers built on them. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"

bool bench_reads_v2(dipole_variant v)
{
    return v == DIPOLE_ROUTED || v == DIPOLE_TWO_POLE;
}

int bench_head_dim_v(const bench_point *p)
{
    return p->head_dim_v > 0 ? p->head_dim_v : p->head_dim;
}

int bench_score_maps(dipole_variant v)
{
    return v == DIPOLE_DIFF ? 2 : 1;
}

bool bench_is_decode(const bench_point *p)
{
    return p->seq_q == 1 && p->seq_k > 1;
}

/* Pairs of one head of one sequence of nq query rows and nk keys. */
static double pairs_of(double nq, double nk, bool causal)
{
    if (!causal)
        return nq * nk;
    /* Row i sees keys j <= i + nk - nq (bottom-right): min(nk, i + nk - nq + 1) keys,
     * none below zero. Rows i >= nq - nk - 1 + 1 see at least one; sum the ramp exactly. */
    const double shift = nk - nq; /* row i sees i + shift + 1 keys, clamped to [0, nk] */
    const double first = shift >= 0 ? 0 : -shift; /* first row that sees a key */
    if (first >= nq)
        return 0;
    /* rows first .. nq-1 see (i + shift + 1) keys, never more than nk since i < nq */
    const double a = first + shift + 1, b = nq - 1 + shift + 1;
    return (a + b) * (nq - first) / 2;
}

double bench_visible_pairs(const bench_point *p)
{
    if (p->batching == BENCH_FIXED)
        return pairs_of(p->seq_q, p->seq_k, p->causal) * p->batch * p->heads_q;
    double pairs = 0;
    for (int b = 0; b < p->batch; b++) {
        const double l = bench_seq_length(p, b);
        pairs += pairs_of(l, l, p->causal);
    }
    return pairs * p->heads_q;
}

double bench_flops(const bench_point *p)
{
    const double mixes = p->variant == DIPOLE_TWO_POLE || p->variant == DIPOLE_DIFF ? 2 : 1;
    const double per_pair = 2.0 * bench_score_maps(p->variant) * p->head_dim +
                            2.0 * mixes * bench_head_dim_v(p);
    const double fwd = bench_visible_pairs(p) * per_pair;
    return p->pass == BENCH_BWD ? 2.5 * fwd : fwd;
}

double bench_bytes(const bench_point *p)
{
    /* FIXED: batch * seq rows; a --varlen twin: its real tokens, padded or not */
    const double nq = p->batching == BENCH_FIXED ? (double)p->batch * p->seq_q
                                                 : (double)bench_total_tokens(p);
    const double nk = p->batching == BENCH_FIXED ? (double)p->batch * p->seq_k : nq;
    const double ns = bench_score_maps(p->variant), dv = bench_head_dim_v(p);
    const double q = nq * p->heads_q * ns * p->head_dim, o = nq * p->heads_q * dv;
    const double k = nk * p->heads_kv * ns * p->head_dim, v = nk * p->heads_kv * dv;
    const double nv = bench_reads_v2(p->variant) ? 2 : 1;
    double elems = q + o + k + v * nv; /* q, out, k, v(, v2) */
    if (p->pass == BENCH_BWD)
        elems += q + o + k + v * nv; /* dq, dout, dk, dv(, dv2) */
    return (double)dipole_dtype_size(p->dtype) * elems;
}

void bench_kv_label(const bench_point *p, char *buf, size_t cap)
{
    if (p->two_sm)
        snprintf(buf, cap, "2sm");
    else if (p->page_size > 0)
        snprintf(buf, cap, "p%d", p->page_size);
    else if (p->batching != BENCH_FIXED)
        snprintf(buf, cap, "%s", p->batching == BENCH_PACKED ? "pack" : "pad");
    else
        snprintf(buf, cap, "-");
}

const char *bench_status_name(bench_status s)
{
    switch (s) {
    case BENCH_OK:
        return "ok";
    case BENCH_UNSUPPORTED:
        return "unsupported";
    case BENCH_SKIPPED:
        return "skipped";
    case BENCH_ERROR:
        return "error";
    }
    return "?";
}

const char *bench_pass_name(bench_pass p)
{
    return p == BENCH_BWD ? "bwd" : "fwd";
}

void bench_row_key(const char *device_label, const bench_point *p, char *buf, size_t cap)
{
    const bool f32 = p->dtype == DIPOLE_F32;
    char layout[40] = "";
    if (p->page_size > 0)
        snprintf(layout, sizeof layout, "|paged%d", p->page_size);
    else if (p->batching != BENCH_FIXED)
        snprintf(layout, sizeof layout, "|%s%u",
                 p->batching == BENCH_PACKED ? "packed" : "padded", p->varlen_seed);
    char extra[40] = "";
    if (bench_head_dim_v(p) != p->head_dim)
        snprintf(extra, sizeof extra, "|dv%d", p->head_dim_v);
    if (p->two_sm)
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), "|2sm");
    snprintf(buf, cap, "%s|%s|%s|%s|%d|%d|%d|%d|%d|%d|%d%s%s%s%s", device_label,
             bench_pass_name(p->pass), dipole_variant_name(p->variant), dipole_path_name(p->path),
             p->batch, p->heads_q, p->heads_kv, p->seq_q, p->seq_k, p->head_dim, p->causal,
             f32 ? "" : "|", f32 ? "" : dipole_dtype_name(p->dtype), layout, extra);
}

/* The same problem whatever it is stored in. */
static bool same_sizes(const bench_point *a, const bench_point *b)
{
    return a->device == b->device && a->pass == b->pass && a->batch == b->batch &&
           a->heads_q == b->heads_q && a->heads_kv == b->heads_kv && a->seq_q == b->seq_q &&
           a->seq_k == b->seq_k && a->head_dim == b->head_dim && a->causal == b->causal &&
           a->page_size == b->page_size && a->batching == b->batching &&
           a->varlen_seed == b->varlen_seed && bench_head_dim_v(a) == bench_head_dim_v(b) &&
           a->two_sm == b->two_sm;
}

static bool same_shape(const bench_point *a, const bench_point *b)
{
    return same_sizes(a, b) && a->dtype == b->dtype;
}

static bool same_but_path(const bench_point *a, const bench_point *b)
{
    return same_shape(a, b) && a->variant == b->variant;
}

static bool same_but_variant(const bench_point *a, const bench_point *b)
{
    return same_shape(a, b) && a->path == b->path;
}

static bool same_but_dtype(const bench_point *a, const bench_point *b)
{
    return same_sizes(a, b) && a->variant == b->variant && a->path == b->path;
}

/* Median time over that of the first ok row that is_ref accepts as r's reference, or NaN. */
static double time_ratio(const bench_run *run, const bench_row *r,
                         bool (*is_ref)(const bench_point *r, const bench_point *ref))
{
    for (int j = 0; j < run->nrows; j++) {
        const bench_row *s = &run->rows[j];
        if (s->status == BENCH_OK && s->median_ms > 0 && is_ref(&r->pt, &s->pt))
            return r->median_ms / s->median_ms;
    }
    return NAN;
}

static bool softmax_ref(const bench_point *r, const bench_point *ref)
{
    return ref->variant == DIPOLE_SOFTMAX && same_but_variant(r, ref);
}

static bool f32_ref(const bench_point *r, const bench_point *ref)
{
    return ref->dtype == DIPOLE_F32 && same_but_dtype(r, ref);
}

static bool dense_ref(const bench_point *r, const bench_point *ref)
{
    bench_point dense = *r;
    dense.page_size = 0;
    return r->page_size > 0 && ref->page_size == 0 && same_but_path(&dense, ref) &&
           ref->path == r->path;
}

/* A packed row's reference is its padded twin: the ratio is then packed / padded. */
static bool padded_ref(const bench_point *r, const bench_point *ref)
{
    bench_point padded = *r;
    padded.batching = BENCH_PADDED;
    return r->batching == BENCH_PACKED && same_but_path(&padded, ref) && ref->path == r->path;
}

/* A DIFF row's reference is its --diff twin: the ratio is then fused / two calls. */
static bool two_sm_ref(const bench_point *r, const bench_point *ref)
{
    bench_point twin = *r;
    twin.two_sm = true;
    return r->variant == DIPOLE_DIFF && !r->two_sm && same_but_path(&twin, ref) &&
           ref->path == r->path;
}

void bench_derive(bench_run *run)
{
    for (int i = 0; i < run->nrows; i++) {
        bench_row *r = &run->rows[i];
        r->pct_fma = r->pct_sgemm = r->pct_copy = r->tiled_over_gemm = NAN;
        r->over_softmax = r->over_f32 = r->over_dense = r->padded_over_packed = NAN;
        r->two_sm_over_fused = NAN;
        if (r->status != BENCH_OK)
            continue;
        r->over_softmax = time_ratio(run, r, softmax_ref);
        r->over_f32 = time_ratio(run, r, f32_ref);
        r->over_dense = time_ratio(run, r, dense_ref);
        r->padded_over_packed = 1 / time_ratio(run, r, padded_ref); /* NaN stays NaN */
        r->two_sm_over_fused = 1 / time_ratio(run, r, two_sm_ref);
        const bench_ceilings *c = &run->dev[r->pt.device].ceil;
        if (c->fma_gflops > 0)
            r->pct_fma = 100 * r->gflops / c->fma_gflops;
        if (c->sgemm_gflops > 0)
            r->pct_sgemm = 100 * r->gflops / c->sgemm_gflops;
        if (c->copy_gbps > 0)
            r->pct_copy = 100 * r->gbps / c->copy_gbps;
        if (r->pt.path != DIPOLE_PATH_TILED)
            continue;
        for (int j = 0; j < run->nrows; j++) {
            const bench_row *g = &run->rows[j];
            if (g->status == BENCH_OK && g->pt.path == DIPOLE_PATH_GEMM &&
                same_but_path(&r->pt, &g->pt) && r->median_ms > 0)
                r->tiled_over_gemm = g->median_ms / r->median_ms;
        }
    }
}

bool bench_any_error(const bench_run *run)
{
    for (int i = 0; i < run->nrows; i++)
        if (run->rows[i].status == BENCH_ERROR)
            return true;
    return false;
}
