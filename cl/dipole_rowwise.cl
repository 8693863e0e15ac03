/* GEMM path, between the two GEMMs: turns a chunk of scores into the weights the second GEMM
 * multiplies with V (and V2), in place. One work-item owns one query row of one (batch, head)
 * slice. The chunk is column-major per slice ([rows, ncols] with leading dimension rows), so
 * neighbouring work-items read neighbouring floats; the layout is also the one CLBlast's GEMM
 * kernel wants for both the first GEMM's C and the second GEMM's B, which spares it a copy.
 *
 * Weights: P (on v) and, where the variant reads v2, P2 (on v2). Per pole, a key's weight is
 * exp(logit - max) / sum * coef * pole weight, and lands on v or v2 — all of it from the macros
 * of dipole_common.cl. Masked keys get weight 0; a row that sees no key is all zeros. */

__kernel void dipole_rowwise(__global float *p1,                /* scores in, weights on v out */
                             __global float *p2,                /* weights on v2 (READS_V2) */
                             __global float *lse,               /* [NPOLES, B, Hq, Nq] or NULL */
                             __global const int *key_lengths,   /* [B] or NULL */
                             __global const float *pole_weights, /* [2, Hq] or NULL */
                             int rows, int ncols, int row0, int col0, int slice0,
                             int batch, int heads_q, int seq_q, int seq_k,
                             int window_left, int window_right)
{
    const int r = get_global_id(0);
    const int sl = get_global_id(1);
    if (r >= rows)
        return;
    const int flat = slice0 + sl;
    const int b = flat / heads_q, h = flat % heads_q;
    const int i = row0 + r;
    const int kl = key_lengths ? key_lengths[b] : seq_k;
    const int2 vis = dp_visible_range(i, kl, seq_q, window_left, window_right);
    const int lo = clamp(vis.x - col0, 0, ncols), hi = clamp(vis.y - col0, 0, ncols);
    const long at = (long)sl * rows * ncols + r;

    float m[NPOLES], l[NPOLES];
    for (int p = 0; p < NPOLES; p++) {
        m[p] = -INFINITY;
        l[p] = 0.0f;
    }
    for (int jj = lo; jj < hi; jj++) {
        const float s = p1[at + (long)jj * rows];
        for (int p = 0; p < NPOLES; p++) {
            const float x = POLE_LOGIT(p, s);
            const float m_new = fmax(m[p], x);
            l[p] = l[p] * dp_rescale(m[p], m_new) + exp(x - m_new);
            m[p] = m_new;
        }
    }

    const bool has_keys = lo < hi;
    float scale[NPOLES];
    for (int p = 0; p < NPOLES; p++) {
        const float pw =
            (VARIANT == DIPOLE_TWO_POLE && pole_weights) ? pole_weights[p * heads_q + h] : 1.0f;
        scale[p] = has_keys ? pw / l[p] : 0.0f;
    }
    for (int jj = 0; jj < ncols; jj++) {
        const long e = at + (long)jj * rows;
        float w1 = 0.0f, w2 = 0.0f;
        if (jj >= lo && jj < hi) {
            const float s = p1[e];
            for (int p = 0; p < NPOLES; p++) {
                const float w = exp(POLE_LOGIT(p, s) - m[p]) * scale[p] * POLE_COEF(p, s);
                if (POLE_TO_V2(p, s))
                    w2 += w;
                else
                    w1 += w;
            }
        }
        p1[e] = w1;
#if READS_V2
        p2[e] = w2;
#else
        (void)w2;
#endif
    }

    if (lse)
        for (int p = 0; p < NPOLES; p++)
            lse[(((long)p * batch + b) * heads_q + h) * seq_q + i] =
                has_keys ? m[p] + log(l[p]) : -INFINITY;
}
