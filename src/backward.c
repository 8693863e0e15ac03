/* The backward pass: validation, the path choice (tiled: backward_tiled.c, then GEMM:
 * backward_gemm.c), the per-call uploads, and the host twin. The CPU reference backward is in
 * reference_backward.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "host_buffers.h"

/* Whether two tensors in one buffer may share an element. Beyond disjoint spans, this accepts
 * the packed layouts (QKV interleaved per sequence position): same seq stride, whole batches of
 * positions, and disjoint column ranges within a position that neither wraps. */
static bool may_overlap(const dipole_tensor *a, size_t alo, size_t ahi, int aheads,
                        const dipole_tensor *b, size_t blo, size_t bhi, int bheads, int d)
{
    if (a->buffer != b->buffer || ahi <= blo || bhi <= alo)
        return false;
    const size_t ss = a->stride_seq;
    if (ss == 0 || b->stride_seq != ss || a->stride_batch % ss || b->stride_batch % ss)
        return true;
    /* Columns within a position, measured from the lower offset so that it sits at 0. */
    const size_t base = a->offset < b->offset ? a->offset : b->offset;
    const size_t ac = (a->offset - base) % ss, bc = (b->offset - base) % ss;
    const size_t aw = (size_t)(aheads - 1) * a->stride_head + (size_t)d;
    const size_t bw = (size_t)(bheads - 1) * b->stride_head + (size_t)d;
    if (ac + aw > ss || bc + bw > ss)
        return true;
    return ac < bc + bw && bc < ac + aw;
}

static dipole_status check_args(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a)
{
    const dipole_attn_desc *d = &p->d;
    const int tb = p->tensor_batch; /* packed: the tensors are one batch */
    /* Every tensor the call touches: the inputs, then the outputs (which it writes). */
    enum { N_T = 10, FIRST_OUT = 6 };
    const struct {
        const char *name;
        const dipole_tensor *t;
        dp_role role;
        bool wanted;
    } t[N_T] = {
        {"q", a->q, DP_ROLE_Q, true},        {"k", a->k, DP_ROLE_K, true},
        {"v", a->v, DP_ROLE_V, true},        {"v2", a->v2, DP_ROLE_V, p->reads_v2},
        {"out", a->out, DP_ROLE_OUT, true},  {"dout", a->dout, DP_ROLE_OUT, true},
        {"dq", a->dq, DP_ROLE_Q, true},      {"dk", a->dk, DP_ROLE_K, true},
        {"dv", a->dv, DP_ROLE_V, true},      {"dv2", a->dv2, DP_ROLE_V, p->reads_v2},
    };
    dipole_status st;
    size_t lo[N_T], hi[N_T];
    dp_shape sh[N_T];
    for (int i = 0; i < N_T; i++) {
        if (!t[i].wanted)
            continue;
        if (!t[i].t && (i == 3 || i == 9))
            return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "%s is NULL but variant %s reads v2",
                           t[i].name, dipole_variant_name(d->variant));
        sh[i] = dp_shape_of(p, t[i].role);
        if ((st = dp_check_tensor(ctx, t[i].name, t[i].t, d->dtype, tb, sh[i].seq, sh[i].heads,
                                  sh[i].dim)))
            return st;
        dp_span_of(t[i].t, tb, sh[i].seq, sh[i].heads, sh[i].dim, &lo[i], &hi[i]);
        if (i >= FIRST_OUT &&
            dp_tensor_self_overlaps(t[i].t, tb, sh[i].seq, sh[i].heads, sh[i].dim))
            return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                           "%s strides make its rows overlap (work-items would race on them)",
                           t[i].name);
    }
    /* Two tensors of one buffer: the packed-layout test where their head dims agree, disjoint
     * spans otherwise. */
    for (int o = FIRST_OUT; o < N_T; o++)
        for (int i = 0; i < N_T && t[o].wanted; i++)
            if (i != o && t[i].wanted &&
                (sh[o].dim == sh[i].dim
                     ? may_overlap(t[o].t, lo[o], hi[o], sh[o].heads, t[i].t, lo[i], hi[i],
                                   sh[i].heads, sh[o].dim)
                     : t[o].t->buffer == t[i].t->buffer && lo[o] < hi[i] && lo[i] < hi[o]))
                return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "%s overlaps %s in the same buffer",
                               t[o].name, t[i].name);
    if ((st = dp_check_buffer(ctx, "lse", a->lse,
                              (size_t)p->npoles * tb * d->heads_q * d->seq_q)))
        return st;
    const bool weights = p->weighted;
    if (weights && a->dpos && (st = dp_check_buffer(ctx, "dpos_weight", a->dpos, (size_t)d->heads_q)))
        return st;
    if (weights && a->dneg && (st = dp_check_buffer(ctx, "dneg_weight", a->dneg, (size_t)d->heads_q)))
        return st;
    if (weights && a->dpos && a->dpos == a->dneg)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "dpos_weight and dneg_weight are one buffer");
    /* Buffers passed whole may not share a buffer with anything the call writes or reads. */
    const cl_mem whole[3] = {a->lse, weights ? a->dpos : NULL, weights ? a->dneg : NULL};
    const char *whole_names[3] = {"lse", "dpos_weight", "dneg_weight"};
    for (int w = 0; w < 3; w++)
        for (int i = 0; whole[w] && i < N_T; i++)
            if (t[i].wanted && t[i].t->buffer == whole[w])
                return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "%s shares a buffer with %s",
                               whole_names[w], t[i].name);
    if (weights && (a->lse == a->dpos || a->lse == a->dneg))
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "lse shares a buffer with a weight gradient");
    if (p->bias && (st = dp_check_bias(ctx, p)))
        return st;
    return DIPOLE_SUCCESS;
}

/* The ordered list: the tiled kernels where they fit (unless GEMM is asked for), then the GEMM
 * path. A forced tiled path that does not fit fails with the tiled plan's reason. */
static dipole_status bwd_choose(dipole_ctx *ctx, const dp_problem *p, dp_bwd_plan *plan)
{
    memset(plan, 0, sizeof *plan);
    const dipole_path want = dp_requested_path(ctx, p);
    if (want != DIPOLE_PATH_GEMM &&
        !(want == DIPOLE_PATH_AUTO && dp_max_head_dim(p) > DP_BWD_MAX_HEAD_DIM)) {
        const dipole_status st = dp_bwd_tiled_plan(ctx, p, plan);
        if (st != DIPOLE_ERR_UNSUPPORTED || want != DIPOLE_PATH_AUTO)
            return st;
        dp_log(ctx, "%s -> gemm", ctx->last_error ? ctx->last_error : "backward: tiled unsupported");
        dp_clear_error(ctx);
        memset(plan, 0, sizeof *plan);
    }
    return dp_gemm_backward_plan(ctx, p, plan);
}

static dipole_status backward_plan(dipole_ctx *ctx, const dp_problem *p, dipole_plan *plan)
{
    dp_bwd_plan bp;
    memset(&bp, 0, sizeof bp);
    dipole_status st = bwd_choose(ctx, p, &bp);
    if (st == DIPOLE_ERR_UNSUPPORTED)
        snprintf(bp.pub.reason, sizeof bp.pub.reason, "%s",
                 ctx->last_error ? ctx->last_error : "backward: unsupported");
    *plan = bp.pub;
    return st;
}

dipole_status dipole_attention_backward_plan(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                             dipole_plan *plan)
{
    return dp_plan_query(ctx, desc, plan, "dipole_attention_backward_plan", backward_plan);
}

/* With the lock held: validate, choose a path, upload the small per-call arrays, launch. */
static dipole_status backward_locked(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a,
                                     cl_event *event)
{
    dipole_status st = check_args(ctx, p, a);
    dp_bwd_plan plan;
    if (st == DIPOLE_SUCCESS)
        st = bwd_choose(ctx, p, &plan);
    if (st != DIPOLE_SUCCESS)
        return st;
    dp_call_buffers cb;
    st = dp_call_buffers_upload(ctx, p, &cb);
    if (st == DIPOLE_SUCCESS)
        st = plan.pub.path == DIPOLE_PATH_GEMM ? dp_gemm_backward(ctx, p, a, &plan, &cb, event)
                                               : dp_bwd_tiled_run(ctx, p, a, &plan, &cb, event);
    dp_call_buffers_release(&cb);
    return st;
}


dipole_status dipole_attention_backward(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                        const dipole_tensor *q, const dipole_tensor *k,
                                        const dipole_tensor *v, const dipole_tensor *v2,
                                        const dipole_tensor *out, const dipole_tensor *dout, cl_mem lse,
                                        const dipole_tensor *dq, const dipole_tensor *dk,
                                        const dipole_tensor *dv, const dipole_tensor *dv2,
                                        cl_mem dpos_weight, cl_mem dneg_weight, cl_event *event)
{
    dp_problem p;
    dipole_status st = dp_call_begin(ctx, "dipole_attention_backward", desc, event, &p);
    if (!ctx)
        return st;
    if (st == DIPOLE_SUCCESS) {
        const dp_bwd_args a = {q, k, v, v2, out, dout, dq, dk, dv, dv2, lse, dpos_weight, dneg_weight};
        st = backward_locked(ctx, &p, &a, event);
    }
    pthread_mutex_unlock(&ctx->lock);
    return st;
}

/* Host twin. The ctx lock is not recursive, so the forward (a public call that takes it) runs
 * between two locked sections: staging, then backward and read-back. The caller's arrays are
 * handed to OpenCL in place where the device shares host memory (host_buffers.c). */
dipole_status dipole_attention_backward_host(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                             const void *q, const void *k, const void *v,
                                             const void *v2, const void *dout, void *dq,
                                             void *dk, void *dv, void *dv2, float *dpos_weight,
                                             float *dneg_weight)
{
    enum { Q, K, V, V2, DOUT, OUT, LSE, DQ, DK, DV, DV2, DPOS, DNEG, NBUF };
    dp_host_buffer bufs[NBUF] = {{0}}, bias_buf = {0};
    dipole_bias bias;
    dp_problem p;
    dipole_status st = dp_call_begin(ctx, "dipole_attention_backward_host", desc, NULL, &p);
    if (!ctx)
        return st;
    if (st != DIPOLE_SUCCESS)
        goto unlock;
    const char *missing = dp_bwd_host_missing(&p, q, k, v, v2, dout, dq, dk, dv, dv2);
    if (missing) {
        st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "dipole_attention_backward_host: %s is NULL",
                     missing);
        goto unlock;
    }
    if (dp_requested_path(ctx, &p) == DIPOLE_PATH_TILED && dp_max_head_dim(&p) > DP_BWD_MAX_HEAD_DIM) {
        /* fail before running a forward for nothing */
        dp_bwd_plan plan;
        st = dp_bwd_tiled_plan(ctx, &p, &plan);
        goto unlock;
    }
    const dipole_attn_desc *d = &p.d;
    const size_t tb = (size_t)p.tensor_batch;
    const dp_shape sq = dp_shape_of(&p, DP_ROLE_Q), sk = dp_shape_of(&p, DP_ROLE_K),
                   sv = dp_shape_of(&p, DP_ROLE_V), so = dp_shape_of(&p, DP_ROLE_OUT);
    const size_t nq = tb * sq.seq * sq.heads * sq.dim, nk = tb * sk.seq * sk.heads * sk.dim;
    const size_t nv = tb * sv.seq * sv.heads * sv.dim, no = tb * so.seq * so.heads * so.dim;
    const size_t nl = (size_t)p.npoles * tb * d->heads_q * d->seq_q;
    const bool weighted = p.weighted;
    const size_t es = dipole_dtype_size(d->dtype), fs = sizeof(float);
    /* the forward's out and lse are the call's own buffers (host NULL) */
    const dp_host_array spec[NBUF] = {
        [Q] = {q, nq * es, es, true},
        [K] = {k, nk * es, es, true},
        [V] = {v, nv * es, es, true},
        [V2] = {v2, nv * es, es, p.reads_v2},
        [DOUT] = {dout, no * es, es, true},
        [OUT] = {NULL, no * es, es, true},
        [LSE] = {NULL, nl * fs, 0, true},
        [DQ] = {dq, nq * es, es, true},
        [DK] = {dk, nk * es, es, true},
        [DV] = {dv, nv * es, es, true},
        [DV2] = {dv2, nv * es, es, p.reads_v2},
        [DPOS] = {dpos_weight, (size_t)d->heads_q * fs, 0, weighted && dpos_weight},
        [DNEG] = {dneg_weight, (size_t)d->heads_q * fs, 0, weighted && dneg_weight},
    };
    if (st == DIPOLE_SUCCESS)
        st = dp_host_stage(ctx, spec, NBUF, DOUT + 1, bufs);
    /* The forward runs on a descriptor whose bias is the staged copy. */
    dipole_attn_desc fdesc = *desc;
    if (st == DIPOLE_SUCCESS)
        st = dp_host_bias(ctx, &p, &bias, &bias_buf);
    fdesc.bias = p.d.bias;
    pthread_mutex_unlock(&ctx->lock);
    if (st != DIPOLE_SUCCESS)
        goto release;

    /* Entries for lse and the weight gradients are filled too and never read as tensors. */
    static const dp_role roles[NBUF] = {[Q] = DP_ROLE_Q,     [K] = DP_ROLE_K,     [V] = DP_ROLE_V,
                                        [V2] = DP_ROLE_V,    [DOUT] = DP_ROLE_OUT,
                                        [OUT] = DP_ROLE_OUT, [DQ] = DP_ROLE_Q,    [DK] = DP_ROLE_K,
                                        [DV] = DP_ROLE_V,    [DV2] = DP_ROLE_V};
    dipole_tensor t[NBUF];
    for (int i = 0; i < NBUF; i++) {
        const dp_shape s = dp_shape_of(&p, roles[i]);
        t[i] = dp_host_tensor(&bufs[i], s.seq, s.heads, s.dim);
    }
    const dipole_tensor *pv2 = p.reads_v2 ? &t[V2] : NULL;
    st = dipole_attention(ctx, &fdesc, &t[Q], &t[K], &t[V], pv2, &t[OUT], bufs[LSE].buffer, NULL);

    pthread_mutex_lock(&ctx->lock);
    if (st == DIPOLE_SUCCESS) {
        const dp_bwd_args a = {&t[Q],  &t[K],  &t[V],  pv2,
                               &t[OUT], &t[DOUT], &t[DQ], &t[DK], &t[DV],
                               p.reads_v2 ? &t[DV2] : NULL, bufs[LSE].buffer, bufs[DPOS].buffer,
                               bufs[DNEG].buffer};
        st = backward_locked(ctx, &p, &a, NULL);
    }
    static const char *const names[NBUF] = {[DQ] = "dq", [DK] = "dk", [DV] = "dv", [DV2] = "dv2",
                                            [DPOS] = "dpos_weight", [DNEG] = "dneg_weight"};
    for (int i = DQ; i < NBUF && st == DIPOLE_SUCCESS; i++)
        if (spec[i].wanted)
            st = dp_host_output_finish(ctx, &bufs[i], names[i]);
    if (st != DIPOLE_SUCCESS)
        clFinish(ctx->queue); /* nothing of a failed call may still be running on our buffers */
unlock:
    pthread_mutex_unlock(&ctx->lock);
release:
    for (int i = 0; i < NBUF; i++)
        dp_host_buffer_release(&bufs[i]);
    dp_host_buffer_release(&bias_buf);
    return st;
}
