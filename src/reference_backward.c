/* The CPU reference backward: the chain rule through each variant written as plainly as
 * possible, in double, recomputing scores and weights per row.
 *
 * A row's score of key j is s_j = mods(r_j) with r_j = scale q.k: soft-capping, ALiBi and the
 * bias (dp_score_mods); with a bias, a key whose s_j is -inf is excluded from every pole, and a row with no
 * key left has O = 0 and passes no gradient. Per pole p a row has weights
 * P_j = softmax(logit_p(s))_j, a coefficient c_j and a target value u_j (v or v2), and the
 * output is O = sum_p w_p O_p with O_p = sum_j P_j c_j u_j. With g_p = w_p dO and
 * D_p = g_p . O_p:
 *   du_j      += P_j c_j g_p
 *   dlogit_j   = P_j (c_j g_p . u_j - D_p)
 *   ds_j      += dlogit_j * dlogit_p/ds   (1, -1, or sign(s) for |s|; 0 at s = 0 like torch)
 *   dr_j       = ds_j * ds/dr             (the soft-cap's 1 - tanh^2(r / cap); ALiBi and the
 *                                          bias are constants: no gradient reaches the bias)
 *   dq_i       = scale sum_j dr_j k_j,   dk_j = scale sum_i dr_j q_i
 *   dw_p       = sum over every row of every sequence of dO . O_p
 * c_j = sign(s_j) and the ROUTED choice of u_j are piecewise constant in s: no term of their own.
 * DIFF's pole p has a score map of its own, s_p from query head 2h + p and key head 2hk + p: the
 * terms above then run per pole on s_p, and dq, dk land on that pole's heads.
 * Packed batches (desc.cu_seqlens_q/k) address sequence b's rows and keys from its offsets in
 * the one tensor batch, as the forward does. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static double sign_of(double s)
{
    return s > 0 ? 1.0 : s < 0 ? -1.0 : s * 0.0;
}

static double pole_logit(dipole_variant v, int pole, double s)
{
    if (v == DIPOLE_SIGNEXP || v == DIPOLE_ROUTED)
        return fabs(s);
    return pole == 0 || v == DIPOLE_DIFF ? s : -s;
}

static double pole_logit_ds(dipole_variant v, int pole, double s)
{
    if (v == DIPOLE_SIGNEXP || v == DIPOLE_ROUTED)
        return sign_of(s);
    return pole == 0 || v == DIPOLE_DIFF ? 1.0 : -1.0;
}

static bool pole_to_v2(dipole_variant v, int pole, double s)
{
    return (v == DIPOLE_ROUTED && !(s > 0)) || (v == DIPOLE_TWO_POLE && pole == 1);
}

dipole_status dipole_reference_backward(const dipole_attn_desc *desc, const float *q,
                                        const float *k, const float *v, const float *v2,
                                        const float *dout, float *dq, float *dk, float *dv,
                                        float *dv2, float *dpos_weight, float *dneg_weight)
{
    dp_problem p;
    dipole_status st = dp_problem_init(NULL, desc, &p);
    if (st != DIPOLE_SUCCESS)
        return st;
    const char *missing = dp_bwd_host_missing(&p, q, k, v, v2, dout, dq, dk, dv, dv2);
    if (missing)
        return dp_fail(NULL, DIPOLE_ERR_INVALID_ARG, "dipole_reference_backward: %s is NULL",
                       missing);
    if (p.bias && !p.d.bias->host)
        return dp_fail(NULL, DIPOLE_ERR_INVALID_ARG,
                       "dipole_reference_backward: desc.bias->host is NULL (the reference reads "
                       "the bias from host memory)");
    const dipole_variant var = p.d.variant;
    const int B = p.d.batch, Hq = p.d.heads_q, Hkv = p.d.heads_kv, Nq = p.d.seq_q,
              Nk = p.d.seq_k, D = p.d.head_dim, DV = p.dv, NP = p.npoles, NS = p.nscores;
    const double scale = p.d.scale;
    /* Packed: every sequence lives in the one tensor batch, from its own first row and key. */
    const size_t nk = (size_t)p.tensor_batch * Nk * NS * Hkv * D;
    const size_t nv = (size_t)p.tensor_batch * Nk * Hkv * DV;
    /* Per row: scores and their d(score)/d(scale q.k) per score map, weights per pole; pole
     * outputs; dq per score map. Whole-tensor: dk, dv, dv2, dw. */
    double *s = malloc(sizeof(double) * (size_t)Nk * 2);
    double *sds = malloc(sizeof(double) * (size_t)Nk * 2);
    double *P = malloc(sizeof(double) * (size_t)Nk * 2);
    double *op = malloc(sizeof(double) * (size_t)DV * 2);
    double *dqi = malloc(sizeof(double) * (size_t)D * 2);
    double *dkd = calloc(nk, sizeof(double)), *dvd = calloc(nv, sizeof(double));
    double *dv2d = calloc(p.reads_v2 ? nv : 1, sizeof(double));
    double *dw = calloc((size_t)Hq * 2, sizeof(double));
    if (!s || !sds || !P || !op || !dqi || !dkd || !dvd || !dv2d || !dw) {
        st = dp_fail(NULL, DIPOLE_ERR_OUT_OF_HOST_MEMORY, "dipole_reference_backward: out of memory");
        goto done;
    }
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++) {
            const int hk = h / p.group;
            const double pole_w[2] = {p.weighted && p.d.pos_weight ? p.d.pos_weight[h] : 1.0,
                                      p.weighted && p.d.neg_weight ? p.d.neg_weight[h] : 1.0};
            const int tb = p.varlen ? 0 : b, q0 = dp_first_query(&p, b),
                      k0 = dp_first_key(&p, b);
            for (int i = 0; i < dp_query_length(&p, b); i++) {
                /* Row i's query (and dq) of score map m, and its output (and dout) row. */
                const size_t qrow0 = (((size_t)tb * Nq + q0 + i) * NS * Hq + NS * h) * D;
                const size_t orow = (((size_t)tb * Nq + q0 + i) * Hq + h) * DV;
                const float *doi = dout + orow;
                int lo, hi;
                dp_visible_range(&p, b, i, &lo, &hi);
                for (int c = 0; c < NS * D; c++)
                    dqi[c] = 0;
                for (int sm = 0; sm < NS; sm++)
                    for (int j = lo; j < hi; j++) {
                        const float *qi = q + qrow0 + (size_t)sm * D;
                        const float *kj =
                            k + (((size_t)tb * Nk + k0 + j) * NS * Hkv + NS * hk + sm) * D;
                        double dot = 0;
                        for (int c = 0; c < D; c++)
                            dot += (double)qi[c] * (double)kj[c];
                        const double r = scale * dot;
                        s[(size_t)sm * Nk + j] = dp_score_mods(&p, b, h, i, j, r);
                        sds[(size_t)sm * Nk + j] = dp_score_mods_ds(&p, r);
                    }
                /* Forward per pole: weights and the pole's unweighted output; a key whose score
                 * is -inf has weight 0 in the pole. */
                for (int pole = 0; pole < NP; pole++) {
                    const double *sp = s + (size_t)(NS == 2 ? pole : 0) * Nk;
                    double *Pp = P + (size_t)pole * Nk, *o = op + (size_t)pole * DV;
                    double m = -INFINITY, l = 0;
                    for (int j = lo; j < hi; j++)
                        if (!dp_score_excluded(&p, sp[j]))
                            m = fmax(m, pole_logit(var, pole, sp[j]));
                    for (int j = lo; j < hi; j++)
                        l += (Pp[j] = dp_score_excluded(&p, sp[j])
                                          ? 0.0
                                          : exp(pole_logit(var, pole, sp[j]) - m));
                    for (int c = 0; c < DV; c++)
                        o[c] = 0;
                    for (int j = lo; j < hi; j++) {
                        if (dp_score_excluded(&p, sp[j]))
                            continue;
                        Pp[j] /= l;
                        const double coef = var == DIPOLE_SIGNEXP ? sign_of(sp[j]) : 1.0;
                        const float *u = (pole_to_v2(var, pole, sp[j]) ? v2 : v) +
                                         (((size_t)tb * Nk + k0 + j) * Hkv + hk) * DV;
                        for (int c = 0; c < DV; c++)
                            o[c] += Pp[j] * coef * (double)u[c];
                    }
                }
                /* Backward per pole. A row without keys has O_p = 0: nothing flows. */
                for (int pole = 0; pole < NP; pole++) {
                    const int sm = NS == 2 ? pole : 0;
                    const double *sp = s + (size_t)sm * Nk, *spds = sds + (size_t)sm * Nk;
                    const double *Pp = P + (size_t)pole * Nk, *o = op + (size_t)pole * DV;
                    const float *qi = q + qrow0 + (size_t)sm * D;
                    double *dqp = dqi + (size_t)sm * D;
                    double dot_o = 0;
                    for (int c = 0; c < DV; c++)
                        dot_o += (double)doi[c] * o[c];
                    dw[pole * Hq + h] += dot_o;
                    const double wp = pole_w[pole], Dp = wp * dot_o;
                    for (int j = lo; j < hi; j++) {
                        if (dp_score_excluded(&p, sp[j]))
                            continue;
                        const double coef = var == DIPOLE_SIGNEXP ? sign_of(sp[j]) : 1.0;
                        const bool to_v2 = pole_to_v2(var, pole, sp[j]);
                        const size_t vrow = (((size_t)tb * Nk + k0 + j) * Hkv + hk) * DV;
                        const size_t krow =
                            (((size_t)tb * Nk + k0 + j) * NS * Hkv + NS * hk + sm) * D;
                        const float *u = (to_v2 ? v2 : v) + vrow;
                        double *du = (to_v2 ? dv2d : dvd) + vrow;
                        double gu = 0;
                        for (int c = 0; c < DV; c++) {
                            gu += wp * (double)doi[c] * (double)u[c];
                            du[c] += Pp[j] * coef * wp * (double)doi[c];
                        }
                        /* d/d(scale q.k): the variant's logit, then the soft-cap's tanh. */
                        const double dr =
                            Pp[j] * (coef * gu - Dp) * pole_logit_ds(var, pole, sp[j]) * spds[j];
                        const float *kj = k + krow;
                        for (int c = 0; c < D; c++) {
                            dqp[c] += scale * dr * (double)kj[c];
                            dkd[krow + c] += scale * dr * (double)qi[c];
                        }
                    }
                }
                for (int c = 0; c < NS * D; c++)
                    dq[qrow0 + c] = (float)dqi[c];
            }
        }
    for (size_t x = 0; x < nk; x++)
        dk[x] = (float)dkd[x];
    for (size_t x = 0; x < nv; x++) {
        dv[x] = (float)dvd[x];
        if (p.reads_v2)
            dv2[x] = (float)dv2d[x];
    }
    if (p.weighted)
        for (int h = 0; h < Hq; h++) {
            if (dpos_weight)
                dpos_weight[h] = (float)dw[h];
            if (dneg_weight)
                dneg_weight[h] = (float)dw[Hq + h];
        }
done:
    free(s);
    free(sds);
    free(P);
    free(op);
    free(dqi);
    free(dkd);
    free(dvd);
    free(dv2d);
    free(dw);
    return st;
}
