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

/* Elements of a [batch, seq, heads, head_dim] tensor (packed: one batch), as a double (sizes
 * are checked below). */
static double elems(const dp_problem *p, bool query)
{
    const dipole_attn_desc *d = &p->d;
    return (double)p->tensor_batch * (query ? d->seq_q : d->seq_k) *
           (query ? d->heads_q : d->heads_kv) * d->head_dim;
}

double dp_gemm_stage_bytes(const dp_problem *p, bool backward)
{
    if (p->d.dtype == DIPOLE_F32)
        return p->paged ? 4.0 * (p->reads_v2 ? 3 : 2) * elems(p, false) : 0;
    /* forward: q, out | k, v (v2); backward: q, out, dout, dq | k, v, dk, dv (v2, dv2) */
    const int nq = backward ? 4 : 2, nk = (backward ? 4 : 2) + (p->reads_v2 ? (backward ? 2 : 1) : 0);
    return 4.0 * (nq * elems(p, true) + nk * elems(p, false));
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
                                 bool query, const dipole_tensor *strided, bool strided_first,
                                 cl_mem dense, const dp_args *paged, cl_event *event)
{
    const dipole_attn_desc *d = &p->d;
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
    const int seq = query ? d->seq_q : d->seq_k, heads = query ? d->heads_q : d->heads_kv;
    dp_arg_int(&l, seq);
    dp_arg_int(&l, heads);
    dp_arg_int(&l, d->head_dim);
    if (strided_first) {
        dp_arg_buffer(&l, paged ? paged->block_table : NULL);
        dp_arg_int(&l, paged ? paged->max_pages : 0);
        dp_arg_int(&l, paged ? paged->page_size : 0);
        dp_arg_buffer(&l, paged ? paged->key_lengths : NULL);
    }
    const size_t global[3] = {(size_t)d->head_dim, (size_t)seq * (size_t)heads,
                              (size_t)p->tensor_batch};
    return dp_launch(ctx, &l, 3, global, NULL, event);
}

dipole_status dp_gemm_stage_alloc(dipole_ctx *ctx, const dp_problem *p, bool query,
                                  const char *what, cl_mem *buf, dipole_tensor *dense)
{
    const dipole_attn_desc *d = &p->d;
    const size_t n = (size_t)elems(p, query);
    dipole_status st = dp_scratch(ctx, n * sizeof(float), what, buf);
    if (st == DIPOLE_SUCCESS)
        *dense = query ? dipole_tensor_dense(*buf, d->seq_q, d->heads_q, d->head_dim)
                       : dipole_tensor_dense(*buf, d->seq_k, d->heads_kv, d->head_dim);
    return st;
}

dipole_status dp_gemm_stage_widen(dipole_ctx *ctx, const dp_problem *p, const dipole_tensor *src,
                                  bool query, const dp_args *paged, const char *what, cl_mem *buf,
                                  dipole_tensor *dense)
{
    const dipole_status st = dp_gemm_stage_alloc(ctx, p, query, what, buf, dense);
    if (st != DIPOLE_SUCCESS)
        return st;
    return launch_rows(ctx, p, "dipole_widen_rows", query, src, true, *buf,
                       paged && paged->block_table && !query ? paged : NULL, NULL);
}

dipole_status dp_gemm_stage_narrow(dipole_ctx *ctx, const dp_problem *p,
                                   const dipole_tensor *dense, const dipole_tensor *dst,
                                   bool query, cl_event *event)
{
    return launch_rows(ctx, p, "dipole_narrow_rows", query, dst, false, dense->buffer, NULL, event);
}
