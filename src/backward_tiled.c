/* The tiled backward: tile plans for its two layouts and their launches. The CPU layout
 * (cl/dipole_bwd_cpu.cl) runs dq first, which also writes the per-row delta, then dkdv; the
 * group layout (cl/dipole_bwd.cl) runs pre (delta), dkdv, then dq. Both end with dweights
 * (cl/dipole_bwd.cl) when TWO_POLE's weight gradients are asked for. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backward.h"

/* The CPU kernels: query rows per dq work-item and keys per dkdv work-item, each in groups of
 * 32 lanes that share every packed tile of the other side (4 groups made the whole backward
 * ~10 % faster than 1 on PoCL, SIGNEXP d = 64, N = 2048). */
#define DP_BWD_CPU_ROWS 128
#define DP_BWD_CPU_KEYS 128

static dipole_status kernel_wg(dipole_ctx *ctx, const dp_kernel_config *cfg, const char *name,
                               size_t *wg)
{
    cl_kernel kernel;
    dipole_status st = dp_get_kernel(ctx, cfg, name, &kernel);
    if (st != DIPOLE_SUCCESS)
        return st;
    cl_int err = clGetKernelWorkGroupInfo(kernel, ctx->device, CL_KERNEL_WORK_GROUP_SIZE,
                                          sizeof *wg, wg, NULL);
    return err == CL_SUCCESS ? DIPOLE_SUCCESS
                             : dp_cl_fail(ctx, err, "clGetKernelWorkGroupInfo(CL_KERNEL_WORK_GROUP_SIZE)");
}

/* Group layout: tile sizes that fit the device's local memory and the compiled kernels'
 * work-group limits. block_m: query rows per tile (work-items of the row kernels), block_n:
 * keys per tile (work-items of dkdv). */
static dipole_status plan_group(dipole_ctx *ctx, const dp_problem *p, int *bm, int *bn)
{
    const dp_device_props *dev = &ctx->props;
    const size_t d = (size_t)p->d.head_dim;
    const bool gpu = (dev->type & CL_DEVICE_TYPE_GPU) != 0;
    int block_m = ctx->settings.bwd_block_m ? ctx->settings.bwd_block_m : gpu ? 64 : 32;
    int block_n = ctx->settings.bwd_block_n ? ctx->settings.bwd_block_n : gpu ? 64 : 32;
    while (block_m > 1 && (size_t)block_m > dev->max_work_group)
        block_m /= 2;
    while (block_n > 1 && (size_t)block_n > dev->max_work_group)
        block_n /= 2;
    const size_t budget = dev->local_mem_is_global ? dev->local_mem : dev->local_mem / 2;
    /* dkdv stages q and dO rows plus per-row statistics; dq and pre stage K, V (and V2). */
    const size_t row_bytes = (2 * d + 4 * (size_t)p->npoles + 2) * sizeof(float);
    const size_t key_bytes = (p->reads_v2 ? 3 : 2) * d * sizeof(float);
    while (block_m > 1 && (size_t)block_m * row_bytes > budget)
        block_m /= 2;
    while (block_n > 1 && (size_t)block_n * key_bytes > budget)
        block_n /= 2;
    if ((size_t)block_m * row_bytes > dev->local_mem || (size_t)block_n * key_bytes > dev->local_mem)
        return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED,
                       "backward: one row of head_dim %d needs more local memory than the "
                       "device's %d KiB",
                       p->d.head_dim, (int)(dev->local_mem >> 10));
    /* The compiled kernels may allow fewer work-items than the device (registers, spills). */
    static const char *const row_kernels[] = {"dipole_bwd_pre", "dipole_bwd_dq",
                                              "dipole_bwd_dweights"};
    for (;;) {
        dp_kernel_config cfg = dp_kernel_config_for(p, DP_KERNEL_BWD, block_m, block_n, block_m);
        /* dweights runs on block_m work-items too, from the util program */
        const dp_kernel_config sums = dp_kernel_config_for(p, DP_KERNEL_UTIL, block_m, 0, block_m);
        size_t wg_rows = SIZE_MAX, wg;
        dipole_status st;
        for (size_t i = 0; i < sizeof row_kernels / sizeof row_kernels[0]; i++) {
            if ((st = kernel_wg(ctx, i == 2 ? &sums : &cfg, row_kernels[i], &wg)))
                return st;
            wg_rows = wg < wg_rows ? wg : wg_rows;
        }
        size_t wg_keys;
        if ((st = kernel_wg(ctx, &cfg, "dipole_bwd_dkdv", &wg_keys)))
            return st;
        const bool rows_ok = (size_t)block_m <= wg_rows, keys_ok = (size_t)block_n <= wg_keys;
        if (rows_ok && keys_ok)
            break;
        if ((!rows_ok && block_m == 1) || (!keys_ok && block_n == 1))
            return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED,
                           "backward: the compiled kernels allow %zu / %zu work-items (head_dim %d)",
                           wg_rows, wg_keys, p->d.head_dim);
        if (!rows_ok)
            block_m /= 2;
        if (!keys_ok)
            block_n /= 2;
    }
    *bm = block_m;
    *bn = block_n;
    return DIPOLE_SUCCESS;
}

/* CPU layout: fixed lanes; the compiled kernels' local arrays must fit the device. */
static dipole_status plan_cpu(dipole_ctx *ctx, const dp_problem *p, dp_bwd_tiles *t)
{
    t->block_m = DP_BWD_CPU_ROWS;
    t->block_n = DP_BWD_CPU_KEYS;
    const dp_kernel_config cfg =
        dp_kernel_config_for(p, DP_KERNEL_BWD_CPU, t->block_m, t->block_n, 1);
    static const char *const names[2] = {"dipole_bwd_dq_cpu", "dipole_bwd_dkdv_cpu"};
    for (int i = 0; i < 2; i++) {
        cl_kernel kernel;
        dipole_status st = dp_get_kernel(ctx, &cfg, names[i], &kernel);
        if (st != DIPOLE_SUCCESS)
            return st;
        cl_ulong local = 0;
        cl_int err = clGetKernelWorkGroupInfo(kernel, ctx->device, CL_KERNEL_LOCAL_MEM_SIZE,
                                              sizeof local, &local, NULL);
        if (err != CL_SUCCESS)
            return dp_cl_fail(ctx, err, "clGetKernelWorkGroupInfo(CL_KERNEL_LOCAL_MEM_SIZE)");
        if (local > ctx->props.local_mem)
            return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED,
                           "backward: %s needs %llu KiB of local memory at head_dim %d, the "
                           "device has %d KiB",
                           names[i], (unsigned long long)(local >> 10), p->d.head_dim,
                           (int)(ctx->props.local_mem >> 10));
    }
    return DIPOLE_SUCCESS;
}

dipole_status dp_bwd_tiled_plan(dipole_ctx *ctx, const dp_problem *p, dp_bwd_tiles *t)
{
    if (p->d.head_dim > DP_BWD_MAX_HEAD_DIM)
        return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED,
                       "backward: head_dim %d exceeds the tiled backward kernels' maximum %d "
                       "(the GEMM path has no such limit)",
                       p->d.head_dim, DP_BWD_MAX_HEAD_DIM);
    t->cpu = dp_tiled_cpu_layout(ctx);
    if (t->cpu) {
        const dipole_status st = plan_cpu(ctx, p, t);
        if (st != DIPOLE_ERR_UNSUPPORTED)
            return st;
        /* a CPU runtime with little local memory: the work-group kernels still fit */
        dp_log(ctx, "%s -> group layout", ctx->last_error ? ctx->last_error : "backward: cpu layout");
        dp_clear_error(ctx);
        t->cpu = false;
    }
    return plan_group(ctx, p, &t->block_m, &t->block_n);
}

/* Sets a kernel's arguments in order; the first failure sticks. */
typedef struct arg_list {
    cl_kernel kernel;
    cl_uint n;
    cl_int err;
} arg_list;

static void arg_raw(arg_list *l, size_t size, const void *value)
{
    if (l->err == CL_SUCCESS)
        l->err = clSetKernelArg(l->kernel, l->n++, size, value);
}

static void arg_mem(arg_list *l, cl_mem m)
{
    arg_raw(l, sizeof m, &m);
}

static void arg_int(arg_list *l, int v)
{
    const cl_int x = v;
    arg_raw(l, sizeof x, &x);
}

static void arg_tensor(arg_list *l, const dipole_tensor *t)
{
    cl_long4 lay;
    lay.s[0] = (cl_long)t->offset;
    lay.s[1] = (cl_long)t->stride_batch;
    lay.s[2] = (cl_long)t->stride_seq;
    lay.s[3] = (cl_long)t->stride_head;
    arg_mem(l, t->buffer);
    arg_raw(l, sizeof lay, &lay);
}

/* The problem-size tail every kernel but dweights ends with. */
static void arg_problem(arg_list *l, const dp_problem *p)
{
    const int ints[5] = {p->d.batch, p->d.heads_q, p->d.heads_kv, p->d.seq_q, p->d.seq_k};
    for (int i = 0; i < 5; i++)
        arg_int(l, ints[i]);
    const cl_float scale = p->d.scale;
    arg_raw(l, sizeof scale, &scale);
    arg_int(l, p->d.window_left);
    arg_int(l, p->d.window_right);
}

static size_t round_up(size_t n, size_t m)
{
    return (n + m - 1) / m * m;
}

static dipole_status scratch(dipole_ctx *ctx, size_t floats, const char *what, cl_mem *out)
{
    cl_int err;
    *out = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE, floats * sizeof(float), NULL, &err);
    if (err == CL_SUCCESS)
        return DIPOLE_SUCCESS;
    *out = NULL;
    char call[96];
    snprintf(call, sizeof call, "clCreateBuffer(%s, %zu bytes)", what, floats * sizeof(float));
    return dp_cl_fail(ctx, err, call);
}

static dipole_status enqueue(dipole_ctx *ctx, cl_kernel kernel, const char *name,
                             const size_t global[3], const size_t local[3], cl_event *event)
{
    cl_int err = clEnqueueNDRangeKernel(ctx->queue, kernel, 3, NULL, global, local, 0, NULL, event);
    if (err == CL_SUCCESS)
        return DIPOLE_SUCCESS;
    char call[96];
    snprintf(call, sizeof call, "clEnqueueNDRangeKernel(%s)", name);
    return dp_cl_fail(ctx, err, call);
}

/* The kernels the two layouts launch; each has its own argument list (launch()). */
typedef enum bwd_kernel { K_PRE, K_DQ, K_DKDV, K_DQ_CPU, K_DKDV_CPU, K_DWEIGHTS } bwd_kernel;

static const char *const kernel_names[] = {
    [K_PRE] = "dipole_bwd_pre",         [K_DQ] = "dipole_bwd_dq",
    [K_DKDV] = "dipole_bwd_dkdv",       [K_DQ_CPU] = "dipole_bwd_dq_cpu",
    [K_DKDV_CPU] = "dipole_bwd_dkdv_cpu", [K_DWEIGHTS] = "dipole_bwd_dweights",
};

/* One launch: which kernel, the program it is built in, its grid. */
typedef struct bwd_launch {
    bwd_kernel which;
    dp_kernel_config cfg;
    size_t global[3], local[3];
} bwd_launch;

typedef struct bwd_bufs {
    cl_mem key_lengths, pole_weights, delta, rowdot;
} bwd_bufs;

/* Sets the launch's kernel arguments and enqueues it. */
static dipole_status launch(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a,
                            const bwd_bufs *s, const bwd_launch *ln, cl_event *event)
{
    const bwd_kernel which = ln->which;
    const char *name = kernel_names[which];
    cl_kernel kernel;
    dipole_status st = dp_get_kernel(ctx, &ln->cfg, name, &kernel);
    if (st != DIPOLE_SUCCESS)
        return st;
    /* v2 / dv2 are never touched when the variant has no v2; bind v / dv so the argument is
     * valid. */
    const dipole_tensor *v2 = p->reads_v2 ? a->v2 : a->v, *dv2 = p->reads_v2 ? a->dv2 : a->dv;
    arg_list l = {kernel, 0, CL_SUCCESS};
    if (which == K_DWEIGHTS) {
        arg_mem(&l, s->rowdot);
        arg_mem(&l, a->dpos);
        arg_mem(&l, a->dneg);
        arg_int(&l, p->d.batch);
        arg_int(&l, p->d.heads_q);
        arg_int(&l, p->d.seq_q);
    } else {
        arg_tensor(&l, a->q);
        arg_tensor(&l, a->k);
        arg_tensor(&l, a->v);
        arg_tensor(&l, v2);
        switch (which) {
        case K_PRE:
        case K_DQ_CPU: /* the CPU dq kernel takes pre's arguments, then dq */
            arg_tensor(&l, a->out);
            arg_tensor(&l, a->dout);
            arg_mem(&l, a->lse);
            arg_mem(&l, s->key_lengths);
            arg_mem(&l, s->pole_weights);
            arg_mem(&l, s->delta);
            arg_mem(&l, s->rowdot);
            if (which == K_DQ_CPU)
                arg_tensor(&l, a->dq);
            break;
        case K_DQ:
            arg_tensor(&l, a->dout);
            arg_mem(&l, a->lse);
            arg_mem(&l, s->delta);
            arg_mem(&l, s->key_lengths);
            arg_mem(&l, s->pole_weights);
            arg_tensor(&l, a->dq);
            break;
        default: /* dkdv, both layouts */
            arg_tensor(&l, a->dout);
            arg_mem(&l, a->lse);
            arg_mem(&l, s->delta);
            arg_mem(&l, s->key_lengths);
            arg_mem(&l, s->pole_weights);
            arg_tensor(&l, a->dk);
            arg_tensor(&l, a->dv);
            arg_tensor(&l, dv2);
            break;
        }
        arg_problem(&l, p);
    }
    if (l.err != CL_SUCCESS) {
        char call[96];
        snprintf(call, sizeof call, "clSetKernelArg(%s, %u)", name, l.n - 1);
        return dp_cl_fail(ctx, l.err, call);
    }
    return enqueue(ctx, kernel, name, ln->global, ln->local, event);
}

dipole_status dp_bwd_tiled_run(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a,
                               const dp_bwd_tiles *t, cl_mem key_lengths, cl_mem pole_weights,
                               cl_event *event)
{
    const dipole_attn_desc *d = &p->d;
    const bool want_dw = d->variant == DIPOLE_TWO_POLE && (a->dpos || a->dneg);
    const size_t nstat = (size_t)p->npoles * d->batch * d->heads_q * d->seq_q;
    bwd_bufs s = {key_lengths, pole_weights, NULL, NULL};
    dipole_status st = scratch(ctx, nstat, "delta", &s.delta);
    if (st == DIPOLE_SUCCESS && want_dw)
        st = scratch(ctx, nstat, "rowdot", &s.rowdot);

    const size_t bm = (size_t)t->block_m, bn = (size_t)t->block_n;
    const size_t hq = (size_t)d->heads_q, hkv = (size_t)d->heads_kv, b = (size_t)d->batch;
    const dp_kernel_config group = dp_kernel_config_for(p, DP_KERNEL_BWD, t->block_m,
                                                        t->block_n, t->block_m);
    /* dweights (the util program) runs on the group layout's block_m work-items, on the CPU
     * layout on the GEMM path's work-group (it only sums per-row terms). */
    const int sums_m = t->cpu ? DP_DWEIGHTS_WG : t->block_m;
    const dp_kernel_config sums = dp_kernel_config_for(p, DP_KERNEL_UTIL, sums_m, 0, sums_m);
    const size_t sums_wg = (size_t)sums.block_m;
    bwd_launch plan[4];
    int n = 0;
    if (t->cpu) {
        const dp_kernel_config cpu = dp_kernel_config_for(p, DP_KERNEL_BWD_CPU, t->block_m,
                                                          t->block_n, 1);
        plan[n++] = (bwd_launch){K_DQ_CPU, cpu, {round_up((size_t)d->seq_q, bm) / bm, hq, b},
                                 {1, 1, 1}};
        plan[n++] = (bwd_launch){K_DKDV_CPU, cpu, {round_up((size_t)d->seq_k, bn) / bn, hkv, b},
                                 {1, 1, 1}};
    } else {
        plan[n++] = (bwd_launch){K_PRE, group, {round_up((size_t)d->seq_q, bm), hq, b}, {bm, 1, 1}};
        plan[n++] = (bwd_launch){K_DKDV, group, {round_up((size_t)d->seq_k, bn), hkv, b}, {bn, 1, 1}};
        plan[n++] = (bwd_launch){K_DQ, group, {round_up((size_t)d->seq_q, bm), hq, b}, {bm, 1, 1}};
    }
    if (want_dw) /* group (0, h, pole) */
        plan[n++] = (bwd_launch){K_DWEIGHTS, sums, {sums_wg, hq, (size_t)p->npoles},
                                 {sums_wg, 1, 1}};
    for (int i = 0; i < n && st == DIPOLE_SUCCESS; i++)
        st = launch(ctx, p, a, &s, &plan[i], i == n - 1 ? event : NULL);
    if (st == DIPOLE_SUCCESS)
        dp_log(ctx, "backward %s: tiled/%s, %d x %d tiles", dipole_variant_name(d->variant),
               t->cpu ? "cpu" : "group", t->block_m, t->block_n);
    /* Released objects live on until the enqueued kernels that use them finish. */
    if (s.delta)
        clReleaseMemObject(s.delta);
    if (s.rowdot)
        clReleaseMemObject(s.rowdot);
    return st;
}
