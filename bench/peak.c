/* Device ceilings measured in the same run: the FP32 multiply-add peak and streaming copy
 * bandwidth (bench/peak.cl), and CLBlast's SGEMM at a square size adapted to the device. */
#include <clblast_c.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_cl.h"

/* flops per loop step: float4 kernel 16 chains x 4 lanes x 2, float16 kernel 16 x 16 x 2 */
static const double flops_per_step[2] = {128.0, 512.0};

typedef struct peak_env {
    cl_context context;
    cl_command_queue queue;
    cl_device_id device;
    bool profiling;
} peak_env;

static void note(bench_ceilings *c, const char *what, cl_int err)
{
    size_t n = strlen(c->note);
    snprintf(c->note + n, sizeof c->note - n, "%s%s failed (%d)", n ? "; " : "", what, (int)err);
}

static const char *source_text(const char *name)
{
    for (const dp_embedded_source *s = bench_cl_sources; s->name; s++)
        if (!strcmp(s->name, name))
            return s->text;
    return NULL;
}

/* Runs kernel over global work-items `runs` times; the best time in ms (events where the
 * queue profiles, else wall clock around each run), or -1 with err set. */
static double time_kernel(const peak_env *e, cl_kernel k, size_t global, int runs, cl_int *err)
{
    double best = -1;
    for (int r = 0; r < runs; r++) {
        cl_event ev = NULL;
        const double t0 = bench_now_ms();
        *err = clEnqueueNDRangeKernel(e->queue, k, 1, NULL, &global, NULL, 0, NULL, &ev);
        if (*err == CL_SUCCESS)
            *err = clFinish(e->queue);
        double t = bench_now_ms() - t0;
        if (*err == CL_SUCCESS && e->profiling) {
            cl_ulong s = 0, f = 0;
            if (clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_START, sizeof s, &s, NULL) ==
                    CL_SUCCESS &&
                clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_END, sizeof f, &f, NULL) ==
                    CL_SUCCESS &&
                f > s)
                t = (double)(f - s) * 1e-6;
        }
        if (ev)
            clReleaseEvent(ev);
        if (*err != CL_SUCCESS)
            return -1;
        if (best < 0 || t < best)
            best = t;
    }
    return best;
}

static void measure_fma(const peak_env *e, cl_program prog, const bench_device *dev,
                        bench_ceilings *c, bool quick, bool fused)
{
    static const char *const names[] = {"peak_fma_float4", "peak_fma_float16"};
    /* Enough work-items to fill every compute unit several times over. */
    const size_t global = (size_t)(dev->compute_units ? dev->compute_units : 1) *
                          (dev->cpu ? 256 : 4096);
    cl_int err;
    cl_mem out = clCreateBuffer(e->context, CL_MEM_WRITE_ONLY, global * sizeof(float), NULL, &err);
    if (err != CL_SUCCESS) {
        note(c, "clCreateBuffer(fma)", err);
        return;
    }
    for (int i = 0; i < 2; i++) {
        cl_kernel k = clCreateKernel(prog, names[i], &err);
        if (err != CL_SUCCESS) {
            note(c, names[i], err);
            continue;
        }
        const cl_float b = 0.999f, cc = 0.001f;
        cl_int steps = 16;
        err = clSetKernelArg(k, 0, sizeof out, &out);
        err |= clSetKernelArg(k, 1, sizeof b, &b);
        err |= clSetKernelArg(k, 2, sizeof cc, &cc);
        /* Grow the loop until one launch takes long enough to time well. */
        double t = -1;
        const double target = quick ? 10 : 40;
        while (err == CL_SUCCESS) {
            err = clSetKernelArg(k, 3, sizeof steps, &steps);
            if (err == CL_SUCCESS)
                t = time_kernel(e, k, global, 1, &err);
            if (err != CL_SUCCESS || t >= target || steps >= (1 << 24))
                break;
            steps = t > 0.05 ? (cl_int)fmin(steps * ceil(target * 1.2 / t), 1 << 24) : steps * 8;
        }
        if (err == CL_SUCCESS)
            t = time_kernel(e, k, global, quick ? 2 : 4, &err);
        if (err != CL_SUCCESS) {
            note(c, names[i], err);
        } else if (t > 0) {
            const double gf = (double)global * steps * flops_per_step[i] / (t * 1e6);
            if (gf > c->fma_gflops) {
                c->fma_gflops = gf;
                snprintf(c->fma_kernel, sizeof c->fma_kernel, "%s %s", names[i] + 9,
                         fused ? "fma" : "mad");
            }
        }
        clReleaseKernel(k);
    }
    clReleaseMemObject(out);
}

static void measure_copy(const peak_env *e, cl_program prog, const bench_device *dev,
                         bench_ceilings *c, bool quick)
{
    /* Far beyond any cache, within the allocation limit. */
    size_t bytes = (size_t)(quick ? 32 : dev->cpu ? 128 : 512) << 20;
    while (bytes > (1u << 20) && (bytes > dev->max_alloc || 2 * bytes > dev->global_mem / 2))
        bytes /= 2;
    cl_int err, e2;
    cl_mem src = clCreateBuffer(e->context, CL_MEM_READ_ONLY, bytes, NULL, &err);
    cl_mem dst = clCreateBuffer(e->context, CL_MEM_WRITE_ONLY, bytes, NULL, &e2);
    cl_kernel k = NULL;
    if (err == CL_SUCCESS)
        err = e2;
    const float zero = 0;
    if (err == CL_SUCCESS) /* touch the pages so the first run does not time allocation */
        err = clEnqueueFillBuffer(e->queue, src, &zero, sizeof zero, 0, bytes, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueFillBuffer(e->queue, dst, &zero, sizeof zero, 0, bytes, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        k = clCreateKernel(prog, "peak_copy", &err);
    if (err == CL_SUCCESS)
        err = clSetKernelArg(k, 0, sizeof src, &src);
    if (err == CL_SUCCESS)
        err = clSetKernelArg(k, 1, sizeof dst, &dst);
    double t = -1;
    if (err == CL_SUCCESS)
        t = time_kernel(e, k, bytes / 16, quick ? 3 : 6, &err);
    if (err != CL_SUCCESS)
        note(c, "copy", err);
    else if (t > 0) {
        c->copy_gbps = 2.0 * (double)bytes / (t * 1e6);
        c->copy_bytes = bytes;
    }
    if (k)
        clReleaseKernel(k);
    if (src)
        clReleaseMemObject(src);
    if (dst)
        clReleaseMemObject(dst);
}

/* One n x n x n SGEMM batch of `calls`, wall clock with one finish (CLBlast may launch
 * several kernels per call, so one event would not cover it). ms per call, or -1. */
static double sgemm_ms(peak_env *e, cl_mem a, cl_mem b, cl_mem cm, size_t n, int calls,
                       int *status)
{
    const double t0 = bench_now_ms();
    for (int i = 0; i < calls; i++) {
        *status = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeNo, n, n,
                               n, 1.0f, a, 0, n, b, 0, n, 0.0f, cm, 0, n, &e->queue, NULL);
        if (*status != CLBlastSuccess)
            return -1;
    }
    *status = clFinish(e->queue);
    return *status == CL_SUCCESS ? (bench_now_ms() - t0) / calls : -1;
}

static void measure_sgemm(peak_env *e, const bench_device *dev, bench_ceilings *c, bool quick)
{
    /* Grow n until a call is long enough to time, up to a size the device class can afford. */
    size_t nmax = quick ? 1024 : dev->cpu ? 2048 : 8192, n = 256;
    while (nmax > n && (3 * 4 * nmax * nmax > dev->global_mem / 4 || 4 * nmax * nmax > dev->max_alloc))
        nmax /= 2;
    cl_int err = CL_SUCCESS;
    int status = 0;
    const size_t bytes = nmax * nmax * sizeof(float);
    if (bytes > dev->max_alloc) {
        snprintf(c->note + strlen(c->note), sizeof c->note - strlen(c->note),
                 "%ssgemm: %zu x %zu exceeds max alloc", c->note[0] ? "; " : "", nmax, nmax);
        return;
    }
    cl_mem m[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3 && err == CL_SUCCESS; i++)
        m[i] = clCreateBuffer(e->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
    float *host = malloc(bytes);
    if (err == CL_SUCCESS && host) {
        for (size_t i = 0; i < nmax * nmax; i++)
            host[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
        for (int i = 0; i < 2 && err == CL_SUCCESS; i++)
            err = clEnqueueWriteBuffer(e->queue, m[i], CL_TRUE, 0, bytes, host, 0, NULL, NULL);
    }
    free(host);
    if (err != CL_SUCCESS || !host) {
        note(c, "sgemm buffers", err);
        goto out;
    }
    double t = -1;
    const double target = quick ? 20 : 100;
    for (;;) {
        t = sgemm_ms(e, m[0], m[1], m[2], n, 1, &status); /* first call tunes/compiles */
        if (t >= 0)
            t = sgemm_ms(e, m[0], m[1], m[2], n, 1, &status);
        if (t < 0 || n >= nmax || t >= target)
            break;
        n *= 2;
    }
    if (t >= 0) {
        const int calls = t > 0 ? (int)fmax(1, fmin(20, ceil(target / t))) : 20;
        double best = t;
        for (int r = 0; r < (quick ? 1 : 3) && t >= 0; r++) {
            t = sgemm_ms(e, m[0], m[1], m[2], n, calls, &status);
            if (t >= 0 && t < best)
                best = t;
        }
        if (t >= 0) {
            c->sgemm_n = (int)n;
            c->sgemm_gflops = 2.0 * (double)n * n * n / (best * 1e6);
        }
    }
    if (t < 0)
        snprintf(c->note + strlen(c->note), sizeof c->note - strlen(c->note),
                 "%sCLBlastSgemm failed (status %d)", c->note[0] ? "; " : "", status);
out:
    for (int i = 0; i < 3; i++)
        if (m[i])
            clReleaseMemObject(m[i]);
}

void bench_measure_ceilings(dipole_ctx *ctx, bench_device *dev, bool quick)
{
    bench_ceilings *c = &dev->ceil;
    memset(c, 0, sizeof *c);
    peak_env e = {dipole_ctx_cl_context(ctx), dipole_ctx_queue(ctx), dipole_ctx_device(ctx),
                  dev->profiling};
    const char *src = source_text("peak.cl");
    cl_device_fp_config fp = 0;
    clGetDeviceInfo(e.device, CL_DEVICE_SINGLE_FP_CONFIG, sizeof fp, &fp, NULL);
    for (int fused = 0; fused <= ((fp & CL_FP_FMA) ? 1 : 0); fused++) {
        cl_int err = CL_INVALID_VALUE;
        cl_program prog = src ? clCreateProgramWithSource(e.context, 1, &src, NULL, &err) : NULL;
        if (err == CL_SUCCESS)
            err = clBuildProgram(prog, 1, &e.device,
                                 fused ? "-cl-std=CL1.2 -DUSE_FMA=1" : "-cl-std=CL1.2 -DUSE_FMA=0",
                                 NULL, NULL);
        if (err != CL_SUCCESS) {
            note(c, "building bench/peak.cl", err);
        } else {
            measure_fma(&e, prog, dev, c, quick, fused);
            if (!fused)
                measure_copy(&e, prog, dev, c, quick);
        }
        if (prog)
            clReleaseProgram(prog);
    }
    measure_sgemm(&e, dev, c, quick);
}
