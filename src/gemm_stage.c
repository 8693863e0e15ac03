/* The GEMM paths over half storage (fp16, bf16). CLBlast's SGEMM reads float, and its HGEMM
 * multiplies and accumulates in half: a score of |s| ~ 1e4 overflows it and a sum of thousands
 * of terms loses the rtol the tests hold every path to. So a half-storage call widens its
 * tensors into dense float copies (exact), runs the float path on them, and narrows the outputs
 * back (one rounding, to nearest even, as a tiled kernel's store). The copies are workspace:
 * the plan counts them and chunks the scores under what is left. */
#include <stdio.h>

#include "gemm.h"
#include "launch.h"

dp_problem dp_gemm_f32_problem(const dp_problem *p)
{
    dp_problem p32 = *p;
    p32.d.dtype = DIPOLE_F32;
    p32.paged = false;
    return p32;
}

/* Elements of a [batch, seq, heads, dim] tensor of a role (packed: one batch), as a double
 * (sizes are checked below). */
static double elems(const dp_problem *p, dp_role role)
{
    const dp_shape s = dp_shape_of(p, role);
    return (double)p->tensor_batch * s.seq * s.heads * s.dim;
}

double dp_gemm_stage_bytes(const dp_problem *p, bool backward)
{
    const double v = (p->reads_v2 ? 2 : 1) * elems(p, DP_ROLE_V);
    if (p->d.dtype == DIPOLE_F32)
        return p->paged ? 4.0 * (elems(p, DP_ROLE_K) + v) : 0;
    /* forward: q, k, v (v2), out; backward twice that: dout (out's shape) and dq, dk, dv
     * (dv2) */
    const int n = backward ? 2 : 1;
    return 4.0 * n * (elems(p, DP_ROLE_Q) + elems(p, DP_ROLE_K) + v + elems(p, DP_ROLE_OUT));
}

bool dp_gemm_stage_fits(const dipole_ctx *ctx, const dp_problem *p, bool backward,
                        char *reason, size_t cap)
{
    const double bytes = dp_gemm_stage_bytes(p, backward);
    if (bytes < (double)ctx->workspace_limit)
        return true;
    snprintf(reason, cap,
             "gemm: %s storage%s is copied into dense float tensors of %.0f bytes, not below "
             "the workspace limit of %zu bytes",
             dipole_dtype_name(p->d.dtype), p->paged ? " (paged)" : "", bytes,
             ctx->workspace_limit);
    return false;
}

/* Enqueues the util program's `name` (of the call's storage, at dweights' work-group, the
 * program the backward already builds) over a tensor's elements; the strided tensor comes
 * first (widen) or second (narrow), and widen takes the paging of `paged` (NULL: none). */
static dipole_status launch_rows(dipole_ctx *ctx, const dp_problem *p, const char *name,
                                 dp_role role, const dipole_tensor *strided, bool strided_first,
                                 cl_mem dense, const dp_args *paged, cl_event *event)
{
    const dp_shape sh = dp_shape_of(p, role);
    const dp_kernel_config util = dp_util_config(p, DP_DWEIGHTS_WG);
    cl_kernel kernel = NULL;
    const dipole_status st = dp_get_kernel(ctx, &util, name, &kernel);
    if (st != DIPOLE_SUCCESS)
        return st;
    dp_launch_args l = dp_launch_args_begin(kernel, name);
    if (strided_first)
        dp_arg_tensor(&l, strided);
    dp_arg_buffer(&l, dense);
    if (!strided_first)
        dp_arg_tensor(&l, strided);
    dp_arg_int(&l, sh.seq);
    dp_arg_int(&l, sh.heads);
    dp_arg_int(&l, sh.dim);
    if (strided_first) {
        dp_arg_buffer(&l, paged ? paged->block_table : NULL);
        dp_arg_int(&l, paged ? paged->max_pages : 0);
        dp_arg_int(&l, paged ? paged->page_size : 0);
        dp_arg_buffer(&l, paged ? paged->key_lengths : NULL);
    }
    const size_t global[3] = {(size_t)sh.dim, (size_t)sh.seq * (size_t)sh.heads,
                              (size_t)p->tensor_batch};
    return dp_launch(ctx, &l, 3, global, NULL, event);
}

dipole_status dp_gemm_stage_alloc(dipole_ctx *ctx, const dp_problem *p, dp_role role,
                                  const char *what, cl_mem *buf, dipole_tensor *dense)
{
    const dp_shape sh = dp_shape_of(p, role);
    const size_t n = (size_t)elems(p, role);
    dipole_status st = dp_scratch(ctx, n * sizeof(float), what, buf);
    if (st == DIPOLE_SUCCESS)
        *dense = dipole_tensor_dense(*buf, sh.seq, sh.heads, sh.dim);
    return st;
}

dipole_status dp_gemm_stage_widen(dipole_ctx *ctx, const dp_problem *p, const dipole_tensor *src,
                                  dp_role role, const dp_args *paged, const char *what,
                                  cl_mem *buf, dipole_tensor *dense)
{
    const dipole_status st = dp_gemm_stage_alloc(ctx, p, role, what, buf, dense);
    if (st != DIPOLE_SUCCESS)
        return st;
    const bool keys = role == DP_ROLE_K || role == DP_ROLE_V;
    return launch_rows(ctx, p, "dipole_widen_rows", role, src, true, *buf,
                       paged && paged->block_table && keys ? paged : NULL, NULL);
}

dipole_status dp_gemm_stage_narrow(dipole_ctx *ctx, const dp_problem *p,
                                   const dipole_tensor *dense, const dipole_tensor *dst,
                                   dp_role role, cl_event *event)
{
    return launch_rows(ctx, p, "dipole_narrow_rows", role, dst, false, dense->buffer, NULL, event);
}
