/* Private to the two GEMM paths: the forward (attn_gemm.c) and the backward (backward_gemm.c).
 * The shared pieces live in gemm_common.c: chunking under the workspace limit, CLBlast status
 * names, strided-tensor offsets, a chunk's key span and the row-wise kernel's work-group. */
#ifndef DIPOLE_GEMM_H
#define DIPOLE_GEMM_H

#include <clblast_c.h>

#include "backward.h"
#include "internal.h"

/* Row-wise kernel work-group: rows x work-items per row, lowered to what the kernel allows. */
#define DP_ROWWISE_ROWS 32
#define DP_ROWWISE_LANES 8

/* Chooses chunk sizes for nbuf score-sized buffers [rows, seq_k] per slice under the
 * workspace limit less `reserved` bytes the call already holds; score_copied says CLBlast may
 * copy a score matrix even when its sizes are tile multiples (orientations its kernel does not
 * take directly). Returns false with a reason when not even one row fits. */
bool dp_gemm_chunking_choose(const dipole_ctx *ctx, const dp_problem *p, int nbuf,
                             bool score_copied, double reserved, dp_gemm_chunking *ch,
                             char *reason, size_t reason_cap);

/* The per-slice arrays a batched CLBlast GEMM takes: operand offsets, alpha and beta. */
typedef struct dp_gemm_batch {
    size_t *off_a, *off_b, *off_c;
    float *alpha, *beta;
} dp_gemm_batch;

/* Room for n slices; false, with nothing held, when the host is out of memory. */
bool dp_gemm_batch_alloc(dp_gemm_batch *g, size_t n);
/* A chunk's batch arrays for n slices and its score scratch of s_bytes; what names the path
 * in a failure. On failure the caller frees what was made, as after any later step. */
dipole_status dp_gemm_scores_alloc(dipole_ctx *ctx, dp_gemm_batch *g, size_t n, size_t s_bytes,
                                   const char *what, cl_mem *s);
void dp_gemm_batch_free(dp_gemm_batch *g);

dipole_status dp_clblast_fail(dipole_ctx *ctx, CLBlastStatusCode s, const char *call);

/* Element offset of row `seq` of head `head` in batch `b`. */
static inline size_t dp_gemm_at(const dipole_tensor *t, size_t b, size_t seq, size_t head)
{
    return t->offset + b * t->stride_batch + seq * t->stride_seq + head * t->stride_head;
}

/* CLBlast checks ld >= the matrix's first dimension even where only one row is read. */
static inline size_t dp_gemm_ld(const dipole_tensor *t, size_t nrows, int d)
{
    return nrows == 1 && t->stride_seq < (size_t)d ? (size_t)d : t->stride_seq;
}

/* CLBlast converts batched offsets to int: a tensor must end below INT_MAX elements. Fails
 * (DIPOLE_ERR_UNSUPPORTED, naming the tensor) otherwise; t may be NULL. */
dipole_status dp_gemm_check_int_range(dipole_ctx *ctx, const char *name, const dipole_tensor *t,
                                      int batch, int seq, int heads, int d);

/* The visible keys [*j0, *j0 + *nc) of every row of a chunk, rounded out to tile multiples;
 * one column when the chunk sees nothing (its weights then come out 0). */
void dp_gemm_key_span(const dp_problem *p, size_t s0, size_t ns, size_t r0, size_t nr,
                      size_t *j0, size_t *nc);

/* Sets a row-wise kernel's arguments (nbufs buffers, then the chunk and problem ints shared by
 * both row-wise kernels) and enqueues it over rows [r0, r0+nr) of slices [s0, s0+ns) and key
 * columns [j0, j0+nc). kernel is `name` of rw's program, fetched once per call. */
dipole_status dp_rowwise_enqueue(dipole_ctx *ctx, const dp_rowwise_plan *rw, cl_kernel kernel,
                                 const char *name,
                                 const cl_mem *bufs, int nbufs, const dp_problem *p, size_t s0,
                                 size_t ns, size_t r0, size_t nr, size_t j0, size_t nc);

/* Kernel `name` of cl/dipole_rowwise.cl with a work-group the compiled kernel allows;
 * DIPOLE_ERR_UNSUPPORTED with the reason when none does. */
dipole_status dp_rowwise_plan_make(dipole_ctx *ctx, const dp_problem *p, const char *name,
                                   dp_rowwise_plan *rw, char *reason, size_t reason_cap);

/* ---- half storage (gemm_stage.c): the float path runs on dense float copies */
/* p with float32 storage: what the float path plans and runs on. */
dp_problem dp_gemm_f32_problem(const dp_problem *p);
/* Bytes of the float copies a half-storage or paged call holds (0 for contiguous float32):
 * forward q, k, v, v2, out (paged float32: k, v, v2 alone); backward also dout and the four
 * gradients. */
double dp_gemm_stage_bytes(const dp_problem *p, bool backward);
/* Whether the copies leave room under the workspace limit; false with a reason otherwise. */
bool dp_gemm_stage_fits(const dipole_ctx *ctx, const dp_problem *p, bool backward,
                        char *reason, size_t cap);
/* A dense float copy of a query-side (query) or key-side tensor: uninitialised (alloc), or
 * widened from src of p's storage (widen; a key-side tensor gathered from its pages through
 * paged's block table, where paged is not NULL and has one). On failure *buf may hold a
 * buffer to release. */
dipole_status dp_gemm_stage_alloc(dipole_ctx *ctx, const dp_problem *p, bool query,
                                  const char *what, cl_mem *buf, dipole_tensor *dense);
dipole_status dp_gemm_stage_widen(dipole_ctx *ctx, const dp_problem *p, const dipole_tensor *src,
                                  bool query, const dp_args *paged, const char *what,
                                  cl_mem *buf, dipole_tensor *dense);
/* Rounds a dense float copy into dst, a tensor of p's storage. */
dipole_status dp_gemm_stage_narrow(dipole_ctx *ctx, const dp_problem *p,
                                   const dipole_tensor *dense, const dipole_tensor *dst,
                                   bool query, cl_event *event);

/* ---- backward */
/* The GEMM-path backward's plan: chunking under ctx->workspace_limit (S, dP and dP2 per
 * chunk), the row-wise kernel and dweights' work-group. DIPOLE_ERR_UNSUPPORTED with the reason
 * on ctx when not even one row fits. */
dipole_status dp_gemm_backward_plan(dipole_ctx *ctx, const dp_problem *p, dp_bwd_plan *plan);
/* Runs it: any head_dim. Scratch: S, dP (and dP2) per chunk, plus [NPOLES, B, Hq, Nq] row
 * sums when pole-weight gradients are asked for. */
dipole_status dp_gemm_backward(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a,
                               const dp_bwd_plan *plan, const dp_call_buffers *cb,
                               cl_event *event);

#endif
