/* The CSV and JSON writers, the JSON reader, --compare and the gnuplot script. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "bench_tests.h"

void bt_sample_run(bench_run *run)
{
    memset(run, 0, sizeof *run);
    run->ndev = 1;
    bench_device *d = &run->dev[0];
    snprintf(d->selector, sizeof d->selector, "0:0");
    snprintf(d->label, sizeof d->label, "Plat / Dev \"7\", rev\\2");
    snprintf(d->name, sizeof d->name, "Dev");
    snprintf(d->platform, sizeof d->platform, "Plat");
    d->compute_units = 2;
    d->profiling = true;
    snprintf(run->command, sizeof run->command, "dipole-bench --quick");
    snprintf(run->date, sizeof run->date, "2026-01-01T00:00:00Z");
    run->nrows = run->cap = 2;
    run->rows = calloc(2, sizeof *run->rows);
    ck_assert_ptr_nonnull(run->rows);
    for (int i = 0; i < 2; i++) {
        bench_row *r = &run->rows[i];
        bench_point *p = &r->pt;
        p->variant = DIPOLE_SOFTMAX;
        p->path = i ? DIPOLE_PATH_GEMM : DIPOLE_PATH_TILED;
        p->batch = 1, p->heads_q = p->heads_kv = 4, p->seq_q = p->seq_k = 128, p->head_dim = 64;
        r->pct_fma = r->pct_sgemm = r->pct_copy = r->tiled_over_gemm = r->over_softmax = NAN;
        r->over_f32 = r->over_dense = r->padded_over_packed = r->two_sm_over_fused = NAN;
        snprintf(r->cache, sizeof r->cache, "-");
        snprintf(r->timer, sizeof r->timer, "-");
    }
    bench_row *ok = &run->rows[0];
    ok->status = BENCH_OK;
    ok->median_ms = 2.0;
    ok->min_ms = 1.5;
    ok->first_ms = 40;
    ok->jit_ms = 38;
    ok->reps = 10;
    ok->gflops = bench_flops(&ok->pt) / 2e6;
    ok->gbps = bench_bytes(&ok->pt) / 2e6;
    ok->checked_rows = 16;
    ok->max_abs_err = 2.5e-7;
    snprintf(ok->cache, sizeof ok->cache, "built");
    snprintf(ok->timer, sizeof ok->timer, "events");
    run->rows[1].status = BENCH_UNSUPPORTED;
    snprintf(run->rows[1].reason, sizeof run->rows[1].reason, "gemm: no, \"quoted\"\nsecond line");
}

static char *capture(int (*fn)(FILE *, const bench_run *), const bench_run *run)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fn(f, run), 0);
    fclose(f);
    return buf;
}

/* Splits one CSV record (RFC 4180) starting at *s; returns the field count, advances *s. */
static int csv_record(const char **s, char fields[][256], int cap)
{
    int n = 0;
    const char *p = *s;
    for (;;) {
        char *out = fields[n < cap ? n : cap - 1];
        size_t k = 0;
        if (*p == '"') {
            for (p++; *p && !(*p == '"' && p[1] != '"'); p++) {
                if (*p == '"')
                    p++;
                if (k < 255)
                    out[k++] = *p;
            }
            p++;
        } else {
            while (*p && *p != ',' && *p != '\n')
                if (k < 255)
                    out[k++] = *p++;
        }
        out[k] = '\0';
        n++;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p == '\n')
            p++;
        *s = p;
        return n;
    }
}

START_TEST(csv_writer)
{
    bench_run run;
    bt_sample_run(&run);
    run.rows[1].pt.dtype = DIPOLE_BF16;
    char *text = capture(bench_write_csv, &run);
    static char head[64][256], row[64][256];
    const char *s = text;
    const int nh = csv_record(&s, head, 64);
    ck_assert_str_eq(head[0], "device");
    ck_assert_str_eq(head[11], "status");
    ck_assert_int_eq(csv_record(&s, row, 64), nh);
    ck_assert_str_eq(row[0], run.dev[0].label); /* quoted because of the comma and quotes */
    ck_assert_str_eq(row[1], "fwd");
    ck_assert_str_eq(row[3], "tiled");
    ck_assert_str_eq(row[11], "ok");
    /* The columns added later come last: dtype, over_f32, page_size, over_dense, then
     * batching, varlen_seed, tokens, padded_over_packed, then head_dim_v, two_sm,
     * two_sm_over_fused. */
    ck_assert_str_eq(head[nh - 11], "dtype");
    ck_assert_str_eq(head[nh - 10], "over_f32");
    ck_assert_str_eq(head[nh - 9], "page_size");
    ck_assert_str_eq(head[nh - 8], "over_dense");
    ck_assert_str_eq(head[nh - 7], "batching");
    ck_assert_str_eq(head[nh - 6], "varlen_seed");
    ck_assert_str_eq(head[nh - 5], "tokens");
    ck_assert_str_eq(head[nh - 4], "padded_over_packed");
    ck_assert_str_eq(head[nh - 3], "head_dim_v");
    ck_assert_str_eq(head[nh - 2], "two_sm");
    ck_assert_str_eq(head[nh - 1], "two_sm_over_fused");
    ck_assert_str_eq(row[nh - 11], "f32");
    ck_assert_str_eq(row[nh - 10], "");
    ck_assert_str_eq(row[nh - 9], "0");
    ck_assert_str_eq(row[nh - 7], "fixed");
    ck_assert_str_eq(row[nh - 6], "");
    ck_assert_str_eq(row[nh - 5], "128"); /* 1 x 128 query rows */
    ck_assert_str_eq(row[nh - 4], "");
    ck_assert_str_eq(row[nh - 3], "64"); /* head_dim_v 0: head_dim */
    ck_assert_str_eq(row[nh - 2], "0");
    ck_assert_str_eq(row[nh - 1], "");
    for (int i = 0; i < nh; i++)
        if (!strcmp(head[i], "median_ms"))
            ck_assert_double_eq(strtod(row[i], NULL), 2.0);
        else if (!strcmp(head[i], "pct_fma"))
            ck_assert_str_eq(row[i], ""); /* NaN: empty cell */
    ck_assert_int_eq(csv_record(&s, row, 64), nh);
    ck_assert_str_eq(row[nh - 11], "bf16");
    ck_assert_str_eq(row[11], "unsupported");
    ck_assert_str_eq(row[12], run.rows[1].reason); /* the newline survives inside quotes */
    ck_assert_str_eq(s, "");
    free(text);
    free(run.rows);
}
END_TEST

START_TEST(json_writer_roundtrip)
{
    bench_run run;
    bt_sample_run(&run);
    run.rows[1].pt.dtype = DIPOLE_F16;
    run.rows[0].over_f32 = 1.0;
    char *text = capture(bench_write_json, &run);
    json_error_t jerr;
    json_t *doc = json_loads(text, 0, &jerr);
    ck_assert_msg(doc != NULL, "%s (line %d)\n%s", jerr.text, jerr.line, text);
    ck_assert_double_eq(json_number_value(json_object_get(doc, "format_version")),
                        BENCH_FORMAT_VERSION);
    const json_t *devs = json_object_get(doc, "devices"), *rows = json_object_get(doc, "rows");
    ck_assert(json_is_array(devs));
    ck_assert_int_eq(json_array_size(devs), 1);
    const json_t *dev = json_array_get(devs, 0);
    ck_assert_str_eq(json_string_value(json_object_get(dev, "label")), run.dev[0].label);
    ck_assert(json_is_null(json_object_get(json_object_get(dev, "ceilings"), "fma_gflops")));
    ck_assert_int_eq(json_array_size(rows), 2);
    const json_t *r0 = json_array_get(rows, 0), *r1 = json_array_get(rows, 1);
    ck_assert_str_eq(json_string_value(json_object_get(r0, "status")), "ok");
    ck_assert_double_eq(json_number_value(json_object_get(r0, "median_ms")), 2.0);
    ck_assert(json_is_boolean(json_object_get(r0, "causal")));
    ck_assert(json_is_null(json_object_get(r0, "pct_fma")));
    ck_assert_str_eq(json_string_value(json_object_get(r0, "dtype")), "f32");
    ck_assert_str_eq(json_string_value(json_object_get(r1, "dtype")), "f16");
    ck_assert_double_eq(json_number_value(json_object_get(r0, "over_f32")), 1.0);
    ck_assert(json_is_null(json_object_get(r1, "over_f32")));
    ck_assert_str_eq(json_string_value(json_object_get(r1, "status")), "unsupported");
    ck_assert_str_eq(json_string_value(json_object_get(r1, "reason")), run.rows[1].reason);
    ck_assert(json_is_null(json_object_get(r1, "median_ms")));
    json_decref(doc);
    free(text);
    free(run.rows);
}
END_TEST

START_TEST(compare_with_saved_run)
{
    bench_run run;
    bt_sample_run(&run);
    char path[] = "/tmp/dipole-bench-test-XXXXXX";
    const int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    ck_assert_int_eq(bench_write_json(f, &run), 0);
    fclose(f);
    run.rows[0].median_ms = 1.0; /* twice as fast now */
    char *out = NULL, err[256];
    size_t len = 0;
    FILE *m = open_memstream(&out, &len);
    ck_assert_int_eq(bench_compare(m, &run, path, err, sizeof err), 0);
    fclose(m);
    ck_assert_msg(strstr(out, "2.000") && strstr(out, "geometric mean ratio 2.000 over 1"), "%s",
                  out);
    free(out);
    /* Not a run: refused with a message. */
    f = fopen(path, "w");
    fputs("{\"format_version\": 99}", f);
    fclose(f);
    m = open_memstream(&out, &len);
    ck_assert_int_eq(bench_compare(m, &run, path, err, sizeof err), -1);
    fclose(m);
    free(out);
    ck_assert_ptr_nonnull(strstr(err, "format version"));
    /* Not JSON: refused with the parser's position. */
    f = fopen(path, "w");
    fputs("{\"format_version\": 2,", f);
    fclose(f);
    ck_assert_int_eq(bench_compare(stdout, &run, path, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "line 1"), "%s", err);
    unlink(path);
    ck_assert_int_eq(bench_compare(stdout, &run, path, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "cannot open"));
    free(run.rows);
}
END_TEST

static char *compare_text(const bench_run *run, const char *path)
{
    char *out = NULL, err[256];
    size_t len = 0;
    FILE *m = open_memstream(&out, &len);
    ck_assert_ptr_nonnull(m);
    ck_assert_msg(bench_compare(m, run, path, err, sizeof err) == 0, "%s", err);
    fclose(m);
    return out;
}

/* Rewrites every saved row's "dtype": drops it (a run from before --dtype) or sets it. */
static void set_saved_dtype(const char *path, const char *dtype)
{
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    ck_assert_ptr_nonnull(doc);
    const json_t *rows = json_object_get(doc, "rows");
    for (size_t i = 0; i < json_array_size(rows); i++) {
        json_t *row = json_array_get(rows, i);
        if (dtype)
            json_object_set_new(row, "dtype", json_string(dtype));
        else
            json_object_del(row, "dtype");
    }
    ck_assert_int_eq(json_dump_file(doc, path, 0), 0);
    json_decref(doc);
}

/* Rows match only within their dtype; a saved row without one is f32. */
START_TEST(compare_by_dtype)
{
    bench_run run;
    bt_sample_run(&run);
    run.rows[0].pt.dtype = DIPOLE_F16;
    char path[] = "/tmp/dipole-bench-test-XXXXXX";
    const int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    ck_assert_int_eq(bench_write_json(f, &run), 0);
    fclose(f);
    run.rows[0].median_ms = 1.0;
    char *out = compare_text(&run, path);
    ck_assert_msg(strstr(out, "geometric mean ratio 2.000 over 1") && strstr(out, " f16 "), "%s",
                  out);
    free(out);
    run.rows[0].pt.dtype = DIPOLE_BF16; /* the saved row is f16: no counterpart */
    out = compare_text(&run, path);
    ck_assert_msg(strstr(out, "no row matched; 1 row(s) without a counterpart"), "%s", out);
    free(out);
    set_saved_dtype(path, NULL);
    out = compare_text(&run, path);
    ck_assert_msg(strstr(out, "no row matched"), "%s", out);
    free(out);
    run.rows[0].pt.dtype = DIPOLE_F32;
    out = compare_text(&run, path);
    ck_assert_msg(strstr(out, "geometric mean ratio 2.000 over 1"), "%s", out);
    free(out);
    set_saved_dtype(path, "f64"); /* not a dtype: that saved row is left out */
    out = compare_text(&run, path);
    ck_assert_msg(strstr(out, "no row matched"), "%s", out);
    free(out);
    unlink(path);
    free(run.rows);
}
END_TEST

START_TEST(table_columns)
{
    bench_run run;
    bt_sample_run(&run);
    run.rows[0].pt.dtype = DIPOLE_BF16;
    run.rows[0].over_f32 = 0.625;
    char *out = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&out, &len);
    bench_print_table(m, &run);
    fclose(m);
    /* dtype and kv after path, x_f32 and x_kv after x_sm */
    ck_assert_msg(strstr(out, " path  dtype kv   BxHq:Hkv ") && strstr(out, " x_sm x_f32  x_kv "),
                  "%s", out);
    ck_assert_msg(strstr(out, " tiled bf16  -    1x4:4 ") && strstr(out, " 0.62 "), "%s", out);
    ck_assert_msg(strstr(out, " gemm  f32   -    1x4:4 "), "%s", out);
    free(out);
    free(run.rows);
}
END_TEST

/* A packed twin in every output: kv "pack" and x_pad in the table with its lengths below,
 * batching, seed, tokens, lengths and padded_over_packed in JSON, and --compare matching it
 * only with a saved packed row of the same seed. */
START_TEST(varlen_outputs)
{
    bench_run run;
    bt_sample_run(&run);
    bench_row *pk = &run.rows[1];
    *pk = run.rows[0];
    pk->pt.batch = 3;
    pk->pt.batching = BENCH_PACKED;
    pk->pt.varlen_seed = 9;
    pk->padded_over_packed = 1.25;
    int len[3];
    for (int b = 0; b < 3; b++)
        len[b] = bench_seq_length(&pk->pt, b);
    char *out = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&out, &n);
    bench_print_table(m, &run);
    fclose(m);
    char want[128];
    snprintf(want, sizeof want, "varlen B 3 N 128 seed 9: lengths %d,%d,%d; pack %d rows, pad 3x%d",
             len[0], len[1], len[2], len[0] + len[1] + len[2], bench_max_length(&pk->pt));
    ck_assert_msg(strstr(out, " x_kv x_pad ") && strstr(out, " tiled f32   pack 3x4:4 ") &&
                      strstr(out, " 1.25 ") && strstr(out, want),
                  "%s", out);
    free(out);

    char *text = capture(bench_write_json, &run);
    json_error_t jerr;
    json_t *doc = json_loads(text, 0, &jerr);
    ck_assert_msg(doc != NULL, "%s (line %d)\n%s", jerr.text, jerr.line, text);
    const json_t *rows = json_object_get(doc, "rows");
    const json_t *r0 = json_array_get(rows, 0), *r1 = json_array_get(rows, 1);
    ck_assert_str_eq(json_string_value(json_object_get(r0, "batching")), "fixed");
    ck_assert(json_is_null(json_object_get(r0, "lengths")));
    ck_assert(json_is_null(json_object_get(r0, "padded_over_packed")));
    ck_assert_str_eq(json_string_value(json_object_get(r1, "batching")), "packed");
    ck_assert_double_eq(json_number_value(json_object_get(r1, "varlen_seed")), 9);
    ck_assert_double_eq(json_number_value(json_object_get(r1, "tokens")),
                        len[0] + len[1] + len[2]);
    const json_t *jl = json_object_get(r1, "lengths");
    ck_assert_int_eq(json_array_size(jl), 3);
    for (int b = 0; b < 3; b++)
        ck_assert_double_eq(json_number_value(json_array_get(jl, (size_t)b)), len[b]);
    ck_assert_double_eq(json_number_value(json_object_get(r1, "padded_over_packed")), 1.25);
    json_decref(doc);
    free(text);

    char path[] = "/tmp/dipole-bench-test-XXXXXX";
    const int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    ck_assert_int_eq(bench_write_json(f, &run), 0);
    fclose(f);
    pk->median_ms = 0.5; /* 2 ms saved: 4x faster; the fixed row 2 ms: 1x */
    out = compare_text(&run, path);
    ck_assert_msg(strstr(out, "geometric mean ratio 2.000 over 2"), "%s", out);
    free(out);
    pk->pt.varlen_seed = 10; /* other lengths: no saved row */
    out = compare_text(&run, path);
    ck_assert_msg(strstr(out, "geometric mean ratio 1.000 over 1"), "%s", out);
    free(out);
    unlink(path);
    free(run.rows);
}
END_TEST

START_TEST(plot_script)
{
    bench_run run;
    bt_sample_run(&run);
    char *out = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&out, &len);
    ck_assert_int_eq(bench_plot_script(m, &run, "it's.svg"), 0);
    fclose(m);
    ck_assert_ptr_nonnull(strstr(out, "set terminal svg"));
    ck_assert_ptr_nonnull(strstr(out, "set output 'it''s.svg'"));
    char data[64];
    snprintf(data, sizeof data, "128 %.6g\n", run.rows[0].gflops);
    ck_assert_msg(strstr(out, data) != NULL, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "'softmax tiled 1x4:4'")); /* f32: no dtype */
    ck_assert_ptr_null(strstr(out, "softmax gemm")); /* not ok: not plotted */
    free(out);
    /* Another dtype is its own line, named. */
    run.rows[1] = run.rows[0];
    run.rows[1].pt.dtype = DIPOLE_F16;
    m = open_memstream(&out, &len);
    ck_assert_int_eq(bench_plot_script(m, &run, "r.svg"), 0);
    fclose(m);
    ck_assert_msg(strstr(out, "'softmax tiled 1x4:4'") && strstr(out, "$p0s1 << EOD") &&
                      strstr(out, "'softmax tiled f16 1x4:4'"),
                  "%s", out);
    free(out);
    run.rows[1].status = BENCH_UNSUPPORTED;
    m = open_memstream(&out, &len);
    ck_assert_int_eq(bench_plot_script(m, &run, "r.png"), 0);
    fclose(m);
    ck_assert_ptr_nonnull(strstr(out, "pngcairo"));
    free(out);
    run.rows[0].status = BENCH_ERROR;
    m = open_memstream(&out, &len);
    ck_assert_int_eq(bench_plot_script(m, &run, "r.svg"), -1);
    fclose(m);
    free(out);
    free(run.rows);
}
END_TEST

Suite *bench_reports_suite(void)
{
    Suite *s = suite_create("reports");
    TCase *tc = tcase_create("reports");
    tcase_add_test(tc, csv_writer);
    tcase_add_test(tc, json_writer_roundtrip);
    tcase_add_test(tc, compare_with_saved_run);
    tcase_add_test(tc, compare_by_dtype);
    tcase_add_test(tc, table_columns);
    tcase_add_test(tc, plot_script);
    tcase_add_test(tc, varlen_outputs);
    suite_add_tcase(s, tc);
    return s;
}
