/* The GEMM path: per chunk of (batch*head) slices and query rows,
 *   S = scale * Q K^T          (CLBlast batched GEMM, straight from the strided tensors)
 *   P, P2 = rowwise(S)         (cl/dipole_rowwise.cl: mask, per-pole softmax, in place)
 *   O = P V (+ P2 V2)          (CLBlast batched GEMM, beta = 1 for the second)
 * DIFF scores twice, S_p = scale Q_p K_p^T on the views of q and k at each pole's heads
 * (dp_gemm_score_view), and the row-wise kernel folds both poles into P = alpha P_0 + beta P_1,
 * whose weights all land on v: one value GEMM. S runs over head_dim, O over head_dim_v.
 * Any head dims work, and the score memory stays under ctx->workspace_limit by chunking.
 * Half storage runs this on float copies of the tensors (gemm_stage.c). The score modifiers
 * (soft-cap, ALiBi, bias) act inside the row-wise kernel, on S as the first GEMM leaves it.
 * A packed batch runs sequence by sequence (dp_gemm_chunk_next): each chunk's GEMMs read the
 * sequence's rows of the one tensor batch, and the row-wise kernel puts its lse rows at the
 * sequence's packed rows.
 *
 * Everything is column-major in CLBlast's terms: a row-major [seq, head_dim] tensor slice with
 * leading dimension stride_seq is a column-major [head_dim, seq] matrix, and each score chunk
 * is stored column-major [rows, keys]. That is the orientation CLBlast's fast GEMM kernel
 * (GEMMK = 0) wants for the first GEMM's C and the second GEMM's B, so when the chunk's sizes
 * are multiples of its tiles CLBlast makes no score-sized copy of its own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "launch.h"

dipole_status dp_gemm_plan(dipole_ctx *ctx, const dp_problem *p_in, dp_fwd_plan *plan)
{
    dipole_plan *pub = &plan->pub;
    dp_gemm_chunking *ch = &plan->chunking;
    if (!dp_gemm_stage_fits(ctx, p_in, false, pub->reason, sizeof pub->reason))
        return DIPOLE_ERR_UNSUPPORTED;
    const double staged = dp_gemm_stage_bytes(p_in, false);
    const dp_problem p32 = dp_gemm_f32_problem(p_in), *p = &p32;
    if (!dp_gemm_chunking_choose(ctx, p, dp_gemm_second_map(p) ? 2 : 1, false, staged, ch,
                                 pub->reason, sizeof pub->reason))
        return DIPOLE_ERR_UNSUPPORTED;
    const dipole_status st = dp_rowwise_plan_make(ctx, p_in, "dipole_rowwise", &plan->rowwise,
                                                  pub->reason, sizeof pub->reason);
    if (st != DIPOLE_SUCCESS)
        return st;
    pub->path = DIPOLE_PATH_GEMM;
    pub->layout = DIPOLE_LAYOUT_NONE;
    pub->block_m = 0;
    pub->block_n = 0;
    pub->work_group = DP_ROWWISE_ROWS * DP_ROWWISE_LANES;
    pub->workspace_bytes = ch->peak_bytes + (size_t)staged;
    pub->chunk_rows = ch->rows;
    pub->chunk_slices = ch->slices;
    pub->chunks = ch->nchunks;
    char copies[64] = "";
    if (staged > 0)
        snprintf(copies, sizeof copies, " + %.1f MiB of float copies", staged / 1048576.0);
    snprintf(pub->reason, sizeof pub->reason,
             "gemm: %zu chunk%s of %zu rows x %zu heads, peak %.1f%s of %.1f MiB", ch->nchunks,
             ch->nchunks == 1 ? "" : "s", ch->rows, ch->slices, (double)ch->peak_bytes / 1048576.0,
             copies, (double)ctx->workspace_limit / 1048576.0);
    return DIPOLE_SUCCESS;
}

/* ---------------------------------------------------------------- run */

typedef struct gemm_work {
    cl_kernel rowwise; /* owned by the context */
    cl_mem s, s2; /* S then P; the second score map (DIFF) or P2 (on v2) */
    dp_gemm_batch g; /* per-slice arguments of one batched GEMM */
} gemm_work;

static void work_free(gemm_work *w)
{
    if (w->s)
        clReleaseMemObject(w->s);
    if (w->s2)
        clReleaseMemObject(w->s2);
    dp_gemm_batch_free(&w->g);
}

static dipole_status launch_rowwise(dipole_ctx *ctx, const dp_problem *p,
                                    const dp_rowwise_plan *rw, const gemm_work *w,
                                    const dp_args *a, const dp_gemm_chunk *c)
{
    const cl_mem bufs[5] = {w->s, w->s2 ? w->s2 : w->s, a->lse, a->key_lengths, a->pole_weights};
    return dp_rowwise_enqueue(ctx, rw, w->rowwise, "dipole_rowwise", bufs, 5, p, c,
                              a->alibi_slopes);
}

/* S = scale Q K^T: C [nr, nc] = (Q^T stored [d, nr])^T (K^T stored [d, nc]), per score map
 * (DIFF's second into s2). */
static dipole_status scores(dipole_ctx *ctx, const dp_problem *p, gemm_work *w, const dp_args *a,
                            const dp_gemm_chunk *c)
{
    const size_t hq = (size_t)p->d.heads_q, dim = (size_t)p->d.head_dim;
    cl_command_queue queue = ctx->queue;
    for (int m = 0; m < p->nscores; m++) {
        const dipole_tensor q = dp_gemm_score_view(p, a->q, m), k = dp_gemm_score_view(p, a->k, m);
        for (size_t t = 0; t < c->ns; t++) {
            const size_t b = (c->s0 + t) / hq, h = (c->s0 + t) % hq;
            w->g.off_a[t] = dp_gemm_query_at(p, &q, b, c->r0, h);
            w->g.off_b[t] = dp_gemm_keys_at(p, &k, b, c->j0, c->nc, h / (size_t)p->group);
            w->g.off_c[t] = t * c->nr * c->nc;
            w->g.alpha[t] = p->d.scale;
            w->g.beta[t] = 0.0f;
        }
        const CLBlastStatusCode cs = CLBlastSgemmBatched(
            CLBlastLayoutColMajor, CLBlastTransposeYes, CLBlastTransposeNo, c->nr, c->nc, dim,
            w->g.alpha, q.buffer, w->g.off_a, dp_gemm_ld(&q, c->nr, p->d.head_dim), k.buffer,
            w->g.off_b, dp_gemm_ld(&k, c->nc, p->d.head_dim), w->g.beta, m ? w->s2 : w->s,
            w->g.off_c, c->nr, c->ns, &queue, NULL);
        if (cs != CLBlastSuccess)
            return dp_clblast_fail(ctx, cs,
                                   m ? "CLBlastSgemmBatched(S_1 = scale Q_1 K_1^T)"
                                     : "CLBlastSgemmBatched(S = scale Q K^T)");
    }
    return DIPOLE_SUCCESS;
}

/* O^T [dv, nr] = (V^T stored [dv, nc]) (P stored [nr, nc])^T, then += V2 P2; the last GEMM
 * of the call ends in event. */
static dipole_status values(dipole_ctx *ctx, const dp_problem *p, gemm_work *w, const dp_args *a,
                            const dp_gemm_chunk *c, cl_event *event)
{
    const size_t hq = (size_t)p->d.heads_q, dim = (size_t)p->dv;
    const int passes = p->reads_v2 ? 2 : 1;
    cl_command_queue queue = ctx->queue;
    for (int pass = 0; pass < passes; pass++) {
        const dipole_tensor *v = pass ? a->v2 : a->v;
        for (size_t t = 0; t < c->ns; t++) {
            const size_t b = (c->s0 + t) / hq, h = (c->s0 + t) % hq;
            w->g.off_a[t] = dp_gemm_keys_at(p, v, b, c->j0, c->nc, h / (size_t)p->group);
            w->g.off_b[t] = t * c->nr * c->nc;
            w->g.off_c[t] = dp_gemm_query_at(p, a->out, b, c->r0, h);
            w->g.alpha[t] = 1.0f;
            w->g.beta[t] = pass ? 1.0f : 0.0f;
        }
        const CLBlastStatusCode cs = CLBlastSgemmBatched(
            CLBlastLayoutColMajor, CLBlastTransposeNo, CLBlastTransposeYes, dim, c->nr, c->nc,
            w->g.alpha, v->buffer, w->g.off_a, dp_gemm_ld(v, c->nc, p->dv),
            pass ? w->s2 : w->s, w->g.off_b, c->nr, w->g.beta, a->out->buffer, w->g.off_c,
            dp_gemm_ld(a->out, c->nr, p->dv), c->ns, &queue,
            pass == passes - 1 ? event : NULL);
        if (cs != CLBlastSuccess)
            return dp_clblast_fail(ctx, cs,
                                   pass ? "CLBlastSgemmBatched(O += P2 V2)"
                                        : "CLBlastSgemmBatched(O = P V)");
    }
    return DIPOLE_SUCCESS;
}

static dipole_status run_f32(dipole_ctx *ctx, const dp_problem *p, const dp_fwd_plan *plan,
                             const dp_args *a, cl_event *event)
{
    const dp_gemm_chunking *ch = &plan->chunking;
    const dipole_tensor *ts[5] = {a->q, a->k, a->v, p->reads_v2 ? a->v2 : NULL, a->out};
    static const char *const names[5] = {"q", "k", "v", "v2", "out"};
    static const dp_role roles[5] = {DP_ROLE_Q, DP_ROLE_K, DP_ROLE_V, DP_ROLE_V, DP_ROLE_OUT};
    dipole_status st = DIPOLE_SUCCESS;
    for (int i = 0; i < 5 && st == DIPOLE_SUCCESS; i++)
        st = dp_gemm_check_int_range(ctx, p, names[i], ts[i], roles[i]);
    const dp_rowwise_plan *rw = &plan->rowwise;
    gemm_work w;
    memset(&w, 0, sizeof w);
    if (st == DIPOLE_SUCCESS)
        st = dp_get_kernel(ctx, &rw->cfg, "dipole_rowwise", &w.rowwise);
    if (st != DIPOLE_SUCCESS)
        return st;

    const size_t s_bytes = dp_gemm_score_bytes(p, ch);
    dipole_status bst = dp_gemm_scores_alloc(ctx, &w.g, ch->slices, s_bytes, "gemm", &w.s);
    if (bst == DIPOLE_SUCCESS && dp_gemm_second_map(p))
        bst = dp_scratch(ctx, s_bytes, "gemm scores 2", &w.s2);
    if (bst != DIPOLE_SUCCESS) {
        work_free(&w);
        return bst;
    }

    /* A chunk that sees no key needs no scores: the row-wise kernel writes its weights 0 (and
     * lse -inf), and the value GEMM its output rows 0. */
    dp_gemm_chunk c = {0}, next;
    bool more = dp_gemm_chunk_next(p, ch, &c);
    while (more && st == DIPOLE_SUCCESS) {
        next = c;
        more = dp_gemm_chunk_next(p, ch, &next);
        if (c.sees)
            st = scores(ctx, p, &w, a, &c);
        if (st == DIPOLE_SUCCESS)
            st = launch_rowwise(ctx, p, rw, &w, a, &c);
        if (st == DIPOLE_SUCCESS)
            st = values(ctx, p, &w, a, &c, more ? NULL : event);
        c = next;
    }
    /* The buffers live on until the enqueued commands that use them finish. */
    work_free(&w);
    return st;
}

/* Half storage: widen q, k, v (v2) into float copies, run the float path into a float out,
 * narrow it into the caller's out. A paged cache: gather k, v (v2) into dense copies (float32
 * storage keeps its own q and out). */
static dipole_status run_staged(dipole_ctx *ctx, const dp_problem *p, const dp_fwd_plan *plan,
                                const dp_args *a, cl_event *event)
{
    const dp_problem p32 = dp_gemm_f32_problem(p);
    enum { Q, K, V, V2, OUT, N };
    cl_mem bufs[N] = {NULL};
    dipole_tensor t[N];
    const bool half = p->d.dtype != DIPOLE_F32;
    const dipole_tensor *src[OUT] = {half ? a->q : NULL, a->k, a->v, p->reads_v2 ? a->v2 : NULL};
    static const char *const what[N] = {"gemm float q", "gemm float k", "gemm float v",
                                        "gemm float v2", "gemm float out"};
    static const dp_role roles[N] = {DP_ROLE_Q, DP_ROLE_K, DP_ROLE_V, DP_ROLE_V, DP_ROLE_OUT};
    dipole_status st = DIPOLE_SUCCESS;
    for (int i = 0; i < OUT && st == DIPOLE_SUCCESS; i++)
        if (src[i])
            st = dp_gemm_stage_widen(ctx, p, src[i], roles[i], a, what[i], &bufs[i], &t[i]);
    if (st == DIPOLE_SUCCESS && half)
        st = dp_gemm_stage_alloc(ctx, p, DP_ROLE_OUT, what[OUT], &bufs[OUT], &t[OUT]);
    if (st == DIPOLE_SUCCESS) {
        dp_args a32 = *a;
        a32.q = half ? &t[Q] : a->q;
        a32.k = &t[K];
        a32.v = &t[V];
        a32.v2 = src[V2] ? &t[V2] : NULL;
        a32.out = half ? &t[OUT] : a->out;
        a32.block_table = NULL;
        st = run_f32(ctx, &p32, plan, &a32, half ? NULL : event);
    }
    if (st == DIPOLE_SUCCESS && half)
        st = dp_gemm_stage_narrow(ctx, p, &t[OUT], a->out, DP_ROLE_OUT, event);
    /* The buffers live on until the enqueued commands that use them finish. */
    for (int i = 0; i < N; i++)
        if (bufs[i])
            clReleaseMemObject(bufs[i]);
    return st;
}

dipole_status dp_gemm_run(dipole_ctx *ctx, const dp_problem *p, const dp_fwd_plan *plan,
                          const dp_args *a, cl_event *event)
{
    if (p->d.dtype == DIPOLE_F32 && !p->paged)
        return run_f32(ctx, p, plan, a, event);
    return run_staged(ctx, p, plan, a, event);
}
