/* The README's example, kept compiling and running here. */
#include <dipole/dipole.h>
#include <math.h>
#include <stdio.h>

int main(void)
{
    enum { B = 1, N = 128, H = 4, D = 64 };
    static float q[B * N * H * D], k[B * N * H * D], v[B * N * H * D], out[B * N * H * D],
        ref[B * N * H * D];
    for (int i = 0; i < B * N * H * D; i++) {
        q[i] = sinf(0.37f * (float)i);
        k[i] = cosf(0.11f * (float)i);
        v[i] = sinf(0.05f * (float)i + 1.0f);
    }

    dipole_ctx *ctx;
    dipole_status st = dipole_ctx_create(&ctx, NULL); /* $DIPOLE_DEVICE, else best GPU, else any */
    if (st != DIPOLE_SUCCESS) {
        fprintf(stderr, "no device: %s\n", dipole_thread_last_error());
        return st == DIPOLE_ERR_NO_PLATFORM || st == DIPOLE_ERR_NO_DEVICE ? 77 : 1;
    }
    dipole_attn_desc desc;
    dipole_attn_desc_default(&desc);
    desc.variant = DIPOLE_SIGNEXP;
    desc.batch = B, desc.heads_q = desc.heads_kv = H;
    desc.seq_q = desc.seq_k = N, desc.head_dim = D;
    desc.causal = 1;

    st = dipole_attention_host(ctx, &desc, q, k, v, NULL, out);
    if (st != DIPOLE_SUCCESS) {
        fprintf(stderr, "%s: %s\n", dipole_status_string(st), dipole_ctx_last_error(ctx));
        dipole_ctx_destroy(ctx);
        return 1;
    }
    dipole_reference(&desc, q, k, v, NULL, ref); /* the double-precision CPU reference */
    double worst = 0;
    for (int i = 0; i < B * N * H * D; i++)
        worst = fmax(worst, fabs((double)out[i] - ref[i]));
    printf("%s on %s: max |device - reference| = %.2e\n", dipole_variant_name(desc.variant),
           dipole_ctx_device_name(ctx), worst);
    dipole_ctx_destroy(ctx);
    return worst < 1e-4 ? 0 : 1;
}
