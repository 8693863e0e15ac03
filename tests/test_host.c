/* The host twins over the caller's arrays: in place where the device shares host memory, at
 * any address (aligned, a gap below the alignment, not even element-aligned: the copy), on
 * both paths, and with an output that overlaps an input. Every placement must give the bits the device-buffer
 * call gives, since the same kernels run on the same values. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

enum { ALIGN = 4096 };

static dipole_attn_desc host_desc(void)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = DIPOLE_TWO_POLE;
    d.batch = 2, d.heads_q = 4, d.heads_kv = 2, d.seq_q = 24, d.seq_k = 40, d.head_dim = 16;
    return d;
}

/* A copy of n bytes of src `shift` bytes past an ALIGN-aligned address (freed with the block). */
typedef struct placed {
    void *block;
    void *at;
} placed;

static placed place(const void *src, size_t n, size_t shift)
{
    placed p = {aligned_alloc(ALIGN, (n + shift + ALIGN) / ALIGN * ALIGN), NULL};
    ck_assert_ptr_nonnull(p.block);
    p.at = (char *)p.block + shift;
    if (src)
        memcpy(p.at, src, n);
    else
        memset(p.at, 0xff, n); /* outputs start as NaN: no path may read them before writing */
    return p;
}

static cl_mem dense_buffer(const float *host, size_t n)
{
    cl_int err;
    cl_mem m = clCreateBuffer(dipole_ctx_cl_context(tu_ctx()),
                              CL_MEM_READ_WRITE | (host ? CL_MEM_COPY_HOST_PTR : 0),
                              n * sizeof(float), (void *)host, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    return m;
}

/* out and lse of desc from device buffers: what every host placement must reproduce. */
static void device_forward(const dipole_attn_desc *d, const float *const in[4], float *out,
                           float *lse)
{
    dipole_ctx *ctx = tu_ctx();
    const size_t nq = tu_q_elems(d), nk = tu_kv_elems(d);
    const size_t nl = (size_t)dipole_lse_count(d->variant) * d->batch * d->heads_q * d->seq_q;
    cl_mem b[6] = {dense_buffer(in[0], nq), dense_buffer(in[1], nk), dense_buffer(in[2], nk),
                   dense_buffer(in[3], nk), dense_buffer(NULL, nq), dense_buffer(NULL, nl)};
    dipole_tensor t[5];
    for (int i = 0; i < 5; i++)
        t[i] = i == 0 || i == 4 ? dipole_tensor_dense(b[i], d->seq_q, d->heads_q, d->head_dim)
                                : dipole_tensor_dense(b[i], d->seq_k, d->heads_kv, d->head_dim);
    ck_assert_int_eq(dipole_attention(ctx, d, &t[0], &t[1], &t[2], &t[3], &t[4], b[5], NULL),
                     DIPOLE_SUCCESS);
    cl_command_queue queue = dipole_ctx_queue(ctx);
    ck_assert_int_eq(clEnqueueReadBuffer(queue, b[4], CL_TRUE, 0, nq * 4, out, 0, NULL, NULL),
                     CL_SUCCESS);
    ck_assert_int_eq(clEnqueueReadBuffer(queue, b[5], CL_TRUE, 0, nl * 4, lse, 0, NULL, NULL),
                     CL_SUCCESS);
    for (int i = 0; i < 6; i++)
        clReleaseMemObject(b[i]);
}

/* Byte shifts from an aligned block: in place at offset 0, in place with a gap (4, 36, 68),
 * and 2 (no float starts there: the copy). */
static const size_t shifts[] = {0, 4, 36, 68, 2};

/* Both paths: the GEMM path's outputs are CLBlast's C matrices (beta 0, then 1). */
static const dipole_path paths[] = {DIPOLE_PATH_TILED, DIPOLE_PATH_GEMM};

START_TEST(test_forward_placements)
{
    dipole_attn_desc d = host_desc();
    d.path = paths[_i];
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d), nl = 2 * 2 * 4 * 24;
    float *in[4] = {tu_random(nq, 1, 1), tu_random(nk, 2, 1), tu_random(nk, 3, 1),
                    tu_random(nk, 4, 1)};
    float *want = malloc(nq * 4), *want_lse = malloc(nl * 4);
    device_forward(&d, (const float *const *)in, want, want_lse);
    for (size_t s = 0; s < sizeof shifts / sizeof shifts[0]; s++) {
        const size_t sh = shifts[s];
        placed p[6] = {place(in[0], nq * 4, sh), place(in[1], nk * 4, sh), place(in[2], nk * 4, sh),
                       place(in[3], nk * 4, sh), place(NULL, nq * 4, sh), place(NULL, nl * 4, sh)};
        ck_assert_int_eq(dipole_attention_host_lse(tu_ctx(), &d, p[0].at, p[1].at, p[2].at,
                                                   p[3].at, p[4].at, p[5].at),
                         DIPOLE_SUCCESS);
        ck_assert_msg(memcmp(p[4].at, want, nq * 4) == 0, "out differs at shift %zu", sh);
        ck_assert_msg(memcmp(p[5].at, want_lse, nl * 4) == 0, "lse differs at shift %zu", sh);
        ck_assert_msg(memcmp(p[0].at, in[0], nq * 4) == 0, "q changed at shift %zu", sh);
        for (int i = 0; i < 6; i++)
            free(p[i].block);
    }
    for (int i = 0; i < 4; i++)
        free(in[i]);
    free(want), free(want_lse);
}
END_TEST

/* out == q: the call must read q whole before out lands in the same array. */
START_TEST(test_forward_out_overlaps_q)
{
    dipole_attn_desc d = host_desc();
    d.seq_k = d.seq_q, d.heads_kv = d.heads_q; /* so q and k have one shape, out == k too */
    const size_t nq = tu_q_elems(&d), nl = 2 * 2 * 4 * 24;
    float *in[4] = {tu_random(nq, 5, 1), tu_random(nq, 6, 1), tu_random(nq, 7, 1),
                    tu_random(nq, 8, 1)};
    float *want = malloc(nq * 4), *want_lse = malloc(nl * 4), *lse = malloc(nl * 4);
    device_forward(&d, (const float *const *)in, want, want_lse);
    placed q = place(in[0], nq * 4, 0), k = place(in[1], nq * 4, 0);
    ck_assert_int_eq(
        dipole_attention_host_lse(tu_ctx(), &d, q.at, k.at, in[2], in[3], q.at, lse),
        DIPOLE_SUCCESS);
    ck_assert(memcmp(q.at, want, nq * 4) == 0);
    ck_assert(memcmp(lse, want_lse, nl * 4) == 0);
    /* out inside k, half a row in: overlapping without being the same array */
    placed big = place(NULL, nq * 4 + 64, 0);
    memcpy(big.at, in[1], nq * 4);
    ck_assert_int_eq(dipole_attention_host_lse(tu_ctx(), &d, in[0], big.at, in[2], in[3],
                                               (char *)big.at + 32, lse),
                     DIPOLE_SUCCESS);
    ck_assert(memcmp((char *)big.at + 32, want, nq * 4) == 0);
    free(q.block), free(k.block), free(big.block);
    for (int i = 0; i < 4; i++)
        free(in[i]);
    free(want), free(want_lse), free(lse);
}
END_TEST

/* The backward twin at each shift gives the bits of shift 2 (all copies, the staging it had
 * before arrays went in place), and a dq that is dout's own array gives them too. */
START_TEST(test_backward_placements)
{
    dipole_attn_desc d = host_desc();
    d.path = paths[_i];
    const float alpha[4] = {1.0f, 0.5f, -0.25f, 2.0f}, beta[4] = {0.75f, 1.0f, 1.5f, -1.0f};
    d.pos_weight = alpha, d.neg_weight = beta;
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    const size_t n[9] = {nq, nk, nk, nk, nq, nq, nk, nk, nk}; /* q k v v2 dout dq dk dv dv2 */
    float *in[5] = {tu_random(nq, 11, 1), tu_random(nk, 12, 1), tu_random(nk, 13, 1),
                    tu_random(nk, 14, 1), tu_random(nq, 15, 1)};
    float *want[4] = {NULL}, want_w[8];
    for (int s = (int)(sizeof shifts / sizeof shifts[0]) - 1; s >= 0; s--) {
        const size_t sh = shifts[s];
        placed p[11];
        for (int i = 0; i < 9; i++)
            p[i] = place(i < 5 ? in[i] : NULL, n[i] * 4, sh);
        p[9] = place(NULL, 16, sh), p[10] = place(NULL, 16, sh);
        ck_assert_int_eq(dipole_attention_backward_host(tu_ctx(), &d, p[0].at, p[1].at, p[2].at,
                                                        p[3].at, p[4].at, p[5].at, p[6].at,
                                                        p[7].at, p[8].at, p[9].at, p[10].at),
                         DIPOLE_SUCCESS);
        for (int g = 0; g < 4; g++) {
            if (!want[g]) {
                want[g] = malloc(n[5 + g] * 4);
                memcpy(want[g], p[5 + g].at, n[5 + g] * 4);
            }
            ck_assert_msg(memcmp(p[5 + g].at, want[g], n[5 + g] * 4) == 0,
                          "gradient %d differs at shift %zu", g, sh);
        }
        if (s == (int)(sizeof shifts / sizeof shifts[0]) - 1)
            memcpy(want_w, p[9].at, 16), memcpy(want_w + 4, p[10].at, 16);
        ck_assert(memcmp(p[9].at, want_w, 16) == 0 && memcmp(p[10].at, want_w + 4, 16) == 0);
        for (int i = 0; i < 11; i++)
            free(p[i].block);
    }
    float *dout = malloc(nq * 4), *dk = malloc(nk * 4), *dv = malloc(nk * 4), *dv2 = malloc(nk * 4);
    memcpy(dout, in[4], nq * 4);
    ck_assert_int_eq(dipole_attention_backward_host(tu_ctx(), &d, in[0], in[1], in[2], in[3], dout,
                                                    dout, dk, dv, dv2, NULL, NULL),
                     DIPOLE_SUCCESS);
    ck_assert(memcmp(dout, want[0], nq * 4) == 0);
    ck_assert(memcmp(dk, want[1], nk * 4) == 0);
    free(dout), free(dk), free(dv), free(dv2);
    for (int i = 0; i < 5; i++)
        free(in[i]);
    for (int g = 0; g < 4; g++)
        free(want[g]);
}
END_TEST

Suite *host_suite(void)
{
    Suite *s = suite_create("host");
    TCase *tc = tcase_create("host");
    tcase_add_loop_test(tc, test_forward_placements, 0, 2);
    tcase_add_test(tc, test_forward_out_overlaps_q);
    tcase_add_loop_test(tc, test_backward_placements, 0, 2);
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);
    return s;
}
