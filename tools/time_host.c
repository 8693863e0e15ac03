/* Times the host twin (dipole_attention_host, the caller's malloc'd arrays) against the same
 * call on device buffers made once (dipole_attention + clFinish), wall clock, best of reps.
 *
 *   time-host [B Hq Hkv Nq Nk d [reps [variant]]]   (default 1 32 8 1 8192 128 10 softmax)
 *
 * The ratio host / device is what staging costs per call: ~1 where the device takes the
 * caller's memory in place (PoCL), more where every input is copied. Not installed. */
#include <dipole/dipole.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static float *filled(size_t n, unsigned seed)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; x && i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)(seed >> 8) / (float)(1u << 24) - 0.5f;
    }
    return x;
}

static cl_mem device_copy(dipole_ctx *ctx, const float *host, size_t n)
{
    cl_int err;
    return clCreateBuffer(dipole_ctx_cl_context(ctx), CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                          n * sizeof(float), (void *)host, &err);
}

int main(int argc, char **argv)
{
    int s[6] = {1, 32, 8, 1, 8192, 128};
    for (int i = 0; i < 6 && i + 1 < argc; i++)
        s[i] = atoi(argv[i + 1]);
    const int reps = argc > 7 ? atoi(argv[7]) : 10;
    const char *vname = argc > 8 ? argv[8] : "softmax";
    dipole_attn_desc desc;
    dipole_attn_desc_default(&desc);
    for (int v = 0; v < 4; v++)
        if (strcmp(vname, dipole_variant_name((dipole_variant)v)) == 0)
            desc.variant = (dipole_variant)v;
    desc.batch = s[0], desc.heads_q = s[1], desc.heads_kv = s[2];
    desc.seq_q = s[3], desc.seq_k = s[4], desc.head_dim = s[5];
    desc.causal = s[3] == s[4];

    dipole_ctx *ctx;
    if (dipole_ctx_create(&ctx, NULL) != DIPOLE_SUCCESS) {
        fprintf(stderr, "no device: %s\n", dipole_thread_last_error());
        return 77;
    }
    const size_t nq = (size_t)s[0] * s[3] * s[1] * s[5], nk = (size_t)s[0] * s[4] * s[2] * s[5];
    float *q = filled(nq, 1), *k = filled(nk, 2), *v = filled(nk, 3), *v2 = filled(nk, 4);
    float *out = malloc(nq * sizeof *out);
    cl_mem dq = device_copy(ctx, q, nq), dk = device_copy(ctx, k, nk), dv = device_copy(ctx, v, nk),
           dv2 = device_copy(ctx, v2, nk), dout = device_copy(ctx, out, nq);
    const dipole_tensor tq = dipole_tensor_dense(dq, s[3], s[1], s[5]),
                        tk = dipole_tensor_dense(dk, s[4], s[2], s[5]),
                        tv = dipole_tensor_dense(dv, s[4], s[2], s[5]),
                        tv2 = dipole_tensor_dense(dv2, s[4], s[2], s[5]),
                        to = dipole_tensor_dense(dout, s[3], s[1], s[5]);
    double best_host = 1e30, best_dev = 1e30;
    for (int r = 0; r <= reps; r++) { /* r == 0 warms up: kernel builds, first touches */
        double t0 = now_ms();
        dipole_status st = dipole_attention_host(ctx, &desc, q, k, v, v2, out);
        double t1 = now_ms();
        if (st == DIPOLE_SUCCESS)
            st = dipole_attention(ctx, &desc, &tq, &tk, &tv, &tv2, &to, NULL, NULL);
        clFinish(dipole_ctx_queue(ctx));
        double t2 = now_ms();
        if (st != DIPOLE_SUCCESS) {
            fprintf(stderr, "%s: %s\n", dipole_status_string(st), dipole_ctx_last_error(ctx));
            return 1;
        }
        if (r > 0) {
            best_host = t1 - t0 < best_host ? t1 - t0 : best_host;
            best_dev = t2 - t1 < best_dev ? t2 - t1 : best_dev;
        }
    }
    printf("%s B=%d Hq=%d Hkv=%d Nq=%d Nk=%d d=%d causal=%d: host %.2f ms, device buffers "
           "%.2f ms, ratio %.3f\n",
           vname, s[0], s[1], s[2], s[3], s[4], s[5], desc.causal, best_host, best_dev,
           best_host / best_dev);
    clReleaseMemObject(dq), clReleaseMemObject(dk), clReleaseMemObject(dv);
    clReleaseMemObject(dv2), clReleaseMemObject(dout);
    free(q), free(k), free(v), free(v2), free(out);
    dipole_ctx_destroy(ctx);
    return 0;
}
