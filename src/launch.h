/* The one launch layer (launch.c): kernel arguments, enqueues, the fit of a compiled kernel to
 * the device, per-call device buffers, and tensor geometry. No other file calls
 * clSetKernelArg or clEnqueueNDRangeKernel; every OpenCL failure is reported with its call
 * and the kernel's name. */
#ifndef DIPOLE_LAUNCH_H
#define DIPOLE_LAUNCH_H

#include "internal.h"

/* ---- tensor geometry */
/* The (offset, stride_batch, stride_seq, stride_head) a kernel takes with a tensor's buffer. */
cl_long4 dp_tensor_layout(const dipole_tensor *t);
/* First and one-past-last element a [batch, seq, heads, d] tensor touches. */
void dp_span_of(const dipole_tensor *t, int batch, int seq, int heads, int d, size_t *lo,
                size_t *hi);

/* ---- arguments: appended in order; the first failure sticks and is reported by dp_launch */
typedef struct dp_launch_args {
    cl_kernel kernel;
    const char *name; /* the kernel's name, for messages */
    cl_uint n;        /* next argument index */
    cl_int err;       /* first failure, CL_SUCCESS if none */
    cl_uint failed;   /* index of the argument that failed */
} dp_launch_args;

dp_launch_args dp_launch_args_begin(cl_kernel kernel, const char *name);
void dp_arg_buffer(dp_launch_args *l, cl_mem m);
/* A tensor: its buffer, then its cl_long4 layout (two arguments). */
void dp_arg_tensor(dp_launch_args *l, const dipole_tensor *t);
void dp_arg_int(dp_launch_args *l, int v);
void dp_arg_float(dp_launch_args *l, float v);
/* The sizes, scale, window and score modifiers a score kernel's rows and keys come from:
 * heads_q, heads_kv, seq_q, seq_k, scale, window_left, window_right, then DP_SCORE_ARGS
 * (softcap, the ALiBi slopes, the bias buffer and its layout; the attention kernels' shared
 * tail). alibi_slopes: the call's uploaded slopes or NULL. */
void dp_arg_scores(dp_launch_args *l, const dp_problem *p, cl_mem alibi_slopes);
/* DP_SCORE_ARGS alone (the tail of dp_arg_scores), for kernels with their own size arguments. */
void dp_arg_score_mods(dp_launch_args *l, const dp_problem *p, cl_mem alibi_slopes);
/* A bias's (offset, stride_batch, stride_head, stride_row) as the kernels take it; zeros for
 * none. */
cl_long4 dp_bias_layout(const dipole_bias *bias);
/* A __local argument of `bytes` bytes. */
void dp_arg_local(dp_launch_args *l, size_t bytes);
/* The arguments' status: DIPOLE_SUCCESS, or the failure as "clSetKernelArg(name, arg N)". */
dipole_status dp_launch_args_status(dipole_ctx *ctx, const dp_launch_args *l);

/* Checks the arguments, then enqueues the kernel over dims dimensions (local may be NULL; the
 * planners chose it within the device's limits, and the driver checks it again).
 * Fails with "clSetKernelArg(name, ...)" or "clEnqueueNDRangeKernel(name)". */
dipole_status dp_launch(dipole_ctx *ctx, const dp_launch_args *l, cl_uint dims,
                        const size_t *global, const size_t *local, cl_event *event);

/* ---- fitting a compiled kernel to the device */
typedef struct dp_kernel_fit {
    size_t work_group;   /* CL_KERNEL_WORK_GROUP_SIZE, the smallest over the kernels queried */
    cl_ulong private_mem; /* CL_KERNEL_PRIVATE_MEM_SIZE, the largest */
    cl_ulong local_mem;   /* CL_KERNEL_LOCAL_MEM_SIZE, the largest */
} dp_kernel_fit;

/* Builds (or finds) kernels names[0..n) of cfg and reads their limits into fit. */
dipole_status dp_kernel_fit_query(dipole_ctx *ctx, const dp_kernel_config *cfg,
                                  const char *const *names, int n, dp_kernel_fit *fit);

/* Whether the compiled kernels of a fit hold cfg's work-group and the device's local memory;
 * false, with what does not hold in why. */
bool dp_kernel_fit_holds(const dipole_ctx *ctx, const dp_kernel_fit *fit,
                         const dp_kernel_config *cfg, char *why, size_t cap);

/* A search for the largest size (rows, keys, work-items) whose configuration the compiled
 * kernels allow: size starts at *size and steps down (halving unless `smaller` says otherwise)
 * to `floor`. */
typedef struct dp_fit_search {
    const char *const *names; /* kernels that must all fit */
    int nnames;
    dp_kernel_config (*config)(const void *user, int size);
    /* Whether the kernels fit at size; NULL: size <= fit->work_group. */
    bool (*fits)(const void *user, const dipole_ctx *ctx, int size, const dp_kernel_fit *fit);
    int (*smaller)(int size); /* NULL: size / 2 */
    int floor;
    const void *user;
} dp_fit_search;

/* DIPOLE_SUCCESS with *size, *cfg and *fit of the first size that fits;
 * DIPOLE_ERR_UNSUPPORTED (nothing recorded on ctx: the caller words the reason) when not even
 * the floor fits, with *fit of the floor; any other status from building or querying. */
dipole_status dp_fit_search_run(dipole_ctx *ctx, const dp_fit_search *s, int *size,
                                dp_kernel_config *cfg, dp_kernel_fit *fit);

/* ---- device buffers */
/* An uninitialised READ_WRITE scratch buffer; fails as "clCreateBuffer(what, N bytes)". */
dipole_status dp_scratch(dipole_ctx *ctx, size_t bytes, const char *what, cl_mem *out);
/* A READ_ONLY copy of a small host array. */
dipole_status dp_upload(dipole_ctx *ctx, const void *host, size_t bytes, const char *what,
                        cl_mem *out);

/* The small per-call arrays both passes read: key_lengths (int [batch]; packed: cu_seqlens_q
 * then cu_seqlens_k), the pole weights (float [2 * heads_q], alpha then beta; TWO_POLE with
 * weights given only) and the ALiBi slopes. NULL when absent. */
typedef struct dp_call_buffers {
    cl_mem key_lengths; /* packed: cu_seqlens_q then cu_seqlens_k, int [2 (batch + 1)] */
    cl_mem pole_weights;
    cl_mem alibi_slopes; /* float [heads_q] */
} dp_call_buffers;

dipole_status dp_call_buffers_upload(dipole_ctx *ctx, const dp_problem *p, dp_call_buffers *b);
/* Released objects live on until the enqueued kernels that use them finish. */
void dp_call_buffers_release(dp_call_buffers *b);

#endif
