/* dipole-bench: open the devices, measure their ceilings, sweep the grid, write the outputs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

static void command_line(int argc, char **argv, char *buf, size_t cap)
{
    buf[0] = '\0';
    for (int i = 0; i < argc; i++) {
        const size_t n = strlen(buf);
        snprintf(buf + n, cap - n, "%s%s", i ? " " : "", i ? argv[i] : "dipole-bench");
    }
}

static int write_file(const char *path, int (*fn)(FILE *, const bench_run *), const bench_run *run)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "dipole-bench: cannot write %s\n", path);
        return -1;
    }
    int rc = fn(f, run);
    if (fclose(f) != 0)
        rc = -1;
    if (rc)
        fprintf(stderr, "dipole-bench: writing %s failed\n", path);
    return rc;
}

int main(int argc, char **argv)
{
    bench_opts o;
    char err[512];
    if (bench_parse_args(argc, argv, &o, err, sizeof err) != 0) {
        fprintf(stderr, "dipole-bench: %s\n", err);
        return BENCH_EXIT_USAGE;
    }
    if (o.help) {
        bench_usage(stdout);
        return 0;
    }
    if (o.list)
        return bench_list_devices(stdout);
    const char *forced = getenv("DIPOLE_TILE_CONFIG");
    if (o.tune && forced && *forced) {
        /* It beats every candidate's per-context setting: all would time the same thing. */
        fprintf(stderr, "dipole-bench: --tune: DIPOLE_TILE_CONFIG=%s overrides every candidate; "
                        "unset it to tune\n",
                forced);
        return BENCH_EXIT_USAGE;
    }

    static char all_sel[BENCH_MAX_DEVICES][16];
    const char *sel[BENCH_MAX_DEVICES];
    int nsel = 0;
    if (o.all) {
        nsel = bench_all_selectors(all_sel, BENCH_MAX_DEVICES);
        if (!nsel) {
            fprintf(stderr, "dipole-bench: no OpenCL platform or device found\n");
            return BENCH_EXIT_NO_DEVICE;
        }
        for (int i = 0; i < nsel; i++)
            sel[i] = all_sel[i];
    } else if (o.ndevices) {
        nsel = o.ndevices;
        memcpy(sel, o.devices, sizeof(sel[0]) * (size_t)nsel);
    } else {
        nsel = 1;
        sel[0] = NULL; /* the library's default: $DIPOLE_DEVICE, else the best GPU */
    }

    static bench_run run;
    command_line(argc, argv, run.command, sizeof run.command);
    const time_t now = time(NULL);
    strftime(run.date, sizeof run.date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    const bool progress = isatty(STDERR_FILENO);

    dipole_ctx *ctx[BENCH_MAX_DEVICES] = {NULL};
    bench_opts dopts[BENCH_MAX_DEVICES];
    bench_point *pts[BENCH_MAX_DEVICES] = {NULL};
    int npts[BENCH_MAX_DEVICES] = {0}, total = 0, rc = BENCH_EXIT_OK;
    for (int i = 0; i < nsel; i++) {
        dipole_status st = dipole_ctx_create(&ctx[i], sel[i]);
        if (st != DIPOLE_SUCCESS) {
            fprintf(stderr, "dipole-bench: device %s: %s\n", sel[i] ? sel[i] : "(default)",
                    dipole_thread_last_error());
            rc = st == DIPOLE_ERR_NO_PLATFORM || (st == DIPOLE_ERR_NO_DEVICE && !sel[i])
                     ? BENCH_EXIT_NO_DEVICE
                     : BENCH_EXIT_USAGE;
            goto out;
        }
        bench_describe(ctx[i], sel[i], &run.dev[i]);
        run.ndev++;
        if (o.tune)
            continue;
        bench_grid_defaults(&o, run.dev[i].cpu, &dopts[i]);
        npts[i] = bench_grid_expand(&dopts[i], i, &pts[i]);
        if (npts[i] < 0) {
            fprintf(stderr, "dipole-bench: out of memory\n");
            rc = BENCH_EXIT_ERROR;
            goto out;
        }
        total += npts[i];
    }

    if (o.tune) {
        for (int i = 0; i < nsel; i++) {
            const int t = bench_tune(ctx[i], sel[i], &o, &run.dev[i], stdout);
            rc = rc != BENCH_EXIT_OK ? rc : t;
        }
        goto out;
    }
    int done = 0;
    for (int i = 0; i < nsel; i++) {
        if (o.peaks) {
            if (progress)
                fprintf(stderr, "measuring ceilings of %s ...", run.dev[i].label);
            bench_measure_ceilings(ctx[i], &run.dev[i], o.quick);
            if (progress)
                fprintf(stderr, "\r\033[K");
        } else {
            snprintf(run.dev[i].ceil.note, sizeof run.dev[i].ceil.note, "--no-peaks");
        }
        if (bench_sweep(ctx[i], &dopts[i], &run.dev[i], pts[i], npts[i], &run, &done, total,
                        progress) != 0) {
            fprintf(stderr, "dipole-bench: out of memory\n");
            rc = BENCH_EXIT_ERROR;
            goto out;
        }
    }
    bench_derive(&run);
    bench_print_table(stdout, &run);
    fflush(stdout);
    if (bench_any_error(&run))
        rc = BENCH_EXIT_ERROR;
    if (o.csv && write_file(o.csv, bench_write_csv, &run))
        rc = BENCH_EXIT_ERROR;
    if (o.json && write_file(o.json, bench_write_json, &run))
        rc = BENCH_EXIT_ERROR;
    if (o.plot && bench_plot(&run, o.plot, err, sizeof err)) {
        fprintf(stderr, "dipole-bench: %s\n", err);
        rc = BENCH_EXIT_ERROR;
    }
    if (o.compare && bench_compare(stdout, &run, o.compare, err, sizeof err)) {
        fprintf(stderr, "dipole-bench: %s\n", err);
        rc = BENCH_EXIT_ERROR;
    }
out:
    for (int i = 0; i < nsel; i++) {
        free(pts[i]);
        dipole_ctx_destroy(ctx[i]);
    }
    free(run.rows);
    return rc;
}
