/* libFuzzer harness: random descriptors (every field, valid or not), random device-tensor
 * layouts and small real calls. It aborts — a finding — when
 *   - dipole_attn_desc_validate disagrees with the rules written out independently below,
 *   - a valid small call fails with anything but UNSUPPORTED (a path that cannot serve it),
 *   - a result differs from the double-precision reference,
 *   - a tensor layout is accepted that reaches outside its buffer, or refused while inside.
 * Built only with clang and -Dfuzz=enabled (see meson_options.txt); run by the fuzz test. */
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dipole/dipole.h"

typedef struct reader {
    const uint8_t *p;
    size_t n;
} reader;

static uint8_t u8(reader *r)
{
    if (!r->n)
        return 0;
    r->n--;
    return *r->p++;
}

static uint32_t u32(reader *r)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v = v << 8 | u8(r);
    return v;
}

/* Mostly small values around the valid range, sometimes anything. */
static int pick_int(reader *r, long long lo, long long hi)
{
    const uint8_t mode = u8(r);
    if (mode < 200) {
        const long long v = lo + (long long)(u8(r) % (unsigned long long)(hi - lo + 1));
        return v > INT32_MAX ? INT32_MAX : (int)v;
    }
    if (mode < 230) {
        static const int edge[] = {0, -1, -2, 1, INT32_MAX, INT32_MIN, 1 << 28, (1 << 28) + 1,
                                   65536, 65537, 1 << 20, 1 << 30};
        return edge[u8(r) % (sizeof edge / sizeof edge[0])];
    }
    return (int)u32(r);
}

static float pick_float(reader *r)
{
    static const float table[] = {0.0f, 1.0f, 0.25f, -0.5f, 1e-30f, 1e30f, NAN, INFINITY, -INFINITY,
                                  -0.0f, 3.0f, 1e-45f};
    const uint8_t mode = u8(r);
    if (mode < 230)
        return table[u8(r) % (sizeof table / sizeof table[0])];
    uint32_t bits = u32(r);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* The descriptor rules as the header documents them, written independently of src/desc.c. */
static bool expect_valid(const dipole_attn_desc *d)
{
    if ((unsigned)d->variant > 4 || (unsigned)d->path > 2 || (unsigned)d->dtype > 2)
        return false;
    if (d->batch < 1 || d->heads_q < 1 || d->heads_kv < 1 || d->seq_q < 1 || d->seq_k < 1 ||
        d->head_dim < 1 || d->seq_q > (1 << 28) || d->seq_k > (1 << 28) || d->head_dim > 65536)
        return false;
    if (d->head_dim_v < 0 || d->head_dim_v > 65536)
        return false;
    /* DIFF's q and k hold two heads per head: 2 heads_q must be an int. */
    const int ns = d->variant == DIPOLE_DIFF ? 2 : 1, dv = d->head_dim_v ? d->head_dim_v : d->head_dim;
    if (ns == 2 && d->heads_q > INT32_MAX / 2)
        return false;
    if (d->heads_q % d->heads_kv)
        return false;
    /* Byte sizes of q, k, v, out and lse must fit in size_t (64-bit here). */
    const unsigned __int128 q = (unsigned __int128)d->batch * d->seq_q * ns * d->heads_q * d->head_dim * 4;
    const unsigned __int128 k = (unsigned __int128)d->batch * d->seq_k * ns * d->heads_kv * d->head_dim * 4;
    const unsigned __int128 v = (unsigned __int128)d->batch * d->seq_k * d->heads_kv * dv * 4;
    const unsigned __int128 o = (unsigned __int128)d->batch * d->seq_q * d->heads_q * dv * 4;
    const unsigned __int128 l = (unsigned __int128)d->batch * d->heads_q * d->seq_q * 2 * 4;
    if (q > SIZE_MAX || k > SIZE_MAX || v > SIZE_MAX || o > SIZE_MAX || l > SIZE_MAX)
        return false;
    if (!isfinite(d->scale) || d->window_left < -1 || d->window_right < -1)
        return false;
    for (int b = 0; d->key_lengths && b < d->batch; b++)
        if (d->key_lengths[b] < 0 || d->key_lengths[b] > d->seq_k)
            return false;
    if (d->variant == DIPOLE_TWO_POLE || d->variant == DIPOLE_DIFF)
        for (int h = 0; h < d->heads_q; h++)
            if ((d->pos_weight && !isfinite(d->pos_weight[h])) ||
                (d->neg_weight && !isfinite(d->neg_weight[h])))
                return false;
    /* Packed: both arrays or neither, no key lengths, from 0, never decreasing, ending at the
     * tensors' rows. */
    if (!d->cu_seqlens_q != !d->cu_seqlens_k || (d->cu_seqlens_q && d->key_lengths))
        return false;
    const int *cu[2] = {d->cu_seqlens_q, d->cu_seqlens_k}, rows[2] = {d->seq_q, d->seq_k};
    for (int a = 0; a < 2 && cu[a]; a++) {
        if (cu[a][0] != 0 || cu[a][d->batch] != rows[a])
            return false;
        for (int b = 0; b < d->batch; b++)
            if (cu[a][b + 1] < cu[a][b])
                return false;
    }
    if (!isfinite(d->softcap) || d->softcap < 0)
        return false;
    for (int h = 0; d->alibi_slopes && h < d->heads_q; h++)
        if (!isfinite(d->alibi_slopes[h]))
            return false;
    if (d->bias && d->bias->dtype != DIPOLE_F32 && d->bias->dtype != d->dtype)
        return false;
    return true;
}

/* Sequence b's first query row, first key, and lengths (packed or not). */
static int first_q(const dipole_attn_desc *d, int b)
{
    return d->cu_seqlens_q ? d->cu_seqlens_q[b] : 0;
}
static int first_k(const dipole_attn_desc *d, int b)
{
    return d->cu_seqlens_k ? d->cu_seqlens_k[b] : 0;
}
static int len_q(const dipole_attn_desc *d, int b)
{
    return d->cu_seqlens_q ? d->cu_seqlens_q[b + 1] - d->cu_seqlens_q[b] : d->seq_q;
}
static int len_k(const dipole_attn_desc *d, int b)
{
    if (d->cu_seqlens_k)
        return d->cu_seqlens_k[b + 1] - d->cu_seqlens_k[b];
    return d->key_lengths ? d->key_lengths[b] : d->seq_k;
}

/* The score the variant sees, written from the header's words: soft-cap, ALiBi, bias (a
 * float32 host bias in this harness). */
static double modified_score(const dipole_attn_desc *d, int b, int h, int i, int j, double s)
{
    if (d->softcap > 0)
        s = d->softcap * tanh(s / d->softcap);
    if (d->alibi_slopes)
        s -= d->alibi_slopes[h] * fabs((double)i + len_k(d, b) - len_q(d, b) - j);
    if (d->bias) {
        const dipole_bias *x = d->bias;
        const float *bh = x->host;
        s += bh[x->offset + (d->cu_seqlens_q ? 0 : (size_t)b * x->stride_batch) +
                (size_t)h * x->stride_head + (size_t)(first_q(d, b) + i) * x->stride_row +
                (size_t)(first_k(d, b) + j)];
    }
    return s;
}

static dipole_ctx *ctx;
static bool no_device;

static void finding(const char *what, const dipole_attn_desc *d, dipole_status st)
{
    fprintf(stderr,
            "FINDING: %s (status %s: %s)\n  variant %d path %d dtype %d B %d Hq %d Hkv %d Nq %d Nk %d d %d "
            "dv %d scale %g causal %d win (%d, %d) kl %s packed %s softcap %g alibi %s bias %s\n",
            what, dipole_status_string(st), ctx ? dipole_ctx_last_error(ctx) : "",
            (int)d->variant, (int)d->path, (int)d->dtype, d->batch, d->heads_q, d->heads_kv, d->seq_q, d->seq_k,
            d->head_dim, d->head_dim_v, (double)d->scale, d->causal, d->window_left, d->window_right,
            d->key_lengths ? "yes" : "no", d->cu_seqlens_q ? "yes" : "no", (double)d->softcap,
            d->alibi_slopes ? "yes" : "no", d->bias ? "yes" : "no");
    abort();
}

/* The fp32 bound, plus the output's own rounding in half storage (the inputs, on a 1/32 grid
 * in [-2, 2), are exact in every dtype). */
static bool close_enough(const float *got, const float *ref, size_t n, dipole_dtype dt)
{
    const double rtol = dt == DIPOLE_BF16 ? 1e-3 + 1.0 / 256 : dt == DIPOLE_F16 ? 1e-3 + 1.0 / 2048 : 1e-3;
    for (size_t i = 0; i < n; i++) {
        if (isnan(ref[i]) || isnan(got[i])) {
            if (isnan(ref[i]) != isnan(got[i]))
                return false;
            continue;
        }
        if (!(fabs((double)got[i] - ref[i]) <= 1e-3 + rtol * fabs((double)ref[i])))
            return false;
    }
    return true;
}

/* SIGNEXP and ROUTED jump at s = 0; the kernel scales q before the dot product, the reference
 * after, so a score within rounding of 0 may take either side. Such inputs prove nothing. */
static bool sign_ambiguous(const dipole_attn_desc *d, const float *q, const float *k)
{
    if (d->variant != DIPOLE_SIGNEXP && d->variant != DIPOLE_ROUTED)
        return false;
    const int D = d->head_dim, g = d->heads_q / d->heads_kv;
    const double scale = d->scale != 0 ? d->scale : 1.0 / sqrt((double)D);
    for (int b = 0; b < d->batch; b++)
        for (int h = 0; h < d->heads_q; h++)
            for (int i = 0; i < len_q(d, b); i++)
                for (int j = 0; j < len_k(d, b); j++) {
                    const size_t tb = d->cu_seqlens_q ? 0 : (size_t)b;
                    double s = 0;
                    for (int c = 0; c < D; c++)
                        s += (double)q[((tb * d->seq_q + first_q(d, b) + i) * d->heads_q + h) * D + c] *
                             k[((tb * d->seq_k + first_k(d, b) + j) * d->heads_kv + h / g) * D + c];
                    s = modified_score(d, b, h, i, j, scale * s);
                    /* the dot's own rounding, scaled, plus the modifiers' float rounding */
                    if (fabs(s) < 1e-3 * fabs(scale) + 1e-5)
                        return true;
                }
    return false;
}

/* Gathers a strided device tensor back into dense host layout. */
static void gather(const float *buf, const dipole_tensor *t, int B, int N, int H, int D, float *dense)
{
    for (int b = 0; b < B; b++)
        for (int s = 0; s < N; s++)
            for (int h = 0; h < H; h++)
                memcpy(dense + (((size_t)b * N + s) * H + h) * D,
                       buf + t->offset + b * t->stride_batch + s * t->stride_seq + h * t->stride_head,
                       sizeof(float) * D);
}

/* The bias's host array (a float32 [4, 16, 40, 40] at most, see LLVMFuzzerTestOneInput), and
 * dd: desc with its bias in a device buffer holding all of it (released by the caller). */
static float bias_host[4 * 16 * 40 * 40];
static cl_mem bias_device(const dipole_attn_desc *desc, dipole_attn_desc *dd, dipole_bias *copy)
{
    *dd = *desc;
    if (!desc->bias)
        return NULL;
    cl_int err;
    cl_mem m = clCreateBuffer(dipole_ctx_cl_context(ctx), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                              sizeof bias_host, bias_host, &err);
    if (!m)
        abort();
    *copy = *desc->bias;
    copy->buffer = m;
    dd->bias = copy;
    return m;
}

/* A small call on the device through random strided layouts in one shared buffer. */
static void device_call(reader *r, const dipole_attn_desc *desc)
{
    dipole_attn_desc dd;
    dipole_bias bias_copy;
    cl_mem bias_buf = bias_device(desc, &dd, &bias_copy);
    const dipole_attn_desc *d = &dd;
    /* packed: the tensors are one batch */
    const int B = d->cu_seqlens_q ? 1 : d->batch, Nq = d->seq_q, Nk = d->seq_k, Hq = d->heads_q,
              Hkv = d->heads_kv, D = d->head_dim, DV = d->head_dim_v ? d->head_dim_v : D;
    const int NS = d->variant == DIPOLE_DIFF ? 2 : 1; /* DIFF: q and k hold 2 heads a head */
    enum { CAP = 1 << 17 };
    static float host[CAP];
    for (size_t i = 0; i < CAP; i++) /* values on a 1/32 grid in [-2, 2) */
        host[i] = (float)((int)((i * 2654435761u + u8(r)) % 128) - 64) / 32.0f;
    dipole_tensor t[4]; /* q, k, v, v2; out is dense in its own buffer */
    const int seqs[4] = {Nq, Nk, Nk, Nk}, heads[4] = {NS * Hq, NS * Hkv, Hkv, Hkv},
              dims[4] = {D, D, DV, DV};
    bool inside = true;
    for (int i = 0; i < 4; i++) {
        const size_t dense_head = (size_t)dims[i], dense_seq = (size_t)heads[i] * dims[i];
        const uint8_t mode = u8(r);
        t[i].offset = u8(r) % 64;
        t[i].stride_head = mode & 1 ? dense_head + u8(r) % 4 : dense_head;
        t[i].stride_seq = mode & 2 ? (size_t)heads[i] * t[i].stride_head + u8(r) % 4 : dense_seq;
        t[i].stride_batch = (size_t)seqs[i] * t[i].stride_seq + (mode & 4 ? u8(r) % 8 : 0);
        if (mode & 8) /* inputs may broadcast a row: stride 0 */
            t[i].stride_head = 0;
        if ((mode & 0xf0) == 0xf0)
            t[i].offset = (size_t)u32(r);
        const unsigned __int128 last = (unsigned __int128)t[i].offset +
                                       (unsigned __int128)(B - 1) * t[i].stride_batch +
                                       (unsigned __int128)(seqs[i] - 1) * t[i].stride_seq +
                                       (unsigned __int128)(heads[i] - 1) * t[i].stride_head + dims[i];
        inside = inside && last <= CAP;
    }
    const size_t nq = (size_t)B * Nq * NS * Hq * D, nk = (size_t)B * Nk * NS * Hkv * D;
    const size_t nv = (size_t)B * Nk * Hkv * DV, no = (size_t)B * Nq * Hq * DV;
    const size_t es = dipole_dtype_size(d->dtype);
    static uint32_t stored[CAP]; /* host in the call's storage (room for float) */
    if (dipole_convert(d->dtype, stored, DIPOLE_F32, host, CAP) != DIPOLE_SUCCESS)
        abort();
    cl_int err;
    cl_mem in = clCreateBuffer(dipole_ctx_cl_context(ctx), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                               CAP * es, stored, &err);
    cl_mem outb = clCreateBuffer(dipole_ctx_cl_context(ctx), CL_MEM_WRITE_ONLY, no * es, NULL, &err);
    if (!in || !outb)
        abort();
    for (int i = 0; i < 4; i++)
        t[i].buffer = in;
    dipole_tensor to = dipole_tensor_dense(outb, Nq, Hq, DV);
    dipole_status st = dipole_attention(ctx, d, &t[0], &t[1], &t[2], &t[3], &to, NULL, NULL);
    if (!inside && st == DIPOLE_SUCCESS)
        finding("a layout reaching outside its buffer was accepted", d, st);
    if (inside && st != DIPOLE_SUCCESS && st != DIPOLE_ERR_UNSUPPORTED)
        finding("a layout inside its buffer was refused", d, st);
    if (st == DIPOLE_SUCCESS) {
        float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nv * 4), *v2 = malloc(nv * 4);
        float *got = malloc(no * 4), *ref = malloc(no * 4);
        if (!q || !k || !v || !v2 || !got || !ref)
            abort();
        gather(host, &t[0], B, Nq, NS * Hq, D, q);
        gather(host, &t[1], B, Nk, NS * Hkv, D, k);
        gather(host, &t[2], B, Nk, Hkv, DV, v);
        gather(host, &t[3], B, Nk, Hkv, DV, v2);
        if (clEnqueueReadBuffer(dipole_ctx_queue(ctx), outb, CL_TRUE, 0, no * es, got, 0, NULL,
                                NULL) != CL_SUCCESS ||
            dipole_convert(DIPOLE_F32, got, d->dtype, got, no) != DIPOLE_SUCCESS)
            abort();
        if (dipole_reference(d, q, k, v, v2, ref) != DIPOLE_SUCCESS)
            finding("the reference refused a valid descriptor", d, st);
        if (!sign_ambiguous(d, q, k) && !close_enough(got, ref, no, d->dtype))
            finding("device result differs from the reference", d, st);
        free(q), free(k), free(v), free(v2), free(got), free(ref);
    }
    clReleaseMemObject(in);
    clReleaseMemObject(outb);
    if (bias_buf)
        clReleaseMemObject(bias_buf);
}

/* The same problem from a paged cache: pools of random page size laid out in one buffer, a
 * block table of random entries (some negative or past the pools). The call must run, and
 * agree with the reference on the keys the table gathers, exactly when every page a
 * sequence's keys reach is inside the pools (each holds the pages its buffer has room for past
 * its offset) and every length fits the table; otherwise it must refuse. */
static void paged_call(reader *r, const dipole_attn_desc *desc)
{
    dipole_attn_desc d;
    dipole_bias bias_copy;
    cl_mem bias_buf = bias_device(desc, &d, &bias_copy);
    const int B = d.batch, Nq = d.seq_q, Nk = d.seq_k, Hq = d.heads_q, Hkv = d.heads_kv,
              D = d.head_dim;
    /* DIFF's q and k hold two heads a head; v, v2 and out have head_dim_v */
    const int NS = d.variant == DIPOLE_DIFF ? 2 : 1, DV = d.head_dim_v ? d.head_dim_v : D;
    int kl[4];
    for (int b = 0; b < B; b++)
        kl[b] = desc->key_lengths ? desc->key_lengths[b] : Nk;
    d.key_lengths = kl;
    const int ps = 1 + u8(r) % 8, max_pages = (Nk + ps - 1) / ps + u8(r) % 2;
    const int pages = 1 + u8(r) % (B * max_pages + 2);
    /* elements of a page of each pool: k's heads and head dim, v's and v2's */
    const size_t page[3] = {(size_t)ps * NS * Hkv * D, (size_t)ps * Hkv * DV,
                            (size_t)ps * Hkv * DV};
    const size_t off = u8(r) % 16;
    /* K, V, V2 pools one after another, `pages` pages each; the last has exactly that room */
    size_t at[3], elems = off;
    for (int i = 0; i < 3; i++) {
        at[i] = elems;
        elems += (size_t)pages * page[i];
    }
    /* the fewest pages among the pools the call reads, each holding what its buffer has room
     * for past its offset */
    const bool v2 = d.variant == DIPOLE_ROUTED || d.variant == DIPOLE_TWO_POLE;
    long long pool = LLONG_MAX;
    for (int i = 0; i < (v2 ? 3 : 2); i++) {
        const long long room = (long long)((elems - at[i]) / page[i]);
        pool = room < pool ? room : pool;
    }
    int table[4 * 41];
    bool valid = true;
    for (int b = 0; b < B; b++) {
        valid = valid && kl[b] <= max_pages * ps;
        for (int c = 0; c < max_pages; c++) {
            const int x = u8(r);
            table[b * max_pages + c] = x < 8 ? -1 - x % 2 : x < 16 ? (int)pool + x % 3 : x % (int)pool;
            if (c * ps < kl[b])
                valid = valid && table[b * max_pages + c] >= 0 && table[b * max_pages + c] < pool;
        }
    }
    /* 3 pools of 3 * 41 + 2 pages of 8 slots x 9 KV heads x 33 (DIFF: a k pool of twice that
     * and no v2), or q's 3 x 40 x 9 x 33; a call past it is skipped */
    enum { PAGED_CAP = 3 * 125 * 8 * 9 * 33 + 16 };
    static float host[PAGED_CAP];
    static uint32_t stored[PAGED_CAP];
    const size_t nq = (size_t)B * Nq * NS * Hq * D, no = (size_t)B * Nq * Hq * DV;
    const size_t fill = elems > nq ? elems : nq;
    if (fill > PAGED_CAP) /* the harness's own limit, not the library's */
        return;
    for (size_t i = 0; i < fill; i++)
        host[i] = (float)((int)((i * 2654435761u + 7) % 128) - 64) / 32.0f;
    const size_t es = dipole_dtype_size(d.dtype);
    if (dipole_convert(d.dtype, stored, DIPOLE_F32, host, fill) != DIPOLE_SUCCESS)
        abort();
    cl_int err;
    cl_context cc = dipole_ctx_cl_context(ctx);
    cl_mem pb = clCreateBuffer(cc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, elems * es, stored, &err);
    cl_mem tb = clCreateBuffer(cc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                               sizeof(int) * (size_t)B * max_pages, table, &err);
    cl_mem qb = clCreateBuffer(cc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, nq * es, stored, &err);
    cl_mem ob = clCreateBuffer(cc, CL_MEM_WRITE_ONLY, no * es, NULL, &err);
    if (!pb || !tb || !qb || !ob)
        abort();
    dipole_tensor pools[3];
    for (int i = 0; i < 3; i++) {
        pools[i] = i == 0 ? dipole_tensor_dense(pb, ps, NS * Hkv, D)
                          : dipole_tensor_dense(pb, ps, Hkv, DV);
        pools[i].offset = at[i];
    }
    const dipole_tensor tq = dipole_tensor_dense(qb, Nq, NS * Hq, D);
    const dipole_tensor to = dipole_tensor_dense(ob, Nq, Hq, DV);
    const dipole_paged_kv pg = {tb, max_pages, ps};
    const dipole_status st = dipole_attention_paged(ctx, &d, &tq, &pools[0], &pools[1], &pools[2],
                                                    &pg, &to, NULL, NULL);
    if (valid && st != DIPOLE_SUCCESS && st != DIPOLE_ERR_UNSUPPORTED)
        finding("a paged call inside its pools was refused", &d, st);
    if (!valid && st == DIPOLE_SUCCESS)
        finding("a paged call reaching outside its pools or table was accepted", &d, st);
    if (st == DIPOLE_SUCCESS) {
        const size_t row[3] = {(size_t)NS * Hkv * D, (size_t)Hkv * DV, (size_t)Hkv * DV};
        float *q = malloc(nq * 4), *kv[3], *got = malloc(no * 4), *ref = malloc(no * 4);
        for (int i = 0; i < 3; i++)
            kv[i] = calloc((size_t)B * Nk * row[i], 4);
        if (!q || !kv[0] || !kv[1] || !kv[2] || !got || !ref)
            abort();
        memcpy(q, host, nq * 4);
        for (int i = 0; i < (v2 ? 3 : 2); i++)
            for (int b = 0; b < B; b++)
                for (int j = 0; j < kl[b]; j++)
                    memcpy(kv[i] + ((size_t)b * Nk + j) * row[i],
                           host + pools[i].offset +
                               ((size_t)table[b * max_pages + j / ps] * ps + j % ps) * row[i],
                           row[i] * 4);
        if (clEnqueueReadBuffer(dipole_ctx_queue(ctx), ob, CL_TRUE, 0, no * es, got, 0, NULL,
                                NULL) != CL_SUCCESS ||
            dipole_convert(DIPOLE_F32, got, d.dtype, got, no) != DIPOLE_SUCCESS)
            abort();
        if (dipole_reference(&d, q, kv[0], kv[1], v2 ? kv[2] : NULL, ref) != DIPOLE_SUCCESS)
            finding("the reference refused a valid descriptor", &d, st);
        if (!sign_ambiguous(&d, q, kv[0]) && !close_enough(got, ref, no, d.dtype))
            finding("paged result differs from the reference", &d, st);
        free(q), free(kv[0]), free(kv[1]), free(kv[2]), free(got), free(ref);
    }
    clReleaseMemObject(pb);
    clReleaseMemObject(tb);
    clReleaseMemObject(qb);
    clReleaseMemObject(ob);
    if (bias_buf)
        clReleaseMemObject(bias_buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size};
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = (dipole_variant)pick_int(&r, 0, 5);
    d.path = (dipole_path)pick_int(&r, 0, 3);
    d.batch = pick_int(&r, -1, 3);
    d.heads_kv = pick_int(&r, 0, 3);
    const long long hq = (long long)d.heads_kv * pick_int(&r, 0, 3) + (u8(&r) < 20 ? 1 : 0);
    d.heads_q = hq > INT32_MAX ? INT32_MAX : hq < INT32_MIN ? INT32_MIN : (int)hq;
    d.seq_q = pick_int(&r, -1, 40);
    d.seq_k = pick_int(&r, -1, 40);
    d.head_dim = pick_int(&r, -1, 33);
    d.head_dim_v = u8(&r) < 160 ? 0 : pick_int(&r, -1, 33); /* mostly head_dim's */
    d.scale = u8(&r) < 128 ? 0.0f : pick_float(&r);
    d.causal = u8(&r) & 1;
    d.window_left = pick_int(&r, -2, 12);
    d.window_right = pick_int(&r, -2, 12);
    int kl[4];
    float pw[16], nw[16];
    if (u8(&r) < 80 && d.batch >= 1 && d.batch <= 4) {
        for (int b = 0; b < d.batch; b++)
            kl[b] = pick_int(&r, -1, (long long)d.seq_k + 1);
        d.key_lengths = kl;
    }
    if (u8(&r) < 80 && d.heads_q >= 1 && d.heads_q <= 16) {
        for (int h = 0; h < d.heads_q; h++)
            pw[h] = u8(&r) < 250 ? (float)(u8(&r) % 9) / 4.0f - 1.0f : pick_float(&r),
            nw[h] = u8(&r) < 250 ? (float)(u8(&r) % 9) / 4.0f - 1.0f : pick_float(&r);
        d.pos_weight = pw;
        d.neg_weight = nw;
    }
    int cuq[5], cuk[5];
    if (u8(&r) < 60 && d.batch >= 1 && d.batch <= 4) {
        /* mostly consistent packed lengths (0 included), sometimes not */
        cuq[0] = cuk[0] = u8(&r) < 250 ? 0 : 1;
        for (int b = 0; b < d.batch; b++) {
            cuq[b + 1] = cuq[b] + pick_int(&r, u8(&r) < 240 ? 0 : -2, 10) % 11;
            cuk[b + 1] = cuk[b] + pick_int(&r, u8(&r) < 240 ? 0 : -2, 10) % 11;
        }
        d.cu_seqlens_q = cuq;
        d.cu_seqlens_k = u8(&r) < 250 ? cuk : NULL;
        if (u8(&r) < 230) {
            d.seq_q = cuq[d.batch];
            d.seq_k = cuk[d.batch];
        }
        if (u8(&r) < 230)
            d.key_lengths = NULL;
    }
    d.softcap = u8(&r) < 200 ? 0.0f : u8(&r) < 200 ? (float)(1 + u8(&r) % 8) / 2 : pick_float(&r);
    float slopes[16];
    if (u8(&r) < 50 && d.heads_q >= 1 && d.heads_q <= 16) {
        for (int h = 0; h < d.heads_q; h++)
            slopes[h] = u8(&r) < 250 ? (float)(u8(&r) % 9) / 8.0f : pick_float(&r);
        d.alibi_slopes = slopes;
    }
    dipole_bias bias = {0};
    if (u8(&r) < 50 && d.batch >= 1 && d.batch <= 4 && d.heads_q >= 1 && d.heads_q <= 16 &&
        d.seq_q >= 1 && d.seq_q <= 40 && d.seq_k >= 1 && d.seq_k <= 40) {
        /* a [batch, heads_q, seq_q, seq_k] view, broadcast over batch and/or heads, on the
         * inputs' grid with some -inf entries (whole rows too) */
        const uint8_t mode = u8(&r);
        bias.dtype = mode < 250 ? DIPOLE_F32 : (dipole_dtype)7;
        bias.stride_row = (size_t)d.seq_k;
        bias.stride_head = mode & 1 ? 0 : (size_t)d.seq_q * d.seq_k;
        bias.stride_batch = mode & 2 ? 0 : (size_t)d.heads_q * d.seq_q * d.seq_k;
        const size_t n = (size_t)d.batch * d.heads_q * d.seq_q * d.seq_k;
        const uint8_t salt = u8(&r), holes = u8(&r) % 4;
        for (size_t i = 0; i < n; i++) {
            const unsigned x = (unsigned)((i * 2654435761u + salt) % 128);
            bias_host[i] = x < 4 * holes ? -INFINITY : (float)((int)x - 64) / 32.0f;
        }
        if (mode & 4)
            for (int j = 0; j < d.seq_k; j++)
                bias_host[(size_t)(d.seq_q - 1) * d.seq_k + j] = -INFINITY;
        bias.host = bias_host;
        d.bias = &bias;
    }
    d.dtype = (dipole_dtype)pick_int(&r, 0, 3);
    /* Arrays shorter than the fields claim are the caller's bug, not dipole's: keep them in
     * step for the descriptor the library sees. */
    if (d.key_lengths && !(d.batch >= 1 && d.batch <= 4))
        d.key_lengths = NULL;
    if (d.pos_weight && !(d.heads_q >= 1 && d.heads_q <= 16))
        d.pos_weight = d.neg_weight = NULL;
    if (d.cu_seqlens_q && !(d.batch >= 1 && d.batch <= 4))
        d.cu_seqlens_q = d.cu_seqlens_k = NULL;
    if (d.alibi_slopes && !(d.heads_q >= 1 && d.heads_q <= 16))
        d.alibi_slopes = NULL;
    if (d.bias && !(d.batch >= 1 && d.batch <= 4 && d.heads_q >= 1 && d.heads_q <= 16 &&
                    d.seq_q >= 1 && d.seq_q <= 40 && d.seq_k >= 1 && d.seq_k <= 40))
        d.bias = NULL;

    const dipole_status st = dipole_attn_desc_validate(&d);
    const bool valid = expect_valid(&d);
    if (valid != (st == DIPOLE_SUCCESS))
        finding(valid ? "a valid descriptor was refused" : "an invalid descriptor was accepted", &d,
                st);
    if (st != DIPOLE_SUCCESS && !*dipole_thread_last_error())
        finding("a refusal without a message", &d, st);
    if (!valid)
        return 0;

    /* Small real calls: scales that keep float and double scores comparable. */
    if (no_device || d.seq_q > 40 || d.seq_k > 40 || d.head_dim > 33 || d.head_dim_v > 33 || d.batch > 3 ||
        d.heads_q > 9 || fabsf(d.scale) > 4.0f || (d.scale != 0 && fabsf(d.scale) < 1e-20f))
        return 0;
    if (!ctx && dipole_ctx_create(&ctx, NULL) != DIPOLE_SUCCESS) {
        no_device = true;
        return 0;
    }
    device_call(&r, &d);
    /* A paged call takes key lengths, never packed rows. */
    if (u8(&r) < 64 && !d.cu_seqlens_q)
        paged_call(&r, &d);
    return 0;
}
