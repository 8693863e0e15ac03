/* The README's packed-batch example, kept compiling and running here. */
#include <dipole/dipole.h>
#include <math.h>
#include <stdio.h>

int main(void)
{
    /* Three sequences of 5, 0 and 11 tokens packed into one batch of 16 rows. */
    enum { ROWS = 16, H = 4, D = 32, N = ROWS * H * D };
    static const int cu[4] = {0, 5, 5, 16};
    static const float slopes[H] = {0.25f, 0.0625f, 0.015625f, 0.00390625f}; /* ALiBi */
    static float q[N], k[N], v[N], out[N], ref[N], lse[H * ROWS], ref_lse[H * ROWS];
    static float bias_rows[ROWS * ROWS]; /* [rows, keys] of the packed batch, for every head */
    for (int i = 0; i < N; i++) {
        q[i] = sinf(0.37f * (float)i);
        k[i] = cosf(0.11f * (float)i);
        v[i] = sinf(0.05f * (float)i + 1.0f);
    }
    for (int i = 0; i < ROWS; i++)
        bias_rows[i * ROWS + 2] = -INFINITY; /* nobody attends to token 2 (sequence 0) */

    dipole_ctx *ctx;
    dipole_status st = dipole_ctx_create(&ctx, NULL);
    if (st != DIPOLE_SUCCESS) {
        fprintf(stderr, "no device: %s\n", dipole_thread_last_error());
        return st == DIPOLE_ERR_NO_PLATFORM || st == DIPOLE_ERR_NO_DEVICE ? 77 : 1;
    }
    dipole_bias bias = {.host = bias_rows, .dtype = DIPOLE_F32, .stride_head = 0,
                        .stride_row = ROWS};
    dipole_attn_desc desc;
    dipole_attn_desc_default(&desc);
    desc.batch = 3; /* sequences */
    desc.heads_q = desc.heads_kv = H, desc.head_dim = D;
    desc.seq_q = desc.seq_k = ROWS; /* the packed rows: cu[3] */
    desc.cu_seqlens_q = desc.cu_seqlens_k = cu;
    desc.causal = 1;          /* within each sequence */
    desc.alibi_slopes = slopes;
    desc.softcap = 30.0f;     /* s <- 30 tanh(s / 30) */
    desc.bias = &bias;

    /* out [ROWS, H, D] as q; lse [poles = 1, H, ROWS] (-inf for a row that sees no key). */
    st = dipole_attention_host_lse(ctx, &desc, q, k, v, NULL, out, lse);
    if (st != DIPOLE_SUCCESS) {
        fprintf(stderr, "%s: %s\n", dipole_status_string(st), dipole_ctx_last_error(ctx));
        dipole_ctx_destroy(ctx);
        return 1;
    }
    dipole_reference_lse(&desc, q, k, v, NULL, ref, ref_lse);
    double worst = 0;
    for (int i = 0; i < N; i++)
        worst = fmax(worst, fabs((double)out[i] - ref[i]));
    for (int i = 0; i < H * ROWS; i++)
        worst = fmax(worst, lse[i] == ref_lse[i] ? 0 : fabs((double)lse[i] - ref_lse[i]));
    printf("packed batch on %s: max |device - reference| = %.2e\n", dipole_ctx_device_name(ctx),
           worst);
    dipole_ctx_destroy(ctx);
    return worst < 1e-4 ? 0 : 1;
}
