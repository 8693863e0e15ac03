/* --compare OLD.json: each row's speed against the matching row of a saved run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bench.h"

/* A member's number (true counts as 1), or NaN where it is missing or of another type. */
static double num(const json_t *o, const char *k)
{
    const json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : json_is_boolean(v) ? json_is_true(v) : NAN;
}

static const char *str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static int name_index(const char *s, const char *const names[], int n)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

/* Rebuilds a saved row's point; false if the row is not ok or malformed. Runs saved before
 * --dtype have no "dtype": they are f32. */
static bool old_point(const json_t *row, bench_point *p)
{
    static const char *const variants[] = {"softmax", "signexp", "routed", "two_pole", "diff"};
    static const char *const paths[] = {"auto", "tiled", "gemm"};
    static const char *const dtypes[] = {"f32", "f16", "bf16"};
    const int v = name_index(str(row, "variant"), variants, 5);
    const int path = name_index(str(row, "path"), paths, 3);
    const int dt = json_object_get(row, "dtype") ? name_index(str(row, "dtype"), dtypes, 3)
                                                 : DIPOLE_F32;
    if (strcmp(str(row, "status"), "ok") != 0 || v < 0 || path < 0 || dt < 0 ||
        !(num(row, "median_ms") > 0))
        return false;
    memset(p, 0, sizeof *p);
    p->pass = strcmp(str(row, "pass"), "bwd") ? BENCH_FWD : BENCH_BWD;
    p->variant = (dipole_variant)v;
    p->path = (dipole_path)path;
    p->dtype = (dipole_dtype)dt;
    p->batch = (int)num(row, "batch");
    p->heads_q = (int)num(row, "heads_q");
    p->heads_kv = (int)num(row, "heads_kv");
    p->seq_q = (int)num(row, "seq_q");
    p->seq_k = (int)num(row, "seq_k");
    p->head_dim = (int)num(row, "head_dim");
    p->causal = num(row, "causal") != 0;
    p->page_size = json_object_get(row, "page_size") ? (int)num(row, "page_size") : 0;
    /* Runs saved before head_dim_v and --diff have neither: head_dim, no twin. */
    p->head_dim_v = json_object_get(row, "head_dim_v") ? (int)num(row, "head_dim_v") : 0;
    p->two_sm = json_is_true(json_object_get(row, "two_sm"));
    /* Runs saved before --varlen have no "batching": fixed batches. */
    const char *batching = json_object_get(row, "batching") ? str(row, "batching") : "fixed";
    p->batching = !strcmp(batching, "packed")   ? BENCH_PACKED
                  : !strcmp(batching, "padded") ? BENCH_PADDED
                                                : BENCH_FIXED;
    p->varlen_seed = p->batching != BENCH_FIXED ? (unsigned)num(row, "varlen_seed") : 0;
    return true;
}

int bench_compare(FILE *f, const bench_run *run, const char *old_json, char *err, size_t cap)
{
    FILE *in = fopen(old_json, "rb");
    if (!in) {
        snprintf(err, cap, "--compare: cannot open %s", old_json);
        return -1;
    }
    json_error_t jerr;
    json_t *doc = json_loadf(in, 0, &jerr);
    fclose(in);
    if (!doc) {
        snprintf(err, cap, "--compare: %s: %s (line %d, column %d)", old_json, jerr.text,
                 jerr.line, jerr.column);
        return -1;
    }
    const json_t *devs = json_object_get(doc, "devices"), *rows = json_object_get(doc, "rows");
    if (num(doc, "format_version") != BENCH_FORMAT_VERSION || !json_is_array(devs) ||
        !json_is_array(rows)) {
        snprintf(err, cap, "--compare: %s is not a dipole-bench run of format version %d",
                 old_json, BENCH_FORMAT_VERSION);
        json_decref(doc);
        return -1;
    }
    const size_t nold = json_array_size(rows), ndev = json_array_size(devs);
    /* Old keys once, then each new row looks its key up. */
    char (*keys)[768] = calloc(nold + 1, sizeof *keys);
    double *old_ms = calloc(nold + 1, sizeof *old_ms);
    if (!keys || !old_ms) {
        free(keys);
        free(old_ms);
        json_decref(doc);
        snprintf(err, cap, "--compare: out of memory");
        return -1;
    }
    for (size_t i = 0; i < nold; i++) {
        bench_point p;
        const json_t *row = json_array_get(rows, i);
        const double d = num(row, "device");
        if (!old_point(row, &p) || !(d >= 0) || d >= (double)ndev)
            continue;
        bench_row_key(str(json_array_get(devs, (size_t)d), "label"), &p, keys[i], sizeof keys[i]);
        old_ms[i] = num(row, "median_ms");
    }
    fprintf(f, "\ncompared with %s (ratio = old median / new median; > 1 is faster now)\n",
            old_json);
    fprintf(f, "%-3s %-4s %-8s %-5s %-5s %-4s %-9s %6s %6s %4s %-3s %10s %10s %7s\n", "dev",
            "pass", "variant", "path", "dtype", "kv", "BxHq:Hkv", "Nq", "Nk", "d", "cau", "old_ms",
            "new_ms", "ratio");
    double log_sum = 0;
    int matched = 0, unmatched = 0;
    for (int r = 0; r < run->nrows; r++) {
        const bench_row *row = &run->rows[r];
        if (row->status != BENCH_OK)
            continue;
        char key[768], bh[32], kv[16];
        bench_row_key(run->dev[row->pt.device].label, &row->pt, key, sizeof key);
        size_t i = 0;
        while (i < nold && (!old_ms[i] || strcmp(keys[i], key) != 0))
            i++;
        const bench_point *p = &row->pt;
        snprintf(bh, sizeof bh, "%dx%d:%d", p->batch, p->heads_q, p->heads_kv);
        bench_kv_label(p, kv, sizeof kv);
        fprintf(f, "%-3d %-4s %-8s %-5s %-5s %-4s %-9s %6d %6d %4d %-3s ", p->device,
                bench_pass_name(p->pass), dipole_variant_name(p->variant),
                dipole_path_name(p->path), dipole_dtype_name(p->dtype), kv, bh, p->seq_q,
                p->seq_k, p->head_dim, p->causal ? "on" : "off");
        if (i == nold) {
            fprintf(f, "%10s %10.3f %7s\n", "-", row->median_ms, "new");
            unmatched++;
            continue;
        }
        const double ratio = old_ms[i] / row->median_ms;
        fprintf(f, "%10.3f %10.3f %7.3f\n", old_ms[i], row->median_ms, ratio);
        log_sum += log(ratio);
        matched++;
    }
    if (matched)
        fprintf(f, "geometric mean ratio %.3f over %d matched row(s)", exp(log_sum / matched),
                matched);
    else
        fprintf(f, "no row matched");
    fprintf(f, "; %d row(s) without a counterpart\n", unmatched);
    free(keys);
    free(old_ms);
    json_decref(doc);
    return 0;
}
