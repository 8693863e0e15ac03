/* Tiled dipole attention backward, CPU layout: the GEMM micro-kernel shape of
 * cl/dipole_fwd_cpu.cl applied to the gradients (the math, and the GPU layout, are in
 * cl/dipole_bwd.cl). A work-item (local size 1) is one SIMD thread that owns blocks of 32
 * lanes, two float16 vectors each:
 *   dipole_bwd_dq_cpu    BLOCK_M query rows (groups of 32). It gets each row's delta (dO . O per pole), then walks
 *                        the keys its rows see, RB keys at a time: scores and dO . u as
 *                        broadcast key x row-vector products, dS lane-wise, dq += dS x key.
 *   dipole_bwd_dkdv_cpu  BLOCK_N keys of one K/V head (groups of 32). It walks the query rows of every query head
 *                        that reads the K/V head, RB rows at a time: scores and dO . u as
 *                        broadcast row x key-vector products, then du += a x dO, dk += dS x q.
 * DIFF scores each pole with its own q and k heads: both kernels keep q, k and their gradients
 * per score map (NSCORES), one dO . v serving both maps, and dS of a map lands on its heads.
 * q and k rows have HEAD_DIM values, v, v2 and dO rows HEAD_DIM_V.
 * Every gradient element is summed by one work-item in a fixed order: bit-for-bit repeatable.
 * dq runs first: it writes the per-row delta (and pole dots) that dkdv and dweights read. */

#define NV 2            /* float16 vectors per work-item: 32 lanes */
#define LANES (16 * NV)
#define RB 8            /* register block: keys (dq) or query rows (dkdv) per step */
#define TILE 64         /* keys (dq) or query rows (dkdv) per packed tile, a multiple of RB */

#define LANE_IDS ((int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))

/* Copies n rows of dim values (times mul) into a contiguous float tile and zero-fills it
 * up to n_pad rows; returns whether every value copied is finite. */
inline bool dp_pack_rows(__local float *dst, __global const dp_storage *src, long stride, int n,
                         int n_pad, int dim, float mul)
{
    int finite = 1;
    int16 ok = (int16)(-1);
    for (int r = 0; r < n; r++) {
        __global const dp_storage *row = src + (long)r * stride;
        __local float *to = dst + r * dim;
        int c = 0;
        for (; c + 16 <= dim; c += 16) {
            const float16 x = dp_load16(row, c) * mul;
            ok &= DP_FINITE16(x);
            vstore16(x, 0, to + c);
        }
        for (; c < dim; c++) {
            to[c] = dp_load(row, c) * mul;
            finite &= isfinite(to[c]);
        }
    }
    for (int e = n * dim; e < n_pad * dim; e++)
        dst[e] = 0.0f;
    return finite && all(ok);
}

/* The two register-blocked products every kernel here is made of, over RB rows of a row-major
 * tile (dim floats each: HEAD_DIM for q and k, HEAD_DIM_V for v, v2 and dO; broadcast one
 * scalar at a time) and one 32-lane block kept transposed (float16 vecs[c * NV + r]):
 *   DP_RB_DOTS:  acc[t][r] += sum_c tile[t][c] * vecs[c][r]   (scores, dO . v)
 *   DP_RB_ACCUM: vecs[c][r] += sum_t coef[t][r] * tile[t][c]  (dq, dk, dv)
 * DP_RB_ACCUM_VIS adds only in the lanes that see tile row t (vis(t, r), an int16 mask): for
 * tiles holding non-finite values, where 0 x inf would reach lanes that do not see them.
 * Macros: passing the private accumulator arrays to a function cost ~15 % (see
 * cl/dipole_fwd_cpu.cl). */
#define DP_RB_DOTS(acc, tile, vecs, dim)                                                       \
    for (int c = 0; c < (dim); c++) {                                                          \
        const float16 x0 = (vecs)[c * NV], x1 = (vecs)[c * NV + 1];                            \
        _Pragma("unroll") for (int t = 0; t < RB; t++) {                                       \
            const float16 bc = (float16)((tile)[t * (dim) + c]);                               \
            (acc)[t][0] = fma(bc, x0, (acc)[t][0]);                                            \
            (acc)[t][1] = fma(bc, x1, (acc)[t][1]);                                            \
        }                                                                                      \
    }
#define DP_RB_ACCUM(vecs, coef, tile, dim)                                                     \
    for (int c = 0; c < (dim); c++) {                                                          \
        float16 y0 = (vecs)[c * NV], y1 = (vecs)[c * NV + 1];                                  \
        _Pragma("unroll") for (int t = 0; t < RB; t++) {                                       \
            const float16 bc = (float16)((tile)[t * (dim) + c]);                               \
            y0 = fma((coef)[t][0], bc, y0);                                                    \
            y1 = fma((coef)[t][1], bc, y1);                                                    \
        }                                                                                      \
        (vecs)[c * NV] = y0;                                                                   \
        (vecs)[c * NV + 1] = y1;                                                               \
    }
#define DP_RB_ACCUM_VIS(vecs, coef, tile, vis, dim)                                            \
    for (int t = 0; t < RB; t++)                                                               \
        for (int r = 0; r < NV; r++) {                                                         \
            const int16 seen = vis(t, r);                                                      \
            for (int c = 0; c < (dim); c++) {                                                  \
                const float16 bc = (float16)((tile)[t * (dim) + c]);                           \
                (vecs)[c * NV + r] =                                                           \
                    select((vecs)[c * NV + r], fma((coef)[t][r], bc, (vecs)[c * NV + r]), seen); \
            }                                                                                  \
        }
#define DP_RB_ZERO(acc)                                                                        \
    _Pragma("unroll") for (int t = 0; t < RB; t++) {                                           \
        (acc)[t][0] = (float16)0.0f;                                                           \
        (acc)[t][1] = (float16)0.0f;                                                           \
    }

/* The products every gradient register block starts from, in dq and dkdv alike: dO . v as gv
 * (DP_RB_DOTS of g_tile and g_vecs) and, where the variant reads v2, dO . v2 as gv2 (g2_tile,
 * g2_vecs; otherwise those are not evaluated), once per block; then per score map the scores s
 * (s_tile, s_vecs). They are declared here as float16 [RB][NV] so that they stay private
 * registers, for the reason above. dq tiles key rows against its query rows' vectors, dkdv
 * query rows against its keys'. */
#if READS_V2
#define DP_RB_GV2(gv2, g2_tile, g2_vecs)                                                       \
    float16 gv2[RB][NV];                                                                       \
    DP_RB_ZERO(gv2);                                                                           \
    DP_RB_DOTS(gv2, g2_tile, g2_vecs, HEAD_DIM_V)
#else
#define DP_RB_GV2(gv2, g2_tile, g2_vecs)
#endif
#define DP_RB_GV(gv, g_tile, g_vecs, gv2, g2_tile, g2_vecs)                                    \
    float16 gv[RB][NV];                                                                        \
    DP_RB_ZERO(gv);                                                                            \
    DP_RB_DOTS(gv, g_tile, g_vecs, HEAD_DIM_V);                                                \
    DP_RB_GV2(gv2, g2_tile, g2_vecs)
#define DP_RB_SCORES(s, s_tile, s_vecs)                                                        \
    float16 s[RB][NV];                                                                         \
    DP_RB_ZERO(s);                                                                             \
    DP_RB_DOTS(s, s_tile, s_vecs, HEAD_DIM)

/* dp_exp_nonpos for x that may exceed 0: rounding puts logit - lse a little above 0, masked
 * lanes (discarded later) anything, and an lse passed in that does not belong to q and k
 * anything; above 88 the exponent bits of 2^n would wrap to a negative number, so x is held
 * there (NaN stays NaN). (The forward's masked lanes can wrap too, but a select drops them
 * and its visible lanes stay <= 0: it subtracts the running maximum.) */
inline float16 dp_exp_held(float16 x)
{
    return dp_exp_nonpos(select(x, (float16)88.0f, x > 88.0f));
}

/* Pole p's share of one lane vector's gradients, from the score s, the products of dO with
 * the key's v and v2 (gv, gv2), the row's lse and delta for the pole, and its weight w:
 * returns the pole's term of dS; *a is the factor on dO that lands on the routed value. */
inline float16 dp_pole_grad(int p, float16 s, float16 gv, float16 gv2, float16 lse,
                            float16 delta, float w, float16 *a)
{
    const float16 lg = POLE_LOGIT(p, s), prob = DP_POLE_EXP(dp_exp_held(lg - lse), lg);
    const float16 coef = POLE_COEF(p, s) * w;
    const float16 gu = POLE_TO_V2(p, s) ? gv2 : gv;
    *a = prob * coef;
    return prob * (coef * gu - delta) * POLE_LOGIT_DS(p, s);
}

/* A variant that reads no v2 has no dO . v2: there gv2 stands for gv, so that the per-lane code
 * is one text for every variant (POLE_TO_V2 never picks it). */
#if !READS_V2
#define gv2 gv
#endif

/* dq (and delta): work-item (row block, h, b). Its BLOCK_M rows come in NG groups of 32 lanes;
 * each packed K/V tile serves every group, so that a tile's trip through the caches pays for NG
 * times the arithmetic (packing was ~30 % of the kernel with one group). */
#ifndef BLOCK_M
#define BLOCK_M 128
#endif
#if BLOCK_M < LANES || BLOCK_M % LANES
#error "BLOCK_M must be a positive multiple of 32"
#endif
#define NG (BLOCK_M / LANES)
/* Lane l of group g in a transposed row array of dim values a row:
 * [(g * dim + c) * NV + l / 16][l % 16]. Arrays of q and k rows (and their gradients) hold
 * NSCORES score maps, map m's groups after the m * NG (dq) or m * KG (dkdv) groups before. */
#define DP_T(g, c, l, dim) ((((g) * (dim) + (c)) * NV + (l) / 16) * 16 + (l) % 16)

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void dipole_bwd_dq_cpu(__global const dp_storage *q, dp_layout lq,
                       __global const dp_storage *k, dp_layout lk,
                       __global const dp_storage *v, dp_layout lv,
                       __global const dp_storage *v2, dp_layout lv2,
                       __global const dp_storage *out, dp_layout lout,
                       __global const dp_storage *dout, dp_layout ldout,
                       __global const float *lse,          /* [NPOLES, B, Hq, Nq] */
                       __global const int *key_lengths,    /* [B] or NULL; packed: DP_VARLEN */
                       __global const float *pole_weights, /* [2, Hq] or NULL */
                       __global float *delta,              /* [NPOLES, B, Hq, Nq], written */
                       __global float *rowdot,             /* [NPOLES, B, Hq, Nq] or NULL */
                       __global dp_storage *dq, dp_layout ldq,
                       int batch, int heads_q, int heads_kv, int seq_q, int seq_k,
                       float scale, int window_left, int window_right, DP_SCORE_ARGS)
{
    const int row0 = get_global_id(0) * BLOCK_M, h = get_global_id(1), b = get_global_id(2);
    DP_REBASE_Q(lq, b);
    DP_REBASE_Q(lout, b);
    DP_REBASE_Q(ldout, b);
    DP_REBASE_Q(ldq, b);
    DP_REBASE_K(lk, b);
    DP_REBASE_K(lv, b);
    DP_REBASE_K(lv2, b);
    DP_SEQUENCE(b);
    if (row0 >= seq_q)
        return;
    const int hk = DP_KV_HEAD(h), kl = DP_KEY_LENGTH(b);
    const int rows = min(BLOCK_M, seq_q - row0);
    const int groups = (rows + LANES - 1) / LANES; /* groups with a live row */

    /* Row state, transposed (DP_T; q times scale), q and dq per score map. Rows past seq_q
     * copy the last row (never written, never force the masked path). */
    __local float16 qT[NSCORES * NG * HEAD_DIM * NV], dqT[NSCORES * NG * HEAD_DIM * NV];
    __local float16 doT[NG * HEAD_DIM_V * NV];
    __local float kt[NSCORES * TILE * HEAD_DIM], vt[TILE * HEAD_DIM_V];
#if READS_V2
    __local float v2t[TILE * HEAD_DIM_V];
#endif
    /* Per-row scalars are staged here and loaded as vectors: no lane writes through pointer
     * casts into private vectors (oclgrind tracks those as uninitialised). */
    __local int lo_s[BLOCK_M], hi_s[BLOCK_M];
    __local float lse_s[NPOLES * BLOCK_M], delta_s[NPOLES * BLOCK_M], rd_s[NPOLES * BLOCK_M];
    int16 lo[NG][NV], hi[NG][NV];
    float16 lse_v[NG][NPOLES][NV], delta_v[NG][NPOLES][NV], rd[NG][NPOLES][NV];
    int g_lo[NG], g_hi[NG], g_max_lo[NG], g_min_hi[NG];
    float w[NPOLES];
    for (int g = 0; g < NG; g++) {
        g_lo[g] = INT_MAX;
        g_hi[g] = 0;
        g_max_lo[g] = 0;
        g_min_hi[g] = INT_MAX;
    }
    for (int r = 0; r < BLOCK_M; r++) {
        const int g = r / LANES, l = r % LANES;
        const int i = min(row0 + r, seq_q - 1);
        const int2 range = dp_visible_range(i, kl, seq_q, window_left, window_right);
        lo_s[r] = range.x;
        hi_s[r] = range.y;
        if (range.x < range.y && g < groups) {
            g_lo[g] = min(g_lo[g], range.x);
            g_hi[g] = max(g_hi[g], range.y);
        }
        g_max_lo[g] = max(g_max_lo[g], range.x);
        g_min_hi[g] = min(g_min_hi[g], range.y);
        for (int m = 0; m < NSCORES; m++) {
            __global const dp_storage *qr = q + DP_ROW(lq, b, i, DP_POLE_HEAD(h, m));
            for (int c = 0; c < HEAD_DIM; c++) {
                ((__local float *)qT)[DP_T(m * NG + g, c, l, HEAD_DIM)] = dp_load(qr, c) * scale;
                ((__local float *)dqT)[DP_T(m * NG + g, c, l, HEAD_DIM)] = 0.0f;
            }
        }
        __global const dp_storage *dor = dout + DP_ROW(ldout, b, i, h);
        float dot = 0.0f;
#if NPOLES == 1
        __global const dp_storage *orow = out + DP_ROW(lout, b, i, h);
#endif
        for (int c = 0; c < HEAD_DIM_V; c++) {
            ((__local float *)doT)[DP_T(g, c, l, HEAD_DIM_V)] = dp_load(dor, c);
#if NPOLES == 1
            dot = fma(dp_load(dor, c), dp_load(orow, c), dot);
#endif
        }
        for (int p = 0; p < NPOLES; p++) {
            lse_s[p * BLOCK_M + r] = lse[DP_STAT(p, b, h, i)];
            delta_s[p * BLOCK_M + r] = dot; /* NPOLES == 2: rebuilt by the first walk below */
        }
    }
    int j_begin = INT_MAX, j_end = 0;
    for (int g = 0; g < NG; g++) {
        j_begin = min(j_begin, g_lo[g]);
        j_end = max(j_end, g_hi[g]);
        for (int r = 0; r < NV; r++) {
            lo[g][r] = vload16(g * NV + r, lo_s);
            hi[g][r] = vload16(g * NV + r, hi_s);
            for (int p = 0; p < NPOLES; p++) {
                lse_v[g][p][r] = vload16(g * NV + r, lse_s + p * BLOCK_M);
                delta_v[g][p][r] = vload16(g * NV + r, delta_s + p * BLOCK_M);
                rd[g][p][r] = (float16)0.0f;
            }
        }
    }
    for (int p = 0; p < NPOLES; p++)
        w[p] = dp_pole_weight(pole_weights, p, h, heads_q);

    /* TWO_POLE and DIFF have no O_0 and O_1 to dot with dO: the first walk rebuilds dO . O_p
     * from the saved lse as sum_j P_pj dO . u_j; the second is the gradient walk. */
    for (int walk = NPOLES == 2 ? 0 : 1; walk < 2; walk++) {
#if NPOLES == 2
        if (walk == 1)
            for (int g = 0; g < NG; g++)
                for (int p = 0; p < NPOLES; p++)
                    for (int r = 0; r < NV; r++)
                        delta_v[g][p][r] = w[p] * rd[g][p][r];
#endif
        for (int j0 = j_begin; j0 < j_end; j0 += TILE) {
            const int n = min(TILE, j_end - j0);
            const int n_pad = (n + RB - 1) / RB * RB;
            bool k_finite = true;
            for (int m = 0; m < NSCORES; m++)
                k_finite &= dp_pack_rows(kt + m * TILE * HEAD_DIM,
                                         k + DP_ROW(lk, b, j0, DP_POLE_HEAD(hk, m)), lk.z, n,
                                         n_pad, HEAD_DIM, 1.0f);
            dp_pack_rows(vt, v + DP_ROW(lv, b, j0, hk), lv.z, n, n_pad, HEAD_DIM_V, 1.0f);
#if READS_V2
            dp_pack_rows(v2t, v2 + DP_ROW(lv2, b, j0, hk), lv2.z, n, n_pad, HEAD_DIM_V, 1.0f);
#endif
            for (int g = 0; g < groups; g++) {
                if (j0 >= g_hi[g] || j0 + n <= g_lo[g])
                    continue; /* no row of the group sees this tile */
                /* Padding keys (past n) lie past every row's range: the masked path drops them. */
                const bool masked = !(j0 >= g_max_lo[g] && j0 + n <= g_min_hi[g]) || n != n_pad;
                __local const float16 *dog = doT + g * HEAD_DIM_V * NV;

                for (int jb = 0; jb < n; jb += RB) {
                    DP_RB_GV(gv, vt + jb * HEAD_DIM_V, dog, gv2, v2t + jb * HEAD_DIM_V, dog);
                    /* Each score map's scores, and the terms of the poles that rank it. */
                    for (int m = 0; m < NSCORES; m++) {
                        __local const float *kb = kt + (m * TILE + jb) * HEAD_DIM;
                        __local const float16 *qg = qT + (m * NG + g) * HEAD_DIM * NV;
                        __local float16 *dqg = dqT + (m * NG + g) * HEAD_DIM * NV;
                        DP_RB_SCORES(s, kb, qg);
#if DP_SCORE_MODS
                        /* The modified scores, and d(modified)/d(raw) for dS; rows past the
                         * sequence and padding keys are clamped into it (their lanes are
                         * dropped). */
                        float16 sd[RB][NV];
#pragma unroll
                        for (int t = 0; t < RB; t++)
#pragma unroll
                            for (int r = 0; r < NV; r++) {
                                sd[t][r] = DP_SCORE_DS16(s[t][r]);
                                s[t][r] = DP_SCORE16(s[t][r], b, h, row0 + g * LANES + 16 * r, 1,
                                                     seq_q - 1, j0 + min(jb + t, n - 1), 0, INT_MAX,
                                                     kl);
                            }
#endif
                        /* dS per lane, into s (selected, not multiplied, to 0 where a row does not
                         * see the key: a masked NaN stays out). */
#pragma unroll
                        for (int t = 0; t < RB; t++)
#pragma unroll
                            for (int r = 0; r < NV; r++) {
                                const float16 sv = s[t][r];
                                const int16 vis = ((int16)(j0 + jb + t) >= lo[g][r]) &
                                                  ((int16)(j0 + jb + t) < hi[g][r]);
                                if (walk == 0) {
                                    for (int p = 0; p < NPOLES; p++) {
                                        if (POLE_SCORE(p) != m)
                                            continue;
                                        const float16 lg = POLE_LOGIT(p, sv);
                                        const float16 prob =
                                            DP_POLE_EXP(dp_exp_held(lg - lse_v[g][p][r]), lg);
                                        const float16 gu = POLE_TO_V2(p, sv) ? gv2[t][r] : gv[t][r];
                                        const float16 term = prob * POLE_COEF(p, sv) * gu;
                                        rd[g][p][r] +=
                                            masked ? select((float16)0.0f, term, vis) : term;
                                    }
                                    continue;
                                }
                                float16 ds = (float16)0.0f, a;
                                for (int p = 0; p < NPOLES; p++)
                                    if (POLE_SCORE(p) == m)
                                        ds += dp_pole_grad(p, sv, gv[t][r], gv2[t][r],
                                                           lse_v[g][p][r], delta_v[g][p][r], w[p],
                                                           &a);
#if HAS_SOFTCAP
                                ds *= sd[t][r];
#endif
                                s[t][r] = masked ? select((float16)0.0f, ds, vis) : ds;
                            }
                        if (walk == 0)
                            continue;
                        /* dq += dS x key. Where a row does not see a key its dS is 0, but 0 x inf
                         * is NaN: a tile with non-finite keys takes the lane-selecting loop. */
#define DQ_VIS(t, r) (((int16)(j0 + jb + (t)) >= lo[g][r]) & ((int16)(j0 + jb + (t)) < hi[g][r]))
                        if (!masked || k_finite) {
                            DP_RB_ACCUM(dqg, s, kb, HEAD_DIM);
                        } else {
                            DP_RB_ACCUM_VIS(dqg, s, kb, DQ_VIS, HEAD_DIM);
                        }
#undef DQ_VIS
                    }
                }
            }
        }
    }

    for (int g = 0; g < NG; g++)
        for (int p = 0; p < NPOLES; p++)
            for (int r = 0; r < NV; r++) {
                vstore16(delta_v[g][p][r], g * NV + r, delta_s + p * BLOCK_M);
                vstore16(rd[g][p][r], g * NV + r, rd_s + p * BLOCK_M);
            }
    for (int r = 0; r < rows; r++) {
        const int i = row0 + r;
        for (int m = 0; m < NSCORES; m++) {
            __global dp_storage *dqr = dq + DP_ROW(ldq, b, i, DP_POLE_HEAD(h, m));
            for (int c = 0; c < HEAD_DIM; c++)
                dp_store(dqr, c,
                         ((__local float *)dqT)[DP_T(m * NG + r / LANES, c, r % LANES, HEAD_DIM)] *
                             scale);
        }
        for (int p = 0; p < NPOLES; p++) {
            delta[DP_STAT(p, b, h, i)] = delta_s[p * BLOCK_M + r];
            if (rowdot)
                rowdot[DP_STAT(p, b, h, i)] =
                    NPOLES == 2 ? rd_s[p * BLOCK_M + r] : delta_s[p * BLOCK_M + r];
        }
    }
}

/* dK, dV (and dV2): work-item (key block, hk, b). Its BLOCK_N keys come in KG groups of 32
 * lanes; each packed tile of query rows serves every group. */
#ifndef BLOCK_N
#define BLOCK_N 128
#endif
#if BLOCK_N < LANES || BLOCK_N % LANES
#error "BLOCK_N must be a positive multiple of 32"
#endif
#define KG (BLOCK_N / LANES)

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void dipole_bwd_dkdv_cpu(__global const dp_storage *q, dp_layout lq,
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
    const int kb0 = get_global_id(0) * BLOCK_N;
    const int hk = get_global_id(1);
    const int b = get_global_id(2);
    DP_REBASE_Q(lq, b);
    DP_REBASE_Q(ldout, b);
    DP_REBASE_K(lk, b);
    DP_REBASE_K(lv, b);
    DP_REBASE_K(lv2, b);
    DP_REBASE_K(ldk, b);
    DP_REBASE_K(ldv, b);
    DP_REBASE_K(ldv2, b);
    DP_SEQUENCE(b);
    if (kb0 >= seq_k)
        return;
    const int group = heads_q / heads_kv;
    const int kl = DP_KEY_LENGTH(b);
    const int keys = min(BLOCK_N, seq_k - kb0);
    const int kb_hi = min(kb0 + BLOCK_N, kl); /* the block's keys that rows can see */
    const int key_groups = min(KG, (min(keys, max(kl - kb0, 0)) + LANES - 1) / LANES);

    /* Key state, transposed (DP_T: dim c of key kb0 + 32e + l at DP_T(e, c, l, dim)), k and dk
     * per score map. Keys past seq_k copy the last key (never visible, never written). */
    __local float16 kT[NSCORES * KG * HEAD_DIM * NV], dkT[NSCORES * KG * HEAD_DIM * NV];
    __local float16 vT[KG * HEAD_DIM_V * NV], dvT[KG * HEAD_DIM_V * NV];
#if READS_V2
    __local float16 v2T[KG * HEAD_DIM_V * NV], dv2T[KG * HEAD_DIM_V * NV];
#endif
    __local float qt[NSCORES * TILE * HEAD_DIM]; /* a tile of query rows per map, times scale */
    __local float dot_[TILE * HEAD_DIM_V];
    __local float lse_t[NPOLES * TILE], delta_t[NPOLES * TILE];
    __local int2 range_t[TILE];
    for (int r = 0; r < BLOCK_N; r++) {
        const int j = min(kb0 + r, seq_k - 1);
        for (int m = 0; m < NSCORES; m++) {
            __global const dp_storage *kr = k + DP_ROW(lk, b, j, DP_POLE_HEAD(hk, m));
            for (int c = 0; c < HEAD_DIM; c++) {
                const int at = DP_T(m * KG + r / LANES, c, r % LANES, HEAD_DIM);
                ((__local float *)kT)[at] = dp_load(kr, c);
                ((__local float *)dkT)[at] = 0.0f;
            }
        }
        __global const dp_storage *vr = v + DP_ROW(lv, b, j, hk);
#if READS_V2
        __global const dp_storage *v2r = v2 + DP_ROW(lv2, b, j, hk);
#endif
        for (int c = 0; c < HEAD_DIM_V; c++) {
            const int at = DP_T(r / LANES, c, r % LANES, HEAD_DIM_V);
            ((__local float *)vT)[at] = dp_load(vr, c);
            ((__local float *)dvT)[at] = 0.0f;
#if READS_V2
            ((__local float *)v2T)[at] = dp_load(v2r, c);
            ((__local float *)dv2T)[at] = 0.0f;
#endif
        }
    }
    int16 jv[KG][NV];
    for (int e = 0; e < KG; e++)
        for (int r = 0; r < NV; r++)
            jv[e][r] = LANE_IDS + (kb0 + LANES * e + 16 * r);

    for (int g = 0; g < group && kb0 < kl; g++) {
        const int h = hk * group + g;
        float w[NPOLES];
        for (int p = 0; p < NPOLES; p++)
            w[p] = dp_pole_weight(pole_weights, p, h, heads_q);
        for (int i0 = 0; i0 < seq_q; i0 += TILE) {
            const int m = min(TILE, seq_q - i0);
            /* Visible ranges only grow with the row: skip tiles that miss the block. */
            const int2 seen = dp_tile_visible_range(i0, i0 + m, kl, seq_q, window_left,
                                                    window_right);
            if (seen.y <= kb0 || seen.x >= kb_hi)
                continue;
            const int m_pad = (m + RB - 1) / RB * RB;
            bool q_finite = true;
            for (int sm = 0; sm < NSCORES; sm++)
                q_finite &= dp_pack_rows(qt + sm * TILE * HEAD_DIM,
                                         q + DP_ROW(lq, b, i0, DP_POLE_HEAD(h, sm)), lq.z, m,
                                         m_pad, HEAD_DIM, scale);
            const bool do_finite = dp_pack_rows(dot_, dout + DP_ROW(ldout, b, i0, h), ldout.z, m,
                                                m_pad, HEAD_DIM_V, 1.0f);
            const bool rows_finite = q_finite && do_finite;
            for (int r = 0; r < m_pad; r++) {
                /* padding rows see nothing */
                range_t[r] = r < m ? dp_visible_range(i0 + r, kl, seq_q, window_left,
                                                      window_right)
                                   : (int2)(0, 0);
                for (int p = 0; p < NPOLES; p++) {
                    lse_t[p * TILE + r] = r < m ? lse[DP_STAT(p, b, h, i0 + r)] : 0.0f;
                    delta_t[p * TILE + r] = r < m ? delta[DP_STAT(p, b, h, i0 + r)] : 0.0f;
                }
            }

            for (int e = 0; e < key_groups; e++) {
                const int j0 = kb0 + e * LANES;
                const int j_hi = min(j0 + LANES, kl); /* the group's keys rows can see */
                __local const float16 *vg = vT + e * HEAD_DIM_V * NV;
                __local float16 *dvg = dvT + e * HEAD_DIM_V * NV;
#if READS_V2
                __local const float16 *v2g = v2T + e * HEAD_DIM_V * NV;
                __local float16 *dv2g = dv2T + e * HEAD_DIM_V * NV;
#endif
                for (int r0 = 0; r0 < m; r0 += RB) {
                    bool any = false, full = true;
                    for (int r = r0; r < r0 + RB; r++) {
                        const int2 rg = range_t[r];
                        any |= rg.x < j_hi && rg.y > j0 && rg.x < rg.y;
                        full &= rg.x <= j0 && rg.y >= j0 + LANES;
                    }
                    if (!any)
                        continue;
                    const bool masked = !full;
                    /* A row that does not see a key has a = dS = 0 there, but 0 x inf is NaN: a
                     * tile with non-finite rows selects per lane (ROUTED gives a (row, key)
                     * weight to one value only; a non-finite dO must not reach the other
                     * through 0 x inf, so its tiles select by route even where every row sees
                     * every key). */
#if VARIANT == DIPOLE_ROUTED
                    const bool plain = rows_finite;
#else
                    const bool plain = !masked || rows_finite;
#endif
#define DKDV_VIS(t, r) ((jv[e][r] >= (int16)range_t[r0 + (t)].x) & (jv[e][r] < (int16)range_t[r0 + (t)].y))

                    __local const float *dob = dot_ + r0 * HEAD_DIM_V;
                    DP_RB_GV(gv, dob, vg, gv2, dob, v2g);
                    /* The factors on dO, summed over the poles, into av (value v) and av2
                     * (value v2); for ROUTED, which of the two each (row, key) feeds (rt: v2). */
                    float16 av[RB][NV];
#if VARIANT == DIPOLE_ROUTED
                    int16 rt[RB][NV];
#endif
#if READS_V2
                    float16 av2[RB][NV];
#endif
#if NSCORES == 2
                    DP_RB_ZERO(av);
#endif
                    /* Each score map's scores, and the terms of the poles that rank it. */
                    for (int sm = 0; sm < NSCORES; sm++) {
                        __local const float *qb = qt + (sm * TILE + r0) * HEAD_DIM;
                        __local const float16 *kg = kT + (sm * KG + e) * HEAD_DIM * NV;
                        __local float16 *dkg = dkT + (sm * KG + e) * HEAD_DIM * NV;
                        DP_RB_SCORES(s, qb, kg);
#if DP_SCORE_MODS
                        /* As in dq; padding rows and keys past the sequence clamped into it. */
                        float16 sd[RB][NV];
#pragma unroll
                        for (int t = 0; t < RB; t++)
#pragma unroll
                            for (int r = 0; r < NV; r++) {
                                sd[t][r] = DP_SCORE_DS16(s[t][r]);
                                s[t][r] = DP_SCORE16(s[t][r], b, h, min(i0 + r0 + t, seq_q - 1),
                                                     0, INT_MAX, kb0 + LANES * e + 16 * r, 1,
                                                     seq_k - 1, kl);
                            }
#endif
                        /* Per lane: dS into s, the pole factors on dO added to av and av2. */
#pragma unroll
                        for (int t = 0; t < RB; t++)
#pragma unroll
                            for (int r = 0; r < NV; r++) {
                                const int2 rg = range_t[r0 + t];
                                const int16 vis =
                                    (jv[e][r] >= (int16)rg.x) & (jv[e][r] < (int16)rg.y);
                                const float16 sv = s[t][r];
                                float16 ds = (float16)0.0f, to_v = (float16)0.0f;
#if READS_V2
                                float16 to_v2 = (float16)0.0f;
#endif
                                for (int p = 0; p < NPOLES; p++) {
                                    if (POLE_SCORE(p) != sm)
                                        continue;
                                    float16 a;
                                    ds += dp_pole_grad(p, sv, gv[t][r], gv2[t][r],
                                                       (float16)lse_t[p * TILE + r0 + t],
                                                       (float16)delta_t[p * TILE + r0 + t], w[p],
                                                       &a);
                                    if (POLE_MAY_V(p))
                                        to_v += POLE_TO_V2(p, sv) ? (float16)0.0f : a;
#if READS_V2
                                    if (POLE_MAY_V2(p))
                                        to_v2 += POLE_TO_V2(p, sv) ? a : (float16)0.0f;
#endif
                                }
#if VARIANT == DIPOLE_ROUTED
                                rt[t][r] = POLE_TO_V2(0, sv);
#endif
#if HAS_SOFTCAP
                                ds *= sd[t][r];
#endif
                                s[t][r] = masked ? select((float16)0.0f, ds, vis) : ds;
                                to_v = masked ? select((float16)0.0f, to_v, vis) : to_v;
                                av[t][r] = NSCORES == 1 ? to_v : av[t][r] + to_v;
#if READS_V2
                                av2[t][r] = masked ? select((float16)0.0f, to_v2, vis) : to_v2;
#endif
                            }
                        /* dk += dS x q */
                        if (plain) {
                            DP_RB_ACCUM(dkg, s, qb, HEAD_DIM);
                        } else {
                            DP_RB_ACCUM_VIS(dkg, s, qb, DKDV_VIS, HEAD_DIM);
                        }
                    }
                    /* du += a x dO */
#if VARIANT == DIPOLE_ROUTED
#define TO_V_VIS(t, r) (DKDV_VIS(t, r) & ~rt[t][r])
#define TO_V2_VIS(t, r) (DKDV_VIS(t, r) & rt[t][r])
#else
#define TO_V_VIS DKDV_VIS
#define TO_V2_VIS DKDV_VIS
#endif
                    if (plain) {
                        DP_RB_ACCUM(dvg, av, dob, HEAD_DIM_V);
#if READS_V2
                        DP_RB_ACCUM(dv2g, av2, dob, HEAD_DIM_V);
#endif
                    } else {
                        DP_RB_ACCUM_VIS(dvg, av, dob, TO_V_VIS, HEAD_DIM_V);
#if READS_V2
                        DP_RB_ACCUM_VIS(dv2g, av2, dob, TO_V2_VIS, HEAD_DIM_V);
#endif
                    }
#undef TO_V_VIS
#undef TO_V2_VIS
#undef DKDV_VIS
                }
            }
        }
    }

    for (int r = 0; r < keys; r++) {
        const int j = kb0 + r;
        for (int m = 0; m < NSCORES; m++) {
            __global dp_storage *dkr = dk + DP_ROW(ldk, b, j, DP_POLE_HEAD(hk, m));
            for (int c = 0; c < HEAD_DIM; c++)
                dp_store(dkr, c,
                         ((__local float *)dkT)[DP_T(m * KG + r / LANES, c, r % LANES, HEAD_DIM)]);
        }
        __global dp_storage *dvr = dv + DP_ROW(ldv, b, j, hk);
#if READS_V2
        __global dp_storage *dv2r = dv2 + DP_ROW(ldv2, b, j, hk);
#endif
        for (int c = 0; c < HEAD_DIM_V; c++) {
            const int at = DP_T(r / LANES, c, r % LANES, HEAD_DIM_V);
            dp_store(dvr, c, ((__local float *)dvT)[at]);
#if READS_V2
            dp_store(dv2r, c, ((__local float *)dv2T)[at]);
#endif
        }
    }
}
