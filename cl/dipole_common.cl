/* Shared by every dipole kernel (the runtime prepends it to each kernel source):
 * the variant logic and the mask, each in exactly one place. */

#define DIPOLE_SOFTMAX 0
#define DIPOLE_SIGNEXP 1
#define DIPOLE_ROUTED 2
#define DIPOLE_TWO_POLE 3
#define DIPOLE_DIFF 4

#ifndef VARIANT
#define VARIANT DIPOLE_SOFTMAX
#endif
#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
/* The head dim of v, v2 and out (and dout, dv, dv2); HEAD_DIM is that of q and k. */
#ifndef HEAD_DIM_V
#define HEAD_DIM_V HEAD_DIM
#endif
#ifndef IS_CAUSAL
#define IS_CAUSAL 0
#endif
#ifndef HAS_WINDOW
#define HAS_WINDOW 0
#endif
#ifndef HAS_SOFTCAP
#define HAS_SOFTCAP 0
#endif
#ifndef HAS_ALIBI
#define HAS_ALIBI 0
#endif
#ifndef HAS_BIAS
#define HAS_BIAS 0
#endif

#if VARIANT < DIPOLE_SOFTMAX || VARIANT > DIPOLE_DIFF
#error "VARIANT must be one of DIPOLE_SOFTMAX .. DIPOLE_DIFF"
#endif
#if HEAD_DIM < 1 || HEAD_DIM_V < 1
#error "HEAD_DIM and HEAD_DIM_V must be >= 1"
#endif

/* ---- Storage. Every global tensor (q, k, v, v2, out, dout and the gradients) is an array of
 * dp_storage, read and written only through dp_load / dp_store (n lanes: dp_load4/8/16,
 * dp_store4/8/16) at an element index; arithmetic is always float. DP_STORAGE is the host's
 * dipole_dtype: float, IEEE half through vload_half / vstore_half_rte (core OpenCL 1.2, no
 * cl_khr_fp16), or bfloat16 as the upper 16 bits of a float. Loads widen exactly; stores round
 * to nearest even, as the host's dipole_convert. Per-row statistics (lse, delta), pole weights
 * and GEMM scratch stay float. */
#define DP_F32 0
#define DP_F16 1
#define DP_BF16 2
#ifndef DP_STORAGE
#define DP_STORAGE DP_F32
#endif
#if DP_STORAGE == DP_F32
typedef float dp_storage;
#define dp_load(p, i) ((p)[i])
#define dp_store(p, i, x) ((p)[i] = (x))
#define dp_load4(p, i) vload4(0, (p) + (i))
#define dp_load8(p, i) vload8(0, (p) + (i))
#define dp_load16(p, i) vload16(0, (p) + (i))
#define dp_store4(p, i, x) vstore4((x), 0, (p) + (i))
#define dp_store8(p, i, x) vstore8((x), 0, (p) + (i))
#define dp_store16(p, i, x) vstore16((x), 0, (p) + (i))
#elif DP_STORAGE == DP_F16
typedef half dp_storage;
#define dp_load(p, i) vload_half((i), (p))
#define dp_store(p, i, x) vstore_half_rte((x), (i), (p))
#define dp_load4(p, i) vload_half4(0, (p) + (i))
#define dp_load8(p, i) vload_half8(0, (p) + (i))
#define dp_load16(p, i) vload_half16(0, (p) + (i))
#define dp_store4(p, i, x) vstore_half4_rte((x), 0, (p) + (i))
#define dp_store8(p, i, x) vstore_half8_rte((x), 0, (p) + (i))
#define dp_store16(p, i, x) vstore_half16_rte((x), 0, (p) + (i))
#elif DP_STORAGE == DP_BF16
typedef ushort dp_storage;
/* A NaN keeps its sign and top payload bits and is made quiet (a plain round could carry it
 * into inf); everything else adds half an ulp of bfloat16, plus one where the kept part is odd
 * (ties to even), and drops the low half. inf and overflow come out as inf. */
#define DP_BF16_NARROW(n)                                                                         \
    inline ushort##n dp_bf16_narrow##n(float##n x)                                                \
    {                                                                                             \
        const uint##n u = as_uint##n(x);                                                          \
        const uint##n rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;                           \
        return convert_ushort##n(select(rounded, (u >> 16) | 0x40u, as_uint##n(isnan(x))));      \
    }
DP_BF16_NARROW(4)
DP_BF16_NARROW(8)
DP_BF16_NARROW(16)
inline ushort dp_bf16_narrow(float x)
{
    const uint u = as_uint(x);
    return (ushort)(isnan(x) ? (u >> 16) | 0x40u : (u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#define dp_load(p, i) as_float((uint)(p)[i] << 16)
#define dp_store(p, i, x) ((p)[i] = dp_bf16_narrow(x))
#define dp_load4(p, i) as_float4(convert_uint4(vload4(0, (p) + (i))) << 16)
#define dp_load8(p, i) as_float8(convert_uint8(vload8(0, (p) + (i))) << 16)
#define dp_load16(p, i) as_float16(convert_uint16(vload16(0, (p) + (i))) << 16)
#define dp_store4(p, i, x) vstore4(dp_bf16_narrow4(x), 0, (p) + (i))
#define dp_store8(p, i, x) vstore8(dp_bf16_narrow8(x), 0, (p) + (i))
#define dp_store16(p, i, x) vstore16(dp_bf16_narrow16(x), 0, (p) + (i))
#else
#error "DP_STORAGE must be DP_F32, DP_F16 or DP_BF16"
#endif

/* ---- The variants. A variant is a set of poles; each pole runs its own online softmax over
 * a logit of the score s, and each key's weight in a pole lands on one value row (v or v2),
 * times a coefficient. Everything a kernel needs to know about the variant is here. */
#if VARIANT == DIPOLE_TWO_POLE || VARIANT == DIPOLE_DIFF
#define NPOLES 2
#else
#define NPOLES 1
#endif
#define READS_V2 (VARIANT == DIPOLE_ROUTED || VARIANT == DIPOLE_TWO_POLE)

/* Score maps: DIFF's poles each score with their own query and key heads (pole p of head h is
 * head DP_POLE_HEAD(h, p) of q, and of k for key head h), every other variant's poles share one
 * score s. Pole p ranks score map POLE_SCORE(p). */
#if VARIANT == DIPOLE_DIFF
#define NSCORES 2
#define POLE_SCORE(p) (p)
#else
#define NSCORES 1
#define POLE_SCORE(p) 0
#endif
#define DP_POLE_HEAD(h, p) (NSCORES * (h) + (p))

/* sign(s) with sign(0) = 0, as the reference; NaN stays NaN (0 * NaN). A macro so that it
 * works lane-wise on float vectors too (a vector condition selects per lane). */
#define DP_SIGN(s) ((s) > 0.0f ? 1.0f : ((s) < 0.0f ? -1.0f : (s) * 0.0f))

/* The logit pole p ranks: s, -s (negative pole) or |s| (variants that rank both signs); s is
 * the pole's own score map's score. */
#if VARIANT == DIPOLE_SIGNEXP || VARIANT == DIPOLE_ROUTED
#define POLE_LOGIT_OF(p, s) fabs(s)
#elif VARIANT == DIPOLE_DIFF
#define POLE_LOGIT_OF(p, s) (s)
#else
#define POLE_LOGIT_OF(p, s) ((p) == 0 ? (s) : -(s))
#endif
/* A bias can make a score -inf: its key is then out of every pole, never |-inf| = +inf.
 * DP_EXCLUDED(s) is that test for a scalar score (a kernel leaves such a key's terms out). */
#define DP_EXCLUDED(s) (HAS_BIAS && (s) == -INFINITY)
#if HAS_BIAS
#define POLE_LOGIT(p, s) ((s) == -INFINITY ? (s) : POLE_LOGIT_OF(p, s))
/* e^(lg - m), 0 for an excluded key (lg = -inf) also where m is -inf (no key seen yet). */
#define DP_POLE_EXP(e, lg) ((lg) == -INFINITY ? 0.0f : (e))
#else
#define POLE_LOGIT(p, s) POLE_LOGIT_OF(p, s)
#define DP_POLE_EXP(e, lg) (e)
#endif

/* The coefficient on a key's weight: sign(s) for SIGNEXP, 1 otherwise. */
#if VARIANT == DIPOLE_SIGNEXP
#define POLE_COEF(p, s) DP_SIGN(s)
#else
#define POLE_COEF(p, s) 1.0f
#endif

/* d POLE_LOGIT / ds, for the backward pass: d|s|/ds = sign(s), 0 at s = 0 (as torch). */
#if VARIANT == DIPOLE_SIGNEXP || VARIANT == DIPOLE_ROUTED
#define POLE_LOGIT_DS(p, s) DP_SIGN(s)
#elif VARIANT == DIPOLE_DIFF
#define POLE_LOGIT_DS(p, s) 1.0f
#else
#define POLE_LOGIT_DS(p, s) ((p) == 0 ? 1.0f : -1.0f)
#endif

/* w x POLE_COEF(p, s) for a weight w = e^(logit - max) in [0, 1] or NaN. For SIGNEXP the sign
 * goes on as w's sign bit and s = 0 selects 0: 3 vector operations where the product with
 * DP_SIGN's two-level select takes 6, in the forward's per-score loop. NaN stays NaN (w is NaN
 * when s is). */
#if VARIANT == DIPOLE_SIGNEXP
#define POLE_WEIGHTED(p, w, s) ((s) == 0.0f ? 0.0f : copysign((w), (s)))
#else
#define POLE_WEIGHTED(p, w, s) (w)
#endif

/* Whether a key's weight in pole p lands on v2 rather than v. */
#if VARIANT == DIPOLE_ROUTED
#define POLE_TO_V2(p, s) (!((s) > 0.0f))
#elif VARIANT == DIPOLE_TWO_POLE
#define POLE_TO_V2(p, s) ((p) == 1)
#else
#define POLE_TO_V2(p, s) 0
#endif

/* Whether pole p's weights can land on v / on v2 at all: lets a kernel skip a value stream
 * at compile time (POLE_TO_V2 decides per key among the streams a pole may use). */
#if VARIANT == DIPOLE_ROUTED
#define POLE_MAY_V(p) 1
#define POLE_MAY_V2(p) 1
#elif VARIANT == DIPOLE_TWO_POLE
#define POLE_MAY_V(p) ((p) == 0)
#define POLE_MAY_V2(p) ((p) == 1)
#else
#define POLE_MAY_V(p) 1
#define POLE_MAY_V2(p) 0
#endif

/* The value streams: the (pole, value tensor) pairs a key's weight can land on. A kernel that
 * multiplies weights into values as a GEMM (the group layout) keeps one weight tile per stream:
 * stream t belongs to pole STREAM_POLE(t) and reads v2 where STREAM_V2(t); a key of score s
 * lands in pole p on stream STREAM_OF(p, s) (scalar s), with weight STREAM_WEIGHT(t, w, s)
 * on stream t (w: its weight in t's pole; 0 where it lands on the other stream). */
#if VARIANT == DIPOLE_ROUTED || VARIANT == DIPOLE_TWO_POLE
#define NSTREAMS 2
#elif VARIANT == DIPOLE_DIFF
#define NSTREAMS 2 /* both on v, one per pole */
#else
#define NSTREAMS 1
#endif
#define DP_STREAM_PER_POLE (VARIANT == DIPOLE_TWO_POLE || VARIANT == DIPOLE_DIFF)
#define STREAM_POLE(t) (DP_STREAM_PER_POLE ? (t) : 0)
#define STREAM_V2(t) (READS_V2 && (t) == 1)
#define STREAM_OF(p, s) (DP_STREAM_PER_POLE ? (p) : (int)(READS_V2 && POLE_TO_V2(p, s)))
#define STREAM_WEIGHT(t, w, s)                                                                    \
    (STREAM_OF(STREAM_POLE(t), s) == (t) ? POLE_WEIGHTED(STREAM_POLE(t), w, s) : STREAM_AWAY)
/* A weight tile's entry for a key routed to the other stream (ROUTED only): -0, which ROUTED's
 * real weights (w >= 0) never are. A product over the tile skips it (DP_AWAY), as the
 * reference never multiplies a value it does not route to: 0 x inf would be NaN. */
#define STREAM_AWAY -0.0f
inline bool dp_away(float w)
{
    return VARIANT == DIPOLE_ROUTED && as_uint(w) == 0x80000000u;
}
#define DP_AWAY(w) dp_away(w)

/* All the macros above (POLE_LOGIT, POLE_COEF, POLE_TO_V2) also take a float vector s and then
 * act per lane; POLE_TO_V2 then yields a lane mask (or a scalar, where it depends on p only)
 * that is meant for the ?: operator. */

/* Online-softmax rescale factor from max m_old to m_new; 1 when nothing changed (also when
 * both are -inf, where exp would give NaN). */
inline float dp_rescale(float m_old, float m_new)
{
    return m_old == m_new ? 1.0f : exp(m_old - m_new);
}

/* Lane-wise isfinite through the exponent bits (-1 where finite): PoCL's vector isfinite goes
 * lane by lane, and cost the CPU kernels more than the arithmetic it guards. */
#define DP_FINITE16(x) ((as_int16(x) & 0x7f800000) != 0x7f800000)
#define DP_FINITE8(x) ((as_int8(x) & 0x7f800000) != 0x7f800000)

/* e^x for x <= 0, lane-wise (the CPU-layout kernels): x = n ln2 + r with |r| <= ln2/2, e^r by a
 * degree-5 polynomial 1 + r q(r), q fitted for least maximum relative error (9.2e-8 in exact
 * arithmetic, 1.6e-7 through this float pipeline over [-87, 0], against 2.3e-7 for the degree-6
 * Taylor series it replaced, one multiply-add cheaper; the constant term held at 1 so that
 * e^0 is exactly 1), 2^n built in the exponent bits. x < -87 gives 0 (so
 * -inf does), NaN stays NaN. The library exp is several times slower here, and a rint through
 * the 1.5 * 2^23 trick needs no library call. */
inline float16 dp_exp_nonpos(float16 x)
{
    const float16 t = fma(x, (float16)1.44269504f, (float16)12582912.0f);
    const float16 n = t - 12582912.0f;
    float16 r = fma(n, (float16)-0.693145751953125f, x);
    r = fma(n, (float16)-1.428606765330187e-6f, r);
    float16 p = (float16)0.00829030667f;
    p = fma(p, r, (float16)0.0418979749f);
    p = fma(p, r, (float16)0.166676372f);
    p = fma(p, r, (float16)0.499991506f);
    p = fma(p, r, (float16)0.999999702f);
    p = fma(p, r, (float16)1.0f);
    /* t's low mantissa bits hold n (two's complement): (n + 127) << 23 is 2^n's bit pattern. */
    const uint16 bits = (as_uint16(t) + 127u) << 23;
    return select(p * as_float16(bits), (float16)0.0f, x < -87.0f);
}

/* A hint to fetch the cache line at p (the CPU forward fetches its next tile while computing
 * one; the CPU backward kernels measured no gain from it). The runtime defines
 * DP_BUILTIN_PREFETCH where the compiler turns clang's builtin into prefetch instructions
 * (PoCL, whose OpenCL prefetch() is empty); elsewhere prefetch() is the portable hint. */
#if DP_BUILTIN_PREFETCH
#define DP_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
/* Through uchar: prefetch() has no half overload where cl_khr_fp16 is off (the call is then
 * ambiguous), and the hint is for the line anyway. */
#define DP_PREFETCH(p) prefetch((__global const uchar *)(p), 1)
#endif

/* Asks for every (64-byte) line of a row of n elements: dp_prefetch_row for a q or k row
 * (HEAD_DIM), dp_prefetch_row_v for a value row (HEAD_DIM_V). */
inline void dp_prefetch_n(__global const dp_storage *row, int n)
{
    for (int c = 0; c < n; c += 64 / (int)sizeof(dp_storage))
        DP_PREFETCH(row + c);
    if (((ulong)row & 63) != 0) /* a row that does not start on a line ends on one more */
        DP_PREFETCH(row + n - 1);
}
#define dp_prefetch_row(row) dp_prefetch_n((row), HEAD_DIM)
#define dp_prefetch_row_v(row) dp_prefetch_n((row), HEAD_DIM_V)

/* The pole weight of head h: alpha (p = 0) or beta (p = 1) for TWO_POLE and DIFF, 1 for every
 * other variant; pole_weights is [2, Hq] or NULL (all 1). */
inline float dp_pole_weight(__global const float *pole_weights, int p, int h, int heads_q)
{
    return (NPOLES == 2 && pole_weights) ? pole_weights[p * heads_q + h] : 1.0f;
}

/* A tensor's element offset and strides (batch, seq, head), in elements. */
typedef long4 dp_layout;
#define DP_ROW(t, b, s, h) ((t).x + (long)(b) * (t).y + (long)(s) * (t).z + (long)(h) * (t).w)

/* ---- Packed batches (DP_VARLEN). The kernels' key_lengths argument then holds cu_seqlens_q
 * [B + 1] followed by cu_seqlens_k [B + 1], and the tensors are one batch: sequence b's rows
 * start at row DP_FIRST_Q(b) of q, out (and their gradients), its keys at DP_FIRST_K(b) of k, v,
 * v2. A kernel rebases each tensor's layout to its sequence (DP_REBASE_Q / DP_REBASE_K: the
 * offset moved to the first row, the batch stride dropped) and sets seq_q to the sequence's
 * rows (DP_SEQ_ROWS) before anything reads them; the key length, the per-row statistics
 * ([NPOLES, Hq, total rows]) and the bias follow from b. Without DP_VARLEN these are no-ops. */
#ifndef DP_VARLEN
#define DP_VARLEN 0
#endif
inline dp_layout dp_rebase(dp_layout t, long row)
{
    t.x += row * t.z;
    t.y = 0;
    return t;
}
#if DP_VARLEN
#define DP_FIRST_Q(b) key_lengths[b]
#define DP_FIRST_K(b) key_lengths[batch + 1 + (b)]
#define DP_REBASE_Q(t, b) (t) = dp_rebase((t), DP_FIRST_Q(b))
#define DP_REBASE_K(t, b) (t) = dp_rebase((t), DP_FIRST_K(b))
#define DP_SEQ_ROWS(b) (DP_FIRST_Q((b) + 1) - DP_FIRST_Q(b))
/* Index of a per-row statistic (lse, delta) of row i of sequence b. */
#define DP_STAT(p, b, h, i) (((long)(p) * heads_q + (h)) * DP_FIRST_Q(batch) + DP_FIRST_Q(b) + (i))
#else
#define DP_FIRST_Q(b) 0
#define DP_FIRST_K(b) 0
#define DP_REBASE_Q(t, b) (void)0
#define DP_REBASE_K(t, b) (void)0
#define DP_SEQ_ROWS(b) seq_q
/* Index of a per-row statistic [NPOLES, B, Hq, Nq] (lse, delta); batch, heads_q and seq_q are
 * the kernel's own arguments. */
#define DP_STAT(p, b, h, i) ((((long)(p) * batch + (b)) * heads_q + (h)) * seq_q + (i))
#endif
/* Points a kernel with the score arguments at sequence b: seq_q, seq_k and the bias. */
#define DP_SEQUENCE(b)                                                                         \
    do {                                                                                       \
        if (DP_VARLEN) {                                                                       \
            lbias.x += (long)DP_FIRST_Q(b) * lbias.w + DP_FIRST_K(b);                          \
            lbias.y = 0;                                                                       \
            seq_q = DP_SEQ_ROWS(b);                                                            \
            seq_k = DP_KEY_LENGTH(b);                                                          \
        }                                                                                      \
    } while (0)

/* ---- Score modifiers, applied to s = scale q.k in this order before the variant sees it:
 * soft-capping s <- softcap tanh(s / softcap) (HAS_SOFTCAP), ALiBi s <- s - slope_h |diag - j|
 * with row i's diagonal key diag = i + kl - seq_q (HAS_ALIBI), an additive bias (HAS_BIAS: 1
 * float32, 2 the storage dtype), element (b, h, i, j) at lbias.x + b lbias.y + h lbias.z +
 * i lbias.w + j. A score of -inf after them excludes its key from every pole (POLE_LOGIT keeps
 * it -inf, DP_POLE_EXP weighs it 0). Every attention kernel takes DP_SCORE_ARGS after its
 * window. */
#define DP_SCORE_MODS (HAS_SOFTCAP || HAS_ALIBI || HAS_BIAS)
#if HAS_BIAS == 2
typedef dp_storage dp_bias_t;
#define DP_BIAS_LOAD(p, i) dp_load(p, i)
#else
typedef float dp_bias_t;
#define DP_BIAS_LOAD(p, i) ((p)[i])
#endif
#define DP_SCORE_ARGS                                                                          \
    float softcap, __global const float *alibi_slopes, __global const dp_bias_t *bias,        \
        dp_layout lbias
#define DP_SCORE_PASS softcap, alibi_slopes, bias, lbias

/* The score of key j for row i of head h in sequence b (kl keys, seq_q rows), from s. */
inline float dp_score(float s, int b, int h, int i, int j, int kl, int seq_q, DP_SCORE_ARGS)
{
#if HAS_SOFTCAP
    s = softcap * tanh(s / softcap);
#endif
#if HAS_ALIBI
    s -= alibi_slopes[h] * (float)abs(i + kl - seq_q - j);
#endif
#if HAS_BIAS
    s += DP_BIAS_LOAD(bias, lbias.x + b * lbias.y + h * lbias.z + i * lbias.w + j);
#endif
    return s;
}
#define DP_SCORE(s, b, h, i, j, kl) dp_score((s), (b), (h), (i), (j), (kl), seq_q, DP_SCORE_PASS)

/* The lane indices 0 .. 15. */
#define DP_LANES ((int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))

/* dp_score on 16 lanes at once (the CPU layout's rows or keys across lanes): lane u is row
 * min(i0 + u di, i_max) and key min(j0 + u dj, j_max), the caller's bounds keeping both inside
 * the sequence. */
inline float16 dp_score16(float16 s, int b, int h, int i0, int di, int i_max, int j0, int dj,
                          int j_max, int kl, int seq_q, DP_SCORE_ARGS)
{
#if HAS_SOFTCAP
    s = softcap * tanh(s / softcap);
#endif
#if HAS_ALIBI
    const int16 i = min((int16)i0 + DP_LANES * (int16)di, (int16)i_max);
    const int16 j = min((int16)j0 + DP_LANES * (int16)dj, (int16)j_max);
    s -= alibi_slopes[h] * convert_float16(abs(i + (int16)(kl - seq_q) - j));
#endif
#if HAS_BIAS
    const long base = lbias.x + b * lbias.y + h * lbias.z;
    float x[16];
    vstore16(s, 0, x);
    for (int u = 0; u < 16; u++)
        x[u] += DP_BIAS_LOAD(bias, base + (long)min(i0 + u * di, i_max) * lbias.w +
                                       min(j0 + u * dj, j_max));
    s = vload16(0, x);
#endif
    return s;
}
#define DP_SCORE16(s, b, h, i0, di, i_max, j0, dj, j_max, kl)                                  \
    dp_score16((s), (b), (h), (i0), (di), (i_max), (j0), (dj), (j_max), (kl), seq_q, DP_SCORE_PASS)

/* d dp_score / d s at the same s (soft-capping's 1 - tanh^2; ALiBi and the bias are constants). */
inline float dp_score_ds(float s, float softcap)
{
#if HAS_SOFTCAP
    const float t = tanh(s / softcap);
    return 1.0f - t * t;
#else
    return 1.0f;
#endif
}
#define DP_SCORE_DS(s) dp_score_ds((s), softcap)
inline float16 dp_score_ds16(float16 s, float softcap)
{
#if HAS_SOFTCAP
    const float16 t = tanh(s / softcap);
    return 1.0f - t * t;
#else
    return (float16)1.0f;
#endif
}
#define DP_SCORE_DS16(s) dp_score_ds16((s), softcap)

/* ---- The mask. Keys are visible in [lo, hi) per query row; the diagonal is aligned
 * bottom-right (row i sits on key i + kl - seq_q), kl being the batch's key length. */
inline int2 dp_visible_range(int i, int kl, int seq_q, int window_left, int window_right)
{
    const long diag = (long)i + kl - seq_q;
    long lo = 0, hi = kl;
#if IS_CAUSAL
    hi = min(hi, diag + 1);
#endif
#if HAS_WINDOW
    if (window_right >= 0)
        hi = min(hi, diag + window_right + 1);
    if (window_left >= 0)
        lo = max(lo, diag - window_left);
#endif
    lo = clamp(lo, 0L, (long)kl);
    hi = max(hi, lo);
    return (int2)((int)lo, (int)hi);
}

/* ---- Tiles. Keys that any row of the query tile [i0, i1) sees (i0 < i1): the visible range
 * only grows with the row, so the union runs from the first row's lo to the last row's hi. */
inline int2 dp_tile_visible_range(int i0, int i1, int kl, int seq_q, int window_left,
                                  int window_right)
{
    const int2 first = dp_visible_range(i0, kl, seq_q, window_left, window_right);
    const int2 last = dp_visible_range(i1 - 1, kl, seq_q, window_left, window_right);
    return (int2)(first.x, max(last.y, first.y));
}

/* A row's visible keys [range.x, range.y) as offsets into the key tile [j0, j0 + n). */
inline int2 dp_range_in_tile(int2 range, int j0, int n)
{
    return (int2)(clamp(range.x - j0, 0, n), clamp(range.y - j0, 0, n));
}

/* The K/V head that query head h reads, and batch b's key length (key_lengths [B] or NULL),
 * from the kernel's own arguments heads_q, heads_kv, key_lengths and seq_k. */
#define DP_KV_HEAD(h) ((h) / (heads_q / heads_kv))
#if DP_VARLEN
#define DP_KEY_LENGTH(b) (DP_FIRST_K((b) + 1) - DP_FIRST_K(b))
#else
#define DP_KEY_LENGTH(b) (key_lengths ? key_lengths[b] : seq_k)
#endif

/* The group layout's query tile, for a kernel with the forward's arguments: work-group
 * (tile, h, b) owns rows [row0, row0 + rows) of query head h in batch b; item lid sits at
 * (ty, tx) of the grid; hk is the K/V head it reads, kl the batch's key length, keys the keys
 * any of its rows sees, and first, last the visible ranges of its first and last rows.
 * Packed, seq_q, seq_k and the bias are sequence b's first (DP_SEQUENCE), and a tile past a
 * sequence shorter than the grid's longest has rows <= 0 and no keys: every guard on r < rows
 * leaves it out, so the group does nothing without a return before its barriers (with one,
 * even untaken, PoCL 3.1's items passed guards on r < rows after a barrier that they fail). */
#define DP_QUERY_TILE()                                                                        \
    const int lid = get_local_id(0), ty = lid / WG_COLS, tx = lid % WG_COLS;                   \
    const int row0 = get_group_id(0) * BLOCK_M;                                                \
    const int h = get_group_id(1), b = get_group_id(2);                                        \
    DP_SEQUENCE(b);                                                                            \
    const int hk = DP_KV_HEAD(h), kl = DP_KEY_LENGTH(b);                                       \
    const int rows = min(BLOCK_M, seq_q - row0);                                               \
    const int2 keys = DP_VARLEN && rows <= 0                                                   \
                          ? (int2)(0, 0)                                                       \
                          : dp_tile_visible_range(row0, row0 + rows, kl, seq_q, window_left,   \
                                                  window_right);                               \
    const int2 first = dp_visible_range(row0, kl, seq_q, window_left, window_right);           \
    const int2 last = dp_visible_range(row0 + rows - 1, kl, seq_q, window_left, window_right)

/* ---- Poles' online softmax: the merge of n partial (max, sum) pairs M(c), L(c) of one pole
 * into (mm, sum), the max first, then each sum rescaled to it, in order c = 0 .. n - 1. */
#define DP_MERGE_POLE(n, M, L, mm, sum)                                                            do {                                                                                               mm = -INFINITY;                                                                                for (int c_ = 0; c_ < (n); c_++)                                                                   mm = fmax(mm, M(c_));                                                                      sum = 0.0f;                                                                                    for (int c_ = 0; c_ < (n); c_++)                                                                   sum += L(c_) * dp_rescale(M(c_), mm);                                                  } while (0)

/* ---- Split-K partials. A decode kernel that splits a row's keys into chunks leaves per
 * (batch * Hq + head, query row, chunk, pole) its unnormalised (max, sum, acc) in part,
 * [B * Hq, seq_q, chunks, NPOLES, PART_STRIDE] floats, acc padded to whole float16 pieces
 * (src/attn_tiled.c sizes the buffer by the same rule); a merge kernel combines the chunks.
 * DP_PART is the start of one row's chunk for a kernel with arguments seq_q and chunks. */
#define DV ((HEAD_DIM_V + 15) / 16) /* float16 pieces of a value row */
#define PART_STRIDE (2 + 16 * DV)
#define DP_PART(bh, i, chunk) ((((long)(bh) * seq_q + (i)) * chunks + (chunk)) * NPOLES * PART_STRIDE)


/* ---- Where a key's rows are. K, V and V2 are [B, N, Hkv, d] tensors, or with DP_PAGED pools
 * of pages ([pages, page_size, Hkv, d]: a page takes the batch index, a slot the seq index)
 * where key j of sequence b sits in page block_table[b, j / page_size] at slot j % page_size.
 * Every forward kernel takes the table and its shape after its inputs (DP_PAGED_ARGS); the
 * runtime checked every page index a visible key can reach before the launch. */
#ifndef DP_PAGED
#define DP_PAGED 0
#endif
#define DP_PAGED_ARGS __global const int *block_table, int max_pages, int page_size
#define DP_PAGED_PASS block_table, max_pages, page_size

/* Where key j of sequence b is: the (batch or page, seq or slot) indices of its row in every
 * K/V tensor. A kernel that reads several rows of a key finds it once (a division when paged). */
inline int2 dp_kv_at(int b, int j, DP_PAGED_ARGS)
{
#if DP_PAGED
    return (int2)(block_table[(long)b * max_pages + j / page_size], j % page_size);
#else
    return (int2)(b, j);
#endif
}
#define DP_KV_AT(b, j) dp_kv_at(b, j, DP_PAGED_PASS)

/* The element offset of key j's row of head hh of sequence b in K/V tensor t. */
inline long dp_kv_row(dp_layout t, int b, int j, int hh, DP_PAGED_ARGS)
{
    const int2 at = dp_kv_at(b, j, DP_PAGED_PASS);
    return DP_ROW(t, at.x, at.y, hh);
}
#define DP_KV_ROW(t, b, j, hh) dp_kv_row(t, b, j, hh, DP_PAGED_PASS)

/* Head-dim rows as float4 chunks: HD4 of them (HD4_V for rows of v and out), the last
 * zero-padded. */
#define HD4 ((HEAD_DIM + 3) / 4)
#define HD4_V ((HEAD_DIM_V + 3) / 4)

/* Stages rows [row0, row0 + count) of head hh of tensor t (layout lt) into local rows of
 * `stride` float4s, times mul; rows at or past `valid` and the padding past `dim` (the
 * tensor's head dim, HEAD_DIM or HEAD_DIM_V) become 0,
 * so that a tile's dot products and value sums need no bounds. All `items` work-items of the
 * group call it, item lid: consecutive items read consecutive chunks of a row (coalesced).
 * dp_stage_kv_rows4 finds key rows through the paging arguments; dp_stage_head_rows4 stages
 * a tile whose rows run over `span` query rows of head hh, then of head hh + NSCORES (the
 * next query head's q row of the same score map), and so on (span 0: every row of head hh; a
 * constant, so that the division is left out). */
inline void dp_stage_any_rows4(__local float4 *dst, int stride, __global const dp_storage *t,
                               dp_layout lt, int b, int row0, int span, int count, int valid,
                               int hh, float mul, int lid, int items, bool kv, int dim,
                               DP_PAGED_ARGS)
{
    const int d4 = (dim + 3) / 4;
    for (int e = lid; e < count * d4; e += items) {
        const int r = e / d4, c4 = e % d4;
        float4 x = (float4)0.0f;
        if (r < valid) {
            const int s = span ? r % span : row0 + r;
            const int head = span ? hh + NSCORES * (r / span) : hh;
            const long at = (kv ? dp_kv_row(lt, b, s, head, DP_PAGED_PASS)
                                : DP_ROW(lt, b, s, head)) + 4 * c4;
            if (dim % 4 == 0 || 4 * c4 + 3 < dim) {
                x = dp_load4(t, at);
            } else {
                x.x = dp_load(t, at);
                if (4 * c4 + 1 < dim)
                    x.y = dp_load(t, at + 1);
                if (4 * c4 + 2 < dim)
                    x.z = dp_load(t, at + 2);
            }
        }
        dst[r * stride + c4] = x * mul;
    }
}
#define dp_stage_rows4(dst, stride, t, lt, b, row0, count, valid, hh, mul, lid, items, dim)    \
    dp_stage_any_rows4(dst, stride, t, lt, b, row0, 0, count, valid, hh, mul, lid, items,       \
                       false, dim, NULL, 1, 1)
#define dp_stage_kv_rows4(dst, stride, t, lt, b, row0, count, valid, hh, lid, items, dim)      \
    dp_stage_any_rows4(dst, stride, t, lt, b, row0, 0, count, valid, hh, 1.0f, lid, items,     \
                       true, dim, DP_PAGED_PASS)
#define dp_stage_head_rows4(dst, stride, t, lt, b, span, count, valid, hh, mul, lid, items)    \
    dp_stage_any_rows4(dst, stride, t, lt, b, 0, span, count, valid, hh, mul, lid, items,      \
                       false, HEAD_DIM, NULL, 1, 1)

/* Writes the lanes of x that chunk c4 holds of a row of dim elements (4, or fewer in a last,
 * partial chunk) at element `at` of t. */
inline void dp_store_chunk4(__global dp_storage *t, long at, int c4, float4 x, int dim)
{
    if (dim % 4 == 0 || 4 * c4 + 3 < dim) {
        dp_store4(t, at, x);
    } else {
        dp_store(t, at, x.x);
        if (4 * c4 + 1 < dim)
            dp_store(t, at + 1, x.y);
        if (4 * c4 + 2 < dim)
            dp_store(t, at + 2, x.z);
    }
}

/* Loops over an item's rows, keys, chunks, poles and streams are unrolled whole, so that the
 * arrays they index stay in registers (a loop left rolled indexes them at run time, and a GPU
 * compiler then puts them on the stack). */
#define DP_UNROLL _Pragma("unroll")

/* ---- The group layout's micro-GEMMs. A work-group's WORK_GROUP items form a WG_ROWS x
 * WG_COLS grid, item (ty, tx); an item's a-th row of a tile is ty + WG_ROWS a and its b-th
 * column tx + WG_COLS b. Tiles are local rows of float4 chunks (HD4 of data, zero-padded). */

#ifndef WG_COLS
#define WG_COLS 16
#endif
#define WG_ROWS (WORK_GROUP / WG_COLS)
/* Float4 chunks of a head-dim row per item (a slice of a q or k gradient row; CPI_V of O or
 * of a v gradient row). */
#define CPI ((HD4 + WG_COLS - 1) / WG_COLS)
#define CPI_V ((HD4_V + WG_COLS - 1) / WG_COLS)

/* out[a][b] = A row (ty + WG_ROWS a) . B row (tx + WG_COLS b), a < NA, b < NB, over the rows'
 * first nc4 chunks: S = Q K^T (HD4), and the value products dO V^T (HD4_V). Strides in
 * chunks. The loop over chunks stays rolled: unrolled, AMD's compiler hoists every chunk's
 * loads and runs out of registers (256 VGPRs, occupancy 1, for dq at head dim 64, against 70
 * rolled). */
#define DP_MICRO_DOTS(out, NA, A, a_stride, NB, B, b_stride, nc4)                                 \
    do {                                                                                          \
        DP_UNROLL for (int a_ = 0; a_ < (NA); a_++)                                               \
            DP_UNROLL for (int b_ = 0; b_ < (NB); b_++)                                           \
                out[a_][b_] = 0.0f;                                                               \
        _Pragma("unroll 1") for (int c4_ = 0; c4_ < (nc4); c4_++) {                               \
            float4 bc_[NB];                                                                       \
            DP_UNROLL for (int b_ = 0; b_ < (NB); b_++)                                           \
                bc_[b_] = (B)[(tx + WG_COLS * b_) * (b_stride) + c4_];                            \
            DP_UNROLL for (int a_ = 0; a_ < (NA); a_++) {                                         \
                const float4 ac_ = (A)[(ty + WG_ROWS * a_) * (a_stride) + c4_];                   \
                DP_UNROLL for (int b_ = 0; b_ < (NB); b_++) {                                     \
                    out[a_][b_] = fma(ac_.x, bc_[b_].x, out[a_][b_]);                             \
                    out[a_][b_] = fma(ac_.y, bc_[b_].y, out[a_][b_]);                             \
                    out[a_][b_] = fma(ac_.z, bc_[b_].z, out[a_][b_]);                             \
                    out[a_][b_] = fma(ac_.w, bc_[b_].w, out[a_][b_]);                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    } while (0)

/* acc[a][ci] += sum over k < n of W[row ty + WG_ROWS a][k] B[k][chunk tx + WG_COLS ci]: O += P V,
 * dQ += dS K, dV += P^T dO, dK += dS^T Q. W rows are w_stride floats, B rows b_stride chunks
 * of which nb4 hold data; a chunk past them reads the last one (its lanes are never stored).
 * Terms where SKIP(a, k, w) are left out rather than multiplied by a zero weight, which an inf
 * would turn to NaN. */
#define DP_MICRO_ACC(acc, NA, NC, W, w_stride, n, B, b_stride, nb4, SKIP)                         \
    do {                                                                                          \
        for (int k_ = 0; k_ < (n); k_++) {                                                        \
            float4 bc_[NC];                                                                       \
            DP_UNROLL for (int c_ = 0; c_ < (NC); c_++)                                           \
                bc_[c_] = (B)[k_ * (b_stride) + min(tx + WG_COLS * c_, (nb4) - 1)];              \
            DP_UNROLL for (int a_ = 0; a_ < (NA); a_++) {                                         \
                const float w_ = (W)[(ty + WG_ROWS * a_) * (w_stride) + k_];                      \
                if (SKIP(a_, k_, w_))                                                             \
                    continue;                                                                     \
                DP_UNROLL for (int c_ = 0; c_ < (NC); c_++)                                       \
                    acc[a_][c_] = fma((float4)w_, bc_[c_], acc[a_][c_]);                          \
            }                                                                                     \
        }                                                                                         \
    } while (0)

/* Sums the `cols` per-item parts of row r (red: rows of cols floats) in a fixed order. */
inline float dp_row_sum(__local const float *red, int r, int cols)
{
    float sum = 0.0f;
    for (int x = 0; x < cols; x++)
        sum += red[r * cols + x];
    return sum;
}

/* The max of m and the `cols` per-item maxima of row r: read 4 at a time where cols allows
 * (the per-tile reduction of the forward, one broadcast read per 4 items; red 16-byte aligned). */
inline float dp_row_max(__local const float *red, int r, int cols, float m)
{
    if (cols % 4 == 0) {
        float4 x = (float4)m;
        for (int c4 = 0; c4 < cols / 4; c4++)
            x = fmax(x, vload4(0, red + r * cols + 4 * c4));
        return fmax(fmax(x.x, x.y), fmax(x.z, x.w));
    }
    for (int x = 0; x < cols; x++)
        m = fmax(m, red[r * cols + x]);
    return m;
}
