/* The GEMM-path backward: any head dims, scratch bounded by ctx->workspace_limit. Per chunk of
 * (batch, head) slices and query rows, with the chunk's visible keys [j0, j0 + nc):
 *   S = scale Q K^T, dP = dO V^T (dP2 = dO V2^T)       (CLBlast batched GEMMs)
 *   P, dS, P2 = rowwise_bwd(S, dP, dP2, lse)           (cl/dipole_rowwise.cl, in place)
 *   dV += P^T dO, dV2 += P2^T dO, dK += scale dS^T Q   (beta = 1 into zeroed outputs)
 *   dQ = scale dS K                                    (beta = 0: a chunk holds all its keys)
 * then d alpha / d beta from the per-row dO . O_p sums (dipole_bwd_dweights). S, dQ and dK run
 * over head_dim, dP and dV over head_dim_v. DIFF has a score map per pole, S_p = scale Q_p K_p^T
 * on the views of q and k at the pole's heads (S_1 in the third chunk, where dP2 would be): the
 * row-wise kernel leaves dS_p over them and P = alpha P_0 + beta P_1 (both on v) over S, and
 * dQ_p, dK_p follow on the views of dq and dk. The row-wise kernel applies the score modifiers
 * to S and their derivative to dS, so the GEMMs stay those of plain attention. A packed batch
 * runs sequence by sequence (dp_gemm_chunk_next), its gradients zeroed as one tensor first, so
 * that a sequence without rows or keys leaves its rows 0; the row sums of every sequence land
 * in one [poles, Hq, total rows] array, which dipole_bwd_dweights sums over all of them.
 *
 * Deterministic: chunks run in a fixed order, and the query heads of a GQA group (which add
 * into the same dK / dV slice) go to separate batched calls, one per position in the group, so
 * no two problems of one call write the same output. Layouts as in attn_gemm.c: tensor slices
 * are column-major [head_dim, seq] with leading dimension stride_seq, score chunks column-major
 * [rows, keys]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"

typedef struct bwd_work {
    cl_kernel rowwise; /* owned by the context */
    cl_mem s, dp, dp2, rowdot; /* dp2: dP2 then P2, or S_1 then dS_1 (DIFF) */
    dp_gemm_batch g; /* per-slice arguments of one batched GEMM */
} bwd_work;

static void work_free(bwd_work *w)
{
    const cl_mem m[4] = {w->s, w->dp, w->dp2, w->rowdot};
    for (int i = 0; i < 4; i++)
        if (m[i])
            clReleaseMemObject(m[i]);
    dp_gemm_batch_free(&w->g);
}

static dipole_status zero_tensor(dipole_ctx *ctx, cl_kernel kernel, const dp_problem *p,
                                 const dipole_tensor *t, dp_role role)
{
    const dp_shape sh = dp_shape_of(p, role);
    dp_launch_args l = dp_launch_args_begin(kernel, "dipole_zero_rows");
    dp_arg_tensor(&l, t);
    dp_arg_int(&l, sh.seq);
    dp_arg_int(&l, sh.dim);
    const size_t global[3] = {(size_t)sh.dim, (size_t)sh.seq * (size_t)sh.heads,
                              (size_t)p->tensor_batch};
    return dp_launch(ctx, &l, 3, global, NULL, NULL);
}

static dipole_status launch_rowwise_bwd(dipole_ctx *ctx, const dp_problem *p,
                                        const dp_rowwise_plan *rw, const bwd_work *w,
                                        const dp_bwd_args *a, const dp_call_buffers *cb,
                                        const dp_gemm_chunk *c)
{
    const cl_mem bufs[7] = {w->s,      w->dp,           w->dp2 ? w->dp2 : w->dp, a->lse,
                            w->rowdot, cb->key_lengths, cb->pole_weights};
    return dp_rowwise_enqueue(ctx, rw, w->rowwise, "dipole_rowwise_bwd", bufs, 7, p, c,
                              cb->alibi_slopes);
}

/* One batched GEMM over the chunk's slices t with t % group == g (every slice when g < 0),
 * C [m, n] = alpha op(A) op(B) + beta C, with A and B taken per slice from tensors or the
 * score chunk. The offset callbacks keep the six GEMMs of a chunk in one loop shape. */
typedef struct gemm_operand {
    cl_mem buf;
    const dipole_tensor *t; /* NULL: the score chunk, slice t at t * nr * nc, ld nr */
    bool kv;                /* tensor indexed by the K/V head and the key span, else query */
    bool trans;
    int dim; /* a tensor's head dim */
} gemm_operand;

typedef dp_gemm_chunk chunk;

static size_t operand_offset(const dp_problem *p, const gemm_operand *o, const chunk *c, size_t t)
{
    if (!o->t)
        return t * c->nr * c->nc;
    const size_t hq = (size_t)p->d.heads_q, flat = c->s0 + t;
    const size_t b = flat / hq, h = flat % hq;
    return o->kv ? dp_gemm_keys_at(p, o->t, b, c->j0, c->nc, h / (size_t)p->group)
                 : dp_gemm_query_at(p, o->t, b, c->r0, h);
}

static size_t operand_ld(const gemm_operand *o, const chunk *c)
{
    return o->t ? dp_gemm_ld(o->t, o->kv ? c->nc : c->nr, o->dim) : c->nr;
}

static dipole_status batched(dipole_ctx *ctx, const dp_problem *p, bwd_work *w, const chunk *c,
                             int g, size_t m, size_t n, size_t k, float alpha, float beta,
                             const gemm_operand *A, const gemm_operand *B, const gemm_operand *C,
                             const char *what)
{
    size_t count = 0;
    for (size_t t = 0; t < c->ns; t++) {
        if (g >= 0 && (c->s0 + t) % (size_t)p->d.heads_q % (size_t)p->group != (size_t)g)
            continue;
        w->g.off_a[count] = operand_offset(p, A, c, t);
        w->g.off_b[count] = operand_offset(p, B, c, t);
        w->g.off_c[count] = operand_offset(p, C, c, t);
        w->g.alpha[count] = alpha;
        w->g.beta[count] = beta;
        count++;
    }
    if (count == 0)
        return DIPOLE_SUCCESS;
    cl_command_queue queue = ctx->queue;
    CLBlastStatusCode cs = CLBlastSgemmBatched(
        CLBlastLayoutColMajor, A->trans ? CLBlastTransposeYes : CLBlastTransposeNo,
        B->trans ? CLBlastTransposeYes : CLBlastTransposeNo, m, n, k, w->g.alpha, A->buf,
        w->g.off_a, operand_ld(A, c), B->buf, w->g.off_b, operand_ld(B, c), w->g.beta, C->buf,
        w->g.off_c, operand_ld(C, c), count, &queue, NULL);
    if (cs != CLBlastSuccess) {
        char call[96];
        snprintf(call, sizeof call, "CLBlastSgemmBatched(%s)", what);
        return dp_clblast_fail(ctx, cs, call);
    }
    return DIPOLE_SUCCESS;
}

/* The GEMMs and the row-wise kernel of one chunk, in a fixed order. A chunk that sees no key
 * has P = dS = 0: it needs neither the scores nor the dK / dV sums, only its rows of dQ set
 * to 0 and its row sums (0) written, by the row-wise kernel. */
static dipole_status run_chunk(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a,
                               const dp_rowwise_plan *rw, bwd_work *w, const chunk *c,
                               const dp_call_buffers *cb)
{
    const size_t dim = (size_t)p->d.head_dim, vdim = (size_t)p->dv, nr = c->nr, nc = c->nc;
    const int d = p->d.head_dim, dv = p->dv;
    const float scale = p->d.scale;
    /* Tensor slices are stored [d, seq]; score chunks [nr, nc]. Score map m's q, k, dq, dk
     * are views at its heads; its S and dS live in s and dp (m = 0) or dp2 (m = 1). */
    dipole_tensor qm[2], km[2], dqm[2], dkm[2];
    for (int m = 0; m < p->nscores; m++) {
        qm[m] = dp_gemm_score_view(p, a->q, m);
        km[m] = dp_gemm_score_view(p, a->k, m);
        dqm[m] = dp_gemm_score_view(p, a->dq, m);
        dkm[m] = dp_gemm_score_view(p, a->dk, m);
    }
    const gemm_operand dot = {a->dout->buffer, a->dout, false, true, dv};
    const gemm_operand dout = {a->dout->buffer, a->dout, false, false, dv};
    const gemm_operand v = {a->v->buffer, a->v, true, false, dv};
    const gemm_operand s = {w->s, NULL, false, false, 0};
    const gemm_operand dvo = {a->dv->buffer, a->dv, true, false, dv};
    const gemm_operand second = {w->dp2, NULL, false, false, 0};

    /* S [nr, nc] = scale Q^T K, dP = dO^T V, dP2 = dO^T V2 (in stored orientation). */
    dipole_status st = DIPOLE_SUCCESS;
    for (int m = 0; m < p->nscores && c->sees && st == DIPOLE_SUCCESS; m++) {
        const gemm_operand qt = {qm[m].buffer, &qm[m], false, true, d};
        const gemm_operand k = {km[m].buffer, &km[m], true, false, d};
        st = batched(ctx, p, w, c, -1, nr, nc, dim, scale, 0.0f, &qt, &k, m ? &second : &s,
                     m ? "S_1 = scale Q_1 K_1^T" : "S = scale Q K^T");
    }
    const gemm_operand ds = {w->dp, NULL, false, false, 0};
    if (st == DIPOLE_SUCCESS && c->sees)
        st = batched(ctx, p, w, c, -1, nr, nc, vdim, 1.0f, 0.0f, &dot, &v, &ds, "dP = dO V^T");
    if (st == DIPOLE_SUCCESS && c->sees && p->reads_v2) {
        const gemm_operand v2 = {a->v2->buffer, a->v2, true, false, dv};
        st = batched(ctx, p, w, c, -1, nr, nc, vdim, 1.0f, 0.0f, &dot, &v2, &second,
                     "dP2 = dO V2^T");
    }
    if (st == DIPOLE_SUCCESS)
        st = launch_rowwise_bwd(ctx, p, rw, w, a, cb, c);
    /* Now s holds P, dp dS (of score map 0), dp2 P2 or dS_1. dV [dv, nc] += dO [dv, nr]
     * P [nr, nc], and likewise dV2 and dK (scale Q dS): one call per position in the GQA
     * group. */
    for (int g = 0; g < p->group && c->sees && st == DIPOLE_SUCCESS; g++) {
        st = batched(ctx, p, w, c, g, vdim, nc, nr, 1.0f, 1.0f, &dout, &s, &dvo, "dV += P^T dO");
        if (st == DIPOLE_SUCCESS && p->reads_v2) {
            const gemm_operand dv2 = {a->dv2->buffer, a->dv2, true, false, dv};
            st = batched(ctx, p, w, c, g, vdim, nc, nr, 1.0f, 1.0f, &dout, &second, &dv2,
                         "dV2 += P2^T dO");
        }
        for (int m = 0; m < p->nscores && st == DIPOLE_SUCCESS; m++) {
            const gemm_operand q = {qm[m].buffer, &qm[m], false, false, d};
            const gemm_operand dk = {dkm[m].buffer, &dkm[m], true, false, d};
            st = batched(ctx, p, w, c, g, dim, nc, nr, scale, 1.0f, &q, m ? &second : &ds, &dk,
                         m ? "dK_1 += scale dS_1^T Q_1" : "dK += scale dS^T Q");
        }
    }
    /* dQ [d, nr] = scale K [d, nc] dS^T: the chunk holds every key its rows see. */
    for (int m = 0; m < p->nscores && st == DIPOLE_SUCCESS; m++) {
        const gemm_operand k = {km[m].buffer, &km[m], true, false, d};
        const gemm_operand dst = {m ? w->dp2 : w->dp, NULL, false, true, 0};
        const gemm_operand dq = {dqm[m].buffer, &dqm[m], false, false, d};
        st = batched(ctx, p, w, c, -1, dim, nr, nc, scale, 0.0f, &k, &dst, &dq,
                     m ? "dQ_1 = scale dS_1 K_1" : "dQ = scale dS K");
    }
    return st;
}

dipole_status dp_gemm_backward_plan(dipole_ctx *ctx, const dp_problem *p_in, dp_bwd_plan *plan)
{
    /* S, dP (and dP2 or S_1) per chunk; CLBlast may copy a score chunk in the dV / dK / dQ
     * GEMMs, whose orientations its fast kernel does not take directly. */
    char reason[256];
    dp_gemm_chunking *ch = &plan->chunking;
    if (!dp_gemm_stage_fits(ctx, p_in, true, reason, sizeof reason))
        return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED, "backward %s", reason);
    const double staged = dp_gemm_stage_bytes(p_in, true);
    const dp_problem p32 = dp_gemm_f32_problem(p_in), *p = &p32;
    if (!dp_gemm_chunking_choose(ctx, p, dp_gemm_second_map(p) ? 3 : 2, true, staged, ch,
                                 reason, sizeof reason))
        return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED, "backward %s", reason);
    dipole_status st = dp_rowwise_plan_make(ctx, p_in, "dipole_rowwise_bwd", &plan->rowwise,
                                            reason, sizeof reason);
    if (st == DIPOLE_ERR_UNSUPPORTED)
        return dp_fail(ctx, st, "%s", reason);
    if (st == DIPOLE_SUCCESS && p->weighted)
        st = dp_bwd_dweights_plan(ctx, p, &plan->dweights);
    if (st != DIPOLE_SUCCESS)
        return st;
    dipole_plan *pub = &plan->pub;
    pub->path = DIPOLE_PATH_GEMM;
    pub->layout = DIPOLE_LAYOUT_NONE;
    pub->work_group = (int)(plan->rowwise.block_m * plan->rowwise.block_n);
    pub->workspace_bytes = ch->peak_bytes + (size_t)staged;
    pub->chunk_rows = ch->rows;
    pub->chunk_slices = ch->slices;
    pub->chunks = ch->nchunks;
    char copies[64] = "";
    if (staged > 0)
        snprintf(copies, sizeof copies, " + %.1f MiB of float copies", staged / 1048576.0);
    snprintf(pub->reason, sizeof pub->reason,
             "backward gemm: %zu chunk%s of %zu rows x %zu heads, peak %.1f%s of %.1f MiB",
             ch->nchunks, ch->nchunks == 1 ? "" : "s", ch->rows, ch->slices,
             (double)ch->peak_bytes / 1048576.0, copies, (double)ctx->workspace_limit / 1048576.0);
    return DIPOLE_SUCCESS;
}

static dipole_status run_f32(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a,
                             const dp_bwd_plan *plan, const dp_call_buffers *cb, cl_event *event)
{
    const dipole_attn_desc *d = &p->d;
    const dp_gemm_chunking *ch = &plan->chunking;
    const dp_rowwise_plan *rw = &plan->rowwise;
    const struct {
        const char *name;
        const dipole_tensor *t;
        dp_role role;
    } ts[9] = {{"q", a->q, DP_ROLE_Q},       {"k", a->k, DP_ROLE_K},
               {"v", a->v, DP_ROLE_V},       {"v2", p->reads_v2 ? a->v2 : NULL, DP_ROLE_V},
               {"dout", a->dout, DP_ROLE_OUT}, {"dq", a->dq, DP_ROLE_Q},
               {"dk", a->dk, DP_ROLE_K},     {"dv", a->dv, DP_ROLE_V},
               {"dv2", p->reads_v2 ? a->dv2 : NULL, DP_ROLE_V}};
    dipole_status st = DIPOLE_SUCCESS;
    for (int i = 0; i < 9 && st == DIPOLE_SUCCESS; i++)
        st = dp_gemm_check_int_range(ctx, p, ts[i].name, ts[i].t, ts[i].role);
    bwd_work w;
    memset(&w, 0, sizeof w);
    cl_kernel zero = NULL;
    const dp_kernel_config util = dp_util_config(p, DP_DWEIGHTS_WG);
    if (st == DIPOLE_SUCCESS)
        st = dp_get_kernel(ctx, &util, "dipole_zero_rows", &zero);
    if (st == DIPOLE_SUCCESS)
        st = dp_get_kernel(ctx, &rw->cfg, "dipole_rowwise_bwd", &w.rowwise);
    if (st != DIPOLE_SUCCESS)
        return st;

    const bool want_dw = p->weighted && (a->dpos || a->dneg);
    const size_t s_bytes = dp_gemm_score_bytes(p, ch);
    st = dp_gemm_scores_alloc(ctx, &w.g, ch->slices, s_bytes, "gemm backward", &w.s);
    if (st == DIPOLE_SUCCESS)
        st = dp_scratch(ctx, s_bytes, "gemm backward dP", &w.dp);
    if (st == DIPOLE_SUCCESS && dp_gemm_second_map(p))
        st = dp_scratch(ctx, s_bytes, p->reads_v2 ? "gemm backward dP2" : "gemm backward S_1",
                        &w.dp2);
    if (st == DIPOLE_SUCCESS && want_dw)
        st = dp_scratch(ctx,
                           sizeof(float) * (size_t)p->npoles * (size_t)p->tensor_batch *
                               (size_t)d->heads_q * (size_t)d->seq_q,
                           "rowdot", &w.rowdot);
    /* dK, dV, dV2 gather from every chunk: zero them, then accumulate with beta = 1. */
    const dipole_tensor *acc[3] = {a->dk, a->dv, p->reads_v2 ? a->dv2 : NULL};
    static const dp_role acc_roles[3] = {DP_ROLE_K, DP_ROLE_V, DP_ROLE_V};
    for (int i = 0; i < 3 && st == DIPOLE_SUCCESS; i++)
        if (acc[i])
            st = zero_tensor(ctx, zero, p, acc[i], acc_roles[i]);

    chunk c = {0};
    while (st == DIPOLE_SUCCESS && dp_gemm_chunk_next(p, ch, &c))
        st = run_chunk(ctx, p, a, rw, &w, &c, cb);
    if (st == DIPOLE_SUCCESS && want_dw)
        st = dp_bwd_dweights_launch(ctx, p, a, &plan->dweights, w.rowdot, event);
    else if (st == DIPOLE_SUCCESS && event) {
        /* CLBlast's calls each end in their own event; a marker stands for the whole call. */
        cl_int err = clEnqueueMarkerWithWaitList(ctx->queue, 0, NULL, event);
        if (err != CL_SUCCESS)
            st = dp_cl_fail(ctx, err, "clEnqueueMarkerWithWaitList");
    }
    if (st == DIPOLE_SUCCESS)
        dp_log(ctx, "backward %s: gemm, %zu chunk%s of %zu rows x %zu heads, peak %.1f MiB",
               dipole_variant_name(d->variant), ch->nchunks, ch->nchunks == 1 ? "" : "s", ch->rows,
               ch->slices, (double)ch->peak_bytes / 1048576.0);
    /* The buffers live on until the enqueued commands that use them finish. */
    work_free(&w);
    return st;
}

/* Half storage: widen q, k, v (v2), out and dout into float copies, run the float path into
 * float gradients (dK, dV and dV2 then also accumulate in float), narrow them into the
 * caller's. */
static dipole_status run_staged(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a,
                                const dp_bwd_plan *plan, const dp_call_buffers *cb,
                                cl_event *event)
{
    const dp_problem p32 = dp_gemm_f32_problem(p);
    enum { Q, K, V, V2, OUT, DOUT, DQ, DK, DV, DV2, N };
    const struct {
        const dipole_tensor *t; /* the caller's; NULL when the call has none */
        dp_role role;
        bool input;
        const char *what;
    } ts[N] = {{a->q, DP_ROLE_Q, true, "gemm float q"},
               {a->k, DP_ROLE_K, true, "gemm float k"},
               {a->v, DP_ROLE_V, true, "gemm float v"},
               {p->reads_v2 ? a->v2 : NULL, DP_ROLE_V, true, "gemm float v2"},
               {a->out, DP_ROLE_OUT, true, "gemm float out"},
               {a->dout, DP_ROLE_OUT, true, "gemm float dout"},
               {a->dq, DP_ROLE_Q, false, "gemm float dq"},
               {a->dk, DP_ROLE_K, false, "gemm float dk"},
               {a->dv, DP_ROLE_V, false, "gemm float dv"},
               {p->reads_v2 ? a->dv2 : NULL, DP_ROLE_V, false, "gemm float dv2"}};
    cl_mem bufs[N] = {NULL};
    dipole_tensor t[N];
    const dipole_tensor *use[N] = {NULL};
    dipole_status st = DIPOLE_SUCCESS;
    for (int i = 0; i < N && st == DIPOLE_SUCCESS; i++) {
        if (!ts[i].t)
            continue;
        st = ts[i].input ? dp_gemm_stage_widen(ctx, p, ts[i].t, ts[i].role, NULL, ts[i].what,
                                               &bufs[i], &t[i])
                         : dp_gemm_stage_alloc(ctx, p, ts[i].role, ts[i].what, &bufs[i], &t[i]);
        use[i] = &t[i];
    }
    if (st == DIPOLE_SUCCESS) {
        dp_bwd_args a32 = *a;
        a32.q = use[Q];
        a32.k = use[K];
        a32.v = use[V];
        a32.v2 = use[V2];
        a32.out = use[OUT];
        a32.dout = use[DOUT];
        a32.dq = use[DQ];
        a32.dk = use[DK];
        a32.dv = use[DV];
        a32.dv2 = use[DV2];
        st = run_f32(ctx, &p32, &a32, plan, cb, NULL);
    }
    int last = -1;
    for (int i = DQ; i < N; i++)
        if (ts[i].t)
            last = i;
    for (int i = DQ; i < N && st == DIPOLE_SUCCESS; i++)
        if (ts[i].t)
            st = dp_gemm_stage_narrow(ctx, p, &t[i], ts[i].t, ts[i].role,
                                      i == last ? event : NULL);
    /* The buffers live on until the enqueued commands that use them finish. */
    for (int i = 0; i < N; i++)
        if (bufs[i])
            clReleaseMemObject(bufs[i]);
    return st;
}

dipole_status dp_gemm_backward(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a,
                               const dp_bwd_plan *plan, const dp_call_buffers *cb,
                               cl_event *event)
{
    if (p->d.dtype == DIPOLE_F32)
        return run_f32(ctx, p, a, plan, cb, event);
    return run_staged(ctx, p, a, plan, cb, event);
}
