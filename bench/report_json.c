/* --json: the whole run with a format version, devices with their ceilings, and every row
 * with its status and reason. Non-finite numbers are written as null. */
#include <math.h>
#include <stdio.h>

#include "bench.h"

static void jstr(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        const unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void jnum(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.9g", v);
    else
        fputs("null", f);
}

static void kv_str(FILE *f, const char *k, const char *v, const char *sep)
{
    fprintf(f, "\"%s\": ", k);
    jstr(f, v);
    fputs(sep, f);
}

static void kv_num(FILE *f, const char *k, double v, const char *sep)
{
    fprintf(f, "\"%s\": ", k);
    jnum(f, v);
    fputs(sep, f);
}

/* A --varlen twin's batching, seed, real tokens and lengths (null for a fixed batch). */
static void varlen_fields(FILE *f, const bench_point *p)
{
    kv_str(f, "batching", bench_batching_name(p->batching), ", ");
    kv_num(f, "varlen_seed", p->batching != BENCH_FIXED ? (double)p->varlen_seed : NAN, ", ");
    kv_num(f, "tokens", bench_total_tokens(p), ", ");
    fputs("\"lengths\": ", f);
    if (p->batching == BENCH_FIXED) {
        fputs("null", f);
    } else {
        for (int b = 0; b < p->batch; b++)
            fprintf(f, "%s%d", b ? ", " : "[", bench_seq_length(p, b));
        fputc(']', f);
    }
    fputs(",\n     ", f);
}

int bench_write_json(FILE *f, const bench_run *run)
{
    fprintf(f, "{\n  \"format_version\": %d,\n  ", BENCH_FORMAT_VERSION);
    kv_str(f, "tool", "dipole-bench", ",\n  ");
    kv_str(f, "dipole_version", dipole_version(), ",\n  ");
    kv_str(f, "command", run->command, ",\n  ");
    kv_str(f, "date", run->date, ",\n  ");
    kv_str(f, "flops",
           "sum over batch, heads_q and visible (query, key) pairs of 4*d (TWO_POLE 6*d); "
           "backward 2.5x forward; packed and padded rows count their real tokens only",
           ",\n  ");
    kv_str(f, "bytes",
           "q, k, v, (v2), out once (backward: + dout, dq, dk, dv, (dv2)), in the row's dtype",
           ",\n");
    fputs("  \"devices\": [\n", f);
    for (int i = 0; i < run->ndev; i++) {
        const bench_device *d = &run->dev[i];
        const bench_ceilings *c = &d->ceil;
        fprintf(f, "    {\"index\": %d, ", i);
        kv_str(f, "selector", d->selector, ", ");
        kv_str(f, "label", d->label, ", ");
        kv_str(f, "platform", d->platform, ", ");
        kv_str(f, "name", d->name, ", ");
        kv_str(f, "driver_version", d->driver, ", ");
        kv_str(f, "device_version", d->version, ", ");
        kv_str(f, "type", d->cpu ? "cpu" : "gpu", ", ");
        fprintf(f, "\"compute_units\": %u, \"clock_mhz\": %u, \"local_mem_bytes\": %llu, "
                   "\"global_mem_bytes\": %llu, \"max_alloc_bytes\": %llu, "
                   "\"max_work_group\": %zu, \"fp16\": %s, \"fp64\": %s, \"profiling\": %s,\n",
                d->compute_units, d->clock_mhz, d->local_mem, d->global_mem, d->max_alloc,
                d->max_work_group, d->fp16 ? "true" : "false", d->fp64 ? "true" : "false",
                d->profiling ? "true" : "false");
        fputs("     \"ceilings\": {", f);
        kv_num(f, "fma_gflops", c->fma_gflops > 0 ? c->fma_gflops : NAN, ", ");
        kv_str(f, "fma_kernel", c->fma_kernel, ", ");
        kv_num(f, "sgemm_gflops", c->sgemm_gflops > 0 ? c->sgemm_gflops : NAN, ", ");
        kv_num(f, "sgemm_n", c->sgemm_n > 0 ? c->sgemm_n : NAN, ", ");
        kv_num(f, "copy_gbps", c->copy_gbps > 0 ? c->copy_gbps : NAN, ", ");
        kv_num(f, "copy_bytes", c->copy_bytes > 0 ? (double)c->copy_bytes : NAN, ", ");
        kv_str(f, "note", c->note, "}}");
        fputs(i + 1 < run->ndev ? ",\n" : "\n", f);
    }
    fputs("  ],\n  \"rows\": [\n", f);
    for (int i = 0; i < run->nrows; i++) {
        const bench_row *r = &run->rows[i];
        const bench_point *p = &r->pt;
        const bool timed = r->median_ms > 0;
        fprintf(f, "    {\"device\": %d, ", p->device);
        kv_str(f, "pass", bench_pass_name(p->pass), ", ");
        kv_str(f, "variant", dipole_variant_name(p->variant), ", ");
        kv_str(f, "path", dipole_path_name(p->path), ", ");
        kv_str(f, "dtype", dipole_dtype_name(p->dtype), ", ");
        fprintf(f, "\"page_size\": %d, ", p->page_size);
        fprintf(f, "\"batch\": %d, \"heads_q\": %d, \"heads_kv\": %d, \"seq_q\": %d, "
                   "\"seq_k\": %d, \"head_dim\": %d, \"causal\": %s,\n     ",
                p->batch, p->heads_q, p->heads_kv, p->seq_q, p->seq_k, p->head_dim,
                p->causal ? "true" : "false");
        varlen_fields(f, p);
        fprintf(f, "\"head_dim_v\": %d, \"two_sm\": %s, ", bench_head_dim_v(p),
                p->two_sm ? "true" : "false");
        kv_str(f, "status", bench_status_name(r->status), ", ");
        kv_str(f, "reason", r->reason, ", ");
        kv_str(f, "plan", r->plan, ",\n     ");
        kv_num(f, "flops", bench_flops(p), ", ");
        kv_num(f, "bytes", bench_bytes(p), ", ");
        kv_num(f, "first_ms", timed ? r->first_ms : NAN, ", ");
        kv_num(f, "jit_ms", timed ? r->jit_ms : NAN, ", ");
        kv_str(f, "cache", r->cache, ", ");
        kv_str(f, "timer", r->timer, ", ");
        kv_num(f, "reps", timed ? r->reps : NAN, ",\n     ");
        kv_num(f, "median_ms", timed ? r->median_ms : NAN, ", ");
        kv_num(f, "min_ms", timed ? r->min_ms : NAN, ", ");
        kv_num(f, "gflops", timed ? r->gflops : NAN, ", ");
        kv_num(f, "gbps", timed ? r->gbps : NAN, ", ");
        kv_num(f, "pct_fma", r->pct_fma, ", ");
        kv_num(f, "pct_sgemm", r->pct_sgemm, ", ");
        kv_num(f, "pct_copy", r->pct_copy, ", ");
        kv_num(f, "tiled_over_gemm", r->tiled_over_gemm, ", ");
        kv_num(f, "time_over_softmax", r->over_softmax, ", ");
        kv_num(f, "over_f32", r->over_f32, ", ");
        kv_num(f, "over_dense", r->over_dense, ", ");
        kv_num(f, "padded_over_packed", r->padded_over_packed, ", ");
        kv_num(f, "two_sm_over_fused", r->two_sm_over_fused, ",\n     ");
        fprintf(f, "\"checked_rows\": %d, ", r->checked_rows);
        kv_num(f, "max_abs_err", r->checked_rows ? r->max_abs_err : NAN, ", ");
        kv_num(f, "worst_tolerance_ratio", r->checked_rows ? r->worst_ratio : NAN, "}");
        fputs(i + 1 < run->nrows ? ",\n" : "\n", f);
    }
    fputs("  ]\n}\n", f);
    return ferror(f) ? -1 : 0;
}
