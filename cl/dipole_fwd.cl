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
    DP_GROUP_QUERY_TILE(BLOCK_M);
    const int j_begin = keys.x, j_end = keys.y;

    DP_KV_TILES(BLOCK_N);

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
        dp_stage_keys(k_tile, v_tile, v2_tile, k, lk, v, lv, v2, lv2, b, hk, j0, n, lid, BLOCK_M);
        barrier(CLK_LOCAL_MEM_FENCE);

        /* This row's visible part of the tile. */
        const int2 tr = dp_range_in_tile(mine, j0, n);
        const int jj_lo = tr.x, jj_hi = tr.y;
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
