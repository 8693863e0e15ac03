/* Which keys a query row sees, and what its scores become on the way to the variant (host
 * side); cl/dipole_common.cl holds the kernels' twins. */
#include <math.h>

#include "internal.h"

int dp_key_length(const dp_problem *p, int b)
{
    if (p->varlen)
        return p->d.cu_seqlens_k[b + 1] - p->d.cu_seqlens_k[b];
    return p->d.key_lengths ? p->d.key_lengths[b] : p->d.seq_k;
}

int dp_query_length(const dp_problem *p, int b)
{
    return p->varlen ? p->d.cu_seqlens_q[b + 1] - p->d.cu_seqlens_q[b] : p->d.seq_q;
}

int dp_first_query(const dp_problem *p, int b)
{
    return p->varlen ? p->d.cu_seqlens_q[b] : 0;
}

int dp_first_key(const dp_problem *p, int b)
{
    return p->varlen ? p->d.cu_seqlens_k[b] : 0;
}

void dp_visible_range(const dp_problem *p, int b, int i, int *lo, int *hi)
{
    const int kl = dp_key_length(p, b);
    /* The diagonal is aligned bottom-right: the last query row sits on the last valid key. */
    const long diag = (long)i + kl - dp_query_length(p, b);
    long l = 0, h = kl;
    if (p->d.causal && diag + 1 < h)
        h = diag + 1;
    if (p->d.window_right >= 0 && diag + p->d.window_right + 1 < h)
        h = diag + p->d.window_right + 1;
    if (p->d.window_left >= 0 && diag - p->d.window_left > l)
        l = diag - p->d.window_left;
    l = l < 0 ? 0 : l > kl ? kl : l;
    h = h < l ? l : h;
    *lo = (int)l;
    *hi = (int)h;
}

static double bias_at(const dp_problem *p, int b, int h, int i, int j)
{
    const dipole_bias *bias = p->d.bias;
    const int bb = p->varlen ? 0 : b;
    const size_t at = bias->offset + (size_t)bb * bias->stride_batch +
                      (size_t)h * bias->stride_head +
                      (size_t)(dp_first_query(p, b) + i) * bias->stride_row +
                      (size_t)(dp_first_key(p, b) + j);
    switch (bias->dtype) {
    case DIPOLE_F16:
        return dp_f16_to_f32(((const uint16_t *)bias->host)[at]);
    case DIPOLE_BF16:
        return dp_bf16_to_f32(((const uint16_t *)bias->host)[at]);
    default:
        return ((const float *)bias->host)[at];
    }
}

double dp_score_mods(const dp_problem *p, int b, int h, int i, int j, double s)
{
    if (p->softcap)
        s = p->d.softcap * tanh(s / p->d.softcap);
    if (p->alibi) {
        const long diag = (long)i + dp_key_length(p, b) - dp_query_length(p, b);
        s -= p->d.alibi_slopes[h] * fabs((double)(diag - j));
    }
    if (p->bias)
        s += bias_at(p, b, h, i, j);
    return s;
}

bool dp_score_excluded(const dp_problem *p, double s)
{
    return p->bias && s == -INFINITY;
}

double dp_score_mods_ds(const dp_problem *p, double s)
{
    if (!p->softcap)
        return 1.0;
    const double t = tanh(s / p->d.softcap);
    return 1.0 - t * t;
}
