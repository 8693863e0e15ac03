/* Pieces shared by the forward GEMM path (attn_gemm.c) and the GEMM backward
 * (backward_gemm.c): chunking under the workspace limit, CLBlast statuses, int-range checks,
 * a chunk's key span and the row-wise kernels' work-group. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "launch.h"

/* CLBlast pads a matrix it copies to its tile sizes; 128 bounds every tile in its database. */
#define DP_GEMM_PAD 128
/* Below XGEMM_MIN_INDIRECT_SIZE^3 multiply-adds CLBlast runs its direct kernel, which copies
 * nothing; 64 is the smallest value in its database, so this errs towards counting copies. */
#define DP_GEMM_DIRECT_MAX 64

static double padded(double x)
{
    const double t = DP_GEMM_PAD;
    return (double)(size_t)((x + t - 1) / t) * t;
}

/* Bytes CLBlast may allocate inside one batched GEMM of `slices` problems of `rows` query rows,
 * `cols` keys and head_dim d (both GEMMs have the same three sizes, so one bound serves both).
 * Its indirect kernel copies the matrices that are not laid out the way it wants — the Q, K, V
 * and O slices always may be — and the score chunk only when a size is not a tile multiple. */
static double clblast_temp_bytes(double slices, double rows, double cols, double d,
                                 bool cols_aligned)
{
    const double direct = (double)DP_GEMM_DIRECT_MAX;
    if (rows * cols * d < direct * direct * direct)
        return 0;
    double per = padded(d) * (padded(rows) + padded(cols));
    const bool aligned = cols_aligned && (size_t)rows % DP_GEMM_PAD == 0;
    if (!aligned)
        per += padded(rows) * padded(cols);
    return 4.0 * slices * per;
}

/* The peak of a chunking: our buffers live for the whole call, CLBlast's copies per GEMM. */
typedef struct chunk_shape {
    double nbuf;       /* score-sized buffers per chunk */
    bool score_copied; /* CLBlast may copy a score matrix even at tile multiples */
} chunk_shape;

static double peak_of(const dp_problem *p, const chunk_shape *cs, double slices, double rows,
                      bool *fits_alloc, const dipole_ctx *ctx)
{
    /* The GEMMs multiply over head_dim (scores) and head_dim_v (values): the larger bounds
     * the copies of both. */
    const double nbuf = cs->nbuf, nk = p->d.seq_k, d = dp_max_head_dim(p);
    const double nq = p->d.seq_q;
    /* Key spans are rounded out to tile multiples, so they are aligned when seq_k is. */
    const bool cols_aligned = !cs->score_copied && p->d.seq_k % DP_GEMM_PAD == 0;
    const double one = 4.0 * slices * rows * nk;
    double temp = clblast_temp_bytes(slices, rows, nk, d, cols_aligned);
    const double last_rows = nq - (double)(size_t)(nq / rows) * rows;
    if (last_rows > 0) {
        const double t = clblast_temp_bytes(slices, last_rows, nk, d, cols_aligned);
        temp = t > temp ? t : temp;
    }
    if (fits_alloc)
        *fits_alloc = one <= (double)ctx->props.max_alloc && slices * rows * nk <= (double)INT_MAX;
    return nbuf * one + temp;
}

/* What the chunking sizes. A packed batch's chunks never span two sequences, so it is sized
 * as one batch of the longest sequence's rows and keys (at least one of each: a chunk always
 * holds a key column); its chunks' key spans end at their sequence's length, no tile
 * multiple, so CLBlast may copy any score chunk. */
static dp_problem shape_problem(const dp_problem *p)
{
    dp_problem s = *p;
    if (p->varlen) {
        s.d.batch = 1;
        s.d.seq_q = p->max_q > 1 ? p->max_q : 1;
        s.d.seq_k = p->max_k > 1 ? p->max_k : 1;
    }
    return s;
}

/* Chunks of `rows` query rows x `slices` slices that cover p. */
static size_t chunk_count(const dp_problem *p, size_t rows, size_t slices)
{
    const size_t hq = (size_t)p->d.heads_q;
    if (!p->varlen) {
        const size_t nq = (size_t)p->d.seq_q, bh = (size_t)p->d.batch * hq;
        return ((nq + rows - 1) / rows) * ((bh + slices - 1) / slices);
    }
    size_t n = 0;
    for (int b = 0; b < p->d.batch; b++)
        n += (((size_t)dp_query_length(p, b) + rows - 1) / rows) * ((hq + slices - 1) / slices);
    return n;
}

/* Chooses chunk sizes: as many query rows per slice as fit, then as many slices. Returns
 * false (with a reason) when not even one row fits. */
bool dp_gemm_chunking_choose(const dipole_ctx *ctx, const dp_problem *p_in, int nbuf_in,
                             bool score_copied, double reserved, dp_gemm_chunking *ch,
                             char *reason, size_t reason_cap)
{
    const dp_problem shaped = shape_problem(p_in), *p = &shaped;
    const chunk_shape shape = {(double)nbuf_in, score_copied || p_in->varlen}, *cs = &shape;
    const double limit = (double)ctx->workspace_limit - reserved;
    const size_t nq = (size_t)p->d.seq_q, bh = (size_t)p->d.batch * (size_t)p->d.heads_q;
    bool ok;
    double peak = peak_of(p, cs, 1, 1, &ok, ctx);
    if (peak > limit || !ok) {
        snprintf(reason, reason_cap,
                 "gemm: one row of %d scores needs %.0f bytes, over the %s of %.0f bytes",
                 p->d.seq_k, peak,
                 !ok ? "device's largest buffer"
                 : reserved > 0 ? "workspace limit less the float copies"
                                : "workspace limit",
                 ok ? limit : (double)ctx->props.max_alloc);
        return false;
    }
    /* Rows: start from what our buffers alone would allow (CLBlast's copies at most about
     * double that), prefer tile multiples, and walk down until the whole peak fits. */
    const double nbuf = cs->nbuf;
    double guess = limit / (4.0 * nbuf * (double)p->d.seq_k);
    size_t rows = guess >= (double)nq ? nq : (size_t)guess;
    if (rows < 1)
        rows = 1;
    if (rows < nq && rows > DP_GEMM_PAD)
        rows = rows / DP_GEMM_PAD * DP_GEMM_PAD;
    for (;;) {
        peak = peak_of(p, cs, 1, (double)rows, &ok, ctx);
        if ((peak <= limit && ok) || rows == 1)
            break;
        if (rows > DP_GEMM_PAD)
            rows = rows % DP_GEMM_PAD ? rows / DP_GEMM_PAD * DP_GEMM_PAD : rows - DP_GEMM_PAD;
        else
            rows--;
    }
    /* Even out the chunks: the same count, as equal as tile multiples allow. */
    if (rows < nq) {
        const size_t n = (nq + rows - 1) / rows;
        size_t even = (nq + n - 1) / n;
        if (rows >= DP_GEMM_PAD)
            even = (even + DP_GEMM_PAD - 1) / DP_GEMM_PAD * DP_GEMM_PAD;
        if (even < rows && peak_of(p, cs, 1, (double)even, &ok, ctx) <= limit && ok)
            rows = even;
    }
    size_t slices = 1;
    if (rows == nq) {
        /* Everything scales with the slice count. */
        const double per = peak_of(p, cs, 1, (double)nq, NULL, ctx);
        const double elems = (double)nq * (double)p->d.seq_k;
        double n = limit / per;
        if (n > (double)ctx->props.max_alloc / (4.0 * elems))
            n = (double)ctx->props.max_alloc / (4.0 * elems);
        if (n > (double)INT_MAX / elems)
            n = (double)INT_MAX / elems;
        slices = n >= (double)bh ? bh : n < 1 ? 1 : (size_t)n;
        while (slices > 1 && (peak_of(p, cs, (double)slices, (double)nq, &ok, ctx) > limit || !ok))
            slices--;
    }
    ch->rows = rows;
    ch->slices = slices;
    ch->nchunks = chunk_count(p_in, rows, slices);
    ch->score_bytes = (size_t)nbuf * 4 * slices * rows * (size_t)p->d.seq_k;
    ch->peak_bytes = (size_t)peak_of(p, cs, (double)slices, (double)rows, NULL, ctx);
    return true;
}

static const char *clblast_name(CLBlastStatusCode s)
{
    switch (s) {
    case CLBlastNotImplemented: return "CLBlastNotImplemented";
    case CLBlastInvalidMatrixA: return "CLBlastInvalidMatrixA";
    case CLBlastInvalidMatrixB: return "CLBlastInvalidMatrixB";
    case CLBlastInvalidMatrixC: return "CLBlastInvalidMatrixC";
    case CLBlastInvalidDimension: return "CLBlastInvalidDimension";
    case CLBlastInvalidLeadDimA: return "CLBlastInvalidLeadDimA";
    case CLBlastInvalidLeadDimB: return "CLBlastInvalidLeadDimB";
    case CLBlastInvalidLeadDimC: return "CLBlastInvalidLeadDimC";
    case CLBlastInsufficientMemoryA: return "CLBlastInsufficientMemoryA";
    case CLBlastInsufficientMemoryB: return "CLBlastInsufficientMemoryB";
    case CLBlastInsufficientMemoryC: return "CLBlastInsufficientMemoryC";
    case CLBlastInvalidBatchCount: return "CLBlastInvalidBatchCount";
    case CLBlastInvalidLocalMemUsage: return "CLBlastInvalidLocalMemUsage";
    case CLBlastDatabaseError: return "CLBlastDatabaseError";
    case CLBlastUnknownError: return "CLBlastUnknownError";
    case CLBlastUnexpectedError: return "CLBlastUnexpectedError";
    default:
        /* CLBlast passes OpenCL errors through with their own codes. */
        return (int)s > -1000 ? dipole_status_string((dipole_status)s) : "unknown CLBlast status";
    }
}

dipole_status dp_clblast_fail(dipole_ctx *ctx, CLBlastStatusCode s, const char *call)
{
    return dp_fail(ctx, DIPOLE_ERR_CLBLAST, "%s failed: CLBlast status %d (%s)", call, (int)s,
                   clblast_name(s));
}

dipole_status dp_gemm_check_int_range(dipole_ctx *ctx, const dp_problem *p, const char *name,
                                      const dipole_tensor *t, dp_role role)
{
    if (!t)
        return DIPOLE_SUCCESS;
    const dp_shape sh = dp_shape_of(p, role);
    const int batch = p->tensor_batch, seq = sh.seq, heads = sh.heads, d = sh.dim;
    /* A matrix's rows may not overlap (CLBlast needs ld >= columns); the tiled path reads such
     * broadcast layouts fine, this one cannot. */
    if (seq > 1 && t->stride_seq < (size_t)d)
        return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED,
                       "gemm: tensor %s has stride_seq %zu < %s %d (overlapping rows); "
                       "the GEMM path needs distinct rows",
                       name, t->stride_seq,
                       role == DP_ROLE_Q || role == DP_ROLE_K ? "head_dim" : "head_dim_v", d);
    const size_t last =
        dp_gemm_at(t, (size_t)batch - 1, (size_t)seq - 1, (size_t)heads - 1) + (size_t)d;
    if (last <= (size_t)INT_MAX)
        return DIPOLE_SUCCESS;
    return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED,
                   "gemm: tensor %s reaches past element %d, beyond CLBlast's batched GEMM "
                   "(int offsets)",
                   name, INT_MAX);
}

/* The visible keys of every row in a chunk, rounded out to tile multiples (fewer CLBlast
 * copies) within the keys of its batch: the tensor's, or a packed sequence's own (its neighbour's
 * rows are another sequence's). Visible ranges only move right as the row grows, so the first
 * and last rows bound them. A chunk that sees nothing still gets one column so that the GEMMs
 * stay valid; its weights come out 0. Returns whether it sees a key. */
static bool key_span(const dp_problem *p, size_t s0, size_t ns, size_t r0, size_t nr,
                     size_t *j0, size_t *nc)
{
    const size_t hq = (size_t)p->d.heads_q;
    const size_t nk = p->varlen ? (size_t)dp_key_length(p, (int)(s0 / hq)) : (size_t)p->d.seq_k;
    long lo_all = LONG_MAX, hi_all = 0;
    for (size_t b = s0 / hq; b <= (s0 + ns - 1) / hq; b++) {
        int lo, hi, lo2, hi2;
        dp_visible_range(p, (int)b, (int)r0, &lo, &hi);
        dp_visible_range(p, (int)b, (int)(r0 + nr - 1), &lo2, &hi2);
        if (hi2 > lo) {
            lo_all = lo < lo_all ? lo : lo_all;
            hi_all = hi2 > hi_all ? hi2 : hi_all;
        }
    }
    if (lo_all >= hi_all) {
        *j0 = 0;
        *nc = 1;
        return false;
    }
    size_t a = (size_t)lo_all / DP_GEMM_PAD * DP_GEMM_PAD;
    size_t e = ((size_t)hi_all + DP_GEMM_PAD - 1) / DP_GEMM_PAD * DP_GEMM_PAD;
    *j0 = a;
    *nc = (e < nk ? e : nk) - a;
    return true;
}

/* The iteration's segments: the whole problem (slices [0, B Hq) of seq_q rows), or packed
 * sequence `seq` (slices [seq Hq, (seq + 1) Hq) of its own rows). */
static size_t segment_count(const dp_problem *p)
{
    return p->varlen ? (size_t)p->d.batch : 1;
}

static size_t segment_slices(const dp_problem *p)
{
    return (size_t)p->d.heads_q * (p->varlen ? 1 : (size_t)p->d.batch);
}

static size_t segment_rows(const dp_problem *p, size_t seq)
{
    return (size_t)dp_query_length(p, (int)seq);
}

bool dp_gemm_chunk_next(const dp_problem *p, const dp_gemm_chunking *ch, dp_gemm_chunk *c)
{
    const size_t per = segment_slices(p);
    if (c->nr) { /* past the first: the next rows, else the next slices, else the next segment */
        c->r0 += c->nr;
        if (c->r0 >= segment_rows(p, c->seq)) {
            c->r0 = 0;
            c->s0 += c->ns;
            if (c->s0 >= (c->seq + 1) * per)
                c->seq++;
        }
    }
    while (c->seq < segment_count(p) && segment_rows(p, c->seq) == 0)
        c->seq++;
    if (c->seq >= segment_count(p))
        return false;
    if (c->s0 < c->seq * per) /* past sequences without rows */
        c->s0 = c->seq * per;
    const size_t end = (c->seq + 1) * per, nq = segment_rows(p, c->seq);
    c->ns = end - c->s0 < ch->slices ? end - c->s0 : ch->slices;
    c->nr = nq - c->r0 < ch->rows ? nq - c->r0 : ch->rows;
    c->sees = key_span(p, c->s0, c->ns, c->r0, c->nr, &c->j0, &c->nc);
    return true;
}

size_t dp_gemm_score_bytes(const dp_problem *p, const dp_gemm_chunking *ch)
{
    const dp_problem s = shape_problem(p);
    return sizeof(float) * ch->slices * ch->rows * (size_t)s.d.seq_k;
}

/* The row-wise work-group at `size` work-items: fewer work-items per row first (the rows keep
 * the reads coalesced), then fewer rows. */
static dp_kernel_config rowwise_config(const void *user, int size)
{
    const dp_problem *p = user;
    const int rows = size < DP_ROWWISE_ROWS ? size : DP_ROWWISE_ROWS;
    dp_kernel_config cfg = dp_kernel_config_for(p, DP_KERNEL_ROWWISE, rows, size / rows, size);
    cfg.head_dim = 1; /* the kernel never sees head_dim: one program serves all of them */
    cfg.head_dim_v = 1;
    /* It reads float scores whatever the storage; only a bias in the storage dtype needs
     * DP_STORAGE (so every other call shares the float program). */
    cfg.dtype = p->bias == 2 ? p->d.dtype : DIPOLE_F32;
    return cfg;
}

dipole_status dp_rowwise_plan_make(dipole_ctx *ctx, const dp_problem *p, const char *name,
                                   dp_rowwise_plan *rw, char *reason, size_t reason_cap)
{
    int size = DP_ROWWISE_ROWS * DP_ROWWISE_LANES;
    while (size > 1 && (size_t)size > ctx->props.max_work_group)
        size /= 2;
    const char *const names[1] = {name};
    const dp_fit_search search = {names, 1, rowwise_config, NULL, NULL, 1, p};
    dp_kernel_fit fit;
    const dipole_status st = dp_fit_search_run(ctx, &search, &size, &rw->cfg, &fit);
    if (st == DIPOLE_ERR_UNSUPPORTED)
        snprintf(reason, reason_cap, "gemm: the compiled row-wise kernel allows no work-item");
    if (st != DIPOLE_SUCCESS)
        return st;
    rw->block_m = (size_t)rw->cfg.block_m;
    rw->block_n = (size_t)rw->cfg.block_n;
    return DIPOLE_SUCCESS;
}

dipole_status dp_rowwise_enqueue(dipole_ctx *ctx, const dp_rowwise_plan *rw, cl_kernel kernel,
                                 const char *name, const cl_mem *bufs, int nbufs,
                                 const dp_problem *p, const dp_gemm_chunk *c,
                                 cl_mem alibi_slopes)
{
    /* Both row-wise kernels take their buffers first, then this same tail of ints (packed: the
     * kernel takes each sequence's rows and keys from the cu_seqlens in key_lengths). */
    const int ints[11] = {(int)c->nr, (int)c->nc,       (int)c->r0,       (int)c->j0,
                          (int)c->s0, p->d.batch,       p->d.heads_q,     p->d.seq_q,
                          p->d.seq_k, p->d.window_left, p->d.window_right};
    dp_launch_args l = dp_launch_args_begin(kernel, name);
    for (int i = 0; i < nbufs; i++)
        dp_arg_buffer(&l, bufs[i]);
    for (int i = 0; i < 11; i++)
        dp_arg_int(&l, ints[i]);
    dp_arg_score_mods(&l, p, alibi_slopes);
    const size_t global[3] = {(c->nr + rw->block_m - 1) / rw->block_m * rw->block_m, rw->block_n,
                              c->ns};
    const size_t local[3] = {rw->block_m, rw->block_n, 1};
    return dp_launch(ctx, &l, 3, global, local, NULL);
}

bool dp_gemm_batch_alloc(dp_gemm_batch *g, size_t n)
{
    g->off_a = malloc(sizeof(size_t) * n);
    g->off_b = malloc(sizeof(size_t) * n);
    g->off_c = malloc(sizeof(size_t) * n);
    g->alpha = malloc(sizeof(float) * n);
    g->beta = malloc(sizeof(float) * n);
    if (g->off_a && g->off_b && g->off_c && g->alpha && g->beta)
        return true;
    dp_gemm_batch_free(g);
    return false;
}

void dp_gemm_batch_free(dp_gemm_batch *g)
{
    free(g->off_a);
    free(g->off_b);
    free(g->off_c);
    free(g->alpha);
    free(g->beta);
    memset(g, 0, sizeof *g);
}

dipole_status dp_gemm_scores_alloc(dipole_ctx *ctx, dp_gemm_batch *g, size_t n, size_t s_bytes,
                                   const char *what, cl_mem *s)
{
    if (!dp_gemm_batch_alloc(g, n))
        return dp_fail(ctx, DIPOLE_ERR_OUT_OF_HOST_MEMORY, "%s: out of host memory", what);
    char name[64];
    snprintf(name, sizeof name, "%s scores", what);
    return dp_scratch(ctx, s_bytes, name, s);
}
