/* --plot: GFLOP/s against sequence length with gnuplot, one panel per device and head_dim,
 * one line per variant, path, dtype, causal mask and batch x heads. Forward prefill rows only. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

static bool on_path(const char *prog)
{
    const char *path = getenv("PATH");
    if (!path)
        return false;
    char dir[4096];
    while (*path) {
        size_t n = strcspn(path, ":");
        snprintf(dir, sizeof dir, "%.*s/%s", (int)(n ? n : 1), n ? path : ".", prog);
        if (access(dir, X_OK) == 0)
            return true;
        path += n;
        if (*path == ':')
            path++;
    }
    return false;
}

static bool plotted(const bench_row *r)
{
    /* --varlen twins stay out: their N is nominal, their tokens fewer. */
    return r->status == BENCH_OK && r->pt.pass == BENCH_FWD && r->pt.seq_q == r->pt.seq_k &&
           r->pt.batching == BENCH_FIXED;
}

/* gnuplot single-quoted string: a quote is doubled. */
static void gq(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'')
            fputc('\'', f);
        fputc(*s, f);
    }
    fputc('\'', f);
}

static bool same_series(const bench_point *a, const bench_point *b)
{
    return a->variant == b->variant && a->path == b->path && a->dtype == b->dtype &&
           a->causal == b->causal && a->batch == b->batch && a->heads_q == b->heads_q &&
           a->heads_kv == b->heads_kv;
}

int bench_plot_script(FILE *f, const bench_run *run, const char *path)
{
    /* Panels: distinct (device, head_dim) among the plotted rows. */
    int pd[64], ph[64], npanels = 0;
    for (int i = 0; i < run->nrows; i++) {
        const bench_row *r = &run->rows[i];
        if (!plotted(r))
            continue;
        int k = 0;
        while (k < npanels && !(pd[k] == r->pt.device && ph[k] == r->pt.head_dim))
            k++;
        if (k == npanels && npanels < 64) {
            pd[npanels] = r->pt.device;
            ph[npanels++] = r->pt.head_dim;
        }
    }
    if (!npanels)
        return -1;
    const char *dot = strrchr(path, '.');
    const bool png = dot && !strcasecmp(dot, ".png");
    fprintf(f, "set terminal %s size 1100,%d noenhanced\nset output ", png ? "pngcairo" : "svg",
            380 * npanels);
    gq(f, path);
    fprintf(f, "\nset multiplot layout %d,1\nset logscale x 2\nset grid\n"
               "set key outside right top\nset xlabel 'sequence length (seq_q = seq_k)'\n"
               "set ylabel 'GFLOP/s'\nset yrange [0:*]\n",
            npanels);
    for (int k = 0; k < npanels; k++) {
        fprintf(f, "set title ");
        char title[700];
        snprintf(title, sizeof title, "device %d: %s, head_dim %d, forward", pd[k],
                 run->dev[pd[k]].name, ph[k]);
        gq(f, title);
        fputc('\n', f);
        /* One inline data block per series, in row order (rising sequence length). */
        int first[256], nseries = 0;
        for (int i = 0; i < run->nrows && nseries < 256; i++) {
            const bench_row *r = &run->rows[i];
            if (!plotted(r) || r->pt.device != pd[k] || r->pt.head_dim != ph[k])
                continue;
            int s = 0;
            while (s < nseries && !same_series(&run->rows[first[s]].pt, &r->pt))
                s++;
            if (s == nseries)
                first[nseries++] = i;
        }
        for (int s = 0; s < nseries; s++) {
            fprintf(f, "$p%ds%d << EOD\n", k, s);
            for (int i = first[s]; i < run->nrows; i++) {
                const bench_row *r = &run->rows[i];
                if (plotted(r) && r->pt.device == pd[k] && r->pt.head_dim == ph[k] &&
                    same_series(&r->pt, &run->rows[first[s]].pt))
                    fprintf(f, "%d %.6g\n", r->pt.seq_k, r->gflops);
            }
            fputs("EOD\n", f);
        }
        fputs("plot ", f);
        for (int s = 0; s < nseries; s++) {
            const bench_point *p = &run->rows[first[s]].pt;
            char label[128];
            snprintf(label, sizeof label, "%s %s%s%s%s %dx%d:%d", dipole_variant_name(p->variant),
                     dipole_path_name(p->path), p->dtype == DIPOLE_F32 ? "" : " ",
                     p->dtype == DIPOLE_F32 ? "" : dipole_dtype_name(p->dtype),
                     p->causal ? " causal" : "", p->batch, p->heads_q, p->heads_kv);
            /* Colour: variant; dashes: mask; point shape: dtype (circle, triangle, square),
             * open for gemm, filled for tiled. */
            static const int shape[] = {6, 8, 4};
            fprintf(f, "%s$p%ds%d using 1:2 with linespoints lc %d dt %d pt %d title ",
                    s ? ", " : "", k, s, (int)p->variant + 1, p->causal ? 2 : 1,
                    shape[p->dtype % 3] + (p->path == DIPOLE_PATH_GEMM ? 0 : 1));
            gq(f, label);
        }
        fputc('\n', f);
    }
    fputs("unset multiplot\nset output\n", f);
    return ferror(f) ? -1 : 0;
}

int bench_plot(const bench_run *run, const char *path, char *err, size_t cap)
{
    if (!on_path("gnuplot")) {
        snprintf(err, cap, "--plot: gnuplot is not installed (apt-get install gnuplot-nox); "
                           "%s not written", path);
        return -1;
    }
    FILE *g = popen("gnuplot", "w");
    if (!g) {
        snprintf(err, cap, "--plot: cannot start gnuplot");
        return -1;
    }
    const int rc = bench_plot_script(g, run, path);
    const int status = pclose(g);
    if (rc != 0) {
        snprintf(err, cap, "--plot: no ok forward rows with seq_q = seq_k to plot");
        return -1;
    }
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(err, cap, "--plot: gnuplot failed (status %d) writing %s", status, path);
        return -1;
    }
    return 0;
}
