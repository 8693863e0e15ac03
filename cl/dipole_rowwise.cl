/* GEMM path, between the two GEMMs: turns a chunk of scores into the weights the second GEMM
 * multiplies with V (and V2), in place. A work-group owns BLOCK_M query rows of one (batch,
 * head) slice; BLOCK_N work-items share each row's keys and merge their partial max/sum in
 * local memory, so that even a chunk of few rows fills a GPU. The chunk is column-major per
 * slice ([rows, ncols], leading dimension rows): work-items of neighbouring rows read
 * neighbouring floats. It is also the layout CLBlast's GEMM kernel wants for both the first
 * GEMM's C and the second GEMM's B, which spares it a copy.
 *
 * Weights: P (on v) and, where the variant reads v2, P2 (on v2). Per pole, a key's weight is
 * exp(logit - max) / sum * coef * pole weight, and lands on v or v2 — all of it from the macros
 * of dipole_common.cl. Masked keys get weight 0; a row that sees no key is all zeros. DIFF's
 * poles rank two score maps (POLE_SCORE): the second chunk comes in where P2 would go out,
 * and both poles' weights add up in P, as both land on v.
 *
 * The chunk holds raw scores s = scale q.k (the first GEMM's alpha); the score modifiers
 * (soft-cap, ALiBi, bias: dp_score) apply here, on the way to the variant. A key they make
 * -inf is excluded from every pole, and a row left without keys gets weights 0 and lse -inf.
 *
 * Packed batches (DP_VARLEN): a chunk never spans two sequences, slice b * Hq + h names
 * sequence b, and row0, col0 count rows and keys within it; DP_SEQUENCE(b) points seq_q, seq_k
 * and the bias at the sequence, and DP_STAT puts its statistics at its packed rows. */

#ifndef BLOCK_M
#define BLOCK_M 32 /* rows per work-group */
#endif
#ifndef BLOCK_N
#define BLOCK_N 8 /* work-items sharing one row's keys */
#endif

/* Stores a weight on v2 where the variant reads v2 (the GEMM then multiplies it with V2). */
#if READS_V2
#define DP_STORE_P2(buf, e, w) ((buf)[e] = (w))
#else
#define DP_STORE_P2(buf, e, w) ((void)(buf), (void)(w))
#endif

/* What the backward leaves in its third chunk: P2 where the variant reads v2, DIFF's dS_1. */
#if READS_V2
#define DP_STORE_THIRD(buf, e, w2, ds) ((buf)[e] = (w2))
#elif NSCORES == 2
#define DP_STORE_THIRD(buf, e, w2, ds) ((buf)[e] = (ds)[1], (void)(w2))
#else
#define DP_STORE_THIRD(buf, e, w2, ds) ((void)(buf), (void)(w2))
#endif

/* s[m]: the raw scores of element e of each score map m (the first in s1, DIFF's second in
 * s2); sc[m]: them through the score modifiers. */
#if NSCORES == 2
#define DP_RAW_SCORES(s, s1, s2, e) float s[2] = {(s1)[e], (s2)[e]}
#else
#define DP_RAW_SCORES(s, s1, s2, e) float s[1] = {(s1)[e]}
#endif
#define DP_MOD_SCORES(sc, s, jj)                                                               \
    float sc[NSCORES];                                                                         \
    for (int m_ = 0; m_ < NSCORES; m_++)                                                       \
        sc[m_] = DP_SCORE(s[m_], b, h, i, col0 + (jj), kl)

/* Work-item (lr, lc) of group (row block, 0, slice sl): chunk row r (query row i, if live) of
 * slice b * Hq + h; [lo, hi): the row's visible columns of the chunk; at: its element 0. */
#define DP_CHUNK_ROW()                                                                         \
    const int lr = get_local_id(0), lc = get_local_id(1);                                      \
    const int r = get_group_id(0) * BLOCK_M + lr;                                              \
    const int sl = get_group_id(2);                                                            \
    const bool live = r < rows;                                                                \
    const int flat = slice0 + sl;                                                              \
    const int b = flat / heads_q, h = flat % heads_q;                                          \
    const int i = row0 + r;                                                                    \
    DP_SEQUENCE(b);                                                                            \
    const int kl = DP_KEY_LENGTH(b);                                                           \
    const int2 vis = dp_visible_range(i, kl, seq_q, window_left, window_right);                \
    const int2 tr = live ? dp_range_in_tile(vis, col0, ncols) : (int2)(0, 0);                  \
    const int lo = tr.x, hi = tr.y;                                                            \
    const long at = (long)sl * rows * ncols + r

__kernel __attribute__((reqd_work_group_size(BLOCK_M, BLOCK_N, 1)))
void dipole_rowwise(__global float *p1,                 /* scores in, weights on v out */
                    __global float *p2,                 /* weights on v2 out (READS_V2), or
                                                           the second score map in (DIFF) */
                    __global float *lse,                /* [NPOLES, B, Hq, Nq] or NULL (packed:
                                                           [NPOLES, Hq, total rows]) */
                    __global const int *key_lengths,    /* [B], packed cu_seqlens, or NULL */
                    __global const float *pole_weights, /* [2, Hq] or NULL */
                    int rows, int ncols, int row0, int col0, int slice0,
                    int batch, int heads_q, int seq_q, int seq_k,
                    int window_left, int window_right, DP_SCORE_ARGS)
{
    DP_CHUNK_ROW();

    /* This work-item's share of the row: keys lo + lc, lo + lc + BLOCK_N, ... */
    float m[NPOLES], l[NPOLES];
    for (int p = 0; p < NPOLES; p++) {
        m[p] = -INFINITY;
        l[p] = 0.0f;
    }
    for (int jj = lo + lc; jj < hi; jj += BLOCK_N) {
        DP_RAW_SCORES(raw, p1, p2, at + (long)jj * rows);
        DP_MOD_SCORES(s, raw, jj);
        for (int p = 0; p < NPOLES; p++) {
            const float x = POLE_LOGIT(p, s[POLE_SCORE(p)]);
            const float m_new = fmax(m[p], x);
            l[p] = l[p] * dp_rescale(m[p], m_new) + DP_POLE_EXP(exp(x - m_new), x);
            m[p] = m_new;
        }
    }

    /* Merge the BLOCK_N partial (max, sum) pairs of each row. */
    __local float lm[NPOLES][BLOCK_M][BLOCK_N], ll[NPOLES][BLOCK_M][BLOCK_N];
    for (int p = 0; p < NPOLES; p++) {
        lm[p][lr][lc] = m[p];
        ll[p][lr][lc] = l[p];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lc == 0)
        for (int p = 0; p < NPOLES; p++) {
            float mm, sum;
#define PART_M(c) lm[p][lr][c]
#define PART_L(c) ll[p][lr][c]
            DP_MERGE_POLE(BLOCK_N, PART_M, PART_L, mm, sum);
#undef PART_M
#undef PART_L
            lm[p][lr][0] = mm;
            ll[p][lr][0] = sum;
        }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int p = 0; p < NPOLES; p++) {
        m[p] = lm[p][lr][0];
        l[p] = ll[p][lr][0];
    }
    if (!live)
        return;

    /* A row sees a key when some key got past the mask and the modifiers: each one left
     * adds at least e^0 = 1 to every pole's sum (NaN scores keep a NaN sum, and NaN out). */
    bool seen[NPOLES];
    float scale[NPOLES];
    for (int p = 0; p < NPOLES; p++) {
        const float pw = dp_pole_weight(pole_weights, p, h, heads_q);
        seen[p] = l[p] != 0.0f;
        scale[p] = seen[p] ? pw / l[p] : 0.0f;
    }
    for (int jj = lc; jj < ncols; jj += BLOCK_N) {
        const long e = at + (long)jj * rows;
        float w1 = 0.0f, w2 = 0.0f;
        if (jj >= lo && jj < hi) {
            DP_RAW_SCORES(raw, p1, p2, e);
            DP_MOD_SCORES(sc, raw, jj);
            for (int p = 0; p < NPOLES; p++) {
                const float s = sc[POLE_SCORE(p)], lg = POLE_LOGIT(p, s);
                const float w = DP_POLE_EXP(exp(lg - m[p]), lg) * scale[p] * POLE_COEF(p, s);
                if (POLE_TO_V2(p, s))
                    w2 += w;
                else
                    w1 += w;
            }
        }
        p1[e] = w1;
        DP_STORE_P2(p2, e, w2);
    }

    if (lse && lc == 0)
        for (int p = 0; p < NPOLES; p++)
            lse[DP_STAT(p, b, h, i)] = seen[p] ? m[p] + log(l[p]) : -INFINITY;
}

/* GEMM-path backward, between the GEMMs: per chunk (same layout and work-group as
 * dipole_rowwise) it takes the scores S, dP = dO V^T and, where the variant reads v2,
 * dP2 = dO V2^T, and writes in place the weights P on v (over S), dS = dL/dS (over dP) and the
 * weights P2 on v2 (over dP2). DIFF takes its second score map S_1 where dP2 would be and
 * leaves its dS_1 there, P then holding both poles' weights (both land on v). The weights come
 * back from the forward's lse, so no row max or sum is needed. With p_j = exp(logit_p(s_j) -
 * lse_p) (s_j: pole p's own score map), coefficient c_j, pole weight w_p and g_j = dO . (the
 * value row key j's weight lands on):
 *   rowdot_p = sum_j p_j c_j g_j  (= dO . O_p, the forward's pole output, without storing it),
 *   dS_j = sum_p p_j (c_j w_p g_j - w_p rowdot_p) dlogit_p/ds, the sum over the poles that
 *   rank that score map.
 * rowdot is summed in a fixed order (strided lanes, then lane 0 adds the partial sums).
 * The logits come from the modified score dp_score(s); dS is by the raw s the GEMMs see, so it
 * takes dp_score's own derivative (DP_SCORE_DS, the soft-cap's) on top. An excluded key
 * (score -inf) has p_j = 0, also in a row whose lse is -inf for lack of any key. */
__kernel __attribute__((reqd_work_group_size(BLOCK_M, BLOCK_N, 1)))
void dipole_rowwise_bwd(__global float *sp,                 /* S in, P (on v) out */
                        __global float *dp,                 /* dO V^T in, dS out */
                        __global float *dp2,                /* dO V2^T in, P2 out (READS_V2);
                                                               S_1 in, dS_1 out (DIFF) */
                        __global const float *lse,          /* [NPOLES, B, Hq, Nq] */
                        __global float *rowdot,             /* [NPOLES, B, Hq, Nq] or NULL */
                        __global const int *key_lengths,    /* [B], packed cu_seqlens, or NULL */
                        __global const float *pole_weights, /* [2, Hq] or NULL */
                        int rows, int ncols, int row0, int col0, int slice0,
                        int batch, int heads_q, int seq_q, int seq_k,
                        int window_left, int window_right, DP_SCORE_ARGS)
{
    DP_CHUNK_ROW();

    float row_lse[NPOLES], pw[NPOLES], dot[NPOLES];
    for (int p = 0; p < NPOLES; p++) {
        /* lse is -inf for a row without keys: one the mask leaves none never reads it
         * (lo == hi), one whose keys the bias all excludes weighs each 0 (DP_POLE_EXP). */
        row_lse[p] = lo < hi ? lse[DP_STAT(p, b, h, i)] : 0.0f;
        pw[p] = dp_pole_weight(pole_weights, p, h, heads_q);
        dot[p] = 0.0f;
    }
    for (int jj = lo + lc; jj < hi; jj += BLOCK_N) {
        const long e = at + (long)jj * rows;
        DP_RAW_SCORES(raw, sp, dp2, e);
        DP_MOD_SCORES(sc, raw, jj);
        const float g1 = dp[e];
#if READS_V2
        const float g2 = dp2[e];
#else
        const float g2 = g1;
#endif
        for (int p = 0; p < NPOLES; p++) {
            const float s = sc[POLE_SCORE(p)], lg = POLE_LOGIT(p, s);
            dot[p] += DP_POLE_EXP(exp(lg - row_lse[p]), lg) * POLE_COEF(p, s) *
                      (POLE_TO_V2(p, s) ? g2 : g1);
        }
    }

    __local float ld[NPOLES][BLOCK_M][BLOCK_N];
    for (int p = 0; p < NPOLES; p++)
        ld[p][lr][lc] = dot[p];
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lc == 0)
        for (int p = 0; p < NPOLES; p++) {
            float sum = 0.0f;
            for (int c = 0; c < BLOCK_N; c++)
                sum += ld[p][lr][c];
            ld[p][lr][0] = sum;
        }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (!live)
        return;
    float delta[NPOLES];
    for (int p = 0; p < NPOLES; p++) {
        dot[p] = ld[p][lr][0];
        delta[p] = pw[p] * dot[p];
    }

    for (int jj = lc; jj < ncols; jj += BLOCK_N) {
        const long e = at + (long)jj * rows;
        float w1 = 0.0f, w2 = 0.0f, ds[NSCORES];
        for (int m = 0; m < NSCORES; m++)
            ds[m] = 0.0f;
        if (jj >= lo && jj < hi) {
            DP_RAW_SCORES(raw, sp, dp2, e);
            DP_MOD_SCORES(sc, raw, jj);
            const float g1 = dp[e];
#if READS_V2
            const float g2 = dp2[e];
#else
            const float g2 = g1;
#endif
            for (int p = 0; p < NPOLES; p++) {
                const float s = sc[POLE_SCORE(p)], lg = POLE_LOGIT(p, s);
                const float w = DP_POLE_EXP(exp(lg - row_lse[p]), lg);
                const float cw = POLE_COEF(p, s) * pw[p];
                const bool to_v2 = POLE_TO_V2(p, s);
                if (to_v2)
                    w2 += w * cw;
                else
                    w1 += w * cw;
                ds[POLE_SCORE(p)] +=
                    w * (cw * (to_v2 ? g2 : g1) - delta[p]) * POLE_LOGIT_DS(p, s);
            }
            for (int m = 0; m < NSCORES; m++)
                ds[m] *= DP_SCORE_DS(raw[m]);
        }
        sp[e] = w1;
        dp[e] = ds[0];
        DP_STORE_THIRD(dp2, e, w2, ds);
    }

    if (rowdot && lc == 0)
        for (int p = 0; p < NPOLES; p++)
            rowdot[DP_STAT(p, b, h, i)] = dot[p];
}
