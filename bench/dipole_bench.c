/* dipole-bench: times dipole attention on a device and validates it against the reference. */
#include <dipole/dipole.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    const char *sel = argc > 1 ? argv[1] : NULL;
    dipole_ctx *ctx;
    dipole_status st = dipole_ctx_create(&ctx, sel);
    if (st != DIPOLE_SUCCESS) {
        fprintf(stderr, "dipole-bench: %s\n", dipole_thread_last_error());
        return 1;
    }
    printf("device: %s\n", dipole_ctx_device_name(ctx));
    printf("%-9s %5s %5s %12s %10s %9s\n", "variant", "N", "d", "median_ms", "GFLOP/s", "max_err");
    int bad = 0;
    for (int variant = 0; variant < 4; variant++) {
        dipole_attn_desc d;
        dipole_attn_desc_default(&d);
        d.variant = (dipole_variant)variant;
        d.batch = 1, d.heads_q = d.heads_kv = 4, d.seq_q = d.seq_k = 512, d.head_dim = 64;
        size_t n = (size_t)d.batch * d.seq_q * d.heads_q * d.head_dim;
        float *q = malloc(n * 4), *k = malloc(n * 4), *v = malloc(n * 4), *v2 = malloc(n * 4);
        float *out = malloc(n * 4), *ref = malloc(n * 4);
        for (size_t i = 0; i < n; i++) {
            q[i] = sinf(0.7f * i), k[i] = cosf(0.3f * i), v[i] = sinf(0.1f * i), v2[i] = cosf(0.9f * i);
        }
        double best = 1e9;
        for (int r = 0; r < 3; r++) {
            double t0 = now();
            st = dipole_attention_host(ctx, &d, q, k, v, v2, out);
            double t = now() - t0;
            if (st != DIPOLE_SUCCESS) {
                fprintf(stderr, "%s\n", dipole_ctx_last_error(ctx));
                return 1;
            }
            best = t < best ? t : best;
        }
        dipole_reference(&d, q, k, v, v2, ref);
        double err = 0;
        for (size_t i = 0; i < n; i++)
            err = fmax(err, fabs((double)out[i] - ref[i]));
        double flops = 4.0 * d.batch * d.heads_q * d.seq_q * d.seq_k * d.head_dim *
                       (variant == DIPOLE_TWO_POLE ? 1.5 : 1.0);
        printf("%-9s %5d %5d %12.3f %10.2f %9.2e\n", dipole_variant_name(d.variant), d.seq_q,
               d.head_dim, best * 1e3, flops / best * 1e-9, err);
        bad |= err > 1e-4;
        free(q), free(k), free(v), free(v2), free(out), free(ref);
    }
    dipole_ctx_destroy(ctx);
    return bad;
}
