/* Tiled dipole attention forward, CPU layout. On a CPU device a work-item is one SIMD thread,
 * so the fast shape is a GEMM micro-kernel per work-item (local size 1): BLOCK_M query rows lie
 * across the lanes of float16 vectors, Q (scale folded in) and the output accumulators are kept
 * transposed in private memory, and each key tile runs two register-blocked loops —
 * scores += K scalar x Q vector, then acc += V scalar x weight vector. The online softmax
 * (max, rescale, sums) is lane-wise vector arithmetic. The variant enters only through the
 * macros of dipole_common.cl, applied to vectors.
 *
 * Also here: split-K decode (few query rows, many keys): each work-item takes one query row and
 * one chunk of keys and writes its partial (max, sum, acc) per pole; a merge kernel combines. */

#ifndef BLOCK_M
#define BLOCK_M 32
#endif
#ifndef BLOCK_N
#define BLOCK_N 64
#endif
#if BLOCK_M != 16 && BLOCK_M != 32
#error "BLOCK_M must be 16 or 32 (rows laid across one or two float16 vectors)"
#endif

#define RV (BLOCK_M / 16) /* float16 vectors per row block */
#define RB (16 / RV)      /* register block: keys per score block, dims per output block */
#if BLOCK_N < 1
#error "BLOCK_N must be >= 1"
#endif
#define N_PAD ((BLOCK_N + RB - 1) / RB * RB)

/* e^x for x <= 0, lane-wise: x = n ln2 + r with |r| <= ln2/2, e^r by a degree-6 Taylor
 * polynomial (truncation ~1.2e-7 relative), 2^n built in the exponent bits. x < -87 gives 0
 * (so -inf does), NaN stays NaN. The library exp is several times slower here, and a rint
 * through the 1.5 * 2^23 trick needs no library call. */
inline float16 dp_exp_nonpos(float16 x)
{
    const float16 t = fma(x, (float16)1.44269504f, (float16)12582912.0f);
    const float16 n = t - 12582912.0f;
    float16 r = fma(n, (float16)-0.693145751953125f, x);
    r = fma(n, (float16)-1.428606765330187e-6f, r);
    float16 p = (float16)(1.0f / 720.0f);
    p = fma(p, r, (float16)(1.0f / 120.0f));
    p = fma(p, r, (float16)(1.0f / 24.0f));
    p = fma(p, r, (float16)(1.0f / 6.0f));
    p = fma(p, r, (float16)0.5f);
    p = fma(p, r, (float16)1.0f);
    p = fma(p, r, (float16)1.0f);
    /* t's low mantissa bits hold n (two's complement): (n + 127) << 23 is 2^n's bit pattern. */
    const uint16 bits = (as_uint16(t) + 127u) << 23;
    return select(p * as_float16(bits), (float16)0.0f, x < -87.0f);
}

/* One pole's share of a tile: rescale by the new max, then the tile's weights to v and v2.
 * masked: some lane does not see some key of the tile (vis per key is then computed). */
#define LANE_VIS(jj, r) (((j0 + (jj)) >= lo[r]) & ((j0 + (jj)) < hi[r]))

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void dipole_fwd_cpu(__global const float *q, dp_layout lq,
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
    const int row0 = get_global_id(0) * BLOCK_M;
    const int h = get_global_id(1);
    const int b = get_global_id(2);
    if (row0 >= seq_q)
        return;
    const int hk = h / (heads_q / heads_kv);
    const int kl = key_lengths ? key_lengths[b] : seq_k;

    /* Per-lane visible key ranges. Rows past seq_q copy the last live row's range, so that
     * they never force the masked path (their results are not written). */
    int16 lo[RV], hi[RV];
    int j_begin = INT_MAX, j_end = 0, max_lo = 0, min_hi = INT_MAX;
    for (int r = 0; r < BLOCK_M; r++) {
        const int2 range =
            dp_visible_range(min(row0 + r, seq_q - 1), kl, seq_q, window_left, window_right);
        ((int *)lo)[r] = range.x;
        ((int *)hi)[r] = range.y;
        if (range.x < range.y) {
            j_begin = min(j_begin, range.x);
            j_end = max(j_end, range.y);
        }
        max_lo = max(max_lo, range.x);
        min_hi = min(min_hi, range.y);
    }

    /* Q transposed: qT[c * RV + r] holds dim c of rows 16r .. 16r + 15. */
    float16 qT[HEAD_DIM * RV];
    for (int r = 0; r < BLOCK_M; r++) {
        __global const float *qr = q + DP_ROW(lq, b, min(row0 + r, seq_q - 1), h);
        for (int c = 0; c < HEAD_DIM; c++)
            ((float *)qT)[(c * RV + r / 16) * 16 + r % 16] = qr[c] * scale;
    }

    float16 acc[NPOLES][HEAD_DIM * RV];
    float16 m[NPOLES][RV], l[NPOLES][RV];
    for (int p = 0; p < NPOLES; p++) {
        for (int r = 0; r < RV; r++) {
            m[p][r] = (float16)(-INFINITY);
            l[p][r] = (float16)0.0f;
        }
        for (int e = 0; e < HEAD_DIM * RV; e++)
            acc[p][e] = (float16)0.0f;
    }

    float16 s[N_PAD * RV];      /* the tile's scores, transposed like qT */
    float16 wv[NPOLES][N_PAD * RV]; /* weight times coefficient landing on v ... */
#if READS_V2
    float16 wv2[NPOLES][N_PAD * RV]; /* ... and on v2 */
#endif
    const long k_base = DP_ROW(lk, b, 0, hk), v_base = DP_ROW(lv, b, 0, hk);
#if READS_V2
    const long v2_base = DP_ROW(lv2, b, 0, hk);
#endif

    for (int j0 = j_begin; j0 < j_end; j0 += BLOCK_N) {
        const int n = min(BLOCK_N, j_end - j0);
        const bool masked = !(j0 >= max_lo && j0 + n <= min_hi);

        /* Scores: RB keys x RV row vectors of accumulators; keys past the tile repeat its
         * last key (their weights are never used). */
        for (int jb = 0; jb < n; jb += RB) {
            __global const float *kr[RB];
#pragma unroll
            for (int t = 0; t < RB; t++)
                kr[t] = k + k_base + (long)min(j0 + jb + t, j_end - 1) * lk.z;
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
                    qv[r] = qT[c * RV + r];
#pragma unroll
                for (int t = 0; t < RB; t++) {
                    const float16 kv = (float16)kr[t][c];
#pragma unroll
                    for (int r = 0; r < RV; r++)
                        sa[t][r] = fma(kv, qv[r], sa[t][r]);
                }
            }
#pragma unroll
            for (int t = 0; t < RB; t++)
#pragma unroll
                for (int r = 0; r < RV; r++)
                    s[(jb + t) * RV + r] = sa[t][r];
        }

        /* Online softmax per pole, lane-wise. */
        for (int p = 0; p < NPOLES; p++) {
            float16 tmax[RV];
#pragma unroll
            for (int r = 0; r < RV; r++)
                tmax[r] = (float16)(-INFINITY);
            for (int jj = 0; jj < n; jj++)
#pragma unroll
                for (int r = 0; r < RV; r++) {
                    float16 lg = POLE_LOGIT(p, s[jj * RV + r]);
                    if (masked)
                        lg = select((float16)(-INFINITY), lg, LANE_VIS(jj, r));
                    tmax[r] = fmax(tmax[r], lg);
                }
            float16 mn[RV];
            int changed = 0;
#pragma unroll
            for (int r = 0; r < RV; r++) {
                mn[r] = fmax(m[p][r], tmax[r]);
                changed |= any(mn[r] != m[p][r]);
            }
            if (changed) {
                float16 f[RV];
#pragma unroll
                for (int r = 0; r < RV; r++) {
                    /* dp_rescale lane-wise: 1 where nothing changed (also -inf to -inf). */
                    f[r] = select(dp_exp_nonpos(m[p][r] - mn[r]), (float16)1.0f,
                                  m[p][r] == mn[r]);
                    l[p][r] *= f[r];
                    m[p][r] = mn[r];
                }
                for (int c = 0; c < HEAD_DIM; c++)
#pragma unroll
                    for (int r = 0; r < RV; r++)
                        acc[p][c * RV + r] *= f[r];
            }
            float16 lsum[RV];
#pragma unroll
            for (int r = 0; r < RV; r++)
                lsum[r] = (float16)0.0f;
            for (int jj = 0; jj < n; jj++)
#pragma unroll
                for (int r = 0; r < RV; r++) {
                    const float16 sv = s[jj * RV + r];
                    float16 w = dp_exp_nonpos(POLE_LOGIT(p, sv) - mn[r]);
                    if (masked)
                        w = select((float16)0.0f, w, LANE_VIS(jj, r));
                    lsum[r] += w;
                    const float16 a = w * POLE_COEF(p, sv);
                    if (POLE_MAY_V(p))
                        wv[p][jj * RV + r] = POLE_TO_V2(p, sv) ? (float16)0.0f : a;
#if READS_V2
                    if (POLE_MAY_V2(p))
                        wv2[p][jj * RV + r] = POLE_TO_V2(p, sv) ? a : (float16)0.0f;
#endif
                }
#pragma unroll
            for (int r = 0; r < RV; r++)
                l[p][r] += lsum[r];
        }

        /* acc += weights x V: RB dims x RV row vectors of accumulators, keys innermost. */
        for (int p = 0; p < NPOLES; p++) {
            for (int c0 = 0; c0 < HEAD_DIM; c0 += RB) {
                const int nd = min(RB, HEAD_DIM - c0);
                float16 o[RB][RV];
#pragma unroll
                for (int t = 0; t < RB; t++)
#pragma unroll
                    for (int r = 0; r < RV; r++)
                        o[t][r] = t < nd ? acc[p][(c0 + t) * RV + r] : (float16)0.0f;
                if (nd == RB) {
                    for (int jj = 0; jj < n; jj++) {
                        if (POLE_MAY_V(p)) {
                            __global const float *vr = v + v_base + (long)(j0 + jj) * lv.z + c0;
#pragma unroll
                            for (int t = 0; t < RB; t++) {
                                const float16 vs = (float16)vr[t];
#pragma unroll
                                for (int r = 0; r < RV; r++)
                                    o[t][r] = fma(vs, wv[p][jj * RV + r], o[t][r]);
                            }
                        }
#if READS_V2
                        if (POLE_MAY_V2(p)) {
                            __global const float *vr = v2 + v2_base + (long)(j0 + jj) * lv2.z + c0;
#pragma unroll
                            for (int t = 0; t < RB; t++) {
                                const float16 vs = (float16)vr[t];
#pragma unroll
                                for (int r = 0; r < RV; r++)
                                    o[t][r] = fma(vs, wv2[p][jj * RV + r], o[t][r]);
                            }
                        }
#endif
                    }
                } else { /* the head dim's remainder, one dim at a time */
                    for (int jj = 0; jj < n; jj++)
                        for (int t = 0; t < nd; t++) {
                            if (POLE_MAY_V(p)) {
                                const float16 vs = (float16)v[v_base + (long)(j0 + jj) * lv.z + c0 + t];
#pragma unroll
                                for (int r = 0; r < RV; r++)
                                    o[t][r] = fma(vs, wv[p][jj * RV + r], o[t][r]);
                            }
#if READS_V2
                            if (POLE_MAY_V2(p)) {
                                const float16 vs =
                                    (float16)v2[v2_base + (long)(j0 + jj) * lv2.z + c0 + t];
#pragma unroll
                                for (int r = 0; r < RV; r++)
                                    o[t][r] = fma(vs, wv2[p][jj * RV + r], o[t][r]);
                            }
#endif
                        }
                }
#pragma unroll
                for (int t = 0; t < RB; t++)
#pragma unroll
                    for (int r = 0; r < RV; r++)
                        if (t < nd)
                            acc[p][(c0 + t) * RV + r] = o[t][r];
            }
        }
    }

    /* Normalise and combine the poles in place (into acc[0]); a row that sees no key
     * outputs 0, never NaN. */
    float16 coef[NPOLES][RV];
    for (int p = 0; p < NPOLES; p++) {
        const float pw =
            (VARIANT == DIPOLE_TWO_POLE && pole_weights) ? pole_weights[p * heads_q + h] : 1.0f;
#pragma unroll
        for (int r = 0; r < RV; r++)
            coef[p][r] = select((float16)0.0f, pw / l[p][r], lo[r] < hi[r]);
    }
    for (int c = 0; c < HEAD_DIM; c++)
#pragma unroll
        for (int r = 0; r < RV; r++) {
            float16 o = (float16)0.0f;
            for (int p = 0; p < NPOLES; p++)
                o += coef[p][r] * acc[p][c * RV + r];
            acc[0][c * RV + r] = o;
        }
    const int rows = min(BLOCK_M, seq_q - row0);
    for (int r = 0; r < rows; r++) {
        __global float *orow = out + DP_ROW(lout, b, row0 + r, h);
        for (int c = 0; c < HEAD_DIM; c++)
            orow[c] = ((float *)acc[0])[(c * RV + r / 16) * 16 + r % 16];
    }
    if (lse)
        for (int p = 0; p < NPOLES; p++)
            for (int r = 0; r < rows; r++) {
                const float mm = ((float *)m[p])[r], ll = ((float *)l[p])[r];
                const bool has = ((int *)lo)[r] < ((int *)hi)[r];
                lse[(((long)p * batch + b) * heads_q + h) * seq_q + row0 + r] =
                    has ? mm + log(ll) : -INFINITY;
            }
}

/* ---- Split-K decode. Work-item (chunk, row i, b * Hq + h) scans keys
 * [chunk * BLOCK_N, chunk * BLOCK_N + BLOCK_N) of the row's visible range, 16 keys per step
 * (keys across lanes; each score is a dot product along the head dim in float16 pieces).
 * part: [B * Hq, seq_q, chunks, NPOLES, 2 + HEAD_DIM] = (max, sum, acc). */

#define DV ((HEAD_DIM + 15) / 16) /* float16 pieces of a row */
#define PART_STRIDE (2 + HEAD_DIM)

/* Piece c16 of a row; the last piece of a head dim that 16 does not divide is zero-padded
 * (never read past the row: it may end the buffer). */
inline float16 dp_row_piece(__global const float *row, int c16)
{
#if HEAD_DIM % 16
    if (c16 == DV - 1) {
        float16 x = (float16)0.0f;
        for (int c = 0; c < HEAD_DIM % 16; c++)
            ((float *)&x)[c] = row[c16 * 16 + c];
        return x;
    }
#endif
    return vload16(c16, row);
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
void dipole_fwd_splitk(__global const float *q, dp_layout lq,
                       __global const float *k, dp_layout lk,
                       __global const float *v, dp_layout lv,
                       __global const float *v2, dp_layout lv2,
                       __global float *part,
                       __global const int *key_lengths,
                       int heads_q, int heads_kv, int seq_q, int seq_k,
                       float scale, int window_left, int window_right, int chunks)
{
    const int chunk = get_global_id(0);
    const int i = get_global_id(1);
    const int bh = get_global_id(2);
    const int b = bh / heads_q, h = bh % heads_q;
    const int hk = h / (heads_q / heads_kv);
    const int kl = key_lengths ? key_lengths[b] : seq_k;
    const int2 range = dp_visible_range(i, kl, seq_q, window_left, window_right);
    const int j_lo = max(range.x, chunk * BLOCK_N);
    const int j_hi = min(range.y, chunk * BLOCK_N + BLOCK_N);

    float16 qv[DV];
    __global const float *qr = q + DP_ROW(lq, b, i, h);
    for (int c16 = 0; c16 < DV; c16++)
        qv[c16] = dp_row_piece(qr, c16) * scale;
    float16 acc[NPOLES][DV];
    float m[NPOLES], l[NPOLES];
    for (int p = 0; p < NPOLES; p++) {
        m[p] = -INFINITY;
        l[p] = 0.0f;
        for (int c16 = 0; c16 < DV; c16++)
            acc[p][c16] = (float16)0.0f;
    }
    const long k_base = DP_ROW(lk, b, 0, hk), v_base = DP_ROW(lv, b, 0, hk);
#if READS_V2
    const long v2_base = DP_ROW(lv2, b, 0, hk);
#endif
    const int16 lane = (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

    for (int j0 = j_lo; j0 < j_hi; j0 += 16) {
        float16 sc;
        for (int t = 0; t < 16; t++) {
            __global const float *kr = k + k_base + (long)min(j0 + t, j_hi - 1) * lk.z;
            float16 d = (float16)0.0f;
            for (int c16 = 0; c16 < DV; c16++)
                d = fma(qv[c16], dp_row_piece(kr, c16), d);
            ((float *)&sc)[t] = dp_sum16(d);
        }
        const int16 vis = lane < (int16)(j_hi - j0);
        float av[NPOLES][16];
#if READS_V2
        float av2[NPOLES][16];
#endif
        for (int p = 0; p < NPOLES; p++) {
            const float16 lg = select((float16)(-INFINITY), POLE_LOGIT(p, sc), vis);
            const float mn = fmax(m[p], dp_max16(lg));
            if (mn != m[p]) {
                const float f = dp_rescale(m[p], mn);
                l[p] *= f;
                for (int c16 = 0; c16 < DV; c16++)
                    acc[p][c16] *= f;
                m[p] = mn;
            }
            const float16 w = select((float16)0.0f, dp_exp_nonpos(lg - mn), vis);
            l[p] += dp_sum16(w);
            const float16 a = w * POLE_COEF(p, sc);
            if (POLE_MAY_V(p))
                vstore16(POLE_TO_V2(p, sc) ? (float16)0.0f : a, 0, av[p]);
#if READS_V2
            if (POLE_MAY_V2(p))
                vstore16(POLE_TO_V2(p, sc) ? a : (float16)0.0f, 0, av2[p]);
#endif
        }
        const int nt = min(16, j_hi - j0);
        for (int t = 0; t < nt; t++) {
            __global const float *vr = v + v_base + (long)(j0 + t) * lv.z;
#if READS_V2
            __global const float *v2r = v2 + v2_base + (long)(j0 + t) * lv2.z;
#endif
            for (int p = 0; p < NPOLES; p++) {
                if (POLE_MAY_V(p))
                    for (int c16 = 0; c16 < DV; c16++)
                        acc[p][c16] = fma((float16)av[p][t], dp_row_piece(vr, c16), acc[p][c16]);
#if READS_V2
                if (POLE_MAY_V2(p))
                    for (int c16 = 0; c16 < DV; c16++)
                        acc[p][c16] = fma((float16)av2[p][t], dp_row_piece(v2r, c16), acc[p][c16]);
#endif
            }
        }
    }

    __global float *dst = part + (((long)bh * seq_q + i) * chunks + chunk) * NPOLES * PART_STRIDE;
    for (int p = 0; p < NPOLES; p++) {
        dst[p * PART_STRIDE] = m[p];
        dst[p * PART_STRIDE + 1] = l[p];
        for (int c = 0; c < HEAD_DIM; c++)
            dst[p * PART_STRIDE + 2 + c] = ((float *)acc[p])[c];
    }
}

/* Combines the chunks of one query row: work-item (i, b * Hq + h). */
__kernel void dipole_fwd_merge(__global const float *part, int chunks,
                               __global float *out, dp_layout lout,
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
    const int kl = key_lengths ? key_lengths[b] : seq_k;
    const int2 range = dp_visible_range(i, kl, seq_q, window_left, window_right);
    const bool has_keys = range.x < range.y;
    __global const float *src = part + ((long)bh * seq_q + i) * chunks * NPOLES * PART_STRIDE;

    float mm[NPOLES], ll[NPOLES], coef[NPOLES];
    for (int p = 0; p < NPOLES; p++) {
        float mx = -INFINITY;
        for (int c = 0; c < chunks; c++)
            mx = fmax(mx, src[(c * NPOLES + p) * PART_STRIDE]);
        float sum = 0.0f;
        for (int c = 0; c < chunks; c++)
            sum += src[(c * NPOLES + p) * PART_STRIDE + 1] *
                   dp_rescale(src[(c * NPOLES + p) * PART_STRIDE], mx);
        mm[p] = mx;
        ll[p] = sum;
        const float pw =
            (VARIANT == DIPOLE_TWO_POLE && pole_weights) ? pole_weights[p * heads_q + h] : 1.0f;
        coef[p] = has_keys ? pw / sum : 0.0f;
    }
    __global float *orow = out + DP_ROW(lout, b, i, h);
    for (int c = 0; c < HEAD_DIM; c++) {
        float o = 0.0f;
        for (int p = 0; p < NPOLES; p++) {
            float a = 0.0f;
            for (int ch = 0; ch < chunks; ch++)
                a += src[(ch * NPOLES + p) * PART_STRIDE + 2 + c] *
                     dp_rescale(src[(ch * NPOLES + p) * PART_STRIDE], mm[p]);
            o += has_keys ? coef[p] * a : 0.0f;
        }
        orow[c] = o;
    }
    if (lse)
        for (int p = 0; p < NPOLES; p++)
            lse[(((long)p * batch + b) * heads_q + h) * seq_q + i] =
                has_keys ? mm[p] + log(ll[p]) : -INFINITY;
}
