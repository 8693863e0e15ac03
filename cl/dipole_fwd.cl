/* Tiled dipole attention forward, work-group layout (GPUs), in the manner of FlashAttention-2.
 * A work-group owns BLOCK_M query rows and streams tiles of BLOCK_N keys through local memory;
 * the score matrix is never stored. Its WORK_GROUP work-items form a WG_ROWS x WG_COLS grid,
 * and item (ty, tx) owns, for both products of a tile,
 *   rows     r  = ty + WG_ROWS * mi   (RPI of them, interleaved so that causal work is even),
 *   keys     jj = tx + WG_COLS * ni   (KPI of them: its micro-tile of S = Q K^T),
 *   columns  c4 = tx + WG_COLS * ci   (CPI float4 chunks: its slice of O += P V),
 * so no work-item holds a whole row. The rows' running max is reduced through local memory
 * across the WG_COLS items that share them; each item keeps its own part of the rows' sums,
 * added up once at the end. Per tile:
 *   stage K | S, each pole's tile max | row max, rescale, P per stream, stage V | O += P V
 *   (| stage V2 | O += P2 V2 where the variant reads v2).
 * K, V and V2 take turns in one local tile so that head dim 128 fits 48 KiB. */

#ifndef BLOCK_M
#define BLOCK_M 32
#endif
#ifndef BLOCK_N
#define BLOCK_N 32
#endif
#ifndef WORK_GROUP
#define WORK_GROUP 128
#endif
#define RPI (BLOCK_M / WG_ROWS)
#define KPI (BLOCK_N / WG_COLS)
#if WG_ROWS * WG_COLS != WORK_GROUP || RPI * WG_ROWS != BLOCK_M || KPI * WG_COLS != BLOCK_N
#error "WORK_GROUP must be WG_ROWS x WG_COLS items dividing BLOCK_M rows and BLOCK_N keys"
#endif

/* Local strides in float4s: a K row one chunk longer than the head dim, so that the WG_COLS
 * items reading different keys' chunk c4 hit different banks; a P row 4 floats longer than
 * the tile, so that rows of different items do. */
#define K_STRIDE (HD4 + 1)
#define V_STRIDE HD4
#define P_STRIDE (BLOCK_N + 4)
#define KV_CHUNKS (BLOCK_N * K_STRIDE)

__kernel __attribute__((reqd_work_group_size(WORK_GROUP, 1, 1)))
void dipole_fwd(__global const dp_storage *q, dp_layout lq,
                __global const dp_storage *k, dp_layout lk,
                __global const dp_storage *v, dp_layout lv,
                __global const dp_storage *v2, dp_layout lv2,
                DP_PAGED_ARGS,
                __global dp_storage *out, dp_layout lout,
                __global float *lse,                  /* [NPOLES, B, Hq, Nq] or NULL */
                __global const int *key_lengths,      /* [B] or NULL */
                __global const float *pole_weights,   /* [2, Hq] or NULL */
                int batch, int heads_q, int heads_kv, int seq_q, int seq_k,
                float scale, int window_left, int window_right)
{
    DP_QUERY_TILE();

    __local float4 q_tile[BLOCK_M * K_STRIDE]; /* q * scale */
    __local float4 kv_tile[KV_CHUNKS];         /* K, then V, then V2 */
    __local float p_tile[NSTREAMS][BLOCK_M * P_STRIDE];
    /* per-item row maxima, then row sums */
    __local float red[NPOLES][BLOCK_M * WG_COLS] __attribute__((aligned(16)));

    dp_stage_rows4(q_tile, K_STRIDE, q, lq, b, row0, BLOCK_M, rows, h, scale, lid, WORK_GROUP);

    int2 mine[RPI]; /* each row's visible keys; none for rows past seq_q */
    float m[NPOLES][RPI], l[NPOLES][RPI];
    float4 acc[NPOLES][RPI][CPI];
    DP_UNROLL for (int mi = 0; mi < RPI; mi++) {
        const int r = ty + WG_ROWS * mi;
        mine[mi] = r < rows ? dp_visible_range(row0 + r, kl, seq_q, window_left, window_right)
                            : (int2)(0, 0);
        DP_UNROLL for (int p = 0; p < NPOLES; p++) {
            m[p][mi] = -INFINITY;
            l[p][mi] = 0.0f;
            DP_UNROLL for (int ci = 0; ci < CPI; ci++)
                acc[p][mi][ci] = (float4)0.0f;
        }
    }

    for (int j0 = keys.x; j0 < keys.y; j0 += BLOCK_N) {
        const int n = min(BLOCK_N, keys.y - j0);
        /* Every row sees every key of the tile: no per-key mask (uniform over the group; the
         * fewest keys a row sees run from the last row's lo to the first row's hi). */
        const bool full = rows == BLOCK_M && n == BLOCK_N && last.x <= j0 && first.y >= j0 + n;
        barrier(CLK_LOCAL_MEM_FENCE);
        dp_stage_kv_rows4(kv_tile, K_STRIDE, k, lk, b, j0, BLOCK_N, n, hk, lid, WORK_GROUP);
        barrier(CLK_LOCAL_MEM_FENCE);

        /* S micro-tile, and each pole's max over this item's keys per row. */
        float s[RPI][KPI];
        DP_MICRO_DOTS(s, RPI, q_tile, K_STRIDE, KPI, kv_tile, K_STRIDE);
        bool seen[RPI][KPI];
        DP_UNROLL for (int mi = 0; mi < RPI; mi++) {
            const int r = ty + WG_ROWS * mi;
            DP_UNROLL for (int ni = 0; ni < KPI; ni++) {
                const int j = j0 + tx + WG_COLS * ni;
                seen[mi][ni] = full || (j >= mine[mi].x && j < mine[mi].y);
            }
            DP_UNROLL for (int p = 0; p < NPOLES; p++) {
                float mx = -INFINITY;
                DP_UNROLL for (int ni = 0; ni < KPI; ni++)
                    mx = seen[mi][ni] ? fmax(mx, POLE_LOGIT(p, s[mi][ni])) : mx;
                red[p][r * WG_COLS + tx] = mx;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);

        /* V goes where K was (every item is past its S). Meanwhile: the rows' new max, the
         * rescale of what was summed so far, and this item's weights into the P tiles. */
        dp_stage_kv_rows4(kv_tile, V_STRIDE, v, lv, b, j0, BLOCK_N, n, hk, lid, WORK_GROUP);
        DP_UNROLL for (int mi = 0; mi < RPI; mi++) {
            const int r = ty + WG_ROWS * mi;
            float w[NPOLES][KPI];
            DP_UNROLL for (int p = 0; p < NPOLES; p++) {
                const float mx = dp_row_max(red[p], r, WG_COLS, m[p][mi]);
                const float f = dp_rescale(m[p][mi], mx);
                m[p][mi] = mx;
                l[p][mi] *= f;
                DP_UNROLL for (int ci = 0; ci < CPI; ci++)
                    acc[p][mi][ci] *= f;
                DP_UNROLL for (int ni = 0; ni < KPI; ni++) {
                    w[p][ni] = seen[mi][ni] ? exp(POLE_LOGIT(p, s[mi][ni]) - mx) : 0.0f;
                    l[p][mi] += w[p][ni];
                }
            }
            DP_UNROLL for (int t = 0; t < NSTREAMS; t++)
                DP_UNROLL for (int ni = 0; ni < KPI; ni++)
                    p_tile[t][r * P_STRIDE + tx + WG_COLS * ni] =
                        STREAM_WEIGHT(t, w[STREAM_POLE(t)][ni], s[mi][ni]);
        }

        /* O += P V per stream; stream 1 of a v2 variant waits for V2 in the tile. A key a row
         * does not see is skipped, not multiplied by 0: its value may be inf. */
        DP_UNROLL for (int t = 0; t < NSTREAMS; t++) {
            barrier(CLK_LOCAL_MEM_FENCE);
            if (STREAM_V2(t)) {
                dp_stage_kv_rows4(kv_tile, V_STRIDE, v2, lv2, b, j0, BLOCK_N, n, hk, lid,
                                  WORK_GROUP);
                barrier(CLK_LOCAL_MEM_FENCE);
            }
#define UNSEEN(mi, jj, w) \
    (DP_AWAY(w) || (!full && (j0 + (jj) < mine[mi].x || j0 + (jj) >= mine[mi].y)))
            DP_MICRO_ACC(acc[STREAM_POLE(t)], RPI, CPI, p_tile[t], P_STRIDE, n, kv_tile, V_STRIDE,
                         UNSEEN);
#undef UNSEEN
        }
    }

    /* The rows' sums: each item's part, added in a fixed order. */
    barrier(CLK_LOCAL_MEM_FENCE);
    DP_UNROLL for (int mi = 0; mi < RPI; mi++)
        DP_UNROLL for (int p = 0; p < NPOLES; p++)
            red[p][(ty + WG_ROWS * mi) * WG_COLS + tx] = l[p][mi];
    barrier(CLK_LOCAL_MEM_FENCE);
    DP_UNROLL for (int mi = 0; mi < RPI; mi++) {
        const int r = ty + WG_ROWS * mi, i = row0 + r;
        if (r >= rows)
            continue;
        const bool has_keys = mine[mi].x < mine[mi].y; /* a row that sees no key outputs 0 */
        float coef[NPOLES];
        DP_UNROLL for (int p = 0; p < NPOLES; p++) {
            const float sum = dp_row_sum(red[p], r, WG_COLS);
            coef[p] = has_keys ? dp_pole_weight(pole_weights, p, h, heads_q) / sum : 0.0f;
            if (lse && tx == 0)
                lse[DP_STAT(p, b, h, i)] = has_keys ? m[p][mi] + log(sum) : -INFINITY;
        }
        const long o_at = DP_ROW(lout, b, i, h);
        DP_UNROLL for (int ci = 0; ci < CPI; ci++) {
            const int c4 = tx + WG_COLS * ci;
            if (c4 >= HD4)
                break;
            float4 o = (float4)0.0f;
            DP_UNROLL for (int p = 0; p < NPOLES; p++)
                o += has_keys ? coef[p] * acc[p][mi][ci] : (float4)0.0f;
            dp_store_chunk4(out, o_at + 4 * c4, c4, o);
        }
    }
}
