/* The tiled (flash-style) path: configuration from the device's limits, and the launch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define DP_TILED_MAX_HEAD_DIM 256
#define DP_CPU_MAX_PRIVATE (1u << 20)

/* How the tiled forward is laid out on a device class. */
typedef enum dp_tile_layout {
    DP_LAYOUT_GROUP, /* cl/dipole_fwd.cl: a work-item per row, K/V tiles in local memory */
    DP_LAYOUT_CPU,   /* cl/dipole_fwd_cpu.cl: a GEMM micro-kernel per work-item */
} dp_tile_layout;

typedef struct dp_tile_config {
    dp_tile_layout layout;
    int block_m;      /* rows per work-group (group) or per work-item (cpu: 16 or 32) */
    int block_n;      /* keys per tile */
    int splitk_max_q; /* cpu: seq_q up to which keys are split across work-items (0: never) */
    int splitk_chunk; /* cpu: keys per split-K work-item */
} dp_tile_config;

/* Tile configurations by device class, most specific first: device type and vendor, then the
 * type's default, then the default for anything. Measured on PoCL (AVX-512, 2 cores): 8 groups
 * of 32 rows (two float16 vectors) per work-item sharing 64-key tiles beat 1 group by ~1.6x
 * and 4 groups by ~5-10% (each tile's trip from L3 pays for 8x the arithmetic); split-K
 * decode with 512-key chunks. */
static const struct {
    cl_device_type type; /* 0: any */
    const char *vendor;  /* substring of CL_DEVICE_VENDOR, NULL: any */
    const char *label;
    dp_tile_config cfg;
} tile_table[] = {
    {CL_DEVICE_TYPE_GPU, "NVIDIA", "GPU/NVIDIA", {DP_LAYOUT_GROUP, 64, 32, 0, 0}},
    {CL_DEVICE_TYPE_GPU, NULL, "GPU", {DP_LAYOUT_GROUP, 64, 32, 0, 0}},
    {CL_DEVICE_TYPE_CPU, NULL, "CPU", {DP_LAYOUT_CPU, 256, 64, 4, 512}},
    {0, NULL, "default", {DP_LAYOUT_GROUP, 16, 64, 0, 0}},
};

/* Applies "layout=cpu|group,block_m=N,block_n=N,splitk_q=N,splitk_chunk=N" to cfg. Returns
 * false, with the offending item in why, at the first unknown key or bad value (cfg is then
 * partly changed: callers parse into a copy). */
static bool parse_tile_config(const char *text, dp_tile_config *cfg, char *why, size_t cap)
{
    char buf[256];
    if (snprintf(buf, sizeof buf, "%s", text) >= (int)sizeof buf) {
        snprintf(why, cap, "longer than %zu characters", sizeof buf - 1);
        return false;
    }
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq) {
            snprintf(why, cap, "\"%s\" has no '='", item);
            return false;
        }
        *eq = '\0';
        const char *key = item, *val = eq + 1;
        if (!strcmp(key, "layout")) {
            if (strcmp(val, "cpu") != 0 && strcmp(val, "group") != 0) {
                snprintf(why, cap, "layout must be cpu or group, not \"%s\"", val);
                return false;
            }
            cfg->layout = !strcmp(val, "cpu") ? DP_LAYOUT_CPU : DP_LAYOUT_GROUP;
            continue;
        }
        char *end;
        const long n = strtol(val, &end, 10);
        int *field = !strcmp(key, "block_m")        ? &cfg->block_m
                     : !strcmp(key, "block_n")      ? &cfg->block_n
                     : !strcmp(key, "splitk_q")     ? &cfg->splitk_max_q
                     : !strcmp(key, "splitk_chunk") ? &cfg->splitk_chunk
                                                    : NULL;
        if (!field || end == val || *end != '\0' || n < 0 || n > 4096 ||
            (n == 0 && field != &cfg->splitk_max_q)) {
            snprintf(why, cap, "bad item %s=%s", key, val);
            return false;
        }
        *field = (int)n;
    }
    return true;
}

dipole_status dp_tile_config_check(const char *text, char *why, size_t cap)
{
    dp_tile_config scratch = tile_table[0].cfg;
    return parse_tile_config(text, &scratch, why, cap) ? DIPOLE_SUCCESS : DIPOLE_ERR_INVALID_ARG;
}

/* The device class's configuration, then whichever override applies, strongest first: the
 * environment, the context's own (dipole_ctx_set_tile_config), the tuned one saved in the
 * cache directory (dipole-bench --tune). An override that does not parse is logged and
 * skipped. */
static const char *tile_config_for(dipole_ctx *ctx, dp_tile_config *cfg)
{
    const dp_device_props *dev = &ctx->props;
    size_t i = 0;
    const size_t n = sizeof tile_table / sizeof tile_table[0];
    for (; i + 1 < n; i++)
        if ((!tile_table[i].type || (dev->type & tile_table[i].type)) &&
            (!tile_table[i].vendor || strstr(dev->vendor, tile_table[i].vendor)))
            break;
    *cfg = tile_table[i].cfg;
    const char *env = ctx->settings.tile_config;
    const struct {
        const char *text;
        const char *label;
    } overrides[] = {
        {env, "DIPOLE_TILE_CONFIG"},
        {ctx->tile_config, "context tile config"},
        {ctx->tuned_config, "tuned"},
    };
    for (size_t o = 0; o < sizeof overrides / sizeof overrides[0]; o++) {
        if (!overrides[o].text || !overrides[o].text[0])
            continue;
        dp_tile_config c = *cfg;
        char why[160];
        if (parse_tile_config(overrides[o].text, &c, why, sizeof why)) {
            *cfg = c;
            return overrides[o].label;
        }
        dp_log(ctx, "%s \"%s\" ignored: %s", overrides[o].label, overrides[o].text, why);
    }
    return tile_table[i].label;
}

bool dp_tiled_cpu_layout(dipole_ctx *ctx)
{
    dp_tile_config tc;
    tile_config_for(ctx, &tc);
    return tc.layout == DP_LAYOUT_CPU;
}

/* Split-K's scratch: a (max, sum, acc) partial per chunk, row, head and pole; 0 if it
 * overflows size_t. */
static size_t splitk_bytes(const dp_tile_config *tc, const dp_problem *p)
{
    const size_t chunks = ((size_t)p->d.seq_k + (size_t)tc->splitk_chunk - 1) / (size_t)tc->splitk_chunk;
    const size_t f[] = {chunks, (size_t)p->d.seq_q, (size_t)p->d.batch, (size_t)p->d.heads_q,
                        (size_t)p->npoles, (size_t)p->d.head_dim + 2, sizeof(float)};
    size_t r = 1;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (!dp_mul_ok(r, f[i], &r))
            return 0;
    return r;
}

/* Split-K for few query rows, unless its scratch would not fit one allocation or the
 * workspace limit — then the plain CPU kernel, which needs none, serves. */
static bool use_splitk(const dipole_ctx *ctx, const dp_tile_config *tc, const dp_problem *p)
{
    if (tc->layout != DP_LAYOUT_CPU || p->d.seq_q > tc->splitk_max_q)
        return false;
    const size_t bytes = splitk_bytes(tc, p);
    return bytes != 0 && bytes <= ctx->props.max_alloc && bytes <= ctx->workspace_limit;
}

/* The kernel configuration a plan stands for (split-K builds with the CPU program's rows). */
static dp_kernel_config plan_kernel_config(const dipole_ctx *ctx, const dp_problem *p,
                                           const dipole_plan *plan,
                                           const dp_tile_config *tc)
{
    if (tc->layout == DP_LAYOUT_GROUP)
        return dp_kernel_config_for(p, DP_KERNEL_FWD_TILED, plan->block_m, plan->block_n, plan->block_m);
    if (use_splitk(ctx, tc, p))
        return dp_kernel_config_for(p, DP_KERNEL_FWD_SPLITK, 16, plan->block_n, 1);
    return dp_kernel_config_for(p, DP_KERNEL_FWD_CPU, plan->block_m, plan->block_n, 1);
}

static dipole_status reject(dipole_plan *plan, const char *fmt, int a, int b)
{
    snprintf(plan->reason, sizeof plan->reason, fmt, a, b);
    return DIPOLE_ERR_UNSUPPORTED;
}

/* Work-items the compiled kernel allows, and its private memory per work-item (for the
 * CPU layout, which keeps its large arrays in local memory, private plus local). */
static dipole_status kernel_fit(dipole_ctx *ctx, cl_kernel kernel, size_t *wg, cl_ulong *priv)
{
    cl_int err = clGetKernelWorkGroupInfo(kernel, ctx->device, CL_KERNEL_WORK_GROUP_SIZE,
                                          sizeof *wg, wg, NULL);
    if (err != CL_SUCCESS)
        return dp_cl_fail(ctx, err, "clGetKernelWorkGroupInfo(CL_KERNEL_WORK_GROUP_SIZE)");
    *priv = 0;
    err = clGetKernelWorkGroupInfo(kernel, ctx->device, CL_KERNEL_PRIVATE_MEM_SIZE, sizeof *priv,
                                   priv, NULL);
    if (err != CL_SUCCESS)
        return dp_cl_fail(ctx, err, "clGetKernelWorkGroupInfo(CL_KERNEL_PRIVATE_MEM_SIZE)");
    return DIPOLE_SUCCESS;
}

static dipole_status kernel_local_mem(dipole_ctx *ctx, cl_kernel kernel, cl_ulong *local)
{
    cl_int err = clGetKernelWorkGroupInfo(kernel, ctx->device, CL_KERNEL_LOCAL_MEM_SIZE,
                                          sizeof *local, local, NULL);
    if (err != CL_SUCCESS)
        return dp_cl_fail(ctx, err, "clGetKernelWorkGroupInfo(CL_KERNEL_LOCAL_MEM_SIZE)");
    return DIPOLE_SUCCESS;
}

/* The CPU layout: one work-item per block of rows, or split-K for decode. */
static dipole_status plan_cpu(dipole_ctx *ctx, const dp_problem *p, const dp_tile_config *tc,
                              const char *source, dipole_plan *plan)
{
    const int d = p->d.head_dim;
    if (use_splitk(ctx, tc, p)) {
        dipole_plan trial = *plan;
        trial.block_n = tc->splitk_chunk;
        dp_kernel_config cfg = plan_kernel_config(ctx, p, &trial, tc);
        static const char *const names[2] = {"dipole_fwd_splitk", "dipole_fwd_merge"};
        for (int i = 0; i < 2; i++) {
            cl_kernel kernel;
            size_t wg;
            cl_ulong priv;
            dipole_status st = dp_get_kernel(ctx, &cfg, names[i], &kernel);
            if (st == DIPOLE_SUCCESS)
                st = kernel_fit(ctx, kernel, &wg, &priv);
            if (st != DIPOLE_SUCCESS)
                return st;
            if (wg < 1)
                return reject(plan, "tiled: the split-K kernel allows %d work-items (head_dim %d)",
                              (int)wg, d);
        }
        const int chunks = (p->d.seq_k + tc->splitk_chunk - 1) / tc->splitk_chunk;
        plan->path = DIPOLE_PATH_TILED;
        plan->block_m = 1;
        plan->block_n = tc->splitk_chunk;
        plan->work_group = 1;
        plan->workspace_bytes = splitk_bytes(tc, p);
        snprintf(plan->reason, sizeof plan->reason,
                 "tiled/cpu split-K (%s): seq_q %d, %d chunks of %d keys per row, merged", source,
                 p->d.seq_q, chunks, tc->splitk_chunk);
        return DIPOLE_SUCCESS;
    }
    /* The kernel takes 16 rows or whole groups of 32 (see cl/dipole_fwd_cpu.cl). */
    int block_m = tc->block_m < 32 ? 16 : tc->block_m > 256 ? 256 : tc->block_m / 32 * 32;
    for (;;) {
        dipole_plan trial = *plan;
        trial.block_m = block_m;
        trial.block_n = tc->block_n;
        dp_kernel_config cfg = plan_kernel_config(ctx, p, &trial, tc);
        cl_kernel kernel;
        size_t wg;
        cl_ulong priv, local = 0;
        dipole_status st = dp_get_kernel(ctx, &cfg, "dipole_fwd_cpu", &kernel);
        if (st == DIPOLE_SUCCESS)
            st = kernel_fit(ctx, kernel, &wg, &priv);
        if (st == DIPOLE_SUCCESS)
            st = kernel_local_mem(ctx, kernel, &local);
        if (st != DIPOLE_SUCCESS)
            return st;
        /* Private arrays live on a worker thread's stack: stay well inside it. */
        if (wg >= 1 && priv <= DP_CPU_MAX_PRIVATE && local <= ctx->props.local_mem)
            break;
        if (block_m == 16)
            return reject(plan, "tiled: the CPU kernel needs %d KiB of private and local memory "
                                "(head_dim %d)",
                          (int)((priv + local) >> 10), d);
        block_m = block_m > 32 ? block_m / 64 * 32 : 16;
    }
    plan->path = DIPOLE_PATH_TILED;
    plan->block_m = block_m;
    plan->block_n = tc->block_n;
    plan->work_group = 1;
    plan->workspace_bytes = 0;
    snprintf(plan->reason, sizeof plan->reason,
             "tiled/cpu (%s): head_dim %d fits; %d rows x %d keys per tile, one work-item each",
             source, d, block_m, tc->block_n);
    return DIPOLE_SUCCESS;
}

dipole_status dp_tiled_plan(dipole_ctx *ctx, const dp_problem *p, dipole_plan *plan)
{
    const dp_device_props *dev = &ctx->props;
    const int d = p->d.head_dim;
    if (d > DP_TILED_MAX_HEAD_DIM)
        return reject(plan, "tiled: head_dim %d exceeds the tiled kernel's maximum %d", d,
                      DP_TILED_MAX_HEAD_DIM);
    dp_tile_config tc;
    const char *source = tile_config_for(ctx, &tc);
    if (tc.layout == DP_LAYOUT_CPU)
        return plan_cpu(ctx, p, &tc, source, plan);

    int block_m = tc.block_m;
    int block_n = tc.block_n;
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
        dipole_plan trial = *plan;
        trial.block_m = block_m;
        trial.block_n = block_n;
        dp_kernel_config cfg = plan_kernel_config(ctx, p, &trial, &tc);
        cl_kernel kernel;
        size_t wg;
        cl_ulong priv;
        dipole_status st = dp_get_kernel(ctx, &cfg, "dipole_fwd", &kernel);
        if (st == DIPOLE_SUCCESS)
            st = kernel_fit(ctx, kernel, &wg, &priv);
        if (st != DIPOLE_SUCCESS)
            return st;
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
             "tiled (%s): head_dim %d fits; %d rows x %d keys per tile, %d work-items per group",
             source, d, block_m, block_n, block_m);
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

/* Sets the tensor arguments q, k, v, v2 (and out when with_out) as (buffer, layout) pairs from
 * argument *arg on. v2 is never read when the variant has no v2; v is bound in its place so
 * that the argument is valid. */
static cl_int set_tensor_args(cl_kernel kernel, cl_uint *arg, const dp_problem *p,
                              const dp_args *a, bool with_out)
{
    const dipole_tensor *v2 = p->reads_v2 ? a->v2 : a->v;
    const dipole_tensor *t[5] = {a->q, a->k, a->v, v2, a->out};
    cl_int err = CL_SUCCESS;
    for (int i = 0; i < (with_out ? 5 : 4) && err == CL_SUCCESS; i++) {
        cl_long4 l = layout_of(t[i]);
        err = clSetKernelArg(kernel, (*arg)++, sizeof(cl_mem), &t[i]->buffer);
        if (err == CL_SUCCESS)
            err = clSetKernelArg(kernel, (*arg)++, sizeof l, &l);
    }
    return err;
}

static cl_int set_int_args(cl_kernel kernel, cl_uint *arg, const cl_int *v, int n)
{
    cl_int err = CL_SUCCESS;
    for (int i = 0; i < n && err == CL_SUCCESS; i++)
        err = clSetKernelArg(kernel, (*arg)++, sizeof(cl_int), &v[i]);
    return err;
}

/* Decode: partials per (row, chunk of keys), then the merge into out and lse. */
static dipole_status run_splitk(dipole_ctx *ctx, const dp_problem *p, const dipole_plan *plan,
                                const dp_tile_config *tc, const dp_args *a, cl_event *event)
{
    dp_kernel_config cfg = plan_kernel_config(ctx, p, plan, tc);
    cl_kernel split, merge;
    dipole_status st = dp_get_kernel(ctx, &cfg, "dipole_fwd_splitk", &split);
    if (st == DIPOLE_SUCCESS)
        st = dp_get_kernel(ctx, &cfg, "dipole_fwd_merge", &merge);
    if (st != DIPOLE_SUCCESS)
        return st;
    const cl_int chunks = (p->d.seq_k + plan->block_n - 1) / plan->block_n;
    cl_int err;
    cl_mem part = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE,
                                 plan->workspace_bytes ? plan->workspace_bytes : sizeof(float),
                                 NULL, &err);
    if (err != CL_SUCCESS)
        return dp_cl_fail(ctx, err, "clCreateBuffer(split-K partials)");

    cl_uint arg = 0;
    err = set_tensor_args(split, &arg, p, a, false);
    if (err == CL_SUCCESS)
        err = clSetKernelArg(split, arg++, sizeof(cl_mem), &part);
    if (err == CL_SUCCESS)
        err = clSetKernelArg(split, arg++, sizeof(cl_mem), &a->key_lengths);
    const cl_int ints[4] = {p->d.heads_q, p->d.heads_kv, p->d.seq_q, p->d.seq_k};
    if (err == CL_SUCCESS)
        err = set_int_args(split, &arg, ints, 4);
    const cl_float scale = p->d.scale;
    if (err == CL_SUCCESS)
        err = clSetKernelArg(split, arg++, sizeof scale, &scale);
    const cl_int tail[3] = {p->d.window_left, p->d.window_right, chunks};
    if (err == CL_SUCCESS)
        err = set_int_args(split, &arg, tail, 3);
    if (err != CL_SUCCESS) {
        clReleaseMemObject(part);
        return dp_cl_fail(ctx, err, "clSetKernelArg(dipole_fwd_splitk)");
    }

    arg = 0;
    const cl_long4 lout = layout_of(a->out);
    err = clSetKernelArg(merge, arg++, sizeof(cl_mem), &part);
    if (err == CL_SUCCESS)
        err = set_int_args(merge, &arg, &chunks, 1);
    if (err == CL_SUCCESS)
        err = clSetKernelArg(merge, arg++, sizeof(cl_mem), &a->out->buffer);
    if (err == CL_SUCCESS)
        err = clSetKernelArg(merge, arg++, sizeof lout, &lout);
    const cl_mem bufs[3] = {a->lse, a->key_lengths, a->pole_weights};
    for (int i = 0; i < 3 && err == CL_SUCCESS; i++)
        err = clSetKernelArg(merge, arg++, sizeof(cl_mem), &bufs[i]);
    const cl_int mints[6] = {p->d.batch, p->d.heads_q, p->d.seq_q, p->d.seq_k, p->d.window_left,
                             p->d.window_right};
    if (err == CL_SUCCESS)
        err = set_int_args(merge, &arg, mints, 6);
    if (err != CL_SUCCESS) {
        clReleaseMemObject(part);
        return dp_cl_fail(ctx, err, "clSetKernelArg(dipole_fwd_merge)");
    }

    const size_t bh = (size_t)p->d.batch * (size_t)p->d.heads_q;
    const size_t g1[3] = {(size_t)chunks, (size_t)p->d.seq_q, bh}, l1[3] = {1, 1, 1};
    err = clEnqueueNDRangeKernel(ctx->queue, split, 3, NULL, g1, l1, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        clReleaseMemObject(part);
        return dp_cl_fail(ctx, err, "clEnqueueNDRangeKernel(dipole_fwd_splitk)");
    }
    const size_t g2[2] = {(size_t)p->d.seq_q, bh};
    err = clEnqueueNDRangeKernel(ctx->queue, merge, 2, NULL, g2, NULL, 0, NULL, event);
    /* The buffer lives on until the enqueued kernels that use it finish. */
    clReleaseMemObject(part);
    if (err != CL_SUCCESS)
        return dp_cl_fail(ctx, err, "clEnqueueNDRangeKernel(dipole_fwd_merge)");
    return DIPOLE_SUCCESS;
}

dipole_status dp_tiled_run(dipole_ctx *ctx, const dp_problem *p, const dipole_plan *plan,
                           const dp_args *a, cl_event *event)
{
    dp_tile_config tc;
    tile_config_for(ctx, &tc);
    if (use_splitk(ctx, &tc, p))
        return run_splitk(ctx, p, plan, &tc, a, event);
    const bool cpu = tc.layout == DP_LAYOUT_CPU;
    const char *name = cpu ? "dipole_fwd_cpu" : "dipole_fwd";
    dp_kernel_config cfg = plan_kernel_config(ctx, p, plan, &tc);
    cl_kernel kernel;
    dipole_status st = dp_get_kernel(ctx, &cfg, name, &kernel);
    if (st != DIPOLE_SUCCESS)
        return st;
    cl_uint arg = 0;
    cl_int err = set_tensor_args(kernel, &arg, p, a, true);
    const cl_mem bufs[3] = {a->lse, a->key_lengths, a->pole_weights};
    for (int i = 0; i < 3 && err == CL_SUCCESS; i++)
        err = clSetKernelArg(kernel, arg++, sizeof(cl_mem), &bufs[i]);
    const cl_int ints[5] = {p->d.batch, p->d.heads_q, p->d.heads_kv, p->d.seq_q, p->d.seq_k};
    if (err == CL_SUCCESS)
        err = set_int_args(kernel, &arg, ints, 5);
    const cl_float scale = p->d.scale;
    const cl_int win[2] = {p->d.window_left, p->d.window_right};
    if (err == CL_SUCCESS)
        err = clSetKernelArg(kernel, arg++, sizeof scale, &scale);
    if (err == CL_SUCCESS)
        err = set_int_args(kernel, &arg, win, 2);
    if (err != CL_SUCCESS)
        return dp_cl_fail(ctx, err, cpu ? "clSetKernelArg(dipole_fwd_cpu)"
                                        : "clSetKernelArg(dipole_fwd)");

    const size_t bm = (size_t)plan->block_m, blocks = ((size_t)p->d.seq_q + bm - 1) / bm;
    const size_t global[3] = {cpu ? blocks : blocks * bm, (size_t)p->d.heads_q,
                              (size_t)p->d.batch};
    const size_t local[3] = {cpu ? 1 : bm, 1, 1};
    err = clEnqueueNDRangeKernel(ctx->queue, kernel, 3, NULL, global, local, 0, NULL, event);
    if (err != CL_SUCCESS)
        return dp_cl_fail(ctx, err, cpu ? "clEnqueueNDRangeKernel(dipole_fwd_cpu)"
                                        : "clEnqueueNDRangeKernel(dipole_fwd)");
    return DIPOLE_SUCCESS;
}
