/* Tiled dipole attention forward, work-group layout (GPUs): a work-group owns BLOCK_M query
 * rows, one work-item per row; K/V tiles of BLOCK_N keys are staged in local memory and
 * shared by the group; each row keeps its running max m, sum l and accumulator acc per pole
 * in private memory. Never materialises the score matrix. */

#ifndef BLOCK_M
#define BLOCK_M 64
#endif
#ifndef BLOCK_N
#define BLOCK_N 32
#endif

__kernel __attribute__((reqd_work_group_size(BLOCK_M, 1, 1)))
void dipole_fwd(__global const float *q, dp_layout lq,
                __global const float *k, dp_layout lk,
                __global const float *v, dp_layout lv,
                __global const float *v2, dp_layout lv2,
                __global float *out, dp_layout lout,
                __global float *lse,                  /* [NPOLES, B, Hq, Nq] or NULL */
                __global const int *key_lengths,      /* [B] or NULL */
                __global const float *pole_weights,   /* [2, Hq] or NULL */
                int batch, int heads_q, int heads_kv, int seq_q, int seq_k,
                float scale, int window_left, int window_right)
{
    const int lid = get_local_id(0);
    const int row0 = get_group_id(0) * BLOCK_M;
    const int i = row0 + lid;
    const int h = get_group_id(1);
    const int b = get_group_id(2);
    const int hk = h / (heads_q / heads_kv);
    const int kl = key_lengths ? key_lengths[b] : seq_k;
    const bool live = i < seq_q;

    /* Keys any row of this tile sees: the loop bounds must be uniform for the barriers. */
    const int2 first = dp_visible_range(row0, kl, seq_q, window_left, window_right);
    const int2 last = dp_visible_range(min(row0 + BLOCK_M, seq_q) - 1, kl, seq_q, window_left,
                                       window_right);
    const int j_begin = first.x, j_end = max(last.y, first.y);
    const int2 mine = dp_visible_range(i, kl, seq_q, window_left, window_right);

    __local float k_tile[BLOCK_N * HEAD_DIM];
    __local float v_tile[BLOCK_N * HEAD_DIM];
#if READS_V2
    __local float v2_tile[BLOCK_N * HEAD_DIM];
#endif

    float q_row[HEAD_DIM];
    const long q_at = DP_ROW(lq, b, live ? i : 0, h);
    for (int c = 0; c < HEAD_DIM; c++)
        q_row[c] = live ? q[q_at + c] * scale : 0.0f;

    float m[NPOLES], l[NPOLES], acc[NPOLES][HEAD_DIM];
    for (int p = 0; p < NPOLES; p++) {
        m[p] = -INFINITY;
        l[p] = 0.0f;
        for (int c = 0; c < HEAD_DIM; c++)
            acc[p][c] = 0.0f;
    }

    for (int j0 = j_begin; j0 < j_end; j0 += BLOCK_N) {
        const int n = min(BLOCK_N, j_end - j0);
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int e = lid; e < n * HEAD_DIM; e += BLOCK_M) {
            const int jj = e / HEAD_DIM, c = e % HEAD_DIM;
            k_tile[e] = k[DP_ROW(lk, b, j0 + jj, hk) + c];
            v_tile[e] = v[DP_ROW(lv, b, j0 + jj, hk) + c];
#if READS_V2
            v2_tile[e] = v2[DP_ROW(lv2, b, j0 + jj, hk) + c];
#endif
        }
        barrier(CLK_LOCAL_MEM_FENCE);

        /* This row's visible part of the tile. */
        const int jj_lo = clamp(mine.x - j0, 0, n), jj_hi = clamp(mine.y - j0, 0, n);
        if (!live || jj_lo >= jj_hi)
            continue;

        float s_tile[BLOCK_N];
        float tile_max[NPOLES];
        for (int p = 0; p < NPOLES; p++)
            tile_max[p] = -INFINITY;
        for (int jj = jj_lo; jj < jj_hi; jj++) {
            float s = 0.0f;
            for (int c = 0; c < HEAD_DIM; c++)
                s = fma(q_row[c], k_tile[jj * HEAD_DIM + c], s);
            s_tile[jj] = s;
            for (int p = 0; p < NPOLES; p++)
                tile_max[p] = fmax(tile_max[p], POLE_LOGIT(p, s));
        }
        for (int p = 0; p < NPOLES; p++) {
            const float m_new = fmax(m[p], tile_max[p]);
            const float r = dp_rescale(m[p], m_new);
            m[p] = m_new;
            l[p] *= r;
            for (int c = 0; c < HEAD_DIM; c++)
                acc[p][c] *= r;
        }
        for (int jj = jj_lo; jj < jj_hi; jj++) {
            const float s = s_tile[jj];
            for (int p = 0; p < NPOLES; p++) {
                const float w = exp(POLE_LOGIT(p, s) - m[p]);
                l[p] += w;
                const float a = w * POLE_COEF(p, s);
#if READS_V2
                __local const float *val = (POLE_TO_V2(p, s) ? v2_tile : v_tile) + jj * HEAD_DIM;
#else
                __local const float *val = v_tile + jj * HEAD_DIM;
#endif
                for (int c = 0; c < HEAD_DIM; c++)
                    acc[p][c] = fma(a, val[c], acc[p][c]);
            }
        }
    }

    if (!live)
        return;
    const bool has_keys = mine.x < mine.y; /* a row that sees no key outputs 0, never NaN */
    float pole_w[NPOLES];
    for (int p = 0; p < NPOLES; p++)
        pole_w[p] = dp_pole_weight(pole_weights, p, h, heads_q);
    const long o_at = DP_ROW(lout, b, i, h);
    for (int c = 0; c < HEAD_DIM; c++) {
        float o = 0.0f;
        for (int p = 0; p < NPOLES; p++)
            o += has_keys ? pole_w[p] * (acc[p][c] / l[p]) : 0.0f;
        out[o_at + c] = o;
    }
    if (lse)
        for (int p = 0; p < NPOLES; p++)
            lse[DP_STAT(p, b, h, i)] =
                has_keys ? m[p] + log(l[p]) : -INFINITY;
}
