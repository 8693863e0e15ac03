/* The CPU reference: the definition of each variant written as plainly as possible, in double.
 * Tests and dipole-bench validate every device result against it. */
#include <math.h>
#include <stdlib.h>

#include "internal.h"

static double sign_of(double s)
{
    return s > 0 ? 1.0 : s < 0 ? -1.0 : s * 0.0; /* sign(0) = 0; NaN stays NaN */
}

/* Pole p's logit of its score s: s for softmax, the positive pole and both of DIFF's poles
 * (each ranks its own score map), -s for TWO_POLE's negative pole, |s| for the variants that
 * rank both signs together. */
static double pole_logit(dipole_variant v, int pole, double s)
{
    if (v == DIPOLE_SIGNEXP || v == DIPOLE_ROUTED)
        return fabs(s);
    return pole == 0 || v == DIPOLE_DIFF ? s : -s;
}

dipole_status dipole_reference_lse(const dipole_attn_desc *desc, const float *q, const float *k,
                                   const float *v, const float *v2, float *out, float *lse)
{
    dp_problem p;
    dipole_status st = dp_problem_init(NULL, desc, &p);
    if (st != DIPOLE_SUCCESS)
        return st;
    if (!q || !k || !v || !out || (p.reads_v2 && !v2))
        return dp_fail(NULL, DIPOLE_ERR_INVALID_ARG, "dipole_reference: %s is NULL",
                       !q ? "q" : !k ? "k" : !v ? "v" : !out ? "out" : "v2 (the variant reads it)");
    if (p.bias && !p.d.bias->host)
        return dp_fail(NULL, DIPOLE_ERR_INVALID_ARG,
                       "dipole_reference: desc.bias->host is NULL (the reference reads the bias "
                       "from host memory)");
    const int B = p.d.batch, Hq = p.d.heads_q, Hkv = p.d.heads_kv, Nq = p.d.seq_q,
              Nk = p.d.seq_k, D = p.d.head_dim, DV = p.dv, NS = p.nscores;
    /* Packed: sequence b is rows of the one tensor batch, and lse is [poles, Hq, seq_q]. */
    const int TB = p.tensor_batch;
    double *s = malloc(sizeof(double) * (size_t)Nk * (size_t)NS); /* [score map][key] */
    double *acc = malloc(sizeof(double) * (size_t)DV * 2);
    if (!s || !acc) {
        free(s);
        free(acc);
        return dp_fail(NULL, DIPOLE_ERR_OUT_OF_HOST_MEMORY, "dipole_reference: out of memory");
    }
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++) {
            const int hk = h / p.group;
            const double pole_w[2] = {p.weighted && p.d.pos_weight ? p.d.pos_weight[h] : 1.0,
                                      p.weighted && p.d.neg_weight ? p.d.neg_weight[h] : 1.0};
            const int tb = p.varlen ? 0 : b, q0 = dp_first_query(&p, b),
                      k0 = dp_first_key(&p, b);
            for (int i = 0; i < dp_query_length(&p, b); i++) {
                int lo, hi;
                dp_visible_range(&p, b, i, &lo, &hi);
                /* DIFF's score map m comes from query head NS h + m and key head NS hk + m. */
                for (int sm = 0; sm < NS; sm++) {
                    const float *qi = q + (((size_t)tb * Nq + q0 + i) * NS * Hq + NS * h + sm) * D;
                    for (int j = lo; j < hi; j++) {
                        const float *kj =
                            k + (((size_t)tb * Nk + k0 + j) * NS * Hkv + NS * hk + sm) * D;
                        double dot = 0;
                        for (int c = 0; c < D; c++)
                            dot += (double)qi[c] * (double)kj[c];
                        s[(size_t)sm * Nk + j] =
                            dp_score_mods(&p, b, h, i, j, (double)p.d.scale * dot);
                    }
                }
                double *od = acc + DV; /* the output row, summed over poles in double */
                for (int c = 0; c < DV; c++)
                    od[c] = 0.0;
                for (int pole = 0; pole < p.npoles; pole++) {
                    const double *sp = s + (size_t)(NS == 2 ? pole : 0) * Nk;
                    /* A score of -inf (a bias entry) hides its key from the pole. */
                    int seen = 0;
                    double m = -INFINITY, l = 0;
                    for (int j = lo; j < hi; j++)
                        if (!dp_score_excluded(&p, sp[j])) {
                            seen++;
                            m = fmax(m, pole_logit(p.d.variant, pole, sp[j]));
                        }
                    for (int c = 0; c < DV; c++)
                        acc[c] = 0;
                    for (int j = lo; j < hi; j++) {
                        if (dp_score_excluded(&p, sp[j]))
                            continue;
                        const double w = exp(pole_logit(p.d.variant, pole, sp[j]) - m);
                        l += w;
                        /* Which value row the key's weight lands on, and with what sign. */
                        const bool to_v2 = (p.d.variant == DIPOLE_ROUTED && !(sp[j] > 0)) ||
                                           (p.d.variant == DIPOLE_TWO_POLE && pole == 1);
                        const double coef = p.d.variant == DIPOLE_SIGNEXP ? sign_of(sp[j]) : 1.0;
                        const float *vj =
                            (to_v2 ? v2 : v) + (((size_t)tb * Nk + k0 + j) * Hkv + hk) * DV;
                        for (int c = 0; c < DV; c++)
                            acc[c] += w * coef * (double)vj[c];
                    }
                    if (seen)
                        for (int c = 0; c < DV; c++)
                            od[c] += pole_w[pole] * acc[c] / l;
                    if (lse)
                        lse[(((size_t)pole * TB + tb) * Hq + h) * Nq + q0 + i] =
                            seen ? (float)(m + log(l)) : -INFINITY;
                }
                float *oi = out + (((size_t)tb * Nq + q0 + i) * Hq + h) * DV;
                for (int c = 0; c < DV; c++)
                    oi[c] = (float)od[c];
            }
        }
    free(s);
    free(acc);
    return DIPOLE_SUCCESS;
}

dipole_status dipole_reference(const dipole_attn_desc *desc, const float *q, const float *k,
                               const float *v, const float *v2, float *out)
{
    return dipole_reference_lse(desc, q, k, v, v2, out, NULL);
}
