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

/* Element offset of query row `row` of sequence b, head `head`: a packed sequence's rows are
 * rows of the tensors' one batch. */
static inline size_t dp_gemm_query_at(const dp_problem *p, const dipole_tensor *t, size_t b,
                                      size_t row, size_t head)
{
    if (!p->varlen)
        return dp_gemm_at(t, b, row, head);
    return dp_gemm_at(t, 0, (size_t)dp_first_query(p, (int)b) + row, head);
}

/* Element offset of key j0 of sequence b, head `head`, the first of a span of nc keys. A packed
 * sequence's span ends inside it, except the one key of a chunk that sees none, which may lie
 * past the tensor (a last sequence without keys): that one is read at the last nc rows, where
 * its weight 0 multiplies a finite value, as an empty unpacked batch multiplies its key 0. */
static inline size_t dp_gemm_keys_at(const dp_problem *p, const dipole_tensor *t, size_t b,
                                     size_t j0, size_t nc, size_t head)
{
    if (!p->varlen)
        return dp_gemm_at(t, b, j0, head);
    const size_t row = (size_t)dp_first_key(p, (int)b) + j0, last = (size_t)p->d.seq_k - nc;
    return dp_gemm_at(t, 0, row < last ? row : last, head);
}

/* Score map m's heads of q or k (and dq, dk): head h of the view is head DP_POLE_HEAD(h, m) =
 * nscores h + m of t, so DIFF's per-pole GEMMs are plain attention's on these views (with one
 * score map, t itself). */
static inline dipole_tensor dp_gemm_score_view(const dp_problem *p, const dipole_tensor *t, int m)
{
    dipole_tensor v = *t;
    v.offset += (size_t)m * t->stride_head;
    v.stride_head *= (size_t)p->nscores;
    return v;
}

/* Whether a chunk holds a second score-sized buffer beside S (and the backward's dP): DIFF's
 * second score map, or the weights on v2 of the variants that read it. */
static inline bool dp_gemm_second_map(const dp_problem *p)
{
    return p->reads_v2 || p->nscores == 2;
}

/* CLBlast checks ld >= the matrix's first dimension even where only one row is read. */
static inline size_t dp_gemm_ld(const dipole_tensor *t, size_t nrows, int d)
{
    return nrows == 1 && t->stride_seq < (size_t)d ? (size_t)d : t->stride_seq;
}

/* CLBlast converts batched offsets to int: a tensor of a role (dp_shape_of) must end below
 * INT_MAX elements. Fails (DIPOLE_ERR_UNSUPPORTED, naming the tensor) otherwise; t may be
 * NULL. */
dipole_status dp_gemm_check_int_range(dipole_ctx *ctx, const dp_problem *p, const char *name,
                                      const dipole_tensor *t, dp_role role);

/* One chunk: slices [s0, s0 + ns) (slice b * Hq + h), query rows [r0, r0 + nr) of their
 * sequence, and the keys [j0, j0 + nc) its rows see, rounded out to tile multiples (within the
 * sequence when packed). sees: whether any row sees a key; when not, nc is 1, every weight
 * comes out 0 and the GEMMs that only feed or add to them can be skipped. A packed batch's
 * chunks never span two sequences (their sizes differ), and skip sequences without rows. */
typedef struct dp_gemm_chunk {
    size_t s0, ns, r0, nr, j0, nc;
    bool sees;
    size_t seq; /* the iteration's place: the sequence (packed) or 0 */
} dp_gemm_chunk;

/* Steps c to the next chunk of ch's sizes in the fixed order (sequences, then slices, then
 * rows); c starts zeroed. False after the last. */
bool dp_gemm_chunk_next(const dp_problem *p, const dp_gemm_chunking *ch, dp_gemm_chunk *c);
/* Bytes of one score-sized buffer of ch: slices x rows x the most keys a chunk holds. */
size_t dp_gemm_score_bytes(const dp_problem *p, const dp_gemm_chunking *ch);

/* Sets a row-wise kernel's arguments (nbufs buffers, then the chunk and problem ints shared by
 * both row-wise kernels, then the score modifiers with the call's ALiBi slopes) and enqueues
 * it over chunk c. kernel is `name` of rw's program, fetched once per call. */
dipole_status dp_rowwise_enqueue(dipole_ctx *ctx, const dp_rowwise_plan *rw, cl_kernel kernel,
                                 const char *name, const cl_mem *bufs, int nbufs,
                                 const dp_problem *p, const dp_gemm_chunk *c,
                                 cl_mem alibi_slopes);

/* Kernel `name` of cl/dipole_rowwise.cl with a work-group the compiled kernel allows;
 * DIPOLE_ERR_UNSUPPORTED with the reason when none does. p is the call's own problem, not its
 * float copy's: a bias in the storage dtype is read as such. */
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
/* A dense float copy of a tensor of a role (dp_shape_of): uninitialised (alloc), or widened
 * from src of p's storage (widen; a key-side tensor gathered from its pages through paged's
 * block table, where paged is not NULL and has one). On failure *buf may hold a buffer to
 * release. */
dipole_status dp_gemm_stage_alloc(dipole_ctx *ctx, const dp_problem *p, dp_role role,
                                  const char *what, cl_mem *buf, dipole_tensor *dense);
dipole_status dp_gemm_stage_widen(dipole_ctx *ctx, const dp_problem *p, const dipole_tensor *src,
                                  dp_role role, const dp_args *paged, const char *what,
                                  cl_mem *buf, dipole_tensor *dense);
/* Rounds a dense float copy into dst, a tensor of p's storage. */
dipole_status dp_gemm_stage_narrow(dipole_ctx *ctx, const dp_problem *p,
                                   const dipole_tensor *dense, const dipole_tensor *dst,
                                   dp_role role, cl_event *event);

/* ---- backward */
/* The GEMM-path backward's plan: chunking under ctx->workspace_limit (S, dP and dP2 or S_1
 * per chunk), the row-wise kernel and dweights' work-group. DIPOLE_ERR_UNSUPPORTED with the
 * reason on ctx when not even one row fits. */
dipole_status dp_gemm_backward_plan(dipole_ctx *ctx, const dp_problem *p, dp_bwd_plan *plan);
/* Runs it: any head dims. Scratch: S, dP (and dP2 or S_1) per chunk, plus [NPOLES, B, Hq, Nq]
 * row sums (packed: [NPOLES, Hq, total rows]) when pole-weight gradients are asked for. */
dipole_status dp_gemm_backward(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a,
                               const dp_bwd_plan *plan, const dp_call_buffers *cb,
                               cl_event *event);

#endif
