/* The tiled (flash-style) path: configuration from the device's limits, and the launch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define DP_TILED_MAX_HEAD_DIM 256

static int env_int(const char *name, int fallback)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return fallback;
    char *end;
    long v = strtol(s, &end, 10);
    return (*end == '\0' && v > 0 && v <= 4096) ? (int)v : fallback;
}

static dp_kernel_config tiled_config(const dp_problem *p, int block_m, int block_n)
{
    dp_kernel_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.kind = DP_KERNEL_FWD_TILED;
    cfg.variant = p->d.variant;
    cfg.head_dim = p->d.head_dim;
    cfg.causal = p->d.causal != 0;
    cfg.has_window = p->has_window;
    cfg.block_m = block_m;
    cfg.block_n = block_n;
    cfg.work_group = block_m;
    return cfg;
}

static dipole_status reject(dipole_plan *plan, const char *fmt, int a, int b)
{
    snprintf(plan->reason, sizeof plan->reason, fmt, a, b);
    return DIPOLE_ERR_UNSUPPORTED;
}

dipole_status dp_tiled_plan(dipole_ctx *ctx, const dp_problem *p, dipole_plan *plan)
{
    const dp_device_props *dev = &ctx->props;
    const int d = p->d.head_dim;
    if (d > DP_TILED_MAX_HEAD_DIM)
        return reject(plan, "tiled: head_dim %d exceeds the tiled kernel's maximum %d", d,
                      DP_TILED_MAX_HEAD_DIM);
    /* GPUs hide latency with many rows per group; on CPUs a group is a loop, so fewer. */
    const bool gpu = (dev->type & CL_DEVICE_TYPE_GPU) != 0;
    int block_m = env_int("DIPOLE_BLOCK_M", gpu ? 64 : 16);
    int block_n = env_int("DIPOLE_BLOCK_N", gpu ? 32 : 64);
    while (block_m > 1 && (size_t)block_m > dev->max_work_group)
        block_m /= 2;
    /* K, V (and V2) tiles must fit in local memory, with room left for a second group. */
    const size_t tiles = p->reads_v2 ? 3 : 2;
    const size_t budget = dev->local_mem_is_global ? dev->local_mem : dev->local_mem / 2;
    while (block_n > 1 && (size_t)block_n * (size_t)d * sizeof(float) * tiles > budget)
        block_n /= 2;
    if ((size_t)block_n * (size_t)d * sizeof(float) * tiles > dev->local_mem)
        return reject(plan, "tiled: one key row of head_dim %d needs more local memory than "
                            "the device's %d KiB",
                      d, (int)(dev->local_mem >> 10));

    /* The compiled kernel may allow fewer work-items than the device (registers, spills). */
    for (;;) {
        dp_kernel_config cfg = tiled_config(p, block_m, block_n);
        cl_kernel kernel;
        dipole_status st = dp_get_kernel(ctx, &cfg, "dipole_fwd", &kernel);
        if (st != DIPOLE_SUCCESS)
            return st;
        size_t wg = 0;
        cl_int err = clGetKernelWorkGroupInfo(kernel, ctx->device, CL_KERNEL_WORK_GROUP_SIZE,
                                              sizeof wg, &wg, NULL);
        if (err != CL_SUCCESS)
            return dp_cl_fail(ctx, err, "clGetKernelWorkGroupInfo(CL_KERNEL_WORK_GROUP_SIZE)");
        if ((size_t)block_m <= wg)
            break;
        if (block_m == 1)
            return reject(plan, "tiled: the compiled kernel allows %d work-items (head_dim %d)",
                          (int)wg, d);
        block_m /= 2;
    }
    plan->path = DIPOLE_PATH_TILED;
    plan->block_m = block_m;
    plan->block_n = block_n;
    plan->work_group = block_m;
    plan->workspace_bytes = 0;
    snprintf(plan->reason, sizeof plan->reason,
             "tiled: head_dim %d fits; %d rows x %d keys per tile, %d work-items per group", d,
             block_m, block_n, block_m);
    return DIPOLE_SUCCESS;
}

static cl_long4 layout_of(const dipole_tensor *t)
{
    cl_long4 l;
    l.s[0] = (cl_long)t->offset;
    l.s[1] = (cl_long)t->stride_batch;
    l.s[2] = (cl_long)t->stride_seq;
    l.s[3] = (cl_long)t->stride_head;
    return l;
}

dipole_status dp_tiled_run(dipole_ctx *ctx, const dp_problem *p, const dipole_plan *plan,
                           const dp_args *a, cl_event *event)
{
    dp_kernel_config cfg = tiled_config(p, plan->block_m, plan->block_n);
    cl_kernel kernel;
    dipole_status st = dp_get_kernel(ctx, &cfg, "dipole_fwd", &kernel);
    if (st != DIPOLE_SUCCESS)
        return st;
    /* v2 is never read when the variant has no v2; bind v so the argument is valid. */
    const dipole_tensor *v2 = p->reads_v2 ? a->v2 : a->v;
    const dipole_tensor *t[5] = {a->q, a->k, a->v, v2, a->out};
    cl_int err = CL_SUCCESS;
    cl_uint arg = 0;
    for (int i = 0; i < 5 && err == CL_SUCCESS; i++) {
        cl_long4 l = layout_of(t[i]);
        err = clSetKernelArg(kernel, arg++, sizeof(cl_mem), &t[i]->buffer);
        if (err == CL_SUCCESS)
            err = clSetKernelArg(kernel, arg++, sizeof l, &l);
    }
    const cl_mem bufs[3] = {a->lse, a->key_lengths, a->pole_weights};
    for (int i = 0; i < 3 && err == CL_SUCCESS; i++)
        err = clSetKernelArg(kernel, arg++, sizeof(cl_mem), &bufs[i]);
    const cl_int ints[5] = {p->d.batch, p->d.heads_q, p->d.heads_kv, p->d.seq_q, p->d.seq_k};
    for (int i = 0; i < 5 && err == CL_SUCCESS; i++)
        err = clSetKernelArg(kernel, arg++, sizeof(cl_int), &ints[i]);
    const cl_float scale = p->d.scale;
    const cl_int win[2] = {p->d.window_left, p->d.window_right};
    if (err == CL_SUCCESS)
        err = clSetKernelArg(kernel, arg++, sizeof scale, &scale);
    for (int i = 0; i < 2 && err == CL_SUCCESS; i++)
        err = clSetKernelArg(kernel, arg++, sizeof(cl_int), &win[i]);
    if (err != CL_SUCCESS)
        return dp_cl_fail(ctx, err, "clSetKernelArg(dipole_fwd)");

    const size_t bm = (size_t)plan->block_m;
    const size_t global[3] = {((size_t)p->d.seq_q + bm - 1) / bm * bm, (size_t)p->d.heads_q,
                              (size_t)p->d.batch};
    const size_t local[3] = {bm, 1, 1};
    err = clEnqueueNDRangeKernel(ctx->queue, kernel, 3, NULL, global, local, 0, NULL, event);
    if (err != CL_SUCCESS)
        return dp_cl_fail(ctx, err, "clEnqueueNDRangeKernel(dipole_fwd)");
    return DIPOLE_SUCCESS;
}
