/* Tiled dipole attention forward, work-group layout (GPUs), in the manner of FlashAttention-2.
 * A work-group owns BLOCK_M query rows and streams tiles of BLOCK_N keys through local memory;
 * the score matrix is never stored. Its WORK_GROUP work-items form a WG_ROWS x WG_COLS grid,
 * and item (ty, tx) owns, for both products of a tile,
 *   rows     r  = ty + WG_ROWS * mi   (RPI of them, interleaved so that causal work is even),
 *   keys     jj = tx + WG_COLS * ni   (KPI of them: its micro-tile of S = Q K^T),
 *   columns  c4 = tx + WG_COLS * ci   (CPI_V float4 chunks: its slice of O += P V),
 * so no work-item holds a whole row. The rows' running max is reduced through local memory
 * across the WG_COLS items that share them; each item keeps its own part of the rows' sums,
 * added up once at the end. Per tile:
 *   stage K | S, each pole's tile max | row max, rescale, P per stream, stage V | O += P V
 *   (| stage V2 | O += P2 V2 where the variant reads v2).
 * K, V and V2 take turns in one local tile so that head dim 128 fits 48 KiB. The score
 * modifiers (DP_SCORE) go on S where a row sees the key, before the variant's logits. DIFF's
 * poles score with their own q and k heads: the key loop runs once per score map (NSCORES),
 * each pass with its q rows staged and updating the poles that rank its map. Packed
 * (DP_VARLEN), work-group (tile, h, b) takes rows of sequence b against its keys; a tile past
 * the sequence's rows does nothing.
 *
 * Decode (DP_SPLIT): work-group (chunk, hk, b) takes every query row of every query head that
 * reads KV head hk (tile row r is row r % seq_q of head hk * group + r / seq_q) over the keys
 * of one chunk, so each K/V row is read once per call however many heads share it; it leaves
 * the rows' partials (dipole_common.cl's DP_PART) for dipole_fwd_merge_group. */

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
#define V_STRIDE HD4_V
#define P_STRIDE (BLOCK_N + 4)
#define KV_CHUNKS (BLOCK_N * (K_STRIDE > V_STRIDE ? K_STRIDE : V_STRIDE))

#ifndef DP_SPLIT
#define DP_SPLIT 0
#endif
#if DP_SPLIT && DP_VARLEN
#error "a packed batch is not split (the planner's rule): its rows are no decode tile"
#endif

/* A key whose score a bias made -inf is out of every pole: its weight tile entry is -0 in
 * every stream (STREAM_AWAY), and O += P V skips it, as the reference never multiplies its
 * value (0 x inf would be NaN). With a bias, SIGNEXP's weights that underflow to -0 are
 * skipped too: the same sum wherever the values are finite. */
#define SKIPPED(w) (DP_AWAY(w) || (HAS_BIAS && as_uint(w) == 0x80000000u))

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
                float scale, int window_left, int window_right, DP_SCORE_ARGS,
                __global float *part, int chunks, int chunk_keys) /* DP_SPLIT only */
{
#if DP_SPLIT
    const int lid = get_local_id(0), ty = lid / WG_COLS, tx = lid % WG_COLS;
    const int chunk = get_group_id(0), hk = get_group_id(1), b = get_group_id(2);
    const int kl = DP_KEY_LENGTH(b), h0 = hk * (heads_q / heads_kv);
    const int rows = heads_q / heads_kv * seq_q; /* at most BLOCK_M: the planner's rule */
    const int2 first = dp_visible_range(0, kl, seq_q, window_left, window_right);
    const int2 last = dp_visible_range(seq_q - 1, kl, seq_q, window_left, window_right);
    const int2 keys = (int2)(max(first.x, chunk * chunk_keys),
                             min(max(last.y, first.y), chunk * chunk_keys + chunk_keys));
#define ROW_I(r) ((r) % seq_q)
#define ROW_H(r) (h0 + (r) / seq_q)
#else
    DP_QUERY_TILE();
    DP_REBASE_Q(lq, b);
    DP_REBASE_Q(lout, b);
    DP_REBASE_K(lk, b);
    DP_REBASE_K(lv, b);
    DP_REBASE_K(lv2, b);
#define ROW_I(r) (row0 + (r))
#define ROW_H(r) h
#endif

    __local float4 q_tile[BLOCK_M * K_STRIDE]; /* q * scale */
    __local float4 kv_tile[KV_CHUNKS];         /* K, then V, then V2 */
    __local float p_tile[NSTREAMS][BLOCK_M * P_STRIDE];
    /* per-item row maxima, then row sums */
    __local float red[NPOLES][BLOCK_M * WG_COLS] __attribute__((aligned(16)));

    /* q rows of score map sm (scaled) into q_tile. */
#if DP_SPLIT
#define STAGE_Q(sm)                                                                            \
    dp_stage_head_rows4(q_tile, K_STRIDE, q, lq, b, seq_q, BLOCK_M, rows, DP_POLE_HEAD(h0, sm), \
                        scale, lid, WORK_GROUP)
#else
#define STAGE_Q(sm)                                                                            \
    dp_stage_rows4(q_tile, K_STRIDE, q, lq, b, row0, BLOCK_M, rows, DP_POLE_HEAD(h, sm), scale, \
                   lid, WORK_GROUP, HEAD_DIM)
#endif
    STAGE_Q(0);

    int2 mine[RPI]; /* each row's visible keys; none for rows past seq_q */
    float m[NPOLES][RPI], l[NPOLES][RPI];
    float4 acc[NPOLES][RPI][CPI_V];
    DP_UNROLL for (int mi = 0; mi < RPI; mi++) {
        const int r = ty + WG_ROWS * mi;
        mine[mi] = r < rows ? dp_visible_range(ROW_I(r), kl, seq_q, window_left, window_right)
                            : (int2)(0, 0);
        DP_UNROLL for (int p = 0; p < NPOLES; p++) {
            m[p][mi] = -INFINITY;
            l[p][mi] = 0.0f;
            DP_UNROLL for (int ci = 0; ci < CPI_V; ci++)
                acc[p][mi][ci] = (float4)0.0f;
        }
    }

    /* Pass sm updates the poles p (and their streams) with POLE_SCORE(p) == sm. */
#define IN_PASS(p) (POLE_SCORE(p) == sm)
    for (int sm = 0; sm < NSCORES; sm++) {
        if (sm > 0) {
            barrier(CLK_LOCAL_MEM_FENCE); /* every item is past the last pass's S */
            STAGE_Q(sm);
        }
        for (int j0 = keys.x; j0 < keys.y; j0 += BLOCK_N) {
            const int n = min(BLOCK_N, keys.y - j0);
            /* Every row sees every key of the tile: no per-key mask (uniform over the group; the
             * fewest keys a row sees run from the last row's lo to the first row's hi). */
            const bool full =
                rows == BLOCK_M && n == BLOCK_N && last.x <= j0 && first.y >= j0 + n;
            barrier(CLK_LOCAL_MEM_FENCE);
            dp_stage_kv_rows4(kv_tile, K_STRIDE, k, lk, b, j0, BLOCK_N, n, DP_POLE_HEAD(hk, sm),
                              lid, WORK_GROUP, HEAD_DIM);
            barrier(CLK_LOCAL_MEM_FENCE);

            /* S micro-tile (the modifiers on the keys a row sees: a bias has no entry past them),
             * and each pole's max over this item's keys per row. */
            float s[RPI][KPI];
            DP_MICRO_DOTS(s, RPI, q_tile, K_STRIDE, KPI, kv_tile, K_STRIDE, HD4);
            bool seen[RPI][KPI];
            DP_UNROLL for (int mi = 0; mi < RPI; mi++) {
                const int r = ty + WG_ROWS * mi;
                /* a key past the tile (n < BLOCK_N) is past the chunk too, which may end inside
                 * the row's visible range */
                DP_UNROLL for (int ni = 0; ni < KPI; ni++) {
                    const int j = j0 + tx + WG_COLS * ni;
                    seen[mi][ni] = full || (j < j0 + n && j >= mine[mi].x && j < mine[mi].y);
                    if (DP_SCORE_MODS && seen[mi][ni])
                        s[mi][ni] = DP_SCORE(s[mi][ni], b, ROW_H(r), ROW_I(r), j, kl);
                }
                DP_UNROLL for (int p = 0; p < NPOLES; p++) {
                    if (!IN_PASS(p))
                        continue;
                    float mx = -INFINITY;
                    DP_UNROLL for (int ni = 0; ni < KPI; ni++)
                        mx = seen[mi][ni] ? fmax(mx, POLE_LOGIT(p, s[mi][ni])) : mx;
                    red[p][r * WG_COLS + tx] = mx;
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE);

            /* V goes where K was (every item is past its S). Meanwhile: the rows' new max, the
             * rescale of what was summed so far, and this item's weights into the P tiles. */
            dp_stage_kv_rows4(kv_tile, V_STRIDE, v, lv, b, j0, BLOCK_N, n, hk, lid, WORK_GROUP,
                              HEAD_DIM_V);
            DP_UNROLL for (int mi = 0; mi < RPI; mi++) {
                const int r = ty + WG_ROWS * mi;
                float w[NPOLES][KPI];
                DP_UNROLL for (int p = 0; p < NPOLES; p++) {
                    if (!IN_PASS(p))
                        continue;
                    const float mx = dp_row_max(red[p], r, WG_COLS, m[p][mi]);
                    const float f = dp_rescale(m[p][mi], mx);
                    m[p][mi] = mx;
                    l[p][mi] *= f;
                    DP_UNROLL for (int ci = 0; ci < CPI_V; ci++)
                        acc[p][mi][ci] *= f;
                    DP_UNROLL for (int ni = 0; ni < KPI; ni++) {
                        const float lg = POLE_LOGIT(p, s[mi][ni]);
                        w[p][ni] = seen[mi][ni] ? DP_POLE_EXP(exp(lg - mx), lg) : 0.0f;
                        l[p][mi] += w[p][ni];
                    }
                }
                DP_UNROLL for (int t = 0; t < NSTREAMS; t++)
                    DP_UNROLL for (int ni = 0; ni < KPI; ni++)
                        if (IN_PASS(STREAM_POLE(t)))
                            p_tile[t][r * P_STRIDE + tx + WG_COLS * ni] =
                                DP_EXCLUDED(s[mi][ni])
                                    ? STREAM_AWAY
                                    : STREAM_WEIGHT(t, w[STREAM_POLE(t)][ni], s[mi][ni]);
            }

            /* O += P V per stream; stream 1 of a v2 variant waits for V2 in the tile. A key a row
             * does not see is skipped, not multiplied by 0: its value may be inf. */
            DP_UNROLL for (int t = 0; t < NSTREAMS; t++) {
                if (!IN_PASS(STREAM_POLE(t)))
                    continue;
                barrier(CLK_LOCAL_MEM_FENCE);
                if (STREAM_V2(t)) {
                    dp_stage_kv_rows4(kv_tile, V_STRIDE, v2, lv2, b, j0, BLOCK_N, n, hk, lid,
                                      WORK_GROUP, HEAD_DIM_V);
                    barrier(CLK_LOCAL_MEM_FENCE);
                }
#define UNSEEN(mi, jj, w) \
    (SKIPPED(w) || (!full && (j0 + (jj) < mine[mi].x || j0 + (jj) >= mine[mi].y)))
                DP_MICRO_ACC(acc[STREAM_POLE(t)], RPI, CPI_V, p_tile[t], P_STRIDE, n, kv_tile,
                             V_STRIDE, HD4_V, UNSEEN);
#undef UNSEEN
            }
        }
    }
#undef IN_PASS
#undef STAGE_Q

    /* The rows' sums: each item's part, added in a fixed order. */
    barrier(CLK_LOCAL_MEM_FENCE);
    DP_UNROLL for (int mi = 0; mi < RPI; mi++)
        DP_UNROLL for (int p = 0; p < NPOLES; p++)
            red[p][(ty + WG_ROWS * mi) * WG_COLS + tx] = l[p][mi];
    barrier(CLK_LOCAL_MEM_FENCE);
    DP_UNROLL for (int mi = 0; mi < RPI; mi++) {
        const int r = ty + WG_ROWS * mi, i = ROW_I(r);
        if (r >= rows)
            continue;
#if DP_SPLIT
        /* This chunk's partial: the row's max and sum, and this item's slice of acc. */
        DP_UNROLL for (int p = 0; p < NPOLES; p++) {
            __global float *pt =
                part + DP_PART((long)b * heads_q + ROW_H(r), i, chunk) + p * PART_STRIDE;
            if (tx == 0) {
                pt[0] = m[p][mi];
                pt[1] = dp_row_sum(red[p], r, WG_COLS);
            }
            DP_UNROLL for (int ci = 0; ci < CPI_V; ci++) {
                const int c4 = tx + WG_COLS * ci;
                if (c4 < HD4_V)
                    vstore4(acc[p][mi][ci], 0, pt + 2 + 4 * c4);
            }
        }
#else
        float sum[NPOLES], coef[NPOLES];
        DP_UNROLL for (int p = 0; p < NPOLES; p++)
            sum[p] = dp_row_sum(red[p], r, WG_COLS);
        /* A row that sees no key outputs 0, and so does one whose every key a bias excludes
         * (its sums are 0 in every pole; the row's max key weighs 1 otherwise). */
        bool has_keys = mine[mi].x < mine[mi].y;
        if (HAS_BIAS)
            has_keys = has_keys && sum[0] != 0.0f;
        DP_UNROLL for (int p = 0; p < NPOLES; p++) {
            coef[p] = has_keys ? dp_pole_weight(pole_weights, p, h, heads_q) / sum[p] : 0.0f;
            if (lse && tx == 0)
                lse[DP_STAT(p, b, h, i)] = has_keys ? m[p][mi] + log(sum[p]) : -INFINITY;
        }
        const long o_at = DP_ROW(lout, b, i, h);
        DP_UNROLL for (int ci = 0; ci < CPI_V; ci++) {
            const int c4 = tx + WG_COLS * ci;
            if (c4 >= HD4_V)
                break;
            float4 o = (float4)0.0f;
            DP_UNROLL for (int p = 0; p < NPOLES; p++)
                o += has_keys ? coef[p] * acc[p][mi][ci] : (float4)0.0f;
            dp_store_chunk4(out, o_at + 4 * c4, c4, o, HEAD_DIM_V);
        }
#endif
    }
#undef ROW_I
#undef ROW_H
}
#undef SKIPPED

/* Combines a decode row's chunks: work-item (c4, i, b * Hq + h) takes float4 chunk c4 of the
 * row (item c4 0 also writes lse), each merging the chunks' (max, sum) itself: a GPU spreads a
 * row over its items where the CPU layout's merge walks it in one. */
__kernel void dipole_fwd_merge_group(__global const float *part, int chunks,
                                     __global dp_storage *out, dp_layout lout,
                                     __global float *lse,
                                     __global const int *key_lengths,
                                     __global const float *pole_weights,
                                     int batch, int heads_q, int seq_q, int seq_k,
                                     int window_left, int window_right)
{
    const int c4 = get_global_id(0), i = get_global_id(1), bh = get_global_id(2);
    if (c4 >= HD4_V)
        return;
    const int b = bh / heads_q, h = bh % heads_q;
    const int2 range = dp_visible_range(i, DP_KEY_LENGTH(b), seq_q, window_left, window_right);
    __global const float *src = part + DP_PART(bh, i, 0);
    float4 o = (float4)0.0f;
    DP_UNROLL for (int p = 0; p < NPOLES; p++) {
        float mm, sum;
#define PART_M(c) src[((c) * NPOLES + p) * PART_STRIDE]
#define PART_L(c) src[((c) * NPOLES + p) * PART_STRIDE + 1]
        DP_MERGE_POLE(chunks, PART_M, PART_L, mm, sum);
#undef PART_M
#undef PART_L
        /* a row that sees no key outputs 0, as does one whose every key a bias excludes */
        bool has_keys = range.x < range.y;
        if (HAS_BIAS)
            has_keys = has_keys && sum != 0.0f;
        const float coef = has_keys ? dp_pole_weight(pole_weights, p, h, heads_q) / sum : 0.0f;
        /* A chunk whose weights all underflow against the row's max adds nothing (its values
         * may be non-finite), as in the CPU layout's merge. */
        for (int ch = 0; ch < chunks && has_keys; ch++) {
            __global const float *pc = src + (ch * NPOLES + p) * PART_STRIDE;
            const float r = dp_rescale(pc[0], mm);
            if (r != 0.0f)
                o = fma((float4)(coef * r), vload4(0, pc + 2 + 4 * c4), o);
        }
        if (lse && c4 == 0)
            lse[DP_STAT(p, b, h, i)] = has_keys ? mm + log(sum) : -INFINITY;
    }
    dp_store_chunk4(out, DP_ROW(lout, b, i, h) + 4 * c4, c4, o, HEAD_DIM_V);
}
