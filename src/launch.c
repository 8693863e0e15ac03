/* The launch layer: every kernel argument, enqueue, kernel-fit query and per-call device
 * buffer of the runtime goes through here (see launch.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launch.h"

cl_long4 dp_tensor_layout(const dipole_tensor *t)
{
    cl_long4 l;
    l.s[0] = (cl_long)t->offset;
    l.s[1] = (cl_long)t->stride_batch;
    l.s[2] = (cl_long)t->stride_seq;
    l.s[3] = (cl_long)t->stride_head;
    return l;
}

void dp_span_of(const dipole_tensor *t, int batch, int seq, int heads, int d, size_t *lo,
                size_t *hi)
{
    *lo = t->offset;
    *hi = t->offset + (size_t)(batch - 1) * t->stride_batch + (size_t)(seq - 1) * t->stride_seq +
          (size_t)(heads - 1) * t->stride_head + (size_t)d;
}

/* ---------------------------------------------------------------- arguments */

dp_launch_args dp_launch_args_begin(cl_kernel kernel, const char *name)
{
    dp_launch_args l = {kernel, name, 0, CL_SUCCESS, 0};
    return l;
}

static void arg_raw(dp_launch_args *l, size_t size, const void *value)
{
    if (l->err != CL_SUCCESS)
        return;
    l->err = clSetKernelArg(l->kernel, l->n, size, value);
    if (l->err != CL_SUCCESS)
        l->failed = l->n;
    l->n++;
}

void dp_arg_buffer(dp_launch_args *l, cl_mem m)
{
    arg_raw(l, sizeof m, &m);
}

void dp_arg_tensor(dp_launch_args *l, const dipole_tensor *t)
{
    const cl_long4 lay = dp_tensor_layout(t);
    dp_arg_buffer(l, t->buffer);
    arg_raw(l, sizeof lay, &lay);
}

void dp_arg_int(dp_launch_args *l, int v)
{
    const cl_int x = v;
    arg_raw(l, sizeof x, &x);
}

void dp_arg_float(dp_launch_args *l, float v)
{
    const cl_float x = v;
    arg_raw(l, sizeof x, &x);
}

cl_long4 dp_bias_layout(const dipole_bias *bias)
{
    cl_long4 r = {{0, 0, 0, 0}};
    if (bias) {
        r.s[0] = (cl_long)bias->offset;
        r.s[1] = (cl_long)bias->stride_batch;
        r.s[2] = (cl_long)bias->stride_head;
        r.s[3] = (cl_long)bias->stride_row;
    }
    return r;
}

void dp_arg_scores(dp_launch_args *l, const dp_problem *p, cl_mem alibi_slopes)
{
    dp_arg_int(l, p->d.heads_q);
    dp_arg_int(l, p->d.heads_kv);
    dp_arg_int(l, p->d.seq_q);
    dp_arg_int(l, p->d.seq_k);
    dp_arg_float(l, p->d.scale);
    dp_arg_int(l, p->d.window_left);
    dp_arg_int(l, p->d.window_right);
    dp_arg_score_mods(l, p, alibi_slopes);
}

void dp_arg_score_mods(dp_launch_args *l, const dp_problem *p, cl_mem alibi_slopes)
{
    dp_arg_float(l, p->softcap ? p->d.softcap : 0.0f);
    dp_arg_buffer(l, alibi_slopes);
    dp_arg_buffer(l, p->bias ? p->d.bias->buffer : NULL);
    const cl_long4 lb = dp_bias_layout(p->bias ? p->d.bias : NULL);
    arg_raw(l, sizeof lb, &lb);
}

void dp_arg_local(dp_launch_args *l, size_t bytes)
{
    arg_raw(l, bytes, NULL);
}

dipole_status dp_launch_args_status(dipole_ctx *ctx, const dp_launch_args *l)
{
    if (l->err == CL_SUCCESS)
        return DIPOLE_SUCCESS;
    char call[128];
    snprintf(call, sizeof call, "clSetKernelArg(%s, arg %u)", l->name, l->failed);
    return dp_cl_fail(ctx, l->err, call);
}

dipole_status dp_launch(dipole_ctx *ctx, const dp_launch_args *l, cl_uint dims,
                        const size_t *global, const size_t *local, cl_event *event)
{
    dipole_status st = dp_launch_args_status(ctx, l);
    if (st != DIPOLE_SUCCESS)
        return st;
    const cl_int err =
        clEnqueueNDRangeKernel(ctx->queue, l->kernel, dims, NULL, global, local, 0, NULL, event);
    if (err == CL_SUCCESS)
        return DIPOLE_SUCCESS;
    char call[128];
    snprintf(call, sizeof call, "clEnqueueNDRangeKernel(%s)", l->name);
    return dp_cl_fail(ctx, err, call);
}

/* ---------------------------------------------------------------- kernel fit */

static dipole_status kernel_info(dipole_ctx *ctx, cl_kernel kernel, const char *name,
                                 cl_kernel_work_group_info what, const char *what_name,
                                 size_t size, void *value)
{
    const cl_int err = clGetKernelWorkGroupInfo(kernel, ctx->device, what, size, value, NULL);
    if (err == CL_SUCCESS)
        return DIPOLE_SUCCESS;
    char call[128];
    snprintf(call, sizeof call, "clGetKernelWorkGroupInfo(%s, %s)", name, what_name);
    return dp_cl_fail(ctx, err, call);
}

dipole_status dp_kernel_fit_query(dipole_ctx *ctx, const dp_kernel_config *cfg,
                                  const char *const *names, int n, dp_kernel_fit *fit)
{
    fit->work_group = SIZE_MAX;
    fit->private_mem = 0;
    fit->local_mem = 0;
    for (int i = 0; i < n; i++) {
        cl_kernel kernel;
        size_t wg = 0;
        cl_ulong priv = 0, local = 0;
        dipole_status st = dp_get_kernel(ctx, cfg, names[i], &kernel);
        if (st == DIPOLE_SUCCESS)
            st = kernel_info(ctx, kernel, names[i], CL_KERNEL_WORK_GROUP_SIZE,
                             "CL_KERNEL_WORK_GROUP_SIZE", sizeof wg, &wg);
        if (st == DIPOLE_SUCCESS)
            st = kernel_info(ctx, kernel, names[i], CL_KERNEL_PRIVATE_MEM_SIZE,
                             "CL_KERNEL_PRIVATE_MEM_SIZE", sizeof priv, &priv);
        if (st == DIPOLE_SUCCESS)
            st = kernel_info(ctx, kernel, names[i], CL_KERNEL_LOCAL_MEM_SIZE,
                             "CL_KERNEL_LOCAL_MEM_SIZE", sizeof local, &local);
        if (st != DIPOLE_SUCCESS)
            return st;
        fit->work_group = wg < fit->work_group ? wg : fit->work_group;
        fit->private_mem = priv > fit->private_mem ? priv : fit->private_mem;
        fit->local_mem = local > fit->local_mem ? local : fit->local_mem;
    }
    return DIPOLE_SUCCESS;
}

bool dp_kernel_fit_holds(const dipole_ctx *ctx, const dp_kernel_fit *fit,
                         const dp_kernel_config *cfg, char *why, size_t cap)
{
    if (fit->work_group < (size_t)cfg->work_group) {
        snprintf(why, cap, "the compiled kernels allow %zu work-items, their grid needs %d",
                 fit->work_group, cfg->work_group);
        return false;
    }
    if (fit->local_mem > ctx->props.local_mem) {
        snprintf(why, cap,
                 "the compiled kernels need %llu KiB of local memory, the device has %llu KiB",
                 (unsigned long long)(fit->local_mem >> 10),
                 (unsigned long long)(ctx->props.local_mem >> 10));
        return false;
    }
    return true;
}

dipole_status dp_fit_search_run(dipole_ctx *ctx, const dp_fit_search *s, int *size,
                                dp_kernel_config *cfg, dp_kernel_fit *fit)
{
    int n = *size;
    for (;;) {
        *cfg = s->config(s->user, n);
        dipole_status st = dp_kernel_fit_query(ctx, cfg, s->names, s->nnames, fit);
        if (st != DIPOLE_SUCCESS)
            return st;
        const bool ok = s->fits ? s->fits(s->user, ctx, n, fit) : (size_t)n <= fit->work_group;
        if (ok) {
            *size = n;
            return DIPOLE_SUCCESS;
        }
        if (n <= s->floor) {
            *size = n;
            return DIPOLE_ERR_UNSUPPORTED;
        }
        n = s->smaller ? s->smaller(n) : n / 2;
        if (n < s->floor)
            n = s->floor;
    }
}

/* ---------------------------------------------------------------- buffers */

/* Every scratch and upload buffer: a copy of host (read-only) or an uninitialised
 * read-write buffer; what, when given, names it in the failure. */
static dipole_status create_buffer(dipole_ctx *ctx, const void *host, size_t bytes,
                                   const char *what, cl_mem *out)
{
    cl_int err;
    const cl_mem_flags flags = host ? CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR : CL_MEM_READ_WRITE;
    *out = clCreateBuffer(ctx->context, flags, bytes, (void *)host, &err);
    if (err == CL_SUCCESS)
        return DIPOLE_SUCCESS;
    *out = NULL;
    char call[128];
    if (what)
        snprintf(call, sizeof call, "clCreateBuffer(%s, %zu bytes)", what, bytes);
    else
        snprintf(call, sizeof call, "clCreateBuffer(%zu bytes)", bytes);
    return dp_cl_fail(ctx, err, call);
}

dipole_status dp_scratch(dipole_ctx *ctx, size_t bytes, const char *what, cl_mem *out)
{
    return create_buffer(ctx, NULL, bytes, what, out);
}

dipole_status dp_upload(dipole_ctx *ctx, const void *host, size_t bytes, const char *what, cl_mem *out)
{
    return create_buffer(ctx, host, bytes, what, out);
}

dipole_status dp_call_buffers_upload(dipole_ctx *ctx, const dp_problem *p, dp_call_buffers *b)
{
    const dipole_attn_desc *d = &p->d;
    dipole_status st = DIPOLE_SUCCESS;
    b->key_lengths = NULL;
    b->pole_weights = NULL;
    b->alibi_slopes = NULL;
    if (d->key_lengths)
        st = dp_upload(ctx, d->key_lengths, sizeof(int) * (size_t)d->batch, "key_lengths",
                       &b->key_lengths);
    if (p->varlen) {
        const size_t n = (size_t)d->batch + 1;
        int *cu = malloc(sizeof(int) * 2 * n);
        if (!cu)
            st = dp_fail(ctx, DIPOLE_ERR_OUT_OF_HOST_MEMORY, "out of memory");
        if (cu) {
            memcpy(cu, d->cu_seqlens_q, sizeof(int) * n);
            memcpy(cu + n, d->cu_seqlens_k, sizeof(int) * n);
            st = dp_upload(ctx, cu, sizeof(int) * 2 * n, "cu_seqlens", &b->key_lengths);
        }
        free(cu);
    }
    if (st == DIPOLE_SUCCESS && p->alibi)
        st = dp_upload(ctx, d->alibi_slopes, sizeof(float) * (size_t)d->heads_q, "alibi_slopes",
                       &b->alibi_slopes);
    if (st == DIPOLE_SUCCESS && p->weighted && (d->pos_weight || d->neg_weight)) {
        const size_t hq = (size_t)d->heads_q;
        float *w = malloc(sizeof(float) * 2 * hq);
        if (!w)
            st = dp_fail(ctx, DIPOLE_ERR_OUT_OF_HOST_MEMORY, "out of memory");
        for (size_t h = 0; w && h < hq; h++) {
            w[h] = d->pos_weight ? d->pos_weight[h] : 1.0f;
            w[hq + h] = d->neg_weight ? d->neg_weight[h] : 1.0f;
        }
        if (st == DIPOLE_SUCCESS)
            st = dp_upload(ctx, w, sizeof(float) * 2 * hq, "pole weights", &b->pole_weights);
        free(w);
    }
    if (st != DIPOLE_SUCCESS)
        dp_call_buffers_release(b);
    return st;
}

void dp_call_buffers_release(dp_call_buffers *b)
{
    if (b->key_lengths)
        clReleaseMemObject(b->key_lengths);
    if (b->pole_weights)
        clReleaseMemObject(b->pole_weights);
    if (b->alibi_slopes)
        clReleaseMemObject(b->alibi_slopes);
    b->key_lengths = NULL;
    b->pole_weights = NULL;
    b->alibi_slopes = NULL;
}
