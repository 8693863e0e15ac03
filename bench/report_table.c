/* The human table on stdout: one line per row, ceilings per device, reasons as footnotes. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"

static const char *num(char *buf, size_t cap, double v, int prec)
{
    if (!isfinite(v))
        snprintf(buf, cap, "-");
    else
        snprintf(buf, cap, "%.*f", prec, v);
    return buf;
}

static void print_device(FILE *f, int i, const bench_device *d)
{
    const bench_ceilings *c = &d->ceil;
    fprintf(f, "device %d (%s): %s\n", i, d->selector, d->label);
    fprintf(f, "  %u compute units, %u MHz, local %llu KiB, global %llu MiB, driver %s, timer %s\n",
            d->compute_units, d->clock_mhz, d->local_mem >> 10, d->global_mem >> 20, d->driver,
            d->profiling ? "events" : "wall clock");
    char a[32], b[32], e[32];
    fprintf(f, "  ceilings: FMA peak %s GFLOP/s (%s), SGEMM %s GFLOP/s (n=%d), copy %s GB/s%s%s\n",
            num(a, sizeof a, c->fma_gflops > 0 ? c->fma_gflops : NAN, 1),
            c->fma_kernel[0] ? c->fma_kernel : "-",
            num(b, sizeof b, c->sgemm_gflops > 0 ? c->sgemm_gflops : NAN, 1), c->sgemm_n,
            num(e, sizeof e, c->copy_gbps > 0 ? c->copy_gbps : NAN, 1), c->note[0] ? "; " : "",
            c->note);
}

/* The lengths behind each distinct --varlen point (batch, seq, seed), once: the table's rows
 * name the point by its nominal B and N only. */
static void print_lengths(FILE *f, const bench_run *run)
{
    for (int i = 0; i < run->nrows; i++) {
        const bench_point *p = &run->rows[i].pt;
        if (p->batching != BENCH_PACKED)
            continue;
        int j = 0;
        while (j < i && !(run->rows[j].pt.batching == BENCH_PACKED &&
                          run->rows[j].pt.batch == p->batch && run->rows[j].pt.seq_q == p->seq_q &&
                          run->rows[j].pt.varlen_seed == p->varlen_seed))
            j++;
        if (j < i)
            continue;
        fprintf(f, "varlen B %d N %d seed %u: lengths", p->batch, p->seq_q, p->varlen_seed);
        for (int b = 0; b < p->batch && b < 16; b++)
            fprintf(f, "%s%d", b ? "," : " ", bench_seq_length(p, b));
        fprintf(f, "%s; pack %d rows, pad %dx%d\n", p->batch > 16 ? ",..." : "",
                bench_total_tokens(p), p->batch, bench_max_length(p));
    }
}

void bench_print_table(FILE *f, const bench_run *run)
{
    for (int i = 0; i < run->ndev; i++)
        print_device(f, i, &run->dev[i]);
    fprintf(f, "\n%-3s %-4s %-8s %-5s %-5s %-4s %-9s %6s %6s %4s %-3s %-12s %9s %-6s %9s %9s %9s "
               "%8s %6s %6s %6s %5s %5s %5s %5s %5s %5s %8s\n",
            "dev", "pass", "variant", "path", "dtype", "kv", "BxHq:Hkv", "Nq", "Nk", "d", "cau",
            "status", "first_ms", "cache", "median_ms", "min_ms", "GFLOP/s", "GB/s", "%FMA",
            "%SGEMM", "%copy", "t/g", "x_sm", "x_f32", "x_kv", "x_pad", "x_2sm", "max_err");
    /* Reasons repeat (every gemm row says the same), so each distinct one is printed once. */
    const char *reasons[64];
    int nreasons = 0;
    for (int i = 0; i < run->nrows; i++) {
        const bench_row *r = &run->rows[i];
        const bench_point *p = &r->pt;
        char bh[32], st[32], kv[16], c[15][32];
        snprintf(bh, sizeof bh, "%dx%d:%d", p->batch, p->heads_q, p->heads_kv);
        bench_kv_label(p, kv, sizeof kv);
        snprintf(st, sizeof st, "%s", bench_status_name(r->status));
        if (r->status != BENCH_OK && r->reason[0]) {
            int k = 0;
            while (k < nreasons && strcmp(reasons[k], r->reason) != 0)
                k++;
            if (k == nreasons && nreasons < 64)
                reasons[nreasons++] = r->reason;
            if (k < 64)
                snprintf(st, sizeof st, "%s[%d]", bench_status_name(r->status), k + 1);
        }
        const bool timed = r->median_ms > 0;
        fprintf(f,
                "%-3d %-4s %-8s %-5s %-5s %-4s %-9s %6d %6d %4d %-3s %-12s %9s %-6s %9s %9s %9s %8s "
                "%6s %6s %6s %5s %5s %5s %5s %5s %5s %8s\n",
                p->device, bench_pass_name(p->pass), dipole_variant_name(p->variant),
                dipole_path_name(p->path), dipole_dtype_name(p->dtype), kv, bh, p->seq_q, p->seq_k,
                p->head_dim,
                p->causal ? "on" : "off", st, num(c[0], 32, timed ? r->first_ms : NAN, 1),
                r->cache, num(c[1], 32, timed ? r->median_ms : NAN, 3),
                num(c[2], 32, timed ? r->min_ms : NAN, 3), num(c[3], 32, timed ? r->gflops : NAN, 2),
                num(c[4], 32, timed ? r->gbps : NAN, 2), num(c[5], 32, r->pct_fma, 1),
                num(c[6], 32, r->pct_sgemm, 1), num(c[7], 32, r->pct_copy, 1),
                num(c[8], 32, r->tiled_over_gemm, 2), num(c[10], 32, r->over_softmax, 2),
                num(c[11], 32, r->over_f32, 2), num(c[12], 32, r->over_dense, 2),
                num(c[13], 32, r->padded_over_packed, 2), num(c[14], 32, r->two_sm_over_fused, 2),
                r->checked_rows ? (snprintf(c[9], 32, "%.1e", r->max_abs_err), c[9]) : "-");
    }
    for (int k = 0; k < nreasons; k++)
        fprintf(f, "[%d] %s\n", k + 1, reasons[k]);
    print_lengths(f, run);
}
