/* The host twins' buffers over the caller's arrays (host_buffers.c). Where the device shares
 * host memory (CL_DEVICE_HOST_UNIFIED_MEMORY: PoCL, integrated GPUs) an array is handed to
 * OpenCL in place with CL_MEM_USE_HOST_PTR; elsewhere, or where it cannot be, it is copied. */
#ifndef DIPOLE_HOST_BUFFERS_H
#define DIPOLE_HOST_BUFFERS_H

#include "internal.h"

typedef struct dp_host_buffer {
    cl_mem buffer;
    size_t offset;  /* elements from the buffer's start to the array's first element */
    void *host;     /* the caller's array (an output's destination) */
    size_t bytes;   /* the array's size */
    bool in_place;  /* the buffer is the caller's memory */
} dp_host_buffer;

/* A read-only buffer holding the input array host of `bytes` bytes and elements of `elem`
 * bytes; elem 0 for a buffer the kernels take without an element offset (in place only at an
 * aligned address). Fails as "clCreateBuffer(N bytes)". */
dipole_status dp_host_input(dipole_ctx *ctx, const void *host, size_t bytes, size_t elem,
                            dp_host_buffer *b);

/* A read-write buffer the device writes the output array host into: in place when allowed
 * (the caller's array overlaps no other array of the call), else a device buffer that
 * dp_host_output_finish reads back. elem as for dp_host_input. */
dipole_status dp_host_output(dipole_ctx *ctx, void *host, size_t bytes, size_t elem,
                             bool may_be_in_place, dp_host_buffer *b);

/* Blocks until the device's writes are in the caller's array: a map and unmap for a buffer in
 * place (a read into the same pointer is undefined for CL_MEM_USE_HOST_PTR), else a read. */
dipole_status dp_host_output_finish(dipole_ctx *ctx, dp_host_buffer *b, const char *what);

/* The dense tensor [batch, seq, heads, head_dim] a host buffer holds. */
dipole_tensor dp_host_tensor(const dp_host_buffer *b, int seq, int heads, int head_dim);

/* One array of a host twin's call. */
typedef struct dp_host_array {
    const void *host; /* the caller's array; NULL for a buffer of the call's own */
    size_t bytes;
    size_t elem;      /* as for dp_host_input (0: the kernels take it without an offset) */
    bool wanted;      /* false: no buffer (an array the call does not use) */
} dp_host_array;

/* Buffers for arrays[0, n) (the wanted ones): inputs below first_output, outputs from it on,
 * an output in place only where it overlaps no other array of the call (so that no kernel
 * reads what it writes). Stops at the first failure; bufs holds what was made. */
dipole_status dp_host_stage(dipole_ctx *ctx, const dp_host_array *arrays, int n, int first_output,
                            dp_host_buffer *bufs);

/* Whether host arrays [a, a + na) and [b, b + nb) share a byte (NULL or empty: no). */
bool dp_host_overlap(const void *a, size_t na, const void *b, size_t nb);

/* A host twin's bias: desc.bias->host staged as an input, and p->d.bias pointed at *copy, the
 * caller's bias with the buffer and offset set. Fails (INVALID_ARG) when host is NULL. */
dipole_status dp_host_bias(dipole_ctx *ctx, dp_problem *p, dipole_bias *copy, dp_host_buffer *b);

/* NULL-safe; the buffer lives on until the commands that use it finish. */
void dp_host_buffer_release(dp_host_buffer *b);

#endif
