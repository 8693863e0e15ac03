/* Hardening: whatever a caller passes, dipole returns a documented status with a message that
 * names the field and its value, never crashes, and a failed call leaves the context usable.
 * Also the data edge cases: NaN and inf reach exactly the rows they touch, and large scores
 * stay finite. test_api.c holds the first, basic cases; these go further. */
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static dipole_attn_desc base_desc(void)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.batch = 1, d.heads_q = 2, d.heads_kv = 1, d.seq_q = 5, d.seq_k = 9, d.head_dim = 16;
    return d;
}

#define ASSERT_MSG_HAS(msg, text) \
    ck_assert_msg(strstr((msg), (text)) != NULL, "message '%s' lacks '%s'", (msg), (text))

/* ------------------------------------------------------------------ descriptors */

/* Every field: bad values (beyond those of test_api.c) give INVALID_ARG and a message with the
 * field's name and the offending value. */
START_TEST(test_desc_fields_name_field_and_value)
{
    static const int kl_neg[1] = {-1};
    static const int kl_b1[2] = {9, 10};
    static const float inf_w[2] = {1.0f, -INFINITY};
#define BAD(text, stmt)                                                             \
    do {                                                                            \
        dipole_attn_desc d = base_desc();                                           \
        stmt;                                                                       \
        ck_assert_int_eq(dipole_attn_desc_validate(&d), DIPOLE_ERR_INVALID_ARG);    \
        ASSERT_MSG_HAS(dipole_thread_last_error(), text);                           \
    } while (0)
    BAD("desc.batch = -2147483648", d.batch = INT_MIN);
    BAD("desc.heads_q = -1", d.heads_q = -1);
    BAD("desc.heads_kv = 0", d.heads_kv = 0);
    BAD("desc.heads_q = 6 is not a multiple of desc.heads_kv = 4", (d.heads_q = 6, d.heads_kv = 4));
    BAD("desc.heads_q = 2 is not a multiple of desc.heads_kv = 4", d.heads_kv = 4);
    BAD("desc.seq_q = -1", d.seq_q = -1);
    BAD("desc.seq_q = 268435457", d.seq_q = (1 << 28) + 1);
    BAD("desc.seq_k = 0", d.seq_k = 0);
    BAD("desc.seq_k = 2147483647", d.seq_k = INT_MAX);
    BAD("desc.head_dim = -7", d.head_dim = -7);
    BAD("desc.head_dim = 65537", d.head_dim = 65537);
    /* size_t overflow in the key tensors only, then in the lse only (q itself fits). */
    BAD("overflow", (d.batch = 1 << 20, d.heads_q = d.heads_kv = 1 << 24, d.seq_q = 1,
                     d.seq_k = 1 << 28, d.head_dim = 65536));
    BAD("overflow", (d.batch = 1 << 30, d.seq_q = 1 << 28, d.heads_q = 8, d.heads_kv = 1,
                     d.seq_k = 1, d.head_dim = 1));
    BAD("desc.scale = -inf", d.scale = -INFINITY);
    BAD("desc.scale = -nan", d.scale = -NAN);
    BAD("desc.window_left = -2147483648", d.window_left = INT_MIN);
    BAD("desc.window_right = -2", (d.window_left = 3, d.window_right = -2));
    BAD("desc.key_lengths[0] = -1", d.key_lengths = kl_neg);
    BAD("desc.key_lengths[1] = 10", (d.batch = 2, d.key_lengths = kl_b1));
    BAD("desc.neg_weight[1] = -inf", (d.variant = DIPOLE_TWO_POLE, d.neg_weight = inf_w));
    BAD("desc.variant = -1", d.variant = (dipole_variant)-1);
    BAD("desc.variant = 5", d.variant = (dipole_variant)5);
    BAD("desc.path = -1", d.path = (dipole_path)-1);
#undef BAD
    /* Valid extremes are accepted: huge windows, any nonzero causal, weights the variant
     * ignores, a size that only a device could refuse. */
    dipole_attn_desc d = base_desc();
    d.window_left = d.window_right = INT_MAX;
    d.causal = INT_MIN;
    d.pos_weight = inf_w;
    d.neg_weight = inf_w;
    ck_assert_int_eq(dipole_attn_desc_validate(&d), DIPOLE_SUCCESS);
    d = base_desc();
    d.heads_q = INT_MAX, d.heads_kv = 1;
    ck_assert_int_eq(dipole_attn_desc_validate(&d), DIPOLE_SUCCESS);
    /* The descriptor helpers take NULL. */
    dipole_attn_desc_default(NULL);
    ck_assert_str_eq(dipole_variant_name((dipole_variant)-3), "unknown");
    ck_assert_str_eq(dipole_path_name((dipole_path)99), "unknown");
    for (int s = -3000; s <= 10; s++)
        ck_assert_ptr_nonnull(dipole_status_string((dipole_status)s));
    ck_assert_ptr_nonnull(dipole_status_string((dipole_status)INT_MIN));
}
END_TEST

/* NULL everywhere a pointer is taken: INVALID_ARG naming the argument. */
START_TEST(test_null_arguments)
{
    dipole_ctx *ctx = tu_ctx();
    dipole_attn_desc d = base_desc();
    dipole_plan plan;
    float x[1024] = {0}, out[1024];
    ck_assert_int_eq(dipole_attention_plan(NULL, &d, &plan), DIPOLE_ERR_INVALID_ARG);
    ASSERT_MSG_HAS(dipole_thread_last_error(), "ctx is NULL");
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, NULL), DIPOLE_ERR_INVALID_ARG);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "plan is NULL");
    ck_assert_int_eq(dipole_attention_plan(ctx, NULL, &plan), DIPOLE_ERR_INVALID_ARG);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "desc is NULL");
    ck_assert_int_eq(dipole_attention(ctx, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "desc is NULL");
    ck_assert_int_eq(dipole_attention_host(ctx, NULL, x, x, x, x, out), DIPOLE_ERR_INVALID_ARG);
    const char *names[3] = {"q is NULL", "k is NULL", "v is NULL"};
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(dipole_attention_host(ctx, &d, i == 0 ? NULL : x, i == 1 ? NULL : x,
                                               i == 2 ? NULL : x, NULL, out),
                         DIPOLE_ERR_INVALID_ARG);
        ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), names[i]);
        ck_assert_int_eq(dipole_reference(&d, i == 0 ? NULL : x, i == 1 ? NULL : x,
                                          i == 2 ? NULL : x, NULL, out),
                         DIPOLE_ERR_INVALID_ARG);
        ASSERT_MSG_HAS(dipole_thread_last_error(), names[i]);
    }
    d.variant = DIPOLE_TWO_POLE;
    ck_assert_int_eq(dipole_attention_host(ctx, &d, x, x, x, NULL, out), DIPOLE_ERR_INVALID_ARG);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "v2");
    ck_assert_int_eq(dipole_reference_lse(&d, x, x, x, x, NULL, NULL), DIPOLE_ERR_INVALID_ARG);
    ck_assert_int_eq(dipole_reference(NULL, x, x, x, x, out), DIPOLE_ERR_INVALID_ARG);
    ck_assert_int_eq(dipole_ctx_set_workspace_limit(NULL, 1), DIPOLE_ERR_INVALID_ARG);
    ck_assert_int_eq(dipole_ctx_set_workspace_limit(ctx, 0), DIPOLE_ERR_INVALID_ARG);
    ck_assert_uint_gt(dipole_ctx_workspace_limit(ctx), 0);
    ck_assert_uint_eq(dipole_ctx_workspace_limit(NULL), 0);
    dipole_ctx_set_log(NULL, NULL, NULL);
    ck_assert_ptr_null(dipole_ctx_cl_context(NULL));
    ck_assert_ptr_null(dipole_ctx_queue(NULL));
    ck_assert_ptr_null(dipole_ctx_device(NULL));
    ck_assert_str_eq(dipole_ctx_device_name(NULL), "");
    ck_assert_ptr_nonnull(dipole_ctx_last_error(NULL));
    dipole_ctx *c2 = (dipole_ctx *)0x1;
    ck_assert_int_eq(dipole_ctx_create_from_queue(&c2, NULL), DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_null(c2);
    ck_assert_int_eq(dipole_ctx_create_from_queue(NULL, dipole_ctx_queue(ctx)),
                     DIPOLE_ERR_INVALID_ARG);
    /* Still fine afterwards. */
    tu_check_against_reference(&d, 11, 1.0f, 1e-5, 1e-4);
}
END_TEST

/* The backward's host twin and reference name the first missing array (v2 and dv2 count only
 * where the variant reads v2), before any work: no gradient is written. */
START_TEST(test_backward_missing_arrays)
{
    dipole_ctx *ctx = tu_ctx();
    static const char *const names[] = {"q", "k", "v", "v2", "dout", "dq", "dk", "dv", "dv2"};
    enum { N = sizeof names / sizeof names[0] };
    float a[N][1024];
    for (int variant = 0; variant < 4; variant++)
        for (int miss = 0; miss < N; miss++) {
            dipole_attn_desc d = base_desc();
            d.variant = (dipole_variant)variant;
            const bool reads_v2 = variant == DIPOLE_ROUTED || variant == DIPOLE_TWO_POLE;
            if (!reads_v2 && (miss == 3 || miss == 8))
                continue; /* allowed: the backward suites run such calls */
            float *p[N];
            for (int i = 0; i < N; i++) {
                for (int x = 0; x < 1024; x++)
                    a[i][x] = 0.25f;
                p[i] = i == miss ? NULL : a[i];
            }
            dipole_status st = dipole_attention_backward_host(ctx, &d, p[0], p[1], p[2], p[3],
                                                              p[4], p[5], p[6], p[7], p[8],
                                                              NULL, NULL);
            dipole_status rst = dipole_reference_backward(&d, p[0], p[1], p[2], p[3], p[4], p[5],
                                                          p[6], p[7], p[8], NULL, NULL);
            char want[32];
            snprintf(want, sizeof want, ": %s", names[miss]);
            ck_assert_int_eq(st, DIPOLE_ERR_INVALID_ARG);
            ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), want);
            ck_assert_int_eq(rst, DIPOLE_ERR_INVALID_ARG);
            ASSERT_MSG_HAS(dipole_thread_last_error(), want);
            for (int i = 5; i < N; i++) /* the gradients */
                if (p[i])
                    ck_assert(a[i][0] == 0.25f && a[i][1023] == 0.25f);
        }
}
END_TEST

/* A forced path that cannot serve the shape says so; the context is unharmed. */
START_TEST(test_forced_path_beyond_its_range)
{
    dipole_ctx *ctx = tu_ctx();
    dipole_attn_desc d = base_desc();
    d.head_dim = 300;
    d.path = DIPOLE_PATH_TILED;
    dipole_plan plan;
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_ERR_UNSUPPORTED);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "head_dim 300");
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    float *q = tu_random(nq, 1, 1), *k = tu_random(nk, 2, 1), *v = tu_random(nk, 3, 1);
    float *out = malloc(sizeof(float) * nq);
    ck_assert_int_eq(dipole_attention_host(ctx, &d, q, k, v, NULL, out), DIPOLE_ERR_UNSUPPORTED);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "head_dim 300");
    /* The environment override (read when a context is created) forces it for an AUTO
     * descriptor too. */
    d.path = DIPOLE_PATH_AUTO;
    setenv("DIPOLE_PATH", "tiled", 1);
    dipole_ctx *forced;
    ck_assert_int_eq(dipole_ctx_create(&forced, NULL), DIPOLE_SUCCESS);
    unsetenv("DIPOLE_PATH");
    dipole_status st = dipole_attention_plan(forced, &d, &plan);
    dipole_ctx_destroy(forced);
    ck_assert_int_eq(st, DIPOLE_ERR_UNSUPPORTED);
    free(q), free(k), free(v), free(out);
    d = base_desc();
    tu_check_against_reference(&d, 12, 1.0f, 1e-5, 1e-4);
}
END_TEST

/* Beyond the tiled range AUTO may find another path (GEMM) or none; if it computes, it
 * computes right. (In the data cases: CLBlast's kernels are many, and slow under memcheck.) */
START_TEST(test_auto_beyond_tiled_range)
{
    dipole_ctx *ctx = tu_ctx();
    dipole_attn_desc d = base_desc();
    d.head_dim = 300;
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    float *q = tu_random(nq, 1, 1), *k = tu_random(nk, 2, 1), *v = tu_random(nk, 3, 1);
    float *out = malloc(sizeof(float) * nq), *ref = malloc(sizeof(float) * nq);
    dipole_status st = dipole_attention_host(ctx, &d, q, k, v, NULL, out);
    ck_assert_msg(st == DIPOLE_SUCCESS || st == DIPOLE_ERR_UNSUPPORTED, "%s: %s",
                  dipole_status_string(st), dipole_ctx_last_error(ctx));
    if (st == DIPOLE_SUCCESS) {
        ck_assert_int_eq(dipole_reference(&d, q, k, v, NULL, ref), DIPOLE_SUCCESS);
        ck_assert(tu_compare(out, ref, nq, 1e-5, 1e-4).worst_ratio <= 1);
    }
    free(q), free(k), free(v), free(out), free(ref);
}
END_TEST

/* ------------------------------------------------------------------ device tensors */

static cl_mem make_buf(dipole_ctx *ctx, size_t bytes)
{
    cl_int err;
    cl_mem m = clCreateBuffer(dipole_ctx_cl_context(ctx), CL_MEM_READ_WRITE, bytes, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    return m;
}

static void fill_buf(dipole_ctx *ctx, cl_mem m, const float *x, size_t n)
{
    ck_assert_int_eq(clEnqueueWriteBuffer(dipole_ctx_queue(ctx), m, CL_TRUE, 0, n * sizeof(float),
                                          x, 0, NULL, NULL),
                     CL_SUCCESS);
}

/* Each way a tensor, its buffer or the lse buffer can be wrong; then a correct call. */
START_TEST(test_bad_tensors)
{
    dipole_ctx *ctx = tu_ctx();
    dipole_attn_desc d = base_desc();
    d.variant = DIPOLE_ROUTED;
    d.batch = 2;
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    const size_t nl = (size_t)d.batch * d.heads_q * d.seq_q;
    float *hq = tu_random(nq, 21, 1), *hk = tu_random(nk, 22, 1), *hv = tu_random(nk, 23, 1);
    float *hv2 = tu_random(nk, 24, 1);
    cl_mem bq = make_buf(ctx, nq * 4), bk = make_buf(ctx, nk * 4), bv = make_buf(ctx, nk * 4);
    cl_mem bv2 = make_buf(ctx, nk * 4), bo = make_buf(ctx, nq * 4);
    cl_mem short_kv = make_buf(ctx, nk * 4 - 4), short_o = make_buf(ctx, nq * 4 - 4);
    cl_mem lse = make_buf(ctx, nl * 4), short_lse = make_buf(ctx, nl * 4 - 4);
    fill_buf(ctx, bq, hq, nq), fill_buf(ctx, bk, hk, nk), fill_buf(ctx, bv, hv, nk);
    fill_buf(ctx, bv2, hv2, nk);
    const dipole_tensor tq = dipole_tensor_dense(bq, d.seq_q, d.heads_q, d.head_dim);
    const dipole_tensor tk = dipole_tensor_dense(bk, d.seq_k, d.heads_kv, d.head_dim);
    const dipole_tensor tv = dipole_tensor_dense(bv, d.seq_k, d.heads_kv, d.head_dim);
    const dipole_tensor tv2 = dipole_tensor_dense(bv2, d.seq_k, d.heads_kv, d.head_dim);
    const dipole_tensor to = dipole_tensor_dense(bo, d.seq_q, d.heads_q, d.head_dim);
    dipole_tensor t;
    cl_event ev;
#define CALL(q, k, v, v2, o, l) dipole_attention(ctx, &d, q, k, v, v2, o, l, &ev)
#define EXPECT(status, text, call)                                       \
    do {                                                                 \
        ev = (cl_event)0x1;                                              \
        ck_assert_int_eq(call, status);                                  \
        ck_assert_ptr_null(ev);                                          \
        ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), text);                \
    } while (0)
    EXPECT(DIPOLE_ERR_INVALID_ARG, "tensor q is NULL", CALL(NULL, &tk, &tv, &tv2, &to, NULL));
    EXPECT(DIPOLE_ERR_INVALID_ARG, "tensor k is NULL", CALL(&tq, NULL, &tv, &tv2, &to, NULL));
    EXPECT(DIPOLE_ERR_INVALID_ARG, "tensor v is NULL", CALL(&tq, &tk, NULL, &tv2, &to, NULL));
    EXPECT(DIPOLE_ERR_INVALID_ARG, "tensor out is NULL", CALL(&tq, &tk, &tv, &tv2, NULL, NULL));
    EXPECT(DIPOLE_ERR_INVALID_ARG, "v2 is NULL but variant routed", CALL(&tq, &tk, &tv, NULL, &to, NULL));
    t = tv, t.buffer = NULL;
    EXPECT(DIPOLE_ERR_INVALID_ARG, "v buffer is NULL", CALL(&tq, &tk, &t, &tv2, &to, NULL));
    t = tv2, t.buffer = short_kv;
    EXPECT(DIPOLE_ERR_BUFFER_RANGE, "v2 needs", CALL(&tq, &tk, &tv, &t, &to, NULL));
    t = to, t.buffer = short_o;
    EXPECT(DIPOLE_ERR_BUFFER_RANGE, "out needs", CALL(&tq, &tk, &tv, &tv2, &t, NULL));
    t = tk, t.offset = 1; /* one element too far: the last row ends past the buffer */
    EXPECT(DIPOLE_ERR_BUFFER_RANGE, "k needs", CALL(&tq, &t, &tv, &tv2, &to, NULL));
    t = tk, t.offset = SIZE_MAX;
    EXPECT(DIPOLE_ERR_BUFFER_RANGE, "offset 18446744073709551615", CALL(&tq, &t, &tv, &tv2, &to, NULL));
    t = tq, t.stride_seq = SIZE_MAX / 3;
    EXPECT(DIPOLE_ERR_BUFFER_RANGE, "overflows", CALL(&t, &tk, &tv, &tv2, &to, NULL));
    t = tq, t.stride_head = (size_t)1 << 62; /* fits size_t, not the kernels' signed offsets */
    EXPECT(DIPOLE_ERR_BUFFER_RANGE, "overflows", CALL(&t, &tk, &tv, &tv2, &to, NULL));
    t = tv, t.stride_batch = nk; /* batch 1 starts right at the end */
    EXPECT(DIPOLE_ERR_BUFFER_RANGE, "v needs", CALL(&tq, &tk, &t, &tv2, &to, NULL));
    EXPECT(DIPOLE_ERR_BUFFER_RANGE, "lse needs", CALL(&tq, &tk, &tv, &tv2, &to, short_lse));
    EXPECT(DIPOLE_ERR_INVALID_ARG, "lse shares", CALL(&tq, &tk, &tv, &tv2, &to, bv2));
    /* out rows that overlap each other would race. */
    t = to, t.stride_head = 0;
    EXPECT(DIPOLE_ERR_INVALID_ARG, "out strides (160, 32, 0)", CALL(&tq, &tk, &tv, &tv2, &t, NULL));
    t = to, t.stride_seq = d.head_dim; /* seq and head interleave */
    EXPECT(DIPOLE_ERR_INVALID_ARG, "out strides", CALL(&tq, &tk, &tv, &tv2, &t, NULL));
    t = to, t.stride_batch = 0;
    EXPECT(DIPOLE_ERR_INVALID_ARG, "out strides", CALL(&tq, &tk, &tv, &tv2, &t, NULL));
    /* out overlapping v2 in one buffer. */
    cl_mem shared = make_buf(ctx, (nq + nk) * 4);
    dipole_tensor sv2 = tv2, so = to;
    sv2.buffer = so.buffer = shared;
    so.offset = nk - 1;
    EXPECT(DIPOLE_ERR_INVALID_ARG, "out overlaps v2", CALL(&tq, &tk, &tv, &sv2, &so, NULL));
    /* lse of another OpenCL context. */
    cl_int err;
    cl_device_id dev = dipole_ctx_device(ctx);
    cl_context other = clCreateContext(NULL, 1, &dev, NULL, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    cl_mem foreign = clCreateBuffer(other, CL_MEM_READ_WRITE, nl * 4, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    EXPECT(DIPOLE_ERR_INVALID_ARG, "lse buffer belongs to another", CALL(&tq, &tk, &tv, &tv2, &to, foreign));
    t = tk, t.buffer = foreign;
    EXPECT(DIPOLE_ERR_INVALID_ARG, "k buffer belongs to another", CALL(&tq, &t, &tv, &tv2, &to, NULL));
#undef EXPECT
    clReleaseMemObject(foreign);
    clReleaseContext(other);

    /* Exactly-fitting buffers, a layout that does not overlap (out as [b, h, s, d]), and the
     * non-adjacent out/v2 split of the shared buffer all compute the reference's answer. */
    so.offset = nk;
    so.stride_head = (size_t)d.seq_q * d.head_dim;
    so.stride_seq = (size_t)d.head_dim;
    ck_assert_int_eq(clEnqueueWriteBuffer(dipole_ctx_queue(ctx), shared, CL_TRUE, 0, nk * 4, hv2, 0,
                                          NULL, NULL),
                     CL_SUCCESS);
    ck_assert_int_eq(CALL(&tq, &tk, &tv, &sv2, &so, lse), DIPOLE_SUCCESS);
    ck_assert_ptr_nonnull(ev);
    clReleaseEvent(ev);
    float *got = malloc(nq * 4), *ref = malloc(nq * 4), *dense = malloc(nq * 4);
    ck_assert_int_eq(dipole_reference(&d, hq, hk, hv, hv2, ref), DIPOLE_SUCCESS);
    ck_assert_int_eq(clEnqueueReadBuffer(dipole_ctx_queue(ctx), shared, CL_TRUE, nk * 4, nq * 4,
                                         got, 0, NULL, NULL),
                     CL_SUCCESS);
    /* Back from [b, h, s, d] to dense [b, s, h, d]. */
    for (int b = 0; b < d.batch; b++)
        for (int h = 0; h < d.heads_q; h++)
            for (int i = 0; i < d.seq_q; i++)
                memcpy(dense + (((size_t)b * d.seq_q + i) * d.heads_q + h) * d.head_dim,
                       got + (((size_t)b * d.heads_q + h) * d.seq_q + i) * d.head_dim,
                       sizeof(float) * d.head_dim);
    tu_err e = tu_compare(dense, ref, nq, 1e-5, 1e-4);
    ck_assert_msg(e.worst_ratio <= 1, "element %zu: %g vs %g", e.worst, (double)dense[e.worst],
                  (double)ref[e.worst]);
#undef CALL
    clReleaseMemObject(shared);
    cl_mem objs[] = {bq, bk, bv, bv2, bo, short_kv, short_o, lse, short_lse};
    for (size_t i = 0; i < sizeof objs / sizeof objs[0]; i++)
        clReleaseMemObject(objs[i]);
    free(hq), free(hk), free(hv), free(hv2), free(got), free(ref), free(dense);
}
END_TEST

/* Selectors beyond test_api.c's: odd forms, huge indices, a very long string. */
/* Layouts one path cannot take: gradients whose rows overlap are refused (work-items would
 * race, and the result would not be deterministic); input rows that overlap (a broadcast with
 * stride_seq 0) work on the tiled path and are refused with a reason on the GEMM path. */
START_TEST(test_overlapping_rows)
{
    dipole_ctx *ctx = tu_ctx();
    dipole_attn_desc d = base_desc();
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    cl_int err;
    cl_context cl = dipole_ctx_cl_context(ctx);
    float *host = tu_random(8 * nq, 3, 1.0f);
    cl_mem in = clCreateBuffer(cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, 8 * nq * 4, host, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    cl_mem o[5];
    for (int i = 0; i < 5; i++) {
        o[i] = clCreateBuffer(cl, CL_MEM_READ_WRITE, 4 * nq * 4, NULL, &err);
        ck_assert_int_eq(err, CL_SUCCESS);
    }
    dipole_tensor q = dipole_tensor_dense(in, d.seq_q, d.heads_q, d.head_dim);
    dipole_tensor k = dipole_tensor_dense(in, d.seq_k, d.heads_kv, d.head_dim);
    dipole_tensor out = dipole_tensor_dense(o[0], d.seq_q, d.heads_q, d.head_dim);
    dipole_tensor dq = dipole_tensor_dense(o[1], d.seq_q, d.heads_q, d.head_dim);
    dipole_tensor dk = dipole_tensor_dense(o[2], d.seq_k, d.heads_kv, d.head_dim);
    dipole_tensor dv = dipole_tensor_dense(o[3], d.seq_k, d.heads_kv, d.head_dim);
    cl_mem lse = o[4];
    ck_assert_int_eq(dipole_attention(ctx, &d, &q, &k, &k, NULL, &out, lse, NULL), DIPOLE_SUCCESS);
    dipole_tensor dk_bad = dk;
    dk_bad.stride_seq = 0;
    ck_assert_int_eq(dipole_attention_backward(ctx, &d, &q, &k, &k, NULL, &out, &out, lse, &dq,
                                               &dk_bad, &dv, NULL, NULL, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "dk strides make its rows overlap");
    ck_assert_int_eq(dipole_attention_backward(ctx, &d, &q, &k, &k, NULL, &out, &out, lse, &dq,
                                               &dk, &dv, NULL, NULL, NULL, NULL),
                     DIPOLE_SUCCESS);

    /* k broadcast over the sequence: every key is the same row. */
    dipole_tensor k_bcast = k;
    k_bcast.stride_seq = 0;
    d.path = DIPOLE_PATH_TILED;
    ck_assert_int_eq(dipole_attention(ctx, &d, &q, &k_bcast, &k, NULL, &out, NULL, NULL),
                     DIPOLE_SUCCESS);
    d.path = DIPOLE_PATH_GEMM;
    ck_assert_int_eq(dipole_attention(ctx, &d, &q, &k_bcast, &k, NULL, &out, NULL, NULL),
                     DIPOLE_ERR_UNSUPPORTED);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "stride_seq 0 < head_dim 16");
    clFinish(dipole_ctx_queue(ctx));
    for (int i = 0; i < 5; i++)
        clReleaseMemObject(o[i]);
    clReleaseMemObject(in);
    free(host);
    (void)nk;
}
END_TEST

/* Split-K decode needs scratch; when that would pass the workspace limit the plain CPU kernel
 * (no scratch) serves instead, with the same answer. Only meaningful where the CPU layout is
 * planned; elsewhere the plan just has to succeed and agree with the reference. */
START_TEST(test_splitk_scratch_bounded)
{
    dipole_ctx *ctx;
    ck_assert_int_eq(dipole_ctx_create(&ctx, NULL), DIPOLE_SUCCESS);
    dipole_attn_desc d = base_desc();
    d.seq_q = 1, d.seq_k = 3000, d.variant = DIPOLE_TWO_POLE;
    dipole_plan plan;
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    const bool split = plan.layout == DIPOLE_LAYOUT_SPLITK;
    if (split)
        ck_assert_msg(plan.splitk_chunks > 1 && plan.workspace_bytes > 0, "%s", plan.reason);
    ck_assert_int_eq(dipole_ctx_set_workspace_limit(ctx, 64), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_msg(plan.layout != DIPOLE_LAYOUT_SPLITK && plan.splitk_chunks == 0, "%s",
                  plan.reason);
    if (split)
        ck_assert_uint_eq(plan.workspace_bytes, 0);
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    float *q = tu_random(nq, 1, 1), *k = tu_random(nk, 2, 1), *v = tu_random(nk, 3, 1);
    float *v2 = tu_random(nk, 4, 1), *out = malloc(nq * 4), *ref = malloc(nq * 4);
    ck_assert_int_eq(dipole_attention_host(ctx, &d, q, k, v, v2, out), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference(&d, q, k, v, v2, ref), DIPOLE_SUCCESS);
    ck_assert(tu_compare(out, ref, nq, 2e-5, 2e-4).worst_ratio <= 1);
    free(q), free(k), free(v), free(v2), free(out), free(ref);
    dipole_ctx_destroy(ctx);
}
END_TEST

START_TEST(test_selector_forms)
{
    tu_ctx();
    dipole_ctx *c = (dipole_ctx *)0x1;
    ck_assert_int_eq(dipole_ctx_create(&c, "1001:0"), DIPOLE_ERR_BAD_SELECTOR);
    ck_assert_ptr_null(c);
    ASSERT_MSG_HAS(dipole_thread_last_error(), "'1001:0'");
    ck_assert_int_eq(dipole_ctx_create(&c, "0:0x"), DIPOLE_ERR_BAD_SELECTOR);
    ck_assert_int_eq(dipole_ctx_create(&c, "0:-1"), DIPOLE_ERR_BAD_SELECTOR);
    ck_assert_int_eq(dipole_ctx_create(&c, "99999999999999999999:0"), DIPOLE_ERR_BAD_SELECTOR);
    ck_assert_int_eq(dipole_ctx_create(&c, "1000:1000"), DIPOLE_ERR_NO_DEVICE);
    ck_assert_int_eq(dipole_ctx_create(&c, "%s%s%n"), DIPOLE_ERR_NO_DEVICE);
    ASSERT_MSG_HAS(dipole_thread_last_error(), "'%s%s%n'");
    ck_assert_int_eq(dipole_ctx_create(&c, "accelerator-that-is-not-there"), DIPOLE_ERR_NO_DEVICE);
    char *longsel = malloc(20001);
    memset(longsel, 'z', 20000);
    longsel[20000] = '\0';
    ck_assert_int_eq(dipole_ctx_create(&c, longsel), DIPOLE_ERR_NO_DEVICE);
    ck_assert_ptr_null(c);
    free(longsel);
    /* "" means the default, as NULL. */
    ck_assert_int_eq(dipole_ctx_create(&c, ""), DIPOLE_SUCCESS);
    dipole_ctx_destroy(c);
}
END_TEST

/* A big but valid shape beyond CL_DEVICE_MAX_MEM_ALLOC_SIZE: a status, not a crash; the
 * context computes correctly afterwards. */
START_TEST(test_allocation_beyond_device_limit)
{
    dipole_ctx *ctx = tu_ctx();
    cl_ulong max_alloc = 0;
    ck_assert_int_eq(clGetDeviceInfo(dipole_ctx_device(ctx), CL_DEVICE_MAX_MEM_ALLOC_SIZE,
                                     sizeof max_alloc, &max_alloc, NULL),
                     CL_SUCCESS);
    dipole_attn_desc d = base_desc();
    d.heads_q = d.heads_kv = 1, d.head_dim = 256, d.seq_k = 4;
    const cl_ulong rows = max_alloc / (256 * sizeof(float)) + 1;
    if (rows > (1u << 28))
        return; /* the device takes any tensor dipole accepts */
    d.seq_q = (int)rows;
    const size_t bytes = (size_t)rows * 256 * sizeof(float);
    /* Reserved, never committed: the library must refuse before touching it. */
    float *big = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                      -1, 0);
    ck_assert_ptr_ne(big, MAP_FAILED);
    float small[4 * 256] = {0};
    dipole_status st = dipole_attention_host(ctx, &d, big, small, small, NULL, big);
    ck_assert_msg(st != DIPOLE_SUCCESS, "a %zu-byte tensor was accepted", bytes);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "q needs");
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "CL_DEVICE_MAX_MEM_ALLOC_SIZE");
    munmap(big, bytes);
    d = base_desc();
    d.variant = DIPOLE_SIGNEXP;
    tu_check_against_reference(&d, 31, 1.0f, 1e-5, 1e-4);
}
END_TEST

/* Shapes at the edges of the valid range compute what the reference computes. */
START_TEST(test_edge_shapes)
{
    static const int kl0[2] = {0, 1};
    for (int variant = 0; variant < 4; variant++) {
        dipole_attn_desc d;
        dipole_attn_desc_default(&d);
        d.variant = (dipole_variant)variant;
        d.batch = d.heads_q = d.heads_kv = d.seq_q = d.seq_k = d.head_dim = 1;
        tu_check_against_reference(&d, 40, 1.0f, 1e-6, 1e-5);
        d.batch = 2, d.seq_q = 7, d.seq_k = 3, d.causal = 1; /* early rows see no key */
        d.key_lengths = kl0;
        tu_check_against_reference(&d, 41, 1.0f, 1e-6, 1e-5);
        d.key_lengths = NULL, d.causal = 0;
        d.window_left = d.window_right = INT_MAX;
        tu_check_against_reference(&d, 42, 1.0f, 1e-6, 1e-5);
        d.window_left = d.window_right = 0; /* one key per row at most */
        d.head_dim = 3;
        tu_check_against_reference(&d, 43, 1.0f, 1e-6, 1e-5);
        d.scale = 1e-30f; /* a valid but tiny scale: uniform weights */
        tu_check_against_reference(&d, 44, 1.0f, 1e-6, 1e-5);
    }
}
END_TEST

/* ------------------------------------------------------------------ data */

typedef struct data_case {
    dipole_attn_desc d;
    float *q, *k, *v, *v2, *got, *ref, *lse_got, *lse_ref;
    size_t nq, nk, nl;
} data_case;

static data_case data_new(dipole_variant variant, uint64_t seed, float mult)
{
    data_case c;
    dipole_attn_desc_default(&c.d);
    c.d.variant = variant;
    c.d.batch = 1, c.d.heads_q = 2, c.d.heads_kv = 1, c.d.seq_q = c.d.seq_k = 40, c.d.head_dim = 8;
    c.d.causal = 1;
    c.nq = tu_q_elems(&c.d), c.nk = tu_kv_elems(&c.d);
    c.nl = 2 * (size_t)c.d.heads_q * c.d.seq_q;
    c.q = tu_random(c.nq, seed, mult), c.k = tu_random(c.nk, seed + 1, mult);
    c.v = tu_random(c.nk, seed + 2, 1), c.v2 = tu_random(c.nk, seed + 3, 1);
    c.got = malloc(c.nq * 4), c.ref = malloc(c.nq * 4);
    c.lse_got = malloc(c.nl * 4), c.lse_ref = malloc(c.nl * 4);
    return c;
}

static void data_free(data_case *c)
{
    free(c->q), free(c->k), free(c->v), free(c->v2), free(c->got), free(c->ref);
    free(c->lse_got), free(c->lse_ref);
}

/* Runs device and reference; both must agree, NaN for NaN, inf for inf. */
static void data_run(data_case *c, double atol, double rtol)
{
    dipole_ctx *ctx = tu_ctx();
    ck_assert_int_eq(dipole_attention_host_lse(ctx, &c->d, c->q, c->k, c->v, c->v2, c->got,
                                               c->lse_got),
                     DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference_lse(&c->d, c->q, c->k, c->v, c->v2, c->ref, c->lse_ref),
                     DIPOLE_SUCCESS);
    char what[256];
    tu_desc_str(&c->d, what, sizeof what);
    tu_err e = tu_compare(c->got, c->ref, c->nq, atol, rtol);
    ck_assert_msg(e.worst_ratio <= 1, "%s: out[%zu] = %g, reference %g", what, e.worst,
                  (double)c->got[e.worst], (double)c->ref[e.worst]);
    const size_t nl = (size_t)dipole_lse_count(c->d.variant) * c->d.heads_q * c->d.seq_q;
    e = tu_compare(c->lse_got, c->lse_ref, nl, atol, rtol);
    ck_assert_msg(e.worst_ratio <= 1, "%s: lse[%zu] = %g, reference %g", what, e.worst,
                  (double)c->lse_got[e.worst], (double)c->lse_ref[e.worst]);
}

/* out row (i, h) of the device result: how many of its components are NaN. */
static int nan_count(const data_case *c, const float *o, int i, int h)
{
    int n = 0;
    for (int x = 0; x < c->d.head_dim; x++)
        n += isnan(o[((size_t)i * c->d.heads_q + h) * c->d.head_dim + x]) != 0;
    return n;
}

/* The score of row (i, h) with key j, in double, as the definition has it. */
static double score(const data_case *c, int i, int h, int j)
{
    const int D = c->d.head_dim, hk = h / (c->d.heads_q / c->d.heads_kv);
    double s = 0;
    for (int x = 0; x < D; x++)
        s += (double)c->q[((size_t)i * c->d.heads_q + h) * D + x] *
             (double)c->k[((size_t)j * c->d.heads_kv + hk) * D + x];
    return s / sqrt((double)D);
}

/* NaN reaches exactly the rows it touches — checked against an expectation written here from
 * the definition (causal: row i sees key j iff j <= i), and the reference agrees. */
START_TEST(test_nan_propagates_to_exactly_the_rows_it_touches)
{
    const int i0 = 13, j0 = 21, D = 8;
    for (int variant = 0; variant < 4; variant++) {
        /* NaN in one component of one q row: that whole row (that head) and nothing else. */
        data_case c = data_new((dipole_variant)variant, 50 + variant, 1.0f);
        c.q[((size_t)i0 * 2 + 1) * D + 3] = NAN;
        data_run(&c, 1e-5, 1e-4);
        for (int i = 0; i < c.d.seq_q; i++)
            for (int h = 0; h < 2; h++)
                ck_assert_int_eq(nan_count(&c, c.got, i, h), (i == i0 && h == 1) ? D : 0);
        data_free(&c);

        /* NaN in one component of key j0 (shared by both query heads): every row that sees j0,
         * whole rows; rows before it are untouched. */
        c = data_new((dipole_variant)variant, 60 + variant, 1.0f);
        c.k[(size_t)j0 * D + 5] = NAN;
        data_run(&c, 1e-5, 1e-4);
        for (int i = 0; i < c.d.seq_q; i++)
            for (int h = 0; h < 2; h++)
                ck_assert_int_eq(nan_count(&c, c.got, i, h), i >= j0 ? D : 0);
        data_free(&c);

        /* NaN in one component of v_j0 (and of v2_j0): that component of the rows whose weight
         * for j0 lands there — for ROUTED, on v when s > 0, else on v2. */
        for (int which = 0; which < 2; which++) {
            if (which == 1 && (variant == DIPOLE_SOFTMAX || variant == DIPOLE_SIGNEXP))
                continue;
            c = data_new((dipole_variant)variant, 70 + variant + 10 * which, 1.0f);
            (which ? c.v2 : c.v)[(size_t)j0 * D + 2] = NAN;
            data_run(&c, 1e-5, 1e-4);
            for (int i = 0; i < c.d.seq_q; i++)
                for (int h = 0; h < 2; h++) {
                    bool hit = i >= j0;
                    if (hit && variant == DIPOLE_ROUTED)
                        hit = (score(&c, i, h, j0) > 0) == (which == 0);
                    ck_assert_msg(nan_count(&c, c.got, i, h) == (hit ? 1 : 0),
                                  "variant %d v%s: row %d head %d has %d NaN", variant,
                                  which ? "2" : "", i, h, nan_count(&c, c.got, i, h));
                    if (hit)
                        ck_assert(isnan(c.got[((size_t)i * 2 + h) * D + 2]));
                }
            data_free(&c);
        }

        /* NaN in keys and values that the mask hides (beyond key_lengths, and ahead of a
         * causal row): no NaN anywhere. */
        c = data_new((dipole_variant)variant, 80 + variant, 1.0f);
        static const int kl[1] = {30};
        c.d.key_lengths = kl;
        for (int j = 30; j < 40; j++)
            for (int x = 0; x < D; x++)
                c.k[(size_t)j * D + x] = c.v[(size_t)j * D + x] = c.v2[(size_t)j * D + x] = NAN;
        data_run(&c, 1e-5, 1e-4);
        for (size_t x = 0; x < c.nq; x++)
            ck_assert_msg(isfinite(c.got[x]), "variant %d: out[%zu] = %g", variant, x,
                          (double)c.got[x]);
        data_free(&c);
    }
}
END_TEST

/* Infinite scores (an inf in a key) give the reference's answer in the rows that see that key
 * and leave every other row finite and exact. */
START_TEST(test_infinite_scores_stay_in_their_rows)
{
    const int j0 = 17, D = 8;
    for (int variant = 0; variant < 4; variant++)
        for (int sign = -1; sign <= 1; sign += 2) {
            data_case c = data_new((dipole_variant)variant, 90 + variant, 1.0f);
            c.k[(size_t)j0 * D + 1] = (float)sign * INFINITY;
            data_run(&c, 1e-5, 1e-4);
            for (int i = 0; i < j0; i++)
                for (int x = 0; x < 2 * D; x++)
                    ck_assert(isfinite(c.got[(size_t)i * 2 * D + x]));
            data_free(&c);
        }
}
END_TEST

/* Scores up to |s| ~ 1e4 (and lse values that size) compute without overflow. */
START_TEST(test_large_scores)
{
    for (int variant = 0; variant < 4; variant++) {
        data_case c = data_new((dipole_variant)variant, 100 + variant, 1.0f);
        c.d.causal = 0;
        c.d.scale = 1.0f;
        /* q.k with entries of size 35 over 8 dims: |s| up to about 1e4. */
        for (size_t x = 0; x < c.nq; x++)
            c.q[x] *= 35.0f;
        for (size_t x = 0; x < c.nk; x++)
            c.k[x] *= 35.0f;
        double smax = 0;
        for (int i = 0; i < c.d.seq_q; i++)
            for (int j = 0; j < c.d.seq_k; j++)
                smax = fmax(smax, fabs(score(&c, i, 0, j) * sqrt(8.0)));
        ck_assert_msg(smax > 5e3 && smax < 2e4, "max |s| %g", smax);
        /* Single precision scores carry ~1e-3 absolute error at this size. */
        data_run(&c, 2e-2, 2e-2);
        const size_t nl = (size_t)dipole_lse_count(c.d.variant) * c.d.heads_q * c.d.seq_q;
        for (size_t x = 0; x < c.nq; x++)
            ck_assert(isfinite(c.got[x]));
        for (size_t x = 0; x < nl; x++)
            ck_assert(isfinite(c.lse_got[x]));
        data_free(&c);
    }
}
END_TEST

/* ------------------------------------------------------------------ environment */

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static void remove_file(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

/* DIPOLE_KERNEL_DIR, read when a context is created: a missing directory, a broken header, a
 * file without the kernel and an empty file each fail with a clear status; then the real
 * sources, put in the same directory, build and compute correctly in the same context (no
 * failed build stayed cached under its key). */
static dipole_ctx *ctx_with_kernel_dir(const char *dir)
{
    setenv("DIPOLE_KERNEL_DIR", dir, 1);
    dipole_ctx *ctx;
    ck_assert_int_eq(dipole_ctx_create(&ctx, NULL), DIPOLE_SUCCESS);
    unsetenv("DIPOLE_KERNEL_DIR");
    return ctx;
}

/* Copies every kernel source of the tree into dir. */
static void copy_kernel_sources(const char *dir)
{
    DIR *src = opendir(DIPOLE_SOURCE_CL_DIR);
    ck_assert_ptr_nonnull(src);
    int copied = 0;
    for (struct dirent *e; (e = readdir(src));) {
        const size_t n = strlen(e->d_name);
        if (n < 4 || strcmp(e->d_name + n - 3, ".cl") != 0)
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", DIPOLE_SOURCE_CL_DIR, e->d_name);
        FILE *f = fopen(path, "rb");
        ck_assert_ptr_nonnull(f);
        fseek(f, 0, SEEK_END);
        const long len = ftell(f);
        fseek(f, 0, SEEK_SET);
        char *text = calloc((size_t)len + 1, 1);
        ck_assert(text && fread(text, 1, (size_t)len, f) == (size_t)len);
        fclose(f);
        write_file(dir, e->d_name, text);
        free(text);
        copied++;
    }
    closedir(src);
    ck_assert_int_ge(copied, 2);
}

START_TEST(test_broken_kernel_dirs)
{
    tu_ctx();
    /* The disk cache stays on: broken sources hash to their own keys, and a failed build
     * stores nothing. */
    dipole_attn_desc d = base_desc();
    dipole_plan plan;
    dipole_ctx *ctx = ctx_with_kernel_dir("/nonexistent/dipole-kernels");
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_ERR_KERNEL_SOURCE);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "/nonexistent/dipole-kernels/dipole_common.cl");
    dipole_ctx_destroy(ctx);

    char dir[] = "/tmp/dipole-kdir2-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ctx = ctx_with_kernel_dir(dir);
    /* Both forward layouts' files: the plan picks one by device type. */
    write_file(dir, "dipole_common.cl", "#error \"dipole-broken-header\"\n");
    write_file(dir, "dipole_fwd.cl", "__kernel void dipole_fwd(void) {}\n");
    write_file(dir, "dipole_fwd_cpu.cl", "__kernel void dipole_fwd_cpu(void) {}\n");
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_ERR_BUILD);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "dipole-broken-header");

    /* Compiles, but has no kernel of that name. */
    write_file(dir, "dipole_common.cl", "\n");
    write_file(dir, "dipole_fwd.cl", "__kernel void something_else(__global float *x) {}\n");
    write_file(dir, "dipole_fwd_cpu.cl", "__kernel void something_else(__global float *x) {}\n");
    dipole_status st = dipole_attention_plan(ctx, &d, &plan);
    ck_assert_int_ne(st, DIPOLE_SUCCESS);
    ASSERT_MSG_HAS(dipole_ctx_last_error(ctx), "dipole_fwd");

    /* An empty file. */
    write_file(dir, "dipole_fwd.cl", "");
    write_file(dir, "dipole_fwd_cpu.cl", "");
    ck_assert_int_ne(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);

    /* The failures left nothing behind in the context. */
    copy_kernel_sources(dir);
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    float *q = tu_random(nq, 1, 1), *k = tu_random(nk, 2, 1), *v = tu_random(nk, 3, 1);
    float *out = malloc(nq * 4), *ref = malloc(nq * 4);
    ck_assert_int_eq(dipole_attention_host(ctx, &d, q, k, v, NULL, out), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference(&d, q, k, v, NULL, ref), DIPOLE_SUCCESS);
    ck_assert(tu_compare(out, ref, nq, 1e-5, 1e-4).worst_ratio <= 1);
    free(q), free(k), free(v), free(out), free(ref);
    dipole_ctx_destroy(ctx);
    DIR *left = opendir(dir);
    ck_assert_ptr_nonnull(left);
    for (struct dirent *e; (e = readdir(left));)
        if (e->d_name[0] != '.')
            remove_file(dir, e->d_name);
    closedir(left);
    rmdir(dir);
}
END_TEST

/* Settings are read once, when a context is created: a later change of the environment moves
 * neither that context nor its plans; a context created after it follows the change. */
START_TEST(test_settings_read_once)
{
    tu_ctx();
    dipole_attn_desc d = base_desc();
    dipole_plan plan;
    dipole_ctx *before;
    ck_assert_int_eq(dipole_ctx_create(&before, NULL), DIPOLE_SUCCESS);
    const size_t limit = dipole_ctx_workspace_limit(before);
    setenv("DIPOLE_PATH", "gemm", 1);
    setenv("DIPOLE_WORKSPACE_MB", "7", 1);
    setenv("DIPOLE_KERNEL_DIR", "/nonexistent/dipole-kernels", 1);
    ck_assert_int_eq(dipole_attention_plan(before, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_int_eq(plan.path, DIPOLE_PATH_TILED);
    ck_assert_uint_eq(dipole_ctx_workspace_limit(before), limit);
    unsetenv("DIPOLE_KERNEL_DIR");
    dipole_ctx *after;
    ck_assert_int_eq(dipole_ctx_create(&after, NULL), DIPOLE_SUCCESS);
    unsetenv("DIPOLE_PATH");
    unsetenv("DIPOLE_WORKSPACE_MB");
    ck_assert_int_eq(dipole_attention_plan(after, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_int_eq(plan.path, DIPOLE_PATH_GEMM);
    ck_assert_uint_eq(dipole_ctx_workspace_limit(after), (size_t)7 << 20);
    dipole_ctx_destroy(after);
    dipole_ctx_destroy(before);
}
END_TEST

/* Garbage in the environment variables: ignored (the default applies) or, for the device
 * selector, a status naming it. Never a crash or a wrong answer. */
START_TEST(test_garbage_environment)
{
    tu_ctx();
    static const char *vars[][2] = {{"DIPOLE_TILE_CONFIG", "block_m=abc"}, {"DIPOLE_BWD_BLOCK_N", "-3"},
                                    {"DIPOLE_PATH", "bogus"},  {"DIPOLE_WORKSPACE_MB", "12abc"},
                                    {"DIPOLE_LOG", "0"},       {"DIPOLE_DEVICE", ""}};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        setenv(vars[i][0], vars[i][1], 1);
    dipole_ctx *ctx;
    ck_assert_int_eq(dipole_ctx_create(&ctx, NULL), DIPOLE_SUCCESS);
    ck_assert_uint_eq(dipole_ctx_workspace_limit(ctx), (size_t)256 << 20);
    dipole_attn_desc d = base_desc();
    dipole_plan plan;
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_int_eq(plan.path, DIPOLE_PATH_TILED);
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    float *q = tu_random(nq, 1, 1), *k = tu_random(nk, 2, 1), *v = tu_random(nk, 3, 1);
    float *out = malloc(nq * 4), *ref = malloc(nq * 4);
    ck_assert_int_eq(dipole_attention_host(ctx, &d, q, k, v, NULL, out), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference(&d, q, k, v, NULL, ref), DIPOLE_SUCCESS);
    ck_assert(tu_compare(out, ref, nq, 1e-5, 1e-4).worst_ratio <= 1);
    dipole_ctx_destroy(ctx);
    free(q), free(k), free(v), free(out), free(ref);
    setenv("DIPOLE_WORKSPACE_MB", "0", 1);
    ck_assert_int_eq(dipole_ctx_create(&ctx, NULL), DIPOLE_SUCCESS);
    ck_assert_uint_eq(dipole_ctx_workspace_limit(ctx), (size_t)256 << 20);
    dipole_ctx_destroy(ctx);
    setenv("DIPOLE_DEVICE", "no-such-device-env", 1);
    ck_assert_int_eq(dipole_ctx_create(&ctx, NULL), DIPOLE_ERR_NO_DEVICE);
    ASSERT_MSG_HAS(dipole_thread_last_error(), "'no-such-device-env'");
    setenv("DIPOLE_DEVICE", "1:", 1);
    ck_assert_int_eq(dipole_ctx_create(&ctx, NULL), DIPOLE_ERR_BAD_SELECTOR);
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i][0]);
}
END_TEST

Suite *hardening_suite(void)
{
    Suite *s = suite_create("hardening");
    TCase *tc = tcase_create("inputs");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_desc_fields_name_field_and_value);
    tcase_add_test(tc, test_null_arguments);
    tcase_add_test(tc, test_backward_missing_arrays);
    tcase_add_test(tc, test_forced_path_beyond_its_range);
    tcase_add_test(tc, test_bad_tensors);
    tcase_add_test(tc, test_selector_forms);
    tcase_add_test(tc, test_allocation_beyond_device_limit);
    suite_add_tcase(s, tc);
    TCase *td = tcase_create("data");
    tcase_set_tags(td, "many-kernels"); /* left out under valgrind: see tests/meson.build */
    tcase_set_timeout(td, 600);
    tcase_add_test(td, test_edge_shapes);
    tcase_add_test(td, test_auto_beyond_tiled_range);
    tcase_add_test(td, test_nan_propagates_to_exactly_the_rows_it_touches);
    tcase_add_test(td, test_infinite_scores_stay_in_their_rows);
    tcase_add_test(td, test_large_scores);
    suite_add_tcase(s, td);
    TCase *tl = tcase_create("layouts");
    tcase_set_tags(tl, "many-kernels"); /* backward and decode kernels: not under valgrind */
    tcase_set_timeout(tl, 600);
    tcase_add_test(tl, test_overlapping_rows);
    tcase_add_test(tl, test_splitk_scratch_bounded);
    suite_add_tcase(s, tl);
    TCase *te = tcase_create("environment");
    tcase_set_timeout(te, 600);
    tcase_add_test(te, test_broken_kernel_dirs);
    tcase_add_test(te, test_garbage_environment);
    tcase_add_test(te, test_settings_read_once);
    suite_add_tcase(s, te);
    return s;
}
