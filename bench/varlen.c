/* The --varlen twins: sequence lengths drawn per point, and the layouts the packed and padded
 * calls read. A length is a pure function of (seed, batch, seq, b), so every part of the
 * bench (grid, metrics, sweep, validation, reports) derives the same lengths without a table
 * travelling with the point. */
#include <stdlib.h>

#include "bench.h"

/* splitmix64's finaliser: a well-mixed 64-bit hash of one counter. */
static unsigned long long mix(unsigned long long x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int bench_seq_length(const bench_point *p, int b)
{
    if (p->batching == BENCH_FIXED)
        return p->seq_q;
    const int n = p->seq_q, lo = n / 8 > 1 ? n / 8 : 1;
    const unsigned long long h = mix(mix(mix((unsigned long long)p->varlen_seed) ^
                                         ((unsigned long long)p->batch << 32 | (unsigned)n)) ^
                                     (unsigned long long)b);
    return lo + (int)(h % (unsigned long long)(n - lo + 1));
}

int bench_total_tokens(const bench_point *p)
{
    int t = 0;
    for (int b = 0; b < p->batch; b++)
        t += bench_seq_length(p, b);
    return t;
}

int bench_max_length(const bench_point *p)
{
    int m = 0;
    for (int b = 0; b < p->batch; b++) {
        const int l = bench_seq_length(p, b);
        m = l > m ? l : m;
    }
    return m;
}

bench_layout bench_point_layout(const bench_point *p)
{
    switch (p->batching) {
    case BENCH_PACKED: {
        const int t = bench_total_tokens(p);
        return (bench_layout){1, t, t};
    }
    case BENCH_PADDED: {
        const int m = bench_max_length(p);
        return (bench_layout){p->batch, m, m};
    }
    case BENCH_FIXED:
        break;
    }
    return (bench_layout){p->batch, p->seq_q, p->seq_k};
}

int *bench_cu_seqlens(const bench_point *p)
{
    int *cu = malloc(sizeof(int) * ((size_t)p->batch + 1));
    if (!cu)
        return NULL;
    cu[0] = 0;
    for (int b = 0; b < p->batch; b++)
        cu[b + 1] = cu[b] + bench_seq_length(p, b);
    return cu;
}

bench_seq_view bench_seq_of(const bench_point *p, const bench_layout *l, const int *cu, int b)
{
    switch (p->batching) {
    case BENCH_PACKED: {
        const int l = cu[b + 1] - cu[b];
        return (bench_seq_view){0, cu[b], cu[b], l, l};
    }
    case BENCH_PADDED: {
        /* Every query row of the padded batch runs; key_lengths stops the keys at L_b and
         * puts the causal diagonal at i + L_b - max_L. */
        return (bench_seq_view){b, 0, 0, l->rows_q, bench_seq_length(p, b)};
    }
    case BENCH_FIXED:
        break;
    }
    return (bench_seq_view){b, 0, 0, p->seq_q, p->seq_k};
}

const char *bench_batching_name(bench_batching b)
{
    return b == BENCH_PACKED ? "packed" : b == BENCH_PADDED ? "padded" : "fixed";
}
