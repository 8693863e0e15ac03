/* Tiled dipole attention backward, FlashAttention-2 style: scores and weights are recomputed
 * from q, k and the forward's log-sum-exp, never stored as a matrix.
 *
 * Per pole p a row has weights P_j = exp(logit_p(s_j) - lse_p), a coefficient c_j
 * (POLE_COEF), a target value u_j (v, or v2 where POLE_TO_V2) and a pole weight w_p (alpha,
 * beta for TWO_POLE, else 1). With g = w_p dO and delta_p = g . O_p:
 *   du_j += P_j c_j g,   ds_j += P_j (c_j g . u_j - delta_p) dlogit_p/ds,
 *   dq_i = scale sum_j ds_j k_j,   dk_j = scale sum_i ds_j q_i.
 * Three kernels: dipole_bwd_pre (delta per row and pole), dipole_bwd_dkdv (a work-group per key
 * block walks the query rows of every query head that reads its K/V head: each key's gradient
 * is summed by one work-item in a fixed order — no atomics, bit-for-bit repeatable),
 * and dipole_bwd_dq (a work-group per query block walks its keys, as the forward does). d alpha,
 * d beta (dipole_bwd_dweights, per-row terms summed in a fixed order) are in cl/dipole_util.cl. */

#ifndef BLOCK_M
#define BLOCK_M 32 /* query rows per tile; work-items of pre and dq */
#endif
#ifndef BLOCK_N
#define BLOCK_N 32 /* keys per tile; work-items of dkdv */
#endif

/* delta_p = w_p dO . O_p per row (and rowdot_p = dO . O_p for the pole-weight gradients). With
 * one pole O_p is the forward output; TWO_POLE recomputes O+ and O- from q, k and lse. */
__kernel __attribute__((reqd_work_group_size(BLOCK_M, 1, 1)))
void dipole_bwd_pre(__global const float *q, dp_layout lq,
                    __global const float *k, dp_layout lk,
                    __global const float *v, dp_layout lv,
                    __global const float *v2, dp_layout lv2,
                    __global const float *out, dp_layout lout,
                    __global const float *dout, dp_layout ldout,
                    __global const float *lse,          /* [NPOLES, B, Hq, Nq] */
                    __global const int *key_lengths,    /* [B] or NULL */
                    __global const float *pole_weights, /* [2, Hq] or NULL */
                    __global float *delta,              /* [NPOLES, B, Hq, Nq] */
                    __global float *rowdot,             /* [NPOLES, B, Hq, Nq] or NULL */
                    int batch, int heads_q, int heads_kv, int seq_q, int seq_k,
                    float scale, int window_left, int window_right)
{
    DP_GROUP_QUERY_TILE(BLOCK_M);
    const long do_at = DP_ROW(ldout, b, live ? i : 0, h);
#if NPOLES == 1
    if (!live)
        return;
    const long o_at = DP_ROW(lout, b, i, h);
    float dot = 0.0f;
    for (int c = 0; c < HEAD_DIM; c++)
        dot = fma(dout[do_at + c], out[o_at + c], dot);
    delta[DP_STAT(0, b, h, i)] = dot;
    if (rowdot)
        rowdot[DP_STAT(0, b, h, i)] = dot;
#else
    const int j_begin = keys.x, j_end = keys.y;

    DP_KV_TILES(BLOCK_N); /* TWO_POLE reads v2 */

    float q_row[HEAD_DIM];
    const long q_at = DP_ROW(lq, b, live ? i : 0, h);
    for (int c = 0; c < HEAD_DIM; c++)
        q_row[c] = live ? q[q_at + c] * scale : 0.0f;
    float row_lse[NPOLES], acc[NPOLES][HEAD_DIM];
    for (int p = 0; p < NPOLES; p++) {
        row_lse[p] = live ? lse[DP_STAT(p, b, h, i)] : 0.0f;
        for (int c = 0; c < HEAD_DIM; c++)
            acc[p][c] = 0.0f;
    }
    for (int j0 = j_begin; j0 < j_end; j0 += BLOCK_N) {
        const int n = min(BLOCK_N, j_end - j0);
        barrier(CLK_LOCAL_MEM_FENCE);
        dp_stage_keys(k_tile, v_tile, v2_tile, k, lk, v, lv, v2, lv2, b, hk, j0, n, lid, BLOCK_M);
        barrier(CLK_LOCAL_MEM_FENCE);
        const int2 tr = dp_range_in_tile(mine, j0, n);
        const int jj_lo = tr.x, jj_hi = tr.y;
        if (!live)
            continue;
        for (int jj = jj_lo; jj < jj_hi; jj++) {
            float s = 0.0f;
            for (int c = 0; c < HEAD_DIM; c++)
                s = fma(q_row[c], k_tile[jj * HEAD_DIM + c], s);
            for (int p = 0; p < NPOLES; p++) {
                const float a = exp(POLE_LOGIT(p, s) - row_lse[p]) * POLE_COEF(p, s);
                __local const float *val = (POLE_TO_V2(p, s) ? v2_tile : v_tile) + jj * HEAD_DIM;
                for (int c = 0; c < HEAD_DIM; c++)
                    acc[p][c] = fma(a, val[c], acc[p][c]);
            }
        }
    }
    if (!live)
        return;
    for (int p = 0; p < NPOLES; p++) {
        float dot = 0.0f;
        for (int c = 0; c < HEAD_DIM; c++)
            dot = fma(dout[do_at + c], acc[p][c], dot);
        delta[DP_STAT(p, b, h, i)] = dp_pole_weight(pole_weights, p, h, heads_q) * dot;
        if (rowdot)
            rowdot[DP_STAT(p, b, h, i)] = dot;
    }
#endif
}

/* dK, dV (and dV2): a work-group owns BLOCK_N keys of one K/V head, one work-item per key,
 * and walks BLOCK_M-row query tiles of each query head in the group, staged in local memory. */
__kernel __attribute__((reqd_work_group_size(BLOCK_N, 1, 1)))
void dipole_bwd_dkdv(__global const float *q, dp_layout lq,
                     __global const float *k, dp_layout lk,
                     __global const float *v, dp_layout lv,
                     __global const float *v2, dp_layout lv2,
                     __global const float *dout, dp_layout ldout,
                     __global const float *lse,
                     __global const float *delta,
                     __global const int *key_lengths,
                     __global const float *pole_weights,
                     __global float *dk, dp_layout ldk,
                     __global float *dv, dp_layout ldv,
                     __global float *dv2, dp_layout ldv2,
                     int batch, int heads_q, int heads_kv, int seq_q, int seq_k,
                     float scale, int window_left, int window_right)
{
    const int lid = get_local_id(0);
    const int j0 = get_group_id(0) * BLOCK_N;
    const int j = j0 + lid;
    const int hk = get_group_id(1);
    const int b = get_group_id(2);
    const int group = heads_q / heads_kv;
    const int kl = DP_KEY_LENGTH(b);
    const bool live = j < seq_k;
    const int j_last = min(j0 + BLOCK_N, kl) - 1; /* the block's last key any row can see */

    __local float q_tile[BLOCK_M * HEAD_DIM];  /* q * scale */
    __local float do_tile[BLOCK_M * HEAD_DIM];
    __local float lse_tile[NPOLES * BLOCK_M];
    __local float delta_tile[NPOLES * BLOCK_M];
    __local int2 range_tile[BLOCK_M];

    float k_row[HEAD_DIM], v_row[HEAD_DIM], dk_acc[HEAD_DIM], dv_acc[HEAD_DIM];
#if READS_V2
    float v2_row[HEAD_DIM], dv2_acc[HEAD_DIM];
#endif
    const long k_at = DP_ROW(lk, b, live ? j : 0, hk);
    const long v_at = DP_ROW(lv, b, live ? j : 0, hk);
#if READS_V2
    const long v2_at = DP_ROW(lv2, b, live ? j : 0, hk);
#endif
    for (int c = 0; c < HEAD_DIM; c++) {
        k_row[c] = live ? k[k_at + c] : 0.0f;
        v_row[c] = live ? v[v_at + c] : 0.0f;
        dk_acc[c] = 0.0f;
        dv_acc[c] = 0.0f;
#if READS_V2
        v2_row[c] = live ? v2[v2_at + c] : 0.0f;
        dv2_acc[c] = 0.0f;
#endif
    }

    for (int g = 0; g < group; g++) {
        const int h = hk * group + g;
        float pole_w[NPOLES];
        for (int p = 0; p < NPOLES; p++)
            pole_w[p] = dp_pole_weight(pole_weights, p, h, heads_q);
        for (int i0 = 0; i0 < seq_q; i0 += BLOCK_M) {
            const int m = min(BLOCK_M, seq_q - i0);
            /* Rows' visible ranges only grow with i: skip tiles that cannot see this block
             * (a uniform decision, so the barriers below stay uniform). */
            const int2 seen = dp_tile_visible_range(i0, i0 + m, kl, seq_q, window_left,
                                                    window_right);
            if (j_last < j0 || seen.y <= j0 || seen.x > j_last || seen.x >= seen.y)
                continue;
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int e = lid; e < m * HEAD_DIM; e += BLOCK_N) {
                const int r = e / HEAD_DIM, c = e % HEAD_DIM;
                q_tile[e] = q[DP_ROW(lq, b, i0 + r, h) + c] * scale;
                do_tile[e] = dout[DP_ROW(ldout, b, i0 + r, h) + c];
            }
            for (int r = lid; r < m; r += BLOCK_N) {
                range_tile[r] = dp_visible_range(i0 + r, kl, seq_q, window_left, window_right);
                for (int p = 0; p < NPOLES; p++) {
                    lse_tile[p * BLOCK_M + r] = lse[DP_STAT(p, b, h, i0 + r)];
                    delta_tile[p * BLOCK_M + r] = delta[DP_STAT(p, b, h, i0 + r)];
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            if (!live)
                continue;
            for (int r = 0; r < m; r++) {
                const int2 rg = range_tile[r];
                if (j < rg.x || j >= rg.y)
                    continue;
                __local const float *qr = q_tile + r * HEAD_DIM;
                __local const float *dor = do_tile + r * HEAD_DIM;
                float s = 0.0f;
                for (int c = 0; c < HEAD_DIM; c++)
                    s = fma(qr[c], k_row[c], s);
                float ds = 0.0f;
                for (int p = 0; p < NPOLES; p++) {
                    const float w = exp(POLE_LOGIT(p, s) - lse_tile[p * BLOCK_M + r]);
                    const float coef = POLE_COEF(p, s);
                    const float a = w * coef * pole_w[p]; /* du += a dO */
                    float gu = 0.0f;
#if READS_V2
                    if (POLE_TO_V2(p, s)) {
                        for (int c = 0; c < HEAD_DIM; c++) {
                            gu = fma(dor[c], v2_row[c], gu);
                            dv2_acc[c] = fma(a, dor[c], dv2_acc[c]);
                        }
                    } else
#endif
                    {
                        for (int c = 0; c < HEAD_DIM; c++) {
                            gu = fma(dor[c], v_row[c], gu);
                            dv_acc[c] = fma(a, dor[c], dv_acc[c]);
                        }
                    }
                    ds += w * (coef * pole_w[p] * gu - delta_tile[p * BLOCK_M + r]) *
                          POLE_LOGIT_DS(p, s);
                }
                for (int c = 0; c < HEAD_DIM; c++)
                    dk_acc[c] = fma(ds, qr[c], dk_acc[c]);
            }
        }
    }
    if (!live)
        return;
    const long dk_at = DP_ROW(ldk, b, j, hk), dv_at = DP_ROW(ldv, b, j, hk);
#if READS_V2
    const long dv2_at = DP_ROW(ldv2, b, j, hk);
#endif
    for (int c = 0; c < HEAD_DIM; c++) {
        dk[dk_at + c] = dk_acc[c];
        dv[dv_at + c] = dv_acc[c];
#if READS_V2
        dv2[dv2_at + c] = dv2_acc[c];
#endif
    }
}

/* dQ: a work-group owns BLOCK_M query rows, one work-item per row, and walks K/V tiles of
 * BLOCK_N keys in local memory, as the forward does. */
__kernel __attribute__((reqd_work_group_size(BLOCK_M, 1, 1)))
void dipole_bwd_dq(__global const float *q, dp_layout lq,
                   __global const float *k, dp_layout lk,
                   __global const float *v, dp_layout lv,
                   __global const float *v2, dp_layout lv2,
                   __global const float *dout, dp_layout ldout,
                   __global const float *lse,
                   __global const float *delta,
                   __global const int *key_lengths,
                   __global const float *pole_weights,
                   __global float *dq, dp_layout ldq,
                   int batch, int heads_q, int heads_kv, int seq_q, int seq_k,
                   float scale, int window_left, int window_right)
{
    DP_GROUP_QUERY_TILE(BLOCK_M);
    const int j_begin = keys.x, j_end = keys.y;

    DP_KV_TILES(BLOCK_N);

    float q_row[HEAD_DIM], do_row[HEAD_DIM], dq_acc[HEAD_DIM];
    const long q_at = DP_ROW(lq, b, live ? i : 0, h);
    const long do_at = DP_ROW(ldout, b, live ? i : 0, h);
    for (int c = 0; c < HEAD_DIM; c++) {
        q_row[c] = live ? q[q_at + c] * scale : 0.0f;
        do_row[c] = live ? dout[do_at + c] : 0.0f;
        dq_acc[c] = 0.0f;
    }
    float row_lse[NPOLES], row_delta[NPOLES], pole_w[NPOLES];
    for (int p = 0; p < NPOLES; p++) {
        row_lse[p] = live ? lse[DP_STAT(p, b, h, i)] : 0.0f;
        row_delta[p] = live ? delta[DP_STAT(p, b, h, i)] : 0.0f;
        pole_w[p] = dp_pole_weight(pole_weights, p, h, heads_q);
    }

    for (int j0 = j_begin; j0 < j_end; j0 += BLOCK_N) {
        const int n = min(BLOCK_N, j_end - j0);
        barrier(CLK_LOCAL_MEM_FENCE);
        dp_stage_keys(k_tile, v_tile, v2_tile, k, lk, v, lv, v2, lv2, b, hk, j0, n, lid, BLOCK_M);
        barrier(CLK_LOCAL_MEM_FENCE);
        const int2 tr = dp_range_in_tile(mine, j0, n);
        const int jj_lo = tr.x, jj_hi = tr.y;
        if (!live)
            continue;
        for (int jj = jj_lo; jj < jj_hi; jj++) {
            __local const float *kr = k_tile + jj * HEAD_DIM;
            float s = 0.0f;
            for (int c = 0; c < HEAD_DIM; c++)
                s = fma(q_row[c], kr[c], s);
            float ds = 0.0f;
            for (int p = 0; p < NPOLES; p++) {
                const float w = exp(POLE_LOGIT(p, s) - row_lse[p]);
                __local const float *val = (POLE_TO_V2(p, s) ? v2_tile : v_tile) + jj * HEAD_DIM;
                float gu = 0.0f;
                for (int c = 0; c < HEAD_DIM; c++)
                    gu = fma(do_row[c], val[c], gu);
                ds += w * (POLE_COEF(p, s) * pole_w[p] * gu - row_delta[p]) * POLE_LOGIT_DS(p, s);
            }
            for (int c = 0; c < HEAD_DIM; c++)
                dq_acc[c] = fma(ds, kr[c], dq_acc[c]);
        }
    }
    if (!live)
        return;
    const long dq_at = DP_ROW(ldq, b, i, h);
    for (int c = 0; c < HEAD_DIM; c++)
        dq[dq_at + c] = dq_acc[c] * scale;
}
