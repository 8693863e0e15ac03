/* The paged KV cache (dipole_attention_paged, dipole_paged_kv_write). A case lays a contiguous
 * cache out in pages of a random block table (the pages shuffled through a pool with spare
 * pages, unused columns -1), then checks that the paged call gives the contiguous call's
 * result bit for bit on the tiled layouts (the same kernels, reading the same rows; the GEMM
 * path gathers, and is held to the reference bound) and the double reference within the
 * fp32 bounds of the forward suite (rtol 2^-10 / 2^-7 for fp16 / bf16 storage). Decode
 * (split-K on the CPU layout) and chunked prefill, page sizes 1, 16 and 256, GQA, every
 * variant, DIFF (two key heads a KV head) and value head dims of their own; the cache write
 * against a scatter done here (DIFF's pools included); every refusal before any kernel
 * runs, with the output left as it was. The suite runs again on the group layout
 * (paged-group). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define ATOL 3e-5
#define RTOL 3e-4

static cl_mem buffer_of(const void *host, size_t bytes)
{
    cl_int err;
    cl_mem m = clCreateBuffer(dipole_ctx_cl_context(tu_ctx()),
                              CL_MEM_READ_WRITE | (host ? CL_MEM_COPY_HOST_PTR : 0),
                              bytes ? bytes : 4, (void *)host, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    return m;
}

static void read_back(cl_mem m, void *host, size_t bytes)
{
    ck_assert_int_eq(clEnqueueReadBuffer(dipole_ctx_queue(tu_ctx()), m, CL_TRUE, 0, bytes, host,
                                         0, NULL, NULL),
                     CL_SUCCESS);
}

static uint64_t rng_next(uint64_t *s)
{
    *s += 0x9e3779b97f4a7c15ull;
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A contiguous cache [batch, seq_k, heads_kv, d] laid out in pages: pool [pages, page_size,
 * heads_kv, d] and block table [batch, max_pages]. */
typedef struct paged_layout {
    int page_size, max_pages, pages;
    int *table;
} paged_layout;

/* Pages for each sequence's key length, drawn in shuffled order from a pool with `spare`
 * pages nobody uses; columns past a sequence's pages are -1. */
static paged_layout layout_make(const dipole_attn_desc *d, int page_size, int spare,
                                uint64_t seed)
{
    paged_layout pl = {page_size, (d->seq_k + page_size - 1) / page_size, 0, NULL};
    for (int b = 0; b < d->batch; b++)
        pl.pages += (d->key_lengths[b] + page_size - 1) / page_size;
    pl.pages += spare;
    int *perm = malloc(sizeof(int) * (size_t)pl.pages);
    ck_assert_ptr_nonnull(perm);
    for (int i = 0; i < pl.pages; i++)
        perm[i] = i;
    uint64_t s = seed;
    for (int i = pl.pages - 1; i > 0; i--) {
        const int j = (int)(rng_next(&s) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    pl.table = malloc(sizeof(int) * (size_t)d->batch * (size_t)pl.max_pages);
    ck_assert_ptr_nonnull(pl.table);
    int next = 0;
    for (int b = 0; b < d->batch; b++)
        for (int c = 0; c < pl.max_pages; c++)
            pl.table[b * pl.max_pages + c] =
                c * page_size < d->key_lengths[b] ? perm[next++] : -1;
    free(perm);
    return pl;
}

/* Score maps (DIFF: q and k hold two heads a head) and the value head dim of d. */
static int maps_of(const dipole_attn_desc *d)
{
    return d->variant == DIPOLE_DIFF ? 2 : 1;
}
static int dim_v_of(const dipole_attn_desc *d)
{
    return d->head_dim_v ? d->head_dim_v : d->head_dim;
}

/* The heads and dim of a row of pool i (k, v, v2), and of its contiguous cache: k's heads
 * (DIFF: two a KV head) and head dim, or v's heads and head_dim_v. */
static int pool_heads(const dipole_attn_desc *d, int i)
{
    return i == 0 ? maps_of(d) * d->heads_kv : d->heads_kv;
}
static int pool_dim(const dipole_attn_desc *d, int i)
{
    return i == 0 ? d->head_dim : dim_v_of(d);
}

/* Pool i's tensor over m (rows: page_size), or its contiguous cache's or new tokens' (rows:
 * seq_k or tokens): [., rows, heads, dim] dense. */
static dipole_tensor pool_tensor(cl_mem m, const dipole_attn_desc *d, int i, int rows)
{
    return dipole_tensor_dense(m, rows, pool_heads(d, i), pool_dim(d, i));
}

/* The pool of a contiguous cache x of rows of `row` bytes (a token's heads of k, v or v2);
 * slots no key fills hold `fill`. */
static void *pool_of(const dipole_attn_desc *d, const paged_layout *pl, const void *x,
                     size_t row, unsigned char fill)
{
    unsigned char *pool = malloc((size_t)pl->pages * (size_t)pl->page_size * row);
    ck_assert_ptr_nonnull(pool);
    memset(pool, fill, (size_t)pl->pages * (size_t)pl->page_size * row);
    for (int b = 0; b < d->batch; b++)
        for (int j = 0; j < d->key_lengths[b]; j++) {
            const int page = pl->table[b * pl->max_pages + j / pl->page_size];
            memcpy(pool + ((size_t)page * pl->page_size + (size_t)(j % pl->page_size)) * row,
                   (const unsigned char *)x + ((size_t)b * d->seq_k + (size_t)j) * row, row);
        }
    return pool;
}

typedef struct paged_case {
    dipole_variant variant;
    dipole_dtype dtype;
    int batch, heads_q, heads_kv, seq_q, seq_k, head_dim;
    int causal, window_left;
    int page_size;
    dipole_path path;
    int head_dim_v; /* 0: head_dim */
} paged_case;

/* Runs one case: paged against contiguous (bitwise on the tiled path) and the reference. */
static void run_case(const paged_case *c, uint64_t seed)
{
    dipole_ctx *ctx = tu_ctx();
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = c->variant;
    d.dtype = c->dtype;
    d.batch = c->batch;
    d.heads_q = c->heads_q;
    d.heads_kv = c->heads_kv;
    d.seq_q = c->seq_q;
    d.seq_k = c->seq_k;
    d.head_dim = c->head_dim;
    d.causal = c->causal;
    d.window_left = c->window_left;
    d.path = c->path;
    d.head_dim_v = c->head_dim_v;
    int *kl = malloc(sizeof(int) * (size_t)c->batch);
    ck_assert_ptr_nonnull(kl);
    uint64_t s = seed * 7 + 1;
    for (int b = 0; b < c->batch; b++) /* one sequence at full length, the others random */
        kl[b] = b == 0 ? c->seq_k : (int)(rng_next(&s) % (uint64_t)(c->seq_k + 1));
    d.key_lengths = kl;
    float pw[8], nw[8];
    for (int h = 0; h < c->heads_q && h < 8; h++) {
        pw[h] = 0.5f + 0.1f * (float)h;
        nw[h] = -0.3f + 0.05f * (float)h;
    }
    if ((c->variant == DIPOLE_TWO_POLE || c->variant == DIPOLE_DIFF) && c->heads_q <= 8) {
        d.pos_weight = pw;
        d.neg_weight = nw;
    }
    const int ns = maps_of(&d), dv = dim_v_of(&d);
    const bool has_v2 = c->variant == DIPOLE_ROUTED || c->variant == DIPOLE_TWO_POLE;
    const size_t es = dipole_dtype_size(c->dtype);
    const size_t nq = tu_q_elems(&d) * (size_t)ns, nk = tu_kv_elems(&d) * (size_t)ns;
    const size_t nv = (size_t)d.batch * d.seq_k * d.heads_kv * dv;
    const size_t no = (size_t)d.batch * d.seq_q * d.heads_q * dv;
    float *q = tu_random(nq, seed + 1, 1.0f), *k = tu_random(nk, seed + 2, 1.0f);
    float *v = tu_random(nv, seed + 3, 1.0f), *v2 = tu_random(nv, seed + 4, 1.0f);
    void *qs = tu_round_to(c->dtype, q, nq), *ks = tu_round_to(c->dtype, k, nk);
    void *vs = tu_round_to(c->dtype, v, nv), *v2s = tu_round_to(c->dtype, v2, nv);

    const paged_layout pl = layout_make(&d, c->page_size, 3, seed + 5);
    const size_t k_row = (size_t)pool_heads(&d, 0) * pool_dim(&d, 0) * es;
    const size_t v_row = (size_t)pool_heads(&d, 1) * pool_dim(&d, 1) * es;
    void *kp = pool_of(&d, &pl, ks, k_row, 0xff), *vp = pool_of(&d, &pl, vs, v_row, 0xff);
    void *v2p = pool_of(&d, &pl, v2s, v_row, 0xff); /* unfilled slots: NaN in every dtype */
    const size_t slots = (size_t)pl.pages * (size_t)pl.page_size;
    cl_mem bq = buffer_of(qs, nq * es), bk = buffer_of(ks, nk * es), bv = buffer_of(vs, nv * es);
    cl_mem bv2 = buffer_of(v2s, nv * es), bkp = buffer_of(kp, slots * k_row);
    cl_mem bvp = buffer_of(vp, slots * v_row), bv2p = buffer_of(v2p, slots * v_row);
    cl_mem btab = buffer_of(pl.table, sizeof(int) * (size_t)d.batch * (size_t)pl.max_pages);
    cl_mem bo1 = buffer_of(NULL, no * es), bo2 = buffer_of(NULL, no * es);
    const size_t nl = (size_t)dipole_lse_count(d.variant) * d.batch * d.heads_q * d.seq_q;
    cl_mem bl1 = buffer_of(NULL, nl * 4), bl2 = buffer_of(NULL, nl * 4);

    const dipole_tensor tq = dipole_tensor_dense(bq, d.seq_q, ns * d.heads_q, d.head_dim);
    const dipole_tensor tk = pool_tensor(bk, &d, 0, d.seq_k);
    const dipole_tensor tv = pool_tensor(bv, &d, 1, d.seq_k);
    const dipole_tensor tv2 = pool_tensor(bv2, &d, 2, d.seq_k);
    const dipole_tensor tkp = pool_tensor(bkp, &d, 0, pl.page_size);
    const dipole_tensor tvp = pool_tensor(bvp, &d, 1, pl.page_size);
    const dipole_tensor tv2p = pool_tensor(bv2p, &d, 2, pl.page_size);
    const dipole_tensor to1 = dipole_tensor_dense(bo1, d.seq_q, d.heads_q, dv);
    const dipole_tensor to2 = dipole_tensor_dense(bo2, d.seq_q, d.heads_q, dv);
    const dipole_paged_kv paged = {btab, pl.max_pages, pl.page_size};
    char what[256];
    tu_desc_str(&d, what, sizeof what);
    dipole_status st = dipole_attention(ctx, &d, &tq, &tk, &tv, has_v2 ? &tv2 : NULL, &to1, bl1,
                                        NULL);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: contiguous: %s", what, dipole_ctx_last_error(ctx));
    st = dipole_attention_paged(ctx, &d, &tq, &tkp, &tvp, has_v2 ? &tv2p : NULL, &paged, &to2,
                                bl2, NULL);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s page %d: %s", what, pl.page_size,
                  dipole_ctx_last_error(ctx));

    void *o1 = malloc(no * es), *o2 = malloc(no * es);
    float *l1 = malloc(nl * 4), *l2 = malloc(nl * 4), *got = malloc(no * 4), *ref = malloc(no * 4);
    ck_assert(o1 && o2 && l1 && l2 && got && ref);
    read_back(bo1, o1, no * es);
    read_back(bo2, o2, no * es);
    read_back(bl1, l1, nl * 4);
    read_back(bl2, l2, nl * 4);
    dipole_plan plan;
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    if (plan.path == DIPOLE_PATH_TILED) {
        ck_assert_msg(!memcmp(o1, o2, no * es), "%s page %d: paged out differs from contiguous",
                      what, pl.page_size);
        ck_assert_msg(!memcmp(l1, l2, nl * 4), "%s page %d: paged lse differs from contiguous",
                      what, pl.page_size);
    }
    ck_assert_int_eq(dipole_convert(DIPOLE_F32, got, c->dtype, o2, no), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference(&d, q, k, v, has_v2 ? v2 : NULL, ref), DIPOLE_SUCCESS);
    const double rtol = c->dtype == DIPOLE_F32   ? RTOL
                        : c->dtype == DIPOLE_F16 ? 1.0 / 1024
                                                 : 1.0 / 128;
    const tu_err e = tu_compare(got, ref, no, ATOL, rtol);
    ck_assert_msg(e.worst_ratio <= 1.0 && e.nonfinite == 0,
                  "%s page %d (%s): paged vs reference: ratio %.3g at %zu, max |diff| %.3g",
                  what, pl.page_size, plan.reason, e.worst_ratio, e.worst, e.max_abs);

    cl_mem all[] = {bq, bk, bv, bv2, bkp, bvp, bv2p, btab, bo1, bo2, bl1, bl2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        clReleaseMemObject(all[i]);
    free(o1), free(o2), free(l1), free(l2), free(got), free(ref);
    free(kp), free(vp), free(v2p), free(pl.table);
    free(qs), free(ks), free(vs), free(v2s), free(q), free(k), free(v), free(v2), free(kl);
}

static const dipole_variant variants[4] = {DIPOLE_SOFTMAX, DIPOLE_SIGNEXP, DIPOLE_ROUTED,
                                           DIPOLE_TWO_POLE};
static const int page_sizes[3] = {1, 16, 256};

/* Decode: 1-2 new rows of 4 sequences against their caches, GQA 8:2, every variant x page
 * size (split-K on the CPU layout). */
START_TEST(test_paged_decode)
{
    const int vi = _i / 3, pi = _i % 3;
    const paged_case c = {variants[vi], DIPOLE_F32, 4, 8, 2, 1 + (_i & 1), 300, 64,
                          1, -1, page_sizes[pi], DIPOLE_PATH_AUTO, 0};
    run_case(&c, 100 + (uint64_t)_i);
}
END_TEST

/* Chunked prefill: 37 new rows (causal, bottom-right on each sequence's length), GQA 4:1. */
START_TEST(test_paged_prefill)
{
    const int vi = _i / 3, pi = _i % 3;
    const paged_case c = {variants[vi], DIPOLE_F32, 3, 4, 1, 37, 290, 64,
                          1, -1, page_sizes[pi], DIPOLE_PATH_AUTO, 0};
    run_case(&c, 200 + (uint64_t)_i);
}
END_TEST

/* The other kinds: a window, no mask, an odd head dim, half storage; DIFF (two key heads a KV
 * head) and value head dims of their own, in decode and chunked prefill, half storage and the
 * paper's layout (head_dim_v = 2 head_dim). */
START_TEST(test_paged_kinds)
{
    static const paged_case cases[] = {
        {DIPOLE_SOFTMAX, DIPOLE_F32, 2, 4, 2, 1, 500, 64, 1, 100, 16, DIPOLE_PATH_AUTO, 0},
        {DIPOLE_SIGNEXP, DIPOLE_F32, 2, 6, 3, 40, 200, 64, 0, -1, 16, DIPOLE_PATH_AUTO, 0},
        {DIPOLE_ROUTED, DIPOLE_F32, 2, 2, 2, 1, 130, 24, 1, -1, 7, DIPOLE_PATH_AUTO, 0},
        {DIPOLE_SOFTMAX, DIPOLE_F16, 3, 8, 2, 1, 300, 64, 1, -1, 16, DIPOLE_PATH_AUTO, 0},
        {DIPOLE_SIGNEXP, DIPOLE_BF16, 2, 4, 2, 20, 100, 64, 1, -1, 16, DIPOLE_PATH_AUTO, 0},
        {DIPOLE_DIFF, DIPOLE_F32, 4, 8, 2, 1, 300, 64, 1, -1, 16, DIPOLE_PATH_AUTO, 0},
        {DIPOLE_DIFF, DIPOLE_F32, 3, 4, 1, 37, 290, 32, 1, -1, 7, DIPOLE_PATH_AUTO, 64},
        {DIPOLE_DIFF, DIPOLE_F16, 2, 4, 2, 1, 200, 64, 1, -1, 1, DIPOLE_PATH_AUTO, 128},
        {DIPOLE_SOFTMAX, DIPOLE_F32, 2, 8, 2, 2, 260, 64, 1, -1, 16, DIPOLE_PATH_AUTO, 32},
        {DIPOLE_TWO_POLE, DIPOLE_F32, 2, 4, 2, 20, 150, 32, 1, 50, 256, DIPOLE_PATH_AUTO, 48},
    };
    run_case(&cases[_i], 300 + (uint64_t)_i);
}
END_TEST

/* The GEMM path gathers the pages into dense copies. */
START_TEST(test_paged_gemm)
{
    static const paged_case cases[] = {
        {DIPOLE_SOFTMAX, DIPOLE_F32, 3, 4, 2, 1, 200, 64, 1, -1, 16, DIPOLE_PATH_GEMM, 0},
        {DIPOLE_TWO_POLE, DIPOLE_F32, 2, 4, 1, 17, 150, 32, 1, -1, 1, DIPOLE_PATH_GEMM, 0},
        {DIPOLE_ROUTED, DIPOLE_F16, 2, 2, 2, 5, 100, 64, 1, -1, 16, DIPOLE_PATH_GEMM, 0},
        {DIPOLE_DIFF, DIPOLE_F32, 2, 4, 2, 3, 120, 32, 1, -1, 16, DIPOLE_PATH_GEMM, 64},
        {DIPOLE_SOFTMAX, DIPOLE_F32, 2, 4, 1, 1, 90, 64, 1, -1, 7, DIPOLE_PATH_GEMM, 40},
    };
    run_case(&cases[_i], 400 + (uint64_t)_i);
}
END_TEST

/* ---------------------------------------------------------------- the cache write */

/* Positions scattered through the helper land where a scatter done here puts them, bit for
 * bit, and nothing else in the pools changes. */
START_TEST(test_paged_write)
{
    dipole_ctx *ctx = tu_ctx();
    const dipole_dtype dt = _i == 1 ? DIPOLE_F16 : DIPOLE_F32;
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    static const dipole_variant variant_of[3] = {DIPOLE_ROUTED, DIPOLE_SOFTMAX, DIPOLE_DIFF};
    d.variant = variant_of[_i];
    d.head_dim_v = _i == 2 ? 48 : 0; /* DIFF: two key heads a KV head, values of 2 head_dim */
    d.dtype = dt;
    d.batch = 3;
    d.heads_q = 4;
    d.heads_kv = 2;
    d.seq_q = 1;
    d.seq_k = 64;
    d.head_dim = 24;
    int kl[3] = {64, 40, 10};
    d.key_lengths = kl;
    const int ps = 16, tokens = 5;
    paged_layout pl = layout_make(&d, ps, 2, 77);
    const size_t es = dipole_dtype_size(dt);
    /* tokens 0..4 of each sequence at positions kl - 5 .. kl - 1; sequence 2 pads its last two */
    int pos[3 * 5];
    for (int b = 0; b < 3; b++)
        for (int t = 0; t < tokens; t++)
            pos[b * tokens + t] = b == 2 && t >= 3 ? -1 : kl[b] - tokens + t;
    unsigned char *src[3], *want[3], *got[3];
    cl_mem bsrc[3], bpool[3];
    dipole_tensor tsrc[3], tpool[3];
    size_t pool_bytes[3];
    for (int i = 0; i < 3; i++) {
        const size_t row_elems = (size_t)pool_heads(&d, i) * pool_dim(&d, i);
        const size_t row = row_elems * es, nnew = (size_t)d.batch * tokens * row_elems;
        pool_bytes[i] = (size_t)pl.pages * ps * row;
        float *x = tu_random(nnew, 900 + (uint64_t)i, 1.0f);
        src[i] = tu_round_to(dt, x, nnew);
        free(x);
        want[i] = malloc(pool_bytes[i]);
        got[i] = malloc(pool_bytes[i]);
        ck_assert(want[i] && got[i]);
        memset(want[i], 0x11 * (i + 1), pool_bytes[i]);
        bpool[i] = buffer_of(want[i], pool_bytes[i]);
        bsrc[i] = buffer_of(src[i], nnew * es);
        tsrc[i] = pool_tensor(bsrc[i], &d, i, tokens);
        tpool[i] = pool_tensor(bpool[i], &d, i, ps);
        for (int b = 0; b < 3; b++)
            for (int t = 0; t < tokens; t++) {
                const int p = pos[b * tokens + t];
                if (p < 0)
                    continue;
                const int page = pl.table[b * pl.max_pages + p / ps];
                memcpy(want[i] + ((size_t)page * ps + (size_t)(p % ps)) * row,
                       src[i] + ((size_t)b * tokens + (size_t)t) * row, row);
            }
    }
    cl_mem btab = buffer_of(pl.table, sizeof(int) * 3 * (size_t)pl.max_pages);
    const dipole_paged_kv paged = {btab, pl.max_pages, ps};
    ck_assert_msg(dipole_paged_kv_write(ctx, &d, &paged, tokens, pos, &tsrc[0], &tsrc[1],
                                        &tsrc[2], &tpool[0], &tpool[1], &tpool[2],
                                        NULL) == DIPOLE_SUCCESS,
                  "%s", dipole_ctx_last_error(ctx));
    const int written = d.variant == DIPOLE_ROUTED ? 3 : 2; /* v2 only where the variant reads it */
    for (int i = 0; i < 3; i++) {
        read_back(bpool[i], got[i], pool_bytes[i]);
        if (i >= written)
            memset(want[i], 0x11 * (i + 1), pool_bytes[i]);
        ck_assert_msg(!memcmp(got[i], want[i], pool_bytes[i]), "pool %d differs from the scatter",
                      i);
        clReleaseMemObject(bsrc[i]);
        clReleaseMemObject(bpool[i]);
        free(src[i]);
        free(want[i]);
        free(got[i]);
    }
    clReleaseMemObject(btab);
    free(pl.table);
}
END_TEST

/* ---------------------------------------------------------------- refusals */

/* A small problem with a valid paged cache that each refusal case breaks in one place. */
typedef struct fixture {
    dipole_attn_desc d;
    int kl[2];
    int table[2 * 4];
    cl_mem bq, bpool, bpool2, bout, btab, bsrc;
    dipole_tensor q, k, v, out, src;
    dipole_paged_kv paged;
} fixture;

static void fixture_make(fixture *f)
{
    memset(f, 0, sizeof *f);
    dipole_attn_desc_default(&f->d);
    f->d.batch = 2;
    f->d.heads_q = 2;
    f->d.heads_kv = 1;
    f->d.seq_q = 1;
    f->d.seq_k = 32;
    f->d.head_dim = 16;
    f->kl[0] = 32;
    f->kl[1] = 20;
    f->d.key_lengths = f->kl;
    /* 6 pages of 8 tokens: sequence 0 uses pages 5 4 3 2, sequence 1 pages 0 1 2 (of which 2
     * is sequence 0's too: shared prefixes are legal for reads) */
    const int table[8] = {5, 4, 3, 2, 0, 1, 2, -1};
    memcpy(f->table, table, sizeof table);
    const size_t page = 8 * 16;
    float *q = tu_random(2 * 2 * 16, 1, 1.0f), *pool = tu_random(6 * page, 2, 1.0f);
    f->bq = buffer_of(q, 2 * 2 * 16 * 4);
    f->bpool = buffer_of(pool, 6 * page * 4);
    f->bpool2 = buffer_of(pool, 6 * page * 4);
    f->bout = buffer_of(NULL, 2 * 2 * 16 * 4);
    f->btab = buffer_of(f->table, sizeof f->table);
    f->bsrc = buffer_of(q, 2 * 16 * 4);
    free(q);
    free(pool);
    f->q = dipole_tensor_dense(f->bq, 1, 2, 16);
    f->k = dipole_tensor_dense(f->bpool, 8, 1, 16);
    f->v = dipole_tensor_dense(f->bpool2, 8, 1, 16);
    f->out = dipole_tensor_dense(f->bout, 1, 2, 16);
    f->src = dipole_tensor_dense(f->bsrc, 1, 1, 16);
    f->paged = (dipole_paged_kv){f->btab, 4, 8};
}

static void fixture_free(fixture *f)
{
    cl_mem all[] = {f->bq, f->bpool, f->bpool2, f->bout, f->btab, f->bsrc};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        clReleaseMemObject(all[i]);
}

static void set_table(fixture *f, int b, int c, int page)
{
    f->table[b * 4 + c] = page;
    ck_assert_int_eq(clEnqueueWriteBuffer(dipole_ctx_queue(tu_ctx()), f->btab, CL_TRUE, 0,
                                          sizeof f->table, f->table, 0, NULL, NULL),
                     CL_SUCCESS);
}

/* The call fails with `want`, its message contains `words`, and out is as it was. */
static void expect_refused(fixture *f, dipole_status want, const char *words)
{
    dipole_ctx *ctx = tu_ctx();
    const float sentinel[64] = {[0] = 12345.0f, [63] = -6789.0f};
    ck_assert_int_eq(clEnqueueWriteBuffer(dipole_ctx_queue(ctx), f->bout, CL_TRUE, 0,
                                          sizeof sentinel, sentinel, 0, NULL, NULL),
                     CL_SUCCESS);
    const dipole_status st =
        dipole_attention_paged(ctx, &f->d, &f->q, &f->k, &f->v, NULL, &f->paged, &f->out, NULL,
                               NULL);
    const char *msg = dipole_ctx_last_error(ctx);
    ck_assert_msg(st == want, "status %s (%s), want %s", dipole_status_string(st), msg,
                  dipole_status_string(want));
    ck_assert_msg(strstr(msg, words), "message \"%s\" lacks \"%s\"", msg, words);
    float after[64];
    read_back(f->bout, after, sizeof after);
    ck_assert_msg(!memcmp(after, sentinel, sizeof after), "a refused call wrote out");
}

START_TEST(test_paged_refusals)
{
    fixture f;
    fixture_make(&f);
    dipole_ctx *ctx = tu_ctx();
    /* the valid call works, and equals the reference on the gathered keys */
    ck_assert_msg(dipole_attention_paged(ctx, &f.d, &f.q, &f.k, &f.v, NULL, &f.paged, &f.out,
                                         NULL, NULL) == DIPOLE_SUCCESS,
                  "%s", dipole_ctx_last_error(ctx));

    set_table(&f, 0, 1, -1);
    expect_refused(&f, DIPOLE_ERR_BUFFER_RANGE, "block_table[0][1] = -1");
    set_table(&f, 0, 1, 6);
    expect_refused(&f, DIPOLE_ERR_BUFFER_RANGE, "k_pages holds 6 pages");
    set_table(&f, 0, 1, 4);
    set_table(&f, 1, 2, 99); /* sequence 1 reaches column 2 (20 keys > 16) */
    expect_refused(&f, DIPOLE_ERR_BUFFER_RANGE, "block_table[1][2] = 99");
    f.kl[1] = 16; /* now column 2 is past its keys: never read, never checked */
    ck_assert_int_eq(dipole_attention_paged(ctx, &f.d, &f.q, &f.k, &f.v, NULL, &f.paged, &f.out,
                                            NULL, NULL),
                     DIPOLE_SUCCESS);
    set_table(&f, 1, 2, 2);
    f.kl[1] = 20;

    f.d.key_lengths = NULL;
    expect_refused(&f, DIPOLE_ERR_INVALID_ARG, "key_lengths is required");
    f.d.key_lengths = f.kl;
    f.paged.max_pages = 3; /* 24 tokens < key length 32, and a table that looks narrower */
    expect_refused(&f, DIPOLE_ERR_INVALID_ARG, "exceeds max_pages * page_size = 24");
    f.paged.max_pages = 5; /* the table buffer holds 2 x 4 */
    expect_refused(&f, DIPOLE_ERR_BUFFER_RANGE, "block_table needs 10 int32s");
    f.paged.max_pages = 4;
    f.paged.page_size = 0;
    expect_refused(&f, DIPOLE_ERR_INVALID_ARG, "page_size = 0");
    f.paged.page_size = 8;
    const dipole_tensor k = f.k;
    f.k.stride_batch = 0;
    expect_refused(&f, DIPOLE_ERR_INVALID_ARG, "stride_batch is 0");
    f.k = k;
    f.k.offset = 6 * 8 * 16; /* not even one page past the offset */
    expect_refused(&f, DIPOLE_ERR_BUFFER_RANGE, "k_pages needs");
    f.k = k;
    dipole_tensor out_in_pool = dipole_tensor_dense(f.bpool, 1, 2, 16);
    out_in_pool.offset = 3 * 8 * 16 + 5; /* inside page 3, which sequence 0 reads */
    ck_assert_int_eq(dipole_attention_paged(ctx, &f.d, &f.q, &f.k, &f.v, NULL, &f.paged,
                                            &out_in_pool, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "out overlaps k_pages"));
    ck_assert_int_eq(dipole_attention_paged(ctx, &f.d, &f.q, &f.k, &f.v, NULL, NULL, &f.out, NULL,
                                            NULL),
                     DIPOLE_ERR_INVALID_ARG);
    f.d.variant = DIPOLE_ROUTED;
    expect_refused(&f, DIPOLE_ERR_INVALID_ARG, "v2_pages is NULL");
    f.d.variant = DIPOLE_SOFTMAX;

    /* The block table's buffer also holds out: refused where out would overwrite the table
     * (work-groups read it while others write), run where it lies past it; lse may not be it. */
    cl_mem shared = buffer_of(NULL, sizeof f.table + 64 * 4);
    ck_assert_int_eq(clEnqueueWriteBuffer(dipole_ctx_queue(ctx), shared, CL_TRUE, 0,
                                          sizeof f.table, f.table, 0, NULL, NULL),
                     CL_SUCCESS);
    const dipole_paged_kv in_shared = {shared, 4, 8};
    dipole_tensor out_on_table = dipole_tensor_dense(shared, 1, 2, 16);
    out_on_table.offset = 3; /* floats 3..66: over table entries 3..7 */
    ck_assert_int_eq(dipole_attention_paged(ctx, &f.d, &f.q, &f.k, &f.v, NULL, &in_shared,
                                            &out_on_table, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "out overlaps paged->block_table"));
    out_on_table.offset = 8; /* past the table's 8 int32s */
    ck_assert_msg(dipole_attention_paged(ctx, &f.d, &f.q, &f.k, &f.v, NULL, &in_shared,
                                         &out_on_table, NULL, NULL) == DIPOLE_SUCCESS,
                  "%s", dipole_ctx_last_error(ctx));
    ck_assert_int_eq(dipole_attention_paged(ctx, &f.d, &f.q, &f.k, &f.v, NULL, &f.paged, &f.out,
                                            f.btab, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "lse is the block table"));
    clReleaseMemObject(shared);
    fixture_free(&f);
}
END_TEST

START_TEST(test_paged_write_refusals)
{
    fixture f;
    fixture_make(&f);
    dipole_ctx *ctx = tu_ctx();
    const size_t pool_bytes = 6 * 8 * 16 * 4;
    float *before = malloc(pool_bytes), *after = malloc(pool_bytes);
    ck_assert(before && after);
    read_back(f.bpool, before, pool_bytes);
    const dipole_tensor v = f.k; /* k and v the same pool: written twice, refused below */
    const struct {
        int pos[2];
        dipole_status want;
        const char *words;
    } cases[] = {
        {{32, 3}, DIPOLE_ERR_INVALID_ARG, "positions[0][0] = 32 is outside [-1, max_pages"},
        {{-2, 3}, DIPOLE_ERR_INVALID_ARG, "positions[0][0] = -2"},
        {{0, 28}, DIPOLE_ERR_BUFFER_RANGE, "block_table[1][3] = -1"},
        {{24, 16}, DIPOLE_ERR_INVALID_ARG, "write the same slot (page 2, slot 0)"},
        {{0, 36}, DIPOLE_ERR_INVALID_ARG, "positions[1][0] = 36 is outside"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const dipole_status st = dipole_paged_kv_write(ctx, &f.d, &f.paged, 1, cases[i].pos,
                                                       &f.src, &f.src, NULL, &f.k, &f.v, NULL,
                                                       NULL);
        ck_assert_msg(st == cases[i].want, "case %zu: %s (%s)", i, dipole_status_string(st),
                      dipole_ctx_last_error(ctx));
        ck_assert_msg(strstr(dipole_ctx_last_error(ctx), cases[i].words),
                      "case %zu: message \"%s\" lacks \"%s\"", i, dipole_ctx_last_error(ctx),
                      cases[i].words);
    }
    /* positions 10 (page 4) of sequence 0 and 4 (page 0) of sequence 1: k and v are one pool */
    const int pos[2] = {10, 4};
    ck_assert_int_eq(dipole_paged_kv_write(ctx, &f.d, &f.paged, 1, pos, &f.src, &f.src, NULL,
                                           &f.k, &v, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "k_pages overlaps v_pages"));
    dipole_tensor src_in_pool = dipole_tensor_dense(f.bpool, 1, 1, 16);
    src_in_pool.offset = 4 * 8 * 16; /* page 4, slot 0..: what sequence 0's token writes */
    ck_assert_int_eq(dipole_paged_kv_write(ctx, &f.d, &f.paged, 1, pos, &src_in_pool, &f.src,
                                           NULL, &f.k, &f.v, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "k_pages overlaps k_new"));
    /* a page past the pool (6 pages) where a token lands */
    set_table(&f, 0, 1, 6);
    ck_assert_int_eq(dipole_paged_kv_write(ctx, &f.d, &f.paged, 1, pos, &f.src, &f.src, NULL,
                                           &f.k, &f.v, NULL, NULL),
                     DIPOLE_ERR_BUFFER_RANGE);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "block_table[0][1] = 6"));
    set_table(&f, 0, 1, 4);
    /* slots of a pool that share addresses (seq stride under the row) */
    dipole_tensor squeezed = f.k;
    squeezed.stride_seq = 8;
    ck_assert_int_eq(dipole_paged_kv_write(ctx, &f.d, &f.paged, 1, pos, &f.src, &f.src, NULL,
                                           &squeezed, &f.v, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "make distinct slots overlap"));
    /* the block table inside a pool's buffer, on page 0, where sequence 1's token lands */
    cl_mem arena = buffer_of(NULL, 6 * 8 * 16 * 4);
    ck_assert_int_eq(clEnqueueWriteBuffer(dipole_ctx_queue(ctx), arena, CL_TRUE, 0,
                                          sizeof f.table, f.table, 0, NULL, NULL),
                     CL_SUCCESS);
    const dipole_paged_kv in_arena = {arena, 4, 8};
    const dipole_tensor k_arena = dipole_tensor_dense(arena, 8, 1, 16);
    ck_assert_int_eq(dipole_paged_kv_write(ctx, &f.d, &in_arena, 1, pos, &f.src, &f.src, NULL,
                                           &k_arena, &f.v, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "k_pages overlaps paged->block_table"));
    clReleaseMemObject(arena);
    ck_assert_int_eq(dipole_paged_kv_write(ctx, &f.d, &f.paged, 1, NULL, &f.src, &f.src, NULL,
                                           &f.k, &f.v, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_int_eq(dipole_paged_kv_write(ctx, &f.d, &f.paged, -1, pos, &f.src, &f.src, NULL,
                                           &f.k, &f.v, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    read_back(f.bpool, after, pool_bytes);
    ck_assert_msg(!memcmp(before, after, pool_bytes), "a refused write changed the pool");
    read_back(f.bpool2, after, pool_bytes);
    ck_assert_msg(!memcmp(before, after, pool_bytes), "a refused write changed the pool");
    free(before);
    free(after);
    fixture_free(&f);
}
END_TEST

Suite *paged_suite(void)
{
    Suite *s = suite_create("paged");
    TCase *dev = tcase_create("device");
    tcase_set_timeout(dev, 1200);
    tcase_add_loop_test(dev, test_paged_decode, 0, 12);
    tcase_add_loop_test(dev, test_paged_prefill, 0, 12);
    tcase_add_loop_test(dev, test_paged_kinds, 0, 10);
    tcase_add_loop_test(dev, test_paged_write, 0, 3);
    suite_add_tcase(s, dev);
    TCase *gemm = tcase_create("gemm");
    tcase_set_timeout(gemm, 1200);
    tcase_add_loop_test(gemm, test_paged_gemm, 0, 5);
    suite_add_tcase(s, gemm);
    TCase *args = tcase_create("args");
    tcase_add_test(args, test_paged_refusals);
    tcase_add_test(args, test_paged_write_refusals);
    suite_add_tcase(s, args);
    return s;
}
