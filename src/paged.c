/* Paged KV caches: the checks that keep every page a call reads or writes inside its pool,
 * the forward call over pages, and the cache write. The kernels trust the block table, so
 * every index a call can reach is checked here, on the host, before anything is enqueued. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backward.h"
#include "launch.h"

/* The block table read back, with the page pools' sizes. */
typedef struct paged_view {
    const dipole_paged_kv *pg;
    int *table;           /* [batch, max_pages] */
    long long pool;       /* pages every pool of the call holds */
    const char *smallest; /* the pool that holds the fewest */
} paged_view;

/* The rows of pool i (k, v, v2) and of its new tokens' source: k's heads (DIFF: two a KV
 * head) and head dim, or v's heads and head_dim_v; seq is unused. */
static dp_shape pool_shape(const dp_problem *p, int i)
{
    return dp_shape_of(p, i == 0 ? DP_ROLE_K : DP_ROLE_V);
}

/* Elements a page of pool tensor t spans from its first: page_size slots of rows of shape. */
static size_t page_extent(const dipole_tensor *t, int page_size, dp_shape shape)
{
    size_t lo, hi;
    dp_span_of(t, 1, page_size, shape.heads, shape.dim, &lo, &hi);
    return hi - lo;
}

/* How many pages the pool tensor t has room for in its buffer past its offset (at least one,
 * or the call is refused). */
static dipole_status pool_pages(dipole_ctx *ctx, const char *name, const dipole_tensor *t,
                                const dp_problem *p, dp_shape shape, int page_size,
                                long long *pages)
{
    const dipole_attn_desc *d = &p->d;
    dipole_status st = dp_check_tensor(ctx, name, t, d->dtype, 1, page_size, shape.heads,
                                       shape.dim);
    if (st != DIPOLE_SUCCESS)
        return st;
    if (t->stride_batch == 0)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "%s.stride_batch is 0: every page would be the same memory", name);
    size_t bytes = 0;
    const cl_int err = clGetMemObjectInfo(t->buffer, CL_MEM_SIZE, sizeof bytes, &bytes, NULL);
    if (err != CL_SUCCESS)
        return dp_fail(ctx, (dipole_status)err, "%s: clGetMemObjectInfo failed: %s (%d)", name,
                       dipole_status_string((dipole_status)err), (int)err);
    /* dp_check_tensor saw page 0 end inside the buffer */
    const size_t elems = bytes / dipole_dtype_size(d->dtype);
    const size_t end0 = t->offset + page_extent(t, page_size, shape);
    const size_t more = (elems - end0) / t->stride_batch;
    *pages = more >= (size_t)INT32_MAX ? INT32_MAX : (long long)more + 1;
    return DIPOLE_SUCCESS;
}

/* The paging description, the pools (k, v, and v2 where the variant reads it) and the block
 * table, read back in queue order. */
static dipole_status view_open(dipole_ctx *ctx, const dp_problem *p, const char *call,
                               const dipole_paged_kv *pg, const dipole_tensor *const pools[3],
                               const char *const names[3], paged_view *view)
{
    memset(view, 0, sizeof *view);
    view->pg = pg;
    if (!pg)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "%s: paged is NULL", call);
    if (pg->page_size < 1 || pg->max_pages < 1)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "%s: paged->%s = %d; it must be >= 1", call,
                       pg->page_size < 1 ? "page_size" : "max_pages",
                       pg->page_size < 1 ? pg->page_size : pg->max_pages);
    if ((long long)pg->max_pages * pg->page_size > (1LL << 30))
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "%s: paged->max_pages * page_size = %lld tokens exceeds 2^30", call,
                       (long long)pg->max_pages * pg->page_size);
    view->pool = INT32_MAX;
    for (int i = 0; i < 3; i++) {
        if (i == 2 && !p->reads_v2)
            break;
        if (!pools[i])
            return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "%s: %s is NULL%s", call, names[i],
                           i == 2 ? " but the variant reads v2" : "");
        long long n = 0;
        const dipole_status st = pool_pages(ctx, names[i], pools[i], p, pool_shape(p, i),
                                            pg->page_size, &n);
        if (st != DIPOLE_SUCCESS)
            return st;
        if (n < view->pool) {
            view->pool = n;
            view->smallest = names[i];
        }
    }
    const size_t cells = (size_t)p->d.batch * (size_t)pg->max_pages;
    dipole_status st = dp_check_int_buffer(ctx, "paged->block_table", pg->block_table, cells);
    if (st != DIPOLE_SUCCESS)
        return st;
    view->table = malloc(cells * sizeof *view->table);
    if (!view->table)
        return dp_fail(ctx, DIPOLE_ERR_OUT_OF_HOST_MEMORY, "%s: out of host memory", call);
    const cl_int err = clEnqueueReadBuffer(ctx->queue, pg->block_table, CL_TRUE, 0,
                                           cells * sizeof(cl_int), view->table, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return dp_cl_fail(ctx, err, "clEnqueueReadBuffer(block_table)");
    return DIPOLE_SUCCESS;
}

static void view_close(paged_view *view)
{
    free(view->table);
    view->table = NULL;
}

/* The page that holds token j of sequence b (j < max_pages * page_size), checked. */
static dipole_status page_of(dipole_ctx *ctx, const paged_view *view, int b, int j, int *page)
{
    const int col = j / view->pg->page_size;
    *page = view->table[(size_t)b * (size_t)view->pg->max_pages + (size_t)col];
    if (*page < 0 || *page >= view->pool)
        return dp_fail(ctx, DIPOLE_ERR_BUFFER_RANGE,
                       "block_table[%d][%d] = %d is outside the page pools (%s holds %lld pages)",
                       b, col, *page, view->smallest, view->pool);
    return DIPOLE_SUCCESS;
}

/* ---- overlaps: spans of elements in buffers, some written. Two spans of different owners
 * in one buffer may not meet where either is written (spans of one owner are one tensor's,
 * whose own layout the caller checked). */
typedef struct span {
    cl_mem buffer;
    size_t lo, hi;
    int owner;
    bool written;
} span;

static int span_order(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->buffer != y->buffer)
        return (uintptr_t)x->buffer < (uintptr_t)y->buffer ? -1 : 1;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

#define MAX_OWNERS 7

/* Sorts spans; true with the owners of the first clash found in *a, *b. */
static bool spans_clash(span *s, size_t n, int *a, int *b)
{
    qsort(s, n, sizeof *s, span_order);
    size_t reach[MAX_OWNERS]; /* the furthest end so far in this buffer, per owner */
    bool wrote[MAX_OWNERS];
    for (size_t i = 0; i < n; i++) {
        if (i == 0 || s[i].buffer != s[i - 1].buffer)
            for (int o = 0; o < MAX_OWNERS; o++)
                reach[o] = 0, wrote[o] = false;
        for (int o = 0; o < MAX_OWNERS; o++)
            if (o != s[i].owner && reach[o] > s[i].lo && (wrote[o] || s[i].written)) {
                *a = o;
                *b = s[i].owner;
                return true;
            }
        if (s[i].hi > reach[s[i].owner])
            reach[s[i].owner] = s[i].hi;
        wrote[s[i].owner] |= s[i].written;
    }
    return false;
}

/* The block table's bytes, in elements of the call's storage (the unit of every other span):
 * what the kernels read while others write. */
static span table_span(const paged_view *view, const dp_problem *p, int owner)
{
    const size_t es = dipole_dtype_size(p->d.dtype);
    const size_t bytes = (size_t)p->d.batch * (size_t)view->pg->max_pages * sizeof(cl_int);
    const span s = {view->pg->block_table, 0, (bytes + es - 1) / es, owner, false};
    return s;
}

/* Page `page` of pool i, tensor t; the pool is its owner. */
static span page_span(const dipole_tensor *t, const dp_problem *p, int i, int page_size, int page,
                      bool written)
{
    const size_t lo = t->offset + (size_t)page * t->stride_batch;
    const span s = {t->buffer, lo, lo + page_extent(t, page_size, pool_shape(p, i)), i, written};
    return s;
}

/* ---------------------------------------------------------------- forward */

/* Every page a sequence's keys reach, checked; out may meet none of them, nor the block table
 * (owners: the pools 0-2, out 3, the table 4). */
static dipole_status check_reads(dipole_ctx *ctx, const dp_problem *p, const paged_view *view,
                                 const dipole_tensor *const pools[3], const char *const names[3],
                                 const dipole_tensor *out)
{
    const dipole_attn_desc *d = &p->d;
    const int ps = view->pg->page_size, npools = p->reads_v2 ? 3 : 2;
    const size_t cap = (size_t)d->batch * (size_t)view->pg->max_pages * (size_t)npools + 2;
    span *s = malloc(cap * sizeof *s);
    if (!s)
        return dp_fail(ctx, DIPOLE_ERR_OUT_OF_HOST_MEMORY,
                       "dipole_attention_paged: out of host memory");
    size_t n = 0;
    dipole_status st = DIPOLE_SUCCESS;
    for (int b = 0; b < d->batch && st == DIPOLE_SUCCESS; b++) {
        const int kl = d->key_lengths[b];
        if ((long long)kl > (long long)view->pg->max_pages * ps) {
            st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                         "desc.key_lengths[%d] = %d exceeds max_pages * page_size = %lld", b, kl,
                         (long long)view->pg->max_pages * ps);
            break;
        }
        for (int j = 0; j < kl && st == DIPOLE_SUCCESS; j += ps) {
            int page;
            st = page_of(ctx, view, b, j, &page);
            for (int i = 0; i < npools && st == DIPOLE_SUCCESS; i++)
                s[n++] = page_span(pools[i], p, i, ps, page, false);
        }
    }
    if (st == DIPOLE_SUCCESS) {
        size_t lo, hi;
        dp_span_of(out, d->batch, d->seq_q, d->heads_q, p->dv, &lo, &hi);
        s[n++] = (span){out->buffer, lo, hi, 3, true};
        s[n++] = table_span(view, p, 4);
        int x, y;
        if (spans_clash(s, n, &x, &y)) {
            const int other = x == 3 ? y : x;
            st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "out overlaps %s in the same buffer",
                         other == 4 ? "paged->block_table" : names[other]);
        }
    }
    free(s);
    return st;
}

dipole_status dipole_attention_paged(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                     const dipole_tensor *q, const dipole_tensor *k_pages,
                                     const dipole_tensor *v_pages, const dipole_tensor *v2_pages,
                                     const dipole_paged_kv *paged, const dipole_tensor *out,
                                     cl_mem lse, cl_event *event)
{
    static const char *const call = "dipole_attention_paged";
    dp_problem p;
    dipole_status st = dp_call_begin(ctx, call, desc, event, &p);
    if (!ctx)
        return st;
    const dipole_tensor *const pools[3] = {k_pages, v_pages, v2_pages};
    static const char *const names[3] = {"k_pages", "v_pages", "v2_pages"};
    paged_view view = {0};
    if (st == DIPOLE_SUCCESS && !desc->key_lengths)
        st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                     "%s: desc.key_lengths is required (each sequence's cache length)", call);
    if (st == DIPOLE_SUCCESS && (!q || !out))
        st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "%s: tensor %s is NULL", call, !q ? "q" : "out");
    if (st == DIPOLE_SUCCESS)
        st = view_open(ctx, &p, call, paged, pools, names, &view);
    if (st == DIPOLE_SUCCESS)
        st = check_reads(ctx, &p, &view, pools, names, out);
    if (st == DIPOLE_SUCCESS && lse && lse == paged->block_table)
        st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "%s: lse is the block table's buffer", call);
    view_close(&view);
    if (st == DIPOLE_SUCCESS) {
        p.paged = true;
        dp_args a = {.q = q, .k = k_pages, .v = v_pages, .v2 = p.reads_v2 ? v2_pages : NULL,
                     .out = out, .lse = lse, .block_table = paged->block_table,
                     .max_pages = paged->max_pages, .page_size = paged->page_size};
        st = dp_attention_locked(ctx, &p, &a, event);
    }
    pthread_mutex_unlock(&ctx->lock);
    return st;
}

/* ---------------------------------------------------------------- cache write */

/* A written slot: page * page_size + slot, and the token that writes it. */
typedef struct slot_ref {
    long long slot;
    int b, t;
} slot_ref;

static int slot_order(const void *a, const void *b)
{
    const slot_ref *x = a, *y = b;
    return x->slot < y->slot ? -1 : x->slot > y->slot;
}

/* Every position in range and on a checked page, no slot written twice, the written pages
 * clear of the sources, of each other's pools and of the block table (owners: the pools 0-2,
 * the sources 3-5, the table 6). */
static dipole_status check_writes(dipole_ctx *ctx, const dp_problem *p, const paged_view *view,
                                  int tokens, const int *positions,
                                  const dipole_tensor *const pools[3],
                                  const dipole_tensor *const srcs[3], const char *const names[7])
{
    const dipole_attn_desc *d = &p->d;
    const int ps = view->pg->page_size, npools = p->reads_v2 ? 3 : 2;
    const long long limit = (long long)view->pg->max_pages * ps;
    const size_t cells = (size_t)d->batch * (size_t)tokens;
    slot_ref *refs = malloc(cells * sizeof *refs);
    span *s = malloc((cells * (size_t)npools + 4) * sizeof *s);
    dipole_status st = DIPOLE_SUCCESS;
    if (!refs || !s)
        st = dp_fail(ctx, DIPOLE_ERR_OUT_OF_HOST_MEMORY,
                     "dipole_paged_kv_write: out of host memory");
    size_t nrefs = 0, n = 0;
    for (size_t e = 0; e < cells && st == DIPOLE_SUCCESS; e++) {
        const int b = (int)(e / (size_t)tokens), t = (int)(e % (size_t)tokens), pos = positions[e];
        if (pos == -1)
            continue;
        if (pos < -1 || pos >= limit) {
            st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                         "positions[%d][%d] = %d is outside [-1, max_pages * page_size = %lld)",
                         b, t, pos, limit);
            break;
        }
        int page;
        st = page_of(ctx, view, b, pos, &page);
        refs[nrefs++] = (slot_ref){(long long)page * ps + pos % ps, b, t};
        for (int i = 0; i < npools && st == DIPOLE_SUCCESS; i++)
            s[n++] = page_span(pools[i], p, i, ps, page, true);
    }
    if (st == DIPOLE_SUCCESS) {
        qsort(refs, nrefs, sizeof *refs, slot_order);
        for (size_t r = 1; r < nrefs; r++)
            if (refs[r].slot == refs[r - 1].slot) {
                st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                             "positions[%d][%d] and positions[%d][%d] write the same slot (page "
                             "%lld, slot %lld)",
                             refs[r - 1].b, refs[r - 1].t, refs[r].b, refs[r].t,
                             refs[r].slot / ps, refs[r].slot % ps);
                break;
            }
    }
    if (st == DIPOLE_SUCCESS) {
        for (int i = 0; i < npools; i++) {
            size_t lo, hi;
            const dp_shape sh = pool_shape(p, i);
            dp_span_of(srcs[i], d->batch, tokens, sh.heads, sh.dim, &lo, &hi);
            s[n++] = (span){srcs[i]->buffer, lo, hi, 3 + i, false};
        }
        s[n++] = table_span(view, p, 6);
        int x, y;
        if (spans_clash(s, n, &x, &y))
            st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                         "%s overlaps %s in the same buffer where a token is written",
                         names[x < y ? x : y], names[x < y ? y : x]);
    }
    free(refs);
    free(s);
    return st;
}

/* The pools (written: no two of their elements may share an address) and the sources. */
static dipole_status check_write_tensors(dipole_ctx *ctx, const dp_problem *p, int tokens,
                                         const paged_view *view,
                                         const dipole_tensor *const pools[3],
                                         const dipole_tensor *const srcs[3],
                                         const char *const names[7])
{
    const dipole_attn_desc *d = &p->d;
    for (int i = 0; i < (p->reads_v2 ? 3 : 2); i++) {
        const dp_shape sh = pool_shape(p, i);
        dipole_status st = dp_check_tensor(ctx, names[3 + i], srcs[i], d->dtype, d->batch, tokens,
                                           sh.heads, sh.dim);
        if (st != DIPOLE_SUCCESS)
            return st;
        if (dp_tensor_self_overlaps(pools[i], (int)view->pool, view->pg->page_size, sh.heads,
                                    sh.dim))
            return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                           "%s strides (%zu, %zu, %zu) make distinct slots overlap (page_size "
                           "%d, heads %d, head dim %d)",
                           names[i], pools[i]->stride_batch, pools[i]->stride_seq,
                           pools[i]->stride_head, view->pg->page_size, sh.heads, sh.dim);
    }
    return DIPOLE_SUCCESS;
}

static dipole_status launch_writes(dipole_ctx *ctx, const dp_problem *p, int tokens,
                                   const int *positions, const dipole_paged_kv *pg,
                                   const dipole_tensor *const pools[3],
                                   const dipole_tensor *const srcs[3], cl_event *event)
{
    const dipole_attn_desc *d = &p->d;
    const dp_kernel_config util = dp_util_config(p, DP_DWEIGHTS_WG);
    cl_kernel kernel = NULL;
    dipole_status st = dp_get_kernel(ctx, &util, "dipole_paged_write_rows", &kernel);
    cl_mem pos = NULL;
    if (st == DIPOLE_SUCCESS)
        st = dp_upload(ctx, positions, (size_t)d->batch * (size_t)tokens * sizeof(cl_int),
                       "positions", &pos);
    const int npools = p->reads_v2 ? 3 : 2;
    for (int i = 0; i < npools && st == DIPOLE_SUCCESS; i++) {
        const dp_shape sh = pool_shape(p, i);
        dp_launch_args l = dp_launch_args_begin(kernel, "dipole_paged_write_rows");
        dp_arg_tensor(&l, srcs[i]);
        dp_arg_tensor(&l, pools[i]);
        dp_arg_buffer(&l, pos);
        dp_arg_buffer(&l, pg->block_table);
        dp_arg_int(&l, pg->max_pages);
        dp_arg_int(&l, pg->page_size);
        dp_arg_int(&l, tokens);
        dp_arg_int(&l, sh.heads);
        dp_arg_int(&l, sh.dim);
        const size_t global[3] = {(size_t)sh.dim, (size_t)tokens * (size_t)sh.heads,
                                  (size_t)d->batch};
        st = dp_launch(ctx, &l, 3, global, NULL, i == npools - 1 ? event : NULL);
    }
    /* The buffer lives on until the enqueued kernels that use it finish. */
    if (pos)
        clReleaseMemObject(pos);
    return st;
}

dipole_status dipole_paged_kv_write(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                    const dipole_paged_kv *paged, int new_tokens,
                                    const int *positions, const dipole_tensor *k_new,
                                    const dipole_tensor *v_new, const dipole_tensor *v2_new,
                                    const dipole_tensor *k_pages, const dipole_tensor *v_pages,
                                    const dipole_tensor *v2_pages, cl_event *event)
{
    static const char *const call = "dipole_paged_kv_write";
    dp_problem p;
    dipole_status st = dp_call_begin(ctx, call, desc, event, &p);
    if (!ctx)
        return st;
    const dipole_tensor *const pools[3] = {k_pages, v_pages, v2_pages};
    const dipole_tensor *const srcs[3] = {k_new, v_new, v2_new};
    static const char *const names[7] = {"k_pages", "v_pages", "v2_pages",          "k_new",
                                         "v_new",   "v2_new",  "paged->block_table"};
    paged_view view = {0};
    if (st == DIPOLE_SUCCESS && new_tokens < 0)
        st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "%s: new_tokens = %d is negative", call,
                     new_tokens);
    if (st == DIPOLE_SUCCESS && new_tokens > 0 && !positions)
        st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "%s: positions is NULL", call);
    if (st == DIPOLE_SUCCESS && new_tokens == 0) {
        pthread_mutex_unlock(&ctx->lock);
        return DIPOLE_SUCCESS;
    }
    if (st == DIPOLE_SUCCESS)
        st = view_open(ctx, &p, call, paged, pools, names, &view);
    if (st == DIPOLE_SUCCESS)
        st = check_write_tensors(ctx, &p, new_tokens, &view, pools, srcs, names);
    if (st == DIPOLE_SUCCESS)
        st = check_writes(ctx, &p, &view, new_tokens, positions, pools, srcs, names);
    view_close(&view);
    if (st == DIPOLE_SUCCESS)
        st = launch_writes(ctx, &p, new_tokens, positions, paged, pools, srcs, event);
    pthread_mutex_unlock(&ctx->lock);
    return st;
}
