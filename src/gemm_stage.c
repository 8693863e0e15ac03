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
    return p32;
}

/* Elements of a [batch, seq, heads, head_dim] tensor, as a double (sizes are checked below). */
static double elems(const dipole_attn_desc *d, bool query)
{
    return (double)d->batch * (query ? d->seq_q : d->seq_k) * (query ? d->heads_q : d->heads_kv) *
           d->head_dim;
}

double dp_gemm_stage_bytes(const dp_problem *p, bool backward)
{
    if (p->d.dtype == DIPOLE_F32)
        return 0;
    /* forward: q, out | k, v (v2); backward: q, out, dout, dq | k, v, dk, dv (v2, dv2) */
    const int nq = backward ? 4 : 2, nk = (backward ? 4 : 2) + (p->reads_v2 ? (backward ? 2 : 1) : 0);
    return 4.0 * (nq * elems(&p->d, true) + nk * elems(&p->d, false));
}

bool dp_gemm_stage_fits(const dipole_ctx *ctx, const dp_problem *p, bool backward,
                        char *reason, size_t cap)
{
    const double bytes = dp_gemm_stage_bytes(p, backward);
    if (bytes < (double)ctx->workspace_limit)
        return true;
    snprintf(reason, cap,
             "gemm: %s storage is widened into float copies of %.0f bytes, not below the "
             "workspace limit of %zu bytes",
             dipole_dtype_name(p->d.dtype), bytes, ctx->workspace_limit);
    return false;
}

static dipole_status rows_kernel(dipole_ctx *ctx, const dp_problem *p, const char *name,
                                 cl_kernel *kernel)
{
    /* The util program of the call's storage; its work-group define is dweights' own. */
    const dp_kernel_config util = dp_util_config(p, 32);
    return dp_get_kernel(ctx, &util, name, kernel);
}

static size_t tensor_global(const dipole_attn_desc *d, bool query, size_t *global)
{
    global[0] = (size_t)d->head_dim;
    global[1] = (size_t)(query ? d->seq_q : d->seq_k) * (size_t)(query ? d->heads_q : d->heads_kv);
    global[2] = (size_t)d->batch;
    return global[0] * global[1] * global[2];
}

dipole_status dp_gemm_stage_alloc(dipole_ctx *ctx, const dp_problem *p, bool query,
                                  const char *what, cl_mem *buf, dipole_tensor *dense)
{
    const dipole_attn_desc *d = &p->d;
    const size_t n = (size_t)elems(d, query);
    dipole_status st = dp_scratch(ctx, n * sizeof(float), what, buf);
    if (st == DIPOLE_SUCCESS)
        *dense = query ? dipole_tensor_dense(*buf, d->seq_q, d->heads_q, d->head_dim)
                       : dipole_tensor_dense(*buf, d->seq_k, d->heads_kv, d->head_dim);
    return st;
}

dipole_status dp_gemm_stage_widen(dipole_ctx *ctx, const dp_problem *p, const dipole_tensor *src,
                                  bool query, const char *what, cl_mem *buf, dipole_tensor *dense)
{
    const dipole_attn_desc *d = &p->d;
    cl_kernel kernel = NULL;
    dipole_status st = dp_gemm_stage_alloc(ctx, p, query, what, buf, dense);
    if (st == DIPOLE_SUCCESS)
        st = rows_kernel(ctx, p, "dipole_widen_rows", &kernel);
    if (st != DIPOLE_SUCCESS)
        return st;
    dp_launch_args l = dp_launch_args_begin(kernel, "dipole_widen_rows");
    dp_arg_tensor(&l, src);
    dp_arg_buffer(&l, *buf);
    dp_arg_int(&l, query ? d->seq_q : d->seq_k);
    dp_arg_int(&l, query ? d->heads_q : d->heads_kv);
    dp_arg_int(&l, d->head_dim);
    size_t global[3];
    tensor_global(d, query, global);
    return dp_launch(ctx, &l, 3, global, NULL, NULL);
}

dipole_status dp_gemm_stage_narrow(dipole_ctx *ctx, const dp_problem *p,
                                   const dipole_tensor *dense, const dipole_tensor *dst,
                                   bool query, cl_event *event)
{
    const dipole_attn_desc *d = &p->d;
    cl_kernel kernel = NULL;
    dipole_status st = rows_kernel(ctx, p, "dipole_narrow_rows", &kernel);
    if (st != DIPOLE_SUCCESS)
        return st;
    dp_launch_args l = dp_launch_args_begin(kernel, "dipole_narrow_rows");
    dp_arg_buffer(&l, dense->buffer);
    dp_arg_tensor(&l, dst);
    dp_arg_int(&l, query ? d->seq_q : d->seq_k);
    dp_arg_int(&l, query ? d->heads_q : d->heads_kv);
    dp_arg_int(&l, d->head_dim);
    size_t global[3];
    tensor_global(d, query, global);
    return dp_launch(ctx, &l, 3, global, NULL, event);
}
