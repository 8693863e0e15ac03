/* Paged decode rows (--paged): the point's contiguous K, V (V2) written into page pools by
 * dipole_paged_kv_write, the way an engine fills its cache, with the pages of every sequence
 * handed out in shuffled order so that consecutive pages are not neighbours in memory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static int fail(char *err, size_t cap, dipole_ctx *ctx, const char *what, int status)
{
    snprintf(err, cap, "%s: %s", what,
             ctx && *dipole_ctx_last_error(ctx) ? dipole_ctx_last_error(ctx)
                                                : dipole_status_string((dipole_status)status));
    return -1;
}

int bench_paged_make(dipole_ctx *ctx, const bench_point *p, const dipole_tensor *src,
                     bench_paged *pg, char *err, size_t cap)
{
    memset(pg, 0, sizeof *pg);
    const int ps = p->page_size, per_seq = (p->seq_k + ps - 1) / ps;
    const int pages = p->batch * per_seq;
    pg->kl = malloc(sizeof(int) * (size_t)p->batch);
    int *table = malloc(sizeof(int) * (size_t)pages);
    int *pos = malloc(sizeof(int) * (size_t)p->batch * (size_t)p->seq_k);
    if (!pg->kl || !table || !pos) {
        free(table);
        free(pos);
        snprintf(err, cap, "out of host memory for the block table");
        return -1;
    }
    unsigned long long s = 0x2545f4914f6cdd1dull;
    for (int i = 0; i < pages; i++)
        table[i] = i;
    for (int i = pages - 1; i > 0; i--) { /* Fisher-Yates */
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        const int j = (int)(s % (unsigned long long)(i + 1)), t = table[i];
        table[i] = table[j];
        table[j] = t;
    }
    for (int b = 0; b < p->batch; b++) {
        pg->kl[b] = p->seq_k;
        for (int j = 0; j < p->seq_k; j++)
            pos[(size_t)b * p->seq_k + (size_t)j] = j;
    }
    cl_context context = dipole_ctx_cl_context(ctx);
    cl_int e;
    int rc = 0;
    pg->table = clCreateBuffer(context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                               sizeof(int) * (size_t)pages, table, &e);
    const int npools = bench_reads_v2(p->variant) ? 3 : 2;
    for (int i = 0; i < npools && e == CL_SUCCESS; i++) {
        /* k's heads (DIFF: two a KV head) and head dim, or v's head_dim_v */
        const int heads = i == 0 ? bench_score_maps(p->variant) * p->heads_kv : p->heads_kv;
        const int dim = i == 0 ? p->head_dim : bench_head_dim_v(p);
        const size_t bytes = (size_t)pages * (size_t)ps * (size_t)heads * (size_t)dim *
                             dipole_dtype_size(p->dtype);
        pg->pool[i] = clCreateBuffer(context, CL_MEM_READ_WRITE, bytes, NULL, &e);
        pg->t[i] = dipole_tensor_dense(pg->pool[i], ps, heads, dim);
    }
    if (e != CL_SUCCESS)
        rc = fail(err, cap, NULL, "allocating the page pools", e);
    pg->paged = (dipole_paged_kv){pg->table, per_seq, ps};
    if (rc == 0) {
        dipole_attn_desc d;
        dipole_attn_desc_default(&d);
        d.variant = p->variant;
        d.dtype = p->dtype;
        d.batch = p->batch;
        d.heads_q = p->heads_q;
        d.heads_kv = p->heads_kv;
        d.seq_q = p->seq_q;
        d.seq_k = p->seq_k;
        d.head_dim = p->head_dim;
        d.head_dim_v = p->head_dim_v;
        const dipole_status st = dipole_paged_kv_write(
            ctx, &d, &pg->paged, p->seq_k, pos, &src[0], &src[1], npools > 2 ? &src[2] : NULL,
            &pg->t[0], &pg->t[1], npools > 2 ? &pg->t[2] : NULL, NULL);
        if (st != DIPOLE_SUCCESS)
            rc = fail(err, cap, ctx, "dipole_paged_kv_write", st);
    }
    free(table);
    free(pos);
    if (rc != 0)
        bench_paged_free(pg);
    return rc;
}

void bench_paged_free(bench_paged *pg)
{
    for (int i = 0; i < 3; i++)
        if (pg->pool[i])
            clReleaseMemObject(pg->pool[i]);
    if (pg->table)
        clReleaseMemObject(pg->table);
    free(pg->kl);
    memset(pg, 0, sizeof *pg);
}
