/* The grid: per-device defaults for every list the user did not give, and its expansion into
 * points in table order (prefill then decode, head_dim, batch x heads, causal, seq, variant,
 * dtype, path, pass, then a point's paged or --varlen twins). */
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static void set_ilist(bench_ilist *l, const int *v, int n)
{
    if (l->set)
        return;
    l->n = n;
    memcpy(l->v, v, sizeof(int) * (size_t)n);
}

static void set_bh(bench_bhlist *l, bench_bh bh)
{
    if (l->set)
        return;
    l->n = 1;
    l->v[0] = bh;
}

void bench_grid_defaults(const bench_opts *o, bool cpu, bench_opts *out)
{
    static const int variants[] = {DIPOLE_SOFTMAX, DIPOLE_SIGNEXP, DIPOLE_ROUTED, DIPOLE_TWO_POLE,
                                   DIPOLE_DIFF};
    static const int causal[] = {0, 1};
    static const int paths[] = {DIPOLE_PATH_TILED, DIPOLE_PATH_GEMM};
    static const int dtypes[] = {DIPOLE_F32};
    static const int d_gpu[] = {64, 128}, d_cpu[] = {64};
    static const int n_quick[] = {128, 256}, n_cpu[] = {256, 512, 1024};
    static const int n_gpu[] = {512, 1024, 2048, 4096, 8192};
    *out = *o;
    set_ilist(&out->variants, variants, o->diff_twin ? 5 : 4); /* --diff: DIFF too */
    set_ilist(&out->causal, causal, 2);
    set_ilist(&out->paths, paths, 2);
    set_ilist(&out->dtypes, dtypes, 1);
    /* --varlen: a batch of one has nothing to pad, so the default shapes trade heads for
     * sequences at the same batch x heads (quick 4x1, CPU 4x2, GPU 8x4). */
    const int vb = o->varlen ? 4 : 1;
    if (o->quick) {
        set_ilist(&out->head_dims, d_cpu, 1);
        set_ilist(&out->seqs, n_quick, 2);
        set_bh(&out->bh, (bench_bh){vb, 4 / vb, 4 / vb});
    } else if (cpu) {
        set_ilist(&out->head_dims, d_cpu, 1);
        set_ilist(&out->seqs, n_cpu, 3);
        set_bh(&out->bh, (bench_bh){vb, 8 / vb, 8 / vb});
    } else {
        set_ilist(&out->head_dims, d_gpu, 2);
        set_ilist(&out->seqs, n_gpu, 5);
        set_bh(&out->bh, (bench_bh){2 * vb, 16 / vb, 16 / vb});
    }
    if (!o->budget_set)
        out->budget_ms = o->quick ? 20 : cpu ? 100 : 200;
    if (!o->max_call_set)
        out->max_call_ms = cpu ? 3000 : 5000;
}

/* The rows of one shape (device, sizes, mask filled in): every variant, dtype, path and pass
 * back to back, so that their ratios (x_sm, x_f32, t/g) come from one stretch of time on a
 * shared or throttling machine. Returns the count written to p. */
static int expand_shape(const bench_opts *o, const bench_point *shape, bench_point *p)
{
    const int npass = o->backward ? 2 : 1;
    int n = 0;
    for (int a = 0; a < o->variants.n; a++)
        for (int t = 0; t < o->dtypes.n; t++)
            for (int g = 0; g < o->paths.n; g++)
                for (int pass = 0; pass < npass; pass++) {
                    bench_point *q = &p[n++];
                    *q = *shape;
                    q->variant = (dipole_variant)o->variants.v[a];
                    q->dtype = (dipole_dtype)o->dtypes.v[t];
                    q->path = (dipole_path)o->paths.v[g];
                    q->pass = (bench_pass)pass;
                    /* a DIFF row's two-SOFTMAX twin right after it, as the others */
                    if (o->diff_twin && q->variant == DIPOLE_DIFF) {
                        p[n] = *q;
                        p[n++].two_sm = true;
                    }
                    /* its paged twin right after it, for the ratio in one stretch of time */
                    if (o->page_size > 0 && shape->seq_q == 1 && pass == BENCH_FWD) {
                        p[n] = *q;
                        p[n++].page_size = o->page_size;
                    }
                    /* and a prefill row's packed and padded twins, for the same reason */
                    if (o->varlen && shape->seq_q == shape->seq_k && shape->seq_q > 1)
                        for (int t = BENCH_PACKED; t <= BENCH_PADDED; t++) {
                            p[n] = *q;
                            p[n].batching = (bench_batching)t;
                            p[n++].varlen_seed = o->varlen_seed;
                        }
                }
    return n;
}

int bench_grid_expand(const bench_opts *o, int device, bench_point **points)
{
    const int npass = o->backward ? 2 : 1;
    const int per = o->variants.n * o->dtypes.n * o->head_dims.n * o->bh.n * o->paths.n *
                    o->seqs.n * npass;
    /* prefill rows with up to two --varlen twins each; decode rows with up to one paged twin */
    const size_t cap = (size_t)per * ((size_t)o->causal.n * (o->varlen ? 3 : 1) +
                                      (o->decode ? 2 : 0)) * (o->diff_twin ? 2 : 1) + 1;
    bench_point *p = calloc(cap, sizeof *p);
    if (!p)
        return -1;
    int n = 0;
    /* Decode rows use one causal value: with bottom-right alignment a single query row sees
     * every key either way. */
    for (int decode = o->decode_only ? 1 : 0; decode <= (o->decode ? 1 : 0); decode++)
        for (int b = 0; b < o->head_dims.n; b++)
            for (int c = 0; c < o->bh.n; c++)
                for (int e = 0; e < (decode ? 1 : o->causal.n); e++)
                    for (int f = 0; f < o->seqs.n; f++) {
                        bench_point shape = {0};
                        shape.device = device;
                        shape.head_dim = o->head_dims.v[b];
                        shape.head_dim_v = o->head_dim_v;
                        shape.batch = o->bh.v[c].batch;
                        shape.heads_q = o->bh.v[c].heads_q;
                        shape.heads_kv = o->bh.v[c].heads_kv;
                        shape.causal = o->causal.v[e];
                        shape.seq_k = o->seqs.v[f];
                        shape.seq_q = decode ? 1 : o->seqs.v[f];
                        n += expand_shape(o, &shape, p + n);
                    }
    *points = p;
    return n;
}
