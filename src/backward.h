/* Private to the backward pass: the call's tensors, and the tiled kernels' plan and launch
 * (backward_tiled.c). Validation, the path choice and the host twin are in backward.c; the
 * GEMM path is in backward_gemm.c (gemm.h). */
#ifndef DIPOLE_BACKWARD_H
#define DIPOLE_BACKWARD_H

#include "internal.h"
#include "launch.h"

typedef struct dp_bwd_args {
    const dipole_tensor *q, *k, *v, *v2, *out, *dout, *dq, *dk, *dv, *dv2;
    cl_mem lse, dpos, dneg;
} dp_bwd_args;

/* dipole_bwd_dweights' work-group (both paths): partial sums per work-item, then one ordered
 * sum. */
#define DP_DWEIGHTS_WG 32

/* The tiled kernels keep HEAD_DIM-float rows per work-item; beyond this, the GEMM path. */
#define DP_BWD_MAX_HEAD_DIM 256

/* How the tiled backward runs: the layout the forward uses on this device (cpu:
 * cl/dipole_bwd_cpu.cl, a micro-kernel per work-item; group: cl/dipole_bwd.cl) and its tiles. */
typedef struct dp_bwd_tiles {
    bool cpu;
    int block_m; /* group: query rows per work-group; cpu: query rows per dq work-item */
    int block_n; /* group: keys per work-group; cpu: keys per dkdv work-item */
} dp_bwd_tiles;

/* A backward call's plan: every decision, made once (backward.c, backward_tiled.c,
 * backward_gemm.c); the run functions execute it and decide nothing. */
typedef struct dp_bwd_plan {
    dipole_plan pub;           /* what dipole_attention_backward_plan returns */
    dp_bwd_tiles tiles;        /* tiled */
    dp_kernel_config kernels;  /* tiled: the program of the layout's kernels */
    dp_kernel_config dweights; /* dipole_bwd_dweights' program (TWO_POLE) */
    dp_gemm_chunking chunking; /* gemm */
    dp_rowwise_plan rowwise;   /* gemm */
} dp_bwd_plan;

/* dipole_bwd_dweights' configuration (both paths): DP_DWEIGHTS_WG work-items, fewer where the
 * device or the compiled kernel allows fewer. */
dipole_status dp_bwd_dweights_plan(dipole_ctx *ctx, const dp_problem *p, dp_kernel_config *cfg);

/* d alpha, d beta from the per-row sums rowdot [NPOLES, B, Hq, Nq] (both paths): the util
 * program's dipole_bwd_dweights at cfg's work-group, one group per (head, pole). */
dipole_status dp_bwd_dweights_launch(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a,
                                     const dp_kernel_config *cfg, cl_mem rowdot, cl_event *event);

/* Tiles that fit the device and the compiled kernels (filling plan); DIPOLE_ERR_UNSUPPORTED
 * with the reason on ctx otherwise. */
dipole_status dp_bwd_tiled_plan(dipole_ctx *ctx, const dp_problem *p, dp_bwd_plan *plan);

/* Launches the tiled backward (validated arguments). */
dipole_status dp_bwd_tiled_run(dipole_ctx *ctx, const dp_problem *p, const dp_bwd_args *a,
                               const dp_bwd_plan *plan, const dp_call_buffers *cb,
                               cl_event *event);

#endif
