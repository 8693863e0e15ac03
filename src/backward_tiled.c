/* The tiled backward: tile plans for its two layouts and their launches. The CPU layout
 * (cl/dipole_bwd_cpu.cl) runs dq first, which also writes the per-row delta, then dkdv; the
 * group layout (cl/dipole_bwd.cl) runs pre (delta), dkdv, then dq. Both end with dweights
 * (cl/dipole_util.cl, shared with the GEMM path) when TWO_POLE's weight gradients are asked for. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backward.h"
#include "tiles.h"

/* The CPU kernels: query rows per dq work-item and keys per dkdv work-item, each in groups of
 * 32 lanes that share every packed tile of the other side (4 groups made the whole backward
 * ~10 % faster than 1 on PoCL, SIGNEXP d = 64, N = 2048). */
#define DP_BWD_CPU_ROWS 128
#define DP_BWD_CPU_KEYS 128

/* Group layout: tile sizes that fit the device's local memory and work-group (tiles.c), then
 * the compiled kernels' own limits (registers, spills). block_m: query rows per tile, block_n:
 * keys per tile; one grid of work-items for pre, dkdv and dq. */
static dipole_status plan_group(dipole_ctx *ctx, const dp_problem *p, dp_kernel_config *cfg)
{
    dp_tile_config tc;
    dipole_config_source source;
    dp_tile_config_for(ctx, &tc, &source);
    if (ctx->settings.bwd_block_m)
        tc.bwd_block_m = ctx->settings.bwd_block_m;
    if (ctx->settings.bwd_block_n)
        tc.bwd_block_n = ctx->settings.bwd_block_n;
    char why[200];
    if (!dp_group_bwd_config(&tc, p, &ctx->props, cfg, why, sizeof why))
        return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED, "%s", why);
    static const char *const names[] = {"dipole_bwd_pre", "dipole_bwd_dkdv", "dipole_bwd_dq"};
    dp_kernel_fit fit;
    const dipole_status st = dp_kernel_fit_query(ctx, cfg, names, 3, &fit);
    if (st != DIPOLE_SUCCESS)
        return st;
    if (!dp_kernel_fit_holds(ctx, &fit, cfg, why, sizeof why))
        return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED, "backward: %s (head_dim %d)", why,
                       p->d.head_dim);
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
        dp_kernel_fit fit;
        const dipole_status st = dp_kernel_fit_query(ctx, &cfg, &names[i], 1, &fit);
        if (st != DIPOLE_SUCCESS)
            return st;
        const cl_ulong local = fit.local_mem;
        if (local > ctx->props.local_mem)
            return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED,
                           "backward: %s needs %llu KiB of local memory at head_dim %d, the "
                           "device has %d KiB",
                           names[i], (unsigned long long)(local >> 10), p->d.head_dim,
                           (int)(ctx->props.local_mem >> 10));
    }
    return DIPOLE_SUCCESS;
}

dipole_status dp_bwd_tiled_plan(dipole_ctx *ctx, const dp_problem *p, dp_bwd_plan *plan)
{
    dp_bwd_tiles *t = &plan->tiles;
    if (dp_max_head_dim(p) > DP_BWD_MAX_HEAD_DIM)
        return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED,
                       "backward: head_dim %d / head_dim_v %d exceeds the tiled backward "
                       "kernels' maximum %d (the GEMM path has no such limit)",
                       p->d.head_dim, p->dv, DP_BWD_MAX_HEAD_DIM);
    t->cpu = dp_tiled_cpu_layout(ctx);
    dipole_status st;
    if (t->cpu && (st = plan_cpu(ctx, p, t)) != DIPOLE_SUCCESS) {
        if (st != DIPOLE_ERR_UNSUPPORTED)
            return st;
        /* a CPU runtime with little local memory: the work-group kernels still fit */
        dp_log(ctx, "%s -> group layout", ctx->last_error ? ctx->last_error : "backward: cpu layout");
        dp_clear_error(ctx);
        t->cpu = false;
    }
    if (t->cpu) {
        plan->kernels = dp_kernel_config_for(p, DP_KERNEL_BWD_CPU, t->block_m, t->block_n, 1);
    } else {
        if ((st = plan_group(ctx, p, &plan->kernels)) != DIPOLE_SUCCESS)
            return st;
        t->block_m = plan->kernels.block_m;
        t->block_n = plan->kernels.block_n;
    }
    /* d alpha, d beta (TWO_POLE): the util program's kernel, fitted as on the GEMM path */
    if (p->weighted &&
        (st = dp_bwd_dweights_plan(ctx, p, &plan->dweights)) != DIPOLE_SUCCESS)
        return st;
    dipole_plan *pub = &plan->pub;
    pub->path = DIPOLE_PATH_TILED;
    pub->layout = t->cpu ? DIPOLE_LAYOUT_CPU : DIPOLE_LAYOUT_GROUP;
    pub->block_m = t->block_m;
    pub->block_n = t->block_n;
    pub->work_group = t->cpu ? 1 : plan->kernels.work_group;
    snprintf(pub->reason, sizeof pub->reason, "backward tiled/%s: head_dim %d fits; %d x %d tiles",
             t->cpu ? "cpu" : "group", p->d.head_dim, t->block_m, t->block_n);
    return DIPOLE_SUCCESS;
}

/* The problem-size tail every kernel but dweights ends with. */
static void arg_problem(dp_launch_args *l, const dp_problem *p, cl_mem alibi_slopes)
{
    dp_arg_int(l, p->d.batch);
    dp_arg_scores(l, p, alibi_slopes);
}

static size_t round_up(size_t n, size_t m)
{
    return (n + m - 1) / m * m;
}

static dp_kernel_config dweights_config(const void *user, int size)
{
    return dp_util_config(user, size);
}

dipole_status dp_bwd_dweights_plan(dipole_ctx *ctx, const dp_problem *p, dp_kernel_config *cfg)
{
    int size = DP_DWEIGHTS_WG;
    while ((size_t)size > ctx->props.max_work_group && size > 1)
        size /= 2;
    static const char *const name[1] = {"dipole_bwd_dweights"};
    const dp_fit_search search = {name, 1, dweights_config, NULL, NULL, 1, p};
    dp_kernel_fit fit;
    const dipole_status st = dp_fit_search_run(ctx, &search, &size, cfg, &fit);
    if (st == DIPOLE_ERR_UNSUPPORTED)
        return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED,
                       "backward: the compiled dweights kernel allows no work-item");
    return st;
}

dipole_status dp_bwd_dweights_launch(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a,
                                     const dp_kernel_config *cfg, cl_mem rowdot, cl_event *event)
{
    cl_kernel kernel;
    dipole_status st = dp_get_kernel(ctx, cfg, "dipole_bwd_dweights", &kernel);
    if (st != DIPOLE_SUCCESS)
        return st;
    dp_launch_args l = dp_launch_args_begin(kernel, "dipole_bwd_dweights");
    dp_arg_buffer(&l, rowdot);
    dp_arg_buffer(&l, a->dpos);
    dp_arg_buffer(&l, a->dneg);
    dp_arg_int(&l, p->tensor_batch); /* packed: the row statistics are one batch */
    dp_arg_int(&l, p->d.heads_q);
    dp_arg_int(&l, p->d.seq_q);
    /* group (0, h, pole) sums its (head, pole) */
    const size_t global[3] = {(size_t)cfg->block_m, (size_t)p->d.heads_q, (size_t)p->npoles};
    const size_t local[3] = {(size_t)cfg->block_m, 1, 1};
    return dp_launch(ctx, &l, 3, global, local, event);
}

/* The kernels the two layouts launch; each has its own argument list (launch()). */
typedef enum bwd_kernel { K_PRE, K_DQ, K_DKDV, K_DQ_CPU, K_DKDV_CPU } bwd_kernel;

static const char *const kernel_names[] = {
    [K_PRE] = "dipole_bwd_pre",         [K_DQ] = "dipole_bwd_dq",
    [K_DKDV] = "dipole_bwd_dkdv",       [K_DQ_CPU] = "dipole_bwd_dq_cpu",
    [K_DKDV_CPU] = "dipole_bwd_dkdv_cpu",
};

/* One launch: which kernel, the program it is built in, its grid. */
typedef struct bwd_launch {
    bwd_kernel which;
    dp_kernel_config cfg;
    size_t global[3], local[3];
} bwd_launch;

typedef struct bwd_bufs {
    cl_mem key_lengths, pole_weights, alibi_slopes, delta, rowdot;
} bwd_bufs;

/* What the gradient kernels read of each query row after pre (or dq_cpu) ran: dout, the
 * forward's lse, delta, and the key lengths and pole weights. */
static void arg_row_stats(dp_launch_args *l, const dp_bwd_args *a, const bwd_bufs *s)
{
    dp_arg_tensor(l, a->dout);
    dp_arg_buffer(l, a->lse);
    dp_arg_buffer(l, s->delta);
    dp_arg_buffer(l, s->key_lengths);
    dp_arg_buffer(l, s->pole_weights);
}

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
    dp_launch_args l = dp_launch_args_begin(kernel, name);
    dp_arg_tensor(&l, a->q);
    dp_arg_tensor(&l, a->k);
    dp_arg_tensor(&l, a->v);
    dp_arg_tensor(&l, v2);
    switch (which) {
    case K_PRE:
    case K_DQ_CPU: /* the CPU dq kernel takes pre's arguments, then dq */
        dp_arg_tensor(&l, a->out);
        dp_arg_tensor(&l, a->dout);
        dp_arg_buffer(&l, a->lse);
        dp_arg_buffer(&l, s->key_lengths);
        dp_arg_buffer(&l, s->pole_weights);
        dp_arg_buffer(&l, s->delta);
        dp_arg_buffer(&l, s->rowdot);
        if (which == K_DQ_CPU)
            dp_arg_tensor(&l, a->dq);
        break;
    case K_DQ:
        arg_row_stats(&l, a, s);
        dp_arg_tensor(&l, a->dq);
        break;
    default: /* dkdv, both layouts */
        arg_row_stats(&l, a, s);
        dp_arg_tensor(&l, a->dk);
        dp_arg_tensor(&l, a->dv);
        dp_arg_tensor(&l, dv2);
        break;
    }
    arg_problem(&l, p, s->alibi_slopes);
    return dp_launch(ctx, &l, 3, ln->global, ln->local, event);
}

dipole_status dp_bwd_tiled_run(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a,
                               const dp_bwd_plan *bp, const dp_call_buffers *cb,
                               cl_event *event)
{
    const dipole_attn_desc *d = &p->d;
    const dp_bwd_tiles *t = &bp->tiles;
    const bool want_dw = p->weighted && (a->dpos || a->dneg);
    const size_t nstat = (size_t)p->npoles * p->tensor_batch * d->heads_q * d->seq_q;
    bwd_bufs s = {cb->key_lengths, cb->pole_weights, cb->alibi_slopes, NULL, NULL};
    dipole_status st = dp_scratch(ctx, nstat * sizeof(float), "delta", &s.delta);
    if (st == DIPOLE_SUCCESS && want_dw)
        st = dp_scratch(ctx, nstat * sizeof(float), "rowdot", &s.rowdot);

    const size_t bm = (size_t)t->block_m, bn = (size_t)t->block_n;
    const size_t hq = (size_t)d->heads_q, hkv = (size_t)d->heads_kv, b = (size_t)d->batch;
    const dp_kernel_config main = bp->kernels;
    bwd_launch plan[3];
    int n = 0;
    if (t->cpu) {
        plan[n++] = (bwd_launch){K_DQ_CPU, main, {round_up((size_t)p->max_q, bm) / bm, hq, b},
                                 {1, 1, 1}};
        plan[n++] = (bwd_launch){K_DKDV_CPU, main, {round_up((size_t)p->max_k, bn) / bn, hkv, b},
                                 {1, 1, 1}};
    } else {
        /* a grid of work-items per query tile (pre, dq) or key block (dkdv) */
        const size_t wg = (size_t)main.work_group;
        const size_t q_tiles = round_up((size_t)p->max_q, bm) / bm;
        const size_t k_blocks = round_up((size_t)p->max_k, bn) / bn;
        plan[n++] = (bwd_launch){K_PRE, main, {q_tiles * wg, hq, b}, {wg, 1, 1}};
        plan[n++] = (bwd_launch){K_DKDV, main, {k_blocks * wg, hkv, b}, {wg, 1, 1}};
        plan[n++] = (bwd_launch){K_DQ, main, {q_tiles * wg, hq, b}, {wg, 1, 1}};
    }
    for (int i = 0; i < n && st == DIPOLE_SUCCESS; i++)
        st = launch(ctx, p, a, &s, &plan[i], i == n - 1 && !want_dw ? event : NULL);
    if (st == DIPOLE_SUCCESS && want_dw)
        st = dp_bwd_dweights_launch(ctx, p, a, &bp->dweights, s.rowdot, event);
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
