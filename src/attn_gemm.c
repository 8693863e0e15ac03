/* The GEMM path: per chunk of (batch*head) slices and query rows,
 *   S = scale * Q K^T          (CLBlast batched GEMM, straight from the strided tensors)
 *   P, P2 = rowwise(S)         (cl/dipole_rowwise.cl: mask, per-pole softmax, in place)
 *   O = P V (+ P2 V2)          (CLBlast batched GEMM, beta = 1 for the second)
 * Any head_dim works, and the score memory stays under ctx->workspace_limit by chunking.
 *
 * Everything is column-major in CLBlast's terms: a row-major [seq, head_dim] tensor slice with
 * leading dimension stride_seq is a column-major [head_dim, seq] matrix, and each score chunk
 * is stored column-major [rows, keys]. That is the orientation CLBlast's fast GEMM kernel
 * (GEMMK = 0) wants for the first GEMM's C and the second GEMM's B, so when the chunk's sizes
 * are multiples of its tiles CLBlast makes no score-sized copy of its own. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <clblast_c.h>

#include "internal.h"

/* CLBlast pads a matrix it copies to its tile sizes; 128 bounds every tile in its database. */
#define DP_GEMM_PAD 128
/* Below XGEMM_MIN_INDIRECT_SIZE^3 multiply-adds CLBlast runs its direct kernel, which copies
 * nothing; 64 is the smallest value in its database, so this errs towards counting copies. */
#define DP_GEMM_DIRECT_MAX 64
/* Row-wise kernel work-group: rows x work-items per row, lowered to what the kernel allows. */
#define DP_ROWWISE_ROWS 32
#define DP_ROWWISE_LANES 8

typedef struct gemm_chunking {
    size_t slices;      /* (batch, head) slices per chunk */
    size_t rows;        /* query rows per chunk */
    size_t nchunks;
    size_t score_bytes; /* our score buffers (S, and P2 where the variant reads v2) */
    size_t peak_bytes;  /* score_bytes plus CLBlast's temporary copies, bounded above */
} gemm_chunking;

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
static double peak_of(const dp_problem *p, double slices, double rows, bool *fits_alloc,
                      const dipole_ctx *ctx)
{
    const double nbuf = p->reads_v2 ? 2 : 1, nk = p->d.seq_k, d = p->d.head_dim;
    const double nq = p->d.seq_q;
    /* Key spans are rounded out to tile multiples, so they are aligned when seq_k is. */
    const bool cols_aligned = p->d.seq_k % DP_GEMM_PAD == 0;
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

/* Chooses chunk sizes: as many query rows per slice as fit, then as many slices. Returns
 * false (with a reason in plan) when not even one row fits. */
static bool choose_chunking(const dipole_ctx *ctx, const dp_problem *p, gemm_chunking *ch,
                            dipole_plan *plan)
{
    const double limit = (double)ctx->workspace_limit;
    const size_t nq = (size_t)p->d.seq_q, bh = (size_t)p->d.batch * (size_t)p->d.heads_q;
    bool ok;
    double peak = peak_of(p, 1, 1, &ok, ctx);
    if (peak > limit || !ok) {
        snprintf(plan->reason, sizeof plan->reason,
                 "gemm: one row of %d scores needs %.0f bytes, over the %s of %.0f bytes",
                 p->d.seq_k, peak, ok ? "workspace limit" : "device's largest buffer",
                 ok ? limit : (double)ctx->props.max_alloc);
        return false;
    }
    /* Rows: start from what our buffers alone would allow (CLBlast's copies at most about
     * double that), prefer tile multiples, and walk down until the whole peak fits. */
    const double nbuf = p->reads_v2 ? 2 : 1;
    double guess = limit / (4.0 * nbuf * (double)p->d.seq_k);
    size_t rows = guess >= (double)nq ? nq : (size_t)guess;
    if (rows < 1)
        rows = 1;
    if (rows < nq && rows > DP_GEMM_PAD)
        rows = rows / DP_GEMM_PAD * DP_GEMM_PAD;
    for (;;) {
        peak = peak_of(p, 1, (double)rows, &ok, ctx);
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
        if (even < rows && peak_of(p, 1, (double)even, &ok, ctx) <= limit && ok)
            rows = even;
    }
    size_t slices = 1;
    if (rows == nq) {
        /* Everything scales with the slice count. */
        const double per = peak_of(p, 1, (double)nq, NULL, ctx);
        const double elems = (double)nq * (double)p->d.seq_k;
        double n = limit / per;
        if (n > (double)ctx->props.max_alloc / (4.0 * elems))
            n = (double)ctx->props.max_alloc / (4.0 * elems);
        if (n > (double)INT_MAX / elems)
            n = (double)INT_MAX / elems;
        slices = n >= (double)bh ? bh : n < 1 ? 1 : (size_t)n;
        while (slices > 1 && (peak_of(p, (double)slices, (double)nq, &ok, ctx) > limit || !ok))
            slices--;
    }
    ch->rows = rows;
    ch->slices = slices;
    ch->nchunks = ((nq + rows - 1) / rows) * ((bh + slices - 1) / slices);
    ch->score_bytes = (size_t)nbuf * 4 * slices * rows * (size_t)p->d.seq_k;
    ch->peak_bytes = (size_t)peak_of(p, (double)slices, (double)rows, NULL, ctx);
    return true;
}

dipole_status dp_gemm_plan(dipole_ctx *ctx, const dp_problem *p, dipole_plan *plan)
{
    gemm_chunking ch;
    if (!choose_chunking(ctx, p, &ch, plan))
        return DIPOLE_ERR_UNSUPPORTED;
    plan->path = DIPOLE_PATH_GEMM;
    plan->block_m = 0;
    plan->block_n = 0;
    plan->work_group = DP_ROWWISE_ROWS * DP_ROWWISE_LANES;
    plan->workspace_bytes = ch.peak_bytes;
    snprintf(plan->reason, sizeof plan->reason,
             "gemm: %zu chunk%s of %zu rows x %zu heads, peak %.1f of %.1f MiB", ch.nchunks,
             ch.nchunks == 1 ? "" : "s", ch.rows, ch.slices, (double)ch.peak_bytes / 1048576.0,
             (double)ctx->workspace_limit / 1048576.0);
    return DIPOLE_SUCCESS;
}

/* ---------------------------------------------------------------- run */

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

static dipole_status clblast_fail(dipole_ctx *ctx, CLBlastStatusCode s, const char *call)
{
    return dp_fail(ctx, DIPOLE_ERR_CLBLAST, "%s failed: CLBlast status %d (%s)", call, (int)s,
                   clblast_name(s));
}

/* Element offset of row `seq` of head `head` in batch `b`. */
static size_t at(const dipole_tensor *t, size_t b, size_t seq, size_t head)
{
    return t->offset + b * t->stride_batch + seq * t->stride_seq + head * t->stride_head;
}

/* CLBlast checks ld >= the matrix's first dimension even where only one row is read, and
 * converts batched offsets to int: a tensor must end below INT_MAX elements. */
static size_t ld_of(const dipole_tensor *t, size_t nrows, int d)
{
    return nrows == 1 && t->stride_seq < (size_t)d ? (size_t)d : t->stride_seq;
}

static bool ends_below_int_max(const dipole_tensor *t, int batch, int seq, int heads, int d)
{
    const size_t last = at(t, (size_t)batch - 1, (size_t)seq - 1, (size_t)heads - 1) + (size_t)d;
    return last <= (size_t)INT_MAX;
}

typedef struct gemm_work {
    cl_mem s, s2;
    size_t *off_a, *off_b, *off_c;
    float *alpha, *beta;
} gemm_work;

static void work_free(gemm_work *w)
{
    if (w->s)
        clReleaseMemObject(w->s);
    if (w->s2)
        clReleaseMemObject(w->s2);
    free(w->off_a);
    free(w->off_b);
    free(w->off_c);
    free(w->alpha);
    free(w->beta);
}

/* The visible keys of every row in a chunk, rounded out to tile multiples (fewer CLBlast
 * copies). Visible ranges only move right as the row grows, so the first and last rows bound
 * them. A chunk that sees nothing still gets one column so that the GEMMs stay valid; its
 * weights come out 0. */
static void chunk_key_span(const dp_problem *p, size_t s0, size_t ns, size_t r0, size_t nr,
                           size_t *j0, size_t *nc)
{
    const size_t hq = (size_t)p->d.heads_q, nk = (size_t)p->d.seq_k;
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
        return;
    }
    size_t a = (size_t)lo_all / DP_GEMM_PAD * DP_GEMM_PAD;
    size_t e = ((size_t)hi_all + DP_GEMM_PAD - 1) / DP_GEMM_PAD * DP_GEMM_PAD;
    *j0 = a;
    *nc = (e < nk ? e : nk) - a;
}

typedef struct rowwise_launch {
    cl_kernel kernel;
    size_t block_m, block_n; /* rows per work-group, work-items per row */
} rowwise_launch;

/* The row-wise kernel, with a work-group the compiled kernel allows: fewer work-items per row
 * first (the rows keep the reads coalesced), then fewer rows. */
static dipole_status rowwise_kernel(dipole_ctx *ctx, const dp_problem *p, rowwise_launch *rw)
{
    dp_kernel_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.kind = DP_KERNEL_ROWWISE;
    cfg.variant = p->d.variant;
    cfg.head_dim = 1; /* the kernel never sees head_dim: one program serves all of them */
    cfg.causal = p->d.causal != 0;
    cfg.has_window = p->has_window;
    cfg.block_m = DP_ROWWISE_ROWS;
    cfg.block_n = DP_ROWWISE_LANES;
    while ((size_t)cfg.block_m * (size_t)cfg.block_n > ctx->props.max_work_group) {
        if (cfg.block_n > 1)
            cfg.block_n /= 2;
        else
            cfg.block_m /= 2;
    }
    for (;;) {
        cfg.work_group = cfg.block_m * cfg.block_n;
        dipole_status st = dp_get_kernel(ctx, &cfg, "dipole_rowwise", &rw->kernel);
        if (st != DIPOLE_SUCCESS)
            return st;
        size_t wg = 0;
        cl_int err = clGetKernelWorkGroupInfo(rw->kernel, ctx->device, CL_KERNEL_WORK_GROUP_SIZE,
                                              sizeof wg, &wg, NULL);
        if (err != CL_SUCCESS)
            return dp_cl_fail(ctx, err, "clGetKernelWorkGroupInfo(dipole_rowwise)");
        if ((size_t)cfg.work_group <= wg)
            break;
        if (cfg.work_group == 1)
            return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED,
                           "gemm: the compiled row-wise kernel allows no work-item");
        if (cfg.block_n > 1)
            cfg.block_n /= 2;
        else
            cfg.block_m /= 2;
    }
    rw->block_m = (size_t)cfg.block_m;
    rw->block_n = (size_t)cfg.block_n;
    return DIPOLE_SUCCESS;
}

static dipole_status launch_rowwise(dipole_ctx *ctx, const dp_problem *p, const rowwise_launch *rw,
                                    const gemm_work *w, const dp_args *a, size_t s0, size_t ns,
                                    size_t r0, size_t nr, size_t j0, size_t nc)
{
    const cl_mem bufs[5] = {w->s, w->s2 ? w->s2 : w->s, a->lse, a->key_lengths, a->pole_weights};
    const cl_int ints[11] = {(cl_int)nr,   (cl_int)nc,   (cl_int)r0,         (cl_int)j0,
                             (cl_int)s0,   p->d.batch,   p->d.heads_q,       p->d.seq_q,
                             p->d.seq_k,   p->d.window_left, p->d.window_right};
    cl_int err = CL_SUCCESS;
    cl_uint arg = 0;
    for (int i = 0; i < 5 && err == CL_SUCCESS; i++)
        err = clSetKernelArg(rw->kernel, arg++, sizeof(cl_mem), &bufs[i]);
    for (int i = 0; i < 11 && err == CL_SUCCESS; i++)
        err = clSetKernelArg(rw->kernel, arg++, sizeof(cl_int), &ints[i]);
    if (err != CL_SUCCESS)
        return dp_cl_fail(ctx, err, "clSetKernelArg(dipole_rowwise)");
    const size_t global[3] = {(nr + rw->block_m - 1) / rw->block_m * rw->block_m, rw->block_n, ns};
    const size_t local[3] = {rw->block_m, rw->block_n, 1};
    err = clEnqueueNDRangeKernel(ctx->queue, rw->kernel, 3, NULL, global, local, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return dp_cl_fail(ctx, err, "clEnqueueNDRangeKernel(dipole_rowwise)");
    return DIPOLE_SUCCESS;
}

dipole_status dp_gemm_run(dipole_ctx *ctx, const dp_problem *p, const dipole_plan *plan,
                          const dp_args *a, cl_event *event)
{
    (void)plan; /* the chunking is recomputed: the plan carries no field for it */
    const dipole_attn_desc *d = &p->d;
    dipole_plan scratch;
    gemm_chunking ch;
    if (!choose_chunking(ctx, p, &ch, &scratch))
        return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED, "%s", scratch.reason);
    const dipole_tensor *ins[4] = {a->q, a->k, a->v, p->reads_v2 ? a->v2 : NULL};
    const char *names[5] = {"q", "k", "v", "v2", "out"};
    for (int i = 0; i < 5; i++) {
        const dipole_tensor *t = i < 4 ? ins[i] : a->out;
        const bool is_q = i == 0 || i == 4;
        if (t && !ends_below_int_max(t, d->batch, is_q ? d->seq_q : d->seq_k,
                                     is_q ? d->heads_q : d->heads_kv, d->head_dim))
            return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED,
                           "gemm: tensor %s reaches past element %d, beyond CLBlast's batched "
                           "GEMM (int offsets)",
                           names[i], INT_MAX);
    }
    rowwise_launch rw;
    dipole_status st = rowwise_kernel(ctx, p, &rw);
    if (st != DIPOLE_SUCCESS)
        return st;

    gemm_work w;
    memset(&w, 0, sizeof w);
    const size_t ns_max = ch.slices, nr_max = ch.rows;
    w.off_a = malloc(sizeof(size_t) * ns_max);
    w.off_b = malloc(sizeof(size_t) * ns_max);
    w.off_c = malloc(sizeof(size_t) * ns_max);
    w.alpha = malloc(sizeof(float) * ns_max);
    w.beta = malloc(sizeof(float) * ns_max);
    if (!w.off_a || !w.off_b || !w.off_c || !w.alpha || !w.beta) {
        work_free(&w);
        return dp_fail(ctx, DIPOLE_ERR_OUT_OF_HOST_MEMORY, "gemm: out of host memory");
    }
    const size_t s_bytes = sizeof(float) * ns_max * nr_max * (size_t)d->seq_k;
    cl_int err;
    w.s = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE, s_bytes, NULL, &err);
    if (err == CL_SUCCESS && p->reads_v2)
        w.s2 = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE, s_bytes, NULL, &err);
    if (err != CL_SUCCESS) {
        work_free(&w);
        char call[96];
        snprintf(call, sizeof call, "clCreateBuffer(gemm scores, %zu bytes)", s_bytes);
        return dp_cl_fail(ctx, err, call);
    }

    const size_t bh = (size_t)d->batch * (size_t)d->heads_q, nq = (size_t)d->seq_q;
    const size_t hq = (size_t)d->heads_q, group_q = (size_t)p->group, dim = (size_t)d->head_dim;
    cl_command_queue queue = ctx->queue;
    for (size_t s0 = 0; s0 < bh && st == DIPOLE_SUCCESS; s0 += ns_max) {
        const size_t ns = bh - s0 < ns_max ? bh - s0 : ns_max;
        for (size_t r0 = 0; r0 < nq && st == DIPOLE_SUCCESS; r0 += nr_max) {
            const size_t nr = nq - r0 < nr_max ? nq - r0 : nr_max;
            const bool last = s0 + ns >= bh && r0 + nr >= nq;
            size_t j0, nc;
            chunk_key_span(p, s0, ns, r0, nr, &j0, &nc);

            /* S = scale Q K^T: C [nr, nc] = (Q^T stored [d, nr])^T (K^T stored [d, nc]). */
            for (size_t t = 0; t < ns; t++) {
                const size_t b = (s0 + t) / hq, h = (s0 + t) % hq;
                w.off_a[t] = at(a->q, b, r0, h);
                w.off_b[t] = at(a->k, b, j0, h / group_q);
                w.off_c[t] = t * nr * nc;
                w.alpha[t] = d->scale;
                w.beta[t] = 0.0f;
            }
            CLBlastStatusCode cs = CLBlastSgemmBatched(
                CLBlastLayoutColMajor, CLBlastTransposeYes, CLBlastTransposeNo, nr, nc, dim,
                w.alpha, a->q->buffer, w.off_a, ld_of(a->q, nr, d->head_dim), a->k->buffer,
                w.off_b, ld_of(a->k, nc, d->head_dim), w.beta, w.s, w.off_c, nr, ns, &queue, NULL);
            if (cs != CLBlastSuccess) {
                st = clblast_fail(ctx, cs, "CLBlastSgemmBatched(S = scale Q K^T)");
                break;
            }
            st = launch_rowwise(ctx, p, &rw, &w, a, s0, ns, r0, nr, j0, nc);
            if (st != DIPOLE_SUCCESS)
                break;

            /* O^T [d, nr] = (V^T stored [d, nc]) (P stored [nr, nc])^T, then += V2 P2. */
            const int passes = p->reads_v2 ? 2 : 1;
            for (int pass = 0; pass < passes && st == DIPOLE_SUCCESS; pass++) {
                const dipole_tensor *v = pass ? a->v2 : a->v;
                for (size_t t = 0; t < ns; t++) {
                    const size_t b = (s0 + t) / hq, h = (s0 + t) % hq;
                    w.off_a[t] = at(v, b, j0, h / group_q);
                    w.off_b[t] = t * nr * nc;
                    w.off_c[t] = at(a->out, b, r0, h);
                    w.alpha[t] = 1.0f;
                    w.beta[t] = pass ? 1.0f : 0.0f;
                }
                cl_event *ev = last && pass == passes - 1 ? event : NULL;
                cs = CLBlastSgemmBatched(CLBlastLayoutColMajor, CLBlastTransposeNo,
                                         CLBlastTransposeYes, dim, nr, nc, w.alpha, v->buffer,
                                         w.off_a, ld_of(v, nc, d->head_dim), pass ? w.s2 : w.s,
                                         w.off_b, nr, w.beta, a->out->buffer, w.off_c,
                                         ld_of(a->out, nr, d->head_dim), ns, &queue, ev);
                if (cs != CLBlastSuccess)
                    st = clblast_fail(ctx, cs,
                                      pass ? "CLBlastSgemmBatched(O += P2 V2)"
                                           : "CLBlastSgemmBatched(O = P V)");
            }
        }
    }
    /* The buffers live on until the enqueued commands that use them finish. */
    work_free(&w);
    return st;
}
