/* The backward pass (issue 7, in progress). */
#include "internal.h"

dipole_status dipole_attention_backward(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                        const dipole_tensor *q, const dipole_tensor *k,
                                        const dipole_tensor *v, const dipole_tensor *v2,
                                        const dipole_tensor *out, const dipole_tensor *dout, cl_mem lse,
                                        const dipole_tensor *dq, const dipole_tensor *dk,
                                        const dipole_tensor *dv, const dipole_tensor *dv2,
                                        cl_mem dpos_weight, cl_mem dneg_weight, cl_event *event)
{
    (void)desc, (void)q, (void)k, (void)v, (void)v2, (void)out, (void)dout, (void)lse;
    (void)dq, (void)dk, (void)dv, (void)dv2, (void)dpos_weight, (void)dneg_weight, (void)event;
    return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED, "the backward pass is not built yet");
}

dipole_status dipole_attention_backward_host(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                             const float *q, const float *k, const float *v,
                                             const float *v2, const float *dout, float *dq,
                                             float *dk, float *dv, float *dv2, float *dpos_weight,
                                             float *dneg_weight)
{
    (void)desc, (void)q, (void)k, (void)v, (void)v2, (void)dout, (void)dq, (void)dk, (void)dv;
    (void)dv2, (void)dpos_weight, (void)dneg_weight;
    return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED, "the backward pass is not built yet");
}

dipole_status dipole_reference_backward(const dipole_attn_desc *desc, const float *q, const float *k,
                                        const float *v, const float *v2, const float *dout, float *dq,
                                        float *dk, float *dv, float *dv2, float *dpos_weight,
                                        float *dneg_weight)
{
    (void)desc, (void)q, (void)k, (void)v, (void)v2, (void)dout, (void)dq, (void)dk, (void)dv;
    (void)dv2, (void)dpos_weight, (void)dneg_weight;
    return dp_fail(NULL, DIPOLE_ERR_UNSUPPORTED, "the backward pass is not built yet");
}
