/* The public API's contracts: defaults, validation messages, statuses, selectors, planning,
 * buffer checks, interop, and that a failed call leaves the context usable. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

static dipole_attn_desc small_desc(void)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.batch = 1, d.heads_q = 2, d.heads_kv = 1, d.seq_q = 5, d.seq_k = 9, d.head_dim = 16;
    return d;
}

START_TEST(test_defaults)
{
    dipole_attn_desc d;
    memset(&d, 0x5a, sizeof d);
    dipole_attn_desc_default(&d);
    ck_assert_int_eq(d.variant, DIPOLE_SOFTMAX);
    ck_assert_int_eq(d.window_left, -1);
    ck_assert_int_eq(d.window_right, -1);
    ck_assert_int_eq(d.causal, 0);
    ck_assert_ptr_null(d.key_lengths);
    ck_assert_ptr_null(d.pos_weight);
    ck_assert_int_eq(d.path, DIPOLE_PATH_AUTO);
    ck_assert_float_eq(d.scale, 0.0f);
    ck_assert_str_eq(dipole_version(), "0.1.0");
    ck_assert_int_eq(dipole_lse_count(DIPOLE_TWO_POLE), 2);
    ck_assert_int_eq(dipole_lse_count(DIPOLE_SIGNEXP), 1);
}
END_TEST

START_TEST(test_status_strings)
{
    ck_assert_str_eq(dipole_status_string(DIPOLE_SUCCESS), "DIPOLE_SUCCESS");
    ck_assert_str_eq(dipole_status_string(DIPOLE_ERR_INVALID_ARG), "DIPOLE_ERR_INVALID_ARG");
    ck_assert_str_eq(dipole_status_string((dipole_status)CL_INVALID_VALUE), "CL_INVALID_VALUE");
    ck_assert_str_eq(dipole_status_string((dipole_status)-9999), "unknown status");
    for (int s = DIPOLE_ERR_INTERNAL; s <= DIPOLE_ERR_INVALID_ARG; s++)
        ck_assert_ptr_null(strstr(dipole_status_string((dipole_status)s), "unknown"));
    ck_assert_str_eq(dipole_variant_name(DIPOLE_ROUTED), "routed");
    ck_assert_str_eq(dipole_path_name(DIPOLE_PATH_GEMM), "gemm");
}
END_TEST

/* Each bad field: DIPOLE_ERR_INVALID_ARG and a message naming it. */
START_TEST(test_invalid_descriptors)
{
    static const int bad_kl[1] = {10};
    static const float nan_w[2] = {NAN, 1.0f};
#define BAD(field_text, stmt)                                                                   \
    do {                                                                                        \
        dipole_attn_desc d = small_desc();                                                      \
        stmt;                                                                                   \
        ck_assert_int_eq(dipole_attn_desc_validate(&d), DIPOLE_ERR_INVALID_ARG);                \
        ck_assert_msg(strstr(dipole_thread_last_error(), field_text), "message '%s' lacks '%s'", \
                      dipole_thread_last_error(), field_text);                                  \
    } while (0)
    BAD("batch", d.batch = 0);
    BAD("batch", d.batch = -3);
    BAD("heads_q", d.heads_q = 0);
    BAD("heads_kv", d.heads_kv = -1);
    BAD("seq_q", d.seq_q = 0);
    BAD("seq_k", d.seq_k = 1 << 30);
    BAD("head_dim", d.head_dim = 0);
    BAD("heads_q = 2 is not a multiple of desc.heads_kv = 3", d.heads_kv = 3);
    BAD("overflow", (d.batch = 1 << 30, d.heads_q = 1 << 30, d.heads_kv = 1, d.head_dim = 60000));
    BAD("scale", d.scale = NAN);
    BAD("scale", d.scale = INFINITY);
    BAD("window_left = -2", d.window_left = -2);
    BAD("window_right = -5", d.window_right = -5);
    BAD("key_lengths[0] = 10", d.key_lengths = bad_kl);
    BAD("variant", d.variant = (dipole_variant)7);
    BAD("path", d.path = (dipole_path)9);
    BAD("pos_weight[0]", (d.variant = DIPOLE_TWO_POLE, d.pos_weight = nan_w));
#undef BAD
    ck_assert_int_eq(dipole_attn_desc_validate(NULL), DIPOLE_ERR_INVALID_ARG);
    dipole_attn_desc ok = small_desc();
    ck_assert_int_eq(dipole_attn_desc_validate(&ok), DIPOLE_SUCCESS);
}
END_TEST

START_TEST(test_selectors)
{
    dipole_ctx *ctx = (dipole_ctx *)0x1;
    ck_assert_int_eq(dipole_ctx_create(&ctx, "no-such-device-xyz"), DIPOLE_ERR_NO_DEVICE);
    ck_assert_ptr_null(ctx);
    ck_assert_ptr_nonnull(strstr(dipole_thread_last_error(), "no-such-device-xyz"));
    ck_assert_int_eq(dipole_ctx_create(&ctx, "0:"), DIPOLE_ERR_BAD_SELECTOR);
    ck_assert_int_eq(dipole_ctx_create(&ctx, "3:x"), DIPOLE_ERR_BAD_SELECTOR);
    ck_assert_int_eq(dipole_ctx_create(&ctx, "99:0"), DIPOLE_ERR_NO_DEVICE);
    ck_assert_int_eq(dipole_ctx_create(NULL, NULL), DIPOLE_ERR_INVALID_ARG);
    tu_ctx(); /* skips when there is no device at all */
    ck_assert_int_eq(dipole_ctx_create(&ctx, "0:0"), DIPOLE_SUCCESS);
    ck_assert_ptr_nonnull(ctx);
    ck_assert_int_gt((int)strlen(dipole_ctx_device_name(ctx)), 3);
    dipole_ctx_destroy(ctx);
    dipole_ctx_destroy(NULL);
}
END_TEST

START_TEST(test_plan)
{
    dipole_ctx *ctx = tu_ctx();
    dipole_attn_desc d = small_desc();
    dipole_plan plan;
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_int_eq(plan.path, DIPOLE_PATH_TILED);
    ck_assert_int_ge(plan.block_m, 1);
    ck_assert_int_ge(plan.block_n, 1);
    d.head_dim = 512;
    d.path = DIPOLE_PATH_TILED;
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(plan.reason, "head_dim 512"));
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "head_dim 512"));
}
END_TEST

/* The plan's fields say what was decided: path, layout, where the tiles came from, split-K
 * and GEMM chunking; the backward plan likewise, with the same argument checks. */
START_TEST(test_plan_fields)
{
    dipole_ctx *ctx = tu_ctx();
    cl_device_type type = 0;
    ck_assert_int_eq(clGetDeviceInfo(dipole_ctx_device(ctx), CL_DEVICE_TYPE, sizeof type, &type,
                                     NULL),
                     CL_SUCCESS);
    const bool cpu = (type & CL_DEVICE_TYPE_CPU) != 0;
    dipole_attn_desc d = small_desc();
    dipole_plan plan;
    memset(&plan, 0x5a, sizeof plan);
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_int_eq(plan.path, DIPOLE_PATH_TILED);
    ck_assert_int_eq(plan.layout, cpu ? DIPOLE_LAYOUT_CPU : DIPOLE_LAYOUT_GROUP);
    ck_assert_int_eq(plan.config_source, DIPOLE_CONFIG_TABLE);
    ck_assert_msg(plan.config_label[0] != '\0', "a table row has a label");
    if (cpu)
        ck_assert_str_eq(plan.config_label, "CPU");
    ck_assert_int_eq(plan.splitk_chunks, 0);
    ck_assert_uint_eq(plan.chunks, 0);
    for (int i = 0; i < 16; i++)
        ck_assert_int_eq(plan.reserved[i], 0);

    /* Decode on the CPU table: keys split over work-items, 512 per chunk, halved (to 64 at
     * least) until there are two work-items per compute unit. */
    d.seq_q = 1, d.seq_k = 1100;
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    if (cpu) {
        cl_device_id dev;
        cl_uint units;
        ck_assert_int_eq(clGetCommandQueueInfo(dipole_ctx_queue(ctx), CL_QUEUE_DEVICE, sizeof dev,
                                               &dev, NULL),
                         CL_SUCCESS);
        ck_assert_int_eq(clGetDeviceInfo(dev, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof units, &units,
                                         NULL),
                         CL_SUCCESS);
        int chunk = 512;
        while (chunk > 64 && (1100 + chunk - 1) / chunk < 2 * (int)units)
            chunk /= 2;
        ck_assert_int_eq(plan.layout, DIPOLE_LAYOUT_SPLITK);
        ck_assert_int_eq(plan.block_n, chunk);
        ck_assert_int_eq(plan.splitk_chunks, (1100 + chunk - 1) / chunk);
        ck_assert_uint_gt(plan.workspace_bytes, 0);
    }

    /* Forced GEMM: no layout, no tile configuration, its chunking. */
    d = small_desc();
    d.path = DIPOLE_PATH_GEMM;
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_int_eq(plan.path, DIPOLE_PATH_GEMM);
    ck_assert_int_eq(plan.layout, DIPOLE_LAYOUT_NONE);
    ck_assert_int_eq(plan.config_source, DIPOLE_CONFIG_NONE);
    ck_assert_str_eq(plan.config_label, "");
    ck_assert_uint_eq(plan.chunks, 1);
    ck_assert_uint_eq(plan.chunk_rows, (size_t)d.seq_q);
    ck_assert_uint_eq(plan.chunk_slices, (size_t)(d.batch * d.heads_q));

    /* Backward: the tiled layout of the device, GEMM when forced or beyond its head_dim. */
    d = small_desc();
    ck_assert_int_eq(dipole_attention_backward_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_int_eq(plan.path, DIPOLE_PATH_TILED);
    ck_assert(plan.layout == DIPOLE_LAYOUT_CPU || plan.layout == DIPOLE_LAYOUT_GROUP);
    if (!cpu)
        ck_assert_int_eq(plan.layout, DIPOLE_LAYOUT_GROUP);
    ck_assert_int_ge(plan.block_m, 1);
    ck_assert_int_ge(plan.block_n, 1);
    d.path = DIPOLE_PATH_GEMM;
    ck_assert_int_eq(dipole_attention_backward_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_int_eq(plan.path, DIPOLE_PATH_GEMM);
    ck_assert_int_eq(plan.layout, DIPOLE_LAYOUT_NONE);
    ck_assert_uint_ge(plan.chunks, 1);
    ck_assert_uint_gt(plan.workspace_bytes, 0);
    d.path = DIPOLE_PATH_AUTO;
    d.head_dim = 512;
    ck_assert_int_eq(dipole_attention_backward_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_int_eq(plan.path, DIPOLE_PATH_GEMM);
    d.path = DIPOLE_PATH_TILED;
    ck_assert_int_eq(dipole_attention_backward_plan(ctx, &d, &plan), DIPOLE_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(plan.reason, "head_dim 512"));
    d = small_desc();
    d.head_dim = 0;
    ck_assert_int_eq(dipole_attention_backward_plan(ctx, &d, &plan), DIPOLE_ERR_INVALID_ARG);
    d = small_desc();
    ck_assert_int_eq(dipole_attention_backward_plan(ctx, &d, NULL), DIPOLE_ERR_INVALID_ARG);
    ck_assert_int_eq(dipole_attention_backward_plan(NULL, &d, &plan), DIPOLE_ERR_INVALID_ARG);
    ck_assert_int_eq(dipole_attention_backward_plan(ctx, NULL, &plan), DIPOLE_ERR_INVALID_ARG);
}
END_TEST

/* Missing inputs, short buffers, a buffer of another context: clear statuses, and the context
 * still computes correctly afterwards. */
START_TEST(test_bad_buffers_keep_ctx_usable)
{
    dipole_ctx *ctx = tu_ctx();
    dipole_attn_desc d = small_desc();
    d.variant = DIPOLE_ROUTED;
    const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d);
    float *q = tu_random(nq, 1, 1), *k = tu_random(nk, 2, 1), *v = tu_random(nk, 3, 1);
    float *v2 = tu_random(nk, 4, 1), *out = malloc(nq * 4), *ref = malloc(nq * 4);
    ck_assert_int_eq(dipole_attention_host(ctx, &d, q, k, v, NULL, out), DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "v2"));
    ck_assert_int_eq(dipole_attention_host(ctx, &d, q, k, v, v2, NULL), DIPOLE_ERR_INVALID_ARG);
    ck_assert_int_eq(dipole_attention_host(NULL, &d, q, k, v, v2, out), DIPOLE_ERR_INVALID_ARG);
    ck_assert_int_eq(dipole_reference(&d, q, k, v, NULL, out), DIPOLE_ERR_INVALID_ARG);

    cl_int err;
    cl_context clctx = dipole_ctx_cl_context(ctx);
    cl_mem small = clCreateBuffer(clctx, CL_MEM_READ_WRITE, nk * 4 - 4, NULL, &err);
    cl_mem big = clCreateBuffer(clctx, CL_MEM_READ_WRITE, nq * 4 * 8, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    dipole_tensor tq = dipole_tensor_dense(big, d.seq_q, d.heads_q, d.head_dim);
    dipole_tensor tk = dipole_tensor_dense(small, d.seq_k, d.heads_kv, d.head_dim);
    dipole_tensor to = tq;
    to.offset = nq * 2;
    ck_assert_int_eq(dipole_attention(ctx, &d, &tq, &tk, &tk, &tk, &to, NULL, NULL),
                     DIPOLE_ERR_BUFFER_RANGE);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "k needs"));
    /* An offset past the end. */
    dipole_tensor tq_far = tq;
    tq_far.offset = nq * 8;
    ck_assert_int_eq(dipole_attention(ctx, &d, &tq_far, &tq, &tq, &tq, &to, NULL, NULL),
                     DIPOLE_ERR_BUFFER_RANGE);
    /* Strides whose product overflows. */
    dipole_tensor huge = tq;
    huge.stride_batch = SIZE_MAX / 2;
    d.batch = 3;
    ck_assert_int_eq(dipole_attention(ctx, &d, &huge, &tq, &tq, &tq, &to, NULL, NULL),
                     DIPOLE_ERR_BUFFER_RANGE);
    d.batch = 1;
    /* out overlapping q. */
    ck_assert_int_eq(dipole_attention(ctx, &d, &tq, &tq, &tq, &tq, &tq, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "overlaps"));
    /* A buffer of another OpenCL context. */
    cl_device_id dev = dipole_ctx_device(ctx);
    cl_context other = clCreateContext(NULL, 1, &dev, NULL, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    cl_mem foreign = clCreateBuffer(other, CL_MEM_READ_WRITE, nq * 4 * 8, NULL, &err);
    dipole_tensor tf = dipole_tensor_dense(foreign, d.seq_q, d.heads_q, d.head_dim);
    ck_assert_int_eq(dipole_attention(ctx, &d, &tf, &tq, &tq, &tq, &to, NULL, NULL),
                     DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "another OpenCL context"));
    clReleaseMemObject(foreign);
    clReleaseContext(other);
    clReleaseMemObject(small);
    clReleaseMemObject(big);

    /* Still usable. */
    ck_assert_int_eq(dipole_attention_host(ctx, &d, q, k, v, v2, out), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference(&d, q, k, v, v2, ref), DIPOLE_SUCCESS);
    tu_err e = tu_compare(out, ref, nq, 1e-5, 1e-4);
    ck_assert(e.worst_ratio <= 1);
    free(q), free(k), free(v), free(v2), free(out), free(ref);
}
END_TEST

/* Strided, offset tensors in one packed QKV buffer, on a caller's own queue. */
START_TEST(test_packed_qkv_interop)
{
    dipole_ctx *base = tu_ctx();
    cl_int err;
    cl_command_queue queue =
        clCreateCommandQueue(dipole_ctx_cl_context(base), dipole_ctx_device(base), 0, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    dipole_ctx *ctx;
    ck_assert_int_eq(dipole_ctx_create_from_queue(&ctx, queue), DIPOLE_SUCCESS);
    clReleaseCommandQueue(queue); /* the context holds its own reference */

    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = DIPOLE_TWO_POLE;
    d.batch = 2, d.heads_q = d.heads_kv = 3, d.seq_q = d.seq_k = 37, d.head_dim = 24;
    d.causal = 1;
    const int B = 2, N = 37, H = 3, D = 24;
    /* packed[b][n][4][h][d]: q, k, v, v2 interleaved per token */
    const size_t per_token = 4 * (size_t)H * D, total = (size_t)B * N * per_token;
    float *packed = tu_random(total, 99, 1.0f);
    float *q = malloc(sizeof(float) * B * N * H * D), *k = malloc(sizeof(float) * B * N * H * D),
          *v = malloc(sizeof(float) * B * N * H * D), *v2 = malloc(sizeof(float) * B * N * H * D);
    float *parts[4] = {q, k, v, v2};
    for (size_t t = 0; t < (size_t)B * N; t++)
        for (int p = 0; p < 4; p++)
            memcpy(parts[p] + t * H * D, packed + t * per_token + (size_t)p * H * D,
                   sizeof(float) * H * D);
    cl_mem buf = clCreateBuffer(dipole_ctx_cl_context(ctx), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                                total * 4, packed, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    cl_mem obuf = clCreateBuffer(dipole_ctx_cl_context(ctx), CL_MEM_READ_WRITE,
                                 sizeof(float) * B * N * H * D, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    dipole_tensor t[4];
    for (int p = 0; p < 4; p++) {
        t[p].buffer = buf;
        t[p].offset = (size_t)p * H * D;
        t[p].stride_batch = (size_t)N * per_token;
        t[p].stride_seq = per_token;
        t[p].stride_head = (size_t)D;
    }
    dipole_tensor to = dipole_tensor_dense(obuf, N, H, D);
    cl_event ev = NULL;
    ck_assert_int_eq(dipole_attention(ctx, &d, &t[0], &t[1], &t[2], &t[3], &to, NULL, &ev),
                     DIPOLE_SUCCESS);
    ck_assert_ptr_nonnull(ev);
    ck_assert_int_eq(clWaitForEvents(1, &ev), CL_SUCCESS);
    clReleaseEvent(ev);
    float *out = malloc(sizeof(float) * B * N * H * D), *ref = malloc(sizeof(float) * B * N * H * D);
    ck_assert_int_eq(clEnqueueReadBuffer(dipole_ctx_queue(ctx), obuf, CL_TRUE, 0,
                                         sizeof(float) * B * N * H * D, out, 0, NULL, NULL),
                     CL_SUCCESS);
    ck_assert_int_eq(dipole_reference(&d, q, k, v, v2, ref), DIPOLE_SUCCESS);
    tu_err e = tu_compare(out, ref, (size_t)B * N * H * D, 1e-5, 1e-4);
    ck_assert_msg(e.worst_ratio <= 1, "packed: %g vs %g", (double)out[e.worst], (double)ref[e.worst]);
    clReleaseMemObject(buf);
    clReleaseMemObject(obuf);
    dipole_ctx_destroy(ctx);
    free(packed), free(q), free(k), free(v), free(v2), free(out), free(ref);
}
END_TEST

/* A kernel directory with broken source: DIPOLE_ERR_BUILD and the compiler's log. */
START_TEST(test_build_failure_returns_log)
{
    char dir[] = "/tmp/dipole-kdir-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/dipole_common.cl", dir);
    FILE *f = fopen(path, "w");
    fputs("#define VARIANT_OK 1\n", f);
    fclose(f);
    /* Broken in both forward sources: the plan picks one by device class. */
    char cpu_path[256];
    snprintf(cpu_path, sizeof cpu_path, "%s/dipole_fwd_cpu.cl", dir);
    snprintf(path, sizeof path, "%s/dipole_fwd.cl", dir);
    for (int i = 0; i < 2; i++) {
        f = fopen(i ? cpu_path : path, "w");
        fputs("__kernel void dipole_fwd(__global float *x) { this_is_not_c; }\n", f);
        fclose(f);
    }
    setenv("DIPOLE_KERNEL_DIR", dir, 1);
    setenv("DIPOLE_CACHE_DIR", "off", 1);
    dipole_ctx *ctx;
    ck_assert_int_eq(dipole_ctx_create(&ctx, NULL), DIPOLE_SUCCESS);
    dipole_attn_desc d = small_desc();
    dipole_plan plan;
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_ERR_BUILD);
    const char *msg = dipole_ctx_last_error(ctx);
    ck_assert_msg(strstr(msg, "clBuildProgram") && strstr(msg, "this_is_not_c"), "message: %s", msg);
    /* A missing file is a different, clear failure. */
    unlink(path);
    unlink(cpu_path);
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_ERR_KERNEL_SOURCE);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "dipole_fwd"));
    dipole_ctx_destroy(ctx);
    unsetenv("DIPOLE_KERNEL_DIR");
    unsetenv("DIPOLE_CACHE_DIR");
    snprintf(path, sizeof path, "%s/dipole_common.cl", dir);
    unlink(path);
    rmdir(dir);
}
END_TEST

Suite *api_suite(void)
{
    Suite *s = suite_create("api");
    TCase *tc = tcase_create("api");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_status_strings);
    tcase_add_test(tc, test_invalid_descriptors);
    tcase_add_test(tc, test_selectors);
    tcase_add_test(tc, test_plan);
    tcase_add_test(tc, test_plan_fields);
    tcase_add_test(tc, test_bad_buffers_keep_ctx_usable);
    tcase_add_test(tc, test_packed_qkv_interop);
    tcase_add_test(tc, test_build_failure_returns_log);
    suite_add_tcase(s, tc);
    return s;
}
