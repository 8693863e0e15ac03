/* Tiled dipole attention backward, work-group layout (GPUs), in the manner of FlashAttention-2:
 * scores and weights are recomputed from q, k and the forward's log-sum-exp, never stored.
 *
 * Per pole p a row has weights P_j = exp(logit_p(s_j) - lse_p), a coefficient c_j
 * (POLE_COEF), a target value u_j (v, or v2 where POLE_TO_V2) and a pole weight w_p (alpha,
 * beta for TWO_POLE, else 1). With g = w_p dO and delta_p = g . O_p:
 *   du_j += P_j c_j g,   ds_j += P_j (c_j g . u_j - delta_p) dlogit_p/ds,
 *   dq_i = scale sum_j ds_j k_j,   dk_j = scale sum_i ds_j q_i.
 * The variant sees each recomputed score through the modifiers (DP_SCORE: soft-capping, ALiBi,
 * a bias), so ds_j also takes soft-capping's factor d score / d (scale q.k) (DP_SCORE_DS), and
 * a key a bias excludes (-inf) has no terms at all. DIFF's poles score with their own q and k
 * heads (score map POLE_SCORE(p)): each kernel walks its tiles once per score map (pass sm),
 * with that map's q or k rows, for the poles that rank it; dq and dk come out per pass, on
 * the map's heads, dv sums every pass. Packed (DP_VARLEN), work-group b walks
 * sequence b: its tensors rebased to the sequence's first rows, a tile past its rows or keys
 * doing nothing.
 * Three kernels on the forward's WG_ROWS x WG_COLS grid of work-items (cl/dipole_common.cl):
 * dipole_bwd_pre (delta per row and pole), dipole_bwd_dkdv (a work-group per key block walks
 * the query tiles of every query head that reads its K/V head, each key's gradient summed by
 * the same items in a fixed order: no atomics, bit-for-bit repeatable) and dipole_bwd_dq (a
 * work-group per query tile walks its key tiles). Both gradient kernels compute two products
 * of dot products per tile — S = Q K^T and, per value stream, G = dO U^T — then the weights
 * P and dS into local tiles, then the sums dU += P^T dO, dK += dS^T Q or dQ += dS K.
 * d alpha, d beta (dipole_bwd_dweights) are in cl/dipole_util.cl. */

#ifndef BLOCK_M
#define BLOCK_M 16 /* query rows per tile */
#endif
#ifndef BLOCK_N
#define BLOCK_N 32 /* keys per tile */
#endif
#ifndef WORK_GROUP
#define WORK_GROUP 128
#endif
/* dq and pre: rows per item x keys per item; dkdv: keys per item x rows per item. */
#define Q_RPI (BLOCK_M / WG_ROWS)
#define Q_KPI (BLOCK_N / WG_COLS)
#define K_KPI (BLOCK_N / WG_ROWS)
#define K_RPI (BLOCK_M / WG_COLS)
#if WG_ROWS * WG_COLS != WORK_GROUP || Q_RPI * WG_ROWS != BLOCK_M || Q_KPI * WG_COLS != BLOCK_N \
    || K_KPI * WG_ROWS != BLOCK_N || K_RPI * WG_COLS != BLOCK_M
#error "WG_ROWS and WG_COLS must both divide BLOCK_M and BLOCK_N"
#endif

/* Local strides: rows of HD4 + 1 chunks for q and k, HD4_V + 1 for dO and v
 * (bank-conflict-free dot products), weight rows 4 floats longer than their tile. The K/V
 * tile takes K and V in turn. */
#define K_STRIDE (HD4 + 1)
#define V_STRIDE (HD4_V + 1)
#define KV_CHUNKS (BLOCK_N * (K_STRIDE > V_STRIDE ? K_STRIDE : V_STRIDE))
#define W_STRIDE_Q (BLOCK_N + 4)
#define W_STRIDE_K (BLOCK_M + 4)

/* Whether pass sm (over score map sm) takes pole p. */
#define IN_PASS(p, sm) (POLE_SCORE(p) == (sm))
/* The value gradients a dkdv work-group sums: dv, and dv2 where the variant reads v2 (stream t
 * lands on STREAM_V2(t); DIFF's two streams both on dv). */
#define NDU (READS_V2 ? 2 : 1)

/* Rows [i0, i0 + m) of score map sm's q head for query head h, times scale, into q_tile. */
#define DP_STAGE_Q(i0, m, h, sm)                                                               \
    dp_stage_rows4(q_tile, K_STRIDE, q, lq, b, i0, BLOCK_M, m, DP_POLE_HEAD(h, sm), scale, lid, \
                   WORK_GROUP, HEAD_DIM)

/* A key whose score a bias made -inf (DP_EXCLUDED) is out of every pole: no weight, no
 * gradient (its terms are left out, not weighed by 0: its value row may be inf). */

/* Per stream t of pass sm, g[t][a][b] = dO row (ty + WG_ROWS a) . U_t row (tx + WG_COLS b)
 * (0 on the other passes' streams), then s[a][b] = Q row . K row (score map sm's k head),
 * for keys [j0, j0 + n) staged in turn into kv (K stays there). rows_ty: whether the grid's
 * ty side holds query rows (dq, pre) or keys (dkdv). */
#define DP_TILE_DOTS(NA, NB, rows_ty, q_tile, do_tile, kv, j0, n, sm)                         \
    do {                                                                                       \
        DP_UNROLL for (int t_ = 0; t_ < NSTREAMS; t_++) {                                      \
            if (!IN_PASS(STREAM_POLE(t_), sm)) {                                               \
                DP_UNROLL for (int a_ = 0; a_ < (NA); a_++)                                    \
                    DP_UNROLL for (int b_ = 0; b_ < (NB); b_++)                                \
                        g[t_][a_][b_] = 0.0f;                                                  \
                continue;                                                                      \
            }                                                                                  \
            barrier(CLK_LOCAL_MEM_FENCE);                                                      \
            dp_stage_rows4(kv, V_STRIDE, STREAM_V2(t_) ? v2 : v, STREAM_V2(t_) ? lv2 : lv, b,  \
                           j0, BLOCK_N, n, hk, 1.0f, lid, WORK_GROUP, HEAD_DIM_V);             \
            barrier(CLK_LOCAL_MEM_FENCE);                                                      \
            if (rows_ty)                                                                       \
                DP_MICRO_DOTS(g[t_], NA, do_tile, V_STRIDE, NB, kv, V_STRIDE, HD4_V);          \
            else                                                                               \
                DP_MICRO_DOTS(g[t_], NA, kv, V_STRIDE, NB, do_tile, V_STRIDE, HD4_V);          \
        }                                                                                      \
        barrier(CLK_LOCAL_MEM_FENCE);                                                          \
        dp_stage_rows4(kv, K_STRIDE, k, lk, b, j0, BLOCK_N, n, DP_POLE_HEAD(hk, sm), 1.0f,     \
                       lid, WORK_GROUP, HEAD_DIM);                                             \
        barrier(CLK_LOCAL_MEM_FENCE);                                                          \
        if (rows_ty)                                                                           \
            DP_MICRO_DOTS(s, NA, q_tile, K_STRIDE, NB, kv, K_STRIDE, HD4);                     \
        else                                                                                   \
            DP_MICRO_DOTS(s, NA, kv, K_STRIDE, NB, q_tile, K_STRIDE, HD4);                     \
    } while (0)

/* One key's terms in one row in pass sm, given its score sc, value dots gt[t] (G per
 * stream), the row's lse and delta per pole and the head's pole weights: its weight per
 * stream into pw[t] (P c w_p, which multiplies dO into du; STREAM_AWAY on a stream it does not
 * land on) and its score gradient (ds, without scale), over the poles of the pass. */
#define DP_KEY_TERMS(sc, gt, row_lse, row_delta, pole_w, pw, ds, sm)                           \
    do {                                                                                       \
        ds = 0.0f;                                                                             \
        DP_UNROLL for (int t_ = 0; t_ < NSTREAMS; t_++)                                        \
            pw[t_] = STREAM_AWAY;                                                              \
        DP_UNROLL for (int p_ = 0; p_ < NPOLES; p_++) {                                        \
            if (!IN_PASS(p_, sm))                                                              \
                continue;                                                                      \
            const float w_ = exp(POLE_LOGIT(p_, sc) - row_lse[p_]);                            \
            const float c_ = POLE_COEF(p_, sc) * pole_w[p_];                                   \
            /* the stream by comparison, not as an index: ROUTED's depends on the data, and \
             * an array indexed at run time leaves the registers */                            \
            float g_ = gt[0];                                                                  \
            DP_UNROLL for (int t_ = 0; t_ < NSTREAMS; t_++)                                    \
                if (t_ == STREAM_OF(p_, sc)) {                                                 \
                    pw[t_] += w_ * c_;                                                         \
                    g_ = gt[t_];                                                               \
                }                                                                              \
            ds += w_ * (c_ * g_ - row_delta[p_]) * POLE_LOGIT_DS(p_, sc);                      \
        }                                                                                      \
    } while (0)

/* delta_p = w_p dO . O_p per row (and rowdot_p = dO . O_p for the pole-weight gradients). With
 * one pole O_p is the forward output; TWO_POLE and DIFF recompute each pole's dO . O_p from
 * q, k, v (v2) and lse as sum_j P_j (dO . u_j). */
__kernel __attribute__((reqd_work_group_size(WORK_GROUP, 1, 1)))
void dipole_bwd_pre(__global const dp_storage *q, dp_layout lq,
                    __global const dp_storage *k, dp_layout lk,
                    __global const dp_storage *v, dp_layout lv,
                    __global const dp_storage *v2, dp_layout lv2,
                    __global const dp_storage *out, dp_layout lout,
                    __global const dp_storage *dout, dp_layout ldout,
                    __global const float *lse,          /* [NPOLES, B, Hq, Nq] */
                    __global const int *key_lengths,    /* [B] or NULL */
                    __global const float *pole_weights, /* [2, Hq] or NULL */
                    __global float *delta,              /* [NPOLES, B, Hq, Nq] */
                    __global float *rowdot,             /* [NPOLES, B, Hq, Nq] or NULL */
                    int batch, int heads_q, int heads_kv, int seq_q, int seq_k,
                    float scale, int window_left, int window_right, DP_SCORE_ARGS)
{
    DP_QUERY_TILE();
    DP_REBASE_Q(lq, b);
    DP_REBASE_Q(lout, b);
    DP_REBASE_Q(ldout, b);
    DP_REBASE_K(lk, b);
    DP_REBASE_K(lv, b);
    DP_REBASE_K(lv2, b);
    __local float red[NPOLES][BLOCK_M * WG_COLS]; /* per-item parts of each row's dot */
    float part[NPOLES][Q_RPI];
    (void)first, (void)last; /* pre tests each key against its row: no whole-tile shortcut */
#if NPOLES == 1
    (void)keys, (void)hk;
    DP_UNROLL for (int a = 0; a < Q_RPI; a++) {
        const int r = ty + WG_ROWS * a;
        part[0][a] = 0.0f;
        if (r >= rows)
            continue;
        const long do_at = DP_ROW(ldout, b, row0 + r, h), o_at = DP_ROW(lout, b, row0 + r, h);
        for (int c = tx; c < HEAD_DIM_V; c += WG_COLS)
            part[0][a] = fma(dp_load(dout, do_at + c), dp_load(out, o_at + c), part[0][a]);
    }
#else
    __local float4 q_tile[BLOCK_M * K_STRIDE]; /* q * scale */
    __local float4 do_tile[BLOCK_M * V_STRIDE];
    __local float4 kv[KV_CHUNKS];
    DP_STAGE_Q(row0, rows, h, 0);
    dp_stage_rows4(do_tile, V_STRIDE, dout, ldout, b, row0, BLOCK_M, rows, h, 1.0f, lid,
                   WORK_GROUP, HEAD_DIM_V);
    int2 mine[Q_RPI];
    float row_lse[Q_RPI][NPOLES];
    DP_UNROLL for (int a = 0; a < Q_RPI; a++) {
        const int r = ty + WG_ROWS * a;
        mine[a] = r < rows ? dp_visible_range(row0 + r, kl, seq_q, window_left, window_right)
                           : (int2)(0, 0);
        DP_UNROLL for (int p = 0; p < NPOLES; p++) {
            row_lse[a][p] = r < rows ? lse[DP_STAT(p, b, h, row0 + r)] : 0.0f;
            part[p][a] = 0.0f;
        }
    }
    DP_UNROLL for (int sm = 0; sm < NSCORES; sm++) {
        if (sm > 0) {
            barrier(CLK_LOCAL_MEM_FENCE); /* every item is past the last pass's S */
            DP_STAGE_Q(row0, rows, h, sm);
        }
        for (int j0 = keys.x; j0 < keys.y; j0 += BLOCK_N) {
            const int n = min(BLOCK_N, keys.y - j0);
            float s[Q_RPI][Q_KPI], g[NSTREAMS][Q_RPI][Q_KPI];
            DP_TILE_DOTS(Q_RPI, Q_KPI, 1, q_tile, do_tile, kv, j0, n, sm);
            DP_UNROLL for (int a = 0; a < Q_RPI; a++)
                DP_UNROLL for (int e = 0; e < Q_KPI; e++) {
                    const int j = j0 + tx + WG_COLS * e;
                    if (j < mine[a].x || j >= mine[a].y)
                        continue;
                    const float sc = DP_SCORE(s[a][e], b, h, row0 + ty + WG_ROWS * a, j, kl);
                    if (DP_EXCLUDED(sc))
                        continue;
                    DP_UNROLL for (int p = 0; p < NPOLES; p++)
                        if (IN_PASS(p, sm))
                            part[p][a] += exp(POLE_LOGIT(p, sc) - row_lse[a][p]) *
                                          POLE_COEF(p, sc) * g[STREAM_OF(p, sc)][a][e];
                }
        }
    }
#endif
    DP_UNROLL for (int a = 0; a < Q_RPI; a++)
        DP_UNROLL for (int p = 0; p < NPOLES; p++)
            red[p][(ty + WG_ROWS * a) * WG_COLS + tx] = part[p][a];
    barrier(CLK_LOCAL_MEM_FENCE);
    DP_UNROLL for (int a = 0; a < Q_RPI; a++) {
        const int r = ty + WG_ROWS * a;
        if (r >= rows || tx != 0)
            continue;
        DP_UNROLL for (int p = 0; p < NPOLES; p++) {
            const float dot = dp_row_sum(red[p], r, WG_COLS);
            delta[DP_STAT(p, b, h, row0 + r)] = dp_pole_weight(pole_weights, p, h, heads_q) * dot;
            if (rowdot)
                rowdot[DP_STAT(p, b, h, row0 + r)] = dot;
        }
    }
}

/* dK, dV (and dV2): a work-group owns BLOCK_N keys of one K/V head; item (ty, tx) owns keys
 * ty + WG_ROWS a and, of each query tile, rows tx + WG_COLS e (for S^T and G^T) and head-dim
 * chunks tx + WG_COLS ci (of its keys' gradients). */
__kernel __attribute__((reqd_work_group_size(WORK_GROUP, 1, 1)))
void dipole_bwd_dkdv(__global const dp_storage *q, dp_layout lq,
                     __global const dp_storage *k, dp_layout lk,
                     __global const dp_storage *v, dp_layout lv,
                     __global const dp_storage *v2, dp_layout lv2,
                     __global const dp_storage *dout, dp_layout ldout,
                     __global const float *lse,
                     __global const float *delta,
                     __global const int *key_lengths,
                     __global const float *pole_weights,
                     __global dp_storage *dk, dp_layout ldk,
                     __global dp_storage *dv, dp_layout ldv,
                     __global dp_storage *dv2, dp_layout ldv2,
                     int batch, int heads_q, int heads_kv, int seq_q, int seq_k,
                     float scale, int window_left, int window_right, DP_SCORE_ARGS)
{
    const int lid = get_local_id(0), ty = lid / WG_COLS, tx = lid % WG_COLS;
    const int j0 = get_group_id(0) * BLOCK_N;
    const int hk = get_group_id(1), b = get_group_id(2);
    DP_SEQUENCE(b);
    DP_REBASE_Q(lq, b);
    DP_REBASE_Q(ldout, b);
    DP_REBASE_K(lk, b);
    DP_REBASE_K(lv, b);
    DP_REBASE_K(lv2, b);
    DP_REBASE_K(ldk, b);
    DP_REBASE_K(ldv, b);
    DP_REBASE_K(ldv2, b);
    const int group = heads_q / heads_kv;
    const int kl = DP_KEY_LENGTH(b);
    const int n = min(BLOCK_N, seq_k - j0);
    const int j_last = min(j0 + BLOCK_N, kl) - 1; /* the block's last key any row can see */
    /* A block past its sequence's keys walks no query tile (no return before the barriers:
     * see DP_QUERY_TILE). */
    const int q_rows = DP_VARLEN && j0 >= seq_k ? 0 : seq_q;

    __local float4 q_tile[BLOCK_M * K_STRIDE]; /* q * scale */
    __local float4 do_tile[BLOCK_M * V_STRIDE];
    __local float4 kv[KV_CHUNKS];
    __local float w_tile[NSTREAMS + 1][BLOCK_N * W_STRIDE_K]; /* P per stream, then dS */
    __local int2 range_tile[BLOCK_M];

    float4 dk_acc[K_KPI][CPI], du_acc[NDU][K_KPI][CPI_V];
    DP_UNROLL for (int a = 0; a < K_KPI; a++)
        DP_UNROLL for (int ci = 0; ci < CPI_V; ci++)
            DP_UNROLL for (int u = 0; u < NDU; u++)
                du_acc[u][a][ci] = (float4)0.0f;

    DP_UNROLL for (int sm = 0; sm < NSCORES; sm++) {
        DP_UNROLL for (int a = 0; a < K_KPI; a++)
            DP_UNROLL for (int ci = 0; ci < CPI; ci++)
                dk_acc[a][ci] = (float4)0.0f;
        for (int gi = 0; gi < group; gi++) {
            const int h = hk * group + gi;
            float pole_w[NPOLES];
            DP_UNROLL for (int p = 0; p < NPOLES; p++)
                pole_w[p] = dp_pole_weight(pole_weights, p, h, heads_q);
            for (int i0 = 0; i0 < q_rows; i0 += BLOCK_M) {
                const int m = min(BLOCK_M, seq_q - i0);
                /* Rows' visible ranges only grow with i: skip tiles that cannot see this block
                 * (uniform over the group, so the barriers below stay uniform). */
                const int2 seen = dp_tile_visible_range(i0, i0 + m, kl, seq_q, window_left,
                                                        window_right);
                if (j_last < j0 || seen.y <= j0 || seen.x > j_last || seen.x >= seen.y)
                    continue;
                const int2 first = dp_visible_range(i0, kl, seq_q, window_left, window_right);
                const int2 last =
                    dp_visible_range(i0 + m - 1, kl, seq_q, window_left, window_right);
                const bool full = m == BLOCK_M && n == BLOCK_N && last.x <= j0 &&
                                  first.y >= j0 + BLOCK_N;
                barrier(CLK_LOCAL_MEM_FENCE);
                DP_STAGE_Q(i0, m, h, sm);
                dp_stage_rows4(do_tile, V_STRIDE, dout, ldout, b, i0, BLOCK_M, m, h, 1.0f, lid,
                               WORK_GROUP, HEAD_DIM_V);
                for (int r = lid; r < BLOCK_M; r += WORK_GROUP)
                    range_tile[r] = r < m ? dp_visible_range(i0 + r, kl, seq_q, window_left,
                                                             window_right)
                                          : (int2)(0, 0);
                float s[K_KPI][K_RPI], g[NSTREAMS][K_KPI][K_RPI];
                DP_TILE_DOTS(K_KPI, K_RPI, 0, q_tile, do_tile, kv, j0, n, sm);

                DP_UNROLL for (int e = 0; e < K_RPI; e++) {
                    const int r = tx + WG_COLS * e;
                    const int2 rg = range_tile[r];
                    float row_lse[NPOLES], row_delta[NPOLES];
                    DP_UNROLL for (int p = 0; p < NPOLES; p++) {
                        row_lse[p] = r < m ? lse[DP_STAT(p, b, h, i0 + r)] : 0.0f;
                        row_delta[p] = r < m ? delta[DP_STAT(p, b, h, i0 + r)] : 0.0f;
                    }
                    DP_UNROLL for (int a = 0; a < K_KPI; a++) {
                        const int jj = ty + WG_ROWS * a, j = j0 + jj;
                        float pw[NSTREAMS], gt[NSTREAMS], ds = 0.0f;
                        DP_UNROLL for (int t = 0; t < NSTREAMS; t++) {
                            gt[t] = g[t][a][e];
                            pw[t] = 0.0f;
                        }
                        if (full || (j >= rg.x && j < rg.y)) {
                            const float sc = DP_SCORE(s[a][e], b, h, i0 + r, j, kl);
                            if (!DP_EXCLUDED(sc)) {
                                DP_KEY_TERMS(sc, gt, row_lse, row_delta, pole_w, pw, ds, sm);
                                ds *= DP_SCORE_DS(s[a][e]);
                            }
                        }
                        DP_UNROLL for (int t = 0; t < NSTREAMS; t++)
                            if (IN_PASS(STREAM_POLE(t), sm))
                                w_tile[t][jj * W_STRIDE_K + r] = pw[t];
                        w_tile[NSTREAMS][jj * W_STRIDE_K + r] = ds;
                    }
                }
                barrier(CLK_LOCAL_MEM_FENCE);
#define UNSEEN(a, r)                                                                           \
    (!full && (j0 + ty + WG_ROWS * (a) < range_tile[r].x ||                                    \
               j0 + ty + WG_ROWS * (a) >= range_tile[r].y))
#define UNSEEN_OR_AWAY(a, r, w) (DP_AWAY(w) || UNSEEN(a, r))
#define UNSEEN_W(a, r, w) UNSEEN(a, r)
                DP_UNROLL for (int t = 0; t < NSTREAMS; t++)
                    if (IN_PASS(STREAM_POLE(t), sm))
                        DP_MICRO_ACC(du_acc[STREAM_V2(t)], K_KPI, CPI_V, w_tile[t], W_STRIDE_K,
                                     m, do_tile, V_STRIDE, HD4_V, UNSEEN_OR_AWAY);
                DP_MICRO_ACC(dk_acc, K_KPI, CPI, w_tile[NSTREAMS], W_STRIDE_K, m, q_tile,
                             K_STRIDE, HD4, UNSEEN_W);
#undef UNSEEN_W
#undef UNSEEN_OR_AWAY
#undef UNSEEN
            }
        }

        DP_UNROLL for (int a = 0; a < K_KPI; a++) {
            const int j = j0 + ty + WG_ROWS * a;
            if (j >= seq_k)
                continue;
            DP_UNROLL for (int ci = 0; ci < CPI; ci++) {
                const int c4 = tx + WG_COLS * ci;
                if (c4 >= HD4)
                    break;
                dp_store_chunk4(dk, DP_ROW(ldk, b, j, DP_POLE_HEAD(hk, sm)) + 4 * c4, c4,
                                dk_acc[a][ci], HEAD_DIM);
            }
        }
    }

    DP_UNROLL for (int a = 0; a < K_KPI; a++) {
        const int j = j0 + ty + WG_ROWS * a;
        if (j >= seq_k)
            continue;
        DP_UNROLL for (int ci = 0; ci < CPI_V; ci++) {
            const int c4 = tx + WG_COLS * ci;
            if (c4 >= HD4_V)
                break;
            DP_UNROLL for (int u = 0; u < NDU; u++) {
                if (u == 1)
                    dp_store_chunk4(dv2, DP_ROW(ldv2, b, j, hk) + 4 * c4, c4, du_acc[u][a][ci],
                                    HEAD_DIM_V);
                else
                    dp_store_chunk4(dv, DP_ROW(ldv, b, j, hk) + 4 * c4, c4, du_acc[u][a][ci],
                                    HEAD_DIM_V);
            }
        }
    }
}

/* dQ: a work-group owns BLOCK_M query rows and walks their key tiles, as the forward does
 * (once per score map, each pass writing its map's dq head). */
__kernel __attribute__((reqd_work_group_size(WORK_GROUP, 1, 1)))
void dipole_bwd_dq(__global const dp_storage *q, dp_layout lq,
                   __global const dp_storage *k, dp_layout lk,
                   __global const dp_storage *v, dp_layout lv,
                   __global const dp_storage *v2, dp_layout lv2,
                   __global const dp_storage *dout, dp_layout ldout,
                   __global const float *lse,
                   __global const float *delta,
                   __global const int *key_lengths,
                   __global const float *pole_weights,
                   __global dp_storage *dq, dp_layout ldq,
                   int batch, int heads_q, int heads_kv, int seq_q, int seq_k,
                   float scale, int window_left, int window_right, DP_SCORE_ARGS)
{
    DP_QUERY_TILE();
    DP_REBASE_Q(lq, b);
    DP_REBASE_Q(ldout, b);
    DP_REBASE_Q(ldq, b);
    DP_REBASE_K(lk, b);
    DP_REBASE_K(lv, b);
    DP_REBASE_K(lv2, b);
    __local float4 q_tile[BLOCK_M * K_STRIDE]; /* q * scale */
    __local float4 do_tile[BLOCK_M * V_STRIDE];
    __local float4 kv[KV_CHUNKS];
    __local float ds_tile[BLOCK_M * W_STRIDE_Q];
    DP_STAGE_Q(row0, rows, h, 0);
    dp_stage_rows4(do_tile, V_STRIDE, dout, ldout, b, row0, BLOCK_M, rows, h, 1.0f, lid,
                   WORK_GROUP, HEAD_DIM_V);

    int2 mine[Q_RPI];
    float row_lse[Q_RPI][NPOLES], row_delta[Q_RPI][NPOLES], pole_w[NPOLES];
    float4 dq_acc[Q_RPI][CPI];
    DP_UNROLL for (int p = 0; p < NPOLES; p++)
        pole_w[p] = dp_pole_weight(pole_weights, p, h, heads_q);
    DP_UNROLL for (int a = 0; a < Q_RPI; a++) {
        const int r = ty + WG_ROWS * a;
        mine[a] = r < rows ? dp_visible_range(row0 + r, kl, seq_q, window_left, window_right)
                           : (int2)(0, 0);
        DP_UNROLL for (int p = 0; p < NPOLES; p++) {
            row_lse[a][p] = r < rows ? lse[DP_STAT(p, b, h, row0 + r)] : 0.0f;
            row_delta[a][p] = r < rows ? delta[DP_STAT(p, b, h, row0 + r)] : 0.0f;
        }
        DP_UNROLL for (int ci = 0; ci < CPI; ci++)
            dq_acc[a][ci] = (float4)0.0f;
    }

    DP_UNROLL for (int sm = 0; sm < NSCORES; sm++) {
        if (sm > 0) {
            barrier(CLK_LOCAL_MEM_FENCE); /* every item is past the last pass's S */
            DP_STAGE_Q(row0, rows, h, sm);
            DP_UNROLL for (int a = 0; a < Q_RPI; a++)
                DP_UNROLL for (int ci = 0; ci < CPI; ci++)
                    dq_acc[a][ci] = (float4)0.0f;
        }

        for (int j0 = keys.x; j0 < keys.y; j0 += BLOCK_N) {
            const int n = min(BLOCK_N, keys.y - j0);
            const bool full =
                rows == BLOCK_M && n == BLOCK_N && last.x <= j0 && first.y >= j0 + n;
            float s[Q_RPI][Q_KPI], g[NSTREAMS][Q_RPI][Q_KPI];
            DP_TILE_DOTS(Q_RPI, Q_KPI, 1, q_tile, do_tile, kv, j0, n, sm);
            DP_UNROLL for (int a = 0; a < Q_RPI; a++) {
                const int r = ty + WG_ROWS * a;
                DP_UNROLL for (int e = 0; e < Q_KPI; e++) {
                    const int j = j0 + tx + WG_COLS * e;
                    float pw[NSTREAMS], gt[NSTREAMS], ds = 0.0f;
                    DP_UNROLL for (int t = 0; t < NSTREAMS; t++)
                        gt[t] = g[t][a][e];
                    if (full || (j >= mine[a].x && j < mine[a].y)) {
                        const float sc = DP_SCORE(s[a][e], b, h, row0 + r, j, kl);
                        if (!DP_EXCLUDED(sc)) {
                            DP_KEY_TERMS(sc, gt, row_lse[a], row_delta[a], pole_w, pw, ds, sm);
                            ds *= DP_SCORE_DS(s[a][e]);
                        }
                    }
                    ds_tile[r * W_STRIDE_Q + tx + WG_COLS * e] = ds;
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            /* K is still in kv: the last thing DP_TILE_DOTS staged. */
#define UNSEEN(a, jj, w) (!full && (j0 + (jj) < mine[a].x || j0 + (jj) >= mine[a].y))
            DP_MICRO_ACC(dq_acc, Q_RPI, CPI, ds_tile, W_STRIDE_Q, n, kv, K_STRIDE, HD4, UNSEEN);
#undef UNSEEN
        }

        DP_UNROLL for (int a = 0; a < Q_RPI; a++) {
            const int r = ty + WG_ROWS * a;
            if (r >= rows)
                continue;
            DP_UNROLL for (int ci = 0; ci < CPI; ci++) {
                const int c4 = tx + WG_COLS * ci;
                if (c4 >= HD4)
                    break;
                dp_store_chunk4(dq, DP_ROW(ldq, b, row0 + r, DP_POLE_HEAD(h, sm)) + 4 * c4, c4,
                                dq_acc[a][ci] * scale, HEAD_DIM);
            }
        }
    }
}
