/* The GEMM path: CLBlast GEMMs around a row-wise weights kernel (issue 3, in progress). */
#include <stdio.h>

#include "internal.h"

dipole_status dp_gemm_plan(dipole_ctx *ctx, const dp_problem *p, dipole_plan *plan)
{
    (void)ctx;
    (void)p;
    snprintf(plan->reason, sizeof plan->reason, "gemm: this build has no GEMM path yet");
    return DIPOLE_ERR_UNSUPPORTED;
}

dipole_status dp_gemm_run(dipole_ctx *ctx, const dp_problem *p, const dipole_plan *plan,
                          const dp_args *a, cl_event *event)
{
    (void)p;
    (void)plan;
    (void)a;
    (void)event;
    return dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED, "gemm: this build has no GEMM path yet");
}
