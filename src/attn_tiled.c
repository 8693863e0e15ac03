/* The tiled (flash-style) path: configuration from the device's limits, and the launch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launch.h"
#include "tiles.h"

#define DP_TILED_MAX_HEAD_DIM 256
#define DP_CPU_MAX_PRIVATE (1u << 20)

/* The device class's configuration, then whichever override applies, strongest first: the
 * environment, the context's own (dipole_ctx_set_tile_config), the tuned one saved in the
 * cache directory (dipole-bench --tune). An override that does not parse is logged and
 * skipped. Returns the configuration's label; *source says which of them it is. */
const char *dp_tile_config_for(dipole_ctx *ctx, dp_tile_config *cfg, dipole_config_source *source)
{
    const char *label = dp_tile_table_entry(&ctx->props, cfg);
    const char *env = ctx->settings.tile_config;
    const struct {
        const char *text;
        const char *label;
        dipole_config_source source;
    } overrides[] = {
        {env, "DIPOLE_TILE_CONFIG", DIPOLE_CONFIG_ENV},
        {ctx->tile_config, "context tile config", DIPOLE_CONFIG_CONTEXT},
        {ctx->tuned_config, "tuned", DIPOLE_CONFIG_TUNED},
    };
    for (size_t o = 0; o < sizeof overrides / sizeof overrides[0]; o++) {
        if (!overrides[o].text || !overrides[o].text[0])
            continue;
        dp_tile_config c = *cfg;
        char why[160];
        if (dp_tile_config_parse(overrides[o].text, &c, why, sizeof why)) {
            *cfg = c;
            *source = overrides[o].source;
            return overrides[o].label;
        }
        dp_log(ctx, "%s \"%s\" ignored: %s", overrides[o].label, overrides[o].text, why);
    }
    *source = DIPOLE_CONFIG_TABLE;
    return label;
}

bool dp_tiled_cpu_layout(dipole_ctx *ctx)
{
    dp_tile_config tc;
    dipole_config_source source;
    dp_tile_config_for(ctx, &tc, &source);
    return tc.layout == DP_LAYOUT_CPU;
}

/* Split-K's scratch: a (max, sum, acc) partial per chunk, row, head and pole, acc a value row
 * padded to whole float16 pieces (cl/dipole_common.cl's PART_STRIDE); 0 if it overflows size_t. */
static size_t splitk_bytes(const dp_tile_config *tc, const dp_problem *p)
{
    const size_t chunks = ((size_t)p->d.seq_k + (size_t)tc->splitk_chunk - 1) / (size_t)tc->splitk_chunk;
    const size_t stride = 2 + ((size_t)p->dv + 15) / 16 * 16;
    const size_t f[] = {chunks, (size_t)p->d.seq_q, (size_t)p->d.batch, (size_t)p->d.heads_q,
                        (size_t)p->npoles, stride, sizeof(float)};
    size_t r = 1;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (!dp_mul_ok(r, f[i], &r))
            return 0;
    return r;
}

/* Split-K for few query rows, unless its scratch would not fit one allocation or the
 * workspace limit — then the plain CPU kernel, which needs none, serves. Packed batches keep
 * the tiles: the partials are laid out per (batch, row) of equal sequences. */
static bool use_splitk(const dipole_ctx *ctx, const dp_tile_config *tc, const dp_problem *p)
{
    if (tc->layout != DP_LAYOUT_CPU || p->d.seq_q > tc->splitk_max_q || p->varlen)
        return false;
    const size_t bytes = splitk_bytes(tc, p);
    return bytes != 0 && bytes <= ctx->props.max_alloc && bytes <= ctx->workspace_limit;
}

static dipole_status reject(dp_fwd_plan *plan, const char *fmt, ...) DP_PRINTF(2, 3);
static dipole_status reject(dp_fwd_plan *plan, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(plan->pub.reason, sizeof plan->pub.reason, fmt, ap);
    va_end(ap);
    return DIPOLE_ERR_UNSUPPORTED;
}

/* The fit searches: the kernels' configuration at a size of rows, and whether they fit. */
typedef struct fit_user {
    const dp_problem *p;
    int block_n;
} fit_user;

static dp_kernel_config cpu_config(const void *user, int block_m)
{
    const fit_user *u = user;
    return dp_kernel_config_for(u->p, DP_KERNEL_FWD_CPU, block_m, u->block_n, 1);
}

/* Private arrays live on a worker thread's stack: stay well inside it. */
static bool cpu_fits(const void *user, const dipole_ctx *ctx, int block_m, const dp_kernel_fit *f)
{
    (void)user;
    (void)block_m;
    return f->work_group >= 1 && f->private_mem <= DP_CPU_MAX_PRIVATE &&
           f->local_mem <= ctx->props.local_mem;
}

/* The CPU kernel takes 16 rows or whole groups of 32 (see cl/dipole_fwd_cpu.cl). */
static int cpu_smaller(int block_m)
{
    return block_m > 32 ? block_m / 64 * 32 : 16;
}

/* Keys per split-K chunk. `units` work-items (CPU) or work-groups (group layout) share each
 * chunk index, and those with the key chunks give the parallelism: the configured chunk is
 * halved, down to `floor` keys, until there are `per_unit` of them per compute unit. */
static int splitk_chunk_for(const dipole_ctx *ctx, const dp_tile_config *tc, const dp_problem *p,
                            size_t units, size_t per_unit, int floor)
{
    const size_t want = per_unit * (size_t)ctx->props.compute_units;
    int chunk = tc->splitk_chunk;
    while (chunk > floor && units * (((size_t)p->d.seq_k + (size_t)chunk - 1) / (size_t)chunk) < want)
        chunk /= 2;
    return chunk;
}

/* The CPU layout: one work-item per block of rows, or split-K for decode. */
static dipole_status plan_cpu(dipole_ctx *ctx, const dp_problem *p, const dp_tile_config *tc_in,
                              const char *source, dp_fwd_plan *plan)
{
    /* a split-K work-item takes every head of its batch: the rows alone share a chunk index;
     * 64 keys are four of its 16-key steps */
    dp_tile_config tcs = *tc_in;
    tcs.splitk_chunk = splitk_chunk_for(ctx, tc_in, p, (size_t)p->d.batch * (size_t)p->d.seq_q,
                                        2, 64);
    const dp_tile_config *tc = &tcs;
    const int d = p->d.head_dim;
    dipole_plan *pub = &plan->pub;
    if (use_splitk(ctx, tc, p)) {
        /* split-K builds with the CPU program's 16 rows and the configured chunk; the chunk it
         * runs (halved for parallelism) is an argument, so that it costs no build */
        const dp_kernel_config cfg =
            dp_kernel_config_for(p, DP_KERNEL_FWD_SPLITK, 16, tc_in->splitk_chunk, 1);
        static const char *const names[2] = {"dipole_fwd_splitk", "dipole_fwd_merge"};
        dp_kernel_fit fit;
        const dipole_status st = dp_kernel_fit_query(ctx, &cfg, names, 2, &fit);
        if (st != DIPOLE_SUCCESS)
            return st;
        if (fit.work_group < 1)
            return reject(plan, "tiled: the split-K kernel allows %d work-items (head_dim %d)",
                          (int)fit.work_group, d);
        const int chunks = (p->d.seq_k + tc->splitk_chunk - 1) / tc->splitk_chunk;
        plan->kernel = cfg;
        pub->path = DIPOLE_PATH_TILED;
        pub->layout = DIPOLE_LAYOUT_SPLITK;
        pub->block_m = 1;
        pub->block_n = tc->splitk_chunk;
        pub->work_group = 1;
        pub->splitk_chunks = chunks;
        pub->workspace_bytes = splitk_bytes(tc, p);
        snprintf(pub->reason, sizeof pub->reason,
                 "tiled/cpu split-K (%s): seq_q %d, %d chunks of %d keys per row, merged", source,
                 p->d.seq_q, chunks, tc->splitk_chunk);
        return DIPOLE_SUCCESS;
    }
    static const char *const name[1] = {"dipole_fwd_cpu"};
    const fit_user u = {p, tc->block_n};
    const dp_fit_search search = {name, 1, cpu_config, cpu_fits, cpu_smaller, 16, &u};
    int block_m = tc->block_m < 32 ? 16 : tc->block_m > 256 ? 256 : tc->block_m / 32 * 32;
    dp_kernel_fit fit;
    const dipole_status st = dp_fit_search_run(ctx, &search, &block_m, &plan->kernel, &fit);
    if (st == DIPOLE_ERR_UNSUPPORTED)
        return reject(plan, "tiled: the CPU kernel needs %d KiB of private and local memory "
                            "(head_dim %d)",
                      (int)((fit.private_mem + fit.local_mem) >> 10), d);
    if (st != DIPOLE_SUCCESS)
        return st;
    pub->path = DIPOLE_PATH_TILED;
    pub->layout = DIPOLE_LAYOUT_CPU;
    pub->block_m = block_m;
    pub->block_n = tc->block_n;
    pub->work_group = 1;
    pub->workspace_bytes = 0;
    snprintf(pub->reason, sizeof pub->reason,
             "tiled/cpu (%s): head_dim %d fits; %d rows x %d keys per tile, one work-item each",
             source, d, block_m, tc->block_n);
    return DIPOLE_SUCCESS;
}

/* The group layout's decode: a work-group per (key chunk, KV head, batch) over the tile of
 * dp_group_split_config, where it fits and the partials fit the workspace; returns
 * DIPOLE_ERR_UNSUPPORTED (nothing recorded) where not, so that the work-group tiles serve. */
static dipole_status plan_group_split(dipole_ctx *ctx, const dp_problem *p,
                                      const dp_tile_config *tc_in, const char *source,
                                      dp_fwd_plan *plan)
{
    dp_tile_config tc = *tc_in;
    const int floor = tc.block_n > 64 ? tc.block_n : 64;
    tc.splitk_chunk = splitk_chunk_for(ctx, tc_in, p,
                                       (size_t)p->d.batch * (size_t)p->d.heads_kv, 4, floor);
    const size_t bytes = splitk_bytes(&tc, p);
    dp_kernel_config cfg;
    char why[160];
    if (p->varlen || bytes == 0 || bytes > ctx->props.max_alloc || bytes > ctx->workspace_limit ||
        !dp_group_split_config(&tc, p, &ctx->props, &cfg))
        return DIPOLE_ERR_UNSUPPORTED;
    static const char *const names[2] = {"dipole_fwd", "dipole_fwd_merge_group"};
    dp_kernel_fit fit;
    const dipole_status st = dp_kernel_fit_query(ctx, &cfg, names, 2, &fit);
    if (st == DIPOLE_ERR_BUILD) {
        /* a compiler that rejects the split build leaves decode to the work-group tiles */
        dp_log(ctx, "the split decode build failed; the work-group tiles serve: %s",
               ctx->last_error ? ctx->last_error : "");
        dp_clear_error(ctx);
        return DIPOLE_ERR_UNSUPPORTED;
    }
    if (st != DIPOLE_SUCCESS)
        return st;
    if (!dp_kernel_fit_holds(ctx, &fit, &cfg, why, sizeof why))
        return DIPOLE_ERR_UNSUPPORTED;
    const int chunks = (p->d.seq_k + tc.splitk_chunk - 1) / tc.splitk_chunk;
    dipole_plan *pub = &plan->pub;
    plan->kernel = cfg;
    pub->path = DIPOLE_PATH_TILED;
    pub->layout = DIPOLE_LAYOUT_SPLITK;
    pub->block_m = cfg.block_m;
    pub->block_n = tc.splitk_chunk;
    pub->work_group = cfg.work_group;
    pub->splitk_chunks = chunks;
    pub->workspace_bytes = bytes;
    snprintf(pub->reason, sizeof pub->reason,
             "tiled split-K (%s): seq_q %d, a work-group per %d-key chunk (%d chunks) and KV "
             "head takes its %d query heads' rows, tiles of %d keys, merged",
             source, p->d.seq_q, tc.splitk_chunk, chunks, p->group, cfg.block_n);
    return DIPOLE_SUCCESS;
}

dipole_status dp_tiled_plan(dipole_ctx *ctx, const dp_problem *p, dp_fwd_plan *plan)
{
    const dp_device_props *dev = &ctx->props;
    const int d = p->d.head_dim;
    dipole_plan *pub = &plan->pub;
    if (dp_max_head_dim(p) > DP_TILED_MAX_HEAD_DIM)
        return reject(plan, "tiled: head_dim %d / head_dim_v %d exceeds the tiled kernel's "
                            "maximum %d",
                      d, p->dv, DP_TILED_MAX_HEAD_DIM);
    dp_tile_config tc;
    const char *source = dp_tile_config_for(ctx, &tc, &pub->config_source);
    snprintf(pub->config_label, sizeof pub->config_label, "%s", source);
    if (tc.layout == DP_LAYOUT_CPU)
        return plan_cpu(ctx, p, &tc, source, plan);
    const dipole_status split = plan_group_split(ctx, p, &tc, source, plan);
    if (split != DIPOLE_ERR_UNSUPPORTED)
        return split;

    char why[160];
    dp_kernel_config cfg;
    if (!dp_group_fwd_config(&tc, p, dev, &cfg, why, sizeof why)) {
        snprintf(pub->reason, sizeof pub->reason, "tiled: %s", why);
        return DIPOLE_ERR_UNSUPPORTED;
    }
    /* The compiled kernel may allow fewer work-items than its grid (registers, spills). */
    static const char *const name[1] = {"dipole_fwd"};
    dp_kernel_fit fit;
    const dipole_status st = dp_kernel_fit_query(ctx, &cfg, name, 1, &fit);
    if (st != DIPOLE_SUCCESS)
        return st;
    if (!dp_kernel_fit_holds(ctx, &fit, &cfg, why, sizeof why)) {
        snprintf(pub->reason, sizeof pub->reason, "tiled: %s (head_dim %d)", why, d);
        return DIPOLE_ERR_UNSUPPORTED;
    }
    plan->kernel = cfg;
    pub->path = DIPOLE_PATH_TILED;
    pub->layout = DIPOLE_LAYOUT_GROUP;
    pub->block_m = cfg.block_m;
    pub->block_n = cfg.block_n;
    pub->work_group = cfg.work_group;
    pub->workspace_bytes = 0;
    snprintf(pub->reason, sizeof pub->reason,
             "tiled (%s): head_dim %d fits; %d rows x %d keys per tile, %d x %d work-items of "
             "%d rows",
             source, d, cfg.block_m, cfg.block_n, cfg.work_group / cfg.wg_cols, cfg.wg_cols,
             cfg.block_m / (cfg.work_group / cfg.wg_cols));
    return DIPOLE_SUCCESS;
}

/* The tensor arguments q, k, v, v2 as (buffer, layout) pairs, then where K/V rows are (the
 * block table and its shape; NULL for contiguous K/V). v2 is never read when the variant has
 * no v2; v is bound in its place so that the argument is valid. */
static void arg_inputs(dp_launch_args *l, const dp_problem *p, const dp_args *a)
{
    dp_arg_tensor(l, a->q);
    dp_arg_tensor(l, a->k);
    dp_arg_tensor(l, a->v);
    dp_arg_tensor(l, p->reads_v2 ? a->v2 : a->v);
    dp_arg_buffer(l, a->block_table);
    dp_arg_int(l, a->max_pages);
    dp_arg_int(l, a->page_size);
}

/* What every forward kernel writes: out, and the per-row lse; with the key lengths and pole
 * weights they are computed with. */
static void arg_outputs(dp_launch_args *l, const dp_args *a)
{
    dp_arg_tensor(l, a->out);
    dp_arg_buffer(l, a->lse);
    dp_arg_buffer(l, a->key_lengths);
    dp_arg_buffer(l, a->pole_weights);
}

/* The arguments after the inputs that the group kernel takes in both of its modes. */
static void arg_group_tail(dp_launch_args *l, const dp_problem *p, const dp_args *a, cl_mem part,
                           int chunks, int chunk_keys)
{
    arg_outputs(l, a);
    dp_arg_int(l, p->d.batch);
    dp_arg_scores(l, p, a->alibi_slopes);
    dp_arg_buffer(l, part);
    dp_arg_int(l, chunks);
    dp_arg_int(l, chunk_keys);
}

/* Decode: partials per (row, chunk of keys), then the merge into out and lse. The CPU layout's
 * work-item is (chunk, row, batch) over every head; the group layout's work-group (chunk, KV
 * head, batch) over the heads that share it. */
static dipole_status run_splitk(dipole_ctx *ctx, const dp_problem *p, const dp_fwd_plan *plan,
                                const dp_args *a, cl_event *event)
{
    const bool group = plan->kernel.kind == DP_KERNEL_FWD_TILED;
    const char *split_name = group ? "dipole_fwd" : "dipole_fwd_splitk";
    const char *merge_name = group ? "dipole_fwd_merge_group" : "dipole_fwd_merge";
    cl_kernel split, merge;
    dipole_status st = dp_get_kernel(ctx, &plan->kernel, split_name, &split);
    if (st == DIPOLE_SUCCESS)
        st = dp_get_kernel(ctx, &plan->kernel, merge_name, &merge);
    if (st != DIPOLE_SUCCESS)
        return st;
    const int chunks = plan->pub.splitk_chunks;
    cl_mem part;
    st = dp_scratch(ctx, plan->pub.workspace_bytes ? plan->pub.workspace_bytes : sizeof(float),
                    "split-K partials", &part);
    if (st != DIPOLE_SUCCESS)
        return st;

    dp_launch_args l = dp_launch_args_begin(split, split_name);
    arg_inputs(&l, p, a);
    if (group) {
        arg_group_tail(&l, p, a, part, chunks, plan->pub.block_n);
    } else {
        dp_arg_buffer(&l, part);
        dp_arg_buffer(&l, a->key_lengths);
        dp_arg_scores(&l, p, a->alibi_slopes);
        dp_arg_int(&l, chunks);
        dp_arg_int(&l, plan->pub.block_n);
    }

    dp_launch_args m = dp_launch_args_begin(merge, merge_name);
    dp_arg_buffer(&m, part);
    dp_arg_int(&m, chunks);
    arg_outputs(&m, a);
    dp_arg_int(&m, p->d.batch);
    dp_arg_int(&m, p->d.heads_q);
    dp_arg_int(&m, p->d.seq_q);
    dp_arg_int(&m, p->d.seq_k);
    dp_arg_int(&m, p->d.window_left);
    dp_arg_int(&m, p->d.window_right);

    const size_t bh = (size_t)p->d.batch * (size_t)p->d.heads_q, wg = (size_t)plan->pub.work_group;
    const size_t hd4 = ((size_t)p->dv + 3) / 4; /* the merge's items: float4 chunks of out */
    const size_t g1[3] = {(size_t)chunks * (group ? wg : 1),
                          group ? (size_t)p->d.heads_kv : (size_t)p->d.seq_q, (size_t)p->d.batch};
    const size_t l1[3] = {group ? wg : 1, 1, 1};
    const size_t g2_group[3] = {hd4, (size_t)p->d.seq_q, bh}, g2_cpu[2] = {(size_t)p->d.seq_q, bh};
    st = dp_launch_args_status(ctx, &m);
    if (st == DIPOLE_SUCCESS)
        st = dp_launch(ctx, &l, 3, g1, l1, NULL);
    if (st == DIPOLE_SUCCESS)
        st = dp_launch(ctx, &m, group ? 3 : 2, group ? g2_group : g2_cpu, NULL, event);
    /* The buffer lives on until the enqueued kernels that use it finish. */
    clReleaseMemObject(part);
    return st;
}

dipole_status dp_tiled_run(dipole_ctx *ctx, const dp_problem *p, const dp_fwd_plan *plan,
                           const dp_args *a, cl_event *event)
{
    if (plan->pub.layout == DIPOLE_LAYOUT_SPLITK)
        return run_splitk(ctx, p, plan, a, event);
    const bool cpu = plan->pub.layout == DIPOLE_LAYOUT_CPU;
    const char *name = cpu ? "dipole_fwd_cpu" : "dipole_fwd";
    cl_kernel kernel;
    dipole_status st = dp_get_kernel(ctx, &plan->kernel, name, &kernel);
    if (st != DIPOLE_SUCCESS)
        return st;
    dp_launch_args l = dp_launch_args_begin(kernel, name);
    arg_inputs(&l, p, a);
    if (cpu) {
        arg_outputs(&l, a);
        dp_arg_int(&l, p->d.batch);
        dp_arg_scores(&l, p, a->alibi_slopes);
    } else {
        arg_group_tail(&l, p, a, NULL, 0, 0);
    }

    const size_t bm = (size_t)plan->pub.block_m, blocks = ((size_t)p->max_q + bm - 1) / bm;
    const size_t global[3] = {cpu ? blocks : blocks * (size_t)plan->pub.work_group,
                              (size_t)p->d.heads_q,
                              (size_t)p->d.batch};
    const size_t local[3] = {cpu ? 1 : (size_t)plan->pub.work_group, 1, 1};
    return dp_launch(ctx, &l, 3, global, local, event);
}
