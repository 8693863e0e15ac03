/* Validation of one point: sampled (batch, head, query row) triples against dipole_reference.
 *
 * A query row's output depends only on that row's q, the keys it sees and their values, so
 * each triple is checked as its own exact reduced problem: one batch, one head, seq_q = 1 and
 * seq_k = the number of keys the row sees in the full problem (the visible keys are always a
 * prefix of its sequence's keys here: no windows), without a mask. A --varlen twin is checked
 * the same way in its own layout: a packed row of sequence b against keys cu[b] .. cu[b] + hi,
 * a padded row against the first hi of its batch's L_b keys (bench_seq_of). That keeps the
 * reference's cost at O(rows * seq_k * d) even for problems far too large to run on the CPU
 * whole, and is exact for causal rows too because the row keeps its own key range. DIFF's two
 * q heads of a head, like its two k heads, are adjacent (the pole fastest): a row of the
 * reduced problem is 2 head_dim contiguous floats, and so is its dq.
 *
 * The bound is |got - ref| <= atol + rtol |ref|. The host inputs are the device's own (rounded
 * to the point's dtype and widened back), so with f16 or bf16 storage what remains beyond float
 * arithmetic is the rounding of the stored result, up to half an ulp: rtol is raised to one ulp,
 * 2^-10 (f16) or 2^-7 (bf16), leaving the other half for the float differences. A backward row
 * (dq) also carries the forward's rounded out, through delta = dout . out, into every element
 * alike; a small element of the row can be swamped by it, so half-precision backward rows use
 * atol + rtol (|ref| + 8 rms(ref row)). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* The triples: the first and last rows always (edges of the tile and mask loops), then
 * pseudo-random ones from a seed fixed per point so reruns check the same rows. i is a row of
 * sequence b (of lq(b) rows); false when that sequence has none. */
static bool pick(const bench_point *p, const bench_layout *l, const int *cu, int s,
                 unsigned long long *state, int *b, int *h, int *i)
{
    unsigned long long x = 0;
    if (s < 2) {
        *b = s ? p->batch - 1 : 0, *h = s ? p->heads_q - 1 : 0;
    } else {
        *state = *state * 6364136223846793005ull + 1442695040888963407ull;
        x = *state >> 17;
        *b = (int)(x % (unsigned)p->batch);
        x /= (unsigned)p->batch;
        *h = (int)(x % (unsigned)p->heads_q);
        x /= (unsigned)p->heads_q;
    }
    const int lq = bench_seq_of(p, l, cu, *b).lq;
    if (lq <= 0)
        return false;
    *i = s == 0 ? 0 : s == 1 ? lq - 1 : (int)(x % (unsigned)lq);
    return true;
}

/* The tolerance of one checked row: atol + rtol (|ref| + spread). */
typedef struct tolerance {
    double atol, rtol, spread;
} tolerance;

static double half_rtol(dipole_dtype dt, double rtol)
{
    const double ulp = dt == DIPOLE_F16 ? 0x1p-10 : dt == DIPOLE_BF16 ? 0x1p-7 : 0;
    return rtol > ulp ? rtol : ulp;
}

static tolerance row_tolerance(const bench_point *p, const float *ref, size_t width,
                               double atol, double rtol)
{
    tolerance t = {atol, half_rtol(p->dtype, rtol), 0};
    if (p->dtype == DIPOLE_F32 || p->pass != BENCH_BWD)
        return t;
    double sq = 0;
    for (size_t c = 0; c < width; c++)
        sq += (double)ref[c] * ref[c];
    t.spread = 8 * sqrt(sq / (double)width);
    return t;
}

static double bound(const tolerance *t, float ref)
{
    return t->atol + t->rtol * (fabs((double)ref) + t->spread);
}

/* The bound in words, for the mismatch message. */
static void describe(const tolerance *t, dipole_dtype dt, char *buf, size_t cap)
{
    if (t->spread > 0)
        snprintf(buf, cap, "atol %.1g + rtol %.2g (|ref| + 8 rms %.3g), %s", t->atol, t->rtol,
                 t->spread / 8, dipole_dtype_name(dt));
    else if (dt != DIPOLE_F32)
        snprintf(buf, cap, "atol %.1g + rtol %.2g |ref|, %s", t->atol, t->rtol,
                 dipole_dtype_name(dt));
    else
        snprintf(buf, cap, "atol %.1g + rtol %.1g |ref|", t->atol, t->rtol);
}

/* Keys k0 .. k0 + n - 1 of head hk in batch b of a layout of rows_k keys per batch, each
 * d floats a head (DIFF's k: its two pole heads together). */
static void gather_keys(const float *src, const bench_point *p, size_t d, int rows_k, int b,
                        int k0, int hk, int n, float *dst)
{
    for (int j = 0; j < n; j++)
        memcpy(dst + (size_t)j * d,
               src + (((size_t)b * rows_k + (size_t)(k0 + j)) * (size_t)p->heads_kv +
                      (size_t)hk) * d,
               d * sizeof(float));
}

/* Where a mismatch is, in words: a packed row also gives its sequence. */
static void where(const bench_point *p, const bench_seq_view *v, int b, int h, int i, char *buf,
                  size_t cap)
{
    if (p->batching == BENCH_PACKED)
        snprintf(buf, cap, "sequence %d (packed row %d), head %d, row %d", b, v->q0 + i, h, i);
    else
        snprintf(buf, cap, "batch %d, head %d, row %d", b, h, i);
}

bool bench_validate(const bench_point *p, const bench_host_inputs *in, bench_fetch_row fetch,
                    void *user, int samples, double atol, double rtol, bool inject, bench_row *r)
{
    /* per head: dq (q, k) of ns pole heads, dv of v, v2, out */
    const size_t dq = (size_t)bench_score_maps(p->variant) * (size_t)p->head_dim;
    const size_t dv = (size_t)bench_head_dim_v(p);
    const bool v2 = bench_reads_v2(p->variant);
    const bool bwd = p->pass == BENCH_BWD;
    const size_t d = bwd ? dq : dv; /* the checked row: dq or out */
    const bench_layout l = bench_point_layout(p);
    const size_t nk = (size_t)(p->batching == BENCH_FIXED ? p->seq_k : bench_max_length(p));
    int *cu = p->batching == BENCH_PACKED ? bench_cu_seqlens(p) : NULL;
    float *kr = malloc(sizeof(float) * dq * nk);
    float *vr = malloc(sizeof(float) * dv * nk);
    float *v2r = v2 ? malloc(sizeof(float) * dv * nk) : NULL;
    float *ref = malloc(sizeof(float) * d * 3), *got = ref ? ref + d : NULL;
    float *scratch = bwd ? malloc(sizeof(float) * (dq + 2 * dv) * nk) : NULL;
    bool ok = true;
    r->checked_rows = 0;
    r->max_abs_err = 0;
    r->worst_ratio = 0;
    if (!kr || !vr || (v2 && !v2r) || !ref || (bwd && !scratch) ||
        (p->batching == BENCH_PACKED && !cu)) {
        snprintf(r->reason, sizeof r->reason, "validation: out of host memory");
        ok = false;
        goto done;
    }
    unsigned long long state = ((unsigned long long)p->seq_q * 1315423911u) ^
                               ((unsigned long long)p->seq_k << 20) ^ (unsigned)p->variant ^
                               ((unsigned long long)p->head_dim << 40);
    const int rows = l.batch * l.rows_q * p->heads_q; /* every layout row, padding included */
    if (samples > rows)
        samples = rows;
    for (int s = 0; s < samples && ok; s++) {
        int b, h, i;
        if (!pick(p, &l, cu, s, &state, &b, &h, &i))
            continue; /* an empty sequence has no row to check */
        const bench_seq_view sv = bench_seq_of(p, &l, cu, b);
        const int hk = h / (p->heads_q / p->heads_kv);
        int hi = sv.lk;
        if (p->causal) {
            const int lim = i + sv.lk - sv.lq + 1;
            hi = lim < 0 ? 0 : lim < sv.lk ? lim : sv.lk;
        }
        const size_t row = ((size_t)sv.lb * l.rows_q + (size_t)(sv.q0 + i)) *
                               (size_t)p->heads_q + (size_t)h;
        const float *qrow = in->q + row * dq;
        if (hi == 0) {
            memset(ref, 0, sizeof(float) * d); /* a row that sees no key outputs zeros */
        } else {
            gather_keys(in->k, p, dq, l.rows_k, sv.lb, sv.k0, hk, hi, kr);
            gather_keys(in->v, p, dv, l.rows_k, sv.lb, sv.k0, hk, hi, vr);
            if (v2)
                gather_keys(in->v2, p, dv, l.rows_k, sv.lb, sv.k0, hk, hi, v2r);
            dipole_attn_desc rd;
            dipole_attn_desc_default(&rd);
            rd.variant = p->variant;
            rd.batch = rd.heads_q = rd.heads_kv = rd.seq_q = 1;
            rd.seq_k = hi;
            rd.head_dim = p->head_dim;
            rd.head_dim_v = p->head_dim_v;
            dipole_status st;
            if (!bwd) {
                st = dipole_reference(&rd, qrow, kr, vr, v2r, ref);
            } else {
                /* dq of a row is also row-local; dk and dv sum over rows and are not sampled. */
                const float *dout = in->dout + row * dv;
                float *gk = scratch, *gv = gk + dq * (size_t)hi, *gv2 = gv + dv * (size_t)hi;
                st = dipole_reference_backward(&rd, qrow, kr, vr, v2r, dout, ref, gk, gv,
                                               v2 ? gv2 : NULL, NULL, NULL);
            }
            if (st != DIPOLE_SUCCESS) {
                snprintf(r->reason, sizeof r->reason, "dipole_reference: %s: %s",
                         dipole_status_string(st), dipole_thread_last_error());
                ok = false;
                break;
            }
        }
        if (fetch(user, sv.lb, sv.q0 + i, h, got) != 0) {
            snprintf(r->reason, sizeof r->reason, "validation: reading row (b %d, h %d, i %d) "
                                                  "back from the device failed",
                     sv.lb, h, sv.q0 + i);
            ok = false;
            break;
        }
        if (inject && s == 0)
            got[0] += 1.0f; /* --inject-error: validation must catch this */
        r->checked_rows++;
        const tolerance tol = row_tolerance(p, ref, d, atol, rtol);
        for (size_t c = 0; c < d; c++) {
            const double diff = fabs((double)got[c] - (double)ref[c]);
            const double ratio = diff / bound(&tol, ref[c]);
            if (!isfinite(got[c]) || !(ratio <= 1.0)) {
                char words[96], at[96];
                describe(&tol, p->dtype, words, sizeof words);
                where(p, &sv, b, h, i, at, sizeof at);
                snprintf(r->reason, sizeof r->reason,
                         "mismatch at %s, column %zu: device %.7g, reference %.7g "
                         "(|diff| %.3g > %s)",
                         at, c, got[c], ref[c], diff, words);
                ok = false;
            }
            if (diff > r->max_abs_err || !isfinite(diff))
                r->max_abs_err = isfinite(diff) ? diff : INFINITY;
            if (!(ratio <= r->worst_ratio))
                r->worst_ratio = isfinite(ratio) ? ratio : INFINITY;
            if (!ok)
                break;
        }
    }
done:
    free(cu);
    free(kr);
    free(vr);
    free(v2r);
    free(ref);
    free(scratch);
    return ok;
}
