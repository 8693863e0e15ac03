/* The public forward entry points: validation, the ordered path list, and the host twin. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_buffers.h"
#include "launch.h"

dipole_path dp_requested_path(const dipole_ctx *ctx, const dp_problem *p)
{
    return ctx->settings.path != DIPOLE_PATH_AUTO ? ctx->settings.path : p->d.path;
}

/* The ordered list: tiled, then GEMM. Each rejects with a reason; the last reason wins. */
static dipole_status choose_path(dipole_ctx *ctx, const dp_problem *p, dp_fwd_plan *plan)
{
    memset(plan, 0, sizeof *plan);
    const dipole_path want = dp_requested_path(ctx, p);
    dipole_status st;
    if (want == DIPOLE_PATH_TILED)
        return dp_tiled_plan(ctx, p, plan);
    if (want == DIPOLE_PATH_GEMM)
        return dp_gemm_plan(ctx, p, plan);
    st = dp_tiled_plan(ctx, p, plan);
    if (st != DIPOLE_ERR_UNSUPPORTED)
        return st;
    char tiled_reason[sizeof plan->pub.reason];
    snprintf(tiled_reason, sizeof tiled_reason, "%s", plan->pub.reason);
    memset(plan, 0, sizeof *plan);
    st = dp_gemm_plan(ctx, p, plan);
    if (st == DIPOLE_SUCCESS) {
        char chosen[sizeof plan->pub.reason];
        snprintf(chosen, sizeof chosen, "%s", plan->pub.reason);
        snprintf(plan->pub.reason, sizeof plan->pub.reason, "%.120s -> %.120s", tiled_reason,
                 chosen);
    }
    return st;
}

dipole_status dp_call_begin(dipole_ctx *ctx, const char *name, const dipole_attn_desc *desc,
                            cl_event *event, dp_problem *p)
{
    if (!ctx)
        return dp_fail(NULL, DIPOLE_ERR_INVALID_ARG, "%s: ctx is NULL", name);
    if (event)
        *event = NULL;
    pthread_mutex_lock(&ctx->lock);
    dp_clear_error(ctx);
    return dp_problem_init(ctx, desc, p);
}

dipole_status dp_plan_query(dipole_ctx *ctx, const dipole_attn_desc *desc, dipole_plan *plan,
                            const char *name, dp_plan_fn fn)
{
    if (ctx && !plan)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "%s: plan is NULL", name);
    dp_problem p;
    dipole_status st = dp_call_begin(ctx, name, desc, NULL, &p);
    if (!ctx)
        return st;
    memset(plan, 0, sizeof *plan);
    if (st == DIPOLE_SUCCESS)
        st = fn(ctx, &p, plan);
    pthread_mutex_unlock(&ctx->lock);
    return st;
}

static dipole_status forward_plan(dipole_ctx *ctx, const dp_problem *p, dipole_plan *plan)
{
    dp_fwd_plan fp;
    memset(&fp, 0, sizeof fp);
    dipole_status st = choose_path(ctx, p, &fp);
    if (st == DIPOLE_ERR_UNSUPPORTED)
        dp_fail(ctx, st, "%s", fp.pub.reason);
    *plan = fp.pub;
    return st;
}

dipole_status dipole_attention_plan(dipole_ctx *ctx, const dipole_attn_desc *desc, dipole_plan *plan)
{
    return dp_plan_query(ctx, desc, plan, "dipole_attention_plan", forward_plan);
}

/* A paged call's page pools were checked page by page (paged.c): here q, out, lse. */
static dipole_status check_args(dipole_ctx *ctx, const dp_problem *p, const dp_args *a)
{
    const dipole_attn_desc *d = &p->d;
    dipole_status st;
    const dipole_dtype dt = d->dtype;
    const int tb = p->tensor_batch; /* packed: the tensors are one batch */
    const dipole_tensor *in[4] = {a->q, a->k, a->v, p->reads_v2 ? a->v2 : NULL};
    const char *names[4] = {"q", "k", "v", "v2"};
    const dp_role roles[4] = {DP_ROLE_Q, DP_ROLE_K, DP_ROLE_V, DP_ROLE_V};
    const dp_shape so = dp_shape_of(p, DP_ROLE_OUT);
    /* q, k, v, out (a paged call's k and v are its pools), then v2 where the variant reads it */
    for (int i = 0; i < (p->paged ? 1 : 3); i++) {
        const dp_shape s = dp_shape_of(p, roles[i]);
        if ((st = dp_check_tensor(ctx, names[i], in[i], dt, tb, s.seq, s.heads, s.dim)))
            return st;
    }
    if ((st = dp_check_tensor(ctx, "out", a->out, dt, tb, so.seq, so.heads, so.dim)))
        return st;
    if (p->reads_v2 && !p->paged) {
        if (!a->v2)
            return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "v2 is NULL but variant %s reads it",
                           dipole_variant_name(d->variant));
        const dp_shape s = dp_shape_of(p, DP_ROLE_V);
        if ((st = dp_check_tensor(ctx, "v2", a->v2, dt, tb, s.seq, s.heads, s.dim)))
            return st;
    }
    if (dp_tensor_self_overlaps(a->out, tb, so.seq, so.heads, so.dim))
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "out strides (%zu, %zu, %zu) make distinct output rows overlap "
                       "(seq_q %d, heads_q %d, head_dim_v %d)",
                       a->out->stride_batch, a->out->stride_seq, a->out->stride_head, so.seq,
                       so.heads, so.dim);
    if (a->lse && (st = dp_check_buffer(ctx, "lse", a->lse,
                                        (size_t)p->npoles * tb * d->heads_q * d->seq_q)))
        return st;
    size_t olo, ohi;
    dp_span_of(a->out, tb, so.seq, so.heads, so.dim, &olo, &ohi);
    for (int i = 0; i < (p->paged ? 1 : 4); i++) {
        if (!in[i] || in[i]->buffer != a->out->buffer)
            continue;
        size_t lo, hi;
        const dp_shape s = dp_shape_of(p, roles[i]);
        dp_span_of(in[i], tb, s.seq, s.heads, s.dim, &lo, &hi);
        if (lo < ohi && olo < hi)
            return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "out overlaps %s in the same buffer",
                           names[i]);
    }
    if (a->lse && (a->lse == a->out->buffer || a->lse == a->q->buffer || a->lse == a->k->buffer ||
                   a->lse == a->v->buffer || (p->reads_v2 && a->lse == a->v2->buffer)))
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "lse shares a buffer with a tensor");
    if (p->bias && (st = dp_check_bias(ctx, p)))
        return st;
    return DIPOLE_SUCCESS;
}

/* With the lock held: per-call small uploads, path choice, launch. */
dipole_status dp_attention_locked(dipole_ctx *ctx, const dp_problem *p, dp_args *a,
                                  cl_event *event)
{
    dipole_status st = check_args(ctx, p, a);
    if (st != DIPOLE_SUCCESS)
        return st;
    dp_fwd_plan plan;
    st = choose_path(ctx, p, &plan);
    if (st == DIPOLE_ERR_UNSUPPORTED)
        return dp_fail(ctx, st, "%s", plan.pub.reason);
    if (st != DIPOLE_SUCCESS)
        return st;
    dp_call_buffers cb;
    st = dp_call_buffers_upload(ctx, p, &cb);
    a->key_lengths = cb.key_lengths;
    a->pole_weights = cb.pole_weights;
    a->alibi_slopes = cb.alibi_slopes;
    if (st == DIPOLE_SUCCESS) {
        dp_log(ctx, "attention %s: %s", dipole_variant_name(p->d.variant), plan.pub.reason);
        st = plan.pub.path == DIPOLE_PATH_TILED ? dp_tiled_run(ctx, p, &plan, a, event)
                                                : dp_gemm_run(ctx, p, &plan, a, event);
    }
    dp_call_buffers_release(&cb);
    return st;
}

dipole_status dipole_attention(dipole_ctx *ctx, const dipole_attn_desc *desc, const dipole_tensor *q,
                               const dipole_tensor *k, const dipole_tensor *v,
                               const dipole_tensor *v2, const dipole_tensor *out, cl_mem lse,
                               cl_event *event)
{
    dp_problem p;
    dipole_status st = dp_call_begin(ctx, "dipole_attention", desc, event, &p);
    if (!ctx)
        return st;
    if (st == DIPOLE_SUCCESS) {
        dp_args a = {.q = q, .k = k, .v = v, .v2 = v2, .out = out, .lse = lse};
        st = dp_attention_locked(ctx, &p, &a, event);
    }
    pthread_mutex_unlock(&ctx->lock);
    return st;
}

/* Host twin: the arrays in buffers (the caller's memory in place where the device shares it,
 * host_buffers.c), run, then the outputs back in the caller's arrays. */
dipole_status dipole_attention_host_lse(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                        const void *q, const void *k, const void *v,
                                        const void *v2, void *out, float *lse)
{
    dp_problem p;
    dipole_status st = dp_call_begin(ctx, "dipole_attention_host", desc, NULL, &p);
    if (!ctx)
        return st;
    enum { Q, K, V, V2, OUT, LSE, NBUF };
    dp_host_buffer bufs[NBUF] = {{0}}, bias_buf = {0};
    dipole_bias bias;
    if (st != DIPOLE_SUCCESS)
        goto done;
    if (!q || !k || !v || !out || (p.reads_v2 && !v2)) {
        st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "dipole_attention_host: %s is NULL",
                     !q ? "q" : !k ? "k" : !v ? "v" : !out ? "out" : "v2 (the variant reads it)");
        goto done;
    }
    const dipole_attn_desc *d = &p.d;
    const size_t tb = (size_t)p.tensor_batch;
    const dp_role roles[LSE] = {DP_ROLE_Q, DP_ROLE_K, DP_ROLE_V, DP_ROLE_V, DP_ROLE_OUT};
    dp_shape sh[LSE];
    size_t n[LSE];
    for (int i = 0; i < LSE; i++) {
        sh[i] = dp_shape_of(&p, roles[i]);
        n[i] = tb * sh[i].seq * sh[i].heads * sh[i].dim;
    }
    const size_t nl = (size_t)p.npoles * tb * d->heads_q * d->seq_q;
    const size_t es = dipole_dtype_size(d->dtype);
    const dp_host_array spec[NBUF] = {{q, n[Q] * es, es, true},   {k, n[K] * es, es, true},
                                      {v, n[V] * es, es, true},   {v2, n[V2] * es, es, p.reads_v2},
                                      {out, n[OUT] * es, es, true},
                                      {lse, nl * sizeof(float), 0, lse != NULL}};
    /* Refuse before clCreateBuffer: a driver may accept an oversized request and then read
     * host memory it has no business reading, or fail deep inside a later call. */
    for (int i = 0; i < NBUF && st == DIPOLE_SUCCESS; i++)
        if (spec[i].wanted && (cl_ulong)spec[i].bytes > ctx->props.max_alloc)
            st = dp_fail(ctx, (dipole_status)CL_INVALID_BUFFER_SIZE,
                         "dipole_attention_host: %s needs %zu bytes, more than the device's "
                         "CL_DEVICE_MAX_MEM_ALLOC_SIZE %llu",
                         (const char *[]){"q", "k", "v", "v2", "out", "lse"}[i],
                         spec[i].bytes, (unsigned long long)ctx->props.max_alloc);
    if (st == DIPOLE_SUCCESS)
        st = dp_host_stage(ctx, spec, NBUF, OUT, bufs);
    if (st == DIPOLE_SUCCESS)
        st = dp_host_bias(ctx, &p, &bias, &bias_buf);
    if (st != DIPOLE_SUCCESS)
        goto done;
    dipole_tensor t[LSE];
    for (int i = 0; i < LSE; i++)
        t[i] = dp_host_tensor(&bufs[i], sh[i].seq, sh[i].heads, sh[i].dim);
    dp_args a = {.q = &t[Q], .k = &t[K], .v = &t[V], .v2 = p.reads_v2 ? &t[V2] : NULL,
                 .out = &t[OUT], .lse = bufs[LSE].buffer};
    st = dp_attention_locked(ctx, &p, &a, NULL);
    if (st == DIPOLE_SUCCESS)
        st = dp_host_output_finish(ctx, &bufs[OUT], "out");
    if (st == DIPOLE_SUCCESS && lse)
        st = dp_host_output_finish(ctx, &bufs[LSE], "lse");
done:
    if (st != DIPOLE_SUCCESS && ctx->queue)
        clFinish(ctx->queue); /* nothing of a failed call may still be running on our buffers */
    for (int i = 0; i < NBUF; i++)
        dp_host_buffer_release(&bufs[i]);
    dp_host_buffer_release(&bias_buf);
    pthread_mutex_unlock(&ctx->lock);
    return st;
}

dipole_status dipole_attention_host(dipole_ctx *ctx, const dipole_attn_desc *desc, const void *q,
                                    const void *k, const void *v, const void *v2, void *out)
{
    return dipole_attention_host_lse(ctx, desc, q, k, v, v2, out, NULL);
}
