/* The host twins' buffers over the caller's arrays (see host_buffers.h).
 *
 * PoCL copies a CL_MEM_USE_HOST_PTR array only when its address is not a multiple of
 * CL_DEVICE_MEM_BASE_ADDR_ALIGN; malloc's large blocks start 16 bytes into a page, so the
 * buffer starts at the aligned address at or below the array and the tensor's element
 * offset skips the gap. The gap lies in the same aligned block as the array's first byte,
 * hence in a mapped page; no kernel reads or writes it. */
#include <stdint.h>
#include <stdio.h>

#include "host_buffers.h"

static dipole_status create(dipole_ctx *ctx, cl_mem_flags flags, size_t bytes, void *host,
                            cl_mem *out)
{
    cl_int err;
    *out = clCreateBuffer(ctx->context, flags, bytes, host, &err);
    if (err == CL_SUCCESS)
        return DIPOLE_SUCCESS;
    *out = NULL;
    char call[96];
    snprintf(call, sizeof call, "clCreateBuffer(%zu bytes)", bytes);
    return dp_cl_fail(ctx, err, call);
}

/* Hands host to OpenCL in place where the device and the address allow it; false when not. */
static bool try_in_place(dipole_ctx *ctx, cl_mem_flags access, void *host, size_t bytes,
                         size_t elem, dp_host_buffer *b)
{
    if (!ctx->props.host_unified || !host || bytes == 0)
        return false;
    const uintptr_t at = (uintptr_t)host, base = at - at % ctx->props.base_align;
    const size_t gap = (size_t)(at - base);
    if (elem == 0 ? gap != 0 : gap % elem != 0)
        return false;
    cl_int err;
    cl_mem m = clCreateBuffer(ctx->context, access | CL_MEM_USE_HOST_PTR, gap + bytes,
                              (void *)base, &err);
    if (err != CL_SUCCESS)
        return false; /* a driver may refuse host pointers: the copy still serves */
    b->buffer = m;
    b->offset = elem ? gap / elem : 0;
    b->in_place = true;
    return true;
}

dipole_status dp_host_input(dipole_ctx *ctx, const void *host, size_t bytes, size_t elem,
                            dp_host_buffer *b)
{
    *b = (dp_host_buffer){NULL, 0, (void *)host, bytes, false};
    if (try_in_place(ctx, CL_MEM_READ_ONLY, (void *)host, bytes, elem, b))
        return DIPOLE_SUCCESS;
    return create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, bytes, (void *)host, &b->buffer);
}

dipole_status dp_host_output(dipole_ctx *ctx, void *host, size_t bytes, size_t elem,
                             bool may_be_in_place, dp_host_buffer *b)
{
    *b = (dp_host_buffer){NULL, 0, host, bytes, false};
    /* READ_WRITE either way: the GEMM path reads out (beta = 1). */
    if (may_be_in_place && try_in_place(ctx, CL_MEM_READ_WRITE, host, bytes, elem, b))
        return DIPOLE_SUCCESS;
    return create(ctx, CL_MEM_READ_WRITE, bytes, NULL, &b->buffer);
}

dipole_status dp_host_output_finish(dipole_ctx *ctx, dp_host_buffer *b, const char *what)
{
    char call[96];
    cl_int err;
    if (!b->in_place) {
        err = clEnqueueReadBuffer(ctx->queue, b->buffer, CL_TRUE, 0, b->bytes, b->host, 0, NULL,
                                  NULL);
        snprintf(call, sizeof call, "clEnqueueReadBuffer(%s)", what);
        return err == CL_SUCCESS ? DIPOLE_SUCCESS : dp_cl_fail(ctx, err, call);
    }
    const size_t gap = (size_t)((uintptr_t)b->host % ctx->props.base_align);
    void *p = clEnqueueMapBuffer(ctx->queue, b->buffer, CL_TRUE, CL_MAP_READ, gap,
                                 b->bytes, 0, NULL, NULL, &err);
    if (err != CL_SUCCESS) {
        snprintf(call, sizeof call, "clEnqueueMapBuffer(%s)", what);
        return dp_cl_fail(ctx, err, call);
    }
    err = clEnqueueUnmapMemObject(ctx->queue, b->buffer, p, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clFinish(ctx->queue);
    snprintf(call, sizeof call, "clEnqueueUnmapMemObject(%s)", what);
    return err == CL_SUCCESS ? DIPOLE_SUCCESS : dp_cl_fail(ctx, err, call);
}

dipole_tensor dp_host_tensor(const dp_host_buffer *b, int seq, int heads, int head_dim)
{
    dipole_tensor t = dipole_tensor_dense(b->buffer, seq, heads, head_dim);
    t.offset = b->offset;
    return t;
}

bool dp_host_overlap(const void *a, size_t na, const void *b, size_t nb)
{
    if (!a || !b || na == 0 || nb == 0)
        return false;
    const uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return x < y + nb && y < x + na;
}

void dp_host_buffer_release(dp_host_buffer *b)
{
    if (b->buffer)
        clReleaseMemObject(b->buffer);
    b->buffer = NULL;
}

dipole_status dp_host_stage(dipole_ctx *ctx, const dp_host_array *arrays, int n, int first_output,
                            dp_host_buffer *bufs)
{
    dipole_status st = DIPOLE_SUCCESS;
    for (int i = 0; i < n && st == DIPOLE_SUCCESS; i++) {
        const dp_host_array *a = &arrays[i];
        if (!a->wanted)
            continue;
        if (i < first_output) {
            st = dp_host_input(ctx, a->host, a->bytes, a->elem, &bufs[i]);
            continue;
        }
        bool alone = true;
        for (int j = 0; j < n; j++)
            if (j != i && arrays[j].wanted &&
                dp_host_overlap(a->host, a->bytes, arrays[j].host, arrays[j].bytes))
                alone = false;
        st = dp_host_output(ctx, (void *)a->host, a->bytes, a->elem, alone, &bufs[i]);
    }
    return st;
}

dipole_status dp_host_bias(dipole_ctx *ctx, dp_problem *p, dipole_bias *copy, dp_host_buffer *b)
{
    *b = (dp_host_buffer){NULL, 0, NULL, 0, false};
    if (!p->bias)
        return DIPOLE_SUCCESS;
    *copy = *p->d.bias;
    if (!copy->host)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "desc.bias->host is NULL (a host twin reads the bias from host memory)");
    const size_t span = dp_bias_span(p), es = dipole_dtype_size(copy->dtype);
    if (!span || span > SIZE_MAX / es)
        return dp_fail(ctx, DIPOLE_ERR_BUFFER_RANGE,
                       "desc.bias: offset %zu with strides (%zu, %zu, %zu) overflows the "
                       "address range",
                       copy->offset, copy->stride_batch, copy->stride_head, copy->stride_row);
    dipole_status st = dp_host_input(ctx, copy->host, span * es, es, b);
    if (st != DIPOLE_SUCCESS)
        return st;
    copy->buffer = b->buffer;
    copy->offset += b->offset;
    p->d.bias = copy;
    return DIPOLE_SUCCESS;
}
