/* Descriptor defaults and validation, shared by every path and the reference. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* Row indices are ints in the kernels; this keeps i + seq_k - seq_q and friends in range. */
#define DP_MAX_SEQ (1 << 28)
#define DP_MAX_HEAD_DIM 65536

void dipole_attn_desc_default(dipole_attn_desc *desc)
{
    if (!desc)
        return;
    memset(desc, 0, sizeof *desc);
    desc->variant = DIPOLE_SOFTMAX;
    desc->scale = 0.0f;
    desc->window_left = -1;
    desc->window_right = -1;
    desc->path = DIPOLE_PATH_AUTO;
}

static dipole_status check_dim(dipole_ctx *ctx, const char *field, int value, int max)
{
    if (value < 1 || value > max)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "desc.%s = %d is out of range [1, %d]", field,
                       value, max);
    return DIPOLE_SUCCESS;
}

/* Bytes of a [batch, seq, heads, dim] float tensor, or 0 when the product overflows. */
static size_t tensor_bytes(int batch, int seq, int heads, int dim)
{
    size_t r = 1;
    const int f[] = {batch, seq, heads, dim, (int)sizeof(float)};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (!dp_mul_ok(r, (size_t)f[i], &r))
            return 0;
    return r;
}

/* One cu_seqlens array: [batch + 1] from 0, non-decreasing, ending at the tensors' rows. */
static dipole_status check_cu(dipole_ctx *ctx, const char *field, const int *cu, int batch,
                              int rows, const char *rows_field)
{
    if (cu[0] != 0)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "desc.%s[0] = %d; it must be 0", field, cu[0]);
    for (int b = 0; b < batch; b++)
        if (cu[b + 1] < cu[b])
            return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                           "desc.%s[%d] = %d is less than desc.%s[%d] = %d (it must not decrease)",
                           field, b + 1, cu[b + 1], field, b, cu[b]);
    if (cu[batch] != rows)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "desc.%s[batch = %d] = %d differs from desc.%s = %d (the packed rows)",
                       field, batch, cu[batch], rows_field, rows);
    return DIPOLE_SUCCESS;
}

static dipole_status check_packed(dipole_ctx *ctx, const dipole_attn_desc *desc)
{
    if (!desc->cu_seqlens_q != !desc->cu_seqlens_k)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "desc.%s is set without desc.%s",
                       desc->cu_seqlens_q ? "cu_seqlens_q" : "cu_seqlens_k",
                       desc->cu_seqlens_q ? "cu_seqlens_k" : "cu_seqlens_q");
    if (!desc->cu_seqlens_q)
        return DIPOLE_SUCCESS;
    if (desc->key_lengths)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "desc.key_lengths with desc.cu_seqlens_q: a packed batch's key lengths "
                       "come from desc.cu_seqlens_k");
    dipole_status st = check_cu(ctx, "cu_seqlens_q", desc->cu_seqlens_q, desc->batch,
                                desc->seq_q, "seq_q");
    if (st == DIPOLE_SUCCESS)
        st = check_cu(ctx, "cu_seqlens_k", desc->cu_seqlens_k, desc->batch, desc->seq_k,
                      "seq_k");
    return st;
}

/* ALiBi slopes, the soft-cap and the bias's description (its buffer is checked by the call). */
static dipole_status check_score_mods(dipole_ctx *ctx, const dipole_attn_desc *desc)
{
    if (isnan(desc->softcap) || isinf(desc->softcap) || desc->softcap < 0.0f)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "desc.softcap = %g; it is 0 (off) or a finite positive cap",
                       (double)desc->softcap);
    for (int h = 0; desc->alibi_slopes && h < desc->heads_q; h++)
        if (isnan(desc->alibi_slopes[h]) || isinf(desc->alibi_slopes[h]))
            return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "desc.alibi_slopes[%d] = %g is not finite",
                           h, (double)desc->alibi_slopes[h]);
    const dipole_bias *bias = desc->bias;
    if (bias && bias->dtype != DIPOLE_F32 && bias->dtype != desc->dtype)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "desc.bias->dtype = %d; a bias is float32 or desc.dtype (%s)",
                       (int)bias->dtype, dipole_dtype_name(desc->dtype));
    return DIPOLE_SUCCESS;
}

dipole_status dp_problem_init(dipole_ctx *ctx, const dipole_attn_desc *desc, dp_problem *p)
{
    if (!desc)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "desc is NULL");
    if ((unsigned)desc->variant > DIPOLE_DIFF)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "desc.variant = %d is not a dipole_variant",
                       (int)desc->variant);
    if (!dipole_dtype_size(desc->dtype))
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "desc.dtype = %d is not a dipole_dtype (DIPOLE_F32, DIPOLE_F16, DIPOLE_BF16)",
                       (int)desc->dtype);
    if ((unsigned)desc->path > DIPOLE_PATH_GEMM)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "desc.path = %d is not a dipole_path",
                       (int)desc->path);
    dipole_status st;
    if ((st = check_dim(ctx, "batch", desc->batch, INT_MAX)) ||
        (st = check_dim(ctx, "heads_q", desc->heads_q, INT_MAX)) ||
        (st = check_dim(ctx, "heads_kv", desc->heads_kv, INT_MAX)) ||
        (st = check_dim(ctx, "seq_q", desc->seq_q, DP_MAX_SEQ)) ||
        (st = check_dim(ctx, "seq_k", desc->seq_k, DP_MAX_SEQ)) ||
        (st = check_dim(ctx, "head_dim", desc->head_dim, DP_MAX_HEAD_DIM)))
        return st;
    if (desc->head_dim_v != 0 &&
        (st = check_dim(ctx, "head_dim_v", desc->head_dim_v, DP_MAX_HEAD_DIM)))
        return st;
    const int dv = desc->head_dim_v ? desc->head_dim_v : desc->head_dim,
              nscores = desc->variant == DIPOLE_DIFF ? 2 : 1;
    if (desc->heads_q > INT_MAX / nscores)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "desc.heads_q = %d: DIFF's q holds 2 heads_q heads, more than an int",
                       desc->heads_q);
    if (desc->heads_q % desc->heads_kv != 0)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "desc.heads_q = %d is not a multiple of desc.heads_kv = %d", desc->heads_q,
                       desc->heads_kv);
    if (!tensor_bytes(desc->batch, desc->seq_q, nscores * desc->heads_q, desc->head_dim) ||
        !tensor_bytes(desc->batch, desc->seq_k, nscores * desc->heads_kv, desc->head_dim) ||
        !tensor_bytes(desc->batch, desc->seq_q, desc->heads_q, dv) ||
        !tensor_bytes(desc->batch, desc->seq_k, desc->heads_kv, dv) ||
        !tensor_bytes(desc->batch, desc->heads_q, desc->seq_q, 2))
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "tensor sizes overflow size_t (batch %d, heads_q %d, seq_q %d, seq_k %d, "
                       "head_dim %d, head_dim_v %d)",
                       desc->batch, desc->heads_q, desc->seq_q, desc->seq_k, desc->head_dim, dv);
    if (isnan(desc->scale) || isinf(desc->scale))
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "desc.scale = %g is not finite",
                       (double)desc->scale);
    if (desc->window_left < -1 || desc->window_right < -1)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "desc.window_%s = %d; windows are -1 (unlimited) or >= 0",
                       desc->window_left < -1 ? "left" : "right",
                       desc->window_left < -1 ? desc->window_left : desc->window_right);
    if (desc->key_lengths)
        for (int b = 0; b < desc->batch; b++)
            if (desc->key_lengths[b] < 0 || desc->key_lengths[b] > desc->seq_k)
                return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                               "desc.key_lengths[%d] = %d is outside [0, seq_k = %d]", b,
                               desc->key_lengths[b], desc->seq_k);
    if ((st = check_packed(ctx, desc)) || (st = check_score_mods(ctx, desc)))
        return st;
    if (desc->variant == DIPOLE_TWO_POLE || desc->variant == DIPOLE_DIFF) {
        const float *w[2] = {desc->pos_weight, desc->neg_weight};
        for (int s = 0; s < 2; s++)
            for (int h = 0; w[s] && h < desc->heads_q; h++)
                if (isnan(w[s][h]) || isinf(w[s][h]))
                    return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "desc.%s[%d] = %g is not finite",
                                   s ? "neg_weight" : "pos_weight", h, (double)w[s][h]);
    }
    p->d = *desc;
    if (p->d.scale == 0.0f)
        p->d.scale = (float)(1.0 / sqrt((double)desc->head_dim));
    p->npoles = dipole_lse_count(desc->variant);
    p->reads_v2 = desc->variant == DIPOLE_ROUTED || desc->variant == DIPOLE_TWO_POLE;
    p->group = desc->heads_q / desc->heads_kv;
    p->has_window = desc->window_left >= 0 || desc->window_right >= 0;
    p->paged = false;
    p->varlen = desc->cu_seqlens_q != NULL;
    p->tensor_batch = p->varlen ? 1 : desc->batch;
    p->max_q = desc->seq_q;
    p->max_k = desc->seq_k;
    if (p->varlen) {
        p->max_q = p->max_k = 0;
        for (int b = 0; b < desc->batch; b++) {
            const int lq = desc->cu_seqlens_q[b + 1] - desc->cu_seqlens_q[b];
            const int lk = desc->cu_seqlens_k[b + 1] - desc->cu_seqlens_k[b];
            p->max_q = lq > p->max_q ? lq : p->max_q;
            p->max_k = lk > p->max_k ? lk : p->max_k;
        }
    }
    p->softcap = desc->softcap > 0.0f;
    p->alibi = desc->alibi_slopes != NULL;
    p->bias = !desc->bias ? 0 : desc->bias->dtype == DIPOLE_F32 ? 1 : 2;
    p->dv = dv;
    p->nscores = nscores;
    p->weighted = desc->variant == DIPOLE_TWO_POLE || desc->variant == DIPOLE_DIFF;
    p->q_heads = nscores * desc->heads_q;
    p->k_heads = nscores * desc->heads_kv;
    return DIPOLE_SUCCESS;
}

dp_shape dp_shape_of(const dp_problem *p, dp_role role)
{
    const bool query = role == DP_ROLE_Q || role == DP_ROLE_OUT;
    dp_shape s = {query ? p->d.seq_q : p->d.seq_k, 0, 0};
    s.heads = role == DP_ROLE_Q ? p->q_heads : role == DP_ROLE_K ? p->k_heads
              : query           ? p->d.heads_q
                                : p->d.heads_kv;
    s.dim = role == DP_ROLE_Q || role == DP_ROLE_K ? p->d.head_dim : p->dv;
    return s;
}

dipole_status dipole_attn_desc_validate(const dipole_attn_desc *desc)
{
    dp_problem p;
    return dp_problem_init(NULL, desc, &p);
}

/* Checks that buf belongs to ctx and holds n elements of esize bytes (unit names them). */
static dipole_status check_elems(dipole_ctx *ctx, const char *name, cl_mem buf, size_t n,
                                 size_t esize, const char *unit)
{
    if (!buf)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "%s buffer is NULL", name);
    cl_context owner = NULL;
    size_t size = 0;
    cl_int err = clGetMemObjectInfo(buf, CL_MEM_CONTEXT, sizeof owner, &owner, NULL);
    if (err == CL_SUCCESS)
        err = clGetMemObjectInfo(buf, CL_MEM_SIZE, sizeof size, &size, NULL);
    if (err != CL_SUCCESS)
        return dp_fail(ctx, (dipole_status)err, "%s: clGetMemObjectInfo failed: %s (%d)", name,
                       dipole_status_string((dipole_status)err), (int)err);
    if (owner != ctx->context)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG,
                       "%s buffer belongs to another OpenCL context than the dipole context's",
                       name);
    size_t need;
    if (!dp_mul_ok(n, esize, &need) || need > size)
        return dp_fail(ctx, DIPOLE_ERR_BUFFER_RANGE,
                       "%s needs %zu %s but its buffer holds %zu bytes", name, n, unit, size);
    return DIPOLE_SUCCESS;
}

dipole_status dp_check_buffer(dipole_ctx *ctx, const char *name, cl_mem buf, size_t floats)
{
    return check_elems(ctx, name, buf, floats, sizeof(float), "floats");
}

dipole_status dp_check_int_buffer(dipole_ctx *ctx, const char *name, cl_mem buf, size_t ints)
{
    return check_elems(ctx, name, buf, ints, sizeof(cl_int), "int32s");
}

dipole_status dp_check_tensor(dipole_ctx *ctx, const char *name, const dipole_tensor *t,
                              dipole_dtype dtype, int batch, int seq, int heads, int head_dim)
{
    if (!t)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "tensor %s is NULL", name);
    /* The last element touched, computed with overflow checks: the buffer must reach past it. */
    size_t last = t->offset, term;
    const size_t ext[3] = {(size_t)batch - 1, (size_t)seq - 1, (size_t)heads - 1};
    const size_t str[3] = {t->stride_batch, t->stride_seq, t->stride_head};
    for (int i = 0; i < 3; i++) {
        if (!dp_mul_ok(ext[i], str[i], &term) || last > SIZE_MAX - term)
            goto overflow;
        last += term;
    }
    if (last > SIZE_MAX - (size_t)head_dim)
        goto overflow;
    /* Strides beyond int64 cannot be passed to the kernels. */
    if (last + (size_t)head_dim > (size_t)INT64_MAX / 4)
        goto overflow;
    char unit[32];
    snprintf(unit, sizeof unit, "%s elements", dipole_dtype_name(dtype));
    return check_elems(ctx, name, t->buffer, last + (size_t)head_dim, dipole_dtype_size(dtype),
                       unit);
overflow:
    return dp_fail(ctx, DIPOLE_ERR_BUFFER_RANGE,
                   "tensor %s: offset %zu with strides (%zu, %zu, %zu) overflows the address range",
                   name, t->offset, t->stride_batch, t->stride_seq, t->stride_head);
}

dipole_tensor dipole_tensor_dense(cl_mem buffer, int seq, int heads, int head_dim)
{
    dipole_tensor t;
    t.buffer = buffer;
    t.offset = 0;
    t.stride_head = (size_t)head_dim;
    t.stride_seq = (size_t)heads * (size_t)head_dim;
    t.stride_batch = (size_t)seq * t.stride_seq;
    return t;
}

/* Whether two elements of an output tensor could be the same address: then work-items race on it and the
 * result depends on timing. Sufficient test: with the dimensions sorted by stride, each stride
 * must pass the span of all the smaller ones. Unusual but valid layouts it refuses are refused
 * with a message, never computed wrongly. */
bool dp_tensor_self_overlaps(const dipole_tensor *t, int batch, int seq, int heads, int d)
{
    size_t ext[4] = {(size_t)d, (size_t)heads, (size_t)seq, (size_t)batch};
    size_t str[4] = {1, t->stride_head, t->stride_seq, t->stride_batch};
    for (int i = 1; i < 4; i++) /* insertion sort by stride; 4 entries */
        for (int j = i; j > 0 && str[j] < str[j - 1]; j--) {
            size_t e = ext[j], s = str[j];
            ext[j] = ext[j - 1], str[j] = str[j - 1];
            ext[j - 1] = e, str[j - 1] = s;
        }
    size_t span = 0; /* dp_check_tensor has bounded every product here */
    for (int i = 0; i < 4; i++) {
        if (ext[i] == 1)
            continue;
        if (str[i] <= span)
            return true;
        span += str[i] * (ext[i] - 1);
    }
    return false;
}

const char *dp_bwd_host_missing(const dp_problem *p, const void *q, const void *k, const void *v,
                                const void *v2, const void *dout, const void *dq, const void *dk,
                                const void *dv, const void *dv2)
{
    const struct {
        const void *ptr;
        bool needed;
        const char *name;
    } arrays[] = {
        {q, true, "q"},   {k, true, "k"},   {v, true, "v"},
        {dout, true, "dout"}, {dq, true, "dq"}, {dk, true, "dk"},
        {dv, true, "dv"}, {v2, p->reads_v2, "v2 (the variant reads it)"},
        {dv2, p->reads_v2, "dv2 (the variant reads v2)"},
    };
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        if (arrays[i].needed && !arrays[i].ptr)
            return arrays[i].name;
    return NULL;
}

size_t dp_bias_span(const dp_problem *p)
{
    const dipole_bias *bias = p->d.bias;
    size_t last = bias->offset, term;
    const size_t ext[4] = {(size_t)p->tensor_batch - 1, (size_t)p->d.heads_q - 1,
                           (size_t)p->d.seq_q - 1, (size_t)p->d.seq_k - 1};
    const size_t str[4] = {bias->stride_batch, bias->stride_head, bias->stride_row, 1};
    for (int i = 0; i < 4; i++)
        if (!dp_mul_ok(ext[i], str[i], &term) || last > SIZE_MAX - term ||
            (last += term) >= (size_t)INT64_MAX / 4)
            return 0;
    return last + 1;
}

dipole_status dp_check_bias(dipole_ctx *ctx, const dp_problem *p)
{
    const dipole_bias *bias = p->d.bias;
    if (!bias->buffer)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "desc.bias->buffer is NULL");
    const size_t span = dp_bias_span(p);
    if (!span)
        return dp_fail(ctx, DIPOLE_ERR_BUFFER_RANGE,
                       "desc.bias: offset %zu with strides (%zu, %zu, %zu) overflows the "
                       "address range",
                       bias->offset, bias->stride_batch, bias->stride_head, bias->stride_row);
    char unit[32];
    snprintf(unit, sizeof unit, "%s elements", dipole_dtype_name(bias->dtype));
    return check_elems(ctx, "desc.bias", bias->buffer, span, dipole_dtype_size(bias->dtype),
                       unit);
}
