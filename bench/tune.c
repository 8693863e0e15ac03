/* --tune: times tile configurations of the tiled forward on a device with the sweep's own
 * timing and validation, and saves the fastest valid one as the device's tuned configuration
 * when it beats the configuration in use by more than noise. */
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* Adds cand unless it is already in out. */
static int add_unique(char out[][BENCH_TUNE_LEN], int n, int cap, const char *cand)
{
    for (int k = 0; k < n; k++)
        if (!strcmp(out[k], cand))
            return n;
    if (n < cap)
        snprintf(out[n++], BENCH_TUNE_LEN, "%s", cand);
    return n;
}

int bench_tune_candidates(bool cpu, size_t max_work_group, const char *current,
                          char out[][BENCH_TUNE_LEN], int cap)
{
    int n = 0;
    char c[BENCH_TUNE_LEN];
    if (cpu) {
        static const int ms[] = {64, 128, 256}, ns[] = {32, 64, 128};
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) {
                snprintf(c, sizeof c, "layout=cpu,block_m=%d,block_n=%d", ms[i], ns[j]);
                n = add_unique(out, n, cap, c);
            }
    } else {
        /* Around the GPU table's entries (a 16-column grid of 4-row items on 64 x 32 tiles):
         * query tiles, key tiles and rows per item; a work-group is block_m / rpi x 16. */
        static const int ms[] = {32, 64, 128}, ns[] = {32, 64}, rpis[] = {2, 4};
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 2; j++)
                for (int r = 0; r < 2; r++) {
                    if ((size_t)(ms[i] / rpis[r] * 16) > max_work_group)
                        continue;
                    snprintf(c, sizeof c, "layout=group,block_m=%d,block_n=%d,wg_cols=16,rpi=%d",
                             ms[i], ns[j], rpis[r]);
                    n = add_unique(out, n, cap, c);
                }
        /* A device below 128 work-items per group: the narrowest grid that fits. */
        if (n == 0) {
            int cols = 16;
            while (cols > 1 && (size_t)cols > max_work_group)
                cols /= 2;
            snprintf(c, sizeof c, "layout=group,block_m=4,block_n=%d,wg_cols=%d,rpi=4", cols,
                     cols);
            n = add_unique(out, n, cap, c);
        }
    }
    if (current && *current)
        n = add_unique(out, n, cap, current);
    return n;
}

int bench_tune_shapes(bool cpu, bool quick, bench_point pts[], int cap)
{
    static const int gpu_d[] = {64, 128};
    const int count = cpu ? 1 : 2;
    int n = 0;
    for (int i = 0; i < count && n < cap; i++) {
        bench_point *p = &pts[n++];
        memset(p, 0, sizeof *p);
        p->pass = BENCH_FWD;
        p->variant = DIPOLE_SIGNEXP;
        p->path = DIPOLE_PATH_TILED;
        p->batch = 1;
        p->heads_q = p->heads_kv = 8;
        p->seq_q = p->seq_k = cpu ? (quick ? 1024 : 2048) : 4096;
        p->head_dim = cpu ? 64 : gpu_d[i];
    }
    return n;
}

typedef struct tune_result {
    bool ok;
    double ms, gflops;       /* summed over the shapes */
    int block_m, block_n;    /* what the plan made of the configuration (first shape) */
    bool cpu_layout;
    char source[64];         /* where the plan says its configuration came from */
    char why[300];
} tune_result;

static void desc_of(const bench_point *p, dipole_attn_desc *d)
{
    dipole_attn_desc_default(d);
    d->variant = p->variant;
    d->batch = p->batch;
    d->heads_q = p->heads_q;
    d->heads_kv = p->heads_kv;
    d->seq_q = p->seq_q;
    d->seq_k = p->seq_k;
    d->head_dim = p->head_dim;
    d->causal = p->causal;
    d->path = p->path;
}

/* Plans, then times and validates every shape through bench_sweep, on ctx as configured. */
static void measure(dipole_ctx *ctx, const bench_opts *o, const bench_device *dev,
                    const bench_point *pts, int npts, tune_result *r)
{
    memset(r, 0, sizeof *r);
    dipole_attn_desc desc;
    desc_of(&pts[0], &desc);
    dipole_plan plan;
    dipole_status st = dipole_attention_plan(ctx, &desc, &plan);
    if (st != DIPOLE_SUCCESS) {
        const char *msg = dipole_ctx_last_error(ctx);
        snprintf(r->why, sizeof r->why, "plan: %.280s",
                 msg && *msg ? msg : st == DIPOLE_ERR_UNSUPPORTED ? plan.reason
                                                                  : dipole_status_string(st));
        return;
    }
    r->block_m = plan.block_m;
    r->block_n = plan.block_n;
    r->cpu_layout = plan.layout == DIPOLE_LAYOUT_CPU || plan.layout == DIPOLE_LAYOUT_SPLITK;
    snprintf(r->source, sizeof r->source, "%s", plan.config_label);

    bench_run *run = calloc(1, sizeof *run);
    int done = 0;
    if (!run || bench_sweep(ctx, o, dev, pts, npts, run, &done, npts, false) != 0) {
        snprintf(r->why, sizeof r->why, "out of host memory");
        if (run)
            free(run->rows);
        free(run);
        return;
    }
    double flops = 0;
    r->ok = run->nrows == npts;
    for (int i = 0; i < run->nrows && r->ok; i++) {
        const bench_row *row = &run->rows[i];
        if (row->status != BENCH_OK) {
            snprintf(r->why, sizeof r->why, "%s, d %d: %.250s", bench_status_name(row->status),
                     row->pt.head_dim, row->reason);
            r->ok = false;
        }
        r->ms += row->median_ms;
        flops += bench_flops(&row->pt);
    }
    if (r->ok)
        r->gflops = flops / (r->ms * 1e6);
    free(run->rows);
    free(run);
}

static void print_row(FILE *f, const char *name, const tune_result *r, double base_ms)
{
    char plan[32] = "-";
    if (r->block_m)
        snprintf(plan, sizeof plan, "%dx%d", r->block_m, r->block_n);
    if (r->ok)
        fprintf(f, "  %-38s %-8s %10.2f %9.1f %8.2fx  ok\n", name, plan, r->ms, r->gflops,
                base_ms > 0 ? base_ms / r->ms : 1.0);
    else
        fprintf(f, "  %-38s %-8s %10s %9s %9s  rejected: %s\n", name, plan, "-", "-", "-", r->why);
    fflush(f);
}

/* A new context on the same device must now plan with the tuned configuration. */
static int check_fresh(const char *selector, const bench_point *p, FILE *f)
{
    dipole_ctx *fresh = NULL;
    dipole_status st = dipole_ctx_create(&fresh, selector);
    dipole_plan plan;
    dipole_attn_desc desc;
    desc_of(p, &desc);
    if (st == DIPOLE_SUCCESS)
        st = dipole_attention_plan(fresh, &desc, &plan);
    if (st != DIPOLE_SUCCESS) {
        fprintf(f, "check failed: a new context cannot plan: %s\n",
                fresh ? dipole_ctx_last_error(fresh) : dipole_thread_last_error());
        dipole_ctx_destroy(fresh);
        return BENCH_EXIT_ERROR;
    }
    dipole_ctx_destroy(fresh);
    fprintf(f, "check: a new context plans \"%s\"\n", plan.reason);
    if (plan.config_source != DIPOLE_CONFIG_TUNED) {
        fprintf(f, "check failed: the new context does not use the tuned configuration\n");
        return BENCH_EXIT_ERROR;
    }
    return BENCH_EXIT_OK;
}

int bench_tune(dipole_ctx *ctx, const char *selector, const bench_opts *o,
               const bench_device *dev, FILE *f)
{
    bench_point pts[2];
    const int npts = bench_tune_shapes(dev->cpu, o->quick, pts, 2);
    /* Longer than a sweep point's budget: a 3% decision needs a steady median. */
    bench_opts to = *o;
    to.budget_ms = o->budget_set ? o->budget_ms : o->quick ? 200 : 500;
    to.max_call_ms = 1e12;
    to.inject_error = false;

    fprintf(f, "tune %s (%s): SIGNEXP forward, tiled, %dx%d heads, N %d, d %d%s; %s timing\n",
            dev->label, dev->cpu ? "CPU" : "not a CPU", pts[0].batch, pts[0].heads_q,
            pts[0].seq_q, pts[0].head_dim, npts > 1 ? " and 128 (times summed)" : "",
            dev->profiling ? "event" : "wall-clock");
    fprintf(f, "  %-38s %-8s %10s %9s %9s  %s\n", "candidate", "plan", "median ms", "GFLOP/s",
            "vs cur.", "status");

    /* --tune-prior (tests): stands for an earlier tuning, so that a slow one must be replaced. */
    if (o->tune_prior && dipole_ctx_save_tuned_config(ctx, o->tune_prior) != DIPOLE_SUCCESS) {
        fprintf(f, "--tune-prior: %s\n", dipole_ctx_last_error(ctx));
        return BENCH_EXIT_USAGE;
    }
    tune_result base;
    dipole_ctx_set_tile_config(ctx, NULL);
    measure(ctx, &to, dev, pts, npts, &base);
    char label[96];
    if (!strcmp(base.source, "tuned"))
        snprintf(label, sizeof label, "current [tuned earlier]");
    else
        snprintf(label, sizeof label, "default [%s table]", base.source[0] ? base.source : "?");
    print_row(f, label, &base, base.ms);
    if (!base.ok) {
        fprintf(f, "the current configuration fails on this device; nothing tuned\n");
        return BENCH_EXIT_ERROR;
    }

    char current[BENCH_TUNE_LEN], cand[BENCH_TUNE_MAX][BENCH_TUNE_LEN];
    snprintf(current, sizeof current, "layout=%s,block_m=%d,block_n=%d",
             base.cpu_layout ? "cpu" : "group", base.block_m, base.block_n);
    const int ncand =
        bench_tune_candidates(dev->cpu, dev->max_work_group, current, cand, BENCH_TUNE_MAX);
    int best = -1;
    double best_ms = 0, best_gflops = 0;
    for (int i = 0; i < ncand; i++) {
        tune_result r;
        if (dipole_ctx_set_tile_config(ctx, cand[i]) != DIPOLE_SUCCESS) {
            memset(&r, 0, sizeof r);
            snprintf(r.why, sizeof r.why, "%.280s", dipole_ctx_last_error(ctx));
        } else {
            /* --inject-error corrupts the first candidate's check: it must be rejected. */
            to.inject_error = o->inject_error && i == 0;
            measure(ctx, &to, dev, pts, npts, &r);
            to.inject_error = false;
        }
        print_row(f, cand[i], &r, base.ms);
        if (r.ok && (best < 0 || r.ms < best_ms)) {
            best = i;
            best_ms = r.ms;
            best_gflops = r.gflops;
        }
    }
    if (best < 0) {
        dipole_ctx_set_tile_config(ctx, NULL);
        fprintf(f, "no candidate passed; nothing saved\n");
        return BENCH_EXIT_ERROR;
    }
    if (!strcmp(cand[best], current)) {
        dipole_ctx_set_tile_config(ctx, NULL);
        fprintf(f, "best: %s, %.2f ms (%.1f GFLOP/s): the current configuration itself\n",
                cand[best], best_ms, best_gflops);
        fprintf(f, "kept the current configuration [%s]: it is the fastest; nothing saved\n",
                base.source);
        return BENCH_EXIT_OK;
    }
    /* The first measurement pays for warming the device up, and the winner is the luckiest of
     * many under a load that drifts: decide on the two timed again in alternation, by the
     * median of the paired ratios, which leaves out the selection run and cancels the drift. */
    enum { ROUNDS = 3 };
    double ratio[ROUNDS], base_t[ROUNDS], best_t[ROUNDS], best_gflops_t = 0;
    for (int round = 0; round < ROUNDS; round++) {
        tune_result r[2];
        dipole_ctx_set_tile_config(ctx, NULL);
        measure(ctx, &to, dev, pts, npts, &r[0]);
        dipole_ctx_set_tile_config(ctx, cand[best]);
        measure(ctx, &to, dev, pts, npts, &r[1]);
        if (!r[0].ok || !r[1].ok) {
            dipole_ctx_set_tile_config(ctx, NULL);
            fprintf(f, "timing again failed: %s; nothing saved\n", r[0].ok ? r[1].why : r[0].why);
            return BENCH_EXIT_ERROR;
        }
        base_t[round] = r[0].ms;
        best_t[round] = r[1].ms;
        ratio[round] = r[0].ms / r[1].ms;
        best_gflops_t = r[1].gflops > best_gflops_t ? r[1].gflops : best_gflops_t;
    }
    dipole_ctx_set_tile_config(ctx, NULL);
    const double gain = bench_median(ratio, ROUNDS);
    fprintf(f, "best: %s, %.2f ms (%.1f GFLOP/s) in the first pass\n", cand[best], best_ms,
            best_gflops);
    fprintf(f, "timed again in alternation, ms:");
    for (int round = 0; round < ROUNDS; round++)
        fprintf(f, " %.2f vs %.2f%s", best_t[round], base_t[round], round + 1 < ROUNDS ? "," : "");
    fprintf(f, " (best %.1f GFLOP/s); median gain %+.1f%% over the current [%s]\n",
            best_gflops_t, (gain - 1) * 100, base.source);
    if (gain <= 1 + BENCH_TUNE_NOISE) {
        fprintf(f, "kept the current configuration [%s]: no candidate beats it by more than "
                   "%.0f%%; nothing saved\n",
                base.source, BENCH_TUNE_NOISE * 100);
        return BENCH_EXIT_OK;
    }
    if (dipole_ctx_save_tuned_config(ctx, cand[best]) != DIPOLE_SUCCESS) {
        fprintf(f, "saving the tuned configuration failed: %s\n", dipole_ctx_last_error(ctx));
        return BENCH_EXIT_ERROR;
    }
    fprintf(f, "saved: \"%s\" as the tuned configuration of %s in %s (tuned-*.conf)\n", cand[best],
            dev->label, dipole_ctx_cache_dir(ctx));
    return check_fresh(selector, &pts[0], f);
}
