/* Tiled dipole attention forward, CPU layout. On a CPU device a work-item is one SIMD thread,
 * so the fast shape is a GEMM micro-kernel per work-item (local size 1): query rows lie across
 * the lanes of float16 vectors, Q (scale folded in) and the output accumulators are kept
 * transposed, and each key tile runs two register-blocked loops — scores += K scalar x Q
 * vector, then acc += V scalar x weight vector. The online softmax (max, rescale, sums) is
 * lane-wise vector arithmetic. The variant enters only through the macros of
 * dipole_common.cl, applied to vectors; DIFF's two score maps (NSCORES) each have their own
 * rows of qT and tile of keys. GPUs want the opposite shape: cl/dipole_fwd.cl.
 *
 * Also here: split-K decode (few query rows, many keys): each work-item takes one query row and
 * one chunk of keys and writes its partial (max, sum, acc) per pole; a merge kernel combines. */

#ifndef BLOCK_M
#define BLOCK_M 32
#endif
#ifndef BLOCK_N
#define BLOCK_N 64
#endif
#if BLOCK_M != 16 && BLOCK_M % 32 != 0
#error "BLOCK_M must be 16 or a multiple of 32"
#endif

/* A work-item's rows come in groups of GROUP_ROWS, laid across RV float16 vectors; each K/V
 * tile is packed once and used by all NG groups, so that a tile's trip from the outer caches
 * pays for NG times the arithmetic. */
#define GROUP_ROWS (BLOCK_M < 32 ? BLOCK_M : 32)
#define NG (BLOCK_M / GROUP_ROWS)
#define RV (GROUP_ROWS / 16) /* float16 vectors per row group */
#define RB (16 / RV)      /* register block: keys per score block, dims per output block */
#if BLOCK_N < 1
#error "BLOCK_N must be >= 1"
#endif
#define N_PAD ((BLOCK_N + RB - 1) / RB * RB)
#define D_PAD ((HEAD_DIM_V + RB - 1) / RB * RB) /* value head dim in whole output blocks */
#if RB == 16
#define FLOAT_RB float16
#define INT_RB int16
#define DP_FINITE_RB DP_FINITE16
#define DP_LOAD_RB dp_load16
#define VSTORE_RB vstore16
#else
#define FLOAT_RB float8
#define INT_RB int8
#define DP_FINITE_RB DP_FINITE8
#define DP_LOAD_RB dp_load8
#define VSTORE_RB vstore8
#endif

/* Copies key row jj of a tile into kt, row-major. */
inline void dp_pack_k_row(__local float *kt, __global const dp_storage *row, int jj)
{
    int c = 0;
    for (; c + 16 <= HEAD_DIM; c += 16)
        vstore16(dp_load16(row, c), 0, kt + jj * HEAD_DIM + c);
    for (; c < HEAD_DIM; c++)
        kt[jj * HEAD_DIM + c] = dp_load(row, c);
}

/* Copies value row jj of a tile into vt, blocked by output block: vt[(c0 / RB) * N_PAD * RB +
 * jj * RB + t] = dim c0 + t (0 past the value head dim). Reading a block of RB dims down the
 * tile is then sequential; straight from the tensor, rows H * d apart alias in L1. Returns
 * whether the row was finite. */
inline bool dp_pack_v_row(__local float *vt, __global const dp_storage *row, int jj)
{
    /* Non-finite values are packed as 0 and reported: in the accumulation a key that does not
     * reach a lane (masked for its row, or routed to the other value) has weight 0 there, and
     * 0 x NaN would spread a NaN to rows that never see it. DP_ACC_NONFINITE adds such values
     * back, only to the lanes that do see them. */
    int finite = 1;
    INT_RB all_ok = (INT_RB)(-1);
    for (int c0 = 0; c0 + RB <= HEAD_DIM_V; c0 += RB) {
        const FLOAT_RB x = DP_LOAD_RB(row, c0);
        const INT_RB ok = DP_FINITE_RB(x);
        all_ok &= ok;
        VSTORE_RB(select((FLOAT_RB)0.0f, x, ok), 0, vt + (c0 / RB) * N_PAD * RB + jj * RB);
    }
#if HEAD_DIM_V % RB
    for (int t = 0; t < RB; t++) {
        const int c = HEAD_DIM_V / RB * RB + t;
        const float x = c < HEAD_DIM_V ? dp_load(row, c) : 0.0f;
        finite &= isfinite(x);
        vt[(HEAD_DIM_V / RB) * N_PAD * RB + jj * RB + t] = isfinite(x) ? x : 0.0f;
    }
#endif
    return finite && all(all_ok);
}

/* The next tile's rows are fetched while the current tile is computed, a few key rows after
 * each score block and a few value rows after each output block: packed all at once from the
 * outer caches, a tile stalled the kernel for ~8 % of its time, and a row or two between blocks
 * of multiply-adds has its lines arrive while they run. The counts spread a whole tile over the
 * blocks of a tile that every group computes; where groups skip it (causal edges) the rest of
 * the next tile is packed without a prefetch. */
#define FETCH_K_ROWS ((BLOCK_N + NG * (N_PAD / RB) - 1) / (NG * (N_PAD / RB)))
#define FETCH_V_ROWS ((BLOCK_N + NG * NPOLES * (D_PAD / RB) - 1) / (NG * NPOLES * (D_PAD / RB)))
#define DP_FETCH_NEXT_K()                                                                      \
    for (int u = 0; u < FETCH_K_ROWS && k_next < n1; u++, k_next++)                            \
        for (int sm = 0; sm < NSCORES; sm++)                                                   \
            dp_prefetch_row(k + DP_KV_ROW(lk, b, j0 + BLOCK_N + k_next, DP_POLE_HEAD(hk, sm)));
#if READS_V2
#define DP_FETCH_NEXT_V2() dp_prefetch_row_v(v2 + DP_KV_ROW(lv2, b, j0 + BLOCK_N + v_next, hk));
#else
#define DP_FETCH_NEXT_V2()
#endif
#define DP_FETCH_NEXT_V()                                                                      \
    for (int u = 0; u < FETCH_V_ROWS && v_next < n1; u++, v_next++) {                          \
        dp_prefetch_row_v(v + DP_KV_ROW(lv, b, j0 + BLOCK_N + v_next, hk));                    \
        DP_FETCH_NEXT_V2()                                                                     \
    }

/* The rare path after a tile whose values were not all finite: acc += weight x value for those
 * values alone, in the lanes whose weight is not 0 (the lanes whose rows see the key). A macro,
 * not a function: passing the private weight array by pointer cost ~15% in the hot loop. */
#define DP_ACC_NONFINITE(ap, src, layout, W)                                                   \
    for (int jj = 0; jj < n; jj++)                                                             \
        for (int c = 0; c < HEAD_DIM_V; c++) {                                                 \
            const float x = dp_load((src), DP_KV_ROW(layout, b, j0 + jj, hk) + c);             \
            if (isfinite(x))                                                                   \
                continue;                                                                      \
            for (int r = 0; r < RV; r++) {                                                     \
                const float16 wl = W[jj * RV + r];                                             \
                (ap)[c * RV + r] = select(fma((float16)x, wl, (ap)[c * RV + r]),               \
                                          (ap)[c * RV + r], wl == (float16)0.0f);              \
            }                                                                                  \
        }

/* max(m, lg) where a NaN lg is left out, as fmax would; not fmax itself, whose NaN rule for
 * either operand costs 3 more operations per score (m is never NaN). */
#define DP_MAX_LOGIT(m, lg) select((m), (lg), (lg) > (m))

/* Whether key jj of the tile is visible to the lanes of row vector r of the current group
 * (only evaluated in tiles that some row of the group sees partly). */
#define LANE_VIS(jj, r) (((j0 + (jj)) >= glo[r]) & ((j0 + (jj)) < ghi[r]))

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void dipole_fwd_cpu(__global const dp_storage *q, dp_layout lq,
                    __global const dp_storage *k, dp_layout lk,
                    __global const dp_storage *v, dp_layout lv,
                    __global const dp_storage *v2, dp_layout lv2,
                    DP_PAGED_ARGS,
                    __global dp_storage *out, dp_layout lout,
                    __global float *lse,                  /* [NPOLES, B, Hq, Nq] or NULL */
                    __global const int *key_lengths,      /* [B] or NULL; packed: DP_VARLEN */
                    __global const float *pole_weights,   /* [2, Hq] or NULL */
                    int batch, int heads_q, int heads_kv, int seq_q, int seq_k,
                    float scale, int window_left, int window_right, DP_SCORE_ARGS)
{
    const int row0 = get_global_id(0) * BLOCK_M, h = get_global_id(1), b = get_global_id(2);
    DP_REBASE_Q(lq, b);
    DP_REBASE_Q(lout, b);
    DP_REBASE_K(lk, b);
    DP_REBASE_K(lv, b);
    DP_REBASE_K(lv2, b);
    DP_SEQUENCE(b);
    if (row0 >= seq_q)
        return;
    const int hk = DP_KV_HEAD(h), kl = DP_KEY_LENGTH(b);

    /* Per-lane visible key ranges, and per group the union and intersection of its rows'
     * ranges. Rows past seq_q copy the last live row's range, so that they never force the
     * masked path (their results are not written); a group with no live row sees no key, so
     * that a short sequence's block computes its own rows only. */
    int16 lo[NG * RV], hi[NG * RV];
    int g_lo[NG], g_hi[NG], g_max_lo[NG], g_min_hi[NG];
    int j_begin = INT_MAX, j_end = 0;
    for (int g = 0; g < NG; g++) {
        g_lo[g] = INT_MAX;
        g_hi[g] = 0;
        g_max_lo[g] = 0;
        g_min_hi[g] = INT_MAX;
        for (int r = 0; r < GROUP_ROWS; r++) {
            const int i = min(row0 + g * GROUP_ROWS + r, seq_q - 1);
            const int2 range = dp_visible_range(i, kl, seq_q, window_left, window_right);
            ((int *)lo)[g * GROUP_ROWS + r] = range.x;
            ((int *)hi)[g * GROUP_ROWS + r] = range.y;
            if (range.x < range.y && row0 + g * GROUP_ROWS < seq_q) {
                g_lo[g] = min(g_lo[g], range.x);
                g_hi[g] = max(g_hi[g], range.y);
            }
            g_max_lo[g] = max(g_max_lo[g], range.x);
            g_min_hi[g] = min(g_min_hi[g], range.y);
        }
        j_begin = min(j_begin, g_lo[g]);
        j_end = max(j_end, g_hi[g]);
    }

    /* Large per-work-item state lives in local memory: on a CPU device that is one copy per
     * worker thread, kept off the (bounded) stack. qT[((g * NSCORES + sm) * HEAD_DIM + c) * RV
     * + r] holds dim c of score map sm's query of group g's rows 16r .. 16r + 15, times scale. */
    __local float16 qT[NG * NSCORES * HEAD_DIM * RV];
    __local float16 acc[NG * NPOLES * D_PAD * RV];
    __local float kt[NSCORES * N_PAD * HEAD_DIM]; /* the tile's keys per map, row-major */
    __local float vt[D_PAD * N_PAD];    /* the tile's values, see dp_pack_v_row */
#if READS_V2
    __local float v2t[D_PAD * N_PAD];
#endif
    for (int g = 0; g < NG; g++)
        for (int sm = 0; sm < NSCORES; sm++) {
            __global const dp_storage *qr[GROUP_ROWS];
            for (int r = 0; r < GROUP_ROWS; r++) {
                qr[r] = q + DP_ROW(lq, b, min(row0 + g * GROUP_ROWS + r, seq_q - 1),
                                   DP_POLE_HEAD(h, sm));
                dp_prefetch_row(qr[r]);
            }
            for (int c = 0; c < HEAD_DIM; c++)
                for (int r = 0; r < GROUP_ROWS; r++)
                    ((__local float *)qT)[((g * NSCORES + sm) * HEAD_DIM + c) * GROUP_ROWS + r] =
                        dp_load(qr[r], c) * scale;
        }
    for (int e = 0; e < NG * NPOLES * D_PAD * RV; e++)
        acc[e] = (float16)0.0f;
    float16 m[NG][NPOLES][RV], l[NG][NPOLES][RV];
    for (int g = 0; g < NG; g++)
        for (int p = 0; p < NPOLES; p++)
            for (int r = 0; r < RV; r++) {
                m[g][p][r] = (float16)(-INFINITY);
                l[g][p][r] = (float16)0.0f;
            }

    float16 s[NSCORES][N_PAD * RV]; /* a group's scores for the tile per map, as qT */
    float16 wv[NPOLES][N_PAD * RV]; /* weight times coefficient landing on v ... */
#if READS_V2
    float16 wv2[NPOLES][N_PAD * RV]; /* ... and on v2 */
#endif

    for (int j0 = j_begin; j0 < j_end; j0 += BLOCK_N) {
        const int n = min(BLOCK_N, j_end - j0);

        /* Pack the tile; keys past it (up to a whole score block) repeat its own last key:
         * their weights are never used, and a duplicate changes no tile max. */
        for (int jj = 0; jj < N_PAD; jj++)
            for (int sm = 0; sm < NSCORES; sm++)
                dp_pack_k_row(kt + sm * N_PAD * HEAD_DIM,
                              k + DP_KV_ROW(lk, b, j0 + min(jj, n - 1), DP_POLE_HEAD(hk, sm)), jj);
        bool v_finite = true;
#if READS_V2
        bool v2_finite = true;
#endif
        for (int jj = 0; jj < n; jj++) {
            v_finite &= dp_pack_v_row(vt, v + DP_KV_ROW(lv, b, j0 + jj, hk), jj);
#if READS_V2
            v2_finite &= dp_pack_v_row(v2t, v2 + DP_KV_ROW(lv2, b, j0 + jj, hk), jj);
#endif
        }
        const int n1 = min(BLOCK_N, j_end - j0 - BLOCK_N); /* the next tile's size */
        int k_next = 0, v_next = 0; /* its rows fetched so far */

        for (int g = 0; g < NG; g++) {
            if (j0 >= g_hi[g] || j0 + n <= g_lo[g])
                continue; /* no row of the group sees this tile */
            const bool masked = !(j0 >= g_max_lo[g] && j0 + n <= g_min_hi[g]);
            __local const float16 *qg = qT + g * NSCORES * HEAD_DIM * RV;
            const int16 *glo = lo + g * RV, *ghi = hi + g * RV;

            /* Each pole's tile max of its logit, per lane: taken from the score registers in
             * a tile that every row of the group sees whole (the padding keys of the last
             * score block repeat the tile's last key, which changes no max), by a pass over
             * the masked scores otherwise. */
            float16 tmax[NPOLES][RV];
            for (int p = 0; p < NPOLES; p++)
#pragma unroll
                for (int r = 0; r < RV; r++)
                    tmax[p][r] = (float16)(-INFINITY);

            /* Scores: RB keys x RV row vectors of accumulators, map after map. */
            for (int jb = 0; jb < n; jb += RB) {
#pragma unroll
                for (int sm = 0; sm < NSCORES; sm++) {
                    __local const float *kr[RB];
                    __local const float16 *qs = qg + sm * HEAD_DIM * RV;
#pragma unroll
                    for (int t = 0; t < RB; t++)
                        kr[t] = kt + (sm * N_PAD + jb + t) * HEAD_DIM;
                    float16 sa[RB][RV];
#pragma unroll
                    for (int t = 0; t < RB; t++)
#pragma unroll
                        for (int r = 0; r < RV; r++)
                            sa[t][r] = (float16)0.0f;
                    for (int c = 0; c < HEAD_DIM; c++) {
                        float16 qv[RV];
#pragma unroll
                        for (int r = 0; r < RV; r++)
                            qv[r] = qs[c * RV + r];
#pragma unroll
                        for (int t = 0; t < RB; t++) {
                            const float16 kv = (float16)kr[t][c];
#pragma unroll
                            for (int r = 0; r < RV; r++)
                                sa[t][r] = fma(kv, qv[r], sa[t][r]);
                        }
                    }
#if DP_SCORE_MODS
                    /* Rows past the sequence and keys past the tile are clamped into it, as
                     * their q and k rows are: their lanes are never used. */
#pragma unroll
                    for (int t = 0; t < RB; t++)
#pragma unroll
                        for (int r = 0; r < RV; r++)
                            sa[t][r] = DP_SCORE16(sa[t][r], b, h, row0 + g * GROUP_ROWS + 16 * r,
                                                  1, seq_q - 1, j0 + min(jb + t, n - 1), 0,
                                                  INT_MAX, kl);
#endif
#pragma unroll
                    for (int t = 0; t < RB; t++)
#pragma unroll
                        for (int r = 0; r < RV; r++)
                            s[sm][(jb + t) * RV + r] = sa[t][r];
                    if (!masked)
                        for (int p = 0; p < NPOLES; p++)
                            if (POLE_SCORE(p) == sm)
#pragma unroll
                                for (int t = 0; t < RB; t++)
#pragma unroll
                                    for (int r = 0; r < RV; r++)
                                        tmax[p][r] = DP_MAX_LOGIT(tmax[p][r],
                                                                  POLE_LOGIT(p, sa[t][r]));
                }
                DP_FETCH_NEXT_K()
            }

            /* Online softmax per pole, lane-wise. */
            for (int p = 0; p < NPOLES; p++) {
                __local float16 *ap = acc + (g * NPOLES + p) * D_PAD * RV;
                if (masked)
                    for (int jj = 0; jj < n; jj++)
#pragma unroll
                        for (int r = 0; r < RV; r++) {
                            const float16 lg = select((float16)(-INFINITY),
                                                      POLE_LOGIT(p, s[POLE_SCORE(p)][jj * RV + r]),
                                                      LANE_VIS(jj, r));
                            tmax[p][r] = DP_MAX_LOGIT(tmax[p][r], lg);
                        }
                float16 mn[RV];
                int changed = 0;
#pragma unroll
                for (int r = 0; r < RV; r++) {
                    mn[r] = fmax(m[g][p][r], tmax[p][r]);
                    changed |= any(mn[r] != m[g][p][r]);
                }
                if (changed) {
                    float16 f[RV];
#pragma unroll
                    for (int r = 0; r < RV; r++) {
                        /* dp_rescale lane-wise: 1 where nothing changed (also -inf to -inf). */
                        f[r] = select(dp_exp_nonpos(m[g][p][r] - mn[r]), (float16)1.0f,
                                      m[g][p][r] == mn[r]);
                        l[g][p][r] *= f[r];
                        m[g][p][r] = mn[r];
                    }
                    for (int c = 0; c < D_PAD; c++)
#pragma unroll
                        for (int r = 0; r < RV; r++)
                            ap[c * RV + r] *= f[r];
                }
                float16 lsum[RV];
#pragma unroll
                for (int r = 0; r < RV; r++)
                    lsum[r] = (float16)0.0f;
                for (int jj = 0; jj < n; jj++)
#pragma unroll
                    for (int r = 0; r < RV; r++) {
                        const float16 sv = s[POLE_SCORE(p)][jj * RV + r], lg = POLE_LOGIT(p, sv);
                        float16 w = DP_POLE_EXP(dp_exp_nonpos(lg - mn[r]), lg);
                        float16 a = POLE_WEIGHTED(p, w, sv);
                        /* Masked after the coefficient: sign(NaN) is NaN, and 0 x NaN too. */
                        if (masked) {
                            w = select((float16)0.0f, w, LANE_VIS(jj, r));
                            a = select((float16)0.0f, a, LANE_VIS(jj, r));
                        }
                        lsum[r] += w;
                        if (POLE_MAY_V(p))
                            wv[p][jj * RV + r] = POLE_TO_V2(p, sv) ? (float16)0.0f : a;
#if READS_V2
                        if (POLE_MAY_V2(p))
                            wv2[p][jj * RV + r] = POLE_TO_V2(p, sv) ? a : (float16)0.0f;
#endif
                    }
#pragma unroll
                for (int r = 0; r < RV; r++)
                    l[g][p][r] += lsum[r];
            }

            /* acc += weights x V: RB dims x RV row vectors of accumulators, keys innermost. */
            for (int p = 0; p < NPOLES; p++) {
                __local float16 *ap = acc + (g * NPOLES + p) * D_PAD * RV;
                for (int c0 = 0; c0 < D_PAD; c0 += RB) {
                    float16 o[RB][RV];
#pragma unroll
                    for (int t = 0; t < RB; t++)
#pragma unroll
                        for (int r = 0; r < RV; r++)
                            o[t][r] = ap[(c0 + t) * RV + r];
                    __local const float *vb = vt + (c0 / RB) * N_PAD * RB;
#if READS_V2
                    __local const float *v2b = v2t + (c0 / RB) * N_PAD * RB;
#endif
                    for (int jj = 0; jj < n; jj++) {
                        if (POLE_MAY_V(p)) {
#pragma unroll
                            for (int t = 0; t < RB; t++) {
                                const float16 vs = (float16)vb[jj * RB + t];
#pragma unroll
                                for (int r = 0; r < RV; r++)
                                    o[t][r] = fma(vs, wv[p][jj * RV + r], o[t][r]);
                            }
                        }
#if READS_V2
                        if (POLE_MAY_V2(p)) {
#pragma unroll
                            for (int t = 0; t < RB; t++) {
                                const float16 vs = (float16)v2b[jj * RB + t];
#pragma unroll
                                for (int r = 0; r < RV; r++)
                                    o[t][r] = fma(vs, wv2[p][jj * RV + r], o[t][r]);
                            }
                        }
#endif
                    }
#pragma unroll
                    for (int t = 0; t < RB; t++)
#pragma unroll
                        for (int r = 0; r < RV; r++)
                            ap[(c0 + t) * RV + r] = o[t][r];
                    DP_FETCH_NEXT_V()
                }
                if (POLE_MAY_V(p) && !v_finite)
                    DP_ACC_NONFINITE(ap, v, lv, wv[p]);
#if READS_V2
                if (POLE_MAY_V2(p) && !v2_finite)
                    DP_ACC_NONFINITE(ap, v2, lv2, wv2[p]);
#endif
            }
        }
    }

    /* Normalise, combine the poles (into pole 0's accumulator) and write; a row that sees no
     * key outputs 0, never NaN. */
    float pw[NPOLES];
    for (int p = 0; p < NPOLES; p++)
        pw[p] = dp_pole_weight(pole_weights, p, h, heads_q);
    for (int g = 0; g < NG; g++) {
        const int grow0 = row0 + g * GROUP_ROWS;
        const int rows = min(GROUP_ROWS, seq_q - grow0);
        if (rows <= 0)
            break;
        float16 coef[NPOLES][RV];
        for (int p = 0; p < NPOLES; p++)
#pragma unroll
            for (int r = 0; r < RV; r++)
                /* l is 0 where a bias excluded every key the row sees. */
                coef[p][r] = select((float16)0.0f, pw[p] / l[g][p][r],
                                    lo[g * RV + r] < hi[g * RV + r] && l[g][p][r] != 0.0f);
        __local float16 *a0 = acc + g * NPOLES * D_PAD * RV;
        for (int c = 0; c < HEAD_DIM_V; c++)
#pragma unroll
            for (int r = 0; r < RV; r++) {
                float16 o = (float16)0.0f;
                for (int p = 0; p < NPOLES; p++)
                    o += coef[p][r] * a0[(p * D_PAD + c) * RV + r];
                a0[c * RV + r] = o;
            }
        for (int r = 0; r < rows; r++) {
            __global dp_storage *orow = out + DP_ROW(lout, b, grow0 + r, h);
            for (int c = 0; c < HEAD_DIM_V; c++)
                dp_store(orow, c, ((__local float *)a0)[(c * RV + r / 16) * 16 + r % 16]);
        }
        if (lse)
            for (int p = 0; p < NPOLES; p++)
                for (int r = 0; r < rows; r++) {
                    const float mm = ((float *)m[g][p])[r], ll = ((float *)l[g][p])[r];
                    const bool has = ((int *)lo)[g * GROUP_ROWS + r] < ((int *)hi)[g * GROUP_ROWS + r];
                    lse[DP_STAT(p, b, h, grow0 + r)] =
                        has ? mm + log(ll) : -INFINITY;
                }
    }
}

/* ---- Split-K decode. Work-item (chunk, row i, batch b) scans keys
 * [chunk * chunk_keys, (chunk + 1) * chunk_keys) of the row's visible range for every query head,
 * 16 keys per step (keys across lanes; each score is a dot product along the head dim in
 * float16 pieces) and, within a step, head after head. A key's rows of all KV heads lie side by
 * side ([B, N, Hkv, d]), so each step reads one stretch of memory instead of a row a seq stride
 * apart per head, and the query heads of a GQA group, taken in turn, find their K/V rows in L1:
 * the cache is read once per call, not once per query head. DIFF's step scores each of its two
 * maps (the pole's own q and k heads) before the poles take them. Each head's (max, sum, acc)
 * waits in the work-item's own slice of part between steps.
 * Partials as dipole_common.cl lays them out (DP_PART). */

#if !DP_VARLEN /* packed batches do not split: the planner keeps them tiled */
#define DQ ((HEAD_DIM + 15) / 16) /* float16 pieces of a q or k row (DV: of a value row) */

/* Piece c16 of a row of n elements (HEAD_DIM or HEAD_DIM_V), 0 past its end. */
inline float16 dp_row_piece(__global const dp_storage *row, int c16, int n)
{
    if (n % 16 && c16 == n / 16) {
        float x[16];
        for (int c = 0; c < 16; c++)
            x[c] = c < n % 16 ? dp_load(row, c16 * 16 + c) : 0.0f;
        return vload16(0, x);
    }
    return dp_load16(row, c16 * 16);
}

inline float dp_sum16(float16 x)
{
    float8 a = x.lo + x.hi;
    float4 b = a.lo + a.hi;
    float2 c = b.lo + b.hi;
    return c.x + c.y;
}

inline float dp_max16(float16 x)
{
    float8 a = fmax(x.lo, x.hi);
    float4 b = fmax(a.lo, a.hi);
    float2 c = fmax(b.lo, b.hi);
    return fmax(c.x, c.y);
}

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void dipole_fwd_splitk(__global const dp_storage *q, dp_layout lq,
                       __global const dp_storage *k, dp_layout lk,
                       __global const dp_storage *v, dp_layout lv,
                       __global const dp_storage *v2, dp_layout lv2,
                       DP_PAGED_ARGS,
                       __global float *part,
                       __global const int *key_lengths,
                       int heads_q, int heads_kv, int seq_q, int seq_k,
                       float scale, int window_left, int window_right, DP_SCORE_ARGS, int chunks,
                       int chunk_keys) /* an argument: one program serves every chunk size */
{
    const int chunk = get_global_id(0);
    const int i = get_global_id(1);
    const int b = get_global_id(2);
    const int kl = DP_KEY_LENGTH(b);
    const int2 range = dp_visible_range(i, kl, seq_q, window_left, window_right);
    const int j_lo = max(range.x, chunk * chunk_keys);
    const int j_hi = min(range.y, chunk * chunk_keys + chunk_keys);
#define DP_HEAD_PART(h) (part + DP_PART((long)b * heads_q + (h), i, chunk))
    for (int h = 0; h < heads_q; h++)
        for (int p = 0; p < NPOLES; p++) {
            __global float *st = DP_HEAD_PART(h) + p * PART_STRIDE;
            st[0] = -INFINITY;
            st[1] = 0.0f;
            for (int c = 0; c < 16 * DV; c++)
                st[2 + c] = 0.0f;
        }
    const int16 lane = (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

    for (int j0 = j_lo; j0 < j_hi; j0 += 16) {
        /* The next step's rows, which the hardware prefetcher would not guess: a key is a seq
         * stride from the last, often a page. */
        for (int t = 16; t < 32 && j0 + t < j_hi; t++) {
            const int2 at = DP_KV_AT(b, j0 + t);
            for (int hk = 0; hk < heads_kv; hk++) {
                for (int sm = 0; sm < NSCORES; sm++)
                    dp_prefetch_row(k + DP_ROW(lk, at.x, at.y, DP_POLE_HEAD(hk, sm)));
                dp_prefetch_row_v(v + DP_ROW(lv, at.x, at.y, hk));
#if READS_V2
                dp_prefetch_row_v(v2 + DP_ROW(lv2, at.x, at.y, hk));
#endif
            }
        }
        const int nt = min(16, j_hi - j0);
        /* The step's keys' rows of KV head 0, found once for every head (a head adds its
         * stride): a division and a table read per key where the cache is paged. */
        long k_at[16], v_at[16];
#if READS_V2
        long v2_at[16];
#endif
        for (int t = 0; t < 16; t++) {
            const int2 at = DP_KV_AT(b, min(j0 + t, j_hi - 1));
            k_at[t] = DP_ROW(lk, at.x, at.y, 0);
            v_at[t] = DP_ROW(lv, at.x, at.y, 0);
#if READS_V2
            v2_at[t] = DP_ROW(lv2, at.x, at.y, 0);
#endif
        }
        const int16 vis = lane < (int16)nt;
        for (int h = 0; h < heads_q; h++) {
            const int hk = DP_KV_HEAD(h);
            __global const dp_storage *vh = v + hk * lv.w;
#if READS_V2
            __global const dp_storage *v2h = v2 + hk * lv2.w;
#endif
            float16 sc[NSCORES]; /* the step's scores per map */
            for (int sm = 0; sm < NSCORES; sm++) {
                __global const dp_storage *kh = k + DP_POLE_HEAD(hk, sm) * lk.w;
                float16 qv[DQ];
                __global const dp_storage *qr = q + DP_ROW(lq, b, i, DP_POLE_HEAD(h, sm));
                for (int c16 = 0; c16 < DQ; c16++)
                    qv[c16] = dp_row_piece(qr, c16, HEAD_DIM) * scale;
                float scs[16];
                for (int t = 0; t < 16; t++) {
                    __global const dp_storage *kr = kh + k_at[t];
                    float16 d = (float16)0.0f;
                    for (int c16 = 0; c16 < DQ; c16++)
                        d = fma(qv[c16], dp_row_piece(kr, c16, HEAD_DIM), d);
                    scs[t] = dp_sum16(d);
                }
                sc[sm] = vload16(0, scs);
#if DP_SCORE_MODS
                sc[sm] = DP_SCORE16(sc[sm], b, h, i, 0, INT_MAX, j0, 1, j_hi - 1, kl);
#endif
            }
            __global float *st = DP_HEAD_PART(h);
            float16 acc[NPOLES][DV];
            float av[NPOLES][16];
#if READS_V2
            float av2[NPOLES][16];
#endif
            for (int p = 0; p < NPOLES; p++) {
                __global float *sp = st + p * PART_STRIDE;
                float m = sp[0], l = sp[1];
                for (int c16 = 0; c16 < DV; c16++)
                    acc[p][c16] = vload16(c16, sp + 2);
                const float16 ps = sc[POLE_SCORE(p)]; /* the scores the pole ranks */
                const float16 lg = select((float16)(-INFINITY), POLE_LOGIT(p, ps), vis);
                const float mn = fmax(m, dp_max16(lg));
                if (mn != m) {
                    const float f = dp_rescale(m, mn);
                    l *= f;
                    for (int c16 = 0; c16 < DV; c16++)
                        acc[p][c16] *= f;
                    m = mn;
                }
                const float16 w = select((float16)0.0f, DP_POLE_EXP(dp_exp_nonpos(lg - mn), lg), vis);
                sp[0] = m;
                sp[1] = l + dp_sum16(w);
                const float16 a = w * POLE_COEF(p, ps);
                /* A key routed to the other stream gets STREAM_AWAY, which the product below
                 * skips: its value may be non-finite, and the reference never multiplies it. */
                if (POLE_MAY_V(p))
                    vstore16(POLE_TO_V2(p, ps) ? (float16)STREAM_AWAY : a, 0, av[p]);
#if READS_V2
                if (POLE_MAY_V2(p))
                    vstore16(POLE_TO_V2(p, ps) ? a : (float16)STREAM_AWAY, 0, av2[p]);
#endif
            }
            for (int t = 0; t < nt; t++) {
                __global const dp_storage *vr = vh + v_at[t];
#if READS_V2
                __global const dp_storage *v2r = v2h + v2_at[t];
#endif
                for (int p = 0; p < NPOLES; p++) {
                    if (POLE_MAY_V(p) && !DP_AWAY(av[p][t]))
                        for (int c16 = 0; c16 < DV; c16++)
                            acc[p][c16] = fma((float16)av[p][t],
                                              dp_row_piece(vr, c16, HEAD_DIM_V), acc[p][c16]);
#if READS_V2
                    if (POLE_MAY_V2(p) && !DP_AWAY(av2[p][t]))
                        for (int c16 = 0; c16 < DV; c16++)
                            acc[p][c16] = fma((float16)av2[p][t],
                                              dp_row_piece(v2r, c16, HEAD_DIM_V), acc[p][c16]);
#endif
                }
            }
            for (int p = 0; p < NPOLES; p++)
                for (int c16 = 0; c16 < DV; c16++)
                    vstore16(acc[p][c16], c16, st + p * PART_STRIDE + 2);
        }
    }
#undef DP_HEAD_PART
}

/* Combines the chunks of one query row: work-item (i, b * Hq + h). */
__kernel void dipole_fwd_merge(__global const float *part, int chunks,
                               __global dp_storage *out, dp_layout lout,
                               __global float *lse,
                               __global const int *key_lengths,
                               __global const float *pole_weights,
                               int batch, int heads_q, int seq_q, int seq_k,
                               int window_left, int window_right)
{
    const int i = get_global_id(0);
    const int bh = get_global_id(1);
    if (i >= seq_q)
        return;
    const int b = bh / heads_q, h = bh % heads_q;
    const int kl = DP_KEY_LENGTH(b);
    const int2 range = dp_visible_range(i, kl, seq_q, window_left, window_right);
    const bool has_keys = range.x < range.y;
    __global const float *src = part + DP_PART(bh, i, 0);

    float mm[NPOLES], ll[NPOLES], coef[NPOLES];
    for (int p = 0; p < NPOLES; p++) {
        float mx, sum;
#define PART_M(c) src[((c) * NPOLES + p) * PART_STRIDE]
#define PART_L(c) src[((c) * NPOLES + p) * PART_STRIDE + 1]
        DP_MERGE_POLE(chunks, PART_M, PART_L, mx, sum);
#undef PART_M
#undef PART_L
        mm[p] = mx;
        ll[p] = sum;
        const float pw = dp_pole_weight(pole_weights, p, h, heads_q);
        coef[p] = has_keys && sum != 0.0f ? pw / sum : 0.0f; /* 0: a bias excluded every key */
    }
    /* One rescale per chunk and pole, not per element. */
    float o[HEAD_DIM_V];
    for (int c = 0; c < HEAD_DIM_V; c++)
        o[c] = 0.0f;
    for (int p = 0; p < NPOLES && has_keys; p++)
        for (int ch = 0; ch < chunks; ch++) {
            __global const float *pc = src + (ch * NPOLES + p) * PART_STRIDE;
            /* A chunk whose weights all underflow against the row's max adds nothing, as a
             * key of weight 0 does in the CPU kernel (its values may be non-finite). */
            const float r = dp_rescale(pc[0], mm[p]);
            if (r != 0.0f)
                for (int c = 0; c < HEAD_DIM_V; c++)
                    o[c] = fma(coef[p] * r, pc[2 + c], o[c]);
        }
    __global dp_storage *orow = out + DP_ROW(lout, b, i, h);
    for (int c = 0; c < HEAD_DIM_V; c++)
        dp_store(orow, c, o[c]);
    if (lse)
        for (int p = 0; p < NPOLES; p++)
            lse[DP_STAT(p, b, h, i)] =
                has_keys ? mm[p] + log(ll[p]) : -INFINITY;
}
#endif /* !DP_VARLEN */
