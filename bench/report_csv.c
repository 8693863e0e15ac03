/* --csv: one line per row, RFC 4180 quoting; empty cells where a value does not apply. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"

static void cell_str(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\n\r")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void cell_num(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.6g", v);
}

int bench_write_csv(FILE *f, const bench_run *run)
{
    fputs("device,pass,variant,path,batch,heads_q,heads_kv,seq_q,seq_k,head_dim,causal,status,"
          "reason,first_ms,jit_ms,cache,timer,reps,median_ms,min_ms,gflops,gbps,pct_fma,"
          "pct_sgemm,pct_copy,tiled_over_gemm,checked_rows,max_abs_err,time_over_softmax,dtype,"
          "over_f32,page_size,over_dense,batching,varlen_seed,tokens,padded_over_packed,head_dim_v,"
          "two_sm,two_sm_over_fused\n",
          f);
    for (int i = 0; i < run->nrows; i++) {
        const bench_row *r = &run->rows[i];
        const bench_point *p = &r->pt;
        const bool timed = r->median_ms > 0;
        cell_str(f, run->dev[p->device].label);
        fprintf(f, ",%s,%s,%s,%d,%d,%d,%d,%d,%d,%d,%s,", bench_pass_name(p->pass),
                dipole_variant_name(p->variant), dipole_path_name(p->path), p->batch, p->heads_q,
                p->heads_kv, p->seq_q, p->seq_k, p->head_dim, p->causal,
                bench_status_name(r->status));
        cell_str(f, r->reason);
        const double t[] = {timed ? r->first_ms : NAN, timed ? r->jit_ms : NAN};
        for (int k = 0; k < 2; k++) {
            fputc(',', f);
            cell_num(f, t[k]);
        }
        fprintf(f, ",%s,%s,", r->cache, r->timer);
        if (timed)
            fprintf(f, "%d", r->reps);
        const double v[] = {timed ? r->median_ms : NAN, timed ? r->min_ms : NAN,
                            timed ? r->gflops : NAN,    timed ? r->gbps : NAN,
                            r->pct_fma,                 r->pct_sgemm,
                            r->pct_copy,                r->tiled_over_gemm};
        for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
            fputc(',', f);
            cell_num(f, v[k]);
        }
        fprintf(f, ",%d,", r->checked_rows);
        cell_num(f, r->checked_rows ? r->max_abs_err : NAN);
        /* Later columns go last, so that readers of the earlier ones by position still work. */
        fputc(',', f);
        cell_num(f, r->over_softmax);
        fprintf(f, ",%s,", dipole_dtype_name(p->dtype));
        cell_num(f, r->over_f32);
        fprintf(f, ",%d,", p->page_size);
        cell_num(f, r->over_dense);
        fprintf(f, ",%s,", bench_batching_name(p->batching));
        if (p->batching != BENCH_FIXED)
            fprintf(f, "%u", p->varlen_seed);
        fprintf(f, ",%d,", bench_total_tokens(p));
        cell_num(f, r->padded_over_packed);
        fprintf(f, ",%d,%d,", bench_head_dim_v(p), p->two_sm ? 1 : 0);
        cell_num(f, r->two_sm_over_fused);
        fputc('\n', f);
    }
    return ferror(f) ? -1 : 0;
}
