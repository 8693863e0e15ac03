/* Utility kernels: no head dim, variant, mask or tiles of their own. The defines they read are
 * BLOCK_M, the work-group of dipole_bwd_dweights, and DP_STORAGE (the runtime passes only
 * those). */

#ifndef BLOCK_M
#define BLOCK_M 32 /* work-items of dipole_bwd_dweights */
#endif

/* d alpha_h and d beta_h: group (h, p) sums rowdot[p, :, h, :] — BLOCK_M strided partial sums,
 * then one work-item adds them in order, so the result never depends on scheduling. */
__kernel __attribute__((reqd_work_group_size(BLOCK_M, 1, 1)))
void dipole_bwd_dweights(__global const float *rowdot, __global float *dpos,
                         __global float *dneg, int batch, int heads_q, int seq_q)
{
    const int lid = get_local_id(0);
    const int h = get_group_id(1);
    const int p = get_group_id(2);
    __local float part[BLOCK_M];
    const long n = (long)batch * seq_q;
    float sum = 0.0f;
    for (long e = lid; e < n; e += BLOCK_M) {
        const int b = (int)(e / seq_q), i = (int)(e % seq_q);
        sum += rowdot[DP_STAT(p, b, h, i)];
    }
    part[lid] = sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    __global float *dst = p == 0 ? dpos : dneg;
    if (lid == 0 && dst) {
        float total = 0.0f;
        for (int e = 0; e < BLOCK_M; e++)
            total += part[e];
        dst[h] = total;
    }
}

/* Zeroes a strided [batch, seq, heads, head_dim] tensor (layout: offset and batch, seq, head
 * strides), which the GEMM backward then accumulates into with beta = 1. Any work-group size. */
__kernel void dipole_zero_rows(__global float *t, dp_layout lay, int seq, int head_dim)
{
    const int c = get_global_id(0), row = get_global_id(1), b = get_global_id(2);
    if (c < head_dim) /* row runs over seq x heads */
        t[DP_ROW(lay, b, row % seq, row / seq) + c] = 0.0f;
}

/* The GEMM path over half storage works on dense float copies ([batch, seq, heads, head_dim],
 * row-major): widening is exact, narrowing rounds once, as a kernel's own store would. Any
 * work-group size; rows run over seq x heads as in dipole_zero_rows. */
#define DP_DENSE(b, s, h, c) ((((long)(b) * seq + (s)) * heads + (h)) * head_dim + (c))

/* A paged key-side tensor (block_table not NULL: see dipole_common.cl's dp_kv_row) is gathered
 * too; its rows past the sequence's key length have no page, and become 0. */
__kernel void dipole_widen_rows(__global const dp_storage *src, dp_layout lay,
                                __global float *dst, int seq, int heads, int head_dim,
                                __global const int *block_table, int max_pages, int page_size,
                                __global const int *key_lengths)
{
    const int c = get_global_id(0), row = get_global_id(1), b = get_global_id(2);
    const int s = row % seq, h = row / seq;
    if (c >= head_dim)
        return;
    if (!block_table) {
        dst[DP_DENSE(b, s, h, c)] = dp_load(src, DP_ROW(lay, b, s, h) + c);
        return;
    }
    const bool held = s < key_lengths[b];
    const int page = held ? block_table[(long)b * max_pages + s / page_size] : 0;
    dst[DP_DENSE(b, s, h, c)] = held ? dp_load(src, DP_ROW(lay, page, s % page_size, h) + c) : 0.0f;
}

__kernel void dipole_narrow_rows(__global const float *src, __global dp_storage *dst,
                                 dp_layout lay, int seq, int heads, int head_dim)
{
    const int c = get_global_id(0), row = get_global_id(1), b = get_global_id(2);
    const int s = row % seq, h = row / seq;
    if (c < head_dim)
        dp_store(dst, DP_ROW(lay, b, s, h) + c, src[DP_DENSE(b, s, h, c)]);
}

/* The cache write: token t of sequence b (positions [batch, tokens]: its position in the
 * sequence, or -1 for none) lands in page block_table[b, position / page_size] at slot
 * position % page_size, bit for bit. The runtime checked every position and page, and that
 * no two tokens share a slot. Any work-group size; rows run over tokens x heads. */
/* The storage's bits: copied as they are (a half may not be assigned without cl_khr_fp16). */
#if DP_STORAGE == DP_F32
typedef uint dp_bits;
#else
typedef ushort dp_bits;
#endif

__kernel void dipole_paged_write_rows(__global const dp_bits *src, dp_layout ls,
                                      __global dp_bits *dst, dp_layout ld,
                                      __global const int *positions,
                                      __global const int *block_table, int max_pages,
                                      int page_size, int tokens, int heads, int head_dim)
{
    const int c = get_global_id(0), row = get_global_id(1), b = get_global_id(2);
    const int t = row % tokens, h = row / tokens;
    const int pos = positions[(long)b * tokens + t];
    if (c >= head_dim || pos < 0)
        return;
    const int page = block_table[(long)b * max_pages + pos / page_size];
    dst[DP_ROW(ld, page, pos % page_size, h) + c] = src[DP_ROW(ls, b, t, h) + c];
}
