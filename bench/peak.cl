/* Device ceilings for dipole-bench, in the manner of clpeak: an FP32 multiply-add peak with
 * many independent vector chains per work-item (enough instruction-level parallelism to hide
 * the FMA latency), and a streaming copy for memory bandwidth. */

#ifndef FMA_UNROLL
#define FMA_UNROLL 16
#endif

/* USE_FMA=1 (only where the device reports CL_FP_FMA): fma(), the fused instruction itself;
 * PoCL on x86 lowers mad() to a separate multiply and add, at half the rate. USE_FMA=0: mad(),
 * which a device without fused FP32 hardware is never made to emulate. The host runs both
 * and keeps the faster. */
#ifndef USE_FMA
#define USE_FMA 0
#endif
#if USE_FMA
#define STEP4(x) x = fma(x, b, c)
#else
#define STEP4(x) x = mad(x, b, c)
#endif

/* 16 independent float4 chains: 64 lanes, 128 flops per step. */
__kernel void peak_fma_float4(__global float *out, float bs, float cs, int steps)
{
    const float4 b = (float4)(bs), c = (float4)(cs);
    const float g = (float)get_global_id(0) * 1e-7f;
    float4 x0 = g + 0.01f, x1 = g + 0.02f, x2 = g + 0.03f, x3 = g + 0.04f, x4 = g + 0.05f,
           x5 = g + 0.06f, x6 = g + 0.07f, x7 = g + 0.08f, x8 = g + 0.09f, x9 = g + 0.10f,
           x10 = g + 0.11f, x11 = g + 0.12f, x12 = g + 0.13f, x13 = g + 0.14f, x14 = g + 0.15f,
           x15 = g + 0.16f;
    for (int s = 0; s < steps; s++) {
        STEP4(x0); STEP4(x1); STEP4(x2); STEP4(x3); STEP4(x4); STEP4(x5); STEP4(x6); STEP4(x7);
        STEP4(x8); STEP4(x9); STEP4(x10); STEP4(x11); STEP4(x12); STEP4(x13); STEP4(x14);
        STEP4(x15);
    }
    const float4 sum = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)) +
                       ((x8 + x9) + (x10 + x11)) + ((x12 + x13) + (x14 + x15));
    out[get_global_id(0)] = sum.s0 + sum.s1 + sum.s2 + sum.s3;
}

/* 16 independent float16 chains: 256 lanes, 512 flops per step. On a CPU one work-item is one
 * SIMD thread, and an FMA unit needs (latency x ports) independent chains in flight — 4 chains
 * measured half the rate of 12+ on PoCL/AVX-512. */
__kernel void peak_fma_float16(__global float *out, float bs, float cs, int steps)
{
    const float16 b = (float16)(bs), c = (float16)(cs);
    const float g = (float)get_global_id(0) * 1e-7f;
    float16 x0 = g + 0.01f, x1 = g + 0.02f, x2 = g + 0.03f, x3 = g + 0.04f, x4 = g + 0.05f,
            x5 = g + 0.06f, x6 = g + 0.07f, x7 = g + 0.08f, x8 = g + 0.09f, x9 = g + 0.10f,
            x10 = g + 0.11f, x11 = g + 0.12f, x12 = g + 0.13f, x13 = g + 0.14f, x14 = g + 0.15f,
            x15 = g + 0.16f;
    for (int s = 0; s < steps; s++) {
        STEP4(x0); STEP4(x1); STEP4(x2); STEP4(x3); STEP4(x4); STEP4(x5); STEP4(x6); STEP4(x7);
        STEP4(x8); STEP4(x9); STEP4(x10); STEP4(x11); STEP4(x12); STEP4(x13); STEP4(x14);
        STEP4(x15);
    }
    const float16 s16 = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)) +
                        ((x8 + x9) + (x10 + x11)) + ((x12 + x13) + (x14 + x15));
    const float8 s8 = s16.lo + s16.hi;
    const float4 s4 = s8.lo + s8.hi;
    out[get_global_id(0)] = s4.s0 + s4.s1 + s4.s2 + s4.s3;
}

__kernel void peak_copy(__global const float4 *src, __global float4 *dst)
{
    const size_t i = get_global_id(0);
    dst[i] = src[i];
}
