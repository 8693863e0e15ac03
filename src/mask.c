/* Which keys a query row sees, host side; cl/dipole_common.cl holds the kernels' twin. */
#include "internal.h"

int dp_key_length(const dp_problem *p, int b)
{
    return p->d.key_lengths ? p->d.key_lengths[b] : p->d.seq_k;
}

void dp_visible_range(const dp_problem *p, int b, int i, int *lo, int *hi)
{
    const int kl = dp_key_length(p, b);
    /* The diagonal is aligned bottom-right: the last query row sits on the last valid key. */
    const long diag = (long)i + kl - p->d.seq_q;
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
