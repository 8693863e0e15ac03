#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dipole_ctx *shared_ctx;

dipole_ctx *tu_ctx(void)
{
    if (shared_ctx)
        return shared_ctx;
    dipole_status st = dipole_ctx_create(&shared_ctx, NULL);
    if (st == DIPOLE_ERR_NO_PLATFORM || st == DIPOLE_ERR_NO_DEVICE) {
        fprintf(stderr, "no OpenCL device (%s): skipping\n", dipole_thread_last_error());
        exit(77);
    }
    if (st != DIPOLE_SUCCESS) {
        fprintf(stderr, "dipole_ctx_create: %s: %s\n", dipole_status_string(st),
                dipole_thread_last_error());
        exit(1);
    }
    return shared_ctx;
}

bool tu_sweep_classes(void)
{
    const char *e = getenv("DIPOLE_TEST_SWEEP");
    return e && !strcmp(e, "classes");
}

void tu_ctx_release(void)
{
    dipole_ctx_destroy(shared_ctx);
    shared_ctx = NULL;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void *tu_round_to(dipole_dtype dt, float *x, size_t n)
{
    void *bits = malloc((n ? n : 1) * dipole_dtype_size(dt));
    ck_assert_ptr_nonnull(bits);
    ck_assert_int_eq(dipole_convert(dt, bits, DIPOLE_F32, x, n), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_convert(DIPOLE_F32, x, dt, bits, n), DIPOLE_SUCCESS);
    return bits;
}

float *tu_random(size_t n, uint64_t seed, float mult)
{
    float *x = malloc(sizeof(float) * (n ? n : 1));
    ck_assert_ptr_nonnull(x);
    uint64_t s = seed * 0x2545f4914f6cdd1dull + 1;
    for (size_t i = 0; i < n; i += 2) {
        double u1 = ((double)(splitmix(&s) >> 11) + 0.5) / 9007199254740992.0;
        double u2 = (double)(splitmix(&s) >> 11) / 9007199254740992.0;
        double r = sqrt(-2.0 * log(u1));
        x[i] = (float)(r * cos(2 * M_PI * u2)) * mult;
        if (i + 1 < n)
            x[i + 1] = (float)(r * sin(2 * M_PI * u2)) * mult;
    }
    return x;
}

size_t tu_q_elems(const dipole_attn_desc *d)
{
    return (size_t)d->batch * d->seq_q * d->heads_q * d->head_dim;
}

size_t tu_kv_elems(const dipole_attn_desc *d)
{
    return (size_t)d->batch * d->seq_k * d->heads_kv * d->head_dim;
}

tu_err tu_compare(const float *got, const float *ref, size_t n, double atol, double rtol)
{
    tu_err e = {0, 0, 0, 0};
    for (size_t i = 0; i < n; i++) {
        if (isfinite(ref[i]) && !isfinite(got[i])) {
            if (!e.nonfinite)
                e.worst = i;
            e.nonfinite++;
            e.worst_ratio = INFINITY;
            continue;
        }
        double d = fabs((double)got[i] - (double)ref[i]);
        if (!isfinite(ref[i]))
            d = (isnan(ref[i]) && isnan(got[i])) || got[i] == ref[i] ? 0 : INFINITY;
        if (d > e.max_abs)
            e.max_abs = d;
        double ratio = d / (atol + rtol * fabs((double)ref[i]));
        if (ratio > e.worst_ratio) {
            e.worst_ratio = ratio;
            e.worst = i;
        }
    }
    return e;
}

void tu_expect_within(const char *what, const char *tensor, const float *got, const float *ref,
                      size_t n, double atol, double rtol, double rms_weight)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += isfinite(ref[i]) ? (double)ref[i] * ref[i] : 0;
    const double floor_ = atol + rtol * rms_weight * sqrt(ss / (double)(n ? n : 1));
    tu_err e = tu_compare(got, ref, n, floor_, rtol);
    ck_assert_msg(e.worst_ratio <= 1.0,
                  "%s: %s[%zu] = %.9g, want %.9g (max abs err %.3g, %zu non-finite; bound %.3g + "
                  "%.3g |ref|)",
                  what, tensor, e.worst, (double)got[e.worst], (double)ref[e.worst], e.max_abs,
                  e.nonfinite, floor_, rtol);
}

const char *tu_desc_str(const dipole_attn_desc *d, char *buf, size_t cap)
{
    snprintf(buf, cap,
             "%s B=%d Hq=%d Hkv=%d Nq=%d Nk=%d d=%d causal=%d win=(%d,%d) kl=%s path=%s",
             dipole_variant_name(d->variant), d->batch, d->heads_q, d->heads_kv, d->seq_q,
             d->seq_k, d->head_dim, d->causal, d->window_left, d->window_right,
             d->key_lengths ? "yes" : "no", dipole_path_name(d->path));
    return buf;
}

tu_err tu_check_against_reference(const dipole_attn_desc *desc, uint64_t seed, float mult,
                                  double atol, double rtol)
{
    const size_t nq = tu_q_elems(desc), nk = tu_kv_elems(desc);
    float *q = tu_random(nq, seed, mult), *k = tu_random(nk, seed + 1, mult);
    float *v = tu_random(nk, seed + 2, 1.0f), *v2 = tu_random(nk, seed + 3, 1.0f);
    float *got = malloc(sizeof(float) * nq), *ref = malloc(sizeof(float) * nq);
    ck_assert_ptr_nonnull(got);
    ck_assert_ptr_nonnull(ref);
    char what[256];
    tu_desc_str(desc, what, sizeof what);
    dipole_ctx *ctx = tu_ctx();
    dipole_status st = dipole_attention_host(ctx, desc, q, k, v, v2, got);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s: %s: %s", what, dipole_status_string(st),
                  dipole_ctx_last_error(ctx));
    st = dipole_reference(desc, q, k, v, v2, ref);
    ck_assert_msg(st == DIPOLE_SUCCESS, "reference %s: %s", what, dipole_status_string(st));
    tu_err e = tu_compare(got, ref, nq, atol, rtol);
    ck_assert_msg(e.worst_ratio <= 1.0,
                  "%s: element %zu got %.9g want %.9g (max abs err %.3g, %zu non-finite; "
                  "atol %.1g rtol %.1g)",
                  what, e.worst, (double)got[e.worst], (double)ref[e.worst], e.max_abs,
                  e.nonfinite, atol, rtol);
    free(q);
    free(k);
    free(v);
    free(v2);
    free(got);
    free(ref);
    return e;
}

double *tu_to_double(const float *x, size_t n)
{
    double *r = malloc(sizeof(double) * (n ? n : 1));
    ck_assert_ptr_nonnull(r);
    for (size_t i = 0; i < n; i++)
        r[i] = x[i];
    return r;
}

float *tu_narrow(const double *x, size_t n)
{
    float *r = malloc(sizeof(float) * (n ? n : 1));
    ck_assert_ptr_nonnull(r);
    for (size_t i = 0; i < n; i++)
        r[i] = (float)x[i];
    return r;
}

void tu_expect_gradient(const char *what, const char *tensor, tu_scalar_fn f, void *arg,
                        double *x, const float *grad, size_t n, size_t most, double atol,
                        double rtol)
{
    const double step = 1e-5;
    const bool spread = most > 0 && n > most;
    /* Off the first coordinate, so that a spread sample does not sit on row and head 0 only. */
    const size_t first = spread ? 7 % n : 0, stride = spread ? n / most + 1 : 1;
    for (size_t at = first; at < n; at += stride) {
        const double x0 = x[at];
        x[at] = x0 + step;
        const double up = f(arg);
        x[at] = x0 - step;
        const double down = f(arg);
        x[at] = x0;
        const double fd = (double)(float)((up - down) / (2 * step));
        ck_assert_msg(fabs((double)grad[at] - fd) <= atol + rtol * fabs(fd),
                      "%s: %s[%zu] = %.9g, central difference %.9g (atol %.0e rtol %.0e)", what,
                      tensor, at, (double)grad[at], fd, atol, rtol);
    }
}
