/* Times the forward through the public API on device buffers, with profiling events.
 *
 *   time_forward [options] [attn|decode|copy]...
 *     -v LIST   variants (softmax,signexp,routed,two_pole; default all four)
 *     -d LIST   head dims (default 64,128)      -n LIST  sequence lengths (default 2048,4096)
 *     -b N      batch*heads (default 8)         -c LIST  causal flags (default 0,1)
 *     -r N      repetitions (default 5)         -k N     decode key count (default 8192)
 *
 * Each time is from a marker enqueued before the call to the end of the call's last command,
 * so multi-kernel paths (split-K + merge) count whole. Prints best and median per row. The
 * copy row is a float16 streaming copy of the same bytes the decode reads, timed the same way.
 * Not installed: a measuring aid for kernel work, not a benchmark (that is dipole-bench). */
#include <dipole/dipole.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define MAX_LIST 8
#define PEAK_ITEMS 64
#define PEAK_ITERS 200000

static int parse_list(const char *s, int *out)
{
    int n = 0;
    while (s && *s && n < MAX_LIST) {
        out[n++] = atoi(s);
        s = strchr(s, ',');
        if (s)
            s++;
    }
    return n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double event_span(cl_event first, cl_event last)
{
    cl_ulong t0 = 0, t1 = 0;
    clGetEventProfilingInfo(first, CL_PROFILING_COMMAND_END, sizeof t0, &t0, NULL);
    clGetEventProfilingInfo(last, CL_PROFILING_COMMAND_END, sizeof t1, &t1, NULL);
    return (double)(t1 - t0) * 1e-9;
}

static cl_mem make_buffer(dipole_ctx *ctx, size_t floats, unsigned seed)
{
    float *h = malloc(floats * sizeof(float));
    if (!h)
        return NULL;
    for (size_t i = 0; i < floats; i++)
        h[i] = sinf(0.001f * (float)(i % 100003) * (float)(seed + 1)) * 1.5f;
    cl_int err;
    cl_mem b = clCreateBuffer(dipole_ctx_cl_context(ctx), CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                              floats * sizeof(float), h, &err);
    free(h);
    return err == CL_SUCCESS ? b : NULL;
}

/* CPU seconds this process has used (all threads: PoCL's workers run in it). Under other
 * processes' load, work per CPU second is steadier than wall time. */
static double cpu_seconds(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + (double)u.ru_stime.tv_sec +
           1e-6 * (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

static double g_cpu_per_rep; /* CPU seconds per repetition of the last timing */

/* Runs one problem reps times; returns best and median seconds, or -1 on failure. */
static int time_attention(dipole_ctx *ctx, const dipole_attn_desc *d, int reps, double *best,
                          double *median)
{
    const size_t nq = (size_t)d->batch * d->seq_q * d->heads_q * d->head_dim;
    const size_t nk = (size_t)d->batch * d->seq_k * d->heads_kv * d->head_dim;
    cl_mem bq = make_buffer(ctx, nq, 1), bk = make_buffer(ctx, nk, 2), bv = make_buffer(ctx, nk, 3),
           bv2 = make_buffer(ctx, nk, 4), bo = make_buffer(ctx, nq, 5);
    int rc = -1;
    double *t = calloc((size_t)reps, sizeof *t);
    if (!bq || !bk || !bv || !bv2 || !bo || !t)
        goto done;
    dipole_tensor tq = dipole_tensor_dense(bq, d->seq_q, d->heads_q, d->head_dim);
    dipole_tensor tk = dipole_tensor_dense(bk, d->seq_k, d->heads_kv, d->head_dim);
    dipole_tensor tv = dipole_tensor_dense(bv, d->seq_k, d->heads_kv, d->head_dim);
    dipole_tensor tv2 = dipole_tensor_dense(bv2, d->seq_k, d->heads_kv, d->head_dim);
    dipole_tensor to = dipole_tensor_dense(bo, d->seq_q, d->heads_q, d->head_dim);
    cl_command_queue queue = dipole_ctx_queue(ctx);
    double cpu0 = 0;
    for (int r = -1; r < reps; r++) { /* r = -1 warms up (kernel build, first touch) */
        if (r == 0)
            cpu0 = cpu_seconds();
        cl_event m = NULL, e = NULL;
        clFinish(queue);
        if (clEnqueueMarkerWithWaitList(queue, 0, NULL, &m) != CL_SUCCESS)
            goto done;
        dipole_status st = dipole_attention(ctx, d, &tq, &tk, &tv, &tv2, &to, NULL, &e);
        if (st != DIPOLE_SUCCESS) {
            fprintf(stderr, "dipole_attention: %s: %s\n", dipole_status_string(st),
                    dipole_ctx_last_error(ctx));
            clReleaseEvent(m);
            goto done;
        }
        clWaitForEvents(1, &e);
        if (r >= 0)
            t[r] = event_span(m, e);
        clReleaseEvent(m);
        clReleaseEvent(e);
    }
    g_cpu_per_rep = (cpu_seconds() - cpu0) / reps;
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    *best = t[0];
    *median = t[reps / 2];
    rc = 0;
done:
    free(t);
    cl_mem all[5] = {bq, bk, bv, bv2, bo};
    for (int i = 0; i < 5; i++)
        if (all[i])
            clReleaseMemObject(all[i]);
    return rc;
}

static const char *copy_src =
    "__kernel void copy16(__global const float16 *a, __global float16 *b)"
    "{ b[get_global_id(0)] = a[get_global_id(0)]; }"
    /* 16 independent float16 FMA chains per work-item: the device's FMA peak right now. */
    "__kernel void fma_peak(__global float16 *o, int iters)"
    "{ float16 a[16]; for (int i = 0; i < 16; i++) a[i] = (float16)(get_global_id(0) + i);"
    "  const float16 x = (float16)0.999f, y = (float16)0.001f;"
    "  for (int n = 0; n < iters; n++)"
    "    _Pragma(\"unroll\") for (int i = 0; i < 16; i++) a[i] = fma(a[i], x, y);"
    "  float16 s = 0; for (int i = 0; i < 16; i++) s += a[i]; o[get_global_id(0)] = s; }";

/* A float16 streaming copy of floats elements (or, with peak, the FMA loop over 64
 * work-items): returns best and median seconds. */
static int time_copy(dipole_ctx *ctx, size_t floats, int reps, double *best, double *median,
                     bool peak)
{
    cl_int err;
    cl_context c = dipole_ctx_cl_context(ctx);
    cl_device_id dev = dipole_ctx_device(ctx);
    cl_program p = clCreateProgramWithSource(c, 1, &copy_src, NULL, &err);
    if (err != CL_SUCCESS || clBuildProgram(p, 1, &dev, "", NULL, NULL) != CL_SUCCESS)
        return -1;
    cl_kernel k = clCreateKernel(p, peak ? "fma_peak" : "copy16", &err);
    cl_mem a = make_buffer(ctx, floats, 7), b = make_buffer(ctx, floats, 8);
    double *t = calloc((size_t)reps, sizeof *t);
    int rc = -1;
    if (err != CL_SUCCESS || !a || !b || !t)
        goto done;
    const cl_int iters = PEAK_ITERS;
    clSetKernelArg(k, 0, sizeof a, peak ? &b : &a);
    clSetKernelArg(k, 1, peak ? sizeof iters : sizeof b, peak ? (const void *)&iters : &b);
    const size_t global = peak ? PEAK_ITEMS : floats / 16;
    cl_command_queue queue = dipole_ctx_queue(ctx);
    double cpu0 = 0;
    for (int r = -1; r < reps; r++) {
        if (r == 0)
            cpu0 = cpu_seconds();
        cl_event m = NULL, e = NULL;
        clFinish(queue);
        clEnqueueMarkerWithWaitList(queue, 0, NULL, &m);
        const size_t one = 1;
        if (clEnqueueNDRangeKernel(queue, k, 1, NULL, &global, peak ? &one : NULL, 0, NULL, &e) !=
            CL_SUCCESS)
            goto done;
        clWaitForEvents(1, &e);
        if (r >= 0)
            t[r] = event_span(m, e);
        clReleaseEvent(m);
        clReleaseEvent(e);
    }
    g_cpu_per_rep = (cpu_seconds() - cpu0) / reps;
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    *best = t[0];
    *median = t[reps / 2];
    rc = 0;
done:
    free(t);
    if (a)
        clReleaseMemObject(a);
    if (b)
        clReleaseMemObject(b);
    clReleaseKernel(k);
    clReleaseProgram(p);
    return rc;
}

int main(int argc, char **argv)
{
    static const char *const vnames[4] = {"softmax", "signexp", "routed", "two_pole"};
    int variants[MAX_LIST] = {0, 1, 2, 3}, nv = 4;
    int dims[MAX_LIST] = {64, 128}, nd = 2;
    int lens[MAX_LIST] = {2048, 4096}, nn = 2;
    int causals[MAX_LIST] = {0, 1}, nc = 2;
    int bh = 8, reps = 5, decode_keys = 8192;
    int first_mode = argc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-v") && val) {
            nv = 0;
            for (const char *s = val; *s && nv < MAX_LIST;) {
                for (int j = 0; j < 4; j++)
                    if (!strncmp(s, vnames[j], strlen(vnames[j])))
                        variants[nv++] = j;
                s = strchr(s, ',');
                if (!s)
                    break;
                s++;
            }
            i++;
        } else if (!strcmp(a, "-d") && val) {
            nd = parse_list(argv[++i], dims);
        } else if (!strcmp(a, "-n") && val) {
            nn = parse_list(argv[++i], lens);
        } else if (!strcmp(a, "-c") && val) {
            nc = parse_list(argv[++i], causals);
        } else if (!strcmp(a, "-b") && val) {
            bh = atoi(argv[++i]);
        } else if (!strcmp(a, "-r") && val) {
            reps = atoi(argv[++i]);
        } else if (!strcmp(a, "-k") && val) {
            decode_keys = atoi(argv[++i]);
        } else {
            first_mode = i;
            break;
        }
    }
    if (reps < 1 || bh < 1) {
        fprintf(stderr, "bad -r or -b\n");
        return 2;
    }
    dipole_ctx *ctx;
    dipole_status st = dipole_ctx_create(&ctx, NULL);
    if (st != DIPOLE_SUCCESS) {
        fprintf(stderr, "no device: %s\n", dipole_thread_last_error());
        return 77;
    }
    printf("device: %s\n", dipole_ctx_device_name(ctx));
    for (int mi = first_mode; mi <= argc; mi++) {
        const char *mode = mi < argc ? argv[mi] : (first_mode == argc ? "attn" : NULL);
        if (!mode)
            break;
        if (!strcmp(mode, "peak")) {
            double best, med;
            if (time_copy(ctx, 16 * PEAK_ITEMS, reps, &best, &med, true) == 0)
                printf("peak    fma loop  best %8.3f ms med %8.3f ms  %6.1f GFLOP/s (best) %6.1f "
                       "(med)  %6.1f GFLOP/cpu-s\n",
                       best * 1e3, med * 1e3, 2.0 * 16 * 16 * PEAK_ITERS * PEAK_ITEMS / best * 1e-9,
                       2.0 * 16 * 16 * PEAK_ITERS * PEAK_ITEMS / med * 1e-9,
                       2.0 * 16 * 16 * PEAK_ITERS * PEAK_ITEMS / g_cpu_per_rep * 1e-9);
            continue;
        }
        if (!strcmp(mode, "copy") || !strcmp(mode, "decode")) {
            for (int di = 0; di < nd; di++) {
                const size_t kv_floats = (size_t)bh * decode_keys * dims[di];
                if (!strcmp(mode, "copy")) {
                    double best, med;
                    if (time_copy(ctx, 2 * kv_floats, reps, &best, &med, false) == 0)
                        printf("copy    %9zu floats   best %8.3f ms med %8.3f ms  read %6.1f GB/s "
                               "(read+write %6.1f)\n",
                               2 * kv_floats, best * 1e3, med * 1e3, 8.0 * kv_floats / best * 1e-9,
                               16.0 * kv_floats / best * 1e-9);
                    continue;
                }
                for (int vi = 0; vi < nv; vi++) {
                    dipole_attn_desc d;
                    dipole_attn_desc_default(&d);
                    d.variant = (dipole_variant)variants[vi];
                    d.batch = 1, d.heads_q = d.heads_kv = bh;
                    d.seq_q = 1, d.seq_k = decode_keys, d.head_dim = dims[di];
                    dipole_plan plan;
                    dipole_attention_plan(ctx, &d, &plan);
                    double best, med;
                    if (time_attention(ctx, &d, reps, &best, &med) != 0)
                        continue;
                    const double bytes = 4.0 * (double)kv_floats * (d.variant >= DIPOLE_ROUTED ? 3 : 2);
                    printf("decode  %-8s d=%3d keys=%d  best %8.3f ms med %8.3f ms  %6.1f GB/s  [%s]\n",
                           vnames[d.variant], d.head_dim, decode_keys, best * 1e3, med * 1e3,
                           bytes / best * 1e-9, plan.reason);
                }
            }
            continue;
        }
        for (int ci = 0; ci < nc; ci++)
            for (int di = 0; di < nd; di++)
                for (int ni = 0; ni < nn; ni++)
                    for (int vi = 0; vi < nv; vi++) {
                        dipole_attn_desc d;
                        dipole_attn_desc_default(&d);
                        d.variant = (dipole_variant)variants[vi];
                        d.batch = 1, d.heads_q = d.heads_kv = bh;
                        d.seq_q = d.seq_k = lens[ni], d.head_dim = dims[di];
                        d.causal = causals[ci];
                        dipole_plan plan;
                        dipole_attention_plan(ctx, &d, &plan);
                        double best, med;
                        if (time_attention(ctx, &d, reps, &best, &med) != 0)
                            continue;
                        const double n = lens[ni];
                        const double pairs = d.causal ? n * (n + 1) / 2 : n * n;
                        const double flop = 4.0 * pairs * d.head_dim * bh;
                        printf("attn    %-8s d=%3d N=%5d causal=%d  best %9.3f ms med %9.3f ms  "
                               "%6.1f GFLOP/s  cpu %8.3f s/rep %6.1f GFLOP/cpu-s  [%s]\n",
                               vnames[d.variant], d.head_dim, lens[ni], d.causal, best * 1e3,
                               med * 1e3, flop / best * 1e-9, g_cpu_per_rep,
                               flop / g_cpu_per_rep * 1e-9, plan.reason);
                        fflush(stdout);
                    }
    }
    dipole_ctx_destroy(ctx);
    return 0;
}
